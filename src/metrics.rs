//! Prometheus metrics (SPEC §9), through the `metrics` facade and its Prometheus
//! exporter. Recording sites call the small functions here so metric names and
//! labels are spelled in one place.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];

/// Installs the process-wide recorder once; later calls get the same handle.
pub fn install() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .ok()?
                .install_recorder()
                .map_err(|e| tracing::warn!(error = %e, "metrics recorder not installed"))
                .ok()
        })
        .clone()
}

/// `result`: warm, cold, reused, exhausted, unavailable or error.
pub fn claim(pool: &str, result: &'static str, elapsed: Duration) {
    metrics::counter!("boilerhouse_claims_total", "pool" => pool.to_owned(), "result" => result)
        .increment(1);
    metrics::histogram!("boilerhouse_claim_duration_seconds", "pool" => pool.to_owned(), "result" => result)
        .record(elapsed.as_secs_f64());
    // The dashboard's Metrics page draws from its own samples (no Prometheus needed).
    crate::ui::samples::record_claim(result, elapsed);
}

pub fn release(pool: &str, ok: bool, elapsed: Duration) {
    let result = if ok { "ok" } else { "error" };
    metrics::counter!("boilerhouse_releases_total", "pool" => pool.to_owned(), "result" => result)
        .increment(1);
    metrics::histogram!("boilerhouse_release_duration_seconds", "pool" => pool.to_owned())
        .record(elapsed.as_secs_f64());
}

pub fn sync(pool: &str, direction: &'static str, ok: bool, elapsed: Duration) {
    metrics::histogram!("boilerhouse_sync_duration_seconds", "pool" => pool.to_owned(), "direction" => direction)
        .record(elapsed.as_secs_f64());
    if !ok {
        metrics::counter!("boilerhouse_sync_failures_total", "pool" => pool.to_owned(), "direction" => direction)
            .increment(1);
    }
}

/// A download the engine did itself (`ok`), or began and handed to rclone after a
/// failure (`fell_back`); see `crate::sync` (fetch).
pub fn own_download(ok: bool) {
    let result = if ok { "ok" } else { "fell_back" };
    metrics::counter!("boilerhouse_sync_own_downloads_total", "result" => result).increment(1);
}

pub fn container_created(pool: &str, ok: bool, elapsed: Duration) {
    if ok {
        metrics::histogram!("boilerhouse_container_create_duration_seconds", "pool" => pool.to_owned())
            .record(elapsed.as_secs_f64());
    } else {
        metrics::counter!("boilerhouse_container_create_failures_total", "pool" => pool.to_owned())
            .increment(1);
    }
}

pub fn docker_error(operation: &'static str) {
    metrics::counter!("boilerhouse_docker_errors_total", "operation" => operation).increment(1);
}

/// One pool's figures for the gauges (the pool module fills it from its view, so
/// metrics depends on nothing of the pool's).
pub struct PoolGauges {
    pub pool: String,
    pub idle: usize,
    pub claimed: usize,
    pub starting: usize,
    pub releasing: usize,
    pub min_size: usize,
    pub max_size: usize,
    pub healthy: bool,
    pub probe_timeouts: usize,
    pub create_concurrency: usize,
    pub ready_timeout: Duration,
    pub idle_target: usize,
    /// One of `min_size`, `demand`, `scale_down_delay`, `max_size`, `node_cap`.
    pub idle_target_reason: &'static str,
    pub claims_new: u64,
    pub claims_warm: u64,
    pub warm_hit_ratio: Option<f64>,
    pub rolling: bool,
}

/// Gauges derived from the pools' state at scrape time.
pub fn set_pool_gauges(pools: impl IntoIterator<Item = PoolGauges>) {
    for p in pools {
        for (state, n) in [
            ("idle", p.idle),
            ("claimed", p.claimed),
            ("starting", p.starting),
            ("releasing", p.releasing),
        ] {
            metrics::gauge!("boilerhouse_containers", "pool" => p.pool.clone(), "state" => state)
                .set(n as f64);
        }
        metrics::gauge!("boilerhouse_pool_min_size", "pool" => p.pool.clone())
            .set(p.min_size as f64);
        metrics::gauge!("boilerhouse_pool_max_size", "pool" => p.pool.clone())
            .set(p.max_size as f64);
        metrics::gauge!("boilerhouse_pool_healthy", "pool" => p.pool.clone()).set(if p.healthy {
            1.0
        } else {
            0.0
        });
        // Warm-up under load: probe time-outs in the last minute, and how many create
        // calls the pool allows in flight because of them.
        metrics::gauge!("boilerhouse_pool_probe_timeouts", "pool" => p.pool.clone())
            .set(p.probe_timeouts as f64);
        metrics::gauge!("boilerhouse_pool_create_concurrency", "pool" => p.pool.clone())
            .set(p.create_concurrency as f64);
        metrics::gauge!("boilerhouse_pool_ready_timeout_seconds", "pool" => p.pool.clone())
            .set(p.ready_timeout.as_secs_f64());
        set_demand_gauges(&p);
    }
}

