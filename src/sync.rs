//! State sync: runs rclone to move a tenant's state between its container's state
//! directory and object storage (SPEC §6).
//!
//! This module owns how rclone is invoked — the remote described only through rclone's
//! environment, the remote and local path of each mapping, the flags, the parsing of
//! rclone's stats and errors, the node-wide cap on concurrent transfers, the timeout of
//! each transfer — and the per-claim sync status. It does not decide *when* to sync
//! (the pool does) and it never wipes anything itself.
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
//! - Symlinks inside the state directory are never followed (rclone's default without
//!   `-L`; `--skip-links` only silences the notice), and a mapping whose own path goes
//!   through a symlink is refused.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, LazyLock, Mutex as StdMutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use regex::Regex;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::workload::spec::{SinkSpec, SyncDirection, SyncMapping, SyncMode, SyncSpec};

/// Name of the rclone remote; rclone reads its settings from `RCLONE_CONFIG_<NAME>_*`.
const REMOTE: &str = "boilerhouse";
const REMOTE_ENV: &str = "RCLONE_CONFIG_BOILERHOUSE_";

/// rclone's exit code for "directory not found" (the source of a transfer is absent).
const EXIT_DIR_NOT_FOUND: i32 = 3;

/// How many of rclone's error lines a result keeps, and how long each may be.
const MAX_ERROR_LINES: usize = 5;
const MAX_ERROR_CHARS: usize = 400;

/// Flags of every rclone invocation. The sink's `rclone_flags` come after them, so an
/// operator can override any of these (rclone keeps the last value of a flag).
pub const BASE_FLAGS: &[&str] = &[
    // One JSON object per log line on stderr; the final stats line is parsed for the
    // byte and file counts. Stats are printed once at exit when the interval is > 0.
    "--use-json-log",
    "--log-level",
    "NOTICE",
    "--stats",
    "1h",
    "--stats-log-level",
    "NOTICE",
    // Compare by size and MD5: S3 listings carry the MD5 (ETag), while comparing
    // modification times costs one HEAD request per object.
    "--checksum",
    // Many small files: list the prefix in one paginated request instead of one per
    // directory, and move files in parallel.
    "--fast-list",
    "--transfers",
    "16",
    "--checkers",
    "16",
    // Retries. Real S3 answers `503 SlowDown` and `500 InternalError` under load, and
    // each request must be retried on its own, with backoff, or a release with many
    // files fails for one unlucky request. `--low-level-retries` is that per-request
    // count, at two levels: the S3 SDK's attempts for reads and listings (its standard
    // retryer: exponential backoff with jitter, capped at 20 s), and rclone's own
    // retries of each file's PUT (the SDK makes one attempt per upload), spaced by
    // rclone's S3 pacer, which lengthens the pause between all calls of the process
    // (up to 2 s) while errors go on and shortens it after successes. Measured against
    // the test proxy, 50 files, half of all requests failing: 1 (the old value) fails
    // in 110 s, 3 fails, 5 succeeds (one in thirty files would still fail a run), 10
    // succeeds. `--retries` redoes, after `--retries-sleep`, only what failed in a run.
    //
    // The same retries would hold an unreachable endpoint for minutes (a listing
    // against a closed port: first error after 0.1 s with 1, 6.9 s with 3, 19.5 s with
    // 5), so the engine does not leave that to rclone: it checks that the endpoint
    // accepts a TCP connection when rclone starts and every 2 s while it runs, and
    // stops rclone at the first failed connection, its own or one rclone logs
    // (`is_unreachable`) — see `exec`.
    "--retries",
    "3",
    "--retries-sleep",
    "1s",
    "--low-level-retries",
    "10",
    // A black-holed endpoint should not hold a claim for rclone's default minute.
    "--contimeout",
    "10s",
    // Symlinks are never followed (rclone's default); this only silences the notice.
    "--skip-links",
];

/// How long the engine's own check that the endpoint accepts connections may take
/// (the same as rclone's `--contimeout`).
const CONNECT_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the check is repeated while rclone runs, so an endpoint that goes away
/// in the middle of a transfer is noticed as soon (rclone would take one request's
/// full retries, with backoff, to say so).
const CONNECT_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Proxy variables: with one set, rclone connects to the proxy, not to the endpoint.
const PROXY_VARS: &[&str] = &["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"];

/// Variables passed through from the daemon's environment to rclone.
const PASS_THROUGH: &[&str] = &[
    "PATH",
    "TMPDIR",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
];

/// Used when the daemon itself has no `PATH` (rclone_bin may be a bare name).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

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

/// Runs rclone for the whole daemon: at most `concurrency` processes at once, each
/// bounded by `timeout`. Cheap to clone.
#[derive(Clone)]
pub struct SyncEngine {
    inner: Arc<EngineInner>,
}

struct EngineInner {
    rclone_bin: PathBuf,
    permits: Semaphore,
    timeout: Duration,
}

/// Everything one `run` call shares between its mappings.
struct RunCtx<'a> {
    spec: &'a SyncSpec,
    tenant: &'a str,
    state_dir: PathBuf,
    op: SyncOp,
    env: Vec<(OsString, OsString)>,
    secrets: Arc<Vec<String>>,
    run_as: Option<(u32, u32)>,
    /// The endpoint's `host:port`, checked for connections alongside each rclone run
    /// (None behind an HTTP proxy, which rclone would connect to instead).
    endpoint: Option<String>,
}

/// One rclone process to run.
struct Invocation {
    args: Vec<OsString>,
    /// Read stdout and stop the process at its first line (used by the remote probe).
    first_line_only: bool,
}

struct Finished {
    status: ExitStatus,
    log: RcloneLog,
    printed_a_line: bool,
    /// Stopped at its first failed connection (see [`is_unreachable`]).
    unreachable: bool,
}

impl Finished {
    fn describe(&self) -> String {
        if self.unreachable {
            "was stopped at its first failed connection (the endpoint is unreachable)".into()
        } else {
            describe_status(self.status)
        }
    }
}

enum ExecError {
    Spawn(std::io::Error),
    TimedOut,
    Wait(std::io::Error),
}

impl SyncEngine {
    pub fn new(rclone_bin: PathBuf, concurrency: usize, timeout: Duration) -> Self {
        Self {
            inner: Arc::new(EngineInner {
                rclone_bin,
                permits: Semaphore::new(concurrency.max(1)),
                timeout,
            }),
        }
    }

    pub fn rclone_bin(&self) -> &Path {
        &self.inner.rclone_bin
    }

