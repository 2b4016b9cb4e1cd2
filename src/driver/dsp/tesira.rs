//! Biamp Tesira driver: TTP sessions over RS-232 or Telnet (protocols.md §4.1), parameterised
//! by the profile (`telnet`, `meter_rate_ms`, `meter_alignment`) and by the site's map of
//! instance tags to zones and mics.
//!
//! This module owns the session: Telnet refusals and the banner wait, skipping the command
//! echo, matching `+OK`/`-ERR` to requests in order (TTP replies carry no id), routing
//! `! "publishToken"` lines to meter channels, re-subscribing after every connect and whenever
//! a banner shows the DSP started a new session. It must not know the transport beyond the
//! profile's `telnet` flag, and it never leaves vendor words in readings.
//!
//! Settings (`[devices.settings]` of the site config):
//!
//! ```toml
//! meter_rate_ms = 100                      # optional, overrides the profile
//! meter_alignment = { kind = "dbu", zero_dbfs_at_dbu = 24.0 }   # optional, overrides the profile
//! [[zones]]
//! id = "main"                              # a-z 0-9 _ ; readings zone.main.level_db / .muted
//! level_tag = "Level1"                     # instance tag of the level control
//! level_attribute = "level"                # default "level"
//! index = 1                                # channel index in the block, default 1
//! mute_tag = "Level1"                      # default: level_tag
//! mute_attribute = "mute"                  # default "mute"
//! mute_index = 1                           # default: index
//! meter_tag = "OutMeter"                   # meter block; no meter when absent
//! meter_attribute = "level"                # default "level"
//! meter_index = 1                          # default: index
//! min_db = -100                            # levels outside are refused (default -100…12)
//! max_db = 0
//! [[mics]]
//! id = "lectern"                           # points input.lectern.gain_db / .muted
//! channel = 1                              # SetGain/SetMute channel; default: position from 1
//! level_tag = "MicGain"                    # same keys as zones
//! ```

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::zones::{
    read_request, refused, resolve, resolve_read, set_request, Addresses, DspMap, Entry, Function,
    LevelRange, MappingFaults, SetTo, SettingsError, Target, MAPPING_SOURCE,
};
use crate::codec::telnet::{refusal, TelnetCommand};
use crate::codec::tesira::{
    self as ttp, parse_line, InstanceTag, TtpArg, TtpDecoder, TtpFrame, TtpLine, TtpValue,
};
use crate::codec::ProtocolError;
use crate::driver::{Driver, DriverError, Link, Observer, PollStep, Step};
use crate::meter::Alignment;
use crate::model::{DeviceCommand, Value};
use crate::profile::{Profile, ProfileError};

/// Tesira Level blocks span −100…+12 dB; the site may narrow it per zone.
const TESIRA_RANGE: LevelRange = LevelRange {
    min_db: -100.0,
    max_db: 12.0,
};

/// How long `listen` waits in one read before looping; it is cancelled long before this.
const LISTEN_SLICE: Duration = Duration::from_secs(3600);

/// A control in the design: instance tag, attribute, channel index.
#[derive(Debug, Clone, PartialEq)]
pub struct TtpAddr {
    pub tag: InstanceTag,
    pub attribute: String,
    pub index: u32,
}

/// How the DSP answered one command.
#[derive(Debug, Clone, PartialEq)]
enum Answer {
    Ok(Option<TtpValue>),
    Err(String),
}

#[derive(Clone)]
pub struct TesiraDriver {
    map: DspMap<TtpAddr>,
    telnet: bool,
    banner_timeout: Duration,
    reply_timeout: Duration,
    meter_rate_ms: u32,
    alignment: Alignment,
    dec: TtpDecoder,
    /// Commands sent whose `+OK`/`-ERR` has not been read yet. Replies come in order, so when a
    /// cancelled `listen` left some behind, the next exchange skips that many first.
    outstanding: usize,
    /// A command line's write was dropped half way (its exchange was cancelled while the
    /// link would not take the bytes): the DSP holds part of a line we cannot take back.
    torn: bool,
    /// Subscriptions are due: after connect, after a banner, or when meters went silent.
    resubscribe: bool,
    /// Publish token → channel index.
    tokens: HashMap<String, usize>,
    last_publish: Option<Instant>,
    subscribed_at: Option<Instant>,
    mapping: MappingFaults,
    /// The next step of the poll cycle under way: 0 starts it (re-subscribing if due), then
    /// one control read per step (level, mute of each channel in turn).
    poll_cursor: usize,
}

