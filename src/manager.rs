//! The `ContainerManager`: pools by id, tenant → claim routing across pools,
//! recovery of containers and claims at start-up, the Docker event watcher, the
//! orphan sweep, and workload reloads (the whole set validated first, then diffed by
//! id against the running pools: new ones start, changed ones get the new spec —
//! in place or by a rollout, see `pool/rollout.rs` — and removed ones drain).
//!
//! It owns no pool bookkeeping itself — each pool actor does. The map of pools
//! changes only on a reload; it sits behind a lock held for a lookup, never across
//! an await, and the handles live in an append-only arena so a request keeps the
//! `&PoolHandle` it looked up while a reload swaps the map.

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
    self, Adopted, Applied, ClaimGrant, ClaimRequest, ClaimView, ContainerInfo, ContainerView,
    PoolContext, PoolControl, PoolError, PoolHandle, PoolView, ScaleOutcome, Snapshot,
};
use crate::runtime::spec::{spec_hash, ContainerDirs};
use crate::runtime::{labels, EngineHealth, EngineState, Runtime};
use crate::shutdown::Shutdown;
use crate::sync::{SyncEngine, SyncOp, TransferResult};
use crate::tenant::TenantId;
use crate::workload::Workload;

pub struct ContainerManager {
    ctx: Arc<PoolContext>,
    pools: Arc<Registry>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
    last_reload: std::sync::RwLock<Option<ReloadReport>>,
}

/// The pools by id. Every handle ever made (one per pool and spec version) stays
/// in `versions` for the manager's life, so a `&PoolHandle` never dangles; `current`
/// says which one each id uses now. (boxcar: an append-only vector whose elements
/// never move, which safe std code cannot give behind a shared reference.)
struct Registry {
    versions: boxcar::Vec<PoolHandle>,
    current: std::sync::RwLock<BTreeMap<String, Slot>>,
}

#[derive(Clone)]
struct Slot {
    version: usize,
    control: PoolControl,
    /// Its workload was removed; it ends when its last claim is released.
    draining: bool,
}

impl Registry {
    fn map(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Slot>> {
        self.current.read().unwrap_or_else(|p| p.into_inner())
    }

    fn map_mut(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Slot>> {
        self.current.write().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, id: &str, handle: PoolHandle, control: PoolControl) {
        let version = self.versions.push(handle);
        let slot = Slot {
            version,
            control,
            draining: false,
        };
        self.map_mut().insert(id.to_owned(), slot);
    }

    /// The pool `id`, draining or not (a draining pool still releases its claims).
    fn get(&self, id: &str) -> Option<&PoolHandle> {
        let version = self.map().get(id)?.version;
        self.versions.get(version)
    }

    /// Pools that take claims, by id.
    fn active(&self) -> Vec<&PoolHandle> {
        self.handles(false)
    }

    /// Every running pool, draining ones included.
    fn all(&self) -> Vec<&PoolHandle> {
        self.handles(true)
    }

    fn handles(&self, draining_too: bool) -> Vec<&PoolHandle> {
        let versions: Vec<usize> = self
            .map()
            .values()
            .filter(|s| draining_too || !s.draining)
            .map(|s| s.version)
            .collect();
        versions
            .into_iter()
            .filter_map(|v| self.versions.get(v))
            .collect()
    }
}

/// What a reload did (or why it did nothing).
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReloadReport {
    /// `api`, `sighup` or `watch`.
    #[schema(value_type = String)]
    pub trigger: &'static str,
    pub at: DateTime<Utc>,
    /// False: the set was invalid and nothing changed; `errors` says why.
    pub applied: bool,
    pub errors: Vec<ReloadError>,
    pub added: Vec<String>,
    pub changed: Vec<ChangedPool>,
    pub removed: Vec<String>,
    pub unchanged: Vec<String>,
}

/// One problem of a rejected reload: a workload file's (with line and key) or
/// the preflight's.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReloadError {
    pub file: String,
    pub line: Option<usize>,
    pub key: Option<String>,
    pub message: String,
}

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChangedPool {
    pub id: String,
    pub applied: Applied,
}

impl ReloadReport {
    fn new(trigger: &'static str) -> Self {
        Self {
            trigger,
            at: Utc::now(),
            applied: false,
            errors: Vec::new(),
            added: Vec::new(),
            changed: Vec::new(),
            removed: Vec::new(),
            unchanged: Vec::new(),
        }
    }

