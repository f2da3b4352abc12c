//! A claim's whole life inside the actor, top-down: a request takes an idle
//! container or queues → provisioning (secrets, restore, ledger record, in a task)
//! → warm (periodic uploads, manual syncs, inactivity) → releasing (upload, forget,
//! recycle, in a task) → gone. Callers are answered only once what they asked for —
//! their secrets included — is on disk.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::task::JoinHandle;

use super::actor::Pool;
use super::containers::Status;
use super::error::PoolError;
use super::handle::{ClaimGrant, ClaimRequest, ClaimTimings, Msg, Reply, Secrets};
use super::tasks;
use crate::activity::Event;
use crate::backoff::Backoff;
use crate::fsutil::{self, Owner};
use crate::ledger::ClaimRecord;
use crate::sync::{ClaimSync, SyncOp, TransferResult};
use crate::tenant::TenantId;

/// Retries of an automatic release (after inactivity) whose upload failed.
const AUTO_RELEASE_BACKOFF: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ClaimState {
    /// Secrets, restore and the ledger record are being done; callers wait.
    Provisioning,
    /// The tenant has its container.
    Warm,
    /// Upload and recycling are in progress.
    Releasing,
}

impl ClaimState {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            ClaimState::Provisioning => "provisioning",
            ClaimState::Warm => "warm",
            ClaimState::Releasing => "releasing",
        }
    }
}

/// A tenant's claim, kept in the record of the container it holds.
pub(super) struct Claim {
    pub(super) tenant: TenantId,
    pub(super) cold: bool,
    pub(super) state: ClaimState,
    pub(super) claimed_at: DateTime<Utc>,
    pub(super) last_activity: DateTime<Utc>,
    pub(super) metadata: Option<serde_json::Value>,
    /// Serializes this claim's transfers (restore, periodic, manual, release).
    pub(super) sync: ClaimSync,
    periodic: Option<JoinHandle<()>>,
    /// Callers waiting for the claim being provisioned; the first is the original.
    pub(super) waiters: Vec<Asker>,
    /// Claims that arrived while the tenant was being released.
    pub(super) after_release: Vec<(ClaimRequest, Reply<ClaimGrant>)>,
    pub(super) secrets: SecretsGate,
    pub(super) checking_activity: bool,
    pub(super) auto_retry_at: Option<Instant>,
    pub(super) auto_backoff: Backoff,
    pub(super) timings: ClaimTimings,
}

impl Claim {
    pub(super) fn new(tenant: TenantId, state: ClaimState, cold: bool) -> Self {
        let now = Utc::now();
        Self {
            tenant,
            cold,
            state,
            claimed_at: now,
            last_activity: now,
            metadata: None,
            sync: ClaimSync::new(),
            periodic: None,
            waiters: Vec::new(),
            after_release: Vec::new(),
            secrets: SecretsGate::new(),
            checking_activity: false,
            auto_retry_at: None,
            auto_backoff: AUTO_RELEASE_BACKOFF,
            timings: ClaimTimings::default(),
        }
    }

    pub(super) fn stop_periodic(&mut self) {
        if let Some(p) = self.periodic.take() {
            p.abort();
        }
    }

    /// What a caller asking while the claim is not warm is told.
    pub(super) fn busy(&self, tenant: &TenantId, action: &str) -> PoolError {
        PoolError::Busy(format!(
            "tenant {tenant}'s claim is {}; try again {action}",
            match self.state {
                ClaimState::Provisioning => "still being provisioned",
                _ => "being released",
            }
        ))
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.stop_periodic();
    }
}

/// One caller waiting for a claim's answer, with the secrets it asked for.
pub(super) struct Asker {
    pub(super) reply: Reply<ClaimGrant>,
    pub(super) secrets: Option<Secrets>,
}

