//! The pool actor: one tokio task per workload owns that pool's containers, its
//! idle set, its claims and its FIFO queue of waiting claims. Everything else talks
//! to it through a cheap, cloneable [`PoolHandle`] over a bounded channel, so the
//! pool's bookkeeping has exactly one owner and no lock.
//!
//! Slow work (creating a container, restoring state, uploading on release,
//! removing) runs in spawned tasks that report back with a message, so the actor
//! never waits on Docker or rclone and a warm claim never waits behind them.
//! The warm claim path itself makes no Docker call: an idle container was checked
//! ready before it became idle, and Docker events take dead ones out of the set.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::activity::{ActivityLog, Event};
use crate::config::Config;
use crate::fsutil::{self, Owner};
use crate::ledger::{ClaimRecord, Ledger};
use crate::runtime::docker::probe_summary;
use crate::runtime::spec::{spec_hash, ContainerDirs};
use crate::runtime::{
    ContainerReport, ContainerSpec, EngineHealth, EventKind, ProbeTimings, Readiness, Runtime,
    RuntimeEvent,
};
use crate::sync::{ClaimSync, SyncEngine, SyncError, SyncOp, SyncStatus, TransferResult};
use crate::tenant::TenantId;
use crate::workload::{ready_deadline, Recycle, SyncSpec, Workload};

/// Most create calls one pool has in flight at once; the pool adapts below it.
const CREATE_CONCURRENCY: usize = 24;
/// Create calls in flight a new pool starts with, before it has seen how the node copes.
const INITIAL_CREATE_CONCURRENCY: usize = 8;
/// How long a creation watches a new container itself before handing it to the
/// engine's health events (a container without healthcheck is ready once running).
const FIRST_LOOK: Duration = Duration::from_millis(500);
/// How often a starting container is inspected in case a health event was missed.
const STARTING_CHECK: Duration = Duration::from_secs(5);
/// Probe time-outs within this window mark the pool as under load.
const PRESSURE_WINDOW: Duration = Duration::from_secs(60);
/// Probe time-outs within [`PRESSURE_WINDOW`] from which the node counts as overloaded.
const PRESSURE_TIMEOUTS: usize = 3;
/// Deadline extensions a container whose probes only time out gets under load.
const MAX_EXTENSIONS: u8 = 3;
/// How long a container must stay idle before creation failures are forgiven.
const STABLE: Duration = Duration::from_secs(10);
/// Lines of a failed container's output quoted in `lastError`.
const LOG_LINES: usize = 10;
/// How often the actor looks at deadlines, inactivity and refills.
const TICK: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What every pool shares: configuration, the engine, sync, the ledger, the node cap.
pub struct PoolContext {
    pub config: Arc<Config>,
    pub runtime: Arc<dyn Runtime>,
    pub sync: SyncEngine,
    pub ledger: Ledger,
    pub capacity: NodeCapacity,
    pub activity: Arc<ActivityLog>,
}

/// The node-wide cap on managed containers (`BOILERHOUSE_MAX_CONTAINERS`).
pub struct NodeCapacity {
    used: AtomicUsize,
    max: usize,
}

impl NodeCapacity {
    pub fn new(max: usize) -> Self {
        Self {
            used: AtomicUsize::new(0),
            max,
        }
    }
    fn try_reserve(&self) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u < self.max).then_some(u + 1)
            })
            .is_ok()
    }
    fn add(&self, n: usize) {
        self.used.fetch_add(n, Ordering::AcqRel);
    }
    fn release(&self) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| u.checked_sub(1));
    }
    fn available(&self) -> bool {
        self.used.load(Ordering::Acquire) < self.max
    }
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum PoolError {
    #[error("{0}")]
    Exhausted(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    SyncFailed(String),
    #[error("tenant holds no claim in this pool")]
    NotClaimed,
    #[error("{0}")]
    Busy(String),
    #[error("no container with id {0:?} in this pool")]
    ContainerNotFound(String),
    #[error("container {0} is claimed by tenant {1}; add ?force=true to destroy it anyway (the claim ends without upload)")]
    ContainerClaimed(String, String),
    #[error("{0}")]
    Invalid(String),
    /// The claim record could not be written: the claim was not made.
    #[error("{0}")]
    Ledger(String),
    #[error("{0}")]
    Internal(String),
    #[error("the pool is shutting down")]
    Stopped,
}

/// Identity and host paths of a container, as handed out with a claim.
#[derive(Debug, Clone)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub docker_id: Option<String>,
    pub dirs: ContainerDirs,
}

#[derive(Debug, Clone)]
pub struct ClaimGrant {
    pub container: ContainerInfo,
    /// The claim waited for a container (cold start or queue) instead of taking an idle one.
    pub cold: bool,
    pub claimed_at: DateTime<Utc>,
    pub reused: bool,
    pub sync_status: Option<SyncStatus>,
    pub owner: Owner,
}

/// A claim's secrets: file name → content, written under the container's secrets dir.
pub type Secrets = BTreeMap<String, String>;

#[derive(Debug, Clone)]
pub struct ClaimRequest {
    pub tenant: TenantId,
    /// How long the claim may queue when the pool is at capacity (0 = fail fast).
    pub queue_wait: Duration,
    pub metadata: Option<serde_json::Value>,
    /// Written before this request is answered; None leaves the files as they are.
    pub secrets: Option<Secrets>,
}

/// One caller waiting for a claim's answer, with the secrets it asked for.
struct Asker {
    reply: Reply<ClaimGrant>,
    secrets: Option<Secrets>,
}

impl Asker {
    fn answer(self, result: Result<ClaimGrant, PoolError>) {
        let _ = self.reply.send(result);
    }
    fn is_closed(&self) -> bool {
        self.reply.is_closed()
    }
}

/// Serializes the writes of one claim's secrets, and closes when the claim is
/// released, so a write that was still queued can never land in a container that
/// has been wiped for the next tenant.
#[derive(Clone)]
struct SecretsGate(Arc<tokio::sync::Mutex<bool>>);

impl SecretsGate {
    fn new() -> Self {
        Self(Arc::new(tokio::sync::Mutex::new(true)))
    }

    async fn write(&self, dir: &Path, secrets: Secrets, owner: Owner) -> Result<(), PoolError> {
        let open = self.0.lock().await;
        if !*open {
            return Err(PoolError::Busy(
                "the claim was released while its secrets were being written".into(),
            ));
        }
        let target = dir.to_path_buf();
        tokio::task::spawn_blocking(move || fsutil::write_secrets(&target, &secrets, owner))
            .await
            .map_err(|e| PoolError::Internal(e.to_string()))?
            .map_err(|e| {
                PoolError::Internal(format!("cannot write secrets into {}: {e}", dir.display()))
            })
    }

    /// Waits for writes in flight, then refuses any later one.
    async fn close(&self) {
        *self.0.lock().await = false;
    }
}

