//! The dashboard's own memory of the last hour: recent claim outcomes and latencies,
//! and pool depth sampled every [`SAMPLE_EVERY`]. It exists so the Metrics page can
//! draw charts without an external Prometheus; the Prometheus exporter in
//! `crate::metrics` stays the source for real monitoring.
//!
//! Bounded: at most [`CLAIM_CAPACITY`] claims (24 bytes each, ≈ 100 KiB) and
//! [`DEPTH_CAPACITY`] depth samples per pool (an hour at one per 10 s; 40 bytes each,
//! ≈ 14 KiB a pool). The oldest entries fall off first.
//!
//! Process-wide like the metrics recorder, because the recording site
//! (`crate::metrics::claim`) is a free function without the daemon's state.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::manager::ContainerManager;

pub const CLAIM_CAPACITY: usize = 4096;
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);
pub const DEPTH_CAPACITY: usize = 360;
/// What the charts cover.
pub const WINDOW: chrono::Duration = chrono::Duration::hours(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Warm,
    Cold,
    Reused,
    Exhausted,
    Unavailable,
    Error,
}

impl Outcome {
    /// The label `crate::metrics::claim` is given; unknown labels are errors.
    pub fn from_label(label: &str) -> Self {
        match label {
            "warm" => Self::Warm,
            "cold" => Self::Cold,
            "reused" => Self::Reused,
            "exhausted" => Self::Exhausted,
            "unavailable" => Self::Unavailable,
            _ => Self::Error,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct ClaimSample {
    pub at: DateTime<Utc>,
    pub outcome: Outcome,
    pub elapsed: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DepthSample {
    pub at: DateTime<Utc>,
    pub idle: usize,
    pub starting: usize,
    pub claimed: usize,
}

#[derive(Default)]
pub struct Samples {
    claims: VecDeque<ClaimSample>,
    depth: BTreeMap<String, VecDeque<DepthSample>>,
}

/// The process's samples.
pub fn global() -> &'static Mutex<Samples> {
    static SAMPLES: OnceLock<Mutex<Samples>> = OnceLock::new();
    SAMPLES.get_or_init(|| Mutex::new(Samples::default()))
}

/// Called by `crate::metrics::claim` for every claim answered.
pub fn record_claim(result: &str, elapsed: Duration) {
    let mut samples = global().lock().unwrap_or_else(|p| p.into_inner());
    samples.push_claim(ClaimSample {
        at: Utc::now(),
        outcome: Outcome::from_label(result),
        elapsed,
    });
}

/// Samples every pool's depth every [`SAMPLE_EVERY`] until the task is aborted.
pub async fn sample_pools(manager: std::sync::Arc<ContainerManager>) {
    let mut every = tokio::time::interval(SAMPLE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let views = manager.pool_views().await;
        let at = Utc::now();
        let mut samples = global().lock().unwrap_or_else(|p| p.into_inner());
        for v in views {
            samples.push_depth(
                &v.id,
                DepthSample {
                    at,
                    idle: v.idle_count,
                    starting: v.starting_count,
                    claimed: v.claimed_count,
                },
            );
        }
    }
}

/// Latency percentiles of one outcome, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Samples {
    pub fn push_claim(&mut self, sample: ClaimSample) {
        if self.claims.len() == CLAIM_CAPACITY {
            self.claims.pop_front();
        }
        self.claims.push_back(sample);
    }

    pub fn push_depth(&mut self, pool: &str, sample: DepthSample) {
        let series = self.depth.entry(pool.to_owned()).or_default();
        if series.len() == DEPTH_CAPACITY {
            series.pop_front();
        }
        series.push_back(sample);
    }

    fn recent_claims(&self, now: DateTime<Utc>) -> impl Iterator<Item = &ClaimSample> {
        self.claims.iter().filter(move |c| now - c.at <= WINDOW)
    }

    /// p50/p99 over the last hour's claims with this outcome; None without any.
    pub fn latency(&self, outcome: Outcome, now: DateTime<Utc>) -> Option<Latency> {
        let mut ms: Vec<f64> = self
            .recent_claims(now)
            .filter(|c| c.outcome == outcome)
            .map(|c| c.elapsed.as_secs_f64() * 1000.0)
            .collect();
        if ms.is_empty() {
            return None;
        }
        ms.sort_by(f64::total_cmp);
        // Nearest-rank percentiles: always one of the observed values.
        let rank = |p: f64| ms[((p * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1];
        Some(Latency {
            count: ms.len(),
            p50_ms: rank(0.50),
            p99_ms: rank(0.99),
        })
    }

    /// How many of the last hour's claims had each outcome.
    pub fn outcome_count(&self, outcome: Outcome, now: DateTime<Utc>) -> usize {
        self.recent_claims(now)
            .filter(|c| c.outcome == outcome)
            .count()
    }

    /// Claims per minute over the last hour, oldest minute first (60 buckets; the
    /// last one is the minute in progress).
    pub fn claims_per_minute(&self, now: DateTime<Utc>) -> Vec<usize> {
        let mut buckets = vec![0; 60];
        for c in self.recent_claims(now) {
            let age = (now - c.at).num_seconds().max(0) as usize / 60;
            if age < 60 {
                buckets[59 - age] += 1;
            }
        }
        buckets
    }

    /// Each pool's depth samples of the last hour, oldest first.
    pub fn depth(&self, now: DateTime<Utc>) -> Vec<(String, Vec<DepthSample>)> {
        self.depth
            .iter()
            .map(|(pool, series)| {
                let recent = series
                    .iter()
                    .filter(|s| now - s.at <= WINDOW)
                    .copied()
                    .collect();
                (pool.clone(), recent)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(at: DateTime<Utc>, outcome: Outcome, ms: u64) -> ClaimSample {
        ClaimSample {
            at,
            outcome,
            elapsed: Duration::from_millis(ms),
        }
    }

    #[test]
    fn percentiles_are_nearest_rank_per_outcome() {
        let now = Utc::now();
        let mut s = Samples::default();
        for ms in 1..=100 {
            s.push_claim(claim(now, Outcome::Warm, ms));
        }
        s.push_claim(claim(now, Outcome::Cold, 900));
        let warm = s.latency(Outcome::Warm, now).unwrap();
        assert_eq!((warm.count, warm.p50_ms, warm.p99_ms), (100, 50.0, 99.0));
        let cold = s.latency(Outcome::Cold, now).unwrap();
        assert_eq!((cold.count, cold.p50_ms, cold.p99_ms), (1, 900.0, 900.0));
        assert_eq!(s.latency(Outcome::Exhausted, now), None);
    }

    #[test]
    fn claims_older_than_an_hour_are_left_out_and_minutes_bucket_by_age() {
        let now = Utc::now();
        let mut s = Samples::default();
        s.push_claim(claim(now - chrono::Duration::minutes(61), Outcome::Warm, 1));
        s.push_claim(claim(now - chrono::Duration::seconds(90), Outcome::Warm, 1));
        s.push_claim(claim(now, Outcome::Exhausted, 1));
        s.push_claim(claim(now, Outcome::Warm, 1));
        assert_eq!(s.outcome_count(Outcome::Warm, now), 2);
        let per_minute = s.claims_per_minute(now);
        assert_eq!(per_minute.len(), 60);
        assert_eq!(per_minute[59], 2, "this minute: one warm, one exhausted");
        assert_eq!(per_minute[58], 1, "90 s ago falls in the minute before");
        assert_eq!(per_minute.iter().sum::<usize>(), 3);
    }

    #[test]
    fn memory_stays_bounded() {
        let now = Utc::now();
        let mut s = Samples::default();
        for _ in 0..CLAIM_CAPACITY + 10 {
            s.push_claim(claim(now, Outcome::Cold, 5));
        }
        assert_eq!(s.claims.len(), CLAIM_CAPACITY);
        let depth = DepthSample {
            at: now,
            idle: 1,
            starting: 0,
            claimed: 2,
        };
        for _ in 0..DEPTH_CAPACITY + 10 {
            s.push_depth("web", depth);
        }
        assert_eq!(s.depth["web"].len(), DEPTH_CAPACITY);
        assert_eq!(
            s.depth(now),
            vec![("web".to_owned(), vec![depth; DEPTH_CAPACITY])]
        );
    }

    #[test]
    fn unknown_outcome_labels_count_as_errors() {
        assert_eq!(Outcome::from_label("warm"), Outcome::Warm);
        assert_eq!(Outcome::from_label("something"), Outcome::Error);
    }
}
