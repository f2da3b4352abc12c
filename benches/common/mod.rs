//! Helpers of the `claim_latency` benchmark, one file per concern:
//!
//! - [`daemon`]: the release daemon as a child process, and the guard that removes
//!   every container of the bench's instance — also on error, panic or Ctrl-C;
//! - [`http`]: timed requests over a keep-alive client, and concurrent drivers;
//! - [`raw`]: containers created straight through the project's `DockerRuntime`,
//!   the cold baseline the daemon is compared with;
//! - [`stats`]: percentiles and resident memory;
//! - [`report`]: the markdown table and the JSON file.

pub mod daemon;
pub mod http;
pub mod raw;
pub mod report;
pub mod stats;

/// Every failure the bench can meet on an expected path (Docker down, daemon gone,
/// a claim refused) travels as this and ends the run with a message, never a panic.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type BenchResult<T> = Result<T, BoxError>;
