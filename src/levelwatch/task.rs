//! The level watch's task: feeds the [`Controller`] of each DSP with meter frames (from the
//! meter stream) and the levels the device reports (from its state `watch`), ticks it so
//! blindness is noticed, and carries out its actions: gain and mute commands on the device's
//! priority lane, typed events, the over-limit counter, and the snapshot the API shows.
//!
//! It owns the command coalescing (per zone or mic at most one command in flight; a newer
//! target replaces a waiting one, so a cut never queues behind stale cuts) and nothing else:
//! every decision is the controller's. It must not decide from meters itself, block, or send
//! anything except through [`DeviceHandle`]s.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::controller::{Action, Controller, Input, MicSpec, ZoneSpec, ZoneView};
use crate::clock::Clock;
use crate::driver::dsp::zones::{self, LevelRange, Protect, Role};
use crate::events::{EventBus, EventKind};
use crate::meter::stream::MeterSample;
use crate::model::{DeviceCommand, DeviceId, DeviceState, Point, Quantity, Subject, Value};
use crate::profile::{DeviceKind, DriverKind, Profile};
use crate::records::{CounterUpdate, LogbookHandle};
use crate::runtime::{CommandOutcome, DeviceHandle};

/// Meter period when neither the site nor the profile names one (the DSP profiles ask for
/// 100 ms, the rate the level watch needs to see a clip).
const DEFAULT_METER_PERIOD: Duration = Duration::from_millis(100);

/// The zones' protection state per device, as the level watch last published it. Cheap to
/// clone; the API reads it.
#[derive(Debug, Clone, Default)]
pub struct ProtectionBoard {
    zones: Arc<RwLock<BTreeMap<DeviceId, BTreeMap<String, ZoneView>>>>,
    /// Counts the publications that changed a view, so the API's list snapshots can tell
    /// without a lock whether what they show is still current.
    changes: Arc<std::sync::atomic::AtomicU64>,
}

impl ProtectionBoard {
    /// Every protected zone of `device` with its state (empty: nothing protected there).
    pub fn zones(&self, device: &DeviceId) -> BTreeMap<String, ZoneView> {
        self.zones
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(device)
            .cloned()
            .unwrap_or_default()
    }

    /// How many publications changed a zone's view so far.
    pub fn changes(&self) -> u64 {
        self.changes.load(std::sync::atomic::Ordering::Acquire)
    }

