//! Benchmark: a claim that restores a 10 MB / 1,000-file state from S3, and the
//! release that uploads it again, beside plain `rclone copy` of the same data measured
//! in the same run against the same endpoint. Figures are printed, never asserted.
//!
//! Set-up: a local S3 endpoint (`rclone serve s3`, the integration tests' fixture), N
//! tenants seeded with 1,000 files of 10 KiB in nested directories under
//! `tenants/<tenant>/` of bucket `bh` (and the same objects under
//! `mirror/<tenant>/{default,engine,previous}/`, for the plain mirrors to overwrite),
//! and the release daemon (`target/release/boilerhouse`, built by `cargo bench`) with
//! its own instance label, temporary directories and a mirrored (`/`, bidirectional,
//! `sync`) workload on the test image, min pool size 2.
//!
//! Each sample, on a pool with its two idle containers and no container being created
//! or removed (the bench waits for that before every measurement):
//! - `rclone version` and `rclone lsf` of an empty prefix: rclone's process start;
//! - four restores of the tenant's data, in an order that rotates between samples:
//!   `POST /tenants/<t>/claim` (the HTTP round trip is the restore; the files are
//!   counted in the container's state directory), and plain `rclone copy` remote →
//!   empty dir with rclone's default flags, with the engine's (`BASE_FLAGS` +
//!   `FRESH_DOWNLOAD_FLAGS`, as it restores a claim) and with the engine's previous
//!   flags (`previous_flags()`, before the sweep of 2026-12-03);
//! - every file is changed from inside the container (`docker exec`, not timed); the
//!   three plain copies are uploaded to new prefixes `new/<tenant>/…` (default /
//!   engine / previous flags), then changed the same way;
//! - four mirrors of 1,000 changed files onto their old objects, rotated likewise:
//!   `POST /tenants/<t>/release` (pause + upload + bookkeeping), and plain
//!   `rclone sync` onto `mirror/<tenant>/…` with default, engine and previous flags.
//!
//! - the tenant comes back: a timed claim that must be served from the state cache
//!   (`timings.restoreSource == "cache"`, every changed file in the state dir), a
//!   release without upload; then one object is overwritten in the bucket (same size)
//!   and a timed claim must download; a release without upload.
//!
//! The S3 server's log names the object of every PUT it failed; those are counted per
//! upload (the fixture's server fails some overwrites with HTTP 500, and a retry pass
//! costs time).
//!
//! Plain rclone runs as the workload's user, like the daemon runs it when root, with
//! the remote passed through `RCLONE_CONFIG_*` variables like the engine does.
//!
//! The daemon logs each transfer's duration (`sync done`, `elapsed_ms`), which splits
//! a claim or release into rclone's share and the daemon's own. The engine's flags are
//! taken from `boilerhouse::sync::BASE_FLAGS`, so the baseline follows the engine.
//!
//! The table is printed as markdown and written to `target/bench/sync_restore.json`
//! and `.md` (with the daemon's and the S3 server's logs beside them).
//! `SYNC_BENCH_SAMPLES` sets N (default 12); a warm-up claim and release come first
//! and are not counted; after about 190 s no new sample starts once 10 are in. Every
//! container of the bench's instance is removed at the end, also after an error, a
//! panic or Ctrl-C. Run with `cargo bench --bench sync_restore` (after
//! `make provision`, which builds the test image and installs rclone in `.tools/bin`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use boilerhouse_testkit::bench::{bench_main, BenchResult};
use boilerhouse_testkit::s3::S3Server;
use boilerhouse_testkit::{docker, require_image, Daemon};
use serde_json::{json, Value};

const BUCKET: &str = "bh";
const POOL: &str = "sync-bench";
const MIN_IDLE: u64 = 2;
const FILES: usize = 1_000;
const FILE_SIZE: usize = 10 * 1024;
const DEFAULT_SAMPLES: usize = 12;
/// The workload's user; rclone runs as it (daemon and baseline) when the bench is root.
const USER: (u32, u32) = (1000, 1000);
/// No new sample starts after this once `MIN_SAMPLES` are in, so the run stays within
/// about four minutes on a busy machine.
const TIME_BUDGET: Duration = Duration::from_secs(190);
const MIN_SAMPLES: usize = 10;
/// The product owner's target: claim and release within this factor of plain rclone.
const TARGET_RATIO: f64 = 1.2;

fn main() -> ExitCode {
    bench_main("sync_restore", run)
}

/// Everything measured for one sample; None where the step failed and was re-run
/// untimed.
#[derive(Default)]
struct Sample {
    tenant: String,
    claim: Option<Duration>,
    release: Option<Duration>,
    /// rclone's share inside the daemon, from its log.
    claim_rclone: Option<Duration>,
    release_rclone: Option<Duration>,
    version: Option<Duration>,
    lsf_empty: Option<Duration>,
    dl_default: Option<Duration>,
    dl_engine: Option<Duration>,
    dl_previous: Option<Duration>,
    up_default: Option<Duration>,
    up_engine: Option<Duration>,
    up_previous: Option<Duration>,
    sync_default: Option<Duration>,
    sync_engine: Option<Duration>,
    sync_previous: Option<Duration>,
    /// The tenant's next claim, served from the state cache.
    returning: Option<Duration>,
    /// A claim after another writer changed one object: a download.
    after_change: Option<Duration>,
}

