//! The slow work of a pool, each piece an async function the actor runs in a
//! spawned task so it never waits on Docker, the disk or rclone itself: creating a
//! container, removing one, provisioning a claim (secrets, restore, ledger record),
//! releasing one (freeze, upload, forget, wipe, recycle), and one sync transfer.
//! They take what they need by value or reference and report by return value; the
//! actor alone changes the pool's records.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use chrono::{DateTime, Utc};

use super::claims::{Asker, SecretsGate};
use super::containers::ContainerInfo;
use super::error::PoolError;
use super::handle::{ClaimGrant, ClaimTimings, Recycled, Secrets};
use super::readiness::{output_tail, FIRST_LOOK, LOG_LINES};
use super::PoolContext;
use crate::activity::Event;
use crate::fsutil::{self, Owner};
use crate::ledger::ClaimRecord;
use crate::runtime::{ContainerSpec, Readiness, Runtime};
use crate::sync::{run_as, ClaimSync, RestoreSource, SyncError, SyncOp, TransferResult};
use crate::tenant::TenantId;
use crate::workload::{Recycle, SyncSpec, Workload};

/// Creates and starts a container and watches it for [`FIRST_LOOK`]: ready then, or
/// still starting (the actor waits for its health events), or an error that says why
/// it did not run, with its exit code and last output.
#[allow(clippy::too_many_arguments)]
pub(super) async fn create_container(
    ctx: &PoolContext,
    workload: &Workload,
    spec_hash: &str,
    info: &ContainerInfo,
    owner: Owner,
    image_present: &AtomicBool,
    created_at: DateTime<Utc>,
    settle: bool,
) -> Result<(String, Readiness), String> {
    let started = Instant::now();
    let dirs = info.dirs.clone();
    let made = tokio::task::spawn_blocking(move || fsutil::create_dirs(&dirs, owner))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| format!("cannot create container dirs: {e}")));
    if let Err(e) = made {
        fsutil::remove_dirs(&info.dirs);
        return Err(e);
    }
    let result = async {
        if !image_present.load(Ordering::Acquire) {
            ctx.runtime
                .ensure_image(&workload.image)
                .await
                .map_err(|e| e.to_string())?;
            image_present.store(true, Ordering::Release);
        }
        let spec = ContainerSpec::for_workload(
            workload,
            &ctx.config,
            &info.id,
            &info.dirs,
            spec_hash,
            &created_at.to_rfc3339(),
        );
        let docker_id = ctx.runtime.create_and_start(&spec).await.map_err(|e| {
            image_present.store(false, Ordering::Release);
            e.to_string()
        })?;
        match ctx
            .runtime
            .wait_ready(&docker_id, &spec.name, FIRST_LOOK)
            .await
        {
            Ok(Readiness::Ready) if settle => {
                tokio::time::sleep(FIRST_LOOK).await;
                match ctx.runtime.report(&docker_id, LOG_LINES).await {
                    Ok(r) if !r.running => {
                        let _ = ctx.runtime.remove(&docker_id).await;
                        Err(format!(
                            "container {} exited at once ({}){}",
                            spec.name,
                            r.detail,
                            output_tail(r.log_tail.as_ref())
                        ))
                    }
                    _ => Ok((docker_id, Readiness::Ready)),
                }
            }
            Ok(readiness) => Ok((docker_id, readiness)),
            Err(e) => {
                let message = match ctx.runtime.report(&docker_id, LOG_LINES).await {
                    Ok(r) if !r.running => format!(
                        "container {} exited at once ({}){}",
                        spec.name,
                        r.detail,
                        output_tail(r.log_tail.as_ref())
                    ),
                    _ => e.to_string(),
                };
                let _ = ctx.runtime.remove(&docker_id).await;
                Err(message)
            }
        }
    }
    .await;
    crate::metrics::container_created(workload.id.as_str(), result.is_ok(), started.elapsed());
    match &result {
        Ok(_) => {
            tracing::debug!(pool = %workload.id, container = %info.id, elapsed_ms = started.elapsed().as_millis() as u64, "container ready")
        }
        Err(_) => fsutil::remove_dirs(&info.dirs),
    }
    result
}

pub(super) async fn destroy_container(runtime: &dyn Runtime, info: &ContainerInfo) {
    if let Some(docker_id) = &info.docker_id {
        if let Err(e) = runtime.remove(docker_id).await {
            tracing::warn!(container = %info.id, error = %e, "cannot remove container");
        }
    }
    let dirs = info.dirs.clone();
    let _ = tokio::task::spawn_blocking(move || fsutil::remove_dirs(&dirs)).await;
}

