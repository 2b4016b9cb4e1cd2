//! A PJLink projector simulator (protocols.md §1), product code used by tests, the demo and
//! `avwarden simulate`.
//!
//! It listens on TCP, greets every connection (with a fresh random when a password is set),
//! answers Class 1 and Class 2 commands, runs warm-up and cool-down in tokio time (so
//! paused-time tests are instant), counts lamp hours while the lamp is lit, and can be scripted
//! through [`PjlinkSim`]: ERST states, ERR4, garbage and oversized lines, lower-case replies,
//! CLSS quirks, hang-up after every reply, and stop/restart on the same port.
//!
//! It must not depend on the driver: it speaks only the wire format from `codec::pjlink`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::BytesMut;
use rand::Rng;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{bind_error, option_error, parse_options, SimBind, SimEndpoint, SimError};
use crate::clock::Clock;
use crate::codec::pjlink::{
    encode_greeting, encode_lamps, encode_response, md5_digest, parse_mute_param, parse_request,
    AvMute, Class, Command, ErrorStatus, Greeting, InputCode, LampStatus, LineDecoder, MuteTarget,
    PowerStatus, Request, Resolution, AUTH_FAILED_LINE, RANDOM_LEN,
};

/// Requests remembered for tests (the oldest are dropped).
const REQUEST_LOG_LEN: usize = 512;
/// Size of an injected oversized line: far past any sane limit, so a client must resync.
const OVERSIZED_LEN: usize = 4096;

/// What `CLSS ?` answers (protocols.md §1.4 quirks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClssQuirk {
    /// `2`
    #[default]
    Plain,
    /// `Class 2` (Optoma)
    ClassWord,
    /// `Version2` (BenQ)
    Version,
}

/// A simulated projector's fixed properties and initial state.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub password: Option<String>,
    pub class: Class,
    pub warm_up: Duration,
    pub cool_down: Duration,
    /// Initial hours per lamp; empty = a lamp-less model (`LAMP` answers ERR1).
    pub lamp_hours: Vec<u32>,
    /// Initial filter hours; `None` = no filter (`FILT` answers ERR1).
    pub filter_hours: Option<u32>,
    pub close_after_reply: bool,
    /// Close a session after this long without a request (projectors do after ~30 s,
    /// protocols.md §1.1). `None` keeps sessions open.
    pub idle_timeout: Option<Duration>,
    pub lower_case: bool,
    pub clss_quirk: ClssQuirk,
    pub manufacturer: String,
    pub model: String,
    pub name: String,
    pub serial: String,
    pub firmware: String,
    pub info: String,
    pub replacement_lamp: String,
    pub replacement_filter: String,
    pub inputs: Vec<InputCode>,
    pub power_on: bool,
    pub resolution: Resolution,
}

impl Default for SimConfig {
    fn default() -> Self {
        let code = |s: &str| InputCode::parse(s).unwrap_or_else(|_| unreachable!("valid code"));
        Self {
            password: None,
            class: Class::Two,
            // Suggested simulator defaults, protocols.md §1.6.
            warm_up: Duration::from_secs(30),
            cool_down: Duration::from_secs(60),
            lamp_hours: vec![1200],
            filter_hours: Some(800),
            close_after_reply: false,
            idle_timeout: None,
            lower_case: false,
            clss_quirk: ClssQuirk::Plain,
            manufacturer: "AVWARDEN".into(),
            model: "SIM-PJ2".into(),
            name: "simulated projector".into(),
            serial: "SIM0001".into(),
            firmware: "1.0.0".into(),
            info: String::new(),
            replacement_lamp: "SIM-LAMP-1".into(),
            replacement_filter: "SIM-FILTER-1".into(),
            inputs: ["11", "31", "32", "33"].iter().map(|s| code(s)).collect(),
            power_on: false,
            resolution: Resolution::Signal {
                horizontal: 1920,
                vertical: 1080,
            },
        }
    }
}