impl Asker {
    pub(super) fn answer(self, result: Result<ClaimGrant, PoolError>) {
        let _ = self.reply.send(result);
    }
    pub(super) fn is_closed(&self) -> bool {
        self.reply.is_closed()
    }
}

/// A claim that waits for a container (none idle).
pub(super) struct Waiting {
    pub(super) replies: Vec<Asker>,
    pub(super) since: Instant,
    pub(super) deadline: Instant,
    pub(super) metadata: Option<serde_json::Value>,
    /// The claim was allowed to queue at capacity (waitMs > 0).
    pub(super) queued_at_capacity: bool,
}

impl Waiting {
    pub(super) fn waited(&self) -> Duration {
        self.since.elapsed()
    }
}

/// Serializes the writes of one claim's secrets, and closes when the claim is
/// released, so a write that was still queued can never land in a container that
/// has been wiped for the next tenant.
#[derive(Clone)]
pub(super) struct SecretsGate(Arc<tokio::sync::Mutex<bool>>);

impl SecretsGate {
    fn new() -> Self {
        Self(Arc::new(tokio::sync::Mutex::new(true)))
    }

    pub(super) async fn write(
        &self,
        dir: &Path,
        secrets: Secrets,
        owner: Owner,
    ) -> Result<(), PoolError> {
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
    pub(super) async fn close(&self) {
        *self.0.lock().await = false;
    }
}

impl Pool {
    pub(super) fn claim_mut(&mut self, tenant: &TenantId) -> Option<&mut Claim> {
        let id = self.tenants.get(tenant)?;
        self.containers.get_mut(id)?.claim.as_mut()
    }

    // ----- a claim arrives ----------------------------------------------------

