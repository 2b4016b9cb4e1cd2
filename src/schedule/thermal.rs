//! A room's thermal behaviour as the self-test and the planner need it: the rate (°C per
//! minute) at which its unit moves it towards the setpoint, learned from the room's own
//! history and falling back to the profile's; the temperature predicted at a meeting's start;
//! and how long before the start conditioning must begin.
//!
//! Pure: functions of samples, temperatures and instants. It must not read the clock or talk
//! to a device.

use chrono::{DateTime, Duration, Utc};

/// One temperature reading of a room's HVAC unit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TempSample {
    pub at: DateTime<Utc>,
    pub celsius: f64,
    /// The setpoint the unit held then, when known.
    pub setpoint: Option<f64>,
}

/// Closer than this to the setpoint the unit modulates and the room drifts: not conditioning.
const DEADBAND_C: f64 = 0.3;
/// Conditioning observed for less than this teaches nothing (one sensor step is 0.1-0.5 °C).
const MIN_OBSERVED_MINUTES: f64 = 10.0;
/// Two samples further apart than this are not one run of conditioning (the unit may have
/// stopped in between).
const MAX_GAP_MINUTES: f64 = 30.0;
/// Learned rates are held to this range: beyond it the samples are wrong, not the room.
const RATE_RANGE: (f64, f64) = (0.005, 2.0);

/// The room's rate towards its setpoint, °C per minute, from its history (time order): the
/// temperature change over the spans where the room was away from its setpoint and moved
/// towards it. `None` when it was seen conditioning for under ten minutes.
pub fn learned_rate(samples: &[TempSample]) -> Option<f64> {
    let mut degrees = 0.0;
    let mut minutes = 0.0;
    for pair in samples.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        let Some(sp) = a.setpoint else { continue };
        let gap = (b.at - a.at).num_milliseconds() as f64 / 60_000.0;
        let usable =
            gap > 0.0 && gap <= MAX_GAP_MINUTES && a.celsius.is_finite() && b.celsius.is_finite();
        if !usable {
            continue;
        }
        let away = sp - a.celsius;
        if away.abs() <= DEADBAND_C {
            continue;
        }
        let moved = (b.celsius - a.celsius) * away.signum();
        // Moving away from the setpoint (a door open, the sun) is not the unit's rate.
        if moved < 0.0 {
            continue;
        }
        degrees += moved;
        minutes += gap;
    }
    if minutes < MIN_OBSERVED_MINUTES || degrees <= 0.0 {
        return None;
    }
    Some((degrees / minutes).clamp(RATE_RANGE.0, RATE_RANGE.1))
}

/// The room's rate: learned from its history, or the profile's when it has too little.
pub fn rate_or(samples: &[TempSample], profile_rate: f64) -> f64 {
    learned_rate(samples).unwrap_or(profile_rate)
}

/// The temperature at `start` when conditioning towards `target` runs from `now` at `rate`
/// °C per minute: it moves straight towards the target and stops there.
pub fn predicted_at(
    current: f64,
    target: f64,
    rate: f64,
    now: DateTime<Utc>,
    start: DateTime<Utc>,
) -> f64 {
    let minutes = ((start - now).num_milliseconds() as f64 / 60_000.0).max(0.0);
    let reach = rate.max(0.0) * minutes;
    let gap = target - current;
    if gap.abs() <= reach {
        target
    } else {
        current + reach * gap.signum()
    }
}