fn addr_keys(
    e: &mut Entry<'_>,
    tag_key: &'static str,
    attr_key: &'static str,
    attr_default: &str,
    index_key: Option<&'static str>,
    index_default: u32,
    tag_default: Option<InstanceTag>,
) -> Result<Option<TtpAddr>, SettingsError> {
    let tag = match e.string(tag_key)? {
        Some(t) => Some(InstanceTag::new(&t).map_err(|m| e.err(tag_key, m))?),
        None => tag_default,
    };
    let attribute = e
        .string(attr_key)?
        .unwrap_or_else(|| attr_default.to_owned());
    ttp::valid_word(&attribute).map_err(|m| e.err(attr_key, m))?;
    let index = match index_key {
        Some(k) => e.integer(k, 1..=65535)?.map_or(index_default, |i| i as u32),
        None => index_default,
    };
    Ok(tag.map(|tag| TtpAddr {
        tag,
        attribute,
        index,
    }))
}

impl TesiraDriver {
    pub fn new(profile: &Profile, settings: &toml::Table) -> Result<Self, ProfileError> {
        let pid = profile.id.to_string();
        let telnet = profile.option("telnet", false)?;
        let banner_timeout_ms: u64 = profile.option("banner_timeout_ms", 5000)?;
        let profile_rate: u32 = profile.option("meter_rate_ms", 100)?;
        let mut top = Entry::new(settings, "");
        let alignment = super::alignment(
            profile,
            &mut top,
            Alignment::Dbu {
                zero_dbfs_at_dbu: 24.0,
            },
        )?;
        let site = |e: SettingsError| e.into_profile_error(&pid);
        let meter_rate_ms = top
            .integer("meter_rate_ms", 20..=60_000)
            .map_err(site)?
            .map_or(profile_rate, |r| r as u32);
        if !(20..=60_000).contains(&meter_rate_ms) {
            return Err(ProfileError::Option {
                profile: pid,
                key: "meter_rate_ms".into(),
                message: format!("must be between 20 and 60000, got {meter_rate_ms}"),
            });
        }
        let map = DspMap::parse(&mut top, TESIRA_RANGE, |e, _role| {
            let index = e.integer("index", 1..=65535)?.map_or(1, |i| i as u32);
            let level = addr_keys(
                e,
                "level_tag",
                "level_attribute",
                "level",
                None,
                index,
                None,
            )?;
            let mute = addr_keys(
                e,
                "mute_tag",
                "mute_attribute",
                "mute",
                Some("mute_index"),
                index,
                level.as_ref().map(|a| a.tag.clone()),
            )?;
            let meter = addr_keys(
                e,
                "meter_tag",
                "meter_attribute",
                "level",
                Some("meter_index"),
                index,
                None,
            )?;
            Ok(Addresses { level, mute, meter })
        });
        let map = SettingsError::settle(map, &top, &pid)?;
        Ok(Self {
            map,
            telnet,
            banner_timeout: Duration::from_millis(banner_timeout_ms),
            reply_timeout: profile.timing.reply_timeout,
            meter_rate_ms,
            alignment,
            dec: TtpDecoder::new(telnet),
            outstanding: 0,
            torn: false,
            resubscribe: true,
            tokens: HashMap::new(),
            last_publish: None,
            subscribed_at: None,
            mapping: MappingFaults::default(),
            poll_cursor: 0,
        })
    }

    fn token(&self, idx: usize) -> String {
        let ch = &self.map.channels[idx];
        format!("{}-{}", ch.role.prefix(), ch.id)
    }

    async fn answer_telnet(&self, link: &mut Link, cmd: TelnetCommand) -> Result<(), DriverError> {
        if let Some(bytes) = refusal(cmd) {
            link.send(&bytes).await?;
        }
        Ok(())
    }