/// Writes the first caller's secrets, restores state (from the local state cache when
/// the remote still holds what it holds, else from S3) and records the claim durably,
/// in that order, before anyone is answered, timing each. No Docker call.
#[allow(clippy::too_many_arguments)]
pub(super) async fn prepare_claim(
    ctx: &PoolContext,
    workload: &Workload,
    tenant: &TenantId,
    info: &ContainerInfo,
    sync: &ClaimSync,
    gate: &SecretsGate,
    secrets: Option<Secrets>,
    owner: Owner,
    record: &ClaimRecord,
) -> Result<ClaimTimings, PoolError> {
    let mut timings = ClaimTimings::default();
    let started = Instant::now();
    if let Some(secrets) = secrets {
        gate.write(&info.dirs.secrets, secrets, owner).await?;
    }
    timings.secrets = started.elapsed();
    if let Some(spec) = workload.sync.as_ref().filter(|s| s.policy.on_claim) {
        let started = Instant::now();
        let (pool, dir) = (workload.id.as_str(), &info.dirs.state);
        timings.restore_source = restore(ctx, sync, spec, pool, tenant, dir, owner)
            .await
            .map_err(|e| {
                PoolError::SyncFailed(format!(
                    "restoring tenant {tenant}'s state failed, so the claim was not made: {e}"
                ))
            })?;
        timings.restore = started.elapsed();
    }
    let started = Instant::now();
    ctx.ledger.put(record).await.map_err(|e| {
        PoolError::Ledger(format!(
            "the claim was not made: its record cannot be written to the claim ledger in {} \
             (BOILERHOUSE_DATA_DIR): {e}",
            ctx.config.data_dir.display()
        ))
    })?;
    timings.ledger = started.elapsed();
    Ok(timings)
}

/// Restores a claim's state: from the state cache if its entry still equals the
/// remote (see `crate::sync::cache`), else by a download as without a cache.
async fn restore(
    ctx: &PoolContext,
    sync: &ClaimSync,
    spec: &SyncSpec,
    pool: &str,
    tenant: &TenantId,
    dir: &Path,
    owner: Owner,
) -> Result<RestoreSource, SyncError> {
    if let Some(cache) = ctx.sync.state_cache() {
        let restored = cache
            .restore(&ctx.sync, spec, pool, tenant.as_str(), dir, run_as(owner))
            .await;
        match restored {
            Ok(copied) => {
                crate::metrics::state_cache_hit(pool, copied.bytes);
                sync.restored(RestoreSource::Cache, Some(copied));
                ctx.activity.record(
                    Event::new("sync.completed", pool)
                        .tenant(tenant.as_str())
                        .message(format!(
                            "download from the state cache ({} files, {} bytes)",
                            copied.files, copied.bytes
                        )),
                );
                return Ok(RestoreSource::Cache);
            }
            Err(miss) => {
                crate::metrics::state_cache_miss(pool, miss.reason.as_str());
                tracing::debug!(pool, tenant = %tenant, reason = miss.reason.as_str(), detail = %miss.detail, "state cache miss: downloading");
            }
        }
    }
    run_sync(ctx, sync, spec, pool, tenant, dir, SyncOp::Download, owner).await?;
    sync.restored(RestoreSource::S3, None);
    Ok(RestoreSource::S3)
}

