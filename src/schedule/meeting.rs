//! Around a meeting: what the room's controls were at its start, and after its end the
//! plan's "restore every device's settings" (domain.md, "After the meeting"), switching off
//! projectors and air conditioning when no booking follows soon, and the meeting's usage of
//! the equipment for the archive.
//!
//! The decisions are pure functions of device states ([`snapshot`], [`restore_commands`],
//! [`power_down_commands`], [`usage`]); [`end_of_meeting`] only carries them out through the
//! device handles. Must not talk to a device except through its handle.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::model::{
    Capability, DeviceCommand, DeviceId, DeviceState, PowerState, Quantity, Subject, Value,
};
use crate::records::CounterUpdate;
use crate::runtime::{CommandOutcome, DeviceHandle};

/// One device's controls and counters at an instant.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DeviceSnapshot {
    pub device: DeviceId,
    /// Zone levels (dB) and mutes, by zone id.
    pub zone_levels: BTreeMap<String, f64>,
    pub zone_mutes: BTreeMap<String, bool>,
    /// A projector's selected input.
    pub input: Option<String>,
    pub lamp_hours: BTreeMap<u8, f64>,
    /// Minutes left per receiver channel.
    pub battery_minutes: BTreeMap<u8, f64>,
    /// On (a projector lit or warming, an HVAC unit running).
    pub on: Option<bool>,
}

/// The room's controls at a meeting's start.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RoomSnapshot {
    pub at: Option<DateTime<Utc>>,
    pub devices: Vec<DeviceSnapshot>,
}

impl RoomSnapshot {
    pub fn device(&self, id: &DeviceId) -> Option<&DeviceSnapshot> {
        self.devices.iter().find(|d| &d.device == id)
    }
}

/// What a device's state says of its controls; unknown and stale values are left out (a
/// restore never writes what it did not see).
pub fn snapshot(s: &DeviceState) -> DeviceSnapshot {
    let mut d = DeviceSnapshot {
        device: s.id.clone(),
        ..DeviceSnapshot::default()
    };
    for (p, r) in &s.readings {
        match (&p.subject, p.quantity, &r.value) {
            (Subject::Zone(z), Quantity::LevelDb, v) => {
                if let Some(db) = v.as_f64() {
                    d.zone_levels.insert(z.to_string(), db);
                }
            }
            (Subject::Zone(z), Quantity::Muted, Value::Bool(m)) => {
                d.zone_mutes.insert(z.to_string(), *m);
            }
            (Subject::Device, Quantity::Input, Value::Text(i)) => d.input = Some(i.clone()),
            (Subject::Lamp(n), Quantity::LampHours, v) => {
                if let Some(h) = v.as_f64() {
                    d.lamp_hours.insert(*n, h);
                }
            }
            (Subject::Channel(n), Quantity::BatteryMinutes, v) => {
                if let Some(m) = v.as_f64() {
                    d.battery_minutes.insert(*n, m);
                }
            }
            (Subject::Device, Quantity::Power, Value::Power(p)) => {
                d.on = Some(matches!(p, PowerState::On | PowerState::WarmingUp));
            }
            (Subject::Device, Quantity::HvacRunning, Value::Bool(b)) => d.on = Some(*b),
            _ => {}
        }
    }
    d
}

/// The commands that put a device back as it was at the start: levels, mutes and the input a
/// meeting changed (nothing for what it left alone).
pub fn restore_commands(start: &DeviceSnapshot, now: &DeviceSnapshot) -> Vec<DeviceCommand> {
    let mut out = Vec::new();
    for (zone, db) in &start.zone_levels {
        if now
            .zone_levels
            .get(zone)
            .is_some_and(|n| (n - db).abs() > 0.05)
        {
            out.push(DeviceCommand::SetLevel {
                zone: zone.clone(),
                db: *db,
            });
        }
    }
    for (zone, on) in &start.zone_mutes {
        if now.zone_mutes.get(zone).is_some_and(|n| n != on) {
            out.push(DeviceCommand::SetZoneMute {
                zone: zone.clone(),
                on: *on,
            });
        }
    }
    if let (Some(i), Some(n)) = (&start.input, &now.input) {
        if i != n {
            out.push(DeviceCommand::SelectInput { input: i.clone() });
        }
    }
    out
}

/// Switch off what is on when no booking follows within the gap: projectors (power) and air
/// conditioning (power, else mode `off`). Never anything else.
pub fn power_down_commands(h: &DeviceHandle, now: &DeviceSnapshot) -> Vec<DeviceCommand> {
    if now.on != Some(true) {
        return Vec::new();
    }
    let off = DeviceCommand::Power { on: false };
    let projector = h.can(Capability::Lamp) || h.can(Capability::Input);
    let hvac = h.can(Capability::Setpoint) || h.can(Capability::HvacMode);
    if (projector || hvac) && h.takes(&off) {
        return vec![off];
    }
    let mode_off = DeviceCommand::SetHvacMode { mode: "off".into() };
    if hvac && h.takes(&mode_off) {
        return vec![mode_off];
    }
    Vec::new()
}