    /// A meter value arrived.
    fn publish(&mut self, obs: &mut Observer, token: &str, value: &TtpValue) {
        publish_meter(
            &self.map,
            &self.alignment,
            &self.tokens,
            &mut self.last_publish,
            obs,
            token,
            value,
        );
    }

    /// Send one command and wait for its `+OK`/`-ERR`, handling everything else that arrives
    /// meanwhile (negotiation, echo, publishes, a banner).
    async fn exchange(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
        cmd: &str,
    ) -> Result<Answer, DriverError> {
        self.send_commands(link, cmd, 1).await?;
        self.answer(link, obs, cmd, 1).await
    }

    /// Write `n` commands (`lines`, each ending its line) in one write. TTP answers in order
    /// (protocols.md §4.1), so their answers are the last `n` of `outstanding`.
    async fn send_commands(
        &mut self,
        link: &mut Link,
        lines: &str,
        n: usize,
    ) -> Result<(), DriverError> {
        if self.torn {
            // The next line would be glued to the torn one: start a new session instead.
            self.torn = false;
            link.disconnect();
            return Err(DriverError::Link(crate::driver::LinkError::Closed));
        }
        self.outstanding += n;
        // Written apart from the answer's wait, so an exchange dropped while it waits (a
        // priority command overtaking a poll read) has its line whole on the wire; its answer
        // is then one of the `outstanding` the next exchange skips.
        self.torn = true;
        let sent = link.send(lines.as_bytes()).await;
        self.torn = false;
        sent
    }

    /// Wait for the answer of the oldest of our last `ours` commands (`sent` is what they
    /// wrote: their echoes are not news), skipping the answers of older ones and handling
    /// everything else that arrives meanwhile (negotiation, echo, publishes, a banner).
    async fn answer(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
        sent: &str,
        ours: usize,
    ) -> Result<Answer, DriverError> {
        let echo = sent.lines().next().unwrap_or_default();
        let mut restarted = false;
        // The reply loop borrows the decoder; what it needs of the rest is borrowed apart.
        let (map, alignment, tokens) = (&self.map, &self.alignment, &self.tokens);
        let (last_publish, outstanding) = (&mut self.last_publish, &mut self.outstanding);
        let read = link
            .converse(&mut self.dec, &[], self.reply_timeout, obs, |read, obs| {
                let line = match read {
                    Ok(TtpFrame::Telnet(c)) => {
                        return refusal(c).map_or(Step::Skip, |b| Step::Write(b.to_vec()))
                    }
                    Ok(TtpFrame::Line(l)) => l,
                    Err(p) => return Step::Bad(p),
                };
                let answer = match parse_line(&line) {
                    Ok(TtpLine::Ok(v)) => Answer::Ok(v),
                    Ok(TtpLine::Err(e)) => Answer::Err(e),
                    Ok(TtpLine::Publish { token, value }) => {
                        publish_meter(map, alignment, tokens, last_publish, obs, &token, &value);
                        return Step::Skip;
                    }
                    Ok(TtpLine::Banner) => {
                        // The DSP started a new session under us (reboot, config push): the
                        // command is lost and so are our subscriptions.
                        restarted = true;
                        return Step::End(DriverError::Busy {
                            command: echo.to_owned(),
                            reason: "the DSP restarted its control session".to_owned(),
                            ready_in: None,
                        });
                    }
                    Ok(TtpLine::Text(t)) => {
                        if !sent.lines().any(|l| l == t) {
                            tracing::debug!(device = %obs.device(), line = %t, "ignored TTP line");
                        }
                        return Step::Skip;
                    }
                    Err(p) => {
                        if !line.starts_with('+') {
                            return Step::Bad(p);
                        }
                        // A broken reply is still a reply: it answers the oldest command.
                        obs.bad_input(&p);
                        if *outstanding > ours {
                            *outstanding -= 1;
                            return Step::Skip;
                        }
                        *outstanding = outstanding.saturating_sub(1);
                        return Step::End(DriverError::Protocol(p));
                    }
                };
                if *outstanding > ours {
                    // The answer to a command a cancelled listen sent; ours is still to come.
                    *outstanding -= 1;
                    return Step::Skip;
                }
                *outstanding = outstanding.saturating_sub(1);
                Step::Done(answer)
            })
            .await;
        if restarted {
            self.session_restarted(obs);
        }
        match read {
            Ok(answer) => {
                obs.contact();
                Ok(answer)
            }
            Err(e) => {
                if matches!(e, DriverError::Timeout { .. }) {
                    // A reply that never came must not be taken for the next command's.
                    self.outstanding = 0;
                }
                Err(e)
            }
        }
    }

