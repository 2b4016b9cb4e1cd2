//! The only place that reads the wall clock.
//!
//! A `Clock` pins one wall-clock instant to one `tokio::time::Instant` and derives every later
//! "now" from tokio's monotonic time. Under `#[tokio::test(start_paused = true)]` the wall clock
//! therefore advances exactly as paused tokio time does, so an hour of schedule runs in
//! milliseconds and timestamps stay consistent with timers.
//!
//! [`FastTime`] is the demo's fast clock (`avwarden demo --fast`): it pauses tokio time and
//! advances it a fixed factor faster than the wall clock, so every timer (poll intervals, T-60
//! jobs, meter scripts, battery drain) and every `Clock::now()` run at the same speed. Nothing
//! but the demo may use it: a real site's timeouts must mean real seconds.

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

/// Why the fast clock cannot run.
#[derive(Debug, thiserror::Error)]
pub enum FastTimeError {
    /// Tokio pauses time only on a current-thread runtime.
    #[error("the fast clock needs a current-thread runtime")]
    NotCurrentThread,
    #[error("the speed-up must be a finite factor of at least 1, got {0}")]
    BadFactor(f64),
}

/// How often the pacer moves tokio time: the fast clock's resolution in real time. At 60× a
/// tick is 0.12 s of demo time, finer than any poll interval or reply timeout.
const TICK: std::time::Duration = std::time::Duration::from_millis(2);
/// The most real time one step of the pacer stands for (see the pacer's loop).
const MAX_STEP: std::time::Duration = std::time::Duration::from_millis(4);

/// Tokio time running `factor` times faster than the wall clock (the demo's `--fast`).
///
/// Tokio's paused clock only moves when told to (or, when the runtime is idle, jumps to the
/// next timer, which would run the demo as fast as the machine can and starve I/O of its
/// timeouts). A blocking thread measures real time and hands each tick to a task that
/// advances tokio time by the tick times the factor; a running blocking task also keeps
/// tokio from jumping ahead on its own. The factor can be lowered to 1 for the shutdown, so
/// its deadline means real time again.
#[derive(Debug, Clone)]
pub struct FastTime {
    factor_millis: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl FastTime {
    /// Pause tokio time, start pacing it at `factor`× on `tasks` until `cancel`, and return the
    /// clock that reads the wall time from it (anchored at the real time now).
    #[allow(clippy::disallowed_methods, clippy::disallowed_types)] // the pacer measures real time
    pub fn start(
        factor: f64,
        tasks: &tokio_util::task::TaskTracker,
        cancel: tokio_util::sync::CancellationToken,
    ) -> Result<(FastTime, Clock), FastTimeError> {
        if !factor.is_finite() || factor < 1.0 {
            return Err(FastTimeError::BadFactor(factor));
        }
        if tokio::runtime::Handle::current().runtime_flavor()
            != tokio::runtime::RuntimeFlavor::CurrentThread
        {
            return Err(FastTimeError::NotCurrentThread);
        }
        let origin_utc = Utc::now();
        tokio::time::pause();
        let clock = Clock::starting_at(origin_utc);
        let fast = FastTime {
            factor_millis: std::sync::Arc::new(std::sync::atomic::AtomicU64::new(
                (factor * 1000.0) as u64,
            )),
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<std::time::Duration>();
        // Ends at the first tick after the receiver is gone (the pacer stopped).
        tasks.spawn_blocking(move || {
            let mut last = std::time::Instant::now();
            loop {
                std::thread::sleep(TICK);
                let now = std::time::Instant::now();
                if tx.send(now.duration_since(last)).is_err() {
                    break;
                }
                last = now;
            }
        });
        let factor_millis = fast.factor_millis.clone();
        tasks.spawn(async move {
            loop {
                let mut real = tokio::select! {
                    _ = cancel.cancelled() => break,
                    r = rx.recv() => match r {
                        Some(r) => r,
                        None => break,
                    },
                };
                // Ticks that queued while the runtime was busy (or the process was not
                // scheduled) are dropped, not taken at once: one long leap would expire every
                // reply timeout before the replies already waiting could be read. A busy demo
                // runs behind the factor instead.
                while rx.try_recv().is_ok() {}
                real = real.min(MAX_STEP);
                let f = factor_millis.load(std::sync::atomic::Ordering::Relaxed);
                tokio::time::advance(real * f as u32 / 1000).await;
            }
        });
        Ok((fast, clock))
    }

    /// Run at `factor`× from now on (1 for real time).
    pub fn set_factor(&self, factor: f64) {
        if factor.is_finite() && factor >= 1.0 {
            self.factor_millis.store(
                (factor * 1000.0) as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
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

    /// The fast clock moves tokio time, and with it `now()` and timers, many times faster
    /// than real time; a sleep of 60 s ends after about one real second at 60×.
    #[test]
    #[allow(clippy::disallowed_methods, clippy::disallowed_types)]
    fn fast_time_runs_timers_and_now_together() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let tasks = tokio_util::task::TaskTracker::new();
            let cancel = tokio_util::sync::CancellationToken::new();
            let (_fast, clock) = FastTime::start(60.0, &tasks, cancel.clone()).unwrap();
            let before = clock.now();
            let real = std::time::Instant::now();
            tokio::time::sleep(std::time::Duration::from_secs(60)).await;
            let took = real.elapsed();
            let demo = clock.now() - before;
            assert!(demo >= ChronoDuration::seconds(60), "{demo}");
            assert!(
                took < std::time::Duration::from_secs(30),
                "60 s at 60× took {took:?} of real time"
            );
            assert!(took >= std::time::Duration::from_millis(500), "{took:?}");
            cancel.cancel();
            tasks.close();
            tasks.wait().await;
        });
    }

    #[test]
    fn fast_time_refuses_a_multi_thread_runtime_and_a_bad_factor() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let tasks = tokio_util::task::TaskTracker::new();
            let cancel = tokio_util::sync::CancellationToken::new();
            assert!(matches!(
                FastTime::start(60.0, &tasks, cancel.clone()),
                Err(FastTimeError::NotCurrentThread)
            ));
            assert!(matches!(
                FastTime::start(0.5, &tasks, cancel),
                Err(FastTimeError::BadFactor(_))
            ));
        });
    }
}
