//! The driver's window onto its device's published state.
//!
//! Drivers report readings, fault sets, busy/idle and identity through an [`Observer`]; each
//! call updates the `watch` state at once (so a 40-second lamp ignition shows `busy` while it
//! lasts) and emits the matching typed events. Health is recomputed here, in one place.
//!
//! A change wakes the state's watchers at once; a refresh that changes nothing but an instant
//! (the same value read again, the same fault confirmed) is stamped quietly and woken for
//! once, by [`Observer::flush`] at the end of the runtime's step (issue 15.1: a poll of three
//! unchanged answers was four wakes of every watcher, each cloning or serialising the state).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::clock::Clock;
use crate::codec::ProtocolError;
use crate::events::{EventBus, EventKind};
use crate::meter::stream::{MeterBoard, MeterLevel};
use crate::model::{
    ActiveFault, CommsPolicy, DeviceId, DeviceState, Fault, Identity, Point, Reading, RoomId,
    Subject, Unit, Value,
};

/// The fault source the runtime uses for the link itself (authentication refused): avwarden's
/// own finding, current while the device is unreachable, unlike what the device reported.
pub const LINK_SOURCE: &str = "link";

/// One thing a driver learnt, for drivers that prefer to collect before applying.
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    Reading { point: Point, value: Value },
    Faults { source: String, faults: Vec<Fault> },
    Busy(bool),
}

pub struct Observer {
    clock: Clock,
    device: DeviceId,
    /// The device's id as meter samples carry it (shared, not copied per sample).
    meter_device: Arc<DeviceId>,
    room: RoomId,
    state: Arc<watch::Sender<DeviceState>>,
    events: EventBus,
    /// Active faults by the source that reported them (`erst`, `lamp`, `auth`, `link`): each
    /// source replaces its own set, so one poll's ERST answer cannot clear an auth fault.
    sources: BTreeMap<String, Vec<Fault>>,
    /// Bad input is logged once per burst: set on the first bad frame, cleared by a good one.
    bad_input_reported: bool,
    /// What the command under way left on the device, when the driver knows it.
    applied: Option<Applied>,
    meters: MeterWatch,
    /// The device's latest level per subject, shared with its handle.
    board: MeterBoard,
    /// The comms policy the driver declared for this session, if it has its own.
    comms: Option<CommsPolicy>,
    /// Instants were stamped quietly since the last [`Observer::flush`].
    stamped: bool,
    /// A metered reading changed its value since the watchers were last woken.
    metered_changed: bool,
    /// When the watchers were last woken: metered values reach them at most once per
    /// [`METERED_STATE_EVERY`].
    woken_at: Option<tokio::time::Instant>,
    /// The fleet's count of state changes, counted on every wake of this device's watchers.
    changes: StateChanges,
}

/// A count of the wakes of every device state in a fleet: one load tells a reader (the API's
/// list snapshots) whether any device's state changed since it last looked, where asking each
/// device's `watch` is a cache miss per device per request (issue 15.3). Counted after the
/// state it announces is in place, so a reader that saw the count sees that state.
#[derive(Debug, Clone, Default)]
pub struct StateChanges(Arc<std::sync::atomic::AtomicU64>);