    fn session_restarted(&mut self, obs: &Observer) {
        tracing::info!(device = %obs.device(), "TTP banner: new session, re-subscribing");
        self.outstanding = 0;
        self.resubscribe = true;
        self.tokens.clear();
    }

    /// Subscribe every mapped meter at the configured rate.
    async fn subscribe_all(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
    ) -> Result<(), DriverError> {
        self.tokens.clear();
        for idx in 0..self.map.channels.len() {
            let Some(a) = self.map.channels[idx].meter.clone() else {
                continue;
            };
            let token = self.token(idx);
            let cmd = ttp::subscribe(&a.tag, &a.attribute, &[a.index], &token, self.meter_rate_ms);
            // The DSP answers a subscribe with its current value (`! "publishToken":… "value":…`)
            // *before* `+OK` (protocols.md §4.1 vector 4): the token must be known by then, or
            // a DSP that publishes only on change never shows the value (issue 14.1).
            self.tokens.insert(token.clone(), idx);
            match self.exchange(link, obs, &cmd).await {
                Ok(Answer::Ok(_)) => {
                    self.mapping.ok(&self.map.channels[idx], Function::Meter);
                }
                // Repeating an identical subscription is reported to answer this (UNCONFIRMED,
                // protocols.md §4.1): the subscription stands.
                Ok(Answer::Err(e)) if e.contains("ALREADY_SUBSCRIBED") => {
                    self.mapping.ok(&self.map.channels[idx], Function::Meter);
                }
                Ok(Answer::Err(e)) => {
                    self.tokens.remove(&token);
                    self.mapping
                        .failed(&self.map.channels[idx], Function::Meter, &e);
                }
                Err(e) => {
                    self.tokens.remove(&token);
                    return Err(e);
                }
            }
        }
        self.resubscribe = false;
        self.subscribed_at = Some(Instant::now());
        if !self.tokens.is_empty() {
            obs.metering(Duration::from_millis(u64::from(self.meter_rate_ms)));
        }
        obs.faults(MAPPING_SOURCE, self.mapping.current());
        Ok(())
    }

    /// Meters should publish at their rate; silence for much longer means the DSP lost our
    /// subscriptions without telling us (a design push without a new banner).
    fn meters_stale(&self) -> bool {
        if self.tokens.is_empty() {
            return false;
        }
        let limit =
            Duration::from_millis(u64::from(self.meter_rate_ms) * 50).max(Duration::from_secs(5));
        let since = match (self.last_publish, self.subscribed_at) {
            (Some(p), Some(s)) => p.max(s),
            (None, Some(s)) => s,
            _ => return false,
        };
        since.elapsed() > limit
    }

    async fn read_value(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
        idx: usize,
        f: Function,
    ) -> Result<(), DriverError> {
        let Some(a) = self.map.channels[idx].address(f).cloned() else {
            return Ok(());
        };
        let answer = self
            .exchange(link, obs, &ttp::get(&a.tag, &a.attribute, &[a.index]))
            .await?;
        self.apply_read(obs, idx, f, answer);
        Ok(())
    }