    /// Runs every mapping of `spec` that applies to `op` for one tenant, in order, and
    /// stops at the first failure (a claim must not start with half its state, and a
    /// release must not go on when an upload failed).
    ///
    /// Download: download and bidirectional mappings, remote → local.
    /// Upload: upload and bidirectional mappings, local → remote.
    /// `owner`: the workload's `(uid, gid)`; when the daemon is root, rclone runs as
    /// that user, so what it downloads belongs to the user (and it cannot be led out
    /// of the tenant's files by a symlink).
    pub async fn run(
        &self,
        spec: &SyncSpec,
        tenant_id: &str,
        state_dir: &Path,
        op: SyncOp,
        owner: Option<(u32, u32)>,
    ) -> Result<Vec<TransferResult>, SyncError> {
        if !is_safe_tenant_id(tenant_id) {
            return Err(SyncError::InvalidTenant {
                tenant: tenant_id.to_owned(),
            });
        }
        if spec.sink.kind != "s3" {
            return Err(SyncError::UnsupportedSink {
                kind: spec.sink.kind.clone(),
            });
        }
        // rclone could take a relative path for a remote name (`a:b`); absolute never.
        let state_dir = std::path::absolute(state_dir).unwrap_or_else(|_| state_dir.to_owned());
        let ctx = RunCtx {
            spec,
            tenant: tenant_id,
            state_dir,
            op,
            env: rclone_env(&spec.sink, std::env::vars_os()),
            secrets: Arc::new(secret_values(&spec.sink)),
            run_as: run_as(owner),
            endpoint: endpoint_address(&spec.sink, |name| std::env::var_os(name)),
        };
        if owner.is_some() && ctx.run_as.is_none() {
            tracing::debug!(
                tenant = tenant_id,
                "not root: rclone runs as the daemon's own user"
            );
        }
        let mut results = Vec::new();
        for mapping in spec.mappings.iter().filter(|m| op.applies_to(m.direction)) {
            results.push(self.run_mapping(&ctx, mapping).await?);
        }
        Ok(results)
    }

    async fn run_mapping(
        &self,
        ctx: &RunCtx<'_>,
        mapping: &SyncMapping,
    ) -> Result<TransferResult, SyncError> {
        let (tenant, op) = (ctx.tenant, ctx.op);
        let rel = normalize_mapping_path(&mapping.path).map_err(|detail| SyncError::Local {
            tenant: tenant.to_owned(),
            path: mapping.path.clone(),
            op,
            detail,
        })?;
        let local = local_path(&ctx.state_dir, &rel);
        let remote = remote_path(&ctx.spec.sink, tenant, &rel);
        let local_error = |detail: String| SyncError::Local {
            tenant: tenant.to_owned(),
            path: mapping.path.clone(),
            op,
            detail,
        };
        let skipped = || TransferResult {
            path: mapping.path.clone(),
            direction: op,
            success: true,
            bytes_transferred: 0,
            files_transferred: 0,
            errors: Vec::new(),
        };

        // Waiting for a turn does not count against the timeout; running does.
        let _permit = self
            .inner
            .permits
            .acquire()
            .await
            .map_err(|_| local_error("the sync engine is shut down".into()))?;
        let started = Instant::now();
        let deadline = started + self.inner.timeout;

        let state_dir = ctx.state_dir.clone();
        let rel_owned = rel.clone();
        let local_state =
            tokio::task::spawn_blocking(move || inspect_local(&state_dir, &rel_owned))
                .await
                .map_err(|e| local_error(format!("checking the local directory failed: {e}")))?
                .map_err(local_error)?;

        let verb = match (op, mapping.mode, local_state) {
            (SyncOp::Upload, _, LocalState::Missing) => {
                tracing::debug!(tenant, path = %mapping.path, "nothing to upload: the local directory does not exist");
                return Ok(skipped());
            }
            (SyncOp::Upload, SyncMode::Sync, _) => "sync",
            (SyncOp::Upload, SyncMode::Copy, _) => "copy",
            // Nothing local to delete: a mirror is a copy, and a copy can never delete.
            (SyncOp::Download, SyncMode::Copy, _)
            | (SyncOp::Download, SyncMode::Sync, LocalState::Missing | LocalState::Empty) => "copy",
            (SyncOp::Download, SyncMode::Sync, LocalState::NonEmpty) => {
                if !self
                    .remote_has_data(ctx, mapping, &remote, deadline)
                    .await?
                {
                    tracing::debug!(tenant, path = %mapping.path, "no remote data: local files left as they are");
                    return Ok(skipped());
                }
                "sync"
            }
        };

        let (src, dst): (&OsStr, &OsStr) = match op {
            SyncOp::Upload => (local.as_os_str(), OsStr::new(&remote)),
            SyncOp::Download => (OsStr::new(&remote), local.as_os_str()),
        };
        let args = transfer_args(
            verb,
            src,
            dst,
            mapping.pattern.as_deref(),
            &ctx.spec.sink.rclone_flags,
        );
        tracing::debug!(tenant, path = %mapping.path, %op, verb, remote = %remote, "rclone starting");
        let finished = self
            .exec(
                ctx,
                Invocation {
                    args,
                    first_line_only: false,
                },
                deadline,
            )
            .await
            .map_err(|e| self.exec_error(ctx, mapping, e))?;

        let code = finished.status.code();
        let stats = finished.log.stats.clone().unwrap_or_default();
        let errors = finished.log.errors.clone();
        let elapsed_ms = started.elapsed().as_millis();
        let ok = code == Some(0);
        let nothing_remote = op == SyncOp::Download && code == Some(EXIT_DIR_NOT_FOUND);
        if !ok && !nothing_remote {
            tracing::warn!(tenant, path = %mapping.path, %op, status = %finished.describe(), elapsed_ms, "rclone failed");
            return Err(SyncError::Failed {
                tenant: tenant.to_owned(),
                path: mapping.path.clone(),
                op,
                status: finished.describe(),
                detail: summarize(&errors),
            });
        }
        if nothing_remote {
            tracing::debug!(tenant, path = %mapping.path, "no remote data yet (bucket or prefix not found)");
            return Ok(skipped());
        }
        tracing::info!(
            tenant,
            path = %mapping.path,
            %op,
            bytes = stats.bytes,
            files = stats.transfers,
            elapsed_ms,
            "sync done"
        );
        Ok(TransferResult {
            path: mapping.path.clone(),
            direction: op,
            success: true,
            bytes_transferred: stats.bytes,
            files_transferred: stats.transfers,
            errors,
        })
    }

