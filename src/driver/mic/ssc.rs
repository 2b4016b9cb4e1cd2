//! Sennheiser wireless receivers (EW-DX, SpeechLine Digital Wireless) over SSC on UDP 45
//! (protocols.md §3). Which addresses a product uses, the unit of its battery lifetime
//! (seconds on SpeechLine, minutes on EW-DX, §3.4) and what its warning words mean are
//! profile data (`devices/mic/sennheiser-*.toml`).
//!
//! Session: ping, identity, channel count; a full read of every address (error 424 on a
//! transmitter address means no transmitter, §3.3); then subscriptions — state on change,
//! meters at the profile's rate — renewed at half their lifetime so they never lapse, and
//! renewed at once when the receiver ends one (error 310). A ping keeps a quiet link alive;
//! 60 s without any datagram drops it.
//!
//! JSON is parsed, never compared as text. `listen` must not send: it only waits for datagrams
//! (it is dropped whenever a poll or command is due); everything that sends happens in
//! `open`/`read_all`/`poll`/`execute`. Subscriptions are not cancelled on shutdown (SSC v1 as
//! documented has no unsubscribe); they lapse at the end of their lifetime.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value as Json;
use tokio::time::Instant;

use super::{
    channel_arg, channels_for_model, check_gain, Channel, FaultPolicy, Known, Options, Publisher,
};
use crate::codec::ssc::{self, Builder, Message, SubscribeParams};
use crate::driver::{Driver, DriverError, Link, Observer, Step};
use crate::model::{CommsPolicy, DeviceCommand, Quantity};
use crate::profile::{Profile, ProfileError};

/// What an address carries, in neutral terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Field {
    BatteryPercent,
    BatteryLifetime,
    BatteryBars,
    BatteryType,
    BatteryCycles,
    TxModel,
    TxMuted,
    TxWarnings,
    Name,
    Muted,
    Gain,
    RxWarnings,
    Frequency,
    RfMeter,
    AudioMeter,
}

impl Field {
    const ALL: [Field; 15] = [
        Field::BatteryPercent,
        Field::BatteryLifetime,
        Field::BatteryBars,
        Field::BatteryType,
        Field::BatteryCycles,
        Field::TxModel,
        Field::TxMuted,
        Field::TxWarnings,
        Field::Name,
        Field::Muted,
        Field::Gain,
        Field::RxWarnings,
        Field::Frequency,
        Field::RfMeter,
        Field::AudioMeter,
    ];

    /// Addresses about the transmitter: error 424 on them means it is not there.
    fn is_tx(self) -> bool {
        matches!(
            self,
            Field::BatteryPercent
                | Field::BatteryLifetime
                | Field::BatteryBars
                | Field::BatteryType
                | Field::BatteryCycles
                | Field::TxModel
                | Field::TxMuted
                | Field::TxWarnings
        )
    }

    fn is_meter(self) -> bool {
        matches!(self, Field::RfMeter | Field::AudioMeter)
    }

    fn reading(self) -> Quantity {
        match self {
            Field::BatteryPercent => Quantity::BatteryPercent,
            Field::BatteryLifetime => Quantity::BatteryMinutes,
            Field::BatteryBars => Quantity::BatteryBars,
            Field::BatteryType => Quantity::BatteryType,
            Field::BatteryCycles => Quantity::BatteryCycles,
            Field::TxModel => Quantity::TxModel,
            Field::TxMuted => Quantity::TxMuted,
            Field::TxWarnings => Quantity::Warnings,
            Field::Name => Quantity::Name,
            Field::Muted => Quantity::Muted,
            Field::Gain => Quantity::GainDb,
            Field::RxWarnings => Quantity::Warnings,
            Field::Frequency => Quantity::FrequencyMhz,
            Field::RfMeter => Quantity::RfDbm,
            Field::AudioMeter => Quantity::AudioDbfs,
        }
    }
}

/// `[options.addresses]`: address templates with `{n}` for the channel.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Addresses {
    battery_percent: Option<String>,
    battery_lifetime: Option<String>,
    battery_bars: Option<String>,
    battery_type: Option<String>,
    battery_cycles: Option<String>,
    tx_model: Option<String>,
    tx_muted: Option<String>,
    tx_warnings: Option<String>,
    name: Option<String>,
    muted: Option<String>,
    gain: Option<String>,
    rx_warnings: Option<String>,
    frequency: Option<String>,
    rf_meter: Option<String>,
    audio_meter: Option<String>,
}

