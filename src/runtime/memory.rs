//! An in-memory [`Runtime`] for unit tests of pool logic: containers are entries in
//! a map, creation takes a configurable delay, and failures can be injected.
//! It never replaces the integration tests against the real engine.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::{self, BoxStream, StreamExt};

use super::{
    labels, ContainerReport, ContainerSpec, EngineHealth, EngineState, ManagedContainer, Readiness,
    Runtime, RuntimeError, RuntimeEvent,
};

#[derive(Default)]
pub struct MemoryRuntime {
    containers: Mutex<HashMap<String, ManagedContainer>>,
    next: AtomicUsize,
    /// Creation fails while set.
    pub fail_create: AtomicBool,
    /// Calls made, by operation, so tests can assert e.g. no call on a warm claim.
    calls: Mutex<HashMap<&'static str, usize>>,
    pub create_delay: Mutex<Duration>,
    /// While set, new containers stay `Starting` until the test sends a health event.
    pub start_unready: AtomicBool,
    /// Creations under way, and the most seen at once since `reset_peak_creates`.
    creating: AtomicUsize,
    peak_creating: AtomicUsize,
}

impl MemoryRuntime {
    fn count(&self, op: &'static str) {
        *self.calls.lock().unwrap().entry(op).or_default() += 1;
    }

    pub fn calls(&self, op: &str) -> usize {
        self.calls.lock().unwrap().get(op).copied().unwrap_or(0)
    }

    pub fn total_calls(&self) -> usize {
        self.calls.lock().unwrap().values().sum()
    }

    /// The most creations seen under way at once since the last reset.
    pub fn peak_creates(&self) -> usize {
        self.peak_creating.load(Ordering::SeqCst)
    }

    pub fn reset_peak_creates(&self) {
        self.peak_creating
            .store(self.creating.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    pub fn running(&self) -> usize {
        self.containers.lock().unwrap().len()
    }
}

#[async_trait]
impl Runtime for MemoryRuntime {
    async fn ping(&self) -> Result<(), RuntimeError> {
        Ok(())
    }

    async fn ensure_image(&self, _image: &str) -> Result<(), RuntimeError> {
        self.count("ensure_image");
        Ok(())
    }

    async fn create_and_start(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        self.count("create");
        let now = self.creating.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak_creating.fetch_max(now, Ordering::SeqCst);
        let delay = *self.create_delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        self.creating.fetch_sub(1, Ordering::SeqCst);
        if self.fail_create.load(Ordering::SeqCst) {
            return Err(RuntimeError::Container {
                name: spec.name.clone(),
                message: "injected failure".into(),
            });
        }
        let id = format!("mem{}", self.next.fetch_add(1, Ordering::SeqCst));
        self.containers.lock().unwrap().insert(
            id.clone(),
            ManagedContainer {
                docker_id: id.clone(),
                labels: spec.labels.clone(),
                state: EngineState::Running,
                health: EngineHealth::None,
            },
        );
        Ok(id)
    }

    async fn wait_ready(&self, _: &str, _: &str, _: Duration) -> Result<Readiness, RuntimeError> {
        self.count("wait_ready");
        if self.start_unready.load(Ordering::SeqCst) {
            return Ok(Readiness::Starting(None));
        }
        Ok(Readiness::Ready)
    }

    async fn report(&self, docker_id: &str, _: usize) -> Result<ContainerReport, RuntimeError> {
        self.count("report");
        let running = self.containers.lock().unwrap().contains_key(docker_id);
        Ok(ContainerReport {
            running,
            exit_code: (!running).then_some(1),
            oom_killed: false,
            detail: if running {
                "status \"running\""
            } else {
                "status \"exited\", exit code 1"
            }
            .into(),
            health: EngineHealth::None,
            last_probe: None,
            log_tail: None,
        })
    }

    fn supports_start_interval(&self) -> bool {
        false
    }

    async fn pause(&self, _: &str) -> Result<(), RuntimeError> {
        self.count("pause");
        Ok(())
    }

    async fn unpause(&self, _: &str) -> Result<(), RuntimeError> {
        self.count("unpause");
        Ok(())
    }

    async fn restart(&self, _: &str) -> Result<(), RuntimeError> {
        self.count("restart");
        Ok(())
    }

    async fn remove(&self, docker_id: &str) -> Result<(), RuntimeError> {
        self.count("remove");
        self.containers.lock().unwrap().remove(docker_id);
        Ok(())
    }

    async fn list_managed(&self, instance: &str) -> Result<Vec<ManagedContainer>, RuntimeError> {
        Ok(self
            .containers
            .lock()
            .unwrap()
            .values()
            .filter(|c| c.label(labels::INSTANCE) == Some(instance))
            .cloned()
            .collect())
    }

    fn events(&self, _instance: &str) -> BoxStream<'static, Result<RuntimeEvent, RuntimeError>> {
        stream::pending().boxed()
    }
}
