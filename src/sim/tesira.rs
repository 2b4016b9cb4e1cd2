//! Biamp Tesira simulator: a TTP server over Telnet (TCP) or RS-232 (a pseudo-terminal), with
//! the quirks protocols.md §4.1 records: Telnet option negotiation that must be refused before
//! the banner appears, the command echo in Telnet sessions, CR LF or CR NUL line ends, verbose
//! and concise replies, Biamp's error texts, and per-session subscriptions publishing
//! `! "publishToken":…` lines at their rate.
//!
//! This module owns a small DSP design (Level, Mute, Meter and Mixer blocks addressed by
//! instance tag), the session state machines and a control handle for tests (scripted meters,
//! front-panel changes, reboot, raw injected bytes). It must not share code paths with the
//! driver beyond the codec's pure helpers: it is the device the driver is tested against.
//!
//! Settings (`[devices.simulator]` of the site config, all optional):
//!
//! ```toml
//! echo = true               # default: true over Telnet, false on serial
//! line_ending = "crnul"     # "crlf" (default) or "crnul"
//! telnet_do = [24, 32, 35, 39]   # options the server asks the client to DO (refuse them)
//! telnet_will = [1, 3]      # options the server offers (refuse them)
//! preamble = true           # "No entry for terminal type…" before the banner
//! [[blocks]]
//! tag = "Level1"
//! kind = "level"            # level | mute | meter | mixer
//! channels = 4
//! level_db = -10.0          # initial level (level blocks)
//! script = { kind = "speech", level_dbfs = -24.0 }   # meter blocks, every channel
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::meter_script::MeterScript;
use super::pty::PtyMaster;
use super::{option_error, parse_options, SimBind, SimEndpoint, SimError};
use crate::clock::Clock;
use crate::codec::telnet::{TelnetCommand, TelnetOutput, TelnetParser};
use crate::codec::tesira::{split_command, BANNER};
use crate::meter::Alignment;

/// Tesira meters read dBu and clip at +24 dBu; their floor is −100 (protocols.md §4.1, §6).
const METER_ALIGNMENT: Alignment = Alignment::Dbu {
    zero_dbfs_at_dbu: 24.0,
};
const METER_FLOOR_DBU: f64 = -100.0;
const METER_CLIP_DBU: f64 = 24.0;

/// Lines longer than this from a client are cut (a real server has a limit too).
const MAX_COMMAND: usize = 4096;

/// How many received command lines the handle keeps for tests to inspect.
const RECEIVED_KEPT: usize = 2000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineEnding {
    #[default]
    Crlf,
    Crnul,
}

impl LineEnding {
    fn bytes(self) -> &'static [u8] {
        match self {
            LineEnding::Crlf => b"\r\n",
            LineEnding::Crnul => b"\r\0",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockKind {
    Level,
    Mute,
    Meter,
    Mixer,
}

/// One block of the simulated design.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockSpec {
    pub tag: String,
    pub kind: BlockKind,
    #[serde(default = "one")]
    pub channels: u32,
    #[serde(default)]
    pub level_db: f64,
    #[serde(default = "min_level")]
    pub min_db: f64,
    #[serde(default = "max_level")]
    pub max_db: f64,
    #[serde(default)]
    pub script: Option<MeterScript>,
    /// Meter blocks: read after this level block's faders (post-fader), channel by channel:
    /// the script is the signal at that block's initial level, and every dB a fader moves
    /// from there moves the meter with it, as a loudspeaker output's meter does.
    #[serde(default)]
    pub follows: Option<String>,
}

fn one() -> u32 {
    1
}
fn min_level() -> f64 {
    -100.0
}
fn max_level() -> f64 {
    12.0
}

impl BlockSpec {
    pub fn new(tag: &str, kind: BlockKind, channels: u32) -> Self {
        Self {
            tag: tag.to_owned(),
            kind,
            channels,
            level_db: 0.0,
            min_db: min_level(),
            max_db: max_level(),
            script: None,
            follows: None,
        }
    }
    pub fn follows(mut self, level_tag: &str) -> Self {
        self.follows = Some(level_tag.to_owned());
        self
    }
    pub fn level_db(mut self, db: f64) -> Self {
        self.level_db = db;
        self
    }
    pub fn script(mut self, s: MeterScript) -> Self {
        self.script = Some(s);
        self
    }
}

/// The simulator's settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TesiraSimConfig {
    #[serde(default)]
    pub echo: Option<bool>,
    #[serde(default)]
    pub line_ending: LineEnding,
    #[serde(default = "default_do")]
    pub telnet_do: Vec<u8>,
    #[serde(default)]
    pub telnet_will: Vec<u8>,
    #[serde(default)]
    pub preamble: bool,
    #[serde(default = "default_version")]
    pub version: String,
    #[serde(default = "default_serial")]
    pub serial_number: String,
    #[serde(default = "default_blocks")]
    pub blocks: Vec<BlockSpec>,
    /// Meters publish only when their value changes, as a level subscription does (a quiet
    /// room): the subscribe answer is then all a client gets of a steady meter.
    #[serde(default)]
    pub meters_on_change: bool,
}