    /// Does the remote hold anything for this mapping? A missing bucket or prefix (or
    /// nothing matching the pattern) is "no".
    async fn remote_has_data(
        &self,
        ctx: &RunCtx<'_>,
        mapping: &SyncMapping,
        remote: &str,
        deadline: Instant,
    ) -> Result<bool, SyncError> {
        let args = probe_args(
            remote,
            mapping.pattern.as_deref(),
            &ctx.spec.sink.rclone_flags,
        );
        let finished = self
            .exec(
                ctx,
                Invocation {
                    args,
                    first_line_only: true,
                },
                deadline,
            )
            .await
            .map_err(|e| self.exec_error(ctx, mapping, e))?;
        if finished.printed_a_line {
            return Ok(true);
        }
        match finished.status.code() {
            Some(0) | Some(EXIT_DIR_NOT_FOUND) if !finished.unreachable => Ok(false),
            _ => Err(SyncError::Failed {
                tenant: ctx.tenant.to_owned(),
                path: mapping.path.clone(),
                op: ctx.op,
                status: format!("could not list the remote ({})", finished.describe()),
                detail: summarize(&finished.log.errors),
            }),
        }
    }

    fn exec_error(&self, ctx: &RunCtx<'_>, mapping: &SyncMapping, e: ExecError) -> SyncError {
        let (tenant, path, op) = (ctx.tenant.to_owned(), mapping.path.clone(), ctx.op);
        match e {
            ExecError::Spawn(source) => SyncError::Spawn {
                tenant,
                path,
                op,
                bin: self.inner.rclone_bin.display().to_string(),
                source,
            },
            ExecError::TimedOut => {
                tracing::warn!(tenant = %tenant, path = %path, %op, "rclone timed out");
                SyncError::TimedOut {
                    tenant,
                    path,
                    op,
                    after_ms: self.inner.timeout.as_millis(),
                }
            }
            ExecError::Wait(e) => SyncError::Local {
                tenant,
                path,
                op,
                detail: format!("waiting for rclone failed: {e}"),
            },
        }
    }

    /// rclone as every invocation starts it: only `env` for an environment, stdin
    /// closed, stderr piped, and as `run_as` (see [`run_as`]) when that is set.
    fn command(&self, env: &[(OsString, OsString)], run_as: Option<(u32, u32)>) -> Command {
        let mut cmd = Command::new(&self.inner.rclone_bin);
        cmd.env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some((uid, gid)) = run_as {
            // std drops supplementary groups too when it changes the uid as root.
            cmd.uid(uid).gid(gid);
        }
        die_with_the_daemon(&mut cmd);
        cmd
    }

    /// Runs `rclone version` exactly as a transfer of `spec` for a workload owned by
    /// `owner` would start rclone (same environment, same user), from `cwd` when given:
    /// the child changes to it after taking the user's identity, so a `cwd` the user
    /// cannot enter fails the start. Returns rclone's first line (`rclone v1.75.2`).
    /// Start-up uses it to find, before any claim, a binary or a state directory the
    /// workload's user cannot reach.
    pub async fn version(
        &self,
        spec: &SyncSpec,
        owner: Option<(u32, u32)>,
        cwd: Option<&Path>,
    ) -> Result<String, VersionError> {
        let env = rclone_env(&spec.sink, std::env::vars_os());
        let mut cmd = self.command(&env, run_as(owner));
        cmd.arg("version").stdout(Stdio::piped());
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        let child = cmd.spawn().map_err(VersionError::Spawn)?;
        let out = tokio::time::timeout(VERSION_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| VersionError::TimedOut)?
            .map_err(VersionError::Spawn)?;
        let first = |bytes: &[u8]| {
            String::from_utf8_lossy(bytes)
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned()
        };
        if !out.status.success() {
            return Err(VersionError::Failed {
                status: describe_status(out.status),
                detail: first(&out.stderr),
            });
        }
        Ok(first(&out.stdout))
    }

    /// Runs one rclone process to completion (or to its first stdout line), killing it
    /// at `deadline`. The process is always reaped before this returns, so nothing of
    /// it outlives a failed sync.
    async fn exec(
        &self,
        ctx: &RunCtx<'_>,
        inv: Invocation,
        deadline: Instant,
    ) -> Result<Finished, ExecError> {
        let mut cmd = self.command(&ctx.env, ctx.run_as);
        cmd.args(&inv.args).stdout(if inv.first_line_only {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = cmd.spawn().map_err(ExecError::Spawn)?;
        let (unreachable_tx, unreachable_rx) = tokio::sync::oneshot::channel();
        let log_task = tokio::spawn(read_log(
            child.stderr.take(),
            ctx.secrets.clone(),
            unreachable_tx,
        ));
        // Resolves when the endpoint refuses a connection — found by the engine's own
        // check (with the reason), or by rclone, which logs it only after all of its
        // retries of one request — and never if that does not happen.
        let endpoint = ctx.endpoint.clone();
        let mut unreachable = std::pin::pin!(async move {
            let connect_check = async {
                let Some(address) = endpoint else {
                    return std::future::pending().await;
                };
                loop {
                    if let Err(reason) = check_connect(&address).await {
                        return reason;
                    }
                    tokio::time::sleep(CONNECT_CHECK_INTERVAL).await;
                }
            };
            tokio::select! {
                reason = connect_check => Some(reason),
                logged = unreachable_rx => {
                    if logged.is_err() {
                        std::future::pending::<()>().await;
                    }
                    None
                }
            }
        });
        let stdout = child.stdout.take();
        let outcome = tokio::time::timeout_at(deadline, async {
            // rclone goes on after a failed connection: every request tries again
            // with backoff and every file in turn (minutes with many files), so the
            // first failed connection, the engine's check or rclone's, ends the run.
            let reason = {
                let run = async {
                    let printed_a_line = match stdout {
                        Some(out) => {
                            let line = first_line(out).await;
                            if line {
                                // Found what we were looking for; the rest of the
                                // listing is moot.
                                let _ = child.start_kill();
                            }
                            line
                        }
                        None => false,
                    };
                    Ok::<_, std::io::Error>((child.wait().await?, printed_a_line))
                };
                tokio::select! {
                    biased;
                    done = run => {
                        let (status, printed_a_line) = done?;
                        return Ok((status, printed_a_line, None));
                    }
                    reason = &mut unreachable => reason,
                }
            };
            let _ = child.start_kill();
            let status = child.wait().await?;
            Ok::<_, std::io::Error>((status, false, Some(reason)))
        })
        .await;
        match outcome {
            Ok(Ok((status, printed_a_line, gave_up))) => {
                let mut log = log_task.await.unwrap_or_default();
                if let Some(Some(reason)) = &gave_up {
                    log.error(reason, &ctx.secrets);
                }
                Ok(Finished {
                    status,
                    log,
                    printed_a_line,
                    unreachable: gave_up.is_some(),
                })
            }
            Ok(Err(e)) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                Err(ExecError::Wait(e))
            }
            Err(_) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                log_task.abort();
                Err(ExecError::TimedOut)
            }
        }
    }
}

