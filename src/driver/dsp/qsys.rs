//! QSC Q-SYS driver: QRC sessions over TCP 1710 (protocols.md §4.2), parameterised by the
//! profile (`keepalive_secs`, `meter_rate_secs`, `meter_alignment`) and by the site's map of
//! named controls to zones and mics.
//!
//! This module owns the session: optional `Logon`, one change group holding every mapped
//! control with `AutoPoll` (re-created after every connect, since a Core deletes change groups
//! when the connection drops, and after a design change), `NoOp` well inside the Core's 60 s
//! idle limit, responses matched by id, and type-checked application of control values. Bad
//! input (malformed JSON, wrong types, unknown engine states) is counted, never fatal. It must
//! not know the transport and never leaves vendor words in readings.
//!
//! Settings (`[devices.settings]` of the site config):
//!
//! ```toml
//! user = "avwarden"                 # optional: Logon user; the password is the device secret
//! meter_rate_secs = 0.1             # optional, overrides the profile's AutoPoll rate
//! meter_alignment = { kind = "offset", db = 0.0 }   # optional, overrides the profile
//! [[zones]]
//! id = "main"                       # a-z 0-9 _ ; readings zone.main.level_db / .muted
//! level_control = "Zone1Gain"       # named controls in the design (at least one of the three)
//! mute_control = "Zone1Mute"
//! meter_control = "Zone1Meter"
//! min_db = -100                     # levels outside are refused (default -100…20)
//! max_db = 0
//! [[mics]]
//! id = "lectern"
//! channel = 1                       # SetGain/SetMute channel; default: position from 1
//! level_control = "Mic1Gain"        # same keys as zones
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value as Json;
use tokio::time::Instant;

use super::zones::{
    read_request, refused, resolve, resolve_read, set_request, Addresses, DspMap, Entry, Function,
    LevelRange, MappingFaults, SetTo, SettingsError, Target, MAPPING_SOURCE,
};
use crate::codec::qrc::{
    self, ControlState, EngineState, EngineStatus, QValue, QrcDecoder, QrcMessage, RpcError,
};
use crate::codec::ProtocolError;
use crate::driver::{Driver, DriverError, Link, Observer, Reply};
use crate::meter::Alignment;
use crate::model::{DeviceCommand, Fault, Point, Quantity, Severity, Value};
use crate::profile::{Profile, ProfileError};

/// Gain controls in Q-SYS span −100…+20 dB; the site may narrow it per zone.
const QSYS_RANGE: LevelRange = LevelRange {
    min_db: -100.0,
    max_db: 20.0,
};

/// The one change group this driver keeps per session.
pub const CHANGE_GROUP: &str = "avwarden";

#[derive(Clone)]
pub struct QsysDriver {
    map: DspMap<String>,
    user: Option<String>,
    password: String,
    keepalive: Duration,
    reply_timeout: Duration,
    rate_secs: f64,
    alignment: Alignment,
    dec: QrcDecoder,
    next_id: u64,
    last_sent: Instant,
    /// The change group exists in this session with AutoPoll running.
    group_ready: bool,
    /// Control name → (channel index, what it does); only controls the Core accepted.
    routes: BTreeMap<String, Vec<(usize, Function)>>,
    /// The design the Core runs; a different one means our controls may be gone.
    design_code: Option<String>,
    mapping: MappingFaults,
}

fn control_name(e: &mut Entry<'_>, key: &'static str) -> Result<Option<String>, SettingsError> {
    match e.string(key)? {
        None => Ok(None),
        Some(n) if n.is_empty() || n.len() > 256 || n.chars().any(char::is_control) => Err(e.err(
            key,
            "must be 1 to 256 characters without control characters",
        )),
        Some(n) => Ok(Some(n)),
    }
}

