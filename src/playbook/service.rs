//! The playbook task: consumes a reliable sink of the event bus, turns events into
//! observations, grades them in their room's context, keeps the alert book, carries out its
//! actions (notices as events for the alert sinks, steps through the device handles with
//! timeouts and `wait_for` checks) and writes every change and step to the logbook through
//! typed events. [`PlaybookHandle`] is what the API holds.
//!
//! Thin on purpose: every decision is in the pure modules. Must not send anything except
//! through `runtime` handles and the event bus, nor hold the book's lock across an `.await`.

use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::alerts::{
    Action, Alert, AlertBook, AlertError, AlertId, AlertState, Grade, MaintenanceWindow, Notice,
    Target,
};
use super::context::{room_context, Context, Importance};
use super::roster::Roster;
use super::rules::{self, evaluate, Rules, Step};
use super::settings::ChannelRef;
pub use super::settings::PlaybookSettings;
use super::taxonomy::{classify, FaultKind, Lookup, Observation, Subject};
use crate::clock::Clock;
use crate::events::{EventBus, EventFilter, EventKind};
use crate::model::{Capability, DeviceCommand, DeviceId, DeviceState, Health, RoomId};
use crate::records::alerts::{AlertRecord, WindowRecord};
use crate::records::writer::LogbookHandle;
use crate::runtime::{DeviceHandle, Fleet};
use crate::schedule::book::Book;

struct Shared {
    book: Mutex<AlertBook>,
    rules: Arc<Rules>,
    roster: Roster,
    tz: Tz,
    events: EventBus,
    clock: Clock,
    fleet: Arc<Fleet>,
    schedule: Book,
    settings: PlaybookSettings,
    tasks: TaskTracker,
    /// Where alerts and windows are kept across restarts (absent in tests without a store).
    records: Option<Records>,
    /// Wakes the task when a person changed the book (its next wake-up may be earlier).
    changed: Notify,
}

/// The records store the playbook persists to and restores from.
#[derive(Clone)]
pub struct Records {
    pub logbook: LogbookHandle,
    pub path: std::path::PathBuf,
}

/// How far back resolved alerts are restored: long enough for flapping to see them.
const RESTORE_RESOLVED: Duration = Duration::hours(1);

fn record_of(a: &Alert) -> Option<AlertRecord> {
    Some(AlertRecord {
        id: a.id,
        state: a.state.as_str().to_owned(),
        room: a.room.as_ref().map(|r| r.to_string()),
        subject: a.key.subject.to_string(),
        fault: a.key.kind.as_str().to_owned(),
        class: a.grade.class.as_str().to_owned(),
        raised_at: a.raised_at,
        acknowledged_at: a.acknowledged_at,
        acknowledged_by: a.acknowledged_by.clone(),
        resolved_at: a.resolved_at,
        body: serde_json::to_string(a).ok()?,
        updated_at: a.updated_at,
    })
}

fn window_record(w: &MaintenanceWindow, removed: bool) -> Option<WindowRecord> {
    Some(WindowRecord {
        id: w.id,
        until: w.until,
        removed,
        body: serde_json::to_string(w).ok()?,
    })
}

/// The playbook as the API sees it.
#[derive(Clone)]
pub struct PlaybookHandle {
    shared: Arc<Shared>,
}

/// Which alerts `GET /api/v1/alerts` lists.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct AlertFilter {
    pub state: Option<String>,
    /// `open`: raised or acknowledged.
    pub open: Option<bool>,
    pub room: Option<String>,
    pub device: Option<String>,
    pub class: Option<String>,
    pub fault: Option<String>,
}

impl AlertFilter {
    fn accepts(&self, a: &Alert) -> bool {
        let device = match &a.key.subject {
            Subject::Device(d) => Some(d.as_str()),
            _ => None,
        };
        self.state
            .as_deref()
            .is_none_or(|s| AlertState::parse(s) == Some(a.state))
            && self.open.is_none_or(|o| a.is_open() == o)
            && self
                .room
                .as_deref()
                .is_none_or(|r| a.room.as_ref().is_some_and(|x| x.as_str() == r))
            && self.device.as_deref().is_none_or(|d| device == Some(d))
            && self
                .class
                .as_deref()
                .is_none_or(|c| a.grade.class.as_str() == c)
            && self
                .fault
                .as_deref()
                .is_none_or(|f| a.key.kind.as_str() == f)
    }
}