/// rclone dies with the daemon. `kill_on_drop` covers every exit the daemon lives
/// through; after a `kill -9` an orphaned rclone would go on — a restore writing into
/// the state dir of a container the next start may find clean and hand to another
/// tenant, an upload mirroring an old snapshot over a newer one. The parent-death
/// signal is tied to the spawning thread: rclone is spawned from async tasks, which
/// run on the runtime's worker threads (never on a `spawn_blocking` thread, which may
/// exit while idle). std runs this after changing the uid, and a change of identity
/// would reset the signal, so it is set last.
fn die_with_the_daemon(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        let daemon = std::process::id();
        // SAFETY: the closure runs between fork and exec and only makes the
        // async-signal-safe calls prctl and getppid; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                let signal = libc::SIGKILL as libc::c_ulong;
                if libc::prctl(libc::PR_SET_PDEATHSIG, signal, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The daemon died before the signal was armed.
                if libc::getppid() as u32 != daemon {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}

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

    pub fn status(&self) -> SyncStatus {
        lock(&self.inner.status).clone()
    }
}

/// Marks a claim as syncing; if the sync future is dropped half-way (the caller gave
/// up), the status says so instead of staying `syncing` forever.
struct InProgress<'a> {
    status: &'a StdMutex<SyncStatus>,
    op: SyncOp,
    done: bool,
}

impl<'a> InProgress<'a> {
    fn begin(status: &'a StdMutex<SyncStatus>, op: SyncOp) -> Self {
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
fn lock(m: &StdMutex<SyncStatus>) -> MutexGuard<'_, SyncStatus> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------------
// Pure pieces: paths, environment, arguments, log parsing.

/// Same rule as the API's tenant ids; checked again because the id becomes a key prefix.
fn is_safe_tenant_id(id: &str) -> bool {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    first_ok
        && id.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// `"/"`, `""` → `""` (the whole volume); `"/a//b/"` → `"a/b"`. `..` is refused (the
/// workload loader refuses it too).
fn normalize_mapping_path(path: &str) -> Result<String, String> {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.contains(&"..") {
        return Err(format!("mapping path {path:?} must not contain `..`"));
    }
    Ok(parts.join("/"))
}

fn local_path(state_dir: &Path, rel: &str) -> PathBuf {
    match rel {
        "" => state_dir.to_owned(),
        rel => state_dir.join(rel),
    }
}

/// `boilerhouse:<bucket>/<prefix with ${tenantId} replaced>/<mapping path>/`, without
/// empty segments (so no double slashes, which S3 would keep as part of the key).
///
/// The trailing slash tells rclone the path is a directory. Without it rclone first
/// HEADs the path to see whether it is a file, and when the endpoint is unreachable
/// 1.75 reports the misleading "is a file not a directory" instead of the real error.
fn remote_path(sink: &SinkSpec, tenant: &str, rel: &str) -> String {
    let prefix = sink.prefix.replace("${tenantId}", tenant);
    let key = [sink.bucket.as_str(), prefix.as_str(), rel]
        .iter()
        .flat_map(|s| s.split('/'))
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("/");
    format!("{REMOTE}:{key}/")
}

/// rclone's whole environment. `inherited` is the daemon's environment; only a few
/// harmless variables (and, for env auth, the AWS ones and `HOME`) pass through.
fn rclone_env(
    sink: &SinkSpec,
    inherited: impl IntoIterator<Item = (OsString, OsString)>,
) -> Vec<(OsString, OsString)> {
    let keys = sink
        .access_key_id
        .as_deref()
        .zip(sink.secret_access_key.as_deref());
    let env_auth = keys.is_none();
    let mut env: Vec<(OsString, OsString)> = inherited
        .into_iter()
        .filter(|(name, _)| {
            let name = name.to_string_lossy();
            PASS_THROUGH.contains(&name.as_ref())
                || (env_auth && (name == "HOME" || name.starts_with("AWS_")))
        })
        .collect();
    if !env.iter().any(|(name, _)| name == "PATH") {
        env.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    // An empty config path keeps rclone's configuration in memory: no file is read.
    env.push(("RCLONE_CONFIG".into(), "".into()));
    let mut remote = |key: &str, value: &str| {
        env.push((format!("{REMOTE_ENV}{key}").into(), value.into()));
    };
    remote("TYPE", "s3");
    remote(
        "PROVIDER",
        if sink.endpoint.is_some() {
            "Other"
        } else {
            "AWS"
        },
    );
    match keys {
        Some((id, secret)) => {
            remote("ENV_AUTH", "false");
            remote("ACCESS_KEY_ID", id);
            remote("SECRET_ACCESS_KEY", secret);
        }
        None => remote("ENV_AUTH", "true"),
    }
    if let Some(region) = &sink.region {
        remote("REGION", region);
    }
    if let Some(endpoint) = &sink.endpoint {
        remote("ENDPOINT", endpoint);
        remote("FORCE_PATH_STYLE", "true");
    }
    env
}

fn secret_values(sink: &SinkSpec) -> Vec<String> {
    [&sink.access_key_id, &sink.secret_access_key]
        .into_iter()
        .flatten()
        .filter(|s| !s.is_empty())
        .cloned()
        .collect()
}

/// `rclone <copy|sync> <src> <dst> <flags> [--include <pattern>] <operator flags>`.
///
/// `pattern` is an rclone filter rule (`--include`): without a `/` it matches a file
/// name at any depth (`*.db`), with a leading `/` it is anchored at the mapping's
/// root, `**` crosses directories. In `sync` mode only matching files are deleted at
/// the destination.
fn transfer_args(
    verb: &str,
    src: &OsStr,
    dst: &OsStr,
    pattern: Option<&str>,
    extra: &[String],
) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![verb.into(), src.into(), dst.into()];
    args.extend(BASE_FLAGS.iter().map(OsString::from));
    if let Some(pattern) = pattern {
        args.extend(["--include".into(), pattern.into()]);
    }
    args.extend(extra.iter().map(OsString::from));
    args
}

/// Lists the remote just far enough to know whether it holds anything: the top level
/// without a pattern, else the first matching file.
fn probe_args(remote: &str, pattern: Option<&str>, extra: &[String]) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["lsf".into(), remote.into()];
    match pattern {
        None => args.extend(["--max-depth".into(), "1".into()]),
        Some(pattern) => args.extend([
            "-R".into(),
            "--files-only".into(),
            "--include".into(),
            pattern.into(),
        ]),
    }
    args.extend(BASE_FLAGS.iter().map(OsString::from));
    args.extend(extra.iter().map(OsString::from));
    args
}

fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => "ended abnormally".into(),
    }
}

