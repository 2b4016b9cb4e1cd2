//! Simulated Shure wireless receivers (ULX-D, QLX-D, SLX-D, SLX-D+, Axient Digital) speaking
//! command strings on TCP (protocols.md §2) with each family's own parameter names, value words,
//! sentinels and SAMPLE layout — written from the protocol notes, independently of the
//! driver's profiles, so a wrong name in a profile shows up as a failing test.
//!
//! Scriptable: transmitters switched off, removed or replaced, batteries that drain in
//! (simulated) time and report "calculating" or a communication warning, interference and
//! encryption mismatch, a receiver that accepts connections but answers nothing (SLX-D+ with
//! Controller Access off), raw bytes (garbage, split or oversized frames). Counters let tests
//! see heartbeats, meter-rate changes and samples.
//!
//! It must not borrow the driver's profile tables: it plays the device the driver is tested
//! against, so the two only meet on the wire.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, Notify};
use tokio::time::Instant;
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;

use super::mic::{BatteryKind, BatteryState, Transmitter, TxSpec};
use super::{bind_error, option_error, parse_options, SimBind, SimEndpoint, SimError};
use crate::clock::Clock;
use crate::codec::shure::{self, Message, Runtime, ShureCodec};

/// A receiver family as the simulator plays it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    Ulxd,
    Qlxd,
    Slxd,
    SlxdPlus,
    Axient,
}

