//! QSC Q-SYS Core simulator: a QRC server on TCP (protocols.md §4.2) with named controls,
//! `EngineStatus` on connect, optional `Logon`, change groups with `AutoPoll` pushes, and the
//! Core's 60 s idle limit (a session that sends nothing is closed).
//!
//! This module owns the simulated design (gain, mute and meter controls, meters scripted in
//! dBFS), per-connection change groups (gone when the connection drops, as on a Core), and a
//! control handle for tests (front-panel changes, engine state, raw injected bytes, dropping
//! sessions). It must not share session logic with the driver; it is what the driver is tested
//! against.
//!
//! Settings (`[devices.simulator]` of the site config, all optional):
//!
//! ```toml
//! design_name = "Boardroom"
//! design_code = "qALFilm6IcCo"
//! platform = "Core 110f"
//! user = "avwarden"          # with password: Logon required before anything else
//! password = "1234"
//! idle_timeout_secs = 60
//! [[controls]]
//! name = "Zone1Gain"
//! kind = "gain"              # gain | mute | meter
//! value = -10.0
//! script = { kind = "speech" }   # meters
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::BytesMut;
use serde::Deserialize;
use serde_json::{json, Value as Json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::meter_script::MeterScript;
use super::{option_error, parse_options, SimBind, SimEndpoint, SimError};
use crate::clock::Clock;
use crate::codec::qrc::{
    self, ControlState, EngineState, EngineStatus, NulFramer, QValue, RpcError, RpcRequest,
};

/// A Core holds at most this many change groups (protocols.md §4.2).
const MAX_CHANGE_GROUPS: usize = 512;
const GAIN_MIN: f64 = -100.0;
const GAIN_MAX: f64 = 20.0;
/// The Core's change-group error for running out of groups (UNCONFIRMED number, §7).
const CHANGE_GROUPS_EXHAUSTED: i64 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlKind {
    Gain,
    Mute,
    Meter,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlSpec {
    pub name: String,
    pub kind: ControlKind,
    #[serde(default)]
    pub value: f64,
    #[serde(default)]
    pub script: Option<MeterScript>,
    /// Meters: read after this gain control (post-fader): the script is the signal at the
    /// gain's initial value, and every dB the gain moves from there moves the meter with it,
    /// as a loudspeaker output's meter does.
    #[serde(default)]
    pub follows: Option<String>,
}

impl ControlSpec {
    pub fn new(name: &str, kind: ControlKind) -> Self {
        Self {
            name: name.to_owned(),
            kind,
            value: 0.0,
            script: None,
            follows: None,
        }
    }
    pub fn value(mut self, v: f64) -> Self {
        self.value = v;
        self
    }
    pub fn script(mut self, s: MeterScript) -> Self {
        self.script = Some(s);
        self
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QsysSimConfig {
    #[serde(default = "default_design")]
    pub design_name: String,
    #[serde(default = "default_code")]
    pub design_code: String,
    #[serde(default = "default_platform")]
    pub platform: String,
    #[serde(default)]
    pub emulator: bool,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default = "default_idle")]
    pub idle_timeout_secs: u64,
    #[serde(default = "default_controls")]
    pub controls: Vec<ControlSpec>,
}

fn default_design() -> String {
    "MyDesign".to_owned()
}
fn default_code() -> String {
    "qALFilm6IcCo".to_owned()
}
fn default_platform() -> String {
    "Core 500i".to_owned()
}
fn default_idle() -> u64 {
    qrc::IDLE_LIMIT_SECS
}

/// The controls of protocols.md §4.2's examples plus a room's zone and mic.
pub fn default_controls() -> Vec<ControlSpec> {
    vec![
        ControlSpec::new("MainGain", ControlKind::Gain).value(-10.0),
        ControlSpec::new("MainMute", ControlKind::Mute),
        ControlSpec::new("MainMeter", ControlKind::Meter).script(MeterScript::default()),
        ControlSpec::new("MicGain", ControlKind::Gain),
        ControlSpec::new("MicMute", ControlKind::Mute),
        ControlSpec::new("MicMeter", ControlKind::Meter).script(MeterScript::default()),
    ]
}

impl Default for QsysSimConfig {
    fn default() -> Self {
        Self {
            design_name: default_design(),
            design_code: default_code(),
            platform: default_platform(),
            emulator: false,
            user: None,
            password: None,
            idle_timeout_secs: default_idle(),
            controls: default_controls(),
        }
    }
}

#[derive(Debug, Clone)]
struct Control {
    kind: ControlKind,
    value: f64,
    script: MeterScript,
    started: Instant,
    /// The gain control a meter reads after, and that gain's initial value.
    follows: Option<(String, f64)>,
}

/// The controls of a design, each with what it follows (looked up by name in `specs`).
fn build_controls(specs: &[ControlSpec], now: Instant) -> BTreeMap<String, Control> {
    specs
        .iter()
        .map(|c| {
            let follows = c.follows.as_ref().and_then(|g| {
                specs
                    .iter()
                    .find(|s| &s.name == g && s.kind == ControlKind::Gain)
                    .map(|s| (g.clone(), s.value))
            });
            (
                c.name.clone(),
                Control {
                    kind: c.kind,
                    value: c.value,
                    script: c.script.clone().unwrap_or(MeterScript::Silence),
                    started: now,
                    follows,
                },
            )
        })
        .collect()
}

impl Control {
    fn state(&self, name: &str, controls: &BTreeMap<String, Control>) -> ControlState {
        match self.kind {
            ControlKind::Gain => ControlState {
                name: name.to_owned(),
                value: QValue::Number(self.value),
                string: Some(format!("{:.1}dB", self.value)),
                position: Some(((self.value - GAIN_MIN) / (GAIN_MAX - GAIN_MIN)).clamp(0.0, 1.0)),
            },
            ControlKind::Mute => ControlState {
                name: name.to_owned(),
                value: QValue::Number(self.value),
                string: Some(
                    if self.value != 0.0 {
                        "muted"
                    } else {
                        "unmuted"
                    }
                    .to_owned(),
                ),
                position: Some(self.value),
            },
            ControlKind::Meter => {
                // Meters report dB with a tenth of a dB resolution.
                let mut dbfs = self.script.level_at(Instant::now() - self.started);
                if let Some((gain, initial)) = &self.follows {
                    if let Some(g) = controls.get(gain) {
                        dbfs += g.value - initial;
                    }
                }
                let db = (dbfs * 10.0).round() / 10.0;
                ControlState {
                    name: name.to_owned(),
                    value: QValue::Number(db),
                    string: Some(format!("{db:.1}dB")),
                    position: None,
                }
            }
        }
    }
}

#[derive(Debug)]
struct Shared {
    controls: BTreeMap<String, Control>,
    status: EngineStatus,
    sessions: usize,
    groups: usize,
    noops: u64,
    methods: Vec<String>,
}

#[derive(Debug, Clone)]
enum Ctl {
    Raw(Vec<u8>),
    Status,
    Drop,
}

/// Handle to a running simulator.
#[derive(Clone)]
pub struct QsysSim {
    shared: Arc<Mutex<Shared>>,
    ctl: broadcast::Sender<Ctl>,
    addr: std::net::SocketAddr,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

fn lock(s: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

impl QsysSim {
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }
    pub fn sessions(&self) -> usize {
        lock(&self.shared).sessions
    }
    /// Change groups alive across sessions.
    pub fn change_groups(&self) -> usize {
        lock(&self.shared).groups
    }
    pub fn noops(&self) -> u64 {
        lock(&self.shared).noops
    }
    /// Methods received so far, oldest first (bounded).
    pub fn methods(&self) -> Vec<String> {
        lock(&self.shared).methods.clone()
    }
    pub fn control(&self, name: &str) -> Option<f64> {
        lock(&self.shared).controls.get(name).map(|c| c.value)
    }
    /// Change a control as someone at the Core (or UCI) would.
    pub fn set_control(&self, name: &str, value: f64) -> bool {
        match lock(&self.shared).controls.get_mut(name) {
            Some(c) => {
                c.value = value;
                true
            }
            None => false,
        }
    }
    pub fn set_meter_script(&self, name: &str, script: MeterScript) -> bool {
        match lock(&self.shared).controls.get_mut(name) {
            Some(c) if c.kind == ControlKind::Meter => {
                c.script = script;
                c.started = Instant::now();
                true
            }
            _ => false,
        }
    }
    /// Change the engine state / design and announce it with `EngineStatus`.
    pub fn set_engine(&self, state: EngineState, design_code: Option<&str>) {
        {
            let mut sh = lock(&self.shared);
            sh.status.state = state;
            if let Some(c) = design_code {
                sh.status.design_code = c.to_owned();
            }
        }
        let _ = self.ctl.send(Ctl::Status);
    }
    /// Send raw bytes to every session.
    pub fn inject(&self, bytes: &[u8]) {
        let _ = self.ctl.send(Ctl::Raw(bytes.to_vec()));
    }
    /// Close every session (as a Core does on a design push).
    pub fn drop_sessions(&self) {
        let _ = self.ctl.send(Ctl::Drop);
    }
    /// Stop and wait until the listener is gone (so a new simulator can bind the same port).
    pub async fn stop(self) {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// Start a simulator on a TCP listener.
pub async fn spawn(
    cfg: QsysSimConfig,
    bind: SimBind,
    cancel: CancellationToken,
) -> Result<QsysSim, SimError> {
    let SimBind::Tcp(addr) = bind else {
        return Err(SimError::Unsupported("qsys other than over tcp"));
    };
    check_config(&cfg)?;
    let now = Instant::now();
    let controls = build_controls(&cfg.controls, now);
    let shared = Arc::new(Mutex::new(Shared {
        controls,
        status: EngineStatus {
            platform: Some(cfg.platform.clone()),
            state: EngineState::Active,
            design_name: cfg.design_name.clone(),
            design_code: cfg.design_code.clone(),
            is_redundant: false,
            is_emulator: cfg.emulator,
        },
        sessions: 0,
        groups: 0,
        noops: 0,
        methods: Vec::new(),
    }));
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let (ctl, _) = broadcast::channel(256);
    let cancel = cancel.child_token();
    let tracker = TaskTracker::new();
    let cfg = Arc::new(cfg);
    {
        let (shared, ctl, cancel, tracker2) =
            (shared.clone(), ctl.clone(), cancel.clone(), tracker.clone());
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    r = listener.accept() => {
                        let Ok((stream, _)) = r else { continue };
                        let _ = stream.set_nodelay(true);
                        let s = Session {
                            cfg: cfg.clone(),
                            shared: shared.clone(),
                            logged_on: cfg.password.is_none(),
                            groups: BTreeMap::new(),
                        };
                        tracker2.spawn(s.run(stream, ctl.subscribe(), cancel.clone()));
                    }
                }
            }
        });
    }
    Ok(QsysSim {
        shared,
        ctl,
        addr: local,
        cancel,
        tracker,
    })
}

/// The checks [`spawn`] makes of its settings before it listens (also run by `check-config`).
pub fn check_config(cfg: &QsysSimConfig) -> Result<(), SimError> {
    let mut names = std::collections::HashSet::new();
    for (i, c) in cfg.controls.iter().enumerate() {
        if c.name.is_empty() || !names.insert(c.name.as_str()) {
            return Err(option_error(
                format!("controls[{i}].name"),
                format!("{:?} is empty or used twice", c.name),
            ));
        }
    }
    if cfg.idle_timeout_secs == 0 {
        return Err(option_error("idle_timeout_secs", "must be at least 1"));
    }
    Ok(())
}

/// The uniform entry used by `sim::spawn` (demo, `avwarden simulate`).
pub async fn spawn_from_config(
    options: &toml::Table,
    bind: SimBind,
    _clock: Clock,
    cancel: CancellationToken,
) -> Result<SimEndpoint, SimError> {
    let cfg: QsysSimConfig = parse_options(options)?;
    let sim = spawn(cfg, bind, cancel).await?;
    Ok(SimEndpoint::Tcp(sim.addr))
}

struct Group {
    controls: Vec<String>,
    /// What was last reported per control, so a poll carries only changes.
    last: HashMap<String, ControlState>,
    rate: Option<Duration>,
    next: Instant,
}

/// The unsolicited `EngineStatus`: QSC's example carries no `Platform` (protocols.md §4.2).
fn announce(status: &EngineStatus) -> Vec<u8> {
    qrc::engine_status(&EngineStatus {
        platform: None,
        ..status.clone()
    })
}

enum Reply {
    Json(Json),
    Status(EngineStatus),
}

struct Session {
    cfg: Arc<QsysSimConfig>,
    shared: Arc<Mutex<Shared>>,
    logged_on: bool,
    groups: BTreeMap<String, Group>,
}

fn invalid(m: impl Into<String>) -> RpcError {
    RpcError {
        code: qrc::INVALID_PARAMS,
        message: m.into(),
    }
}

fn group_id(params: &Json) -> Result<String, RpcError> {
    params
        .get("Id")
        .and_then(Json::as_str)
        .map(str::to_owned)
        .ok_or_else(|| invalid("Id must be a string"))
}

fn names(v: Option<&Json>) -> Result<Vec<String>, RpcError> {
    let arr = v
        .and_then(Json::as_array)
        .ok_or_else(|| invalid("expected an array of control names"))?;
    arr.iter()
        .map(|n| {
            n.as_str()
                .map(str::to_owned)
                .ok_or_else(|| invalid("control names must be strings"))
        })
        .collect()
}

impl Session {
    fn unknown(name: &str) -> RpcError {
        RpcError {
            code: qrc::UNKNOWN_CONTROL,
            message: format!("Unknown control {name}"),
        }
    }

    fn changes(&mut self, group: &str) -> Vec<ControlState> {
        let sh = lock(&self.shared);
        let Some(g) = self.groups.get_mut(group) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for name in &g.controls {
            let Some(c) = sh.controls.get(name) else {
                continue;
            };
            let st = c.state(name, &sh.controls);
            if g.last.get(name) != Some(&st) {
                g.last.insert(name.clone(), st.clone());
                out.push(st);
            }
        }
        out
    }

    fn handle(&mut self, req: &RpcRequest) -> Result<Reply, RpcError> {
        if req.method == "StatusGet" && self.logged_on {
            lock(&self.shared).methods.push(req.method.clone());
            // Serialised through the codec's ordered struct, as QSC's example shows it.
            return Ok(Reply::Status(lock(&self.shared).status.clone()));
        }
        self.handle_json(req).map(Reply::Json)
    }

    fn handle_json(&mut self, req: &RpcRequest) -> Result<Json, RpcError> {
        {
            let mut sh = lock(&self.shared);
            if sh.methods.len() < 10_000 {
                sh.methods.push(req.method.clone());
            }
        }
        let p = &req.params;
        if !self.logged_on && !matches!(req.method.as_str(), "Logon" | "NoOp") {
            return Err(RpcError {
                code: qrc::LOGON_REQUIRED,
                message: "Logon required".into(),
            });
        }
        match req.method.as_str() {
            "Logon" => {
                let user = p.get("User").and_then(Json::as_str);
                let pass = p.get("Password").and_then(Json::as_str);
                let user_ok = self.cfg.user.as_deref().is_none_or(|u| Some(u) == user);
                let pass_ok = self
                    .cfg
                    .password
                    .as_deref()
                    .is_none_or(|pw| Some(pw) == pass);
                if user_ok && pass_ok {
                    self.logged_on = true;
                    Ok(Json::Bool(true))
                } else {
                    Err(RpcError {
                        code: qrc::LOGON_REQUIRED,
                        message: "Logon failed: bad user name or password".into(),
                    })
                }
            }
            "NoOp" => {
                lock(&self.shared).noops += 1;
                Ok(Json::Bool(true))
            }
            "Control.Get" => {
                let list = names(Some(p))?;
                let sh = lock(&self.shared);
                let mut out = Vec::new();
                for n in &list {
                    out.push(
                        sh.controls
                            .get(n)
                            .ok_or_else(|| Self::unknown(n))?
                            .state(n, &sh.controls),
                    );
                }
                Ok(qrc::controls_json(&out))
            }
            "Control.Set" => {
                let name = p
                    .get("Name")
                    .and_then(Json::as_str)
                    .ok_or_else(|| invalid("Name must be a string"))?;
                let value = p.get("Value").ok_or_else(|| invalid("Value is missing"))?;
                let mut sh = lock(&self.shared);
                let c = sh
                    .controls
                    .get_mut(name)
                    .ok_or_else(|| Self::unknown(name))?;
                match c.kind {
                    ControlKind::Gain => {
                        let v = value
                            .as_f64()
                            .ok_or_else(|| invalid("Value must be a number"))?;
                        c.value = v.clamp(GAIN_MIN, GAIN_MAX);
                    }
                    ControlKind::Mute => {
                        let on = match value {
                            Json::Bool(b) => *b,
                            Json::Number(n) => n.as_f64().unwrap_or(0.0) != 0.0,
                            _ => return Err(invalid("Value must be a number or boolean")),
                        };
                        c.value = if on { 1.0 } else { 0.0 };
                    }
                    ControlKind::Meter => return Err(invalid(format!("{name} is read-only"))),
                }
                Ok(Json::Bool(true))
            }
            "ChangeGroup.AddControl" => {
                let id = group_id(p)?;
                let list = names(p.get("Controls"))?;
                {
                    let sh = lock(&self.shared);
                    if let Some(bad) = list.iter().find(|n| !sh.controls.contains_key(*n)) {
                        return Err(Self::unknown(bad));
                    }
                }
                if !self.groups.contains_key(&id) {
                    let mut sh = lock(&self.shared);
                    if sh.groups >= MAX_CHANGE_GROUPS {
                        return Err(RpcError {
                            code: CHANGE_GROUPS_EXHAUSTED,
                            message: "Change groups exhausted".into(),
                        });
                    }
                    sh.groups += 1;
                    self.groups.insert(
                        id.clone(),
                        Group {
                            controls: Vec::new(),
                            last: HashMap::new(),
                            rate: None,
                            next: Instant::now(),
                        },
                    );
                }
                if let Some(g) = self.groups.get_mut(&id) {
                    for n in list {
                        if !g.controls.contains(&n) {
                            g.controls.push(n);
                        }
                    }
                }
                Ok(Json::Bool(true))
            }
            "ChangeGroup.AutoPoll" => {
                let id = group_id(p)?;
                let rate = p
                    .get("Rate")
                    .and_then(Json::as_f64)
                    .filter(|r| *r > 0.0 && *r <= 3600.0)
                    .ok_or_else(|| invalid("Rate must be a positive number of seconds"))?;
                let g = self.groups.get_mut(&id).ok_or_else(|| RpcError {
                    code: qrc::UNKNOWN_CHANGE_GROUP,
                    message: format!("Unknown change group {id}"),
                })?;
                g.rate = Some(Duration::from_secs_f64(rate));
                g.next = Instant::now();
                Ok(Json::Bool(true))
            }
            "ChangeGroup.Poll" => {
                let id = group_id(p)?;
                if !self.groups.contains_key(&id) {
                    return Err(RpcError {
                        code: qrc::UNKNOWN_CHANGE_GROUP,
                        message: format!("Unknown change group {id}"),
                    });
                }
                let changes = self.changes(&id);
                Ok(json!({ "Id": id, "Changes": qrc::controls_json(&changes) }))
            }
            "ChangeGroup.Destroy" => {
                let id = group_id(p)?;
                if self.groups.remove(&id).is_some() {
                    let mut sh = lock(&self.shared);
                    sh.groups = sh.groups.saturating_sub(1);
                }
                Ok(Json::Bool(true))
            }
            "ChangeGroup.Clear" => {
                let id = group_id(p)?;
                if let Some(g) = self.groups.get_mut(&id) {
                    g.controls.clear();
                    g.last.clear();
                }
                Ok(Json::Bool(true))
            }
            "ChangeGroup.Remove" => {
                let id = group_id(p)?;
                let list = names(p.get("Controls"))?;
                if let Some(g) = self.groups.get_mut(&id) {
                    g.controls.retain(|c| !list.contains(c));
                }
                Ok(Json::Bool(true))
            }
            other => Err(RpcError {
                code: qrc::METHOD_NOT_FOUND,
                message: format!("Method not found: {other}"),
            }),
        }
    }

    fn handle_frame(&mut self, frame: &str) -> Vec<u8> {
        match qrc::parse_request(frame) {
            Ok(req) => {
                let res = self.handle(&req);
                match (&req.id, res) {
                    (None, _) => Vec::new(),
                    (Some(id), Ok(Reply::Json(v))) => qrc::response(id, &v),
                    (Some(id), Ok(Reply::Status(st))) => {
                        qrc::response(id, &qrc::engine_status_result(&st))
                    }
                    (Some(id), Err(e)) => qrc::error_response(Some(id), &e),
                }
            }
            Err((id, e)) => qrc::error_response(id.as_ref(), &e),
        }
    }

    async fn run(
        mut self,
        mut stream: TcpStream,
        mut ctl: broadcast::Receiver<Ctl>,
        cancel: CancellationToken,
    ) {
        lock(&self.shared).sessions += 1;
        let idle = Duration::from_secs(self.cfg.idle_timeout_secs);
        let mut idle_at = Instant::now() + idle;
        let mut framer = NulFramer::new();
        let mut rx = BytesMut::with_capacity(1024);
        let hello = announce(&lock(&self.shared).status);
        if stream.write_all(&hello).await.is_ok() {
            loop {
                let next_poll = self
                    .groups
                    .values()
                    .filter(|g| g.rate.is_some())
                    .map(|g| g.next)
                    .min();
                let out: Vec<u8> = tokio::select! {
                    _ = cancel.cancelled() => break,
                    // The Core drops a client that has been silent for the idle limit.
                    _ = tokio::time::sleep_until(idle_at) => break,
                    c = ctl.recv() => match c {
                        Ok(Ctl::Raw(b)) => b,
                        Ok(Ctl::Status) => announce(&lock(&self.shared).status),
                        Ok(Ctl::Drop) | Err(broadcast::error::RecvError::Closed) => break,
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    },
                    _ = tokio::time::sleep_until(next_poll.unwrap_or_else(Instant::now)), if next_poll.is_some() => {
                        let now = Instant::now();
                        let due: Vec<String> = self
                            .groups
                            .iter_mut()
                            .filter_map(|(id, g)| {
                                let rate = g.rate?;
                                (g.next <= now).then(|| {
                                    g.next = now + rate;
                                    id.clone()
                                })
                            })
                            .collect();
                        let mut out = Vec::new();
                        for id in due {
                            let changes = self.changes(&id);
                            if !changes.is_empty() {
                                out.extend(qrc::change_group_poll(&id, &changes));
                            }
                        }
                        out
                    }
                    r = stream.read_buf(&mut rx) => {
                        match r {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {}
                        }
                        let mut out = Vec::new();
                        loop {
                            match framer.decode(&mut rx) {
                                Ok(Some(frame)) => {
                                    idle_at = Instant::now() + idle;
                                    out.extend(self.handle_frame(&frame));
                                }
                                Ok(None) => break,
                                Err(_) => {
                                    out.extend(qrc::error_response(None, &RpcError {
                                        code: qrc::INVALID_REQUEST,
                                        message: "request too long".into(),
                                    }));
                                }
                            }
                        }
                        out
                    }
                };
                if !out.is_empty() && stream.write_all(&out).await.is_err() {
                    break;
                }
            }
        }
        let mut sh = lock(&self.shared);
        sh.groups = sh.groups.saturating_sub(self.groups.len());
        sh.sessions = sh.sessions.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(password: Option<&str>) -> Session {
        let cfg = QsysSimConfig {
            user: password.map(|_| "username".to_owned()),
            password: password.map(str::to_owned),
            ..QsysSimConfig::default()
        };
        let now = Instant::now();
        let controls = build_controls(&cfg.controls, now);
        Session {
            logged_on: cfg.password.is_none(),
            cfg: Arc::new(cfg),
            shared: Arc::new(Mutex::new(Shared {
                controls,
                status: EngineStatus {
                    platform: Some("Core 500i".into()),
                    state: EngineState::Active,
                    design_name: "MyDesign".into(),
                    design_code: "qALFilm6IcCo".into(),
                    is_redundant: false,
                    is_emulator: false,
                },
                sessions: 0,
                groups: 0,
                noops: 0,
                methods: Vec::new(),
            })),
            groups: BTreeMap::new(),
        }
    }

    fn text(b: Vec<u8>) -> String {
        String::from_utf8(b).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn answers_the_documented_requests() {
        let mut s = session(None);
        assert_eq!(
            text(s.handle_frame("{\"jsonrpc\":\"2.0\",\"id\":1234,\"method\":\"StatusGet\",\"params\":0}")),
            "{\"jsonrpc\":\"2.0\",\"id\":1234,\"result\":{\"Platform\":\"Core 500i\",\"State\":\"Active\",\"DesignName\":\"MyDesign\",\"DesignCode\":\"qALFilm6IcCo\",\"IsRedundant\":false,\"IsEmulator\":false}}\0"
        );
        assert_eq!(
            s.handle_frame("{\"jsonrpc\":\"2.0\",\"method\":\"NoOp\",\"params\":{}}"),
            Vec::<u8>::new(),
            "a notification gets no response"
        );
        assert_eq!(lock(&s.shared).noops, 1);
        assert_eq!(
            text(s.handle_frame("{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"Control.Set\",\"params\":{\"Name\":\"MainGain\",\"Value\":-10.0,\"Ramp\":2.0}}")),
            "{\"jsonrpc\":\"2.0\",\"id\":2,\"result\":true}\0"
        );
        s.handle_frame("{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"ChangeGroup.AddControl\",\"params\":{\"Id\":\"meters\",\"Controls\":[\"MicMeter\"]}}");
        s.handle_frame("{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"ChangeGroup.AutoPoll\",\"params\":{\"Id\":\"meters\",\"Rate\":0.1}}");
        assert_eq!(s.groups["meters"].rate, Some(Duration::from_millis(100)));
        let first = s.changes("meters");
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].name, "MicMeter");
    }

    #[tokio::test(start_paused = true)]
    async fn logon_gates_everything_but_noop() {
        let mut s = session(Some("1234"));
        let r = text(
            s.handle_frame("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"StatusGet\",\"params\":0}"),
        );
        assert!(r.contains("\"code\":10"), "{r}");
        let r = text(s.handle_frame("{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"Logon\",\"params\":{\"User\":\"username\",\"Password\":\"nope\"}}"));
        assert!(r.contains("\"error\""), "{r}");
        let r = text(s.handle_frame("{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"Logon\",\"params\":{\"User\":\"username\",\"Password\":\"1234\"}}"));
        assert!(r.contains("\"result\":true"), "{r}");
        let r = text(
            s.handle_frame("{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"StatusGet\",\"params\":0}"),
        );
        assert!(r.contains("\"result\""), "{r}");
    }

    #[tokio::test(start_paused = true)]
    async fn errors_for_unknown_controls_types_and_garbage() {
        let mut s = session(None);
        for (req, code) in [
            ("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"Control.Get\",\"params\":[\"Nope\"]}", "8"),
            ("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"Control.Set\",\"params\":{\"Name\":\"MainGain\",\"Value\":\"loud\"}}", "-32602"),
            ("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"Control.Set\",\"params\":{\"Name\":\"MainMeter\",\"Value\":0}}", "-32602"),
            ("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ChangeGroup.AutoPoll\",\"params\":{\"Id\":\"x\",\"Rate\":1}}", "6"),
            ("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"Bogus\"}", "-32601"),
            ("{\"jsonrpc\":\"2.0\",\"id\":1,", "-32700"),
        ] {
            let r = text(s.handle_frame(req));
            assert!(r.contains(&format!("\"code\":{code}")), "{req} -> {r}");
        }
    }
}
