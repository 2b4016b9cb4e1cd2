//! The recent battery and temperature readings the self-test predicts from: per mic channel
//! its minutes and bars, per HVAC unit its temperature and setpoint, bounded per series, and
//! the task that records them from the devices' state.
//!
//! Memory only (a restart forgets it; the predictions then fall back to the current reading
//! and the profile's rate). Must not decide anything: the battery and thermal cores do.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use futures::future::join_all;
use tokio_util::sync::CancellationToken;

use super::battery::BatterySample;
use super::thermal::TempSample;
use crate::model::{Capability, DeviceId, DeviceState, Point, Quantity, Subject, Value};
use crate::runtime::DeviceHandle;

/// Samples kept per series: at a 10 s poll a little over 40 minutes of changes, and far more
/// in practice since a state only changes when a reading does.
pub const MAX_SAMPLES: usize = 256;

#[derive(Debug, Default, Clone)]
pub struct History {
    batteries: BTreeMap<(DeviceId, u8), VecDeque<BatterySample>>,
    temperatures: BTreeMap<DeviceId, VecDeque<TempSample>>,
}

impl History {
    pub fn new() -> Self {
        Self::default()
    }

    /// Record what `state` says of batteries and temperature, each sample at the instant it was
    /// observed; a reading not newer than the last sample of its series is skipped.
    pub fn record(&mut self, state: &DeviceState) {
        let mut channels: BTreeMap<u8, BatterySample> = BTreeMap::new();
        for (point, r) in &state.readings {
            let Subject::Channel(n) = point.subject else {
                continue;
            };
            let (minutes, bars) = match point.quantity {
                Quantity::BatteryMinutes => (r.value.as_f64(), None),
                Quantity::BatteryBars => (
                    None,
                    r.value
                        .as_f64()
                        .filter(|b| (0.0..=255.0).contains(b))
                        .map(|b| b as u8),
                ),
                _ => continue,
            };
            let s = channels.entry(n).or_insert(BatterySample {
                at: r.observed_at,
                minutes: None,
                bars: None,
            });
            s.at = s.at.max(r.observed_at);
            s.minutes = s.minutes.or(minutes);
            s.bars = s.bars.or(bars);
        }
        for (n, s) in channels {
            if s.minutes.is_none() && s.bars.is_none() {
                continue;
            }
            push(
                self.batteries.entry((state.id.clone(), n)).or_default(),
                s,
                |a| a.at,
            );
        }
        if let Some(t) = state.reading(&Point::device(Quantity::Temperature)) {
            if let Some(celsius) = t.value.as_f64() {
                let setpoint = state
                    .value(&Point::device(Quantity::Setpoint))
                    .and_then(Value::as_f64);
                push(
                    self.temperatures.entry(state.id.clone()).or_default(),
                    TempSample {
                        at: t.observed_at,
                        celsius,
                        setpoint,
                    },
                    |a| a.at,
                );
            }
        }
    }

    /// A device's battery samples per channel, time order.
    pub fn batteries(&self, device: &DeviceId) -> BTreeMap<u8, Vec<BatterySample>> {
        self.batteries
            .range((device.clone(), 0)..=(device.clone(), u8::MAX))
            .map(|((_, n), v)| (*n, v.iter().copied().collect()))
            .collect()
    }

    /// A device's temperature samples, time order.
    pub fn temperatures(&self, device: &DeviceId) -> Vec<TempSample> {
        self.temperatures
            .get(device)
            .map(|v| v.iter().copied().collect())
            .unwrap_or_default()
    }
}

fn push<T, K: PartialOrd>(series: &mut VecDeque<T>, sample: T, at: impl Fn(&T) -> K) {
    if series.back().is_some_and(|last| at(last) >= at(&sample)) {
        return;
    }
    if series.len() == MAX_SAMPLES {
        series.pop_front();
    }
    series.push_back(sample);
}

/// Record every battery and temperature change of `handles` into `history` until `cancel`.
/// The lead runs it as one task; it spawns nothing.
pub async fn track(
    handles: Vec<DeviceHandle>,
    history: Arc<Mutex<History>>,
    cancel: CancellationToken,
) {
    let watched = handles
        .into_iter()
        .filter(|h| h.can(Capability::Battery) || h.can(Capability::Temperature))
        .map(|h| {
            let history = history.clone();
            let cancel = cancel.clone();
            async move {
                let mut rx = h.watch();
                loop {
                    {
                        let state = rx.borrow_and_update();
                        history
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .record(&state);
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        changed = rx.changed() => if changed.is_err() { return },
                    }
                }
            }
        });
    join_all(watched).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ProfileId, Reading, RoomId};
    use chrono::{DateTime, Duration, TimeZone, Utc};

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 27, 9, 0, 0).unwrap()
    }

    fn state(at: DateTime<Utc>, minutes: Value, temp: f64) -> DeviceState {
        let mut s = DeviceState::new(
            DeviceId::new("d"),
            RoomId::new("r"),
            ProfileId::new("p"),
            "x".into(),
            at,
        );
        for (p, v) in [
            (Point::channel(1, Quantity::BatteryMinutes), minutes),
            (Point::channel(1, Quantity::BatteryBars), Value::Int(4)),
            (Point::device(Quantity::Temperature), Value::Float(temp)),
            (Point::device(Quantity::Setpoint), Value::Float(23.0)),
        ] {
            s.readings.insert(p.clone(), Reading::new(p, v, at));
        }
        s
    }

    #[test]
    fn records_each_new_reading_once_and_stays_bounded() {
        let mut h = History::new();
        let d = DeviceId::new("d");
        h.record(&state(t0(), Value::Int(100), 25.0));
        h.record(&state(t0(), Value::Int(100), 25.0));
        h.record(&state(t0() + Duration::minutes(1), Value::Unknown, 24.9));
        let b = h.batteries(&d);
        assert_eq!(b[&1].len(), 2);
        assert_eq!(b[&1][0].minutes, Some(100.0));
        assert_eq!(b[&1][1].minutes, None, "unknown minutes are not a number");
        assert_eq!(b[&1][1].bars, Some(4));
        assert_eq!(h.temperatures(&d).len(), 2);
        assert_eq!(h.temperatures(&d)[0].setpoint, Some(23.0));
        for i in 2..(MAX_SAMPLES as i64 + 50) {
            h.record(&state(t0() + Duration::minutes(i), Value::Int(90), 24.0));
        }
        assert_eq!(h.batteries(&d)[&1].len(), MAX_SAMPLES);
        assert_eq!(h.temperatures(&d).len(), MAX_SAMPLES);
        assert!(h.batteries(&DeviceId::new("other")).is_empty());
    }
}
