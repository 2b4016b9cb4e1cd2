//! The supervisor: starts one actor per device under the shutdown tree, restarts an actor that
//! crashed (panicked) within a restart budget, and hands out [`DeviceHandle`]s.
//!
//! The set of devices may change while the daemon runs (a config reload adds, removes or
//! restarts single devices), so the fleet hands out clones of handles, never references into
//! its map: a caller keeps what it was given for as long as it needs, and a removed device's
//! handle simply stops answering (its commands come back unreachable).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch, Mutex};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::actor::Queues;
use super::actor::{Actor, ActorConfig, CommandRequest, Order};
use super::CommandOutcome;
use crate::clock::Clock;
use crate::driver::{Driver, Observer, StateChanges};
use crate::events::{EventBus, EventKind};
use crate::meter::stream::MeterBoard;
use crate::model::{
    Capability, DeviceCommand, DeviceId, DeviceState, Fault, Quantity, RoomId, Severity,
};
use crate::profile::{Profile, ProfileError};
use crate::transport::LinkSpec;

/// Priority commands waiting at most (protection steps come one a frame, not in bulk).
const PRIORITY_DEPTH: usize = 8;

/// How many crashes an actor may have within `window` before the supervisor gives up on it
/// (the device then shows `faulted` with an `actor_crashed` fault; the daemon keeps running).
#[derive(Debug, Clone, Copy)]
pub struct RestartBudget {
    pub max_restarts: u32,
    pub window: Duration,
    pub delay: Duration,
}

impl Default for RestartBudget {
    fn default() -> Self {
        Self {
            max_restarts: 5,
            window: Duration::from_secs(600),
            delay: Duration::from_secs(1),
        }
    }
}

/// What the rest of the daemon holds of a device: its state and its command queue.
#[derive(Clone)]
pub struct DeviceHandle {
    pub id: DeviceId,
    /// The room the device serves.
    pub room: RoomId,
    /// Its profile, when started from one ([`Fleet::spawn_device`]): make, timing and what it
    /// can do.
    pub profile: Option<Arc<Profile>>,
    state: watch::Receiver<DeviceState>,
    commands: mpsc::Sender<Box<CommandRequest>>,
    priority: mpsc::Sender<Box<CommandRequest>>,
    meters: MeterBoard,
}

impl DeviceHandle {
    /// What the device can do, from its profile (nothing known without one).
    pub fn capabilities(&self) -> &[Capability] {
        self.profile.as_deref().map_or(&[], |p| &p.capabilities)
    }

    pub fn can(&self, capability: Capability) -> bool {
        self.capabilities().contains(&capability)
    }

    /// The quantities the device reports, by its profile: those of its capabilities, and
    /// those no capability owns (the warnings a receiver words itself). A test holds every
    /// shipped driver to publishing these and only these.
    pub fn quantities(&self) -> Vec<Quantity> {
        Quantity::ALL
            .iter()
            .copied()
            .filter(|q| self.declares(*q))
            .collect()
    }

    /// Whether the device's profile declares `quantity` (see [`DeviceHandle::quantities`]).
    pub fn declares(&self, quantity: Quantity) -> bool {
        quantity.capability().is_none_or(|c| self.can(c))
    }

    /// Whether the device takes `command` at all, by its profile (it may still refuse it
    /// now: busy, out of range). A consumer asks before sending; the driver agrees (a test
    /// holds every shipped profile to it).
    pub fn takes(&self, command: &DeviceCommand) -> bool {
        command.capability().is_none_or(|c| self.can(c))
    }

    /// The device's latest level per metered subject (kept off the state `watch`, which
    /// meters would wake on every frame).
    pub fn meters(&self) -> &MeterBoard {
        &self.meters
    }

    pub fn state(&self) -> DeviceState {
        self.state.borrow().clone()
    }

    /// Read what `read` needs of the current state without copying the whole of it; the
    /// state's writer waits while `read` runs, so keep it short and never await in it.
    pub fn with_state<R>(&self, read: impl FnOnce(&DeviceState) -> R) -> R {
        read(&self.state.borrow())
    }

    pub fn watch(&self) -> watch::Receiver<DeviceState> {
        self.state.clone()
    }

