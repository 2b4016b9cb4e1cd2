//! Shure wireless receivers (ULX-D, QLX-D, SLX-D/SLX-D+, Axient Digital) over command strings
//! on TCP 2202 (protocols.md §2), one driver parameterised by the family's profile: parameter
//! names, SAMPLE layout, meter offsets, value words and the model → channel-count table are
//! profile data (`devices/mic/shure-*.toml`).
//!
//! Session: probe (`GET FW_VER`; a receiver that accepts the connection but never answers is
//! reported as `controller_access_disabled`), identity, channel count, metering on; then a full
//! read, unsolicited `REP`s applied the moment they arrive, `SAMPLE`s turned into meters, a
//! heartbeat `GET` every 30 s and a reconnect after 60 s of silence (Companion's scheme,
//! protocols.md §2.2). Metering is switched off in [`Driver::close`].
//!
//! Identity (what the equipment archive records): manufacturer from the profile, `DEVICE_ID`
//! as the receiver's name, `MODEL` where the family reports it (Axient Digital, SLX-D; ULX-D
//! and QLX-D report none, so the profile's family stands in), `FW_VER` as firmware. The serial
//! number is **UNCONFIRMED**: protocols.md §2 names no command that reports it, so none is
//! asked and `identity.serial` stays empty — the archive cannot tell a swapped Shure receiver
//! by its serial, only by a changed model or device id in its identity log.
//!
//! This module must not hold partial frames outside the [`Link`] buffer: `listen` is dropped
//! whenever a poll or command is due.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use tokio::time::Instant;

use super::{
    channel_arg, channels_for_model, check_gain, Channel, FaultPolicy, Known, Options, Publisher,
};
use crate::codec::shure::{self, Message, Runtime, SampleField, ShureCodec};
use crate::codec::ProtocolError;
use crate::driver::{Driver, DriverError, Link, Observer, Reply};
use crate::model::{CommsPolicy, DeviceCommand, Fault, Quantity, Severity};
use crate::profile::{Profile, ProfileError};

/// Companion re-arms a `GET` every 30 s and reconnects after 60 s without input
/// (protocols.md §2.2); profiles may change both.
const DEFAULT_HEARTBEAT_SECS: u64 = 30;
const DEFAULT_SILENCE_SECS: u64 = 60;

/// A channel reading and the wire parameter that carries it on this family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Field {
    Name,
    TxModel,
    Bars,
    Minutes,
    Percent,
    BatteryType,
    Cycles,
    TxMuted,
    Gain,
    Muted,
    Interference,
    Encryption,
    Frequency,
}

impl Field {
    /// Read order in a full read: presence first, so battery values land on a known state.
    const ALL: [Field; 13] = [
        Field::Name,
        Field::TxModel,
        Field::Bars,
        Field::Minutes,
        Field::Percent,
        Field::BatteryType,
        Field::Cycles,
        Field::TxMuted,
        Field::Gain,
        Field::Muted,
        Field::Interference,
        Field::Encryption,
        Field::Frequency,
    ];

    /// The quantity it updates.
    fn reading(self) -> Quantity {
        match self {
            Field::Name => Quantity::Name,
            Field::TxModel => Quantity::TxModel,
            Field::Bars => Quantity::BatteryBars,
            Field::Minutes => Quantity::BatteryMinutes,
            Field::Percent => Quantity::BatteryPercent,
            Field::BatteryType => Quantity::BatteryType,
            Field::Cycles => Quantity::BatteryCycles,
            Field::TxMuted => Quantity::TxMuted,
            Field::Gain => Quantity::GainDb,
            Field::Muted => Quantity::Muted,
            Field::Interference => Quantity::Interference,
            Field::Encryption => Quantity::EncryptionOk,
            Field::Frequency => Quantity::FrequencyMhz,
        }
    }
}