/// The options protocols.md §4.1 vector 0 shows: TTYPE, TSPEED, XDISPLOC, NEW-ENVIRON.
fn default_do() -> Vec<u8> {
    vec![0x18, 0x20, 0x23, 0x27]
}
fn default_version() -> String {
    "4.2.0.24".to_owned()
}
fn default_serial() -> String {
    "03212345".to_owned()
}

/// A design that answers every protocols.md §4.1 vector, plus a room's worth of zones and mics.
pub fn default_blocks() -> Vec<BlockSpec> {
    vec![
        BlockSpec::new("Level1", BlockKind::Level, 4).level_db(-10.0),
        BlockSpec::new("MyLevel1", BlockKind::Level, 8),
        BlockSpec::new("Mute1", BlockKind::Mute, 2),
        BlockSpec::new("Mixer1", BlockKind::Mixer, 8),
        BlockSpec::new("AudioMeter1", BlockKind::Meter, 4)
            .script(MeterScript::Constant { dbfs: -124.0 }),
        BlockSpec::new("OutMeter", BlockKind::Meter, 4).script(MeterScript::default()),
        BlockSpec::new("MicGain", BlockKind::Level, 4),
        BlockSpec::new("MicMeter", BlockKind::Meter, 4).script(MeterScript::default()),
    ]
}

impl Default for TesiraSimConfig {
    fn default() -> Self {
        Self {
            echo: None,
            line_ending: LineEnding::Crlf,
            telnet_do: default_do(),
            telnet_will: Vec::new(),
            preamble: false,
            version: default_version(),
            serial_number: default_serial(),
            blocks: default_blocks(),
            meters_on_change: false,
        }
    }
}

#[derive(Debug, Clone)]
struct MeterChannel {
    script: MeterScript,
    started: Instant,
}

#[derive(Debug, Clone)]
enum Block {
    Level {
        levels: Vec<f32>,
        mutes: Vec<bool>,
        min: f32,
        max: f32,
    },
    Mute {
        mutes: Vec<bool>,
    },
    Meter {
        channels: Vec<MeterChannel>,
        /// The level block it reads after, and that block's initial level.
        follows: Option<(String, f32)>,
    },
    Mixer {
        input_mutes: Vec<bool>,
    },
}

impl Block {
    fn channels(&self) -> usize {
        match self {
            Block::Level { levels, .. } => levels.len(),
            Block::Mute { mutes } => mutes.len(),
            Block::Meter { channels, .. } => channels.len(),
            Block::Mixer { input_mutes } => input_mutes.len(),
        }
    }
}

/// A value as TTP prints it.
#[derive(Debug, Clone, PartialEq)]
enum Val {
    Num(f32),
    Bool(bool),
    Count(usize),
    Text(String),
    List(Vec<String>),
}

impl Val {
    fn wire(&self) -> String {
        match self {
            // Tesira prints single-precision floats with six decimals: -35.3 → -35.299999.
            Val::Num(n) => format!("{n:.6}"),
            Val::Bool(b) => b.to_string(),
            Val::Count(c) => c.to_string(),
            Val::Text(s) => format!("\"{s}\""),
            Val::List(items) => format!(
                "[{}]",
                items
                    .iter()
                    .map(|s| format!("\"{s}\""))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        }
    }
}

#[derive(Debug)]
struct Shared {
    design: BTreeMap<String, Block>,
    version: String,
    serial: String,
    sessions: usize,
    subscriptions: usize,
    received: VecDeque<String>,
    /// Command lines received in all, for tests that wait for the next one.
    received_total: tokio::sync::watch::Sender<u64>,
    /// Publishing stalled: commands are still answered (a subscribe answer included), but
    /// no `!` publish line is sent for existing subscriptions.
    stalled: bool,
    /// Answers held back: commands are read and carried out, nothing is sent until released.
    holding: bool,
    on_receive: Option<ReceiveHook>,
}

/// Called with each command line the moment its line end is read, before it is answered:
/// a benchmark stamps there when a command's last byte arrived.
#[derive(Clone)]
pub struct ReceiveHook(pub Arc<dyn Fn(&str) + Send + Sync>);

impl std::fmt::Debug for ReceiveHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReceiveHook")
    }
}

#[derive(Debug, Clone)]
enum Ctl {
    Raw(Vec<u8>),
    Reboot,
    /// Send what was held back ([`TesiraSim::hold_answers`]).
    Release,
}

/// Handle to a running simulator.
#[derive(Clone)]
pub struct TesiraSim {
    shared: Arc<Mutex<Shared>>,
    ctl: broadcast::Sender<Ctl>,
    endpoint: SimEndpoint,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

fn lock(s: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // A panicked session must not take the simulator down with it.
    s.lock().unwrap_or_else(|e| e.into_inner())
}

impl TesiraSim {
    pub fn endpoint(&self) -> &SimEndpoint {
        &self.endpoint
    }

    /// The serial device path (pty) or the TCP address.
    pub fn tcp_addr(&self) -> Option<std::net::SocketAddr> {
        match &self.endpoint {
            SimEndpoint::Tcp(a) => Some(*a),
            _ => None,
        }
    }

    pub fn pty_path(&self) -> Option<PathBuf> {
        match &self.endpoint {
            SimEndpoint::Pty(p) => Some(p.clone()),
            _ => None,
        }
    }

