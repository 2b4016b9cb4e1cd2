//! An Epson projector speaking ESC/VP21 on RS-232 (protocols.md §8), as product code: tests,
//! the demo and `avwarden simulate` use it.
//!
//! It owns the projector's behaviour — the `:` prompt, the null command, power states with
//! warm-up and cool-down, the long silence after `PWR ON` until the lamp ignites (with
//! injectable failed ignitions), lamp hours that advance while the lamp is lit, `ERR?` codes,
//! the silent abnormal state — and the serial line it is reached through: a real
//! pseudo-terminal whose master it holds, whose slave a driver opens like any serial port.
//! Faults are scriptable through [`Escvp21Sim`]: line noise, oversized lines, the cable pulled
//! (master closed) and plugged back in.
//!
//! The projector itself is a pure state machine ([`Projector`]: `(state, line, now) ->
//! (state, bytes)`), driven by one task that feeds it bytes, timer deadlines and control
//! requests. It must not know anything about drivers or the runtime.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::pty::PtyMaster;
use super::{bind_error, option_error, SimBind, SimEndpoint, SimError};
use crate::clock::Clock;
use crate::codec::escvp21::{PowerCode, CR, LF};
use crate::transport::ByteStream;

/// Longest command line the simulated projector buffers; longer lines answer `ERR`.
const MAX_COMMAND_LINE: usize = 64;
/// A write the other side does not drain within this time is dropped, as bytes sent down an
/// RS-232 line nobody listens to are lost: the projector never blocks on its serial port.
const WRITE_STALL: Duration = Duration::from_secs(2);

/// How the simulated projector behaves. Defaults follow protocols.md §8 and §1.6.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Warm-up after the lamp lit, reported as `PWR=02`.
    pub warm_up: Duration,
    /// Cool-down after `PWR OFF`, reported as `PWR=03`.
    pub cool_down: Duration,
    /// How long a successful lamp strike takes before the colon answers `PWR ON`.
    pub ignition: Duration,
    /// Window of the first ignition attempt (40 s, protocols.md §8).
    pub ignition_window: Duration,
    /// Window of each further attempt (30 s: the colon comes within 40, 70 or 100 s).
    pub ignition_retry: Duration,
    /// Ignition attempts before the projector declares a lamp failure.
    pub ignition_attempts: u32,
    pub lamp_hours: u32,
    pub serial: String,
    /// Start with the lamp on (otherwise in standby).
    pub power_on: bool,
    /// The code `ERR?` reports (0 = no error).
    pub error_code: u8,
    /// The next this many ignition attempts fail.
    pub failed_ignitions: u32,
    /// After a `SOURCE` change, further `SOURCE` commands answer `ERR` for this long (the input
    /// signal is changing, protocols.md §8).
    pub source_settle: Duration,
    /// The input selected at start.
    pub source: String,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            warm_up: Duration::from_secs(30),
            cool_down: Duration::from_secs(60),
            ignition: Duration::from_secs(8),
            ignition_window: Duration::from_secs(40),
            ignition_retry: Duration::from_secs(30),
            ignition_attempts: 3,
            lamp_hours: 1234,
            serial: "X4Y5Z6000123".to_owned(),
            power_on: false,
            error_code: 0,
            failed_ignitions: 0,
            source_settle: Duration::from_secs(2),
            source: "30".to_owned(),
        }
    }
}

/// Keys `[devices.simulator]` may hold for this simulator.
const OPTION_KEYS: &[&str] = &[
    "warm_up_secs",
    "cool_down_secs",
    "ignition_secs",
    "ignition_timeout_secs",
    "ignition_retry_secs",
    "failed_ignitions",
    "lamp_hours",
    "serial",
    "power_on",
    "error_code",
    "source",
    "source_settle_secs",
];

impl SimConfig {
    /// Read the simulator options of a site config (`[devices.simulator]`); unknown keys and
    /// bad values are errors. Keys: `warm_up_secs`, `cool_down_secs`, `ignition_secs`,
    /// `ignition_timeout_secs` / `ignition_retry_secs` (the attempt windows, 40/30),
    /// `failed_ignitions`, `lamp_hours`, `serial`, `power_on`, `error_code` (0–255 or two hex
    /// digits), `source` (two hex digits), `source_settle_secs`. Seconds may be fractional.
    pub fn from_options(options: &toml::Table) -> Result<SimConfig, SimError> {
        let mut cfg = SimConfig::default();
        for (key, value) in options {
            let bad = |message: String| option_error(key.as_str(), message);
            match key.as_str() {
                "warm_up_secs" => cfg.warm_up = secs(value).map_err(bad)?,
                "cool_down_secs" => cfg.cool_down = secs(value).map_err(bad)?,
                "ignition_secs" => cfg.ignition = secs(value).map_err(bad)?,
                "ignition_timeout_secs" => cfg.ignition_window = secs(value).map_err(bad)?,
                "ignition_retry_secs" => cfg.ignition_retry = secs(value).map_err(bad)?,
                "source_settle_secs" => cfg.source_settle = secs(value).map_err(bad)?,
                "failed_ignitions" => cfg.failed_ignitions = uint(value, 100).map_err(bad)?,
                "lamp_hours" => cfg.lamp_hours = uint(value, 999_999).map_err(bad)?,
                "power_on" => {
                    cfg.power_on = value
                        .as_bool()
                        .ok_or_else(|| bad("must be true or false".into()))?
                }
                "serial" => {
                    let s = value
                        .as_str()
                        .ok_or_else(|| bad("must be a string".into()))?;
                    if s.is_empty()
                        || s.len() > 32
                        || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    {
                        return Err(bad("must be 1 to 32 letters, digits or '-'".into()));
                    }
                    cfg.serial = s.to_owned();
                }
                "source" => {
                    let s = value
                        .as_str()
                        .ok_or_else(|| bad("must be a string".into()))?;
                    if s.len() != 2 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(bad("must be two hex digits, e.g. \"30\"".into()));
                    }
                    cfg.source = s.to_ascii_uppercase();
                }
                "error_code" => {
                    cfg.error_code = match value {
                        toml::Value::Integer(i) => u8::try_from(*i)
                            .map_err(|_| bad("must be 0 to 255 (or two hex digits)".into()))?,
                        toml::Value::String(s)
                            if s.len() == 2 && s.bytes().all(|b| b.is_ascii_hexdigit()) =>
                        {
                            u8::from_str_radix(s, 16)
                                .map_err(|_| bad("must be two hex digits".into()))?
                        }
                        _ => return Err(bad("must be 0 to 255 or two hex digits".into())),
                    }
                }
                _ => {
                    return Err(SimError::UnknownOption {
                        key: key.clone(),
                        known: OPTION_KEYS.iter().map(|k| (*k).to_owned()).collect(),
                    })
                }
            }
        }
        Ok(cfg)
    }
}