    /// What a `get` of channel `idx`'s `f` answered: a reading, or why not.
    fn apply_read(&mut self, obs: &mut Observer, idx: usize, f: Function, answer: Answer) {
        let ch = &self.map.channels[idx];
        match answer {
            Answer::Ok(Some(v)) => {
                let value = match f {
                    Function::Level => v.as_f64().map(|db| (ch.level_point(), Value::Float(db))),
                    Function::Mute => v.as_bool().map(|m| (ch.muted_point(), Value::Bool(m))),
                    Function::Meter => None,
                };
                match value {
                    Some((point, value)) => {
                        self.mapping.ok(ch, f);
                        obs.reading(point, value);
                    }
                    None => obs.bad_input(&ProtocolError::Unexpected {
                        expected: format!("{} of {}", f.as_str(), ch.component()),
                        got: format!("a {}", v.type_name()),
                    }),
                }
            }
            Answer::Ok(None) => obs.bad_input(&ProtocolError::Unexpected {
                expected: format!("{} of {}", f.as_str(), ch.component()),
                got: "+OK without a value".to_owned(),
            }),
            Answer::Err(e) => {
                self.mapping.failed(ch, f, &e);
            }
        }
    }

    async fn read_levels(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
    ) -> Result<(), DriverError> {
        for step in 1..=2 * self.map.channels.len() {
            self.read_control(link, obs, step).await?;
        }
        obs.faults(MAPPING_SOURCE, self.mapping.current());
        Ok(())
    }

    /// Step `step` (from 1) of reading every control: level, then mute, of each channel.
    async fn read_control(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
        step: usize,
    ) -> Result<(), DriverError> {
        let (idx, f) = (
            (step - 1) / 2,
            [Function::Level, Function::Mute][(step - 1) % 2],
        );
        self.read_value(link, obs, idx, f).await
    }

    async fn read_identity(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
    ) -> Result<(), DriverError> {
        // `DEVICE get version` / `serialNumber` are not in protocols.md (UNCONFIRMED): a -ERR is
        // tolerated and simply leaves the field empty.
        let mut found = Vec::new();
        for attr in ["version", "serialNumber"] {
            if let Answer::Ok(Some(v)) = self
                .exchange(link, obs, &ttp::special(&["DEVICE", "get", attr]))
                .await?
            {
                if let Some(s) = v.as_text() {
                    found.push((attr, s.to_owned()));
                }
            }
        }
        obs.identity(|id| {
            id.manufacturer = Some("Biamp".to_owned());
            for (attr, v) in found {
                match attr {
                    "version" => id.firmware = Some(v),
                    _ => id.serial = Some(v),
                }
            }
        });
        Ok(())
    }

    /// One control, one exchange: a check before a restore step must not hold the link for
    /// a read of every control while a cut for another zone waits.
    async fn read_one(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
        command: &DeviceCommand,
        target: Target<'_>,
        f: Function,
    ) -> Result<(), DriverError> {
        let (idx, _) = resolve_read(&self.map, command, target, f)?;
        self.read_value(link, obs, idx, f).await?;
        obs.faults(MAPPING_SOURCE, self.mapping.current());
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
        let (idx, a) = resolve(&self.map, command, target, f, to)?;
        let a = a.clone();
        let arg = match to {
            SetTo::Db(db) => TtpArg::Number(db),
            SetTo::On(on) => TtpArg::Bool(on),
        };
        let set = ttp::set(&a.tag, &a.attribute, &[a.index], arg);
        // Read back: the DSP may have clamped the value. The read goes in the same write as
        // the set: TTP answers in order, so the command costs one round trip, not two, and a
        // cut queued behind this one waits half as long (issue 10).
        let Some(back) = self.map.channels[idx].address(f).cloned() else {
            return match self.exchange(link, obs, &set).await? {
                Answer::Ok(_) => Ok(()),
                Answer::Err(e) => Err(refused(command, e)),
            };
        };
        let get = ttp::get(&back.tag, &back.attribute, &[back.index]);
        let both = format!("{set}{get}");
        self.send_commands(link, &both, 2).await?;
        // A set that failed to answer leaves its read's answer outstanding: the next
        // exchange skips it. Both echoes may come before the set's answer.
        let answered = self.answer(link, obs, &both, 2).await?;
        // A refused set still reads back what the control holds.
        let read = self
            .answer(link, obs, &get, 1)
            .await
            .map(|answer| self.apply_read(obs, idx, f, answer));
        obs.faults(MAPPING_SOURCE, self.mapping.current());
        match answered {
            Answer::Ok(_) => read,
            Answer::Err(e) => Err(refused(command, e)),
        }
    }

