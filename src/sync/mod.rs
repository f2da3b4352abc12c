//! State sync: runs rclone to move a tenant's state between its container's state
//! directory and object storage (SPEC §6). A download into an empty directory from a
//! plain-`http` sink is the engine's own, over a resident S3 client, with rclone as
//! the fallback ([`fetch`]): a first restore of many small files is CPU-bound in rclone.
//!
//! This module owns how rclone is invoked — the remote described only through rclone's
//! environment, the remote and local path of each mapping, the flags, the parsing of
//! rclone's stats and errors, the node-wide cap on concurrent transfers, the timeout of
//! each transfer — and the per-claim sync status. It does not decide *when* to sync
//! (the pool does) and it never wipes anything itself, but what its own failed download
//! wrote into a directory that was empty.
//!
//! Rules kept here, each with the reason:
//! - Credentials travel only in rclone's environment (`RCLONE_CONFIG_BOILERHOUSE_*`),
//!   never on its command line, where any local user can read them in `/proc`. rclone
//!   gets a cleared environment: no config file (`RCLONE_CONFIG=""` = in memory only),
//!   no inherited `RCLONE_*` variable that could change what it does.
//! - A download never deletes local files because the remote has nothing for the
//!   tenant: on S3 a missing prefix lists as empty, and `rclone sync` from an empty
//!   listing would wipe the state directory. A mirror-mode download into a non-empty
//!   directory first checks that the remote has data, and skips if it has none.
//! - An upload of a missing local directory is skipped, for the same reason the other
//!   way round: mirroring nothing would delete the tenant's remote data. (An existing
//!   but empty directory is mirrored: the tenant really did delete everything.)
//! - When the daemon is root and the workload has a `user`, rclone runs as that user.
//!   rclone follows symlinks in the middle of a path when it writes, and a tenant can
//!   plant `state/x -> /etc`; as the workload's user it cannot reach anything the
//!   tenant could not reach already, and what it downloads is owned by that user.
//! - The engine's own download writes as the daemon, so it never follows a symlink:
//!   directories are opened from the state dir down with `O_NOFOLLOW`, files created
//!   with `O_EXCL | O_NOFOLLOW`, then given to the workload's user; a symlink the
//!   container plants meanwhile fails it, and rclone (as the user) does the download.
//! - Symlinks inside the state directory are never followed (rclone's default without
//!   `-L`; `--skip-links` only silences the notice), and a mapping whose own path goes
//!   through a symlink is refused.

pub mod cache;
mod endpoint;
mod engine;
mod fetch;
mod listing;
mod local;
mod rclone;
mod status;
#[cfg(test)]
mod tests;

use std::time::Duration;

use serde::Serialize;

use crate::workload::spec::SyncDirection;

pub use cache::{Copied, Miss, MissReason, RestoreSource, StateCache};
pub use engine::SyncEngine;
pub use listing::Lister;
pub use local::run_as;
pub use rclone::{BASE_FLAGS, FRESH_DOWNLOAD_FLAGS};
pub use status::{ClaimSync, SyncState, SyncStatus};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncOp {
    Upload,
    Download,
}

impl SyncOp {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncOp::Upload => "upload",
            SyncOp::Download => "download",
        }
    }

    /// Does a mapping with this direction take part in this operation?
    pub fn applies_to(self, direction: SyncDirection) -> bool {
        matches!(
            (self, direction),
            (_, SyncDirection::Bidirectional)
                | (SyncOp::Upload, SyncDirection::Upload)
                | (SyncOp::Download, SyncDirection::Download)
        )
    }
}

impl std::fmt::Display for SyncOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one mapping's transfer did.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TransferResult {
    /// The mapping's path, as the workload file gives it (`/` = the whole volume).
    pub path: String,
    pub direction: SyncOp,
    pub success: bool,
    pub bytes_transferred: u64,
    pub files_transferred: u64,
    /// rclone's last error lines (a few, shortened, credentials scrubbed). May be
    /// non-empty on success when rclone recovered by retrying.
    pub errors: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The node may not write tenant state now (see [`crate::fence`]); nothing ran.
    #[error("{op} for tenant {tenant} was not started: {reason}")]
    Held {
        tenant: String,
        op: SyncOp,
        reason: String,
    },
    #[error("tenant id {tenant:?} cannot be used in a storage path")]
    InvalidTenant { tenant: String },
    #[error("sink type {kind:?} is not supported (only s3)")]
    UnsupportedSink { kind: String },
    #[error("{op} of mapping {path} for tenant {tenant}: {detail}")]
    Local {
        tenant: String,
        path: String,
        op: SyncOp,
        detail: String,
    },
    #[error("{op} of mapping {path} for tenant {tenant}: cannot start rclone ({bin}): {source}")]
    Spawn {
        tenant: String,
        path: String,
        op: SyncOp,
        bin: String,
        source: std::io::Error,
    },
    #[error("{op} of mapping {path} for tenant {tenant}: rclone timed out after {after_ms} ms and was stopped")]
    TimedOut {
        tenant: String,
        path: String,
        op: SyncOp,
        after_ms: u128,
    },
    #[error("{op} of mapping {path} for tenant {tenant}: rclone {status}: {detail}")]
    Failed {
        tenant: String,
        path: String,
        op: SyncOp,
        status: String,
        detail: String,
    },
}

/// Why `rclone version` did not answer (see [`SyncEngine::version`]).
#[derive(Debug, thiserror::Error)]
pub enum VersionError {
    #[error("{0}")]
    Spawn(std::io::Error),
    #[error("rclone version did not answer in {} s", VERSION_TIMEOUT.as_secs())]
    TimedOut,
    #[error("rclone version {status}: {detail}")]
    Failed { status: String, detail: String },
}

/// `rclone version` prints and exits at once; this only bounds a hung binary.
const VERSION_TIMEOUT: Duration = Duration::from_secs(30);