impl StateChanges {
    pub fn count(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Change a device's state through its `watch`, counted when its watchers are woken
    /// (`f` says so): every writer of a fleet's device states goes through here, so the count
    /// misses none.
    pub fn send_if_modified(
        &self,
        state: &watch::Sender<DeviceState>,
        f: impl FnOnce(&mut DeviceState) -> bool,
    ) -> bool {
        let woke = state.send_if_modified(f);
        if woke {
            self.0.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
        woke
    }

    /// [`StateChanges::send_if_modified`] for a change the watchers always see.
    pub fn send_modify(
        &self,
        state: &watch::Sender<DeviceState>,
        f: impl FnOnce(&mut DeviceState),
    ) {
        self.send_if_modified(state, |s| {
            f(s);
            true
        });
    }
}

/// How often at most a metered reading's new value wakes the state's watchers.
pub const METERED_STATE_EVERY: Duration = Duration::from_secs(1);

/// The fault source for meters that stopped arriving.
pub const METERING_SOURCE: &str = "metering";

/// When each meter last sent a sample, and which are lost. A meter is lost once silent for
/// three periods; it is back when a sample follows another within three periods (samples
/// streaming again), not on one lone value such as a re-subscribe answer.
#[derive(Debug, Default)]
struct MeterWatch {
    period: Option<Duration>,
    last: BTreeMap<Subject, DateTime<Utc>>,
    lost: BTreeSet<Subject>,
}

impl MeterWatch {
    fn limit(&self) -> Option<Duration> {
        self.period.map(|p| p * crate::model::METER_STALE_PERIODS)
    }

    fn within(&self, gap: chrono::Duration) -> bool {
        self.limit()
            .and_then(|l| chrono::Duration::from_std(l).ok())
            .is_none_or(|l| gap <= l)
    }

    /// A sample at `now`; true when the lost set changed.
    fn sample(&mut self, subject: &Subject, now: DateTime<Utc>) -> bool {
        let prev = match self.last.get_mut(subject) {
            Some(t) => Some(std::mem::replace(t, now)),
            None => {
                self.last.insert(subject.clone(), now);
                None
            }
        };
        if self.lost.contains(subject) && prev.is_some_and(|p| self.within(now - p)) {
            self.lost.remove(subject);
            return true;
        }
        false
    }

    /// Mark meters silent past the limit as lost; true when the lost set changed.
    fn check(&mut self, now: DateTime<Utc>) -> bool {
        if self.period.is_none() {
            return false;
        }
        let mut changed = false;
        for (ch, t) in &self.last {
            if !self.within(now - *t) && !self.lost.contains(ch) {
                self.lost.insert(ch.clone());
                changed = true;
            }
        }
        changed
    }
}

/// What a command left on the device, when that is more than "done": the setpoint a
/// whole-degree unit holds after `set_setpoint 22.5` (23), the level a DSP read back. The
/// caller is told this value, not the one it asked for.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Applied {
    /// The point the command set (`setpoint`, `zone.main.level_db`).
    #[serde(rename = "key")]
    pub point: Point,
    #[serde(flatten)]
    pub value: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<Unit>,
}

impl Applied {
    pub fn new(point: Point, value: Value) -> Self {
        let unit = point.unit();
        Self {
            value: value.rounded_for(unit),
            unit,
            point,
        }
    }
}

impl Observer {
    pub fn new(clock: Clock, state: Arc<watch::Sender<DeviceState>>, events: EventBus) -> Self {
        let (device, room) = {
            let s = state.borrow();
            (s.id.clone(), s.room.clone())
        };
        Self {
            clock,
            meter_device: Arc::new(device.clone()),
            device,
            room,
            state,
            events,
            sources: BTreeMap::new(),
            bad_input_reported: false,
            applied: None,
            meters: MeterWatch::default(),
            board: MeterBoard::default(),
            comms: None,
            stamped: false,
            metered_changed: false,
            woken_at: None,
            changes: StateChanges::default(),
        }
    }