    /// A level as the DSP holds it (front panel view).
    pub fn level(&self, tag: &str, index: usize) -> Option<f64> {
        match lock(&self.shared).design.get(tag)? {
            Block::Level { levels, .. } => levels.get(index.checked_sub(1)?).map(|l| *l as f64),
            _ => None,
        }
    }

    pub fn mute(&self, tag: &str, index: usize) -> Option<bool> {
        let i = index.checked_sub(1)?;
        match lock(&self.shared).design.get(tag)? {
            Block::Level { mutes, .. } | Block::Mute { mutes } => mutes.get(i).copied(),
            Block::Mixer { input_mutes } => input_mutes.get(i).copied(),
            Block::Meter { .. } => None,
        }
    }

    /// Change a level as someone at the DSP would.
    pub fn set_level(&self, tag: &str, index: usize, db: f64) -> bool {
        let mut sh = lock(&self.shared);
        if let Some(Block::Level { levels, .. }) = sh.design.get_mut(tag) {
            if let Some(l) = index.checked_sub(1).and_then(|i| levels.get_mut(i)) {
                *l = db as f32;
                return true;
            }
        }
        false
    }

    /// Give a meter channel a new script, starting now.
    pub fn set_meter_script(&self, tag: &str, index: usize, script: MeterScript) -> bool {
        let mut sh = lock(&self.shared);
        if let Some(Block::Meter { channels, .. }) = sh.design.get_mut(tag) {
            if let Some(c) = index.checked_sub(1).and_then(|i| channels.get_mut(i)) {
                *c = MeterChannel {
                    script,
                    started: Instant::now(),
                };
                return true;
            }
        }
        false
    }

    /// Subscriptions alive across all sessions.
    pub fn subscriptions(&self) -> usize {
        lock(&self.shared).subscriptions
    }

    pub fn sessions(&self) -> usize {
        lock(&self.shared).sessions
    }

    /// Command lines received so far (the last few thousand), oldest first.
    pub fn received(&self) -> Vec<String> {
        lock(&self.shared).received.iter().cloned().collect()
    }

    /// Command lines received since start (more than [`TesiraSim::received`] keeps).
    pub fn received_total(&self) -> u64 {
        *lock(&self.shared).received_total.borrow()
    }

    /// Wait until `n` command lines have been received since start.
    pub async fn wait_received(&self, n: u64) {
        let mut rx = lock(&self.shared).received_total.subscribe();
        let _ = rx.wait_for(|c| *c >= n).await;
    }

    /// Stall publishing (true) or resume it: the DSP keeps answering commands but its
    /// subscriptions stop sending, as a design push gone wrong leaves them.
    pub fn stall_publishing(&self, stalled: bool) {
        lock(&self.shared).stalled = stalled;
    }

    /// Hold every session's output (true): commands are still read, logged in
    /// [`TesiraSim::received`] and carried out, but no answer or publish goes out, as from a
    /// DSP slow to answer. False sends what was held, in order, and answers again. Tests use
    /// it to see what the client writes while a command of its own waits for its answer.
    pub fn hold_answers(&self, hold: bool) {
        lock(&self.shared).holding = hold;
        if !hold {
            let _ = self.ctl.send(Ctl::Release);
        }
    }

    /// Call `hook` with every command line received from now on, in every session.
    pub fn on_receive(&self, hook: ReceiveHook) {
        lock(&self.shared).on_receive = Some(hook);
    }

    /// Send raw bytes to every session (garbage, half lines, stray publishes).
    pub fn inject(&self, bytes: &[u8]) {
        let _ = self.ctl.send(Ctl::Raw(bytes.to_vec()));
    }

    /// Reboot: every session's subscriptions are lost. Telnet sessions are dropped; on serial
    /// the banner appears on the line again.
    pub fn reboot(&self) {
        let _ = self.ctl.send(Ctl::Reboot);
    }

