//! PJLink Class 1/2 projector driver (protocols.md §1): greeting and MD5 authentication,
//! request/reply exchanges over a persistent session or one connection per exchange, and the
//! translation of replies into readings (`power`, `lamp.N.hours`, `input` …), fault sets
//! (`erst`, `lamp`, `filter`, `failure`) and identity.
//!
//! It owns no socket: the runtime's [`Link`] carries the bytes. It must not block, panic on a
//! reply, or treat "not now" (ERR3) as the projector being gone.

use std::collections::BTreeSet;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::codec::pjlink::{
    encode_request, md5_digest, parse_class, parse_hours, parse_input_list, parse_lamps,
    parse_models, parse_reply, parse_text, AvMute, Class, Command, ErrorCode, ErrorLevel,
    ErrorStatus, Greeting, InputCode, LineDecoder, Outcome, PowerStatus, Reply, Resolution,
    Response,
};
use crate::codec::{printable, ProtocolError};
use crate::driver::{Driver, DriverError, Link, LinkError, Observer, Step};
use crate::model::{DeviceCommand, Fault, Point, PowerState, Quantity, Severity, Value};
use crate::profile::{LampSpec, Profile, ProfileError};

/// Replies to other commands skipped while waiting for ours (late answers to a request that
/// timed out) before the session is declared out of step.
const MAX_STALE_REPLIES: usize = 8;

/// Fault sources this driver owns (each replaces its own set, see `Observer::faults`).
const SRC_ERST: &str = "erst";
const SRC_LAMP: &str = "lamp";
const SRC_FILTER: &str = "filter";
const SRC_FAILURE: &str = "failure";

/// What one status query told us, after the error codes are given their meaning.
enum Answer {
    Value(String),
    /// ERR1: the projector has no such feature (for LAMP/FILT: no lamp / no filter).
    Absent,
    /// ERR2, ERR3 or ERR4 on a query: nothing to learn this time.
    Skipped,
}

/// Re-read identity every this many polls (a few minutes at the usual interval), so a swapped
/// projector is noticed even when its link never looked down.
const IDENTITY_EVERY_POLLS: u32 = 30;

#[derive(Clone)]
pub struct PjlinkDriver {
    password: Option<String>,
    lamp: Option<LampSpec>,
    filter_life_hours: Option<u32>,
    max_class: Class,
    reply_timeout: Duration,
    /// Pause between two connections in per-exchange mode (profile `command_gap_ms`).
    exchange_gap: Duration,
    warm_up: Duration,
    cool_down: Duration,
    decoder: LineDecoder,
    /// Digest for the session's first command, set by the greeting (protocols.md §1.3).
    pending_digest: Option<String>,
    /// The projector's class as CLSS reported it, capped at `max_class`.
    class: Class,
    /// Queries answered ERR1 since the last full read: not asked again by `poll`.
    absent: BTreeSet<Command>,
    /// Queries answered ERR3 ("unavailable time") while the projector reported standby: not
    /// asked again by `poll` until POWR says it is no longer in standby. Many projectors
    /// refuse INPT and AVMT in standby (protocols.md §1.6), others answer them; this learns
    /// which, per session, instead of asking twice a poll for an answer that cannot come.
    unavailable_in_standby: BTreeSet<Command>,
    /// The last power status POWR reported.
    power: Option<PowerStatus>,
    lamp_count: usize,
    /// An ERR4 seen in the current read cycle.
    failure_seen: bool,
    /// The projector reported POWR 2/3 at least once: trust it rather than profile timings.
    reports_transitions: bool,
    /// After a power command to a projector that never reports 2/3: busy until then.
    transition_until: Option<Instant>,
    last_exchange_end: Option<Instant>,
    /// A persistent session was silently reopened during this poll: the unit on the other end
    /// may be another one (swapped while the cable was out), so its identity is read again.
    session_renewed: bool,
    /// Polls since identity was last read; a projector behind a per-exchange link or a
    /// quick cable swap is re-identified every [`IDENTITY_EVERY_POLLS`] polls.
    polls_since_identity: u32,
}

impl PjlinkDriver {
    pub fn new(profile: &Profile, secret: Option<String>) -> Result<Self, ProfileError> {
        let max_class: u8 = profile.option("max_class", 2)?;
        let max_class = match max_class {
            1 => Class::One,
            2 => Class::Two,
            _ => {
                return Err(ProfileError::Option {
                    profile: profile.id.to_string(),
                    key: "max_class".into(),
                    message: "must be 1 or 2".into(),
                })
            }
        };
        Ok(Self {
            password: secret.filter(|s| !s.is_empty()),
            lamp: profile.lamp.clone(),
            filter_life_hours: profile.filter_life_hours,
            max_class,
            reply_timeout: profile.timing.reply_timeout,
            exchange_gap: profile.timing.command_gap,
            warm_up: profile.timing.warm_up,
            cool_down: profile.timing.cool_down,
            decoder: LineDecoder::replies(),
            pending_digest: None,
            class: Class::One,
            absent: BTreeSet::new(),
            unavailable_in_standby: BTreeSet::new(),
            power: None,
            lamp_count: 0,
            failure_seen: false,
            reports_transitions: false,
            transition_until: None,
            last_exchange_end: None,
            session_renewed: false,
            polls_since_identity: 0,
        })
    }

