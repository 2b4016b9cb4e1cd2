//! How long a wireless transmitter's battery lasts: a drain estimator over a channel's recent
//! readings (minutes remaining, or bars when the receiver knows no minutes), answering the
//! minutes left at an instant and the instant it runs out.
//!
//! Pure: a function of the samples and the instant asked about. It must not read the clock or
//! a device; the history tracker collects the samples and the self-test asks.

use chrono::{DateTime, Duration, Utc};

/// One battery reading of one channel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatterySample {
    pub at: DateTime<Utc>,
    /// Minutes remaining as the receiver reports them (rechargeable packs); `None` unknown.
    pub minutes: Option<f64>,
    /// Bars, 0-5; `None` unknown.
    pub bars: Option<u8>,
}

/// What the history says about a battery.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prediction {
    /// Minutes left at the instant asked about, never negative.
    pub minutes_left: f64,
    /// The instant it is predicted to run out.
    pub runs_out_at: DateTime<Utc>,
    /// Battery minutes used per minute of time, as observed (or assumed).
    pub drain_rate: f64,
    /// Whether the minutes come from bars × minutes per bar (alkaline cells).
    pub from_bars: bool,
}

/// A jump up in minutes larger than this is a battery swap, not the receiver's estimate
/// wobbling (Shure receivers step their runtime in 5 to 10 minute steps and re-estimate when
/// the load changes).
const SWAP_JUMP_MINUTES: f64 = 20.0;
/// Bars going up by this many is a swap (a cell recovering under less load gains one bar).
const SWAP_JUMP_BARS: u8 = 2;
/// A rate is only learned over at least this long: over a shorter window one coarse step of
/// the receiver's estimate looks like a huge drain or none.
const MIN_RATE_WINDOW_MINUTES: f64 = 10.0;
/// Observed rates are held to this range: beyond it the samples are wrong, not the battery.
const MAX_RATE: f64 = 10.0;

/// The samples since the last battery swap (a jump up starts a new history), oldest first.
/// `samples` must be in time order.
pub fn since_last_swap(samples: &[BatterySample]) -> &[BatterySample] {
    let mut start = 0;
    let mut last_minutes: Option<f64> = None;
    let mut last_bars: Option<u8> = None;
    for (i, s) in samples.iter().enumerate() {
        let minutes_jump =
            matches!((last_minutes, s.minutes), (Some(a), Some(b)) if b - a > SWAP_JUMP_MINUTES);
        let bars_jump = matches!((last_bars, s.bars), (Some(a), Some(b)) if b >= a.saturating_add(SWAP_JUMP_BARS));
        if minutes_jump || bars_jump {
            start = i;
        }
        last_minutes = s.minutes.or(last_minutes);
        last_bars = s.bars.or(last_bars);
    }
    &samples[start..]
}

/// The battery's prediction at `at` from its samples (time order), or `None` when nothing is
/// known of it. Minutes are used when the latest sample has them; bars × `minutes_per_bar`
/// otherwise.
///
/// The drain rate is the one observed since the swap over at least ten minutes (a
/// least-squares fit), never below
/// real time: the receiver's own estimate assumes real-time drain, a slower observed rate is
/// far more often its coarse steps than a real saving, and a wrong "ready" costs a meeting.
pub fn predict(
    samples: &[BatterySample],
    at: DateTime<Utc>,
    minutes_per_bar: f64,
) -> Option<Prediction> {
    let segment = since_last_swap(samples);
    let last = segment.last()?;
    let (base_at, base_minutes, rate, from_bars) = if let Some(m) = last.minutes {
        let with_minutes: Vec<(DateTime<Utc>, f64)> = segment
            .iter()
            .filter_map(|s| s.minutes.map(|m| (s.at, m)))
            .collect();
        match observed_rate(&with_minutes) {
            // The lower of the reading and the fitted line: a receiver that rounds down
            // and one that rounds up both err on the safe side.
            Some((rate, fitted)) => (last.at, m.min(fitted), rate, false),
            None => (last.at, m, 1.0, false),
        }
    } else {
        let bars = last.bars?;
        // The battery has been draining since this bar count was first seen, not since the
        // latest reading of it.
        let first_at = segment
            .iter()
            .rev()
            .take_while(|s| s.bars.is_none_or(|b| b == bars))
            .filter(|s| s.bars == Some(bars))
            .last()
            .map_or(last.at, |s| s.at);
        (first_at, f64::from(bars) * minutes_per_bar, 1.0, true)
    };
    let base_minutes = if base_minutes.is_finite() {
        base_minutes.max(0.0)
    } else {
        0.0
    };
    let runs_out_at = base_at + minutes(base_minutes / rate);
    let elapsed = (at - base_at).num_milliseconds() as f64 / 60_000.0;
    let minutes_left = (base_minutes - rate * elapsed.max(0.0)).max(0.0);
    Some(Prediction {
        minutes_left,
        runs_out_at,
        drain_rate: rate,
        from_bars,
    })
}

