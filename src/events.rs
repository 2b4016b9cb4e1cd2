//! Typed internal events: every notable occurrence is one [`EventKind`], and its single
//! [`EventBus::emit`] writes the tracing line, bumps the metric and hands the event to every
//! subscriber (level watch, playbook, MQTT, SSE) and to the logbook sink, so that logs, metrics
//! and logbook never disagree.
//!
//! Log levels follow what the operator must do: ERROR a room is unusable or data is lost, WARN
//! degraded, INFO lifecycle, DEBUG per poll.

use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::metrics::Metrics;
use crate::model::{DeviceId, Fault, Health, Identity, RoomId, Severity};

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    DaemonStarted {
        version: String,
        site: String,
    },
    DaemonStopping {
        reason: String,
    },
    LinkUp {
        device: DeviceId,
        room: RoomId,
        peer: String,
    },
    LinkDown {
        device: DeviceId,
        room: RoomId,
        reason: String,
        retry_in_ms: u64,
    },
    HealthChanged {
        device: DeviceId,
        room: RoomId,
        from: Health,
        to: Health,
    },
    FaultRaised {
        device: DeviceId,
        room: RoomId,
        fault: Fault,
    },
    FaultCleared {
        device: DeviceId,
        room: RoomId,
        fault: Fault,
    },
    IdentityReported {
        device: DeviceId,
        room: RoomId,
        identity: Identity,
    },
    /// Undecodable or oversized input from a device, logged once per burst.
    BadInput {
        device: DeviceId,
        room: RoomId,
        detail: String,
        count: u64,
    },
    CommandExecuted {
        device: DeviceId,
        room: RoomId,
        command: String,
        outcome: String,
        ok: bool,
    },
    ActorRestarted {
        device: DeviceId,
        room: RoomId,
        restarts: u32,
        reason: String,
    },
    ActorGaveUp {
        device: DeviceId,
        room: RoomId,
        restarts: u32,
    },
    /// A person (or the playbook) acknowledged a fault: handling has started. The fault is the
    /// one raised with the same device, code and component.
    FaultAcknowledged {
        device: DeviceId,
        room: RoomId,
        code: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        component: Option<String>,
        by: String,
    },
    /// The site config was reloaded: devices and rooms added, removed or changed (`device x`,
    /// `room y`), and the settings read only at start that changed and wait for a restart.
    ConfigReloaded {
        added: Vec<String>,
        removed: Vec<String>,
        changed: Vec<String>,
        restart_needed: Vec<String>,
    },
    /// A reload found errors in the site config (each located: file, line:column, key path);
    /// the running config stays.
    ConfigReloadRefused {
        errors: Vec<String>,
    },
    /// A maintenance entry (lamp replaced, filter cleaned, …) was recorded. The records writer
    /// emits this after writing the entry itself, so it is not routed to the logbook again.
    MaintenanceRecorded {
        device: DeviceId,
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<RoomId>,
        action: String,
        by: String,
    },
    /// The serial number a device reports changed: the unit was swapped. Written to the logbook
    /// by the records writer before this is emitted.
    DeviceSwapped {
        device: DeviceId,
        room: RoomId,
        old_serial: String,
        new_serial: String,
    },
    /// The logbook store cannot write (disk full, read-only, I/O error); entries wait in a
    /// bounded buffer in memory. Data is at risk until it recovers.
    StoreFailed {
        error: String,
        pending: u64,
    },
    /// The logbook store writes again; `dropped` entries were lost while the buffer was full.
    StoreRecovered {
        written: u64,
        dropped: u64,
    },
    /// A booking's meeting window began in a room (the schedule decides when; domain.md gives
    /// faults "in meeting" priority from T-20). Logbook entries of the room carry the booking
    /// until it ends.
    BookingStarted {
        room: RoomId,
        booking: String,
    },
    BookingEnded {
        room: RoomId,
        booking: String,
    },
    /// A room's self-test finished (the records writer stores the verdict and its logbook
    /// entry itself, so this event is for live consumers: the playbook, MQTT, SSE).
    SelfTestFinished {
        room: RoomId,
        booking: Option<String>,
        kind: crate::model::TestKind,
        readiness: crate::model::Readiness,
        reasons: usize,
    },
    /// A booking's room was not ready at its T-30 deadline (domain.md: "what is not ready
    /// then is escalated"). `readiness` is `None` when no test had a verdict by then.
    NotReadyAtDeadline {
        room: RoomId,
        booking: String,
        readiness: Option<crate::model::Readiness>,
    },
    /// The level watch cut a loudspeaker zone (or muted it, `reason` `last_resort`): its meter
    /// breached the zone's protection policy. Levels in dB of the zone's control.
    SpeakerProtectionEngaged {
        device: DeviceId,
        room: RoomId,
        zone: String,
        reason: String,
        peak_dbfs: f64,
        level_before_db: f64,
        level_after_db: f64,
    },
    /// A zone at its maximum reduction is still over its limit: the policy cannot protect it
    /// further without a mute (the last resort is armed).
    SpeakerProtectionSaturated {
        device: DeviceId,
        room: RoomId,
        zone: String,
        peak_dbfs: f64,
    },
    /// A protection episode ended: `restored` when the zone is back at its set level, not
    /// when a person took the level over. The record of the episode for the logbook.
    SpeakerProtectionReleased {
        device: DeviceId,
        room: RoomId,
        zone: String,
        restored: bool,
        peak_dbfs: f64,
        duration_ms: u64,
        level_before_db: f64,
        level_after_db: f64,
        max_reduction_db: f64,
        over_limit_ms: u64,
    },
    /// A person changed a protected zone's level: it is the new set level, and the level watch
    /// leaves it alone for the cooldown.
    ZoneLevelSetByPerson {
        device: DeviceId,
        room: RoomId,
        zone: String,
        level_db: f64,
    },
    /// A zone's output kept rising while a mic was open: that mic's gain was cut.
    FeedbackSuspected {
        device: DeviceId,
        room: RoomId,
        zone: String,
        mic: String,
        rise_db: f64,
        gain_before_db: f64,
        gain_after_db: f64,
    },
    /// A mic input kept peaking at its ceiling: its gain was trimmed.
    InputClipping {
        device: DeviceId,
        room: RoomId,
        mic: String,
        peak_dbfs: f64,
        gain_before_db: f64,
        gain_after_db: f64,
    },
    /// No meter frame of a protected zone for three meter periods: the level watch is blind
    /// there and holds what it did last (never "ok").
    ZoneMeteringLost {
        device: DeviceId,
        room: RoomId,
        zone: String,
    },
    ZoneMeteringRestored {
        device: DeviceId,
        room: RoomId,
        zone: String,
    },
    /// A sink's consumer fell behind and `dropped` events it selects were not queued for it.
    /// Delivered in-band to that consumer (never through the filters) before what follows.
    EventsDropped {
        sink: String,
        dropped: u64,
    },
    /// An iCalendar feed could not be fetched or is not a calendar: its rooms keep the last
    /// good bookings, which go stale until it recovers.
    BookingFeedFailed {
        feed: String,
        reason: String,
    },
    /// A feed that had failed was read again.
    BookingFeedRecovered {
        feed: String,
        bookings: usize,
    },
    /// An alert of the playbook changed: raised, updated, acknowledged, escalated, silenced,
    /// resolved … (`what`), by a person when one did it.
    AlertChanged {
        alert: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        device: Option<DeviceId>,
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<RoomId>,
        fault: String,
        class: String,
        what: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        by: Option<String>,
        detail: String,
    },
    /// Who is told of an alert, and why (raised, escalated, re-notified …). The alert sinks
    /// (MQTT, webhook, mail) deliver these.
    AlertNotified {
        alert: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        device: Option<DeviceId>,
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<RoomId>,
        notice: String,
        class: String,
        recipients: Vec<String>,
        message: String,
    },
    /// One step of the playbook ran for an alert, with its outcome.
    PlaybookStep {
        alert: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        device: Option<DeviceId>,
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<RoomId>,
        step: String,
        outcome: String,
        ok: bool,
    },
}