    /// Read the greeting of a new connection and prepare authentication.
    async fn ensure_session(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
    ) -> Result<(), DriverError> {
        if !link.take_fresh() {
            return Ok(());
        }
        self.decoder = LineDecoder::replies();
        self.pending_digest = None;
        let res = self.greet(link, obs).await;
        if res.is_err() {
            // No usable session on this connection; the next exchange starts a new one.
            link.disconnect();
        }
        res
    }

    async fn greet(&mut self, link: &mut Link, obs: &mut Observer) -> Result<(), DriverError> {
        // The greeting is the answer to the connection itself: the first line, whatever it is.
        let line = link
            .converse(
                &mut self.decoder,
                b"",
                self.reply_timeout,
                obs,
                |read, _| match read {
                    Ok(line) => Step::Done(line),
                    Err(p) => Step::End(p.into()),
                },
            )
            .await?;
        match parse_reply(&line)? {
            Reply::Greeting(Greeting::NoAuth) => Ok(()),
            Reply::Greeting(Greeting::Md5 { random }) => match &self.password {
                Some(pw) => {
                    self.pending_digest = Some(md5_digest(&random, pw));
                    Ok(())
                }
                None => Err(DriverError::Auth(
                    "the projector requires a PJLink password and none is configured".into(),
                )),
            },
            Reply::AuthFailed => Err(DriverError::Auth(
                "the projector refused the session (PJLINK ERRA)".into(),
            )),
            Reply::Response(r) => Err(ProtocolError::Unexpected {
                expected: "PJLINK greeting".into(),
                got: format!("%{}{}={}", r.class, r.command, r.param),
            }
            .into()),
        }
    }

    /// One request and its reply, reconnecting where the mode asks for it.
    async fn exchange(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
        class: Class,
        command: Command,
        param: &str,
    ) -> Result<Response, DriverError> {
        let mut first_try = true;
        loop {
            if link.is_per_exchange() {
                // Projectors that hang up after each reply also dislike instant reconnects.
                if let Some(end) = self.last_exchange_end {
                    tokio::time::sleep_until(end + self.exchange_gap).await;
                }
            }
            let reused = link.is_open() && !link.is_per_exchange();
            let res = self.exchange_once(link, obs, class, command, param).await;
            if link.is_per_exchange() {
                link.disconnect();
                self.last_exchange_end = Some(Instant::now());
            }
            match res {
                // A persistent session the projector dropped while idle (~30 s, protocols.md
                // §1.1): open a new one and ask again, once. PJLink sets are idempotent.
                Err(DriverError::Link(LinkError::Closed | LinkError::Io(_)))
                    if reused && first_try =>
                {
                    link.disconnect();
                    first_try = false;
                    self.session_renewed = true;
                }
                other => return other,
            }
        }
    }

    async fn exchange_once(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
        class: Class,
        command: Command,
        param: &str,
    ) -> Result<Response, DriverError> {
        link.connect().await?;
        self.ensure_session(link, obs).await?;
        let digest = self.pending_digest.take();
        let bytes = encode_request(digest.as_deref(), class, command, param)?;
        self.read_reply(link, obs, &bytes, command).await
    }

    /// Send `request` and read its reply. A garbled reply, a greeting or too many stale
    /// replies end the exchange uncounted ([`Step::End`]): the caller counts it and asks once
    /// more ([`Self::exchange_retry`]).
    async fn read_reply(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
        request: &[u8],
        command: Command,
    ) -> Result<Response, DriverError> {
        let mut stale = 0;
        let mut refused = false;
        let read = link
            .converse(
                &mut self.decoder,
                request,
                self.reply_timeout,
                obs,
                |read, _| {
                    let line = match read {
                        Ok(line) => line,
                        Err(p) => return Step::End(p.into()),
                    };
                    let unexpected = || {
                        Step::End(
                            ProtocolError::Unexpected {
                                expected: format!("reply to {command}"),
                                got: printable(&line, 48),
                            }
                            .into(),
                        )
                    };
                    match parse_reply(&line) {
                        Ok(Reply::Response(r)) if r.command == command => Step::Done(r),
                        Ok(Reply::Response(r)) => {
                            // A late answer to an earlier request that timed out. Skipping it
                            // keeps one slow reply from shifting every later answer by one.
                            stale += 1;
                            tracing::debug!(expected = %command, got = %r.command, "pjlink: skipped stale reply");
                            if stale > MAX_STALE_REPLIES {
                                return unexpected();
                            }
                            Step::Skip
                        }
                        Ok(Reply::AuthFailed) => {
                            refused = true;
                            Step::End(DriverError::Auth(
                                "the projector rejected the password (PJLINK ERRA)".into(),
                            ))
                        }
                        Ok(Reply::Greeting(_)) => unexpected(),
                        Err(p) => Step::End(p.into()),
                    }
                },
            )
            .await;
        match read {
            Err(DriverError::Protocol(p)) => Err(self.resync(link, p)),
            Err(e) => {
                if refused {
                    link.disconnect();
                }
                Err(e)
            }
            ok => ok,
        }
    }

    /// Drop whatever followed a bad line, so the next exchange starts clean. The decoder keeps
    /// skipping the rest of an oversized line by itself.
    fn resync(&mut self, link: &mut Link, p: ProtocolError) -> DriverError {
        let dropped = link.discard_input();
        tracing::debug!(error = %p, dropped, "pjlink: bad reply, input resynchronised");
        DriverError::Protocol(p)
    }