    /// Apply one frame heard between exchanges: a publish, a late answer, a telnet
    /// negotiation to answer, or the banner of a restarted session.
    async fn heard(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
        frame: TtpFrame,
    ) -> Result<Heard, DriverError> {
        let line = match frame {
            TtpFrame::Telnet(c) => {
                self.answer_telnet(link, c).await?;
                return Ok(Heard::Applied);
            }
            TtpFrame::Line(l) => l,
        };
        let parsed = match parse_line(&line) {
            Ok(p) => p,
            Err(p) => {
                if line.starts_with('+') {
                    self.outstanding = self.outstanding.saturating_sub(1);
                }
                return Err(p.into());
            }
        };
        match parsed {
            TtpLine::Publish { token, value } => self.publish(obs, &token, &value),
            TtpLine::Banner => {
                self.session_restarted(obs);
                return Ok(Heard::Banner);
            }
            TtpLine::Ok(_) | TtpLine::Err(_) => {
                // The late answer to a command whose exchange was cancelled.
                self.outstanding = self.outstanding.saturating_sub(1);
            }
            TtpLine::Text(t) => {
                tracing::debug!(device = %obs.device(), line = %t, "ignored TTP line");
            }
        }
        Ok(Heard::Applied)
    }
}

/// What [`TesiraDriver::heard`] made of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Heard {
    Applied,
    /// The session restarted: subscriptions must be made again before reading on.
    Banner,
}

