//! The actor itself: the [`Pool`] state one task owns, how it starts (with the
//! containers recovered for it), its message loop and its timer. What it does for
//! each message lives in the room of that concept: `claims.rs`, `containers.rs`,
//! `readiness.rs`, `views.rs`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use super::autoscale::{Demand, Inputs};
use super::claims::{Claim, ClaimState, Waiting};
use super::containers::{ContainerInfo, Entry, Status};
use super::handle::{Adopted, Msg, PoolHandle};
use super::readiness::{Look, INITIAL_CREATE_CONCURRENCY, STABLE};
use super::rollout::{Control, PoolControl, Rollout};
use super::views::LastError;
use super::PoolContext;
use crate::activity::Event;
use crate::backoff::Backoff;
use crate::fsutil::{self, Owner};
use crate::runtime::spec::{spec_hash, ContainerDirs};
use crate::runtime::ProbeTimings;
use crate::tenant::TenantId;
use crate::workload::Workload;

/// How often the actor looks at deadlines, inactivity and refills.
const TICK: Duration = Duration::from_millis(100);
/// The wait before creating again after the n-th consecutive creation failure.
const CREATE_BACKOFF: Backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));

pub(super) struct Pool {
    pub(super) ctx: Arc<PoolContext>,
    pub(super) workload: Arc<Workload>,
    pub(super) spec_hash: String,
    pub(super) owner: Owner,
    pub(super) min_size: usize,
    pub(super) max_size: usize,
    /// Every container of the pool, claimed or not: one record each.
    pub(super) containers: HashMap<String, Entry>,
    /// Ready containers no tenant holds, oldest first.
    pub(super) idle: VecDeque<String>,
    /// Which container holds each tenant's claim (the claim lives in that record).
    pub(super) tenants: HashMap<TenantId, String>,
    /// Tenants waiting for a container, first come first served.
    pub(super) queue: VecDeque<TenantId>,
    pub(super) waiting: HashMap<TenantId, Waiting>,
    /// Create calls in flight.
    pub(super) creating: usize,
    /// Create calls allowed in flight: grows as containers become ready, halves when
    /// they fail to or their probes time out (additive increase, multiplicative decrease).
    pub(super) create_limit: usize,
    /// The healthcheck timings containers of this pool run with (learned from the
    /// first one the engine reports on, which includes an image's own healthcheck).
    pub(super) timings: Option<ProbeTimings>,
    pub(super) probe_timeouts: VecDeque<Instant>,
    /// Consecutive creation failures, and the wait they impose.
    pub(super) failures: Backoff,
    pub(super) next_create_at: Instant,
    pub(super) last_error: Option<LastError>,
    pub(super) image_present: Arc<AtomicBool>,
    pub(super) tx: mpsc::WeakSender<Msg>,
    pub(super) stopping: bool,
    /// Claim arrivals, the idle target and warm-hit counts.
    pub(super) demand: Demand,
    /// The workload was removed: no claims, no refill; the actor ends when its
    /// last container is gone, telling these.
    pub(super) draining: bool,
    pub(super) drained: Vec<tokio::sync::oneshot::Sender<()>>,
    /// Idle containers of an older spec are being replaced.
    pub(super) rollout: Option<Rollout>,
}

/// Starts the actor for `workload` with the containers recovered for it.
pub fn spawn(ctx: Arc<PoolContext>, workload: Arc<Workload>, adopted: Vec<Adopted>) -> PoolHandle {
    spawn_controlled(ctx, workload, adopted, HashMap::new()).0
}

/// The pool's sizes for `workload`: `min_size` (never above `max_size`) and `max_size`.
pub(super) fn sizes(workload: &Workload, config: &crate::config::Config) -> (usize, usize) {
    let min_size = workload.pool.min_size.unwrap_or(config.pool_size);
    let max_size = workload
        .pool
        .max_size
        .unwrap_or(config.max_containers)
        .max(1);
    (min_size.min(max_size), max_size)
}