    /// An exchange that, when a reply is garbled, counts it and asks once more.
    async fn exchange_retry(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
        class: Class,
        command: Command,
        param: &str,
    ) -> Result<Response, DriverError> {
        match self.exchange(link, obs, class, command, param).await {
            Err(DriverError::Protocol(p)) => {
                obs.bad_input(&p);
                self.exchange(link, obs, class, command, param).await
            }
            other => other,
        }
    }

    /// A status query (`<CMND> ?`) with the error codes given their meaning.
    async fn query(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
        class: Class,
        command: Command,
    ) -> Result<Answer, DriverError> {
        let r = self.exchange_retry(link, obs, class, command, "?").await?;
        Ok(match r.outcome() {
            Outcome::Value(v) => Answer::Value(v.to_owned()),
            Outcome::Ok => {
                return Err(ProtocolError::Unexpected {
                    expected: format!("{command} value"),
                    got: "OK".into(),
                }
                .into())
            }
            Outcome::Error(ErrorCode::Undefined) => {
                self.absent.insert(command);
                Answer::Absent
            }
            Outcome::Error(ErrorCode::ProjectorFailure) => {
                self.failure_seen = true;
                Answer::Skipped
            }
            Outcome::Error(e) => {
                if e == ErrorCode::UnavailableTime && self.power == Some(PowerStatus::Standby) {
                    self.unavailable_in_standby.insert(command);
                }
                tracing::debug!(%command, error = %e, "pjlink: query not answered now");
                Answer::Skipped
            }
        })
    }

    /// INPT/INST: the `%2` form carries Class 2 input numbers (protocols.md §1.5).
    fn input_class(&self) -> Class {
        self.class
    }

    async fn read_class(&mut self, link: &mut Link, obs: &mut Observer) -> Result<(), DriverError> {
        // Asked first: Class 2 questions go only to Class 2 projectors (a Class 1 projector
        // may not answer them at all).
        self.class = Class::One;
        if let Answer::Value(v) = self.query(link, obs, Class::One, Command::CLSS).await? {
            let reported = parse_class(&v)?;
            self.class = reported.min(self.max_class);
            obs.identity(|id| {
                id.extra
                    .insert("pjlink_class".into(), reported.number().to_string());
            });
        }
        Ok(())
    }

    fn report_power(&mut self, obs: &mut Observer, p: PowerStatus) {
        self.power = Some(p);
        if p != PowerStatus::Standby {
            self.unavailable_in_standby.clear();
        }
        let state = match p {
            PowerStatus::Standby => PowerState::Off,
            PowerStatus::On => PowerState::On,
            PowerStatus::Cooling => PowerState::CoolingDown,
            PowerStatus::WarmUp => PowerState::WarmingUp,
        };
        if state.is_transitional() {
            self.reports_transitions = true;
        }
        // Projectors that never report 2/3 (protocols.md §1.6) are busy for the profile's
        // warm-up/cool-down time after a power command.
        let pending =
            !self.reports_transitions && self.transition_until.is_some_and(|t| Instant::now() < t);
        obs.reading(Point::device(Quantity::Power), Value::Power(state));
        obs.busy(state.is_transitional() || pending);
    }

    async fn read_power(&mut self, link: &mut Link, obs: &mut Observer) -> Result<(), DriverError> {
        if let Answer::Value(v) = self.query(link, obs, Class::One, Command::POWR).await? {
            let p = PowerStatus::parse(&v)?;
            self.report_power(obs, p);
        }
        Ok(())
    }

    async fn read_errors(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
    ) -> Result<(), DriverError> {
        match self.query(link, obs, Class::One, Command::ERST).await? {
            Answer::Value(v) => {
                let e = ErrorStatus::parse(&v)?;
                obs.faults(SRC_ERST, erst_faults(&e));
            }
            Answer::Absent => obs.faults(SRC_ERST, Vec::new()),
            Answer::Skipped => {}
        }
        Ok(())
    }

    async fn read_lamps(&mut self, link: &mut Link, obs: &mut Observer) -> Result<(), DriverError> {
        match self.query(link, obs, Class::One, Command::LAMP).await? {
            Answer::Value(v) => {
                let lamps = parse_lamps(&v)?;
                let mut faults = Vec::new();
                for (i, l) in lamps.iter().enumerate() {
                    let n = i + 1;
                    let lamp = u8::try_from(n).unwrap_or(u8::MAX);
                    obs.reading(
                        Point::lamp(lamp, Quantity::LampHours),
                        Value::Int(i64::from(l.hours)),
                    );
                    obs.reading(Point::lamp(lamp, Quantity::LampOn), Value::Bool(l.on));
                    if let Some(spec) = &self.lamp {
                        if l.hours >= spec.warn_at() {
                            faults.push(
                                Fault::new(
                                    "lamp_life",
                                    Severity::Warning,
                                    format!(
                                        "lamp {n} has run {} h of its rated {} h; order a replacement",
                                        l.hours, spec.life_hours
                                    ),
                                )
                                .on(format!("lamp {n}")),
                            );
                        }
                    }
                }
                self.forget_lamps(obs, lamps.len());
                obs.faults(SRC_LAMP, faults);
            }
            // ERR1 on LAMP: a lamp-less model (protocols.md §1.4).
            Answer::Absent => {
                self.forget_lamps(obs, 0);
                obs.faults(SRC_LAMP, Vec::new());
            }
            Answer::Skipped => {}
        }
        Ok(())
    }