    /// Queue a command, waiting for room in the device's queue if need be, and wait for its
    /// outcome: done (with what it left on the device, when the driver knows it) or why not.
    pub async fn command(&self, command: DeviceCommand) -> CommandOutcome {
        let (req, rx) = CommandRequest::boxed(Order::Command(command));
        if self.commands.send(req).await.is_err() {
            return CommandOutcome::Stopped;
        }
        rx.await.unwrap_or(CommandOutcome::Stopped)
    }

    /// End the device's session and start a new one now, without waiting for the backoff
    /// (a stuck session, the playbook's `reconnect` step). Done once the new session has read
    /// the device again; unreachable (or why not) when it could not start. Queued behind the
    /// commands already waiting, so none of them is cut off.
    pub async fn reconnect(&self) -> CommandOutcome {
        let (req, rx) = CommandRequest::boxed(Order::Reconnect);
        if self.commands.send(req).await.is_err() {
            return CommandOutcome::Stopped;
        }
        rx.await.unwrap_or(CommandOutcome::Stopped)
    }

    /// [`DeviceHandle::command`] that never waits for queue space: `QueueFull` at once when
    /// the queue is full (a person clicking; they are told to retry).
    pub async fn try_command(&self, command: DeviceCommand) -> CommandOutcome {
        self.enqueue(&self.commands, command).await
    }

    /// A command on the priority lane (protection: a gain cut, a mute): it goes before the
    /// queued commands and between the steps of a poll cycle. Never waits for queue space.
    pub async fn priority_command(&self, command: DeviceCommand) -> CommandOutcome {
        match self.priority_send(command) {
            Ok(rx) => rx.await.unwrap_or(CommandOutcome::Stopped),
            Err(outcome) => outcome,
        }
    }

    /// [`DeviceHandle::priority_command`] without waiting: the command is on the priority
    /// lane when this returns, and its outcome comes on the receiver (a dropped sender is
    /// [`CommandOutcome::Stopped`]). `Err` is `QueueFull` or `Stopped`, nothing sent. The
    /// level watch sends cuts from its own task this way, so a cut does not wait for a task
    /// of its own to be scheduled before it reaches the lane.
    pub fn priority_send(
        &self,
        command: DeviceCommand,
    ) -> Result<oneshot::Receiver<CommandOutcome>, CommandOutcome> {
        let (req, rx) = CommandRequest::boxed(Order::Command(command));
        match self.priority.try_send(req) {
            Ok(()) => Ok(rx),
            Err(mpsc::error::TrySendError::Full(_)) => Err(CommandOutcome::QueueFull),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(CommandOutcome::Stopped),
        }
    }

    async fn enqueue(
        &self,
        queue: &mpsc::Sender<Box<CommandRequest>>,
        command: DeviceCommand,
    ) -> CommandOutcome {
        let (req, rx) = CommandRequest::boxed(Order::Command(command));
        match queue.try_send(req) {
            Ok(()) => rx.await.unwrap_or(CommandOutcome::Stopped),
            Err(mpsc::error::TrySendError::Full(_)) => CommandOutcome::QueueFull,
            Err(mpsc::error::TrySendError::Closed(_)) => CommandOutcome::Stopped,
        }
    }

    /// Wait until the device's state satisfies `pred` ("until the projector reports `on`",
    /// "until the setpoint reads back"), at most `deadline`. Checked at once, then on every
    /// state change.
    pub async fn wait_for(
        &self,
        mut pred: impl FnMut(&DeviceState) -> bool,
        deadline: Duration,
    ) -> Result<DeviceState, TimedOut> {
        let mut rx = self.state.clone();
        let waited = tokio::time::timeout(deadline, async {
            rx.wait_for(|s| pred(s)).await.map(|s| s.clone()).ok()
        })
        .await;
        match waited {
            Ok(Some(s)) => Ok(s),
            // Timed out, or the actor is gone for good (nothing more will be published).
            _ => Err(TimedOut { waited: deadline }),
        }
    }
}

/// [`DeviceHandle::wait_for`] gave up: the state never satisfied the predicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the device did not reach the state within {waited:?}")]
pub struct TimedOut {
    pub waited: Duration,
}

/// What the supervisor needs to run one configured device.
#[derive(Debug, Clone)]
pub struct DeviceSpec {
    pub id: DeviceId,
    pub room: RoomId,
    pub profile: Arc<Profile>,
    pub link: LinkSpec,
    /// Password or key, resolved from the environment or a file; never inline in config.
    pub secret: Option<String>,
    /// The device's `[devices.settings]` table from the site config, read by its driver.
    pub settings: toml::Table,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub queue_depth: usize,
    /// The daemon's MQTT client, for devices reached over MQTT (their driver holds it).
    pub mqtt: Option<crate::transport::mqtt::MqttHandle>,
    /// Told every completed write on the device's link (a benchmark's stamp of the last
    /// byte written); `None` in the daemon.
    pub on_write: Option<crate::driver::WriteHook>,
}

