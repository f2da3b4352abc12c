//! How the rest of the daemon talks to a pool: the cloneable [`PoolHandle`], the
//! requests it sends and the answers it gets. Each request is a [`Msg`] on the
//! actor's bounded channel with a `oneshot` for the reply; the actor stops when the
//! last handle is dropped or on [`PoolHandle::shutdown`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot};

use super::containers::ContainerInfo;
use super::error::PoolError;
use super::readiness::Look;
use super::views::{ScaleOutcome, Snapshot};
use crate::fsutil::Owner;
use crate::ledger::ClaimRecord;
use crate::runtime::{ContainerReport, ProbeTimings, Readiness, RuntimeError, RuntimeEvent};
use crate::sync::{RestoreSource, SyncOp, SyncStatus, TransferResult};
use crate::tenant::TenantId;
use crate::workload::Workload;

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

#[derive(Debug, Clone)]
pub struct ClaimGrant {
    pub container: ContainerInfo,
    /// The claim waited for a container (cold start or queue) instead of taking an idle one.
    pub cold: bool,
    pub claimed_at: DateTime<Utc>,
    pub reused: bool,
    pub sync_status: Option<SyncStatus>,
    pub owner: Owner,
    /// Where the claim's time went (zero for a reused claim: nothing was done).
    pub timings: ClaimTimings,
}

/// The stages of making a claim, as the claim's answer reports them.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClaimTimings {
    /// Queued at capacity, waiting for another tenant's container to come free.
    pub queue_wait: Duration,
    /// Waited for a new container to start (no idle one); None = took an idle one.
    pub cold_start: Option<Duration>,
    pub secrets: Duration,
    pub restore: Duration,
    pub restore_source: RestoreSource,
    pub ledger: Duration,
}

impl ClaimTimings {
    /// A claim that waited `waited` before it got a container: in the queue at
    /// capacity, or for a cold start.
    pub(super) fn after_wait(waited: Duration, at_capacity: bool) -> Self {
        if at_capacity {
            Self {
                queue_wait: waited,
                ..Self::default()
            }
        } else {
            Self {
                cold_start: Some(waited),
                ..Self::default()
            }
        }
    }

    /// Adds what preparing the claim took to the wait before it.
    pub(super) fn prepared(self, prepare: ClaimTimings) -> Self {
        Self {
            secrets: prepare.secrets,
            restore: prepare.restore,
            restore_source: prepare.restore_source,
            ledger: prepare.ledger,
            ..self
        }
    }
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

pub(super) type Reply<T> = oneshot::Sender<Result<T, PoolError>>;

pub(super) enum Msg {
    Claim(ClaimRequest, Reply<ClaimGrant>),
    Release {
        tenant: TenantId,
        sync: bool,
        reply: Reply<ContainerInfo>,
    },
    /// A manual sync: the actor checks the claim and runs the transfers in order.
    Sync {
        tenant: TenantId,
        ops: Vec<SyncOp>,
        reply: Reply<Vec<TransferResult>>,
    },
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
        report: Result<ContainerReport, RuntimeError>,
    },
    Prepared {
        tenant: TenantId,
        result: Result<ClaimTimings, PoolError>,
    },
    Released {
        tenant: TenantId,
        outcome: Result<Recycled, PoolError>,
        reply: Option<Reply<ContainerInfo>>,
    },
    Synced {
        tenant: TenantId,
    },
    Removed {
        container_id: String,
    },
    Activity {
        tenant: TenantId,
        newest: Option<DateTime<Utc>>,
    },
}

/// What became of a released claim's container.
#[derive(Debug)]
pub(super) enum Recycled {
    /// Being removed; a `Removed` message follows.
    Removing,
    /// Wiped (and restarted) and ready for the next tenant.
    Idle,
    /// Restarted and wiped; its healthcheck has not passed yet.
    Starting(Option<ProbeTimings>),
}

#[derive(Clone)]
pub struct PoolHandle {
    pub workload: Arc<Workload>,
    pub(super) tx: mpsc::Sender<Msg>,
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

    /// Claims a container for the tenant; its secrets are on disk before the answer.
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

    /// Runs `ops` for the tenant's claim, serialized with its other transfers.
    pub async fn sync(
        &self,
        tenant: TenantId,
        ops: Vec<SyncOp>,
    ) -> Result<Vec<TransferResult>, PoolError> {
        self.ask(|reply| Msg::Sync { tenant, ops, reply }).await?
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