impl PlaybookHandle {
    fn book(&self) -> MutexGuard<'_, AlertBook> {
        self.shared.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn alerts(&self, filter: &AlertFilter) -> Vec<Alert> {
        let mut v: Vec<Alert> = self
            .book()
            .alerts()
            .filter(|a| filter.accepts(a))
            .cloned()
            .collect();
        v.reverse();
        v
    }

    pub fn alert(&self, id: AlertId) -> Option<Alert> {
        self.book().get(id).cloned()
    }

    pub fn acknowledge(&self, id: AlertId, by: &str) -> Result<Alert, AlertError> {
        let now = self.shared.clock.now();
        let actions = self.book().acknowledge(id, by, now)?;
        let first = !actions.is_empty();
        self.carry_out(actions, Some(by), now);
        let a = self.alert(id).ok_or(AlertError::NotFound(id))?;
        // The logbook's fault entries (and the monthly report's time to acknowledge) know the
        // device's fault, not the alert: acknowledge that too.
        if let (true, Subject::Device(device), Some(room), Some(code)) =
            (first, &a.key.subject, &a.room, &a.code)
        {
            self.shared.events.emit(
                now,
                EventKind::FaultAcknowledged {
                    device: device.clone(),
                    room: room.clone(),
                    code: code.clone(),
                    component: a.key.component.clone(),
                    by: by.to_owned(),
                },
            );
        }
        Ok(a)
    }

    pub fn resolve(&self, id: AlertId, by: &str, note: &str) -> Result<Alert, AlertError> {
        let now = self.shared.clock.now();
        let actions = self.book().resolve(id, by, note, now)?;
        self.carry_out(actions, Some(by), now);
        self.alert(id).ok_or(AlertError::NotFound(id))
    }

    pub fn windows(&self) -> Vec<MaintenanceWindow> {
        self.book().windows().cloned().collect()
    }

    pub fn add_window(
        &self,
        target: Target,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
        reason: &str,
        by: &str,
    ) -> Result<MaintenanceWindow, AlertError> {
        let now = self.shared.clock.now();
        let (w, actions) = self
            .book()
            .add_window(target, from, until, reason, by, now)?;
        self.persist_window(&w, false);
        self.carry_out(actions, Some(by), now);
        Ok(w)
    }

    pub fn remove_window(&self, id: u64, by: &str) -> Result<(), AlertError> {
        let now = self.shared.clock.now();
        let removed = self.book().windows().find(|w| w.id == id).cloned();
        let actions = self.book().remove_window(id, now)?;
        if let Some(w) = removed {
            self.persist_window(&w, true);
        }
        self.carry_out(actions, Some(by), now);
        Ok(())
    }

    fn persist_window(&self, w: &MaintenanceWindow, removed: bool) {
        let Some(r) = &self.shared.records else {
            return;
        };
        if let Some(rec) = window_record(w, removed) {
            if let Err(e) = r.logbook.window(rec) {
                tracing::warn!(window = w.id, error = %e, "maintenance window not stored");
            }
        }
    }

    fn persist(&self, a: &Alert) {
        let Some(r) = &self.shared.records else {
            return;
        };
        if let Some(rec) = record_of(a) {
            // The store reports its own outages; the alert lives on in memory meanwhile.
            if let Err(e) = r.logbook.alert(rec) {
                tracing::warn!(alert = a.id, error = %e, "alert not stored");
            }
        }
    }