/// `[devices.simulator]` keys for a PJLink device (snake_case, as in the site config).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOptions {
    password: Option<String>,
    class: Option<u8>,
    warm_up_secs: Option<f64>,
    cool_down_secs: Option<f64>,
    lamp_hours: Option<Vec<u32>>,
    filter_hours: Option<u32>,
    close_after_reply: Option<bool>,
    idle_timeout_secs: Option<f64>,
    lower_case: Option<bool>,
    clss_quirk: Option<ClssQuirk>,
    manufacturer: Option<String>,
    model: Option<String>,
    name: Option<String>,
    serial: Option<String>,
    firmware: Option<String>,
    inputs: Option<Vec<String>>,
    power_on: Option<bool>,
}

impl SimConfig {
    /// Build from the site config's simulator table; unknown keys are errors.
    pub fn from_options(options: &toml::Table) -> Result<SimConfig, SimError> {
        let raw: RawOptions = parse_options(options)?;
        let mut c = SimConfig {
            password: raw.password,
            ..SimConfig::default()
        };
        if let Some(n) = raw.class {
            c.class = match n {
                1 => Class::One,
                2 => Class::Two,
                _ => return Err(option_error("class", "must be 1 or 2")),
            };
        }
        let secs = |key: &str, v: Option<f64>, d: Duration| -> Result<Duration, SimError> {
            match v {
                None => Ok(d),
                Some(s) if s.is_finite() && (0.0..=86_400.0).contains(&s) => {
                    Ok(Duration::from_secs_f64(s))
                }
                Some(_) => Err(option_error(key, "must be between 0 and 86400 seconds")),
            }
        };
        c.warm_up = secs("warm_up_secs", raw.warm_up_secs, c.warm_up)?;
        c.cool_down = secs("cool_down_secs", raw.cool_down_secs, c.cool_down)?;
        if raw.idle_timeout_secs.is_some() {
            c.idle_timeout = Some(secs(
                "idle_timeout_secs",
                raw.idle_timeout_secs,
                Duration::ZERO,
            )?);
        }
        if let Some(l) = raw.lamp_hours {
            if l.len() > crate::codec::pjlink::MAX_LAMPS {
                return Err(option_error("lamp_hours", "at most 8 lamps"));
            }
            c.lamp_hours = l;
        }
        if raw.filter_hours.is_some() {
            c.filter_hours = raw.filter_hours;
        }
        c.close_after_reply = raw.close_after_reply.unwrap_or(c.close_after_reply);
        c.lower_case = raw.lower_case.unwrap_or(c.lower_case);
        c.clss_quirk = raw.clss_quirk.unwrap_or(c.clss_quirk);
        c.power_on = raw.power_on.unwrap_or(c.power_on);
        for (field, v) in [
            (&mut c.manufacturer, raw.manufacturer),
            (&mut c.model, raw.model),
            (&mut c.name, raw.name),
            (&mut c.serial, raw.serial),
            (&mut c.firmware, raw.firmware),
        ] {
            if let Some(v) = v {
                *field = v;
            }
        }
        if let Some(inputs) = raw.inputs {
            c.inputs = inputs
                .iter()
                .map(|s| InputCode::parse(s).map_err(|e| option_error("inputs", e.to_string())))
                .collect::<Result<_, _>>()?;
        }
        Ok(c)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Standby,
    WarmingUp { until: Instant },
    On,
    CoolingDown { until: Instant },
}

/// The projector's mutable state. Time-dependent parts advance lazily from tokio time.
#[derive(Debug)]
struct State {
    cfg: SimConfig,
    phase: Phase,
    /// Lamp-lit seconds accumulated per lamp, on top of the configured hours.
    lamp_secs: Vec<f64>,
    filter_secs: f64,
    lit_since: Option<Instant>,
    input: InputCode,
    mute: AvMute,
    error_status: ErrorStatus,
    failure: bool,
    garbage: u32,
    oversized: u32,
    reply_delay: Duration,
    silent: bool,
    connections: Vec<Instant>,
    requests: VecDeque<String>,
}

impl State {
    fn new(cfg: SimConfig) -> State {
        let now = Instant::now();
        let lamps = cfg.lamp_hours.len();
        let input = cfg
            .inputs
            .first()
            .copied()
            .unwrap_or_else(|| InputCode::parse("31").unwrap_or_else(|_| unreachable!()));
        let mut s = State {
            phase: Phase::Standby,
            lamp_secs: vec![0.0; lamps],
            filter_secs: 0.0,
            lit_since: None,
            input,
            mute: AvMute::default(),
            error_status: ErrorStatus::default(),
            failure: false,
            garbage: 0,
            oversized: 0,
            reply_delay: Duration::ZERO,
            silent: false,
            connections: Vec::new(),
            requests: VecDeque::new(),
            cfg,
        };
        if s.cfg.power_on {
            s.phase = Phase::On;
            s.lit_since = Some(now);
        }
        s
    }

