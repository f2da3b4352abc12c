//! What the `claim_latency` benchmark measures with, one file per concern (the
//! daemon harness, S3 fixture and `bench_main` are the test kit's):
//!
//! - [`daemon`]: the kit's daemon plus the bench's control-plane requests, and `perf`;
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

pub use boilerhouse_testkit::bench::BenchResult;
