//! What `/metrics` shows: the per-device gauges computed from the fleet's state at scrape time,
//! the open alerts by class, the poll-duration histograms and the registry's event counters.
//!
//! Owns the metric names and labels a Grafana panel relies on (`docs/grafana/avwarden.json`;
//! `docs/api.md` lists them). Must not keep state between scrapes or change anything it reads:
//! a gauge is the device's state when the scraper asked, never a value maintained per poll.

use crate::metrics::{poll_durations, poll_lags, render_meter_samples, Exposition};
use crate::model::plan::FaultClass;
use crate::model::{Health, Quantity, Subject};
use crate::profile::DeviceKind;

use super::ApiState;

/// `avwarden_device_health` as a number ordered by how bad it is, so `max by (room)` is a
/// room's worst device. `unknown` (never contacted) is below `ok`, so a device not heard
/// from yet does not paint a working room red.
pub fn health_code(h: Health) -> f64 {
    match h {
        Health::Unknown => -1.0,
        Health::Ok => 0.0,
        Health::Busy => 1.0,
        Health::Degraded => 2.0,
        Health::Faulted => 3.0,
        Health::Unreachable => 4.0,
    }
}

const HEALTHS: [Health; 6] = [
    Health::Unknown,
    Health::Ok,
    Health::Busy,
    Health::Degraded,
    Health::Faulted,
    Health::Unreachable,
];

/// One sample of `family` per numeric reading that `pick` names, labelled with its device,
/// its room and `label` = the name `pick` gave (a receiver channel, a lamp).
fn per_reading(
    out: &mut Exposition,
    devices: &[(crate::runtime::DeviceHandle, Option<DeviceKind>)],
    family: &str,
    label: &str,
    pick: impl Fn(&crate::model::Point) -> Option<String>,
) {
    for (h, _) in devices {
        h.with_state(|s| {
            for (p, r) in &s.readings {
                let (Some(name), Some(v)) = (pick(p), r.value.as_f64()) else {
                    continue;
                };
                let labels = [
                    ("device", h.id.as_str()),
                    ("room", h.room.as_str()),
                    (label, name.as_str()),
                ];
                out.sample(family, &labels, v);
            }
        });
    }
}

/// The whole `/metrics` text.
pub fn render(st: &ApiState) -> String {
    let now = st.clock.now();
    // Each family reads the states under their `watch` borrows, never a copy: a scrape of
    // 2,500 devices cloned every state (2.3 MiB, and the resident set kept the pages; issue
    // 15.4). A state may move between two families, as it may between two scrapes.
    let devices: Vec<_> = st
        .fleet
        .handles()
        .map(|h| {
            let kind = h.profile.as_ref().map(|p| p.kind);
            (h, kind)
        })
        .collect();
    let healths: Vec<Health> = devices
        .iter()
        .map(|(h, _)| h.with_state(|s| s.health))
        .collect();
    let mut out = Exposition::new();

    out.family("avwarden_devices", "gauge", "Devices in each health state.");
    for health in HEALTHS {
        let n = healths.iter().filter(|h| **h == health).count();
        out.sample("avwarden_devices", &[("health", health.as_str())], n as f64);
    }

    out.family(
        "avwarden_device_health",
        "gauge",
        "A device's health: -1 unknown, 0 ok, 1 busy, 2 degraded, 3 faulted, 4 unreachable.",
    );
    for ((h, kind), health) in devices.iter().zip(&healths) {
        let kind = kind.map_or("unknown", DeviceKind::as_str);
        let labels = [
            ("device", h.id.as_str()),
            ("room", h.room.as_str()),
            ("kind", kind),
        ];
        out.sample("avwarden_device_health", &labels, health_code(*health));
    }

    out.family(
        "avwarden_device_seconds_since_contact",
        "gauge",
        "Seconds since the device last answered (absent: never since the daemon started).",
    );
    for (h, _) in &devices {
        let Some(at) = h.with_state(|s| s.last_contact) else {
            continue;
        };
        let secs = (now - at).num_milliseconds().max(0) as f64 / 1000.0;
        let labels = [("device", h.id.as_str()), ("room", h.room.as_str())];
        out.sample("avwarden_device_seconds_since_contact", &labels, secs);
    }

    // Per-channel and per-lamp readings: the device's last known value of each.
    out.family(
        "avwarden_mic_battery_minutes",
        "gauge",
        "Run time left on a wireless mic transmitter's battery, per receiver channel.",
    );
    per_reading(
        &mut out,
        &devices,
        "avwarden_mic_battery_minutes",
        "channel",
        |p| match (&p.subject, p.quantity) {
            (Subject::Channel(ch), Quantity::BatteryMinutes) => Some(ch.to_string()),
            _ => None,
        },
    );

    out.family(
        "avwarden_projector_lamp_hours",
        "gauge",
        "Hours a projector's lamp has run, per lamp.",
    );
    per_reading(
        &mut out,
        &devices,
        "avwarden_projector_lamp_hours",
        "lamp",
        |p| match (&p.subject, p.quantity) {
            (Subject::Lamp(n), Quantity::LampHours) => Some(n.to_string()),
            _ => None,
        },
    );

    out.family(
        "avwarden_room_temperature_celsius",
        "gauge",
        "A room's temperature as its thermostat reads it.",
    );
    for (h, kind) in &devices {
        // A projector's internal temperature is not the room's.
        if kind.is_some_and(|k| k != DeviceKind::Hvac) {
            continue;
        }
        h.with_state(|s| {
            for (p, r) in &s.readings {
                if p.subject != Subject::Device || p.quantity != Quantity::Temperature {
                    continue;
                }
                let Some(v) = r.value.as_f64() else { continue };
                let labels = [("room", h.room.as_str()), ("device", h.id.as_str())];
                out.sample("avwarden_room_temperature_celsius", &labels, v);
            }
        });
    }

    out.family(
        "avwarden_zone_reduction_db",
        "gauge",
        "The level watch's gain reduction in force on a protected zone (0: none).",
    );
    if let Some(board) = &st.protection {
        for (h, _) in &devices {
            for (zone, z) in board.zones(&h.id) {
                let labels = [
                    ("device", h.id.as_str()),
                    ("room", h.room.as_str()),
                    ("zone", zone.as_str()),
                    ("state", z.state.as_str()),
                ];
                out.sample("avwarden_zone_reduction_db", &labels, z.reduction_db);
            }
        }
    }

    out.family(
        "avwarden_alerts_open",
        "gauge",
        "Alerts raised or acknowledged and not resolved, by fault class.",
    );
    if let Some(playbook) = &st.playbook {
        let open = playbook.alerts(&crate::playbook::AlertFilter {
            open: Some(true),
            ..Default::default()
        });
        for class in FaultClass::ALL {
            let n = open.iter().filter(|a| a.grade.class == class).count();
            out.sample(
                "avwarden_alerts_open",
                &[("class", class.as_str())],
                n as f64,
            );
        }
    }

    if let Some(fleet) = &st.aggregate {
        fleet.render_metrics(&mut out);
    }

    poll_durations().render(&mut out);
    poll_lags().render(&mut out);
    render_meter_samples(&mut out);
    out.push_rendered(&st.metrics.render());
    out.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_codes_rise_with_how_bad_it_is() {
        let codes: Vec<f64> = HEALTHS.iter().map(|h| health_code(*h)).collect();
        assert!(codes.windows(2).all(|w| w[0] < w[1]), "{codes:?}");
    }
}
