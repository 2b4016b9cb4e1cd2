//! The alert book: one alert per subject, fault kind and component, raised → acknowledged (by
//! whom) → resolved (automatically when the fault clears, or by hand with a note). Repeats
//! update the open alert; a fault that keeps coming back is damped; maintenance windows and a
//! parent device that is down silence alerts; an alert nobody acknowledges escalates at its
//! deadline and is re-notified at an interval.
//!
//! Pure state machine: every method takes `now` and returns the [`Action`]s to carry out. Must
//! not notify, persist or read the clock itself; the playbook task does that.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use super::context::Context;
use super::taxonomy::{Change, FaultKind, Observation, Subject};
use crate::model::plan::FaultClass;
use crate::model::{DeviceId, RoomId};

pub type AlertId = u64;

/// What an alert is about; at most one open alert per key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AlertKey {
    pub subject: Subject,
    pub kind: FaultKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
}

impl AlertKey {
    pub fn of(o: &Observation) -> AlertKey {
        AlertKey {
            subject: o.subject.clone(),
            kind: o.kind,
            component: o.component.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    Raised,
    Acknowledged,
    Resolved,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Raised => "raised",
            AlertState::Acknowledged => "acknowledged",
            AlertState::Resolved => "resolved",
        }
    }

    pub fn parse(s: &str) -> Option<AlertState> {
        [
            AlertState::Raised,
            AlertState::Acknowledged,
            AlertState::Resolved,
        ]
        .into_iter()
        .find(|a| a.as_str() == s)
    }
}

/// Why an open alert tells nobody.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum Silence {
    Maintenance {
        window: u64,
    },
    /// The device's parent (a serial server, a room gateway) is down: its children's
    /// reachability alerts are consequences, not causes.
    Parent {
        device: DeviceId,
    },
}

/// The grade the evaluator gave an alert in its room's context.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Grade {
    pub class: FaultClass,
    pub context: Context,
    pub respond_by: DateTime<Utc>,
    pub resolve_by: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub id: AlertId,
    #[serde(flatten)]
    pub key: AlertKey,
    pub room: Option<RoomId>,
    pub message: String,
    pub state: AlertState,
    #[serde(flatten)]
    pub grade: Grade,
    pub raised_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// How often the source reported it again while it was open.
    pub repeats: u32,
    /// How often it came back soon after it cleared.
    pub flaps: u32,
    pub flapping: bool,
    pub silenced: Option<Silence>,
    pub acknowledged_by: Option<String>,
    pub acknowledged_at: Option<DateTime<Utc>>,
    pub resolved_at: Option<DateTime<Utc>>,
    /// `None` when it resolved itself (the fault cleared).
    pub resolved_by: Option<String>,
    pub note: Option<String>,
    /// The device's fault code behind the alert, when it came from one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// 0: the decision's recipients; n: the n-th contact of the escalation order.
    pub escalation: u32,
    pub next_escalation: Option<DateTime<Utc>>,
    pub next_renotify: Option<DateTime<Utc>>,
    /// A flapping alert whose fault cleared resolves once it has stayed clear this long.
    pub clear_since: Option<DateTime<Utc>>,
}

impl Alert {
    pub fn is_open(&self) -> bool {
        self.state != AlertState::Resolved
    }

    /// Time from raising to acknowledging, for the monthly report.
    pub fn time_to_acknowledge(&self) -> Option<Duration> {
        self.acknowledged_at.map(|a| a - self.raised_at)
    }

    fn device(&self) -> Option<&DeviceId> {
        match &self.key.subject {
            Subject::Device(d) => Some(d),
            _ => None,
        }
    }

    fn waiting_for_someone(&self) -> bool {
        self.state == AlertState::Raised && self.silenced.is_none() && !self.flapping
    }
}

/// Why a notification goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Notice {
    Raised,
    /// Came back soon after it cleared (notified until it is found flapping).
    Reopened,
    /// The room's context made it a higher class.
    Regraded,
    /// Still not acknowledged.
    Renotify,
    /// Not acknowledged by its deadline: the next contact is told.
    Escalated {
        level: u32,
    },
    /// A maintenance window ended or the parent came back and the fault is still there.
    Unsilenced,
}