fn secs(v: &toml::Value) -> Result<Duration, String> {
    let f = match v {
        toml::Value::Integer(i) => *i as f64,
        toml::Value::Float(f) => *f,
        _ => return Err("must be a number of seconds".into()),
    };
    if !(f.is_finite() && (0.0..=86_400.0).contains(&f)) {
        return Err("must be between 0 and 86400 seconds".into());
    }
    Ok(Duration::from_secs_f64(f))
}

fn uint(v: &toml::Value, max: u32) -> Result<u32, String> {
    match v.as_integer() {
        Some(i) if (0..=i64::from(max)).contains(&i) => Ok(i as u32),
        _ => Err(format!("must be a whole number from 0 to {max}")),
    }
}

/// Where the projector is in its power cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Standby,
    /// `PWR ON` received; the colon is held back until the lamp lit.
    Igniting {
        attempt: u32,
        /// When the current attempt ends (lamp lit or attempt failed).
        ends: Instant,
        lights: bool,
    },
    WarmingUp {
        until: Instant,
    },
    On,
    CoolingDown {
        until: Instant,
    },
}

/// A snapshot of the simulated projector, for assertions.
#[derive(Debug, Clone, PartialEq)]
pub struct SimStatus {
    /// What `PWR?` would answer now.
    pub power: PowerCode,
    /// Holding back the colon of a `PWR ON` while the lamp strikes.
    pub igniting: bool,
    /// The ignition attempt in progress (1-based), 0 when not igniting.
    pub ignition_attempt: u32,
    /// Silent: executes nothing, answers nothing.
    pub abnormal: bool,
    pub lamp_hours: u32,
    pub error_code: u8,
    pub source: String,
    pub mute: bool,
    pub serial: String,
    /// The serial line is connected (pseudo-terminal master open).
    pub connected: bool,
    /// Command lines received (including the null command).
    pub lines_received: u64,
    pub last_line: Option<String>,
}

/// The simulated projector: pure state, advanced by lines and by time.
#[derive(Debug, Clone)]
pub struct Projector {
    cfg: SimConfig,
    phase: Phase,
    abnormal: bool,
    error_code: u8,
    failing_ignitions: u32,
    lamp_base_hours: u32,
    lamp_lit_since: Option<Instant>,
    lamp_accumulated: Duration,
    source: String,
    source_changed: Option<Instant>,
    mute: bool,
    lines_received: u64,
    last_line: Option<String>,
    /// Bytes put in front of every reply (line noise on the cable).
    reply_noise: Vec<u8>,
}

impl Projector {
    pub fn new(cfg: SimConfig, now: Instant) -> Self {
        let on = cfg.power_on;
        Self {
            phase: if on { Phase::On } else { Phase::Standby },
            abnormal: false,
            error_code: cfg.error_code,
            failing_ignitions: cfg.failed_ignitions,
            lamp_base_hours: cfg.lamp_hours,
            lamp_lit_since: on.then_some(now),
            lamp_accumulated: Duration::ZERO,
            source: cfg.source.clone(),
            source_changed: None,
            mute: false,
            lines_received: 0,
            last_line: None,
            reply_noise: Vec::new(),
            cfg,
        }
    }

    /// What `PWR?` answers.
    pub fn power_code(&self) -> PowerCode {
        match self.phase {
            Phase::Standby | Phase::Igniting { .. } => PowerCode::StandbyNetworkOn,
            Phase::WarmingUp { .. } => PowerCode::WarmUp,
            Phase::On => PowerCode::LampOn,
            Phase::CoolingDown { .. } => PowerCode::CoolDown,
        }
    }

    pub fn lamp_hours(&self, now: Instant) -> u32 {
        let lit = self.lamp_accumulated
            + self
                .lamp_lit_since
                .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        self.lamp_base_hours
            .saturating_add((lit.as_secs() / 3600).min(u64::from(u32::MAX)) as u32)
    }

    fn lamp_off(&mut self, now: Instant) {
        if let Some(t) = self.lamp_lit_since.take() {
            self.lamp_accumulated += now.saturating_duration_since(t);
        }
    }

