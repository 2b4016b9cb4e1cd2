//! The device actor: reconnect state machine, polling, paced commands, unsolicited input.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Mutex};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::comms::{CommsMonitor, CommsStage};
use super::CommandOutcome;
use crate::codec::ProtocolError;
use crate::driver::LinkError;
use crate::driver::{Driver, DriverError, Link, Observer, PollStep};
use crate::events::EventKind;
use crate::model::{DeviceCommand, Fault, Severity};
use crate::transport::{Backoff, LinkSpec};

/// What a caller asks of the actor and the place to put its outcome.
#[derive(Debug)]
pub struct CommandRequest {
    pub order: Order,
    pub reply: oneshot::Sender<CommandOutcome>,
}

impl CommandRequest {
    /// A request for `order`, boxed as the queues hold it (see `Fleet::spawn_with`), and
    /// where its outcome will come.
    pub fn boxed(order: Order) -> (Box<Self>, oneshot::Receiver<CommandOutcome>) {
        let (reply, outcome) = oneshot::channel();
        (Box::new(CommandRequest { order, reply }), outcome)
    }
}

/// A command for the device, or one for the actor itself.
#[derive(Debug, Clone, PartialEq)]
pub enum Order {
    Command(DeviceCommand),
    /// End the session and start a new one now, without waiting for the backoff (the
    /// playbook's `reconnect` step). Done once the new session has read the device again.
    Reconnect,
}

/// Which queue a command waits in. Protection commands (a gain cut, a mute of an overdriven
/// zone) take the priority lane: they go before queued commands and between the steps of a
/// poll cycle, so they never wait behind a technician's queue or a DSP's 2×N poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Normal,
    Priority,
}

/// The actor's two command queues (kept by the supervisor across actor restarts).
pub(super) struct Queues {
    pub normal: mpsc::Receiver<Box<CommandRequest>>,
    pub priority: mpsc::Receiver<Box<CommandRequest>>,
}

/// Everything an actor needs besides its driver.
#[derive(Debug, Clone)]
pub struct ActorConfig {
    pub link: LinkSpec,
    pub poll_interval: Duration,
    pub command_gap: Duration,
    /// When silence is `comms_slow`, then `unreachable` (a driver may declare its own).
    pub comms: crate::model::CommsPolicy,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// The daemon's MQTT client, the bus of a topic device's link.
    pub mqtt: Option<crate::transport::mqtt::MqttHandle>,
    /// Told every completed write on the link (a benchmark's stamp); `None` in the daemon.
    pub on_write: Option<crate::driver::WriteHook>,
}

/// Reconnect is a state, not a loop (STYLE.md §4).
#[derive(Debug)]
enum Conn {
    Disconnected { retry_at: Instant },
    Connected,
}

pub(super) struct Actor {
    pub cfg: ActorConfig,
    pub driver: Box<dyn Driver>,
    pub obs: Observer,
    pub commands: Arc<Mutex<Queues>>,
    pub cancel: CancellationToken,
    /// `avwarden_poll_duration_seconds` of the driver's family, taken once so a poll's
    /// observation is lock- and allocation-free.
    polls: Arc<crate::metrics::Histogram>,
    /// `avwarden_poll_lag_seconds` of the family: how late each poll started.
    lags: Arc<crate::metrics::Histogram>,
    /// How many devices the fleet runs, read at each session start for the poll grid's phases.
    fleet_size: Arc<std::sync::atomic::AtomicUsize>,
}

impl Actor {
    pub(super) fn new(
        cfg: ActorConfig,
        driver: Box<dyn Driver>,
        obs: Observer,
        commands: Arc<Mutex<Queues>>,
        cancel: CancellationToken,
    ) -> Self {
        let polls = crate::metrics::poll_durations().family(driver.name());
        let lags = crate::metrics::poll_lags().family(driver.name());
        Self {
            cfg,
            driver,
            obs,
            commands,
            cancel,
            polls,
            lags,
            fleet_size: Arc::default(),
        }
    }