/// Handle to a claim for a manual sync: its serializing sync cell and its dirs.
#[derive(Clone)]
pub struct SyncTarget {
    pub sync: ClaimSync,
    pub container: ContainerInfo,
    pub owner: Owner,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastError {
    pub message: String,
    pub timestamp: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolView {
    /// Pool id (= workload id).
    pub id: String,
    pub workload_id: String,
    pub workload_name: String,
    pub image: String,
    pub min_size: usize,
    pub max_size: usize,
    pub current_size: usize,
    pub claimed_count: usize,
    pub idle_count: usize,
    pub starting_count: usize,
    pub status: &'static str,
    pub last_error: Option<LastError>,
    /// Each starting container: since when, and by when it must be ready.
    pub starting: Vec<StartingView>,
    /// How long a new container may take to become ready (from the healthcheck, or
    /// `pool.ready_timeout`).
    pub ready_timeout_ms: u64,
    /// Create calls the pool allows in flight now (it backs off under load).
    pub create_concurrency: usize,
    /// Health probes that timed out in the last minute (a sign of an overloaded node).
    pub probe_timeouts: usize,
    /// A sentence for the operator when the pool is held back by something.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StartingView {
    pub container_id: String,
    pub since: DateTime<Utc>,
    /// None while the engine is still creating it.
    pub ready_by: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerView {
    pub id: String,
    pub pool_id: String,
    pub tenant_id: Option<String>,
    pub status: &'static str,
    pub health: String,
    pub image: String,
    pub created_at: DateTime<Utc>,
    pub last_activity_at: DateTime<Utc>,
    /// Starting containers: since when they have been starting.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub starting_since: Option<DateTime<Utc>>,
    /// Starting containers: the time by which they must be ready or are given up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready_by: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimView {
    pub tenant_id: String,
    pub pool_id: String,
    pub container_id: String,
    pub container_name: String,
    pub status: &'static str,
    pub claimed_at: DateTime<Utc>,
    pub last_activity: DateTime<Utc>,
    pub health: String,
    #[schema(value_type = Option<Object>)]
    pub sync_status: Option<SyncStatus>,
    pub endpoints: Endpoints,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Endpoints {
    pub socket: String,
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub pool: PoolView,
    pub containers: Vec<ContainerView>,
    pub claims: Vec<ClaimView>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScaleOutcome {
    pub success: bool,
    pub previous_size: usize,
    pub new_size: usize,
    pub message: String,
}

/// A container found on the engine at start-up, handed to its pool.
#[derive(Debug, Clone)]
pub struct Adopted {
    pub container_id: String,
    pub docker_id: String,
    pub created_at: DateTime<Utc>,
    /// Some: the claim it keeps; None: idle.
    pub claim: Option<ClaimRecord>,
    pub running: bool,
}

type Reply<T> = oneshot::Sender<Result<T, PoolError>>;

enum Msg {
    Claim(ClaimRequest, Reply<ClaimGrant>),
    Release {
        tenant: TenantId,
        sync: bool,
        reply: Reply<ContainerInfo>,
    },
    SyncTarget {
        tenant: TenantId,
        reply: Reply<SyncTarget>,
    },
    Touch(TenantId),
    Snapshot(oneshot::Sender<Snapshot>),
    Scale {
        target: i64,
        reply: Reply<ScaleOutcome>,
    },
    Destroy {
        container_id: String,
        force: bool,
        reply: Reply<()>,
    },
    Event(RuntimeEvent),
    Shutdown(oneshot::Sender<()>),
    // Reports from the actor's own tasks.
    Created {
        container_id: String,
        result: Result<(String, Readiness), String>,
    },
    Inspected {
        container_id: String,
        cause: Look,
        report: Result<ContainerReport, String>,
    },
    Prepared {
        tenant: TenantId,
        result: Result<(), PoolError>,
    },
    Released {
        tenant: TenantId,
        outcome: Result<Recycled, PoolError>,
        reply: Option<Reply<ContainerInfo>>,
    },
    Removed {
        container_id: String,
    },
    Activity {
        tenant: TenantId,
        newest: Option<DateTime<Utc>>,
    },
}

#[derive(Debug)]
enum Recycled {
    /// Being removed; a `Removed` message follows.
    Removing,
    /// Wiped (and restarted) and ready for the next tenant.
    Idle,
    /// Restarted and wiped; its healthcheck has not passed yet.
    Starting(Option<ProbeTimings>),
}

/// Why the actor inspects a container that is starting or idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Look {
    /// A periodic look, in case a health event was missed.
    Check,
    /// Its readiness deadline passed.
    Deadline,
    /// The engine says it exited or was OOM-killed.
    Died,
    /// The engine says its healthcheck failed.
    Unhealthy,
}

#[derive(Clone)]
pub struct PoolHandle {
    pub workload: Arc<Workload>,
    tx: mpsc::Sender<Msg>,
}

impl PoolHandle {
    pub fn id(&self) -> &str {
        self.workload.id.as_str()
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Msg) -> Result<T, PoolError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| PoolError::Stopped)?;
        rx.await.map_err(|_| PoolError::Stopped)
    }

    pub async fn claim(&self, request: ClaimRequest) -> Result<ClaimGrant, PoolError> {
        self.ask(|r| Msg::Claim(request, r)).await?
    }

    pub async fn release(&self, tenant: TenantId, sync: bool) -> Result<ContainerInfo, PoolError> {
        self.ask(|reply| Msg::Release {
            tenant,
            sync,
            reply,
        })
        .await?
    }

    pub async fn sync_target(&self, tenant: TenantId) -> Result<SyncTarget, PoolError> {
        self.ask(|reply| Msg::SyncTarget { tenant, reply }).await?
    }

    pub async fn touch(&self, tenant: TenantId) {
        let _ = self.tx.send(Msg::Touch(tenant)).await;
    }

    pub async fn snapshot(&self) -> Result<Snapshot, PoolError> {
        self.ask(Msg::Snapshot).await
    }

    pub async fn scale(&self, target: i64) -> Result<ScaleOutcome, PoolError> {
        self.ask(|reply| Msg::Scale { target, reply }).await?
    }

    pub async fn destroy(&self, container_id: String, force: bool) -> Result<(), PoolError> {
        self.ask(|reply| Msg::Destroy {
            container_id,
            force,
            reply,
        })
        .await?
    }

    pub async fn event(&self, event: RuntimeEvent) {
        let _ = self.tx.send(Msg::Event(event)).await;
    }

    pub async fn shutdown(&self) {
        let _ = self.ask(Msg::Shutdown).await;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Starting,
    Idle,
    Claimed,
    Releasing,
    Removing,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Starting => "starting",
            Status::Idle => "idle",
            Status::Claimed => "claimed",
            Status::Releasing | Status::Removing => "releasing",
        }
    }
}

struct Entry {
    info: ContainerInfo,
    status: Status,
    health: String,
    created_at: DateTime<Utc>,
    last_activity_at: DateTime<Utc>,
    idle_since: Instant,
    /// Destroy asked while it was starting: remove once created.
    cancelled: bool,
    /// Its create call is in flight.
    creating: bool,
    /// Starting: since when, and (once created) the deadline for readiness.
    starting_since: DateTime<Utc>,
    ready_by: Option<(Instant, DateTime<Utc>)>,
    /// Starting: when to inspect it next in case a health event was missed.
    next_check: Instant,
    /// An inspection of it is in flight.
    inspecting: bool,
    /// A health event that arrived while its create call was still in flight.
    early: Option<EventKind>,
    /// It has been ready before (held back since, e.g. after a probe time-out).
    was_ready: bool,
    /// Times its deadline was extended because the node was overloaded.
    extensions: u8,
}

impl Entry {
    fn new(info: ContainerInfo, status: Status, health: &str, created_at: DateTime<Utc>) -> Self {
        let now = Instant::now();
        Self {
            info,
            status,
            health: health.to_owned(),
            created_at,
            last_activity_at: Utc::now(),
            idle_since: now,
            cancelled: false,
            creating: false,
            starting_since: Utc::now(),
            ready_by: None,
            next_check: now,
            inspecting: false,
            early: None,
            was_ready: status != Status::Starting,
            extensions: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClaimState {
    Provisioning,
    Warm,
    Releasing,
}

struct Claim {
    container_id: String,
    cold: bool,
    state: ClaimState,
    claimed_at: DateTime<Utc>,
    last_activity: DateTime<Utc>,
    metadata: Option<serde_json::Value>,
    sync: ClaimSync,
    periodic: Option<JoinHandle<()>>,
    health: String,
    /// Callers waiting for the claim being provisioned; the first is the original.
    waiters: Vec<Asker>,
    /// Claims that arrived while the tenant was being released.
    after_release: Vec<(ClaimRequest, Reply<ClaimGrant>)>,
    secrets: SecretsGate,
    checking_activity: bool,
    auto_retry_at: Option<Instant>,
    auto_backoff: Duration,
}

struct Waiting {
    replies: Vec<Asker>,
    since: Instant,
    deadline: Instant,
    metadata: Option<serde_json::Value>,
    /// The claim was allowed to queue at capacity (waitMs > 0).
    queued_at_capacity: bool,
}

struct Pool {
    ctx: Arc<PoolContext>,
    workload: Arc<Workload>,
    spec_hash: String,
    owner: Owner,
    min_size: usize,
    max_size: usize,
    containers: HashMap<String, Entry>,
    idle: VecDeque<String>,
    claims: HashMap<TenantId, Claim>,
    queue: VecDeque<TenantId>,
    waiting: HashMap<TenantId, Waiting>,
    /// Create calls in flight.
    creating: usize,
    /// Create calls allowed in flight: grows as containers become ready, halves when
    /// they fail to or their probes time out (additive increase, multiplicative decrease).
    create_limit: usize,
    /// The healthcheck timings containers of this pool run with (learned from the
    /// first one the engine reports on, which includes an image's own healthcheck).
    timings: Option<ProbeTimings>,
    probe_timeouts: VecDeque<Instant>,
    failures: u32,
    next_create_at: Instant,
    last_error: Option<LastError>,
    image_present: Arc<AtomicBool>,
    tx: mpsc::WeakSender<Msg>,
    stopping: bool,
}

/// Starts the actor for `workload` with the containers recovered for it.
pub fn spawn(ctx: Arc<PoolContext>, workload: Arc<Workload>, adopted: Vec<Adopted>) -> PoolHandle {
    let (tx, rx) = mpsc::channel(1024);
    let config = &ctx.config;
    let min_size = workload.pool.min_size.unwrap_or(config.pool_size);
    let max_size = workload
        .pool
        .max_size
        .unwrap_or(config.max_containers)
        .max(1);
    let owner = workload.owner();
    let mut pool = Pool {
        spec_hash: spec_hash(&workload, config),
        ctx: ctx.clone(),
        workload: workload.clone(),
        owner,
        min_size: min_size.min(max_size),
        max_size,
        containers: HashMap::new(),
        idle: VecDeque::new(),
        claims: HashMap::new(),
        queue: VecDeque::new(),
        waiting: HashMap::new(),
        creating: 0,
        create_limit: INITIAL_CREATE_CONCURRENCY,
        timings: workload.healthcheck.as_ref().and_then(|h| h.timings()),
        probe_timeouts: VecDeque::new(),
        failures: 0,
        next_create_at: Instant::now(),
        last_error: None,
        image_present: Arc::new(AtomicBool::new(false)),
        tx: tx.downgrade(),
        stopping: false,
    };
    pool.adopt(adopted);
    tokio::spawn(pool.run(rx));
    PoolHandle { workload, tx }
}

fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(10);
    (Duration::from_millis(500) * 2u32.pow(exp)).min(MAX_BACKOFF)
}

impl Waiting {
    fn waited(&self) -> Duration {
        self.since.elapsed()
    }
}

/// `; its last output: "..."` for an error message.
fn output_tail(log: Option<&Result<String, String>>) -> String {
    match log {
        Some(Err(e)) => format!("; its output could not be read: {e}"),
        Some(Ok(l)) if !l.trim().is_empty() => {
            let lines: Vec<&str> = l.trim().lines().collect();
            let tail = lines[lines.len().saturating_sub(LOG_LINES)..].join(" | ");
            let mut short: String = tail.chars().take(600).collect();
            if short.len() < tail.len() {
                short.push('…');
            }
            format!("; its last output: {short:?}")
        }
        _ => "; it wrote no output".into(),
    }
}

impl Pool {
    fn id(&self) -> &str {
        self.workload.id.as_str()
    }

    fn sender(&self) -> Option<mpsc::Sender<Msg>> {
        self.tx.upgrade()
    }

    /// Runs `fut` and sends its message back to the actor.
    fn spawn_report(&self, fut: impl std::future::Future<Output = Msg> + Send + 'static) {
        if let Some(tx) = self.sender() {
            tokio::spawn(async move {
                let msg = fut.await;
                let _ = tx.send(msg).await;
            });
        }
    }

    fn adopt(&mut self, adopted: Vec<Adopted>) {
        let now = Utc::now();
        self.ctx.capacity.add(adopted.len());
        for a in adopted {
            let info = ContainerInfo {
                name: format!("bh-{}-{}", self.ctx.config.instance, a.container_id),
                dirs: ContainerDirs::new(&self.ctx.config, &a.container_id),
                id: a.container_id.clone(),
                docker_id: Some(a.docker_id),
            };
            let health = if a.running { "healthy" } else { "dead" }.to_owned();
            let status = if a.claim.is_some() {
                Status::Claimed
            } else {
                Status::Idle
            };
            if let Some(record) = &a.claim {
                let Ok(tenant) = TenantId::parse(&record.tenant_id) else {
                    continue;
                };
                self.claims.insert(
                    tenant,
                    Claim {
                        container_id: a.container_id.clone(),
                        cold: false,
                        state: ClaimState::Warm,
                        claimed_at: record.claimed_at,
                        last_activity: now,
                        metadata: record.metadata.clone(),
                        sync: ClaimSync::new(),
                        periodic: None,
                        health: health.clone(),
                        waiters: Vec::new(),
                        after_release: Vec::new(),
                        secrets: SecretsGate::new(),
                        checking_activity: false,
                        auto_retry_at: None,
                        auto_backoff: Duration::ZERO,
                    },
                );
            } else {
                self.idle.push_back(a.container_id.clone());
            }
            self.containers.insert(
                a.container_id,
                Entry::new(info, status, &health, a.created_at),
            );
        }
        let tenants: Vec<TenantId> = self.claims.keys().cloned().collect();
        for t in tenants {
            self.start_periodic(&t);
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.refill();
        loop {
            tokio::select! {
                msg = rx.recv() => {
                    let Some(msg) = msg else { break };
                    if let Msg::Shutdown(reply) = msg {
                        self.shutdown();
                        let _ = reply.send(());
                        break;
                    }
                    self.handle(msg);
                }
                _ = tick.tick() => self.on_tick(),
            }
        }
        tracing::debug!(pool = %self.workload.id, "pool actor stopped");
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Claim(req, reply) => self.on_claim(req, reply),
            Msg::Release {
                tenant,
                sync,
                reply,
            } => self.on_release(tenant, sync, Some(reply)),
            Msg::SyncTarget { tenant, reply } => {
                let target = self.sync_target(&tenant);
                let _ = reply.send(target);
            }
            Msg::Touch(tenant) => {
                if let Some(c) = self.claims.get_mut(&tenant) {
                    c.last_activity = Utc::now();
                }
            }
            Msg::Snapshot(reply) => {
                let _ = reply.send(self.snapshot());
            }
            Msg::Scale { target, reply } => {
                let _ = reply.send(self.scale(target));
            }
            Msg::Destroy {
                container_id,
                force,
                reply,
            } => {
                let _ = reply.send(self.destroy(&container_id, force));
            }
            Msg::Event(event) => self.on_event(event),
            Msg::Shutdown(_) => {}
            Msg::Created {
                container_id,
                result,
            } => self.on_created(container_id, result),
            Msg::Inspected {
                container_id,
                cause,
                report,
            } => self.on_inspected(container_id, cause, report),
            Msg::Prepared { tenant, result } => self.on_prepared(tenant, result),
            Msg::Released {
                tenant,
                outcome,
                reply,
            } => self.on_released(tenant, outcome, reply),
            Msg::Removed { container_id } => {
                if self.containers.remove(&container_id).is_some() {
                    self.ctx.capacity.release();
                    self.record(
                        Event::new("container.destroyed", self.id()).container(&container_id),
                    );
                }
                self.refill();
            }
            Msg::Activity { tenant, newest } => self.on_activity(tenant, newest),
        }
    }

    fn record(&self, event: Event) {
        self.ctx.activity.record(event);
    }

    // ----- claims -------------------------------------------------------------

    fn on_claim(&mut self, req: ClaimRequest, reply: Reply<ClaimGrant>) {
        if self.stopping {
            let _ = reply.send(Err(PoolError::Stopped));
            return;
        }
        if let Some(claim) = self.claims.get_mut(&req.tenant) {
            match claim.state {
                ClaimState::Warm => {
                    claim.last_activity = Utc::now();
                    let gate = claim.secrets.clone();
                    let grant = self.grant(&req.tenant, true);
                    let asker = Asker {
                        reply,
                        secrets: req.secrets,
                    };
                    answer_after_secrets(asker, grant, gate);
                }
                ClaimState::Provisioning => claim.waiters.push(Asker {
                    reply,
                    secrets: req.secrets,
                }),
                ClaimState::Releasing => claim.after_release.push((req, reply)),
            }
            return;
        }
        let asker = Asker {
            reply,
            secrets: req.secrets,
        };
        if let Some(w) = self.waiting.get_mut(&req.tenant) {
            w.replies.push(asker);
            return;
        }
        if let Some(container_id) = self.idle.pop_front() {
            self.start_provisioning(req.tenant, container_id, vec![asker], req.metadata, false);
            self.refill();
            return;
        }
        let can_create = self.can_create();
        let starting = self.starting_count();
        if !can_create && self.failures > 0 && starting == 0 {
            asker.answer(Err(self.unavailable()));
            return;
        }
        let covered = starting > self.queue.len();
        if !can_create && !covered && req.queue_wait.is_zero() {
            asker.answer(Err(self.exhausted(req.queue_wait)));
            return;
        }
        let at_capacity = !can_create && !covered;
        let wait = if at_capacity {
            req.queue_wait.min(self.ctx.config.claim_timeout())
        } else {
            self.ctx.config.claim_timeout()
        };
        self.queue.push_back(req.tenant.clone());
        self.waiting.insert(
            req.tenant,
            Waiting {
                replies: vec![asker],
                since: Instant::now(),
                deadline: Instant::now() + wait,
                metadata: req.metadata,
                queued_at_capacity: at_capacity,
            },
        );
        self.refill();
    }

    fn can_create(&self) -> bool {
        self.containers.len() < self.max_size
            && self.ctx.capacity.available()
            && Instant::now() >= self.next_create_at
    }

    fn unavailable(&self) -> PoolError {
        PoolError::Unavailable(format!(
            "pool {} cannot create containers: {}",
            self.id(),
            self.last_error
                .as_ref()
                .map(|e| e.message.as_str())
                .unwrap_or("unknown error")
        ))
    }

    fn exhausted(&self, waited: Duration) -> PoolError {
        PoolError::Exhausted(format!(
            "pool {} has no free container: {} claimed of at most {} (node-wide cap {}); waited {} ms",
            self.id(),
            self.claims.len(),
            self.max_size,
            self.ctx.config.max_containers,
            waited.as_millis()
        ))
    }

    /// A cold claim's wait ran out while containers were still starting.
    fn not_ready_yet(&self, waited: Duration) -> PoolError {
        let starting = self.starting_count();
        let next = self
            .containers
            .values()
            .filter_map(|e| e.ready_by.map(|(_, wall)| wall))
            .min();
        let probe = self
            .first_probe()
            .map(|d| {
                format!(
                    "; its healthcheck first probes {} after start",
                    humantime::format_duration(d)
                )
            })
            .unwrap_or_default();
        let by = next
            .map(|t| {
                format!(
                    ", the first must be ready by {}",
                    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )
            })
            .unwrap_or_default();
        PoolError::Exhausted(format!(
            "pool {} had no ready container within the claim's wait of {} ms: {starting} container(s) still starting{by}{probe}; retry shortly",
            self.id(),
            waited.as_millis()
        ))
    }

    /// Hands idle containers to the queue, oldest claim first.
    fn serve_queue(&mut self) {
        while !self.idle.is_empty() {
            let Some(tenant) = self.queue.pop_front() else {
                return;
            };
            let Some(mut w) = self.waiting.remove(&tenant) else {
                continue;
            };
            w.replies.retain(|r| !r.is_closed());
            if w.replies.is_empty() {
                continue;
            }
            if let Some(container_id) = self.idle.pop_front() {
                self.start_provisioning(tenant, container_id, w.replies, w.metadata, true);
            }
        }
    }

    fn start_provisioning(
        &mut self,
        tenant: TenantId,
        container_id: String,
        mut waiters: Vec<Asker>,
        metadata: Option<serde_json::Value>,
        cold: bool,
    ) {
        let now = Utc::now();
        let pool_id = self.id().to_owned();
        let Some(entry) = self.containers.get_mut(&container_id) else {
            return;
        };
        entry.status = Status::Claimed;
        entry.last_activity_at = now;
        let info = entry.info.clone();
        let sync = ClaimSync::new();
        let gate = SecretsGate::new();
        // The first caller's secrets are part of making the claim; later callers'
        // are written before each of them is answered.
        let secrets = waiters.first_mut().and_then(|w| w.secrets.take());
        let record = ClaimRecord {
            tenant_id: tenant.to_string(),
            pool_id,
            container_id: container_id.clone(),
            claimed_at: now,
            metadata: metadata.clone(),
        };
        self.claims.insert(
            tenant.clone(),
            Claim {
                container_id,
                cold,
                state: ClaimState::Provisioning,
                claimed_at: now,
                last_activity: now,
                metadata,
                sync: sync.clone(),
                periodic: None,
                health: entry.health.clone(),
                waiters,
                after_release: Vec::new(),
                secrets: gate.clone(),
                checking_activity: false,
                auto_retry_at: None,
                auto_backoff: Duration::ZERO,
            },
        );
        let ctx = self.ctx.clone();
        let workload = self.workload.clone();
        let owner = self.owner;
        self.spawn_report(async move {
            let result = prepare_claim(
                &ctx, &workload, &tenant, &info, &sync, &gate, secrets, owner, &record,
            )
            .await;
            Msg::Prepared { tenant, result }
        });
    }

    fn grant(&self, tenant: &TenantId, reused: bool) -> Result<ClaimGrant, PoolError> {
        let claim = self.claims.get(tenant).ok_or(PoolError::NotClaimed)?;
        let entry = self
            .containers
            .get(&claim.container_id)
            .ok_or_else(|| PoolError::Internal("claimed container vanished".into()))?;
        Ok(ClaimGrant {
            container: entry.info.clone(),
            cold: claim.cold && !reused,
            claimed_at: claim.claimed_at,
            reused,
            sync_status: self.workload.sync.as_ref().map(|_| claim.sync.status()),
            owner: self.owner,
        })
    }

    fn on_prepared(&mut self, tenant: TenantId, result: Result<(), PoolError>) {
        let Some(claim) = self.claims.get_mut(&tenant) else {
            return;
        };
        let waiters = std::mem::take(&mut claim.waiters);
        match result {
            Ok(()) => {
                claim.state = ClaimState::Warm;
                // Inactivity counts from when the tenant could first use the container.
                claim.last_activity = Utc::now();
                let container_id = claim.container_id.clone();
                let gate = claim.secrets.clone();
                for (i, w) in waiters.into_iter().enumerate() {
                    answer_after_secrets(w, self.grant(&tenant, i > 0), gate.clone());
                }
                self.start_periodic(&tenant);
                self.record(
                    Event::new("container.claimed", self.id())
                        .tenant(tenant.as_str())
                        .container(&container_id),
                );
            }
            Err(e) => {
                let container_id = claim.container_id.clone();
                self.claims.remove(&tenant);
                for w in waiters {
                    w.answer(Err(e.clone()));
                }
                // Half-restored state must never reach another tenant: remove it.
                tracing::warn!(pool = %self.workload.id, tenant = %tenant, error = %e, "claim failed; recycling its container");
                self.remove_container(&container_id);
            }
        }
        self.refill();
    }

    fn start_periodic(&mut self, tenant: &TenantId) {
        let Some(sync_spec) = self.workload.sync.clone() else {
            return;
        };
        let Some(interval) = sync_spec.policy.periodic else {
            return;
        };
        let pool = self.id().to_owned();
        let Some(claim) = self.claims.get_mut(tenant) else {
            return;
        };
        let Some(entry) = self.containers.get(&claim.container_id) else {
            return;
        };
        let state_dir = entry.info.dirs.state.clone();
        let ctx = self.ctx.clone();
        let cell = claim.sync.clone();
        let tenant = tenant.clone();
        let owner = self.owner;
        claim.periodic = Some(tokio::spawn(async move {
            let mut timer =
                tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            loop {
                timer.tick().await;
                let op = SyncOp::Upload;
                if let Err(e) = run_sync(
                    &ctx, &cell, &sync_spec, &pool, &tenant, &state_dir, op, owner,
                )
                .await
                {
                    tracing::warn!(pool = %pool, tenant = %tenant, error = %e, "periodic upload failed");
                }
            }
        }));
    }

    fn sync_target(&mut self, tenant: &TenantId) -> Result<SyncTarget, PoolError> {
        let claim = self.claims.get_mut(tenant).ok_or(PoolError::NotClaimed)?;
        if claim.state != ClaimState::Warm {
            return Err(PoolError::Busy(format!(
                "tenant {tenant}'s claim is {}; try again when it is ready",
                if claim.state == ClaimState::Provisioning {
                    "still being provisioned"
                } else {
                    "being released"
                }
            )));
        }
        claim.last_activity = Utc::now();
        let entry = self
            .containers
            .get(&claim.container_id)
            .ok_or_else(|| PoolError::Internal("claimed container vanished".into()))?;
        Ok(SyncTarget {
            sync: claim.sync.clone(),
            container: entry.info.clone(),
            owner: self.owner,
        })
    }

    // ----- release ------------------------------------------------------------

    fn on_release(&mut self, tenant: TenantId, sync: bool, reply: Option<Reply<ContainerInfo>>) {
        let Some(claim) = self.claims.get_mut(&tenant) else {
            if let Some(r) = reply {
                let _ = r.send(Err(PoolError::NotClaimed));
            }
            return;
        };
        if claim.state != ClaimState::Warm {
            if let Some(r) = reply {
                let _ = r.send(Err(PoolError::Busy(format!(
                    "tenant {tenant}'s claim is {}; try again shortly",
                    if claim.state == ClaimState::Provisioning {
                        "still being provisioned"
                    } else {
                        "already being released"
                    }
                ))));
            }
            return;
        }
        claim.state = ClaimState::Releasing;
        if let Some(p) = claim.periodic.take() {
            p.abort();
        }
        let claim_sync = claim.sync.clone();
        let gate = claim.secrets.clone();
        let Some(entry) = self.containers.get_mut(&claim.container_id) else {
            return;
        };
        entry.status = Status::Releasing;
        let info = entry.info.clone();
        let ctx = self.ctx.clone();
        let workload = self.workload.clone();
        let owner = self.owner;
        self.spawn_report(async move {
            let outcome = release_claim(
                &ctx,
                &workload,
                &tenant,
                &info,
                &claim_sync,
                &gate,
                sync,
                owner,
            )
            .await;
            Msg::Released {
                tenant,
                outcome,
                reply,
            }
        });
    }

    fn on_released(
        &mut self,
        tenant: TenantId,
        outcome: Result<Recycled, PoolError>,
        reply: Option<Reply<ContainerInfo>>,
    ) {
        let Some(claim) = self.claims.get_mut(&tenant) else {
            return;
        };
        let container_id = claim.container_id.clone();
        let info = self.containers.get(&container_id).map(|e| e.info.clone());
        match outcome {
            Err(e) => {
                // The upload failed: the claim and its state stay as they were.
                claim.state = ClaimState::Warm;
                if reply.is_none() {
                    claim.auto_backoff = (claim.auto_backoff * 2)
                        .max(Duration::from_secs(1))
                        .min(Duration::from_secs(60));
                    claim.auto_retry_at = Some(Instant::now() + claim.auto_backoff);
                }
                if let Some(entry) = self.containers.get_mut(&container_id) {
                    entry.status = Status::Claimed;
                }
                self.start_periodic(&tenant);
                tracing::warn!(pool = %self.workload.id, tenant = %tenant, error = %e, "release failed; the claim is intact");
                if let Some(r) = reply {
                    let _ = r.send(Err(e));
                }
                self.rehandle_after_release(&tenant);
            }
            Ok(recycled) => {
                let claim = self.claims.remove(&tenant);
                match recycled {
                    Recycled::Removing => self.remove_container(&container_id),
                    Recycled::Idle => {
                        if let Some(entry) = self.containers.get_mut(&container_id) {
                            entry.status = Status::Idle;
                            entry.health = "healthy".into();
                            entry.idle_since = Instant::now();
                            self.idle.push_back(container_id.clone());
                        }
                    }
                    Recycled::Starting(timings) => {
                        self.timings = timings.or(self.timings);
                        self.await_health(&container_id, Instant::now());
                    }
                }
                self.record(
                    Event::new("container.released", self.id())
                        .tenant(tenant.as_str())
                        .container(&container_id),
                );
                if let (Some(r), Some(info)) = (reply, info) {
                    let _ = r.send(Ok(info));
                }
                if let Some(claim) = claim {
                    for (req, r) in claim.after_release {
                        self.on_claim(req, r);
                    }
                }
                self.serve_queue();
                self.refill();
            }
        }
    }

    fn rehandle_after_release(&mut self, tenant: &TenantId) {
        let pending = self
            .claims
            .get_mut(tenant)
            .map(|c| std::mem::take(&mut c.after_release))
            .unwrap_or_default();
        for (req, r) in pending {
            self.on_claim(req, r);
        }
    }

    // ----- containers ---------------------------------------------------------

    fn starting_count(&self) -> usize {
        self.containers
            .values()
            .filter(|e| e.status == Status::Starting)
            .count()
    }

    fn refill(&mut self) {
        if self.stopping {
            return;
        }
        let waiting = self.queue.len();
        let want =
            (self.min_size + waiting).saturating_sub(self.idle.len() + self.starting_count());
        let room = self.max_size.saturating_sub(self.containers.len());
        let slots = self.create_limit.saturating_sub(self.creating);
        let n = want.min(room).min(slots);
        if n == 0 || Instant::now() < self.next_create_at {
            return;
        }
        for _ in 0..n {
            if !self.ctx.capacity.try_reserve() {
                break;
            }
            self.spawn_create();
        }
    }

    fn spawn_create(&mut self) {
        let container_id = format!("{}-{:08x}", self.id(), rand::random::<u32>());
        let info = ContainerInfo {
            name: format!("bh-{}-{}", self.ctx.config.instance, container_id),
            dirs: ContainerDirs::new(&self.ctx.config, &container_id),
            id: container_id.clone(),
            docker_id: None,
        };
        let now = Utc::now();
        let mut entry = Entry::new(info.clone(), Status::Starting, "starting", now);
        entry.creating = true;
        self.containers.insert(container_id.clone(), entry);
        self.creating += 1;
        let ctx = self.ctx.clone();
        let workload = self.workload.clone();
        let hash = self.spec_hash.clone();
        let owner = self.owner;
        let image_present = self.image_present.clone();
        // After a failure, a container must still run at the end of its first look
        // before it counts as ready: an image that exits within moments is then
        // caught at creation instead of being handed to a tenant as it dies.
        let settle = self.failures > 0;
        self.spawn_report(async move {
            let result = create_container(
                &ctx,
                &workload,
                &hash,
                &info,
                owner,
                &image_present,
                now,
                settle,
            )
            .await;
            Msg::Created {
                container_id,
                result,
            }
        });
    }

    /// How long a container with these timings may take to become ready.
    fn ready_timeout(&self) -> Duration {
        ready_deadline(
            self.timings.as_ref(),
            self.workload.pool.ready_timeout,
            self.ctx.config.claim_timeout().max(Duration::from_secs(5)),
        )
    }

    /// When the engine first probes a new container of this pool.
    fn first_probe(&self) -> Option<Duration> {
        let newer = self.ctx.runtime.supports_start_interval();
        self.timings.map(|t| t.first_probe(newer))
    }

    fn on_created(&mut self, container_id: String, result: Result<(String, Readiness), String>) {
        self.creating = self.creating.saturating_sub(1);
        match result {
            Ok((docker_id, readiness)) => {
                let Some(entry) = self.containers.get_mut(&container_id) else {
                    return;
                };
                entry.info.docker_id = Some(docker_id);
                entry.creating = false;
                if entry.cancelled || self.stopping {
                    if !self.stopping {
                        self.remove_container(&container_id);
                    }
                    return;
                }
                let early = entry.early.take();
                let started = self
                    .containers
                    .get(&container_id)
                    .map(|e| e.starting_since)
                    .unwrap_or_else(Utc::now);
                match readiness {
                    Readiness::Ready => self.mark_ready(&container_id),
                    Readiness::Starting(timings) => {
                        self.timings = timings.or(self.timings);
                        let elapsed = (Utc::now() - started).to_std().unwrap_or_default();
                        let since = Instant::now()
                            .checked_sub(elapsed)
                            .unwrap_or_else(Instant::now);
                        self.await_health(&container_id, since);
                        match early {
                            Some(EventKind::Healthy) => self.mark_ready(&container_id),
                            Some(EventKind::Unhealthy) => {
                                self.inspect(&container_id, Look::Unhealthy)
                            }
                            Some(EventKind::Died { .. } | EventKind::Oom) => {
                                self.inspect(&container_id, Look::Died)
                            }
                            None => {}
                        }
                    }
                }
            }
            Err(message) => {
                self.containers.remove(&container_id);
                self.ctx.capacity.release();
                self.creation_failed(message);
            }
        }
        self.refill();
    }

    /// Puts a created (or restarted) container in `Starting` until its healthcheck
    /// passes, with its readiness deadline counted from `since`.
    fn await_health(&mut self, container_id: &str, since: Instant) {
        let timeout = self.ready_timeout();
        let first = self.first_probe().unwrap_or(STARTING_CHECK);
        let Some(entry) = self.containers.get_mut(container_id) else {
            return;
        };
        if entry.status != Status::Starting {
            entry.status = Status::Starting;
            entry.health = "starting".into();
            entry.starting_since = Utc::now();
        }
        let deadline = since + timeout;
        let left = deadline.saturating_duration_since(Instant::now());
        let wall = Utc::now() + chrono::Duration::from_std(left).unwrap_or_default();
        entry.ready_by = Some((deadline, wall));
        // Look first just after the first probe is due, then every few seconds.
        entry.next_check = since + first + Duration::from_secs(1);
    }

    /// A starting container passed its healthcheck: it joins the idle set.
    fn mark_ready(&mut self, container_id: &str) {
        let Some(entry) = self.containers.get_mut(container_id) else {
            return;
        };
        if entry.status != Status::Starting || entry.creating {
            return;
        }
        entry.status = Status::Idle;
        entry.health = "healthy".into();
        entry.idle_since = Instant::now();
        entry.ready_by = None;
        let again = std::mem::replace(&mut entry.was_ready, true);
        self.idle.push_back(container_id.to_owned());
        self.create_limit = (self.create_limit + 1).min(CREATE_CONCURRENCY);
        let kind = if again {
            "container.healthy"
        } else {
            "container.created"
        };
        self.record(Event::new(kind, self.id()).container(container_id));
        self.serve_queue();
    }

    /// Something went wrong creating a container: back off, say why, and fail the
    /// claims that were waiting for it when nothing else is on its way.
    fn creation_failed(&mut self, message: String) {
        self.failures += 1;
        self.next_create_at = Instant::now() + backoff(self.failures);
        tracing::warn!(pool = %self.workload.id, failures = self.failures, error = %message, "container creation failed");
        self.last_error = Some(LastError {
            message: message.clone(),
            timestamp: Utc::now(),
        });
        self.record(Event::new("pool.error", self.id()).message(message));
        if self.starting_count() == 0 && self.creating == 0 {
            let err = self.unavailable();
            for tenant in std::mem::take(&mut self.queue) {
                if let Some(w) = self.waiting.remove(&tenant) {
                    for r in w.replies {
                        r.answer(Err(err.clone()));
                    }
                }
            }
        }
    }

    /// Inspects a starting or idle container in the background; `on_inspected` decides.
    fn inspect(&mut self, container_id: &str, cause: Look) {
        let Some(entry) = self.containers.get_mut(container_id) else {
            return;
        };
        let Some(docker_id) = entry.info.docker_id.clone() else {
            return;
        };
        if entry.inspecting || entry.creating || entry.status == Status::Removing {
            return;
        }
        entry.inspecting = true;
        if entry.status == Status::Idle {
            // No claim may take it while the engine is asked what is wrong with it.
            self.idle.retain(|c| c != container_id);
            entry.status = Status::Starting;
            entry.starting_since = Utc::now();
        }
        let runtime = self.ctx.runtime.clone();
        let container_id = container_id.to_owned();
        self.spawn_report(async move {
            let report = runtime
                .report(&docker_id, LOG_LINES)
                .await
                .map_err(|e| e.to_string());
            Msg::Inspected {
                container_id,
                cause,
                report,
            }
        });
    }

    fn on_inspected(
        &mut self,
        container_id: String,
        cause: Look,
        report: Result<ContainerReport, String>,
    ) {
        let timeout = self.ready_timeout();
        let first_probe = self.first_probe();
        let Some(entry) = self.containers.get_mut(&container_id) else {
            return;
        };
        entry.inspecting = false;
        if entry.status != Status::Starting {
            return;
        }
        let name = entry.info.name.clone();
        let report = match report {
            Ok(r) => r,
            Err(e) => {
                // The engine could not say: try again at the next check.
                entry.next_check = Instant::now() + STARTING_CHECK;
                if cause == Look::Deadline || cause == Look::Died {
                    self.give_up(
                        &container_id,
                        format!("container {name} cannot be inspected: {e}"),
                    );
                }
                return;
            }
        };
        let probe = report
            .last_probe
            .as_ref()
            .map(|p| format!("; last probe: {}", probe_summary(p)))
            .unwrap_or_default();
        if !report.running {
            let message = format!(
                "container {name} exited before it was claimed ({}){}",
                report.detail,
                output_tail(report.log_tail.as_ref())
            );
            self.give_up(&container_id, message);
            return;
        }
        match report.health {
            EngineHealth::Healthy | EngineHealth::None => self.mark_ready(&container_id),
            EngineHealth::Unhealthy => {
                if report.last_probe.as_ref().is_some_and(|p| p.timed_out) {
                    // A probe that timed out says more about the node than the image:
                    // keep the container (the engine goes on probing and it may pass
                    // again) until its deadline, and create more slowly.
                    if cause == Look::Unhealthy {
                        self.probe_timed_out();
                    }
                    if let Some(entry) = self.containers.get_mut(&container_id) {
                        entry.health = "unhealthy (probe timed out)".into();
                        entry.next_check = Instant::now() + STARTING_CHECK;
                        if entry.ready_by.is_none() {
                            // Held back from the idle set: it has a deadline again.
                            let wall = Utc::now()
                                + chrono::Duration::from_std(timeout).unwrap_or_default();
                            entry.ready_by = Some((Instant::now() + timeout, wall));
                        }
                    }
                    if cause != Look::Deadline || self.extend_under_pressure(&container_id) {
                        return;
                    }
                }
                self.give_up(
                    &container_id,
                    format!("container {name} turned unhealthy{probe}"),
                );
            }
            EngineHealth::Starting => {
                let timed_out = report.last_probe.as_ref().is_some_and(|p| p.timed_out);
                if cause == Look::Deadline && timed_out && self.extend_under_pressure(&container_id)
                {
                    return;
                }
                if cause == Look::Deadline {
                    let why = match (&report.last_probe, first_probe) {
                        (Some(_), _) => format!("its healthcheck has not passed yet{probe}"),
                        (None, Some(first)) => format!(
                            "no health probe has run yet (its healthcheck first probes {} after start)",
                            humantime::format_duration(first)
                        ),
                        (None, None) => "its healthcheck has not reported yet".into(),
                    };
                    self.give_up(
                        &container_id,
                        format!(
                            "container {name} did not become ready within {}: {why}",
                            humantime::format_duration(timeout)
                        ),
                    );
                } else if let Some(entry) = self.containers.get_mut(&container_id) {
                    entry.next_check = Instant::now() + STARTING_CHECK;
                }
            }
        }
    }

    /// A container whose probes only time out while the node is overloaded (several
    /// time-outs across the pool in the last minute) gets its deadline again, up to
    /// [`MAX_EXTENSIONS`] times: replacing it would add the load of a new container
    /// to a node already too slow to run its probes.
    fn extend_under_pressure(&mut self, container_id: &str) -> bool {
        if self.recent_probe_timeouts() < PRESSURE_TIMEOUTS {
            return false;
        }
        let timeout = self.ready_timeout();
        let Some(entry) = self.containers.get_mut(container_id) else {
            return false;
        };
        if entry.extensions >= MAX_EXTENSIONS {
            return false;
        }
        entry.extensions += 1;
        let wall = Utc::now() + chrono::Duration::from_std(timeout).unwrap_or_default();
        entry.ready_by = Some((Instant::now() + timeout, wall));
        true
    }

    /// A starting container failed for good: remove it and count the failure.
    fn give_up(&mut self, container_id: &str, message: String) {
        self.create_limit = (self.create_limit / 2).max(1);
        self.remove_container(container_id);
        self.creation_failed(message);
    }

    fn probe_timed_out(&mut self) {
        let now = Instant::now();
        self.probe_timeouts.push_back(now);
        self.create_limit = (self.create_limit / 2).max(1);
    }

    fn recent_probe_timeouts(&self) -> usize {
        self.probe_timeouts
            .iter()
            .filter(|t| t.elapsed() < PRESSURE_WINDOW)
            .count()
    }

    /// Takes the container out of service and removes it in the background.
    fn remove_container(&mut self, container_id: &str) {
        let Some(entry) = self.containers.get_mut(container_id) else {
            return;
        };
        if entry.status == Status::Removing {
            return;
        }
        entry.status = Status::Removing;
        self.idle.retain(|c| c != container_id);
        let info = entry.info.clone();
        let runtime = self.ctx.runtime.clone();
        let container_id = container_id.to_owned();
        self.spawn_report(async move {
            destroy_container(runtime.as_ref(), &info).await;
            Msg::Removed { container_id }
        });
    }

    fn destroy(&mut self, container_id: &str, force: bool) -> Result<(), PoolError> {
        let entry = self
            .containers
            .get_mut(container_id)
            .ok_or_else(|| PoolError::ContainerNotFound(container_id.to_owned()))?;
        match entry.status {
            Status::Starting if entry.creating => {
                entry.cancelled = true;
                Ok(())
            }
            Status::Starting => {
                self.remove_container(container_id);
                Ok(())
            }
            Status::Idle => {
                self.remove_container(container_id);
                Ok(())
            }
            Status::Removing => Ok(()),
            Status::Releasing => Err(PoolError::Busy(format!(
                "container {container_id} is being released; try again shortly"
            ))),
            Status::Claimed => {
                let tenant = self
                    .claims
                    .iter()
                    .find(|(_, c)| c.container_id == container_id)
                    .map(|(t, _)| t.clone());
                let Some(tenant) = tenant else {
                    self.remove_container(container_id);
                    return Ok(());
                };
                if !force {
                    return Err(PoolError::ContainerClaimed(
                        container_id.to_owned(),
                        tenant.to_string(),
                    ));
                }
                if let Some(mut claim) = self.claims.remove(&tenant) {
                    if let Some(p) = claim.periodic.take() {
                        p.abort();
                    }
                    for w in claim.waiters {
                        w.answer(Err(PoolError::Busy("the container was destroyed".into())));
                    }
                }
                let ledger = self.ctx.ledger.clone();
                let pool = self.id().to_owned();
                let t = tenant.to_string();
                tokio::spawn(async move {
                    if let Err(e) = ledger.remove(&pool, &t).await {
                        tracing::error!(pool, tenant = t, error = %e, "cannot remove claim record");
                    }
                });
                self.record(
                    Event::new("container.released", self.id())
                        .tenant(tenant.as_str())
                        .container(container_id)
                        .message("forced: container destroyed without upload"),
                );
                self.remove_container(container_id);
                Ok(())
            }
        }
    }

    fn on_event(&mut self, event: RuntimeEvent) {
        let Some(entry) = self.containers.get_mut(&event.container_id) else {
            return;
        };
        let health = match &event.kind {
            EventKind::Died { exit_code } => match exit_code {
                Some(code) => format!("dead (exit code {code})"),
                None => "dead".to_owned(),
            },
            EventKind::Oom => "dead (out of memory)".to_owned(),
            EventKind::Unhealthy => "unhealthy".to_owned(),
            EventKind::Healthy => "healthy".to_owned(),
        };
        match entry.status {
            // Its create call has not reported yet: act once it has (a failure wins
            // over a later "healthy").
            Status::Starting
                if entry.creating
                    && (entry.early.is_none() || event.kind != EventKind::Healthy) =>
            {
                entry.early = Some(event.kind);
            }
            Status::Starting if entry.creating => {}
            Status::Starting => match event.kind {
                EventKind::Healthy => self.mark_ready(&event.container_id),
                EventKind::Unhealthy => self.inspect(&event.container_id, Look::Unhealthy),
                EventKind::Died { .. } | EventKind::Oom => {
                    self.inspect(&event.container_id, Look::Died)
                }
            },
            Status::Idle if event.kind != EventKind::Healthy => {
                tracing::warn!(pool = %self.workload.id, container = %event.container_id, health, "idle container failed");
                self.record(
                    Event::new("container.unhealthy", self.id())
                        .container(&event.container_id)
                        .message(health),
                );
                let look = if event.kind == EventKind::Unhealthy {
                    Look::Unhealthy
                } else {
                    Look::Died
                };
                self.inspect(&event.container_id, look);
                self.refill();
            }
            Status::Claimed | Status::Releasing => {
                // Never swapped silently: the tenant's status shows it.
                if entry.status == Status::Releasing
                    && self.workload.pool.recycle == Recycle::Restart
                {
                    return;
                }
                entry.health = health.clone();
                if let Some(claim) = self
                    .claims
                    .values_mut()
                    .find(|c| c.container_id == event.container_id)
                {
                    claim.health = health.clone();
                }
                if event.kind != EventKind::Healthy {
                    self.record(
                        Event::new("container.unhealthy", self.id())
                            .container(&event.container_id)
                            .message(health),
                    );
                }
            }
            _ => {}
        }
    }

    // ----- timers ---------------------------------------------------------------

    fn on_tick(&mut self) {
        let now = Instant::now();
        // Starting containers past their deadline, or due for a look.
        let due: Vec<(String, Look)> = self
            .containers
            .iter()
            .filter(|(_, e)| e.status == Status::Starting && !e.creating && !e.inspecting)
            .filter_map(|(id, e)| match e.ready_by {
                Some((deadline, _)) if deadline <= now => Some((id.clone(), Look::Deadline)),
                _ if e.next_check <= now && e.info.docker_id.is_some() => {
                    Some((id.clone(), Look::Check))
                }
                _ => None,
            })
            .collect();
        for (id, look) in due {
            self.inspect(&id, look);
        }
        // The backoff resets once a container has stayed up a while: one that is
        // ready for a moment and then exits must not reset it (a crash loop).
        if self.failures > 0
            && self.idle.iter().any(|c| {
                self.containers
                    .get(c)
                    .is_some_and(|e| e.idle_since.elapsed() >= STABLE)
            })
        {
            self.failures = 0;
        }
        while self
            .probe_timeouts
            .front()
            .is_some_and(|t| t.elapsed() >= PRESSURE_WINDOW)
        {
            self.probe_timeouts.pop_front();
        }
        // Claims that waited too long.
        let expired: Vec<TenantId> = self
            .waiting
            .iter()
            .filter(|(_, w)| w.deadline <= now || w.replies.iter().all(|r| r.is_closed()))
            .map(|(t, _)| t.clone())
            .collect();
        for tenant in expired {
            if let Some(w) = self.waiting.remove(&tenant) {
                self.queue.retain(|t| t != &tenant);
                let err = if !w.queued_at_capacity && self.starting_count() > 0 {
                    self.not_ready_yet(w.waited())
                } else if w.queued_at_capacity || self.failures == 0 {
                    self.exhausted(w.waited())
                } else {
                    self.unavailable()
                };
                for r in w.replies {
                    r.answer(Err(err.clone()));
                }
            }
        }
        // Surplus idle containers past the pool's idle timeout.
        if let Some(limit) = self.workload.pool.idle_timeout {
            while self.idle.len() > self.min_size {
                let Some(oldest) = self.idle.front().cloned() else {
                    break;
                };
                let old = self
                    .containers
                    .get(&oldest)
                    .is_some_and(|e| e.idle_since.elapsed() >= limit);
                if !old {
                    break;
                }
                self.remove_container(&oldest);
            }
        }
        // Claim inactivity.
        if let Some(limit) = self.ctx.config.idle_timeout() {
            let limit = chrono::Duration::from_std(limit).unwrap_or(chrono::Duration::MAX);
            let wall = Utc::now();
            let due: Vec<(TenantId, std::path::PathBuf)> = self
                .claims
                .iter_mut()
                .filter(|(_, c)| {
                    c.state == ClaimState::Warm
                        && !c.checking_activity
                        && wall - c.last_activity >= limit
                        && c.auto_retry_at.is_none_or(|t| t <= now)
                })
                .filter_map(|(t, c)| {
                    c.checking_activity = true;
                    let dir = self
                        .containers
                        .get(&c.container_id)?
                        .info
                        .dirs
                        .state
                        .clone();
                    Some((t.clone(), dir))
                })
                .collect();
            for (tenant, dir) in due {
                self.spawn_report(async move {
                    let newest = tokio::task::spawn_blocking(move || fsutil::newest_mtime(&dir))
                        .await
                        .ok()
                        .flatten()
                        .map(DateTime::<Utc>::from);
                    Msg::Activity { tenant, newest }
                });
            }
        }
        self.refill();
    }

    fn on_activity(&mut self, tenant: TenantId, newest: Option<DateTime<Utc>>) {
        let Some(claim) = self.claims.get_mut(&tenant) else {
            return;
        };
        claim.checking_activity = false;
        if claim.state != ClaimState::Warm {
            return;
        }
        if let Some(newest) = newest {
            if newest > claim.last_activity {
                // The tenant wrote to its state: that is activity.
                claim.last_activity = newest.min(Utc::now());
                return;
            }
        }
        tracing::info!(pool = %self.workload.id, tenant = %tenant, "releasing inactive claim");
        self.on_release(tenant, true, None);
    }

    // ----- views ----------------------------------------------------------------

    fn view(&self) -> PoolView {
        let claimed = self
            .containers
            .values()
            .filter(|e| matches!(e.status, Status::Claimed | Status::Releasing))
            .count();
        let mut starting: Vec<StartingView> = self
            .containers
            .values()
            .filter(|e| e.status == Status::Starting)
            .map(|e| StartingView {
                container_id: e.info.id.clone(),
                since: e.starting_since,
                ready_by: e.ready_by.map(|(_, wall)| wall),
            })
            .collect();
        starting.sort_by_key(|s| s.since);
        let probe_timeouts = self.recent_probe_timeouts();
        let warning = (probe_timeouts > 0).then(|| {
            format!(
                "{probe_timeouts} health probe(s) timed out in the last minute: the node is overloaded; \
                 the pool creates at most {} container(s) at once until probes pass again",
                self.create_limit
            )
        });
        let status = if self.failures > 0 && self.idle.is_empty() {
            "error"
        } else if self.failures > 0 || self.idle.len() < self.min_size {
            "degraded"
        } else {
            "healthy"
        };
        PoolView {
            id: self.id().to_owned(),
            workload_id: self.id().to_owned(),
            workload_name: self.workload.name.clone(),
            image: self.workload.image.clone(),
            min_size: self.min_size,
            max_size: self.max_size,
            current_size: self.containers.len(),
            claimed_count: claimed,
            idle_count: self.idle.len(),
            starting_count: starting.len(),
            status,
            last_error: self.last_error.clone(),
            starting,
            ready_timeout_ms: self.ready_timeout().as_millis() as u64,
            create_concurrency: self.create_limit,
            probe_timeouts,
            warning,
        }
    }

    fn snapshot(&self) -> Snapshot {
        let tenants: HashMap<&str, &TenantId> = self
            .claims
            .iter()
            .map(|(t, c)| (c.container_id.as_str(), t))
            .collect();
        let containers = self
            .containers
            .values()
            .map(|e| ContainerView {
                id: e.info.id.clone(),
                pool_id: self.id().to_owned(),
                tenant_id: tenants.get(e.info.id.as_str()).map(|t| t.to_string()),
                status: e.status.as_str(),
                health: e.health.clone(),
                image: self.workload.image.clone(),
                created_at: e.created_at,
                last_activity_at: e.last_activity_at,
                starting_since: (e.status == Status::Starting).then_some(e.starting_since),
                ready_by: e
                    .ready_by
                    .filter(|_| e.status == Status::Starting)
                    .map(|(_, wall)| wall),
            })
            .collect();
        let claims = self
            .claims
            .iter()
            .filter_map(|(t, c)| {
                let e = self.containers.get(&c.container_id)?;
                Some(ClaimView {
                    tenant_id: t.to_string(),
                    pool_id: self.id().to_owned(),
                    container_id: c.container_id.clone(),
                    container_name: e.info.name.clone(),
                    status: match c.state {
                        ClaimState::Provisioning => "provisioning",
                        ClaimState::Warm => "warm",
                        ClaimState::Releasing => "releasing",
                    },
                    claimed_at: c.claimed_at,
                    last_activity: c.last_activity,
                    health: c.health.clone(),
                    sync_status: self.workload.sync.as_ref().map(|_| c.sync.status()),
                    endpoints: endpoints(&e.info),
                    metadata: c.metadata.clone(),
                })
            })
            .collect();
        Snapshot {
            pool: self.view(),
            containers,
            claims,
        }
    }

    fn scale(&mut self, target: i64) -> Result<ScaleOutcome, PoolError> {
        if target < 0 || target as usize > self.max_size {
            return Err(PoolError::Invalid(format!(
                "targetSize {target} is out of range: it must be between 0 and the pool's max_size {}",
                self.max_size
            )));
        }
        let target = target as usize;
        let previous = self
            .containers
            .values()
            .filter(|e| e.status != Status::Removing)
            .count();
        let claimed = self.claims.len();
        self.min_size = target.saturating_sub(claimed);
        let floor = target.max(claimed);
        let mut total = previous;
        while total > floor {
            let Some(c) = self.idle.back().cloned() else {
                break;
            };
            self.remove_container(&c);
            total -= 1;
        }
        self.refill();
        self.record(
            Event::new("pool.scaled", self.id()).message(format!("{previous} -> {target}")),
        );
        Ok(ScaleOutcome {
            success: true,
            previous_size: previous,
            new_size: target,
            message: format!(
                "pool {} scaling from {previous} to {target} containers ({claimed} claimed; idle target now {})",
                self.id(),
                self.min_size
            ),
        })
    }

    fn shutdown(&mut self) {
        self.stopping = true;
        for claim in self.claims.values_mut() {
            if let Some(p) = claim.periodic.take() {
                p.abort();
            }
            for w in std::mem::take(&mut claim.waiters) {
                w.answer(Err(PoolError::Stopped));
            }
        }
        for (_, w) in self.waiting.drain() {
            for r in w.replies {
                r.answer(Err(PoolError::Stopped));
            }
        }
    }
}

pub fn endpoints(info: &ContainerInfo) -> Endpoints {
    Endpoints {
        socket: info.dirs.socket.join("app.sock").display().to_string(),
    }
}

// ----- the tasks the actor spawns ---------------------------------------------

/// Creates and starts a container and watches it for [`FIRST_LOOK`]: ready then, or
/// still starting (the actor waits for its health events), or an error that says why
/// it did not run, with its exit code and last output.
#[allow(clippy::too_many_arguments)]
async fn create_container(
    ctx: &PoolContext,
    workload: &Workload,
    spec_hash: &str,
    info: &ContainerInfo,
    owner: Owner,
    image_present: &AtomicBool,
    created_at: DateTime<Utc>,
    settle: bool,
) -> Result<(String, Readiness), String> {
    let started = Instant::now();
    let dirs = info.dirs.clone();
    let made = tokio::task::spawn_blocking(move || fsutil::create_dirs(&dirs, owner))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| format!("cannot create container dirs: {e}")));
    if let Err(e) = made {
        fsutil::remove_dirs(&info.dirs);
        return Err(e);
    }
    let result = async {
        if !image_present.load(Ordering::Acquire) {
            ctx.runtime
                .ensure_image(&workload.image)
                .await
                .map_err(|e| e.to_string())?;
            image_present.store(true, Ordering::Release);
        }
        let spec = ContainerSpec::for_workload(
            workload,
            &ctx.config,
            &info.id,
            &info.dirs,
            spec_hash,
            &created_at.to_rfc3339(),
        );
        let docker_id = ctx.runtime.create_and_start(&spec).await.map_err(|e| {
            image_present.store(false, Ordering::Release);
            e.to_string()
        })?;
        match ctx
            .runtime
            .wait_ready(&docker_id, &spec.name, FIRST_LOOK)
            .await
        {
            Ok(Readiness::Ready) if settle => {
                tokio::time::sleep(FIRST_LOOK).await;
                match ctx.runtime.report(&docker_id, LOG_LINES).await {
                    Ok(r) if !r.running => {
                        let _ = ctx.runtime.remove(&docker_id).await;
                        Err(format!(
                            "container {} exited at once ({}){}",
                            spec.name,
                            r.detail,
                            output_tail(r.log_tail.as_ref())
                        ))
                    }
                    _ => Ok((docker_id, Readiness::Ready)),
                }
            }
            Ok(readiness) => Ok((docker_id, readiness)),
            Err(e) => {
                let message = match ctx.runtime.report(&docker_id, LOG_LINES).await {
                    Ok(r) if !r.running => format!(
                        "container {} exited at once ({}){}",
                        spec.name,
                        r.detail,
                        output_tail(r.log_tail.as_ref())
                    ),
                    _ => e.to_string(),
                };
                let _ = ctx.runtime.remove(&docker_id).await;
                Err(message)
            }
        }
    }
    .await;
    crate::metrics::container_created(workload.id.as_str(), result.is_ok(), started.elapsed());
    match &result {
        Ok(_) => {
            tracing::debug!(pool = %workload.id, container = %info.id, elapsed_ms = started.elapsed().as_millis() as u64, "container ready")
        }
        Err(_) => fsutil::remove_dirs(&info.dirs),
    }
    result
}

async fn destroy_container(runtime: &dyn Runtime, info: &ContainerInfo) {
    if let Some(docker_id) = &info.docker_id {
        if let Err(e) = runtime.remove(docker_id).await {
            tracing::warn!(container = %info.id, error = %e, "cannot remove container");
        }
    }
    let dirs = info.dirs.clone();
    let _ = tokio::task::spawn_blocking(move || fsutil::remove_dirs(&dirs)).await;
}

/// Writes the first caller's secrets, restores state and records the claim durably,
/// in that order, before anyone is answered. No Docker call.
#[allow(clippy::too_many_arguments)]
async fn prepare_claim(
    ctx: &PoolContext,
    workload: &Workload,
    tenant: &TenantId,
    info: &ContainerInfo,
    sync: &ClaimSync,
    gate: &SecretsGate,
    secrets: Option<Secrets>,
    owner: Owner,
    record: &ClaimRecord,
) -> Result<(), PoolError> {
    if let Some(secrets) = secrets {
        gate.write(&info.dirs.secrets, secrets, owner).await?;
    }
    if let Some(spec) = workload.sync.as_ref().filter(|s| s.policy.on_claim) {
        let (pool, dir) = (workload.id.as_str(), &info.dirs.state);
        run_sync(ctx, sync, spec, pool, tenant, dir, SyncOp::Download, owner)
            .await
            .map_err(|e| {
                PoolError::SyncFailed(format!(
                    "restoring tenant {tenant}'s state failed, so the claim was not made: {e}"
                ))
            })?;
    }
    ctx.ledger.put(record).await.map_err(|e| {
        PoolError::Ledger(format!(
            "the claim was not made: its record cannot be written to the claim ledger in {} \
             (BOILERHOUSE_DATA_DIR): {e}",
            ctx.config.data_dir.display()
        ))
    })
}

/// Freeze, upload, forget, recycle — in that order, and nothing is wiped unless the
/// upload succeeded (or the caller asked for no sync).
#[allow(clippy::too_many_arguments)]
async fn release_claim(
    ctx: &PoolContext,
    workload: &Workload,
    tenant: &TenantId,
    info: &ContainerInfo,
    sync: &ClaimSync,
    secrets: &SecretsGate,
    do_sync: bool,
    owner: Owner,
) -> Result<Recycled, PoolError> {
    let runtime = ctx.runtime.as_ref();
    let docker_id = info.docker_id.clone().unwrap_or_default();
    let uploads = do_sync && workload.sync.as_ref().is_some_and(|s| s.policy.on_release);
    // Freeze for a consistent upload snapshot, and so no tenant write races a wipe.
    // A container that is destroyed without an upload needs neither (saves ~25 ms).
    // A dead container cannot be paused; its files are still a consistent snapshot.
    let freeze = uploads || workload.pool.recycle != Recycle::Destroy;
    let paused = freeze && runtime.pause(&docker_id).await.is_ok();
    if let Some(spec) = workload
        .sync
        .as_ref()
        .filter(|s| do_sync && s.policy.on_release)
    {
        let (pool, dir) = (workload.id.as_str(), &info.dirs.state);
        if let Err(e) = run_sync(ctx, sync, spec, pool, tenant, dir, SyncOp::Upload, owner).await {
            if paused {
                let _ = runtime.unpause(&docker_id).await;
            }
            return Err(PoolError::SyncFailed(format!(
                "saving tenant {tenant}'s state failed, so the release was not done and the claim is intact: {e}"
            )));
        }
    }
    // Forget the claim durably before wiping: a crash from here on can only leave an
    // unclaimed container, never a claim whose state was wiped.
    ctx.ledger
        .remove(workload.id.as_str(), tenant.as_str())
        .await
        .map_err(|e| PoolError::Internal(format!("cannot remove the claim record: {e}")))?;
    // No secrets write of this claim may land after the wipe.
    secrets.close().await;
    match workload.pool.recycle {
        Recycle::Destroy => Ok(Recycled::Removing),
        Recycle::Reuse | Recycle::Restart => {
            let dirs = info.dirs.clone();
            let wiped = tokio::task::spawn_blocking(move || {
                fsutil::wipe_contents(&dirs.state)?;
                fsutil::wipe_contents(&dirs.secrets)
            })
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
            let ready = match wiped {
                Err(e) => Err(format!("wipe failed: {e}")),
                Ok(()) => {
                    if paused {
                        let _ = runtime.unpause(&docker_id).await;
                    }
                    if workload.pool.recycle == Recycle::Restart {
                        match runtime.restart(&docker_id).await {
                            Ok(()) => runtime
                                .wait_ready(&docker_id, &info.name, FIRST_LOOK)
                                .await
                                .map_err(|e| e.to_string()),
                            Err(e) => Err(e.to_string()),
                        }
                    } else {
                        Ok(Readiness::Ready)
                    }
                }
            };
            match ready {
                Ok(Readiness::Ready) => Ok(Recycled::Idle),
                Ok(Readiness::Starting(timings)) => Ok(Recycled::Starting(timings)),
                Err(e) => {
                    tracing::warn!(container = %info.id, error = %e, "recycling failed; removing the container");
                    Ok(Recycled::Removing)
                }
            }
        }
    }
}

/// Runs one transfer for a claim, recording activity events and metrics.
#[allow(clippy::too_many_arguments)]
pub async fn run_sync(
    ctx: &PoolContext,
    cell: &ClaimSync,
    spec: &SyncSpec,
    pool: &str,
    tenant: &TenantId,
    state_dir: &Path,
    op: SyncOp,
    owner: Owner,
) -> Result<Vec<TransferResult>, SyncError> {
    let direction = match op {
        SyncOp::Upload => "upload",
        SyncOp::Download => "download",
    };
    ctx.activity.record(
        Event::new("sync.started", pool)
            .tenant(tenant.as_str())
            .message(direction),
    );
    let started = Instant::now();
    let result = cell
        .run(&ctx.sync, spec, tenant.as_str(), state_dir, op, owner)
        .await;
    crate::metrics::sync(pool, direction, result.is_ok(), started.elapsed());
    let event = match &result {
        Ok(_) => Event::new("sync.completed", pool).message(direction),
        Err(e) => Event::new("sync.failed", pool).message(format!("{direction}: {e}")),
    };
    ctx.activity.record(event.tenant(tenant.as_str()));
    result
}

/// Answers a caller once its secrets (if any) are written; a failed write fails
/// only that caller, and the claim keeps the files it had.
fn answer_after_secrets(asker: Asker, grant: Result<ClaimGrant, PoolError>, gate: SecretsGate) {
    let Ok(grant) = grant else {
        asker.answer(grant);
        return;
    };
    let Some(secrets) = asker.secrets else {
        let _ = asker.reply.send(Ok(grant));
        return;
    };
    let reply = asker.reply;
    tokio::spawn(async move {
        let dir = grant.container.dirs.secrets.clone();
        let written = gate.write(&dir, secrets, grant.owner).await;
        let _ = reply.send(written.map(|()| grant));
    });
}

#[cfg(test)]
mod tests {
    //! Pool logic against the in-memory runtime: fast, deterministic, no Docker.
    use super::*;
    use crate::runtime::memory::MemoryRuntime;

