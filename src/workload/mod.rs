//! Workloads: the YAML files in `BOILERHOUSE_WORKLOADS_DIR` and what they mean.
//!
//! `spec` holds the resolved model; `load` turns files into it, collecting every
//! error of every file so a broken deployment is fixed in one pass.

pub mod load;
pub mod spec;

pub use load::{builtin_default, load_dir, LoadError, LoadErrors};
pub use spec::*;