async fn run() -> BenchResult<()> {
    let started = Instant::now();
    let load_start = loadavg();
    let samples_wanted = match std::env::var("SYNC_BENCH_SAMPLES") {
        Ok(v) => v
            .parse::<usize>()
            .map_err(|_| format!("SYNC_BENCH_SAMPLES={v:?} is not a number"))?,
        Err(_) => DEFAULT_SAMPLES,
    };
    let image = std::env::var("BOILERHOUSE_TEST_IMAGE")
        .unwrap_or_else(|_| "boilerhouse-test:busybox".into());
    require_image(&image)?;

    step("starting the S3 endpoint");
    // An endpoint that keeps each object's MD5 from its upload, as S3 does (see
    // `start_direct_caching`): seeded as files, then restarted to read them.
    let mut s3 = S3Server::start_direct_caching().await;
    let rclone_bin = s3.rclone_bin().to_owned();
    std::fs::create_dir_all(s3.root_dir().join(BUCKET))?;
    let run_as = running_as_root().then_some(USER);
    let engine_flags = engine_flags();
    let download_flags = engine_download_flags();
    let previous_flags = previous_flags();
    let rclone = Rclone {
        bin: rclone_bin.clone(),
        env: remote_env(&s3),
        run_as,
    };
    let rclone_version = rclone.version_line();

    step(&format!(
        "seeding {} tenants × {FILES} files × {FILE_SIZE} B",
        samples_wanted + 1
    ));
    let tenants: Vec<String> = (0..=samples_wanted)
        .map(|i| {
            if i == 0 {
                "warmup".to_owned()
            } else {
                format!("tenant-{i:02}")
            }
        })
        .collect();
    for tenant in &tenants {
        // The tenant's state, and the same objects twice more for the plain mirrors to
        // overwrite: written as files like the tenant's, never through S3.
        let bucket = s3.root_dir().join(BUCKET);
        seed_tenant(&bucket.join("tenants").join(tenant), tenant)?;
        for flags in ["default", "engine", "previous"] {
            seed_tenant(&bucket.join("mirror").join(tenant).join(flags), tenant)?;
        }
    }
    s3.stop();
    s3.start().await;

    // The daemon removes this instance's containers when it drops.
    let instance = format!("bench-sync-{:08x}", rand::random::<u32>());
    let root = tempfile::Builder::new()
        .prefix("bh-bench-sync-")
        .tempdir()?;
    let daemon = start_daemon(root.path(), &instance, &image, &rclone_bin, &s3).await?;
    step("waiting for the pool to fill");
    daemon.wait_settled(0).await?;

    let mut bench = Bench {
        daemon: &daemon,
        rclone: &rclone,
        engine_flags: &engine_flags,
        download_flags: &download_flags,
        previous_flags: &previous_flags,
        s3: &s3,
        failures: Vec::new(),
    };
    let mut samples = Vec::new();
    let mut cut_short = false;
    // The warm-up (claim and release only) takes the first-use costs: the daemon's
    // first rclone spawn as the user, Docker's first exec and pause in the container.
    step("warm-up (claim and release, not counted)");
    daemon.wait_settled(0).await?;
    let (_, container) = bench
        .timed("warm-up claim", || claim(&daemon, &tenants[0]))
        .await?;
    daemon.wait_settled(1).await?;
    change_every_file(&container, &tenants[0])?;
    bench
        .timed("warm-up release", || release(&daemon, &tenants[0], &s3))
        .await?;
    for (i, tenant) in tenants.iter().enumerate().skip(1) {
        if samples.len() >= MIN_SAMPLES && started.elapsed() > TIME_BUDGET {
            cut_short = true;
            break;
        }
        step(&format!("sample {i}/{samples_wanted} ({tenant})"));
        let work = root.path().join("baseline").join(tenant);
        let sample = one_sample(&mut bench, i, tenant, &work).await?;
        let _ = std::fs::remove_dir_all(&work);
        samples.push(sample);
    }
    if samples.is_empty() {
        return Err("no sample was measured".into());
    }
    let durations = daemon.sync_durations();
    for (sample, tenant) in samples.iter_mut().zip(tenants.iter().skip(1)) {
        // After a failed, re-run claim or release the log has the untimed rerun's.
        if let Some(d) = durations.get(tenant) {
            sample.claim_rclone = d.download.filter(|_| sample.claim.is_some());
            sample.release_rclone = d.upload.filter(|_| sample.release.is_some());
        }
    }
    let failures = std::mem::take(&mut bench.failures);

    let mut notes = vec![format!(
        "rclone runs as {} in the daemon and in the baseline",
        match run_as {
            Some((u, g)) => format!("uid {u} gid {g}"),
            None => "the bench's own user".into(),
        }
    )];
    if cut_short {
        notes.push(format!(
            "stopped after {} samples: the {}s time budget was spent",
            samples.len(),
            TIME_BUDGET.as_secs()
        ));
    }
    let meta = Meta {
        instance,
        rclone_version,
        engine_flags: engine_flags.join(" "),
        load_start,
        load_end: loadavg(),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        runtime: started.elapsed(),
        notes,
        failures,
    };
    let errors = s3_errors(&s3.log(), &s3.root_dir().join(BUCKET));
    report(&samples, &meta, &errors)?;
    // The daemon's log (its `sync done` lines carry bytes, files and durations).
    let kept = target_dir().join("bench").join("sync_restore.daemon.log");
    if let Err(e) = std::fs::copy(&daemon.daemon.log, &kept) {
        eprintln!("sync_restore: cannot keep the daemon's log: {e}");
    }
    let kept = target_dir().join("bench").join("sync_restore.s3.log");
    if let Err(e) = std::fs::write(&kept, s3.log()) {
        eprintln!("sync_restore: cannot keep the S3 server's log: {e}");
    }
    drop(daemon);
    Ok(())
}

/// The three restores of a sample, run in an order that rotates from sample to sample,
/// so no measurement always runs first (or last) on the tenant's data.
#[derive(Clone, Copy)]
enum Restore {
    Claim,
    PlainDefault,
    PlainEngine,
    PlainPrevious,
}

/// The three mirrors of changed files onto the old objects, rotated the same way.
#[derive(Clone, Copy)]
enum Mirror {
    Release,
    PlainDefault,
    PlainEngine,
    PlainPrevious,
}

const RESTORE_ORDERS: [[Restore; 4]; 4] = {
    use Restore::*;
    [
        [Claim, PlainDefault, PlainEngine, PlainPrevious],
        [PlainDefault, PlainEngine, PlainPrevious, Claim],
        [PlainEngine, PlainPrevious, Claim, PlainDefault],
        [PlainPrevious, Claim, PlainDefault, PlainEngine],
    ]
};

const MIRROR_ORDERS: [[Mirror; 4]; 4] = {
    use Mirror::*;
    [
        [Release, PlainDefault, PlainEngine, PlainPrevious],
        [PlainDefault, PlainEngine, PlainPrevious, Release],
        [PlainEngine, PlainPrevious, Release, PlainDefault],
        [PlainPrevious, Release, PlainDefault, PlainEngine],
    ]
};

/// The engine's flags before the sweep of 2026-12-03 added `--s3-no-head` (and
/// `FRESH_DOWNLOAD_FLAGS`, which the downloads here leave out): the "before" of issue
/// 14's first-restore goal, timed in the same run as today's flags.
fn previous_flags() -> Vec<String> {
    engine_flags()
        .into_iter()
        .filter(|f| f != "--s3-no-head")
        .collect()
}

/// What every sample uses, and the failures met on the way.
struct Bench<'a> {
    daemon: &'a SyncDaemon,
    rclone: &'a Rclone,
    /// `BASE_FLAGS`: uploads and mirrors.
    engine_flags: &'a [String],
    /// `BASE_FLAGS` + `FRESH_DOWNLOAD_FLAGS`: what the engine restores with.
    download_flags: &'a [String],
    previous_flags: &'a [String],
    s3: &'a S3Server,
    failures: Vec<String>,
}

impl Bench<'_> {
    /// Runs a timed step. A failure is recorded and the step runs once more, so the
    /// next steps find what they need, but its time is dropped (a rerun finds part of
    /// the work done). A second failure ends the bench.
    async fn timed<T, F, Fut>(
        &mut self,
        what: &str,
        mut step: F,
    ) -> BenchResult<(Option<Duration>, T)>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = BenchResult<(Duration, T)>>,
    {
        match step().await {
            Ok((elapsed, value)) => Ok((Some(elapsed), value)),
            Err(first) => {
                let first = first.to_string();
                eprintln!(
                    "sync_restore: {what} failed, running it again untimed: {first}\n\
                     --- S3 server log (tail) ---\n{}",
                    tail(&self.s3.log(), 20)
                );
                self.failures
                    .push(format!("{what}: {}; re-run untimed", shorten(&first, 300)));
                let (_, value) = step()
                    .await
                    .map_err(|e| format!("{what} failed twice: {first} / then: {e}"))?;
                Ok((None, value))
            }
        }
    }

    /// A timed plain rclone run.
    async fn rclone(
        &mut self,
        what: &str,
        args: &[String],
        flags: &[String],
        ok_codes: &[i32],
    ) -> BenchResult<Option<Duration>> {
        let rclone = self.rclone;
        let (elapsed, ()) = self
            .timed(what, || async move {
                rclone.time(args, flags, ok_codes).await.map(|d| (d, ()))
            })
            .await?;
        Ok(elapsed)
    }
}

