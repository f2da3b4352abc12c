//! The container runtime: what the pools need from a container engine, and the
//! Docker implementation of it.
//!
//! Pools speak only this trait, so pool logic can be unit-tested against an
//! in-memory engine while the integration tests drive the real Docker one.

pub mod docker;
pub mod memory;
pub mod registry_auth;
pub mod spec;

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::BoxStream;

pub use crate::workload::ProbeTimings;
pub use docker::DockerRuntime;
pub use spec::{ContainerSpec, HealthSpec};

/// Labels every managed container carries.
pub mod labels {
    pub const MANAGED: &str = "boilerhouse.managed";
    pub const INSTANCE: &str = "boilerhouse.instance";
    pub const POOL: &str = "boilerhouse.pool";
    pub const CONTAINER_ID: &str = "boilerhouse.container-id";
    pub const SPEC_HASH: &str = "boilerhouse.spec-hash";
    pub const CREATED_AT: &str = "boilerhouse.created-at";
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot reach the Docker engine at {host}: {message}")]
    Unreachable { host: String, message: String },
    #[error("image {image} is not present and could not be pulled: {message}")]
    ImagePull { image: String, message: String },
    #[error("container {name}: {message}")]
    Container { name: String, message: String },
    #[error("container {name} did not become ready within {timeout:?}: {message}")]
    NotReady {
        name: String,
        timeout: Duration,
        message: String,
    },
    #[error("Docker API error: {0}")]
    Api(String),
}

/// State of a container as listed by the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineState {
    Running,
    Paused,
    Other,
}

/// Health as reported by the engine's healthcheck (None: the container has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineHealth {
    None,
    Starting,
    Healthy,
    Unhealthy,
}

#[derive(Debug, Clone)]
pub struct ManagedContainer {
    pub docker_id: String,
    pub labels: HashMap<String, String>,
    pub state: EngineState,
    pub health: EngineHealth,
}

impl ManagedContainer {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }
}

/// Where a container stands once it has been started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Running and, with a healthcheck, healthy.
    Ready,
    /// Running, its healthcheck has not passed yet. Carries the effective timings.
    Starting(Option<ProbeTimings>),
}

/// The outcome of one health probe, from the engine's health log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    pub exit_code: i64,
    /// The probe's output, trimmed (the engine keeps at most 4 KiB).
    pub output: String,
    /// The probe ran past its timeout (the engine's "Health check exceeded timeout").
    pub timed_out: bool,
}

/// What an inspection tells about a container that did not (or no longer) work.
#[derive(Debug, Clone)]
pub struct ContainerReport {
    pub running: bool,
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
    /// e.g. `status "exited", exit code 3`.
    pub detail: String,
    pub health: EngineHealth,
    pub last_probe: Option<ProbeResult>,
    /// The last lines of its output, when it is no longer running (or why they
    /// could not be read).
    pub log_tail: Option<Result<String, String>>,
}

/// What the event watcher reports about a managed container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// The main process exited (or was killed).
    Died {
        exit_code: Option<i64>,
    },
    /// The kernel's OOM killer struck.
    Oom,
    Healthy,
    Unhealthy,
}

#[derive(Debug, Clone)]
pub struct RuntimeEvent {
    pub pool: String,
    pub container_id: String,
    pub kind: EventKind,
}

#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Is the engine there? (`/_ping`)
    async fn ping(&self) -> Result<(), RuntimeError>;
    /// Pulls the image unless it is present.
    async fn ensure_image(&self, image: &str) -> Result<(), RuntimeError>;
    /// Creates and starts a container; returns the engine's id.
    async fn create_and_start(&self, spec: &ContainerSpec) -> Result<String, RuntimeError>;
    /// Waits up to `within` for the container to run and, with a healthcheck, to
    /// report healthy. Still running but not yet healthy then: `Starting`. A container
    /// that is not running (it exited, or the engine refused it) is an error.
    async fn wait_ready(
        &self,
        docker_id: &str,
        name: &str,
        within: Duration,
    ) -> Result<Readiness, RuntimeError>;
    /// Inspects a container: its state, its last health probe and, when it is no
    /// longer running, the last `log_lines` lines of its output.
    async fn report(
        &self,
        docker_id: &str,
        log_lines: usize,
    ) -> Result<ContainerReport, RuntimeError>;
    /// Does the engine honour `healthcheck.start_interval` (API ≥ 1.44)?
    fn supports_start_interval(&self) -> bool;
    async fn pause(&self, docker_id: &str) -> Result<(), RuntimeError>;
    async fn unpause(&self, docker_id: &str) -> Result<(), RuntimeError>;
    async fn restart(&self, docker_id: &str) -> Result<(), RuntimeError>;
    /// Force-removes the container with its anonymous volumes; absent is fine.
    async fn remove(&self, docker_id: &str) -> Result<(), RuntimeError>;
    /// Every container of this instance, in any state.
    async fn list_managed(&self, instance: &str) -> Result<Vec<ManagedContainer>, RuntimeError>;
    /// Container events of this instance; the stream ends if the engine connection drops.
    fn events(&self, instance: &str) -> BoxStream<'static, Result<RuntimeEvent, RuntimeError>>;
}
