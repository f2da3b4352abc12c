//! Start-up checks of what each sync workload's user needs: that it can start rclone
//! (`BOILERHOUSE_RCLONE_BIN`) and enter the state directory (`BOILERHOUSE_STATE_DIR`).
//!
//! rclone runs as the workload's user (see `sync`), so a binary in root's 0700 home, or
//! a state directory under a 0700 parent, works for the daemon and fails for that user:
//! without these checks the daemon reports ready and the first claim fails with 502.
//! The checks start rclone through the very code transfers use
//! ([`SyncEngine::version`]), so they cannot disagree with what a claim will do.
//! `boilerhouse validate` runs the same checks. This module reports; it changes nothing.

use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::sync::{self, SyncEngine, VersionError};
use crate::workload::Workload;

/// One failed check, as one sentence naming the variable, the path, the user and the
/// OS's (or rclone's) error.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error("BOILERHOUSE_RCLONE_BIN={bin}: workload `{workload}` runs rclone as uid {uid} (gid {gid}), and that user cannot run it: {source}")]
    Rclone {
        bin: String,
        workload: String,
        uid: u32,
        gid: u32,
        source: VersionError,
    },
    #[error("BOILERHOUSE_STATE_DIR={dir}: workload `{workload}` runs rclone as uid {uid} (gid {gid}), and that user cannot enter {entered}: {source}")]
    StateDir {
        dir: String,
        /// The directory tried: the state dir, or its nearest existing ancestor when
        /// the daemon has not created it yet.
        entered: String,
        workload: String,
        uid: u32,
        gid: u32,
        source: VersionError,
    },
}

/// Every failed check.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct PreflightErrors(pub Vec<PreflightError>);

/// A passed check: rclone's version line as the workload's user saw it.
#[derive(Debug, Clone)]
pub struct Passed {
    pub workload: String,
    pub uid: u32,
    pub gid: u32,
    pub version: String,
}

/// Checks every workload that has `sync`; workloads without it need neither.
pub async fn check(
    config: &Config,
    workloads: &[Workload],
) -> Result<Vec<Passed>, PreflightErrors> {
    let engine = SyncEngine::new(config.rclone_bin.clone(), 1, config.sync_timeout());
    let entered = nearest_existing(&config.state_dir);
    let mut passed = Vec::new();
    let mut errors = Vec::new();
    for workload in workloads {
        let Some(spec) = &workload.sync else {
            continue;
        };
        let owner = workload.owner();
        let (uid, gid) = sync::run_as(owner).unwrap_or_else(own_identity);
        let id = workload.id.to_string();
        // Two starts, so a failure names the right variable: the first reaches only
        // the binary, the second also changes into the state dir as the user.
        let version = match engine.version(spec, owner, None).await {
            Ok(v) => v,
            Err(source) => {
                errors.push(PreflightError::Rclone {
                    bin: config.rclone_bin.display().to_string(),
                    workload: id,
                    uid,
                    gid,
                    source,
                });
                continue;
            }
        };
        if let Err(source) = engine.version(spec, owner, Some(&entered)).await {
            errors.push(PreflightError::StateDir {
                dir: config.state_dir.display().to_string(),
                entered: entered.display().to_string(),
                workload: id,
                uid,
                gid,
                source,
            });
            continue;
        }
        passed.push(Passed {
            workload: id,
            uid,
            gid,
            version,
        });
    }
    if errors.is_empty() {
        Ok(passed)
    } else {
        Err(PreflightErrors(errors))
    }
}

/// `dir` if it exists, else its nearest existing ancestor: what the user must be able
/// to enter before the daemon creates the rest (as root, mode 0755).
fn nearest_existing(dir: &Path) -> PathBuf {
    dir.ancestors()
        .find(|a| a.is_dir())
        .unwrap_or_else(|| Path::new("/"))
        .to_owned()
}

fn own_identity() -> (u32, u32) {
    // SAFETY: geteuid and getegid have no preconditions and cannot fail.
    unsafe { (libc::geteuid(), libc::getegid()) }
}