/// Battery minutes used per minute, as the least-squares slope over the samples (so one
/// coarse step of the receiver's estimate at either end does not skew it), when they span
/// long enough; at least 1. With the line's value at the last sample.
fn observed_rate(samples: &[(DateTime<Utc>, f64)]) -> Option<(f64, f64)> {
    let (first, last) = (samples.first()?, samples.last()?);
    let x = |at: DateTime<Utc>| (at - first.0).num_milliseconds() as f64 / 60_000.0;
    let window = x(last.0);
    if window < MIN_RATE_WINDOW_MINUTES {
        return None;
    }
    let n = samples.len() as f64;
    let mean_x = samples.iter().map(|s| x(s.0)).sum::<f64>() / n;
    let mean_y = samples.iter().map(|s| s.1).sum::<f64>() / n;
    let (mut cov, mut var) = (0.0, 0.0);
    for s in samples {
        let dx = x(s.0) - mean_x;
        cov += dx * (s.1 - mean_y);
        var += dx * dx;
    }
    let slope = cov / var;
    let at_last = mean_y + slope * (window - mean_x);
    (slope.is_finite() && at_last.is_finite()).then(|| ((-slope).clamp(1.0, MAX_RATE), at_last))
}

fn minutes(m: f64) -> Duration {
    // Bounded above so that an absurd reading cannot overflow chrono.
    Duration::milliseconds((m.clamp(0.0, 1.0e7) * 60_000.0) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 27, 9, 0, 0).unwrap()
    }

    fn m(at_min: i64, minutes: f64) -> BatterySample {
        BatterySample {
            at: t0() + Duration::minutes(at_min),
            minutes: Some(minutes),
            bars: None,
        }
    }

    fn b(at_min: i64, bars: u8) -> BatterySample {
        BatterySample {
            at: t0() + Duration::minutes(at_min),
            minutes: None,
            bars: Some(bars),
        }
    }

    #[test]
    fn predictions_from_the_observed_drain() {
        let at = |min| t0() + Duration::minutes(min);
        // (samples, asked at minute, minutes left, runs out at minute, rate)
        let cases: Vec<(Vec<BatterySample>, i64, f64, i64, f64)> = vec![
            // One reading: real-time drain.
            (vec![m(0, 120.0)], 60, 60.0, 120, 1.0),
            // Draining twice as fast as the receiver's estimate.
            (vec![m(0, 100.0), m(10, 80.0)], 20, 60.0, 50, 2.0),
            // Slower than real time is taken as real time.
            (vec![m(0, 100.0), m(30, 95.0)], 30, 95.0, 125, 1.0),
            // Coarse steps over a short window are not a rate.
            (vec![m(0, 100.0), m(2, 90.0)], 2, 90.0, 92, 1.0),
            // A swap (jump up) starts a new history: the fast drain before it is forgotten.
            (
                vec![m(0, 100.0), m(10, 50.0), m(11, 300.0)],
                11,
                300.0,
                311,
                1.0,
            ),
            // Asked before the last sample: not more than it had then.
            (vec![m(0, 30.0)], 0, 30.0, 30, 1.0),
        ];
        for (i, (samples, ask, left, out, rate)) in cases.into_iter().enumerate() {
            let p = predict(&samples, at(ask), 60.0).expect("known");
            assert!((p.minutes_left - left).abs() < 1e-9, "case {i}: {p:?}");
            assert_eq!(p.runs_out_at, at(out), "case {i}");
            assert!((p.drain_rate - rate).abs() < 1e-9, "case {i}");
            assert!(!p.from_bars);
        }
    }

    #[test]
    fn bars_stand_for_minutes_from_when_the_bar_was_first_seen() {
        let samples = [b(0, 4), b(30, 3), b(40, 3), b(50, 3)];
        let p = predict(&samples, t0() + Duration::minutes(50), 60.0).unwrap();
        assert!(p.from_bars);
        // 3 bars × 60 min from minute 30.
        assert_eq!(p.runs_out_at, t0() + Duration::minutes(210));
        assert!((p.minutes_left - 160.0).abs() < 1e-9);
        assert_eq!(predict(&[], t0(), 60.0), None);
        let unknown = BatterySample {
            at: t0(),
            minutes: None,
            bars: None,
        };
        assert_eq!(predict(&[unknown], t0(), 60.0), None);
    }

    #[test]
    fn a_swap_is_a_big_jump_up_not_a_wobble() {
        assert_eq!(since_last_swap(&[m(0, 100.0), m(5, 110.0)]).len(), 2);
        assert_eq!(since_last_swap(&[m(0, 100.0), m(5, 200.0)]).len(), 1);
        assert_eq!(since_last_swap(&[b(0, 2), b(5, 3)]).len(), 2);
        assert_eq!(since_last_swap(&[b(0, 1), b(5, 5), b(6, 5)]).len(), 2);
    }

    fn samples() -> impl Strategy<Value = Vec<BatterySample>> {
        prop::collection::vec((1i64..30, 0.0f64..600.0, 0u8..=5, any::<bool>()), 1..20).prop_map(
            |steps| {
                let mut at = 0;
                steps
                    .into_iter()
                    .map(|(gap, minutes, bars, has_minutes)| {
                        at += gap;
                        BatterySample {
                            at: t0() + Duration::minutes(at),
                            minutes: has_minutes.then_some(minutes),
                            bars: Some(bars),
                        }
                    })
                    .collect()
            },
        )
    }

    proptest! {
        #[test]
        fn never_negative_and_never_more_later(s in samples(), a in 0i64..2000, d in 0i64..2000) {
            let at = t0() + Duration::minutes(a);
            let later = at + Duration::minutes(d);
            let p1 = predict(&s, at, 45.0).unwrap();
            let p2 = predict(&s, later, 45.0).unwrap();
            prop_assert!(p1.minutes_left >= 0.0 && p2.minutes_left >= 0.0);
            prop_assert!(p2.minutes_left <= p1.minutes_left);
            prop_assert_eq!(p1.runs_out_at, p2.runs_out_at);
            prop_assert!(p1.drain_rate >= 1.0);
        }

        #[test]
        fn a_swap_forgets_what_came_before(before in samples(), after in samples(), fresh in 400.0f64..600.0) {
            // A swap: a fresh battery reading far above the last one.
            let last_at = before.last().unwrap().at;
            let swap = BatterySample { at: last_at + Duration::minutes(1), minutes: Some(fresh), bars: Some(5) };
            let low: Vec<_> = before.iter().map(|s| BatterySample { minutes: s.minutes.map(|_| 10.0), bars: s.bars.map(|_| 1), ..*s }).collect();
            let shifted: Vec<_> = after.iter().map(|s| BatterySample { at: s.at + (swap.at - t0()), minutes: s.minutes.map(|m| m.min(fresh)), bars: s.bars.map(|b| b.max(4)), }).collect();
            let mut all = low.clone();
            all.push(swap);
            all.extend(shifted.iter().copied());
            let mut alone = vec![swap];
            alone.extend(shifted.iter().copied());
            let at = alone.last().unwrap().at;
            prop_assert_eq!(since_last_swap(&all).len(), since_last_swap(&alone).len());
            prop_assert_eq!(predict(&all, at, 45.0), predict(&alone, at, 45.0));
        }
    }
}