impl DeviceSpec {
    pub fn new(id: &str, room: &str, profile: Arc<Profile>, link: LinkSpec) -> Self {
        Self {
            id: DeviceId::new(id),
            room: RoomId::new(room),
            profile,
            link,
            secret: None,
            settings: toml::Table::new(),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            queue_depth: 16,
            mqtt: None,
            on_write: None,
        }
    }
}

/// Builds a device's driver afresh (after a crash the old one is gone with its task).
pub type DriverFactory = Box<dyn Fn() -> Box<dyn Driver> + Send + Sync>;

/// All device actors of the daemon.
pub struct Fleet {
    devices: std::sync::RwLock<Members>,
    events: EventBus,
    clock: Clock,
    tracker: TaskTracker,
    cancel: CancellationToken,
    budget: RestartBudget,
    /// Bumped when a device is added or removed: whoever watches every device's state (the
    /// API's list snapshots) re-reads the set.
    membership: std::sync::atomic::AtomicU64,
    /// Counted on every wake of any device's state (see [`StateChanges`]).
    changes: StateChanges,
    /// How many devices run: an actor cuts its poll grid into phases by it
    /// ([`super::phase::slots_for`]).
    size: Arc<std::sync::atomic::AtomicUsize>,
}

/// The running devices by id, and the same devices by room: asking for one room's devices
/// must not walk the building (the scheduler asks for every room on every pass).
#[derive(Default)]
struct Members {
    by_id: BTreeMap<DeviceId, Running>,
    by_room: BTreeMap<RoomId, BTreeSet<DeviceId>>,
}

impl Members {
    fn insert(&mut self, id: DeviceId, running: Running) -> Option<Running> {
        let room = running.handle.room.clone();
        let replaced = self.by_id.insert(id.clone(), running);
        if let Some(old) = &replaced {
            self.unindex(&old.handle.room, &id);
        }
        self.by_room.entry(room).or_default().insert(id);
        replaced
    }

    fn remove(&mut self, id: &DeviceId) -> Option<Running> {
        let running = self.by_id.remove(id)?;
        self.unindex(&running.handle.room, id);
        Some(running)
    }

    fn unindex(&mut self, room: &RoomId, id: &DeviceId) {
        if let Some(ids) = self.by_room.get_mut(room) {
            ids.remove(id);
            if ids.is_empty() {
                self.by_room.remove(room);
            }
        }
    }

    /// The handles of `room` that pass `keep`, in id order.
    fn room(&self, room: &RoomId, keep: impl Fn(&DeviceHandle) -> bool) -> Vec<DeviceHandle> {
        self.by_room.get(room).map_or_else(Vec::new, |ids| {
            ids.iter()
                .filter_map(|id| self.by_id.get(id))
                .map(|r| &r.handle)
                .filter(|h| keep(h))
                .cloned()
                .collect()
        })
    }
}

/// One device the fleet runs: its handle, the token that stops just this device, and the
/// signal that its supervisor (and so its actor, link and port) has finished.
struct Running {
    handle: DeviceHandle,
    stop: CancellationToken,
    done: oneshot::Receiver<()>,
}

