//! `make bench`: does autoscaling keep claims warm with fewer idle containers?
//!
//! One release daemon (the kit's, own `BOILERHOUSE_INSTANCE`, temp dirs) runs one
//! workload, `bench` (the test image, `sleep infinity`, `recycle: destroy`, so
//! every claim uses up an idle container and the pool must refill at the claim
//! rate). Claims arrive as a Poisson process at a few rates; each tenant holds its
//! container for an exponential time (mean `HOLD`) and releases it. Each rate runs
//! against three pool settings, switched in one run by rewriting the workload file
//! and `POST /workloads/reload` (a pool-only change: applied in place):
//!
//! - `fixed-small`: `min_size: 1`, no autoscaling (the baseline the issue names);
//! - `autoscale`: `min_size: 1`, `autoscale: {buffer: 2, window: 2s,
//!   scale_down_delay: 5s}`;
//! - `fixed-large`: `min_size` = the peak idle target autoscaling reached at the
//!   highest rate — a fixed pool sized for the busiest period.
//!
//! Per run: warm-hit ratio (claims that took an idle container / all claims, from
//! the pool's own counts), client-side claim p50/p99, and the mean idle containers
//! (the pool sampled every 250 ms). Every scenario starts from its calm state.
//! Figures are printed as a markdown table and written to
//! `target/bench/autoscale.json`; the goal is reported, never asserted.
//!
//! Knobs: `AUTOSCALE_BENCH_SECS` (arrivals per scenario, default 40; the smoke run
//! uses 4), `AUTOSCALE_BENCH_RATES` (claims/s, default `1,2,4`),
//! `BOILERHOUSE_TEST_IMAGE`.
//!
//! `cargo test --all-targets` runs this binary without `--bench`; it returns at once.

// Shared with `claim_latency`; this bench uses the daemon harness, the HTTP client
// and the percentiles, not the raw Docker baseline or the report table.
#[allow(dead_code)]
mod measure;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use boilerhouse_testkit::bench::{bench_main, BenchResult};
use boilerhouse_testkit::{require_image, test_image, try_free_port};

use measure::daemon::BenchDaemon;
use measure::http;
use measure::stats::{fmt_duration, ms, Summary};

/// Mean time a tenant holds its container.
const HOLD: Duration = Duration::from_secs(2);
/// How often the pool's idle count is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);
const POOL: &str = "bench";
const SETTLE: Duration = Duration::from_secs(180);

#[derive(Clone, Copy, PartialEq)]
enum Setting {
    FixedSmall,
    Autoscale,
    FixedLarge(usize),
}

impl Setting {
    fn name(self) -> String {
        match self {
            Setting::FixedSmall => "fixed min_size 1".into(),
            Setting::Autoscale => "autoscale (min 1, buffer 2, window 2s)".into(),
            Setting::FixedLarge(n) => format!("fixed min_size {n}"),
        }
    }

    fn pool_block(self) -> String {
        match self {
            Setting::FixedSmall => "  min_size: 1\n".into(),
            Setting::Autoscale => "  min_size: 1\n  autoscale:\n    buffer: 2\n    window: 2s\n    scale_down_delay: 5s\n".into(),
            Setting::FixedLarge(n) => format!("  min_size: {n}\n"),
        }
    }
}

struct Row {
    setting: String,
    rate: f64,
    claims: usize,
    failed: usize,
    warm_ratio: f64,
    latency: Option<Summary>,
    mean_idle: f64,
    peak_target: u64,
}

fn main() -> ExitCode {
    bench_main("autoscale", run)
}

