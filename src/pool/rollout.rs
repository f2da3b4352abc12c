//! A reloaded workload reaching a running pool, through [`PoolControl`] (the
//! manager's side door, beside the [`PoolHandle`] every request uses):
//! - a change that does not alter containers (pool sizes, recycling, autoscaling,
//!   sync) applies in place: no container is replaced;
//! - a change of the container spec starts a rollout: idle containers of the old
//!   spec are replaced a few at a time — new ones are created first (the surge,
//!   bounded by `max_size` and the node cap) and an old one goes only once a new
//!   one is ready, so the pool never has fewer idle containers than claims need.
//!   Claimed containers keep their spec until released, and are then removed
//!   instead of being recycled;
//! - a removed workload drains: claims answer 404, idle and starting containers
//!   go, claimed ones stay until released (with upload) and then go, and the actor
//!   ends with its last container.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use super::actor::{sizes, Pool};
use super::containers::{Entry, Status};
use super::error::PoolError;
use super::handle::PoolHandle;
use crate::activity::Event;
use crate::runtime::spec::spec_hash;
use crate::workload::Workload;

/// New containers a rollout creates ahead of the old ones it replaces.
const ROLLOUT_SURGE: usize = 2;

pub(super) enum Control {
    Apply {
        workload: Arc<Workload>,
        reply: oneshot::Sender<Applied>,
    },
    Drain {
        done: oneshot::Sender<()>,
        reply: oneshot::Sender<usize>,
    },
}

/// What a reloaded spec did to the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Applied {
    /// Only pool or sync settings changed: no container is replaced.
    InPlace,
    /// The container spec changed: `idle` containers are being replaced; `claimed`
    /// ones keep the old spec until released.
    Rollout { idle: usize, claimed: usize },
}

/// A rollout in progress.
pub(super) struct Rollout {
    pub(super) since: Instant,
    pub(super) started_at: DateTime<Utc>,
    /// Containers of the old spec removed so far.
    pub(super) replaced: usize,
}

/// The manager's door for reloads: apply a new spec, or drain the pool.
#[derive(Clone)]
pub struct PoolControl(mpsc::Sender<Control>);

impl PoolControl {
    pub(super) fn channel() -> (Self, mpsc::Receiver<Control>) {
        let (tx, rx) = mpsc::channel(8);
        (Self(tx), rx)
    }

    pub async fn apply(&self, workload: Arc<Workload>) -> Result<Applied, PoolError> {
        let (reply, rx) = oneshot::channel();
        self.0
            .send(Control::Apply { workload, reply })
            .await
            .map_err(|_| PoolError::Stopped)?;
        rx.await.map_err(|_| PoolError::Stopped)
    }

    /// Starts draining; answers how many claimed containers stay, and a receiver
    /// that resolves when the pool has ended (an error if a reload brought the
    /// workload back first).
    pub async fn drain(&self) -> Result<(usize, oneshot::Receiver<()>), PoolError> {
        let (reply, rx) = oneshot::channel();
        let (done, ended) = oneshot::channel();
        self.0
            .send(Control::Drain { done, reply })
            .await
            .map_err(|_| PoolError::Stopped)?;
        let claimed = rx.await.map_err(|_| PoolError::Stopped)?;
        Ok((claimed, ended))
    }
}

/// The same pool's handle, carrying its new workload (the API reads specs from it).
pub fn retarget(handle: &PoolHandle, workload: Arc<Workload>) -> PoolHandle {
    PoolHandle {
        workload,
        tx: handle.tx.clone(),
    }
}

impl Pool {
    pub(super) fn is_stale(&self, entry: &Entry) -> bool {
        entry.spec_hash != self.spec_hash
    }

    pub(super) fn on_control(&mut self, control: Control) {
        match control {
            Control::Apply { workload, reply } => {
                let _ = reply.send(self.apply(workload));
            }
            Control::Drain { done, reply } => {
                let _ = reply.send(self.drain(done));
            }
        }
    }

    fn apply(&mut self, workload: Arc<Workload>) -> Applied {
        let config = self.ctx.config.clone();
        let hash = spec_hash(&workload, &config);
        if std::mem::take(&mut self.draining) {
            // Back before it ended: the drain's waiter learns it was called off.
            self.drained.clear();
            self.record(
                Event::new("pool.restored", self.id())
                    .message("its workload file is back: the pool takes claims again"),
            );
        }
        (self.min_size, self.max_size) = sizes(&workload, &config);
        self.owner = workload.owner();
        let changed = hash != self.spec_hash;
        self.workload = workload;
        let applied = if changed {
            self.spec_hash = hash;
            self.timings = self.workload.healthcheck.as_ref().and_then(|h| h.timings());
            // The image may be another one; an old spec's failures say nothing of it.
            self.image_present = Arc::new(AtomicBool::new(false));
            self.failures.reset();
            self.next_create_at = Instant::now();
            self.begin_rollout()
        } else {
            self.record(
                Event::new("pool.reconfigured", self.id())
                    .message("pool or sync settings changed: applied without replacing containers"),
            );
            Applied::InPlace
        };
        self.refill();
        applied
    }

