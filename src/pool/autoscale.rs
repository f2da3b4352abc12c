//! The pool's idle target: how many idle ready containers it keeps. Without
//! `pool.autoscale` it is `min_size`; with it, the claims that arrived in the recent
//! window plus a buffer, held up for a scale-down delay after a peak, and bounded by
//! `min_size`, `max_size` and the node cap. Also the pool's warm-hit counts, which
//! every pool keeps (claims that took an idle container / all new claims).
//!
//! The arithmetic is a pure function ([`compute`]) so it is tested without a pool.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::workload::AutoscaleSpec;

/// Why the idle target is what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TargetReason {
    /// The floor: `min_size` (always the reason without autoscaling).
    MinSize,
    /// Recent claims plus the buffer.
    Demand,
    /// Demand fell, but the target holds its last peak until the scale-down delay ends.
    ScaleDownDelay,
    /// Cut to what `max_size` leaves beside the claimed containers.
    MaxSize,
    /// Cut to what the node cap (`BOILERHOUSE_MAX_CONTAINERS`) leaves free.
    NodeCap,
}

impl TargetReason {
    pub const ALL: [TargetReason; 5] = [
        TargetReason::MinSize,
        TargetReason::Demand,
        TargetReason::ScaleDownDelay,
        TargetReason::MaxSize,
        TargetReason::NodeCap,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TargetReason::MinSize => "min_size",
            TargetReason::Demand => "demand",
            TargetReason::ScaleDownDelay => "scale_down_delay",
            TargetReason::MaxSize => "max_size",
            TargetReason::NodeCap => "node_cap",
        }
    }
}

/// What the target is computed from, at one moment.
#[derive(Debug, Clone, Copy)]
pub(super) struct Inputs {
    pub min_size: usize,
    pub max_size: usize,
    /// Containers tenants hold (provisioning, warm or releasing).
    pub claimed: usize,
    /// Idle + starting containers of this pool plus the node's free slots: the most
    /// idle containers the node cap lets this pool have.
    pub node_room: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Target {
    pub value: usize,
    pub reason: TargetReason,
}

/// `desired` is demand + buffer as held by the scale-down delay; `held` says the
/// hold is what keeps it up.
pub(super) fn compute(inputs: Inputs, desired: Option<(usize, bool)>) -> Target {
    let (mut value, mut reason) = match desired {
        None => (inputs.min_size, TargetReason::MinSize),
        Some((d, _)) if d < inputs.min_size => (inputs.min_size, TargetReason::MinSize),
        Some((d, true)) => (d, TargetReason::ScaleDownDelay),
        Some((d, false)) => (d, TargetReason::Demand),
    };
    let max_room = inputs.max_size.saturating_sub(inputs.claimed);
    if value > max_room {
        (value, reason) = (max_room, TargetReason::MaxSize);
    }
    if value > inputs.node_room {
        (value, reason) = (inputs.node_room, TargetReason::NodeCap);
    }
    Target { value, reason }
}

/// The pool's record of demand: claim arrivals in the window, the held peak, and
/// the warm-hit counts.
pub(super) struct Demand {
    arrivals: VecDeque<Instant>,
    /// The highest demand + buffer since `peak_at`, which the target holds until
    /// the scale-down delay has passed.
    peak: usize,
    peak_at: Instant,
    pub(super) warm: u64,
    pub(super) new_claims: u64,
    pub(super) target: Target,
}

impl Demand {
    pub(super) fn new(min_size: usize) -> Self {
        Self {
            arrivals: VecDeque::new(),
            peak: 0,
            peak_at: Instant::now(),
            warm: 0,
            new_claims: 0,
            target: Target {
                value: min_size,
                reason: TargetReason::MinSize,
            },
        }
    }

    /// A new claim (not a repeat by a tenant that holds or awaits a container);
    /// `warm`: an idle container was there for it.
    pub(super) fn claim_arrived(&mut self, warm: bool) {
        self.new_claims += 1;
        self.warm += u64::from(warm);
        self.arrivals.push_back(Instant::now());
    }

    /// Claims that arrived within `window` of `now` (older ones are forgotten).
    pub(super) fn arrivals(&mut self, window: Duration, now: Instant) -> usize {
        while self
            .arrivals
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > window)
        {
            self.arrivals.pop_front();
        }
        self.arrivals.len()
    }

