//! Maintenance entries: lamp replaced, filter cleaned, batteries replaced, repair done — with
//! who and when — and the counters each one resets or adjusts.
//!
//! Owns the action vocabulary and its effect on counters. Must not write outside the writer's
//! transaction: the entry and its counter changes are committed together or not at all.
//!
//! Effects: a lamp replacement rebases `lamp.<n>.hours` (use since service restarts at 0) and
//! adds one to `lamp.<n>.replacements`; filter cleaning or replacement rebases `filter.hours`;
//! batteries replaced adds `count` to `batteries_replaced` and rebases the transmitter's
//! `tx.<n>.battery_cycles` (all transmitters when no channel is given); a repair changes no
//! counter, and when it names a fault code the monthly report counts it as that fault's
//! resolution. The entry's data keeps each counter's value before the change.

use chrono::{DateTime, Utc};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::archive;
use super::logbook::{self, Head, NewEntry};
use super::store::Applied;
use super::{Actor, StoreError};
use crate::events::EventKind;
use crate::model::{DeviceId, RoomId};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum MaintenanceAction {
    LampReplaced {
        #[serde(default = "first")]
        lamp: u8,
    },
    FilterCleaned,
    FilterReplaced,
    BatteriesReplaced {
        /// The transmitter (receiver channel) whose batteries were replaced; all when absent.
        #[serde(default)]
        channel: Option<u16>,
        #[serde(default = "one")]
        count: u32,
    },
    RepairDone {
        /// The fault code this repair resolves, if it resolves one.
        #[serde(default)]
        fault: Option<String>,
        #[serde(default)]
        component: Option<String>,
    },
    /// Inspection, cleaning, anything else worth a line.
    Other {
        what: String,
    },
}

fn first() -> u8 {
    1
}
fn one() -> u32 {
    1
}

impl MaintenanceAction {
    pub fn name(&self) -> &'static str {
        match self {
            MaintenanceAction::LampReplaced { .. } => "lamp_replaced",
            MaintenanceAction::FilterCleaned => "filter_cleaned",
            MaintenanceAction::FilterReplaced => "filter_replaced",
            MaintenanceAction::BatteriesReplaced { .. } => "batteries_replaced",
            MaintenanceAction::RepairDone { .. } => "repair_done",
            MaintenanceAction::Other { .. } => "other",
        }
    }

    fn describe(&self) -> String {
        match self {
            MaintenanceAction::LampReplaced { lamp } => format!("lamp {lamp} replaced"),
            MaintenanceAction::FilterCleaned => "filter cleaned".into(),
            MaintenanceAction::FilterReplaced => "filter replaced".into(),
            MaintenanceAction::BatteriesReplaced { channel, count } => match channel {
                Some(c) => format!("{count} batteries replaced (channel {c})"),
                None => format!("{count} batteries replaced"),
            },
            MaintenanceAction::RepairDone { fault, component } => {
                let mut s = "repair done".to_owned();
                if let Some(f) = fault {
                    s += &format!(" (fault {f}");
                    if let Some(c) = component {
                        s += &format!(", {c}");
                    }
                    s += ")";
                }
                s
            }
            MaintenanceAction::Other { what } => what.clone(),
        }
    }
}

/// A maintenance entry as a technician records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Maintenance {
    pub device: DeviceId,
    /// Defaults to the device's room in the archive.
    #[serde(default)]
    pub room: Option<RoomId>,
    /// When the work was done (may be earlier than when it is recorded).
    pub at: DateTime<Utc>,
    /// Who did it.
    pub by: String,
    #[serde(flatten)]
    pub action: MaintenanceAction,
    #[serde(default)]
    pub note: String,
}