impl Family {
    /// Accepts config spellings and profile family names (`ulxd`, `ULX-D`, `SLX-D+`).
    pub fn parse(s: &str) -> Option<Family> {
        let k: String = s
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '+')
            .collect::<String>()
            .to_ascii_lowercase();
        Some(match k.as_str() {
            "ulxd" => Family::Ulxd,
            "qlxd" => Family::Qlxd,
            "slxd" => Family::Slxd,
            "slxd+" | "slxdplus" => Family::SlxdPlus,
            "axient" | "axientdigital" | "ad" => Family::Axient,
            _ => return None,
        })
    }

    fn names(self) -> &'static Names {
        match self {
            Family::Ulxd => &ULXD,
            Family::Qlxd => &QLXD,
            Family::Slxd => &SLXD,
            Family::SlxdPlus => &SLXD_PLUS,
            Family::Axient => &AXIENT,
        }
    }

    pub fn default_model(self, channels: u8) -> &'static str {
        match (self, channels) {
            (Family::Ulxd, 1) => "ULXD4",
            (Family::Ulxd, 2) => "ULXD4D",
            (Family::Ulxd, _) => "ULXD4Q",
            (Family::Qlxd, _) => "QLXD4",
            (Family::Slxd, 1) => "SLXD4",
            (Family::Slxd, _) => "SLXD4D",
            (Family::SlxdPlus, 1) => "SLXD4+",
            (Family::SlxdPlus, 2) => "SLXD4D+",
            (Family::SlxdPlus, _) => "SLXD4Q+",
            (Family::Axient, 2) => "AD4D",
            (Family::Axient, _) => "AD4Q",
        }
    }

    fn default_tx(self) -> &'static str {
        match self {
            Family::Ulxd => "ULXD2",
            Family::Qlxd => "QLXD2",
            Family::Slxd => "SLXD2",
            Family::SlxdPlus => "SLXD2+",
            Family::Axient => "AD2",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SampleLayout {
    /// `AX rrr aaa`: RF +128, audio +50.
    Ulx,
    /// `peak rms rssi`: each +120.
    Slx,
    /// `qual bitmap peak rms ant bitmapA rssiA bitmapB rssiB`: +120.
    Ad,
}

/// One family's vocabulary (protocols.md §2.3; Companion `internalAPI.js` channel lists).
struct Names {
    tx_model: &'static str,
    unknown_word: &'static str,
    bars: &'static str,
    minutes: &'static str,
    percent: Option<&'static str>,
    cycles: Option<&'static str>,
    batt_type: Option<&'static str>,
    /// (parameter, muted word, unmuted word)
    tx_mute: Option<(&'static str, &'static str, &'static str)>,
    rx_mute: Option<&'static str>,
    /// (parameter, detected word)
    interference: Option<(&'static str, &'static str)>,
    /// (parameter, ok word, mismatch word)
    encryption: Option<(&'static str, &'static str, &'static str)>,
    /// Reports `MODEL` (ULX-D and QLX-D do not).
    model: bool,
    device_id_width: usize,
    fw_width: usize,
    /// Whether runtime sentinels 65534/65533 exist (AD, SLX-D).
    runtime_states: bool,
    layout: SampleLayout,
}

const ULXD: Names = Names {
    tx_model: "TX_TYPE",
    unknown_word: "UNKN",
    bars: "BATT_BARS",
    minutes: "BATT_RUN_TIME",
    percent: Some("BATT_CHARGE"),
    cycles: Some("BATT_CYCLE"),
    batt_type: Some("BATT_TYPE"),
    tx_mute: Some(("TX_MUTE_STATUS", "ON", "OFF")),
    rx_mute: Some("AUDIO_MUTE"),
    interference: Some(("RF_INT_DET", "CRITICAL")),
    encryption: Some(("ENCRYPTION_WARNING", "OFF", "ON")),
    model: false,
    device_id_width: 8,
    fw_width: 18,
    runtime_states: false,
    layout: SampleLayout::Ulx,
};

const QLXD: Names = Names {
    rx_mute: None,
    interference: None,
    ..ULXD
};

const SLXD: Names = Names {
    tx_model: "TX_MODEL",
    unknown_word: "UNKNOWN",
    bars: "TX_BATT_BARS",
    minutes: "TX_BATT_MINS",
    // protocols.md §2.3: SLX-D uses the AD names for charge and chemistry.
    percent: Some("TX_BATT_CHARGE_PERCENT"),
    cycles: None,
    batt_type: Some("TX_BATT_TYPE"),
    tx_mute: None,
    rx_mute: None,
    interference: None,
    encryption: None,
    model: true,
    device_id_width: 8,
    fw_width: 24,
    runtime_states: true,
    layout: SampleLayout::Slx,
};

const SLXD_PLUS: Names = Names {
    interference: Some(("INTERFERENCE_STATUS", "DETECTED")),
    encryption: Some(("ENCRYPTION_STATUS", "OK", "ERROR")),
    ..SLXD
};

const AXIENT: Names = Names {
    tx_model: "TX_MODEL",
    unknown_word: "UNKNOWN",
    bars: "TX_BATT_BARS",
    minutes: "TX_BATT_MINS",
    percent: Some("TX_BATT_CHARGE_PERCENT"),
    cycles: Some("TX_BATT_CYCLE_COUNT"),
    batt_type: Some("TX_BATT_TYPE"),
    tx_mute: Some(("TX_MUTE_MODE_STATUS", "MUTE", "ON")),
    rx_mute: Some("AUDIO_MUTE"),
    interference: Some(("INTERFERENCE_STATUS", "DETECTED")),
    encryption: Some(("ENCRYPTION_STATUS", "OK", "ERROR")),
    model: true,
    device_id_width: 31,
    fw_width: 24,
    runtime_states: true,
    layout: SampleLayout::Ad,
};

/// Simulator settings (`[devices.simulator]` in a site config, or built by tests).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShureSimConfig {
    pub family: Family,
    #[serde(default = "default_channels")]
    pub channels: u8,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default = "default_device_id")]
    pub device_id: String,
    #[serde(default = "default_firmware")]
    pub firmware: String,
    /// Battery minutes used per minute; 1.0 is real life.
    #[serde(default = "default_drain")]
    pub drain: f64,
    /// Accept connections but answer nothing (SLX-D+ with Controller Access off).
    #[serde(default)]
    pub silent: bool,
    #[serde(default)]
    pub transmitters: Vec<TxSpec>,
}

fn default_channels() -> u8 {
    2
}
fn default_device_id() -> String {
    "RACK-A".to_owned()
}
fn default_firmware() -> String {
    "2.4.11.0".to_owned()
}
fn default_drain() -> f64 {
    1.0
}

impl ShureSimConfig {
    /// A receiver with `channels` channels and a transmitter with `minutes` left on each.
    pub fn new(family: Family, channels: u8, minutes: u32) -> Self {
        Self {
            family,
            channels,
            model: None,
            device_id: default_device_id(),
            firmware: default_firmware(),
            drain: 1.0,
            silent: false,
            transmitters: (1..=channels).map(|c| TxSpec::new(c, minutes)).collect(),
        }
    }
}

