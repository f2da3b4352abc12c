//! The engine: one rclone process per mapping, under the node-wide cap and each
//! transfer's timeout, stopped at the endpoint's first refused connection and when
//! the daemon dies.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::cache::StateCache;
use super::endpoint::*;
use super::fetch::{fetch, FetchError};
use super::listing::{parse_lsjson, Lister, RemoteObject};
use super::local::*;
use super::rclone::*;
use super::{SyncError, SyncOp, TransferResult, VersionError, VERSION_TIMEOUT};
use crate::workload::spec::{SinkSpec, SyncMapping, SyncMode, SyncSpec};

/// Runs rclone for the whole daemon: at most `concurrency` processes at once, each
/// bounded by `timeout`. Cheap to clone.
#[derive(Clone)]
pub struct SyncEngine {
    inner: Arc<EngineInner>,
    cache: Option<Arc<StateCache>>,
}

struct EngineInner {
    rclone_bin: PathBuf,
    /// The resident S3 client: the engine's own downloads (see [`super::fetch`]) and
    /// the state cache's listings share its connections.
    lister: Lister,
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
                lister: Lister::default(),
                permits: Semaphore::new(concurrency.max(1)),
                timeout,
            }),
            cache: None,
        }
    }

    /// The engine with a state cache: claims restore from it when the remote still
    /// holds what it holds, releases fill it (see [`super::cache`]).
    pub fn with_state_cache(mut self, cache: Arc<StateCache>) -> Self {
        self.cache = Some(cache);
        self
    }

    pub(super) fn lister(&self) -> &Lister {
        &self.inner.lister
    }

    pub fn state_cache(&self) -> Option<&Arc<StateCache>> {
        self.cache.as_ref()
    }

    /// `rclone lsjson -R --files-only --hash` of one mapping's remote: the state
    /// cache's check for sinks its resident client cannot list. Bounded by the
    /// node-wide cap like a transfer, and by the sync timeout.
    pub(super) async fn lsjson(
        &self,
        sink: &SinkSpec,
        tenant: &str,
        rel: &str,
    ) -> Result<Vec<RemoteObject>, String> {
        let remote = remote_path(sink, tenant, rel);
        let _permit = self
            .inner
            .permits
            .acquire()
            .await
            .map_err(|_| "the sync engine is shut down".to_owned())?;
        let env = rclone_env(sink, std::env::vars_os());
        let mut cmd = self.command(&env, None);
        cmd.args(["lsjson", remote.as_str(), "-R", "--files-only", "--hash"])
            .args(["--hash-type", "md5"])
            .args(BASE_FLAGS)
            .args(&sink.rclone_flags)
            .stdout(Stdio::piped());
        let child = cmd.spawn().map_err(|e| {
            format!(
                "cannot start rclone ({}): {e}",
                self.inner.rclone_bin.display()
            )
        })?;
        let out = tokio::time::timeout(self.inner.timeout, child.wait_with_output())
            .await
            .map_err(|_| format!("rclone lsjson {remote} timed out"))?
            .map_err(|e| format!("waiting for rclone lsjson failed: {e}"))?;
        match out.status.code() {
            Some(0) => parse_lsjson(&String::from_utf8_lossy(&out.stdout)),
            // Nothing under the prefix yet.
            Some(EXIT_DIR_NOT_FOUND) => Ok(Vec::new()),
            _ => {
                let mut log = RcloneLog::default();
                let secrets = secret_values(sink);
                for line in String::from_utf8_lossy(&out.stderr).lines() {
                    log.push(line, &secrets);
                }
                Err(format!(
                    "rclone lsjson {remote} {}: {}",
                    describe_status(out.status),
                    summarize(&log.errors)
                ))
            }
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

        if op == SyncOp::Download && local_state != LocalState::NonEmpty {
            if let Some(done) = self
                .own_download(ctx, mapping, &rel, started, deadline)
                .await
            {
                return Ok(done);
            }
        }

        let (src, dst): (&OsStr, &OsStr) = match op {
            SyncOp::Upload => (local.as_os_str(), OsStr::new(&remote)),
            SyncOp::Download => (OsStr::new(&remote), local.as_os_str()),
        };
        let args = transfer_args(
            verb,
            src,
            dst,
            mapping.pattern.as_deref(),
            op == SyncOp::Download && local_state != LocalState::NonEmpty,
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

    /// The engine's own download of a mapping into an empty dir (see
    /// [`super::fetch`]); None when rclone is to do it: not tried, or failed and
    /// undone (rclone then says in its own words whether the failure is real).
    async fn own_download(
        &self,
        ctx: &RunCtx<'_>,
        mapping: &SyncMapping,
        rel: &str,
        started: Instant,
        deadline: Instant,
    ) -> Option<TransferResult> {
        let tenant = ctx.tenant;
        let created = super::fetch::first_missing(&ctx.state_dir, rel);
        let fetched = fetch(
            &self.inner.lister,
            &ctx.spec.sink,
            tenant,
            mapping,
            rel,
            &ctx.state_dir,
            ctx.run_as,
        );
        let failed = match tokio::time::timeout_at(deadline, fetched).await {
            Ok(Ok(done)) => {
                crate::metrics::own_download(true);
                let elapsed_ms = started.elapsed().as_millis();
                tracing::info!(tenant, path = %mapping.path, op = %ctx.op, bytes = done.bytes, files = done.files, elapsed_ms, by = "engine", "sync done");
                return Some(TransferResult {
                    path: mapping.path.clone(),
                    direction: ctx.op,
                    success: true,
                    bytes_transferred: done.bytes,
                    files_transferred: done.files,
                    errors: Vec::new(),
                });
            }
            Ok(Err(FetchError::NotStarted(why))) => {
                tracing::debug!(tenant, path = %mapping.path, why, "download by rclone");
                return None;
            }
            Ok(Err(FetchError::Failed(e))) => e,
            Err(_) => "the sync timeout passed".to_owned(),
        };
        crate::metrics::own_download(false);
        // What it wrote goes (also mid-way: a timed-out fetch was dropped), so that
        // rclone starts from the directory as it was.
        let (dir, rel) = (ctx.state_dir.clone(), rel.to_owned());
        let _ =
            tokio::task::spawn_blocking(move || super::fetch::undo(&dir, &rel, created.as_deref()))
                .await;
        tracing::info!(tenant, path = %mapping.path, error = %failed, "the engine's own download failed; rclone does it");
        None
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