    /// Load what the records file holds from before a restart.
    async fn restore(&self, cancel: &CancellationToken) {
        let Some(r) = self.shared.records.clone() else {
            return;
        };
        // The writer has opened and migrated the file once it acknowledges a flush.
        let ready = tokio::select! {
            _ = cancel.cancelled() => return,
            f = tokio::time::timeout(std::time::Duration::from_secs(10), r.logbook.flush()) => matches!(f, Ok(Ok(()))),
        };
        if !ready {
            tracing::warn!("the records store is not available; alerts start empty");
            return;
        }
        let now = self.shared.clock.now();
        let loaded = crate::records::store::open_reader(&r.path).and_then(|conn| {
            Ok((
                crate::records::alerts::load_alerts(&conn, now - RESTORE_RESOLVED)?,
                crate::records::alerts::load_windows(&conn, now)?,
            ))
        });
        match loaded {
            Ok((alerts, windows)) => {
                let alerts: Vec<Alert> = alerts
                    .iter()
                    .filter_map(|a| serde_json::from_str(&a.body).ok())
                    .collect();
                let windows: Vec<MaintenanceWindow> = windows
                    .iter()
                    .filter_map(|w| serde_json::from_str(&w.body).ok())
                    .collect();
                tracing::info!(
                    alerts = alerts.len(),
                    windows = windows.len(),
                    "alerts restored from the records"
                );
                self.book().restore(alerts, windows);
            }
            Err(e) => {
                tracing::warn!(error = %e, "alerts not restored from the records; starting empty")
            }
        }
    }

    /// Who is on duty now, by the roster.
    pub fn on_duty(&self) -> Vec<String> {
        self.shared.roster.on_duty(self.shared.clock.now())
    }

    pub fn roster(&self) -> &Roster {
        &self.shared.roster
    }

    /// The room's context now.
    pub fn context(&self, room: &RoomId, now: DateTime<Utc>) -> (Context, Importance) {
        let (cur, next) = self.shared.schedule.current_and_next(room, now);
        room_context(
            cur.as_ref(),
            next.as_ref(),
            now,
            self.shared.settings.horizon,
        )
    }

