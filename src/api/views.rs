//! JSON views of device state: readings with their age and staleness.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::meter::stream::MeterBoard;
use crate::model::{
    ActiveFault, DeviceState, Health, Identity, LinkCounters, LinkStatus, Unit, Value,
};

#[derive(Debug, Serialize)]
pub struct DeviceSummary {
    pub id: String,
    pub room: String,
    pub profile: String,
    pub health: Health,
    pub health_since: DateTime<Utc>,
    pub faults: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_contact: Option<DateTime<Utc>>,
}

impl DeviceSummary {
    pub fn from_state(s: &DeviceState, _now: DateTime<Utc>) -> Self {
        Self {
            id: s.id.to_string(),
            room: s.room.to_string(),
            profile: s.profile.to_string(),
            health: s.health,
            health_since: s.health_since,
            faults: s.faults.len(),
            last_contact: s.last_contact,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ReadingView {
    #[serde(flatten)]
    pub value: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<Unit>,
    pub observed_at: DateTime<Utc>,
    pub age_secs: f64,
    /// The last known value, not the present one: the device is unreachable or silent, or
    /// this meter's samples stopped.
    pub stale: bool,
}

/// An active fault as the API shows it. `stale`: reported by a device that is now
/// unreachable, kept with the instant it was last confirmed (`confirmed_at`), as readings are.
#[derive(Debug, Serialize)]
pub struct FaultView {
    #[serde(flatten)]
    pub fault: ActiveFault,
    pub stale: bool,
}

#[derive(Debug, Serialize)]
pub struct DeviceDetail {
    pub id: String,
    pub room: String,
    pub profile: String,
    pub health: Health,
    pub health_since: DateTime<Utc>,
    pub reachable: bool,
    pub busy: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_contact: Option<DateTime<Utc>>,
    pub readings: BTreeMap<String, ReadingView>,
    /// The latest level per metered subject (`zone.main`, `ch.2`), from the meter stream.
    pub meters: BTreeMap<String, MeterView>,
    /// What the device can do and which commands it takes, from its profile.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub catalogue: Option<Catalogue>,
    pub faults: Vec<FaultView>,
    pub identity: Identity,
    pub link: LinkStatus,
    pub counters: LinkCounters,
}

impl DeviceDetail {
    pub fn from_state(s: &DeviceState, now: DateTime<Utc>) -> Self {
        let device_stale = s.readings_stale_at(now);
        Self {
            id: s.id.to_string(),
            room: s.room.to_string(),
            profile: s.profile.to_string(),
            health: s.health,
            health_since: s.health_since,
            reachable: s.reachable,
            busy: s.busy,
            last_contact: s.last_contact,
            meters: BTreeMap::new(),
            catalogue: None,
            readings: s
                .readings
                .iter()
                .map(|(k, r)| {
                    (
                        k.clone(),
                        ReadingView {
                            value: r.value.clone(),
                            unit: r.unit,
                            observed_at: r.observed_at,
                            age_secs: (now - r.observed_at).num_milliseconds().max(0) as f64
                                / 1000.0,
                            stale: device_stale || s.meter_stale(r, now),
                        },
                    )
                })
                .collect(),
            faults: s
                .faults
                .iter()
                .map(|f| FaultView {
                    stale: f.stale(s.reachable),
                    fault: f.clone(),
                })
                .collect(),
            identity: s.identity.clone(),
            link: s.link.clone(),
            counters: s.counters.clone(),
        }
    }
}

/// A device's capabilities and the commands it takes (`POST …/commands` with one of these).
#[derive(Debug, Serialize)]
pub struct Catalogue {
    pub capabilities: Vec<crate::model::Capability>,
    pub commands: Vec<&'static str>,
}

impl Catalogue {
    pub fn of(h: &crate::runtime::DeviceHandle) -> Self {
        Self {
            capabilities: h.capabilities().to_vec(),
            commands: crate::model::DeviceCommand::samples()
                .iter()
                .filter(|c| h.takes(c))
                .map(|c| c.name())
                .collect(),
        }
    }
}

/// A metered subject's latest level. `dbfs` is null when no level is known now (a receiver
/// channel without a transmitter reads its floor); `stale` when the samples stopped (older
/// than three meter periods) or the device is unreachable.
#[derive(Debug, Serialize)]
pub struct MeterView {
    pub dbfs: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_secs: Option<f64>,
    pub stale: bool,
}

impl DeviceDetail {
    /// Add the device's meter levels from its board.
    pub fn with_meters(mut self, s: &DeviceState, board: &MeterBoard, now: DateTime<Utc>) -> Self {
        let device_stale = s.readings_stale_at(now);
        self.meters = board
            .levels()
            .into_iter()
            .map(|(subject, level)| {
                let view = MeterView {
                    dbfs: level.map(|l| l.dbfs),
                    observed_at: level.map(|l| l.at),
                    age_secs: level.map(|l| (now - l.at).num_milliseconds().max(0) as f64 / 1000.0),
                    stale: device_stale || level.is_some_and(|l| s.sample_stale(l.at, now)),
                };
                (subject.to_string(), view)
            })
            .collect();
        self
    }
}
