//! The level watch's task and taps: feed the [`Controller`] of each DSP with its meter levels
//! (through the device's meter tap, in the driver's own call that read them, so a cut is on
//! the device's priority lane before its actor looks at the lane again) and the levels the
//! device reports (from its state `watch`), tick it so blindness is noticed, and carry out
//! its actions: gain and mute commands on the device's priority lane, typed events, the
//! over-limit counter, and the snapshot the API shows.
//!
//! It owns the command coalescing (per zone or mic at most one command in flight; a newer
//! target replaces a waiting one, so a cut never queues behind stale cuts) and nothing else:
//! every decision is the controller's. It must not decide from meters itself, block (a tap
//! runs inside a device's actor: only a short lock and non-blocking sends), or send anything
//! except through [`DeviceHandle`]s.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
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
    /// When the frame's level reached the level watch's tap (`None`: not a frame).
    pub taken_at: Option<DateTime<Utc>>,
    /// When the controller's action was carried out.
    pub decided_at: DateTime<Utc>,
    /// When the command was put on the device's priority lane (by the tap, right after the
    /// decision).
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

/// What every protected device's [`Core`] shares: where its events, records and command
/// outcomes go.
struct Ctx {
    events: EventBus,
    logbook: Option<LogbookHandle>,
    clock: Clock,
    board: ProtectionBoard,
    tasks: TaskTracker,
    probe: Option<CutProbe>,
    /// A command put on a lane, for the task to wait for its outcome.
    replies: mpsc::UnboundedSender<Reply>,
    cancel: CancellationToken,
}

/// One protected device's decisions and the commands they have out. Stepped under its lock
/// by the device's own driver for each meter level it reads (the tap, [`Core::sample`]) and
/// by the watch's task for ticks, reported levels and command outcomes.
struct Core {
    /// Its place in the task's list (replies name it).
    d: usize,
    handle: DeviceHandle,
    ctl: Controller,
    /// Where each metered subject of the device goes (looked up by reference).
    index: HashMap<Subject, Channel>,
    in_flight: HashMap<Key, DeviceCommand>,
    waiting: HashMap<Key, DeviceCommand>,
    actions: Vec<Action>,
    /// When the level being decided reached the level watch (for the probe only).
    taken_at: Option<DateTime<Utc>>,
    /// The level command `act` is about to send, for the probe.
    stamp: Option<CutStamp>,
}

struct Device {
    core: Arc<Mutex<Core>>,
    handle: DeviceHandle,
    state: tokio::sync::watch::Receiver<DeviceState>,
    meters_on_change: bool,
}

impl Device {
    fn core(&self) -> std::sync::MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }
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
    let (replies, new_replies) = mpsc::unbounded_channel();
    let ctx = Arc::new(Ctx {
        events,
        logbook,
        clock,
        board: board.clone(),
        tasks: tasks.clone(),
        probe,
        replies,
        cancel: cancel.clone(),
    });
    let devices: Vec<Device> = devices
        .into_iter()
        .enumerate()
        .map(|(d, w)| {
            let ctl = Controller::new(w.zones, w.mics, now);
            let mut index = HashMap::new();
            for (i, z) in ctl.zones.iter().enumerate() {
                index.insert(Subject::zone(&z.spec.id), Channel::Zone(i));
            }
            for (i, m) in ctl.mics.iter().enumerate() {
                index.insert(Subject::input(&m.spec.id), Channel::Mic(i));
            }
            let core = Core {
                d,
                handle: w.handle.clone(),
                ctl,
                index,
                in_flight: HashMap::new(),
                waiting: HashMap::new(),
                actions: Vec::new(),
                taken_at: None,
                stamp: None,
            };
            Device {
                core: Arc::new(Mutex::new(core)),
                state: w.handle.watch(),
                handle: w.handle,
                meters_on_change: w.meters_on_change,
            }
        })
        .collect();
    for dev in &devices {
        ctx.board.publish(&dev.handle.id, &dev.core().ctl);
        // The device's levels are decided in its driver's call that read them: no task hop
        // and no meter-stream consumer between a frame and its cut (issue 10).
        let (core, tap_ctx) = (dev.core.clone(), ctx.clone());
        dev.handle
            .meters()
            .set_tap(Some(Arc::new(move |subject: &Subject, dbfs, at| {
                if tap_ctx.cancel.is_cancelled() {
                    return;
                }
                let mut core = core.lock().unwrap_or_else(|p| p.into_inner());
                core.sample(&tap_ctx, subject, dbfs, at);
            })));
    }
    tasks.spawn(run(devices, ctx, new_replies, state_rx, period, cancel));
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
    Sent(Reply),
    /// Boxed: the state is large and comes rarely.
    State(usize, Box<DeviceState>),
    Done(Done),
    Tick,
}