    /// Share the fleet's device count (the poll grid's phases follow it); alone, an actor is
    /// a fleet of one.
    pub(super) fn with_fleet_size(mut self, size: Arc<std::sync::atomic::AtomicUsize>) -> Self {
        self.fleet_size = size;
        self
    }

    pub(super) async fn run(mut self) {
        // The command queue outlives a crashed actor: the supervisor's next actor takes it over.
        let commands = self.commands.clone();
        let mut guard = commands.lock().await;
        let commands: &mut Queues = &mut guard;
        let mut link = super::link::for_spec(&self.cfg.link, self.cfg.mqtt.as_ref());
        link.set_write_hook(self.cfg.on_write.clone());
        let mut backoff = Backoff::new(self.cfg.backoff_min, self.cfg.backoff_max);
        let mut conn = Conn::Disconnected {
            retry_at: Instant::now(),
        };
        // When the device last heard from us (a poll or a command); `command_gap` keeps every
        // exchange at least that far from the previous one.
        let mut last_io = Instant::now()
            .checked_sub(self.cfg.command_gap)
            .unwrap_or_else(Instant::now);
        // Whoever asked for a reconnect hears how the next session start went.
        let mut reconnecting: Vec<oneshot::Sender<CommandOutcome>> = Vec::new();

        loop {
            match conn {
                Conn::Disconnected { retry_at } => {
                    tokio::select! {
                        biased;
                        _ = self.cancel.cancelled() => break,
                        req = commands.priority.recv() => match req {
                            Some(req) => { let _ = req.reply.send(CommandOutcome::Unreachable); }
                            None => break,
                        },
                        req = commands.normal.recv() => match req {
                            Some(req) if req.order == Order::Reconnect => {
                                // Asked for: try now instead of at the end of the backoff.
                                reconnecting.push(req.reply);
                                conn = Conn::Disconnected { retry_at: Instant::now() };
                            }
                            Some(req) => { let _ = req.reply.send(CommandOutcome::Unreachable); }
                            None => break,
                        },
                        _ = tokio::time::sleep_until(retry_at) => {
                            // A session start can take seconds (per-exchange projectors,
                            // lamp ignition): shutdown must not wait for it.
                            let cancel = self.cancel.clone();
                            let res = tokio::select! {
                                _ = cancel.cancelled() => break,
                                r = self.connect(&mut link) => r,
                            };
                            let outcome = match &res {
                                Ok(()) => CommandOutcome::Done { applied: None },
                                Err(e) => CommandOutcome::from_driver(Err(e), self.obs.now()),
                            };
                            for reply in reconnecting.drain(..) {
                                let _ = reply.send(outcome.clone());
                            }
                            conn = match res {
                                // The backoff is reset by the session's first good exchange,
                                // not by the connect: a device that floods garbage right after
                                // connecting is retried ever more slowly (issue 16.4).
                                Ok(()) => {
                                    last_io = Instant::now();
                                    Conn::Connected
                                }
                                Err(e) => {
                                    if let DriverError::Protocol(p) = &e {
                                        self.obs.bad_input(p);
                                    }
                                    self.link_down(&mut link, &mut backoff, &e)
                                }
                            };
                        }
                    }
                }
                Conn::Connected => {
                    conn = self
                        .connected(
                            &mut link,
                            &mut backoff,
                            commands,
                            &mut last_io,
                            &mut reconnecting,
                        )
                        .await;
                    if self.cancel.is_cancelled() {
                        break;
                    }
                }
            }
        }
        // Orderly end: let the driver switch off metering / unsubscribe, then drop the link.
        if link.is_open() {
            let close = self.driver.close(&mut link, &mut self.obs);
            let _ = tokio::time::timeout(Duration::from_secs(2), close).await;
        }
        link.disconnect();
    }

