//! Typed internal events: every notable occurrence is one [`EventKind`], and its single
//! [`EventBus::emit`] writes the tracing line, bumps the metric and hands the event to every
//! subscriber (level watch, playbook, MQTT, SSE) and to the logbook sink, so that logs, metrics
//! and logbook never disagree.
//!
//! Log levels follow what the operator must do: ERROR a room is unusable or data is lost, WARN
//! degraded, INFO lifecycle, DEBUG per poll.

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
            | EventKind::ActorGaveUp { device, .. } => Some(device),
            EventKind::DaemonStarted { .. } | EventKind::DaemonStopping { .. } => None,
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
            | EventKind::ActorGaveUp { room, .. } => Some(room),
            EventKind::DaemonStarted { .. } | EventKind::DaemonStopping { .. } => None,
        }
    }

    /// Whether the maintenance logbook records this kind (meters and per-command chatter are
    /// counted in metrics only).
    pub fn is_logbook_worthy(&self) -> bool {
        !matches!(self, EventKind::Meter { .. })
    }

    /// One line for humans.
    pub fn describe(&self) -> String {
        match self {
            EventKind::DaemonStarted { version, site } => {
                format!("avwarden {version} started for site {site}")
            }
            EventKind::DaemonStopping { reason } => format!("avwarden stopping: {reason}"),
            EventKind::LinkUp { device, peer, .. } => format!("{device}: link up ({peer})"),
            EventKind::LinkDown {
                device,
                reason,
                retry_in_ms,
                ..
            } => format!("{device}: link down ({reason}); retry in {retry_in_ms} ms"),
            EventKind::HealthChanged {
                device, from, to, ..
            } => format!("{device}: {from} -> {to}"),
            EventKind::FaultRaised { device, fault, .. } => {
                format!("{device}: fault {} raised: {}", fault.code, fault.message)
            }
            EventKind::FaultCleared { device, fault, .. } => {
                format!("{device}: fault {} cleared", fault.code)
            }
            EventKind::IdentityReported {
                device, identity, ..
            } => format!(
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
            } => format!("{device}: meter {channel} {dbfs:.1} dBFS"),
            EventKind::BadInput {
                device,
                detail,
                count,
                ..
            } => format!("{device}: bad input ({detail}); {count} so far"),
            EventKind::CommandExecuted {
                device,
                command,
                outcome,
                ..
            } => format!("{device}: {command}: {outcome}"),
            EventKind::ActorRestarted {
                device,
                restarts,
                reason,
                ..
            } => format!("{device}: actor restarted ({restarts}): {reason}"),
            EventKind::ActorGaveUp {
                device, restarts, ..
            } => format!("{device}: actor gave up after {restarts} restarts"),
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
        self.metrics
            .inc_labeled("avwarden_events_total", "event", kind.name());
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

fn log_event(kind: &EventKind) {
    let line = kind.describe();
    match kind {
        EventKind::Meter { .. } => tracing::trace!(event = kind.name(), "{line}"),
        EventKind::CommandExecuted { ok: true, .. } => {
            tracing::debug!(event = kind.name(), "{line}")
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
        | EventKind::ActorGaveUp { .. } => tracing::error!(event = kind.name(), "{line}"),
        EventKind::LinkDown { .. }
        | EventKind::FaultRaised { .. }
        | EventKind::BadInput { .. }
        | EventKind::CommandExecuted { ok: false, .. }
        | EventKind::ActorRestarted { .. }
        | EventKind::HealthChanged {
            to: Health::Degraded,
            ..
        } => tracing::warn!(event = kind.name(), "{line}"),
        _ => tracing::info!(event = kind.name(), "{line}"),
    }
}