/// The task: ticks (blindness, restores, held levels of change-only meters), reported levels,
/// and the outcomes of the commands the cores sent. Meter levels never pass through it.
async fn run(
    devices: Vec<Device>,
    ctx: Arc<Ctx>,
    mut sent: mpsc::UnboundedReceiver<Reply>,
    mut states: mpsc::Receiver<(usize, DeviceState)>,
    period: Duration,
    cancel: CancellationToken,
) {
    let mut replies = Replies::new();
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let wake = tokio::select! {
            _ = cancel.cancelled() => Wake::Cancelled,
            Some(reply) = sent.recv() => Wake::Sent(reply),
            Some((d, state)) = states.recv() => Wake::State(d, Box::new(state)),
            Some(done) = replies.next(), if !replies.is_empty() => Wake::Done(done),
            _ = tick.tick() => Wake::Tick,
        };
        match wake {
            Wake::Cancelled => break,
            Wake::Sent(reply) => replies.push(reply),
            Wake::State(d, state) => devices[d].core().state(&ctx, &state),
            Wake::Done((d, key, outcome)) => devices[d].core().done(&ctx, key, outcome),
            Wake::Tick => {
                for dev in &devices {
                    let reachable = dev.meters_on_change && dev.state.borrow().reachable;
                    let mut core = dev.core();
                    let now = ctx.clock.now();
                    if reachable {
                        core.hold_steady_meters(&ctx, now);
                    }
                    core.step(&ctx, Input::Tick, now);
                    core.retry_waiting(&ctx);
                    ctx.board.publish(&core.handle.id, &core.ctl);
                }
            }
        }
    }
    // The taps hold the cores, the cores the devices' handles: end the cycle.
    for dev in &devices {
        dev.handle.meters().set_tap(None);
    }
}

impl Core {
    /// A level the device's driver has just read (the tap): decided at once, in its call.
    fn sample(&mut self, ctx: &Ctx, subject: &Subject, dbfs: f64, at: DateTime<Utc>) {
        let Some(&ch) = self.index.get(subject) else {
            return;
        };
        let input = match ch {
            Channel::Zone(zone) => Input::ZoneMeter { zone, dbfs },
            Channel::Mic(mic) => Input::MicMeter { mic, dbfs },
        };
        if ctx.probe.is_some() {
            self.taken_at = Some(ctx.clock.now());
        }
        // The frame's own instant.
        self.step(ctx, input, at);
        self.taken_at = None;
    }

    /// A change-only device that is reachable: each protected zone's and mic's last level,
    /// again, when no frame came for a meter period.
    fn hold_steady_meters(&mut self, ctx: &Ctx, now: DateTime<Utc>) {
        let board = self.handle.meters();
        let due = |subject: Subject, period: Duration| {
            let level = board.get(&subject)?;
            let period = chrono::TimeDelta::from_std(period).ok()?;
            (now - level.at >= period).then_some(level.dbfs)
        };
        let zones = self.ctl.zones.iter().enumerate().filter_map(|(zone, z)| {
            due(Subject::zone(&z.spec.id), z.spec.meter_period)
                .map(|dbfs| Input::ZoneMeter { zone, dbfs })
        });
        let mics = self.ctl.mics.iter().enumerate().filter_map(|(mic, m)| {
            due(Subject::input(&m.spec.id), m.spec.meter_period)
                .map(|dbfs| Input::MicMeter { mic, dbfs })
        });
        let held: Vec<Input> = zones.chain(mics).collect();
        for input in held {
            self.step(ctx, input, now);
        }
    }

    fn state(&mut self, ctx: &Ctx, state: &DeviceState) {
        let now = ctx.clock.now();
        let mut inputs = Vec::new();
        let read = |subject: Subject, q: Quantity| {
            state
                .readings
                .get(&Point::new(subject, q))
                .map(|r| r.value.clone())
        };
        for (zone, z) in self.ctl.zones.iter().enumerate() {
            let s = Subject::zone(&z.spec.id);
            if let Some(Value::Float(db)) = read(s.clone(), Quantity::LevelDb) {
                inputs.push(Input::ZoneLevel { zone, db });
            }
            if let Some(Value::Bool(on)) = read(s, Quantity::Muted) {
                inputs.push(Input::ZoneMuted { zone, on });
            }
        }
        for (mic, m) in self.ctl.mics.iter().enumerate() {
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
            self.step(ctx, input, now);
        }
        ctx.board.publish(&self.handle.id, &self.ctl);
    }