/// [`spawn`], plus the [`PoolControl`] a reload uses. `spec_hashes` gives the spec
/// hash label of adopted claimed containers, which may be of an older spec; any
/// container not in it is taken to be of the current spec.
pub fn spawn_controlled(
    ctx: Arc<PoolContext>,
    workload: Arc<Workload>,
    adopted: Vec<Adopted>,
    spec_hashes: HashMap<String, String>,
) -> (PoolHandle, PoolControl) {
    let (tx, rx) = mpsc::channel(1024);
    let (control, control_rx) = PoolControl::channel();
    let config = &ctx.config;
    let (min_size, max_size) = sizes(&workload, config);
    let mut pool = Pool {
        spec_hash: spec_hash(&workload, config),
        ctx: ctx.clone(),
        workload: workload.clone(),
        owner: workload.owner(),
        min_size,
        max_size,
        containers: HashMap::new(),
        idle: VecDeque::new(),
        tenants: HashMap::new(),
        queue: VecDeque::new(),
        waiting: HashMap::new(),
        creating: 0,
        create_limit: INITIAL_CREATE_CONCURRENCY,
        timings: workload.healthcheck.as_ref().and_then(|h| h.timings()),
        probe_timeouts: VecDeque::new(),
        failures: CREATE_BACKOFF,
        next_create_at: Instant::now(),
        last_error: None,
        image_present: Arc::new(AtomicBool::new(false)),
        tx: tx.downgrade(),
        stopping: false,
        demand: Demand::new(min_size),
        draining: false,
        drained: Vec::new(),
        rollout: None,
    };
    pool.adopt(adopted, spec_hashes);
    tokio::spawn(pool.run(rx, control_rx));
    (PoolHandle { workload, tx }, control)
}

impl Pool {
    pub(super) fn id(&self) -> &str {
        self.workload.id.as_str()
    }

    pub(super) fn record(&self, event: Event) {
        self.ctx.activity.record(event);
    }

    /// Runs `fut` in its own task and sends its message back to the actor.
    pub(super) fn spawn_report(
        &self,
        fut: impl std::future::Future<Output = Msg> + Send + 'static,
    ) {
        if let Some(tx) = self.tx.upgrade() {
            tokio::spawn(async move {
                let msg = fut.await;
                let _ = tx.send(msg).await;
            });
        }
    }