struct SimChannel {
    name: String,
    gain_raw: u32,
    rx_muted: bool,
    interference: bool,
    encryption_mismatch: bool,
    tx: Option<Transmitter>,
    /// Levels forced by a test (RF dBm, audio dBFS).
    levels: Option<(f64, f64)>,
    /// Battery fields as last reported, to push a REP when one changes.
    reported: Vec<(String, String)>,
}

/// What tests can read back.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ShureSimStats {
    pub connections: u64,
    pub open_connections: u64,
    /// When each `GET x METER_RATE` (the heartbeat) arrived.
    pub heartbeats: Vec<Instant>,
    /// Every accepted `SET x METER_RATE` value, in order.
    pub meter_rate_sets: Vec<u32>,
    /// Samples sent, all channels together.
    pub samples: u64,
    pub frames_received: u64,
}

struct State {
    family: Family,
    model: String,
    device_id: String,
    firmware: String,
    drain: f64,
    silent: bool,
    channels: Vec<SimChannel>,
    stats: ShureSimStats,
    /// Meter rate of each open connection.
    rates: Vec<(u64, u32)>,
    tick: u64,
}

struct Shared {
    state: Mutex<State>,
    /// Unsolicited output for every connection (the `u64` is a connection to skip).
    out: broadcast::Sender<(Option<u64>, Bytes)>,
    addr: SocketAddr,
    /// Woken whenever [`ShureSimStats`] change, for [`ShureSim::wait_stats`].
    stats_changed: Notify,
}

/// A running simulated receiver; cheap to clone.
#[derive(Clone)]
pub struct ShureSim {
    shared: Arc<Shared>,
}