    fn lamp_on(&mut self, now: Instant) {
        if self.lamp_lit_since.is_none() {
            self.lamp_lit_since = Some(now);
        }
    }

    /// The next instant at which time alone changes something.
    pub fn next_deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Igniting { ends, .. } => Some(ends),
            Phase::WarmingUp { until } | Phase::CoolingDown { until } => Some(until),
            Phase::Standby | Phase::On => None,
        }
    }

    /// Let time pass; returns the bytes the projector sends because of it (the colon once the
    /// lamp lit).
    pub fn advance(&mut self, now: Instant) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            match self.phase {
                Phase::Igniting {
                    attempt,
                    ends,
                    lights,
                } if now >= ends => {
                    if lights {
                        self.lit(ends);
                        out.push(b':');
                    } else {
                        self.failing_ignitions = self.failing_ignitions.saturating_sub(1);
                        if attempt >= self.cfg.ignition_attempts.max(1) {
                            // Three failed strikes: lamp failure, an abnormal state (protocols.md
                            // §8): the PWR ON never gets its colon.
                            self.phase = Phase::Standby;
                            self.abnormal = true;
                            self.error_code = 0x03;
                        } else {
                            self.phase = self.attempt(attempt + 1, ends);
                        }
                    }
                }
                Phase::WarmingUp { until } if now >= until => self.phase = Phase::On,
                Phase::CoolingDown { until } if now >= until => self.phase = Phase::Standby,
                _ => return out,
            }
        }
    }

    fn attempt(&self, attempt: u32, start: Instant) -> Phase {
        let window = if attempt <= 1 {
            self.cfg.ignition_window
        } else {
            self.cfg.ignition_retry
        };
        let lights = self.failing_ignitions == 0;
        let takes = if lights {
            self.cfg.ignition.min(window)
        } else {
            window
        };
        Phase::Igniting {
            attempt,
            ends: start + takes,
            lights,
        }
    }

    fn lit(&mut self, now: Instant) {
        self.lamp_on(now);
        self.phase = Phase::WarmingUp {
            until: now + self.cfg.warm_up,
        };
    }

    /// One command line (without its CR) arrives; returns what the projector sends back.
    pub fn on_line(&mut self, line: &str, now: Instant) -> Vec<u8> {
        let mut out = self.advance(now);
        self.lines_received += 1;
        self.last_line = Some(line.to_owned());
        if self.abnormal || matches!(self.phase, Phase::Igniting { .. }) {
            // Abnormal: executes nothing, sends nothing. Igniting: busy striking the lamp; the
            // PWR ON's colon is still owed and nothing else is taken meanwhile.
            return out;
        }
        let on = self.phase == Phase::On;
        let reply: Result<Option<String>, ()> = match line.trim_end() {
            "" => Ok(None),
            "PWR?" => Ok(Some(format!("PWR={}", self.power_code().code()))),
            "PWR ON" => match self.phase {
                Phase::Standby => {
                    self.phase = self.attempt(1, now);
                    return out;
                }
                Phase::CoolingDown { .. } => Err(()),
                _ => Ok(None),
            },
            "PWR OFF" => match self.phase {
                Phase::On => {
                    self.lamp_off(now);
                    self.mute = false;
                    self.phase = Phase::CoolingDown {
                        until: now + self.cfg.cool_down,
                    };
                    Ok(None)
                }
                // Executed only once the projector has fully started (protocols.md §8).
                Phase::WarmingUp { .. } => Err(()),
                _ => Ok(None),
            },
            "LAMP?" => Ok(Some(format!("LAMP={}", self.lamp_hours(now)))),
            "ERR?" => Ok(Some(format!("ERR={:02X}", self.error_code))),
            "SNO?" => Ok(Some(format!("SNO={}", self.cfg.serial))),
            "SOURCE?" if on => Ok(Some(format!("SOURCE={}", self.source))),
            "MUTE?" if on => Ok(Some(format!(
                "MUTE={}",
                if self.mute { "ON" } else { "OFF" }
            ))),
            "MUTE ON" if on => {
                self.mute = true;
                Ok(None)
            }
            "MUTE OFF" if on => {
                self.mute = false;
                Ok(None)
            }
            l if on && l.starts_with("SOURCE ") => {
                let code = &l["SOURCE ".len()..];
                let settling = self
                    .source_changed
                    .is_some_and(|t| now.saturating_duration_since(t) < self.cfg.source_settle);
                if settling || code.len() != 2 || !code.bytes().all(|b| b.is_ascii_hexdigit()) {
                    Err(())
                } else {
                    self.source = code.to_ascii_uppercase();
                    self.source_changed = Some(now);
                    Ok(None)
                }
            }
            // Unknown commands, and input/mute commands while the lamp is not on.
            _ => Err(()),
        };
        out.extend_from_slice(&self.reply_noise);
        match reply {
            Ok(Some(line)) => {
                out.extend_from_slice(line.as_bytes());
                out.push(CR);
            }
            Ok(None) => {}
            Err(()) => out.extend_from_slice(b"ERR\r"),
        }
        out.push(b':');
        out
    }

    pub fn status(&self, now: Instant, connected: bool) -> SimStatus {
        let (igniting, attempt) = match self.phase {
            Phase::Igniting { attempt, .. } => (true, attempt),
            _ => (false, 0),
        };
        SimStatus {
            power: self.power_code(),
            igniting,
            ignition_attempt: attempt,
            abnormal: self.abnormal,
            lamp_hours: self.lamp_hours(now),
            error_code: self.error_code,
            source: self.source.clone(),
            mute: self.mute,
            serial: self.cfg.serial.clone(),
            connected,
            lines_received: self.lines_received,
            last_line: self.last_line.clone(),
        }
    }

    pub fn set_error_code(&mut self, code: u8) {
        self.error_code = code;
    }

    /// Enter the abnormal state (the lamp goes out, nothing is answered), or leave it as after
    /// the technician power-cycled the projector (back in standby).
    pub fn set_abnormal(&mut self, abnormal: bool, now: Instant) {
        if abnormal {
            self.lamp_off(now);
            self.phase = Phase::Standby;
        } else if self.abnormal {
            self.phase = Phase::Standby;
        }
        self.abnormal = abnormal;
    }

    pub fn fail_next_ignitions(&mut self, n: u32) {
        self.failing_ignitions = n;
    }

    /// Finish the lamp strike in progress now, successfully; returns the bytes to send.
    pub fn light_lamp(&mut self, now: Instant) -> Vec<u8> {
        if let Phase::Igniting { .. } = self.phase {
            self.lit(now);
            vec![b':']
        } else {
            Vec::new()
        }
    }

    pub fn set_lamp_hours(&mut self, hours: u32, now: Instant) {
        self.lamp_base_hours = hours;
        self.lamp_accumulated = Duration::ZERO;
        if self.lamp_lit_since.is_some() {
            self.lamp_lit_since = Some(now);
        }
    }

    /// Put the projector straight into a steady power state (on or standby).
    pub fn set_power(&mut self, on: bool, now: Instant) {
        if on {
            self.lamp_on(now);
            self.phase = Phase::On;
        } else {
            self.lamp_off(now);
            self.phase = Phase::Standby;
        }
    }

    pub fn set_reply_noise(&mut self, noise: Vec<u8>) {
        self.reply_noise = noise;
    }
}

