//! The one fault taxonomy: every source (device faults by code, health changes, self-tests,
//! booking feeds, the logbook store) becomes a [`FaultKind`] raised or cleared on a
//! [`Subject`], so rules, alerts and reports speak one vocabulary.
//!
//! Owns the mapping from events to observations. Pure: must not keep state or decide a class
//! (the evaluator does) or whether to alert (the alert book does).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::events::EventKind;
use crate::model::{DeviceId, Health, Readiness, RoomId, Severity};

/// Fault codes the level watch emits when it protects a loudspeaker; named here because the
/// taxonomy is where every code gets its meaning.
pub const SPEAKER_PROTECTION: &str = "speaker_protection";
pub const SPEAKER_MUTED: &str = "speaker_muted";

/// What is wrong, whatever reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    Unreachable,
    CommsSlow,
    BusyTooLong,
    ProjectorLamp,
    ProjectorFan,
    ProjectorTemperature,
    ProjectorCover,
    ProjectorFilter,
    ProjectorOther,
    LampNearEnd,
    BatteryLow,
    BatteryWillNotLast,
    BatteryCritical,
    TxAbsent,
    Interference,
    EncryptionMismatch,
    MeteringLost,
    SpeakerProtection,
    SpeakerMuted,
    HvacUnreachable,
    HvacOutOfRange,
    SelfTestNotReady,
    BookingFeedFailing,
    StorageDegraded,
    /// A device fault code the taxonomy has no name for (`auth_failed`, `dsp_no_design`, …):
    /// kept, never dropped, so a new driver's faults still alert.
    DeviceOther,
}

impl FaultKind {
    pub const ALL: &'static [FaultKind] = &[
        FaultKind::Unreachable,
        FaultKind::CommsSlow,
        FaultKind::BusyTooLong,
        FaultKind::ProjectorLamp,
        FaultKind::ProjectorFan,
        FaultKind::ProjectorTemperature,
        FaultKind::ProjectorCover,
        FaultKind::ProjectorFilter,
        FaultKind::ProjectorOther,
        FaultKind::LampNearEnd,
        FaultKind::BatteryLow,
        FaultKind::BatteryWillNotLast,
        FaultKind::BatteryCritical,
        FaultKind::TxAbsent,
        FaultKind::Interference,
        FaultKind::EncryptionMismatch,
        FaultKind::MeteringLost,
        FaultKind::SpeakerProtection,
        FaultKind::SpeakerMuted,
        FaultKind::HvacUnreachable,
        FaultKind::HvacOutOfRange,
        FaultKind::SelfTestNotReady,
        FaultKind::BookingFeedFailing,
        FaultKind::StorageDegraded,
        FaultKind::DeviceOther,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Unreachable => "unreachable",
            FaultKind::CommsSlow => "comms_slow",
            FaultKind::BusyTooLong => "busy_too_long",
            FaultKind::ProjectorLamp => "projector_lamp",
            FaultKind::ProjectorFan => "projector_fan",
            FaultKind::ProjectorTemperature => "projector_temperature",
            FaultKind::ProjectorCover => "projector_cover",
            FaultKind::ProjectorFilter => "projector_filter",
            FaultKind::ProjectorOther => "projector_other",
            FaultKind::LampNearEnd => "lamp_near_end",
            FaultKind::BatteryLow => "battery_low",
            FaultKind::BatteryWillNotLast => "battery_will_not_last",
            FaultKind::BatteryCritical => "battery_critical",
            FaultKind::TxAbsent => "tx_absent",
            FaultKind::Interference => "interference",
            FaultKind::EncryptionMismatch => "encryption_mismatch",
            FaultKind::MeteringLost => "metering_lost",
            FaultKind::SpeakerProtection => "speaker_protection",
            FaultKind::SpeakerMuted => "speaker_muted",
            FaultKind::HvacUnreachable => "hvac_unreachable",
            FaultKind::HvacOutOfRange => "hvac_out_of_range",
            FaultKind::SelfTestNotReady => "self_test_not_ready",
            FaultKind::BookingFeedFailing => "booking_feed_failing",
            FaultKind::StorageDegraded => "storage_degraded",
            FaultKind::DeviceOther => "device_other",
        }
    }

    pub fn parse(s: &str) -> Option<FaultKind> {
        FaultKind::ALL.iter().copied().find(|k| k.as_str() == s)
    }

    /// Whether the fault takes a function away (rather than warning that it soon may). The
    /// evaluator's default grading starts one class lower for warnings.
    pub fn disabling(self) -> bool {
        !matches!(
            self,
            FaultKind::CommsSlow
                | FaultKind::LampNearEnd
                | FaultKind::BatteryLow
                | FaultKind::ProjectorFilter
                | FaultKind::MeteringLost
                | FaultKind::Interference
                | FaultKind::BookingFeedFailing
        )
    }

    /// The kind for a device's fault code. `hvac`: the device is an HVAC unit, whose alarms
    /// are "out of range" rather than a projector's "temperature".
    pub fn from_code(code: &str, severity: Severity, hvac: bool) -> FaultKind {
        match code {
            "comms_slow" => FaultKind::CommsSlow,
            "battery_low" if severity == Severity::Fault => FaultKind::BatteryCritical,
            "battery_low" => FaultKind::BatteryLow,
            "battery_will_not_last" => FaultKind::BatteryWillNotLast,
            "tx_absent" => FaultKind::TxAbsent,
            "interference" => FaultKind::Interference,
            "encryption_mismatch" => FaultKind::EncryptionMismatch,
            "metering_lost" => FaultKind::MeteringLost,
            SPEAKER_PROTECTION => FaultKind::SpeakerProtection,
            SPEAKER_MUTED => FaultKind::SpeakerMuted,
            _ if hvac => FaultKind::HvacOutOfRange,
            "lamp_life" => FaultKind::LampNearEnd,
            "lamp" | "lamp_ignition_failed" => FaultKind::ProjectorLamp,
            "fan" | "cooling" | "air_flow" | "air_flow_sensor" => FaultKind::ProjectorFan,
            "temperature" => FaultKind::ProjectorTemperature,
            "cover_open" | "lamp_cover" => FaultKind::ProjectorCover,
            "filter" | "filter_life" | "cinema_filter" => FaultKind::ProjectorFilter,
            "other" | "projector_failure" | "abnormal_state" | "abnormal_standby" | "capacitor"
            | "auto_iris" | "subsystem" | "power_supply" | "shutter" | "static_iris"
            | "exhaust_shutter" | "obstacle" => FaultKind::ProjectorOther,
            _ => FaultKind::DeviceOther,
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a fault is about: one alert per subject, kind and component.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "type", content = "id", rename_all = "snake_case")]
pub enum Subject {
    Device(DeviceId),
    Room(RoomId),
    Feed(String),
    Store,
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Device(d) => write!(f, "{d}"),
            Subject::Room(r) => write!(f, "room {r}"),
            Subject::Feed(n) => write!(f, "feed {n}"),
            Subject::Store => f.write_str("logbook store"),
        }
    }
}

