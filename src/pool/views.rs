//! What a pool shows of itself: the JSON views of the API (pool, containers,
//! claims) built from the actor's records in one pass, and the figures `/metrics`
//! reads from them.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::actor::Pool;
use super::containers::{endpoints, Endpoints, Status};
use crate::sync::SyncStatus;

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
    /// Claims waiting for a container (none idle).
    pub queued_count: usize,
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
    /// Idle ready containers the pool keeps now: `minSize`, or with
    /// `pool.autoscale` recent demand + buffer, within the limits.
    pub idle_target: usize,
    /// Why the target is what it is: `min_size`, `demand`, `scale_down_delay`,
    /// `max_size` or `node_cap`.
    pub idle_target_reason: crate::pool::TargetReason,
    /// With `pool.autoscale`: the demand the target follows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<AutoscaleView>,
    /// New claims (not repeats) since the pool started, and how many of them took
    /// an idle container (warm hits).
    pub claims_new: u64,
    pub claims_warm: u64,
    /// claimsWarm / claimsNew; null before the first claim.
    pub warm_hit_ratio: Option<f64>,
    /// The spec hash new containers get (`boilerhouse.spec-hash` label).
    pub spec_hash: String,
    /// A reload changed the container spec and old containers are still there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutView>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscaleView {
    /// As in the workload file: a count, or a share of the claimed count (`"20%"`).
    #[schema(value_type = Object)]
    pub buffer: crate::workload::Buffer,
    pub window_ms: u64,
    pub scale_down_delay_ms: u64,
    /// New claims in the last window.
    pub claim_arrivals: usize,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutView {
    pub started_at: DateTime<Utc>,
    /// Containers of the old spec removed so far.
    pub replaced: usize,
    /// Idle or starting containers of the old spec still to replace.
    pub old_idle: usize,
    /// Claimed containers that keep the old spec until released.
    pub old_claimed: usize,
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
    /// The spec it was created with; differs from the pool's `specHash` while a
    /// rollout has not replaced it yet (or its claim keeps it).
    pub spec_hash: String,
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

impl From<&PoolView> for crate::metrics::PoolGauges {
    fn from(p: &PoolView) -> Self {
        Self {
            pool: p.id.clone(),
            idle: p.idle_count,
            claimed: p.claimed_count,
            starting: p.starting_count,
            releasing: p
                .current_size
                .saturating_sub(p.idle_count + p.claimed_count + p.starting_count),
            min_size: p.min_size,
            max_size: p.max_size,
            healthy: p.status == "healthy",
            probe_timeouts: p.probe_timeouts,
            create_concurrency: p.create_concurrency,
            ready_timeout: Duration::from_millis(p.ready_timeout_ms),
            idle_target: p.idle_target,
            idle_target_reason: p.idle_target_reason.as_str(),
            claims_new: p.claims_new,
            claims_warm: p.claims_warm,
            warm_hit_ratio: p.warm_hit_ratio,
            rolling: p.rollout.is_some(),
        }
    }
}

impl Pool {
    pub(super) fn view(&mut self) -> PoolView {
        // The target as of now, not of the last tick (a view right after a burst).
        self.update_target();
        let claimed = self
            .containers
            .values()
            .filter(|e| e.status == Status::Claimed)
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
        let failing = self.failures.failures() > 0;
        let status = if self.draining {
            "draining"
        } else if failing && self.idle.is_empty() {
            "error"
        } else if failing || self.idle.len() < self.min_size {
            "degraded"
        } else {
            "healthy"
        };
        PoolView {
            id: self.id().to_owned(),
            workload_id: self.id().to_owned(),
            workload_name: self.workload.name.clone(),
            image: self.workload.image.clone(),
            // A draining pool keeps no idle containers: its floor is gone.
            min_size: if self.draining { 0 } else { self.min_size },
            max_size: self.max_size,
            current_size: self.containers.len(),
            claimed_count: claimed,
            idle_count: self.idle.len(),
            starting_count: starting.len(),
            queued_count: self.waiting.len(),
            status,
            last_error: self.last_error.clone(),
            starting,
            ready_timeout_ms: self.ready_timeout().as_millis() as u64,
            create_concurrency: self.create_limit,
            probe_timeouts,
            warning,
            idle_target: self.demand.target.value,
            idle_target_reason: self.demand.target.reason,
            autoscale: self
                .workload
                .pool
                .autoscale
                .as_ref()
                .map(|a| AutoscaleView {
                    buffer: a.buffer,
                    window_ms: a.window.as_millis() as u64,
                    scale_down_delay_ms: a.scale_down_delay.as_millis() as u64,
                    claim_arrivals: self.demand.arrivals(a.window, std::time::Instant::now()),
                }),
            claims_new: self.demand.new_claims,
            claims_warm: self.demand.warm,
            warm_hit_ratio: self.demand.warm_hit_ratio(),
            spec_hash: self.spec_hash.clone(),
            rollout: self.rollout_view(),
        }
    }

    pub(super) fn snapshot(&mut self) -> Snapshot {
        let mut containers = Vec::with_capacity(self.containers.len());
        let mut claims = Vec::with_capacity(self.tenants.len());
        for e in self.containers.values() {
            let starting = e.status == Status::Starting;
            containers.push(ContainerView {
                id: e.info.id.clone(),
                pool_id: self.id().to_owned(),
                tenant_id: e.claim.as_ref().map(|c| c.tenant.to_string()),
                status: e.status_str(),
                health: e.health.clone(),
                image: e
                    .image
                    .clone()
                    .unwrap_or_else(|| self.workload.image.clone()),
                created_at: e.created_at,
                last_activity_at: e.last_activity_at,
                starting_since: starting.then_some(e.starting_since),
                ready_by: e.ready_by.filter(|_| starting).map(|(_, wall)| wall),
                spec_hash: e.spec_hash.clone(),
            });
            if let Some(c) = &e.claim {
                claims.push(ClaimView {
                    tenant_id: c.tenant.to_string(),
                    pool_id: self.id().to_owned(),
                    container_id: e.info.id.clone(),
                    container_name: e.info.name.clone(),
                    status: c.state.as_str(),
                    claimed_at: c.claimed_at,
                    last_activity: c.last_activity,
                    health: e.health.clone(),
                    sync_status: self.workload.sync.as_ref().map(|_| c.sync.status()),
                    endpoints: endpoints(&e.info),
                    metadata: c.metadata.clone(),
                });
            }
        }
        Snapshot {
            pool: self.view(),
            containers,
            claims,
        }
    }
}
