//! The only place that reads the wall clock.
//!
//! A `Clock` pins one wall-clock instant to one `tokio::time::Instant` and derives every later
//! "now" from tokio's monotonic time. Under `#[tokio::test(start_paused = true)]` the wall clock
//! therefore advances exactly as paused tokio time does, so an hour of schedule runs in
//! milliseconds and timestamps stay consistent with timers.

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin_utc: DateTime<Utc>,
    origin: Instant,
}

impl Clock {
    /// A clock anchored at the real wall time.
    #[allow(clippy::disallowed_methods)] // the one sanctioned wall-clock read
    pub fn system() -> Self {
        Self {
            origin_utc: Utc::now(),
            origin: Instant::now(),
        }
    }

    /// A clock that reads `at` now and advances with tokio time (tests, simulations).
    pub fn starting_at(at: DateTime<Utc>) -> Self {
        Self {
            origin_utc: at,
            origin: Instant::now(),
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        let elapsed = Instant::now().saturating_duration_since(self.origin);
        self.origin_utc + ChronoDuration::from_std(elapsed).unwrap_or(ChronoDuration::zero())
    }

    /// Monotonic instant, for timers and ages.
    pub fn instant(&self) -> Instant {
        Instant::now()
    }

    /// The wall time that corresponds to a monotonic instant taken from this clock.
    pub fn at(&self, instant: Instant) -> DateTime<Utc> {
        let d = instant.saturating_duration_since(self.origin);
        self.origin_utc + ChronoDuration::from_std(d).unwrap_or(ChronoDuration::zero())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[tokio::test(start_paused = true)]
    async fn advances_with_paused_time() {
        let t0 = Utc.with_ymd_and_hms(2026, 11, 27, 9, 0, 0).unwrap();
        let clock = Clock::starting_at(t0);
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        assert_eq!(clock.now(), t0 + ChronoDuration::hours(1));
    }
}