    struct Fixture {
        _dir: tempfile::TempDir,
        ctx: Arc<PoolContext>,
        runtime: Arc<MemoryRuntime>,
    }

    fn fixture(max_containers: usize) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let p = |s: &str| dir.path().join(s).display().to_string();
        let config = Config::from_vars(vec![
            ("BOILERHOUSE_STATE_DIR".into(), p("s")),
            ("BOILERHOUSE_SECRETS_DIR".into(), p("x")),
            ("BOILERHOUSE_SOCKET_DIR".into(), p("k")),
            ("BOILERHOUSE_DATA_DIR".into(), p("d")),
            (
                "BOILERHOUSE_MAX_CONTAINERS".into(),
                max_containers.to_string(),
            ),
            ("BOILERHOUSE_CLAIM_TIMEOUT_MS".into(), "3000".into()),
        ])
        .unwrap();
        let runtime = Arc::new(MemoryRuntime::default());
        let ctx = Arc::new(PoolContext {
            sync: SyncEngine::new("rclone".into(), 1, Duration::from_secs(1)),
            ledger: Ledger::open(&config.data_dir).unwrap(),
            capacity: NodeCapacity::new(config.max_containers),
            config: Arc::new(config),
            runtime: runtime.clone(),
            activity: Arc::new(ActivityLog::default()),
        });
        Fixture {
            _dir: dir,
            ctx,
            runtime,
        }
    }