/// Whether the source says the fault holds now or no longer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Raised,
    Cleared,
}

/// One fault observation, ready for the alert book.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub kind: FaultKind,
    pub subject: Subject,
    pub room: Option<RoomId>,
    /// The component (`channel 2`, `lamp 1`), part of the alert's identity.
    pub component: Option<String>,
    pub change: Change,
    pub message: String,
    /// Raise only if it still holds after this long (busy too long).
    pub hold: Option<chrono::Duration>,
    /// The device's own fault code, when the observation is one: the logbook's fault entries
    /// (and the monthly report) key on it.
    pub code: Option<String>,
}

impl Observation {
    fn new(kind: FaultKind, subject: Subject, room: Option<RoomId>, change: Change) -> Self {
        Observation {
            kind,
            subject,
            room,
            component: None,
            change,
            message: String::new(),
            hold: None,
            code: None,
        }
    }

    fn saying(mut self, message: impl Into<String>) -> Self {
        self.message = message.into();
        self
    }
}

/// What the taxonomy needs to know about the site beyond the event.
pub struct Lookup<'a> {
    /// The device is an HVAC unit.
    pub is_hvac: &'a dyn Fn(&DeviceId) -> bool,
    /// How long a device may stay busy (warming, cooling) before it is a fault.
    pub busy_limit: chrono::Duration,
}