    fn publish(&self, device: &DeviceId, c: &Controller) {
        let views: BTreeMap<String, ZoneView> = c
            .zones
            .iter()
            .map(|z| (z.spec.id.clone(), z.view()))
            .collect();
        let mut zones = self.zones.write().unwrap_or_else(|p| p.into_inner());
        if zones.get(device) != Some(&views) {
            zones.insert(device.clone(), views);
            // Under the write lock, so a reader that sees the new count sees the new view.
            self.changes
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
    }
}

/// A DSP the level watch protects: its handle and what to protect on it.
#[derive(Clone)]
pub struct WatchedDevice {
    pub handle: DeviceHandle,
    pub zones: Vec<ZoneSpec>,
    pub mics: Vec<MicSpec>,
    /// Its meters report changes only (a Q-SYS change group, protocols.md §4.2): a steady
    /// meter sends nothing, so while the device is reachable its last level still holds
    /// and is fed again each meter period; blind then means the device is unreachable.
    pub meters_on_change: bool,
}

impl WatchedDevice {
    /// What to protect on a device, from its profile's `[protection]` and its settings'
    /// `protect` keys: every zone and mic with a level control and a meter, unless it opts out
    /// (`protect = false`) or neither its profile nor its entry asks for protection. `None`
    /// when nothing is protected.
    pub fn from_settings(
        handle: DeviceHandle,
        profile: &Profile,
        settings: &toml::Table,
    ) -> Option<WatchedDevice> {
        if profile.kind != DeviceKind::Dsp {
            return None;
        }
        let meter_period = meter_period(profile, settings);
        let range = LevelRange {
            min_db: -100.0,
            max_db: 12.0,
        };
        let mut zones = Vec::new();
        let mut mics = Vec::new();
        for w in zones::watched(settings, range) {
            if !w.controlled {
                continue;
            }
            let policy = match (&w.protect, profile.protection) {
                (Protect::Off, _) | (Protect::Profile, None) => continue,
                (Protect::Profile, Some(p)) => p,
                (Protect::On(t), base) => {
                    // Checked key by key at start (the driver's parse); a combination that
                    // only fails against this profile's values keeps the profile's policy.
                    let base = base.unwrap_or_default();
                    match base.with_table(t, "protect") {
                        Ok(p) => p,
                        Err(e) => {
                            tracing::warn!(device = %handle.id, zone = %w.id, error = %e[0], "protect override not usable with the profile's policy; the profile's applies");
                            base
                        }
                    }
                }
            };
            match w.role {
                Role::Zone => zones.push(ZoneSpec {
                    id: w.id,
                    policy,
                    min_db: w.min_db,
                    meter_period,
                }),
                Role::Mic => mics.push(MicSpec {
                    id: w.id,
                    number: w.number,
                    policy,
                    min_db: w.min_db,
                    meter_period,
                }),
            }
        }
        (!zones.is_empty() || !mics.is_empty()).then_some(WatchedDevice {
            handle,
            zones,
            mics,
            meters_on_change: profile.driver == DriverKind::Qsys,
        })
    }
}

/// The DSP's meter period: the site's `meter_rate_ms` (Tesira) or `meter_rate_secs`
/// (Q-SYS), else the profile's, else [`DEFAULT_METER_PERIOD`].
fn meter_period(profile: &Profile, settings: &toml::Table) -> Duration {
    let number = |v: &toml::Value| v.as_float().or_else(|| v.as_integer().map(|i| i as f64));
    let lookup = |key: &str| {
        settings
            .get(key)
            .or_else(|| profile.options.get(key))
            .and_then(number)
    };
    let secs = lookup("meter_rate_ms")
        .map(|ms| ms / 1000.0)
        .or_else(|| lookup("meter_rate_secs"));
    secs.filter(|s| s.is_finite() && (0.005..=60.0).contains(s))
        .map_or(DEFAULT_METER_PERIOD, Duration::from_secs_f64)
}

/// What a command sets, for coalescing: one in flight per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    ZoneLevel(usize),
    ZoneMute(usize),
    MicGain(usize),
    /// A read of the zone's level before a restore step (one exchange; one per zone at a
    /// time).
    CheckLevel(usize),
}

/// One gain command's way through the level watch, for a benchmark's breakdown of the time
/// from a meter frame to the command on the wire.
#[derive(Debug, Clone)]
pub struct CutStamp {
    pub device: DeviceId,
    pub zone: String,
    pub db: f64,
    /// The instant of the input that decided it: a meter frame's `MeterSample.at`, or the
    /// tick's or the state's instant.
    pub input_at: DateTime<Utc>,
    /// When the level watch took the meter batch that frame came in (`None`: not a frame).
    pub taken_at: Option<DateTime<Utc>>,
    /// When the controller's action was carried out (the rest of the batch before it counts).
    pub decided_at: DateTime<Utc>,
    /// When the command was put on the device's priority lane (by the level watch's own
    /// task, right after the decision).
    pub handed_at: DateTime<Utc>,
}

/// Told every `SetLevel` the level watch sends at once (not one that waited behind the zone's
/// previous command). Unset in the daemon: a sent command pays one branch.
#[derive(Clone)]
pub struct CutProbe(pub Arc<dyn Fn(CutStamp) + Send + Sync>);

impl std::fmt::Debug for CutProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CutProbe")
    }
}

struct Device {
    handle: DeviceHandle,
    state: tokio::sync::watch::Receiver<DeviceState>,
    meters_on_change: bool,
    ctl: Controller,
    in_flight: HashMap<Key, DeviceCommand>,
    waiting: HashMap<Key, DeviceCommand>,
}

/// Start the level watch on `tasks`; it runs until `cancel`. Returns the board the API reads.
pub fn start(
    devices: Vec<WatchedDevice>,
    events: EventBus,
    logbook: Option<LogbookHandle>,
    clock: Clock,
    tasks: &TaskTracker,
    cancel: CancellationToken,
) -> ProtectionBoard {
    start_probed(devices, events, logbook, clock, tasks, cancel, None)
}