    fn workload(id: &str, min: usize, max: usize) -> Arc<Workload> {
        let mut w = crate::workload::builtin_default("img");
        w.id = crate::workload::WorkloadId::parse(id).unwrap();
        w.pool.min_size = Some(min);
        w.pool.max_size = Some(max);
        w.pool.recycle = Recycle::Reuse;
        Arc::new(w)
    }

    fn req(tenant: &str, wait_ms: u64) -> ClaimRequest {
        ClaimRequest {
            tenant: TenantId::parse(tenant).unwrap(),
            queue_wait: Duration::from_millis(wait_ms),
            metadata: None,
            secrets: None,
        }
    }

    async fn idle(pool: &PoolHandle, n: usize) {
        for _ in 0..200 {
            if pool.snapshot().await.unwrap().pool.idle_count >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("pool never reached {n} idle");
    }

    #[tokio::test]
    async fn warms_to_min_size_and_a_warm_claim_makes_no_engine_call() {
        let f = fixture(10);
        // max = min: the claim triggers no refill, so any call would be the claim's own.
        let pool = spawn(f.ctx.clone(), workload("web", 3, 3), vec![]);
        idle(&pool, 3).await;
        let before = f.runtime.total_calls();
        let grant = pool.claim(req("a", 0)).await.unwrap();
        assert!(!grant.reused && !grant.cold);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            f.runtime.total_calls(),
            before,
            "no engine call on a warm claim"
        );
        let again = pool.claim(req("a", 0)).await.unwrap();
        assert!(again.reused);
        assert_eq!(again.container.id, grant.container.id);
    }