impl QsysDriver {
    pub fn new(
        profile: &Profile,
        secret: Option<String>,
        settings: &toml::Table,
    ) -> Result<Self, ProfileError> {
        let pid = profile.id.to_string();
        let site = |e: SettingsError| e.into_profile_error(&pid);
        let keepalive_secs: u64 = profile.option("keepalive_secs", 20)?;
        if !(1..qrc::IDLE_LIMIT_SECS).contains(&keepalive_secs) {
            return Err(ProfileError::Option {
                profile: pid,
                key: "keepalive_secs".into(),
                message: format!(
                    "must be between 1 and {} (the Core's idle limit), got {keepalive_secs}",
                    qrc::IDLE_LIMIT_SECS - 1
                ),
            });
        }
        let profile_rate: f64 = profile.option("meter_rate_secs", 0.1)?;
        let mut top = Entry::new(settings, "");
        let alignment = super::alignment(profile, &mut top, Alignment::Offset { db: 0.0 })?;
        let user = top.string("user").map_err(site)?;
        if user
            .as_deref()
            .is_some_and(|u| u.is_empty() || u.chars().any(char::is_control))
        {
            return Err(site(SettingsError::new("user", "must be a non-empty name")));
        }
        if user.is_none() && secret.is_some() {
            return Err(site(SettingsError::new(
                "user",
                "missing; a password is configured for this Core, so Logon needs a user name",
            )));
        }
        let rate_secs = top
            .number("meter_rate_secs", 0.02..=60.0)
            .map_err(site)?
            .unwrap_or(profile_rate);
        if !(0.02..=60.0).contains(&rate_secs) {
            return Err(ProfileError::Option {
                profile: pid,
                key: "meter_rate_secs".into(),
                message: format!("must be between 0.02 and 60, got {rate_secs}"),
            });
        }
        let map = DspMap::parse(&mut top, QSYS_RANGE, |e, _role| {
            Ok(Addresses {
                level: control_name(e, "level_control")?,
                mute: control_name(e, "mute_control")?,
                meter: control_name(e, "meter_control")?,
            })
        });
        let map = SettingsError::settle(map, &top, &pid)?;
        Ok(Self {
            map,
            user,
            password: secret.unwrap_or_default(),
            keepalive: Duration::from_secs(keepalive_secs),
            reply_timeout: profile.timing.reply_timeout,
            rate_secs,
            alignment,
            dec: QrcDecoder::new(),
            next_id: 1,
            last_sent: Instant::now(),
            group_ready: false,
            routes: BTreeMap::new(),
            design_code: None,
            mapping: MappingFaults::default(),
        })
    }

    /// Every mapped control with its uses, in a stable order.
    fn mapped_controls(&self) -> BTreeMap<String, Vec<(usize, Function)>> {
        let mut out: BTreeMap<String, Vec<(usize, Function)>> = BTreeMap::new();
        for (i, ch) in self.map.channels.iter().enumerate() {
            for f in [Function::Level, Function::Mute, Function::Meter] {
                if let Some(name) = ch.address(f) {
                    out.entry(name.clone()).or_default().push((i, f));
                }
            }
        }
        out
    }

    async fn send(&mut self, link: &mut Link, bytes: &[u8]) -> Result<(), DriverError> {
        link.send(bytes).await?;
        self.last_sent = Instant::now();
        Ok(())
    }