    /// Drop readings of lamps beyond `count` (the projector reports fewer than before).
    fn forget_lamps(&mut self, obs: &mut Observer, count: usize) {
        for n in count + 1..=self.lamp_count.max(count) {
            let lamp = u8::try_from(n).unwrap_or(u8::MAX);
            obs.remove_reading(&Point::lamp(lamp, Quantity::LampHours));
            obs.remove_reading(&Point::lamp(lamp, Quantity::LampOn));
        }
        self.lamp_count = count;
    }

    async fn read_input(&mut self, link: &mut Link, obs: &mut Observer) -> Result<(), DriverError> {
        let class = self.input_class();
        match self.query(link, obs, class, Command::INPT).await? {
            Answer::Value(v) => {
                let code = InputCode::parse(&v)?;
                obs.reading(
                    Point::device(Quantity::Input),
                    Value::Text(code.to_string()),
                );
            }
            Answer::Absent => obs.remove_reading(&Point::device(Quantity::Input)),
            Answer::Skipped => {}
        }
        Ok(())
    }

    async fn read_input_list(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
    ) -> Result<(), DriverError> {
        let class = self.input_class();
        if let Answer::Value(v) = self.query(link, obs, class, Command::INST).await? {
            let list = parse_input_list(&v)?;
            let text = list
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" ");
            obs.reading(Point::device(Quantity::Inputs), Value::Text(text));
        }
        Ok(())
    }

    async fn read_mute(&mut self, link: &mut Link, obs: &mut Observer) -> Result<(), DriverError> {
        if let Answer::Value(v) = self.query(link, obs, Class::One, Command::AVMT).await? {
            let m = AvMute::parse(&v)?;
            report_mute(obs, m);
        }
        Ok(())
    }

    async fn read_filter(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
    ) -> Result<(), DriverError> {
        match self.query(link, obs, Class::Two, Command::FILT).await? {
            Answer::Value(v) => {
                let hours = parse_hours(&v)?;
                obs.reading(
                    Point::device(Quantity::FilterHours),
                    Value::Int(i64::from(hours)),
                );
                let mut faults = Vec::new();
                if let Some(life) = self.filter_life_hours {
                    if hours >= life {
                        faults.push(Fault::new(
                            "filter_life",
                            Severity::Warning,
                            format!(
                                "filter has run {hours} h of its {life} h; clean or replace it"
                            ),
                        ));
                    }
                }
                obs.faults(SRC_FILTER, faults);
            }
            // ERR1 on FILT: no filter (protocols.md §1.5).
            Answer::Absent => {
                obs.remove_reading(&Point::device(Quantity::FilterHours));
                obs.faults(SRC_FILTER, Vec::new());
            }
            Answer::Skipped => {}
        }
        Ok(())
    }

    async fn read_resolution(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
    ) -> Result<(), DriverError> {
        if let Answer::Value(v) = self.query(link, obs, Class::Two, Command::IRES).await? {
            let value = match Resolution::parse(&v)? {
                r @ Resolution::Signal { .. } => Value::Text(r.encode()),
                Resolution::NoSignal => Value::Text("no_signal".into()),
                Resolution::Unknown => Value::Unknown,
            };
            obs.reading(Point::device(Quantity::Resolution), value);
        }
        Ok(())
    }

    /// A text query; `None` when the projector does not have it now.
    async fn read_text(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
        class: Class,
        command: Command,
    ) -> Result<Option<String>, DriverError> {
        Ok(match self.query(link, obs, class, command).await? {
            Answer::Value(v) => Some(parse_text(&v)),
            _ => None,
        })
    }

    /// Identity (NAME, INF1, INF2, INFO, class-2 SNUM/SVER/RLMP/RFIL), resetting the
    /// re-identification counter.
    async fn read_identity(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
    ) -> Result<(), DriverError> {
        self.polls_since_identity = 0;
        self.read_identity_inner(link, obs).await
    }

    async fn read_identity_inner(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
    ) -> Result<(), DriverError> {
        let name = self.read_text(link, obs, Class::One, Command::NAME).await?;
        let manufacturer = self.read_text(link, obs, Class::One, Command::INF1).await?;
        let model = self.read_text(link, obs, Class::One, Command::INF2).await?;
        let info = self.read_text(link, obs, Class::One, Command::INFO).await?;
        let (mut serial, mut firmware, mut lamp_models, mut filter_models) =
            (None, None, None, None);
        if self.class == Class::Two {
            serial = self.read_text(link, obs, Class::Two, Command::SNUM).await?;
            firmware = self.read_text(link, obs, Class::Two, Command::SVER).await?;
            lamp_models = self.read_text(link, obs, Class::Two, Command::RLMP).await?;
            filter_models = self.read_text(link, obs, Class::Two, Command::RFIL).await?;
        }
        let non_empty = |s: Option<String>| s.filter(|s| !s.is_empty());
        obs.identity(|id| {
            let set = |field: &mut Option<String>, v: Option<String>| {
                if let Some(v) = non_empty(v) {
                    *field = Some(v);
                }
            };
            set(&mut id.name, name);
            set(&mut id.manufacturer, manufacturer);
            set(&mut id.model, model);
            set(&mut id.serial, serial);
            set(&mut id.firmware, firmware);
            for (key, v) in [
                ("info", info),
                (
                    "replacement_lamp",
                    lamp_models.map(|m| parse_models(&m).join(" ")),
                ),
                (
                    "replacement_filter",
                    filter_models.map(|m| parse_models(&m).join(" ")),
                ),
            ] {
                if let Some(v) = non_empty(v) {
                    id.extra.insert(key.into(), v);
                }
            }
        });
        Ok(())
    }

    fn finish_cycle(&mut self, obs: &mut Observer) {
        let faults = if self.failure_seen {
            vec![failure_fault()]
        } else {
            Vec::new()
        };
        obs.faults(SRC_FAILURE, faults);
    }

    /// Everything the projector can tell, learning its class and features afresh.
    async fn full_read(&mut self, link: &mut Link, obs: &mut Observer) -> Result<(), DriverError> {
        self.absent.clear();
        self.unavailable_in_standby.clear();
        self.failure_seen = false;
        self.read_class(link, obs).await?;
        self.read_power(link, obs).await?;
        self.read_errors(link, obs).await?;
        self.read_lamps(link, obs).await?;
        self.read_input_list(link, obs).await?;
        self.read_input(link, obs).await?;
        self.read_mute(link, obs).await?;
        self.read_identity(link, obs).await?;
        if self.class == Class::Two {
            self.read_filter(link, obs).await?;
            self.read_resolution(link, obs).await?;
        }
        self.finish_cycle(obs);
        Ok(())
    }

    fn has(&self, c: Command) -> bool {
        !self.absent.contains(&c)
    }

    /// Not a query this projector refuses in the standby it is in.
    fn available_now(&self, c: Command) -> bool {
        !self.unavailable_in_standby.contains(&c)
    }

    /// A set command's reply: `OK`, or an error code turned into the right [`DriverError`].
    fn expect_ok(
        &mut self,
        obs: &mut Observer,
        what: &'static str,
        r: &Response,
    ) -> Result<(), DriverError> {
        match r.outcome() {
            Outcome::Ok => Ok(()),
            Outcome::Error(ErrorCode::UnavailableTime) => Err(DriverError::Busy {
                command: what.into(),
                reason: "projector is warming up, cooling down or in standby (ERR3)".into(),
                // The rest of a warm-up or cool-down we started, when one is under way.
                ready_in: self
                    .transition_until
                    .map(|t| t.saturating_duration_since(Instant::now()))
                    .filter(|d| !d.is_zero()),
            }),
            Outcome::Error(ErrorCode::Undefined) => Err(DriverError::Unsupported {
                driver: "pjlink",
                command: what,
            }),
            Outcome::Error(ErrorCode::OutOfParameter) => Err(DriverError::Refused {
                command: what.into(),
                reason: "out of parameter (ERR2): not available on this projector".into(),
            }),
            Outcome::Error(ErrorCode::ProjectorFailure) => {
                obs.faults(SRC_FAILURE, vec![failure_fault()]);
                Err(DriverError::Refused {
                    command: what.into(),
                    reason: "projector failure (ERR4)".into(),
                })
            }
            Outcome::Value(v) => Err(ProtocolError::Unexpected {
                expected: format!("OK to {}", r.command),
                got: printable(v.as_bytes(), 40),
            }
            .into()),
        }
    }
}