pub(crate) fn apply(
    conn: &Connection,
    head: &mut Head,
    m: &Maintenance,
    booking_for: impl Fn(Option<&str>) -> Option<String>,
) -> Result<Applied, StoreError> {
    let by = m.by.trim();
    if by.is_empty() {
        return Err(StoreError::Invalid(
            "a maintenance entry needs who did the work".into(),
        ));
    }
    let device = m.device.as_str();
    if device.is_empty() {
        return Err(StoreError::Invalid(
            "a maintenance entry needs a device".into(),
        ));
    }
    let mut data = serde_json::Map::new();
    data.insert("action".into(), m.action.name().into());
    let mut before = serde_json::Map::new();
    match &m.action {
        MaintenanceAction::LampReplaced { lamp } => {
            if *lamp == 0 {
                return Err(StoreError::Invalid("lamps are numbered from 1".into()));
            }
            data.insert("lamp".into(), (*lamp).into());
            let name = format!("lamp.{lamp}.hours");
            before.insert(
                name.clone(),
                json!(archive::rebase_counter(conn, device, &name, m.at)?),
            );
            archive::add_counter(
                conn,
                device,
                &format!("lamp.{lamp}.replacements"),
                1.0,
                m.at,
            )?;
        }
        MaintenanceAction::FilterCleaned | MaintenanceAction::FilterReplaced => {
            let name = "filter.hours";
            before.insert(
                name.into(),
                json!(archive::rebase_counter(conn, device, name, m.at)?),
            );
        }
        MaintenanceAction::BatteriesReplaced { channel, count } => {
            if *count == 0 {
                return Err(StoreError::Invalid("batteries replaced: count is 0".into()));
            }
            data.insert("count".into(), (*count).into());
            data.insert("channel".into(), json!(channel));
            archive::add_counter(conn, device, "batteries_replaced", f64::from(*count), m.at)?;
            let names: Vec<String> = match channel {
                Some(c) => vec![format!("tx.{c}.battery_cycles")],
                None => archive::counters(conn, device)?
                    .into_iter()
                    .map(|c| c.name)
                    .filter(|n| n.starts_with("tx.") && n.ends_with(".battery_cycles"))
                    .collect(),
            };
            for name in names {
                before.insert(
                    name.clone(),
                    json!(archive::rebase_counter(conn, device, &name, m.at)?),
                );
            }
        }
        MaintenanceAction::RepairDone { fault, component } => {
            data.insert("fault".into(), json!(fault));
            data.insert("component".into(), json!(component));
        }
        MaintenanceAction::Other { what } => {
            if what.trim().is_empty() {
                return Err(StoreError::Invalid("maintenance: say what was done".into()));
            }
            data.insert("what".into(), what.clone().into());
        }
    }
    if !before.is_empty() {
        data.insert("counters_before".into(), serde_json::Value::Object(before));
    }
    if !m.note.is_empty() {
        data.insert("note".into(), m.note.clone().into());
    }
    let room = match &m.room {
        Some(r) => Some(r.to_string()),
        None => archive::get(conn, device)?.and_then(|r| r.room),
    };
    let mut message = format!("{device}: {} by {by}", m.action.describe());
    if !m.note.is_empty() {
        message += &format!(": {}", m.note);
    }
    let mut entry = NewEntry::new(m.at, "maintenance", Actor::person(by), message)
        .device(device)
        .data(serde_json::Value::Object(data));
    entry.booking = booking_for(room.as_deref());
    entry.room = room.clone();
    let seq = logbook::insert(conn, head, &entry, None)?;
    Ok(Applied {
        seqs: vec![seq],
        emit: vec![EventKind::MaintenanceRecorded {
            device: m.device.clone(),
            room: room.map(RoomId::new),
            action: m.action.name().to_owned(),
            by: by.to_owned(),
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_parse_from_json_with_defaults() {
        let a: MaintenanceAction = serde_json::from_str(r#"{"action":"lamp_replaced"}"#).unwrap();
        assert_eq!(a, MaintenanceAction::LampReplaced { lamp: 1 });
        let a: MaintenanceAction =
            serde_json::from_str(r#"{"action":"batteries_replaced","channel":2}"#).unwrap();
        assert_eq!(
            a,
            MaintenanceAction::BatteriesReplaced {
                channel: Some(2),
                count: 1
            }
        );
        assert!(serde_json::from_str::<MaintenanceAction>(r#"{"action":"lamp_eaten"}"#).is_err());
    }
}