    /// Stop the simulator and wait until its listener and sessions are gone (so a new one can
    /// bind the same port).
    pub async fn stop(self) {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

fn build_design(blocks: &[BlockSpec]) -> Result<BTreeMap<String, Block>, SimError> {
    let now = Instant::now();
    let mut design = BTreeMap::new();
    for (i, b) in blocks.iter().enumerate() {
        let bad = |m: String| option_error(format!("blocks[{i}]"), m);
        if b.tag.is_empty() || b.tag == "SESSION" || b.tag == "DEVICE" {
            return Err(bad(format!("tag {:?} is not usable", b.tag)));
        }
        if b.channels == 0 || b.channels > 256 {
            return Err(bad("channels must be 1 to 256".into()));
        }
        let n = b.channels as usize;
        let block = match b.kind {
            BlockKind::Level => Block::Level {
                levels: vec![b.level_db as f32; n],
                mutes: vec![false; n],
                min: b.min_db as f32,
                max: b.max_db as f32,
            },
            BlockKind::Mute => Block::Mute {
                mutes: vec![false; n],
            },
            BlockKind::Meter => Block::Meter {
                channels: vec![
                    MeterChannel {
                        script: b.script.clone().unwrap_or(MeterScript::Silence),
                        started: now,
                    };
                    n
                ],
                follows: match &b.follows {
                    None => None,
                    Some(tag) => {
                        let level = blocks
                            .iter()
                            .find(|l| &l.tag == tag && l.kind == BlockKind::Level)
                            .ok_or_else(|| {
                                bad(format!("follows {tag:?}, which is no level block"))
                            })?;
                        Some((tag.clone(), level.level_db as f32))
                    }
                },
            },
            BlockKind::Mixer => Block::Mixer {
                input_mutes: vec![false; n],
            },
        };
        if design.insert(b.tag.clone(), block).is_some() {
            return Err(bad(format!("tag {:?} is used twice", b.tag)));
        }
    }
    Ok(design)
}

/// Start a simulator. `Tcp` binds a Telnet server; `Pty` opens a pseudo-terminal.
pub async fn spawn(
    cfg: TesiraSimConfig,
    bind: SimBind,
    cancel: CancellationToken,
) -> Result<TesiraSim, SimError> {
    let design = build_design(&cfg.blocks)?;
    let shared = Arc::new(Mutex::new(Shared {
        design,
        version: cfg.version.clone(),
        serial: cfg.serial_number.clone(),
        sessions: 0,
        subscriptions: 0,
        received: VecDeque::new(),
        received_total: tokio::sync::watch::Sender::new(0),
        stalled: false,
        holding: false,
        on_receive: None,
    }));
    let (ctl, _) = broadcast::channel(256);
    let cancel = cancel.child_token();
    let tracker = TaskTracker::new();
    let cfg = Arc::new(cfg);
    let endpoint = match bind {
        SimBind::Tcp(addr) => {
            let listener = TcpListener::bind(addr).await?;
            let local = listener.local_addr()?;
            let (shared2, ctl2, cancel2, tracker2) =
                (shared.clone(), ctl.clone(), cancel.clone(), tracker.clone());
            tracker.spawn(async move {
                loop {
                    tokio::select! {
                        _ = cancel2.cancelled() => break,
                        r = listener.accept() => {
                            let Ok((stream, _)) = r else { continue };
                            let _ = stream.set_nodelay(true);
                            let session = Session::new(cfg.clone(), shared2.clone(), true);
                            tracker2.spawn(session.run(Io::Tcp(stream), ctl2.subscribe(), cancel2.clone()));
                        }
                    }
                }
            });
            SimEndpoint::Tcp(local)
        }
        SimBind::Pty { link } => {
            let master = PtyMaster::open(link.as_deref())?;
            let path = master.path().to_path_buf();
            let session = Session::new(cfg.clone(), shared.clone(), false);
            tracker.spawn(session.run(Io::Pty(master), ctl.subscribe(), cancel.clone()));
            SimEndpoint::Pty(path)
        }
        SimBind::Udp(_) | SimBind::Mqtt { .. } => {
            return Err(SimError::Unsupported("tesira over udp or mqtt"))
        }
    };
    Ok(TesiraSim {
        shared,
        ctl,
        endpoint,
        cancel,
        tracker,
    })
}

/// The checks [`spawn`] makes of a design before it listens (also run by `check-config`).
pub fn check_config(cfg: &TesiraSimConfig) -> Result<(), SimError> {
    build_design(&cfg.blocks).map(drop)
}

/// The uniform entry used by `sim::spawn` (demo, `avwarden simulate`).
pub async fn spawn_from_config(
    options: &toml::Table,
    bind: SimBind,
    _clock: Clock,
    cancel: CancellationToken,
) -> Result<SimEndpoint, SimError> {
    let cfg: TesiraSimConfig = parse_options(options)?;
    let sim = spawn(cfg, bind, cancel).await?;
    Ok(sim.endpoint.clone())
}

enum Io {
    Tcp(TcpStream),
    Pty(PtyMaster),
}

impl Io {
    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Io::Tcp(s) => s.read(buf).await,
            Io::Pty(p) => p.read(buf).await,
        }
    }
    async fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Io::Tcp(s) => s.write_all(data).await,
            Io::Pty(p) => p.send(data).await,
        }
    }
}

#[derive(Debug, Clone)]
struct Sub {
    tag: String,
    attr: String,
    index: usize,
    label: String,
    rate: Duration,
    next: Instant,
    last: Option<String>,
}

struct Session {
    cfg: Arc<TesiraSimConfig>,
    shared: Arc<Mutex<Shared>>,
    telnet: bool,
    verbose: bool,
    subs: Vec<Sub>,
}

/// Attributes that take no channel index.
fn unindexed(attr: &str) -> bool {
    matches!(
        attr,
        "numChannels"
            | "numInputs"
            | "numOutputs"
            | "aliases"
            | "verbose"
            | "version"
            | "serialNumber"
            | "hostname"
    )
}

fn not_enough(line: &str) -> String {
    format!(
        "-ERR Parse error at {}: not enough parameters supplied",
        line.len()
    )
}

const NOT_FOUND: &str =
    "-ERR address not found: {\"deviceId\":0 \"classCode\":0 \"instanceNum\":0}";

fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

impl Session {
    fn new(cfg: Arc<TesiraSimConfig>, shared: Arc<Mutex<Shared>>, telnet: bool) -> Self {
        Self {
            cfg,
            shared,
            telnet,
            verbose: true,
            subs: Vec::new(),
        }
    }

    fn ok_value(&self, v: &Val) -> String {
        if self.verbose {
            match v {
                Val::List(_) => format!("+OK \"list\":{}", v.wire()),
                _ => format!("+OK \"value\":{}", v.wire()),
            }
        } else {
            format!("+OK {}", v.wire())
        }
    }