impl Fleet {
    pub fn new(
        events: EventBus,
        clock: Clock,
        tracker: TaskTracker,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            devices: std::sync::RwLock::new(Members::default()),
            events,
            clock,
            tracker,
            cancel,
            budget: RestartBudget::default(),
            membership: Default::default(),
            size: Default::default(),
            changes: StateChanges::default(),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Members> {
        // A panic while the lock was held left the map itself whole (inserts and removes are
        // single calls), so the poison is not worth a second panic.
        self.devices.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Members> {
        self.devices.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn with_budget(mut self, budget: RestartBudget) -> Self {
        self.budget = budget;
        self
    }

    /// Start a device actor under supervision.
    pub fn spawn(
        &mut self,
        initial: DeviceState,
        cfg: ActorConfig,
        make_driver: DriverFactory,
        queue_depth: usize,
    ) -> DeviceHandle {
        self.spawn_with(initial, None, cfg, make_driver, queue_depth)
    }

    fn spawn_with(
        &self,
        initial: DeviceState,
        profile: Option<Arc<Profile>>,
        cfg: ActorConfig,
        make_driver: DriverFactory,
        queue_depth: usize,
    ) -> DeviceHandle {
        let id = initial.id.clone();
        let room = initial.room.clone();
        let (state_tx, state_rx) = watch::channel(initial);
        let state_tx = Arc::new(state_tx);
        // Requests queue boxed: tokio's `mpsc` allocates its first block of 32 slots with the
        // channel, and every device has two that stay empty nearly always; a slot the size of
        // a pointer instead of a whole request is 2.5 KiB less a device (issue 15.4).
        let (cmd_tx, normal) = mpsc::channel(queue_depth.max(1));
        let (priority_tx, priority) = mpsc::channel(PRIORITY_DEPTH);
        let cmd_rx = Arc::new(Mutex::new(Queues { normal, priority }));
        let board = MeterBoard::default();
        let handle = DeviceHandle {
            id: id.clone(),
            room,
            profile,
            state: state_rx,
            commands: cmd_tx,
            priority: priority_tx,
            meters: board.clone(),
        };
        let cancel = self.cancel.child_token();
        let (done_tx, done) = oneshot::channel::<()>();
        let replaced = self.write().insert(
            id.clone(),
            Running {
                handle: handle.clone(),
                stop: cancel.clone(),
                done,
            },
        );
        // After the insert: whoever sees the new membership finds the device.
        self.membership
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.size
            .store(self.len(), std::sync::atomic::Ordering::Relaxed);
        if let Some(old) = replaced {
            // Callers remove a device before starting it again; never leave one running unseen.
            old.stop.cancel();
        }

        let events = self.events.clone();
        let clock = self.clock;
        let budget = self.budget;
        let changes = self.changes.clone();
        let size = self.size.clone();
        let tracker = self.tracker.clone();
        self.tracker.spawn(async move {
            // Dropped when this supervisor ends, whichever way: tells `remove_device` it is gone.
            let _done = done_tx;
            let mut crashes: Vec<Instant> = Vec::new();
            loop {
                let obs = Observer::new(clock, state_tx.clone(), events.clone())
                    .with_board(board.clone())
                    .with_changes(changes.clone());
                let actor = Actor::new(
                    cfg.clone(),
                    make_driver(),
                    obs,
                    cmd_rx.clone(),
                    cancel.child_token(),
                )
                .with_fleet_size(size.clone());
                // The actor runs as its own task so that a panic is caught here as a JoinError.
                let res = tracker.spawn(actor.run()).await;
                let reason = match res {
                    Ok(()) => break, // cancelled: orderly stop
                    Err(e) if e.is_panic() => panic_message(e.into_panic()),
                    Err(e) => e.to_string(),
                };
                if cancel.is_cancelled() {
                    break;
                }
                let now = Instant::now();
                crashes.retain(|t| now.duration_since(*t) < budget.window);
                crashes.push(now);
                let (dev, room) = {
                    let s = state_tx.borrow();
                    (s.id.clone(), s.room.clone())
                };
                let restarts = crashes.len() as u32;
                // Whatever the crashed actor knew is no longer being kept up to date.
                changes.send_modify(&state_tx, |s| {
                    s.reachable = false;
                    s.link.up = false;
                    s.link.last_error = Some(format!("actor crashed: {reason}"));
                    s.refresh_health(clock.now());
                });
                if restarts > budget.max_restarts {
                    events.emit(
                        clock.now(),
                        EventKind::ActorGaveUp {
                            device: dev,
                            room,
                            restarts: restarts - 1,
                        },
                    );
                    let now = clock.now();
                    changes.send_modify(&state_tx, |s| {
                        s.faults.push(crate::model::ActiveFault {
                            fault: Fault::new(
                                "actor_crashed",
                                Severity::Fault,
                                format!("device handler keeps crashing ({reason}); restart the daemon after fixing"),
                            ),
                            since: now,
                            confirmed_at: now,
                            from_device: false,
                        });
                        s.refresh_health(now);
                    });
                    // Keep refusing commands so callers do not hang.
                    let mut guard = cmd_rx.lock().await;
                    let q = &mut *guard;
                    loop {
                        let r = tokio::select! {
                            _ = cancel.cancelled() => break,
                            r = q.priority.recv() => r,
                            r = q.normal.recv() => r,
                        };
                        match r {
                            Some(req) => {
                                let _ = req.reply.send(CommandOutcome::Unreachable);
                            }
                            None => break,
                        }
                    }
                    break;
                }
                events.emit(
                    clock.now(),
                    EventKind::ActorRestarted {
                        device: dev,
                        room,
                        restarts,
                        reason,
                    },
                );
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(budget.delay) => {}
                }
            }
        });
        handle
    }

    /// Start a device from its profile: the driver the profile names, the profile's timing.
    pub fn spawn_device(&mut self, spec: DeviceSpec) -> Result<DeviceHandle, ProfileError> {
        self.add_device(spec)
    }

    /// Start one more device while the fleet runs (a config reload). A device of the same id
    /// must have been removed first.
    pub fn add_device(&self, spec: DeviceSpec) -> Result<DeviceHandle, ProfileError> {
        // Build once now: a bad profile option is reported before anything runs, and every
        // actor (the first and any restarted one) gets a fresh copy of this one, its options
        // and settings parsed once.
        let built = crate::driver::for_profile(&spec.profile, spec.secret.clone(), &spec.settings)?;
        let prototype = std::sync::Mutex::new(built);
        let profile = spec.profile.clone();
        let secret = spec.secret.clone();
        let settings = spec.settings.clone();
        let factory: DriverFactory = Box::new(move || {
            let fresh = prototype.lock().unwrap_or_else(|p| p.into_inner()).fresh();
            fresh.unwrap_or_else(|| {
                crate::driver::for_profile(&profile, secret.clone(), &settings)
                    .expect("profile options were validated when the device was spawned")
            })
        });
        let t = &spec.profile.timing;
        let cfg = ActorConfig {
            link: spec.link.clone(),
            poll_interval: t.poll_interval,
            command_gap: t.command_gap,
            comms: t.comms(),
            backoff_min: spec.backoff_min,
            backoff_max: spec.backoff_max,
            mqtt: spec.mqtt.clone(),
            on_write: spec.on_write.clone(),
        };
        let initial = DeviceState::new(
            spec.id,
            spec.room,
            spec.profile.id.clone(),
            spec.link.describe(),
            self.clock.now(),
        );
        let profile = Some(spec.profile.clone());
        Ok(self.spawn_with(initial, profile, cfg, factory, spec.queue_depth))
    }

    /// Stop one device while the fleet runs and wait until its actor has finished its step and
    /// closed its link, so a restarted device never shares its port with the old one. False when
    /// no such device runs.
    pub async fn remove_device(&self, id: &DeviceId) -> bool {
        let Some(running) = self.write().remove(id) else {
            return false;
        };
        self.membership
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.size
            .store(self.len(), std::sync::atomic::Ordering::Relaxed);
        running.stop.cancel();
        let _ = running.done.await;
        true
    }

    /// Changes whenever a device is added or removed.
    pub fn membership(&self) -> u64 {
        self.membership.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Changes whenever any device's state wakes its watchers: one load instead of asking
    /// every device's `watch` whether it changed.
    pub fn state_changes(&self) -> u64 {
        self.changes.count()
    }

    pub fn get(&self, id: &str) -> Option<DeviceHandle> {
        self.read()
            .by_id
            .get(&DeviceId::new(id))
            .map(|r| r.handle.clone())
    }

    /// Every device's handle, in id order, as the fleet is now.
    pub fn handles(&self) -> impl Iterator<Item = DeviceHandle> {
        let all: Vec<DeviceHandle> = self
            .read()
            .by_id
            .values()
            .map(|r| r.handle.clone())
            .collect();
        all.into_iter()
    }

    /// Every room with at least one device, in order.
    pub fn rooms(&self) -> Vec<RoomId> {
        self.read().by_room.keys().cloned().collect()
    }

    /// The devices of `room`, in id order.
    pub fn room(&self, room: &RoomId) -> Vec<DeviceHandle> {
        self.read().room(room, |_| true)
    }

    /// The devices of `room` that can do `capability` ("the room's projectors": `Power` and
    /// `Lamp`; "its mic receivers": `Battery`).
    pub fn in_room_with(&self, room: &RoomId, capability: Capability) -> Vec<DeviceHandle> {
        self.read().room(room, |h| h.can(capability))
    }

    pub fn len(&self) -> usize {
        self.read().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().by_id.is_empty()
    }
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_owned()
    }
}