/// rclone's last error line: its closing "Failed to <verb>: …" sums up the others.
fn summarize(errors: &[String]) -> String {
    errors
        .last()
        .cloned()
        .unwrap_or_else(|| "no error message (see the daemon's debug log)".into())
}

/// The parts of rclone's stats object that are used.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
struct RcloneStats {
    bytes: u64,
    transfers: u64,
}

#[derive(Deserialize)]
struct LogLine {
    #[serde(default)]
    level: String,
    #[serde(default)]
    msg: String,
    #[serde(default)]
    object: Option<String>,
    #[serde(default)]
    stats: Option<RcloneStats>,
}

/// What is kept of rclone's stderr: the last stats and the last few error lines.
#[derive(Debug, Default)]
struct RcloneLog {
    stats: Option<RcloneStats>,
    errors: Vec<String>,
}

impl RcloneLog {
    /// Keeps what matters of one line; true when it is an error saying the endpoint
    /// could not be reached.
    fn push(&mut self, line: &str, secrets: &[String]) -> bool {
        let line = line.trim();
        if line.is_empty() {
            return false;
        }
        match serde_json::from_str::<LogLine>(line) {
            Ok(entry) => {
                if let Some(stats) = entry.stats {
                    self.stats = Some(stats);
                }
                let is_error = matches!(entry.level.as_str(), "error" | "critical" | "fatal")
                    || entry.msg.starts_with("Failed to");
                if !is_error {
                    return false;
                }
                let msg = match entry.object.filter(|o| !o.is_empty()) {
                    Some(object) => format!("{object}: {}", entry.msg.trim()),
                    None => entry.msg.trim().to_owned(),
                };
                self.error(&msg, secrets);
                is_unreachable(&entry.msg)
            }
            // Before its logger is set up (bad flags), rclone prints plain text.
            Err(_) => {
                if line.starts_with("Error")
                    || line.contains("Fatal error")
                    || line.starts_with("panic")
                {
                    self.error(line, secrets);
                }
                false
            }
        }
    }

    fn error(&mut self, msg: &str, secrets: &[String]) {
        let msg = shorten(&strip_request_ids(&scrub(msg, secrets)), MAX_ERROR_CHARS);
        if self.errors.contains(&msg) {
            return;
        }
        if self.errors.len() == MAX_ERROR_LINES {
            self.errors.remove(0);
        }
        self.errors.push(msg);
    }
}

/// The AWS SDK puts `RequestID: …, HostID: <long base64>, ` in every error; useless to
/// a person reading why a sync failed, and it pushes the cause out of the message.
fn strip_request_ids(text: &str) -> String {
    static IDS: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"RequestID: [^,]*, HostID: [^,]*, ").expect("valid regex"));
    IDS.replace_all(text, "").into_owned()
}

fn scrub(text: &str, secrets: &[String]) -> String {
    secrets
        .iter()
        .filter(|s| !s.is_empty())
        .fold(text.to_owned(), |t, s| t.replace(s.as_str(), "***"))
}

fn shorten(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Collects rclone's log; the first error line that says the endpoint could not be
/// reached is also signalled on `unreachable`.
async fn read_log(
    stderr: Option<impl AsyncRead + Unpin>,
    secrets: Arc<Vec<String>>,
    unreachable: tokio::sync::oneshot::Sender<()>,
) -> RcloneLog {
    let mut log = RcloneLog::default();
    let Some(stderr) = stderr else {
        return log;
    };
    let mut unreachable = Some(unreachable);
    let mut reader = BufReader::new(stderr);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let failed_connection = log.push(&String::from_utf8_lossy(&buf), &secrets);
                if failed_connection {
                    if let Some(tx) = unreachable.take() {
                        let _ = tx.send(());
                    }
                }
            }
        }
    }
    log
}

/// Does this error say a connection to the endpoint could not be made at all (Go's
/// `dial tcp …`: refused, unknown host, no route, connect timeout)? Nothing was sent,
/// and nothing will be in the rest of this run either.
fn is_unreachable(msg: &str) -> bool {
    msg.contains("dial tcp")
        && [
            "connection refused",
            "no such host",
            "network is unreachable",
            "no route to host",
            "i/o timeout",
        ]
        .iter()
        .any(|cause| msg.contains(cause))
}

/// `host:port` of the sink's endpoint: its `endpoint` (scheme-less means https, as
/// rclone reads it), else AWS's regional endpoint. None when an HTTP proxy is set.
fn endpoint_address(sink: &SinkSpec, env: impl Fn(&str) -> Option<OsString>) -> Option<String> {
    if PROXY_VARS
        .iter()
        .any(|name| env(name).is_some_and(|v| !v.is_empty()))
    {
        return None;
    }
    let Some(endpoint) = sink.endpoint.as_deref() else {
        let region = sink.region.as_deref().unwrap_or("us-east-1");
        return Some(format!("s3.{region}.amazonaws.com:443"));
    };
    let (rest, default_port) = match endpoint.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => (rest, 80),
        Some((_, rest)) => (rest, 443),
        None => (endpoint, 443),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit('@').next().unwrap_or_default();
    if authority.is_empty() {
        return None;
    }
    // `[::1]:9000`, `[::1]`, `host:9000`, `host`.
    let has_port = match authority.rfind(':') {
        Some(colon) => !authority[colon..].contains(']'),
        None => false,
    };
    Some(if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:{default_port}")
    })
}