    /// Read an attribute; `Err` is the `-ERR` line.
    fn read_attr(sh: &Shared, tag: &str, attr: &str, index: usize) -> Result<Val, String> {
        let block = sh.design.get(tag).ok_or_else(|| NOT_FOUND.to_owned())?;
        if attr == "numChannels" || attr == "numInputs" {
            return Ok(Val::Count(block.channels()));
        }
        let n = block.channels();
        if index < 1 || index > n {
            return Err(format!(
                "-ERR INVALID_PARAMETER Index out of range:channelIndex min:1 max:{n} received:{index}"
            ));
        }
        let i = index - 1;
        match (block, attr) {
            (Block::Level { levels, .. }, "level") => Ok(Val::Num(levels[i])),
            (Block::Level { min, .. }, "minLevel") => Ok(Val::Num(*min)),
            (Block::Level { max, .. }, "maxLevel") => Ok(Val::Num(*max)),
            (Block::Level { mutes, .. } | Block::Mute { mutes }, "mute") => Ok(Val::Bool(mutes[i])),
            (Block::Mixer { input_mutes }, "inputMute") => Ok(Val::Bool(input_mutes[i])),
            (Block::Meter { channels, follows }, "level") => {
                let c = &channels[i];
                let mut dbfs = c.script.level_at(Instant::now() - c.started);
                if let Some((tag, initial)) = follows {
                    if let Some(Block::Level { levels, mutes, .. }) = sh.design.get(tag) {
                        match (levels.get(i), mutes.get(i)) {
                            (_, Some(true)) => dbfs = crate::meter::SILENCE_DBFS,
                            (Some(l), _) => dbfs += f64::from(*l - *initial),
                            _ => {}
                        }
                    }
                }
                let dbu = METER_ALIGNMENT
                    .from_dbfs(dbfs)
                    .clamp(METER_FLOOR_DBU, METER_CLIP_DBU);
                Ok(Val::Num(dbu as f32))
            }
            _ => Err(format!(
                "-ERR INVALID_PARAMETER attribute {attr} not supported by {tag}"
            )),
        }
    }

    fn write_attr(
        sh: &mut Shared,
        tag: &str,
        verb: &str,
        attr: &str,
        index: usize,
        value: Option<&str>,
    ) -> Result<(), String> {
        let block = sh.design.get_mut(tag).ok_or_else(|| NOT_FOUND.to_owned())?;
        let n = block.channels();
        if index < 1 || index > n {
            return Err(format!(
                "-ERR INVALID_PARAMETER Index out of range:channelIndex min:1 max:{n} received:{index}"
            ));
        }
        let i = index - 1;
        let num = |v: Option<&str>| -> Result<f32, String> {
            v.and_then(|s| s.parse::<f32>().ok())
                .filter(|f| f.is_finite())
                .ok_or_else(|| {
                    format!(
                        "-ERR INVALID_PARAMETER value {} is not a number",
                        v.unwrap_or("")
                    )
                })
        };
        let flag = |v: Option<&str>, old: bool| -> Result<bool, String> {
            if verb == "toggle" {
                return Ok(!old);
            }
            v.and_then(parse_bool).ok_or_else(|| {
                format!(
                    "-ERR INVALID_PARAMETER value {} is not a boolean",
                    v.unwrap_or("")
                )
            })
        };
        match (block, attr, verb) {
            (
                Block::Level {
                    levels, min, max, ..
                },
                "level",
                "set" | "increment" | "decrement",
            ) => {
                let v = num(value)?;
                let next = match verb {
                    "set" => v,
                    "increment" => levels[i] + v,
                    _ => levels[i] - v,
                };
                levels[i] = next.clamp(*min, *max);
                Ok(())
            }
            (Block::Level { mutes, .. } | Block::Mute { mutes }, "mute", "set" | "toggle") => {
                mutes[i] = flag(value, mutes[i])?;
                Ok(())
            }
            (Block::Mixer { input_mutes }, "inputMute", "set" | "toggle") => {
                input_mutes[i] = flag(value, input_mutes[i])?;
                Ok(())
            }
            (Block::Meter { .. }, "level", _)
            | (Block::Level { .. }, "minLevel" | "maxLevel", _) => {
                Err(format!("-ERR INVALID_PARAMETER {attr} is read-only"))
            }
            _ => Err(format!(
                "-ERR INVALID_PARAMETER attribute {attr} does not support {verb} on {tag}"
            )),
        }
    }