impl Addresses {
    fn get(&self, f: Field) -> Option<&str> {
        match f {
            Field::BatteryPercent => self.battery_percent.as_deref(),
            Field::BatteryLifetime => self.battery_lifetime.as_deref(),
            Field::BatteryBars => self.battery_bars.as_deref(),
            Field::BatteryType => self.battery_type.as_deref(),
            Field::BatteryCycles => self.battery_cycles.as_deref(),
            Field::TxModel => self.tx_model.as_deref(),
            Field::TxMuted => self.tx_muted.as_deref(),
            Field::TxWarnings => self.tx_warnings.as_deref(),
            Field::Name => self.name.as_deref(),
            Field::Muted => self.muted.as_deref(),
            Field::Gain => self.gain.as_deref(),
            Field::RxWarnings => self.rx_warnings.as_deref(),
            Field::Frequency => self.frequency.as_deref(),
            Field::RfMeter => self.rf_meter.as_deref(),
            Field::AudioMeter => self.audio_meter.as_deref(),
        }
    }
}

/// `[options.device_addresses]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceAddresses {
    product: Option<String>,
    serial: Option<String>,
    firmware: Option<String>,
    name: Option<String>,
}

/// What a warning word means (`[options.warnings]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Meaning {
    BatteryLow,
    EncryptionMismatch,
    Interference,
    /// Informational (`AfPeak`, `NoLink`): shown in `ch.N.warnings`, no fault of its own.
    Info,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum LifetimeUnit {
    Seconds,
    Minutes,
}

#[derive(Debug, Clone)]
struct Config {
    vendor: String,
    family: String,
    default_channels: u8,
    fixed_channels: Option<u8>,
    model_channels: BTreeMap<String, u8>,
    meter_rate_ms: u32,
    lifetime_secs: u32,
    keepalive: Duration,
    silence: Duration,
    reply_timeout: Duration,
    lifetime_unit: LifetimeUnit,
    gain_min_db: f64,
    gain_max_db: f64,
    gain_step_db: f64,
    addresses: Addresses,
    device: DeviceAddresses,
    warnings: BTreeMap<String, Meaning>,
    policy: FaultPolicy,
}

impl Config {
    fn new(profile: &Profile, settings: &toml::Table) -> Result<Self, ProfileError> {
        let o = Options::new(profile, settings);
        let default_channels: u8 = o.get("channels_default", 2u8)?;
        let fixed: Option<u8> = o.get("channels", None::<u8>)?;
        for c in [Some(default_channels), fixed].into_iter().flatten() {
            if !(1..=8).contains(&c) {
                return Err(o.error("channels", "must be 1-8"));
            }
        }
        let meter_rate_ms: u32 = o.get("meter_rate_ms", 1000u32)?;
        if meter_rate_ms != 0 && meter_rate_ms < 100 {
            return Err(o.error(
                "meter_rate_ms",
                "must be 0 (no meters) or at least 100 ms; faster metering loads the receiver",
            ));
        }
        let lifetime_secs: u32 = o.get("subscription_lifetime_secs", 60u32)?;
        // Renewal happens in polls at half the lifetime: at least two polls must fit in it.
        let poll = profile.timing.poll_interval;
        if Duration::from_secs(u64::from(lifetime_secs)) < poll * 4 {
            return Err(o.error(
                "subscription_lifetime_secs",
                "must be at least 4 poll intervals so subscriptions are renewed before they lapse",
            ));
        }
        let keepalive: u64 = o.get("keepalive_secs", 10u64)?;
        let silence: u64 = o.get("silence_secs", 60u64)?;
        if keepalive == 0 || silence <= keepalive {
            return Err(o.error(
                "silence_secs",
                "must be longer than keepalive_secs (and keepalive_secs above 0)",
            ));
        }
        let step: f64 = o.get("gain_step_db", 1.0)?;
        if !(step.is_finite() && step > 0.0) {
            return Err(o.error("gain_step_db", "must be above 0"));
        }
        Ok(Config {
            vendor: profile.vendor.clone(),
            family: profile.family.clone(),
            default_channels,
            fixed_channels: fixed,
            model_channels: o.get("model_channels", BTreeMap::new())?,
            meter_rate_ms,
            lifetime_secs,
            keepalive: Duration::from_secs(keepalive),
            silence: Duration::from_secs(silence),
            reply_timeout: profile.timing.reply_timeout,
            lifetime_unit: o.get("battery_lifetime_unit", LifetimeUnit::Minutes)?,
            gain_min_db: o.get("gain_min_db", -3.0)?,
            gain_max_db: o.get("gain_max_db", 42.0)?,
            gain_step_db: step,
            addresses: o.get("addresses", Addresses::default())?,
            device: o.get("device_addresses", DeviceAddresses::default())?,
            warnings: o.get("warnings", BTreeMap::new())?,
            policy: FaultPolicy::from_options(&o)?,
        })
    }
}

