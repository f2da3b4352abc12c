//! The `ContainerManager`: pools by id, tenant → claim routing across pools,
//! recovery of containers and claims at start-up, and the Docker event watcher.
//!
//! It owns no pool bookkeeping itself — each pool actor does — so it needs no lock:
//! the map of pools is fixed once the daemon has started.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;

use crate::activity::ActivityLog;
use crate::backoff::Backoff;
use crate::config::Config;
use crate::fsutil;
use crate::ledger::{ClaimRecord, Ledger};
use crate::pool::{
    self, Adopted, ClaimGrant, ClaimRequest, ClaimView, ContainerInfo, ContainerView, PoolContext,
    PoolError, PoolHandle, PoolView, ScaleOutcome, Snapshot,
};
use crate::runtime::spec::{spec_hash, ContainerDirs};
use crate::runtime::{labels, EngineHealth, EngineState, Runtime};
use crate::shutdown::Shutdown;
use crate::sync::{SyncEngine, SyncOp, TransferResult};
use crate::tenant::TenantId;
use crate::workload::Workload;

pub struct ContainerManager {
    ctx: Arc<PoolContext>,
    pools: BTreeMap<String, PoolHandle>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the claim ledger in {0}: {1}")]
    Ledger(String, std::io::Error),
    #[error("cannot create {0}: {1}")]
    Dir(String, std::io::Error),
    #[error("recovery failed: {0}")]
    Recovery(String),
}

impl ContainerManager {
    /// Recovers this instance's containers and claims, then starts one pool per workload.
    pub async fn start(
        config: Arc<Config>,
        runtime: Arc<dyn Runtime>,
        workloads: Vec<Workload>,
        activity: Arc<ActivityLog>,
        shutdown: &Shutdown,
    ) -> Result<Self, StartError> {
        for dir in [
            &config.state_dir,
            &config.secrets_dir,
            &config.socket_dir,
            &config.data_dir,
        ] {
            std::fs::create_dir_all(dir)
                .map_err(|e| StartError::Dir(dir.display().to_string(), e))?;
        }
        let ledger = Ledger::open(&config.data_dir)
            .map_err(|e| StartError::Ledger(config.data_dir.display().to_string(), e))?;
        let cache_dir = config.data_dir.join("state-cache");
        let state_cache = crate::sync::StateCache::open(
            cache_dir.clone(),
            config.state_cache_mb.saturating_mul(1024 * 1024),
        )
        .map_err(|e| StartError::Dir(cache_dir.display().to_string(), e))?;
        let ctx = Arc::new(PoolContext {
            sync: SyncEngine::new(
                config.rclone_bin.clone(),
                config.sync_concurrency,
                config.sync_timeout(),
            )
            .with_state_cache(Arc::new(state_cache)),
            capacity: pool::NodeCapacity::new(config.max_containers),
            config: config.clone(),
            runtime: runtime.clone(),
            ledger: ledger.clone(),
            activity,
        });
        let workloads: BTreeMap<String, Arc<Workload>> = workloads
            .into_iter()
            .map(|w| (w.id.to_string(), Arc::new(w)))
            .collect();
        let mut adopted = recover(&ctx, &workloads).await?;
        let mut pools = BTreeMap::new();
        for (id, workload) in &workloads {
            let handle = pool::spawn(
                ctx.clone(),
                workload.clone(),
                adopted.remove(id).unwrap_or_default(),
            );
            pools.insert(id.clone(), handle);
        }
        shutdown.spawn(watch_events(
            runtime.clone(),
            config.instance.clone(),
            pools.clone(),
        ));
        shutdown.spawn(sweep_orphans(ctx.clone(), pools.clone()));
        Ok(Self { ctx, pools })
    }

    pub fn activity(&self) -> &ActivityLog {
        &self.ctx.activity
    }

    pub fn runtime(&self) -> &dyn Runtime {
        self.ctx.runtime.as_ref()
    }

    pub fn config(&self) -> &Config {
        &self.ctx.config
    }

    pub fn node_used(&self) -> usize {
        self.ctx.capacity.used()
    }

    pub fn pools(&self) -> impl Iterator<Item = &PoolHandle> {
        self.pools.values()
    }

    pub fn pool(&self, id: &str) -> Option<&PoolHandle> {
        self.pools.get(id)
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ctx.ledger
    }

    pub fn sync_engine(&self) -> &SyncEngine {
        &self.ctx.sync
    }

    pub async fn snapshots(&self) -> Vec<Snapshot> {
        let mut out = Vec::with_capacity(self.pools.len());
        for p in self.pools.values() {
            if let Ok(s) = p.snapshot().await {
                out.push(s);
            }
        }
        out
    }

    pub async fn pool_views(&self) -> Vec<PoolView> {
        self.snapshots().await.into_iter().map(|s| s.pool).collect()
    }