    /// Answer one command line with the lines the server sends (without line ends).
    fn handle(&mut self, line: &str) -> Vec<String> {
        let hook = {
            let mut sh = lock(&self.shared);
            if sh.received.len() >= RECEIVED_KEPT {
                sh.received.pop_front();
            }
            sh.received.push_back(line.to_owned());
            sh.received_total.send_modify(|n| *n += 1);
            sh.on_receive.clone()
        };
        // Outside the lock: the hook may take its own.
        if let Some(ReceiveHook(hook)) = hook {
            hook(line);
        }
        let words = match split_command(line) {
            Ok(w) => w,
            Err(e) => return vec![format!("-ERR Parse error at {}: {e}", line.len())],
        };
        if words.len() < 3 {
            return vec![not_enough(line)];
        }
        let (tag, verb, attr) = (words[0].as_str(), words[1].as_str(), words[2].as_str());
        let rest: Vec<&str> = words[3..].iter().map(String::as_str).collect();
        match tag {
            "SESSION" => return self.session_cmd(verb, attr, &rest),
            "DEVICE" => {
                let sh = lock(&self.shared);
                let v = match (verb, attr) {
                    ("get", "version") => Val::Text(sh.version.clone()),
                    ("get", "serialNumber") => Val::Text(sh.serial.clone()),
                    ("get", "hostname") => Val::Text("TesiraForte-sim".into()),
                    _ => {
                        return vec![format!(
                            "-ERR INVALID_PARAMETER DEVICE does not support {verb} {attr}"
                        )]
                    }
                };
                return vec![self.ok_value(&v)];
            }
            _ => {}
        }
        let needed = match verb {
            "get" | "toggle" | "subscribe" | "unsubscribe" => usize::from(!unindexed(attr)),
            "set" | "increment" | "decrement" => 1 + usize::from(!unindexed(attr)),
            _ => {
                return vec![format!(
                    "-ERR Parse error at {}: unknown command {verb}",
                    tag.len() + 1
                )]
            }
        };
        if rest.len() < needed {
            return vec![not_enough(line)];
        }
        let index: usize = if unindexed(attr) {
            0
        } else {
            match rest[0].parse() {
                Ok(i) => i,
                Err(_) => {
                    return vec![format!(
                        "-ERR INVALID_PARAMETER index {} is not a number",
                        rest[0]
                    )]
                }
            }
        };
        match verb {
            "get" => {
                let sh = lock(&self.shared);
                match Self::read_attr(&sh, tag, attr, index) {
                    Ok(v) => vec![self.ok_value(&v)],
                    Err(e) => vec![e],
                }
            }
            "set" | "increment" | "decrement" | "toggle" => {
                let mut sh = lock(&self.shared);
                match Self::write_attr(&mut sh, tag, verb, attr, index, rest.get(1).copied()) {
                    Ok(()) => vec!["+OK".to_owned()],
                    Err(e) => vec![e],
                }
            }
            "subscribe" => {
                let label = rest.get(1).copied().unwrap_or("").to_owned();
                let rate_ms: u64 = match rest.get(2).map(|r| r.parse::<u64>()) {
                    None => 1000,
                    Some(Ok(r)) if r > 0 => r,
                    Some(_) => {
                        return vec![format!(
                            "-ERR INVALID_PARAMETER rate {} is not a positive number",
                            rest[2]
                        )]
                    }
                };
                let first = {
                    let sh = lock(&self.shared);
                    match Self::read_attr(&sh, tag, attr, index) {
                        Ok(v) => v,
                        Err(e) => return vec![e],
                    }
                };
                let wire = first.wire();
                // Subscribing the same thing again replaces it (new rate).
                self.subs.retain(|s| {
                    !(s.tag == tag && s.attr == attr && s.index == index && s.label == label)
                });
                let rate = Duration::from_millis(rate_ms);
                self.subs.push(Sub {
                    tag: tag.to_owned(),
                    attr: attr.to_owned(),
                    index,
                    label: label.clone(),
                    rate,
                    next: Instant::now() + rate,
                    last: Some(wire.clone()),
                });
                vec![
                    format!("! \"publishToken\":\"{label}\" \"value\":{wire}"),
                    "+OK".to_owned(),
                ]
            }
            "unsubscribe" => {
                let label = rest.get(1).copied().unwrap_or("");
                if !lock(&self.shared).design.contains_key(tag) {
                    return vec![NOT_FOUND.to_owned()];
                }
                self.subs.retain(|s| {
                    !(s.tag == tag && s.attr == attr && s.index == index && s.label == label)
                });
                vec!["+OK".to_owned()]
            }
            _ => vec![not_enough(line)],
        }
    }

    fn session_cmd(&mut self, verb: &str, attr: &str, rest: &[&str]) -> Vec<String> {
        match (verb, attr) {
            ("set", "verbose") => match rest.first().copied().and_then(parse_bool) {
                Some(v) => {
                    self.verbose = v;
                    vec!["+OK".to_owned()]
                }
                None => vec!["-ERR INVALID_PARAMETER verbose takes true or false".to_owned()],
            },
            ("get", "verbose") => vec![self.ok_value(&Val::Bool(self.verbose))],
            ("get", "aliases") => {
                let tags: Vec<String> = lock(&self.shared).design.keys().cloned().collect();
                vec![self.ok_value(&Val::List(tags))]
            }
            _ => vec![format!(
                "-ERR INVALID_PARAMETER SESSION does not support {verb} {attr}"
            )],
        }
    }

    /// Publish lines for subscriptions that are due: meters at their rate, others on change.
    fn due_publishes(&mut self, now: Instant) -> Vec<String> {
        let sh = lock(&self.shared);
        let mut out = Vec::new();
        for s in self.subs.iter_mut().filter(|s| s.next <= now) {
            s.next = now + s.rate;
            if sh.stalled {
                continue;
            }
            let Ok(v) = Self::read_attr(&sh, &s.tag, &s.attr, s.index) else {
                continue;
            };
            let wire = v.wire();
            let is_meter = !self.cfg.meters_on_change
                && matches!(sh.design.get(&s.tag), Some(Block::Meter { .. }));
            if is_meter || s.last.as_deref() != Some(wire.as_str()) {
                out.push(format!(
                    "! \"publishToken\":\"{}\" \"value\":{wire}",
                    s.label
                ));
                s.last = Some(wire);
            }
        }
        out
    }