#[async_trait]
impl Driver for TesiraDriver {
    fn name(&self) -> &'static str {
        "tesira"
    }

    /// A refresh re-reads every control, one exchange a step, so a gain cut on the priority
    /// lane never waits behind the 2×N reads the level watch asks for before a restore step
    /// (identity is read at every connect; meter subscriptions are renewed by `listen`).
    fn refresh_is_poll_cycle(&self) -> bool {
        true
    }

    /// TTP answers in order (protocols.md §4.1), and `exchange` skips the answers of
    /// exchanges dropped while waiting; a control read is repeated, so only those steps
    /// (not the re-subscription of step 0, which registers tokens) may be overtaken.
    fn poll_step_can_be_overtaken(&self) -> bool {
        self.poll_cursor > 0
    }

    /// A zone's level read before a restore step (one control read, answered in order and
    /// skipped by `exchange` when dropped) gives way to a cut.
    fn command_can_be_overtaken(&self, command: &DeviceCommand) -> bool {
        matches!(command, DeviceCommand::ReadZoneLevel { .. })
    }

    fn fresh(&self) -> Option<Box<dyn Driver>> {
        Some(Box::new(self.clone()))
    }

    async fn open(&mut self, link: &mut Link, obs: &mut Observer) -> Result<(), DriverError> {
        link.take_fresh();
        self.dec.reset();
        self.outstanding = 0;
        self.torn = false;
        self.tokens.clear();
        self.last_publish = None;
        self.poll_cursor = 0;
        if self.telnet {
            // Refuse whatever the server offers, then wait for the banner: anything sent
            // before it is lost (protocols.md §4.1).
            link.converse(&mut self.dec, b"", self.banner_timeout, obs, |read, obs| {
                match read {
                    Ok(TtpFrame::Telnet(c)) => {
                        refusal(c).map_or(Step::Skip, |b| Step::Write(b.to_vec()))
                    }
                    Ok(TtpFrame::Line(l)) => {
                        if matches!(parse_line(&l), Ok(TtpLine::Banner)) {
                            obs.contact();
                            return Step::Done(());
                        }
                        // Preamble (`No entry for terminal type …`).
                        tracing::debug!(device = %obs.device(), line = %l, "before TTP banner");
                        Step::Skip
                    }
                    Err(p) => Step::Bad(p),
                }
            })
            .await?;
        }
        // A serial session outlives our connection; make sure replies are verbose.
        if let Answer::Err(e) = self
            .exchange(
                link,
                obs,
                &ttp::special(&["SESSION", "set", "verbose", "true"]),
            )
            .await?
        {
            tracing::warn!(device = %obs.device(), error = %e, "SESSION set verbose refused");
        }
        self.subscribe_all(link, obs).await
    }

    async fn read_all(&mut self, link: &mut Link, obs: &mut Observer) -> Result<(), DriverError> {
        self.read_identity(link, obs).await?;
        self.read_levels(link, obs).await
    }

    async fn poll(&mut self, link: &mut Link, obs: &mut Observer) -> Result<(), DriverError> {
        self.poll_cursor = 0;
        while self.poll_step(link, obs).await? == PollStep::More {}
        Ok(())
    }

    /// One exchange per step, so a protection command waits for one exchange at most, not a
    /// 2×N cycle (16 zones over 115200 baud are 32 serial exchanges).
    async fn poll_step(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
    ) -> Result<PollStep, DriverError> {
        let step = self.poll_cursor;
        let res = if step == 0 {
            if self.meters_stale() {
                tracing::debug!(device = %obs.device(), "meters silent, re-subscribing");
                self.resubscribe = true;
            }
            if self.resubscribe {
                self.subscribe_all(link, obs).await
            } else {
                Ok(())
            }
        } else {
            // Dropped while waiting (overtaken by a priority command), the cursor stays here
            // and the next call reads this control again.
            self.read_control(link, obs, step).await
        };
        if let Err(e) = res {
            // A failed step restarts the cycle on the next poll.
            self.poll_cursor = 0;
            return Err(e);
        }
        if step >= 2 * self.map.channels.len() {
            obs.faults(MAPPING_SOURCE, self.mapping.current());
            self.poll_cursor = 0;
            return Ok(PollStep::Done);
        }
        self.poll_cursor = step + 1;
        Ok(PollStep::More)
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
            // The runtime runs a refresh as a stepped poll (`refresh_is_poll_cycle`); this is
            // the same read in one go, for a caller without that runtime.
            DeviceCommand::Refresh => {
                if self.resubscribe {
                    self.subscribe_all(link, obs).await?;
                }
                self.poll(link, obs).await
            }
            other => Err(DriverError::Unsupported {
                driver: "tesira",
                command: other.name(),
            }),
        }
    }

    async fn listen(&mut self, link: &mut Link, obs: &mut Observer) -> Result<(), DriverError> {
        loop {
            if self.resubscribe {
                self.subscribe_all(link, obs).await?;
            }
            let frame = match link.read_frame(&mut self.dec, LISTEN_SLICE).await {
                Err(DriverError::Timeout { .. }) => continue,
                other => other?,
            };
            if self.heard(link, obs, frame).await? == Heard::Banner {
                continue;
            }
            // The rest of the same read (every subscribed level of a publish period) in this
            // turn, not one select round each (issue 15.2). A banner ends the drain: the next
            // call subscribes again first.
            for _ in 0..crate::driver::link::DRAIN_FRAMES {
                let Some(frame) = link.try_frame(&mut self.dec)? else {
                    break;
                };
                if self.heard(link, obs, frame).await? == Heard::Banner {
                    break;
                }
            }
            return Ok(());
        }
    }

    async fn close(&mut self, link: &mut Link, obs: &mut Observer) {
        // Best effort: a serial session outlives us, so leave it without our subscriptions.
        let mut subs: Vec<(usize, String)> =
            self.tokens.iter().map(|(t, i)| (*i, t.clone())).collect();
        subs.sort();
        for (idx, token) in subs {
            if let Some(a) = self.map.channels[idx].meter.clone() {
                let cmd = ttp::unsubscribe(&a.tag, &a.attribute, &[a.index], &token);
                if self.exchange(link, obs, &cmd).await.is_err() {
                    break;
                }
            }
        }
        self.tokens.clear();
    }
}