    pub async fn containers(&self, pool: Option<&str>) -> Vec<ContainerView> {
        self.snapshots()
            .await
            .into_iter()
            .filter(|s| pool.is_none_or(|p| s.pool.id == p))
            .flat_map(|s| s.containers)
            .collect()
    }

    pub async fn claims(&self) -> Vec<ClaimView> {
        self.snapshots()
            .await
            .into_iter()
            .flat_map(|s| s.claims)
            .collect()
    }

    pub async fn tenant_claims(&self, tenant: &TenantId) -> Vec<ClaimView> {
        self.claims()
            .await
            .into_iter()
            .filter(|c| c.tenant_id == tenant.as_str())
            .collect()
    }

    /// Claims in `pool`; the pool writes `secrets` before the claim is answered.
    pub async fn claim(
        &self,
        pool: &PoolHandle,
        mut request: ClaimRequest,
        secrets: Option<BTreeMap<String, String>>,
    ) -> Result<ClaimGrant, PoolError> {
        request.secrets = secrets;
        pool.claim(request).await
    }

    pub async fn release(
        &self,
        tenant: &TenantId,
        pool: Option<&PoolHandle>,
        sync: bool,
    ) -> Result<Vec<(String, ContainerInfo)>, PoolError> {
        let targets: Vec<&PoolHandle> = match pool {
            Some(p) => vec![p],
            None => {
                let held: Vec<String> = self
                    .tenant_claims(tenant)
                    .await
                    .into_iter()
                    .map(|c| c.pool_id)
                    .collect();
                self.pools
                    .values()
                    .filter(|p| held.iter().any(|h| h == p.id()))
                    .collect()
            }
        };
        if targets.is_empty() {
            return Err(PoolError::NotClaimed);
        }
        let mut released = Vec::new();
        for p in targets {
            let info = p.release(tenant.clone(), sync).await?;
            released.push((p.id().to_owned(), info));
        }
        Ok(released)
    }

    /// Runs a manual sync; the pool runs it on the claim's sync cell, which
    /// serializes it with the claim's other transfers.
    pub async fn sync(
        &self,
        pool: &PoolHandle,
        tenant: &TenantId,
        ops: &[SyncOp],
    ) -> Result<Vec<TransferResult>, PoolError> {
        pool.sync(tenant.clone(), ops.to_vec()).await
    }

    pub async fn scale(&self, pool: &PoolHandle, target: i64) -> Result<ScaleOutcome, PoolError> {
        pool.scale(target).await
    }

    /// Stops the pools' timers (the event watcher ends with the daemon's
    /// [`Shutdown`]); containers keep running for the next start to adopt, and no
    /// claimed tenant's state is touched.
    pub async fn shutdown(&self) {
        for p in self.pools.values() {
            p.shutdown().await;
        }
    }

    /// Is every pool at its minimum?
    pub async fn warmed_up(&self) -> bool {
        self.pool_views()
            .await
            .iter()
            .all(|p| p.idle_count + p.claimed_count >= p.min_size)
    }
}