/// Per-channel extras beyond the neutral [`Channel`].
#[derive(Debug, Clone, Default)]
struct Extra {
    tx_warnings: Option<Vec<String>>,
    rx_warnings: Option<Vec<String>>,
}

/// How a request was answered.
enum Answer {
    Value(Json),
    Error(u16),
}

#[derive(Clone)]
pub struct SscDriver {
    cfg: Config,
    count: u8,
    channels: Vec<Channel>,
    extra: Vec<Extra>,
    /// Address → (channel, field) for the resolved channel count.
    index: HashMap<String, (u8, Field)>,
    unsupported: BTreeSet<String>,
    publisher: Publisher,
    last_rx: Instant,
    last_subscribe: Option<Instant>,
    resubscribe: bool,
    /// Transaction ids (`/osc/xid`) tell our request's answer from a notification that
    /// happens to carry the same address (an old gain value from a subscription).
    next_xid: u64,
    /// The receiver echoes xids; until it is seen to, answers without one are accepted.
    echoes_xid: bool,
}

impl SscDriver {
    pub fn new(profile: &Profile, settings: &toml::Table) -> Result<Self, ProfileError> {
        let cfg = Config::new(profile, settings)?;
        let count = cfg.fixed_channels.unwrap_or(cfg.default_channels);
        let mut d = Self {
            cfg,
            count,
            channels: Vec::new(),
            extra: Vec::new(),
            index: HashMap::new(),
            unsupported: BTreeSet::new(),
            publisher: Publisher::for_profile(profile),
            last_rx: Instant::now(),
            last_subscribe: None,
            resubscribe: false,
            next_xid: 1,
            echoes_xid: false,
        };
        d.set_count(count);
        Ok(d)
    }

    fn set_count(&mut self, count: u8) {
        self.count = count;
        self.channels = vec![Channel::default(); usize::from(count)];
        self.extra = vec![Extra::default(); usize::from(count)];
        self.index.clear();
        for n in 1..=count {
            for f in Field::ALL {
                if let Some(t) = self.cfg.addresses.get(f) {
                    self.index.insert(ssc::address(t, n), (n, f));
                }
            }
        }
    }

    fn address(&self, n: u8, f: Field) -> Option<String> {
        self.cfg.addresses.get(f).map(|t| ssc::address(t, n))
    }

    /// Send a datagram and wait for one that satisfies `done`, applying every datagram that
    /// arrives meanwhile.
    async fn exchange(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
        datagram: &[u8],
        done: impl Fn(&Message) -> bool,
    ) -> Result<Message, DriverError> {
        let wait = self.cfg.reply_timeout;
        link.converse(&mut ssc::DatagramCodec, datagram, wait, obs, |read, obs| {
            self.last_rx = Instant::now();
            match read {
                Ok(msg) => {
                    self.apply(obs, &msg);
                    if done(&msg) {
                        Step::Done(msg)
                    } else {
                        Step::Skip
                    }
                }
                Err(e) => Step::Bad(e),
            }
        })
        .await
    }

    /// Get (or set, with `value`) one address and return how the receiver answered.
    async fn request(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
        address: &str,
        value: Option<Json>,
    ) -> Result<Answer, DriverError> {
        let xid = Json::from(self.next_xid);
        self.next_xid = self.next_xid.wrapping_add(1);
        let dg = Builder::new()
            .value(address, value.unwrap_or(Json::Null))
            .xid(xid.clone())
            .encode();
        let echoes = self.echoes_xid;
        let msg = self
            .exchange(link, obs, &dg, |m| {
                m.answers(address)
                    && match &m.xid {
                        Some(x) => *x == xid,
                        None => !echoes,
                    }
            })
            .await?;
        if msg.xid.is_some() {
            self.echoes_xid = true;
        }
        Ok(match (msg.value(address), msg.error(address)) {
            (Some(v), _) => Answer::Value(v.clone()),
            (None, Some(e)) => Answer::Error(e.code),
            (None, None) => Answer::Error(ssc::ERR_NOT_FOUND),
        })
    }