    /// Finish warm-up / cool-down whose time has come.
    fn settle(&mut self, now: Instant) {
        match self.phase {
            Phase::WarmingUp { until } if now >= until => self.phase = Phase::On,
            Phase::CoolingDown { until } if now >= until => self.phase = Phase::Standby,
            _ => {}
        }
    }

    fn power(&mut self, now: Instant) -> PowerStatus {
        self.settle(now);
        match self.phase {
            Phase::Standby => PowerStatus::Standby,
            Phase::WarmingUp { .. } => PowerStatus::WarmUp,
            Phase::On => PowerStatus::On,
            Phase::CoolingDown { .. } => PowerStatus::Cooling,
        }
    }

    fn lit_secs(&self, now: Instant) -> f64 {
        self.lit_since
            .map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64())
    }

    fn lamps(&self, now: Instant) -> Vec<LampStatus> {
        let lit = self.lit_secs(now);
        self.cfg
            .lamp_hours
            .iter()
            .zip(&self.lamp_secs)
            .map(|(&base, &acc)| LampStatus {
                hours: base.saturating_add(((acc + lit) / 3600.0) as u32),
                on: self.lit_since.is_some(),
            })
            .collect()
    }

    fn filter_hours(&self, now: Instant) -> Option<u32> {
        let lit = self.lit_secs(now);
        self.cfg
            .filter_hours
            .map(|b| b.saturating_add(((self.filter_secs + lit) / 3600.0) as u32))
    }

    fn light(&mut self, now: Instant) {
        if self.lit_since.is_none() {
            self.lit_since = Some(now);
        }
    }

    fn extinguish(&mut self, now: Instant) {
        let lit = self.lit_secs(now);
        for s in &mut self.lamp_secs {
            *s += lit;
        }
        self.filter_secs += lit;
        self.lit_since = None;
    }