    /// Open the link, start a session and read everything before reporting the device up.
    async fn connect(&mut self, link: &mut Link) -> Result<(), DriverError> {
        link.connect().await?;
        self.driver.open(link, &mut self.obs).await?;
        let started = Instant::now();
        self.driver.read_all(link, &mut self.obs).await?;
        // The session's first full read is a poll too; counting it shows a family's latency
        // before its first poll interval has passed.
        self.polls.observe(started.elapsed());
        let now = self.obs.now();
        let peer = self.cfg.link.describe();
        self.obs
            .faults(crate::driver::observer::LINK_SOURCE, Vec::new());
        self.obs.update(|s| {
            s.reachable = true;
            s.contacted = true;
            s.last_contact = Some(now);
            s.link.up = true;
            s.link.since = Some(now);
            s.link.last_error = None;
            s.link.reconnect_attempts = 0;
        });
        self.obs.emit(EventKind::LinkUp {
            device: self.obs.device().clone(),
            room: self.obs.room().clone(),
            peer,
        });
        Ok(())
    }

    fn link_down(&mut self, link: &mut Link, backoff: &mut Backoff, err: &DriverError) -> Conn {
        link.disconnect();
        // Unreachable says it all; a lost meter or slow comms of a device that is gone is no
        // extra news. The next session starts with no meter seen (a new actor starts with a
        // new observer).
        self.obs.reset_metering();
        self.comms_slow(None);
        let delay = backoff.next_delay();
        let was_up = self.obs.snapshot().link.up;
        let attempts = backoff.attempts();
        let now = self.obs.now();
        let reason = err.to_string();
        if let DriverError::Auth(msg) = err {
            self.obs.faults(
                crate::driver::observer::LINK_SOURCE,
                vec![Fault::new(
                    "auth_failed",
                    Severity::Fault,
                    format!("authentication refused: {msg}; check the device password"),
                )],
            );
        }
        self.obs.update(|s| {
            if s.link.up || s.link.since.is_none() {
                s.link.since = Some(now);
            }
            s.reachable = false;
            s.busy = false;
            s.link.up = false;
            s.link.last_error = Some(reason.clone());
            s.link.reconnect_attempts = attempts;
            if was_up {
                s.counters.reconnects += 1;
            }
        });
        // Logged once per transition, not once per retry.
        if was_up || attempts == 1 {
            self.obs.emit(EventKind::LinkDown {
                device: self.obs.device().clone(),
                room: self.obs.room().clone(),
                reason,
                retry_in_ms: delay.as_millis() as u64,
            });
        }
        Conn::Disconnected {
            retry_at: Instant::now() + delay,
        }
    }