    fn apply(&mut self, obs: &mut Observer, msg: &Message) {
        obs.contact();
        let mut touched: BTreeMap<u8, Vec<Quantity>> = BTreeMap::new();
        let mut meters: BTreeMap<u8, (Option<f64>, Option<f64>)> = BTreeMap::new();
        for (address, value) in &msg.values {
            if let Some(&(n, f)) = self.index.get(address) {
                match f {
                    Field::RfMeter => meters.entry(n).or_default().0 = value.as_f64(),
                    Field::AudioMeter => meters.entry(n).or_default().1 = value.as_f64(),
                    _ => {
                        self.apply_value(n, f, value);
                        touched.entry(n).or_default().push(f.reading());
                    }
                }
            } else {
                self.apply_device(obs, address, value);
            }
        }
        for e in &msg.errors {
            if e.code == ssc::ERR_SUBSCRIPTION_TERMINATED {
                // The receiver ended a subscription (lifetime or count): renew at the next poll.
                self.resubscribe = true;
                continue;
            }
            let Some(&(n, f)) = self.index.get(&e.address) else {
                continue;
            };
            if e.code == ssc::ERR_FAILED_DEPENDENCY && f.is_tx() {
                self.set_present(n, false);
                self.mark_unknown(n);
                touched.entry(n).or_default().push(Quantity::TxPresent);
            } else if matches!(e.code, ssc::ERR_NOT_FOUND | ssc::ERR_ADDRESS_NOT_FOUND) {
                self.unsupported.insert(e.address.clone());
            }
        }
        for (n, names) in touched {
            let i = usize::from(n) - 1;
            let ch = self.channels[i].clone();
            self.publisher
                .channel(obs, n, &ch, &self.cfg.policy, &names);
            let warnings = self.warnings_text(i);
            self.publisher.write(
                obs,
                vec![(
                    crate::model::Point::channel(n, Quantity::Warnings),
                    crate::model::Value::Text(warnings),
                )],
            );
        }
        for (n, (rf, af)) in meters {
            let present = self
                .channels
                .get(usize::from(n) - 1)
                .and_then(|c| c.tx_present);
            self.publisher.meters(obs, n, present, rf, af);
        }
    }

    fn warnings_text(&self, i: usize) -> String {
        let e = &self.extra[i];
        let mut all: Vec<&str> = Vec::new();
        for w in e.tx_warnings.iter().chain(e.rx_warnings.iter()).flatten() {
            if !all.contains(&w.as_str()) {
                all.push(w);
            }
        }
        all.join(",")
    }

    fn set_present(&mut self, n: u8, present: bool) {
        let i = usize::from(n) - 1;
        let ch = &mut self.channels[i];
        if ch.tx_present == Some(true) && !present {
            for k in [
                &mut ch.battery_percent as &mut dyn Forget,
                &mut ch.battery_minutes,
                &mut ch.battery_bars,
                &mut ch.battery_type,
                &mut ch.battery_cycles,
                &mut ch.tx_model,
                &mut ch.tx_muted,
            ] {
                k.forget();
            }
            self.extra[i].tx_warnings = None;
            ch.device_low_battery = false;
        }
        ch.tx_present = Some(present);
    }

    /// No transmitter: every transmitter reading this product has becomes `unknown` (never
    /// missing, never 0).
    fn mark_unknown(&mut self, n: u8) {
        let has = |f: Field| self.cfg.addresses.get(f).is_some();
        let (percent, minutes, bars, kind, cycles, model, muted) = (
            has(Field::BatteryPercent),
            has(Field::BatteryLifetime),
            has(Field::BatteryBars),
            has(Field::BatteryType),
            has(Field::BatteryCycles),
            has(Field::TxModel),
            has(Field::TxMuted),
        );
        let ch = &mut self.channels[usize::from(n) - 1];
        if percent {
            ch.battery_percent = Known::Unknown;
        }
        if minutes {
            ch.battery_minutes = Known::Unknown;
        }
        if bars {
            ch.battery_bars = Known::Unknown;
        }
        if kind {
            ch.battery_type = Known::Unknown;
        }
        if cycles {
            ch.battery_cycles = Known::Unknown;
        }
        if model {
            ch.tx_model = Known::Unknown;
        }
        if muted {
            ch.tx_muted = Known::Unknown;
        }
    }