    fn summary(&self) -> String {
        if !self.applied {
            return format!(
                "workload reload rejected, nothing changed: {} error(s)",
                self.errors.len()
            );
        }
        let list = |v: &[String]| match v.is_empty() {
            true => "none".to_owned(),
            false => v.join(", "),
        };
        let changed: Vec<String> = self
            .changed
            .iter()
            .map(|c| match c.applied {
                Applied::InPlace => format!("{} (in place)", c.id),
                Applied::Rollout { .. } => format!("{} (rollout)", c.id),
            })
            .collect();
        format!(
            "workloads reloaded: added {}; changed {}; removed {}",
            list(&self.added),
            list(&changed),
            list(&self.removed)
        )
    }
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
        if state_cache.enabled() {
            if let Err(e) = state_cache.can_move_into(&config.state_dir) {
                tracing::warn!("{e}");
            }
        }
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
            fence: crate::fence::Fence::default(),
        });
        let workloads: BTreeMap<String, Arc<Workload>> = workloads
            .into_iter()
            .map(|w| (w.id.to_string(), Arc::new(w)))
            .collect();
        let (mut adopted, mut hashes) = recover(&ctx, &workloads).await?;
        let pools = Arc::new(Registry {
            versions: boxcar::Vec::new(),
            current: Default::default(),
        });
        for (id, workload) in &workloads {
            let (handle, control) = pool::spawn_controlled(
                ctx.clone(),
                workload.clone(),
                adopted.remove(id).unwrap_or_default(),
                hashes.remove(id).unwrap_or_default(),
            );
            pools.set(id, handle, control);
        }
        shutdown.spawn(watch_events(
            runtime.clone(),
            config.instance.clone(),
            pools.clone(),
        ));
        shutdown.spawn(sweep_orphans(ctx.clone(), pools.clone()));
        Ok(Self {
            ctx,
            pools,
            reloading: tokio::sync::Mutex::new(()),
            last_reload: Default::default(),
        })
    }

    /// Reloads the workload files: the whole set is loaded and validated (files and
    /// preflight) first; if anything is wrong nothing changes and the report says
    /// why. Otherwise new workloads start pools, changed ones get their new spec
    /// and removed ones drain.
    pub async fn reload(&self, trigger: &'static str) -> ReloadReport {
        let _one_at_a_time = self.reloading.lock().await;
        let config = &self.ctx.config;
        let env = |name: &str| std::env::var(name).ok();
        let mut report = ReloadReport::new(trigger);
        let dir = config.workloads_dir.display().to_string();
        match crate::workload::load_dir_or_default(
            &config.workloads_dir,
            &env,
            &config.default_image,
        ) {
            Err(errors) => {
                report.errors = errors
                    .0
                    .into_iter()
                    .map(|e| ReloadError {
                        file: e.file.display().to_string(),
                        line: e.line,
                        key: e.key,
                        message: e.message,
                    })
                    .collect();
            }
            Ok(workloads) => match crate::preflight::check(config, &workloads).await {
                Err(problems) => {
                    report.errors = problems
                        .0
                        .iter()
                        .map(|p| ReloadError {
                            file: dir.clone(),
                            line: None,
                            key: None,
                            message: p.to_string(),
                        })
                        .collect();
                }
                Ok(_) => {
                    self.apply_set(workloads, &mut report).await;
                    report.applied = true;
                }
            },
        }
        let summary = report.summary();
        if report.applied {
            tracing::info!(trigger, "{summary}");
            crate::metrics::reload(trigger, "applied");
        } else {
            let errors: Vec<String> = report.errors.iter().map(|e| e.to_string()).collect();
            tracing::error!(
                trigger,
                dir,
                errors = %errors.join("\n"),
                "{summary}; the running pools go on as they are"
            );
            crate::metrics::reload(trigger, "rejected");
        }
        let kind = match report.applied {
            true => "workloads.reloaded",
            false => "workloads.reload_failed",
        };
        self.ctx
            .activity
            .record(crate::activity::Event::daemon(kind).message(summary));
        *self.last_reload.write().unwrap_or_else(|p| p.into_inner()) = Some(report.clone());
        report
    }

    /// The last reload's report, if one ran since start.
    pub fn last_reload(&self) -> Option<ReloadReport> {
        self.last_reload
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    async fn apply_set(&self, workloads: Vec<Workload>, report: &mut ReloadReport) {
        let current: BTreeMap<String, Slot> = self.pools.map().clone();
        let mut wanted = std::collections::BTreeSet::new();
        for workload in workloads {
            let id = workload.id.to_string();
            wanted.insert(id.clone());
            let workload = Arc::new(workload);
            let Some(slot) = current.get(&id) else {
                let (handle, control) =
                    pool::spawn_controlled(self.ctx.clone(), workload, Vec::new(), HashMap::new());
                self.pools.set(&id, handle, control);
                report.added.push(id);
                continue;
            };
            let Some(old) = self.pools.versions.get(slot.version) else {
                continue;
            };
            if !slot.draining && *old.workload == *workload {
                report.unchanged.push(id);
                continue;
            }
            match slot.control.apply(workload.clone()).await {
                Ok(applied) => {
                    let handle = pool::retarget(old, workload);
                    self.pools.set(&id, handle, slot.control.clone());
                    report.changed.push(ChangedPool { id, applied });
                }
                // A drained pool that ended just now: the workload starts afresh.
                Err(_) if slot.draining => {
                    let (handle, control) = pool::spawn_controlled(
                        self.ctx.clone(),
                        workload,
                        Vec::new(),
                        HashMap::new(),
                    );
                    self.pools.set(&id, handle, control);
                    report.added.push(id);
                }
                Err(e) => {
                    tracing::warn!(pool = %id, error = %e, "the pool did not take its new spec")
                }
            }
        }
        for (id, slot) in current {
            if wanted.contains(&id) || slot.draining {
                continue;
            }
            let (claimed, ended) = match slot.control.drain().await {
                Ok(drain) => drain,
                Err(e) => {
                    tracing::warn!(pool = %id, error = %e, "the pool did not start draining");
                    continue;
                }
            };
            if let Some(s) = self.pools.map_mut().get_mut(&id) {
                s.draining = true;
            }
            tracing::info!(pool = %id, claimed, "workload removed: the pool drains");
            let pools = self.pools.clone();
            let (pool_id, version) = (id.clone(), slot.version);
            tokio::spawn(async move {
                // An error instead: the workload came back first, or the daemon stops.
                if ended.await.is_ok() {
                    let mut map = pools.map_mut();
                    if map
                        .get(&pool_id)
                        .is_some_and(|s| s.draining && s.version == version)
                    {
                        map.remove(&pool_id);
                    }
                }
            });
            report.removed.push(id);
        }
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

    /// What every pool asks before an upload (the cluster installs its check).
    pub fn fence(&self) -> &crate::fence::Fence {
        &self.ctx.fence
    }

    pub fn node_used(&self) -> usize {
        self.ctx.capacity.used()
    }

    /// The pools that take claims, by id (draining ones are left out).
    pub fn pools(&self) -> impl Iterator<Item = &PoolHandle> {
        self.pools.active().into_iter()
    }

    /// The pool `id`, also while it drains (its claims can still be released).
    pub fn pool(&self, id: &str) -> Option<&PoolHandle> {
        self.pools.get(id)
    }

    /// A draining pool refuses claims and is gone for everything new.
    pub fn is_draining(&self, id: &str) -> bool {
        self.pools.map().get(id).is_some_and(|s| s.draining)
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ctx.ledger
    }

    pub fn sync_engine(&self) -> &SyncEngine {
        &self.ctx.sync
    }

    pub async fn snapshots(&self) -> Vec<Snapshot> {
        let pools = self.pools.all();
        let mut out = Vec::with_capacity(pools.len());
        for p in pools {
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
                    .all()
                    .into_iter()
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
        for p in self.pools.all() {
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

/// Containers recovered for each pool, and the spec hash label of each claimed one
/// (a claimed container keeps an older spec until released).
type Recovered = (
    HashMap<String, Vec<Adopted>>,
    HashMap<String, HashMap<String, String>>,
);

/// Sorts this instance's containers into claimed (their ledger record exists),
/// idle (ready, current spec, empty dirs) and the rest, which are removed.
async fn recover(
    ctx: &PoolContext,
    workloads: &BTreeMap<String, Arc<Workload>>,
) -> Result<Recovered, StartError> {
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
    let mut claimed_hashes: HashMap<String, HashMap<String, String>> = HashMap::new();
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
            removals.push((c.docker_id.clone(), valid_cid.then(|| cid.clone()), true));
            continue;
        }
        if let Some(record) = by_container.remove(&(pool.clone(), cid.clone())) {
            if c.state == EngineState::Paused {
                // Paused by a release the crash interrupted: the claim still holds.
                let _ = ctx.runtime.unpause(&c.docker_id).await;
            }
            tracing::info!(pool, container = %cid, tenant = %record.tenant_id, "claim recovered");
            claimed_hashes.entry(pool.clone()).or_default().insert(
                cid.clone(),
                c.label(labels::SPEC_HASH).unwrap_or_default().to_owned(),
            );
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
            removals.push((c.docker_id.clone(), Some(cid), false));
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
    for (docker_id, cid, unknown_pool) in removals {
        if let Err(e) = ctx.runtime.remove(&docker_id).await {
            tracing::warn!(container = %docker_id, error = %e, "cannot remove container");
        }
        let Some(cid) = cid else { continue };
        let dirs = ContainerDirs::new(config, &cid);
        // A tenant's state is never deleted before it is uploaded: a claimed
        // container of a workload whose file was removed (e.g. a restart while its
        // pool drained) leaves its state dir for the operator.
        if !unknown_pool || (fsutil::is_empty(&dirs.state) && fsutil::is_empty(&dirs.secrets)) {
            fsutil::remove_dirs(&dirs);
        } else {
            tracing::error!(
                container = %cid,
                state_dir = %dirs.state.display(),
                "container of an unknown pool removed; its state dir is not empty and is left on disk for the operator (bring the workload file back before a restart to release such claims with upload)"
            );
        }
    }
    Ok((adopted, claimed_hashes))
}

/// Routes Docker events to their pools; reconnects if the stream drops.
async fn watch_events(runtime: Arc<dyn Runtime>, instance: String, pools: Arc<Registry>) {
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

async fn reconcile(runtime: &dyn Runtime, instance: &str, pools: &Registry) {
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
///
/// The engine is listed before the pools are asked, and every running pool —
/// draining and rolling ones included, each of which keeps a record of every
/// container it has until the engine has removed it — must answer, or nothing is
/// removed in that pass: a container is only ever removed when no pool knows it.
async fn sweep_orphans(ctx: Arc<PoolContext>, pools: Arc<Registry>) {
    let mut every = tokio::time::interval(Duration::from_secs(15));
    every.tick().await;
    loop {
        every.tick().await;
        let Ok(listed) = ctx.runtime.list_managed(&ctx.config.instance).await else {
            continue;
        };
        let Some(known) = known_containers(&pools).await else {
            continue;
        };
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

/// The ids of every container some pool has a record of; None when a pool did not
/// answer (it ended or stops), so the caller removes nothing.
async fn known_containers(pools: &Registry) -> Option<std::collections::HashSet<String>> {
    let mut known = std::collections::HashSet::new();
    for p in pools.all() {
        let s = p.snapshot().await.ok()?;
        known.extend(s.containers.into_iter().map(|c| c.id));
    }
    Some(known)
}
