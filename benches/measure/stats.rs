//! Latency samples → percentiles (nearest rank), and the daemon's resident memory.

use std::time::Duration;

use serde_json::{json, Value};

/// Percentiles of one series of samples.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub n: usize,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub mean: Duration,
}

impl Summary {
    /// None for an empty series.
    pub fn of(samples: &[Duration]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        let total: Duration = sorted.iter().sum();
        Some(Self {
            n: sorted.len(),
            p50: percentile(&sorted, 0.50),
            p90: percentile(&sorted, 0.90),
            p99: percentile(&sorted, 0.99),
            max: sorted[sorted.len() - 1],
            mean: total / sorted.len() as u32,
        })
    }

    pub fn to_json(self) -> Value {
        json!({
            "n": self.n,
            "p50_ms": ms(self.p50),
            "p90_ms": ms(self.p90),
            "p99_ms": ms(self.p99),
            "max_ms": ms(self.max),
            "mean_ms": ms(self.mean),
        })
    }
}

/// Nearest-rank percentile of sorted, non-empty samples.
fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Milliseconds as a float, for JSON and ratios.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A duration for the table: three significant-ish digits, in ms or s.
pub fn fmt_duration(d: Duration) -> String {
    let m = ms(d);
    if m < 10.0 {
        format!("{m:.3} ms")
    } else if m < 1000.0 {
        format!("{m:.1} ms")
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

/// Resident memory and thread count of a process, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    pub rss_kib: u64,
    pub threads: u64,
}

impl Memory {
    pub fn of(pid: u32) -> Option<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| -> Option<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        };
        Some(Self {
            rss_kib: field("VmRSS:")?,
            threads: field("Threads:")?,
        })
    }

    pub fn to_json(self) -> Value {
        json!({"rss_kib": self.rss_kib, "threads": self.threads})
    }
}

/// KiB (as `/proc` counts them) in MB of 10^6 bytes, the unit of the RSS target.
pub fn fmt_mb(kib: u64) -> String {
    format!("{:.1} MB", (kib * 1024) as f64 / 1e6)
}
