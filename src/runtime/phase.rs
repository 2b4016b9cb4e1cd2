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
//!
//! Not all in one instant, though: 2,500 devices ticking in the same millisecond start their
//! polls up to 100 ms late on two cores (poll lag p99 96 ms at 500 rooms, against 2.5 ms with
//! the start's accidental spread). The grid has one phase per [`DEVICES_PER_SLOT`] devices of
//! the fleet (at most [`MAX_SLOTS`]), and each device keeps to the one its id picks: a small
//! fleet polls in one instant, a large one in a few, each wake-up still serving hundreds.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// How many devices share one phase of the grid before the fleet gets another: few enough
/// that a phase's polls all start within a few milliseconds, many enough that one wake-up of
/// the runtime serves many of them (200 projectors in 16 phases cost 1.8× what they cost in
/// one: docs/benchmarks.md, "Polls on a shared grid").
pub const DEVICES_PER_SLOT: usize = 400;

/// The most phases a period is cut into.
pub const MAX_SLOTS: u32 = 16;

/// The phases of a fleet of `devices`: one per [`DEVICES_PER_SLOT`], 1 to [`MAX_SLOTS`].
pub fn slots_for(devices: usize) -> u32 {
    u32::try_from(devices.div_ceil(DEVICES_PER_SLOT))
        .unwrap_or(MAX_SLOTS)
        .clamp(1, MAX_SLOTS)
}

/// The phase of a device among `slots`: FNV-1a of its id, so the same device keeps its phase
/// from one session, restart and release to the next (while the fleet's size keeps `slots`).
pub fn slot_of(id: &str, slots: u32) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in id.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % slots.max(1)
}