/// One sample. Every measurement starts with the pool settled (no container being
/// created or removed behind it), and the tenant's remote data is pristine for all
/// three restores: the release that changes it comes after them.
async fn one_sample(
    bench: &mut Bench<'_>,
    index: usize,
    tenant: &str,
    work: &Path,
) -> BenchResult<Sample> {
    let (daemon, s3, engine_flags) = (bench.daemon, bench.s3, bench.engine_flags);
    let (download_flags, previous_flags) = (bench.download_flags, bench.previous_flags);
    daemon.wait_settled(0).await?;
    let mut s = Sample {
        tenant: tenant.to_owned(),
        ..Sample::default()
    };
    let remote = format!("boilerhouse:{BUCKET}/tenants/{tenant}/");
    let dl_default = user_dir(work, "default")?;
    let dl_engine = user_dir(work, "engine")?;
    let dl_previous = user_dir(work, "previous")?;
    let no_flags: &[String] = &[];

    s.version = bench
        .rclone("rclone version", &["version".into()], no_flags, &[0])
        .await?;
    let empty = format!("boilerhouse:{BUCKET}/empty/{tenant}/");
    // A missing prefix is "directory not found" (3) or an empty listing (0).
    s.lsf_empty = bench
        .rclone(
            "rclone lsf (empty prefix)",
            &["lsf".into(), empty],
            no_flags,
            &[0, 3],
        )
        .await?;

    let mut container = String::new();
    for restore in RESTORE_ORDERS[index % 4] {
        let (dir, flags, slot, what) = match restore {
            Restore::Claim => {
                let (elapsed, name) = bench
                    .timed(&format!("claim of {tenant}"), || claim(daemon, tenant))
                    .await?;
                (s.claim, container) = (elapsed, name);
                // The claim took an idle container; let the pool's refill finish.
                daemon.wait_settled(1).await?;
                continue;
            }
            Restore::PlainDefault => (&dl_default, no_flags, &mut s.dl_default, "default"),
            Restore::PlainEngine => (&dl_engine, download_flags, &mut s.dl_engine, "engine"),
            Restore::PlainPrevious => {
                (&dl_previous, previous_flags, &mut s.dl_previous, "previous")
            }
        };
        let what = format!("plain rclone copy of {tenant} into an empty dir ({what} flags)");
        // Empty again before a rerun, so it downloads everything.
        let reset = || -> BenchResult<()> {
            std::fs::remove_dir_all(dir)?;
            user_dir(
                work,
                dir.file_name().and_then(|n| n.to_str()).unwrap_or("x"),
            )?;
            Ok(())
        };
        let args = copy(&remote, dir);
        let rclone = bench.rclone;
        let (elapsed, ()) = bench
            .timed(&what, || async {
                if count_files(dir).0 > 0 {
                    reset()?;
                }
                let d = rclone.time(&args, flags, &[0]).await?;
                expect_files(dir, FILE_SIZE, &what).map(|()| (d, ()))
            })
            .await?;
        *slot = elapsed;
    }
    change_every_file(&container, tenant)?;

    // Uploads of the same files to a new prefix (what the product owner's target is
    // stated against), then every file is changed for the mirrors.
    let new_prefix = |flags: &str| format!("boilerhouse:{BUCKET}/new/{tenant}/{flags}/");
    let what = format!("plain rclone copy of {tenant} to a new prefix");
    s.up_default = bench
        .rclone(
            &format!("{what} (default flags)"),
            &copy(&dl_default, &new_prefix("default")),
            no_flags,
            &[0],
        )
        .await?;
    s.up_engine = bench
        .rclone(
            &format!("{what} (engine flags)"),
            &copy(&dl_engine, &new_prefix("engine")),
            engine_flags,
            &[0],
        )
        .await?;
    s.up_previous = bench
        .rclone(
            &format!("{what} (previous flags)"),
            &copy(&dl_previous, &new_prefix("previous")),
            previous_flags,
            &[0],
        )
        .await?;
    touch_all(&dl_default)?;
    touch_all(&dl_engine)?;
    touch_all(&dl_previous)?;

    for mirror in MIRROR_ORDERS[index % 4] {
        let (dir, name, flags) = match mirror {
            Mirror::Release => {
                (s.release, ()) = bench
                    .timed(&format!("release of {tenant}"), || {
                        release(daemon, tenant, s3)
                    })
                    .await?;
                // The released container is removed in the background; wait for it.
                daemon.wait_settled(0).await?;
                continue;
            }
            Mirror::PlainDefault => (&dl_default, "default", no_flags),
            Mirror::PlainEngine => (&dl_engine, "engine", engine_flags),
            Mirror::PlainPrevious => (&dl_previous, "previous", previous_flags),
        };
        let old_objects = format!("boilerhouse:{BUCKET}/mirror/{tenant}/{name}/");
        let mut args = copy(dir, &old_objects);
        args[0] = "sync".into();
        let what = format!("plain rclone sync of {tenant} onto the old objects ({name} flags)");
        let elapsed = bench.rclone(&what, &args, flags, &[0]).await?;
        let objects = s3
            .root_dir()
            .join(BUCKET)
            .join("mirror")
            .join(tenant)
            .join(name);
        expect_files(&objects, FILE_SIZE + 3, &what)?;
        match mirror {
            Mirror::PlainDefault => s.sync_default = elapsed,
            Mirror::PlainEngine => s.sync_engine = elapsed,
            _ => s.sync_previous = elapsed,
        }
    }

    // The tenant comes back: its state is in the cache and the remote unchanged.
    daemon.wait_settled(0).await?;
    (s.returning, ()) = bench
        .timed(&format!("returning claim of {tenant}"), || async {
            let (d, _) = claim_with(daemon, tenant, FILE_SIZE + 3, "cache").await?;
            Ok((d, ()))
        })
        .await?;
    daemon.wait_settled(1).await?;
    release_without_upload(daemon, tenant).await?;
    daemon.wait_settled(0).await?;
    // Another writer changes one object (same size) through S3: the next claim must
    // download.
    let objects = s3.root_dir().join(BUCKET).join("tenants").join(tenant);
    let object = files_under(&objects)
        .into_iter()
        .next()
        .ok_or("the tenant has no objects")?;
    let key = object
        .strip_prefix(&objects)?
        .to_string_lossy()
        .into_owned();
    let other = std::env::temp_dir().join(format!("bh-bench-writer-{tenant}-{index}"));
    std::fs::write(&other, vec![b'z'; FILE_SIZE + 3])?;
    let args = vec![
        "copyto".to_owned(),
        other.to_string_lossy().into_owned(),
        format!("boilerhouse:{BUCKET}/tenants/{tenant}/{key}"),
    ];
    let written = bench
        .rclone(
            &format!("another writer's upload to {tenant}"),
            &args,
            &[],
            &[0],
        )
        .await;
    let _ = std::fs::remove_file(&other);
    written?;
    if std::fs::read(&object)? != vec![b'z'; FILE_SIZE + 3] {
        return Err(format!("another writer's upload did not reach {}", object.display()).into());
    }
    (s.after_change, ()) = bench
        .timed(
            &format!("claim of {tenant} after a remote change"),
            || async {
                let (d, _) = claim_with(daemon, tenant, FILE_SIZE + 3, "s3").await?;
                Ok((d, ()))
            },
        )
        .await?;
    daemon.wait_settled(1).await?;
    release_without_upload(daemon, tenant).await?;
    daemon.wait_settled(0).await?;
    Ok(s)
}