    /// Wake the state's watchers once for every instant stamped quietly since the last call
    /// (readings re-read with the same value, faults confirmed). The runtime calls this after
    /// each poll, command or input it handled.
    pub fn flush(&mut self) {
        let metered_due = self.metered_changed
            && self
                .woken_at
                .is_none_or(|t| self.clock.instant().duration_since(t) >= METERED_STATE_EVERY);
        if self.stamped || metered_due {
            self.update(|_| {});
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn device(&self) -> &DeviceId {
        &self.device
    }

    pub fn room(&self) -> &RoomId {
        &self.room
    }

    pub fn events(&self) -> &EventBus {
        &self.events
    }

    /// When the device was last heard from (without cloning the state).
    pub fn last_contact(&self) -> Option<DateTime<Utc>> {
        self.state.borrow().last_contact
    }

    /// A snapshot of the current state.
    pub fn snapshot(&self) -> DeviceState {
        self.state.borrow().clone()
    }

    /// The device answered: note the time (a good frame also ends a bad-input burst). Whether
    /// the device counts as *contacted* is the runtime's call, once a whole session is up.
    /// The instant is stamped without waking the state's watchers: a device that streams
    /// frames would otherwise wake every consumer on every frame for a changing timestamp.
    pub fn contact(&mut self) {
        let now = self.now();
        self.bad_input_reported = false;
        self.update_quietly(|s| {
            s.last_contact = Some(now);
            false
        });
    }

    /// A reading refreshed at meter rate (a receiver's RF level): its instant is stamped on
    /// every sample and its value kept current in the state, but the watchers are woken for a
    /// new value at most once per [`METERED_STATE_EVERY`] (by [`Observer::flush`]), not ten
    /// times a second: the meter stream carries every sample, the state a recent one (issue
    /// 15.2). A point's first value wakes them at once.
    pub fn metered_reading(&mut self, point: Point, value: Value) {
        let value = value.rounded_for(point.unit());
        let now = self.now();
        let mut changed = false;
        self.update_quietly(|s| {
            s.last_contact = Some(now);
            match s.readings.get_mut(&point) {
                Some(r) if r.metered => {
                    r.observed_at = now;
                    if r.value != value {
                        r.value = value;
                        changed = true;
                    }
                    false
                }
                _ => {
                    s.readings
                        .insert(point.clone(), Reading::metered(point, value, now));
                    true
                }
            }
        });
        self.metered_changed |= changed;
    }

    /// The command under way left `point` at `value` (read back, or as the device rounded it).
    pub fn applied(&mut self, point: Point, value: Value) {
        self.applied = Some(Applied::new(point, value));
    }

    /// What the last command reported with [`Observer::applied`], taken (the runtime asks
    /// once per command).
    pub fn take_applied(&mut self) -> Option<Applied> {
        self.applied.take()
    }

    /// Store a reading, rounded to its unit's meaningful precision. The same value read again
    /// only moves its instant, and wakes the watchers at the next [`Observer::flush`].
    pub fn reading(&mut self, point: Point, value: Value) {
        let now = self.now();
        let next = Reading::new(point, value, now);
        let mut stamped = false;
        self.update_quietly(|s| {
            s.last_contact = Some(now);
            match s.readings.get_mut(&next.point) {
                Some(r) if r.value == next.value && !r.metered => {
                    r.observed_at = now;
                    stamped = true;
                    false
                }
                _ => {
                    s.readings.insert(next.point.clone(), next);
                    true
                }
            }
        });
        self.stamped |= stamped;
    }

    /// Whether the driver streams meters this session ([`Observer::metering`]).
    pub fn is_metering(&self) -> bool {
        self.meters.period.is_some()
    }

    /// The driver streams meters every `period` (from now on, for this session): a meter
    /// whose samples stop for three periods is stale and raises `metering_lost`.
    pub fn metering(&mut self, period: Duration) {
        self.meters.period = Some(period);
        let ms = u64::try_from(period.as_millis()).unwrap_or(u64::MAX);
        self.update(|s| s.freshness.meter_period_ms = Some(ms));
    }

    /// The driver's own comms policy for this session (a receiver that pushes and answers a
    /// heartbeat is judged by that, not by polls). The runtime's comms monitor applies it.
    pub fn comms(&mut self, policy: CommsPolicy) {
        self.comms = Some(policy);
    }

    /// What [`Observer::comms`] declared, taken by the runtime at session start.
    pub fn take_comms(&mut self) -> Option<CommsPolicy> {
        self.comms.take()
    }

    /// A device connected but silent for longer than `after` has stale readings (the comms
    /// monitor sets this to its warning time).
    pub fn quiet_after(&mut self, after: Duration) {
        let ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
        self.update(|s| s.freshness.quiet_after_ms = Some(ms));
    }

    /// A new session: no meter has been seen yet, and none is lost.
    pub fn reset_metering(&mut self) {
        self.meters = MeterWatch::default();
        self.update(|s| s.freshness.meter_period_ms = None);
        if self.sources.contains_key(METERING_SOURCE) {
            self.faults(METERING_SOURCE, Vec::new());
        }
    }

    /// A sample arrived for `subject` that carries no level (a receiver channel without a
    /// transmitter reads its floor): the stream is alive, the level is not known.
    pub fn meter_unknown(&mut self, subject: &Subject) {
        self.board.unknown(subject);
        let now = self.now();
        self.meter_alive(subject, now);
    }

    fn meter_alive(&mut self, subject: &Subject, now: DateTime<Utc>) {
        if self.meters.sample(subject, now) {
            self.publish_metering();
        }
    }

    /// Raise `metering_lost` for every meter silent for three periods (the runtime calls this
    /// on a timer; samples clear it as they return).
    pub fn check_metering(&mut self) {
        let now = self.now();
        if self.meters.check(now) {
            self.publish_metering();
        }
    }

    fn publish_metering(&mut self) {
        let limit = self.meters.limit();
        let faults = self
            .meters
            .lost
            .iter()
            .map(|ch| {
                Fault::new(
                    "metering_lost",
                    crate::model::Severity::Warning,
                    format!(
                        "no meter samples from {ch} for over {:.1} s: its level is not known",
                        limit.map_or(0.0, |l| l.as_secs_f64())
                    ),
                )
                .on(ch.to_string())
            })
            .collect();
        self.faults(METERING_SOURCE, faults);
    }

    pub fn apply(&mut self, obs: Observation) {
        match obs {
            Observation::Reading { point, value } => self.reading(point, value),
            Observation::Faults { source, faults } => self.faults(&source, faults),
            Observation::Busy(b) => self.busy(b),
        }
    }

    /// Forget a reading that no longer exists (a lamp the projector stopped reporting).
    pub fn remove_reading(&mut self, point: &Point) {
        self.update(|s| {
            s.readings.remove(point);
        });
    }

    pub fn busy(&mut self, busy: bool) {
        self.update_quietly(|s| std::mem::replace(&mut s.busy, busy) != busy);
    }

    /// Replace the set of active faults reported by `source`.
    pub fn faults(&mut self, source: &str, faults: Vec<Fault>) {
        let now = self.now();
        if self.sources.get(source) == Some(&faults) {
            // The same set again: only the instants it was confirmed at move.
            if !faults.is_empty() {
                self.update_quietly(|s| {
                    for a in s.faults.iter_mut() {
                        if faults.iter().any(|f| f.identity() == a.fault.identity()) {
                            a.confirmed_at = now;
                        }
                    }
                    false
                });
                self.stamped = true;
            }
            return;
        }
        let old = self
            .sources
            .insert(source.to_owned(), faults.clone())
            .unwrap_or_default();
        // New faults, and faults whose severity changed (a low battery turning critical is
        // raised again so alerts escalate; its `since` stays the first sighting).
        let raised: Vec<Fault> = faults
            .iter()
            .filter(|f| {
                !old.iter()
                    .any(|o| o.identity() == f.identity() && o.severity == f.severity)
            })
            .cloned()
            .collect();
        let cleared: Vec<Fault> = old
            .iter()
            .filter(|o| !faults.iter().any(|f| f.identity() == o.identity()))
            .cloned()
            .collect();
        let changed_in_place = !raised.is_empty() || !cleared.is_empty() || old != faults;
        if !changed_in_place {
            // A source seen for the first time with nothing to report.
            return;
        }
        let all: Vec<(bool, Fault)> = self
            .sources
            .iter()
            .flat_map(|(src, fs)| {
                let from_device = src != LINK_SOURCE;
                fs.iter().map(move |f| (from_device, f.clone()))
            })
            .collect();
        self.update(|s| {
            let mut next = Vec::with_capacity(all.len());
            for (from_device, f) in all {
                let prev = s.faults.iter().find(|a| a.fault.identity() == f.identity());
                let reported_now = faults.iter().any(|r| r.identity() == f.identity());
                next.push(ActiveFault {
                    since: prev.map_or(now, |a| a.since),
                    confirmed_at: match prev {
                        Some(a) if !reported_now => a.confirmed_at,
                        _ => now,
                    },
                    from_device,
                    fault: f,
                });
            }
            s.faults = next;
        });
        for fault in raised {
            self.emit(EventKind::FaultRaised {
                device: self.device.clone(),
                room: self.room.clone(),
                fault,
            });
        }
        for fault in cleared {
            self.emit(EventKind::FaultCleared {
                device: self.device.clone(),
                room: self.room.clone(),
                fault,
            });
        }
    }

    /// Merge identity fields the device reported; emits an event when anything changed.
    pub fn identity(&mut self, f: impl FnOnce(&mut Identity)) {
        let mut next = self.state.borrow().identity.clone();
        f(&mut next);
        // An identity being rebuilt (empty) is not news; the filled one is.
        if next != self.state.borrow().identity && !next.is_empty() {
            let id = next.clone();
            self.update(|s| s.identity = next);
            self.emit(EventKind::IdentityReported {
                device: self.device.clone(),
                room: self.room.clone(),
                identity: id,
            });
        }
    }

    /// A metered level in dBFS for `subject`: on the meter stream and the device's board. The
    /// state `watch` is not woken (its consumers do not want every frame); the contact is
    /// stamped on the board, and the link's liveness is the runtime's.
    pub fn meter(&mut self, subject: Subject, dbfs: f64) {
        self.meter_ref(&subject, dbfs);
    }

    /// [`Observer::meter`] for a subject the driver keeps (no clone per sample): one clock
    /// read, no allocation once the subject has been seen.
    pub fn meter_ref(&mut self, subject: &Subject, dbfs: f64) {
        let dbfs = crate::model::round_to(dbfs, 1);
        let at = self.now();
        self.board.set(subject, MeterLevel { dbfs, at });
        // Before the stream: a cut decided here is on the lane before any consumer wakes.
        self.board.tap(subject, dbfs, at);
        self.meter_alive(subject, at);
        self.events
            .meters()
            .publish_level(&self.meter_device, subject, dbfs, at);
    }

    /// The board this observer writes (the device handle reads it).
    pub fn board(&self) -> &MeterBoard {
        &self.board
    }

    /// Write levels on `board` (the supervisor's, shared with the device handle).
    pub fn with_board(mut self, board: MeterBoard) -> Self {
        self.board = board;
        self
    }

    /// Count this device's state changes in its fleet's [`StateChanges`].
    pub fn with_changes(mut self, changes: StateChanges) -> Self {
        self.changes = changes;
        self
    }

    /// Count undecodable input; the first of a burst is logged, the rest only counted.
    pub fn bad_input(&mut self, err: &ProtocolError) {
        let oversized = matches!(err, ProtocolError::Oversized { .. });
        self.update(|s| {
            if oversized {
                s.counters.oversized_frames += 1;
            } else {
                s.counters.bad_frames += 1;
            }
        });
        self.events.metrics().inc_labeled(
            "avwarden_bad_frames_total",
            "device",
            self.device.as_str(),
        );
        if !self.bad_input_reported {
            self.bad_input_reported = true;
            let count = {
                let s = self.state.borrow();
                s.counters.bad_frames + s.counters.oversized_frames
            };
            self.emit(EventKind::BadInput {
                device: self.device.clone(),
                room: self.room.clone(),
                detail: err.to_string(),
                count,
            });
        }
    }

    pub fn emit(&self, kind: EventKind) {
        self.events.emit(self.now(), kind);
    }

    /// Apply a change to the published state and recompute health (emitting the change).
    pub fn update(&mut self, f: impl FnOnce(&mut DeviceState)) {
        self.update_quietly(|s| {
            f(s);
            true
        });
    }

    /// Change the state; watchers are woken when `f` says it changed something they must see
    /// (returns true) or the health changed.
    fn update_quietly(&mut self, f: impl FnOnce(&mut DeviceState) -> bool) {
        let now = self.now();
        let mut changed = None;
        let woke = self.changes.send_if_modified(&self.state, |s| {
            let wake = f(s);
            if let Some(prev) = s.refresh_health(now) {
                changed = Some((prev, s.health));
                return true;
            }
            wake
        });
        // Whatever was stamped quietly is seen with this wake.
        if woke {
            self.stamped = false;
            self.metered_changed = false;
            self.woken_at = Some(self.clock.instant());
        }
        if let Some((from, to)) = changed {
            self.emit(EventKind::HealthChanged {
                device: self.device.clone(),
                room: self.room.clone(),
                from,
                to,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 14.2: lost after three silent periods, back only when samples stream again (a
    /// lone value such as a re-subscribe answer is not a stream).
    #[test]
    fn a_meter_is_lost_after_three_periods_and_back_when_samples_stream() {
        let t0 = DateTime::UNIX_EPOCH;
        let ms = |n: i64| t0 + chrono::Duration::milliseconds(n);
        let mut w = MeterWatch {
            period: Some(Duration::from_millis(100)),
            ..MeterWatch::default()
        };
        let main = Subject::zone("main");
        assert!(!w.sample(&main, ms(0)));
        assert!(!w.check(ms(300)), "exactly three periods is not yet lost");
        assert!(w.check(ms(301)));
        assert!(w.lost.contains(&main));
        assert!(!w.check(ms(5_000)), "lost once, not again");
        assert!(!w.sample(&main, ms(5_000)), "one value after a gap");
        assert!(w.lost.contains(&main));
        assert!(w.sample(&main, ms(5_100)), "a second within the limit");
        assert!(w.lost.is_empty());
        // Without a declared period nothing is ever lost.
        let mut quiet = MeterWatch::default();
        quiet.sample(&main, ms(0));
        assert!(!quiet.check(ms(1_000_000)));
    }
    use crate::metrics::Metrics;
    use crate::model::{ProfileId, Severity};

    fn observer() -> (Observer, crate::events::EventSink) {
        let clock = Clock::starting_at(chrono::DateTime::UNIX_EPOCH);
        let state = DeviceState::new(
            "d".into(),
            "r".into(),
            ProfileId::new("p"),
            "test".into(),
            clock.now(),
        );
        let (tx, _rx) = watch::channel(state);
        let bus = EventBus::new(Metrics::new());
        let events = bus.subscribe();
        (Observer::new(clock, Arc::new(tx), bus), events)
    }

    #[test]
    fn the_fleet_change_count_follows_wakes_not_quiet_stamps() {
        let (obs, _events) = observer();
        let changes = StateChanges::default();
        let mut obs = obs.with_changes(changes.clone());
        let before = changes.count();
        obs.contact();
        obs.flush();
        assert_eq!(
            changes.count(),
            before,
            "a contact instant is stamped quietly"
        );
        obs.reading(
            Point::new(Subject::Device, crate::model::Quantity::Temperature),
            Value::Float(22.0),
        );
        assert!(changes.count() > before, "a new reading woke the watchers");
    }

    /// Issue 15.2: a receiver's RF level changing on every sample (ten a second) woke every
    /// watcher of its state (the counter feed, the history, the API's room slots) on every
    /// sample. Its value is current in the state at once; the watchers hear of it at most
    /// once a second, at the flush after the second is up.
    #[tokio::test(start_paused = true)]
    async fn a_metered_value_wakes_the_watchers_at_most_once_a_second() {
        let (obs, _events) = observer();
        let changes = StateChanges::default();
        let mut obs = obs.with_changes(changes.clone());
        let mut rx = obs.state.subscribe();
        let rf = Point::channel(1, crate::model::Quantity::RfDbm);
        obs.metered_reading(rf.clone(), Value::Float(-45.0));
        obs.flush();
        assert!(
            rx.has_changed().unwrap(),
            "a point's first value is seen at once"
        );
        rx.mark_unchanged();
        let woken = changes.count();
        for i in 0..9 {
            tokio::time::advance(Duration::from_millis(100)).await;
            obs.metered_reading(rf.clone(), Value::Float(-44.0 - f64::from(i)));
            obs.flush();
            let value = obs.state.borrow().reading(&rf).map(|r| r.value.clone());
            assert_eq!(
                value,
                Some(Value::Float(-44.0 - f64::from(i))),
                "kept current"
            );
        }
        assert!(
            !rx.has_changed().unwrap(),
            "nine new values in 0.9 s woke no one"
        );
        assert_eq!(changes.count(), woken);
        tokio::time::advance(Duration::from_millis(100)).await;
        obs.metered_reading(rf.clone(), Value::Float(-30.0));
        obs.flush();
        assert!(rx.has_changed().unwrap(), "the second is up: one wake");
        assert_eq!(changes.count(), woken + 1);
        rx.mark_unchanged();
        // The same value again changes nothing to publish.
        tokio::time::advance(Duration::from_secs(5)).await;
        obs.metered_reading(rf, Value::Float(-30.0));
        obs.flush();
        assert!(!rx.has_changed().unwrap());
    }

    fn names(rx: &mut crate::events::EventSink) -> Vec<String> {
        let mut v = Vec::new();
        while let Ok(e) = rx.try_recv() {
            match &e.kind {
                EventKind::FaultRaised { fault, .. } => {
                    v.push(format!("raised {} {:?}", fault.code, fault.severity))
                }
                EventKind::FaultCleared { fault, .. } => v.push(format!("cleared {}", fault.code)),
                _ => {}
            }
        }
        v
    }

    #[tokio::test]
    async fn fault_sets_per_source_raise_escalate_and_clear() {
        let (mut o, mut rx) = observer();
        o.update(|s| s.reachable = true);
        o.contact();
        let low = |sev| Fault::new("battery_low", sev, "low").on("channel 1");
        o.faults("battery", vec![low(Severity::Warning)]);
        o.faults("link", vec![]);
        assert_eq!(names(&mut rx), ["raised battery_low Warning"]);
        // Same fault, same severity: nothing new.
        o.faults("battery", vec![low(Severity::Warning)]);
        assert!(names(&mut rx).is_empty());
        // Escalation is raised again; the first sighting is kept.
        let since = o.snapshot().faults[0].since;
        o.faults("battery", vec![low(Severity::Fault)]);
        assert_eq!(names(&mut rx), ["raised battery_low Fault"]);
        assert_eq!(o.snapshot().faults[0].since, since);
        assert_eq!(o.snapshot().health, crate::model::Health::Faulted);
        // Another source cannot clear it.
        o.faults("erst", vec![]);
        assert_eq!(o.snapshot().faults.len(), 1);
        o.faults("battery", vec![]);
        assert_eq!(names(&mut rx), ["cleared battery_low"]);
    }
}
