//! Workloads: the YAML files in `BOILERHOUSE_WORKLOADS_DIR` and what they mean.
//!
//! `spec` holds the resolved model; `load` turns files into it: `raw` parses a file
//! into spanned serde types, `validate` checks them in one pass (with `values` for
//! scalars and `interpolate` for `${VAR}`), collecting every error of every file so a
//! broken deployment is fixed in one pass.

mod interpolate;
pub mod load;
mod raw;
pub mod spec;
mod validate;
mod values;

#[cfg(test)]
mod tests;

pub use load::{builtin_default, load_dir, load_dir_or_default, LoadError, LoadErrors};
pub use spec::*;
