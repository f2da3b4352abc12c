//! Loading workload files: directory scan, file to workload, and the errors.
//!
//! Owns the path from a directory of YAML files to validated [`Workload`]s: each file
//! is parsed into raw spanned values (`raw.rs`, serde-saphyr) and checked by the one
//! validation pass (`validate.rs`), which collects every problem of every file with
//! its key path and line. Ids are checked for uniqueness across files here. Nothing
//! here touches Docker or the pools: the output is plain data (see `spec.rs`).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use regex::Regex;

use super::raw;
use super::spec::*;
use super::validate::Validator;

/// One problem in one workload file.
#[derive(Debug, Clone)]
pub struct LoadError {
    pub file: PathBuf,
    /// Dotted key path, e.g. `healthcheck.interval` or `sync.mappings[0].path`.
    pub key: Option<String>,
    /// 1-based line in `file`, when it could be located.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found while loading; displayed one per line.
#[derive(Debug, Clone)]
pub struct LoadErrors(pub Vec<LoadError>);

impl fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadErrors {}

/// [`load_dir`], or the built-in `default` workload when the directory has no
/// workload file: what start-up and every reload use.
pub fn load_dir_or_default(
    dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    default_image: &str,
) -> Result<Vec<Workload>, LoadErrors> {
    let workloads = load_dir(dir, env, default_image)?;
    if workloads.is_empty() {
        tracing::info!(
            dir = %dir.display(),
            image = %default_image,
            "no workload files; using the built-in default workload"
        );
        return Ok(vec![builtin_default(default_image)]);
    }
    Ok(workloads)
}

/// Loads every `*.yaml` / `*.yml` file directly in `dir`, in file-name order.
///
/// A missing directory is not an error (the caller falls back to [`builtin_default`]);
/// dot-files are skipped. All errors of all files are returned together, including
/// workload ids defined by more than one file.
pub fn load_dir(
    dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    default_image: &str,
) -> Result<Vec<Workload>, LoadErrors> {
    let file_error = |file: &Path, message: String| LoadError {
        file: file.to_owned(),
        key: None,
        line: None,
        message,
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            let message = format!("cannot read the workloads directory: {e}");
            return Err(LoadErrors(vec![file_error(dir, message)]));
        }
    };
    let mut errors = Vec::new();
    let mut files = Vec::new();
    for entry in entries {
        match entry {
            Ok(entry) if is_workload_file(&entry.path()) => files.push(entry.path()),
            Ok(_) => {}
            Err(e) => errors.push(file_error(dir, format!("cannot list directory: {e}"))),
        }
    }
    files.sort();

    let mut workloads = Vec::new();
    let mut seen: HashMap<WorkloadId, PathBuf> = HashMap::new();
    for file in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) => {
                errors.push(file_error(&file, format!("cannot read file: {e}")));
                continue;
            }
        };
        match load_text(&file, &text, env, default_image) {
            Ok((workload, id_line)) => match seen.get(&workload.id) {
                Some(first) => errors.push(LoadError {
                    line: Some(id_line),
                    key: Some("id".into()),
                    message: format!(
                        "duplicate workload id `{}`: already defined in {}",
                        workload.id,
                        first.display()
                    ),
                    file,
                }),
                None => {
                    seen.insert(workload.id.clone(), file);
                    workloads.push(workload);
                }
            },
            Err(LoadErrors(mut file_errors)) => errors.append(&mut file_errors),
        }
    }
    if errors.is_empty() {
        Ok(workloads)
    } else {
        Err(LoadErrors(errors))
    }
}

fn is_workload_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    !name.starts_with('.') && matches!(ext, "yaml" | "yml") && path.is_file()
}

/// Loads one workload from `text`; `file` is only used in errors and `Workload::source`.
pub fn load_str(
    file: &Path,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    default_image: &str,
) -> Result<Workload, LoadErrors> {
    load_text(file, text, env, default_image).map(|(workload, _)| workload)
}

/// [`load_str`], also returning the line of the workload's `id`.
fn load_text(
    file: &Path,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    default_image: &str,
) -> Result<(Workload, usize), LoadErrors> {
    let raw = match raw::parse(text) {
        Ok(raw) => raw,
        Err(e) => {
            let line = e.location().and_then(|l| usize::try_from(l.line()).ok());
            return Err(LoadErrors(vec![LoadError {
                file: file.to_owned(),
                key: None,
                // Never past the last line, whatever the parser says about end of input.
                line: line.map(|l| l.clamp(1, text.lines().count().max(1))),
                message: format!("invalid YAML: {}", parser_message(&e)),
            }]));
        }
    };
    let mut validator = Validator {
        env,
        file,
        problems: Vec::new(),
    };
    let workload = validator.workload(&raw, default_image);
    if validator.problems.is_empty() {
        if let Some(workload) = workload {
            return Ok(workload);
        }
    }
    let mut errors: Vec<LoadError> = validator
        .problems
        .into_iter()
        .map(|p| LoadError {
            file: file.to_owned(),
            key: (!p.key.is_empty()).then_some(p.key),
            // An empty document's span may sit past its last line.
            line: Some(p.line.min(text.lines().count().max(1))),
            message: p.message,
        })
        .collect();
    errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
    Err(LoadErrors(errors))
}

/// The parser's message for a person (its developer formatter suggests API options),
/// on one line and without the location: the line number is already in front of it.
fn parser_message(e: &serde_saphyr::Error) -> String {
    let text = e.render_with_formatter(&serde_saphyr::UserMessageFormatter);
    let first = text.lines().next().unwrap_or_default().trim();
    LOCATION_SUFFIX.replace(first, "").into_owned()
}

static LOCATION_SUFFIX: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r" at line \d+, column \d+$").expect("valid regex"));

/// The workload used when the workloads directory holds no files: id `default`, the
/// given image with its own command, no healthcheck, defaults everywhere.
pub fn builtin_default(image: &str) -> Workload {
    let id = WorkloadId::parse("default").expect("\"default\" is a valid workload id");
    base_workload(id, image)
}

pub(super) fn base_workload(id: WorkloadId, image: &str) -> Workload {
    let mount = |target: &str, read_only| VolumeMount {
        target: target.into(),
        read_only,
    };
    Workload {
        name: id.to_string(),
        id,
        image: image.into(),
        command: None,
        entrypoint: None,
        environment: BTreeMap::new(),
        volumes: Volumes {
            state: mount("/state", false),
            secrets: mount("/secrets", true),
            comm: mount("/comm", false),
        },
        healthcheck: None,
        ports: Vec::new(),
        resources: Resources::default(),
        read_only: true,
        user: None,
        network_mode: None,
        labels: BTreeMap::new(),
        cap_add: Vec::new(),
        pool: PoolSpec::default(),
        sync: None,
        source: None,
    }
}
