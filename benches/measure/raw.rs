//! The cold baseline: containers created, started and checked ready straight through
//! the project's own [`DockerRuntime`] and [`ContainerSpec::for_workload`], so they
//! carry the same hardening (dropped capabilities, read-only root, tmpfs, limits,
//! bind mounts) as the daemon's — only the daemon (HTTP, pool actor, ledger) is
//! missing. They are labelled `boilerhouse.managed=true` and
//! `boilerhouse.instance=<bench instance>-raw`, an instance of their own: the daemon
//! sweeps containers of its own instance that no pool knows, so sharing its instance
//! would have them removed mid-measurement. A second
//! [`InstanceGuard`](boilerhouse_testkit::InstanceGuard) removes them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use boilerhouse::config::Config;
use boilerhouse::fsutil::{self, Owner};
use boilerhouse::runtime::spec::{spec_hash, ContainerDirs};
use boilerhouse::runtime::{labels, ContainerSpec, DockerRuntime, Readiness, Runtime};
use boilerhouse::workload::Workload;

use super::BenchResult;

/// Pool label of the raw containers: no workload of the bench has this id.
const RAW_POOL: &str = "bench-raw";

#[derive(Clone)]
pub struct RawDocker {
    runtime: Arc<DockerRuntime>,
    config: Arc<Config>,
    workload: Arc<Workload>,
    hash: String,
    owner: Owner,
}

/// A raw container that was created and found ready.
pub struct RawContainer {
    pub docker_id: String,
    dirs: ContainerDirs,
    /// create + start + ready.
    pub elapsed: Duration,
}

impl RawDocker {
    /// `config` must carry the bench's instance and directories.
    pub async fn connect(config: Config, workload: Workload) -> BenchResult<Self> {
        let runtime = DockerRuntime::connect().await?;
        runtime.ensure_image(&workload.image).await?;
        Ok(Self {
            hash: spec_hash(&workload, &config),
            owner: workload.user.map(|u| (u.uid, u.group())),
            runtime: Arc::new(runtime),
            config: Arc::new(config),
            workload: Arc::new(workload),
        })
    }

    /// The spec and host dirs of raw container `n`; the dirs are created (untimed, as
    /// they are a host-side step Docker does not do).
    pub fn prepare(&self, n: usize) -> BenchResult<(ContainerSpec, ContainerDirs)> {
        let container_id = format!("raw-{n:05}");
        let dirs = ContainerDirs::new(&self.config, &container_id);
        fsutil::create_dirs(&dirs, self.owner)?;
        let created_at = chrono::Utc::now().to_rfc3339();
        let mut spec = ContainerSpec::for_workload(
            &self.workload,
            &self.config,
            &container_id,
            &dirs,
            &self.hash,
            &created_at,
        );
        spec.labels.insert(labels::POOL.into(), RAW_POOL.into());
        Ok((spec, dirs))
    }

    /// Timed: create + start + wait until ready, as the daemon's pools do.
    pub async fn create_ready(
        &self,
        spec: &ContainerSpec,
        dirs: ContainerDirs,
    ) -> BenchResult<RawContainer> {
        let started = Instant::now();
        let docker_id = self.runtime.create_and_start(spec).await?;
        let readiness = self
            .runtime
            .wait_ready(&docker_id, &spec.name, Duration::from_secs(60))
            .await?;
        if readiness != Readiness::Ready {
            return Err(format!("raw container {} was not ready within 60 s", spec.name).into());
        }
        Ok(RawContainer {
            docker_id,
            dirs,
            elapsed: started.elapsed(),
        })
    }

    /// Timed `docker pause` then `docker unpause` — what a release costs the engine.
    pub async fn pause_unpause(&self, c: &RawContainer) -> BenchResult<(Duration, Duration)> {
        let started = Instant::now();
        self.runtime.pause(&c.docker_id).await?;
        let paused = started.elapsed();
        let started = Instant::now();
        self.runtime.unpause(&c.docker_id).await?;
        Ok((paused, started.elapsed()))
    }

    /// Force-removes the container and its dirs; returns the engine's removal time.
    pub async fn remove(&self, c: RawContainer) -> BenchResult<Duration> {
        let started = Instant::now();
        self.runtime.remove(&c.docker_id).await?;
        let elapsed = started.elapsed();
        fsutil::remove_dirs(&c.dirs);
        Ok(elapsed)
    }
}