/// Freeze, upload, forget, recycle — in that order, and nothing is wiped unless the
/// upload succeeded (or the caller asked for no sync).
#[allow(clippy::too_many_arguments)]
pub(super) async fn release_claim(
    ctx: &PoolContext,
    workload: &Workload,
    tenant: &TenantId,
    info: &ContainerInfo,
    sync: &ClaimSync,
    secrets: &SecretsGate,
    do_sync: bool,
    owner: Owner,
) -> Result<Recycled, PoolError> {
    let runtime = ctx.runtime.as_ref();
    let docker_id = info.docker_id.clone().unwrap_or_default();
    let uploads = do_sync && workload.sync.as_ref().is_some_and(|s| s.policy.on_release);
    // Freeze for a consistent upload snapshot, and so no tenant write races a wipe.
    // A container that is destroyed without an upload needs neither (saves ~25 ms).
    // A dead container cannot be paused; its files are still a consistent snapshot.
    let freeze = uploads || workload.pool.recycle != Recycle::Destroy;
    let paused = freeze && runtime.pause(&docker_id).await.is_ok();
    let mut uploaded = None;
    if let Some(spec) = workload
        .sync
        .as_ref()
        .filter(|s| do_sync && s.policy.on_release)
    {
        let (pool, dir) = (workload.id.as_str(), &info.dirs.state);
        if let Err(e) = run_sync(ctx, sync, spec, pool, tenant, dir, SyncOp::Upload, owner).await {
            if paused {
                let _ = runtime.unpause(&docker_id).await;
            }
            return Err(PoolError::SyncFailed(format!(
                "saving tenant {tenant}'s state failed, so the release was not done and the claim is intact: {e}"
            )));
        }
        // What the remote holds now, for the state cache's manifest. Only a paused
        // container's files can be compared with it (a running one may change).
        if let Some(cache) = ctx.sync.state_cache().filter(|c| c.enabled() && paused) {
            match cache.listing(&ctx.sync, spec, tenant.as_str()).await {
                Ok(listing) => uploaded = Some((cache.clone(), spec, listing)),
                Err(e) => {
                    crate::metrics::state_cache_fill(pool, false, 0);
                    tracing::debug!(pool, tenant = %tenant, error = %e, "not cached: the remote cannot be listed");
                }
            }
        }
    }
    // Forget the claim durably before wiping: a crash from here on can only leave an
    // unclaimed container, never a claim whose state was wiped.
    ctx.ledger
        .remove(workload.id.as_str(), tenant.as_str())
        .await
        .map_err(|e| PoolError::Internal(format!("cannot remove the claim record: {e}")))?;
    // No secrets write of this claim may land after the wipe.
    secrets.close().await;
    // Still paused, not yet wiped, and no longer claimed: a crash from here on loses
    // nothing, and the files are the ones just uploaded.
    if let Some((cache, spec, listing)) = uploaded {
        let pool = workload.id.as_str();
        match cache
            .store(
                spec,
                pool,
                tenant.as_str(),
                &info.dirs.state,
                listing,
                run_as(owner),
            )
            .await
        {
            Ok(copied) => crate::metrics::state_cache_fill(pool, true, copied.bytes),
            Err(e) => {
                crate::metrics::state_cache_fill(pool, false, 0);
                tracing::debug!(pool, tenant = %tenant, error = %e, "not cached");
            }
        }
    }
    match workload.pool.recycle {
        Recycle::Destroy => Ok(Recycled::Removing),
        Recycle::Reuse | Recycle::Restart => {
            let dirs = info.dirs.clone();
            let wiped = tokio::task::spawn_blocking(move || {
                fsutil::wipe_contents(&dirs.state)?;
                fsutil::wipe_contents(&dirs.secrets)
            })
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
            let ready = match wiped {
                Err(e) => Err(format!("wipe failed: {e}")),
                Ok(()) => {
                    if paused {
                        let _ = runtime.unpause(&docker_id).await;
                    }
                    if workload.pool.recycle == Recycle::Restart {
                        match runtime.restart(&docker_id).await {
                            Ok(()) => runtime
                                .wait_ready(&docker_id, &info.name, FIRST_LOOK)
                                .await
                                .map_err(|e| e.to_string()),
                            Err(e) => Err(e.to_string()),
                        }
                    } else {
                        Ok(Readiness::Ready)
                    }
                }
            };
            match ready {
                Ok(Readiness::Ready) => Ok(Recycled::Idle),
                Ok(Readiness::Starting(timings)) => Ok(Recycled::Starting(timings)),
                Err(e) => {
                    tracing::warn!(container = %info.id, error = %e, "recycling failed; removing the container");
                    Ok(Recycled::Removing)
                }
            }
        }
    }
}

/// Runs one transfer for a claim, recording activity events and metrics.
#[allow(clippy::too_many_arguments)]
pub(super) async fn run_sync(
    ctx: &PoolContext,
    cell: &ClaimSync,
    spec: &SyncSpec,
    pool: &str,
    tenant: &TenantId,
    state_dir: &Path,
    op: SyncOp,
    owner: Owner,
) -> Result<Vec<TransferResult>, SyncError> {
    let direction = match op {
        SyncOp::Upload => "upload",
        SyncOp::Download => "download",
    };
    ctx.activity.record(
        Event::new("sync.started", pool)
            .tenant(tenant.as_str())
            .message(direction),
    );
    let started = Instant::now();
    // A fenced cluster node writes no tenant state: another node may own it now.
    let held = match op {
        SyncOp::Upload => ctx.fence.held(),
        SyncOp::Download => None,
    };
    let result = match held {
        Some(reason) => Err(SyncError::Held {
            tenant: tenant.to_string(),
            op,
            reason,
        }),
        None => {
            cell.run(&ctx.sync, spec, tenant.as_str(), state_dir, op, owner)
                .await
        }
    };
    crate::metrics::sync(pool, direction, result.is_ok(), started.elapsed());
    let event = match &result {
        Ok(_) => Event::new("sync.completed", pool).message(direction),
        Err(e) => Event::new("sync.failed", pool).message(format!("{direction}: {e}")),
    };
    ctx.activity.record(event.tenant(tenant.as_str()));
    result
}

/// Answers a caller once its secrets (if any) are written; a failed write fails
/// only that caller, and the claim keeps the files it had.
pub(super) fn answer_after_secrets(
    asker: Asker,
    grant: Result<ClaimGrant, PoolError>,
    gate: SecretsGate,
) {
    let Ok(grant) = grant else {
        asker.answer(grant);
        return;
    };
    let Some(secrets) = asker.secrets else {
        let _ = asker.reply.send(Ok(grant));
        return;
    };
    let reply = asker.reply;
    tokio::spawn(async move {
        let dir = grant.container.dirs.secrets.clone();
        let written = gate.write(&dir, secrets, grant.owner).await;
        let _ = reply.send(written.map(|()| grant));
    });
}