    fn set_subs_count(&self, before: usize) {
        let mut sh = lock(&self.shared);
        sh.subscriptions = (sh.subscriptions + self.subs.len()).saturating_sub(before);
    }

    fn frame(&self, lines: &[String]) -> Vec<u8> {
        let mut out = Vec::new();
        for l in lines {
            out.extend_from_slice(l.as_bytes());
            out.extend_from_slice(self.cfg.line_ending.bytes());
        }
        out
    }

    fn banner(&self) -> Vec<u8> {
        let mut lines = Vec::new();
        if self.cfg.preamble && self.telnet {
            lines.push("No entry for terminal type \"unknown\";".to_owned());
            lines.push("using dumb terminal settings.".to_owned());
        }
        lines.push(format!("{BANNER}..."));
        self.frame(&lines)
    }

    async fn run(
        mut self,
        mut io: Io,
        mut ctl: broadcast::Receiver<Ctl>,
        cancel: CancellationToken,
    ) {
        lock(&self.shared).sessions += 1;
        let echo = self.cfg.echo.unwrap_or(self.telnet);
        let mut parser = TelnetParser::new();
        let mut pending: Vec<TelnetCommand> = Vec::new();
        let mut stuck = false;
        let mut started = !self.telnet;
        let mut line: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; 1024];
        // The handle that sends control messages may be gone (the daemon keeps only the
        // endpoint): that ends control, not the session, which ends on `cancel` or EOF.
        let mut controlled = true;
        // Output kept back while answers are held.
        let mut held: Vec<u8> = Vec::new();
        let hello = if self.telnet {
            let mut b = Vec::new();
            for &o in &self.cfg.telnet_do {
                pending.push(TelnetCommand::Do(o));
                b.extend_from_slice(&[0xFF, 0xFD, o]);
            }
            for &o in &self.cfg.telnet_will {
                pending.push(TelnetCommand::Will(o));
                b.extend_from_slice(&[0xFF, 0xFB, o]);
            }
            if pending.is_empty() {
                started = true;
                b.extend(self.banner());
            }
            b
        } else {
            // A serial port "boots": the banner goes out whether or not anyone listens.
            self.banner()
        };
        let _ = io.write(&hello).await;
        loop {
            let next = self.subs.iter().map(|s| s.next).min();
            let before = self.subs.len();
            let out: Vec<u8> = tokio::select! {
                _ = cancel.cancelled() => break,
                c = ctl.recv(), if controlled => match c {
                    Ok(Ctl::Raw(b)) => b,
                    Ok(Ctl::Reboot) => {
                        if self.telnet {
                            break;
                        }
                        self.subs.clear();
                        self.verbose = true;
                        self.banner()
                    }
                    // Written below with whatever was held, once no longer holding.
                    Ok(Ctl::Release) => Vec::new(),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => {
                        controlled = false;
                        continue;
                    }
                },
                _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                    let lines = self.due_publishes(Instant::now());
                    self.frame(&lines)
                }
                r = io.read(&mut buf) => {
                    let n = match r {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let mut out = Vec::new();
                    for &raw in &buf[..n] {
                        let b = if self.telnet {
                            match parser.feed(raw) {
                                None => continue,
                                Some(TelnetOutput::Data(d)) => d,
                                Some(TelnetOutput::Command(c)) => {
                                    match c {
                                        TelnetCommand::Wont(o) => pending.retain(|p| *p != TelnetCommand::Do(o)),
                                        TelnetCommand::Dont(o) => pending.retain(|p| *p != TelnetCommand::Will(o)),
                                        // Accepting an option means the server would now
                                        // subnegotiate it; a raw client never finishes that,
                                        // and the session never starts (protocols.md §4.1).
                                        TelnetCommand::Will(o) if pending.contains(&TelnetCommand::Do(o)) => stuck = true,
                                        TelnetCommand::Do(o) if pending.contains(&TelnetCommand::Will(o)) => stuck = true,
                                        _ => {}
                                    }
                                    if !started && !stuck && pending.is_empty() {
                                        started = true;
                                        out.extend(self.banner());
                                    }
                                    continue;
                                }
                            }
                        } else {
                            raw
                        };
                        if !started {
                            continue;
                        }
                        if b == b'\r' || b == b'\n' || b == 0 {
                            if line.is_empty() {
                                continue;
                            }
                            let text = String::from_utf8_lossy(&line).into_owned();
                            line.clear();
                            let mut lines = Vec::new();
                            if echo {
                                lines.push(text.clone());
                            }
                            lines.extend(self.handle(&text));
                            out.extend(self.frame(&lines));
                        } else if line.len() < MAX_COMMAND {
                            line.push(b);
                        }
                    }
                    out
                }
            };
            if self.subs.len() != before {
                self.set_subs_count(before);
            }
            let out = if lock(&self.shared).holding {
                held.extend_from_slice(&out);
                continue;
            } else if held.is_empty() {
                out
            } else {
                let mut all = std::mem::take(&mut held);
                all.extend_from_slice(&out);
                all
            };
            if !out.is_empty() && io.write(&out).await.is_err() && self.telnet {
                break;
            }
        }
        let mut sh = lock(&self.shared);
        sh.subscriptions = sh.subscriptions.saturating_sub(self.subs.len());
        sh.sessions = sh.sessions.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(verbose: bool) -> Session {
        let shared = Arc::new(Mutex::new(Shared {
            design: build_design(&default_blocks()).unwrap(),
            version: default_version(),
            serial: default_serial(),
            sessions: 0,
            subscriptions: 0,
            received: VecDeque::new(),
            received_total: tokio::sync::watch::Sender::new(0),
            stalled: false,
            holding: false,
            on_receive: None,
        }));
        let mut s = Session::new(Arc::new(TesiraSimConfig::default()), shared, true);
        s.verbose = verbose;
        s
    }