/// A timed claim that must restore from `source` (`cache` or `s3`) files of `size`.
async fn claim_with(
    daemon: &SyncDaemon,
    tenant: &str,
    size: usize,
    source: &str,
) -> BenchResult<(Duration, String)> {
    let (elapsed, body) = daemon
        .post(
            &format!("/tenants/{tenant}/claim"),
            json!({ "poolId": POOL }),
        )
        .await?;
    if body["timings"]["restoreSource"] != source {
        return Err(format!("claim of {tenant} did not restore from {source}: {body}").into());
    }
    let container_id = body["containerId"]
        .as_str()
        .ok_or_else(|| format!("claim of {tenant}: no containerId in {body}"))?;
    let state = daemon.daemon.state_dir(container_id);
    expect_files(&state, size, &format!("claim of {tenant} from {source}"))?;
    Ok((elapsed, container_id.to_owned()))
}

/// Gives the container back without saving (the remote, and the cache, stay as
/// they are). Not timed.
async fn release_without_upload(daemon: &SyncDaemon, tenant: &str) -> BenchResult<()> {
    let (_, body) = daemon
        .post(
            &format!("/tenants/{tenant}/release"),
            json!({ "sync": false }),
        )
        .await?;
    if body["success"] != true {
        return Err(format!("release of {tenant}: {body}").into());
    }
    Ok(())
}

/// Claims (timed) and checks that every file arrived; returns the container's name.
async fn claim(daemon: &SyncDaemon, tenant: &str) -> BenchResult<(Duration, String)> {
    let (elapsed, body) = daemon
        .post(
            &format!("/tenants/{tenant}/claim"),
            json!({ "poolId": POOL }),
        )
        .await?;
    let container_id = body["containerId"]
        .as_str()
        .ok_or_else(|| format!("claim of {tenant}: no containerId in {body}"))?;
    let name = body["containerName"]
        .as_str()
        .ok_or_else(|| format!("claim of {tenant}: no containerName in {body}"))?;
    let state = daemon.daemon.state_dir(container_id);
    expect_files(&state, FILE_SIZE, &format!("claim of {tenant}"))?;
    Ok((elapsed, name.to_owned()))
}

/// Changes every file from inside the container, as the tenant would, so the release
/// uploads them all (3 bytes appended to each). Not timed.
fn change_every_file(container: &str, tenant: &str) -> BenchResult<()> {
    let (ok, out) = docker(&[
        "exec",
        "-u",
        &format!("{}:{}", USER.0, USER.1),
        container,
        "sh",
        "-c",
        "find /state -type f | while read -r f; do echo v2 >> \"$f\"; done \
         && find /state -type f | wc -l",
    ]);
    if ok && out.trim() == FILES.to_string() {
        Ok(())
    } else {
        Err(format!("changing {tenant}'s files in {container} failed: {out}").into())
    }
}

/// Releases (timed) and checks that the bucket holds every changed file.
async fn release(daemon: &SyncDaemon, tenant: &str, s3: &S3Server) -> BenchResult<(Duration, ())> {
    let (elapsed, body) = daemon
        .post(&format!("/tenants/{tenant}/release"), json!({}))
        .await?;
    if body["success"] != true {
        return Err(format!("release of {tenant}: {body}").into());
    }
    let objects = s3.root_dir().join(BUCKET).join("tenants").join(tenant);
    expect_files(&objects, FILE_SIZE + 3, &format!("release of {tenant}"))?;
    Ok((elapsed, ()))
}

fn copy(src: &impl AsRef<std::ffi::OsStr>, dst: &impl AsRef<std::ffi::OsStr>) -> Vec<String> {
    vec![
        "copy".into(),
        src.as_ref().to_string_lossy().into_owned(),
        dst.as_ref().to_string_lossy().into_owned(),
    ]
}

// ---------------------------------------------------------------------------------
// The daemon and its containers.

/// The daemon (the kit's: a child process in a process group of its own, so stopping
/// it also stops an rclone it runs, which would otherwise keep writing into the
/// directories being removed; killed with the bench), and the client of the timed
/// requests.
struct SyncDaemon {
    daemon: Daemon,
    http: reqwest::Client,
}

async fn start_daemon(
    root: &Path,
    instance: &str,
    image: &str,
    rclone: &Path,
    s3: &S3Server,
) -> BenchResult<SyncDaemon> {
    let daemon = Daemon::builder(env!("CARGO_BIN_EXE_boilerhouse"))
        .root(root)
        .instance(instance)
        .workload(&format!("{POOL}.yaml"), &workload_yaml(image, s3))
        .env("BOILERHOUSE_DEFAULT_IMAGE", image)
        .env("BOILERHOUSE_RCLONE_BIN", &rclone.display().to_string())
        .env("BOILERHOUSE_LOG_FORMAT", "json")
        // warn, plus the one `sync done` line per transfer that carries its duration.
        .env("RUST_LOG", "warn,boilerhouse::sync=info")
        .own_process_group()
        .die_with_parent()
        .try_start()
        .await?;
    Ok(SyncDaemon {
        daemon,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()?,
    })
}

fn workload_yaml(image: &str, s3: &S3Server) -> String {
    format!(
        r#"id: {POOL}
image: {image}
command: ["sleep", "infinity"]
user: "{uid}:{gid}"
pool:
  min_size: {MIN_IDLE}
  max_size: 4
sync:
  sink:
    type: s3
    bucket: {BUCKET}
    region: us-east-1
    endpoint: {endpoint}
    access_key_id: {key}
    secret_access_key: {secret}
    prefix: tenants/${{tenantId}}/
  mappings:
    - path: /
      direction: bidirectional
      mode: sync
  policy:
    on_claim: true
    on_release: true
"#,
        uid = USER.0,
        gid = USER.1,
        endpoint = s3.endpoint(),
        key = s3.access_key(),
        secret = s3.secret_key(),
    )
}

/// The server errors each upload met: `rclone serve s3` logs a failed PUT with the
/// object's path (with the fixture's `--dir-cache-time 1ms`, overwriting objects makes
/// some PUTs fail with HTTP 500, and rclone then retries). Keyed by (tenant, kind),
/// the kind from the key's prefix: `release` (`tenants/`), `mirror-<flags>`,
/// `new-<flags>`.
fn s3_errors(log: &str, bucket_dir: &Path) -> BTreeMap<(String, String), u64> {
    let bucket = format!("{}/", bucket_dir.display());
    let mut out = BTreeMap::new();
    for line in log.lines().filter(|l| l.contains("ERROR")) {
        let Some(at) = line.find(&bucket) else {
            continue;
        };
        let parts: Vec<&str> = line[at + bucket.len()..].split('/').collect();
        let key = match parts.as_slice() {
            ["tenants", tenant, ..] => (tenant.to_string(), "release".to_owned()),
            [kind @ ("mirror" | "new"), tenant, flags, ..] => {
                (tenant.to_string(), format!("{kind}-{flags}"))
            }
            _ => continue,
        };
        *out.entry(key).or_insert(0) += 1;
    }
    out
}

