//! Placeholder: being written.
use std::path::{Path, PathBuf};

use super::spec::Workload;

#[derive(Debug, Clone)]
pub struct LoadError {
    pub file: PathBuf,
    pub key: Option<String>,
    pub line: Option<usize>,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct LoadErrors(pub Vec<LoadError>);

pub fn load_dir(
    _dir: &Path,
    _env: &dyn Fn(&str) -> Option<String>,
    _default_image: &str,
) -> Result<Vec<Workload>, LoadErrors> {
    todo!()
}

pub fn builtin_default(_image: &str) -> Workload {
    todo!()
}