/// How long after `now` the first tick of a `period` ticker in phase `slot` of `slots` falls:
/// the next point of the grid (a multiple of `period` since the Unix epoch, plus `slot` of
/// `slots` parts of it), so never more than one period away. Not later: the comms policy
/// warns after one period and a reply timeout of silence, and a first poll 1½ periods after
/// the session's full read raised `comms_slow` on every start of a device polled every 15 s.
/// A `period` under a millisecond has no grid worth keeping: one period.
pub fn first_tick_in(now: DateTime<Utc>, period: Duration, slot: u32, slots: u32) -> Duration {
    let period_ns = period.as_nanos();
    if period_ns < 1_000_000 {
        return period;
    }
    // Nanoseconds since the epoch fit an i128 for any date chrono holds; one before the
    // epoch (a test's clock) counts from it the same way, rem_euclid keeps the phase positive.
    let since_epoch =
        i128::from(now.timestamp()) * 1_000_000_000 + i128::from(now.timestamp_subsec_nanos());
    let period_i = i128::try_from(period_ns).unwrap_or(i128::MAX);
    let slots = slots.max(1);
    let offset = period_i / i128::from(slots) * i128::from(slot % slots);
    let phase = u128::try_from((since_epoch - offset).rem_euclid(period_i)).unwrap_or(0);
    // The next grid point strictly after now: (0, period].
    let wait = period_ns - phase;
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
    fn first_ticks_fall_on_the_next_point_of_the_grid() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        let cases = [
            // (now, period, first tick in)
            (at(8, 0, 0, 0), s(1), s(1)),
            (at(8, 0, 0, 0), s(10), s(10)),
            (at(8, 0, 0, 300), s(1), ms(700)),
            (at(8, 0, 0, 501), s(1), ms(499)),
            (at(8, 0, 0, 999), s(1), ms(1)),
            (at(8, 0, 3, 0), s(10), s(7)),
            (at(8, 0, 7, 0), s(10), s(3)),
            (at(8, 0, 29, 999), s(30), ms(1)),
            (at(8, 0, 0, 120), ms(250), ms(130)),
            (at(8, 0, 0, 130), ms(250), ms(120)),
        ];
        for (now, period, want) in cases {
            assert_eq!(
                first_tick_in(now, period, 0, 1),
                want,
                "{now} every {period:?}"
            );
        }
    }

    #[test]
    fn a_period_below_a_millisecond_is_not_gridded() {
        let p = Duration::from_micros(300);
        assert_eq!(first_tick_in(at(8, 0, 0, 7), p, 3, 16), p);
        assert_eq!(
            first_tick_in(at(8, 0, 0, 7), Duration::ZERO, 3, 16),
            Duration::ZERO
        );
    }

    #[test]
    fn a_clock_before_the_epoch_keeps_the_grid() {
        let now = Utc.with_ymd_and_hms(1969, 12, 31, 23, 59, 59).unwrap()
            + chrono::Duration::milliseconds(250);
        assert_eq!(
            first_tick_in(now, Duration::from_secs(1), 0, 1),
            Duration::from_millis(750)
        );
    }

    #[test]
    fn a_slot_moves_the_grid_by_its_part_of_the_period() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        // 1 s in slot 4 of 16: ticks at .250 of each second.
        assert_eq!(first_tick_in(at(8, 0, 0, 0), s(1), 4, 16), ms(250));
        assert_eq!(first_tick_in(at(8, 0, 0, 700), s(1), 4, 16), ms(550));
        assert_eq!(first_tick_in(at(8, 0, 0, 250), s(1), 4, 16), s(1));
        // 10 s in slot 15 of 16: 9.375 s into each ten; slot 2 of 5: 4 s into it.
        assert_eq!(first_tick_in(at(8, 0, 0, 0), s(10), 15, 16), ms(9375));
        assert_eq!(first_tick_in(at(8, 0, 0, 0), s(10), 2, 5), s(4));
        // A slot past the last wraps; no slots is one.
        assert_eq!(
            first_tick_in(at(8, 0, 0, 0), s(1), 20, 16),
            first_tick_in(at(8, 0, 0, 0), s(1), 4, 16)
        );
        assert_eq!(first_tick_in(at(8, 0, 0, 300), s(1), 0, 0), ms(700));
    }

    #[test]
    fn a_fleet_gets_a_phase_per_four_hundred_devices() {
        let cases = [
            (0, 1),
            (1, 1),
            (200, 1),
            (400, 1),
            (401, 2),
            (2_500, 7),
            (100_000, 16),
        ];
        for (devices, slots) in cases {
            assert_eq!(slots_for(devices), slots, "{devices} devices");
        }
    }

    #[test]
    fn slots_are_stable_and_spread() {
        assert_eq!(slot_of("pj0", 7), slot_of("pj0", 7));
        assert_eq!(slot_of("pj0", 1), 0);
        assert_eq!(slot_of("pj0", 0), 0);
        let mut used = [0u32; 7];
        for i in 0..2_500 {
            used[slot_of(&format!("r{}-dev{}", i / 5, i % 5), 7) as usize] += 1;
        }
        // 2,500 devices over 7 slots: 357 each on average; none empty, none double.
        assert!(used.iter().all(|n| (250..=470).contains(n)), "{used:?}");
    }

    proptest! {
        /// Devices that connect at any instants, with one period and one slot, tick at the
        /// same instants: what makes one wake-up serve them all. Other slots tick a whole
        /// number of parts of the period apart.
        #[test]
        fn any_two_starts_share_their_ticks(
            a_ms in 0i64..10_000_000,
            b_ms in 0i64..10_000_000,
            period_parts in 1u64..7_500,
            slots in 1u32..=MAX_SLOTS,
            slot in 0u32..MAX_SLOTS,
        ) {
            let slot = slot % slots;
            let period_ms = period_parts * u64::from(slots);
            let origin = at(0, 0, 0, 0);
            let period = Duration::from_millis(period_ms);
            let tick = |start_ms: i64| {
                let start = origin + chrono::Duration::milliseconds(start_ms);
                let wait = first_tick_in(start, period, slot, slots);
                prop_assert!(!wait.is_zero() && wait <= period);
                let first = start + chrono::Duration::from_std(wait).unwrap();
                Ok(first.timestamp_millis())
            };
            let (ta, tb) = (tick(a_ms)?, tick(b_ms)?);
            prop_assert_eq!(ta.rem_euclid(period_ms as i64), i64::from(slot) * period_parts as i64);
            prop_assert_eq!((ta - tb).rem_euclid(period_ms as i64), 0);
        }
    }
}
