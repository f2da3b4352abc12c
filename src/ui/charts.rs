//! Geometry for the inline SVG charts, computed here so templates only place
//! numbers in attributes. Every chart uses a fixed `viewBox` and scales with CSS.

use chrono::{DateTime, Utc};

use super::samples::{DepthSample, WINDOW};
use crate::pool::PoolView;

pub const WIDTH: f64 = 600.0;
pub const HEIGHT: f64 = 160.0;

fn px(v: f64) -> String {
    format!("{v:.1}")
}

/// A pool's size against its bounds: idle, starting and claimed stacked, with the
/// min and max marked.
pub struct SizeBar {
    pub claimed_w: String,
    pub starting_x: String,
    pub starting_w: String,
    pub idle_x: String,
    pub idle_w: String,
    pub min_x: String,
    pub label: String,
}

impl SizeBar {
    pub fn new(p: &PoolView) -> Self {
        let scale = WIDTH / p.max_size.max(1) as f64;
        let claimed = p.claimed_count as f64 * scale;
        let starting = p.starting_count as f64 * scale;
        let idle = p.idle_count as f64 * scale;
        Self {
            claimed_w: px(claimed),
            starting_x: px(claimed),
            starting_w: px(starting),
            idle_x: px(claimed + starting),
            idle_w: px(idle),
            min_x: px(p.min_size as f64 * scale),
            label: format!(
                "{} claimed, {} starting, {} idle; min {}, max {}",
                p.claimed_count, p.starting_count, p.idle_count, p.min_size, p.max_size
            ),
        }
    }
}

/// Warm, cold and exhausted claims as shares of one bar.
pub struct RatioBar {
    pub warm: usize,
    pub cold: usize,
    pub exhausted: usize,
    pub warm_pct: String,
    pub cold_pct: String,
    pub exhausted_pct: String,
    pub warm_w: String,
    pub cold_x: String,
    pub cold_w: String,
    pub exhausted_x: String,
    pub exhausted_w: String,
}

impl RatioBar {
    pub fn new(warm: usize, cold: usize, exhausted: usize) -> Self {
        let total = (warm + cold + exhausted).max(1) as f64;
        let share = |n: usize| n as f64 / total;
        let pct = |n: usize| format!("{:.0}%", share(n) * 100.0);
        Self {
            warm,
            cold,
            exhausted,
            warm_pct: pct(warm),
            cold_pct: pct(cold),
            exhausted_pct: pct(exhausted),
            warm_w: px(share(warm) * WIDTH),
            cold_x: px(share(warm) * WIDTH),
            cold_w: px(share(cold) * WIDTH),
            exhausted_x: px((share(warm) + share(cold)) * WIDTH),
            exhausted_w: px(share(exhausted) * WIDTH),
        }
    }
}

pub struct Bar {
    pub x: String,
    pub y: String,
    pub w: String,
    pub h: String,
    pub title: String,
}

/// Claims per minute: one bar per minute of the last hour.
pub struct Bars {
    pub bars: Vec<Bar>,
    pub max: usize,
    pub total: usize,
}

impl Bars {
    pub fn new(per_minute: &[usize]) -> Self {
        let max = per_minute.iter().copied().max().unwrap_or(0);
        let n = per_minute.len().max(1) as f64;
        let slot = WIDTH / n;
        let bars = per_minute
            .iter()
            .enumerate()
            .map(|(i, &count)| {
                let h = count as f64 / max.max(1) as f64 * (HEIGHT - 10.0);
                let ago = per_minute.len() - 1 - i;
                Bar {
                    x: px(i as f64 * slot + 1.0),
                    y: px(HEIGHT - h),
                    w: px((slot - 2.0).max(1.0)),
                    h: px(h),
                    title: format!("{count} claims, {ago} min ago"),
                }
            })
            .collect();
        Self {
            bars,
            max,
            total: per_minute.iter().sum(),
        }
    }
}

/// One pool's idle and claimed counts over the last hour, as two polylines.
pub struct DepthChart {
    pub pool: String,
    pub idle: String,
    pub claimed: String,
    pub max: usize,
    pub samples: usize,
    pub last: String,
}

impl DepthChart {
    pub fn new(pool: String, series: &[DepthSample], now: DateTime<Utc>) -> Self {
        let max = series
            .iter()
            .map(|s| s.idle.max(s.claimed))
            .max()
            .unwrap_or(0)
            .max(1);
        let window = WINDOW.num_milliseconds() as f64;
        let point = |s: &DepthSample, n: usize| {
            let age = (now - s.at).num_milliseconds() as f64;
            let x = (1.0 - age / window).clamp(0.0, 1.0) * WIDTH;
            let y = HEIGHT - 5.0 - n as f64 / max as f64 * (HEIGHT - 10.0);
            format!("{},{}", px(x), px(y))
        };
        let line = |f: fn(&DepthSample) -> usize| {
            series
                .iter()
                .map(|s| point(s, f(s)))
                .collect::<Vec<_>>()
                .join(" ")
        };
        Self {
            idle: line(|s| s.idle),
            claimed: line(|s| s.claimed),
            max,
            samples: series.len(),
            last: series
                .last()
                .map(|s| {
                    format!(
                        "now {} idle, {} claimed, {} starting",
                        s.idle, s.claimed, s.starting
                    )
                })
                .unwrap_or_else(|| "no samples yet".into()),
            pool,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_to_the_busiest_minute() {
        let b = Bars::new(&[0, 2, 4]);
        assert_eq!(b.max, 4);
        assert_eq!(b.total, 6);
        assert_eq!(b.bars[2].h, px(HEIGHT - 10.0));
        assert_eq!(b.bars[1].h, px((HEIGHT - 10.0) / 2.0));
        assert_eq!(b.bars[0].h, px(0.0));
        assert_eq!(b.bars[0].title, "0 claims, 2 min ago");
    }

    #[test]
    fn ratio_shares_add_up_to_the_width() {
        let r = RatioBar::new(3, 1, 0);
        assert_eq!(r.warm_pct, "75%");
        assert_eq!(r.cold_x, px(WIDTH * 0.75));
        assert_eq!(r.exhausted_x, px(WIDTH));
        let empty = RatioBar::new(0, 0, 0);
        assert_eq!(empty.warm_w, px(0.0));
    }

    #[test]
    fn depth_points_run_from_an_hour_ago_to_now() {
        let now = Utc::now();
        let at = |mins| DepthSample {
            at: now - chrono::Duration::minutes(mins),
            idle: 2,
            starting: 0,
            claimed: 0,
        };
        let c = DepthChart::new("web".into(), &[at(60), at(0)], now);
        assert_eq!(c.idle, format!("0.0,5.0 {},5.0", px(WIDTH)));
        assert_eq!(c.samples, 2);
    }
}