    fn power_on(&mut self, now: Instant) -> &'static str {
        self.settle(now);
        match self.phase {
            Phase::Standby => {
                self.light(now);
                self.phase = if self.cfg.warm_up.is_zero() {
                    Phase::On
                } else {
                    Phase::WarmingUp {
                        until: now + self.cfg.warm_up,
                    }
                };
                "OK"
            }
            Phase::WarmingUp { .. } | Phase::On => "OK",
            // Vector 3: power on refused during cool-down (protocols.md §1.7).
            Phase::CoolingDown { .. } => "ERR3",
        }
    }

    fn power_off(&mut self, now: Instant) -> &'static str {
        self.settle(now);
        match self.phase {
            Phase::WarmingUp { .. } | Phase::On => {
                self.extinguish(now);
                self.phase = if self.cfg.cool_down.is_zero() {
                    Phase::Standby
                } else {
                    Phase::CoolingDown {
                        until: now + self.cfg.cool_down,
                    }
                };
                "OK"
            }
            Phase::Standby | Phase::CoolingDown { .. } => "OK",
        }
    }

    fn log(&mut self, line: &[u8]) {
        if self.requests.len() >= REQUEST_LOG_LEN {
            self.requests.pop_front();
        }
        self.requests
            .push_back(String::from_utf8_lossy(line).into_owned());
    }

    /// The reply parameter for one request, as this projector would answer it.
    fn answer(&mut self, req: &Request, now: Instant) -> String {
        let class2 = self.cfg.class == Class::Two;
        if req.class == Class::Two && !class2 {
            return "ERR1".into();
        }
        let on = self.power(now) == PowerStatus::On;
        let query = req.param == "?";
        let p = req.param.as_str();
        let r: String = match req.command {
            Command::POWR if self.failure => "ERR4".into(),
            Command::POWR => match p {
                "?" => self.power(now).code().into(),
                "1" => self.power_on(now).into(),
                "0" => self.power_off(now).into(),
                _ => "ERR2".into(),
            },
            // INPT/AVMT while not on: "unavailable time" (protocols.md §1.6).
            Command::INPT | Command::AVMT if self.failure => "ERR4".into(),
            Command::INPT | Command::AVMT if !on => "ERR3".into(),
            Command::INPT if query => self.input.to_string(),
            Command::INPT => match InputCode::parse(p) {
                Ok(code)
                    if self.cfg.inputs.contains(&code)
                        && (req.class == Class::Two || !code.needs_class2()) =>
                {
                    self.input = code;
                    "OK".into()
                }
                _ => "ERR2".into(),
            },
            Command::AVMT if query => self.mute.encode().into(),
            Command::AVMT => match parse_mute_param(p) {
                Ok((target, m)) => {
                    match target {
                        MuteTarget::Video => self.mute.video = m,
                        MuteTarget::Audio => self.mute.audio = m,
                        MuteTarget::Both => {
                            self.mute.video = m;
                            self.mute.audio = m;
                        }
                    }
                    "OK".into()
                }
                Err(_) => "ERR2".into(),
            },
            Command::SVOL | Command::MVOL | Command::FREZ
                if class2 && req.class == Class::Two && (p == "0" || p == "1") =>
            {
                "OK".into()
            }
            _ if !query && req.command != Command::INNM => "ERR1".into(),
            Command::ERST => self.error_status.encode(),
            Command::LAMP if self.cfg.lamp_hours.is_empty() => "ERR1".into(),
            Command::LAMP => encode_lamps(&self.lamps(now)),
            Command::INST => self
                .cfg
                .inputs
                .iter()
                .filter(|c| req.class == Class::Two || !c.needs_class2())
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(" "),
            Command::NAME => self.cfg.name.clone(),
            Command::INF1 => self.cfg.manufacturer.clone(),
            Command::INF2 => self.cfg.model.clone(),
            Command::INFO => self.cfg.info.clone(),
            Command::CLSS => {
                let n = self.cfg.class.number();
                match self.cfg.clss_quirk {
                    ClssQuirk::Plain => n.to_string(),
                    ClssQuirk::ClassWord => format!("Class {n}"),
                    ClssQuirk::Version => format!("Version{n}"),
                }
            }
            // Class 2 only from here (protocols.md §1.5).
            _ if req.class != Class::Two => "ERR1".into(),
            Command::SNUM => self.cfg.serial.clone(),
            Command::SVER => self.cfg.firmware.clone(),
            Command::FILT => self
                .filter_hours(now)
                .map_or_else(|| "ERR1".into(), |h| h.to_string()),
            Command::RLMP => self.cfg.replacement_lamp.clone(),
            Command::RFIL => self.cfg.replacement_filter.clone(),
            Command::IRES | Command::RRES if !on => "ERR3".into(),
            Command::IRES => self.cfg.resolution.encode(),
            Command::RRES => "1920x1080".into(),
            Command::INNM => match p.strip_prefix('?').map(InputCode::parse) {
                Some(Ok(code)) if self.cfg.inputs.contains(&code) => {
                    format!("{} {}", code.kind_name().to_ascii_uppercase(), code)
                }
                _ => "ERR2".into(),
            },
            Command::FREZ => "0".into(),
            _ => "ERR1".into(),
        };
        r
    }
}

/// Lower-case the parts a sloppy firmware lower-cases: header, command and keywords; free text
/// keeps its case (protocols.md §1.4 quirks).
fn lower_reply(class: Class, command: Command, param: &str) -> Vec<u8> {
    let keyword = param.eq_ignore_ascii_case("OK") || param.to_ascii_uppercase().starts_with("ERR");
    let param = if keyword {
        param.to_ascii_lowercase()
    } else {
        param.to_owned()
    };
    let mut out = encode_response(class, command, &param);
    out[2..6].make_ascii_lowercase();
    out
}

struct Running {
    cancel: CancellationToken,
    tracker: TaskTracker,
}