/// As [`start`], telling `probe` each level command it sends (the latency benchmark).
pub fn start_probed(
    devices: Vec<WatchedDevice>,
    events: EventBus,
    logbook: Option<LogbookHandle>,
    clock: Clock,
    tasks: &TaskTracker,
    cancel: CancellationToken,
    probe: Option<CutProbe>,
) -> ProtectionBoard {
    let board = ProtectionBoard::default();
    let (state_tx, state_rx) = mpsc::channel(64);
    for (i, d) in devices.iter().enumerate() {
        tasks.spawn(forward_state(
            i,
            d.handle.watch(),
            state_tx.clone(),
            cancel.clone(),
        ));
    }
    let now = clock.now();
    let period = devices
        .iter()
        .flat_map(|d| d.zones.iter().map(|z| z.meter_period))
        .min()
        .unwrap_or(DEFAULT_METER_PERIOD);
    let mut watch = Watch {
        devices: devices
            .into_iter()
            .map(|d| Device {
                state: d.handle.watch(),
                meters_on_change: d.meters_on_change,
                ctl: Controller::new(d.zones, d.mics, now),
                handle: d.handle,
                in_flight: HashMap::new(),
                waiting: HashMap::new(),
            })
            .collect(),
        index: HashMap::new(),
        events: events.clone(),
        logbook,
        clock,
        board: board.clone(),
        tasks: tasks.clone(),
        actions: Vec::new(),
        probe,
        taken_at: None,
        stamp: None,
    };
    watch.build_index();
    for (i, d) in watch.devices.iter().enumerate() {
        watch.board.publish(&d.handle.id, &watch.devices[i].ctl);
    }
    let meters = events.meters().subscribe("levelwatch");
    tasks.spawn(watch.run(meters, state_rx, period, cancel));
    board
}

