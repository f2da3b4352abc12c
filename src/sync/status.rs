//! A claim's sync status and the turn that makes its transfers run one at a time.

use std::path::Path;
use std::sync::{Arc, Mutex as StdMutex, MutexGuard};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Copied, RestoreSource, SyncEngine, SyncError, SyncOp, TransferResult};
use crate::workload::spec::SyncSpec;

/// Per-claim sync status, and the lock that makes a claim's transfers run one at a
/// time (a periodic upload never overlaps a manual download). Cheap to clone.
#[derive(Clone, Default)]
pub struct ClaimSync {
    inner: Arc<ClaimSyncInner>,
}

#[derive(Default)]
struct ClaimSyncInner {
    turn: tokio::sync::Mutex<()>,
    status: StdMutex<SyncStatus>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncState {
    #[default]
    Idle,
    Syncing,
    Error,
}

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncStatus {
    pub state: SyncState,
    /// End of the last successful sync.
    pub last_sync_at: Option<DateTime<Utc>>,
    /// Error of the last sync, cleared by the next success.
    pub last_error: Option<String>,
    /// Totals over the claim's life (successful transfers).
    pub bytes_transferred: u64,
    pub files_transferred: u64,
    /// Where the claim's state came from when it was made: `cache` (the local state
    /// cache, checked against the remote), `s3`, or `none` (no restore).
    pub last_restore: RestoreSource,
}

impl ClaimSync {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `engine.run` once this claim's previous transfer has finished, keeping the
    /// status up to date.
    pub async fn run(
        &self,
        engine: &SyncEngine,
        spec: &SyncSpec,
        tenant_id: &str,
        state_dir: &Path,
        op: SyncOp,
        owner: Option<(u32, u32)>,
    ) -> Result<Vec<TransferResult>, SyncError> {
        let _turn = self.inner.turn.lock().await;
        let mut in_progress = InProgress::begin(&self.inner.status, op);
        let result = engine.run(spec, tenant_id, state_dir, op, owner).await;
        in_progress.finish(&result);
        result
    }

    /// Records a restore that did not go through [`ClaimSync::run`] (the cache), or
    /// the source of one that did.
    pub fn restored(&self, source: RestoreSource, copied: Option<Copied>) {
        let mut status = lock(&self.inner.status);
        status.last_restore = source;
        if copied.is_some() {
            status.state = SyncState::Idle;
            status.last_sync_at = Some(Utc::now());
            status.last_error = None;
        }
    }

    pub fn status(&self) -> SyncStatus {
        lock(&self.inner.status).clone()
    }
}

/// Marks a claim as syncing; if the sync future is dropped half-way (the caller gave
/// up), the status says so instead of staying `syncing` forever.
pub(super) struct InProgress<'a> {
    status: &'a StdMutex<SyncStatus>,
    op: SyncOp,
    done: bool,
}

impl<'a> InProgress<'a> {
    pub(super) fn begin(status: &'a StdMutex<SyncStatus>, op: SyncOp) -> Self {
        lock(status).state = SyncState::Syncing;
        Self {
            status,
            op,
            done: false,
        }
    }

    fn finish(&mut self, result: &Result<Vec<TransferResult>, SyncError>) {
        let mut status = lock(self.status);
        match result {
            Ok(results) => {
                status.state = SyncState::Idle;
                status.last_sync_at = Some(Utc::now());
                status.last_error = None;
                for r in results {
                    status.bytes_transferred += r.bytes_transferred;
                    status.files_transferred += r.files_transferred;
                }
            }
            Err(e) => {
                status.state = SyncState::Error;
                status.last_error = Some(e.to_string());
            }
        }
        self.done = true;
    }
}

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        if !self.done {
            let mut status = lock(self.status);
            status.state = SyncState::Error;
            status.last_error = Some(format!("the {} was cancelled before it finished", self.op));
        }
    }
}

/// The status is plain data: a panic elsewhere cannot leave it half-updated.
pub(super) fn lock(m: &StdMutex<SyncStatus>) -> MutexGuard<'_, SyncStatus> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