struct Inner {
    addr: SocketAddr,
    state: Mutex<State>,
    running: Mutex<Option<Running>>,
    /// Stops everything, including a restarted listener.
    root: CancellationToken,
    /// Connections accepted so far, for tests that wait for a reconnect.
    accepted: tokio::sync::watch::Sender<usize>,
}

/// Control handle of a running simulated projector. Cheap to clone.
#[derive(Clone)]
pub struct PjlinkSim {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PjlinkSim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PjlinkSim")
            .field("addr", &self.inner.addr)
            .finish()
    }
}

fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // The restarted projector takes its old port back while old sessions sit in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(64)
}

impl PjlinkSim {
    /// Start listening on `bind` (port 0 = any free port). Runs until `cancel` fires.
    pub async fn start(
        cfg: SimConfig,
        bind: SocketAddr,
        cancel: CancellationToken,
    ) -> std::io::Result<PjlinkSim> {
        let listener = bind_listener(bind)?;
        let addr = listener.local_addr()?;
        let sim = PjlinkSim {
            inner: Arc::new(Inner {
                addr,
                state: Mutex::new(State::new(cfg)),
                running: Mutex::new(None),
                root: cancel,
                accepted: tokio::sync::watch::Sender::new(0),
            }),
        };
        sim.run(listener);
        Ok(sim)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a test thread panicked mid-update; the data is still usable.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn run(&self, listener: TcpListener) {
        let cancel = self.inner.root.child_token();
        let tracker = TaskTracker::new();
        let sim = self.clone();
        let (c, t) = (cancel.clone(), tracker.clone());
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    _ = c.cancelled() => break,
                    acc = listener.accept() => match acc {
                        Ok((stream, peer)) => {
                            let _ = stream.set_nodelay(true);
                            sim.state().connections.push(Instant::now());
                            sim.inner.accepted.send_modify(|n| *n += 1);
                            tracing::debug!(%peer, "pjlink sim: connection");
                            let (sim, c) = (sim.clone(), c.clone());
                            t.spawn(async move { sim.serve(stream, c).await });
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "pjlink sim: accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            }
        });
        tracker.close();
        *self.inner.running.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Running { cancel, tracker });
    }

    /// Where the projector listens.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// "Kill the projector": close the listener and every open session, and wait until the
    /// port is free.
    pub async fn stop(&self) {
        let running = self
            .inner
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(r) = running {
            r.cancel.cancel();
            r.tracker.wait().await;
        }
    }

    /// Start listening again on the same address (after [`PjlinkSim::stop`]). The projector
    /// keeps its state, as a rebooted projector keeps its lamp hours.
    pub async fn restart(&self) -> std::io::Result<()> {
        self.stop().await;
        let listener = bind_listener(self.inner.addr)?;
        self.run(listener);
        Ok(())
    }