    #[tokio::test]
    async fn concurrent_claims_for_one_tenant_share_one_container() {
        let f = fixture(10);
        let pool = spawn(f.ctx.clone(), workload("web", 0, 5), vec![]);
        *f.runtime.create_delay.lock().unwrap() = Duration::from_millis(50);
        let claims: Vec<_> = (0..20)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move { pool.claim(req("same", 1000)).await.unwrap() })
            })
            .collect();
        let mut ids = std::collections::HashSet::new();
        let mut reused = 0;
        for c in claims {
            let g = c.await.unwrap();
            ids.insert(g.container.id);
            reused += usize::from(g.reused);
        }
        assert_eq!(ids.len(), 1);
        assert_eq!(reused, 19);
    }

    #[tokio::test]
    async fn at_capacity_claims_queue_in_order_or_fail_fast() {
        let f = fixture(10);
        let pool = spawn(f.ctx.clone(), workload("web", 1, 1), vec![]);
        idle(&pool, 1).await;
        pool.claim(req("a", 0)).await.unwrap();
        assert!(matches!(
            pool.claim(req("fast", 0)).await,
            Err(PoolError::Exhausted(_))
        ));
        let b = tokio::spawn({
            let p = pool.clone();
            async move { p.claim(req("b", 2000)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let c = tokio::spawn({
            let p = pool.clone();
            async move { p.claim(req("c", 2000)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        pool.release(TenantId::parse("a").unwrap(), false)
            .await
            .unwrap();
        let b = b.await.unwrap().unwrap();
        assert!(b.cold, "it waited in the queue");
        assert!(!c.is_finished(), "c is behind b");
        pool.release(TenantId::parse("b").unwrap(), false)
            .await
            .unwrap();
        c.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_queued_claim_gives_up_with_exhausted() {
        let f = fixture(10);
        let pool = spawn(f.ctx.clone(), workload("web", 1, 1), vec![]);
        idle(&pool, 1).await;
        pool.claim(req("a", 0)).await.unwrap();
        let started = Instant::now();
        assert!(matches!(
            pool.claim(req("b", 300)).await,
            Err(PoolError::Exhausted(_))
        ));
        assert!(started.elapsed() >= Duration::from_millis(300));
    }

    #[tokio::test]
    async fn failing_creation_backs_off_and_reports_the_error() {
        let f = fixture(10);
        f.runtime.fail_create.store(true, Ordering::SeqCst);
        let pool = spawn(f.ctx.clone(), workload("web", 2, 4), vec![]);
        let view = loop {
            let view = pool.snapshot().await.unwrap().pool;
            if view.last_error.is_some() {
                break view;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(view.status, "error");
        assert!(view
            .last_error
            .unwrap()
            .message
            .contains("injected failure"));
        assert!(matches!(
            pool.claim(req("a", 1000)).await,
            Err(PoolError::Unavailable(_))
        ));
        // Backoff: far fewer attempts than a hot loop would make.
        assert!(
            f.runtime.calls("create") <= 4,
            "{}",
            f.runtime.calls("create")
        );
        f.runtime.fail_create.store(false, Ordering::SeqCst);
        idle(&pool, 2).await;
    }

    #[tokio::test]
    async fn a_starting_container_joins_the_idle_set_on_its_health_event() {
        let f = fixture(10);
        f.runtime.start_unready.store(true, Ordering::SeqCst);
        let pool = spawn(f.ctx.clone(), workload("web", 1, 1), vec![]);
        let id = loop {
            let snap = pool.snapshot().await.unwrap();
            if let Some(s) = snap.pool.starting.first().filter(|s| s.ready_by.is_some()) {
                break s.container_id.clone();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let view = pool.snapshot().await.unwrap().pool;
        assert_eq!((view.idle_count, view.starting_count), (0, 1));
        assert!(view.last_error.is_none(), "starting is not failing");
        pool.event(RuntimeEvent {
            pool: "web".into(),
            container_id: id,
            kind: EventKind::Healthy,
        })
        .await;
        idle(&pool, 1).await;
        assert_eq!(pool.snapshot().await.unwrap().pool.starting_count, 0);
    }

    #[tokio::test]
    async fn the_node_cap_holds_across_pools() {
        let f = fixture(3);
        let a = spawn(f.ctx.clone(), workload("a", 2, 5), vec![]);
        let b = spawn(f.ctx.clone(), workload("b", 2, 5), vec![]);
        // Both pools want 2; the node allows 3. Never more at any look, until 3 run.
        for _ in 0..200 {
            let total = a.snapshot().await.unwrap().pool.current_size
                + b.snapshot().await.unwrap().pool.current_size;
            assert!(
                total <= 3 && f.runtime.running() <= 3,
                "cap exceeded: {total}"
            );
            if total == 3 && f.runtime.running() == 3 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the pools never used the node's 3 slots");
    }

    #[tokio::test]
    async fn scaling_sets_the_idle_target() {
        let f = fixture(10);
        let pool = spawn(f.ctx.clone(), workload("web", 1, 5), vec![]);
        idle(&pool, 1).await;
        let out = pool.scale(4).await.unwrap();
        assert_eq!((out.previous_size, out.new_size), (1, 4));
        idle(&pool, 4).await;
        pool.scale(2).await.unwrap();
        for _ in 0..100 {
            if pool.snapshot().await.unwrap().pool.current_size == 2 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("did not scale down");
    }

    #[tokio::test]
    async fn reuse_returns_the_container_to_the_idle_set_wiped() {
        let f = fixture(10);
        let pool = spawn(f.ctx.clone(), workload("web", 1, 1), vec![]);
        idle(&pool, 1).await;
        let g = pool.claim(req("a", 0)).await.unwrap();
        std::fs::write(g.container.dirs.state.join("f"), "x").unwrap();
        pool.release(TenantId::parse("a").unwrap(), true)
            .await
            .unwrap();
        idle(&pool, 1).await;
        assert!(fsutil::is_empty(&g.container.dirs.state));
        let g2 = pool.claim(req("b", 0)).await.unwrap();
        assert_eq!(g2.container.id, g.container.id);
        assert!(matches!(
            pool.release(TenantId::parse("zzz").unwrap(), true).await,
            Err(PoolError::NotClaimed)
        ));
    }
}