    /// Send one request built for a fresh id and wait for its response, applying whatever the
    /// Core pushes meanwhile.
    async fn call(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
        build: impl FnOnce(u64) -> Vec<u8>,
    ) -> Result<Result<Json, RpcError>, DriverError> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let sent = link.bytes_out();
        // The decoder is lent to the exchange so `is_answer` may apply what the Core pushes
        // meanwhile; taking a `Default` one in its place allocates nothing.
        let mut dec = std::mem::take(&mut self.dec);
        let res = link
            .exchange(&mut dec, &build(id), self.reply_timeout, obs, |msg, obs| {
                match msg {
                    QrcMessage::Response { id: rid, .. } if *rid == id => return Reply::Answer,
                    QrcMessage::Response { id: rid, .. } => {
                        // The answer to a request whose wait was cancelled or timed out.
                        tracing::debug!(device = %obs.device(), id = rid, "late QRC response ignored");
                    }
                    other => self.apply(obs, other),
                }
                Reply::Skip
            })
            .await;
        self.dec = dec;
        if link.bytes_out() != sent {
            self.last_sent = Instant::now();
        }
        match res? {
            QrcMessage::Response { result, .. } => {
                obs.contact();
                Ok(result)
            }
            // `is_answer` takes nothing else for the answer.
            other => Err(ProtocolError::Unexpected {
                expected: format!("the response to request {id}"),
                got: format!("{other:?}"),
            }
            .into()),
        }
    }

    /// Apply an unsolicited message.
    fn apply(&mut self, obs: &mut Observer, msg: &QrcMessage) {
        match msg {
            QrcMessage::EngineStatus(s) => self.engine_status(obs, s),
            QrcMessage::ChangeGroupPoll { id, changes } => {
                if id != CHANGE_GROUP {
                    tracing::debug!(device = %obs.device(), group = %id, "push for another change group");
                    return;
                }
                for c in changes {
                    match c {
                        Ok(c) => self.control(obs, c),
                        Err(p) => obs.bad_input(p),
                    }
                }
            }
            QrcMessage::Notification { method } => {
                tracing::debug!(device = %obs.device(), %method, "QRC notification ignored");
            }
            QrcMessage::Response { id, .. } => {
                tracing::debug!(device = %obs.device(), id, "late QRC response ignored");
            }
        }
    }

    fn engine_status(&mut self, obs: &mut Observer, s: &EngineStatus) {
        let (state, faults) = match &s.state {
            EngineState::Active => (Value::Text("active".into()), Vec::new()),
            EngineState::Idle => (
                Value::Text("idle".into()),
                vec![Fault::new(
                    "dsp_no_design",
                    Severity::Fault,
                    "the Core runs no design: no audio is processed",
                )],
            ),
            EngineState::Standby => (
                Value::Text("standby".into()),
                vec![Fault::new(
                    "dsp_standby",
                    Severity::Warning,
                    "connected to the standby Core of a redundant pair; point the device at the active Core",
                )],
            ),
            EngineState::Unrecognised(other) => {
                obs.bad_input(&ProtocolError::Unexpected {
                    expected: "engine state Idle, Active or Standby".into(),
                    got: other.clone(),
                });
                (Value::Unknown, Vec::new())
            }
        };
        obs.reading(Point::device(Quantity::EngineState), state);
        if !matches!(s.state, EngineState::Unrecognised(_)) {
            obs.faults("engine", faults);
        }
        obs.identity(|id| {
            id.manufacturer = Some("QSC".to_owned());
            if let Some(p) = &s.platform {
                id.model = Some(p.clone());
            }
            if !s.design_name.is_empty() {
                id.extra.insert("design".into(), s.design_name.clone());
            }
            if s.is_emulator {
                id.extra.insert("emulator".into(), "true".into());
            }
        });
        if !s.design_code.is_empty() {
            if let Some(old) = &self.design_code {
                if *old != s.design_code {
                    // A new design may not have our controls, and the old change group's
                    // controls no longer exist: build the group again.
                    tracing::info!(device = %obs.device(), "Core runs a new design, re-creating the change group");
                    self.group_ready = false;
                }
            }
            self.design_code = Some(s.design_code.clone());
        }
    }

    /// A control's value arrived (change group push or `Control.Get`).
    fn control(&mut self, obs: &mut Observer, c: &ControlState) {
        let Some(uses) = self.routes.get(&c.name) else {
            tracing::debug!(device = %obs.device(), control = %c.name, "value for an unmapped control");
            return;
        };
        for &(idx, f) in uses {
            let ch = &self.map.channels[idx];
            let wrong = |what: &str| ProtocolError::Unexpected {
                expected: format!("{what} for {} ({})", ch.component(), c.name),
                got: format!("{:?}", c.value),
            };
            match f {
                Function::Level => match c.value.as_f64() {
                    Some(db) => obs.reading(ch.level_point(), Value::Float(db)),
                    None => obs.bad_input(&wrong("a level in dB")),
                },
                Function::Mute => match c.value.as_bool() {
                    Some(m) => obs.reading(ch.muted_point(), Value::Bool(m)),
                    None => obs.bad_input(&wrong("a mute state")),
                },
                Function::Meter => match c.value.as_f64().and_then(|v| self.alignment.to_dbfs(v)) {
                    Some(dbfs) => obs.meter_ref(&ch.subject, dbfs),
                    None => obs.bad_input(&wrong("a meter level")),
                },
            }
        }
    }

    fn refused(method: &str, err: &RpcError) -> DriverError {
        if err.code == qrc::LOGON_REQUIRED {
            return DriverError::Auth(format!("{method}: {}", err.message));
        }
        DriverError::Refused {
            command: method.to_owned(),
            reason: err.to_string(),
        }
    }

    /// Build the change group: every mapped control the Core knows, then AutoPoll.
    async fn create_group(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
    ) -> Result<(), DriverError> {
        self.routes.clear();
        let wanted = self.mapped_controls();
        for (name, uses) in wanted {
            // One control per call, so one unknown name costs only that control.
            let res = self
                .call(link, obs, |id| {
                    qrc::change_group_add_control(id, CHANGE_GROUP, &[&name])
                })
                .await?;
            match res {
                Ok(_) => {
                    for &(idx, f) in &uses {
                        self.mapping.ok(&self.map.channels[idx], f);
                    }
                    self.routes.insert(name, uses);
                }
                Err(e) if e.code == qrc::LOGON_REQUIRED => {
                    return Err(Self::refused("ChangeGroup.AddControl", &e))
                }
                Err(e) => {
                    for &(idx, f) in &uses {
                        self.mapping.failed(
                            &self.map.channels[idx],
                            f,
                            &format!("{name}: {}", e.message),
                        );
                    }
                }
            }
        }
        obs.faults(MAPPING_SOURCE, self.mapping.current());
        if !self.routes.is_empty() {
            let rate = self.rate_secs;
            if let Err(e) = self
                .call(link, obs, |id| {
                    qrc::change_group_auto_poll(id, CHANGE_GROUP, rate)
                })
                .await?
            {
                return Err(Self::refused("ChangeGroup.AutoPoll", &e));
            }
            // No meter period is declared: a change group reports changes only, so a steady
            // meter (an idle room at its floor) is silent without being lost, and judging
            // it by three periods would raise metering_lost every quiet night.
        }
        self.group_ready = true;
        Ok(())
    }

    async fn read_state(&mut self, link: &mut Link, obs: &mut Observer) -> Result<(), DriverError> {
        match self.call(link, obs, qrc::status_get).await? {
            Ok(v) => match qrc::parse_engine_status(&v) {
                Ok(s) => self.engine_status(obs, &s),
                Err(p) => obs.bad_input(&p),
            },
            Err(e) => return Err(Self::refused("StatusGet", &e)),
        }
        if !self.group_ready {
            self.create_group(link, obs).await?;
        }
        let names: Vec<String> = self.routes.keys().cloned().collect();
        if names.is_empty() {
            return Ok(());
        }
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        match self
            .call(link, obs, |id| qrc::control_get(id, &refs))
            .await?
        {
            Ok(v) => match qrc::parse_controls(&v) {
                Ok(list) => {
                    for c in list {
                        match c {
                            Ok(c) => self.control(obs, &c),
                            Err(p) => obs.bad_input(&p),
                        }
                    }
                }
                Err(p) => obs.bad_input(&p),
            },
            Err(e) => {
                // A control we added a moment ago is gone: the design changed under us.
                tracing::warn!(device = %obs.device(), error = %e, "Control.Get refused, re-creating the change group");
                self.group_ready = false;
            }
        }
        Ok(())
    }

    async fn set_and_read(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
        command: &DeviceCommand,
        target: Target<'_>,
        f: Function,
        to: SetTo,
    ) -> Result<(), DriverError> {
        let (idx, name) = resolve(&self.map, command, target, f, to)?;
        let name = name.clone();
        let value = QValue::Number(match to {
            SetTo::Db(db) => db,
            SetTo::On(on) => {
                if on {
                    1.0
                } else {
                    0.0
                }
            }
        });
        if let Err(e) = self
            .call(link, obs, |id| qrc::control_set(id, &name, &value, None))
            .await?
        {
            return Err(match Self::refused("Control.Set", &e) {
                DriverError::Refused { reason, .. } => refused(command, reason),
                other => other,
            });
        }
        // Read back what the Core made of it; a refused read leaves the value to the poll.
        let _ = self.get_control(link, obs, idx, f, &name).await?;
        Ok(())
    }

    /// One control, one `Control.Get`: a check before a restore step must not hold the link
    /// for the engine status and every control while a cut for another zone waits.
    async fn read_one(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
        command: &DeviceCommand,
        target: Target<'_>,
        f: Function,
    ) -> Result<(), DriverError> {
        let (idx, name) = resolve_read(&self.map, command, target, f)?;
        let name = name.clone();
        if let Err(e) = self.get_control(link, obs, idx, f, &name).await? {
            return Err(match Self::refused("Control.Get", &e) {
                DriverError::Refused { reason, .. } => refused(command, reason),
                other => other,
            });
        }
        Ok(())
    }

    /// `Control.Get` of one named control, reported as it comes back; the Core's refusal is
    /// the caller's to judge (a read-back after a set tolerates it).
    async fn get_control(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
        idx: usize,
        f: Function,
        name: &str,
    ) -> Result<Result<(), RpcError>, DriverError> {
        let v = match self
            .call(link, obs, |id| qrc::control_get(id, &[name]))
            .await?
        {
            Ok(v) => v,
            Err(e) => return Ok(Err(e)),
        };
        // As the read-back always was: what parses is reported, the rest left to the poll.
        if let Ok(list) = qrc::parse_controls(&v) {
            for c in list.into_iter().flatten() {
                if c.name == name && !self.routes.contains_key(name) {
                    // Not in the change group (AddControl refused it earlier) but the Core
                    // knows it now: report it anyway.
                    self.routes.insert(name.to_owned(), vec![(idx, f)]);
                }
                self.control(obs, &c);
            }
        }
        Ok(Ok(()))
    }
}

