//! Boilerhouse: a container pool orchestrator.
pub mod sync;
pub mod workload;
