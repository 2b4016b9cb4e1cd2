//! The device page's recent history: battery minutes per receiver channel and temperatures,
//! sampled from the devices' live state into memory for the last hours, and drawn as a small
//! SVG chart on the server.
//!
//! Owns the in-memory samples (nothing is written: the logbook keeps events, not series, and a
//! restart starts the chart afresh). Must not poll a device: it only reads the state the
//! runtime already holds.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::html::{esc, Zone};
use crate::clock::Clock;
use crate::model::{Quantity, Value};
use crate::runtime::Fleet;

/// How often the state is sampled.
pub const PERIOD: Duration = Duration::from_secs(60);
/// How far back the chart reaches.
pub const KEEP: Duration = Duration::from_secs(6 * 3600);

/// The quantities charted.
const CHARTED: [Quantity; 2] = [Quantity::BatteryMinutes, Quantity::Temperature];

/// One series: a point of one device (`ch.2.battery_minutes`) over time.
pub type Series = VecDeque<(DateTime<Utc>, f64)>;

/// Samples by device id, then point. Cheap to clone.
#[derive(Clone, Default)]
pub struct History {
    series: Arc<Mutex<BTreeMap<String, BTreeMap<String, Series>>>>,
}

impl History {
    /// Samples `fleet` every [`PERIOD`] until `cancel`, on `tracker`.
    pub fn start(
        fleet: Arc<Fleet>,
        clock: Clock,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> Self {
        let history = Self::default();
        let h = history.clone();
        tracker.spawn(async move {
            let mut tick = tokio::time::interval(PERIOD);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tick.tick() => h.sample(&fleet, clock.now()),
                }
            }
        });
        history
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, BTreeMap<String, Series>>> {
        self.series.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every charted reading of every device now; a value that is not a number is skipped.
    pub fn sample(&self, fleet: &Fleet, now: DateTime<Utc>) {
        let cutoff = now - chrono::Duration::from_std(KEEP).unwrap_or_default();
        let mut all = self.lock();
        for h in fleet.handles() {
            let s = h.state();
            let device = all.entry(h.id.to_string()).or_default();
            for r in s.readings.values() {
                if !CHARTED.contains(&r.point.quantity) {
                    continue;
                }
                let v = match r.value {
                    Value::Int(i) => i as f64,
                    Value::Float(f) if f.is_finite() => f,
                    _ => continue,
                };
                self.record(device, &r.point.to_string(), now, v, cutoff);
            }
        }
    }

    fn record(
        &self,
        device: &mut BTreeMap<String, Series>,
        point: &str,
        at: DateTime<Utc>,
        value: f64,
        cutoff: DateTime<Utc>,
    ) {
        let series = device.entry(point.to_owned()).or_default();
        series.push_back((at, value));
        while series.front().is_some_and(|(t, _)| *t < cutoff) {
            series.pop_front();
        }
    }

    /// The series of `device`, by point, ending with what `state` reads now (the sampler's
    /// last minute would otherwise lag the page).
    pub fn of(
        &self,
        state: &crate::model::DeviceState,
        now: DateTime<Utc>,
    ) -> BTreeMap<String, Series> {
        let mut all = self
            .lock()
            .get(state.id.as_str())
            .cloned()
            .unwrap_or_default();
        for r in state.readings.values() {
            let v = match r.value {
                Value::Int(i) => i as f64,
                Value::Float(f) if f.is_finite() => f,
                _ => continue,
            };
            if CHARTED.contains(&r.point.quantity) {
                all.entry(r.point.to_string())
                    .or_default()
                    .push_back((now, v));
            }
        }
        all
    }
}

/// A line chart of `series` (a title and unit for people), its last [`KEEP`] ending at `now`.
/// Described for screen readers by its title and a summary, as the lines say nothing to them.
pub fn chart(title: &str, unit: &str, series: &Series, now: DateTime<Utc>, zone: Zone) -> String {
    const W: f64 = 800.0;
    const H: f64 = 180.0;
    const PAD_L: f64 = 44.0;
    const PAD_B: f64 = 22.0;
    let start = now - chrono::Duration::from_std(KEEP).unwrap_or_default();
    let span = (now - start).num_seconds().max(1) as f64;
    let (lo, hi) = series
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), (_, v)| {
            (lo.min(*v), hi.max(*v))
        });
    let (lo, hi) = if lo.is_finite() {
        let lo = if lo >= 0.0 && unit == "min" { 0.0 } else { lo };
        if hi - lo < 1.0 {
            (lo - 1.0, hi + 1.0)
        } else {
            (lo, hi)
        }
    } else {
        (0.0, 1.0)
    };
    let x = |t: DateTime<Utc>| PAD_L + (t - start).num_seconds() as f64 / span * (W - PAD_L - 4.0);
    let y = |v: f64| 6.0 + (hi - v) / (hi - lo) * (H - PAD_B - 6.0);
    let mut path = String::new();
    for (i, (t, v)) in series.iter().enumerate() {
        let _ = write!(
            path,
            "{}{:.1},{:.1} ",
            if i == 0 { "M" } else { "L" },
            x(*t),
            y(*v)
        );
    }
    // The newest sample as a dot, so a series of one still shows.
    let dot = series
        .back()
        .map(|(t, v)| {
            format!(
                r#"<circle cx="{:.1}" cy="{:.1}" r="4" class="dot"/>"#,
                x(*t),
                y(*v)
            )
        })
        .unwrap_or_default();
    let summary = match (series.front(), series.back()) {
        (Some((t0, v0)), Some((t1, v1))) => format!(
            "{} sample{} from {} ({v0:.0} {unit}) to {} ({v1:.0} {unit}); lowest {lo:.0}, highest {hi:.0}",
            series.len(),
            if series.len() == 1 { "" } else { "s" },
            zone.hm(*t0),
            zone.hm(*t1),
        ),
        _ => "no samples yet".to_owned(),
    };
    let id = format!("c{:x}", fxhash(title));
    format!(
        r#"<figure class="chart">
<svg viewBox="0 0 {W} {H}" role="img" aria-labelledby="{id}-t {id}-d">
<title id="{id}-t">{title}</title>
<desc id="{id}-d">{summary}</desc>
<line x1="{PAD_L}" y1="{yb:.1}" x2="{W}" y2="{yb:.1}" class="axis"/>
<line x1="{PAD_L}" y1="6" x2="{PAD_L}" y2="{yb:.1}" class="axis"/>
<text x="{tx}" y="14" class="tick" text-anchor="end">{hi:.0}</text>
<text x="{tx}" y="{yb:.1}" class="tick" text-anchor="end">{lo:.0}</text>
<text x="{PAD_L}" y="{H}" class="tick">{from}</text>
<text x="{W}" y="{H}" class="tick" text-anchor="end">{to}</text>
<path d="{path}" class="line"/>
{dot}
</svg>
<figcaption>{title} ({unit}), last 6 hours: {summary}</figcaption>
</figure>"#,
        title = esc(title),
        unit = esc(unit),
        summary = esc(&summary),
        yb = H - PAD_B,
        tx = PAD_L - 4.0,
        from = zone.hm(start),
        to = zone.hm(now),
    )
}