/// Sends a device's reported levels and mutes of protected channels to the watch on every
/// state change.
async fn forward_state(
    device: usize,
    mut rx: tokio::sync::watch::Receiver<DeviceState>,
    tx: mpsc::Sender<(usize, DeviceState)>,
    cancel: CancellationToken,
) {
    loop {
        let state = rx.borrow_and_update().clone();
        if tx.send((device, state)).await.is_err() {
            return;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = rx.changed() => if r.is_err() { return },
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Channel {
    Zone(usize),
    Mic(usize),
}

struct Watch {
    devices: Vec<Device>,
    /// A metered subject's device and channel, looked up by reference (no key built per
    /// sample).
    index: HashMap<DeviceId, HashMap<Subject, (usize, Channel)>>,
    events: EventBus,
    logbook: Option<LogbookHandle>,
    clock: Clock,
    board: ProtectionBoard,
    tasks: TaskTracker,
    actions: Vec<Action>,
    probe: Option<CutProbe>,
    /// While a meter batch is decided, when it was taken (for the probe only).
    taken_at: Option<DateTime<Utc>>,
    /// The level command `act` is about to send, for the probe.
    stamp: Option<CutStamp>,
}

type Done = (usize, Key, CommandOutcome);

/// The outcome of a command on a device's priority lane, named by its device and key.
struct Reply {
    d: usize,
    key: Key,
    rx: oneshot::Receiver<CommandOutcome>,
}

impl Future for Reply {
    type Output = Done;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Done> {
        let this = &mut *self;
        Pin::new(&mut this.rx)
            .poll(cx)
            .map(|r| (this.d, this.key, r.unwrap_or(CommandOutcome::Stopped)))
    }
}

/// Commands in flight: at most one per device and key.
type Replies = FuturesUnordered<Reply>;

/// What woke the level watch's task.
enum Wake {
    Cancelled,
    Meters,
    /// Boxed: the state is large and comes rarely, meters often.
    State(usize, Box<DeviceState>),
    Done(Done),
    Tick,
}

impl Watch {
    fn build_index(&mut self) {
        for (d, dev) in self.devices.iter().enumerate() {
            for (i, z) in dev.ctl.zones.iter().enumerate() {
                self.index
                    .entry(dev.handle.id.clone())
                    .or_default()
                    .insert(Subject::zone(&z.spec.id), (d, Channel::Zone(i)));
            }
            for (i, m) in dev.ctl.mics.iter().enumerate() {
                self.index
                    .entry(dev.handle.id.clone())
                    .or_default()
                    .insert(Subject::input(&m.spec.id), (d, Channel::Mic(i)));
            }
        }
    }

    async fn run(
        mut self,
        mut meters: crate::meter::stream::MeterReceiver,
        mut states: mpsc::Receiver<(usize, DeviceState)>,
        period: Duration,
        cancel: CancellationToken,
    ) {
        let mut replies = Replies::new();
        let mut batch = Vec::new();
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let wake = tokio::select! {
                _ = cancel.cancelled() => Wake::Cancelled,
                () = meters.recv_into(&mut batch) => Wake::Meters,
                Some((d, state)) = states.recv() => Wake::State(d, Box::new(state)),
                Some(done) = replies.next(), if !replies.is_empty() => Wake::Done(done),
                _ = tick.tick() => Wake::Tick,
            };
            match wake {
                Wake::Cancelled => return,
                Wake::Meters => self.meters(&batch, &mut replies),
                Wake::State(d, state) => self.state(d, &state, &mut replies),
                Wake::Done((d, key, outcome)) => self.done(d, key, outcome, &mut replies),
                Wake::Tick => {
                    let now = self.clock.now();
                    for d in 0..self.devices.len() {
                        self.hold_steady_meters(d, now, &mut replies);
                        self.step(d, Input::Tick, now, &mut replies);
                        self.retry_waiting(d, &mut replies);
                        self.board
                            .publish(&self.devices[d].handle.id, &self.devices[d].ctl);
                    }
                }
            }
        }
    }

    fn meters(&mut self, batch: &[MeterSample], done: &mut Replies) {
        if self.probe.is_some() {
            self.taken_at = Some(self.clock.now());
        }
        for s in batch {
            let found = self
                .index
                .get(s.device.as_ref())
                .and_then(|m| m.get(&s.subject));
            let Some(&(d, ch)) = found else {
                continue;
            };
            let input = match ch {
                Channel::Zone(zone) => Input::ZoneMeter { zone, dbfs: s.dbfs },
                Channel::Mic(mic) => Input::MicMeter { mic, dbfs: s.dbfs },
            };
            // The frame's own instant: a batch that waited is judged by when it was measured.
            self.step(d, input, s.at, done);
        }
        self.taken_at = None;
    }

    /// A change-only device that is reachable: each protected zone's and mic's last level,
    /// again, when no frame came for a meter period.
    fn hold_steady_meters(&mut self, d: usize, now: DateTime<Utc>, done: &mut Replies) {
        let dev = &self.devices[d];
        if !dev.meters_on_change || !dev.state.borrow().reachable {
            return;
        }
        let due = |subject: Subject, period: Duration| {
            let level = dev.handle.meters().get(&subject)?;
            let period = chrono::TimeDelta::from_std(period).ok()?;
            (now - level.at >= period).then_some(level.dbfs)
        };
        let zones = dev.ctl.zones.iter().enumerate().filter_map(|(zone, z)| {
            due(Subject::zone(&z.spec.id), z.spec.meter_period)
                .map(|dbfs| Input::ZoneMeter { zone, dbfs })
        });
        let mics = dev.ctl.mics.iter().enumerate().filter_map(|(mic, m)| {
            due(Subject::input(&m.spec.id), m.spec.meter_period)
                .map(|dbfs| Input::MicMeter { mic, dbfs })
        });
        let held: Vec<Input> = zones.chain(mics).collect();
        for input in held {
            self.step(d, input, now, done);
        }
    }

    fn state(&mut self, d: usize, state: &DeviceState, done: &mut Replies) {
        let now = self.clock.now();
        let ctl = &self.devices[d].ctl;
        let mut inputs = Vec::new();
        let read = |subject: Subject, q: Quantity| {
            state
                .readings
                .get(&Point::new(subject, q))
                .map(|r| r.value.clone())
        };
        for (zone, z) in ctl.zones.iter().enumerate() {
            let s = Subject::zone(&z.spec.id);
            if let Some(Value::Float(db)) = read(s.clone(), Quantity::LevelDb) {
                inputs.push(Input::ZoneLevel { zone, db });
            }
            if let Some(Value::Bool(on)) = read(s, Quantity::Muted) {
                inputs.push(Input::ZoneMuted { zone, on });
            }
        }
        for (mic, m) in ctl.mics.iter().enumerate() {
            // A DSP mic input's fader is its gain (`input.ID.gain_db`).
            let s = Subject::input(&m.spec.id);
            if let Some(Value::Float(db)) = read(s.clone(), Quantity::GainDb) {
                inputs.push(Input::MicGain { mic, db });
            }
            if let Some(Value::Bool(on)) = read(s, Quantity::Muted) {
                inputs.push(Input::MicMuted { mic, on });
            }
        }
        for input in inputs {
            self.step(d, input, now, done);
        }
        self.board
            .publish(&self.devices[d].handle.id, &self.devices[d].ctl);
    }

    fn step(&mut self, d: usize, input: Input, now: DateTime<Utc>, done: &mut Replies) {
        let mut actions = std::mem::take(&mut self.actions);
        self.devices[d].ctl.step(input, now, &mut actions);
        let acted = !actions.is_empty();
        for a in actions.drain(..) {
            self.act(d, a, now, done);
        }
        self.actions = actions;
        if acted {
            self.board
                .publish(&self.devices[d].handle.id, &self.devices[d].ctl);
        }
    }

    fn act(&mut self, d: usize, action: Action, now: DateTime<Utc>, done: &mut Replies) {
        let dev = &self.devices[d];
        let device = dev.handle.id.clone();
        let room = dev.handle.room.clone();
        let zone_id = |z: usize| dev.ctl.zones[z].spec.id.clone();
        let mic_id = |m: usize| dev.ctl.mics[m].spec.id.clone();
        let kind = match action {
            Action::SetLevel { zone, db } => {
                let cmd = DeviceCommand::SetLevel {
                    zone: zone_id(zone),
                    db,
                };
                if self.probe.is_some() {
                    let decided_at = self.clock.now();
                    self.stamp = Some(CutStamp {
                        device,
                        zone: zone_id(zone),
                        db,
                        input_at: now,
                        taken_at: self.taken_at,
                        decided_at,
                        handed_at: decided_at,
                    });
                }
                return self.send(d, Key::ZoneLevel(zone), cmd, done);
            }
            Action::SetZoneMute { zone, on } => {
                let cmd = DeviceCommand::SetZoneMute {
                    zone: zone_id(zone),
                    on,
                };
                return self.send(d, Key::ZoneMute(zone), cmd, done);
            }
            Action::SetGain { mic, db } => {
                let cmd = DeviceCommand::SetGain {
                    channel: dev.ctl.mics[mic].spec.number,
                    db,
                };
                return self.send(d, Key::MicGain(mic), cmd, done);
            }
            Action::Engaged {
                zone,
                reason,
                peak_dbfs,
                level_before_db,
                level_after_db,
            } => EventKind::SpeakerProtectionEngaged {
                device,
                room,
                zone: zone_id(zone),
                reason: reason.as_str().to_owned(),
                peak_dbfs,
                level_before_db,
                level_after_db,
            },
            Action::Saturated { zone, peak_dbfs } => EventKind::SpeakerProtectionSaturated {
                device,
                room,
                zone: zone_id(zone),
                peak_dbfs,
            },
            Action::Released {
                zone,
                restored,
                peak_dbfs,
                duration,
                level_before_db,
                level_after_db,
                max_reduction_db,
                over_limit,
            } => {
                if let Some(logbook) = self.logbook.clone() {
                    let update =
                        CounterUpdate::zone_over_limit(&zone_id(zone), over_limit.as_secs_f64());
                    let device = device.clone();
                    self.tasks.spawn(async move {
                        if let Err(e) = logbook.counters(device.clone(), now, vec![update]).await {
                            tracing::warn!(%device, error = %e, "zone over-limit time not recorded");
                        }
                    });
                }
                EventKind::SpeakerProtectionReleased {
                    device,
                    room,
                    zone: zone_id(zone),
                    restored,
                    peak_dbfs,
                    duration_ms: duration.as_millis() as u64,
                    level_before_db,
                    level_after_db,
                    max_reduction_db,
                    over_limit_ms: over_limit.as_millis() as u64,
                }
            }
            Action::CheckLevel { zone } => {
                // One control, not a `Refresh`: on the priority lane a read of every control
                // would make the next zone's cut wait behind it.
                let cmd = DeviceCommand::ReadZoneLevel {
                    zone: zone_id(zone),
                };
                return self.send(d, Key::CheckLevel(zone), cmd, done);
            }
            Action::ManualChange { zone, level_db } => EventKind::ZoneLevelSetByPerson {
                device,
                room,
                zone: zone_id(zone),
                level_db,
            },
            Action::FeedbackSuspected {
                zone,
                mic,
                rise_db,
                gain_before_db,
                gain_after_db,
            } => EventKind::FeedbackSuspected {
                device,
                room,
                zone: zone_id(zone),
                mic: mic_id(mic),
                rise_db,
                gain_before_db,
                gain_after_db,
            },
            Action::InputClipping {
                mic,
                peak_dbfs,
                gain_before_db,
                gain_after_db,
            } => EventKind::InputClipping {
                device,
                room,
                mic: mic_id(mic),
                peak_dbfs,
                gain_before_db,
                gain_after_db,
            },
            Action::MeteringLost { zone } => EventKind::ZoneMeteringLost {
                device,
                room,
                zone: zone_id(zone),
            },
            Action::MeteringBack { zone } => EventKind::ZoneMeteringRestored {
                device,
                room,
                zone: zone_id(zone),
            },
        };
        self.events.emit(now, kind);
    }

    /// Send at once when nothing is in flight for `key`; otherwise wait, replacing any older
    /// waiting target (only the newest matters).
    fn send(&mut self, d: usize, key: Key, cmd: DeviceCommand, done: &mut Replies) {
        let stamp = self.stamp.take();
        let dev = &mut self.devices[d];
        if dev.in_flight.contains_key(&key) {
            dev.waiting.insert(key, cmd);
            return;
        }
        // Onto the lane from this task: no task hop between the decision and the lane.
        match dev.handle.priority_send(cmd.clone()) {
            Ok(rx) => {
                if let Some((probe, mut stamp)) = self.probe.as_ref().zip(stamp) {
                    stamp.handed_at = self.clock.now();
                    (probe.0)(stamp);
                }
                dev.in_flight.insert(key, cmd);
                done.push(Reply { d, key, rx });
            }
            // The target still stands; it goes again on the next tick (the lane is full now).
            Err(CommandOutcome::QueueFull) => {
                dev.waiting.insert(key, cmd);
            }
            Err(other) => {
                tracing::warn!(device = %dev.handle.id, command = cmd.name(), outcome = %other, "protection command not carried out");
            }
        }
    }

    fn done(&mut self, d: usize, key: Key, outcome: CommandOutcome, done: &mut Replies) {
        let dev = &mut self.devices[d];
        let Some(sent) = dev.in_flight.remove(&key) else {
            return;
        };
        match outcome {
            // What the read found, at once: the restore step waits for it, and an unchanged
            // state does not wake the state `watch`.
            CommandOutcome::Done { .. } if matches!(key, Key::CheckLevel(_)) => {
                let state = dev.handle.state();
                self.state(d, &state, done);
            }
            CommandOutcome::Done { .. } => {}
            // The lane was full: the target still stands unless a newer one waits; it goes
            // again on the next tick, not at once (the lane would still be full).
            CommandOutcome::QueueFull => {
                dev.waiting.entry(key).or_insert(sent);
                return;
            }
            other => {
                tracing::warn!(device = %dev.handle.id, command = sent.name(), outcome = %other, "protection command not carried out");
            }
        }
        if let Some(next) = self.devices[d].waiting.remove(&key) {
            self.send(d, key, next, done);
        }
    }

    fn retry_waiting(&mut self, d: usize, done: &mut Replies) {
        let keys: Vec<Key> = self.devices[d]
            .waiting
            .keys()
            .filter(|k| !self.devices[d].in_flight.contains_key(k))
            .copied()
            .collect();
        for key in keys {
            if let Some(cmd) = self.devices[d].waiting.remove(&key) {
                self.send(d, key, cmd, done);
            }
        }
    }
}
