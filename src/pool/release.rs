//! The end of a claim, top-down: a release request (or inactivity) → releasing
//! (freeze, upload, forget, wipe, recycle in a task) → the container is idle,
//! starting again or removed, and claims that came in meanwhile are served. A failed
//! upload leaves the claim as it was. A forced destroy ends a claim without upload.

use std::time::Instant;

use super::actor::Pool;
use super::claims::ClaimState;
use super::containers::{ContainerInfo, Status};
use super::error::PoolError;
use super::handle::{Msg, Recycled, Reply};
use super::tasks;
use crate::activity::Event;
use crate::tenant::TenantId;

impl Pool {
    /// `reply` is None for an automatic release (inactivity).
    pub(super) fn on_release(
        &mut self,
        tenant: TenantId,
        sync: bool,
        reply: Option<Reply<ContainerInfo>>,
    ) {
        let Some(id) = self.tenants.get(&tenant).cloned() else {
            if let Some(r) = reply {
                let _ = r.send(Err(PoolError::NotClaimed));
            }
            return;
        };
        let Some(entry) = self.containers.get_mut(&id) else {
            return;
        };
        let info = entry.info.clone();
        let Some(claim) = entry.claim.as_mut() else {
            return;
        };
        if claim.state != ClaimState::Warm {
            if let Some(r) = reply {
                let action = if claim.state == ClaimState::Provisioning {
                    "shortly"
                } else {
                    "shortly (it is already being released)"
                };
                let _ = r.send(Err(claim.busy(&tenant, action)));
            }
            return;
        }
        claim.state = ClaimState::Releasing;
        claim.stop_periodic();
        let (claim_sync, gate) = (claim.sync.clone(), claim.secrets.clone());
        let (ctx, workload, owner) = (self.ctx.clone(), self.workload.clone(), self.owner);
        self.spawn_report(async move {
            let outcome = tasks::release_claim(
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

    pub(super) fn on_released(
        &mut self,
        tenant: TenantId,
        outcome: Result<Recycled, PoolError>,
        reply: Option<Reply<ContainerInfo>>,
    ) {
        let Some(container_id) = self.tenants.get(&tenant).cloned() else {
            return;
        };
        let Some(entry) = self.containers.get_mut(&container_id) else {
            return;
        };
        let info = entry.info.clone();
        let Some(claim) = entry.claim.as_mut() else {
            return;
        };
        match outcome {
            Err(e) => {
                // The upload failed: the claim and its state stay as they were.
                claim.state = ClaimState::Warm;
                if reply.is_none() {
                    claim.auto_retry_at = Some(Instant::now() + claim.auto_backoff.fail());
                }
                let pending = std::mem::take(&mut claim.after_release);
                self.start_periodic(&tenant);
                tracing::warn!(pool = %self.workload.id, tenant = %tenant, error = %e, "release failed; the claim is intact");
                if let Some(r) = reply {
                    let _ = r.send(Err(e));
                }
                for (req, r) in pending {
                    self.on_claim(req, r);
                }
            }
            Ok(recycled) => {
                let claim = entry.claim.take();
                self.tenants.remove(&tenant);
                // A drained pool or a rolled-out spec takes the container instead.
                let retire = self.draining || entry.spec_hash != self.spec_hash;
                match recycled {
                    Recycled::Removing => self.remove_container(&container_id),
                    Recycled::Idle | Recycled::Starting(_) if retire => {
                        self.remove_container(&container_id)
                    }
                    Recycled::Idle => {
                        entry.status = Status::Idle;
                        entry.health = "healthy".into();
                        entry.idle_since = Instant::now();
                        self.idle.push_back(container_id.clone());
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
                if let Some(r) = reply {
                    let _ = r.send(Ok(info));
                }
                if let Some(mut claim) = claim {
                    for (req, r) in std::mem::take(&mut claim.after_release) {
                        self.on_claim(req, r);
                    }
                }
                self.serve_queue();
                self.refill();
            }
        }
    }

    /// Ends a claim without upload (a forced destroy): callers still waiting are
    /// told, and the ledger record goes.
    pub(super) fn end_claim_without_upload(&mut self, container_id: &str) -> Option<TenantId> {
        let entry = self.containers.get_mut(container_id)?;
        let claim = entry.claim.take()?;
        self.tenants.remove(&claim.tenant);
        let mut claim = claim;
        let tenant = claim.tenant.clone();
        for w in std::mem::take(&mut claim.waiters) {
            w.answer(Err(PoolError::Busy("the container was destroyed".into())));
        }
        let ledger = self.ctx.ledger.clone();
        let (pool, t) = (self.id().to_owned(), tenant.to_string());
        tokio::spawn(async move {
            if let Err(e) = ledger.remove(&pool, &t).await {
                tracing::error!(pool, tenant = t, error = %e, "cannot remove claim record");
            }
        });
        Some(tenant)
    }
}