    pub fn is_running(&self) -> bool {
        self.inner
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    pub fn power(&self) -> PowerStatus {
        self.state().power(Instant::now())
    }

    pub fn lamps(&self) -> Vec<LampStatus> {
        self.state().lamps(Instant::now())
    }

    pub fn set_error_status(&self, e: ErrorStatus) {
        self.state().error_status = e;
    }

    /// ERR4 (projector failure) to POWR, INPT and AVMT while set.
    pub fn set_failure(&self, on: bool) {
        self.state().failure = on;
    }

    /// Put a line of garbage before each of the next `n` replies.
    pub fn inject_garbage(&self, n: u32) {
        self.state().garbage += n;
    }

    /// Put a 4 KiB line before each of the next `n` replies.
    pub fn inject_oversized(&self, n: u32) {
        self.state().oversized += n;
    }

    pub fn set_lower_case(&self, on: bool) {
        self.state().cfg.lower_case = on;
    }

    pub fn set_close_after_reply(&self, on: bool) {
        self.state().cfg.close_after_reply = on;
    }

    /// Close sessions idle for `d` (applies to sessions opened afterwards).
    pub fn set_idle_timeout(&self, d: Option<Duration>) {
        self.state().cfg.idle_timeout = d;
    }

    pub fn set_clss_quirk(&self, q: ClssQuirk) {
        self.state().cfg.clss_quirk = q;
    }

    pub fn set_password(&self, p: Option<String>) {
        self.state().cfg.password = p;
    }

    pub fn set_name(&self, name: &str) {
        self.state().cfg.name = name.to_owned();
    }

    /// Add to every lamp's hours (a lamp swapped for a worn one, or time fast-forwarded).
    pub fn add_lamp_hours(&self, hours: u32) {
        for h in &mut self.state().cfg.lamp_hours {
            *h = h.saturating_add(hours);
        }
    }

    /// Delay every reply (slow firmware).
    pub fn set_reply_delay(&self, d: Duration) {
        self.state().reply_delay = d;
    }

    /// Read requests but never answer (a hung projector).
    pub fn set_silent(&self, on: bool) {
        self.state().silent = on;
    }

    /// Instants (tokio time) of every accepted connection.
    pub fn connection_instants(&self) -> Vec<Instant> {
        self.state().connections.clone()
    }

    pub fn connections(&self) -> usize {
        self.state().connections.len()
    }

    /// Wait until `n` connections have been accepted since start.
    pub async fn wait_connections(&self, n: usize) {
        let mut rx = self.inner.accepted.subscribe();
        let _ = rx.wait_for(|c| *c >= n).await;
    }

    /// The request lines received (digest prefixes included), oldest first, at most 512.
    pub fn requests(&self) -> Vec<String> {
        self.state().requests.iter().cloned().collect()
    }

    pub fn clear_requests(&self) {
        self.state().requests.clear();
    }

    async fn serve(&self, mut stream: TcpStream, cancel: CancellationToken) {
        let (greeting, expect) = {
            let s = self.state();
            match &s.cfg.password {
                None => (Greeting::NoAuth, None),
                Some(pw) => {
                    let n: u32 = rand::thread_rng().gen();
                    let random = format!("{n:0width$x}", width = RANDOM_LEN);
                    let digest = md5_digest(&random, pw);
                    (Greeting::Md5 { random }, Some(digest))
                }
            }
        };
        let mut hello = encode_greeting(&greeting);
        if self.state().cfg.lower_case {
            hello.make_ascii_lowercase();
        }
        if stream.write_all(&hello).await.is_err() {
            return;
        }
        let mut authed = expect.is_none();
        // Far in the future when sessions never time out.
        let idle = self
            .state()
            .cfg
            .idle_timeout
            .unwrap_or(Duration::from_secs(86_400 * 365));
        let mut decoder = LineDecoder::requests();
        let mut buf = BytesMut::with_capacity(256);
        loop {
            let line = loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(line)) => break line,
                    Ok(None) => {}
                    // An over-long request is dropped, as a projector's fixed buffer would.
                    Err(_) => continue,
                }
                buf.reserve(256);
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(idle) => {
                        tracing::debug!("pjlink sim: idle session closed");
                        return;
                    }
                    r = stream.read_buf(&mut buf) => match r {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            };
            self.state().log(&line);
            let Ok(req) = parse_request(&line) else {
                continue;
            };
            if !authed {
                if req.digest.as_deref() == expect.as_deref() {
                    authed = true;
                } else {
                    // Vector 5 (protocols.md §1.7): the session is over.
                    let _ = stream.write_all(AUTH_FAILED_LINE).await;
                    return;
                }
            }
            let (out, delay, close) = {
                let mut s = self.state();
                if s.silent {
                    continue;
                }
                let param = s.answer(&req, Instant::now());
                let mut out = Vec::new();
                if s.garbage > 0 {
                    s.garbage -= 1;
                    out.extend_from_slice(b"\x00\xff\x1b[2J#@!garbage\xfe\r");
                }
                if s.oversized > 0 {
                    s.oversized -= 1;
                    out.extend(std::iter::repeat_n(b'X', OVERSIZED_LEN));
                    out.push(b'\r');
                }
                if s.cfg.lower_case {
                    out.extend(lower_reply(req.class, req.command, &param));
                } else {
                    out.extend(encode_response(req.class, req.command, &param));
                }
                (out, s.reply_delay, s.cfg.close_after_reply)
            };
            if !delay.is_zero() {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            if stream.write_all(&out).await.is_err() {
                return;
            }
            if close {
                let _ = stream.shutdown().await;
                return;
            }
        }
    }
}