/// Can a TCP connection to `address` be made? The reason reads like rclone's own
/// (`connection refused`, `no such host`, `i/o timeout`), so the error says the same
/// whichever of the two noticed first.
async fn check_connect(address: &str) -> Result<(), String> {
    use std::io::ErrorKind;
    let connect = tokio::net::TcpStream::connect(address);
    let reason = match tokio::time::timeout(CONNECT_CHECK_TIMEOUT, connect).await {
        Ok(Ok(_)) => return Ok(()),
        Ok(Err(e)) => match e.kind() {
            ErrorKind::ConnectionRefused => "connection refused".to_owned(),
            ErrorKind::TimedOut => "i/o timeout".to_owned(),
            ErrorKind::HostUnreachable => "no route to host".to_owned(),
            ErrorKind::NetworkUnreachable => "network is unreachable".to_owned(),
            _ if e.to_string().contains("lookup") || e.to_string().contains("resolve") => {
                format!("no such host ({e})")
            }
            _ => e.to_string(),
        },
        Err(_) => format!("i/o timeout after {CONNECT_CHECK_TIMEOUT:?}"),
    };
    Err(format!(
        "cannot connect to the endpoint {address}: {reason}"
    ))
}

/// Did the stream carry at least one non-empty line?
async fn first_line(out: impl AsyncRead + Unpin) -> bool {
    let mut reader = BufReader::new(out);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(_) if buf.iter().all(u8::is_ascii_whitespace) => continue,
            Ok(_) => return true,
        }
    }
}

// ---------------------------------------------------------------------------------
// Local side.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LocalState {
    Missing,
    Empty,
    NonEmpty,
}

/// Looks at a mapping's local directory without following any symlink below the state
/// directory. Blocking.
fn inspect_local(state_dir: &Path, rel: &str) -> Result<LocalState, String> {
    use std::io::ErrorKind::NotFound;
    match std::fs::metadata(state_dir) {
        Err(e) if e.kind() == NotFound => return Ok(LocalState::Missing),
        Err(e) => return Err(format!("cannot read {}: {e}", state_dir.display())),
        Ok(m) if !m.is_dir() => return Err(format!("{} is not a directory", state_dir.display())),
        Ok(_) => {}
    }
    let mut path = state_dir.to_owned();
    for part in rel.split('/').filter(|p| !p.is_empty()) {
        path.push(part);
        match std::fs::symlink_metadata(&path) {
            Err(e) if e.kind() == NotFound => return Ok(LocalState::Missing),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
            Ok(m) if m.file_type().is_symlink() => {
                return Err(format!(
                    "{} is a symbolic link; refusing to follow it",
                    path.display()
                ))
            }
            Ok(m) if !m.is_dir() => {
                return Err(format!(
                    "{} is not a directory (mapping paths name directories)",
                    path.display()
                ))
            }
            Ok(_) => {}
        }
    }
    let mut entries =
        std::fs::read_dir(&path).map_err(|e| format!("cannot list {}: {e}", path.display()))?;
    Ok(match entries.next() {
        None => LocalState::Empty,
        Some(_) => LocalState::NonEmpty,
    })
}