    fn apply_value(&mut self, n: u8, f: Field, v: &Json) {
        let i = usize::from(n) - 1;
        if f.is_tx() {
            self.set_present(n, true);
        }
        let unit = self.cfg.lifetime_unit;
        let ch = &mut self.channels[i];
        let int = |v: &Json| v.as_i64();
        match f {
            Field::BatteryPercent => {
                ch.battery_percent =
                    Known::from_option(int(v).filter(|p| (0..=100).contains(p)).map(|p| p as u8))
            }
            Field::BatteryLifetime => {
                ch.battery_minutes =
                    Known::from_option(int(v).filter(|x| *x >= 0).map(|x| match unit {
                        // SpeechLine reports seconds (protocols.md §3.4): minutes left, rounded down.
                        LifetimeUnit::Seconds => (x / 60) as u32,
                        LifetimeUnit::Minutes => x.min(i64::from(u32::MAX)) as u32,
                    }))
            }
            Field::BatteryBars => {
                ch.battery_bars =
                    Known::from_option(int(v).filter(|b| (0..=5).contains(b)).map(|b| b as u8))
            }
            Field::BatteryType => ch.battery_type = Known::from_option(text(v)),
            Field::BatteryCycles => {
                ch.battery_cycles = Known::from_option(
                    int(v)
                        .filter(|c| *c >= 0)
                        .map(|c| c.min(i64::from(u32::MAX)) as u32),
                )
            }
            Field::TxModel => ch.tx_model = Known::from_option(text(v)),
            Field::TxMuted => ch.tx_muted = Known::from_option(v.as_bool()),
            Field::Name => ch.name = Known::Value(text(v).unwrap_or_default()),
            Field::Muted => ch.muted = Known::from_option(v.as_bool()),
            Field::Gain => ch.gain_db = Known::from_option(v.as_f64()),
            // kHz on EW-DX (protocols.md §3.4).
            Field::Frequency => {
                ch.frequency_mhz =
                    Known::from_option(v.as_f64().filter(|k| *k > 0.0).map(|khz| khz / 1000.0))
            }
            Field::TxWarnings => self.extra[i].tx_warnings = Some(words(v)),
            Field::RxWarnings => {
                let new = Some(words(v));
                if self.extra[i].rx_warnings != new && ch.tx_present != Some(true) {
                    // The link state changed while no transmitter was known: a transmitter may
                    // have arrived, and subscriptions to its addresses may have been refused.
                    self.resubscribe = true;
                }
                self.extra[i].rx_warnings = new;
            }
            Field::RfMeter | Field::AudioMeter => {}
        }
        self.derive_warnings(i);
    }

    /// Fold the warning words into the neutral channel state.
    fn derive_warnings(&mut self, i: usize) {
        let e = &self.extra[i];
        let meaning = |w: &String| self.cfg.warnings.get(w).copied();
        let all: Vec<Meaning> = e
            .tx_warnings
            .iter()
            .chain(e.rx_warnings.iter())
            .flatten()
            .filter_map(meaning)
            .collect();
        let ch = &mut self.channels[i];
        ch.device_low_battery = all.contains(&Meaning::BatteryLow);
        if e.rx_warnings.is_some() {
            if self
                .cfg
                .warnings
                .values()
                .any(|m| *m == Meaning::EncryptionMismatch)
            {
                ch.encryption_ok = Known::Value(!all.contains(&Meaning::EncryptionMismatch));
            }
            if self
                .cfg
                .warnings
                .values()
                .any(|m| *m == Meaning::Interference)
            {
                ch.interference = Known::Value(all.contains(&Meaning::Interference));
            }
        }
    }

    fn apply_device(&mut self, obs: &mut Observer, address: &str, v: &Json) {
        let d = &self.cfg.device;
        let t = text(v);
        if d.product.as_deref() == Some(address) {
            obs.identity(|id| id.model = t);
        } else if d.serial.as_deref() == Some(address) {
            obs.identity(|id| id.serial = t);
        } else if d.firmware.as_deref() == Some(address) {
            obs.identity(|id| id.firmware = t);
        } else if d.name.as_deref() == Some(address) {
            obs.identity(|id| id.name = t);
        }
    }