/// Apply one meter publish: the token's channel gets its level in dBFS, and the time of the
/// last publish is kept (meters that go silent are re-subscribed).
fn publish_meter(
    map: &DspMap<TtpAddr>,
    alignment: &Alignment,
    tokens: &HashMap<String, usize>,
    last_publish: &mut Option<Instant>,
    obs: &mut Observer,
    token: &str,
    value: &TtpValue,
) {
    let Some(&idx) = tokens.get(token) else {
        tracing::debug!(device = %obs.device(), token, "publish for a token we did not subscribe");
        return;
    };
    *last_publish = Some(Instant::now());
    let ch = &map.channels[idx];
    // A multi-channel subscription publishes a list; we subscribe per channel, so take the
    // first element if a design answers that way.
    let reading = match value {
        TtpValue::List(items) => items.first().and_then(TtpValue::as_f64),
        v => v.as_f64(),
    };
    match reading.and_then(|r| alignment.to_dbfs(r)) {
        Some(dbfs) => obs.meter_ref(&ch.subject, dbfs),
        None => obs.bad_input(&ProtocolError::malformed(format!(
            "meter {token}: value is a {}, not a level",
            value.type_name()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(telnet: bool) -> Profile {
        Profile::parse(
            &format!(
                "id = \"t\"\nkind = \"dsp\"\nvendor = \"Biamp\"\nfamily = \"Tesira\"\ndriver = \"tesira\"\ncapabilities = [\"level\"]\n[link]\nkind = \"tcp\"\nport = 23\n[timing]\npoll_interval_secs = 10\n[options]\ntelnet = {telnet}\nmeter_alignment = {{ kind = \"dbu\", zero_dbfs_at_dbu = 24.0 }}\n"
            ),
            "test",
        )
        .unwrap()
    }

    fn settings(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn defaults_follow_the_level_block() {
        let d = TesiraDriver::new(
            &profile(true),
            &settings("[[zones]]\nid = \"main\"\nlevel_tag = \"Level1\"\nindex = 2\nmeter_tag = \"OutMeter\"\n"),
        )
        .unwrap();
        let z = &d.map.channels[0];
        let mute = z.mute.as_ref().unwrap();
        assert_eq!(
            (mute.tag.as_str(), mute.attribute.as_str(), mute.index),
            ("Level1", "mute", 2)
        );
        let meter = z.meter.as_ref().unwrap();
        assert_eq!(
            (meter.tag.as_str(), meter.attribute.as_str(), meter.index),
            ("OutMeter", "level", 2)
        );
        assert_eq!(d.meter_rate_ms, 100);
        assert_eq!(d.token(0), "zone-main");
    }

    #[test]
    fn bad_settings_name_the_key() {
        let cases = [
            (
                "[[zones]]\nid = \"main\"\nlevel_tag = \"Lev\\\"el\"\n",
                "settings.zones[0].level_tag",
            ),
            (
                "[[zones]]\nid = \"main\"\nlevel_tag = \"L\"\nmeter_attribute = \"two words\"\n",
                "settings.zones[0].meter_attribute",
            ),
            (
                "[[zones]]\nid = \"main\"\nlevel_tag = \"L\"\nindex = 0\n",
                "settings.zones[0].index",
            ),
            (
                "[[mics]]\nid = \"m\"\nlevel_tag = \"L\"\nlevel_control = \"x\"\n",
                "settings.mics[0].level_control",
            ),
            ("meter_rate_ms = 5\n", "settings.meter_rate_ms"),
            (
                "meter_alignment = { kind = \"dbu\" }\n",
                "settings.meter_alignment",
            ),
        ];
        for (text, key) in cases {
            match TesiraDriver::new(&profile(false), &settings(text)) {
                Err(ProfileError::Option { key: k, .. }) => assert_eq!(k, key, "{text}"),
                Err(e) => panic!("{text}: {e}"),
                Ok(_) => panic!("{text}: accepted"),
            }
        }
    }

    #[test]
    fn site_alignment_overrides_the_profile() {
        let d = TesiraDriver::new(
            &profile(false),
            &settings("meter_alignment = { kind = \"dbu\", zero_dbfs_at_dbu = 18.0 }\n"),
        )
        .unwrap();
        assert_eq!(
            d.alignment,
            Alignment::Dbu {
                zero_dbfs_at_dbu: 18.0
            }
        );
    }
}