impl EventKind {
    /// Stable name used as metric label and logbook kind.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::DaemonStarted { .. } => "daemon_started",
            EventKind::DaemonStopping { .. } => "daemon_stopping",
            EventKind::LinkUp { .. } => "link_up",
            EventKind::LinkDown { .. } => "link_down",
            EventKind::HealthChanged { .. } => "health_changed",
            EventKind::FaultRaised { .. } => "fault_raised",
            EventKind::FaultCleared { .. } => "fault_cleared",
            EventKind::IdentityReported { .. } => "identity_reported",
            EventKind::BadInput { .. } => "bad_input",
            EventKind::CommandExecuted { .. } => "command_executed",
            EventKind::ActorRestarted { .. } => "actor_restarted",
            EventKind::ActorGaveUp { .. } => "actor_gave_up",
            EventKind::FaultAcknowledged { .. } => "fault_acknowledged",
            EventKind::ConfigReloaded { .. } => "config_reloaded",
            EventKind::ConfigReloadRefused { .. } => "config_reload_refused",
            EventKind::MaintenanceRecorded { .. } => "maintenance_recorded",
            EventKind::DeviceSwapped { .. } => "device_swapped",
            EventKind::StoreFailed { .. } => "store_failed",
            EventKind::StoreRecovered { .. } => "store_recovered",
            EventKind::BookingStarted { .. } => "booking_started",
            EventKind::BookingEnded { .. } => "booking_ended",
            EventKind::EventsDropped { .. } => "events_dropped",
            EventKind::SelfTestFinished { .. } => "self_test_finished",
            EventKind::NotReadyAtDeadline { .. } => "not_ready_at_deadline",
            EventKind::BookingFeedFailed { .. } => "booking_feed_failed",
            EventKind::BookingFeedRecovered { .. } => "booking_feed_recovered",
            EventKind::SpeakerProtectionEngaged { .. } => "speaker_protection_engaged",
            EventKind::SpeakerProtectionSaturated { .. } => "speaker_protection_saturated",
            EventKind::SpeakerProtectionReleased { .. } => "speaker_protection_released",
            EventKind::ZoneLevelSetByPerson { .. } => "zone_level_set_by_person",
            EventKind::FeedbackSuspected { .. } => "feedback_suspected",
            EventKind::InputClipping { .. } => "input_clipping",
            EventKind::ZoneMeteringLost { .. } => "zone_metering_lost",
            EventKind::ZoneMeteringRestored { .. } => "zone_metering_restored",
            EventKind::AlertChanged { .. } => "alert_changed",
            EventKind::PlaybookStep { .. } => "playbook_step",
            EventKind::AlertNotified { .. } => "alert_notified",
        }
    }

    pub fn device(&self) -> Option<&DeviceId> {
        match self {
            EventKind::LinkUp { device, .. }
            | EventKind::LinkDown { device, .. }
            | EventKind::HealthChanged { device, .. }
            | EventKind::FaultRaised { device, .. }
            | EventKind::FaultCleared { device, .. }
            | EventKind::IdentityReported { device, .. }
            | EventKind::BadInput { device, .. }
            | EventKind::CommandExecuted { device, .. }
            | EventKind::ActorRestarted { device, .. }
            | EventKind::ActorGaveUp { device, .. }
            | EventKind::FaultAcknowledged { device, .. }
            | EventKind::MaintenanceRecorded { device, .. }
            | EventKind::DeviceSwapped { device, .. }
            | EventKind::SpeakerProtectionEngaged { device, .. }
            | EventKind::SpeakerProtectionSaturated { device, .. }
            | EventKind::SpeakerProtectionReleased { device, .. }
            | EventKind::ZoneLevelSetByPerson { device, .. }
            | EventKind::FeedbackSuspected { device, .. }
            | EventKind::InputClipping { device, .. }
            | EventKind::ZoneMeteringLost { device, .. }
            | EventKind::ZoneMeteringRestored { device, .. } => Some(device),
            EventKind::AlertChanged { device, .. }
            | EventKind::AlertNotified { device, .. }
            | EventKind::PlaybookStep { device, .. } => device.as_ref(),
            EventKind::DaemonStarted { .. }
            | EventKind::DaemonStopping { .. }
            | EventKind::ConfigReloaded { .. }
            | EventKind::ConfigReloadRefused { .. }
            | EventKind::StoreFailed { .. }
            | EventKind::StoreRecovered { .. }
            | EventKind::BookingStarted { .. }
            | EventKind::BookingEnded { .. }
            | EventKind::SelfTestFinished { .. }
            | EventKind::NotReadyAtDeadline { .. }
            | EventKind::EventsDropped { .. }
            | EventKind::BookingFeedFailed { .. }
            | EventKind::BookingFeedRecovered { .. } => None,
        }
    }

    pub fn room(&self) -> Option<&RoomId> {
        match self {
            EventKind::LinkUp { room, .. }
            | EventKind::LinkDown { room, .. }
            | EventKind::HealthChanged { room, .. }
            | EventKind::FaultRaised { room, .. }
            | EventKind::FaultCleared { room, .. }
            | EventKind::IdentityReported { room, .. }
            | EventKind::BadInput { room, .. }
            | EventKind::CommandExecuted { room, .. }
            | EventKind::ActorRestarted { room, .. }
            | EventKind::ActorGaveUp { room, .. }
            | EventKind::FaultAcknowledged { room, .. }
            | EventKind::DeviceSwapped { room, .. }
            | EventKind::BookingStarted { room, .. }
            | EventKind::BookingEnded { room, .. }
            | EventKind::SelfTestFinished { room, .. }
            | EventKind::NotReadyAtDeadline { room, .. }
            | EventKind::SpeakerProtectionEngaged { room, .. }
            | EventKind::SpeakerProtectionSaturated { room, .. }
            | EventKind::SpeakerProtectionReleased { room, .. }
            | EventKind::ZoneLevelSetByPerson { room, .. }
            | EventKind::FeedbackSuspected { room, .. }
            | EventKind::InputClipping { room, .. }
            | EventKind::ZoneMeteringLost { room, .. }
            | EventKind::ZoneMeteringRestored { room, .. } => Some(room),
            EventKind::MaintenanceRecorded { room, .. }
            | EventKind::AlertChanged { room, .. }
            | EventKind::AlertNotified { room, .. }
            | EventKind::PlaybookStep { room, .. } => room.as_ref(),
            EventKind::DaemonStarted { .. }
            | EventKind::DaemonStopping { .. }
            | EventKind::ConfigReloaded { .. }
            | EventKind::ConfigReloadRefused { .. }
            | EventKind::StoreFailed { .. }
            | EventKind::StoreRecovered { .. }
            | EventKind::EventsDropped { .. }
            | EventKind::BookingFeedFailed { .. }
            | EventKind::BookingFeedRecovered { .. } => None,
        }
    }

    /// Whether the maintenance logbook records this kind (meters never reach the bus: they
    /// travel on [`crate::meter::stream`]; maintenance, swaps and store outages are written by the records
    /// writer itself, so they are not routed back to it).
    pub fn is_logbook_worthy(&self) -> bool {
        !matches!(
            self,
            EventKind::MaintenanceRecorded { .. }
                | EventKind::DeviceSwapped { .. }
                | EventKind::StoreFailed { .. }
                | EventKind::StoreRecovered { .. }
                | EventKind::SelfTestFinished { .. }
        )
    }

    /// One line for humans (the [`Display`](fmt::Display) form, which the log line formats
    /// only when its level is enabled).
    pub fn describe(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventKind::DaemonStarted { version, site } => {
                write!(f, "avwarden {version} started for site {site}")
            }
            EventKind::DaemonStopping { reason } => write!(f, "avwarden stopping: {reason}"),
            EventKind::LinkUp { device, peer, .. } => write!(f, "{device}: link up ({peer})"),
            EventKind::LinkDown {
                device,
                reason,
                retry_in_ms,
                ..
            } => write!(
                f,
                "{device}: link down ({reason}); retry in {retry_in_ms} ms"
            ),
            EventKind::HealthChanged {
                device, from, to, ..
            } => write!(f, "{device}: {from} -> {to}"),
            EventKind::FaultRaised { device, fault, .. } => {
                write!(
                    f,
                    "{device}: fault {} raised: {}",
                    fault.code, fault.message
                )
            }
            EventKind::FaultCleared { device, fault, .. } => {
                write!(f, "{device}: fault {} cleared", fault.code)
            }
            EventKind::IdentityReported {
                device, identity, ..
            } => write!(
                f,
                "{device}: identity {} {} serial {}",
                identity.manufacturer.as_deref().unwrap_or("?"),
                identity.model.as_deref().unwrap_or("?"),
                identity.serial.as_deref().unwrap_or("?")
            ),
            EventKind::BadInput {
                device,
                detail,
                count,
                ..
            } => write!(f, "{device}: bad input ({detail}); {count} so far"),
            EventKind::CommandExecuted {
                device,
                command,
                outcome,
                ..
            } => write!(f, "{device}: {command}: {outcome}"),
            EventKind::ActorRestarted {
                device,
                restarts,
                reason,
                ..
            } => write!(f, "{device}: actor restarted ({restarts}): {reason}"),
            EventKind::ActorGaveUp {
                device, restarts, ..
            } => write!(f, "{device}: actor gave up after {restarts} restarts"),
            EventKind::FaultAcknowledged {
                device,
                code,
                component,
                by,
                ..
            } => match component {
                Some(c) => write!(f, "{device}: fault {code} ({c}) acknowledged by {by}"),
                None => write!(f, "{device}: fault {code} acknowledged by {by}"),
            },
            EventKind::ConfigReloaded {
                added,
                removed,
                changed,
                restart_needed,
            } => {
                let list = |v: &[String]| {
                    if v.is_empty() {
                        "none".to_owned()
                    } else {
                        v.join(", ")
                    }
                };
                write!(
                    f,
                    "config reloaded: added {}; removed {}; changed {}",
                    list(added),
                    list(removed),
                    list(changed)
                )?;
                if !restart_needed.is_empty() {
                    write!(f, "; needs a restart: {}", restart_needed.join(", "))?;
                }
                Ok(())
            }
            EventKind::ConfigReloadRefused { errors } => {
                // The first few: the whole list is in the entry's data and the log.
                let first: Vec<&str> = errors.iter().take(3).map(String::as_str).collect();
                write!(
                    f,
                    "config reload refused, {} error(s), the running config stays: {}",
                    errors.len(),
                    first.join("; ")
                )
            }
            EventKind::MaintenanceRecorded {
                device, action, by, ..
            } => write!(f, "{device}: maintenance {action} by {by}"),
            EventKind::DeviceSwapped {
                device,
                old_serial,
                new_serial,
                ..
            } => write!(
                f,
                "{device}: device swapped (serial {old_serial} -> {new_serial})"
            ),
            EventKind::StoreFailed { error, pending } => {
                write!(
                    f,
                    "logbook store cannot write: {error}; {pending} entries waiting in memory"
                )
            }
            EventKind::StoreRecovered { written, dropped } => write!(
                f,
                "logbook store writes again: {written} waiting entries written, {dropped} lost"
            ),
            EventKind::BookingStarted { room, booking } => {
                write!(f, "{room}: booking {booking} started")
            }
            EventKind::BookingEnded { room, booking } => {
                write!(f, "{room}: booking {booking} ended")
            }
            EventKind::SelfTestFinished {
                room,
                booking,
                kind,
                readiness,
                reasons,
            } => write!(
                f,
                "{room}: {} self-test{}: {} ({reasons} reasons)",
                kind.as_str(),
                booking
                    .as_ref()
                    .map(|b| format!(" for {b}"))
                    .unwrap_or_default(),
                readiness.as_str()
            ),
            EventKind::NotReadyAtDeadline {
                room,
                booking,
                readiness,
            } => write!(
                f,
                "{room}: not ready 30 minutes before booking {booking} ({})",
                readiness.map_or("no verdict", |r| r.as_str())
            ),
            EventKind::SpeakerProtectionEngaged {
                device,
                zone,
                reason,
                peak_dbfs,
                level_before_db,
                level_after_db,
                ..
            } => write!(
                f,
                "{device}: zone {zone} protected ({reason} at {peak_dbfs:.1} dBFS): level {level_before_db:.1} -> {level_after_db:.1} dB"
            ),
            EventKind::SpeakerProtectionSaturated {
                device,
                zone,
                peak_dbfs,
                ..
            } => write!(
                f,
                "{device}: zone {zone} at its maximum reduction and still at {peak_dbfs:.1} dBFS"
            ),
            EventKind::SpeakerProtectionReleased {
                device,
                zone,
                restored,
                peak_dbfs,
                duration_ms,
                max_reduction_db,
                over_limit_ms,
                level_after_db,
                ..
            } => write!(
                f,
                "{device}: zone {zone} protection ended after {:.1} s ({}; peak {peak_dbfs:.1} dBFS, cut up to {max_reduction_db:.1} dB, {:.1} s over the limit, level now {level_after_db:.1} dB)",
                *duration_ms as f64 / 1000.0,
                if *restored { "restored" } else { "taken over by a person" },
                *over_limit_ms as f64 / 1000.0
            ),
            EventKind::ZoneLevelSetByPerson {
                device,
                zone,
                level_db,
                ..
            } => write!(
                f,
                "{device}: zone {zone} set to {level_db:.1} dB by a person; protection restores to it"
            ),
            EventKind::FeedbackSuspected {
                device,
                zone,
                mic,
                rise_db,
                gain_before_db,
                gain_after_db,
                ..
            } => write!(
                f,
                "{device}: possible feedback: zone {zone} rose {rise_db:.1} dB with mic {mic} open; its gain {gain_before_db:.1} -> {gain_after_db:.1} dB"
            ),
            EventKind::InputClipping {
                device,
                mic,
                peak_dbfs,
                gain_before_db,
                gain_after_db,
                ..
            } => write!(
                f,
                "{device}: mic {mic} clipping at {peak_dbfs:.1} dBFS; its gain {gain_before_db:.1} -> {gain_after_db:.1} dB"
            ),
            EventKind::ZoneMeteringLost { device, zone, .. } => write!(
                f,
                "{device}: no meter frames from zone {zone}: its protection is blind and holds"
            ),
            EventKind::ZoneMeteringRestored { device, zone, .. } => {
                write!(f, "{device}: meter frames from zone {zone} again")
            }
            EventKind::EventsDropped { sink, dropped } => write!(
                f,
                "{dropped} events not delivered to {sink}: its consumer fell behind"
            ),
            EventKind::BookingFeedFailed { feed, reason } => write!(
                f,
                "booking feed {feed} failed: {reason}; its last good bookings are kept"
            ),
            EventKind::BookingFeedRecovered { feed, bookings } => {
                write!(f, "booking feed {feed} read again: {bookings} bookings")
            }
            EventKind::AlertChanged {
                alert,
                fault,
                class,
                what,
                by,
                detail,
                ..
            } => {
                write!(f, "alert {alert} ({class} {fault}) {what}")?;
                if let Some(by) = by {
                    write!(f, " by {by}")?;
                }
                if !detail.is_empty() {
                    write!(f, ": {detail}")?;
                }
                Ok(())
            }
            EventKind::AlertNotified {
                alert,
                notice,
                class,
                recipients,
                message,
                ..
            } => write!(
                f,
                "alert {alert} ({class}) {notice}: told {}: {message}",
                if recipients.is_empty() {
                    "nobody (no one on the roster)".to_owned()
                } else {
                    recipients.join(", ")
                }
            ),
            EventKind::PlaybookStep {
                alert,
                step,
                outcome,
                ..
            } => write!(f, "alert {alert}: step {step}: {outcome}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub at: DateTime<Utc>,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// Which events a sink takes. Cheap to clone.
#[derive(Clone)]
pub struct EventFilter(Arc<dyn Fn(&EventKind) -> bool + Send + Sync>);

impl EventFilter {
    pub fn all() -> Self {
        Self(Arc::new(|_| true))
    }

    /// What the maintenance logbook records ([`EventKind::is_logbook_worthy`]).
    pub fn logbook() -> Self {
        Self(Arc::new(EventKind::is_logbook_worthy))
    }

    /// Events selected by `f`.
    pub fn matching(f: impl Fn(&EventKind) -> bool + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    pub fn accepts(&self, kind: &EventKind) -> bool {
        (self.0)(kind)
    }
}

impl fmt::Debug for EventFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EventFilter(..)")
    }
}

/// The bus's end of one sink.
struct SinkShared {
    name: String,
    filter: EventFilter,
    tx: mpsc::Sender<Arc<Event>>,
    /// Selected events not queued since the consumer last heard of a drop.
    dropped: AtomicU64,
    /// When the last of them happened (µs since the epoch): the notice's instant.
    last_drop_us: AtomicI64,
}

/// A consumer's end: every event its filter selects, in order, as long as it keeps up; when
/// it falls behind by more than its capacity, the events that did not fit are counted and the
/// consumer receives one [`EventKind::EventsDropped`] with the count. The producer never
/// waits for a consumer, and no consumer's lag costs another anything.
pub struct EventSink {
    shared: Arc<SinkShared>,
    rx: mpsc::Receiver<Arc<Event>>,
}

impl EventSink {
    /// The next event, `None` once the bus is gone and everything queued was received. A
    /// drop notice comes at the first receive after the drop, so possibly before events that
    /// were queued earlier: it says "you missed some from about now", not where exactly.
    pub async fn recv(&mut self) -> Option<Arc<Event>> {
        if let Some(notice) = self.drop_notice() {
            return Some(notice);
        }
        self.rx.recv().await
    }

    /// An event if one is queued now.
    pub fn try_recv(&mut self) -> Result<Arc<Event>, mpsc::error::TryRecvError> {
        if let Some(notice) = self.drop_notice() {
            return Ok(notice);
        }
        self.rx.try_recv()
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    fn drop_notice(&mut self) -> Option<Arc<Event>> {
        let dropped = self.shared.dropped.swap(0, Ordering::AcqRel);
        (dropped > 0).then(|| {
            let us = self.shared.last_drop_us.load(Ordering::Acquire);
            Arc::new(Event {
                at: DateTime::from_timestamp_micros(us).unwrap_or_default(),
                kind: EventKind::EventsDropped {
                    sink: self.shared.name.clone(),
                    dropped,
                },
            })
        })
    }
}

/// Fan-out of events to every sink whose filter selects them. Cheap to clone.
#[derive(Clone)]
pub struct EventBus {
    sinks: Arc<RwLock<Vec<Arc<SinkShared>>>>,
    metrics: Metrics,
    /// The meter stream travels beside the events, never through their queues.
    meters: crate::meter::stream::MeterHub,
}

/// What [`EventBus::subscribe`] buffers for a consumer that falls behind.
pub const SUBSCRIBER_CAPACITY: usize = 4096;

impl EventBus {
    pub fn new(metrics: Metrics) -> Self {
        Self {
            sinks: Arc::default(),
            metrics,
            meters: crate::meter::stream::MeterHub::default(),
        }
    }

    /// A sink named `name` (in drop notices and `avwarden_events_dropped_total`) for the
    /// events `filter` selects, holding up to `capacity` of them for a consumer that lags.
    pub fn sink(&self, name: &str, filter: EventFilter, capacity: usize) -> EventSink {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let shared = Arc::new(SinkShared {
            name: name.to_owned(),
            filter,
            tx,
            dropped: AtomicU64::new(0),
            last_drop_us: AtomicI64::new(0),
        });
        self.sinks
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(shared.clone());
        EventSink { shared, rx }
    }

    /// Every event, [`SUBSCRIBER_CAPACITY`] buffered (tests, diagnostics).
    pub fn subscribe(&self) -> EventSink {
        self.sink("subscriber", EventFilter::all(), SUBSCRIBER_CAPACITY)
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The meter stream (subscribe with [`crate::meter::stream::MeterHub::subscribe`]).
    pub fn meters(&self) -> &crate::meter::stream::MeterHub {
        &self.meters
    }

    pub fn emit(&self, at: DateTime<Utc>, kind: EventKind) {
        log_event(&kind);
        // Meters arrive thousands of times a second: the static form counts without allocating.
        self.metrics
            .inc_labeled_static("avwarden_events_total", "event", kind.name());
        let event = Arc::new(Event { at, kind });
        let mut closed = false;
        {
            let sinks = self.sinks.read().unwrap_or_else(|p| p.into_inner());
            for sink in sinks.iter() {
                if !sink.filter.accepts(&event.kind) {
                    continue;
                }
                match sink.tx.try_send(event.clone()) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        sink.last_drop_us
                            .store(event.at.timestamp_micros(), Ordering::Release);
                        if sink.dropped.fetch_add(1, Ordering::AcqRel) == 0 {
                            tracing::error!(
                                sink = %sink.name,
                                event = event.kind.name(),
                                "event sink full: its consumer fell behind; counting what it misses"
                            );
                        }
                        self.metrics.inc_labeled(
                            "avwarden_events_dropped_total",
                            "sink",
                            &sink.name,
                        );
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => closed = true,
                }
            }
        }
        if closed {
            self.sinks
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|s| !s.tx.is_closed());
        }
    }
}

/// The tracing line of an event. The message is the event's `Display`, formatted by the
/// subscriber only when the level is enabled: a TRACE meter costs nothing at INFO.
fn log_event(kind: &EventKind) {
    match kind {
        EventKind::CommandExecuted { ok: true, .. } => {
            tracing::debug!(event = kind.name(), "{kind}")
        }
        EventKind::HealthChanged {
            to: Health::Unreachable | Health::Faulted,
            ..
        }
        | EventKind::FaultRaised {
            fault:
                Fault {
                    severity: Severity::Fault,
                    ..
                },
            ..
        }
        | EventKind::ActorGaveUp { .. }
        | EventKind::NotReadyAtDeadline { .. }
        | EventKind::SelfTestFinished {
            readiness: crate::model::Readiness::NotReady,
            ..
        }
        | EventKind::StoreFailed { .. } => tracing::error!(event = kind.name(), "{kind}"),
        EventKind::StoreRecovered { dropped, .. } if *dropped > 0 => {
            tracing::error!(event = kind.name(), "{kind}")
        }
        EventKind::LinkDown { .. }
        | EventKind::DeviceSwapped { .. }
        | EventKind::StoreRecovered { .. }
        | EventKind::FaultRaised { .. }
        | EventKind::BadInput { .. }
        | EventKind::CommandExecuted { ok: false, .. }
        | EventKind::ActorRestarted { .. }
        | EventKind::SelfTestFinished {
            readiness: crate::model::Readiness::Degraded,
            ..
        }
        | EventKind::BookingFeedFailed { .. }
        | EventKind::HealthChanged {
            to: Health::Degraded,
            ..
        }
        | EventKind::SpeakerProtectionEngaged { .. }
        | EventKind::SpeakerProtectionSaturated { .. }
        | EventKind::FeedbackSuspected { .. }
        | EventKind::InputClipping { .. }
        | EventKind::ZoneMeteringLost { .. }
        | EventKind::ConfigReloadRefused { .. } => tracing::warn!(event = kind.name(), "{kind}"),
        _ => tracing::info!(event = kind.name(), "{kind}"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use chrono::TimeZone;

    use super::*;
    use crate::model::{DeviceId, RoomId};

    /// What a fmt subscriber writes, kept for the test to read.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
        }
    }

    fn command_done(n: u32) -> EventKind {
        EventKind::CommandExecuted {
            device: DeviceId::new("mic1"),
            room: RoomId::new("room1"),
            command: format!("set_gain {n}"),
            outcome: "ok".to_owned(),
            ok: true,
        }
    }

    /// Emit `kinds` under a fmt subscriber that lets `level` and above through.
    fn emit_at(level: &str, kinds: Vec<EventKind>) -> (String, Metrics) {
        let out = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(level))
            .with_writer(out.clone())
            .with_ansi(false)
            .without_time()
            .finish();
        let metrics = Metrics::new();
        let bus = EventBus::new(metrics.clone());
        let at = Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0).unwrap();
        tracing::subscriber::with_default(subscriber, || {
            for k in kinds {
                bus.emit(at, k);
            }
        });
        (out.text(), metrics)
    }

    /// The log line is formatted lazily now; it must read exactly as `describe()` did, at the
    /// level the event's kind calls for, with the same metric.
    #[test]
    fn log_lines_and_metrics_follow_the_event() {
        let link_down = EventKind::LinkDown {
            device: DeviceId::new("proj1"),
            room: RoomId::new("room1"),
            reason: "connection refused".to_owned(),
            retry_in_ms: 2000,
        };
        let (text, metrics) = emit_at("trace", vec![command_done(1), link_down.clone()]);
        assert!(
            text.contains(&format!(
                "DEBUG avwarden::events: {} event=\"command_executed\"",
                command_done(1).describe()
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                " WARN avwarden::events: {} event=\"link_down\"",
                link_down.describe()
            )),
            "{text}"
        );
        assert_eq!(
            link_down.describe(),
            "proj1: link down (connection refused); retry in 2000 ms"
        );
        for (event, n) in [("command_executed", 1.0), ("link_down", 1.0)] {
            assert_eq!(
                metrics.get("avwarden_events_total", Some(("event", event))),
                n
            );
        }
    }

    /// At INFO a done command writes nothing but is still counted.
    #[test]
    fn filtered_events_are_counted_not_logged() {
        let (text, metrics) = emit_at("info", (0..100).map(command_done).collect());
        assert_eq!(text, "");
        assert_eq!(
            metrics.get("avwarden_events_total", Some(("event", "command_executed"))),
            100.0
        );
    }
    fn link_up(n: u32) -> EventKind {
        EventKind::LinkUp {
            device: DeviceId::new(format!("d{n}")),
            room: RoomId::new("r"),
            peer: "tcp".into(),
        }
    }

    fn at(s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, s).unwrap()
    }

    #[tokio::test]
    async fn a_sink_that_lags_is_told_how_many_it_missed_and_costs_no_one_else() {
        let bus = EventBus::new(Metrics::new());
        let mut slow = bus.sink("slow", EventFilter::all(), 4);
        let mut other = bus.sink("other", EventFilter::all(), 64);
        for n in 0..10 {
            bus.emit(at(n), link_up(n));
        }
        let first = slow.recv().await.unwrap();
        assert_eq!(
            first.kind,
            EventKind::EventsDropped {
                sink: "slow".into(),
                dropped: 6
            }
        );
        assert_eq!(
            first.at,
            at(9),
            "the notice carries the last drop's instant"
        );
        let kept: Vec<_> = std::iter::from_fn(|| slow.try_recv().ok())
            .map(|e| e.kind.device().unwrap().to_string())
            .collect();
        assert_eq!(kept, ["d0", "d1", "d2", "d3"], "what fit, in order");
        // Told once: what comes next is the next event.
        bus.emit(at(10), link_up(10));
        assert_eq!(slow.recv().await.unwrap().kind, link_up(10));
        assert_eq!(
            bus.metrics()
                .get("avwarden_events_dropped_total", Some(("sink", "slow"))),
            6.0
        );
        let all: Vec<_> = std::iter::from_fn(|| other.try_recv().ok()).collect();
        assert_eq!(all.len(), 11, "the other sink lost nothing");
    }

    #[tokio::test]
    async fn a_filtered_sink_gets_each_selected_event_once_through_a_flood() {
        let bus = EventBus::new(Metrics::new());
        let mut faults = bus.sink(
            "faults",
            EventFilter::matching(|k| matches!(k, EventKind::FaultRaised { .. })),
            8,
        );
        let mut logbook = bus.sink("logbook", EventFilter::logbook(), 8);
        let fault = EventKind::FaultRaised {
            device: DeviceId::new("mic"),
            room: RoomId::new("r"),
            fault: Fault::new("battery_low", Severity::Warning, "ch 1 battery low"),
        };
        for n in 0..5_000u32 {
            if n == 2_500 {
                bus.emit(at(0), fault.clone());
            }
            bus.emit(
                at(0),
                EventKind::BadInput {
                    device: DeviceId::new("mic"),
                    room: RoomId::new("r"),
                    detail: "garbage".into(),
                    count: u64::from(n),
                },
            );
        }
        assert_eq!(faults.try_recv().unwrap().kind, fault);
        assert!(faults.try_recv().is_err(), "exactly once");
        // The logbook sink took what fitted and was told of the rest.
        let mut seen_fault = 0;
        let mut told = 0;
        while let Ok(e) = logbook.try_recv() {
            match &e.kind {
                EventKind::FaultRaised { .. } => seen_fault += 1,
                EventKind::EventsDropped { dropped, .. } => told += dropped,
                _ => {}
            }
        }
        assert!(seen_fault <= 1);
        assert_eq!(told, 5_001 - 8, "every event that did not fit is counted");
    }

    #[tokio::test]
    async fn a_sink_whose_consumer_is_gone_is_forgotten() {
        let bus = EventBus::new(Metrics::new());
        let sink = bus.sink("gone", EventFilter::all(), 1);
        drop(sink);
        bus.emit(at(0), link_up(0));
        assert!(bus.sinks.read().unwrap().is_empty());
    }
}