/// Sorts this instance's containers into claimed (their ledger record exists),
/// idle (ready, current spec, empty dirs) and the rest, which are removed.
async fn recover(
    ctx: &PoolContext,
    workloads: &BTreeMap<String, Arc<Workload>>,
) -> Result<HashMap<String, Vec<Adopted>>, StartError> {
    let config = &ctx.config;
    let (records, problems) = ctx.ledger.load_all();
    for p in problems {
        tracing::error!(problem = %p, "unreadable claim record left in place");
    }
    let containers = ctx
        .runtime
        .list_managed(&config.instance)
        .await
        .map_err(|e| StartError::Recovery(e.to_string()))?;
    let mut by_container: HashMap<(String, String), ClaimRecord> = records
        .into_iter()
        .map(|r| ((r.pool_id.clone(), r.container_id.clone()), r))
        .collect();
    let hashes: HashMap<&str, String> = workloads
        .iter()
        .map(|(id, w)| (id.as_str(), spec_hash(w, config)))
        .collect();
    let mut adopted: HashMap<String, Vec<Adopted>> = HashMap::new();
    let mut removals = Vec::new();
    for c in containers {
        let pool = c.label(labels::POOL).unwrap_or_default().to_owned();
        let cid = c.label(labels::CONTAINER_ID).unwrap_or_default().to_owned();
        let valid_cid = !cid.is_empty()
            && cid.starts_with(&format!("{pool}-"))
            && cid
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-');
        let created_at = c
            .label(labels::CREATED_AT)
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(Utc::now);
        let running = matches!(c.state, EngineState::Running | EngineState::Paused);
        if !valid_cid || !workloads.contains_key(&pool) {
            tracing::info!(container = %c.docker_id, pool, "removing container of an unknown pool");
            removals.push((c.docker_id.clone(), valid_cid.then(|| cid.clone())));
            continue;
        }
        if let Some(record) = by_container.remove(&(pool.clone(), cid.clone())) {
            if c.state == EngineState::Paused {
                // Paused by a release the crash interrupted: the claim still holds.
                let _ = ctx.runtime.unpause(&c.docker_id).await;
            }
            tracing::info!(pool, container = %cid, tenant = %record.tenant_id, "claim recovered");
            adopted.entry(pool).or_default().push(Adopted {
                container_id: cid,
                docker_id: c.docker_id,
                created_at,
                claim: Some(record),
                running,
            });
            continue;
        }
        let dirs = ContainerDirs::new(config, &cid);
        let ready = c.state == EngineState::Running
            && matches!(c.health, EngineHealth::None | EngineHealth::Healthy);
        let current = c.label(labels::SPEC_HASH) == hashes.get(pool.as_str()).map(String::as_str);
        let clean = fsutil::is_empty(&dirs.state) && fsutil::is_empty(&dirs.secrets);
        if ready && current && clean && dirs.state.is_dir() {
            adopted.entry(pool).or_default().push(Adopted {
                container_id: cid,
                docker_id: c.docker_id,
                created_at,
                claim: None,
                running: true,
            });
        } else {
            tracing::info!(pool, container = %cid, ready, current, clean, "removing unusable container");
            removals.push((c.docker_id.clone(), Some(cid)));
        }
    }
    for ((pool, cid), record) in by_container {
        tracing::error!(
            pool, container = %cid, tenant = %record.tenant_id,
            state_dir = %ContainerDirs::new(config, &cid).state.display(),
            "claimed container is gone from the engine; its state dir is left on disk for the operator"
        );
        let _ = ctx.ledger.remove(&pool, &record.tenant_id).await;
    }
    for (docker_id, cid) in removals {
        if let Err(e) = ctx.runtime.remove(&docker_id).await {
            tracing::warn!(container = %docker_id, error = %e, "cannot remove container");
        }
        if let Some(cid) = cid {
            fsutil::remove_dirs(&ContainerDirs::new(config, &cid));
        }
    }
    Ok(adopted)
}

/// Routes Docker events to their pools; reconnects if the stream drops.
async fn watch_events(
    runtime: Arc<dyn Runtime>,
    instance: String,
    pools: BTreeMap<String, PoolHandle>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let mut first = true;
    loop {
        let mut stream = runtime.events(&instance);
        if !first {
            // Events may have been missed while the stream was down: anything of ours
            // that is no longer running is reported as dead.
            reconcile(runtime.as_ref(), &instance, &pools).await;
        }
        first = false;
        while let Some(item) = stream.next().await {
            match item {
                Ok(event) => {
                    backoff.reset();
                    if let Some(p) = pools.get(&event.pool) {
                        p.event(event).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Docker event stream failed");
                    break;
                }
            }
        }
        tokio::time::sleep(backoff.fail()).await;
    }
}

async fn reconcile(runtime: &dyn Runtime, instance: &str, pools: &BTreeMap<String, PoolHandle>) {
    let Ok(list) = runtime.list_managed(instance).await else {
        return;
    };
    for c in list {
        if c.state != EngineState::Other {
            continue;
        }
        let (Some(pool), Some(cid)) = (c.label(labels::POOL), c.label(labels::CONTAINER_ID)) else {
            continue;
        };
        if let Some(p) = pools.get(pool) {
            p.event(crate::runtime::RuntimeEvent {
                pool: pool.to_owned(),
                container_id: cid.to_owned(),
                kind: crate::runtime::EventKind::Died { exit_code: None },
            })
            .await;
        }
    }
}

/// Removes containers of this instance that no pool knows. A daemon killed while
/// its create requests were in flight can leave the engine to finish one after the
/// next start's recovery listing; such a container was never claimed, so it goes.
async fn sweep_orphans(ctx: Arc<PoolContext>, pools: BTreeMap<String, PoolHandle>) {
    let mut every = tokio::time::interval(Duration::from_secs(15));
    every.tick().await;
    loop {
        every.tick().await;
        let Ok(listed) = ctx.runtime.list_managed(&ctx.config.instance).await else {
            continue;
        };
        let mut known = std::collections::HashSet::new();
        for p in pools.values() {
            match p.snapshot().await {
                Ok(s) => known.extend(s.containers.into_iter().map(|c| c.id)),
                Err(_) => return,
            }
        }
        for c in listed {
            let Some(cid) = c.label(labels::CONTAINER_ID) else {
                continue;
            };
            if known.contains(cid) {
                continue;
            }
            tracing::warn!(container = %cid, "removing a container no pool knows (left by an earlier run)");
            let _ = ctx.runtime.remove(&c.docker_id).await;
            let dirs = ContainerDirs::new(&ctx.config, cid);
            if fsutil::is_empty(&dirs.state) && fsutil::is_empty(&dirs.secrets) {
                fsutil::remove_dirs(&dirs);
            }
        }
    }
}
