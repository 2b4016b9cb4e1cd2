//! JSON views of device state: points grouped by subject, with their age and staleness.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::meter::stream::MeterBoard;
use crate::model::{
    ActiveFault, DeviceState, Health, Identity, LinkCounters, LinkStatus, Quantity, Subject, Unit,
    Value,
};

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct DeviceSummary {
    pub id: String,
    pub room: String,
    pub profile: String,
    /// `unknown`, `ok`, `busy`, `degraded`, `faulted` or `unreachable`.
    #[schema(value_type = String)]
    pub health: Health,
    pub health_since: DateTime<Utc>,
    pub faults: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_contact: Option<DateTime<Utc>>,
}

impl DeviceSummary {
    /// What a list's weak validator covers of the contact instant: whether there is one.
    pub fn blank_contact(&mut self) {
        if self.last_contact.is_some() {
            self.last_contact = Some(DateTime::<Utc>::UNIX_EPOCH);
        }
    }

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

/// One point's value as the API shows it. A meter level without a level now (a receiver
/// channel without a transmitter reads its floor) has the value `unknown` and no instant.
#[derive(Debug, Serialize)]
pub struct ReadingView {
    #[serde(flatten)]
    pub value: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<Unit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_secs: Option<f64>,
    /// The last known value, not the present one: the device is unreachable or silent, or
    /// this meter's samples stopped.
    pub stale: bool,
    /// Refreshed at meter rate (from the meter stream, or a receiver's RF level).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub metered: bool,
}

fn age_secs(at: DateTime<Utc>, now: DateTime<Utc>) -> f64 {
    (now - at).num_milliseconds().max(0) as f64 / 1000.0
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
    /// What the device reports, grouped by subject: `{"device": {"power": …}, "ch.2":
    /// {"battery_minutes": …, "rf_dbm": …, "audio_dbfs": …}}`. Audio levels come from the
    /// meter stream (see [`DeviceDetail::with_meters`]).
    pub points: BTreeMap<Subject, BTreeMap<Quantity, ReadingView>>,
    /// What the device can do and which commands it takes, from its profile.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub catalogue: Option<Catalogue>,
    pub faults: Vec<FaultView>,
    pub identity: Identity,
    pub link: LinkStatus,
    pub counters: LinkCounters,
    /// Each protected zone's level-watch state (`idle|trimming|restoring|muted|blind`, the
    /// technician's set level, the reduction in force, since when), by zone id.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub protection: BTreeMap<String, ProtectionView>,
}

/// A zone's protection as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProtectionView {
    pub state: crate::levelwatch::controller::Mode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub set_level_db: Option<f64>,
    pub reduction_db: f64,
    pub since: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manual_until: Option<DateTime<Utc>>,
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
            catalogue: None,
            points: {
                let mut points: BTreeMap<Subject, BTreeMap<Quantity, ReadingView>> =
                    BTreeMap::new();
                for (p, r) in &s.readings {
                    points.entry(p.subject.clone()).or_default().insert(
                        p.quantity,
                        ReadingView {
                            value: r.value.clone(),
                            unit: r.unit(),
                            observed_at: Some(r.observed_at),
                            age_secs: Some(age_secs(r.observed_at, now)),
                            stale: device_stale || s.meter_stale(r, now),
                            metered: r.metered,
                        },
                    );
                }
                points
            },
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
            protection: BTreeMap::new(),
        }
    }

    /// Add the level watch's state of each protected zone (from its published board).
    pub fn with_protection(
        mut self,
        zones: BTreeMap<String, crate::levelwatch::controller::ZoneView>,
    ) -> Self {
        self.protection = zones
            .into_iter()
            .map(|(id, z)| {
                (
                    id,
                    ProtectionView {
                        state: z.state,
                        set_level_db: z.set_level_db,
                        reduction_db: z.reduction_db,
                        since: z.since,
                        manual_until: z.manual_until,
                    },
                )
            })
            .collect();
        self
    }
}

/// A device's capabilities, the quantities it reports (per subject, in `points`; meter levels
/// as `audio_dbfs`), and the commands it takes (`POST …/commands` with one of these).
#[derive(Debug, Serialize)]
pub struct Catalogue {
    pub capabilities: Vec<crate::model::Capability>,
    pub quantities: Vec<Quantity>,
    pub commands: Vec<&'static str>,
}

impl Catalogue {
    pub fn of(h: &crate::runtime::DeviceHandle) -> Self {
        Self {
            capabilities: h.capabilities().to_vec(),
            quantities: h.quantities(),
            commands: crate::model::DeviceCommand::samples()
                .iter()
                .filter(|c| h.takes(c))
                .map(|c| c.name())
                .collect(),
        }
    }
}

impl DeviceDetail {
    /// Add the device's latest audio level per metered subject, from its board, as the
    /// subject's `audio_dbfs` point. Stale when the samples stopped (older than three meter
    /// periods) or the device is unreachable.
    pub fn with_meters(mut self, s: &DeviceState, board: &MeterBoard, now: DateTime<Utc>) -> Self {
        let device_stale = s.readings_stale_at(now);
        for (subject, level) in board.levels() {
            let view = ReadingView {
                value: level.map_or(Value::Unknown, |l| Value::Float(l.dbfs)),
                unit: Quantity::AudioDbfs.unit(),
                observed_at: level.map(|l| l.at),
                age_secs: level.map(|l| age_secs(l.at, now)),
                stale: device_stale || level.is_some_and(|l| s.sample_stale(l.at, now)),
                metered: true,
            };
            self.points
                .entry(subject)
                .or_default()
                .insert(Quantity::AudioDbfs, view);
        }
        self
    }
}
