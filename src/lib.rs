//! Boilerhouse: a container pool orchestrator. Keeps pools of pre-warmed Docker
//! containers, one per workload, and hands one to a tenant in about a millisecond.
//!
//! `startup` builds the daemon for `main` and for tests; the rest is one module per
//! concept (see the README's layout section).

pub mod activity;
pub mod api;
pub mod app;
pub mod backoff;
pub mod cluster;
pub mod config;
pub mod edge;
pub mod fence;
pub mod fsutil;
pub mod ledger;
pub mod manager;
pub mod metrics;
pub mod pool;
pub mod preflight;
pub mod runtime;
pub mod shutdown;
pub mod startup;
pub mod sync;
pub mod tenant;
pub mod ui;
pub mod workload;