/// The idle target and why, warm hits, and whether a rollout runs (issue 15).
fn set_demand_gauges(p: &PoolGauges) {
    metrics::gauge!("boilerhouse_pool_idle_target", "pool" => p.pool.clone())
        .set(p.idle_target as f64);
    for reason in IDLE_TARGET_REASONS {
        let current = if *reason == p.idle_target_reason {
            1.0
        } else {
            0.0
        };
        metrics::gauge!("boilerhouse_pool_idle_target_reason", "pool" => p.pool.clone(), "reason" => *reason)
            .set(current);
    }
    metrics::counter!("boilerhouse_pool_claims_new_total", "pool" => p.pool.clone())
        .absolute(p.claims_new);
    metrics::counter!("boilerhouse_pool_claims_warm_total", "pool" => p.pool.clone())
        .absolute(p.claims_warm);
    if let Some(ratio) = p.warm_hit_ratio {
        metrics::gauge!("boilerhouse_pool_warm_hit_ratio", "pool" => p.pool.clone()).set(ratio);
    }
    metrics::gauge!("boilerhouse_pool_rollout_in_progress", "pool" => p.pool.clone())
        .set(if p.rolling { 1.0 } else { 0.0 });
}

const IDLE_TARGET_REASONS: &[&str] = &[
    "min_size",
    "demand",
    "scale_down_delay",
    "max_size",
    "node_cap",
];

/// `result`: `applied` (the set was valid) or `rejected` (nothing changed).
pub fn reload(trigger: &'static str, result: &'static str) {
    metrics::counter!("boilerhouse_workload_reloads_total", "trigger" => trigger, "result" => result)
        .increment(1);
}

pub fn rollout_started(pool: &str) {
    metrics::counter!("boilerhouse_pool_rollouts_started_total", "pool" => pool.to_owned())
        .increment(1);
}

pub fn rollout_completed(pool: &str, took: Duration) {
    metrics::counter!("boilerhouse_pool_rollouts_completed_total", "pool" => pool.to_owned())
        .increment(1);
    metrics::histogram!("boilerhouse_pool_rollout_duration_seconds", "pool" => pool.to_owned())
        .record(took.as_secs_f64());
}

/// A claim restored from the local state cache instead of S3.
pub fn state_cache_hit(pool: &str, bytes: u64) {
    metrics::counter!("boilerhouse_state_cache_hits_total", "pool" => pool.to_owned()).increment(1);
    metrics::counter!("boilerhouse_state_cache_hit_bytes_total", "pool" => pool.to_owned())
        .increment(bytes);
}

/// A claim that could not restore from the cache, by reason (`absent`, `evicted`,
/// `remote_changed`, `check_failed`, `disabled`, …).
pub fn state_cache_miss(pool: &str, reason: &'static str) {
    metrics::counter!("boilerhouse_state_cache_misses_total", "pool" => pool.to_owned(), "reason" => reason)
        .increment(1);
}

/// A release stored (`ok`) or could not store its tenant's state in the cache.
pub fn state_cache_fill(pool: &str, ok: bool, bytes: u64) {
    let result = if ok { "ok" } else { "skipped" };
    metrics::counter!("boilerhouse_state_cache_fills_total", "pool" => pool.to_owned(), "result" => result)
        .increment(1);
    metrics::counter!("boilerhouse_state_cache_fill_bytes_total", "pool" => pool.to_owned())
        .increment(bytes);
}

/// Bytes the state cache holds.
pub fn state_cache_size(bytes: u64) {
    metrics::gauge!("boilerhouse_state_cache_bytes").set(bytes as f64);
}
