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
//!
//! The rooms, in the order a claim meets them:
//! - [`handle`]: the handle, its requests and answers (the only public door);
//! - `actor`: the state the task owns, its message loop and timer;
//! - `claims`: a claim from request to warm: queue, provisioning, secrets, manual
//!   sync, inactivity; `release`: its end;
//! - `containers`: one record per container (with its claim and node slot), refill,
//!   removal, destroy, engine events, scaling;
//! - `readiness`: when a new container may be handed out, and failures;
//! - `tasks`: the slow work the actor spawns;
//! - `autoscale`: the idle target (fixed `min_size`, or demand + buffer) and
//!   warm-hit counts; `rollout`: a reloaded workload applied to a running pool
//!   (in place, or idle containers replaced a few at a time), and draining;
//! - [`views`]: what the API shows; [`capacity`]: the node cap as permits.

mod actor;
mod autoscale;
pub mod capacity;
mod claims;
mod containers;
mod error;
pub mod handle;
mod readiness;
mod release;
mod rollout;
mod tasks;
pub mod views;

use std::sync::Arc;

pub use actor::{spawn, spawn_controlled};
pub use autoscale::TargetReason;
pub use capacity::NodeCapacity;
pub use containers::{endpoints, ContainerInfo, Endpoints};
pub use error::PoolError;
pub use handle::{Adopted, ClaimGrant, ClaimRequest, ClaimTimings, PoolHandle, Secrets};
pub use rollout::{retarget, Applied, PoolControl};
pub use views::{
    AutoscaleView, ClaimView, ContainerView, LastError, PoolView, RolloutView, ScaleOutcome,
    Snapshot, StartingView,
};

use crate::activity::ActivityLog;
use crate::config::Config;
use crate::ledger::Ledger;
use crate::runtime::Runtime;
use crate::sync::SyncEngine;

/// What every pool shares: configuration, the engine, sync, the ledger, the node cap.
pub struct PoolContext {
    pub config: Arc<Config>,
    pub runtime: Arc<dyn Runtime>,
    pub sync: SyncEngine,
    pub ledger: Ledger,
    pub capacity: NodeCapacity,
    pub activity: Arc<ActivityLog>,
    /// Asked before every upload: a fenced cluster node uploads nothing.
    pub fence: crate::fence::Fence,
}

#[cfg(test)]
mod tests;