fn failure_fault() -> Fault {
    Fault::new(
        "projector_failure",
        Severity::Fault,
        "the projector reports a failure (PJLink ERR4); check it on site",
    )
}

fn erst_faults(e: &ErrorStatus) -> Vec<Fault> {
    e.components()
        .iter()
        .filter_map(|&(name, level)| {
            let severity = match level {
                ErrorLevel::Ok => return None,
                ErrorLevel::Warning => Severity::Warning,
                ErrorLevel::Error => Severity::Fault,
            };
            let what = name.replace('_', " ");
            let word = if severity == Severity::Fault {
                "error"
            } else {
                "warning"
            };
            Some(Fault::new(
                name,
                severity,
                format!("projector reports a {what} {word}"),
            ))
        })
        .collect()
}

fn report_mute(obs: &mut Observer, m: AvMute) {
    obs.reading(
        Point::device(Quantity::AvMute),
        Value::Bool(m.video || m.audio),
    );
    obs.reading(Point::device(Quantity::VideoMute), Value::Bool(m.video));
    obs.reading(Point::device(Quantity::AudioMute), Value::Bool(m.audio));
}

#[async_trait]
impl Driver for PjlinkDriver {
    fn name(&self) -> &'static str {
        "pjlink"
    }

    fn fresh(&self) -> Option<Box<dyn Driver>> {
        Some(Box::new(self.clone()))
    }

    async fn open(&mut self, link: &mut Link, obs: &mut Observer) -> Result<(), DriverError> {
        self.pending_digest = None;
        self.last_exchange_end = None;
        if link.is_open() {
            self.ensure_session(link, obs).await?;
        }
        Ok(())
    }

    async fn read_all(&mut self, link: &mut Link, obs: &mut Observer) -> Result<(), DriverError> {
        let res = self.full_read(link, obs).await;
        // The runtime counts bad input from polls and commands, not from the read that
        // follows a connect, so this one is counted here.
        if let Err(DriverError::Protocol(p)) = &res {
            obs.bad_input(p);
        }
        res
    }

    async fn poll(&mut self, link: &mut Link, obs: &mut Observer) -> Result<(), DriverError> {
        self.failure_seen = false;
        self.read_power(link, obs).await?;
        if self.has(Command::ERST) {
            self.read_errors(link, obs).await?;
        }
        if self.has(Command::LAMP) {
            self.read_lamps(link, obs).await?;
        }
        if self.has(Command::INPT) && self.available_now(Command::INPT) {
            self.read_input(link, obs).await?;
        }
        if self.has(Command::AVMT) && self.available_now(Command::AVMT) {
            self.read_mute(link, obs).await?;
        }
        if self.class == Class::Two {
            if self.has(Command::FILT) {
                self.read_filter(link, obs).await?;
            }
            if self.has(Command::IRES) {
                self.read_resolution(link, obs).await?;
            }
        }
        self.polls_since_identity += 1;
        if std::mem::take(&mut self.session_renewed)
            || self.polls_since_identity >= IDENTITY_EVERY_POLLS
        {
            self.read_identity(link, obs).await?;
        }
        self.finish_cycle(obs);
        Ok(())
    }

    async fn execute(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
        command: &DeviceCommand,
    ) -> Result<(), DriverError> {
        match command {
            DeviceCommand::Power { on } => {
                let param = if *on { "1" } else { "0" };
                let r = self
                    .exchange(link, obs, Class::One, Command::POWR, param)
                    .await?;
                self.expect_ok(obs, "power", &r)?;
                let window = if *on { self.warm_up } else { self.cool_down };
                self.transition_until = Some(Instant::now() + window);
                // Show "warming up" now rather than one poll later. The command itself has
                // succeeded: only a lost link makes this follow-up an error.
                match self.read_power(link, obs).await {
                    Err(e) if e.is_link_failure() => Err(e),
                    Err(DriverError::Protocol(p)) => {
                        obs.bad_input(&p);
                        Ok(())
                    }
                    _ => Ok(()),
                }
            }
            DeviceCommand::SelectInput { input } => {
                let code = InputCode::parse(input).map_err(|_| DriverError::Rejected {
                    command: "select_input".into(),
                    reason: format!(
                        "{input:?} is not a PJLink input code (type 1-6, index 1-9/A-Z)"
                    ),
                })?;
                if code.needs_class2() && self.class != Class::Two {
                    return Err(DriverError::Rejected {
                        command: "select_input".into(),
                        reason: format!("input {code} needs a PJLink Class 2 projector"),
                    });
                }
                let class = self.input_class();
                let r = self
                    .exchange(link, obs, class, Command::INPT, &code.to_string())
                    .await?;
                self.expect_ok(obs, "select_input", &r)?;
                obs.reading(
                    Point::device(Quantity::Input),
                    Value::Text(code.to_string()),
                );
                Ok(())
            }
            DeviceCommand::AvMute { on } => {
                let m = AvMute {
                    video: *on,
                    audio: *on,
                };
                let r = self
                    .exchange(link, obs, Class::One, Command::AVMT, m.encode())
                    .await?;
                self.expect_ok(obs, "av_mute", &r)?;
                report_mute(obs, m);
                Ok(())
            }
            DeviceCommand::Refresh => self.full_read(link, obs).await,
            other => Err(DriverError::Unsupported {
                driver: "pjlink",
                command: other.name(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Byte-exact conversations with a scripted projector over an in-memory stream.

    use std::sync::Arc;

    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream};
    use tokio::sync::watch;

    use super::*;
    use crate::clock::Clock;
    use crate::events::EventBus;
    use crate::metrics::Metrics;
    use crate::model::{DeviceId, DeviceState, Health, ProfileId, RoomId};

    fn profile() -> Profile {
        Profile::parse(
            r#"
id = "test-pjlink"
kind = "projector"
vendor = "test"
family = "pjlink"
driver = "pjlink"
capabilities = ["power", "lamp"]
[link]
kind = "tcp"
port = 4352
[timing]
poll_interval_secs = 10
[lamp]
life_hours = 2000
"#,
            "test",
        )
        .unwrap()
    }

    fn observer() -> (Observer, watch::Receiver<DeviceState>) {
        let clock = Clock::starting_at(chrono::DateTime::UNIX_EPOCH);
        let st = DeviceState::new(
            DeviceId::new("p1"),
            RoomId::new("r1"),
            ProfileId::new("test-pjlink"),
            "test".into(),
            clock.now(),
        );
        let (tx, rx) = watch::channel(st);
        // Readings only show once the device is reachable, as the runtime would set it.
        tx.send_modify(|s| s.reachable = true);
        (
            Observer::new(clock, Arc::new(tx), EventBus::new(Metrics::new())),
            rx,
        )
    }

    /// A projector that answers from a script: each expected request line with its reply.
    async fn scripted(
        peer: DuplexStream,
        greeting: &str,
        script: Vec<(&'static str, &'static str)>,
    ) {
        let (r, mut w) = tokio::io::split(peer);
        let mut r = BufReader::new(r);
        w.write_all(greeting.as_bytes()).await.unwrap();
        for (want, reply) in script {
            let mut line = Vec::new();
            r.read_until(b'\r', &mut line).await.unwrap();
            assert_eq!(String::from_utf8_lossy(&line), want);
            w.write_all(reply.as_bytes()).await.unwrap();
        }
    }

    fn link() -> (Link, DuplexStream) {
        let (a, b) = tokio::io::duplex(4096);
        (Link::over(a), b)
    }

    #[tokio::test]
    async fn digest_goes_on_the_first_command_only() {
        let (mut link, peer) = link();
        let proj = crate::test_spawn(scripted(
            peer,
            "PJLINK 1 498e4a67\r",
            vec![
                ("5d8409bc1c3fa39749434aa3a5c38682%1POWR 1\r", "%1POWR=OK\r"),
                ("%1POWR ?\r", "%1POWR=3\r"),
            ],
        ));
        let mut d = PjlinkDriver::new(&profile(), Some("JBMIAProjectorLink".into())).unwrap();
        let (mut obs, rx) = observer();
        d.open(&mut link, &mut obs).await.unwrap();
        d.execute(&mut link, &mut obs, &DeviceCommand::Power { on: true })
            .await
            .unwrap();
        proj.await.unwrap();
        let s = rx.borrow();
        assert_eq!(
            s.reading(&Point::device(Quantity::Power)).unwrap().value,
            Value::Power(PowerState::WarmingUp)
        );
        assert!(s.busy);
        assert_eq!(s.health, Health::Busy);
    }

    #[tokio::test]
    async fn missing_password_is_an_auth_error() {
        let (mut link, mut peer) = link();
        peer.write_all(b"PJLINK 1 498e4a67\r").await.unwrap();
        let mut d = PjlinkDriver::new(&profile(), None).unwrap();
        let (mut obs, _rx) = observer();
        let e = d.open(&mut link, &mut obs).await.unwrap_err();
        assert!(matches!(e, DriverError::Auth(_)), "{e}");
        assert!(e.is_link_failure());
    }

    #[tokio::test]
    async fn erra_after_the_first_command_is_an_auth_error() {
        let (mut link, peer) = link();
        // The digest is right for the configured password, but the projector's password was
        // changed: only its ERRA tells.
        let proj = crate::test_spawn(scripted(
            peer,
            "PJLINK 1 498e4a67\r",
            vec![(
                "5d8409bc1c3fa39749434aa3a5c38682%1POWR 0\r",
                "PJLINK ERRA\r",
            )],
        ));
        let mut d = PjlinkDriver::new(&profile(), Some("JBMIAProjectorLink".into())).unwrap();
        let (mut obs, _rx) = observer();
        d.open(&mut link, &mut obs).await.unwrap();
        let e = d
            .execute(&mut link, &mut obs, &DeviceCommand::Power { on: false })
            .await
            .unwrap_err();
        proj.await.unwrap();
        assert!(matches!(e, DriverError::Auth(_)), "{e}");
        assert!(!link.is_open(), "the session is unusable after ERRA");
    }

    #[tokio::test]
    async fn read_all_maps_every_answer() {
        let (mut link, peer) = link();
        let proj = crate::test_spawn(scripted(
            peer,
            "PJLINK 0\r",
            vec![
                ("%1CLSS ?\r", "%1CLSS=Version1\r"),
                ("%1POWR ?\r", "%1powr=1\r"),
                ("%1ERST ?\r", "%1ERST=100020\r"),
                ("%1LAMP ?\r", "%1LAMP=12345 1 678 0\r"),
                ("%1INST ?\r", "%1INST=11 12 31 32\r"),
                ("%1INPT ?\r", "%1INPT=31\r"),
                ("%1AVMT ?\r", "%1AVMT=11\r"),
                ("%1NAME ?\r", "%1NAME=Room 4\r"),
                ("%1INF1 ?\r", "%1INF1=Panasonic\r"),
                ("%1INF2 ?\r", "%1INF2=PT-EZ580\r"),
                ("%1INFO ?\r", "%1INFO=\r"),
            ],
        ));
        let mut d = PjlinkDriver::new(&profile(), None).unwrap();
        let (mut obs, rx) = observer();
        d.open(&mut link, &mut obs).await.unwrap();
        d.read_all(&mut link, &mut obs).await.unwrap();
        proj.await.unwrap();
        let s = rx.borrow();
        let v = |p: &Point| s.reading(p).unwrap_or_else(|| panic!("{p}")).value.clone();
        assert_eq!(
            v(&Point::device(Quantity::Power)),
            Value::Power(PowerState::On)
        );
        assert_eq!(v(&Point::lamp(1, Quantity::LampHours)), Value::Int(12345));
        assert_eq!(v(&Point::lamp(1, Quantity::LampOn)), Value::Bool(true));
        assert_eq!(v(&Point::lamp(2, Quantity::LampHours)), Value::Int(678));
        assert_eq!(v(&Point::lamp(2, Quantity::LampOn)), Value::Bool(false));
        assert_eq!(
            v(&Point::device(Quantity::Inputs)),
            Value::Text("11 12 31 32".into())
        );
        assert_eq!(v(&Point::device(Quantity::Input)), Value::Text("31".into()));
        assert_eq!(v(&Point::device(Quantity::VideoMute)), Value::Bool(true));
        assert_eq!(v(&Point::device(Quantity::AudioMute)), Value::Bool(false));
        let codes: Vec<(&str, Severity)> = s
            .faults
            .iter()
            .map(|f| (f.fault.code.as_str(), f.fault.severity))
            .collect();
        assert!(codes.contains(&("fan", Severity::Warning)), "{codes:?}");
        assert!(codes.contains(&("filter", Severity::Fault)), "{codes:?}");
        // Lamp 1 is past 90 % of 2000 h; lamp 2 is not.
        assert!(
            s.faults
                .iter()
                .any(|f| f.fault.code == "lamp_life"
                    && f.fault.component.as_deref() == Some("lamp 1"))
        );
        assert!(!s
            .faults
            .iter()
            .any(|f| f.fault.component.as_deref() == Some("lamp 2")));
        assert_eq!(s.identity.manufacturer.as_deref(), Some("Panasonic"));
        assert_eq!(s.identity.model.as_deref(), Some("PT-EZ580"));
        assert_eq!(s.identity.name.as_deref(), Some("Room 4"));
        assert_eq!(
            s.identity.extra.get("pjlink_class").map(String::as_str),
            Some("1")
        );
        assert!(!s.identity.extra.contains_key("info"));
        assert_eq!(s.health, Health::Faulted);
    }

    #[tokio::test]
    async fn err3_is_busy_err2_refused_err4_a_fault() {
        let (mut link, peer) = link();
        let proj = crate::test_spawn(scripted(
            peer,
            "PJLINK 0\r",
            vec![
                ("%1POWR 1\r", "%1POWR=ERR3\r"),
                ("%1INPT 59\r", "%1INPT=ERR2\r"),
                ("%1AVMT 31\r", "%1AVMT=ERR4\r"),
            ],
        ));
        let mut d = PjlinkDriver::new(&profile(), None).unwrap();
        let (mut obs, rx) = observer();
        d.open(&mut link, &mut obs).await.unwrap();
        let e = d
            .execute(&mut link, &mut obs, &DeviceCommand::Power { on: true })
            .await
            .unwrap_err();
        assert!(matches!(e, DriverError::Busy { .. }), "{e}");
        assert!(!e.is_link_failure());
        let e = d
            .execute(
                &mut link,
                &mut obs,
                &DeviceCommand::SelectInput { input: "59".into() },
            )
            .await
            .unwrap_err();
        assert!(matches!(e, DriverError::Refused { .. }), "{e}");
        let e = d
            .execute(&mut link, &mut obs, &DeviceCommand::AvMute { on: true })
            .await
            .unwrap_err();
        assert!(matches!(e, DriverError::Refused { .. }), "{e}");
        proj.await.unwrap();
        assert!(rx
            .borrow()
            .faults
            .iter()
            .any(|f| f.fault.code == "projector_failure" && f.fault.severity == Severity::Fault));
        // Not a PJLink code at all: refused without sending anything.
        let e = d
            .execute(
                &mut link,
                &mut obs,
                &DeviceCommand::SelectInput {
                    input: "HDMI".into(),
                },
            )
            .await
            .unwrap_err();
        assert!(matches!(e, DriverError::Rejected { .. }), "{e}");
    }

    #[tokio::test]
    async fn queries_refused_in_standby_wait_for_the_projector_to_leave_it() {
        let (mut link, peer) = link();
        let proj = crate::test_spawn(scripted(
            peer,
            "PJLINK 0\r",
            vec![
                ("%1POWR ?\r", "%1POWR=0\r"),
                ("%1ERST ?\r", "%1ERST=000000\r"),
                ("%1LAMP ?\r", "%1LAMP=100 0\r"),
                ("%1INPT ?\r", "%1INPT=ERR3\r"),
                ("%1AVMT ?\r", "%1AVMT=ERR3\r"),
                // Still in standby: the refused queries are not asked again.
                ("%1POWR ?\r", "%1POWR=0\r"),
                ("%1ERST ?\r", "%1ERST=000000\r"),
                ("%1LAMP ?\r", "%1LAMP=100 0\r"),
                // Warming up: they are asked again.
                ("%1POWR ?\r", "%1POWR=3\r"),
                ("%1ERST ?\r", "%1ERST=000000\r"),
                ("%1LAMP ?\r", "%1LAMP=100 1\r"),
                ("%1INPT ?\r", "%1INPT=31\r"),
                ("%1AVMT ?\r", "%1AVMT=30\r"),
            ],
        ));
        let mut d = PjlinkDriver::new(&profile(), None).unwrap();
        let (mut obs, rx) = observer();
        d.open(&mut link, &mut obs).await.unwrap();
        for _ in 0..3 {
            d.poll(&mut link, &mut obs).await.unwrap();
        }
        proj.await.unwrap();
        assert_eq!(
            rx.borrow()
                .reading(&Point::device(Quantity::Input))
                .map(|r| r.value.clone()),
            Some(Value::Text("31".into()))
        );
    }

    #[tokio::test]
    async fn stale_replies_are_skipped_and_garbage_is_a_protocol_error() {
        let (mut link, peer) = link();
        let proj = crate::test_spawn(scripted(
            peer,
            "PJLINK 0\r",
            vec![
                // A late ERST answer precedes the POWR answer.
                ("%1POWR ?\r", "%1ERST=000000\r%1POWR=0\r"),
                ("%1POWR ?\r", "\x00\x7f junk\r%1POWR=0\r"),
            ],
        ));
        let mut d = PjlinkDriver::new(&profile(), None).unwrap();
        let (mut obs, rx) = observer();
        d.open(&mut link, &mut obs).await.unwrap();
        let r = d
            .exchange(&mut link, &mut obs, Class::One, Command::POWR, "?")
            .await
            .unwrap();
        assert_eq!(r.param, "0");
        let e = d
            .exchange(&mut link, &mut obs, Class::One, Command::POWR, "?")
            .await
            .unwrap_err();
        assert!(
            matches!(e, DriverError::Protocol(ProtocolError::Garbage { .. })),
            "{e}"
        );
        assert_eq!(
            rx.borrow().counters.bad_frames,
            0,
            "a garbled reply ends the exchange uncounted: the caller counts it and asks again"
        );
        proj.await.unwrap();
    }
}