/// What the task carries out for the book.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    Notify {
        id: AlertId,
        notice: Notice,
    },
    /// Run the decision's automatic and human steps for a newly raised alert.
    RunSteps {
        id: AlertId,
    },
    /// The alert changed: persist it and write `what` to the logbook.
    Changed {
        id: AlertId,
        what: &'static str,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AlertError {
    #[error("no alert {0}")]
    NotFound(AlertId),
    #[error("alert {0} is already resolved")]
    AlreadyResolved(AlertId),
    #[error("no maintenance window {0}")]
    NoWindow(u64),
    #[error("a maintenance window must end after it starts")]
    EmptyWindow,
}

/// What a maintenance window silences.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "id", rename_all = "snake_case")]
pub enum Target {
    Room(RoomId),
    Device(DeviceId),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceWindow {
    pub id: u64,
    pub target: Target,
    pub from: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub reason: String,
    pub by: String,
}

impl MaintenanceWindow {
    fn covers(&self, room: Option<&RoomId>, device: Option<&DeviceId>, at: DateTime<Utc>) -> bool {
        self.from <= at
            && at < self.until
            && match &self.target {
                Target::Room(r) => room == Some(r),
                Target::Device(d) => device == Some(d),
            }
    }
}

/// How the book damps and repeats.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// A fault that comes back within this long of clearing reopens its alert; one that does
    /// so `flap_limit` times is flapping: no more notices, and it resolves only after staying
    /// clear this long.
    pub flap_window: Duration,
    pub flap_limit: u32,
    pub renotify_every: Duration,
    /// Between one escalation and the next.
    pub escalate_every: Duration,
    /// How many contacts the escalation order has (levels beyond it are not scheduled).
    pub escalation_levels: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            flap_window: Duration::minutes(10),
            flap_limit: 3,
            renotify_every: Duration::minutes(30),
            escalate_every: Duration::minutes(15),
            escalation_levels: 2,
        }
    }
}

/// Every alert and maintenance window, and the parent of each device that has one.
#[derive(Debug, Clone, Default)]
pub struct AlertBook {
    policy: Policy,
    alerts: BTreeMap<AlertId, Alert>,
    open: BTreeMap<AlertKey, AlertId>,
    /// Held observations (busy too long) with the grade they would get and when they are due.
    pending: BTreeMap<AlertKey, (Observation, Grade, DateTime<Utc>)>,
    windows: BTreeMap<u64, MaintenanceWindow>,
    parents: BTreeMap<DeviceId, DeviceId>,
    next_id: AlertId,
    next_window: u64,
}

fn is_reachability(kind: FaultKind) -> bool {
    matches!(
        kind,
        FaultKind::Unreachable | FaultKind::HvacUnreachable | FaultKind::CommsSlow
    )
}

impl AlertBook {
    pub fn new(policy: Policy, parents: BTreeMap<DeviceId, DeviceId>) -> Self {
        AlertBook {
            policy,
            parents,
            next_id: 1,
            next_window: 1,
            ..Default::default()
        }
    }

    /// Alerts and windows as stored before a restart.
    pub fn restore(&mut self, alerts: Vec<Alert>, windows: Vec<MaintenanceWindow>) {
        for a in alerts {
            self.next_id = self.next_id.max(a.id + 1);
            if a.is_open() {
                self.open.insert(a.key.clone(), a.id);
            }
            self.alerts.insert(a.id, a);
        }
        for w in windows {
            self.next_window = self.next_window.max(w.id + 1);
            self.windows.insert(w.id, w);
        }
    }

    pub fn get(&self, id: AlertId) -> Option<&Alert> {
        self.alerts.get(&id)
    }

    pub fn alerts(&self) -> impl Iterator<Item = &Alert> {
        self.alerts.values()
    }

    pub fn open_alerts(&self) -> impl Iterator<Item = &Alert> {
        self.open.values().filter_map(|id| self.alerts.get(id))
    }

    pub fn windows(&self) -> impl Iterator<Item = &MaintenanceWindow> {
        self.windows.values()
    }

    /// Feed one observation. `grade` is asked only when an alert is raised or reopened.
    pub fn observe(
        &mut self,
        o: &Observation,
        grade: impl FnOnce() -> Grade,
        now: DateTime<Utc>,
    ) -> Vec<Action> {
        let key = AlertKey::of(o);
        match o.change {
            Change::Cleared => {
                self.pending.remove(&key);
                self.clear(&key, now)
            }
            Change::Raised => {
                if let Some(&id) = self.open.get(&key) {
                    return self.repeat(id, o, now);
                }
                if let Some(hold) = o.hold {
                    self.pending
                        .entry(key)
                        .or_insert_with(|| (o.clone(), grade(), now + hold));
                    return Vec::new();
                }
                self.raise(key, o, grade(), now)
            }
        }
    }