/// The observations an event carries (none for most events). Pure.
pub fn classify(event: &EventKind, lookup: &Lookup<'_>) -> Vec<Observation> {
    let dev = |d: &DeviceId| Subject::Device(d.clone());
    match event {
        EventKind::FaultRaised {
            device,
            room,
            fault,
        }
        | EventKind::FaultCleared {
            device,
            room,
            fault,
        } => {
            // Unreachable comes from health changes; here only what the device (or its comms
            // monitor) reports as a fault.
            let change = if matches!(event, EventKind::FaultRaised { .. }) {
                Change::Raised
            } else {
                Change::Cleared
            };
            let kind = FaultKind::from_code(&fault.code, fault.severity, (lookup.is_hvac)(device));
            let mut o = Observation::new(kind, dev(device), Some(room.clone()), change)
                .saying(fault.message.clone());
            o.component = fault.component.clone();
            o.code = Some(fault.code.clone());
            // A battery going from low to critical is the same battery: its identity must not
            // depend on the severity, or the low alert would linger beside the critical one.
            let mut out = vec![o];
            if fault.code == "battery_low" && change == Change::Raised {
                let other = if fault.severity == Severity::Fault {
                    FaultKind::BatteryLow
                } else {
                    FaultKind::BatteryCritical
                };
                let mut c =
                    Observation::new(other, dev(device), Some(room.clone()), Change::Cleared);
                c.component = fault.component.clone();
                out.push(c);
            } else if fault.code == "battery_low" {
                let mut c = out[0].clone();
                c.kind = if kind == FaultKind::BatteryCritical {
                    FaultKind::BatteryLow
                } else {
                    FaultKind::BatteryCritical
                };
                out.push(c);
            }
            out
        }
        EventKind::HealthChanged {
            device,
            room,
            from,
            to,
        } => {
            let unreachable = if (lookup.is_hvac)(device) {
                FaultKind::HvacUnreachable
            } else {
                FaultKind::Unreachable
            };
            let mut out = Vec::new();
            if *to == Health::Unreachable {
                out.push(
                    Observation::new(unreachable, dev(device), Some(room.clone()), Change::Raised)
                        .saying(format!("{device} does not answer")),
                );
            } else if *from == Health::Unreachable {
                out.push(Observation::new(
                    unreachable,
                    dev(device),
                    Some(room.clone()),
                    Change::Cleared,
                ));
            }
            if *to == Health::Busy {
                let mut o = Observation::new(
                    FaultKind::BusyTooLong,
                    dev(device),
                    Some(room.clone()),
                    Change::Raised,
                )
                .saying(format!(
                    "{device} has been warming up or cooling down for over {} s",
                    lookup.busy_limit.num_seconds()
                ));
                o.hold = Some(lookup.busy_limit);
                out.push(o);
            } else if *from == Health::Busy {
                out.push(Observation::new(
                    FaultKind::BusyTooLong,
                    dev(device),
                    Some(room.clone()),
                    Change::Cleared,
                ));
            }
            out
        }
        EventKind::SelfTestFinished {
            room,
            readiness,
            reasons,
            ..
        } => {
            let change = if *readiness == Readiness::NotReady {
                Change::Raised
            } else {
                Change::Cleared
            };
            vec![Observation::new(
                FaultKind::SelfTestNotReady,
                Subject::Room(room.clone()),
                Some(room.clone()),
                change,
            )
            .saying(format!("{room} is not ready: {reasons} reasons"))]
        }
        EventKind::NotReadyAtDeadline {
            room,
            booking,
            readiness,
        } => vec![Observation::new(
            FaultKind::SelfTestNotReady,
            Subject::Room(room.clone()),
            Some(room.clone()),
            Change::Raised,
        )
        .saying(format!(
            "{room} is not ready 30 minutes before booking {booking} ({})",
            readiness.map_or("no verdict", |r| r.as_str())
        ))],
        EventKind::BookingFeedFailed { feed, reason } => vec![Observation::new(
            FaultKind::BookingFeedFailing,
            Subject::Feed(feed.clone()),
            None,
            Change::Raised,
        )
        .saying(format!("booking feed {feed} fails: {reason}"))],
        EventKind::BookingFeedRecovered { feed, .. } => vec![Observation::new(
            FaultKind::BookingFeedFailing,
            Subject::Feed(feed.clone()),
            None,
            Change::Cleared,
        )],
        EventKind::StoreFailed { error, pending } => vec![Observation::new(
            FaultKind::StorageDegraded,
            Subject::Store,
            None,
            Change::Raised,
        )
        .saying(format!(
            "logbook store cannot write: {error}; {pending} entries wait in memory"
        ))],
        EventKind::StoreRecovered { .. } => vec![Observation::new(
            FaultKind::StorageDegraded,
            Subject::Store,
            None,
            Change::Cleared,
        )],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Fault;

    fn one(event: EventKind, hvac: bool) -> Vec<(FaultKind, Change)> {
        let is_hvac = move |_: &DeviceId| hvac;
        classify(
            &event,
            &Lookup {
                is_hvac: &is_hvac,
                busy_limit: chrono::Duration::minutes(3),
            },
        )
        .into_iter()
        .map(|o| (o.kind, o.change))
        .collect()
    }

    fn raised(code: &str, sev: Severity) -> EventKind {
        EventKind::FaultRaised {
            device: "d".into(),
            room: "r".into(),
            fault: Fault::new(code, sev, "m").on("channel 1"),
        }
    }

    #[test]
    fn codes_the_drivers_emit_have_a_kind() {
        use FaultKind::*;
        let table = [
            ("lamp", Severity::Fault, false, ProjectorLamp),
            (
                "lamp_ignition_failed",
                Severity::Fault,
                false,
                ProjectorLamp,
            ),
            ("fan", Severity::Fault, false, ProjectorFan),
            ("temperature", Severity::Fault, false, ProjectorTemperature),
            ("cover_open", Severity::Fault, false, ProjectorCover),
            ("lamp_cover", Severity::Fault, false, ProjectorCover),
            ("filter_life", Severity::Warning, false, ProjectorFilter),
            ("projector_failure", Severity::Fault, false, ProjectorOther),
            ("abnormal_standby", Severity::Fault, false, ProjectorOther),
            ("lamp_life", Severity::Warning, false, LampNearEnd),
            ("battery_low", Severity::Warning, false, BatteryLow),
            ("battery_low", Severity::Fault, false, BatteryCritical),
            ("tx_absent", Severity::Warning, false, TxAbsent),
            ("interference", Severity::Warning, false, Interference),
            (
                "encryption_mismatch",
                Severity::Fault,
                false,
                EncryptionMismatch,
            ),
            ("metering_lost", Severity::Warning, false, MeteringLost),
            ("comms_slow", Severity::Warning, false, CommsSlow),
            ("comms_slow", Severity::Warning, true, CommsSlow),
            ("hvac_alarm", Severity::Fault, true, HvacOutOfRange),
            (
                "speaker_protection",
                Severity::Warning,
                false,
                SpeakerProtection,
            ),
            ("speaker_muted", Severity::Fault, false, SpeakerMuted),
            ("auth_failed", Severity::Fault, false, DeviceOther),
            ("dsp_no_design", Severity::Fault, false, DeviceOther),
        ];
        for (code, sev, hvac, want) in table {
            assert_eq!(
                FaultKind::from_code(code, sev, hvac),
                want,
                "{code} {sev:?}"
            );
        }
    }

    #[test]
    fn names_round_trip() {
        for k in FaultKind::ALL {
            assert_eq!(FaultKind::parse(k.as_str()), Some(*k));
        }
        assert_eq!(FaultKind::parse("nope"), None);
    }

    #[test]
    fn a_battery_going_critical_clears_its_low_alert() {
        assert_eq!(
            one(raised("battery_low", Severity::Fault), false),
            vec![
                (FaultKind::BatteryCritical, Change::Raised),
                (FaultKind::BatteryLow, Change::Cleared)
            ]
        );
    }

    #[test]
    fn health_changes_raise_and_clear_reachability_and_busy() {
        let h = |from, to| EventKind::HealthChanged {
            device: "d".into(),
            room: "r".into(),
            from,
            to,
        };
        assert_eq!(
            one(h(Health::Ok, Health::Unreachable), false),
            vec![(FaultKind::Unreachable, Change::Raised)]
        );
        assert_eq!(
            one(h(Health::Unreachable, Health::Ok), true),
            vec![(FaultKind::HvacUnreachable, Change::Cleared)]
        );
        assert_eq!(
            one(h(Health::Ok, Health::Busy), false),
            vec![(FaultKind::BusyTooLong, Change::Raised)]
        );
        assert_eq!(
            one(h(Health::Busy, Health::Unreachable), false),
            vec![
                (FaultKind::Unreachable, Change::Raised),
                (FaultKind::BusyTooLong, Change::Cleared)
            ]
        );
        assert!(one(h(Health::Ok, Health::Degraded), false).is_empty());
    }

    #[test]
    fn site_wide_sources() {
        assert_eq!(
            one(
                EventKind::StoreFailed {
                    error: "disk full".into(),
                    pending: 3
                },
                false
            ),
            vec![(FaultKind::StorageDegraded, Change::Raised)]
        );
        assert_eq!(
            one(
                EventKind::BookingFeedRecovered {
                    feed: "f".into(),
                    bookings: 2
                },
                false
            ),
            vec![(FaultKind::BookingFeedFailing, Change::Cleared)]
        );
        assert_eq!(
            one(
                EventKind::NotReadyAtDeadline {
                    room: "r".into(),
                    booking: "b".into(),
                    readiness: None
                },
                false
            ),
            vec![(FaultKind::SelfTestNotReady, Change::Raised)]
        );
    }
}