/// The identity rclone takes for a workload owned by `owner`: the owner when the
/// daemon is root (it can switch), None = the daemon's own.
pub fn run_as(owner: Option<(u32, u32)>) -> Option<(u32, u32)> {
    owner.filter(|_| running_as_root())
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(keys: bool, endpoint: Option<&str>) -> SinkSpec {
        SinkSpec {
            kind: "s3".into(),
            bucket: "state-bucket".into(),
            region: Some("eu-west-1".into()),
            endpoint: endpoint.map(Into::into),
            access_key_id: keys.then(|| "AKIAEXAMPLEKEY".into()),
            secret_access_key: keys.then(|| "s3cr3t/Value+xyz".into()),
            prefix: "tenants/${tenantId}/".into(),
            rclone_flags: vec!["--bwlimit".into(), "10M".into()],
        }
    }

    fn env_map(env: &[(OsString, OsString)]) -> std::collections::BTreeMap<String, String> {
        env.iter()
            .map(|(k, v)| (k.to_string_lossy().into(), v.to_string_lossy().into()))
            .collect()
    }

    #[test]
    fn remote_path_joins_without_double_slashes() {
        let mut s = sink(true, None);
        assert_eq!(
            remote_path(&s, "alice", ""),
            "boilerhouse:state-bucket/tenants/alice/"
        );
        assert_eq!(
            remote_path(&s, "alice", "data/db"),
            "boilerhouse:state-bucket/tenants/alice/data/db/"
        );
        s.prefix = "/x//${tenantId}//".into();
        s.bucket = "b/".into();
        assert_eq!(remote_path(&s, "bob", "d"), "boilerhouse:b/x/bob/d/");
        s.prefix = "${tenantId}".into();
        assert_eq!(remote_path(&s, "a.b-c_d", ""), "boilerhouse:b/a.b-c_d/");
    }

    #[test]
    fn mapping_paths_normalize() {
        assert_eq!(normalize_mapping_path("/").unwrap(), "");
        assert_eq!(normalize_mapping_path("").unwrap(), "");
        assert_eq!(normalize_mapping_path("/a//b/./c/").unwrap(), "a/b/c");
        assert!(normalize_mapping_path("a/../b").is_err());
        let dir = Path::new("/s/c1");
        assert_eq!(local_path(dir, ""), PathBuf::from("/s/c1"));
        assert_eq!(local_path(dir, "a/b"), PathBuf::from("/s/c1/a/b"));
    }

    #[test]
    fn tenant_ids_are_checked() {
        for ok in ["alice", "A1", "a.b_c-d", "0"] {
            assert!(is_safe_tenant_id(ok), "{ok}");
        }
        for bad in ["", ".", "..", "-a", "a/b", "a b", "é", &"a".repeat(129)] {
            assert!(!is_safe_tenant_id(bad), "{bad}");
        }
    }

    #[test]
    fn op_selects_mappings_by_direction() {
        use SyncDirection::*;
        assert!(SyncOp::Upload.applies_to(Upload) && SyncOp::Upload.applies_to(Bidirectional));
        assert!(!SyncOp::Upload.applies_to(Download));
        assert!(
            SyncOp::Download.applies_to(Download) && SyncOp::Download.applies_to(Bidirectional)
        );
        assert!(!SyncOp::Download.applies_to(Upload));
    }

    #[test]
    fn env_describes_the_remote_and_argv_carries_no_secret() {
        let s = sink(true, Some("http://127.0.0.1:9000"));
        let inherited = [
            ("PATH", "/usr/bin"),
            ("HOME", "/root"),
            ("RCLONE_DRY_RUN", "true"),
            ("RCLONE_CONFIG", "/root/.config/rclone/rclone.conf"),
            ("AWS_SECRET_ACCESS_KEY", "ambient"),
            ("HTTPS_PROXY", "http://proxy:3128"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let env = env_map(&rclone_env(&s, inherited));
        assert_eq!(env["RCLONE_CONFIG"], "");
        assert_eq!(env["RCLONE_CONFIG_BOILERHOUSE_TYPE"], "s3");
        assert_eq!(env["RCLONE_CONFIG_BOILERHOUSE_PROVIDER"], "Other");
        assert_eq!(
            env["RCLONE_CONFIG_BOILERHOUSE_ACCESS_KEY_ID"],
            "AKIAEXAMPLEKEY"
        );
        assert_eq!(
            env["RCLONE_CONFIG_BOILERHOUSE_SECRET_ACCESS_KEY"],
            "s3cr3t/Value+xyz"
        );
        assert_eq!(env["RCLONE_CONFIG_BOILERHOUSE_ENV_AUTH"], "false");
        assert_eq!(env["RCLONE_CONFIG_BOILERHOUSE_REGION"], "eu-west-1");
        assert_eq!(
            env["RCLONE_CONFIG_BOILERHOUSE_ENDPOINT"],
            "http://127.0.0.1:9000"
        );
        assert_eq!(env["RCLONE_CONFIG_BOILERHOUSE_FORCE_PATH_STYLE"], "true");
        assert_eq!(env["PATH"], "/usr/bin");
        assert_eq!(env["HTTPS_PROXY"], "http://proxy:3128");
        // Inherited rclone settings, HOME and ambient AWS credentials stay out.
        assert!(!env.contains_key("RCLONE_DRY_RUN"));
        assert!(!env.contains_key("HOME"));
        assert!(!env.contains_key("AWS_SECRET_ACCESS_KEY"));

        let args = transfer_args(
            "sync",
            OsStr::new("/state/c1"),
            OsStr::new(&remote_path(&s, "alice", "")),
            Some("*.db"),
            &s.rclone_flags,
        );
        let argv: Vec<String> = args.iter().map(|a| a.to_string_lossy().into()).collect();
        for secret in secret_values(&s) {
            assert!(argv.iter().all(|a| !a.contains(&secret)), "{argv:?}");
        }
        assert!(argv
            .iter()
            .all(|a| !a.starts_with("--s3-") && !a.starts_with(":s3")));
        assert_eq!(
            &argv[..3],
            [
                "sync",
                "/state/c1",
                "boilerhouse:state-bucket/tenants/alice/"
            ]
        );
        let include = argv.iter().position(|a| a == "--include").unwrap();
        assert_eq!(argv[include + 1], "*.db");
        // Operator flags come last so they override the defaults.
        assert_eq!(&argv[argv.len() - 2..], ["--bwlimit", "10M"]);
    }

    #[test]
    fn env_auth_passes_ambient_aws_settings_only_without_keys() {
        let s = sink(false, None);
        let inherited = [("HOME", "/root"), ("AWS_PROFILE", "prod"), ("USER", "root")]
            .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let env = env_map(&rclone_env(&s, inherited));
        assert_eq!(env["RCLONE_CONFIG_BOILERHOUSE_ENV_AUTH"], "true");
        assert_eq!(env["RCLONE_CONFIG_BOILERHOUSE_PROVIDER"], "AWS");
        assert_eq!(env["AWS_PROFILE"], "prod");
        assert_eq!(env["HOME"], "/root");
        assert_eq!(env["PATH"], DEFAULT_PATH);
        assert!(!env.contains_key("USER"));
        assert!(!env.contains_key("RCLONE_CONFIG_BOILERHOUSE_ACCESS_KEY_ID"));
        assert!(!env.contains_key("RCLONE_CONFIG_BOILERHOUSE_ENDPOINT"));
        assert!(secret_values(&s).is_empty());
    }

    #[test]
    fn failed_connections_are_recognised_and_other_errors_are_not() {
        let mut log = RcloneLog::default();
        for (cause, unreachable) in [
            (
                r#"Put \"http://127.0.0.1:1/b\": dial tcp 127.0.0.1:1: connect: connection refused"#,
                true,
            ),
            (
                r#"Get \"http://s3.invalid/b\": dial tcp: lookup s3.invalid on 10.0.0.2:53: no such host"#,
                true,
            ),
            (
                r#"Get \"http://10.9.9.9/b\": dial tcp 10.9.9.9:80: i/o timeout"#,
                true,
            ),
            (
                r#"Get \"http://10.9.9.9/b\": dial tcp 10.9.9.9:80: connect: no route to host"#,
                true,
            ),
            (
                r#"Put \"http://h/b\": read tcp 1.2.3.4:5->6.7.8.9:80: read: connection reset by peer"#,
                false,
            ),
            (
                "StatusCode: 500, api error InternalError: Internal Error",
                false,
            ),
            (
                "StatusCode: 403, api error AccessDenied: dial tcp is not the cause",
                false,
            ),
        ] {
            let line = format!(
                r#"{{"level":"error","msg":"Failed to copy: operation error S3: PutObject, {cause}"}}"#
            );
            assert_eq!(log.push(&line, &[]), unreachable, "{line}");
        }
        // Only errors count, however they read.
        let notice =
            r#"{"level":"notice","msg":"dial tcp 127.0.0.1:1: connect: connection refused"}"#;
        assert!(!log.push(notice, &[]));
    }

    #[test]
    fn stats_and_errors_are_parsed_from_the_json_log() {
        let secrets = vec!["AKIAEXAMPLEKEY".to_owned(), "s3cr3t/Value+xyz".to_owned()];
        let mut log = RcloneLog::default();
        for line in [
            r#"{"time":"t","level":"info","msg":"Copied (new)","size":3,"object":"a.txt"}"#,
            r#"{"time":"t","level":"error","msg":"Attempt 1/2 failed with 1 errors and: denied for AKIAEXAMPLEKEY","source":"cmd/cmd.go:283"}"#,
            r#"{"time":"t","level":"error","msg":"open x: permission denied","object":"x/pwn","objectType":"*s3.Object"}"#,
            r#"{"time":"t","level":"notice","msg":"\nTransferred: 6 B / 6 B\n","stats":{"bytes":6,"checks":0,"errors":1,"transfers":2,"lastError":"x"}}"#,
            r#"{"time":"t","level":"notice","msg":"Failed to copy: s3cr3t/Value+xyz leaked?"}"#,
            "2026/11/29 09:20:35 NOTICE: Fatal error: unknown flag: --frobnicate",
            "Usage:",
            "",
        ] {
            assert!(!log.push(line, &secrets), "not a failed connection: {line}");
        }
        assert_eq!(
            log.stats,
            Some(RcloneStats {
                bytes: 6,
                transfers: 2
            })
        );
        assert_eq!(
            log.errors,
            [
                "Attempt 1/2 failed with 1 errors and: denied for ***",
                "x/pwn: open x: permission denied",
                "Failed to copy: *** leaked?",
                "2026/11/29 09:20:35 NOTICE: Fatal error: unknown flag: --frobnicate",
            ]
        );
        assert!(summarize(&log.errors).contains("Fatal error"));
    }

    #[test]
    fn error_lines_are_bounded() {
        let mut log = RcloneLog::default();
        for i in 0..20 {
            log.push(
                &format!(r#"{{"level":"error","msg":"e{i} {}"}}"#, "x".repeat(1000)),
                &[],
            );
        }
        assert_eq!(log.errors.len(), MAX_ERROR_LINES);
        assert!(log.errors[0].starts_with("e15 "));
        assert!(log
            .errors
            .iter()
            .all(|e| e.chars().count() <= MAX_ERROR_CHARS + 1));
        // The same line twice is kept once.
        let mut log = RcloneLog::default();
        log.push(r#"{"level":"error","msg":"same"}"#, &[]);
        log.push(r#"{"level":"error","msg":"same"}"#, &[]);
        assert_eq!(log.errors, ["same"]);
    }

    #[test]
    fn probe_lists_only_what_it_needs() {
        let args: Vec<String> = probe_args("boilerhouse:b/t/a", None, &[])
            .iter()
            .map(|a| a.to_string_lossy().into())
            .collect();
        assert_eq!(&args[..4], ["lsf", "boilerhouse:b/t/a", "--max-depth", "1"]);
        let args: Vec<String> = probe_args("boilerhouse:b/t/a", Some("*.db"), &[])
            .iter()
            .map(|a| a.to_string_lossy().into())
            .collect();
        assert_eq!(&args[2..6], ["-R", "--files-only", "--include", "*.db"]);
    }

    #[test]
    fn local_inspection_never_follows_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        assert_eq!(inspect_local(&state, "").unwrap(), LocalState::Missing);
        std::fs::create_dir_all(state.join("a/b")).unwrap();
        assert_eq!(inspect_local(&state, "a/b").unwrap(), LocalState::Empty);
        assert_eq!(inspect_local(&state, "a/c").unwrap(), LocalState::Missing);
        assert_eq!(inspect_local(&state, "").unwrap(), LocalState::NonEmpty);
        std::fs::write(state.join("f"), b"x").unwrap();
        assert!(inspect_local(&state, "f")
            .unwrap_err()
            .contains("not a directory"));
        std::os::unix::fs::symlink(tmp.path(), state.join("link")).unwrap();
        assert!(inspect_local(&state, "link")
            .unwrap_err()
            .contains("symbolic link"));
        assert!(inspect_local(&state, "link/state")
            .unwrap_err()
            .contains("symbolic link"));
    }

    #[test]
    fn sdk_request_ids_are_dropped_from_errors() {
        let line = r#"{"level":"error","msg":"Failed to copy: operation error S3: PutObject, https response error StatusCode: 500, RequestID: AF0D3481, HostID: QUYwRDM0ODE1OUY3QTMyQg==, api error InternalError: Internal Error"}"#;
        let mut log = RcloneLog::default();
        log.push(line, &[]);
        assert_eq!(
            log.errors,
            ["Failed to copy: operation error S3: PutObject, https response error StatusCode: 500, api error InternalError: Internal Error"]
        );
    }

    #[test]
    fn the_endpoint_checked_for_connections_is_the_one_rclone_uses() {
        let no_env = |_: &str| None;
        let mut s = sink(true, Some("http://127.0.0.1:9000"));
        assert_eq!(endpoint_address(&s, no_env).unwrap(), "127.0.0.1:9000");
        for (endpoint, address) in [
            ("http://minio.local/", "minio.local:80"),
            ("https://s3.example.com/x?y", "s3.example.com:443"),
            ("s3.example.com", "s3.example.com:443"),
            ("http://[::1]:9000", "[::1]:9000"),
            ("https://[::1]", "[::1]:443"),
        ] {
            s.endpoint = Some(endpoint.into());
            assert_eq!(endpoint_address(&s, no_env).unwrap(), address, "{endpoint}");
        }
        let aws = sink(false, None);
        assert_eq!(
            endpoint_address(&aws, no_env).unwrap(),
            "s3.eu-west-1.amazonaws.com:443"
        );
        // Behind a proxy rclone never connects to the endpoint itself.
        let proxied = |name: &str| (name == "HTTPS_PROXY").then(|| OsString::from("http://p:3128"));
        assert_eq!(endpoint_address(&s, proxied), None);
        let empty = |name: &str| (name == "HTTPS_PROXY").then(OsString::new);
        assert!(endpoint_address(&s, empty).is_some());
    }

    #[tokio::test]
    async fn a_refused_connection_is_reported_in_rclones_words() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let err = check_connect(&format!("127.0.0.1:{port}"))
            .await
            .unwrap_err();
        assert!(err.contains("connection refused"), "{err}");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap().to_string();
        assert_eq!(check_connect(&open).await, Ok(()));
    }

    #[test]
    fn shorten_cuts_on_char_boundaries() {
        assert_eq!(shorten("héllo", 2), "hé…");
        assert_eq!(shorten("hé", 2), "hé");
    }

    #[test]
    fn claim_status_starts_idle_and_serializes_in_camel_case() {
        let status = ClaimSync::new().status();
        assert_eq!(status.state, SyncState::Idle);
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["state"], "idle");
        assert!(json["lastSyncAt"].is_null() && json["lastError"].is_null());
        assert_eq!(json["bytesTransferred"], 0);
        let r = TransferResult {
            path: "/".into(),
            direction: SyncOp::Download,
            success: true,
            bytes_transferred: 1,
            files_transferred: 1,
            errors: vec![],
        };
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["direction"], "download");
        assert_eq!(json["filesTransferred"], 1);
    }

    #[test]
    fn cancelled_sync_leaves_an_error_status() {
        let status = StdMutex::new(SyncStatus::default());
        {
            let _in_progress = InProgress::begin(&status, SyncOp::Upload);
            assert_eq!(lock(&status).state, SyncState::Syncing);
        }
        let s = lock(&status).clone();
        assert_eq!(s.state, SyncState::Error);
        assert!(s.last_error.unwrap().contains("upload was cancelled"));
    }
}