    fn repeat(&mut self, id: AlertId, o: &Observation, now: DateTime<Utc>) -> Vec<Action> {
        let Some(a) = self.alerts.get_mut(&id) else {
            return Vec::new();
        };
        a.repeats += 1;
        a.updated_at = now;
        a.clear_since = None;
        if !o.message.is_empty() {
            a.message = o.message.clone();
        }
        vec![Action::Changed {
            id,
            what: "updated",
        }]
    }

    fn raise(
        &mut self,
        key: AlertKey,
        o: &Observation,
        grade: Grade,
        now: DateTime<Utc>,
    ) -> Vec<Action> {
        // Damping: the same fault back soon after it cleared by itself reopens its alert.
        let recent = self
            .alerts
            .values()
            .filter(|a| {
                a.key == key
                    && a.state == AlertState::Resolved
                    && a.resolved_by.is_none()
                    && a.resolved_at
                        .is_some_and(|t| now - t <= self.policy.flap_window)
            })
            .map(|a| a.id)
            .max();
        let silenced = self.silence_for(o.room.as_ref(), &key, now);
        let mut out = Vec::new();
        let id = match recent {
            Some(id) => {
                let flap_limit = self.policy.flap_limit;
                let Some(a) = self.alerts.get_mut(&id) else {
                    return out;
                };
                a.flaps += 1;
                a.flapping = a.flaps >= flap_limit;
                a.state = if a.acknowledged_by.is_some() {
                    AlertState::Acknowledged
                } else {
                    AlertState::Raised
                };
                a.resolved_at = None;
                a.updated_at = now;
                a.message = o.message.clone();
                a.silenced = silenced;
                a.clear_since = None;
                out.push(Action::Changed {
                    id,
                    what: if a.flapping { "flapping" } else { "reopened" },
                });
                if a.waiting_for_someone() {
                    out.push(Action::Notify {
                        id,
                        notice: Notice::Reopened,
                    });
                }
                id
            }
            None => {
                let id = self.next_id;
                self.next_id += 1;
                let a = Alert {
                    id,
                    key: key.clone(),
                    room: o.room.clone(),
                    message: o.message.clone(),
                    state: AlertState::Raised,
                    grade,
                    raised_at: now,
                    updated_at: now,
                    repeats: 0,
                    flaps: 0,
                    flapping: false,
                    silenced,
                    acknowledged_by: None,
                    acknowledged_at: None,
                    resolved_at: None,
                    resolved_by: None,
                    note: None,
                    code: o.code.clone(),
                    escalation: 0,
                    next_escalation: None,
                    next_renotify: None,
                    clear_since: None,
                };
                let notify = a.silenced.is_none();
                self.alerts.insert(id, a);
                out.push(Action::Changed { id, what: "raised" });
                if notify {
                    out.push(Action::Notify {
                        id,
                        notice: Notice::Raised,
                    });
                    out.push(Action::RunSteps { id });
                }
                id
            }
        };
        self.open.insert(key.clone(), id);
        self.schedule(id, now);
        if is_reachability(key.kind) {
            if let Subject::Device(parent) = &key.subject {
                out.extend(self.silence_children(parent, now));
            }
        }
        out
    }

    fn silence_for(
        &self,
        room: Option<&RoomId>,
        key: &AlertKey,
        now: DateTime<Utc>,
    ) -> Option<Silence> {
        let device = match &key.subject {
            Subject::Device(d) => Some(d),
            _ => None,
        };
        if let Some(w) = self.windows.values().find(|w| w.covers(room, device, now)) {
            return Some(Silence::Maintenance { window: w.id });
        }
        let device = device.filter(|_| is_reachability(key.kind))?;
        self.down_ancestor(device)
            .map(|device| Silence::Parent { device })
    }

    /// The nearest ancestor of a device whose reachability alert is open.
    fn down_ancestor(&self, device: &DeviceId) -> Option<DeviceId> {
        let mut at = device;
        // The chain is bounded by the number of devices, so a cycle in a bad config ends.
        for _ in 0..=self.parents.len() {
            let parent = self.parents.get(at)?;
            let down = self.open_alerts().any(|a| {
                a.device() == Some(parent)
                    && matches!(
                        a.key.kind,
                        FaultKind::Unreachable | FaultKind::HvacUnreachable
                    )
            });
            if down {
                return Some(parent.clone());
            }
            at = parent;
        }
        None
    }

