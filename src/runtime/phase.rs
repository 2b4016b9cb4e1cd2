//! When a device's periodic work falls: on a grid of the wall clock shared by every device.
//!
//! A poll ticker started at its session's connect keeps that instant's phase for as long as
//! the session lasts. Right after the daemon starts every session connects at once and the
//! whole fleet polls in the same instant, so one wake-up of the runtime (one `epoll_wait`)
//! serves dozens of sockets. The phases drift apart as devices come online later, drop and
//! reconnect after a jittered backoff, or have a poll overrun its interval: spread over the
//! second, each exchange is a wake-up of its own, and a poll costs the bare tokio loop 4.5×
//! and the daemon 3.5× what it costs aligned (docs/benchmarks.md, "Device shards", issue
//! 15.1). Ticks on multiples of the interval counted from the Unix epoch keep every device of
//! one interval in step whenever it connected, and devices of intervals that divide one
//! another (1 s, 10 s, 30 s) share their common instants.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// How long after `now` the first tick of a `period` ticker falls: on the grid (a multiple
/// of `period` since the Unix epoch), at least half a period away, so a session's first
/// poll comes between ½ and 1½ periods after its start (its full read was just done). A
/// `period` under a millisecond has no grid worth keeping: one period.
pub fn first_tick_in(now: DateTime<Utc>, period: Duration) -> Duration {
    let period_ns = period.as_nanos();
    if period_ns < 1_000_000 {
        return period;
    }
    // Nanoseconds since the epoch fit an i128 for any date chrono holds; one before the
    // epoch (a test's clock) counts from it the same way, rem_euclid keeps the phase positive.
    let since_epoch =
        i128::from(now.timestamp()) * 1_000_000_000 + i128::from(now.timestamp_subsec_nanos());
    let period_i = i128::try_from(period_ns).unwrap_or(i128::MAX);
    let phase = u128::try_from(since_epoch.rem_euclid(period_i)).unwrap_or(0);
    // The next grid point strictly after now, then one period more if it is too close.
    let mut wait = period_ns - phase;
    if wait < period_ns / 2 {
        wait += period_ns;
    }
    Duration::from_nanos(u64::try_from(wait).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn at(h: u32, m: u32, s: u32, ms: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 7, h, m, s).unwrap() + chrono::Duration::milliseconds(ms)
    }

    #[test]
    fn first_ticks_fall_on_the_grid_at_least_half_a_period_away() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        let cases = [
            // (now, period, first tick in)
            (at(8, 0, 0, 0), s(1), s(1)),
            (at(8, 0, 0, 0), s(10), s(10)),
            (at(8, 0, 0, 300), s(1), ms(700)),
            (at(8, 0, 0, 501), s(1), ms(1499)),
            (at(8, 0, 0, 500), s(1), ms(500)),
            (at(8, 0, 3, 0), s(10), s(7)),
            (at(8, 0, 7, 0), s(10), s(13)),
            (at(8, 0, 29, 999), s(30), ms(30_001)),
            (at(8, 0, 0, 120), ms(250), ms(130)),
            (at(8, 0, 0, 130), ms(250), ms(370)),
        ];
        for (now, period, want) in cases {
            assert_eq!(first_tick_in(now, period), want, "{now} every {period:?}");
        }
    }

    #[test]
    fn a_period_below_a_millisecond_is_not_gridded() {
        let p = Duration::from_micros(300);
        assert_eq!(first_tick_in(at(8, 0, 0, 7), p), p);
        assert_eq!(
            first_tick_in(at(8, 0, 0, 7), Duration::ZERO),
            Duration::ZERO
        );
    }

    #[test]
    fn a_clock_before_the_epoch_keeps_the_grid() {
        let now = Utc.with_ymd_and_hms(1969, 12, 31, 23, 59, 59).unwrap()
            + chrono::Duration::milliseconds(250);
        assert_eq!(
            first_tick_in(now, Duration::from_secs(1)),
            Duration::from_millis(750)
        );
    }

    proptest! {
        /// Devices that connect at any instants, with one period, tick at the same instants:
        /// what makes one wake-up serve them all.
        #[test]
        fn any_two_starts_share_their_ticks(
            a_ms in 0i64..10_000_000,
            b_ms in 0i64..10_000_000,
            period_ms in 1u64..120_000,
        ) {
            let origin = at(0, 0, 0, 0);
            let period = Duration::from_millis(period_ms);
            let tick = |start_ms: i64| {
                let start = origin + chrono::Duration::milliseconds(start_ms);
                let wait = first_tick_in(start, period);
                prop_assert!(wait >= period / 2 && wait < period * 3 / 2 + Duration::from_nanos(1));
                let first = start + chrono::Duration::from_std(wait).unwrap();
                Ok(first.timestamp_millis())
            };
            let (ta, tb) = (tick(a_ms)?, tick(b_ms)?);
            prop_assert_eq!(ta.rem_euclid(period_ms as i64), 0);
            prop_assert_eq!((ta - tb).rem_euclid(period_ms as i64), 0);
        }
    }
}