/// Accumulates command bytes into CR-ended lines, bounded.
#[derive(Debug, Default)]
struct LineBuf {
    line: Vec<u8>,
    overflow: bool,
}

impl LineBuf {
    /// Feed bytes; returns the complete lines. An overlong line comes back as `None` (the
    /// projector answers it with `ERR`).
    fn feed(&mut self, bytes: &[u8]) -> Vec<Option<String>> {
        let mut lines = Vec::new();
        for &b in bytes {
            match b {
                CR => {
                    let line = std::mem::take(&mut self.line);
                    if std::mem::take(&mut self.overflow) {
                        lines.push(None);
                    } else {
                        lines.push(Some(String::from_utf8_lossy(&line).into_owned()));
                    }
                }
                // Some controllers send CR LF; the LF is not part of the next command.
                LF => {}
                _ if self.line.len() >= MAX_COMMAND_LINE => self.overflow = true,
                _ => self.line.push(b),
            }
        }
        lines
    }
}

type Edit = Box<dyn FnOnce(&mut Projector, Instant) -> Vec<u8> + Send>;

enum Control {
    /// Change the projector; the bytes returned are sent on the line.
    Edit(Edit, oneshot::Sender<()>),
    /// Send raw bytes on the line; answers whether a line was connected.
    Inject(Vec<u8>, oneshot::Sender<bool>),
    HangUp(oneshot::Sender<()>),
    Reopen(oneshot::Sender<Result<PathBuf, SimError>>),
}

/// How the simulator's line is made, so that it can be made again after a hang-up.
enum Line {
    Pty {
        link: Option<PathBuf>,
    },
    /// An in-memory stream handed in once (unit tests with `tokio::io::duplex`).
    Stream,
}

/// Handle to a running simulator: typed control for tests, status for assertions.
#[derive(Clone)]
pub struct Escvp21Sim {
    ctl: mpsc::Sender<Control>,
    status: watch::Receiver<SimStatus>,
    path: Option<PathBuf>,
}

impl std::fmt::Debug for Escvp21Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Escvp21Sim")
            .field("path", &self.path)
            .finish()
    }
}

impl Escvp21Sim {
    /// Start a projector on a fresh pseudo-terminal. With `link`, a symlink of that name
    /// points at the slave (and follows it across [`Escvp21Sim::reopen`]).
    pub async fn spawn_pty(
        cfg: SimConfig,
        link: Option<PathBuf>,
        cancel: CancellationToken,
    ) -> Result<Escvp21Sim, SimError> {
        let pty = PtyMaster::open(link.as_deref())?;
        let path = pty.path().to_path_buf();
        tracing::info!(path = %path.display(), slave = %pty.slave_path().display(), "escvp21 simulator listening");
        let port: Box<dyn ByteStream> = Box::new(pty);
        Ok(Self::start(
            cfg,
            Some(port),
            Line::Pty { link },
            Some(path),
            cancel,
        ))
    }

    /// Start a projector on an already connected in-memory stream. A hang-up drops the stream;
    /// it cannot be re-opened.
    pub fn spawn_stream(
        cfg: SimConfig,
        stream: impl ByteStream + 'static,
        cancel: CancellationToken,
    ) -> Escvp21Sim {
        Self::start(cfg, Some(Box::new(stream)), Line::Stream, None, cancel)
    }