    /// Recomputes the target at `now`.
    pub(super) fn update(&mut self, spec: Option<&AutoscaleSpec>, inputs: Inputs, now: Instant) {
        let desired = spec.map(|a| {
            let demand = self.arrivals(a.window, now) + a.buffer.of(inputs.claimed);
            if demand >= self.peak
                || now.saturating_duration_since(self.peak_at) >= a.scale_down_delay
            {
                self.peak = demand;
                self.peak_at = now;
            }
            (self.peak, self.peak > demand)
        });
        if spec.is_none() {
            self.arrivals.clear();
        }
        self.target = compute(inputs, desired);
    }

    pub(super) fn warm_hit_ratio(&self) -> Option<f64> {
        (self.new_claims > 0).then(|| self.warm as f64 / self.new_claims as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Buffer;

    fn inputs(min_size: usize, max_size: usize, claimed: usize) -> Inputs {
        Inputs {
            min_size,
            max_size,
            claimed,
            node_room: 1000,
        }
    }

    fn spec(buffer: Buffer, window: u64, delay: u64) -> AutoscaleSpec {
        AutoscaleSpec {
            buffer,
            window: Duration::from_secs(window),
            scale_down_delay: Duration::from_secs(delay),
        }
    }

    #[test]
    fn without_autoscale_the_target_is_min_size_within_the_limits() {
        let t = compute(inputs(3, 10, 0), None);
        assert_eq!((t.value, t.reason), (3, TargetReason::MinSize));
        let t = compute(inputs(3, 10, 8), None);
        assert_eq!((t.value, t.reason), (2, TargetReason::MaxSize));
        let mut i = inputs(3, 10, 0);
        i.node_room = 1;
        let t = compute(i, None);
        assert_eq!((t.value, t.reason), (1, TargetReason::NodeCap));
    }

    #[test]
    fn the_target_is_demand_plus_buffer_never_below_min_size() {
        let t = compute(inputs(2, 50, 0), Some((7, false)));
        assert_eq!((t.value, t.reason), (7, TargetReason::Demand));
        let t = compute(inputs(9, 50, 0), Some((7, false)));
        assert_eq!((t.value, t.reason), (9, TargetReason::MinSize));
        let t = compute(inputs(2, 50, 0), Some((7, true)));
        assert_eq!((t.value, t.reason), (7, TargetReason::ScaleDownDelay));
        let t = compute(inputs(2, 10, 6), Some((7, false)));
        assert_eq!((t.value, t.reason), (4, TargetReason::MaxSize));
    }

    #[test]
    fn a_burst_raises_the_target_at_once_and_a_lull_lowers_it_after_the_delay() {
        let a = spec(Buffer::Count(2), 10, 30);
        let mut d = Demand::new(1);
        let t0 = Instant::now();
        d.update(Some(&a), inputs(1, 50, 0), t0);
        assert_eq!((d.target.value, d.target.reason), (2, TargetReason::Demand));
        for _ in 0..6 {
            d.claim_arrived(true);
        }
        d.update(Some(&a), inputs(1, 50, 6), t0);
        assert!(d.target.value >= 8, "6 arrivals + 2: {:?}", d.target);
        // The window has passed: demand is back to the buffer, but the delay holds.
        let later = Instant::now() + Duration::from_secs(11);
        d.update(Some(&a), inputs(1, 50, 0), later);
        assert_eq!(d.target.reason, TargetReason::ScaleDownDelay);
        assert!(d.target.value >= 8);
        let after_delay = later + Duration::from_secs(31);
        d.update(Some(&a), inputs(1, 50, 0), after_delay);
        assert_eq!((d.target.value, d.target.reason), (2, TargetReason::Demand));
    }

    #[test]
    fn a_percentage_buffer_follows_the_claimed_count() {
        let a = spec(Buffer::Percent(25), 10, 0);
        let mut d = Demand::new(0);
        d.update(Some(&a), inputs(0, 100, 10), Instant::now());
        assert_eq!(d.target.value, 3, "25% of 10 claimed, rounded up");
    }

    #[test]
    fn warm_hits_count_new_claims_only() {
        let mut d = Demand::new(0);
        assert_eq!(d.warm_hit_ratio(), None);
        d.claim_arrived(true);
        d.claim_arrived(true);
        d.claim_arrived(true);
        d.claim_arrived(false);
        assert_eq!(d.warm_hit_ratio(), Some(0.75));
    }
}