/// `[options.params]`: the family's parameter name per reading; absent = the family lacks it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParams {
    name: Option<String>,
    tx_model: Option<String>,
    battery_bars: Option<String>,
    battery_minutes: Option<String>,
    battery_percent: Option<String>,
    battery_type: Option<String>,
    battery_cycles: Option<String>,
    tx_muted: Option<String>,
    gain: Option<String>,
    muted: Option<String>,
    interference: Option<String>,
    encryption: Option<String>,
    frequency: Option<String>,
}

impl RawParams {
    fn get(&self, f: Field) -> Option<&str> {
        match f {
            Field::Name => self.name.as_deref(),
            Field::TxModel => self.tx_model.as_deref(),
            Field::Bars => self.battery_bars.as_deref(),
            Field::Minutes => self.battery_minutes.as_deref(),
            Field::Percent => self.battery_percent.as_deref(),
            Field::BatteryType => self.battery_type.as_deref(),
            Field::Cycles => self.battery_cycles.as_deref(),
            Field::TxMuted => self.tx_muted.as_deref(),
            Field::Gain => self.gain.as_deref(),
            Field::Muted => self.muted.as_deref(),
            Field::Interference => self.interference.as_deref(),
            Field::Encryption => self.encryption.as_deref(),
            Field::Frequency => self.frequency.as_deref(),
        }
    }
}

/// `[options.device_params]`: device-level parameters (no channel index). No serial number:
/// protocols.md names no parameter for it (see the module doc).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceParams {
    firmware: Option<String>,
    device_id: Option<String>,
    model: Option<String>,
}

/// Which words mean yes and no for a boolean parameter; anything else is unknown. Families
/// disagree: `TX_MUTE_STATUS ON` is muted on ULX-D, `TX_MUTE_MODE_STATUS ON` is *un*muted on
/// Axient Digital (Companion `internalAPI.js`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Words {
    yes: Vec<String>,
    no: Vec<String>,
}

