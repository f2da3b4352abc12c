//! `make bench`: what a claim costs, measured end to end on this machine in one run.
//!
//! The release daemon (`target/release/boilerhouse`) runs as a child process with its
//! own `BOILERHOUSE_INSTANCE` (`bench-<random>`), temp directories and two workloads on
//! the locally built test image (`sleep infinity` as `1000:1000`):
//!
//! - `warm` (`recycle: reuse`, `max_size: N`): scaled to N idle containers, then
//!   claimed by distinct tenants and released between rounds. With `max_size` equal
//!   to N the pool cannot create containers while claims are measured, so a sample is
//!   the warm hand-out alone — HTTP, pool actor, durable ledger write — with no Docker
//!   work competing for the two cores.
//! - `cold` (`min_size: 0`, `recycle: destroy`): every claim creates its container on
//!   demand; released (destroy) and drained before the next sample.
//!
//! Beside them, the same containers are created straight through the project's
//! `DockerRuntime` (the cold baseline and the raw parallel creation rate), and the
//! claim ledger's durable write is timed on the same disk. The results are printed
//! as a markdown table and written to `target/bench/claim_latency.json`; the product
//! owner's targets are reported with met/missed, never asserted. See
//! `docs/performance.md` for the method and the findings.
//!
//! Every container the bench creates carries `boilerhouse.instance=<bench instance>`
//! and is removed at the end — also after an error, a panic or Ctrl-C.
//!
//! Knobs (environment):
//! - `BOILERHOUSE_BENCH_N`: pool size, burst size and parallel creations (default 200);
//! - `BOILERHOUSE_BENCH_CLAIMS`: warm claims per concurrency (default 600);
//! - `BOILERHOUSE_BENCH_COLD_SAMPLES`: cold starts of each kind (default 24);
//! - `BOILERHOUSE_TEST_IMAGE`: the image (default `boilerhouse-test:busybox`);
//! - `BOILERHOUSE_BENCH_PERF=<file>`: `perf record` the daemon during the c=32 warm
//!   claims (profiling runs: it inflates their figures);
//! - `BOILERHOUSE_BENCH_DATA_DIR=<dir>`: put the daemon's `DATA_DIR` (the claim ledger)
//!   there, e.g. on a tmpfs, to see the claim path without the disk's fsync cost;
//! - `MALLOC_*`: passed to the daemon, to try glibc allocator settings.
//!
//! Profiling and what-if runs write `claim_latency-profile.json` /
//! `claim_latency-datadir.json` instead of the reference file.
//!
//! `cargo test --all-targets` runs this binary without `--bench`; it then returns at
//! once instead of benchmarking.

mod measure;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use boilerhouse::config::Config;
use boilerhouse::ledger::{ClaimRecord, Ledger};
use futures_util::stream::{self, StreamExt};
use serde_json::{json, Value};

use boilerhouse_testkit::bench::{bench_main, BenchResult};
use boilerhouse_testkit::{require_image, try_free_port, InstanceGuard};

use measure::daemon::{BenchDaemon, Profiler};
use measure::http::{self, Outcome, Req};
use measure::raw::RawDocker;
use measure::report::Report;
use measure::stats::{fmt_duration, fmt_mb, ms, Memory, Summary};

/// Concurrency of the untimed releases between rounds.
const RELEASE_CONCURRENCY: usize = 8;
/// The daemon's own `CREATE_CONCURRENCY` (src/pool.rs), for the raw comparison.
const DAEMON_CREATE_CONCURRENCY: usize = 8;
/// Containers of the raw creation run at the daemon's concurrency.
const RAW_C8_CONTAINERS: usize = 50;
/// `max_size` of the `cold` pool (one claim at a time is measured).
const COLD_MAX: usize = 2;

struct Settings {
    n: usize,
    claims: usize,
    cold_samples: usize,
    image: String,
    /// `perf record` output for the c=32 warm phase (profiling runs only).
    perf: Option<PathBuf>,
    /// Where the daemon's `DATA_DIR` (the claim ledger) goes instead of the temp dir,
    /// e.g. a tmpfs to see what the claim path costs without the disk (what-if runs).
    data_parent: Option<PathBuf>,
}

