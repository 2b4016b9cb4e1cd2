//! Jittered exponential backoff with a cap ("full jitter" on the upper half of each step).
//!
//! Pure: it hands out durations and never sleeps, so the reconnect state machine that uses it
//! can be tested without time.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        let max = max.max(min);
        Self {
            min,
            max,
            attempt: 0,
        }
    }

    /// The undithered delay of the next attempt: `min * 2^attempt`, capped at `max`.
    pub fn base_delay(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// Next delay: uniformly in `[base/2, base]`, so synchronised reconnects spread out while
    /// the delay still grows. Never below `min / 2`, never above `max`.
    pub fn next_delay(&mut self) -> Duration {
        self.next_delay_with(&mut rand::thread_rng())
    }

    pub fn next_delay_with(&mut self, rng: &mut impl Rng) -> Duration {
        let base = self.base_delay();
        self.attempt = self.attempt.saturating_add(1);
        let half = base / 2;
        let span = base - half;
        if span.is_zero() {
            return base;
        }
        half + span.mul_f64(rng.gen::<f64>())
    }

    /// The link came up: start from `min` again next time.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;

    #[test]
    fn grows_then_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let bases: Vec<_> = (0..8)
            .map(|_| {
                let d = b.base_delay();
                b.next_delay();
                d.as_millis()
            })
            .collect();
        assert_eq!(bases, vec![100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        b.reset();
        assert_eq!(b.base_delay(), Duration::from_millis(100));
    }

    proptest! {
        #[test]
        fn delay_within_bounds(seed in any::<u64>(), min_ms in 1u64..5_000, extra in 0u64..60_000, n in 0usize..64) {
            let min = Duration::from_millis(min_ms);
            let max = Duration::from_millis(min_ms + extra);
            let mut b = Backoff::new(min, max);
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            for _ in 0..n {
                let d = b.next_delay_with(&mut rng);
                prop_assert!(d <= max);
                prop_assert!(d >= min / 2);
            }
        }
    }
}