/// How long before the start conditioning must begin to bring the room from `current` to
/// `target` at `rate` °C per minute (zero when it is there already). The planner adds its own
/// margin.
pub fn precondition_lead(current: f64, target: f64, rate: f64) -> Duration {
    let gap = (target - current).abs();
    if gap == 0.0 || !gap.is_finite() {
        return Duration::zero();
    }
    let rate = rate.max(RATE_RANGE.0);
    // At most a day: beyond that the answer is "the unit cannot do it", not a number.
    let minutes = (gap / rate).min(24.0 * 60.0);
    Duration::seconds((minutes * 60.0).ceil() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 27, 9, 0, 0).unwrap()
    }

    fn s(min: i64, c: f64, sp: f64) -> TempSample {
        TempSample {
            at: t0() + Duration::minutes(min),
            celsius: c,
            setpoint: Some(sp),
        }
    }

    #[test]
    fn rates_are_learned_only_from_conditioning() {
        // (samples, learned rate)
        let cases: Vec<(Vec<TempSample>, Option<f64>)> = vec![
            // Cooling 26 → 24 in 20 minutes towards 23: 0.1 °C/min.
            (
                vec![s(0, 26.0, 23.0), s(10, 25.0, 23.0), s(20, 24.0, 23.0)],
                Some(0.1),
            ),
            // Heating works the same way.
            (
                vec![s(0, 18.0, 22.0), s(10, 19.0, 22.0), s(20, 20.0, 22.0)],
                Some(0.1),
            ),
            // Inside the deadband: drifting, not conditioning.
            (
                vec![s(0, 23.1, 23.0), s(10, 23.2, 23.0), s(20, 23.1, 23.0)],
                None,
            ),
            // Too short to learn from.
            (vec![s(0, 26.0, 23.0), s(5, 25.0, 23.0)], None),
            // Warming while cooling (sun, a full room) is skipped, the rest counts.
            (
                vec![
                    s(0, 26.0, 23.0),
                    s(10, 26.5, 23.0),
                    s(20, 25.5, 23.0),
                    s(30, 24.5, 23.0),
                ],
                Some(0.1),
            ),
            // A gap of an hour is not one run.
            (vec![s(0, 26.0, 23.0), s(60, 23.5, 23.0)], None),
        ];
        for (i, (samples, want)) in cases.into_iter().enumerate() {
            let got = learned_rate(&samples);
            match (got, want) {
                (Some(g), Some(w)) => assert!((g - w).abs() < 1e-9, "case {i}: {g}"),
                (g, w) => assert_eq!(g, w, "case {i}"),
            }
        }
        assert_eq!(rate_or(&[], 0.07), 0.07);
    }

    #[test]
    fn predictions_and_leads() {
        let at = |m| t0() + Duration::minutes(m);
        assert_eq!(predicted_at(26.0, 23.0, 0.1, at(0), at(10)), 25.0);
        assert_eq!(predicted_at(26.0, 23.0, 0.1, at(0), at(60)), 23.0);
        assert_eq!(predicted_at(20.0, 23.0, 0.05, at(0), at(20)), 21.0);
        // A start already passed: as it is now.
        assert_eq!(predicted_at(26.0, 23.0, 0.1, at(10), at(0)), 26.0);
        assert_eq!(precondition_lead(26.0, 23.0, 0.1), Duration::minutes(30));
        assert_eq!(precondition_lead(23.0, 23.0, 0.1), Duration::zero());
        assert_eq!(precondition_lead(10.0, 23.0, 0.0), Duration::hours(24));
    }

    proptest! {
        #[test]
        fn the_prediction_never_overshoots(cur in 5.0f64..40.0, target in 16.0f64..30.0, rate in 0.0f64..1.0, mins in 0i64..600) {
            let p = predicted_at(cur, target, rate, t0(), t0() + Duration::minutes(mins));
            let (lo, hi) = if cur < target { (cur, target) } else { (target, cur) };
            prop_assert!(p >= lo - 1e-9 && p <= hi + 1e-9);
            // Starting the lead before, the room is at the target.
            let lead = precondition_lead(cur, target, rate.max(0.005));
            let at_start = predicted_at(cur, target, rate.max(0.005), t0(), t0() + lead);
            prop_assert!(lead == Duration::hours(24) || (at_start - target).abs() < 1e-6);
        }
    }
}