impl Words {
    fn new(yes: &[&str], no: &[&str]) -> Self {
        Self {
            yes: yes.iter().map(|s| (*s).to_owned()).collect(),
            no: no.iter().map(|s| (*s).to_owned()).collect(),
        }
    }
    fn parse(&self, v: &str) -> Known<bool> {
        let t = shure::text(v);
        if self.yes.iter().any(|w| w.eq_ignore_ascii_case(&t)) {
            Known::Value(true)
        } else if self.no.iter().any(|w| w.eq_ignore_ascii_case(&t)) {
            Known::Value(false)
        } else {
            Known::Unknown
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawValues {
    #[serde(default = "default_on_off")]
    tx_muted: Words,
    #[serde(default = "default_on_off")]
    muted: Words,
    #[serde(default = "default_interference")]
    interference: Words,
    /// `yes` = encryption matches.
    #[serde(default = "default_encryption")]
    encryption_ok: Words,
}

fn default_on_off() -> Words {
    Words::new(&["ON"], &["OFF"])
}
fn default_interference() -> Words {
    Words::new(&["CRITICAL", "DETECTED"], &["NONE"])
}
fn default_encryption() -> Words {
    Words::new(&["OK", "OFF"], &["ERROR", "ON"])
}

impl Default for RawValues {
    fn default() -> Self {
        Self {
            tx_muted: default_on_off(),
            muted: default_on_off(),
            interference: default_interference(),
            encryption_ok: default_encryption(),
        }
    }
}

#[derive(Debug, Clone)]
struct Config {
    vendor: String,
    family: String,
    max_channels: u8,
    /// Channel count fixed by site settings (or a single-channel family).
    fixed_channels: Option<u8>,
    model_channels: BTreeMap<String, u8>,
    meter_rate_ms: u32,
    heartbeat: Duration,
    silence: Duration,
    refresh: Option<Duration>,
    reply_timeout: Duration,
    layout: Vec<SampleField>,
    rf_offset_db: f64,
    audio_offset_db: f64,
    gain_offset_db: f64,
    gain_min_db: f64,
    gain_max_db: f64,
    params: RawParams,
    device: DeviceParams,
    values: RawValues,
    policy: FaultPolicy,
    /// SLX-D+ ignores every command until Controller Access is allowed (protocols.md §2.1).
    controller_access_hint: String,
}

impl Config {
    fn new(profile: &Profile, settings: &toml::Table) -> Result<Self, ProfileError> {
        let o = Options::new(profile, settings);
        let max_channels: u8 = o.get("max_channels", 4u8)?;
        if !(1..=8).contains(&max_channels) {
            return Err(o.error("max_channels", "must be 1-8"));
        }
        let fixed: Option<u8> = o.get("channels", None::<u8>)?;
        if let Some(c) = fixed {
            if !(1..=max_channels).contains(&c) {
                return Err(o.error("channels", "must be between 1 and max_channels"));
            }
        }
        let meter_rate_ms: u32 = o.get("meter_rate_ms", 1000u32)?;
        if meter_rate_ms != 0
            && !(shure::METER_RATE_MIN_MS..=shure::METER_RATE_MAX_MS).contains(&meter_rate_ms)
        {
            return Err(o.error(
                "meter_rate_ms",
                "must be 0 (metering off) or 100-65535 ms; faster metering loads the receiver",
            ));
        }
        let heartbeat = o.get("heartbeat_secs", DEFAULT_HEARTBEAT_SECS)?;
        let silence = o.get("silence_secs", DEFAULT_SILENCE_SECS)?;
        if heartbeat == 0 || silence <= heartbeat {
            return Err(o.error(
                "silence_secs",
                "must be longer than heartbeat_secs (and heartbeat_secs above 0)",
            ));
        }
        let refresh: u64 = o.get("refresh_secs", 300u64)?;
        let layout_names: Vec<String> = o.get("sample_layout", Vec::new())?;
        let mut layout = Vec::new();
        for n in &layout_names {
            layout.push(
                SampleField::parse(n).ok_or_else(|| {
                    o.error("sample_layout", &format!("unknown sample field {n:?}"))
                })?,
            );
        }
        let params: RawParams = o.get("params", RawParams::default())?;
        if params.battery_bars.is_none() && params.tx_model.is_none() {
            return Err(o.error(
                "params",
                "needs battery_bars or tx_model to tell whether a transmitter is on air",
            ));
        }
        let device: DeviceParams = o.get("device_params", DeviceParams::default())?;
        let fixed_channels = fixed.or((max_channels == 1).then_some(1));
        Ok(Config {
            vendor: profile.vendor.clone(),
            family: profile.family.clone(),
            max_channels,
            fixed_channels,
            model_channels: o.get("model_channels", BTreeMap::new())?,
            meter_rate_ms,
            heartbeat: Duration::from_secs(heartbeat),
            silence: Duration::from_secs(silence),
            refresh: (refresh > 0).then(|| Duration::from_secs(refresh)),
            reply_timeout: profile.timing.reply_timeout,
            layout,
            rf_offset_db: o.get("rf_offset_db", -120.0)?,
            audio_offset_db: o.get("audio_offset_db", -120.0)?,
            gain_offset_db: o.get("gain_offset_db", -18.0)?,
            gain_min_db: o.get("gain_min_db", -18.0)?,
            gain_max_db: o.get("gain_max_db", 42.0)?,
            params,
            device,
            values: o.get("values", RawValues::default())?,
            policy: FaultPolicy::from_options(&o)?,
            controller_access_hint: o.get(
                "controller_access_hint",
                "check that the receiver allows third-party control".to_owned(),
            )?,
        })
    }

    fn field_of(&self, param: &str) -> Option<Field> {
        Field::ALL
            .into_iter()
            .find(|f| self.params.get(*f) == Some(param))
    }
}

#[derive(Clone)]
pub struct ShureDriver {
    cfg: Config,
    codec: ShureCodec,
    /// Index 0 is channel 1.
    channels: Vec<Channel>,
    count: u8,
    publisher: Publisher,
    /// (channel, parameter) the receiver answered `REP ERR` to this session.
    unsupported: HashSet<(u8, String)>,
    last_rx: Instant,
    last_heartbeat: Instant,
    last_refresh: Instant,
    metering: bool,
}

impl ShureDriver {
    pub fn new(profile: &Profile, settings: &toml::Table) -> Result<Self, ProfileError> {
        let cfg = Config::new(profile, settings)?;
        let now = Instant::now();
        Ok(Self {
            count: cfg.fixed_channels.unwrap_or(1),
            channels: vec![Channel::default(); usize::from(cfg.max_channels)],
            cfg,
            codec: ShureCodec::new(),
            publisher: Publisher::for_profile(profile),
            unsupported: HashSet::new(),
            last_rx: now,
            last_heartbeat: now,
            last_refresh: now,
            metering: false,
        })
    }

    /// Send one request and wait for its answer, applying everything else that arrives
    /// meanwhile. `Ok(None)` is `REP ERR`.
    async fn request(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
        msg: &Message,
        timeout: Duration,
    ) -> Result<Option<Message>, DriverError> {
        let heard = link.bytes_in();
        // The codec is lent to the exchange so `is_answer` may apply what it skips; it is
        // one flag, so the swap costs nothing.
        let mut codec = std::mem::take(&mut self.codec);
        let res = link
            .exchange(&mut codec, &msg.encode(), timeout, obs, |frame, obs| {
                if is_error(frame) {
                    return Reply::Answer;
                }
                let answered = answers(msg, frame);
                self.apply(obs, frame);
                if answered {
                    Reply::Answer
                } else {
                    Reply::Skip
                }
            })
            .await;
        self.codec = codec;
        if link.bytes_in() != heard {
            self.last_rx = Instant::now();
        }
        let frame = res?;
        Ok((!is_error(&frame)).then_some(frame))
    }

    /// Apply one frame from the receiver to the state, wherever it came from. Only a frame that
    /// was understood counts as contact: contact ends a bad-input burst, and a burst of
    /// well-framed nonsense (`BATT_BARS x1`) must be logged once, not once per frame.
    fn apply(&mut self, obs: &mut Observer, frame: &Message) {
        match self.apply_frame(obs, frame) {
            Ok(()) => obs.contact(),
            Err(e) => obs.bad_input(&e),
        }
    }

    fn apply_frame(&mut self, obs: &mut Observer, frame: &Message) -> Result<(), ProtocolError> {
        match frame {
            Message::Rep {
                channel: Some(n),
                param,
                value,
            } => {
                if *n == 0 || *n > self.count {
                    return Ok(());
                }
                let Some(field) = self.cfg.field_of(param) else {
                    return Ok(()); // METER_RATE, GROUP_CHANNEL, …: not monitored
                };
                self.apply_field(obs, *n, field, value)
            }
            Message::Rep {
                channel: None,
                param,
                value,
            } => {
                self.apply_device(obs, param, value);
                Ok(())
            }
            Message::Sample { channel, fields } => {
                if *channel == 0 || *channel > self.count {
                    return Ok(());
                }
                let m = shure::parse_sample(
                    fields,
                    &self.cfg.layout,
                    self.cfg.rf_offset_db,
                    self.cfg.audio_offset_db,
                )?;
                let present = self
                    .channels
                    .get(usize::from(*channel) - 1)
                    .and_then(|c| c.tx_present);
                self.publisher
                    .meters(obs, *channel, present, m.rf_dbm, m.audio_dbfs);
                Ok(())
            }
            // The receiver does not send requests; an unmatched REP ERR has no owner.
            Message::Get { .. } | Message::Set { .. } | Message::Err => Ok(()),
        }
    }

    fn apply_field(
        &mut self,
        obs: &mut Observer,
        n: u8,
        field: Field,
        value: &str,
    ) -> Result<(), ProtocolError> {
        let Some(ch) = self.channels.get_mut(usize::from(n) - 1) else {
            return Ok(());
        };
        let was_present = ch.tx_present;
        match field {
            Field::Name => ch.name = Known::Value(shure::text(value)),
            Field::TxModel => ch.tx_model = Known::from_option(shure::known_word(value)),
            Field::Bars => ch.battery_bars = Known::from_option(shure::battery_bars(value)?),
            Field::Minutes => {
                let rt = shure::runtime(value)?;
                ch.battery_comm_warning = rt == Runtime::CommWarning;
                ch.battery_minutes = Known::from_option(rt.minutes().map(u32::from));
            }
            Field::Percent => ch.battery_percent = Known::from_option(shure::percent(value)?),
            Field::BatteryType => ch.battery_type = Known::from_option(shure::known_word(value)),
            Field::Cycles => {
                ch.battery_cycles = Known::from_option(shure::count16(value)?.map(u32::from))
            }
            Field::TxMuted => ch.tx_muted = self.cfg.values.tx_muted.parse(value),
            Field::Gain => {
                ch.gain_db =
                    Known::Value(f64::from(shure::number(value)?) + self.cfg.gain_offset_db)
            }
            Field::Muted => ch.muted = self.cfg.values.muted.parse(value),
            Field::Interference => ch.interference = self.cfg.values.interference.parse(value),
            Field::Encryption => ch.encryption_ok = self.cfg.values.encryption_ok.parse(value),
            // kHz digits, 6 (ULX-D examples) or 7 (AD, SLX-D) of them: parse numerically
            // (protocols.md §2.3 FREQUENCY).
            Field::Frequency => {
                ch.frequency_mhz = match shure::number(value)? {
                    0 => Known::Unknown,
                    khz => Known::Value(f64::from(khz) / 1000.0),
                }
            }
        }
        ch.tx_present = presence(ch);
        if was_present == Some(true) && ch.tx_present == Some(false) {
            forget_transmitter(ch);
        }
        let ch = ch.clone();
        self.publisher
            .channel(obs, n, &ch, &self.cfg.policy, &[field.reading()]);
        Ok(())
    }

    fn apply_device(&mut self, obs: &mut Observer, param: &str, value: &str) {
        let d = &self.cfg.device;
        let text = shure::text(value);
        if d.firmware.as_deref() == Some(param) {
            // SLX-D+ marks a failed power-on self-test with a trailing `*` (Companion
            // `docs/SLXDplus-protocol.md`, FW_VER).
            let failed = text.ends_with('*');
            let fw = text.trim_end_matches('*').to_owned();
            obs.identity(|id| id.firmware = Some(fw));
            obs.faults(
                "self_test",
                if failed {
                    vec![Fault::new(
                        "self_test_failed",
                        Severity::Warning,
                        "receiver reports a failed power-on self-test; have it serviced",
                    )]
                } else {
                    Vec::new()
                },
            );
        } else if d.device_id.as_deref() == Some(param) {
            obs.identity(|id| id.name = (!text.is_empty()).then_some(text));
        } else if d.model.as_deref() == Some(param) {
            obs.identity(|id| id.model = (!text.is_empty()).then_some(text));
        }
    }

    /// Ask a device-level parameter; `REP ERR` is fine (the family lacks it).
    async fn ask_device(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
        param: Option<String>,
    ) -> Result<Option<String>, DriverError> {
        let Some(p) = param else { return Ok(None) };
        let reply = self
            .request(link, obs, &Message::get(None, &p), self.cfg.reply_timeout)
            .await?;
        Ok(match reply {
            Some(Message::Rep { value, .. }) => Some(shure::text(&value)),
            _ => None,
        })
    }

    /// How many channels: site settings, else the receiver's model, else probing for the
    /// highest channel that answers.
    async fn resolve_channels(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
        model: Option<&str>,
    ) -> Result<u8, DriverError> {
        if let Some(n) = self.cfg.fixed_channels {
            return Ok(n);
        }
        if let Some(n) = model.and_then(|m| channels_for_model(&self.cfg.model_channels, m)) {
            return Ok(n.clamp(1, self.cfg.max_channels));
        }
        let Some(probe) = self
            .cfg
            .params
            .name
            .clone()
            .or_else(|| self.cfg.params.battery_bars.clone())
        else {
            return Ok(1);
        };
        self.count = self.cfg.max_channels; // let probe answers land
        let mut n = 1;
        for c in 2..=self.cfg.max_channels {
            match self
                .request(
                    link,
                    obs,
                    &Message::get(Some(c), &probe),
                    self.cfg.reply_timeout,
                )
                .await?
            {
                Some(_) => n = c,
                None => break,
            }
        }
        Ok(n)
    }

    async fn read_everything(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
    ) -> Result<(), DriverError> {
        self.publisher.hold_faults(true);
        let res = self.read_channels(link, obs).await;
        self.publisher.hold_faults(false);
        res
    }

    async fn read_channels(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
    ) -> Result<(), DriverError> {
        for n in 1..=self.count {
            for field in Field::ALL {
                let Some(param) = self.cfg.params.get(field).map(str::to_owned) else {
                    continue;
                };
                if self.unsupported.contains(&(n, param.clone())) {
                    continue;
                }
                let reply = self
                    .request(
                        link,
                        obs,
                        &Message::get(Some(n), &param),
                        self.cfg.reply_timeout,
                    )
                    .await?;
                if reply.is_none() {
                    self.unsupported.insert((n, param));
                }
            }
            let ch = self.channels[usize::from(n) - 1].clone();
            let all: Vec<Quantity> = Field::ALL.iter().map(|f| f.reading()).collect();
            self.publisher.channel(obs, n, &ch, &self.cfg.policy, &all);
            self.publisher.channel_faults(obs, n, &ch, &self.cfg.policy);
        }
        self.last_refresh = Instant::now();
        Ok(())
    }

    async fn set_and_confirm(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
        command: &'static str,
        msg: Message,
    ) -> Result<(), DriverError> {
        match self
            .request(link, obs, &msg, self.cfg.reply_timeout)
            .await?
        {
            Some(_) => Ok(()),
            None => Err(DriverError::Refused {
                command: command.to_owned(),
                reason: format!("receiver answered REP ERR to {msg}"),
            }),
        }
    }
}

/// Whether a frame is the receiver's `REP ERR` (some firmwares put a channel in front).
fn is_error(m: &Message) -> bool {
    match m {
        Message::Err => true,
        Message::Rep { param, value, .. } => param == "ERR" && value.is_empty(),
        _ => false,
    }
}

/// Whether `frame` answers `req`: a `REP` of the same parameter for the same channel (any
/// channel for a request to channel 0).
fn answers(req: &Message, frame: &Message) -> bool {
    let (Message::Get { channel, param } | Message::Set { channel, param, .. }) = req else {
        return false;
    };
    match frame {
        Message::Rep {
            channel: c,
            param: p,
            ..
        } => p == param && (c == channel || (*channel == Some(0) && c.is_some())),
        _ => false,
    }
}

/// An explicit "nothing there" means absent: model `UNKN`, or bars 255 (protocols.md §2.4
/// vector 1: the transmitter was switched off) — unless the receiver says it cannot read the
/// battery (65533), which is why it has no bars for a transmitter that is on air. Otherwise any
/// known value means present.
fn presence(ch: &Channel) -> Option<bool> {
    let gone = ch.tx_model == Known::Unknown
        || (ch.battery_bars == Known::Unknown && !ch.battery_comm_warning);
    let here = ch.tx_model.value().is_some() || ch.battery_bars.value().is_some();
    if gone {
        Some(false)
    } else if here {
        Some(true)
    } else {
        None
    }
}

/// A transmitter left: what the receiver knew about it must not resurface when another one
/// arrives.
fn forget_transmitter(ch: &mut Channel) {
    fn unknown<T>(k: &mut Known<T>) {
        if k.is_reported() {
            *k = Known::Unknown;
        }
    }
    unknown(&mut ch.battery_minutes);
    unknown(&mut ch.battery_percent);
    unknown(&mut ch.battery_type);
    unknown(&mut ch.battery_cycles);
    unknown(&mut ch.tx_muted);
    unknown(&mut ch.encryption_ok);
    ch.battery_comm_warning = false;
}

#[async_trait]
impl Driver for ShureDriver {
    fn name(&self) -> &'static str {
        "shure"
    }

    fn fresh(&self) -> Option<Box<dyn Driver>> {
        Some(Box::new(self.clone()))
    }

    async fn open(&mut self, link: &mut Link, obs: &mut Observer) -> Result<(), DriverError> {
        link.take_fresh();
        self.codec = ShureCodec::new();
        self.unsupported.clear();
        self.publisher.reset();
        self.metering = false;
        let now = Instant::now();
        self.last_rx = now;
        self.last_heartbeat = now;

        // Liveness probe. A receiver that accepts TCP but answers nothing is not "down": it is
        // refusing third-party control (SLX-D+ Controller Access), and says so in the fault.
        let before = link.bytes_in();
        let probe = match self.cfg.device.firmware.clone() {
            Some(fw) => Message::get(None, &fw),
            None => Message::get(Some(1), "METER_RATE"),
        };
        match self
            .request(link, obs, &probe, self.cfg.reply_timeout)
            .await
        {
            Err(DriverError::Timeout { waited_ms }) if link.bytes_in() == before => {
                obs.faults(
                    "access",
                    vec![Fault::new(
                        "controller_access_disabled",
                        Severity::Fault,
                        format!(
                            "receiver accepts the connection but answers no command; {}",
                            self.cfg.controller_access_hint
                        ),
                    )],
                );
                return Err(DriverError::Timeout { waited_ms });
            }
            Err(e) => return Err(e),
            Ok(_) => obs.faults("access", Vec::new()),
        }
        self.ask_device(link, obs, self.cfg.device.device_id.clone())
            .await?;
        let model = self
            .ask_device(link, obs, self.cfg.device.model.clone())
            .await?;
        let count = self.resolve_channels(link, obs, model.as_deref()).await?;
        self.count = count;
        let (vendor, family) = (self.cfg.vendor.clone(), self.cfg.family.clone());
        obs.identity(|id| {
            id.manufacturer = Some(vendor);
            if model.is_none() {
                id.model = Some(family);
            }
            id.extra.insert("channels".to_owned(), count.to_string());
        });
        // Channels beyond the count were probed; their state is not this receiver's.
        for ch in self.channels.iter_mut().skip(usize::from(count)) {
            *ch = Channel::default();
        }

        if self.cfg.meter_rate_ms > 0 {
            let on = Message::set(
                Some(0),
                "METER_RATE",
                shure::meter_rate(self.cfg.meter_rate_ms),
            );
            self.metering = self
                .request(link, obs, &on, self.cfg.reply_timeout)
                .await?
                .is_some();
            if self.metering {
                obs.metering(Duration::from_millis(u64::from(self.cfg.meter_rate_ms)));
            }
        }
        // The comms monitor judges a receiver that pushes by its heartbeat: slow once one went
        // unanswered (its readings are then no longer current), gone after the silence limit.
        obs.comms(CommsPolicy {
            warn_after: self.cfg.heartbeat + self.cfg.reply_timeout,
            offline_after: self.cfg.silence,
        });
        Ok(())
    }

    async fn read_all(&mut self, link: &mut Link, obs: &mut Observer) -> Result<(), DriverError> {
        self.read_everything(link, obs).await
    }

    /// Heartbeat and an occasional full re-read; everything else arrives unsolicited. Silence
    /// is the runtime's comms monitor's to judge.
    async fn poll(&mut self, link: &mut Link, obs: &mut Observer) -> Result<(), DriverError> {
        let now = Instant::now();
        if now.duration_since(self.last_heartbeat) >= self.cfg.heartbeat {
            // Fire and forget: the REP is applied by `listen`, and its absence is the comms
            // monitor's news.
            link.send(&Message::get(Some(1), "METER_RATE").encode())
                .await?;
            self.last_heartbeat = now;
        }
        if let Some(every) = self.cfg.refresh {
            if now.duration_since(self.last_refresh) >= every {
                self.read_everything(link, obs).await?;
            }
        }
        Ok(())
    }

    async fn execute(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
        command: &DeviceCommand,
    ) -> Result<(), DriverError> {
        match command {
            DeviceCommand::SetGain { channel, db } => {
                let n = channel_arg(*channel, self.count)?;
                let Some(param) = self.cfg.params.gain.clone() else {
                    return Err(DriverError::Unsupported {
                        driver: "shure",
                        command: command.name(),
                    });
                };
                let db = db.round();
                check_gain(db, self.cfg.gain_min_db, self.cfg.gain_max_db)?;
                let raw = (db - self.cfg.gain_offset_db) as u32;
                let msg = Message::set(Some(n), &param, format!("{raw:03}"));
                self.set_and_confirm(link, obs, "set_gain", msg).await
            }
            DeviceCommand::SetMute { channel, on } => {
                let n = channel_arg(*channel, self.count)?;
                let Some(param) = self.cfg.params.muted.clone() else {
                    return Err(DriverError::Unsupported {
                        driver: "shure",
                        command: command.name(),
                    });
                };
                // The first word of the profile's list is what SET takes (`ON` / `OFF`).
                let words = &self.cfg.values.muted;
                let list = if *on { &words.yes } else { &words.no };
                let fallback = if *on { "ON" } else { "OFF" };
                let word = list.first().map_or(fallback, String::as_str).to_owned();
                let msg = Message::set(Some(n), &param, word);
                self.set_and_confirm(link, obs, "set_mute", msg).await
            }
            DeviceCommand::Refresh => self.read_everything(link, obs).await,
            other => Err(DriverError::Unsupported {
                driver: "shure",
                command: other.name(),
            }),
        }
    }

    async fn listen(&mut self, link: &mut Link, obs: &mut Observer) -> Result<(), DriverError> {
        loop {
            match link.read_frame(&mut self.codec, self.cfg.silence).await {
                Ok(frame) => {
                    self.apply(obs, &frame);
                    // The rest of the same read (a sample per channel arrives together) is
                    // applied in this turn, not one select round each (issue 15.2).
                    let mut drained = Ok(());
                    for _ in 0..crate::driver::link::DRAIN_FRAMES {
                        match link.try_frame(&mut self.codec) {
                            Ok(Some(frame)) => self.apply(obs, &frame),
                            Ok(None) => break,
                            Err(e) => {
                                drained = Err(e);
                                break;
                            }
                        }
                    }
                    self.last_rx = Instant::now();
                    return drained;
                }
                // Nothing to hear is not an error; the comms monitor judges the silence.
                Err(DriverError::Timeout { .. }) => continue,
                Err(DriverError::Protocol(e)) => {
                    self.last_rx = Instant::now();
                    return Err(DriverError::Protocol(e));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Switch metering off so the receiver does not keep streaming to nobody.
    async fn close(&mut self, link: &mut Link, obs: &mut Observer) {
        if !self.metering {
            return;
        }
        let off = Message::set(Some(0), "METER_RATE", shure::meter_rate(0));
        let wait = self.cfg.reply_timeout.min(Duration::from_secs(1));
        let _ = self.request(link, obs, &off, wait).await;
        self.metering = false;
    }
}