async fn run() -> BenchResult<()> {
    let secs: u64 = env_or("AUTOSCALE_BENCH_SECS", "40").parse()?;
    let rates: Vec<f64> = env_or("AUTOSCALE_BENCH_RATES", "1,2,4")
        .split(',')
        .map(|r| r.trim().parse::<f64>())
        .collect::<Result<_, _>>()?;
    let duration = Duration::from_secs(secs);
    let image = test_image();
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_boilerhouse"));
    if !bin.is_file() {
        return Err(format!("{} is missing: run `make bench`", bin.display()).into());
    }
    require_image(&image)?;

    let instance = format!("bench-{:08x}", rand::random::<u32>());
    let root = tempfile::Builder::new().prefix("bh-bench-").tempdir()?;
    let workloads = root.path().join("workloads");
    std::fs::create_dir_all(&workloads)?;
    write_workload(&workloads, &image, Setting::FixedSmall)?;
    let dir = |s: &str| root.path().join(s).display().to_string();
    let env: Vec<(String, String)> = [
        ("BOILERHOUSE_INSTANCE", instance.clone()),
        ("BOILERHOUSE_API_HOST", "127.0.0.1".into()),
        ("BOILERHOUSE_API_PORT", try_free_port()?.to_string()),
        ("BOILERHOUSE_STATE_DIR", dir("states")),
        ("BOILERHOUSE_SECRETS_DIR", dir("secrets")),
        ("BOILERHOUSE_SOCKET_DIR", dir("sockets")),
        ("BOILERHOUSE_DATA_DIR", dir("data")),
        ("BOILERHOUSE_WORKLOADS_DIR", dir("workloads")),
        ("BOILERHOUSE_WORKLOADS_DEBOUNCE_MS", "0".into()),
        ("BOILERHOUSE_MAX_CONTAINERS", "60".into()),
        ("BOILERHOUSE_IDLE_TIMEOUT_MS", "0".into()),
        ("BOILERHOUSE_CONTAINER_MEMORY_MB", "64".into()),
        ("RUST_LOG", "warn".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    println!("autoscale: instance {instance}, {secs} s per scenario, rates {rates:?}/s, mean hold {HOLD:?}");
    let daemon = BenchDaemon::start(&bin, root.path(), env).await?;
    let client = http::client()?;

    let mut rows = Vec::new();
    let mut peak = 0;
    // The autoscaled runs first: the large fixed pool is sized by their peak target.
    for (i, &rate) in rates.iter().enumerate() {
        for setting in [Setting::FixedSmall, Setting::Autoscale] {
            let row = scenario(
                &daemon, &client, &workloads, &image, setting, rate, duration, i as u64,
            )
            .await?;
            if setting == Setting::Autoscale {
                peak = peak.max(row.peak_target as usize);
            }
            rows.push(row);
        }
    }
    let large = Setting::FixedLarge(peak.max(2));
    for (i, &rate) in rates.iter().enumerate() {
        rows.push(
            scenario(
                &daemon, &client, &workloads, &image, large, rate, duration, i as u64,
            )
            .await?,
        );
    }

    let markdown = table(&rows, large);
    println!("\n{markdown}");
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench/autoscale.json");
    std::fs::create_dir_all(out.parent().ok_or("no parent")?)?;
    std::fs::write(&out, serde_json::to_vec_pretty(&to_json(&rows, secs))?)?;
    println!("written to {}", out.display());
    Ok(())
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn write_workload(dir: &Path, image: &str, setting: Setting) -> BenchResult<()> {
    let yaml = format!(
        "id: {POOL}\nimage: {image}\ncommand: [\"sleep\", \"infinity\"]\nuser: \"1000:1000\"\n\
         pool:\n  max_size: 40\n  recycle: destroy\n{}",
        setting.pool_block()
    );
    std::fs::write(dir.join(format!("{POOL}.yaml")), yaml)?;
    Ok(())
}

/// Switches the pool to `setting` (a reload applied in place) and waits until it
/// is calm: idle at its target, nothing starting, no held target.
async fn settle(
    daemon: &BenchDaemon,
    dir: &Path,
    image: &str,
    setting: Setting,
) -> BenchResult<()> {
    write_workload(dir, image, setting)?;
    let r = daemon.post("/workloads/reload", &json!({})).await?;
    if r.status != 200 {
        return Err(format!("reload answered {}: {}", r.status, r.body).into());
    }
    // A fixed pool keeps surplus idle containers (no idle_timeout here): the
    // previous scenario's are scaled away so each one starts from its own floor.
    match setting {
        Setting::FixedSmall => daemon.scale(POOL, 1).await?,
        Setting::FixedLarge(n) => daemon.scale(POOL, n).await?,
        Setting::Autoscale => {}
    }
    daemon
        .wait_pool(POOL, SETTLE, SAMPLE_EVERY, |v| {
            v["idleCount"] == v["idleTarget"]
                && v["startingCount"] == 0
                && v["claimedCount"] == 0
                && v["currentSize"] == v["idleCount"]
                && v["idleTargetReason"] != "scale_down_delay"
        })
        .await?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn scenario(
    daemon: &BenchDaemon,
    client: &reqwest::Client,
    dir: &Path,
    image: &str,
    setting: Setting,
    rate: f64,
    duration: Duration,
    seed: u64,
) -> BenchResult<Row> {
    settle(daemon, dir, image, setting).await?;
    println!("  {} at {rate}/s ...", setting.name());
    let before = daemon.pool(POOL).await?;

    // The pool's idle count and target, sampled while claims arrive.
    let samples: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (samples, stop) = (samples.clone(), stop.clone());
        let (client, url) = (client.clone(), daemon.url(&format!("/pools/{POOL}")));
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(t) = http::send(&client, &url, None).await {
                    let idle = t.body["idleCount"].as_u64().unwrap_or_default();
                    let target = t.body["idleTarget"].as_u64().unwrap_or_default();
                    samples
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((idle, target));
                }
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
        })
    };

    // Poisson arrivals (same seed per rate for every setting), exponential holds.
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed * 7919 + 17);
    let exp = |rng: &mut rand::rngs::StdRng, mean: f64| -> f64 {
        -mean * (1.0 - rng.random::<f64>()).ln()
    };
    let started = tokio::time::Instant::now();
    let mut at = 0.0;
    let mut tenants = Vec::new();
    let tag = format!("{:x}", rand::random::<u32>());
    loop {
        at += exp(&mut rng, 1.0 / rate);
        if at >= duration.as_secs_f64() {
            break;
        }
        let hold = Duration::from_secs_f64(exp(&mut rng, HOLD.as_secs_f64()));
        tokio::time::sleep_until(started + Duration::from_secs_f64(at)).await;
        let tenant = format!("t{tag}-{}", tenants.len());
        let (client, claim_url, release_url) = (
            client.clone(),
            daemon.url(&format!("/tenants/{tenant}/claim")),
            daemon.url(&format!("/tenants/{tenant}/release")),
        );
        tenants.push(tokio::spawn(async move {
            let claimed = http::send(&client, &claim_url, Some(&json!({"poolId": POOL}))).await;
            let outcome = match &claimed {
                Ok(t) if t.status == 200 => Some(t.elapsed),
                _ => None,
            };
            if outcome.is_some() {
                tokio::time::sleep(hold).await;
                let _ = http::send(&client, &release_url, Some(&json!({}))).await;
            }
            outcome
        }));
    }
    let mut latencies = Vec::new();
    let mut failed = 0;
    let claims = tenants.len();
    for t in tenants {
        match t.await.ok().flatten() {
            Some(d) => latencies.push(d),
            None => failed += 1,
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = sampler.await;
    let after = daemon.pool(POOL).await?;
    let delta = |k: &str| after[k].as_u64().unwrap_or(0) - before[k].as_u64().unwrap_or(0);
    let (new, warm) = (delta("claimsNew"), delta("claimsWarm"));
    let samples = samples.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mean_idle =
        samples.iter().map(|(i, _)| *i as f64).sum::<f64>() / samples.len().max(1) as f64;
    let peak_target = samples.iter().map(|(_, t)| *t).max().unwrap_or_default();
    Ok(Row {
        setting: setting.name(),
        rate,
        claims,
        failed,
        warm_ratio: if new == 0 {
            0.0
        } else {
            warm as f64 / new as f64
        },
        latency: Summary::of(&latencies),
        mean_idle,
        peak_target,
    })
}

fn table(rows: &[Row], large: Setting) -> String {
    let mut out = String::from(
        "| setting | rate /s | claims | failed | warm hits | claim p50 | claim p99 | mean idle | peak target |\n|---|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for r in rows {
        let (p50, p99) = r
            .latency
            .map(|s| (fmt_duration(s.p50), fmt_duration(s.p99)))
            .unwrap_or_default();
        out.push_str(&format!(
            "| {} | {} | {} | {} | {:.1} % | {p50} | {p99} | {:.1} | {} |\n",
            r.setting,
            r.rate,
            r.claims,
            r.failed,
            r.warm_ratio * 100.0,
            r.mean_idle,
            r.peak_target
        ));
    }
    // The goal, per rate: autoscaling at ≥ 99 % warm with fewer idle
    // containers on average than the fixed pool sized for the busiest rate.
    out.push('\n');
    for auto in rows
        .iter()
        .filter(|r| r.setting == Setting::Autoscale.name())
    {
        let fixed = rows
            .iter()
            .find(|r| r.setting == large.name() && r.rate == auto.rate);
        if let Some(f) = fixed {
            let met = auto.warm_ratio >= 0.99 && auto.mean_idle < f.mean_idle;
            out.push_str(&format!(
                "- goal at {}/s: autoscale {:.1} % warm with {:.1} idle on average vs {} {:.1} % with {:.1} → {}\n",
                auto.rate,
                auto.warm_ratio * 100.0,
                auto.mean_idle,
                f.setting,
                f.warm_ratio * 100.0,
                f.mean_idle,
                if met { "met" } else { "missed" }
            ));
        }
    }
    out
}

fn to_json(rows: &[Row], secs: u64) -> Value {
    json!({
        "date": chrono::Utc::now().to_rfc3339(),
        "secs_per_scenario": secs,
        "mean_hold_ms": ms(HOLD),
        "rows": rows.iter().map(|r| json!({
            "setting": r.setting,
            "rate_per_s": r.rate,
            "claims": r.claims,
            "failed": r.failed,
            "warm_hit_ratio": r.warm_ratio,
            "claim": r.latency.map(|s| s.to_json()),
            "mean_idle": r.mean_idle,
            "peak_idle_target": r.peak_target,
        })).collect::<Vec<_>>(),
    })
}