    fn adopt(&mut self, adopted: Vec<Adopted>, mut spec_hashes: HashMap<String, String>) {
        for a in adopted {
            let tenant = match &a.claim {
                None => None,
                Some(record) => match TenantId::parse(&record.tenant_id) {
                    Ok(t) => Some(t),
                    // Not ours to guess: the orphan sweep removes the container.
                    Err(_) => continue,
                },
            };
            let info = ContainerInfo {
                name: format!("bh-{}-{}", self.ctx.config.instance, a.container_id),
                dirs: ContainerDirs::new(&self.ctx.config, &a.container_id),
                id: a.container_id.clone(),
                docker_id: Some(a.docker_id),
            };
            let health = if a.running { "healthy" } else { "dead" };
            let status = if tenant.is_some() {
                Status::Claimed
            } else {
                Status::Idle
            };
            let mut entry = Entry::new(
                info,
                status,
                health,
                a.created_at,
                self.ctx.capacity.adopt(),
            );
            entry.spec_hash = spec_hashes
                .remove(&a.container_id)
                .unwrap_or_else(|| self.spec_hash.clone());
            match (tenant, a.claim) {
                (Some(tenant), Some(record)) => {
                    let mut claim = Claim::new(tenant.clone(), ClaimState::Warm, false);
                    claim.claimed_at = record.claimed_at;
                    claim.metadata = record.metadata;
                    entry.claim = Some(claim);
                    self.tenants.insert(tenant, a.container_id.clone());
                }
                _ => self.idle.push_back(a.container_id.clone()),
            }
            self.containers.insert(a.container_id, entry);
        }
        let tenants: Vec<TenantId> = self.tenants.keys().cloned().collect();
        for t in tenants {
            self.start_periodic(&t);
        }
        if self.containers.values().any(|e| self.is_stale(e)) {
            self.begin_rollout();
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Msg>, mut control: mpsc::Receiver<Control>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Pools started without a reload path (tests) drop their control at once.
        let mut controlled = true;
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
                c = control.recv(), if controlled => match c {
                    Some(c) => self.on_control(c),
                    None => controlled = false,
                },
                _ = tick.tick() => self.on_tick(),
            }
            if self.finished_draining() {
                break;
            }
        }
        tracing::debug!(pool = %self.workload.id, "pool actor stopped");
    }

    /// The idle containers the pool keeps now.
    pub(super) fn idle_target(&self) -> usize {
        self.demand.target.value
    }

    /// Recomputes the idle target from demand and the limits.
    pub(super) fn update_target(&mut self) {
        let free = self
            .ctx
            .config
            .max_containers
            .saturating_sub(self.ctx.capacity.used());
        let inputs = Inputs {
            min_size: if self.draining { 0 } else { self.min_size },
            max_size: self.max_size,
            claimed: self.tenants.len(),
            node_room: free + self.idle.len() + self.starting_count(),
        };
        let spec = self
            .workload
            .pool
            .autoscale
            .as_ref()
            .filter(|_| !self.draining);
        self.demand.update(spec, inputs, Instant::now());
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Claim(req, reply) => self.on_claim(req, reply),
            Msg::Release {
                tenant,
                sync,
                reply,
            } => self.on_release(tenant, sync, Some(reply)),
            Msg::Sync { tenant, ops, reply } => self.on_sync(tenant, ops, reply),
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
            Msg::Synced { tenant } => {
                if let Some(claim) = self.claim_mut(&tenant) {
                    claim.last_activity = Utc::now();
                }
            }
            Msg::Removed { container_id } => {
                // Dropping the record gives its node slot back.
                if let Some(entry) = self.containers.remove(&container_id) {
                    let stale = entry.spec_hash != self.spec_hash;
                    if let (Some(r), true) = (self.rollout.as_mut(), stale) {
                        r.replaced += 1;
                    }
                    self.record(
                        Event::new("container.destroyed", self.id()).container(&container_id),
                    );
                }
                self.refill();
            }
            Msg::Activity { tenant, newest } => self.on_activity(tenant, newest),
        }
    }

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
        if self.failures.failures() > 0
            && self.idle.iter().any(|c| {
                self.containers
                    .get(c)
                    .is_some_and(|e| e.idle_since.elapsed() >= STABLE)
            })
        {
            self.failures.reset();
        }
        self.forget_old_probe_timeouts();
        self.expire_waiting(now);
        self.update_target();
        self.rollout_step();
        self.remove_surplus_idle();
        self.check_inactive_claims(now);
        self.refill();
    }

    /// Claims that waited too long get the reason.
    fn expire_waiting(&mut self, now: Instant) {
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
                } else if w.queued_at_capacity || self.failures.failures() == 0 {
                    self.exhausted(w.waited())
                } else {
                    self.unavailable()
                };
                for r in w.replies {
                    r.answer(Err(err.clone()));
                }
            }
        }
    }

    /// Idle containers above the target: with autoscaling all of them (the target
    /// already waited out the scale-down delay), else those past the idle timeout.
    fn remove_surplus_idle(&mut self) {
        if self.workload.pool.autoscale.is_some() {
            while self.idle.len() > self.idle_target() {
                // Older specs first, then the oldest.
                let pick = self
                    .idle
                    .iter()
                    .find(|c| self.containers.get(*c).is_some_and(|e| self.is_stale(e)))
                    .or(self.idle.front())
                    .cloned();
                let Some(c) = pick else { break };
                self.remove_container(&c);
            }
        }
        let Some(limit) = self.workload.pool.idle_timeout else {
            return;
        };
        while self.idle.len() > self.idle_target() {
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

    /// Claims idle past `BOILERHOUSE_IDLE_TIMEOUT_MS`: their state dir is looked at
    /// first (a write there is activity), then they are released with upload.
    fn check_inactive_claims(&mut self, now: Instant) {
        let Some(limit) = self.ctx.config.idle_timeout() else {
            return;
        };
        let limit = chrono::Duration::from_std(limit).unwrap_or(chrono::Duration::MAX);
        let wall = Utc::now();
        let mut due = Vec::new();
        for entry in self.containers.values_mut() {
            let dir = entry.info.dirs.state.clone();
            let Some(c) = entry.claim.as_mut() else {
                continue;
            };
            if c.state == ClaimState::Warm
                && !c.checking_activity
                && wall - c.last_activity >= limit
                && c.auto_retry_at.is_none_or(|t| t <= now)
            {
                c.checking_activity = true;
                due.push((c.tenant.clone(), dir));
            }
        }
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

    fn shutdown(&mut self) {
        self.stopping = true;
        for entry in self.containers.values_mut() {
            if let Some(claim) = entry.claim.as_mut() {
                claim.stop_periodic();
                for w in std::mem::take(&mut claim.waiters) {
                    w.answer(Err(super::PoolError::Stopped));
                }
            }
        }
        for (_, w) in self.waiting.drain() {
            for r in w.replies {
                r.answer(Err(super::PoolError::Stopped));
            }
        }
    }
}