    fn capabilities(&self, subject: &Subject) -> Vec<Capability> {
        match subject {
            Subject::Device(d) => self
                .shared
                .fleet
                .get(d.as_str())
                .map(|h| h.capabilities().to_vec())
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    fn decide(
        &self,
        kind: FaultKind,
        subject: &Subject,
        room: Option<&RoomId>,
        now: DateTime<Utc>,
    ) -> (rules::Decision, Context) {
        let (context, importance) = room
            .map(|r| self.context(r, now))
            .unwrap_or((Context::Idle, Importance::Normal));
        let caps = self.capabilities(subject);
        let d = evaluate(kind, &caps, context, importance, &self.shared.rules);
        (d, context)
    }

    fn grade(&self, o: &Observation, now: DateTime<Utc>) -> Grade {
        let (d, context) = self.decide(o.kind, &o.subject, o.room.as_ref(), now);
        Grade {
            class: d.class,
            context,
            respond_by: d.deadlines.respond_by(now, self.shared.tz),
            resolve_by: d.deadlines.resolve_by(now),
        }
    }

    /// Feed one bus event.
    fn on_event(&self, kind: &EventKind, now: DateTime<Utc>) {
        let fleet = self.shared.fleet.clone();
        let is_hvac = move |d: &DeviceId| {
            fleet
                .get(d.as_str())
                .is_some_and(|h| h.can(Capability::Setpoint) || h.can(Capability::HvacMode))
        };
        let lookup = Lookup {
            is_hvac: &is_hvac,
            busy_limit: self.shared.settings.busy_limit,
        };
        for o in classify(kind, &lookup) {
            let actions = self.book().observe(&o, || self.grade(&o, now), now);
            self.carry_out(actions, None, now);
        }
    }

    /// Re-grade every open alert against its room's context now.
    fn regrade(&self, now: DateTime<Utc>) {
        let open: Vec<Alert> = self.book().open_alerts().cloned().collect();
        for a in open {
            let (d, context) = self.decide(a.key.kind, &a.key.subject, a.room.as_ref(), now);
            let grade = Grade {
                class: d.class,
                context,
                respond_by: d.deadlines.respond_by(a.raised_at, self.shared.tz),
                resolve_by: d.deadlines.resolve_by(a.raised_at),
            };
            let actions = self.book().regrade(a.id, grade, now);
            self.carry_out(actions, None, now);
        }
    }

    fn carry_out(&self, actions: Vec<Action>, by: Option<&str>, now: DateTime<Utc>) {
        // The task's next wake-up may be earlier now (a person acted, a window was added).
        self.shared.changed.notify_one();
        for action in actions {
            let id = match &action {
                Action::Notify { id, .. }
                | Action::RunSteps { id }
                | Action::Changed { id, .. } => *id,
            };
            let Some(a) = self.alert(id) else { continue };
            let device = match &a.key.subject {
                Subject::Device(d) => Some(d.clone()),
                _ => None,
            };
            match action {
                Action::Changed { what, .. } => {
                    self.persist(&a);
                    self.shared.events.emit(
                        now,
                        EventKind::AlertChanged {
                            alert: id,
                            device,
                            room: a.room.clone(),
                            fault: a.key.kind.as_str().to_owned(),
                            class: a.grade.class.as_str().to_owned(),
                            what: what.to_owned(),
                            by: by.map(str::to_owned),
                            detail: a.message.clone(),
                        },
                    );
                }
                Action::Notify { notice, .. } => {
                    let (d, _) = self.decide(a.key.kind, &a.key.subject, a.room.as_ref(), now);
                    let level = match notice {
                        Notice::Escalated { level } => level,
                        _ => a.escalation,
                    };
                    let recipients = self.shared.roster.recipients(&d.recipients, level, now);
                    self.shared.events.emit(
                        now,
                        EventKind::AlertNotified {
                            alert: id,
                            device,
                            room: a.room.clone(),
                            notice: notice_name(notice),
                            class: a.grade.class.as_str().to_owned(),
                            recipients,
                            message: a.message.clone(),
                        },
                    );
                }
                Action::RunSteps { .. } => {
                    let (d, _) = self.decide(a.key.kind, &a.key.subject, a.room.as_ref(), now);
                    if d.steps.is_empty() {
                        continue;
                    }
                    let this = self.clone();
                    self.shared.tasks.spawn(async move {
                        this.run_steps(a, d.steps, d.recipients).await;
                    });
                }
            }
        }
    }

    /// Run a decision's steps in order; a step's outcome decides whether the next runs.
    async fn run_steps(&self, alert: Alert, steps: Vec<Step>, recipients: Vec<String>) {
        let device = match &alert.key.subject {
            Subject::Device(d) => self.shared.fleet.get(d.as_str()),
            _ => None,
        };
        let room = alert.room.as_ref().map(|r| r.as_str()).unwrap_or("");
        let component = alert.key.component.as_deref().unwrap_or("");
        for step in steps {
            // A person may have resolved it, or the fault cleared, while a step ran.
            if !self.alert(alert.id).is_some_and(|a| a.is_open()) {
                return;
            }
            let (name, ok, outcome, next) = match &step {
                Step::Human { text } => {
                    let text = rules::fill(text, room, &alert.key.subject.to_string(), component);
                    let now = self.shared.clock.now();
                    let told = self.shared.roster.recipients(&recipients, 0, now);
                    let outcome = if told.is_empty() {
                        format!("nobody on duty to ask: {text}")
                    } else {
                        format!("asked {}: {text}", told.join(", "))
                    };
                    ("human".to_owned(), true, outcome, rules::Next::Stop)
                }
                Step::Auto {
                    action,
                    timeout,
                    on_success,
                    on_failure,
                } => {
                    let res = match &device {
                        Some(h) => self.run_action(h, action, &alert, *timeout).await,
                        None => Err("the fault is not a device's: nothing to act on".to_owned()),
                    };
                    match res {
                        Ok(o) => (action.name().to_owned(), true, o, *on_success),
                        Err(o) => (action.name().to_owned(), false, o, *on_failure),
                    }
                }
            };
            self.shared.events.emit(
                self.shared.clock.now(),
                EventKind::PlaybookStep {
                    alert: alert.id,
                    device: device.as_ref().map(|h| h.id.clone()),
                    room: alert.room.clone(),
                    step: name,
                    outcome,
                    ok,
                },
            );
            if next == rules::Next::Stop {
                return;
            }
        }
    }
}

fn notice_name(n: Notice) -> String {
    match n {
        Notice::Raised => "raised".into(),
        Notice::Reopened => "reopened".into(),
        Notice::Regraded => "regraded".into(),
        Notice::Renotify => "renotify".into(),
        Notice::Escalated { level } => format!("escalated to level {level}"),
        Notice::Unsilenced => "unsilenced".into(),
    }
}

/// Whether the alert's fault no longer holds on the device.
fn fault_gone(alert: &Alert, s: &DeviceState) -> bool {
    match alert.key.kind {
        FaultKind::Unreachable | FaultKind::HvacUnreachable => {
            s.reachable && s.health != Health::Unreachable
        }
        FaultKind::BusyTooLong => !s.busy,
        // Whether the device is HVAC only changes how unknown codes are named: try both.
        kind => !s.faults.iter().any(|f| {
            let named = |hvac| FaultKind::from_code(&f.fault.code, f.fault.severity, hvac);
            (named(false) == kind || named(true) == kind)
                && f.fault.component == alert.key.component
        }),
    }
}

/// The channel number of a component written `channel 2`.
fn channel(component: Option<&str>) -> Option<u16> {
    component?.strip_prefix("channel ")?.trim().parse().ok()
}

impl PlaybookHandle {
    /// Carry out one automatic step and check, within `timeout`, that the fault went away.
    async fn run_action(
        &self,
        h: &DeviceHandle,
        action: &rules::Action,
        alert: &Alert,
        timeout: Duration,
    ) -> Result<String, String> {
        use rules::Action as A;
        let wait = timeout.to_std().unwrap_or_default();
        let component = alert.key.component.as_deref();
        let commands: Vec<DeviceCommand> = match action {
            A::Repoll => vec![DeviceCommand::Refresh],
            A::SwitchInput { input } => vec![DeviceCommand::SelectInput {
                input: input.clone(),
            }],
            A::ChangeSetpoint { celsius } => vec![DeviceCommand::SetSetpoint { celsius: *celsius }],
            A::Unmute => match (
                channel(component),
                component.and_then(|c| c.strip_prefix("zone ")),
            ) {
                (Some(channel), _) => vec![DeviceCommand::SetMute { channel, on: false }],
                (None, Some(zone)) => vec![DeviceCommand::SetZoneMute {
                    zone: zone.to_owned(),
                    on: false,
                }],
                _ => return Err(format!("no channel or zone to unmute in {component:?}")),
            },
            A::LowerGain { db } => {
                let Some(ch) = channel(component) else {
                    return Err(format!("no channel to lower in {component:?}"));
                };
                let point = crate::model::Point {
                    subject: crate::model::Subject::Channel(u8::try_from(ch).unwrap_or(u8::MAX)),
                    quantity: crate::model::Quantity::GainDb,
                };
                let Some(now_db) = h.state().value(&point).and_then(|v| v.as_f64()) else {
                    return Err("the channel's gain is not known: not lowered".to_owned());
                };
                vec![DeviceCommand::SetGain {
                    channel: ch,
                    db: now_db - db,
                }]
            }
            A::PowerCycle => vec![
                DeviceCommand::Power { on: false },
                DeviceCommand::Power { on: true },
            ],
            A::Reconnect => {
                let outcome = h.reconnect().await;
                if !outcome.is_done() {
                    return Err(format!("reconnect: {outcome}"));
                }
                Vec::new()
            }
            // Checked by what the backup channel reports, not by the fault going away: the
            // failing transmitter's battery stays flat until someone replaces it.
            A::MoveToBackupChannel => return self.move_to_backup(h, alert, wait).await,
        };
        for c in commands {
            if !h.takes(&c) {
                return Err(format!("{} cannot {}", h.id, c.name()));
            }
            let is_power_off = matches!(c, DeviceCommand::Power { on: false });
            let outcome = h.command(c.clone()).await;
            if !outcome.is_done() {
                return Err(format!("{}: {outcome}", c.name()));
            }
            if is_power_off {
                // Cool-down is a lock-out: switching on before it ends is refused.
                h.wait_for(|s| !s.busy, wait)
                    .await
                    .map_err(|e| format!("still cooling down: {e}"))?;
            }
        }
        match h.wait_for(|s| fault_gone(alert, s), wait).await {
            Ok(_) => Ok(format!("{}: done and checked", action.name())),
            Err(e) => Err(format!(
                "{}: done, but the fault remains ({e})",
                action.name()
            )),
        }
    }

    /// Move the presenter of the alert's failing channel to its configured backup: check that
    /// the backup's transmitter is on air with battery for the rest of the meeting (nothing is
    /// touched otherwise), unmute the backup, wait until it reports unmuted, then mute the
    /// failing channel so it does not crackle when its battery dies.
    async fn move_to_backup(
        &self,
        h: &DeviceHandle,
        alert: &Alert,
        wait: std::time::Duration,
    ) -> Result<String, String> {
        let component = alert.key.component.as_deref();
        let Some(ch) = channel(component) else {
            return Err(format!("no channel to move from in {component:?}"));
        };
        let from = ChannelRef {
            device: h.id.clone(),
            channel: ch,
        };
        let Some(to) = self.shared.settings.backups.get(&from).cloned() else {
            return Err(format!(
                "{from} has no backup: name one in the site config's [playbook] backup"
            ));
        };
        let Some(backup) = self.shared.fleet.get(to.device.as_str()) else {
            return Err(format!("{} is not a running device", to.device));
        };
        let Ok(n) = u8::try_from(to.channel) else {
            return Err(format!("{to}: no such channel"));
        };
        let unmute = DeviceCommand::SetMute {
            channel: to.channel,
            on: false,
        };
        let mute = DeviceCommand::SetMute {
            channel: ch,
            on: true,
        };
        if !backup.takes(&unmute) || !h.takes(&mute) {
            return Err(format!("{to} or {from} cannot be muted and unmuted"));
        }
        let now = self.shared.clock.now();
        let need = alert
            .room
            .as_ref()
            .and_then(|r| self.shared.schedule.current_and_next(r, now).0)
            .map_or(0.0, |b| (b.end - now).num_seconds().max(0) as f64 / 60.0);
        backup_usable(&backup.state(), n, need).map_err(|why| format!("{to} {why}: not moved"))?;
        let outcome = backup.command(unmute).await;
        if !outcome.is_done() {
            return Err(format!("unmuting {to}: {outcome}"));
        }
        let live = backup
            .wait_for(
                |s| backup_usable(s, n, need).is_ok() && muted(s, n) == Some(false),
                wait,
            )
            .await
            .map_err(|e| format!("{to} unmuted, but not confirmed ready ({e})"))?;
        let minutes = battery_minutes(&live, n).unwrap_or_default();
        let outcome = h.command(mute).await;
        if !outcome.is_done() {
            return Err(format!(
                "{to} is live, but {from} could not be muted: {outcome}"
            ));
        }
        Ok(format!(
            "move_to_backup_channel: {to} is on air, unmuted, with {minutes:.0} min of battery for \
             {need:.0} min of meeting; {from} muted"
        ))
    }
}

fn point(n: u8, q: crate::model::Quantity) -> crate::model::Point {
    crate::model::Point {
        subject: crate::model::Subject::Channel(n),
        quantity: q,
    }
}

fn battery_minutes(s: &DeviceState, n: u8) -> Option<f64> {
    s.value(&point(n, crate::model::Quantity::BatteryMinutes))?
        .as_f64()
}

fn muted(s: &DeviceState, n: u8) -> Option<bool> {
    s.value(&point(n, crate::model::Quantity::Muted))?.as_bool()
}

/// Whether channel `n` can carry a presenter for `need` more minutes: reachable, its
/// transmitter on air, its battery known to last. `Err` says what is missing.
fn backup_usable(s: &DeviceState, n: u8, need: f64) -> Result<(), String> {
    if !s.reachable {
        return Err("is unreachable".to_owned());
    }
    let present = s
        .value(&point(n, crate::model::Quantity::TxPresent))
        .and_then(|v| v.as_bool());
    if present != Some(true) {
        return Err("has no transmitter on air".to_owned());
    }
    match battery_minutes(s, n) {
        Some(m) if m >= need => Ok(()),
        Some(m) => Err(format!(
            "has {m:.0} min of battery, the meeting needs {need:.0}"
        )),
        None => Err("does not report its battery's runtime".to_owned()),
    }
}

/// Start the playbook: subscribe to the bus at once (no fault is missed while the store is
/// read), restore the alerts and windows kept before a restart, and run until cancelled.
#[allow(clippy::too_many_arguments)]
pub fn start(
    rules: Arc<Rules>,
    roster: Roster,
    parents: std::collections::BTreeMap<DeviceId, DeviceId>,
    tz: Tz,
    settings: PlaybookSettings,
    events: &EventBus,
    clock: Clock,
    fleet: Arc<Fleet>,
    schedule: Book,
    records: Option<Records>,
    tasks: &TaskTracker,
    cancel: CancellationToken,
) -> PlaybookHandle {
    let book = AlertBook::new(settings.policy.clone(), parents);
    let sink = events.sink(
        "playbook",
        EventFilter::matching(|k| {
            matches!(
                k,
                EventKind::FaultRaised { .. }
                    | EventKind::FaultCleared { .. }
                    | EventKind::HealthChanged { .. }
                    | EventKind::SelfTestFinished { .. }
                    | EventKind::NotReadyAtDeadline { .. }
                    | EventKind::BookingFeedFailed { .. }
                    | EventKind::BookingFeedRecovered { .. }
                    | EventKind::StoreFailed { .. }
                    | EventKind::StoreRecovered { .. }
                    | EventKind::BookingStarted { .. }
                    | EventKind::BookingEnded { .. }
            )
        }),
        crate::events::SUBSCRIBER_CAPACITY,
    );
    let handle = PlaybookHandle {
        shared: Arc::new(Shared {
            book: Mutex::new(book),
            rules,
            roster,
            tz,
            events: events.clone(),
            clock,
            fleet,
            schedule,
            settings,
            tasks: tasks.clone(),
            records,
            changed: Notify::new(),
        }),
    };
    tasks.spawn(run(handle.clone(), sink, cancel));
    handle
}

async fn run(h: PlaybookHandle, mut sink: crate::events::EventSink, cancel: CancellationToken) {
    let clock = h.shared.clock;
    let regrade_every = h.shared.settings.regrade_every.to_std().unwrap_or_default();
    h.restore(&cancel).await;
    let mut next_regrade = clock.instant() + regrade_every;
    loop {
        let now = clock.now();
        let due = h.book().next_wakeup(now);
        let wake = due
            .map(|t| clock.instant() + (t - now).to_std().unwrap_or_default())
            .map_or(next_regrade, |w| w.min(next_regrade));
        tokio::select! {
            _ = cancel.cancelled() => return,
            e = sink.recv() => {
                let Some(e) = e else { return };
                let now = clock.now();
                if matches!(e.kind, EventKind::BookingStarted { .. } | EventKind::BookingEnded { .. }) {
                    h.regrade(now);
                } else {
                    h.on_event(&e.kind, now);
                }
            }
            _ = h.shared.changed.notified() => {}
            _ = tokio::time::sleep_until(wake) => {
                let now = clock.now();
                if clock.instant() >= next_regrade {
                    h.regrade(now);
                    next_regrade = clock.instant() + regrade_every;
                }
                let actions = h.book().tick(now);
                h.carry_out(actions, None, now);
            }
        }
    }
}