    async fn ask_device(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
        address: Option<String>,
    ) -> Result<Option<String>, DriverError> {
        let Some(a) = address else { return Ok(None) };
        Ok(match self.request(link, obs, &a, None).await? {
            Answer::Value(v) => text(&v),
            Answer::Error(_) => None,
        })
    }

    async fn read_everything(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
    ) -> Result<(), DriverError> {
        for n in 1..=self.count {
            for f in Field::ALL {
                if f.is_meter() {
                    continue;
                }
                let Some(a) = self.address(n, f) else {
                    continue;
                };
                if self.unsupported.contains(&a) {
                    continue;
                }
                // A transmitter that is not there answers 424 to every address: ask once.
                if f.is_tx()
                    && self
                        .channels
                        .get(usize::from(n) - 1)
                        .and_then(|c| c.tx_present)
                        == Some(false)
                {
                    let first_tx = Field::ALL
                        .into_iter()
                        .find(|g| g.is_tx() && self.cfg.addresses.get(*g).is_some());
                    if first_tx != Some(f) {
                        continue;
                    }
                }
                self.request(link, obs, &a, None).await?;
            }
            let i = usize::from(n) - 1;
            let ch = self.channels[i].clone();
            let all: Vec<Quantity> = Field::ALL.iter().map(|f| f.reading()).collect();
            self.publisher.channel(obs, n, &ch, &self.cfg.policy, &all);
        }
        Ok(())
    }

    /// (Re)subscribe: per channel one entry for state (notify on change) and one for meters
    /// (notify at the meter rate). Renewing is subscribing again before the lifetime ends.
    async fn subscribe(&mut self, link: &mut Link) -> Result<(), DriverError> {
        let lifetime = self.cfg.lifetime_secs;
        for n in 1..=self.count {
            let mut state = Vec::new();
            let mut meters = Vec::new();
            for f in Field::ALL {
                let Some(a) = self.address(n, f) else {
                    continue;
                };
                if self.unsupported.contains(&a) {
                    continue;
                }
                if f.is_meter() {
                    meters.push(a);
                } else {
                    state.push(a);
                }
            }
            let mut b = Builder::new();
            if !state.is_empty() {
                b = b.subscribe(
                    SubscribeParams {
                        min_ms: 0,
                        max_ms: 0,
                        count: 1000,
                        lifetime_secs: lifetime,
                    },
                    &state,
                );
            }
            if !meters.is_empty() && self.cfg.meter_rate_ms > 0 {
                let rate = self.cfg.meter_rate_ms;
                b = b.subscribe(
                    SubscribeParams {
                        min_ms: rate,
                        max_ms: rate,
                        // Enough notifications for two lifetimes at the meter rate.
                        count: (lifetime.saturating_mul(2000) / rate).saturating_add(10),
                        lifetime_secs: lifetime,
                    },
                    &meters,
                );
            }
            if !b.is_empty() {
                link.send_datagram(&b.encode()).await?;
            }
        }
        self.last_subscribe = Some(Instant::now());
        self.resubscribe = false;
        Ok(())
    }

    async fn set(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
        command: &'static str,
        address: String,
        value: Json,
    ) -> Result<(), DriverError> {
        match self.request(link, obs, &address, Some(value)).await? {
            Answer::Value(_) => Ok(()),
            Answer::Error(code) => Err(DriverError::Refused {
                command: command.to_owned(),
                reason: format!("receiver answered error {code} for {address}"),
            }),
        }
    }
}

/// Forget a transmitter value (it left): reported values become unknown.
trait Forget {
    fn forget(&mut self);
}

impl<T> Forget for Known<T> {
    fn forget(&mut self) {
        if self.is_reported() {
            *self = Known::Unknown;
        }
    }
}