    /// Containers of an old spec still to replace: (idle or starting, claimed).
    fn stale_counts(&self) -> (usize, usize) {
        let (mut idle, mut claimed) = (0, 0);
        for e in self.containers.values().filter(|e| self.is_stale(e)) {
            match e.status {
                Status::Claimed => claimed += 1,
                Status::Idle | Status::Starting => idle += 1,
                Status::Removing => {}
            }
        }
        (idle, claimed)
    }

    /// Marks the rollout as started and says what it will replace.
    pub(super) fn begin_rollout(&mut self) -> Applied {
        let (idle, claimed) = self.stale_counts();
        self.rollout = Some(Rollout {
            since: Instant::now(),
            started_at: Utc::now(),
            replaced: 0,
        });
        crate::metrics::rollout_started(self.id());
        self.record(
            Event::new("pool.rollout.started", self.id()).message(format!(
                "container spec changed: replacing {idle} idle container(s) a few at a time; \
             {claimed} claimed container(s) keep the old spec until released"
            )),
        );
        Applied::Rollout { idle, claimed }
    }

    /// New containers a rollout may create ahead of the old idle ones.
    pub(super) fn surge(&self) -> usize {
        self.stale_idle().len().min(ROLLOUT_SURGE)
    }

    fn stale_idle(&self) -> Vec<String> {
        self.idle
            .iter()
            .filter(|c| self.containers.get(*c).is_some_and(|e| self.is_stale(e)))
            .cloned()
            .collect()
    }

    /// One step of the rollout (each tick): old idle containers covered by new
    /// ready ones go; the rollout ends when no container of the old spec is left.
    pub(super) fn rollout_step(&mut self) {
        if self.rollout.is_none() || self.draining {
            return;
        }
        let left = self
            .containers
            .values()
            .filter(|e| self.is_stale(e) && e.status != Status::Removing)
            .count();
        if left == 0 {
            self.finish_rollout();
            return;
        }
        let stale = self.stale_idle();
        if stale.is_empty() {
            return;
        }
        let over = self
            .idle
            .len()
            .saturating_sub(self.idle_target() + self.queue.len());
        // At max_size or the node cap there is no room for a new container: one old
        // idle container makes room — unless the new spec is failing, when the old
        // ones are all the pool has.
        let blocked = self.fresh_starting() == 0
            && self.creating == 0
            && self.failures.failures() == 0
            && (self.containers.len() >= self.max_size || !self.ctx.capacity.available());
        let n = if blocked { over.max(1) } else { over }.min(stale.len());
        for c in &stale[..n] {
            self.remove_container(c);
        }
    }

    fn finish_rollout(&mut self) {
        let Some(r) = self.rollout.take() else {
            return;
        };
        let took = r.since.elapsed();
        crate::metrics::rollout_completed(self.id(), took);
        self.record(
            Event::new("pool.rollout.completed", self.id()).message(format!(
                "replaced {} container(s) of the old spec in {} ms",
                r.replaced,
                took.as_millis()
            )),
        );
    }

    /// A container about to become idle (ready, or recycled after a release) that
    /// must not: the pool drains, or it is of an older spec. It is removed instead.
    pub(super) fn retire_instead_of_idle(&mut self, container_id: &str) -> bool {
        let retire = self.draining
            || self
                .containers
                .get(container_id)
                .is_some_and(|e| self.is_stale(e));
        if retire {
            self.remove_container(container_id);
        }
        retire
    }

    fn drain(&mut self, done: oneshot::Sender<()>) -> usize {
        self.draining = true;
        self.drained.push(done);
        self.rollout = None;
        let err = PoolError::Removed(self.id().to_owned());
        self.queue.clear();
        for (_, w) in self.waiting.drain() {
            for r in w.replies {
                r.answer(Err(err.clone()));
            }
        }
        let unclaimed: Vec<(String, bool)> = self
            .containers
            .values()
            .filter(|e| matches!(e.status, Status::Idle | Status::Starting))
            .map(|e| (e.info.id.clone(), e.creating))
            .collect();
        for (id, creating) in unclaimed {
            match (creating, self.containers.get_mut(&id)) {
                // Removed as soon as its create call reports.
                (true, Some(e)) => e.cancelled = true,
                _ => self.remove_container(&id),
            }
        }
        let claimed = self.tenants.len();
        self.record(Event::new("pool.draining", self.id()).message(format!(
            "workload removed: no new claims; {claimed} claimed container(s) stay until released"
        )));
        claimed
    }

    /// A draining pool whose last container is gone ends here.
    pub(super) fn finished_draining(&mut self) -> bool {
        if !self.draining || !self.containers.is_empty() {
            return false;
        }
        self.record(Event::new("pool.removed", self.id()).message("drained: the pool has ended"));
        for d in self.drained.drain(..) {
            let _ = d.send(());
        }
        true
    }

    /// What the pool view shows of a rollout in progress.
    pub(super) fn rollout_view(&self) -> Option<super::views::RolloutView> {
        let r = self.rollout.as_ref()?;
        let (idle, claimed) = self.stale_counts();
        Some(super::views::RolloutView {
            started_at: r.started_at,
            replaced: r.replaced,
            old_idle: idle,
            old_claimed: claimed,
        })
    }
}