    async fn connected(
        &mut self,
        link: &mut Link,
        backoff: &mut Backoff,
        commands: &mut Queues,
        last_io: &mut Instant,
        reconnecting: &mut Vec<oneshot::Sender<CommandOutcome>>,
    ) -> Conn {
        // Polls fall on the fleet's shared grid, whenever this session started, and stay on
        // it: a poll that overran its interval skips to the next grid point instead of
        // shifting every later one (issue 15.1: devices polled in the same instant share the
        // runtime's wake-ups).
        let slots =
            super::phase::slots_for(self.fleet_size.load(std::sync::atomic::Ordering::Relaxed));
        let slot = (
            super::phase::slot_of(self.obs.device().as_str(), slots),
            slots,
        );
        let mut ticker = grid_ticker(self.obs.now(), self.cfg.poll_interval, slot);
        // Meters that stop arriving, and a device gone silent, are noticed between polls (a
        // poll may be 30 s away).
        let mut meter_check = grid_ticker(self.obs.now(), METER_CHECK, slot);
        let policy = self.obs.take_comms().unwrap_or(self.cfg.comms);
        // Readings are no longer current once the device is slow to answer.
        self.obs.quiet_after(policy.warn_after);
        let mut comms = CommsMonitor::new(policy, Instant::now());
        let mut heard = (link.bytes_in(), self.obs.last_contact());
        loop {
            // Order matters: commands before the poll tick, or a device whose polls take longer
            // than the interval (a silent projector) would never get a command through.
            let step = tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return Conn::Connected,
                req = commands.priority.recv() => {
                    let Some(req) = req else { return Conn::Connected };
                    Some(self.serve(link, req, &mut commands.priority, last_io, false).await)
                }
                req = commands.normal.recv() => {
                    let Some(req) = req else { return Conn::Connected };
                    if req.order == Order::Reconnect {
                        reconnecting.push(req.reply);
                        return self.restart_session(link).await;
                    }
                    Some(self.serve(link, req, &mut commands.priority, last_io, true).await)
                }
                // A tick that fell while the previous poll or a command still ran is dropped:
                // the next poll keeps to the grid instead of following that one at once.
                due = ticker.tick() => {
                    if *last_io > due {
                        None
                    } else {
                        // Lag against the schedule, before the command gap: the gap is pacing the
                        // device asked for, the rest is this actor or the runtime being late.
                        self.lags.observe(Instant::now().saturating_duration_since(due));
                        pace(*last_io + self.cfg.command_gap).await;
                        let started = Instant::now();
                        let res = self.poll_cycle(link, &mut commands.priority, last_io).await;
                        *last_io = Instant::now();
                        // A failed poll's time is its timeout, not the device's latency.
                        if res.is_ok() {
                            self.polls.observe(last_io.duration_since(started));
                        }
                        Some(res)
                    }
                }
                // A device polled at least this often is judged at every poll; without meters
                // the check would only add a wake-up per second (issue 15.1).
                _ = meter_check.tick(), if self.obs.is_metering() || self.cfg.poll_interval > METER_CHECK => {
                    self.obs.check_metering();
                    // Not an exchange: says nothing of the device, resets nothing; only the
                    // silence is judged below.
                    None
                }
                r = self.driver.listen(link, &mut self.obs) => Some(r),
            };
            // Refreshed instants reach the watchers once per step, not once per reading.
            self.obs.flush();
            // Every byte or message from the device is contact; silence is judged on every step
            // and every second.
            let now = Instant::now();
            let now_heard = (link.bytes_in(), self.obs.last_contact());
            if now_heard != heard {
                heard = now_heard;
                if comms.heard(now).is_some() {
                    self.comms_slow(None);
                }
            }
            match comms.check(now) {
                Some(CommsStage::Offline) => {
                    let secs = comms.silent_for(now).as_secs();
                    let e = DriverError::Link(LinkError::Silent { secs });
                    return self.link_down(link, backoff, &e);
                }
                Some(CommsStage::Slow) => self.comms_slow(Some(&comms)),
                Some(CommsStage::Ok) => self.comms_slow(None),
                None => {}
            }
            let Some(step) = step else { continue };
            match step {
                Ok(()) => backoff.reset(),
                Err(e) if e.is_link_failure() => return self.link_down(link, backoff, &e),
                Err(DriverError::Timeout { .. }) => {
                    self.obs.update(|s| s.counters.timeouts += 1);
                    link.discard_input();
                }
                // A stream past the frame limit is a peer sending without end: the link has
                // ended the session (issue 16.4). A datagram is bounded by itself, and its
                // link stays open: only that datagram was dropped.
                Err(DriverError::Protocol(p @ ProtocolError::Oversized { .. }))
                    if !link.is_open() =>
                {
                    self.obs.bad_input(&p);
                    return self.link_down(link, backoff, &DriverError::Protocol(p));
                }
                Err(DriverError::Protocol(p)) => {
                    self.obs.bad_input(&p);
                }
                // Nothing was sent: says nothing about the device.
                Err(DriverError::Rejected { .. }) => {}
                // Refusals and busy answers are the device talking: contact, counted above.
                Err(_) => {}
            }
        }
    }

    /// End the session for a reconnect asked for, and start the next one at once. The device
    /// is not reported unreachable for it: the next session decides that (a failed start goes
    /// through [`Actor::link_down`] like any other).
    async fn restart_session(&mut self, link: &mut Link) -> Conn {
        // An orderly end, as at shutdown: metering off, subscriptions ended.
        if link.is_open() {
            let close = self.driver.close(link, &mut self.obs);
            let _ = tokio::time::timeout(Duration::from_secs(2), close).await;
        }
        link.disconnect();
        self.obs.reset_metering();
        self.comms_slow(None);
        self.obs.update(|s| s.counters.reconnects += 1);
        Conn::Disconnected {
            retry_at: Instant::now(),
        }
    }

    /// Raise `comms_slow` (the device has been silent past its warning time) or clear it.
    fn comms_slow(&mut self, slow: Option<&CommsMonitor>) {
        let faults = match slow {
            None => Vec::new(),
            Some(m) => {
                let p = m.policy();
                vec![Fault::new(
                    COMMS_SLOW,
                    Severity::Warning,
                    format!(
                        "no answer for over {:.0} s; unreachable after {:.0} s of silence",
                        p.warn_after.as_secs_f64(),
                        p.offline_after.as_secs_f64()
                    ),
                )]
            }
        };
        self.obs.faults(COMMS_SOURCE, faults);
    }

    /// A command from a queue. A driver's `Refresh` that is one poll cycle runs step by step, so
    /// a priority command (a gain cut) goes between its exchanges instead of waiting behind a
    /// DSP's 2×N reads (the level watch asks for one before each restore step); any other
    /// command is one `execute`.
    async fn serve(
        &mut self,
        link: &mut Link,
        req: Box<CommandRequest>,
        priority: &mut mpsc::Receiver<Box<CommandRequest>>,
        last_io: &mut Instant,
        paced: bool,
    ) -> Result<(), DriverError> {
        if req.order != Order::Command(DeviceCommand::Refresh)
            || !self.driver.refresh_is_poll_cycle()
        {
            return self
                .run_command(link, req, last_io, paced, Some(priority))
                .await;
        }
        if paced {
            pace(*last_io + self.cfg.command_gap).await;
        }
        self.obs.take_applied();
        let res = self.poll_cycle(link, priority, last_io).await;
        *last_io = Instant::now();
        self.report_command(&DeviceCommand::Refresh, &res);
        let _ = req.reply.send(CommandOutcome::from_driver(
            res.as_ref().map(|()| None),
            self.obs.now(),
        ));
        res
    }

    /// Carry out one command and answer its caller. `paced` commands keep `command_gap` from
    /// the previous exchange (many devices drop commands that arrive back to back); a priority
    /// command does not wait for it. A read the driver lets be overtaken
    /// ([`Driver::command_can_be_overtaken`]) gives way to a command arriving on `priority`
    /// while it waits for its answer, and is repeated after it (issue 10: a gain cut does not
    /// wait behind the level read the level watch asked for before a restore step).
    async fn run_command(
        &mut self,
        link: &mut Link,
        req: Box<CommandRequest>,
        last_io: &mut Instant,
        paced: bool,
        mut priority: Option<&mut mpsc::Receiver<Box<CommandRequest>>>,
    ) -> Result<(), DriverError> {
        let Order::Command(command) = &req.order else {
            // The handle sends reconnects on the normal queue only, where they are taken
            // before this; one here ends nothing.
            let _ = req.reply.send(CommandOutcome::Rejected {
                reason: "a reconnect is not a priority command".to_owned(),
            });
            return Ok(());
        };
        if paced {
            pace(*last_io + self.cfg.command_gap).await;
        }
        self.obs.take_applied();
        let res = loop {
            let overtake = match priority.as_deref_mut() {
                Some(lane) if self.driver.command_can_be_overtaken(command) => lane,
                _ => break self.driver.execute(link, &mut self.obs, command).await,
            };
            let next = tokio::select! {
                biased;
                res = self.driver.execute(link, &mut self.obs, command) => Ok(res),
                Some(cut) = overtake.recv() => Err(cut),
            };
            let cut = match next {
                Ok(res) => break res,
                Err(cut) => cut,
            };
            // Its own failure is its caller's news; a link that failed under it ends this
            // command too.
            match Box::pin(self.run_command(link, cut, last_io, false, None)).await {
                Err(e) if e.is_link_failure() || matches!(e, DriverError::Timeout { .. }) => {
                    break Err(e)
                }
                _ => {}
            }
        };
        *last_io = Instant::now();
        self.report_command(command, &res);
        let applied = self.obs.take_applied();
        let _ = req.reply.send(CommandOutcome::from_driver(
            res.as_ref().map(|()| applied),
            self.obs.now(),
        ));
        res
    }

    /// One poll cycle, step by step; a priority command waiting goes between two steps.
    async fn poll_cycle(
        &mut self,
        link: &mut Link,
        priority: &mut mpsc::Receiver<Box<CommandRequest>>,
        last_io: &mut Instant,
    ) -> Result<(), DriverError> {
        loop {
            while let Ok(req) = priority.try_recv() {
                // The command's own failure is its caller's news; only a link that failed
                // under it ends the cycle.
                match self
                    .run_command(link, req, last_io, false, Some(priority))
                    .await
                {
                    Err(e) if e.is_link_failure() || matches!(e, DriverError::Timeout { .. }) => {
                        return Err(e)
                    }
                    _ => {}
                }
            }
            let step = if self.driver.poll_step_can_be_overtaken() {
                // A cut does not wait for the answer of the read in flight: the step is
                // dropped, the cut written, and the driver repeats the step afterwards.
                let next = tokio::select! {
                    biased;
                    step = self.driver.poll_step(link, &mut self.obs) => Ok(step),
                    Some(req) = priority.recv() => Err(req),
                };
                match next {
                    Ok(step) => step?,
                    Err(req) => {
                        match self
                            .run_command(link, req, last_io, false, Some(priority))
                            .await
                        {
                            Err(e)
                                if e.is_link_failure()
                                    || matches!(e, DriverError::Timeout { .. }) =>
                            {
                                return Err(e)
                            }
                            _ => {}
                        }
                        continue;
                    }
                }
            } else {
                self.driver.poll_step(link, &mut self.obs).await?
            };
            match step {
                PollStep::More => {}
                PollStep::Done => return Ok(()),
            }
        }
    }

    fn report_command(&mut self, command: &DeviceCommand, res: &Result<(), DriverError>) {
        let ok = res.is_ok();
        self.obs.update(|s| {
            if ok {
                s.counters.commands_ok += 1
            } else {
                s.counters.commands_failed += 1
            }
        });
        self.obs.emit(EventKind::CommandExecuted {
            device: self.obs.device().clone(),
            room: self.obs.room().clone(),
            command: command.name().to_owned(),
            outcome: match res {
                Ok(()) => "ok".to_owned(),
                Err(e) => e.to_string(),
            },
            ok,
        });
    }
}

/// Wait until `until` (the command gap's end). A gap that has passed already, as it has for
/// every poll of a device polled less often than its gap, costs no timer: a `Sleep` is
/// registered with the timer wheel and removed again even when its instant is past
/// (issue 15.1).
async fn pace(until: Instant) {
    if Instant::now() < until {
        tokio::time::sleep_until(until).await;
    }
}

/// A ticker of `period` on the shared grid in phase `slot` of `slots` ([`super::phase`]): its
/// first tick at the grid's next point after `now`, its missed ticks skipped so it stays on
/// the grid.
fn grid_ticker(
    now: chrono::DateTime<chrono::Utc>,
    period: Duration,
    (slot, slots): (u32, u32),
) -> tokio::time::Interval {
    let first = Instant::now() + super::phase::first_tick_in(now, period, slot, slots);
    let mut ticker = tokio::time::interval_at(first, period.max(Duration::from_millis(1)));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    ticker
}

/// The fault source and code of the comms monitor's warning stage.
pub const COMMS_SOURCE: &str = "comms";
pub const COMMS_SLOW: &str = "comms_slow";

/// How often a session looks for meters that stopped (three periods of silence).
const METER_CHECK: Duration = Duration::from_secs(1);
