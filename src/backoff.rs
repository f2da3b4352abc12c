//! Exponential backoff after repeated failures, for every retry loop in the daemon:
//! a pool's container creation, the automatic release of an inactive claim whose
//! upload fails, and the Docker event stream's reconnect. One rule, tested once:
//! the n-th consecutive failure waits `initial × 2^(n-1)`, at most `max`.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            failures: 0,
        }
    }

    /// Counts a failure and says how long to wait before the next attempt.
    pub fn fail(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let exp = (self.failures - 1).min(16);
        self.initial.saturating_mul(1 << exp).min(self.max)
    }

    /// The operation succeeded: the next failure waits `initial` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Consecutive failures since the last reset.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_starts_over_after_a_reset() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let waits: Vec<u128> = (0..9).map(|_| b.fail().as_millis()).collect();
        assert_eq!(
            waits,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        assert_eq!(b.failures(), 9);
        b.reset();
        assert_eq!(b.failures(), 0);
        assert_eq!(b.fail(), Duration::from_millis(500));
        for _ in 0..100 {
            b.fail();
        }
        assert_eq!(b.fail(), Duration::from_secs(30), "no overflow");
    }
}