fn text(v: &Json) -> Option<String> {
    v.as_str()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// EW-DX sends an array of words, SpeechLine a string (`""` or `"Low Bat"`).
fn words(v: &Json) -> Vec<String> {
    match v {
        Json::Array(a) => a.iter().filter_map(text).collect(),
        Json::String(_) => text(v).into_iter().collect(),
        _ => Vec::new(),
    }
}

#[async_trait]
impl Driver for SscDriver {
    fn name(&self) -> &'static str {
        "ssc"
    }

    fn fresh(&self) -> Option<Box<dyn Driver>> {
        Some(Box::new(self.clone()))
    }

    async fn open(&mut self, link: &mut Link, obs: &mut Observer) -> Result<(), DriverError> {
        link.take_fresh();
        self.unsupported.clear();
        self.publisher.reset();
        self.echoes_xid = false;
        self.last_subscribe = None;
        self.last_rx = Instant::now();
        // A keep-alive unanswered is slow; the silence limit is gone.
        obs.comms(CommsPolicy {
            warn_after: (self.cfg.keepalive * 2).min(self.cfg.silence),
            offline_after: self.cfg.silence,
        });
        let ping = Builder::new().ping().encode();
        self.exchange(link, obs, &ping, |m| m.ping).await?;
        let product = self
            .ask_device(link, obs, self.cfg.device.product.clone())
            .await?;
        self.ask_device(link, obs, self.cfg.device.serial.clone())
            .await?;
        self.ask_device(link, obs, self.cfg.device.firmware.clone())
            .await?;
        self.ask_device(link, obs, self.cfg.device.name.clone())
            .await?;
        let count = self
            .cfg
            .fixed_channels
            .or_else(|| {
                product
                    .as_deref()
                    .and_then(|p| channels_for_model(&self.cfg.model_channels, p))
            })
            .unwrap_or(self.cfg.default_channels);
        self.set_count(count);
        let (vendor, family) = (self.cfg.vendor.clone(), self.cfg.family.clone());
        obs.identity(|id| {
            id.manufacturer = Some(vendor);
            if id.model.is_none() {
                id.model = Some(family);
            }
            id.extra.insert("channels".to_owned(), count.to_string());
        });
        Ok(())
    }

    async fn read_all(&mut self, link: &mut Link, obs: &mut Observer) -> Result<(), DriverError> {
        self.read_everything(link, obs).await?;
        if self.cfg.meter_rate_ms > 0 {
            obs.metering(Duration::from_millis(u64::from(self.cfg.meter_rate_ms)));
        }
        self.subscribe(link).await
    }

    async fn poll(&mut self, link: &mut Link, _obs: &mut Observer) -> Result<(), DriverError> {
        let now = Instant::now();
        let quiet = now.duration_since(self.last_rx);
        let half_life = Duration::from_secs(u64::from(self.cfg.lifetime_secs)) / 2;
        let due = self
            .last_subscribe
            .is_none_or(|t| now.duration_since(t) >= half_life);
        if due || self.resubscribe {
            self.subscribe(link).await?;
        }
        if quiet >= self.cfg.keepalive {
            // The answer, or its absence, is the comms monitor's to judge.
            link.send_datagram(&Builder::new().ping().encode()).await?;
        }
        Ok(())
    }

    async fn execute(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
        command: &DeviceCommand,
    ) -> Result<(), DriverError> {
        let unsupported = || DriverError::Unsupported {
            driver: "ssc",
            command: command.name(),
        };
        match command {
            DeviceCommand::SetGain { channel, db } => {
                let n = channel_arg(*channel, self.count)?;
                let address = self.address(n, Field::Gain).ok_or_else(unsupported)?;
                let step = self.cfg.gain_step_db;
                let db = (db / step).round() * step;
                check_gain(db, self.cfg.gain_min_db, self.cfg.gain_max_db)?;
                // Whole-dB receivers take integers; keep the JSON an integer when it is one.
                let v = if db.fract() == 0.0 {
                    Json::from(db as i64)
                } else {
                    Json::from(db)
                };
                self.set(link, obs, "set_gain", address, v).await
            }
            DeviceCommand::SetMute { channel, on } => {
                let n = channel_arg(*channel, self.count)?;
                let address = self.address(n, Field::Muted).ok_or_else(unsupported)?;
                self.set(link, obs, "set_mute", address, Json::Bool(*on))
                    .await
            }
            DeviceCommand::Refresh => self.read_everything(link, obs).await,
            _ => Err(unsupported()),
        }
    }

    async fn listen(&mut self, link: &mut Link, obs: &mut Observer) -> Result<(), DriverError> {
        let read = loop {
            match link
                .read_frame(&mut ssc::DatagramCodec, self.cfg.silence)
                .await
            {
                // Nothing to hear is not an error; the comms monitor judges the silence.
                Err(DriverError::Timeout { .. }) => continue,
                read => break read,
            }
        };
        if !matches!(read, Err(DriverError::Link(_))) {
            self.last_rx = Instant::now();
        }
        let msg = read?;
        self.apply(obs, &msg);
        Ok(())
    }
}