    pub(super) fn on_claim(&mut self, req: ClaimRequest, reply: Reply<ClaimGrant>) {
        if self.stopping || self.draining {
            let err = match self.stopping {
                true => PoolError::Stopped,
                false => PoolError::Removed(self.id().to_owned()),
            };
            let _ = reply.send(Err(err));
            return;
        }
        let ClaimRequest {
            tenant,
            queue_wait,
            metadata,
            secrets,
        } = req;
        let asker = Asker { reply, secrets };
        if let Some(claim) = self.claim_mut(&tenant) {
            match claim.state {
                ClaimState::Warm => {
                    claim.last_activity = Utc::now();
                    let gate = claim.secrets.clone();
                    let grant = self.grant(&tenant, true);
                    tasks::answer_after_secrets(asker, grant, gate);
                }
                ClaimState::Provisioning => claim.waiters.push(asker),
                ClaimState::Releasing => {
                    let again = ClaimRequest {
                        tenant,
                        queue_wait,
                        metadata,
                        secrets: asker.secrets,
                    };
                    claim.after_release.push((again, asker.reply));
                }
            }
            return;
        }
        let req = ClaimRequest {
            tenant,
            queue_wait,
            metadata,
            secrets: None,
        };
        if let Some(w) = self.waiting.get_mut(&req.tenant) {
            w.replies.push(asker);
            return;
        }
        self.demand.claim_arrived(!self.idle.is_empty());
        if let Some(container_id) = self.idle.pop_front() {
            let (tenant, timings) = (req.tenant, ClaimTimings::default());
            self.start_provisioning(
                tenant,
                container_id,
                vec![asker],
                req.metadata,
                false,
                timings,
            );
            self.refill();
            return;
        }
        let can_create = self.can_create();
        let starting = self.starting_count();
        if !can_create && self.failures.failures() > 0 && starting == 0 {
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

    pub(super) fn unavailable(&self) -> PoolError {
        PoolError::Unavailable(format!(
            "pool {} cannot create containers: {}",
            self.id(),
            self.last_error
                .as_ref()
                .map(|e| e.message.as_str())
                .unwrap_or("unknown error")
        ))
    }

    pub(super) fn exhausted(&self, waited: Duration) -> PoolError {
        PoolError::Exhausted(format!(
            "pool {} has no free container: {} claimed of at most {} (node-wide cap {}); waited {} ms",
            self.id(),
            self.tenants.len(),
            self.max_size,
            self.ctx.config.max_containers,
            waited.as_millis()
        ))
    }

    /// A cold claim's wait ran out while containers were still starting.
    pub(super) fn not_ready_yet(&self, waited: Duration) -> PoolError {
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
    pub(super) fn serve_queue(&mut self) {
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
                let timings = ClaimTimings::after_wait(w.waited(), w.queued_at_capacity);
                self.start_provisioning(tenant, container_id, w.replies, w.metadata, true, timings);
            }
        }
    }

    // ----- provisioning -------------------------------------------------------

    /// The container is the tenant's from now on; secrets, restore and the ledger
    /// record run in a task and `on_prepared` answers the callers.
    fn start_provisioning(
        &mut self,
        tenant: TenantId,
        container_id: String,
        mut waiters: Vec<Asker>,
        metadata: Option<serde_json::Value>,
        cold: bool,
        timings: ClaimTimings,
    ) {
        let pool_id = self.id().to_owned();
        let Some(entry) = self.containers.get_mut(&container_id) else {
            return;
        };
        let mut claim = Claim::new(tenant.clone(), ClaimState::Provisioning, cold);
        claim.timings = timings;
        entry.status = Status::Claimed;
        entry.last_activity_at = claim.claimed_at;
        // The first caller's secrets are part of making the claim; later callers'
        // are written before each of them is answered.
        let secrets = waiters.first_mut().and_then(|w| w.secrets.take());
        let record = ClaimRecord {
            tenant_id: tenant.to_string(),
            pool_id,
            container_id: container_id.clone(),
            claimed_at: claim.claimed_at,
            metadata: metadata.clone(),
        };
        claim.metadata = metadata;
        claim.waiters = waiters;
        let (info, sync, gate) = (
            entry.info.clone(),
            claim.sync.clone(),
            claim.secrets.clone(),
        );
        entry.claim = Some(claim);
        self.tenants.insert(tenant.clone(), container_id);
        let (ctx, workload, owner) = (self.ctx.clone(), self.workload.clone(), self.owner);
        self.spawn_report(async move {
            let result = tasks::prepare_claim(
                &ctx, &workload, &tenant, &info, &sync, &gate, secrets, owner, &record,
            )
            .await;
            Msg::Prepared { tenant, result }
        });
    }

    pub(super) fn grant(&self, tenant: &TenantId, reused: bool) -> Result<ClaimGrant, PoolError> {
        let id = self.tenants.get(tenant).ok_or(PoolError::NotClaimed)?;
        let entry = self
            .containers
            .get(id)
            .ok_or_else(|| PoolError::Internal("claimed container vanished".into()))?;
        let claim = entry.claim.as_ref().ok_or(PoolError::NotClaimed)?;
        Ok(ClaimGrant {
            container: entry.info.clone(),
            cold: claim.cold && !reused,
            claimed_at: claim.claimed_at,
            reused,
            sync_status: self.workload.sync.as_ref().map(|_| claim.sync.status()),
            owner: self.owner,
            timings: if reused {
                ClaimTimings::default()
            } else {
                claim.timings
            },
        })
    }

    pub(super) fn on_prepared(
        &mut self,
        tenant: TenantId,
        result: Result<ClaimTimings, PoolError>,
    ) {
        let Some(claim) = self.claim_mut(&tenant) else {
            return;
        };
        let waiters = std::mem::take(&mut claim.waiters);
        let container_id = self.tenants.get(&tenant).cloned().unwrap_or_default();
        match result {
            Ok(prepared) => {
                let Some(claim) = self.claim_mut(&tenant) else {
                    return;
                };
                claim.state = ClaimState::Warm;
                claim.timings = claim.timings.prepared(prepared);
                // Inactivity counts from when the tenant could first use the container.
                claim.last_activity = Utc::now();
                let gate = claim.secrets.clone();
                for (i, w) in waiters.into_iter().enumerate() {
                    tasks::answer_after_secrets(w, self.grant(&tenant, i > 0), gate.clone());
                }
                self.start_periodic(&tenant);
                self.record(
                    Event::new("container.claimed", self.id())
                        .tenant(tenant.as_str())
                        .container(&container_id),
                );
            }
            Err(e) => {
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

    // ----- warm ---------------------------------------------------------------

    pub(super) fn start_periodic(&mut self, tenant: &TenantId) {
        let Some(sync_spec) = self.workload.sync.clone() else {
            return;
        };
        let Some(interval) = sync_spec.policy.periodic else {
            return;
        };
        let Some(id) = self.tenants.get(tenant) else {
            return;
        };
        let Some(entry) = self.containers.get_mut(id) else {
            return;
        };
        let state_dir = entry.info.dirs.state.clone();
        let Some(claim) = entry.claim.as_mut() else {
            return;
        };
        let (ctx, cell, owner) = (self.ctx.clone(), claim.sync.clone(), self.owner);
        let (pool, tenant) = (self.workload.id.to_string(), tenant.clone());
        claim.stop_periodic();
        claim.periodic = Some(tokio::spawn(async move {
            let mut timer =
                tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            loop {
                timer.tick().await;
                let op = SyncOp::Upload;
                let result = tasks::run_sync(
                    &ctx, &cell, &sync_spec, &pool, &tenant, &state_dir, op, owner,
                )
                .await;
                if let Err(e) = result {
                    tracing::warn!(pool = %pool, tenant = %tenant, error = %e, "periodic upload failed");
                }
            }
        }));
    }

    /// A manual sync: runs in a task on the claim's sync cell, which serializes it
    /// with the claim's other transfers; the answer goes straight to the caller.
    pub(super) fn on_sync(
        &mut self,
        tenant: TenantId,
        ops: Vec<SyncOp>,
        reply: Reply<Vec<TransferResult>>,
    ) {
        let Some(spec) = self.workload.sync.clone() else {
            let _ = reply.send(Err(PoolError::Invalid(format!(
                "workload {} has no sync section",
                self.id()
            ))));
            return;
        };
        let Some(id) = self.tenants.get(&tenant) else {
            let _ = reply.send(Err(PoolError::NotClaimed));
            return;
        };
        let Some(entry) = self.containers.get_mut(id) else {
            let _ = reply.send(Err(PoolError::NotClaimed));
            return;
        };
        let state_dir = entry.info.dirs.state.clone();
        let Some(claim) = entry.claim.as_mut() else {
            let _ = reply.send(Err(PoolError::NotClaimed));
            return;
        };
        if claim.state != ClaimState::Warm {
            let _ = reply.send(Err(claim.busy(&tenant, "when it is ready")));
            return;
        }
        claim.last_activity = Utc::now();
        let (ctx, cell, owner) = (self.ctx.clone(), claim.sync.clone(), self.owner);
        let pool = self.workload.id.to_string();
        self.spawn_report(async move {
            let mut results = Vec::new();
            let mut outcome = Ok(());
            for op in ops {
                match tasks::run_sync(&ctx, &cell, &spec, &pool, &tenant, &state_dir, op, owner)
                    .await
                {
                    Ok(r) => results.extend(r),
                    Err(e) => {
                        outcome = Err(PoolError::SyncFailed(e.to_string()));
                        break;
                    }
                }
            }
            let _ = reply.send(outcome.map(|()| results));
            Msg::Synced { tenant }
        });
    }

    /// The claim's state dir was looked at after a long silence.
    pub(super) fn on_activity(&mut self, tenant: TenantId, newest: Option<DateTime<Utc>>) {
        let Some(claim) = self.claim_mut(&tenant) else {
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
}
