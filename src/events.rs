//! Typed internal events: every notable occurrence is one [`EventKind`], and its single
//! [`EventBus::emit`] writes the tracing line, bumps the metric and hands the event to every
//! subscriber (level watch, playbook, MQTT, SSE) and to the logbook sink, so that logs, metrics
//! and logbook never disagree.
//!
//! Log levels follow what the operator must do: ERROR a room is unusable or data is lost, WARN
//! degraded, INFO lifecycle, DEBUG per poll.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::{broadcast, mpsc};

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
    /// A metered level, normalised to dBFS. Not logged to the logbook (too frequent).
    Meter {
        device: DeviceId,
        room: RoomId,
        channel: String,
        dbfs: f64,
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
    /// The site config was reloaded.
    ConfigReloaded {
        summary: String,
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
            EventKind::Meter { .. } => "meter",
            EventKind::BadInput { .. } => "bad_input",
            EventKind::CommandExecuted { .. } => "command_executed",
            EventKind::ActorRestarted { .. } => "actor_restarted",
            EventKind::ActorGaveUp { .. } => "actor_gave_up",
            EventKind::FaultAcknowledged { .. } => "fault_acknowledged",
            EventKind::ConfigReloaded { .. } => "config_reloaded",
            EventKind::MaintenanceRecorded { .. } => "maintenance_recorded",
            EventKind::DeviceSwapped { .. } => "device_swapped",
            EventKind::StoreFailed { .. } => "store_failed",
            EventKind::StoreRecovered { .. } => "store_recovered",
            EventKind::BookingStarted { .. } => "booking_started",
            EventKind::BookingEnded { .. } => "booking_ended",
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
            | EventKind::Meter { device, .. }
            | EventKind::BadInput { device, .. }
            | EventKind::CommandExecuted { device, .. }
            | EventKind::ActorRestarted { device, .. }
            | EventKind::ActorGaveUp { device, .. }
            | EventKind::FaultAcknowledged { device, .. }
            | EventKind::MaintenanceRecorded { device, .. }
            | EventKind::DeviceSwapped { device, .. } => Some(device),
            EventKind::DaemonStarted { .. }
            | EventKind::DaemonStopping { .. }
            | EventKind::ConfigReloaded { .. }
            | EventKind::StoreFailed { .. }
            | EventKind::StoreRecovered { .. }
            | EventKind::BookingStarted { .. }
            | EventKind::BookingEnded { .. } => None,
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
            | EventKind::Meter { room, .. }
            | EventKind::BadInput { room, .. }
            | EventKind::CommandExecuted { room, .. }
            | EventKind::ActorRestarted { room, .. }
            | EventKind::ActorGaveUp { room, .. }
            | EventKind::FaultAcknowledged { room, .. }
            | EventKind::DeviceSwapped { room, .. }
            | EventKind::BookingStarted { room, .. }
            | EventKind::BookingEnded { room, .. } => Some(room),
            EventKind::MaintenanceRecorded { room, .. } => room.as_ref(),
            EventKind::DaemonStarted { .. }
            | EventKind::DaemonStopping { .. }
            | EventKind::ConfigReloaded { .. }
            | EventKind::StoreFailed { .. }
            | EventKind::StoreRecovered { .. } => None,
        }
    }

    /// Whether the maintenance logbook records this kind (meters and per-command chatter are
    /// counted in metrics only; maintenance, swaps and store outages are written by the records
    /// writer itself, so they are not routed back to it).
    pub fn is_logbook_worthy(&self) -> bool {
        !matches!(
            self,
            EventKind::Meter { .. }
                | EventKind::MaintenanceRecorded { .. }
                | EventKind::DeviceSwapped { .. }
                | EventKind::StoreFailed { .. }
                | EventKind::StoreRecovered { .. }
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
            EventKind::Meter {
                device,
                channel,
                dbfs,
                ..
            } => write!(f, "{device}: meter {channel} {dbfs:.1} dBFS"),
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
            EventKind::ConfigReloaded { summary } => write!(f, "config reloaded: {summary}"),
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
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub at: DateTime<Utc>,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// Fan-out of events. Cheap to clone.
#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Arc<Event>>,
    logbook: Option<mpsc::Sender<Arc<Event>>>,
    metrics: Metrics,
}

impl EventBus {
    pub fn new(metrics: Metrics) -> Self {
        let (tx, _) = broadcast::channel(4096);
        Self {
            tx,
            logbook: None,
            metrics,
        }
    }

    /// Route logbook-worthy events to the logbook writer as well.
    pub fn with_logbook(mut self, sink: mpsc::Sender<Arc<Event>>) -> Self {
        self.logbook = Some(sink);
        self
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn emit(&self, at: DateTime<Utc>, kind: EventKind) {
        log_event(&kind);
        // Meters arrive thousands of times a second: the static form counts without allocating.
        self.metrics
            .inc_labeled_static("avwarden_events_total", "event", kind.name());
        let event = Arc::new(Event { at, kind });
        if event.kind.is_logbook_worthy() {
            if let Some(sink) = &self.logbook {
                if let Err(e) = sink.try_send(event.clone()) {
                    self.metrics.inc("avwarden_logbook_dropped_total");
                    tracing::error!(error = %e, event = event.kind.name(), "logbook queue full, entry lost");
                }
            }
        }
        // No subscribers is fine (e.g. check-config, unit tests).
        let _ = self.tx.send(event);
    }
}

/// The tracing line of an event. The message is the event's `Display`, formatted by the
/// subscriber only when the level is enabled: a TRACE meter costs nothing at INFO.
fn log_event(kind: &EventKind) {
    match kind {
        EventKind::Meter { .. } => tracing::trace!(event = kind.name(), "{kind}"),
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
        | EventKind::HealthChanged {
            to: Health::Degraded,
            ..
        } => tracing::warn!(event = kind.name(), "{kind}"),
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

    fn meter(dbfs: f64) -> EventKind {
        EventKind::Meter {
            device: DeviceId::new("mic1"),
            room: RoomId::new("room1"),
            channel: "ch.2.audio".to_owned(),
            dbfs,
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
        let (text, metrics) = emit_at("trace", vec![meter(-23.456), link_down.clone()]);
        assert!(
            text.contains(
                "TRACE avwarden::events: mic1: meter ch.2.audio -23.5 dBFS event=\"meter\""
            ),
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
        assert_eq!(
            meter(-23.456).describe(),
            "mic1: meter ch.2.audio -23.5 dBFS"
        );
        for (event, n) in [("meter", 1.0), ("link_down", 1.0)] {
            assert_eq!(
                metrics.get("avwarden_events_total", Some(("event", event))),
                n
            );
        }
    }

    /// At INFO a meter writes nothing but is still counted.
    #[test]
    fn filtered_meters_are_counted_not_logged() {
        let (text, metrics) = emit_at("info", (0..100).map(|i| meter(f64::from(i))).collect());
        assert_eq!(text, "");
        assert_eq!(
            metrics.get("avwarden_events_total", Some(("event", "meter"))),
            100.0
        );
    }
}