    fn silence_children(&mut self, parent: &DeviceId, now: DateTime<Utc>) -> Vec<Action> {
        let ids: Vec<AlertId> = self
            .open_alerts()
            .filter(|a| {
                a.silenced.is_none()
                    && is_reachability(a.key.kind)
                    && a.device().is_some_and(|d| d != parent)
            })
            .map(|a| a.id)
            .collect();
        let mut out = Vec::new();
        for id in ids {
            let Some(device) = self.alerts.get(&id).and_then(|a| a.device().cloned()) else {
                continue;
            };
            if let Some(down) = self.down_ancestor(&device) {
                if let Some(a) = self.alerts.get_mut(&id) {
                    a.silenced = Some(Silence::Parent { device: down });
                    a.updated_at = now;
                }
                self.schedule(id, now);
                out.push(Action::Changed {
                    id,
                    what: "silenced",
                });
            }
        }
        out
    }

    /// Re-check every silenced alert: the ones whose reason is gone are told again.
    fn unsilence(&mut self, now: DateTime<Utc>) -> Vec<Action> {
        let ids: Vec<AlertId> = self
            .open_alerts()
            .filter(|a| a.silenced.is_some())
            .map(|a| a.id)
            .collect();
        let mut out = Vec::new();
        for id in ids {
            let Some(a) = self.alerts.get(&id) else {
                continue;
            };
            let still = self.silence_for(a.room.as_ref(), &a.key, now);
            if still.is_none() {
                if let Some(a) = self.alerts.get_mut(&id) {
                    // Whoever is told now gets the whole response time of the class.
                    a.grade.respond_by =
                        now + (a.grade.respond_by - a.raised_at).max(Duration::zero());
                    a.silenced = None;
                    a.updated_at = now;
                }
                self.schedule(id, now);
                out.push(Action::Changed {
                    id,
                    what: "unsilenced",
                });
                if self.alerts.get(&id).is_some_and(Alert::waiting_for_someone) {
                    out.push(Action::Notify {
                        id,
                        notice: Notice::Unsilenced,
                    });
                }
            }
        }
        out
    }

    /// Escalation and re-notification times of an alert after a change.
    fn schedule(&mut self, id: AlertId, now: DateTime<Utc>) {
        let renotify = self.policy.renotify_every;
        let Some(a) = self.alerts.get_mut(&id) else {
            return;
        };
        if a.waiting_for_someone() {
            if a.next_escalation.is_none() && a.escalation == 0 {
                a.next_escalation = Some(a.grade.respond_by.max(now));
            }
            if a.next_renotify.is_none() {
                a.next_renotify = Some(now + renotify);
            }
        } else {
            a.next_escalation = None;
            a.next_renotify = None;
        }
    }

    fn clear(&mut self, key: &AlertKey, now: DateTime<Utc>) -> Vec<Action> {
        let Some(&id) = self.open.get(key) else {
            return Vec::new();
        };
        let Some(a) = self.alerts.get_mut(&id) else {
            return Vec::new();
        };
        if a.flapping {
            a.clear_since.get_or_insert(now);
            return Vec::new();
        }
        self.resolve_now(id, None, None, now)
    }

    fn resolve_now(
        &mut self,
        id: AlertId,
        by: Option<String>,
        note: Option<String>,
        now: DateTime<Utc>,
    ) -> Vec<Action> {
        let Some(a) = self.alerts.get_mut(&id) else {
            return Vec::new();
        };
        a.state = AlertState::Resolved;
        a.resolved_at = Some(now);
        a.resolved_by = by;
        a.note = note;
        a.updated_at = now;
        a.next_escalation = None;
        a.next_renotify = None;
        a.clear_since = None;
        let key = a.key.clone();
        self.open.remove(&key);
        let mut out = vec![Action::Changed {
            id,
            what: "resolved",
        }];
        if is_reachability(key.kind) {
            out.extend(self.unsilence(now));
        }
        out
    }