/// Uniform entry for the demo and `avwarden simulate` (see [`super::spawn`]).
pub async fn spawn_from_config(
    options: &toml::Table,
    bind: SimBind,
    clock: Clock,
    cancel: CancellationToken,
) -> Result<SimEndpoint, SimError> {
    // Warm-up, cool-down and lamp hours run on tokio time, which `clock` follows too.
    let _ = clock;
    let sim = start_from_config(options, bind, cancel).await?;
    Ok(SimEndpoint::Tcp(sim.addr()))
}

/// As [`spawn_from_config`], keeping the control handle (the demo's scenario scripts it).
pub async fn start_from_config(
    options: &toml::Table,
    bind: SimBind,
    cancel: CancellationToken,
) -> Result<PjlinkSim, SimError> {
    let cfg = SimConfig::from_options(options)?;
    let SimBind::Tcp(addr) = bind else {
        return Err(bind_error("a PJLink projector listens on TCP"));
    };
    Ok(PjlinkSim::start(cfg, addr, cancel).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(line: &str) -> Request {
        parse_request(line.as_bytes()).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn warm_up_cool_down_and_lamp_hours_follow_tokio_time() {
        let mut s = State::new(SimConfig {
            lamp_hours: vec![100, 7],
            ..SimConfig::default()
        });
        let t = Instant::now();
        assert_eq!(s.answer(&req("%1POWR ?"), t), "0");
        assert_eq!(s.answer(&req("%1INPT 31"), t), "ERR3");
        assert_eq!(s.answer(&req("%1POWR 1"), t), "OK");
        assert_eq!(s.answer(&req("%1POWR ?"), t), "3");
        let t = t + Duration::from_secs(30);
        assert_eq!(s.answer(&req("%1POWR ?"), t), "1");
        assert_eq!(s.answer(&req("%1INPT 32"), t), "OK");
        assert_eq!(s.answer(&req("%1INPT 59"), t), "ERR2");
        let t = t + Duration::from_secs(2 * 3600 - 30);
        assert_eq!(s.answer(&req("%1LAMP ?"), t), "102 1 9 1");
        assert_eq!(s.answer(&req("%1POWR 0"), t), "OK");
        assert_eq!(s.answer(&req("%1POWR 1"), t), "ERR3");
        assert_eq!(s.answer(&req("%1POWR ?"), t), "2");
        let t = t + Duration::from_secs(3600);
        assert_eq!(s.answer(&req("%1POWR ?"), t), "0");
        assert_eq!(s.answer(&req("%1LAMP ?"), t), "102 0 9 0");
    }

    #[test]
    fn class_1_projector_refuses_class_2() {
        let mut s = State::new(SimConfig {
            class: Class::One,
            power_on: true,
            ..SimConfig::default()
        });
        let t = Instant::now();
        assert_eq!(s.answer(&req("%2SNUM ?"), t), "ERR1");
        assert_eq!(s.answer(&req("%1CLSS ?"), t), "1");
        s.cfg.clss_quirk = ClssQuirk::Version;
        assert_eq!(s.answer(&req("%1CLSS ?"), t), "Version1");
    }

    #[test]
    fn options_are_validated() {
        let t: toml::Table = toml::from_str(
            r#"password = "x"
class = 1
warm_up_secs = 5
lamp_hours = [10, 20]
inputs = ["11", "3A"]
lower_case = true"#,
        )
        .unwrap();
        let c = SimConfig::from_options(&t).unwrap();
        assert_eq!(c.class, Class::One);
        assert_eq!(c.lamp_hours, vec![10, 20]);
        assert_eq!(c.warm_up, Duration::from_secs(5));
        assert!(c.lower_case);
        for bad in [
            "class = 3",
            "colour = 1",
            "inputs = [\"99\"]",
            "warm_up_secs = -1",
        ] {
            let t: toml::Table = toml::from_str(bad).unwrap();
            assert!(SimConfig::from_options(&t).is_err(), "{bad}");
        }
    }
}