    #[tokio::test(start_paused = true)]
    async fn answers_the_documented_vectors() {
        let mut s = session(true);
        assert_eq!(s.handle("Level1 get level 1"), ["+OK \"value\":-10.000000"]);
        assert_eq!(s.handle("Level1 set level 1 -20"), ["+OK"]);
        assert_eq!(s.handle("Level1 set mute 1 true"), ["+OK"]);
        assert_eq!(s.handle("Level1 get mute 1"), ["+OK \"value\":true"]);
        assert_eq!(
            s.handle("Mixer1 set inputMute 1"),
            ["-ERR Parse error at 22: not enough parameters supplied"]
        );
        assert_eq!(
            s.handle("MyLevel1 get level 10"),
            ["-ERR INVALID_PARAMETER Index out of range:channelIndex min:1 max:8 received:10"]
        );
        assert_eq!(
            s.handle("Session get aliases"),
            ["-ERR address not found: {\"deviceId\":0 \"classCode\":0 \"instanceNum\":0}"]
        );
        assert_eq!(
            s.handle("AudioMeter1 subscribe level 1 mtr1 100"),
            ["! \"publishToken\":\"mtr1\" \"value\":-100.000000", "+OK"]
        );
        assert_eq!(s.subs.len(), 1);
        assert_eq!(s.handle("AudioMeter1 unsubscribe level 1 mtr1"), ["+OK"]);
        assert!(s.subs.is_empty());
        assert_eq!(s.handle("SESSION set verbose false"), ["+OK"]);
        assert_eq!(s.handle("Mute1 get numChannels"), ["+OK 2"]);
    }

    #[tokio::test(start_paused = true)]
    async fn meters_read_dbu_clipped_at_plus_24() {
        let s = session(true);
        {
            let mut sh = lock(&s.shared);
            if let Some(Block::Meter { channels, .. }) = sh.design.get_mut("AudioMeter1") {
                channels[0].script = MeterScript::Constant { dbfs: -59.3 };
                channels[1].script = MeterScript::Constant { dbfs: 6.0 };
            }
        }
        let sh = lock(&s.shared);
        assert_eq!(
            Session::read_attr(&sh, "AudioMeter1", "level", 1)
                .unwrap()
                .wire(),
            "-35.299999"
        );
        assert_eq!(
            Session::read_attr(&sh, "AudioMeter1", "level", 2)
                .unwrap()
                .wire(),
            "24.000000"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn levels_clamp_and_bad_values_are_refused() {
        let mut s = session(true);
        assert_eq!(s.handle("Level1 set level 1 40"), ["+OK"]);
        assert_eq!(s.handle("Level1 get level 1"), ["+OK \"value\":12.000000"]);
        assert!(s.handle("Level1 set level 1 loud")[0].starts_with("-ERR"));
        assert!(s.handle("Level1 set mute 1 maybe")[0].starts_with("-ERR"));
        assert!(s.handle("AudioMeter1 set level 1 0")[0].starts_with("-ERR"));
        assert!(s.handle("Level1 frobnicate level 1")[0].starts_with("-ERR Parse error"));
        assert_eq!(s.handle("Level1 toggle mute 2"), ["+OK"]);
        assert_eq!(s.handle("Level1 get mute 2"), ["+OK \"value\":true"]);
        assert_eq!(
            s.handle("DEVICE get version"),
            ["+OK \"value\":\"4.2.0.24\""]
        );
        assert_eq!(
            s.handle("\"Level1\" get level 2"),
            ["+OK \"value\":-10.000000"]
        );
    }

    #[test]
    fn bad_designs_are_refused() {
        assert!(build_design(&[BlockSpec::new("SESSION", BlockKind::Level, 1)]).is_err());
        assert!(build_design(&[BlockSpec::new("A", BlockKind::Level, 0)]).is_err());
        assert!(build_design(&[
            BlockSpec::new("A", BlockKind::Level, 1),
            BlockSpec::new("A", BlockKind::Mute, 1)
        ])
        .is_err());
        let cfg: Result<TesiraSimConfig, _> = toml::from_str(
            "line_ending = \"crnul\"\n[[blocks]]\ntag = \"L\"\nkind = \"level\"\nchannels = 2\n",
        );
        assert_eq!(cfg.unwrap().blocks.len(), 1);
        let cfg: Result<TesiraSimConfig, _> = toml::from_str("colour = 1\n");
        assert!(cfg.is_err());
    }
}