#[async_trait]
impl Driver for QsysDriver {
    fn name(&self) -> &'static str {
        "qsys"
    }

    fn fresh(&self) -> Option<Box<dyn Driver>> {
        Some(Box::new(self.clone()))
    }

    async fn open(&mut self, link: &mut Link, obs: &mut Observer) -> Result<(), DriverError> {
        link.take_fresh();
        self.dec.reset();
        // Change groups die with the connection (protocols.md §4.2).
        self.group_ready = false;
        self.routes.clear();
        if let Some(user) = self.user.clone() {
            let password = self.password.clone();
            if let Err(e) = self
                .call(link, obs, |id| qrc::logon(Some(id), &user, &password))
                .await?
            {
                return Err(DriverError::Auth(format!("Logon as {user}: {}", e.message)));
            }
        }
        self.create_group(link, obs).await
    }

    async fn read_all(&mut self, link: &mut Link, obs: &mut Observer) -> Result<(), DriverError> {
        self.read_state(link, obs).await
    }

    async fn execute(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
        command: &DeviceCommand,
    ) -> Result<(), DriverError> {
        if let Some((target, f, to)) = set_request(command) {
            return self.set_and_read(link, obs, command, target, f, to).await;
        }
        if let Some((target, f)) = read_request(command) {
            return self.read_one(link, obs, command, target, f).await;
        }
        match command {
            DeviceCommand::Refresh => self.read_state(link, obs).await,
            other => Err(DriverError::Unsupported {
                driver: "qsys",
                command: other.name(),
            }),
        }
    }

    async fn listen(&mut self, link: &mut Link, obs: &mut Observer) -> Result<(), DriverError> {
        loop {
            if !self.group_ready {
                self.create_group(link, obs).await?;
            }
            let due = self.last_sent + self.keepalive;
            let now = Instant::now();
            if now >= due {
                // The Core closes a session that sends nothing for 60 s; pushes from the Core
                // do not count (protocols.md §4.2).
                self.send(link, &qrc::noop(None)).await?;
                continue;
            }
            match link.read_frame(&mut self.dec, due - now).await {
                Ok(msg) => {
                    self.apply(obs, &msg);
                    // The rest of the same read in this turn, not one select round each
                    // (issue 15.2).
                    for _ in 0..crate::driver::link::DRAIN_FRAMES {
                        match link.try_frame(&mut self.dec)? {
                            Some(msg) => self.apply(obs, &msg),
                            None => break,
                        }
                    }
                    return Ok(());
                }
                Err(DriverError::Timeout { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    async fn close(&mut self, link: &mut Link, obs: &mut Observer) {
        if self.group_ready {
            let _ = self
                .call(link, obs, |id| qrc::change_group_destroy(id, CHANGE_GROUP))
                .await;
        }
        self.group_ready = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> Profile {
        Profile::parse(
            "id = \"q\"\nkind = \"dsp\"\nvendor = \"QSC\"\nfamily = \"Core\"\ndriver = \"qsys\"\ncapabilities = [\"level\"]\n[link]\nkind = \"tcp\"\nport = 1710\n[timing]\npoll_interval_secs = 10\n[options]\nkeepalive_secs = 20\n",
            "test",
        )
        .unwrap()
    }

    fn settings(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn routes_group_controls_shared_by_channels() {
        let d = QsysDriver::new(
            &profile(),
            None,
            &settings("[[zones]]\nid = \"a\"\nlevel_control = \"G\"\nmeter_control = \"M\"\n[[zones]]\nid = \"b\"\nmeter_control = \"M\"\n"),
        )
        .unwrap();
        let m = d.mapped_controls();
        assert_eq!(m["G"], vec![(0, Function::Level)]);
        assert_eq!(m["M"], vec![(0, Function::Meter), (1, Function::Meter)]);
    }

    #[test]
    fn bad_settings_name_the_key() {
        let cases: [(&str, Option<&str>, &str); 5] = [
            (
                "[[zones]]\nid = \"a\"\nlevel_control = \"\"\n",
                None,
                "settings.zones[0].level_control",
            ),
            (
                "[[zones]]\nid = \"a\"\nlevel_tag = \"L\"\n",
                None,
                "settings.zones[0].level_tag",
            ),
            ("meter_rate_secs = 0\n", None, "settings.meter_rate_secs"),
            ("", Some("pw"), "settings.user"),
            ("user = 5\n", None, "settings.user"),
        ];
        for (text, secret, key) in cases {
            match QsysDriver::new(&profile(), secret.map(str::to_owned), &settings(text)) {
                Err(ProfileError::Option { key: k, .. }) => assert_eq!(k, key, "{text}"),
                Err(e) => panic!("{text}: {e}"),
                Ok(_) => panic!("{text}: accepted"),
            }
        }
    }

    #[test]
    fn keepalive_must_stay_inside_the_idle_limit() {
        let mut p = profile();
        p.options
            .insert("keepalive_secs".into(), toml::Value::Integer(60));
        assert!(matches!(
            QsysDriver::new(&p, None, &toml::Table::new()),
            Err(ProfileError::Option { key, .. }) if key == "keepalive_secs"
        ));
    }
}