    fn start(
        cfg: SimConfig,
        port: Option<Box<dyn ByteStream>>,
        line: Line,
        path: Option<PathBuf>,
        cancel: CancellationToken,
    ) -> Escvp21Sim {
        let now = Instant::now();
        let projector = Projector::new(cfg, now);
        let (status_tx, status_rx) = watch::channel(projector.status(now, port.is_some()));
        let (ctl_tx, ctl_rx) = mpsc::channel(16);
        let task = SimTask {
            projector,
            port,
            line,
            ctl: Some(ctl_rx),
            status: status_tx,
            cancel,
            lines: LineBuf::default(),
        };
        crate::sim::detached(task.run());
        Escvp21Sim {
            ctl: ctl_tx,
            status: status_rx,
            path,
        }
    }

    /// The serial device path a driver should open (the symlink when one was asked for).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn status(&self) -> SimStatus {
        self.status.borrow().clone()
    }

    /// Watch the simulator's status (for waiting on it without sleeping).
    pub fn watch(&self) -> watch::Receiver<SimStatus> {
        self.status.clone()
    }

    async fn edit(&self, f: impl FnOnce(&mut Projector, Instant) -> Vec<u8> + Send + 'static) {
        let (tx, rx) = oneshot::channel();
        if self.ctl.send(Control::Edit(Box::new(f), tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    pub async fn set_error_code(&self, code: u8) {
        self.edit(move |p, _| {
            p.set_error_code(code);
            Vec::new()
        })
        .await
    }

    /// Enter (true) or leave (false, as after a power cycle) the silent abnormal state.
    pub async fn set_abnormal(&self, abnormal: bool) {
        self.edit(move |p, now| {
            p.set_abnormal(abnormal, now);
            Vec::new()
        })
        .await
    }

    /// Make the next `n` ignition attempts fail (3 = a lamp failure).
    pub async fn fail_next_ignitions(&self, n: u32) {
        self.edit(move |p, _| {
            p.fail_next_ignitions(n);
            Vec::new()
        })
        .await
    }

    /// Light the lamp of the strike in progress now: the held-back colon goes out.
    pub async fn light_lamp(&self) {
        self.edit(|p, now| p.light_lamp(now)).await
    }

    pub async fn set_lamp_hours(&self, hours: u32) {
        self.edit(move |p, now| {
            p.set_lamp_hours(hours, now);
            Vec::new()
        })
        .await
    }

    pub async fn set_power(&self, on: bool) {
        self.edit(move |p, now| {
            p.set_power(on, now);
            Vec::new()
        })
        .await
    }

    /// Put these bytes in front of every reply (empty to stop).
    pub async fn set_reply_noise(&self, noise: Vec<u8>) {
        self.edit(move |p, _| {
            p.set_reply_noise(noise);
            Vec::new()
        })
        .await
    }

    /// Send raw bytes down the line now (garbage, an oversized line). Returns whether a line
    /// was connected to send them on.
    pub async fn inject(&self, bytes: impl Into<Vec<u8>>) -> bool {
        let (tx, rx) = oneshot::channel();
        if self
            .ctl
            .send(Control::Inject(bytes.into(), tx))
            .await
            .is_err()
        {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// Pull the cable: close the pseudo-terminal master (the driver's port hangs up) and
    /// remove the symlink.
    pub async fn hang_up(&self) {
        let (tx, rx) = oneshot::channel();
        if self.ctl.send(Control::HangUp(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Plug the cable back in: a fresh pseudo-terminal, the symlink pointed at its slave.
    /// Returns the path to open (the symlink when one was asked for).
    pub async fn reopen(&self) -> Result<PathBuf, SimError> {
        let (tx, rx) = oneshot::channel();
        self.ctl
            .send(Control::Reopen(tx))
            .await
            .map_err(|_| SimError::Pty("simulator stopped".into()))?;
        rx.await
            .map_err(|_| SimError::Pty("simulator stopped".into()))?
    }
}

enum Event {
    Cancelled,
    Control(Option<Control>),
    Read(io::Result<usize>),
    Timer,
}

struct SimTask {
    projector: Projector,
    port: Option<Box<dyn ByteStream>>,
    line: Line,
    ctl: Option<mpsc::Receiver<Control>>,
    status: watch::Sender<SimStatus>,
    cancel: CancellationToken,
    lines: LineBuf,
}

async fn read_port(port: &mut Option<Box<dyn ByteStream>>, buf: &mut [u8]) -> io::Result<usize> {
    match port {
        Some(p) => p.read(buf).await,
        None => std::future::pending().await,
    }
}

async fn next_control(ctl: &mut Option<mpsc::Receiver<Control>>) -> Option<Control> {
    match ctl {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

impl SimTask {
    async fn run(mut self) {
        let mut buf = [0u8; 512];
        loop {
            let out = self.projector.advance(Instant::now());
            self.send(&out).await;
            self.publish();
            let deadline = self.projector.next_deadline();
            let event = tokio::select! {
                _ = self.cancel.cancelled() => Event::Cancelled,
                c = next_control(&mut self.ctl) => Event::Control(c),
                r = read_port(&mut self.port, &mut buf) => Event::Read(r),
                _ = sleep_until_opt(deadline) => Event::Timer,
            };
            match event {
                Event::Cancelled => break,
                Event::Timer => {}
                // The handle was dropped (`avwarden simulate`): keep serving until cancelled.
                Event::Control(None) => self.ctl = None,
                Event::Control(Some(c)) => self.control(c).await,
                Event::Read(Ok(0)) | Event::Read(Err(_)) => {
                    // The in-memory peer went away (a pty master never reads EOF: no one on
                    // the slave is "nothing yet").
                    self.port = None;
                }
                Event::Read(Ok(n)) => {
                    let now = Instant::now();
                    for line in self.lines.feed(&buf[..n]) {
                        // An overlong line is no command the projector knows: it answers ERR.
                        let out = self.projector.on_line(line.as_deref().unwrap_or("?"), now);
                        self.send(&out).await;
                    }
                }
            }
        }
    }

    async fn control(&mut self, c: Control) {
        match c {
            Control::Edit(f, done) => {
                let out = f(&mut self.projector, Instant::now());
                self.send(&out).await;
                let _ = done.send(());
            }
            Control::Inject(bytes, done) => {
                let connected = self.port.is_some();
                self.send_raw(&bytes).await;
                let _ = done.send(connected);
            }
            Control::HangUp(done) => {
                // Dropping the master hangs up the driver's port and removes the symlink.
                self.port = None;
                self.lines = LineBuf::default();
                tracing::info!("escvp21 simulator: line hung up");
                let _ = done.send(());
            }
            Control::Reopen(done) => {
                let res = self.reopen();
                let _ = done.send(res);
            }
        }
        self.publish();
    }

    fn reopen(&mut self) -> Result<PathBuf, SimError> {
        let Line::Pty { link } = &self.line else {
            return Err(SimError::Pty(
                "an in-memory line cannot be re-opened".into(),
            ));
        };
        let pty = PtyMaster::open(link.as_deref())?;
        let path = pty.path().to_path_buf();
        tracing::info!(path = %path.display(), "escvp21 simulator: line re-opened");
        self.lines = LineBuf::default();
        self.port = Some(Box::new(pty));
        Ok(path)
    }

    async fn send(&mut self, bytes: &[u8]) {
        if !bytes.is_empty() {
            self.send_raw(bytes).await;
        }
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        let Some(port) = self.port.as_mut() else {
            return;
        };
        let write = async {
            port.write_all(bytes).await?;
            port.flush().await
        };
        match tokio::time::timeout(WRITE_STALL, write).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => self.port = None,
            Err(_) => tracing::debug!(
                bytes = bytes.len(),
                "escvp21 simulator: nobody drains the line; output dropped"
            ),
        }
    }

    fn publish(&self) {
        let status = self.projector.status(Instant::now(), self.port.is_some());
        self.status.send_if_modified(|s| {
            if *s != status {
                *s = status;
                true
            } else {
                false
            }
        });
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Start the simulator from a device's `[devices.simulator]` options (`avwarden simulate`, the
/// demo). ESC/VP21 is an RS-232 protocol: only a pseudo-terminal bind makes sense.
pub async fn spawn_from_config(
    options: &toml::Table,
    bind: SimBind,
    clock: Clock,
    cancel: CancellationToken,
) -> Result<SimEndpoint, SimError> {
    // Time comes from tokio (warm-up, ignition); the wall clock is not needed.
    let _ = clock;
    let cfg = SimConfig::from_options(options)?;
    match bind {
        SimBind::Pty { link } => {
            let sim = Escvp21Sim::spawn_pty(cfg, link, cancel).await?;
            let path = sim
                .path()
                .map(Path::to_path_buf)
                .ok_or_else(|| SimError::Pty("simulator has no device path".into()))?;
            Ok(SimEndpoint::Pty(path))
        }
        other => Err(bind_error(format!(
            "the ESC/VP21 simulator is an RS-232 device and needs a pseudo-terminal, not {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SimConfig {
        SimConfig::default()
    }

    fn s(b: &[u8]) -> String {
        String::from_utf8_lossy(b).into_owned()
    }

    #[test]
    fn prompt_and_queries_in_standby() {
        let t = Instant::now();
        let mut p = Projector::new(cfg(), t);
        assert_eq!(s(&p.on_line("", t)), ":");
        assert_eq!(s(&p.on_line("PWR?", t)), "PWR=04\r:");
        assert_eq!(s(&p.on_line("LAMP?", t)), "LAMP=1234\r:");
        assert_eq!(s(&p.on_line("ERR?", t)), "ERR=00\r:");
        assert_eq!(s(&p.on_line("SNO?", t)), "SNO=X4Y5Z6000123\r:");
        assert_eq!(s(&p.on_line("FOO?", t)), "ERR\r:");
        // Input and mute only while the lamp is on.
        assert_eq!(s(&p.on_line("SOURCE?", t)), "ERR\r:");
        assert_eq!(s(&p.on_line("MUTE ON", t)), "ERR\r:");
    }

    #[test]
    fn power_cycle_with_ignition_warm_up_and_cool_down() {
        let t = Instant::now();
        let c = SimConfig {
            ignition: Duration::from_secs(8),
            warm_up: Duration::from_secs(30),
            cool_down: Duration::from_secs(60),
            ..cfg()
        };
        let mut p = Projector::new(c, t);
        // The colon is held back while the lamp strikes; input meanwhile is ignored.
        assert_eq!(s(&p.on_line("PWR ON", t)), "");
        assert_eq!(p.next_deadline(), Some(t + Duration::from_secs(8)));
        assert_eq!(s(&p.on_line("PWR?", t + Duration::from_secs(1))), "");
        assert_eq!(s(&p.advance(t + Duration::from_secs(7))), "");
        assert_eq!(s(&p.advance(t + Duration::from_secs(8))), ":");
        let t1 = t + Duration::from_secs(9);
        assert_eq!(s(&p.on_line("PWR?", t1)), "PWR=02\r:");
        // Not fully started: PWR OFF is refused.
        assert_eq!(s(&p.on_line("PWR OFF", t1)), "ERR\r:");
        let t2 = t + Duration::from_secs(38);
        assert_eq!(s(&p.on_line("PWR?", t2)), "PWR=01\r:");
        assert_eq!(s(&p.on_line("SOURCE?", t2)), "SOURCE=30\r:");
        assert_eq!(s(&p.on_line("MUTE ON", t2)), ":");
        assert_eq!(s(&p.on_line("MUTE?", t2)), "MUTE=ON\r:");
        assert_eq!(s(&p.on_line("PWR OFF", t2)), ":");
        assert_eq!(s(&p.on_line("PWR?", t2)), "PWR=03\r:");
        assert_eq!(
            s(&p.on_line("PWR ON", t2)),
            "ERR\r:",
            "no PWR ON while cooling"
        );
        let t3 = t2 + Duration::from_secs(60);
        assert_eq!(s(&p.on_line("PWR?", t3)), "PWR=04\r:");
    }

    #[test]
    fn failed_ignitions_follow_the_40_70_100_windows() {
        let t = Instant::now();
        let mut p = Projector::new(cfg(), t);
        p.fail_next_ignitions(2);
        assert_eq!(s(&p.on_line("PWR ON", t)), "");
        assert_eq!(s(&p.advance(t + Duration::from_secs(40))), "");
        assert_eq!(p.status(t, true).ignition_attempt, 2);
        assert_eq!(s(&p.advance(t + Duration::from_secs(70))), "");
        assert_eq!(p.status(t, true).ignition_attempt, 3);
        // Third attempt lights after the 8 s strike: 78 s, within the 100 s bound.
        assert_eq!(s(&p.advance(t + Duration::from_secs(77))), "");
        assert_eq!(s(&p.advance(t + Duration::from_secs(78))), ":");

        let mut p = Projector::new(cfg(), t);
        p.fail_next_ignitions(3);
        assert_eq!(s(&p.on_line("PWR ON", t)), "");
        assert_eq!(s(&p.advance(t + Duration::from_secs(100))), "");
        let st = p.status(t, true);
        assert!(st.abnormal && !st.igniting);
        assert_eq!(st.error_code, 0x03);
        // Abnormal: silent for everything, including the null command.
        assert_eq!(s(&p.on_line("", t + Duration::from_secs(101))), "");
        // A power cycle brings it back, still reporting the error.
        p.set_abnormal(false, t + Duration::from_secs(200));
        assert_eq!(
            s(&p.on_line("ERR?", t + Duration::from_secs(200))),
            "ERR=03\r:"
        );
    }

    #[test]
    fn lamp_hours_advance_only_while_lit() {
        let t = Instant::now();
        let mut p = Projector::new(
            SimConfig {
                power_on: true,
                lamp_hours: 100,
                ..cfg()
            },
            t,
        );
        let h = Duration::from_secs(3600);
        assert_eq!(p.lamp_hours(t + h * 3), 103);
        assert_eq!(s(&p.on_line("PWR OFF", t + h * 3)), ":");
        assert_eq!(p.lamp_hours(t + h * 10), 103);
        p.set_lamp_hours(4000, t + h * 10);
        assert_eq!(p.lamp_hours(t + h * 11), 4000);
    }

    #[test]
    fn source_change_answers_err_while_the_signal_settles() {
        let t = Instant::now();
        let mut p = Projector::new(
            SimConfig {
                power_on: true,
                ..cfg()
            },
            t,
        );
        assert_eq!(s(&p.on_line("SOURCE A0", t)), ":");
        assert_eq!(
            s(&p.on_line("SOURCE 30", t + Duration::from_secs(1))),
            "ERR\r:"
        );
        assert_eq!(s(&p.on_line("SOURCE 30", t + Duration::from_secs(3))), ":");
        assert_eq!(
            s(&p.on_line("SOURCE zz", t + Duration::from_secs(9))),
            "ERR\r:"
        );
        assert_eq!(
            s(&p.on_line("SOURCE?", t + Duration::from_secs(9))),
            "SOURCE=30\r:"
        );
    }

    #[test]
    fn reply_noise_precedes_answers() {
        let t = Instant::now();
        let mut p = Projector::new(cfg(), t);
        p.set_reply_noise(b"\xff\x00".to_vec());
        assert_eq!(p.on_line("PWR?", t), b"\xff\x00PWR=04\r:".to_vec());
    }

    #[test]
    fn line_buffer_bounds_and_splits() {
        let mut b = LineBuf::default();
        assert_eq!(b.feed(b"PWR"), Vec::<Option<String>>::new());
        assert_eq!(
            b.feed(b"?\r\n\r"),
            vec![Some("PWR?".into()), Some(String::new())]
        );
        let long = vec![b'A'; 200];
        assert_eq!(b.feed(&long), Vec::<Option<String>>::new());
        assert_eq!(b.feed(b"\rLAMP?\r"), vec![None, Some("LAMP?".into())]);
    }

    #[test]
    fn options_parse_and_reject() {
        let t: toml::Table = toml::from_str(
            r#"
            warm_up_secs = 2
            cool_down_secs = 1.5
            ignition_secs = 3
            lamp_hours = 4321
            serial = "ABC123"
            power_on = true
            error_code = "0A"
            "#,
        )
        .unwrap();
        let c = SimConfig::from_options(&t).unwrap();
        assert_eq!(c.warm_up, Duration::from_secs(2));
        assert_eq!(c.cool_down, Duration::from_millis(1500));
        assert_eq!(c.ignition, Duration::from_secs(3));
        assert_eq!(c.lamp_hours, 4321);
        assert_eq!(c.serial, "ABC123");
        assert!(c.power_on);
        assert_eq!(c.error_code, 0x0A);
        let t: toml::Table = toml::from_str("error_code = 4").unwrap();
        assert_eq!(SimConfig::from_options(&t).unwrap().error_code, 4);

        for bad in [
            "warm_up_secs = -1",
            "warm_up_secs = \"x\"",
            "lamp_hours = 1.5",
            "serial = \"a b\"",
            "error_code = 300",
            "error_code = \"XYZ\"",
            "power_on = 1",
            "colour = \"red\"",
        ] {
            let t: toml::Table = toml::from_str(bad).unwrap();
            let e = SimConfig::from_options(&t).expect_err(bad);
            assert!(
                matches!(e, SimError::Option { .. } | SimError::UnknownOption { .. }),
                "{bad}: {e}"
            );
        }
    }

    #[tokio::test]
    async fn pty_serves_the_prompt_to_a_serial_port() {
        use crate::transport::serial::{open, SerialSpec};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let cancel = CancellationToken::new();
        let sim = Escvp21Sim::spawn_pty(cfg(), None, cancel.clone())
            .await
            .expect("pty");
        let path = sim.path().expect("path").display().to_string();
        let mut port = open(&SerialSpec::new(path, 9600)).expect("open slave");
        port.write_all(b"PWR?\r").await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        // Real pty I/O: bound only against a hang.
        tokio::time::timeout(Duration::from_secs(10), async {
            while !got.ends_with(b":") {
                let n = port.read(&mut buf).await.unwrap();
                assert!(n > 0, "eof");
                got.extend_from_slice(&buf[..n]);
            }
        })
        .await
        .expect("reply in time");
        assert_eq!(got, b"PWR=04\r:");
        cancel.cancel();
    }

    #[tokio::test]
    async fn symlink_follows_reopen_and_hang_up_reaches_the_port() {
        use crate::transport::serial::{open, SerialSpec};
        use tokio::io::AsyncReadExt;
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("projector");
        let cancel = CancellationToken::new();
        let sim = Escvp21Sim::spawn_pty(cfg(), Some(link.clone()), cancel.clone())
            .await
            .expect("pty");
        assert_eq!(sim.path(), Some(link.as_path()));
        let first = std::fs::read_link(&link).unwrap();
        let mut port = open(&SerialSpec::new(link.display().to_string(), 9600)).unwrap();
        sim.hang_up().await;
        assert!(!sim.status().connected);
        assert!(std::fs::symlink_metadata(&link).is_err(), "link removed");
        // The port sees the hang-up: end of file or an I/O error, not silence.
        let mut buf = [0u8; 16];
        let r = tokio::time::timeout(Duration::from_secs(10), port.read(&mut buf))
            .await
            .expect("hang-up noticed");
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
        let again = sim.reopen().await.unwrap();
        assert_eq!(again, link);
        assert!(sim.status().connected);
        assert_ne!(std::fs::read_link(&link).unwrap(), first);
        cancel.cancel();
    }

    #[tokio::test]
    async fn simulate_entry_serves_a_pty_from_site_options() {
        use crate::transport::serial::{open, SerialSpec};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let profile = crate::profile::ProfileSet::embedded()
            .unwrap()
            .get("epson-escvp21")
            .unwrap()
            .clone();
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("ttyEPSON");
        let options: toml::Table = toml::from_str("lamp_hours = 777\nserial = \"SIM1\"").unwrap();
        let cancel = CancellationToken::new();
        let clock = Clock::system();
        let ep = super::super::spawn(
            &profile,
            &options,
            SimBind::Pty {
                link: Some(link.clone()),
            },
            clock,
            cancel.clone(),
        )
        .await
        .expect("simulator starts");
        assert_eq!(ep, SimEndpoint::Pty(link.clone()));
        let mut port = open(&SerialSpec::new(link.display().to_string(), 9600)).unwrap();
        port.write_all(b"LAMP?\r").await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        // Real pty I/O: bound only against a hang.
        tokio::time::timeout(Duration::from_secs(10), async {
            while !got.ends_with(b":") {
                let n = port.read(&mut buf).await.unwrap();
                assert!(n > 0, "eof");
                got.extend_from_slice(&buf[..n]);
            }
        })
        .await
        .expect("reply in time");
        assert_eq!(got, b"LAMP=777\r:");
        // Cancelling stops the simulator and removes its symlink.
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), async {
            while std::fs::symlink_metadata(&link).is_ok() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("symlink removed on cancel");

        let tcp = super::super::spawn(
            &profile,
            &toml::Table::new(),
            SimBind::Tcp("127.0.0.1:0".parse().unwrap()),
            clock,
            CancellationToken::new(),
        )
        .await;
        assert!(matches!(tcp, Err(SimError::Option { .. })), "{tcp:?}");
        let bad: toml::Table = toml::from_str("warm_up = 3").unwrap();
        let res = spawn_from_config(
            &bad,
            SimBind::Pty { link: None },
            clock,
            CancellationToken::new(),
        )
        .await;
        assert!(
            matches!(res, Err(SimError::UnknownOption { ref key, .. }) if key == "warm_up"),
            "{res:?}"
        );
    }
}