    /// A person takes the alert: escalation and re-notification stop.
    pub fn acknowledge(
        &mut self,
        id: AlertId,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<Action>, AlertError> {
        let a = self.alerts.get_mut(&id).ok_or(AlertError::NotFound(id))?;
        match a.state {
            AlertState::Resolved => return Err(AlertError::AlreadyResolved(id)),
            // Acknowledging twice keeps the first: the report counts time to the first.
            AlertState::Acknowledged => return Ok(Vec::new()),
            AlertState::Raised => {}
        }
        a.state = AlertState::Acknowledged;
        a.acknowledged_by = Some(by.to_owned());
        a.acknowledged_at = Some(now);
        a.updated_at = now;
        self.schedule(id, now);
        Ok(vec![Action::Changed {
            id,
            what: "acknowledged",
        }])
    }

    /// A person resolves the alert with a note (the fault may still be reported: the next
    /// report raises a new alert).
    pub fn resolve(
        &mut self,
        id: AlertId,
        by: &str,
        note: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<Action>, AlertError> {
        let a = self.alerts.get(&id).ok_or(AlertError::NotFound(id))?;
        if !a.is_open() {
            return Err(AlertError::AlreadyResolved(id));
        }
        Ok(self.resolve_now(id, Some(by.to_owned()), Some(note.to_owned()), now))
    }

    /// The room's context changed: the alert gets its new grade; a higher class is told.
    pub fn regrade(&mut self, id: AlertId, grade: Grade, now: DateTime<Utc>) -> Vec<Action> {
        let Some(a) = self.alerts.get_mut(&id).filter(|a| a.is_open()) else {
            return Vec::new();
        };
        if a.grade.class == grade.class && a.grade.context == grade.context {
            return Vec::new();
        }
        // FaultClass orders major first.
        let higher = grade.class < a.grade.class;
        a.grade = grade;
        a.updated_at = now;
        if a.state == AlertState::Raised && a.escalation == 0 {
            a.next_escalation = None;
        }
        let notify = higher && a.waiting_for_someone();
        self.schedule(id, now);
        let mut out = vec![Action::Changed {
            id,
            what: "regraded",
        }];
        if notify {
            out.push(Action::Notify {
                id,
                notice: Notice::Regraded,
            });
        }
        out
    }

    pub fn add_window(
        &mut self,
        target: Target,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
        reason: &str,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<(MaintenanceWindow, Vec<Action>), AlertError> {
        if until <= from {
            return Err(AlertError::EmptyWindow);
        }
        let w = MaintenanceWindow {
            id: self.next_window,
            target,
            from,
            until,
            reason: reason.to_owned(),
            by: by.to_owned(),
        };
        self.next_window += 1;
        self.windows.insert(w.id, w.clone());
        Ok((w, self.silence_open(now)))
    }

    pub fn remove_window(
        &mut self,
        id: u64,
        now: DateTime<Utc>,
    ) -> Result<Vec<Action>, AlertError> {
        self.windows.remove(&id).ok_or(AlertError::NoWindow(id))?;
        Ok(self.unsilence(now))
    }

    /// Silence the open alerts a window now covers.
    fn silence_open(&mut self, now: DateTime<Utc>) -> Vec<Action> {
        let ids: Vec<AlertId> = self
            .open_alerts()
            .filter(|a| a.silenced.is_none())
            .map(|a| a.id)
            .collect();
        let mut out = Vec::new();
        for id in ids {
            let Some(a) = self.alerts.get(&id) else {
                continue;
            };
            if let Some(s) = self.silence_for(a.room.as_ref(), &a.key, now) {
                if let Some(a) = self.alerts.get_mut(&id) {
                    a.silenced = Some(s);
                    a.updated_at = now;
                }
                self.schedule(id, now);
                out.push(Action::Changed {
                    id,
                    what: "silenced",
                });
            }
        }
        out
    }

    /// The earliest instant [`tick`](Self::tick) has something to do.
    pub fn next_wakeup(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let alerts = self.open_alerts().flat_map(|a| {
            [
                a.next_escalation,
                a.next_renotify,
                a.clear_since.map(|c| c + self.policy.flap_window),
            ]
        });
        let pending = self.pending.values().map(|(_, _, due)| Some(*due));
        let windows = self
            .windows
            .values()
            // A window that has begun wakes only at its end; its start is past (waking for
            // it would spin the task).
            .flat_map(|w| [Some(w.from).filter(|f| *f > now), Some(w.until)]);
        alerts.chain(pending).chain(windows).flatten().min()
    }

    /// Everything due at `now`: held faults, quiet flapping alerts, escalations, re-notices,
    /// windows that opened or ended.
    pub fn tick(&mut self, now: DateTime<Utc>) -> Vec<Action> {
        let mut out = Vec::new();
        let due: Vec<AlertKey> = self
            .pending
            .iter()
            .filter(|(_, (_, _, at))| *at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            if let Some((o, mut g, due)) = self.pending.remove(&key) {
                // The deadlines run from when the fault became an alert, not from when the
                // hold began.
                let late = now - (due - o.hold.unwrap_or_default());
                g.respond_by += late;
                g.resolve_by += late;
                out.extend(self.raise(key, &o, g, now));
            }
        }
        let quiet: Vec<AlertId> = self
            .open_alerts()
            .filter(|a| {
                a.clear_since
                    .is_some_and(|c| now - c >= self.policy.flap_window)
            })
            .map(|a| a.id)
            .collect();
        for id in quiet {
            out.extend(self.resolve_now(id, None, None, now));
        }
        // Windows that ended are dropped; the ones that began silence what they cover.
        let ended: Vec<u64> = self
            .windows
            .values()
            .filter(|w| w.until <= now)
            .map(|w| w.id)
            .collect();
        for id in &ended {
            self.windows.remove(id);
        }
        if !ended.is_empty() {
            out.extend(self.unsilence(now));
        }
        out.extend(self.silence_open(now));

        let ids: Vec<AlertId> = self.open.values().copied().collect();
        for id in ids {
            let policy = self.policy.clone();
            let Some(a) = self.alerts.get_mut(&id) else {
                continue;
            };
            if !a.waiting_for_someone() {
                continue;
            }
            if a.next_escalation.is_some_and(|t| t <= now) {
                a.escalation += 1;
                a.next_escalation =
                    (a.escalation < policy.escalation_levels).then(|| now + policy.escalate_every);
                a.next_renotify = Some(now + policy.renotify_every);
                a.updated_at = now;
                out.push(Action::Changed {
                    id,
                    what: "escalated",
                });
                out.push(Action::Notify {
                    id,
                    notice: Notice::Escalated {
                        level: a.escalation,
                    },
                });
            } else if a.next_renotify.is_some_and(|t| t <= now) {
                a.next_renotify = Some(now + policy.renotify_every);
                out.push(Action::Notify {
                    id,
                    notice: Notice::Renotify,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 3, 9, 0, 0).unwrap()
    }

    fn obs(device: &str, kind: FaultKind, change: Change) -> Observation {
        Observation {
            kind,
            subject: Subject::Device(device.into()),
            room: Some("r101".into()),
            component: None,
            change,
            message: format!("{device} {kind}"),
            hold: None,
            code: None,
        }
    }

    fn grade(now: DateTime<Utc>) -> Grade {
        Grade {
            class: FaultClass::Major,
            context: Context::InMeeting,
            respond_by: now + Duration::minutes(5),
            resolve_by: now + Duration::days(2),
        }
    }

    fn book() -> AlertBook {
        let parents = [
            ("proj".into(), "gateway".into()),
            ("gateway".into(), "switch".into()),
        ];
        AlertBook::new(Policy::default(), parents.into_iter().collect())
    }

    fn notices(actions: &[Action]) -> Vec<Notice> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Notify { notice, .. } => Some(*notice),
                _ => None,
            })
            .collect()
    }

    fn raise(b: &mut AlertBook, device: &str, kind: FaultKind, now: DateTime<Utc>) -> Vec<Action> {
        b.observe(&obs(device, kind, Change::Raised), || grade(now), now)
    }

    fn clear(b: &mut AlertBook, device: &str, kind: FaultKind, now: DateTime<Utc>) -> Vec<Action> {
        b.observe(&obs(device, kind, Change::Cleared), || grade(now), now)
    }

    #[test]
    fn raise_repeat_ack_and_self_resolve() {
        let mut b = book();
        let now = t0();
        let a = raise(&mut b, "mic", FaultKind::BatteryCritical, now);
        assert_eq!(notices(&a), [Notice::Raised]);
        assert!(a.contains(&Action::RunSteps { id: 1 }));
        let again = raise(
            &mut b,
            "mic",
            FaultKind::BatteryCritical,
            now + Duration::seconds(5),
        );
        assert_eq!(
            again,
            [Action::Changed {
                id: 1,
                what: "updated"
            }]
        );
        assert_eq!(b.open_alerts().count(), 1);
        b.acknowledge(1, "li", now + Duration::minutes(2)).unwrap();
        assert_eq!(
            b.get(1).unwrap().time_to_acknowledge(),
            Some(Duration::minutes(2))
        );
        // Acknowledged: nothing escalates any more.
        assert!(b.tick(now + Duration::hours(3)).is_empty());
        clear(
            &mut b,
            "mic",
            FaultKind::BatteryCritical,
            now + Duration::minutes(9),
        );
        let a = b.get(1).unwrap();
        assert_eq!(a.state, AlertState::Resolved);
        assert_eq!(a.resolved_by, None);
        assert_eq!(
            b.acknowledge(1, "li", now),
            Err(AlertError::AlreadyResolved(1))
        );
        assert_eq!(b.acknowledge(9, "li", now), Err(AlertError::NotFound(9)));
    }

    #[test]
    fn unacknowledged_escalates_at_its_deadline_then_renotifies() {
        let mut b = book();
        let now = t0();
        raise(&mut b, "mic", FaultKind::BatteryCritical, now);
        assert_eq!(b.next_wakeup(now), Some(now + Duration::minutes(5)));
        assert!(notices(&b.tick(now + Duration::minutes(4))).is_empty());
        let at = now + Duration::minutes(5);
        assert_eq!(notices(&b.tick(at)), [Notice::Escalated { level: 1 }]);
        let at2 = at + Duration::minutes(15);
        assert_eq!(notices(&b.tick(at2)), [Notice::Escalated { level: 2 }]);
        // The order is exhausted: only re-notices follow.
        assert_eq!(b.get(1).unwrap().next_escalation, None);
        assert_eq!(
            notices(&b.tick(at2 + Duration::minutes(30))),
            [Notice::Renotify]
        );
    }

    #[test]
    fn resolved_by_hand_with_a_note() {
        let mut b = book();
        raise(&mut b, "proj", FaultKind::ProjectorLamp, t0());
        b.resolve(1, "li", "lamp replaced", t0() + Duration::hours(1))
            .unwrap();
        let a = b.get(1).unwrap();
        assert_eq!(a.resolved_by.as_deref(), Some("li"));
        assert_eq!(a.note.as_deref(), Some("lamp replaced"));
        // A report after a manual resolution is a new alert, not a flap.
        raise(
            &mut b,
            "proj",
            FaultKind::ProjectorLamp,
            t0() + Duration::hours(1),
        );
        assert_eq!(b.open_alerts().next().map(|a| a.id), Some(2));
    }

    #[test]
    fn flapping_is_damped() {
        let mut b = book();
        let mut now = t0();
        let mut told = Vec::new();
        for _ in 0..5 {
            told.extend(notices(&raise(&mut b, "mic", FaultKind::Interference, now)));
            now += Duration::minutes(1);
            clear(&mut b, "mic", FaultKind::Interference, now);
            now += Duration::minutes(1);
        }
        // Raised, reopened twice, then flapping and silent; always the same alert.
        assert_eq!(told, [Notice::Raised, Notice::Reopened, Notice::Reopened]);
        assert_eq!(b.alerts().count(), 1);
        let a = b.get(1).unwrap();
        assert!(a.flapping && a.is_open(), "{a:?}");
        // It resolves once it stays clear for the window.
        assert!(b.tick(now + Duration::minutes(8)).is_empty());
        b.tick(now + Duration::minutes(10));
        assert_eq!(b.get(1).unwrap().state, AlertState::Resolved);
    }

    #[test]
    fn a_maintenance_window_silences_exactly_its_room_or_device() {
        let mut b = book();
        let now = t0();
        let (w, _) = b
            .add_window(
                Target::Device("proj".into()),
                now,
                now + Duration::hours(1),
                "lamp change",
                "li",
                now,
            )
            .unwrap();
        let silenced = raise(&mut b, "proj", FaultKind::ProjectorLamp, now);
        assert!(notices(&silenced).is_empty());
        assert!(!silenced.contains(&Action::RunSteps { id: 1 }));
        assert_eq!(
            b.get(1).unwrap().silenced,
            Some(Silence::Maintenance { window: w.id })
        );
        // Regression: a window that has begun must not be a wake-up at its (past) start.
        assert_eq!(
            b.next_wakeup(now + Duration::minutes(1)),
            Some(now + Duration::hours(1))
        );
        let other = raise(&mut b, "mic", FaultKind::BatteryCritical, now);
        assert_eq!(notices(&other), [Notice::Raised]);
        // Nothing escalates while silenced; the window's end tells what is still wrong.
        let end = b.tick(now + Duration::hours(1));
        assert!(end.contains(&Action::Notify {
            id: 1,
            notice: Notice::Unsilenced
        }));
        assert!(!end.iter().any(|a| matches!(
            a,
            Action::Notify {
                id: 1,
                notice: Notice::Escalated { .. }
            }
        )));
        assert_eq!(b.windows().count(), 0);

        // A room window added later silences the room's open alerts.
        let (w2, acts) = b
            .add_window(
                Target::Room("r101".into()),
                now,
                now + Duration::days(1),
                "",
                "li",
                now + Duration::hours(1),
            )
            .unwrap();
        assert_eq!(acts.len(), 2);
        b.remove_window(w2.id, now + Duration::hours(2)).unwrap();
        assert_eq!(
            b.remove_window(w2.id, now),
            Err(AlertError::NoWindow(w2.id))
        );
        assert!(b
            .add_window(Target::Room("r".into()), now, now, "", "li", now)
            .is_err());
    }

    #[test]
    fn a_parent_down_inhibits_exactly_its_childrens_reachability_alerts() {
        let mut b = book();
        let now = t0();
        // The grandparent is down; the child's unreachable alert is inhibited, its lamp is not.
        raise(&mut b, "switch", FaultKind::Unreachable, now);
        let child = raise(&mut b, "proj", FaultKind::Unreachable, now);
        assert!(notices(&child).is_empty());
        assert_eq!(
            b.get(2).unwrap().silenced,
            Some(Silence::Parent {
                device: "switch".into()
            })
        );
        let lamp = raise(&mut b, "proj", FaultKind::ProjectorLamp, now);
        assert_eq!(notices(&lamp), [Notice::Raised]);
        let unrelated = raise(&mut b, "mic", FaultKind::Unreachable, now);
        assert_eq!(notices(&unrelated), [Notice::Raised]);
        // A child raised before its parent is silenced when the parent goes down.
        let mut b2 = book();
        raise(&mut b2, "proj", FaultKind::Unreachable, now);
        let parent = raise(&mut b2, "gateway", FaultKind::Unreachable, now);
        assert!(parent.contains(&Action::Changed {
            id: 1,
            what: "silenced"
        }));
        // The parent comes back, the child is still down: now it is told.
        let back = clear(
            &mut b,
            "switch",
            FaultKind::Unreachable,
            now + Duration::minutes(3),
        );
        assert!(back.contains(&Action::Notify {
            id: 2,
            notice: Notice::Unsilenced
        }));
    }

    #[test]
    fn held_faults_raise_only_if_they_last() {
        let mut b = book();
        let now = t0();
        let mut o = obs("proj", FaultKind::BusyTooLong, Change::Raised);
        o.hold = Some(Duration::minutes(3));
        assert!(b.observe(&o, || grade(now), now).is_empty());
        assert_eq!(b.next_wakeup(now), Some(now + Duration::minutes(3)));
        clear(
            &mut b,
            "proj",
            FaultKind::BusyTooLong,
            now + Duration::minutes(1),
        );
        assert!(b.tick(now + Duration::minutes(3)).is_empty());
        b.observe(&o, || grade(now), now + Duration::minutes(4));
        let a = b.tick(now + Duration::minutes(7));
        assert_eq!(notices(&a), [Notice::Raised]);
    }

    #[test]
    fn regrading_to_a_higher_class_tells_again() {
        let mut b = book();
        let now = t0();
        let g = |class, context| Grade {
            class,
            context,
            respond_by: now + Duration::hours(1),
            resolve_by: now + Duration::days(3),
        };
        b.observe(
            &obs("mic", FaultKind::BatteryLow, Change::Raised),
            || g(FaultClass::General, Context::Idle),
            now,
        );
        let up = b.regrade(1, g(FaultClass::Major, Context::InMeeting), now);
        assert_eq!(notices(&up), [Notice::Regraded]);
        let down = b.regrade(1, g(FaultClass::General, Context::Idle), now);
        assert!(notices(&down).is_empty());
        assert!(b
            .regrade(1, g(FaultClass::General, Context::Idle), now)
            .is_empty());
    }

    #[test]
    fn restore_keeps_ids_and_open_alerts() {
        let mut b = book();
        raise(&mut b, "mic", FaultKind::BatteryCritical, t0());
        let stored: Vec<Alert> = b.alerts().cloned().collect();
        let json = serde_json::to_string(&stored).unwrap();
        let back: Vec<Alert> = serde_json::from_str(&json).unwrap();
        let mut b2 = book();
        b2.restore(back, Vec::new());
        assert_eq!(b2.open_alerts().count(), 1);
        raise(&mut b2, "proj", FaultKind::ProjectorLamp, t0());
        assert_eq!(b2.open_alerts().map(|a| a.id).max(), Some(2));
        // The restored alert is still the one a repeat updates.
        let again = raise(&mut b2, "mic", FaultKind::BatteryCritical, t0());
        assert_eq!(
            again,
            [Action::Changed {
                id: 1,
                what: "updated"
            }]
        );
    }
}
