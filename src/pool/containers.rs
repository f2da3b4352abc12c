//! A pool's containers: one record ([`Entry`]) per container, with the claim it
//! holds if any and the node slot it uses; creating enough of them (refill),
//! removing them, destroying one on request, and what the engine's events mean for
//! each. Readiness of new containers is in `readiness.rs`.

use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::actor::Pool;
use super::capacity::Permit;
use super::claims::{Claim, ClaimState};
use super::error::PoolError;
use super::handle::Msg;
use super::readiness::Look;
use super::tasks;
use crate::activity::Event;
use crate::runtime::spec::ContainerDirs;
use crate::runtime::{EventKind, RuntimeEvent};
use crate::workload::Recycle;

/// Identity and host paths of a container, as handed out with a claim.
#[derive(Debug, Clone)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub docker_id: Option<String>,
    pub dirs: ContainerDirs,
}

/// Where a tenant reaches its container.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Endpoints {
    pub socket: String,
}

pub fn endpoints(info: &ContainerInfo) -> Endpoints {
    Endpoints {
        socket: info.dirs.socket.join("app.sock").display().to_string(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Status {
    /// Being created, or created and waiting for its healthcheck.
    Starting,
    /// Ready and in the idle set.
    Idle,
    /// A tenant's: its record holds the claim (whose state says provisioning, warm
    /// or releasing).
    Claimed,
    /// Being removed; its record goes when the engine is done.
    Removing,
}

pub(super) struct Entry {
    pub(super) info: ContainerInfo,
    pub(super) status: Status,
    pub(super) health: String,
    pub(super) created_at: DateTime<Utc>,
    pub(super) last_activity_at: DateTime<Utc>,
    pub(super) idle_since: Instant,
    /// The tenant's claim while [`Status::Claimed`].
    pub(super) claim: Option<Claim>,
    /// Destroy asked while it was starting: remove once created.
    pub(super) cancelled: bool,
    /// Its create call is in flight.
    pub(super) creating: bool,
    /// Starting: since when, and (once created) the deadline for readiness.
    pub(super) starting_since: DateTime<Utc>,
    pub(super) ready_by: Option<(Instant, DateTime<Utc>)>,
    /// Starting: when to inspect it next in case a health event was missed.
    pub(super) next_check: Instant,
    /// An inspection of it is in flight.
    pub(super) inspecting: bool,
    /// A health event that arrived while its create call was still in flight.
    pub(super) early: Option<EventKind>,
    /// It has been ready before (held back since, e.g. after a probe time-out).
    pub(super) was_ready: bool,
    /// Times its deadline was extended because the node was overloaded.
    pub(super) extensions: u8,
    /// The spec hash it was created with; one that differs from the pool's is
    /// replaced when idle and removed when released (a rollout).
    pub(super) spec_hash: String,
    /// The image it was created from (a rollout may change the pool's).
    pub(super) image: Option<String>,
    /// Its slot under the node cap, freed when the record is dropped.
    _slot: Permit,
}

impl Entry {
    pub(super) fn new(
        info: ContainerInfo,
        status: Status,
        health: &str,
        created_at: DateTime<Utc>,
        slot: Permit,
    ) -> Self {
        let now = Instant::now();
        Self {
            info,
            status,
            health: health.to_owned(),
            created_at,
            last_activity_at: Utc::now(),
            idle_since: now,
            claim: None,
            cancelled: false,
            creating: false,
            starting_since: Utc::now(),
            ready_by: None,
            next_check: now,
            inspecting: false,
            early: None,
            was_ready: status != Status::Starting,
            extensions: 0,
            spec_hash: String::new(),
            image: None,
            _slot: slot,
        }
    }

    /// The status the API shows.
    pub(super) fn status_str(&self) -> &'static str {
        match (self.status, &self.claim) {
            (Status::Starting, _) => "starting",
            (Status::Idle, _) => "idle",
            (Status::Claimed, Some(c)) if c.state == ClaimState::Releasing => "releasing",
            (Status::Claimed, _) => "claimed",
            (Status::Removing, _) => "releasing",
        }
    }

    fn releasing(&self) -> bool {
        self.claim
            .as_ref()
            .is_some_and(|c| c.state == ClaimState::Releasing)
    }
}

impl Pool {
    pub(super) fn starting_count(&self) -> usize {
        self.containers
            .values()
            .filter(|e| e.status == Status::Starting)
            .count()
    }

    /// Starting containers of the current spec (older ones are removed once ready).
    pub(super) fn fresh_starting(&self) -> usize {
        self.containers
            .values()
            .filter(|e| e.status == Status::Starting && !self.is_stale(e))
            .count()
    }

    /// Creates containers until idle + starting covers the idle target and the
    /// queue, within `max_size`, the node cap, the create limit and the backoff.
    /// During a rollout a few more (the surge) replace idle ones of the old spec.
    pub(super) fn refill(&mut self) {
        if self.stopping || self.draining {
            return;
        }
        self.update_target();
        let waiting = self.queue.len();
        let starting = self.fresh_starting();
        let surge = if self.rollout.is_some() {
            self.surge()
        } else {
            0
        };
        let want = (self.idle_target() + waiting + surge)
            .saturating_sub(self.idle.len() + starting + self.deferred_for_restores());
        let room = self.max_size.saturating_sub(self.containers.len());
        let slots = self.creation_slots();
        let n = want.min(room).min(slots);
        if n == 0 || Instant::now() < self.next_create_at {
            return;
        }
        for _ in 0..n {
            let Some(slot) = self.ctx.capacity.try_acquire() else {
                break;
            };
            self.spawn_create(slot);
        }
    }

    /// How many more creations may run now. While creations fail (the streak ends
    /// when a container has stayed up `STABLE`), one runs at a time: it probes
    /// whether the image starts again, and a crash-looping image then costs one
    /// container per backoff step instead of a batch, whatever the queue asks for.
    fn creation_slots(&self) -> usize {
        let limit = if self.failures.failures() > 0 {
            1
        } else {
            self.create_limit
        };
        limit.saturating_sub(self.creating)
    }

    /// Replacements that wait for the claims restoring state: a restore and Docker's
    /// create/start of a container compete for the node's CPU (measured on 2 cores, a
    /// refill during the restore made it 4–16 % slower with rclone and more with the
    /// engine's own download), so while another idle container is there to hand out
    /// and nobody queues, a claim's replacement is created when its restore ends
    /// (`on_prepared` refills). The pool is one container short for that long.
    fn deferred_for_restores(&self) -> usize {
        let restores = self
            .workload
            .sync
            .as_ref()
            .is_some_and(|s| s.policy.on_claim);
        if !restores || self.idle.is_empty() || !self.queue.is_empty() {
            return 0;
        }
        self.containers
            .values()
            .filter(|e| {
                e.claim
                    .as_ref()
                    .is_some_and(|c| c.state == super::claims::ClaimState::Provisioning)
            })
            .count()
    }

    fn spawn_create(&mut self, slot: Permit) {
        let container_id = format!("{}-{:08x}", self.id(), rand::random::<u32>());
        let info = ContainerInfo {
            name: format!("bh-{}-{}", self.ctx.config.instance, container_id),
            dirs: ContainerDirs::new(&self.ctx.config, &container_id),
            id: container_id.clone(),
            docker_id: None,
        };
        let now = Utc::now();
        let mut entry = Entry::new(info.clone(), Status::Starting, "starting", now, slot);
        entry.creating = true;
        entry.spec_hash = self.spec_hash.clone();
        entry.image = Some(self.workload.image.clone());
        self.containers.insert(container_id.clone(), entry);
        self.creating += 1;
        let (ctx, workload, owner) = (self.ctx.clone(), self.workload.clone(), self.owner);
        let hash = self.spec_hash.clone();
        let image_present = self.image_present.clone();
        // After a failure, a container must still run at the end of its first look
        // before it counts as ready: an image that exits within moments is then
        // caught at creation instead of being handed to a tenant as it dies.
        let settle = self.failures.failures() > 0;
        self.spawn_report(async move {
            let result = tasks::create_container(
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

    /// Takes the container out of service and removes it in the background. A claim
    /// it still holds ends here; callers that end one first say how.
    pub(super) fn remove_container(&mut self, container_id: &str) {
        let Some(entry) = self.containers.get_mut(container_id) else {
            return;
        };
        if entry.status == Status::Removing {
            return;
        }
        entry.status = Status::Removing;
        if let Some(claim) = entry.claim.take() {
            self.tenants.remove(&claim.tenant);
        }
        self.idle.retain(|c| c != container_id);
        let info = entry.info.clone();
        let runtime = self.ctx.runtime.clone();
        let container_id = container_id.to_owned();
        self.spawn_report(async move {
            tasks::destroy_container(runtime.as_ref(), &info).await;
            Msg::Removed { container_id }
        });
    }

    /// `DELETE /containers/:id`: idle and starting containers go at once; a claimed
    /// one only with `force`, and then without upload.
    pub(super) fn destroy(&mut self, container_id: &str, force: bool) -> Result<(), PoolError> {
        let entry = self
            .containers
            .get_mut(container_id)
            .ok_or_else(|| PoolError::ContainerNotFound(container_id.to_owned()))?;
        match entry.status {
            Status::Starting if entry.creating => {
                entry.cancelled = true;
                Ok(())
            }
            Status::Starting | Status::Idle => {
                self.remove_container(container_id);
                Ok(())
            }
            Status::Removing => Ok(()),
            Status::Claimed if entry.releasing() => Err(PoolError::Busy(format!(
                "container {container_id} is being released; try again shortly"
            ))),
            Status::Claimed => {
                if let (Some(claim), false) = (&entry.claim, force) {
                    return Err(PoolError::ContainerClaimed(
                        container_id.to_owned(),
                        claim.tenant.to_string(),
                    ));
                }
                if let Some(tenant) = self.end_claim_without_upload(container_id) {
                    self.record(
                        Event::new("container.released", self.id())
                            .tenant(tenant.as_str())
                            .container(container_id)
                            .message("forced: container destroyed without upload"),
                    );
                }
                self.remove_container(container_id);
                Ok(())
            }
        }
    }

    pub(super) fn on_event(&mut self, event: RuntimeEvent) {
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
            Status::Claimed => {
                // A restart during release is the recycling itself, not a failure.
                if entry.releasing() && self.workload.pool.recycle == Recycle::Restart {
                    return;
                }
                // Never swapped silently: the tenant's status shows it.
                entry.health = health.clone();
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
}

impl Pool {
    /// `POST /pools/:id/scale`: the idle target becomes `target` minus the claims;
    /// surplus idle containers go now, claimed ones never.
    pub(super) fn scale(&mut self, target: i64) -> Result<super::ScaleOutcome, PoolError> {
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
        let claimed = self.tenants.len();
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
        Ok(super::ScaleOutcome {
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
}