/// A short stable id for a title (element ids must be unique on the page).
fn fxhash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_samples_fall_out_and_the_chart_describes_what_it_draws() {
        let h = History::default();
        let t0 = DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        let mut device = BTreeMap::new();
        let keep = chrono::Duration::from_std(KEEP).unwrap_or_default();
        for i in 0..10 {
            let at = t0 + chrono::Duration::hours(i);
            h.record(
                &mut device,
                "ch.1.battery_minutes",
                at,
                300.0 - 20.0 * i as f64,
                at - keep,
            );
        }
        let s = &device["ch.1.battery_minutes"];
        // Hours 3 to 9 are within 6 hours of hour 9.
        assert_eq!(s.len(), 7);
        let now = t0 + chrono::Duration::hours(9);
        let svg = chart("Channel 1 <battery>", "min", s, now, Zone::of("UTC"));
        assert!(svg.contains("Channel 1 &lt;battery&gt;"), "{svg}");
        assert!(svg.contains("7 samples"), "{svg}");
        assert!(svg.contains("(120 min)"), "{svg}");
        let d = svg
            .split("path d=\"")
            .nth(1)
            .and_then(|r| r.split('"').next());
        assert_eq!(d.map(|d| d.matches('L').count()), Some(6), "{svg}");
        let empty = chart("Temperature", "°C", &Series::new(), now, Zone::of("UTC"));
        assert!(empty.contains("no samples yet"));
    }
}