/// A meeting's use of one device, for its archive counters: lamp hours burnt, battery minutes
/// used per channel (a battery swapped mid-meeting counts from the swap), minutes an HVAC unit
/// ran as seen at the start and the end.
pub fn usage(
    start: &DeviceSnapshot,
    end: &DeviceSnapshot,
    minutes: f64,
    hvac: bool,
) -> Vec<CounterUpdate> {
    let mut out = Vec::new();
    let lamp: f64 = start
        .lamp_hours
        .iter()
        .filter_map(|(n, h0)| end.lamp_hours.get(n).map(|h1| (h1 - h0).max(0.0)))
        .sum();
    if lamp > 0.0 {
        out.push(CounterUpdate::Add {
            name: "meetings.lamp_hours".into(),
            delta: lamp,
        });
    }
    for (n, m0) in &start.battery_minutes {
        if let Some(m1) = end.battery_minutes.get(n) {
            let used = m0 - m1;
            if used > 0.0 {
                out.push(CounterUpdate::Add {
                    name: format!("meetings.ch.{n}.battery_minutes_used"),
                    delta: used,
                });
            }
        }
    }
    if hvac && (start.on == Some(true) || end.on == Some(true)) {
        out.push(CounterUpdate::Add {
            name: "meetings.hvac_minutes".into(),
            delta: minutes,
        });
    }
    if !out.is_empty() || start.on.is_some() {
        out.push(CounterUpdate::Add {
            name: "meetings".into(),
            delta: 1.0,
        });
    }
    out
}

/// What the end of a meeting did to one device.
#[derive(Debug, Clone, Serialize)]
pub struct EndStep {
    pub device: DeviceId,
    pub command: String,
    pub outcome: String,
}

/// Carry out the end of a meeting in a room: restore what changed since `start`, switch off
/// when nothing follows, and return what was done and each device's usage.
pub async fn end_of_meeting(
    handles: &[DeviceHandle],
    start: &RoomSnapshot,
    power_down: bool,
    minutes: f64,
) -> (Vec<EndStep>, Vec<(DeviceId, Vec<CounterUpdate>)>) {
    let mut steps = Vec::new();
    let mut counters = Vec::new();
    for h in handles {
        let now = snapshot(&h.state());
        let mut cmds = start
            .device(&h.id)
            .map(|s| restore_commands(s, &now))
            .unwrap_or_default();
        if power_down {
            cmds.extend(power_down_commands(h, &now));
        }
        for cmd in cmds {
            let name = format!("{cmd:?}");
            let outcome: CommandOutcome = h.command(cmd).await;
            steps.push(EndStep {
                device: h.id.clone(),
                command: name,
                outcome: outcome.to_string(),
            });
        }
        if let Some(s) = start.device(&h.id) {
            let hvac = h.can(Capability::Setpoint);
            let u = usage(s, &now, minutes, hvac);
            if !u.is_empty() {
                counters.push((h.id.clone(), u));
            }
        }
    }
    (steps, counters)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(levels: &[(&str, f64)], mutes: &[(&str, bool)], input: Option<&str>) -> DeviceSnapshot {
        DeviceSnapshot {
            device: DeviceId::new("d"),
            zone_levels: levels.iter().map(|(z, l)| (z.to_string(), *l)).collect(),
            zone_mutes: mutes.iter().map(|(z, m)| (z.to_string(), *m)).collect(),
            input: input.map(str::to_owned),
            ..DeviceSnapshot::default()
        }
    }

    #[test]
    fn only_what_the_meeting_changed_is_restored() {
        let start = snap(
            &[("main", -20.0), ("rear", -25.0)],
            &[("main", false)],
            Some("31"),
        );
        let now = snap(
            &[("main", -12.0), ("rear", -25.0)],
            &[("main", true)],
            Some("32"),
        );
        let cmds = restore_commands(&start, &now);
        assert_eq!(
            cmds,
            vec![
                DeviceCommand::SetLevel {
                    zone: "main".into(),
                    db: -20.0
                },
                DeviceCommand::SetZoneMute {
                    zone: "main".into(),
                    on: false
                },
                DeviceCommand::SelectInput { input: "31".into() },
            ]
        );
        assert!(restore_commands(&start, &start).is_empty());
        // What was not seen now (a zone unknown after a reconnect) is not written blindly.
        assert!(restore_commands(&start, &snap(&[], &[], None)).is_empty());
    }

    #[test]
    fn usage_counts_lamp_hours_battery_and_a_swap_mid_meeting_costs_nothing_negative() {
        let mut s = DeviceSnapshot::default();
        s.lamp_hours.insert(1, 100.0);
        s.battery_minutes.insert(1, 300.0);
        s.battery_minutes.insert(2, 40.0);
        s.on = Some(true);
        let mut e = s.clone();
        e.lamp_hours.insert(1, 101.5);
        e.battery_minutes.insert(1, 210.0);
        e.battery_minutes.insert(2, 480.0); // swapped
        let u = usage(&s, &e, 90.0, false);
        assert!(u.contains(&CounterUpdate::Add {
            name: "meetings.lamp_hours".into(),
            delta: 1.5
        }));
        assert!(u.contains(&CounterUpdate::Add {
            name: "meetings.ch.1.battery_minutes_used".into(),
            delta: 90.0
        }));
        assert!(!u
            .iter()
            .any(|c| matches!(c, CounterUpdate::Add { name, .. } if name.contains("ch.2"))));
        assert!(u.contains(&CounterUpdate::Add {
            name: "meetings".into(),
            delta: 1.0
        }));
    }
}