/// rclone's time inside the daemon for one tenant, from its `sync done` log lines.
#[derive(Default)]
struct SyncDurations {
    download: Option<Duration>,
    upload: Option<Duration>,
}

impl SyncDaemon {
    fn url(&self, path: &str) -> String {
        self.daemon.url(path)
    }

    fn log_tail(&self) -> String {
        self.daemon.log_tail()
    }

    /// A timed `POST`: from just before sending until the whole body is read.
    async fn post(&self, path: &str, body: Value) -> BenchResult<(Duration, Value)> {
        let request = self.http.post(self.url(path)).json(&body);
        let started = Instant::now();
        let response = request.send().await?;
        let status = response.status();
        let bytes = response.bytes().await?;
        let elapsed = started.elapsed();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        if !status.is_success() {
            return Err(format!(
                "POST {path} answered {status}: {value}\n{}",
                self.log_tail()
            )
            .into());
        }
        Ok((elapsed, value))
    }

    /// Waits until the pool has its idle containers, `claimed` claimed ones, and none
    /// being created or removed, so no container work competes with a measurement.
    async fn wait_settled(&self, claimed: u64) -> BenchResult<()> {
        let timeout = Duration::from_secs(90);
        let started = Instant::now();
        loop {
            let view: Value = self
                .http
                .get(self.url(&format!("/pools/{POOL}")))
                .send()
                .await?
                .json()
                .await?;
            let n = |k: &str| view[k].as_u64().unwrap_or(u64::MAX);
            let idle = n("idleCount");
            if idle >= MIN_IDLE
                && n("startingCount") == 0
                && n("claimedCount") == claimed
                && n("currentSize") == idle.saturating_add(claimed)
            {
                return Ok(());
            }
            if started.elapsed() > timeout {
                return Err(format!(
                    "pool {POOL} did not settle within {timeout:?}: {view}\n{}",
                    self.log_tail()
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Per tenant, the duration the engine logged for its download and its upload.
    fn sync_durations(&self) -> BTreeMap<String, SyncDurations> {
        let mut out: BTreeMap<String, SyncDurations> = BTreeMap::new();
        let text = self.daemon.log_text();
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            // tracing-subscriber's JSON nests the event's fields under "fields".
            let f = if v["fields"].is_object() {
                &v["fields"]
            } else {
                &v
            };
            if f["message"] != "sync done" {
                continue;
            }
            // A u128 field is written as a number or, by some versions, as a string.
            let ms = f["elapsed_ms"]
                .as_u64()
                .or_else(|| f["elapsed_ms"].as_str()?.parse().ok());
            let (Some(tenant), Some(op), Some(ms)) = (f["tenant"].as_str(), f["op"].as_str(), ms)
            else {
                continue;
            };
            let entry = out.entry(tenant.to_owned()).or_default();
            let d = Some(Duration::from_millis(ms));
            match op {
                // The sample's first claim; a later one (after a remote change) is
                // measured as a whole.
                "download" if entry.download.is_none() => entry.download = d,
                "upload" => entry.upload = d,
                _ => {}
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------
// Plain rclone, the baseline.

struct Rclone {
    bin: PathBuf,
    env: Vec<(String, String)>,
    run_as: Option<(u32, u32)>,
}

impl Rclone {
    /// Runs `rclone <args> <flags>` and times it from spawn to exit. An exit code not
    /// in `ok_codes` is an error carrying rclone's last error line.
    async fn time(
        &self,
        args: &[String],
        flags: &[String],
        ok_codes: &[i32],
    ) -> BenchResult<Duration> {
        let mut cmd = self.command();
        cmd.args(args).args(flags);
        let started = Instant::now();
        let out = cmd
            .output()
            .await
            .map_err(|e| format!("cannot run {}: {e}", self.bin.display()))?;
        let elapsed = started.elapsed();
        match out.status.code() {
            Some(code) if ok_codes.contains(&code) => Ok(elapsed),
            _ => {
                let stderr = String::from_utf8_lossy(&out.stderr);
                eprintln!(
                    "sync_restore: rclone {} {}: {}\n{}",
                    args.join(" "),
                    flags.join(" "),
                    out.status,
                    tail(&stderr, 20)
                );
                Err(format!(
                    "rclone {} {}: {}",
                    args.first().map_or("", String::as_str),
                    out.status,
                    last_error(&stderr)
                )
                .into())
            }
        }
    }

    /// The environment the engine gives rclone: a remote named `boilerhouse` defined by
    /// `RCLONE_CONFIG_BOILERHOUSE_*`, no config file, nothing inherited but `PATH`.
    /// Async, so Ctrl-C is seen at once and a dropped run kills its rclone.
    fn command(&self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.kill_on_drop(true)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    fn version_line(&self) -> String {
        Command::new(&self.bin)
            .arg("version")
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| "unknown".into())
    }
}

fn remote_env(s3: &S3Server) -> Vec<(String, String)> {
    let mut env = vec![
        ("PATH".to_owned(), std::env::var("PATH").unwrap_or_default()),
        ("RCLONE_CONFIG".to_owned(), String::new()),
    ];
    for (key, value) in [
        ("TYPE", "s3".to_owned()),
        ("PROVIDER", "Other".to_owned()),
        ("ENV_AUTH", "false".to_owned()),
        ("ACCESS_KEY_ID", s3.access_key().to_owned()),
        ("SECRET_ACCESS_KEY", s3.secret_key().to_owned()),
        ("REGION", "us-east-1".to_owned()),
        ("ENDPOINT", s3.endpoint()),
        ("FORCE_PATH_STYLE", "true".to_owned()),
    ] {
        env.push((format!("RCLONE_CONFIG_BOILERHOUSE_{key}"), value));
    }
    env
}

/// The engine's flags, straight from `boilerhouse::sync::BASE_FLAGS`, so the
/// baseline always follows the engine.
fn engine_flags() -> Vec<String> {
    boilerhouse::sync::BASE_FLAGS
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// What the engine restores a claim with: `BASE_FLAGS` and, the state dir being
/// empty, `FRESH_DOWNLOAD_FLAGS`.
fn engine_download_flags() -> Vec<String> {
    boilerhouse::sync::BASE_FLAGS
        .iter()
        .chain(boilerhouse::sync::FRESH_DOWNLOAD_FLAGS)
        .map(|s| s.to_string())
        .collect()
}

// ---------------------------------------------------------------------------------
// Files.

/// 1,000 files of 10 KiB spread over 10 × 5 nested directories, with different bytes
/// per file (so every checksum differs).
fn seed_tenant(base: &Path, tenant: &str) -> BenchResult<()> {
    let mut state = tenant.bytes().fold(0x9e37_79b9_7f4a_7c15u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    for i in 0..FILES {
        let path = base.join(format!("d{}/s{}/f{i:04}.bin", i % 10, i % 5));
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut data = Vec::with_capacity(FILE_SIZE);
        while data.len() < FILE_SIZE {
            // xorshift64: cheap, incompressible enough for a transfer benchmark.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            data.extend_from_slice(&state.to_le_bytes());
        }
        data.truncate(FILE_SIZE);
        std::fs::write(&path, &data).map_err(|e| format!("seeding {}: {e}", path.display()))?;
    }
    Ok(())
}

/// An empty directory the workload's user can write into.
fn user_dir(work: &Path, name: &str) -> BenchResult<PathBuf> {
    let dir = work.join(name);
    std::fs::create_dir_all(&dir)?;
    if running_as_root() {
        std::os::unix::fs::chown(work, Some(USER.0), Some(USER.1))?;
        std::os::unix::fs::chown(&dir, Some(USER.0), Some(USER.1))?;
    }
    Ok(dir)
}

/// Appends 3 bytes to every file, like the container's `echo v2 >>`.
fn touch_all(dir: &Path) -> BenchResult<()> {
    use std::io::Write;
    for path in files_under(dir) {
        let mut f = std::fs::OpenOptions::new().append(true).open(&path)?;
        f.write_all(b"v2\n")?;
    }
    Ok(())
}

/// Checks that `dir` holds the `FILES` files of `size` bytes each.
fn expect_files(dir: &Path, size: usize, what: &str) -> BenchResult<()> {
    let (files, bytes) = count_files(dir);
    if files == FILES as u64 && bytes == (FILES * size) as u64 {
        Ok(())
    } else {
        Err(format!(
            "{what}: {} holds {files} files / {bytes} B, expected {FILES} / {}",
            dir.display(),
            FILES * size
        )
        .into())
    }
}

/// (files, bytes) under `dir`, symlinks not followed.
fn count_files(dir: &Path) -> (u64, u64) {
    files_under(dir)
        .iter()
        .filter_map(|p| std::fs::symlink_metadata(p).ok())
        .fold((0, 0), |(n, b), m| (n + 1, b + m.len()))
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(entry.path()),
                Ok(t) if t.is_file() => out.push(entry.path()),
                _ => {}
            }
        }
    }
    out
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

// ---------------------------------------------------------------------------------
// Statistics and the report.

#[derive(Clone, Copy)]
struct Summary {
    n: usize,
    p50: Duration,
    p90: Duration,
    mean: Duration,
}

impl Summary {
    fn of(samples: &[Duration]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        // Nearest rank.
        let at =
            |q: f64| sorted[((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1];
        Some(Self {
            n: sorted.len(),
            p50: at(0.50),
            p90: at(0.90),
            mean: sorted.iter().sum::<Duration>() / sorted.len() as u32,
        })
    }
}

struct Meta {
    instance: String,
    rclone_version: String,
    engine_flags: String,
    load_start: Option<String>,
    load_end: Option<String>,
    cpus: usize,
    runtime: Duration,
    notes: Vec<String>,
    /// Steps that failed once and were re-run untimed.
    failures: Vec<String>,
}

/// One row of the table: a series and, optionally, the series it is compared with.
struct Row {
    key: &'static str,
    label: &'static str,
    /// One entry per sample, in sample order; None where the step failed.
    series: Vec<Option<Duration>>,
    /// (key of the reference row, its label in the ratio column).
    reference: Option<(&'static str, &'static str)>,
}

/// The upload rows whose S3 server errors are counted, with the error kind.
const ERROR_KINDS: &[(&str, &str)] = &[
    ("release", "release"),
    ("plain_upload", "new-default"),
    ("engine_upload", "new-engine"),
    ("plain_sync", "mirror-default"),
    ("engine_sync", "mirror-engine"),
];

fn report(
    samples: &[Sample],
    meta: &Meta,
    errors: &BTreeMap<(String, String), u64>,
) -> BenchResult<()> {
    use std::fmt::Write;
    let mut md = String::new();
    let col = |f: fn(&Sample) -> Option<Duration>| samples.iter().map(f).collect::<Vec<_>>();
    // Per sample, the S3 server errors an upload kind met.
    let error_counts = |key: &str| -> Option<Vec<u64>> {
        let (_, kind) = ERROR_KINDS.iter().find(|(k, _)| *k == key)?;
        Some(
            samples
                .iter()
                .map(|s| {
                    let key = (s.tenant.clone(), (*kind).to_owned());
                    errors.get(&key).copied().unwrap_or(0)
                })
                .collect(),
        )
    };
    // The daemon's own share: round trip minus rclone's time as the engine logged it.
    let overhead = |total: fn(&Sample) -> Option<Duration>,
                    inner: fn(&Sample) -> Option<Duration>| {
        samples
            .iter()
            .map(|s| Some(total(s)?.saturating_sub(inner(s)?)))
            .collect::<Vec<_>>()
    };
    let rows = vec![
        Row {
            key: "claim",
            label: "**claim** with restore (HTTP round trip)",
            series: col(|s| s.claim),
            reference: Some(("plain_download", "plain copy")),
        },
        Row {
            key: "claim_rclone",
            label: "  the transfer inside the daemon (download: its own S3 client)",
            series: col(|s| s.claim_rclone),
            reference: Some(("engine_download", "rclone, engine flags")),
        },
        Row {
            key: "claim_daemon",
            label: "  the daemon's own share (claim − its rclone)",
            series: overhead(|s| s.claim, |s| s.claim_rclone),
            reference: None,
        },
        Row {
            key: "returning",
            label: "**returning tenant's claim** (state cache hit; HTTP round trip)",
            series: col(|s| s.returning),
            reference: Some(("plain_download", "plain copy")),
        },
        Row {
            key: "after_change",
            label: "claim after another writer changed one object (cache miss → download)",
            series: col(|s| s.after_change),
            reference: Some(("plain_download", "plain copy")),
        },
        Row {
            key: "release",
            label: "**release** with upload (HTTP round trip)",
            series: col(|s| s.release),
            reference: Some(("plain_upload", "plain copy")),
        },
        Row {
            key: "release_rclone",
            label: "  rclone inside the daemon (upload)",
            series: col(|s| s.release_rclone),
            reference: Some(("engine_sync", "same op+flags")),
        },
        Row {
            key: "release_daemon",
            label: "  the daemon's own share (pause, records; release − its rclone)",
            series: overhead(|s| s.release, |s| s.release_rclone),
            reference: None,
        },
        Row {
            key: "plain_download",
            label: "plain `rclone copy` remote → empty dir, default flags",
            series: col(|s| s.dl_default),
            reference: None,
        },
        Row {
            key: "engine_download",
            label: "plain `rclone copy` remote → empty dir, engine flags (of a restore)",
            series: col(|s| s.dl_engine),
            reference: Some(("previous_download", "previous flags")),
        },
        Row {
            key: "previous_download",
            label: "plain `rclone copy` remote → empty dir, the engine's previous flags",
            series: col(|s| s.dl_previous),
            reference: Some(("plain_download", "default flags")),
        },
        Row {
            key: "plain_upload",
            label: "plain `rclone copy` local → new prefix, default flags",
            series: col(|s| s.up_default),
            reference: None,
        },
        Row {
            key: "engine_upload",
            label: "plain `rclone copy` local → new prefix, engine flags",
            series: col(|s| s.up_engine),
            reference: Some(("previous_upload", "previous flags")),
        },
        Row {
            key: "previous_upload",
            label: "plain `rclone copy` local → new prefix, the engine's previous flags",
            series: col(|s| s.up_previous),
            reference: Some(("plain_upload", "default flags")),
        },
        Row {
            key: "plain_sync",
            label:
                "plain `rclone sync` of 1,000 changed files onto their old objects, default flags",
            series: col(|s| s.sync_default),
            reference: Some(("plain_upload", "default-flag copy")),
        },
        Row {
            key: "engine_sync",
            label:
                "plain `rclone sync` of 1,000 changed files onto their old objects, engine flags",
            series: col(|s| s.sync_engine),
            reference: Some(("previous_sync", "previous flags")),
        },
        Row {
            key: "previous_sync",
            label:
                "plain `rclone sync` of 1,000 changed files onto their old objects, the engine's previous flags",
            series: col(|s| s.sync_previous),
            reference: Some(("plain_sync", "default flags")),
        },
        Row {
            key: "rclone_version",
            label: "`rclone version` (process start alone)",
            series: col(|s| s.version),
            reference: Some(("claim", "claim")),
        },
        Row {
            key: "rclone_lsf_empty",
            label: "`rclone lsf` of an empty prefix (start + S3 set-up + 1 LIST)",
            series: col(|s| s.lsf_empty),
            reference: Some(("claim", "claim")),
        },
    ];
    let summaries: BTreeMap<&str, Summary> = rows
        .iter()
        .filter_map(|r| {
            let measured: Vec<Duration> = r.series.iter().flatten().copied().collect();
            Summary::of(&measured).map(|s| (r.key, s))
        })
        .collect();
    // The median of the per-sample ratios: both ran in the same sample, minutes apart
    // at most, so a change of the machine's load mostly cancels out.
    let paired = |a: &str, b: &str| -> Option<f64> {
        let series = |key: &str| rows.iter().find(|r| r.key == key).map(|r| &r.series);
        let mut ratios: Vec<f64> = series(a)?
            .iter()
            .zip(series(b)?)
            .filter_map(|(x, y)| Some(x.as_ref()?.as_secs_f64() / y.as_ref()?.as_secs_f64()))
            .filter(|r| r.is_finite())
            .collect();
        ratios.sort_by(f64::total_cmp);
        ratios.get(ratios.len() / 2).copied()
    };
    let ratio = |a: &str, b: &str, p: fn(&Summary) -> Duration| -> Option<f64> {
        let (a, b) = (summaries.get(a)?, summaries.get(b)?);
        let b = p(b).as_secs_f64();
        (b > 0.0).then(|| p(a).as_secs_f64() / b)
    };

    writeln!(md)?;
    writeln!(
        md,
        "## State sync: {FILES} files, {} MB (N = {}, {} CPUs, load {} → {})",
        FILES * FILE_SIZE / 1_000_000,
        samples.len(),
        meta.cpus,
        meta.load_start.as_deref().unwrap_or("?"),
        meta.load_end.as_deref().unwrap_or("?"),
    )?;
    writeln!(md)?;
    writeln!(
        md,
        "| measurement | p50 | p90 | samples | ratio (p50, p90) | S3 500s per run (median, max) |"
    )?;
    writeln!(md, "|---|---:|---:|---:|---|---:|")?;
    let mut json_rows = serde_json::Map::new();
    for row in &rows {
        let Some(s) = summaries.get(row.key) else {
            writeln!(md, "| {} | – | – | 0 | | |", row.label)?;
            continue;
        };
        let ratios = row.reference.and_then(|(reference, name)| {
            Some((
                name,
                reference,
                ratio(row.key, reference, |s| s.p50)?,
                ratio(row.key, reference, |s| s.p90)?,
            ))
        });
        let shown = match ratios {
            Some((name, _, r50, r90)) => format!("{r50:.2}× / {r90:.2}× vs {name}"),
            None => String::new(),
        };
        let counts = error_counts(row.key);
        let errors_shown = match &counts {
            Some(c) => {
                let mut sorted = c.clone();
                sorted.sort_unstable();
                let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0);
                let max = sorted.last().copied().unwrap_or(0);
                format!("{median}, {max}")
            }
            None => String::new(),
        };
        writeln!(
            md,
            "| {} | {} | {} | {} | {shown} | {errors_shown} |",
            row.label,
            fmt_ms(s.p50),
            fmt_ms(s.p90),
            s.n
        )?;
        let mut entry = json!({
            "label": row.label.trim(),
            "n": s.n,
            "p50_ms": ms(s.p50),
            "p90_ms": ms(s.p90),
            "mean_ms": ms(s.mean),
            "samples_ms": row.series.iter().map(|d| d.map(ms)).collect::<Vec<_>>(),
        });
        if let Some(c) = counts {
            entry["s3_errors_per_run"] = json!(c);
        }
        if let Some((_, reference, r50, r90)) = ratios {
            entry["ratio_vs"] = json!(reference);
            entry["ratio_p50"] = json!(round3(r50));
            entry["ratio_p90"] = json!(round3(r90));
        }
        json_rows.insert(row.key.to_owned(), entry);
    }

    // The verdicts and the share of process start.
    let mut findings = Vec::new();
    let mut targets = Vec::new();
    for (op, reference, what) in [
        (
            "claim",
            "plain_download",
            "claim vs plain `rclone copy` download",
        ),
        (
            "release",
            "plain_upload",
            "release vs plain `rclone copy` upload",
        ),
    ] {
        if let (Some(r), Some(r90), Some(rp)) = (
            ratio(op, reference, |s| s.p50),
            ratio(op, reference, |s| s.p90),
            paired(op, reference),
        ) {
            let met = r <= TARGET_RATIO;
            findings.push(format!(
                "{what}: {r:.2}× at p50, {r90:.2}× at p90, {rp:.2}× paired per sample \
                 (target ≤ {TARGET_RATIO}× at p50): **{}**",
                if met { "met" } else { "missed" }
            ));
            targets.push(json!({
                "name": what,
                "goal": format!("<= {TARGET_RATIO}x at p50"),
                "measured": round3(r),
                "measured_p90": round3(r90),
                "measured_paired": round3(rp),
                "met": met,
            }));
        }
    }
    // Not targets: the same operation as a release, so the daemon's cost shows apart
    // from the cost of mirroring onto existing objects.
    for (reference, what) in [
        (
            "plain_sync",
            "release vs plain `rclone sync` onto the old objects (the same operation), \
             default flags",
        ),
        (
            "engine_sync",
            "release vs plain `rclone sync` onto the old objects, engine flags",
        ),
    ] {
        if let (Some(r50), Some(r90), Some(rp)) = (
            ratio("release", reference, |s| s.p50),
            ratio("release", reference, |s| s.p90),
            paired("release", reference),
        ) {
            findings.push(format!(
                "{what}: {r50:.2}× at p50, {r90:.2}× at p90, {rp:.2}× paired per sample"
            ));
        }
    }
    // Issue 14's goal for first restores and uploads: the engine's flags against its
    // previous ones (<= 0.7x), for the plain transfers and for the daemon's claim and
    // release (which add the daemon's own share to today's flags).
    for (op, reference, what) in [
        (
            "engine_download",
            "previous_download",
            "first restore, plain `rclone copy`: engine flags vs previous flags",
        ),
        (
            "claim",
            "previous_download",
            "first restore, the daemon's claim vs a plain `rclone copy` with the previous flags",
        ),
        (
            "engine_upload",
            "previous_upload",
            "upload to a new prefix: engine flags vs previous flags",
        ),
        (
            "engine_sync",
            "previous_sync",
            "mirror of 1,000 changed files: engine flags vs previous flags",
        ),
        (
            "release",
            "previous_sync",
            "release vs a plain `rclone sync` with the previous flags",
        ),
    ] {
        if let (Some(r50), Some(r90), Some(rp)) = (
            ratio(op, reference, |s| s.p50),
            ratio(op, reference, |s| s.p90),
            paired(op, reference),
        ) {
            let met = r50 <= 0.7;
            findings.push(format!(
                "{what}: {r50:.2}× at p50, {r90:.2}× at p90, {rp:.2}× paired per sample \
                 (goal ≤ 0.7× at p50): **{}**",
                if met { "met" } else { "missed" }
            ));
            targets.push(json!({
                "name": what,
                "goal": "<= 0.7x at p50",
                "measured": round3(r50),
                "measured_p90": round3(r90),
                "measured_paired": round3(rp),
                "met": met,
            }));
        }
    }
    // Issue 14's goal: a returning tenant at p50 <= 50 ms and >= 30x faster than
    // "today", the claim before issue 14: it downloaded with rclone at 1.00-1.01x a
    // plain `rclone copy` with the flags of then, so that copy (same run) stands for
    // it. Against this run's downloading claim (the engine's own download since) the
    // factor is printed too.
    if let (Some(ret), Some(before), Some(claim)) = (
        summaries.get("returning"),
        summaries.get("previous_download"),
        summaries.get("claim"),
    ) {
        let speedup = before.p50.as_secs_f64() / ret.p50.as_secs_f64().max(1e-9);
        let vs_claim = claim.p50.as_secs_f64() / ret.p50.as_secs_f64().max(1e-9);
        let met = ret.p50 <= Duration::from_millis(50) && speedup >= 30.0;
        findings.push(format!(
            "returning tenant (cache hit): p50 {}, p90 {}, {speedup:.0}× faster than a \
             claim before issue 14 (a plain `rclone copy` with the previous flags; goal \
             ≤ 50 ms and ≥ 30×): **{}**; {vs_claim:.0}× faster than this run's claim that \
             downloads",
            fmt_ms(ret.p50),
            fmt_ms(ret.p90),
            if met { "met" } else { "missed" }
        ));
        targets.push(json!({
            "name": "returning tenant's claim (cache hit)",
            "goal": "<= 50 ms at p50 and >= 30x faster than a claim before issue 14",
            "measured_p50_ms": ms(ret.p50),
            "speedup": round3(speedup),
            "speedup_vs_this_runs_download": round3(vs_claim),
            "met": met,
        }));
    }
    let total_errors: u64 = ERROR_KINDS
        .iter()
        .filter_map(|(key, _)| error_counts(key))
        .flatten()
        .sum();
    if total_errors > 0 {
        findings.push(format!(
            "the S3 endpoint failed {total_errors} PUTs with HTTP 500 (its log: \
             `chtimes …rclone_temp_put…: no such file`), nearly all while overwriting \
             objects; rclone retried them: with the engine's `--low-level-retries 1` a \
             failed PUT costs a second whole pass of the sync, with rclone's default 10 \
             only the request is repeated"
        ));
    }
    let mut shares = serde_json::Map::new();
    for op in ["claim", "release"] {
        for start in ["rclone_version", "rclone_lsf_empty"] {
            if let Some(r) = ratio(start, op, |s| s.p50) {
                shares.insert(format!("{start}_share_of_{op}"), json!(round3(r)));
            }
        }
    }
    if let (Some(v), Some(l)) = (
        shares
            .get("rclone_version_share_of_claim")
            .and_then(Value::as_f64),
        shares
            .get("rclone_lsf_empty_share_of_claim")
            .and_then(Value::as_f64),
    ) {
        findings.push(format!(
            "process start is {:.0}% of a claim (`rclone version`), \
             {:.0}% with S3 set-up and one LIST (`lsf`)",
            v * 100.0,
            l * 100.0
        ));
    }
    if let (Some(v), Some(l)) = (
        shares
            .get("rclone_version_share_of_release")
            .and_then(Value::as_f64),
        shares
            .get("rclone_lsf_empty_share_of_release")
            .and_then(Value::as_f64),
    ) {
        findings.push(format!(
            "process start is {:.0}% of a release (`rclone version`), \
             {:.0}% with S3 set-up and one LIST (`lsf`)",
            v * 100.0,
            l * 100.0
        ));
    }
    writeln!(md)?;
    for line in findings.iter().chain(meta.notes.iter()) {
        writeln!(md, "- {line}")?;
    }
    if meta.failures.is_empty() {
        writeln!(md, "- no step failed")?;
    }
    for failure in &meta.failures {
        writeln!(md, "- FAILED once (its time is left out): {failure}")?;
    }
    writeln!(
        md,
        "- rclone: {}; engine flags: `{}`; ran {:.0} s",
        meta.rclone_version,
        meta.engine_flags,
        meta.runtime.as_secs_f64()
    )?;

    let out = json!({
        "bench": "sync_restore",
        "files": FILES,
        "file_size": FILE_SIZE,
        "samples": samples.len(),
        "instance": meta.instance,
        "rclone": meta.rclone_version,
        "engine_flags": meta.engine_flags,
        "cpus": meta.cpus,
        "loadavg_start": meta.load_start,
        "loadavg_end": meta.load_end,
        "runtime_s": round3(meta.runtime.as_secs_f64()),
        "rows": json_rows,
        "targets": targets,
        "process_start_share": shares,
        "findings": findings,
        "notes": meta.notes,
        "failures": meta.failures,
    });
    let dir = target_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    let json_path = dir.join("sync_restore.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&out)?)?;
    let md_path = dir.join("sync_restore.md");
    std::fs::write(&md_path, &md)?;
    print!("{md}");
    println!(
        "- written to {} and {}",
        json_path.display(),
        md_path.display()
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    round3(d.as_secs_f64() * 1000.0)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn fmt_ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// rclone's closing error line (JSON log or plain text), without the SDK's request ids.
fn last_error(stderr: &str) -> String {
    let message = stderr
        .lines()
        .rev()
        .find_map(|line| match serde_json::from_str::<Value>(line) {
            Ok(v) => {
                let msg = v["msg"].as_str().unwrap_or_default();
                (v["level"] == "error" || msg.starts_with("Failed to")).then(|| msg.to_owned())
            }
            Err(_) => Some(line.trim().to_owned()).filter(|l| !l.is_empty()),
        })
        .unwrap_or_else(|| "no error message".into());
    match (message.find("RequestID:"), message.find("api error")) {
        (Some(from), Some(to)) if from < to => {
            format!("{}{}", &message[..from], &message[to..])
        }
        _ => message,
    }
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn shorten(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

fn loadavg() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(
        text.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// Progress on stderr, with the time since the bench started.
fn step(what: &str) {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let t = START.get_or_init(Instant::now).elapsed().as_secs_f64();
    eprintln!("sync_restore [{t:6.1}s]: {what}");
}