    fn step(&mut self, ctx: &Ctx, input: Input, now: DateTime<Utc>) {
        let mut actions = std::mem::take(&mut self.actions);
        self.ctl.step(input, now, &mut actions);
        let acted = !actions.is_empty();
        for a in actions.drain(..) {
            self.act(ctx, a, now);
        }
        self.actions = actions;
        if acted {
            ctx.board.publish(&self.handle.id, &self.ctl);
        }
    }

    fn act(&mut self, ctx: &Ctx, action: Action, now: DateTime<Utc>) {
        let device = self.handle.id.clone();
        let room = self.handle.room.clone();
        let zone_id = |z: usize| self.ctl.zones[z].spec.id.clone();
        let mic_id = |m: usize| self.ctl.mics[m].spec.id.clone();
        let kind = match action {
            Action::SetLevel { zone, db } => {
                let cmd = DeviceCommand::SetLevel {
                    zone: zone_id(zone),
                    db,
                };
                if ctx.probe.is_some() {
                    let decided_at = ctx.clock.now();
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
                return self.send(ctx, Key::ZoneLevel(zone), cmd);
            }
            Action::SetZoneMute { zone, on } => {
                let cmd = DeviceCommand::SetZoneMute {
                    zone: zone_id(zone),
                    on,
                };
                return self.send(ctx, Key::ZoneMute(zone), cmd);
            }
            Action::SetGain { mic, db } => {
                let cmd = DeviceCommand::SetGain {
                    channel: self.ctl.mics[mic].spec.number,
                    db,
                };
                return self.send(ctx, Key::MicGain(mic), cmd);
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
                if let Some(logbook) = ctx.logbook.clone() {
                    let update =
                        CounterUpdate::zone_over_limit(&zone_id(zone), over_limit.as_secs_f64());
                    let device = device.clone();
                    ctx.tasks.spawn(async move {
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
                return self.send(ctx, Key::CheckLevel(zone), cmd);
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
        ctx.events.emit(now, kind);
    }

    /// Send at once when nothing is in flight for `key`; otherwise wait, replacing any older
    /// waiting target (only the newest matters).
    fn send(&mut self, ctx: &Ctx, key: Key, cmd: DeviceCommand) {
        let stamp = self.stamp.take();
        if self.in_flight.contains_key(&key) {
            self.waiting.insert(key, cmd);
            return;
        }
        // Onto the lane from the deciding call: from a tap that is the device's own actor,
        // which looks at the lane as soon as its driver's read returns.
        match self.handle.priority_send(cmd.clone()) {
            Ok(rx) => {
                if let Some((probe, mut stamp)) = ctx.probe.as_ref().zip(stamp) {
                    stamp.handed_at = ctx.clock.now();
                    (probe.0)(stamp);
                }
                self.in_flight.insert(key, cmd);
                // The task is gone only when the watch ends; the command stands anyway.
                let _ = ctx.replies.send(Reply { d: self.d, key, rx });
            }
            // The target still stands; it goes again on the next tick (the lane is full now).
            Err(CommandOutcome::QueueFull) => {
                self.waiting.insert(key, cmd);
            }
            Err(other) => {
                tracing::warn!(device = %self.handle.id, command = cmd.name(), outcome = %other, "protection command not carried out");
            }
        }
    }

    fn done(&mut self, ctx: &Ctx, key: Key, outcome: CommandOutcome) {
        let Some(sent) = self.in_flight.remove(&key) else {
            return;
        };
        match outcome {
            // What the read found, at once: the restore step waits for it, and an unchanged
            // state does not wake the state `watch`.
            CommandOutcome::Done { .. } if matches!(key, Key::CheckLevel(_)) => {
                let state = self.handle.state();
                self.state(ctx, &state);
            }
            CommandOutcome::Done { .. } => {}
            // The lane was full: the target still stands unless a newer one waits; it goes
            // again on the next tick, not at once (the lane would still be full).
            CommandOutcome::QueueFull => {
                self.waiting.entry(key).or_insert(sent);
                return;
            }
            other => {
                tracing::warn!(device = %self.handle.id, command = sent.name(), outcome = %other, "protection command not carried out");
            }
        }
        if let Some(next) = self.waiting.remove(&key) {
            self.send(ctx, key, next);
        }
    }

    fn retry_waiting(&mut self, ctx: &Ctx) {
        let keys: Vec<Key> = self
            .waiting
            .keys()
            .filter(|k| !self.in_flight.contains_key(k))
            .copied()
            .collect();
        for key in keys {
            if let Some(cmd) = self.waiting.remove(&key) {
                self.send(ctx, key, cmd);
            }
        }
    }
}