impl ShureSim {
    /// Listen on `bind` and serve until `cancel` fires.
    pub async fn start(
        config: ShureSimConfig,
        bind: SocketAddr,
        cancel: CancellationToken,
    ) -> Result<ShureSim, SimError> {
        check_config(&config)?;
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let now = Instant::now();
        let family = config.family;
        let channels = (1..=config.channels)
            .map(|c| SimChannel {
                name: format!("MIC {c}"),
                gain_raw: 18,
                rx_muted: false,
                interference: false,
                encryption_mismatch: false,
                tx: config
                    .transmitters
                    .iter()
                    .find(|t| t.channel == c)
                    .map(|t| Transmitter::new(t, family.default_tx(), config.drain, now)),
                levels: None,
                reported: Vec::new(),
            })
            .collect();
        let mut state = State {
            family,
            model: config
                .model
                .clone()
                .unwrap_or_else(|| family.default_model(config.channels).to_owned()),
            device_id: config.device_id,
            firmware: config.firmware,
            drain: config.drain,
            silent: config.silent,
            channels,
            stats: ShureSimStats::default(),
            rates: Vec::new(),
            tick: 0,
        };
        for n in 1..=config.channels {
            let fields = state.battery_fields(n, now);
            state.channels[usize::from(n) - 1].reported = fields;
        }
        let (out, _) = broadcast::channel(1024);
        let sim = ShureSim {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                out,
                addr,
                stats_changed: Notify::new(),
            }),
        };
        let s = sim.clone();
        crate::sim::detached(async move { s.run(listener, cancel).await });
        Ok(sim)
    }

    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    pub fn stats(&self) -> ShureSimStats {
        self.lock().stats.clone()
    }

    /// Wait until the stats satisfy `pred` (a connection closed, a request arrived), without
    /// polling: every change wakes the waiter. Bound it with a timeout.
    pub async fn wait_stats(&self, mut pred: impl FnMut(&ShureSimStats) -> bool) -> ShureSimStats {
        loop {
            let changed = self.shared.stats_changed.notified();
            tokio::pin!(changed);
            // Registered before the check, so a change in between is not missed.
            changed.as_mut().enable();
            let st = self.stats();
            if pred(&st) {
                return st;
            }
            changed.await;
        }
    }

    fn stats_changed(&self) {
        self.shared.stats_changed.notify_waiters();
    }

    /// Meter rate of every open connection.
    pub fn meter_rates(&self) -> Vec<u32> {
        self.lock().rates.iter().map(|(_, r)| *r).collect()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means a panic in the simulator itself; keep serving what is left.
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Apply a change to one channel and push the resulting REPs to every connection.
    fn change(&self, n: u8, f: impl FnOnce(&mut SimChannel, Instant, f64, Family)) {
        let now = Instant::now();
        let frames = {
            let mut st = self.lock();
            let (drain, family) = (st.drain, st.family);
            let Some(ch) = st.channels.get_mut(usize::from(n).wrapping_sub(1)) else {
                return;
            };
            f(ch, now, drain, family);
            let fields = st.channel_fields(n, now);
            let battery = st.battery_fields(n, now);
            st.channels[usize::from(n) - 1].reported = battery;
            fields
        };
        for (p, v) in frames {
            self.push(None, Message::rep(Some(n), &p, v).encode());
        }
    }

    fn push(&self, skip: Option<u64>, bytes: Vec<u8>) {
        let _ = self.shared.out.send((skip, Bytes::from(bytes)));
    }

    /// Switch a transmitter on or off (it stays paired; its battery stops draining).
    pub fn set_tx_on(&self, n: u8, on: bool) {
        self.change(n, |ch, now, _, _| {
            if let Some(tx) = ch.tx.as_mut() {
                tx.set_on(on, now);
            }
        });
    }

    /// Take the transmitter away (out of range, batteries out).
    pub fn remove_tx(&self, n: u8) {
        self.change(n, |ch, _, _, _| ch.tx = None);
    }

    /// A different transmitter arrives on the channel.
    pub fn insert_tx(&self, spec: TxSpec) {
        let n = spec.channel;
        self.change(n, |ch, now, drain, family| {
            ch.tx = Some(Transmitter::new(&spec, family.default_tx(), drain, now));
        });
    }

    pub fn set_battery_minutes(&self, n: u8, minutes: f64) {
        self.change(n, |ch, now, _, _| {
            if let Some(tx) = ch.tx.as_mut() {
                tx.set_minutes(minutes, now);
            }
        });
    }

    pub fn set_battery_state(&self, n: u8, state: BatteryState) {
        self.change(n, |ch, _, _, _| {
            if let Some(tx) = ch.tx.as_mut() {
                tx.state = state;
            }
        });
    }

    pub fn set_interference(&self, n: u8, on: bool) {
        self.change(n, |ch, _, _, _| ch.interference = on);
    }

    pub fn set_encryption_mismatch(&self, n: u8, on: bool) {
        self.change(n, |ch, _, _, _| ch.encryption_mismatch = on);
    }

    pub fn set_tx_muted(&self, n: u8, on: bool) {
        self.change(n, |ch, _, _, _| {
            if let Some(tx) = ch.tx.as_mut() {
                tx.muted = on;
            }
        });
    }

    /// Force the metered levels of a channel (`None`: back to simulated speech).
    pub fn set_levels(&self, n: u8, levels: Option<(f64, f64)>) {
        if let Some(ch) = self.lock().channels.get_mut(usize::from(n).wrapping_sub(1)) {
            ch.levels = levels;
        }
    }

    /// Stop (or resume) answering and sending anything, connections stay open.
    pub fn set_silent(&self, silent: bool) {
        self.lock().silent = silent;
    }

    /// Send raw bytes to every connection as one write (garbage, fragments, monsters).
    pub fn inject(&self, bytes: &[u8]) {
        self.push(None, bytes.to_vec());
    }

    /// Gain of a channel in dB, as the receiver holds it.
    pub fn gain_db(&self, n: u8) -> Option<i32> {
        self.lock()
            .channels
            .get(usize::from(n).wrapping_sub(1))
            .map(|c| c.gain_raw as i32 - 18)
    }

    /// Mute or unmute a channel's audio at the receiver (a spare channel kept muted until the
    /// playbook moves a presenter to it).
    pub fn set_rx_muted(&self, n: u8, on: bool) {
        self.change(n, |ch, _, _, _| ch.rx_muted = on);
    }

    pub fn rx_muted(&self, n: u8) -> Option<bool> {
        self.lock()
            .channels
            .get(usize::from(n).wrapping_sub(1))
            .map(|c| c.rx_muted)
    }

    async fn run(self, listener: TcpListener, cancel: CancellationToken) {
        let mut conn_id = 0u64;
        let mut battery = tokio::time::interval(Duration::from_secs(1));
        battery.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = battery.tick() => self.battery_tick(),
                acc = listener.accept() => {
                    let Ok((stream, _)) = acc else { continue };
                    conn_id += 1;
                    {
                        let mut st = self.lock();
                        st.stats.connections += 1;
                        st.stats.open_connections += 1;
                        st.rates.push((conn_id, 0));
                    }
                    self.stats_changed();
                    let sim = self.clone();
                    let cancel = cancel.clone();
                    let id = conn_id;
                    crate::sim::detached(async move {
                        sim.serve(stream, id, cancel).await;
                        {
                            let mut st = sim.lock();
                            st.stats.open_connections = st.stats.open_connections.saturating_sub(1);
                            st.rates.retain(|(c, _)| *c != id);
                        }
                        sim.stats_changed();
                    });
                }
            }
        }
    }

    /// Push battery REPs whose reported value changed (a real receiver reports every
    /// non-metered change unsolicited, protocols.md §2.2).
    fn battery_tick(&self) {
        let now = Instant::now();
        let mut frames = Vec::new();
        {
            let mut st = self.lock();
            for n in 1..=st.channels.len() as u8 {
                let fields = st.battery_fields(n, now);
                let ch = &mut st.channels[usize::from(n) - 1];
                for (p, v) in &fields {
                    if !ch.reported.iter().any(|(rp, rv)| rp == p && rv == v) {
                        frames.push(Message::rep(Some(n), p, v.clone()).encode());
                    }
                }
                ch.reported = fields;
            }
        }
        for f in frames {
            self.push(None, f);
        }
    }

    async fn serve(&self, stream: TcpStream, id: u64, cancel: CancellationToken) {
        let _ = stream.set_nodelay(true);
        let (mut rd, mut wr) = stream.into_split();
        let mut rx = self.shared.out.subscribe();
        let mut codec = ShureCodec::new();
        let mut buf = BytesMut::with_capacity(512);
        let mut rate_ms: u32 = 0;
        let mut next_sample: Option<Instant> = None;
        loop {
            let sample_at = next_sample;
            let out: Vec<u8> = tokio::select! {
                _ = cancel.cancelled() => break,
                r = rd.read_buf(&mut buf) => {
                    match r {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    let mut out = Vec::new();
                    loop {
                        match codec.decode(&mut buf) {
                            Ok(Some(m)) => {
                                if self.lock().silent {
                                    continue;
                                }
                                let before = rate_ms;
                                out.extend(self.handle(id, m, &mut rate_ms));
                                if rate_ms != before {
                                    next_sample = (rate_ms > 0)
                                        .then(|| Instant::now() + Duration::from_millis(u64::from(rate_ms)));
                                }
                            }
                            Ok(None) => break,
                            // A real receiver ignores what it cannot parse.
                            Err(_) => {}
                        }
                    }
                    self.stats_changed();
                    out
                }
                m = rx.recv() => match m {
                    Ok((skip, bytes)) if skip != Some(id) => bytes.to_vec(),
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                _ = async { tokio::time::sleep_until(sample_at.unwrap_or_else(Instant::now)).await }, if sample_at.is_some() => {
                    let at = sample_at.unwrap_or_else(Instant::now);
                    next_sample = Some(at + Duration::from_millis(u64::from(rate_ms.max(1))));
                    let out = self.samples();
                    self.stats_changed();
                    out
                }
            };
            if out.is_empty() || self.lock().silent {
                continue;
            }
            if wr.write_all(&out).await.is_err() {
                break;
            }
        }
    }

    fn samples(&self) -> Vec<u8> {
        let mut st = self.lock();
        st.tick = st.tick.wrapping_add(1);
        let now = Instant::now();
        let mut out = Vec::new();
        for n in 1..=st.channels.len() as u8 {
            let fields = st.sample_fields(n, now);
            out.extend(
                Message::Sample {
                    channel: n,
                    fields: shure::SampleFields::new(fields),
                }
                .encode(),
            );
            st.stats.samples += 1;
        }
        out
    }

    /// Answer one request from a client.
    fn handle(&self, conn: u64, m: Message, rate_ms: &mut u32) -> Vec<u8> {
        let now = Instant::now();
        let mut st = self.lock();
        st.stats.frames_received += 1;
        let count = st.channels.len() as u8;
        let targets = |c: Option<u8>| -> Option<Vec<u8>> {
            match c {
                Some(0) => Some((1..=count).collect()),
                Some(n) if n <= count => Some(vec![n]),
                _ => None,
            }
        };
        let err = || Message::Err.encode();
        match m {
            Message::Get {
                channel: None,
                param,
            } => match st.device_value(&param) {
                Some(v) => Message::rep(None, &param, v).encode(),
                None => err(),
            },
            Message::Get {
                channel: Some(c),
                param,
            } => {
                if param == "METER_RATE" {
                    st.stats.heartbeats.push(now);
                }
                let Some(chs) = targets(Some(c)) else {
                    return err();
                };
                let mut out = Vec::new();
                for n in chs {
                    let v = if param == "METER_RATE" {
                        Some(shure::meter_rate(*rate_ms))
                    } else {
                        st.channel_value(n, &param, now)
                    };
                    match v {
                        Some(v) => out.extend(Message::rep(Some(n), &param, v).encode()),
                        None => return err(),
                    }
                }
                out
            }
            Message::Set {
                channel,
                param,
                value,
            } => {
                let Some(chs) = targets(channel) else {
                    return err();
                };
                let names = st.family.names();
                let mut out = Vec::new();
                if param == "METER_RATE" {
                    let Ok(r) = shure::number(&value) else {
                        return err();
                    };
                    if r != 0 && !(shure::METER_RATE_MIN_MS..=shure::METER_RATE_MAX_MS).contains(&r)
                    {
                        return err();
                    }
                    *rate_ms = r;
                    st.stats.meter_rate_sets.push(r);
                    if let Some(e) = st.rates.iter_mut().find(|(c, _)| *c == conn) {
                        e.1 = r;
                    }
                    for n in chs {
                        out.extend(Message::rep(Some(n), &param, shure::meter_rate(r)).encode());
                    }
                    return out;
                }
                let mut others = Vec::new();
                for n in chs {
                    let ch = &mut st.channels[usize::from(n) - 1];
                    let ok = match param.as_str() {
                        "AUDIO_GAIN" => match gain_after(ch.gain_raw, &value) {
                            Some(g) => {
                                ch.gain_raw = g;
                                true
                            }
                            None => false,
                        },
                        p if Some(p) == names.rx_mute => match value.as_str() {
                            "ON" => {
                                ch.rx_muted = true;
                                true
                            }
                            "OFF" => {
                                ch.rx_muted = false;
                                true
                            }
                            "TOGGLE" => {
                                ch.rx_muted = !ch.rx_muted;
                                true
                            }
                            _ => false,
                        },
                        "CHAN_NAME" => {
                            let t = shure::text(&value);
                            if t.is_empty() || t.len() > 8 {
                                false
                            } else {
                                ch.name = t;
                                true
                            }
                        }
                        _ => false,
                    };
                    if !ok {
                        return err();
                    }
                    let Some(v) = st.channel_value(n, &param, now) else {
                        return err();
                    };
                    let rep = Message::rep(Some(n), &param, v).encode();
                    out.extend(&rep);
                    others.push(rep);
                }
                drop(st);
                for r in others {
                    self.push(Some(conn), r);
                }
                out
            }
            // Clients do not send REPs or samples.
            _ => err(),
        }
    }
}

/// New raw gain after `030`, `INC 3` or `DEC 3`; `None` when out of range or malformed.
fn gain_after(raw: u32, value: &str) -> Option<u32> {
    let mut words = value.split_ascii_whitespace();
    let g = match (words.next(), words.next(), words.next()) {
        (Some("INC"), Some(n), None) => raw + shure::number(n).ok()?,
        (Some("DEC"), Some(n), None) => raw.checked_sub(shure::number(n).ok()?)?,
        (Some(v), None, None) => shure::number(v).ok()?,
        _ => return None,
    };
    (g <= 60).then_some(g)
}

fn padded(s: &str, width: usize) -> String {
    let t: String = s.chars().take(width).collect();
    format!("{{{t:<width$}}}")
}

impl State {
    fn device_value(&self, param: &str) -> Option<String> {
        let names = self.family.names();
        Some(match param {
            "FW_VER" => padded(&self.firmware, names.fw_width),
            "DEVICE_ID" => padded(&self.device_id, names.device_id_width),
            "MODEL" if names.model => padded(&self.model, 32),
            _ => return None,
        })
    }

    fn on_air(&self, n: u8, now: Instant) -> Option<&Transmitter> {
        self.channels
            .get(usize::from(n).wrapping_sub(1))?
            .tx
            .as_ref()
            .filter(|t| t.on_air(now))
    }

    /// The battery parameters and their wire values now.
    fn battery_fields(&self, n: u8, now: Instant) -> Vec<(String, String)> {
        let names = self.family.names();
        let mut out = vec![(names.bars.to_owned(), String::new())];
        out.push((names.minutes.to_owned(), String::new()));
        out.extend(names.percent.map(|p| (p.to_owned(), String::new())));
        out.extend(names.cycles.map(|p| (p.to_owned(), String::new())));
        out.extend(names.batt_type.map(|p| (p.to_owned(), String::new())));
        for (p, v) in out.iter_mut() {
            *v = self.channel_value(n, p, now).unwrap_or_default();
        }
        out
    }

    /// Every channel parameter (for a full push after a scripted change).
    fn channel_fields(&self, n: u8, now: Instant) -> Vec<(String, String)> {
        let names = self.family.names();
        let mut params = vec![names.tx_model, names.bars, names.minutes];
        params.extend(names.percent);
        params.extend(names.cycles);
        params.extend(names.batt_type);
        params.extend(names.tx_mute.map(|t| t.0));
        params.extend(names.interference.map(|t| t.0));
        params.extend(names.encryption.map(|t| t.0));
        params
            .into_iter()
            .filter_map(|p| self.channel_value(n, p, now).map(|v| (p.to_owned(), v)))
            .collect()
    }

    fn channel_value(&self, n: u8, param: &str, now: Instant) -> Option<String> {
        let names = self.family.names();
        let ch = self.channels.get(usize::from(n).wrapping_sub(1))?;
        let tx = self.on_air(n, now);
        let v = match param {
            "CHAN_NAME" => padded(&ch.name, 31),
            "AUDIO_GAIN" => format!("{:03}", ch.gain_raw),
            "FREQUENCY" => format!("{:07}", 578_350 + u32::from(n) * 1_000),
            p if p == names.tx_model => match tx {
                Some(t) => t.model.clone(),
                None => names.unknown_word.to_owned(),
            },
            p if p == names.bars => match tx {
                Some(t) if t.state != BatteryState::CommWarning => format!("{:03}", t.bars(now)),
                _ => "255".to_owned(),
            },
            p if p == names.minutes => {
                let rt = match tx {
                    None => Runtime::Unknown,
                    Some(t) if t.kind == BatteryKind::Alkaline => Runtime::Unknown,
                    Some(t) => match (t.state, names.runtime_states) {
                        (BatteryState::Calculating, true) => Runtime::Calculating,
                        (BatteryState::CommWarning, true) => Runtime::CommWarning,
                        (BatteryState::Normal, _) => {
                            Runtime::Minutes(t.whole_minutes(now).min(65_532) as u16)
                        }
                        (_, false) => Runtime::Unknown,
                    },
                };
                rt.encode()
            }
            p if Some(p) == names.percent => match tx {
                Some(t) if t.kind == BatteryKind::Rechargeable => format!("{:03}", t.percent(now)),
                _ => "255".to_owned(),
            },
            p if Some(p) == names.cycles => match tx {
                Some(t) if t.kind == BatteryKind::Rechargeable => format!("{:05}", t.cycles),
                _ => "65535".to_owned(),
            },
            p if Some(p) == names.batt_type => match tx {
                Some(t) if t.kind == BatteryKind::Rechargeable => "LION".to_owned(),
                Some(_) => "ALKA".to_owned(),
                None => "UNKN".to_owned(),
            },
            p if names.tx_mute.is_some_and(|t| t.0 == p) => {
                let (_, muted, unmuted) = names.tx_mute?;
                match tx {
                    Some(t) if t.muted => muted.to_owned(),
                    Some(_) => unmuted.to_owned(),
                    None => names.unknown_word.to_owned(),
                }
            }
            p if Some(p) == names.rx_mute => if ch.rx_muted { "ON" } else { "OFF" }.to_owned(),
            p if names.interference.is_some_and(|t| t.0 == p) => {
                let (_, detected) = names.interference?;
                if ch.interference { detected } else { "NONE" }.to_owned()
            }
            p if names.encryption.is_some_and(|t| t.0 == p) => {
                let (_, ok, bad) = names.encryption?;
                if ch.encryption_mismatch { bad } else { ok }.to_owned()
            }
            _ => return None,
        };
        Some(v)
    }

    fn sample_fields(&self, n: u8, now: Instant) -> Vec<String> {
        let names = self.family.names();
        let Some(ch) = self.channels.get(usize::from(n).wrapping_sub(1)) else {
            return Vec::new();
        };
        let tx = self.on_air(n, now);
        // Speech-like wobble without a random source, so runs are repeatable.
        let wobble = ((self.tick + u64::from(n) * 7) % 9) as f64 - 4.0;
        let (rf, audio) = ch.levels.unwrap_or(match tx {
            Some(t) if !t.muted => (-45.0 + wobble / 2.0, -22.0 + wobble),
            Some(_) => (-45.0, -120.0),
            // No transmitter: both meters sit at their floor (0 on the wire).
            None => (-128.0, -120.0),
        });
        let raw = |v: f64, offset: f64, max: f64| {
            format!("{:03}", (v + offset).clamp(0.0, max).round() as u32)
        };
        match names.layout {
            SampleLayout::Ulx => vec![
                if tx.is_some() { "AX" } else { "XX" }.to_owned(),
                raw(rf, 128.0, 115.0),
                raw(audio, 50.0, 50.0),
            ],
            SampleLayout::Slx => vec![
                raw(audio, 120.0, 120.0),
                raw(audio - 3.0, 120.0, 120.0),
                raw(rf, 120.0, 120.0),
            ],
            SampleLayout::Ad => vec![
                if tx.is_some() { "005" } else { "255" }.to_owned(),
                "031".to_owned(),
                raw(audio, 120.0, 120.0),
                raw(audio - 3.0, 120.0, 120.0),
                if tx.is_some() { "BB" } else { "XX" }.to_owned(),
                "31".to_owned(),
                raw(rf, 120.0, 120.0),
                "31".to_owned(),
                raw(rf - 10.0, 120.0, 120.0),
            ],
        }
    }
}

/// The simulator's settings with the family taken from the profile when not given.
pub fn options_for(family: &str, options: &toml::Table) -> toml::Table {
    let mut o = options.clone();
    if !o.contains_key("family") {
        if let Some(f) = Family::parse(family) {
            let name = match f {
                Family::Ulxd => "ulxd",
                Family::Qlxd => "qlxd",
                Family::Slxd => "slxd",
                Family::SlxdPlus => "slxd-plus",
                Family::Axient => "axient",
            };
            o.insert("family".into(), toml::Value::String(name.into()));
        }
    }
    o
}

/// The value checks [`ShureSim::start`] makes before it listens (also run by `check-config`).
pub fn check_config(config: &ShureSimConfig) -> Result<(), SimError> {
    if !(1..=4).contains(&config.channels) {
        return Err(option_error("channels", "must be 1-4"));
    }
    Ok(())
}

/// Entry for `avwarden simulate` and the demo.
pub async fn spawn_from_config(
    options: &toml::Table,
    bind: SimBind,
    _clock: Clock,
    cancel: CancellationToken,
) -> Result<SimEndpoint, SimError> {
    let sim = start_from_config(options, bind, cancel).await?;
    Ok(SimEndpoint::Tcp(sim.addr()))
}

/// As [`spawn_from_config`], keeping the control handle (the demo's scenario scripts it).
pub async fn start_from_config(
    options: &toml::Table,
    bind: SimBind,
    cancel: CancellationToken,
) -> Result<ShureSim, SimError> {
    let config: ShureSimConfig = parse_options(options)?;
    let SimBind::Tcp(addr) = bind else {
        return Err(bind_error("a Shure receiver listens on TCP"));
    };
    ShureSim::start(config, addr, cancel).await
}