impl Settings {
    fn from_env() -> BenchResult<Self> {
        let num = |name: &str, default: usize| -> BenchResult<usize> {
            match std::env::var(name) {
                Ok(v) => v
                    .parse()
                    .map_err(|e| format!("{name}={v:?} is not a number: {e}").into()),
                Err(_) => Ok(default),
            }
        };
        Ok(Self {
            n: num("BOILERHOUSE_BENCH_N", 200)?.max(1),
            claims: num("BOILERHOUSE_BENCH_CLAIMS", 600)?.max(1),
            cold_samples: num("BOILERHOUSE_BENCH_COLD_SAMPLES", 24)?.max(1),
            image: std::env::var("BOILERHOUSE_TEST_IMAGE")
                .unwrap_or_else(|_| "boilerhouse-test:busybox".into()),
            perf: path_var("BOILERHOUSE_BENCH_PERF"),
            data_parent: path_var("BOILERHOUSE_BENCH_DATA_DIR"),
        })
    }
}

/// A path from the environment; unset and empty are the same.
fn path_var(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn main() -> ExitCode {
    bench_main("claim_latency", run)
}

async fn run() -> BenchResult<()> {
    let settings = Settings::from_env()?;
    let n = settings.n;
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_boilerhouse"));
    require_setup(&bin, &settings.image)?;

    let instance = format!("bench-{:08x}", rand::random::<u32>());
    let root = tempfile::Builder::new().prefix("bh-bench-").tempdir()?;
    let data_root = match &settings.data_parent {
        Some(parent) => Some(
            tempfile::Builder::new()
                .prefix("bh-bench-data-")
                .tempdir_in(parent)?,
        ),
        None => None,
    };
    let data_dir = data_root
        .as_ref()
        .map_or_else(|| root.path().join("data"), |d| d.path().join("data"));
    // The daemon removes its instance's containers when it drops. The raw baseline runs under an instance of its own: the daemon sweeps containers
    // of its instance that no pool knows, and would remove them mid-measurement.
    // Declared after `root` and before the daemon: dropped after the daemon is
    // killed, before the temp dirs go.
    let raw_instance = format!("{instance}-raw");
    let _raw_guard = InstanceGuard::new(&raw_instance);
    let workloads = root.path().join("workloads");
    std::fs::create_dir_all(&workloads)?;
    write_workload(&workloads, "warm", &settings.image, 0, n, "reuse")?;
    write_workload(&workloads, "cold", &settings.image, 0, COLD_MAX, "destroy")?;
    let port = try_free_port()?;
    let dir = |s: &str| root.path().join(s).display().to_string();
    let env: Vec<(String, String)> = [
        ("BOILERHOUSE_INSTANCE", instance.clone()),
        ("BOILERHOUSE_API_HOST", "127.0.0.1".into()),
        ("BOILERHOUSE_API_PORT", port.to_string()),
        ("BOILERHOUSE_STATE_DIR", dir("states")),
        ("BOILERHOUSE_SECRETS_DIR", dir("secrets")),
        ("BOILERHOUSE_SOCKET_DIR", dir("sockets")),
        ("BOILERHOUSE_DATA_DIR", data_dir.display().to_string()),
        ("BOILERHOUSE_WORKLOADS_DIR", dir("workloads")),
        ("BOILERHOUSE_DEFAULT_IMAGE", settings.image.clone()),
        ("BOILERHOUSE_MAX_CONTAINERS", (n + COLD_MAX + 8).to_string()),
        ("BOILERHOUSE_IDLE_TIMEOUT_MS", "0".into()),
        ("BOILERHOUSE_CONTAINER_MEMORY_MB", "64".into()),
        ("RUST_LOG", "warn".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();

    let mut report = Report::default();
    describe_run(&mut report, &settings, &instance);
    if settings.data_parent.is_some() {
        report.meta("DATA_DIR", data_dir.display().to_string());
        report.note(format!(
            "what-if run: the claim ledger (DATA_DIR) is under {}, not the temp dir's disk",
            data_dir.display()
        ));
    }
    println!(
        "claim_latency: instance {instance}, N = {n}, daemon {}",
        bin.display()
    );

    // ---- the disk on its own ------------------------------------------------------------
    let ledger_dir = data_dir.with_file_name("ledger-probe");
    let (put1, put32) = ledger_probe(&ledger_dir).await?;
    report.latency(
        "ledger_put_c1",
        "ledger write (Ledger::put: group-commit append + fdatasync), c=1",
        &put1,
    );
    report.latency("ledger_put_c32", "ledger write, c=32", &put32);

    // The raw containers use the daemon's own configuration and `cold` workload.
    let mut raw_env = env.clone();
    raw_env.retain(|(k, _)| k != "BOILERHOUSE_INSTANCE");
    raw_env.push(("BOILERHOUSE_INSTANCE".into(), raw_instance.clone()));
    let config = Config::from_vars(raw_env)?;
    let no_env = |_: &str| None;
    let workload = boilerhouse::workload::load_dir(&workloads, &no_env, &settings.image)?
        .into_iter()
        .find(|w| w.id.as_str() == "cold")
        .ok_or("the cold workload did not load")?;
    let raw = RawDocker::connect(config, workload).await?;

    // ---- the daemon ---------------------------------------------------------------------
    step("daemon start");
    let daemon = BenchDaemon::start(&bin, root.path(), env.clone()).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mem_idle = daemon.memory();
    let client = http::client()?;

    // Raw cold starts and cold claims alternate, so both see the same background load.
    step("cold starts: raw Docker and cold claims, alternating");
    let cold = cold_starts(&daemon, &client, &raw, settings.cold_samples).await?;
    let raw_cold = report.latency(
        "raw_cold_create_start_ready",
        "raw Docker create + start + ready (cold baseline), c=1",
        &cold.raw_creates,
    );
    report.latency(
        "raw_remove",
        "raw Docker force-remove, c=1",
        &cold.raw_removes,
    );
    report.latency(
        "raw_pause",
        "raw Docker pause (what every release starts with), c=1",
        &cold.raw_pauses,
    );
    report.latency(
        "raw_unpause",
        "raw Docker unpause (reuse and restart releases), c=1",
        &cold.raw_unpauses,
    );
    let cold_claim = report.latency(
        "cold_claim",
        "cold claim (pool min_size 0: create + start + ready + claim), c=1",
        &cold.claims,
    );
    report.latency(
        "release_destroy",
        "release, recycle: destroy, no sync, c=1",
        &cold.releases,
    );

    step("raw parallel creation");
    let raw_all = raw_parallel(&raw, 10_000, n, n).await?;
    report.latency(
        "raw_parallel_create_start_ready",
        &format!("raw create + start + ready, {n} at once (each)"),
        &raw_all.samples,
    );
    let raw_rate = n as f64 / raw_all.wall.as_secs_f64();
    report.figure(
        "raw_parallel_rate",
        &format!("raw creation, {n} at once: containers/s"),
        format!("{raw_rate:.1}/s ({})", fmt_duration(raw_all.wall)),
        json!({"per_s": raw_rate, "wall_ms": ms(raw_all.wall)}),
    );
    // The engine's rate with the daemon's creation concurrency; a smaller batch keeps
    // the run short (the rate settles within a few dozen containers).
    let c8_n = n.min(RAW_C8_CONTAINERS);
    let raw_c8 = raw_parallel(&raw, 20_000, c8_n, DAEMON_CREATE_CONCURRENCY).await?;
    let raw_c8_rate = c8_n as f64 / raw_c8.wall.as_secs_f64();
    report.figure(
        "raw_c8_rate",
        &format!("raw creation, {c8_n} at {DAEMON_CREATE_CONCURRENCY} in flight: containers/s"),
        format!("{raw_c8_rate:.1}/s ({})", fmt_duration(raw_c8.wall)),
        json!({"per_s": raw_c8_rate, "wall_ms": ms(raw_c8.wall)}),
    );

    step("refill");
    let started = Instant::now();
    daemon.scale("warm", n).await?;
    let (_, _) = daemon
        .wait_pool(
            "warm",
            Duration::from_secs(300),
            Duration::from_millis(25),
            |v| v["idleCount"].as_u64() == Some(n as u64),
        )
        .await?;
    let refill = started.elapsed();
    let refill_rate = n as f64 / refill.as_secs_f64();
    report.figure(
        "refill_rate",
        &format!("daemon refill 0 → min_size {n}: containers/s"),
        format!("{refill_rate:.1}/s ({})", fmt_duration(refill)),
        json!({"per_s": refill_rate, "wall_ms": ms(refill)}),
    );
    report.figure(
        "refill_vs_raw_c8",
        &format!("daemon refill rate / raw rate at {DAEMON_CREATE_CONCURRENCY} in flight"),
        format!("{:.0} %", refill_rate / raw_c8_rate * 100.0),
        json!(refill_rate / raw_c8_rate),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mem_idle_n = daemon.memory();

    step("HTTP floor");
    let health = |count: usize| -> Vec<Req> {
        (0..count)
            .map(|_| Req {
                url: daemon.url("/health"),
                body: None,
            })
            .collect()
    };
    // Opens the 32 keep-alive connections the c=32 phases reuse.
    checked("warm-up", http::drive(&client, health(256), 32).await)?;
    let h1 = checked(
        "GET /health c=1",
        http::drive(&client, health(1000), 1).await,
    )?;
    report.latency(
        "http_health_c1",
        "GET /health (HTTP floor), c=1",
        &h1.samples,
    );
    let h32 = checked(
        "GET /health c=32",
        http::drive(&client, health(2000), 32).await,
    )?;
    report.latency("http_health_c32", "GET /health, c=32", &h32.samples);

    step("warm claims, c=1");
    let before = daemon.claim_metric("warm", "warm").await?;
    let warm1 = warm_rounds(&daemon, &client, n, settings.claims, 1, "w1").await?;
    let after = daemon.claim_metric("warm", "warm").await?;
    let warm1_summary = report.latency(
        "warm_claim_c1",
        "warm claim (distinct tenants, idle container), c=1",
        &warm1.claims,
    );
    server_side(
        &mut report,
        "warm_claim_c1",
        "warm claim, c=1",
        before,
        after,
    );
    report.latency(
        "release_reuse",
        "release, recycle: reuse, no sync, c=1",
        &warm1.releases,
    );
    let before = daemon.claim_metric("warm", "reused").await?;
    report.latency(
        "reclaim_c1",
        "idempotent re-claim (same tenant), c=1",
        &warm1.reclaims_c1,
    );
    report.latency(
        "reclaim_c32",
        "idempotent re-claim, c=32",
        &warm1.reclaims_c32,
    );
    let after = daemon.claim_metric("warm", "reused").await?;
    server_side(
        &mut report,
        "reclaim",
        "re-claim, c=1 and c=32",
        before,
        after,
    );

    step("warm claims, c=32");
    let before = daemon.claim_metric("warm", "warm").await?;
    let profiler = settings
        .perf
        .as_deref()
        .and_then(|out| Profiler::attach(daemon.pid, out));
    let warm32 = warm_rounds(&daemon, &client, n, settings.claims, 32, "w32").await?;
    if let Some(p) = profiler {
        drop(p);
        report.note(format!(
            "perf was recording the daemon during the c=32 warm claims (figures inflated): {}",
            settings.perf.as_deref().unwrap_or(Path::new("")).display()
        ));
    }
    let after = daemon.claim_metric("warm", "warm").await?;
    let warm32_summary = report.latency(
        "warm_claim_c32",
        "warm claim (distinct tenants, idle container), c=32",
        &warm32.claims,
    );
    server_side(
        &mut report,
        "warm_claim_c32",
        "warm claim, c=32",
        before,
        after,
    );

    step("burst");
    let burst = burst(&daemon, n).await?;
    report.latency(
        "burst",
        &format!("burst: {n} claims from {n} clients at once (each)"),
        &burst.outcome.samples,
    );
    let burst_rate = burst.outcome.samples.len() as f64 / burst.outcome.wall.as_secs_f64();
    report.figure(
        "burst_rate",
        &format!("burst: claims/s ({n} clients, {n} ready containers)"),
        format!(
            "{burst_rate:.0}/s ({} for all, {} errors)",
            fmt_duration(burst.outcome.wall),
            burst.outcome.errors
        ),
        json!({"per_s": burst_rate, "wall_ms": ms(burst.outcome.wall), "errors": burst.outcome.errors}),
    );
    let not_warm = daemon.claim_metric("warm", "cold").await?.0;
    report.figure(
        "warm_pool_cold_claims",
        "claims on the warm pool that had to wait for a container (should be 0)",
        not_warm.to_string(),
        json!(not_warm),
    );

    let memory = [
        (
            "memory_idle",
            "daemon RSS, no containers".to_owned(),
            mem_idle,
        ),
        (
            "memory_idle_n",
            format!("daemon RSS, {n} idle containers"),
            mem_idle_n,
        ),
        (
            "memory_claimed_n_c1",
            format!("daemon RSS, {n} containers claimed one by one"),
            warm1.mem_claimed,
        ),
        (
            "memory_claimed_n_burst",
            format!("daemon RSS, {n} containers claimed by the burst"),
            burst.mem_claimed,
        ),
        (
            "memory_after_burst",
            format!("daemon RSS, {n} idle again after the burst (its clients gone)"),
            burst.mem_after,
        ),
    ];
    for (key, label, mem) in &memory {
        report.figure(
            key,
            label,
            mem.map(|m| format!("{} ({} threads)", fmt_mb(m.rss_kib), m.threads))
                .unwrap_or_else(|| "n/a".into()),
            mem.map_or(Value::Null, Memory::to_json),
        );
    }
    drop(daemon);

    judge(
        &mut report,
        &Headline {
            n,
            warm_c1: warm1_summary,
            warm_c32: warm32_summary,
            burst_rate,
            burst_errors: burst.outcome.errors,
            raw_cold,
            cold_claim,
            refill_rate,
            raw_rate,
            // Every state with the pool's N containers, idle or claimed.
            rss_with_n_kib: memory
                .iter()
                .skip(1)
                .filter_map(|(_, _, m)| m.map(|m| m.rss_kib))
                .max(),
        },
    );
    if n < 200 {
        report.note(format!(
            "N = {n} is below the issue's 200: figures are for a smoke run only"
        ));
    }
    report.note(
        "c = requests in flight from one keep-alive client (closed loop); latencies are \
         HTTP round trips over loopback; the bench client shares the machine's cores with \
         the daemon and Docker",
    );

    if let Some(load) = loadavg() {
        report.meta("load avg at end", load);
    }
    let markdown = report.markdown();
    println!("\n{markdown}");
    // What-if and profiling runs must not overwrite the reference figures.
    let name = match (&settings.data_parent, &settings.perf) {
        (Some(_), _) => "claim_latency-datadir.json",
        (None, Some(_)) => "claim_latency-profile.json",
        (None, None) => "claim_latency.json",
    };
    let out = target_dir().join("bench").join(name);
    report.write_json(&out)?;
    std::fs::write(out.with_extension("md"), &markdown)?;
    println!("written: {}", out.display());
    Ok(())
}

// ---- targets ------------------------------------------------------------------------

/// The figures the product owner's targets are judged on.
struct Headline {
    n: usize,
    warm_c1: Option<Summary>,
    warm_c32: Option<Summary>,
    burst_rate: f64,
    burst_errors: usize,
    raw_cold: Option<Summary>,
    cold_claim: Option<Summary>,
    refill_rate: f64,
    raw_rate: f64,
    rss_with_n_kib: Option<u64>,
}

/// Reports each target beside its measured value; nothing is asserted.
fn judge(report: &mut Report, h: &Headline) {
    let p50 = |s: Option<Summary>| s.map(|s| s.p50);
    let w32_p50 = p50(h.warm_c32);
    let w32_p99 = h.warm_c32.map(|s| s.p99);
    report.target(
        "warm claim p50, c=32",
        "≤ 1 ms",
        w32_p50.map(fmt_duration),
        w32_p50.map(|d| d <= Duration::from_millis(1)),
    );
    report.target(
        "warm claim p99, c=32",
        "≤ 5 ms",
        w32_p99.map(fmt_duration),
        w32_p99.map(|d| d <= Duration::from_millis(5)),
    );
    report.target(
        &format!("burst of {}", h.n),
        "≥ 500 claims/s, no error",
        Some(format!("{:.0}/s, {} errors", h.burst_rate, h.burst_errors)),
        Some(h.burst_rate >= 500.0 && h.burst_errors == 0),
    );
    let cold_warm = ratio(p50(h.raw_cold), p50(h.warm_c1));
    report.target(
        "cold/warm ratio (raw cold p50 / warm p50 c=1)",
        "≥ 300",
        cold_warm.map(|r| format!("{r:.0}×")),
        cold_warm.map(|r| r >= 300.0),
    );
    let cold_raw = ratio(p50(h.cold_claim), p50(h.raw_cold));
    report.target(
        "cold claim p50 / raw cold p50",
        "≤ 1.2×",
        cold_raw.map(|r| format!("{r:.2}×")),
        cold_raw.map(|r| r <= 1.2),
    );
    let refill_share = h.refill_rate / h.raw_rate;
    report.target(
        "refill rate / raw parallel rate",
        "≥ 80 %",
        Some(format!("{:.0} %", refill_share * 100.0)),
        Some(refill_share >= 0.8),
    );
    report.target(
        &format!(
            "daemon RSS with {} containers (largest of idle / claimed)",
            h.n
        ),
        "≤ 30 MB",
        h.rss_with_n_kib.map(fmt_mb),
        h.rss_with_n_kib.map(|k| k * 1024 <= 30_000_000),
    );
}

// ---- set-up -------------------------------------------------------------------------

fn require_setup(bin: &Path, image: &str) -> BenchResult<()> {
    if !bin.is_file() {
        return Err(format!(
            "{} is missing: run `make bench` (it builds the release binary)",
            bin.display()
        )
        .into());
    }
    require_image(image)?;
    Ok(())
}

fn write_workload(
    dir: &Path,
    id: &str,
    image: &str,
    min: usize,
    max: usize,
    recycle: &str,
) -> BenchResult<()> {
    let yaml = format!(
        "id: {id}\nimage: {image}\ncommand: [\"sleep\", \"infinity\"]\nuser: \"1000:1000\"\n\
         pool:\n  min_size: {min}\n  max_size: {max}\n  recycle: {recycle}\n"
    );
    std::fs::write(dir.join(format!("{id}.yaml")), yaml)?;
    Ok(())
}

fn describe_run(report: &mut Report, settings: &Settings, instance: &str) {
    report.meta(
        "date",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
    );
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    report.meta("cores", cores.to_string());
    if let Ok(kernel) = std::fs::read_to_string("/proc/sys/kernel/osrelease") {
        report.meta("kernel", kernel.trim());
    }
    if let Some(v) = command_output("docker", &["version", "--format", "{{.Server.Version}}"]) {
        report.meta("docker", v);
    }
    if let Some(rev) = command_output("git", &["rev-parse", "--short", "HEAD"]) {
        let dirty =
            command_output("git", &["status", "--porcelain"]).is_some_and(|s| !s.is_empty());
        report.meta("commit", if dirty { format!("{rev}+dirty") } else { rev });
    }
    if let Some(load) = loadavg() {
        report.meta("load avg at start", load);
    }
    report.meta("N", settings.n.to_string());
    report.meta("image", settings.image.clone());
    report.meta("instance", instance);
}

/// The 1-, 5- and 15-minute load averages: other work on the machine skews every figure.
fn loadavg() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(
        text.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

fn command_output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

fn step(what: &str) {
    println!("claim_latency: {what}…");
}

fn ratio(a: Option<Duration>, b: Option<Duration>) -> Option<f64> {
    let (a, b) = (a?, b?);
    (!b.is_zero()).then(|| a.as_secs_f64() / b.as_secs_f64())
}

/// Fails the run when a batch had errors: a latency figure over failed requests would
/// mislead.
fn checked(what: &str, outcome: Outcome) -> BenchResult<Outcome> {
    if outcome.errors > 0 {
        return Err(format!(
            "{what}: {} request(s) failed, e.g. {:?}",
            outcome.errors, outcome.error_examples
        )
        .into());
    }
    Ok(outcome)
}

/// The mean the daemon itself measured for the claims between two `/metrics` reads.
fn server_side(report: &mut Report, key: &str, what: &str, before: (u64, f64), after: (u64, f64)) {
    let count = after.0.saturating_sub(before.0);
    if count == 0 {
        return;
    }
    let mean = Duration::from_secs_f64((after.1 - before.1).max(0.0) / count as f64);
    report.figure(
        &format!("{key}_server_mean"),
        &format!("{what}: mean inside the claim handler (daemon's own histogram, {count} claims)"),
        fmt_duration(mean),
        json!({"mean_ms": ms(mean), "count": count}),
    );
}

// ---- phases -------------------------------------------------------------------------

/// Times `Ledger::put` — the claim path's durable write — on the disk of the daemon's
/// `DATA_DIR`, one at a time and 32 at a time.
async fn ledger_probe(dir: &Path) -> BenchResult<(Vec<Duration>, Vec<Duration>)> {
    let ledger = Ledger::open(dir)?;
    let record = |i: usize| ClaimRecord {
        tenant_id: format!("probe-{i}"),
        pool_id: "warm".into(),
        container_id: format!("warm-{i:08x}"),
        claimed_at: chrono::Utc::now(),
        metadata: None,
    };
    let mut c1 = Vec::new();
    for i in 0..500 {
        let r = record(i);
        let started = Instant::now();
        ledger.put(&r).await?;
        c1.push(started.elapsed());
    }
    let timed: Vec<BenchResult<Duration>> = stream::iter(500..1500)
        .map(|i| {
            let (ledger, r) = (ledger.clone(), record(i));
            async move {
                let started = Instant::now();
                ledger.put(&r).await?;
                Ok(started.elapsed())
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let c32 = timed.into_iter().collect::<BenchResult<Vec<_>>>()?;
    let _ = std::fs::remove_dir_all(dir);
    Ok((c1, c32))
}

struct Parallel {
    samples: Vec<Duration>,
    wall: Duration,
}

/// Creates `n` raw containers with `concurrency` in flight, times the whole, then
/// removes them (untimed).
async fn raw_parallel(
    raw: &RawDocker,
    first: usize,
    n: usize,
    concurrency: usize,
) -> BenchResult<Parallel> {
    let prepared = (first..first + n)
        .map(|i| raw.prepare(i))
        .collect::<BenchResult<Vec<_>>>()?;
    let started = Instant::now();
    let results: Vec<_> = stream::iter(prepared)
        .map(|(spec, dirs)| async move { raw.create_ready(&spec, dirs).await })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let wall = started.elapsed();
    let mut created = Vec::new();
    let mut failures = Vec::new();
    for r in results {
        match r {
            Ok(c) => created.push(c),
            Err(e) => failures.push(e.to_string()),
        }
    }
    let samples = created.iter().map(|c| c.elapsed).collect();
    let removals: Vec<_> = stream::iter(created)
        .map(|c| raw.remove(c))
        .buffer_unordered(16)
        .collect()
        .await;
    if let Some(e) = removals.into_iter().find_map(Result::err) {
        eprintln!("claim_latency: a raw container was not removed now (cleanup will): {e}");
    }
    if !failures.is_empty() {
        return Err(format!(
            "{} of {n} raw creations failed, e.g. {}",
            failures.len(),
            failures[0]
        )
        .into());
    }
    Ok(Parallel { samples, wall })
}

#[derive(Default)]
struct ColdStarts {
    raw_creates: Vec<Duration>,
    raw_removes: Vec<Duration>,
    raw_pauses: Vec<Duration>,
    raw_unpauses: Vec<Duration>,
    claims: Vec<Duration>,
    releases: Vec<Duration>,
}

/// `samples` pairs, one after the other on an otherwise quiet engine, after one
/// untimed warm-up pair: a raw create + start + ready (then paused, unpaused and
/// removed, each timed), and a cold claim
/// on the `min_size: 0` pool (then released with `destroy`, and drained before the
/// next pair).
async fn cold_starts(
    daemon: &BenchDaemon,
    client: &reqwest::Client,
    raw: &RawDocker,
    samples: usize,
) -> BenchResult<ColdStarts> {
    let mut out = ColdStarts::default();
    for i in 0..=samples {
        let (spec, dirs) = raw.prepare(i)?;
        let c = raw.create_ready(&spec, dirs).await?;
        let created = c.elapsed;
        let (paused, unpaused) = raw.pause_unpause(&c).await?;
        let removed = raw.remove(c).await?;

        let tenant = format!("cold-{i}");
        let claim = http::send(
            client,
            &daemon.url(&format!("/tenants/{tenant}/claim")),
            Some(&json!({"poolId": "cold"})),
        )
        .await?;
        if claim.status != 200 || claim.body["reused"] != Value::Bool(false) {
            return Err(format!("cold claim {tenant}: {} {}", claim.status, claim.body).into());
        }
        let release = http::send(
            client,
            &daemon.url(&format!("/tenants/{tenant}/release")),
            Some(&json!({"poolId": "cold", "sync": false})),
        )
        .await?;
        if release.status != 200 {
            return Err(format!("release {tenant}: {} {}", release.status, release.body).into());
        }
        daemon
            .wait_pool(
                "cold",
                Duration::from_secs(60),
                Duration::from_millis(10),
                |v| v["currentSize"].as_u64() == Some(0),
            )
            .await?;
        if i > 0 {
            out.raw_creates.push(created);
            out.raw_removes.push(removed);
            out.raw_pauses.push(paused);
            out.raw_unpauses.push(unpaused);
            out.claims.push(claim.elapsed);
            out.releases.push(release.elapsed);
        }
    }
    Ok(out)
}

fn claim_reqs(daemon: &BenchDaemon, tenants: &[String]) -> Vec<Req> {
    tenants
        .iter()
        .map(|t| Req {
            url: daemon.url(&format!("/tenants/{t}/claim")),
            body: Some(json!({"poolId": "warm"})),
        })
        .collect()
}

fn release_reqs(daemon: &BenchDaemon, tenants: &[String]) -> Vec<Req> {
    tenants
        .iter()
        .map(|t| Req {
            url: daemon.url(&format!("/tenants/{t}/release")),
            body: Some(json!({"poolId": "warm", "sync": false})),
        })
        .collect()
}

/// Counts answers whose `reused` is not `expected`.
fn reused_mismatches(outcome: &Outcome, expected: bool) -> usize {
    outcome
        .bodies
        .iter()
        .filter(|b| b["reused"] != Value::Bool(expected))
        .count()
}

#[derive(Default)]
struct Warm {
    claims: Vec<Duration>,
    /// Timed releases of the first round (c=1 phase only).
    releases: Vec<Duration>,
    /// Re-claims of the last round's tenants (c=1 phase only).
    reclaims_c1: Vec<Duration>,
    reclaims_c32: Vec<Duration>,
    /// The daemon's memory with the whole pool claimed one by one (c=1 phase only).
    mem_claimed: Option<Memory>,
}

/// `total` warm claims by distinct tenants at `concurrency`, in rounds of at most `n`
/// (the pool's size), releasing (`reuse`) between rounds so every claim finds an idle
/// container. In the c=1 phase the first round's releases are timed one by one and
/// the last round's tenants are re-claimed (idempotent path) before release.
async fn warm_rounds(
    daemon: &BenchDaemon,
    client: &reqwest::Client,
    n: usize,
    total: usize,
    concurrency: usize,
    prefix: &str,
) -> BenchResult<Warm> {
    let mut out = Warm::default();
    let rounds = total.div_ceil(n);
    for round in 0..rounds {
        let size = n.min(total - round * n);
        daemon
            .wait_pool(
                "warm",
                Duration::from_secs(60),
                Duration::from_millis(20),
                |v| v["idleCount"].as_u64() == Some(n as u64),
            )
            .await?;
        let tenants: Vec<String> = (0..size).map(|i| format!("{prefix}-{round}-{i}")).collect();
        let claims = checked(
            "warm claims",
            http::drive(client, claim_reqs(daemon, &tenants), concurrency).await,
        )?;
        let fresh = reused_mismatches(&claims, false);
        if fresh > 0 {
            return Err(format!("{fresh} warm claims answered as re-claims").into());
        }
        out.claims.extend(claims.samples);

        if concurrency == 1 && round + 1 == rounds {
            if size == n {
                out.mem_claimed = daemon.memory();
            }
            let cycle = |count: usize| {
                let picked: Vec<String> = tenants.iter().cycle().take(count).cloned().collect();
                claim_reqs(daemon, &picked)
            };
            let count = total.max(500);
            for (c, into) in [(1, &mut out.reclaims_c1), (32, &mut out.reclaims_c32)] {
                let again = checked("re-claims", http::drive(client, cycle(count), c).await)?;
                let wrong = reused_mismatches(&again, true);
                if wrong > 0 {
                    return Err(format!("{wrong} re-claims were not answered as re-claims").into());
                }
                *into = again.samples;
            }
        }

        let timed = concurrency == 1 && round == 0;
        let c = if timed { 1 } else { RELEASE_CONCURRENCY };
        let released = checked(
            "releases",
            http::drive(client, release_reqs(daemon, &tenants), c).await,
        )?;
        if timed {
            out.releases = released.samples;
        }
    }
    Ok(out)
}

struct Burst {
    outcome: Outcome,
    mem_claimed: Option<Memory>,
    /// After the burst's claims were released and its clients disconnected.
    mem_after: Option<Memory>,
}

/// `n` claims from `n` clients, each with its own open connection, sent at once
/// against `n` idle containers; then the daemon's RSS with `n` claims, and release.
async fn burst(daemon: &BenchDaemon, n: usize) -> BenchResult<Burst> {
    daemon
        .wait_pool(
            "warm",
            Duration::from_secs(60),
            Duration::from_millis(20),
            |v| v["idleCount"].as_u64() == Some(n as u64),
        )
        .await?;
    let clients = (0..n)
        .map(|_| http::client())
        .collect::<BenchResult<Vec<_>>>()?;
    // One connection per client, opened before the clock starts.
    let health = daemon.url("/health");
    let connected: Vec<_> = stream::iter(clients.iter())
        .map(|c| http::send(c, &health, None))
        .buffer_unordered(64)
        .collect()
        .await;
    if let Some(e) = connected.into_iter().find_map(Result::err) {
        return Err(format!("cannot connect the burst clients: {e}").into());
    }
    let tenants: Vec<String> = (0..n).map(|i| format!("burst-{i}")).collect();
    let outcome = http::burst(&clients, claim_reqs(daemon, &tenants)).await;
    if outcome.errors > 0 {
        eprintln!(
            "claim_latency: burst: {} claim(s) failed, e.g. {:?}",
            outcome.errors, outcome.error_examples
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mem_claimed = daemon.memory();
    // Only the claims that succeeded hold a container.
    let claimed: Vec<String> = outcome
        .bodies
        .iter()
        .filter_map(|b| b["tenantId"].as_str().map(str::to_owned))
        .collect();
    let client = http::client()?;
    checked(
        "burst releases",
        http::drive(&client, release_reqs(daemon, &claimed), RELEASE_CONCURRENCY).await,
    )?;
    // Does the daemon give the burst's memory back once its clients are gone?
    drop(clients);
    drop(client);
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(Burst {
        outcome,
        mem_claimed,
        mem_after: daemon.memory(),
    })
}
