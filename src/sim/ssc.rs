//! Simulated Sennheiser receivers speaking SSC over UDP (protocols.md §3): an EW-DX EM 2/4 and a
//! SpeechLine Digital Wireless multi-channel receiver (battery lifetime in seconds there).
//!
//! It answers gets and sets, echoes transaction ids and pings, reports error 424 for the
//! addresses of a transmitter that is not there, and keeps subscriptions the way the SSC guides
//! describe them: echo, initial values, then changes (or periodic values for meters) until the
//! lifetime runs out, when it sends error 310. Counters let tests check renewals and expiries.
//! Transmitters drain, switch off, leave and arrive as in the Shure simulator.
//!
//! Like the Shure simulator it must not borrow the driver's profile data; addresses here come
//! from the SSC notes (protocols.md §3.4).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value as Json};
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::mic::{BatteryKind, Transmitter, TxSpec};
use super::{bind_error, option_error, parse_options, SimBind, SimEndpoint, SimError};
use crate::clock::Clock;
use crate::codec::ssc::{self, Builder, SubscribeParams, Subscription};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Product {
    /// EW-DX EM 2 / EM 4: `/mates/txN/battery/gauge`, lifetime in minutes.
    EwDx,
    /// SpeechLine DW multi-channel receiver: `/mates/txN/bat_gauge`, lifetime in seconds.
    Speechline,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SscSimConfig {
    #[serde(default = "default_product")]
    pub product: Product,
    #[serde(default = "default_channels")]
    pub channels: u8,
    #[serde(default = "default_name")]
    pub name: String,
    #[serde(default = "default_serial")]
    pub serial: String,
    #[serde(default = "default_version")]
    pub firmware: String,
    #[serde(default = "default_drain")]
    pub drain: f64,
    #[serde(default)]
    pub transmitters: Vec<TxSpec>,
}

fn default_product() -> Product {
    Product::EwDx
}
fn default_channels() -> u8 {
    2
}
fn default_name() -> String {
    "ROOM-RX".to_owned()
}
fn default_serial() -> String {
    "1234567890".to_owned()
}
fn default_version() -> String {
    "3.1.0".to_owned()
}
fn default_drain() -> f64 {
    1.0
}

impl SscSimConfig {
    pub fn new(product: Product, channels: u8, minutes: u32) -> Self {
        Self {
            product,
            channels,
            name: default_name(),
            serial: default_serial(),
            firmware: default_version(),
            drain: 1.0,
            transmitters: (1..=channels).map(|c| TxSpec::new(c, minutes)).collect(),
        }
    }
}

struct RxChannel {
    name: String,
    muted: bool,
    gain: i64,
    aes_error: bool,
    tx: Option<Transmitter>,
    levels: Option<(f64, f64)>,
}

struct Sub {
    client: SocketAddr,
    params: SubscribeParams,
    addresses: Vec<String>,
    expires: Instant,
    left: u32,
    last_sent: Option<Instant>,
    last: HashMap<String, Result<Json, u16>>,
}

/// What tests can read back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SscSimStats {
    pub requests: u64,
    pub pings: u64,
    /// Subscribe requests for a new set of addresses.
    pub subscribes: u64,
    /// Subscribe requests that extended a live subscription.
    pub renewals: u64,
    /// Subscriptions that ran out (error 310 sent).
    pub expired: u64,
    pub notifications: u64,
    pub bad_datagrams: u64,
}

struct State {
    product: Product,
    name: String,
    serial: String,
    firmware: String,
    drain: f64,
    silent: bool,
    channels: Vec<RxChannel>,
    subs: Vec<Sub>,
    stats: SscSimStats,
    tick: u64,
}

struct Shared {
    state: Mutex<State>,
    sock: UdpSocket,
    addr: SocketAddr,
}

#[derive(Clone)]
pub struct SscSim {
    shared: Arc<Shared>,
}

impl SscSim {
    pub async fn start(
        config: SscSimConfig,
        bind: SocketAddr,
        cancel: CancellationToken,
    ) -> Result<SscSim, SimError> {
        check_config(&config)?;
        let sock = UdpSocket::bind(bind).await?;
        let addr = sock.local_addr()?;
        let now = Instant::now();
        let tx_model = match config.product {
            Product::EwDx => "SKM",
            Product::Speechline => "SL HHD DW",
        };
        let channels = (1..=config.channels)
            .map(|c| RxChannel {
                name: format!("MIC{c}"),
                muted: false,
                gain: 0,
                aes_error: false,
                tx: config
                    .transmitters
                    .iter()
                    .find(|t| t.channel == c)
                    .map(|t| Transmitter::new(t, tx_model, config.drain, now)),
                levels: None,
            })
            .collect();
        let sim = SscSim {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    product: config.product,
                    name: config.name,
                    serial: config.serial,
                    firmware: config.firmware,
                    drain: config.drain,
                    silent: false,
                    channels,
                    subs: Vec::new(),
                    stats: SscSimStats::default(),
                    tick: 0,
                }),
                sock,
                addr,
            }),
        };
        let s = sim.clone();
        crate::sim::detached(async move { s.run(cancel).await });
        Ok(sim)
    }

    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    pub fn stats(&self) -> SscSimStats {
        self.lock().stats.clone()
    }

    /// Live subscriptions (all clients).
    pub fn subscriptions(&self) -> usize {
        self.lock().subs.len()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with_channel(&self, n: u8, f: impl FnOnce(&mut RxChannel, Instant, f64, Product)) {
        let mut st = self.lock();
        let (drain, product) = (st.drain, st.product);
        if let Some(ch) = st.channels.get_mut(usize::from(n).wrapping_sub(1)) {
            f(ch, Instant::now(), drain, product);
        }
    }

    pub fn set_tx_on(&self, n: u8, on: bool) {
        self.with_channel(n, |ch, now, _, _| {
            if let Some(t) = ch.tx.as_mut() {
                t.set_on(on, now);
            }
        });
    }

    pub fn remove_tx(&self, n: u8) {
        self.with_channel(n, |ch, _, _, _| ch.tx = None);
    }

    pub fn insert_tx(&self, spec: TxSpec) {
        let n = spec.channel;
        self.with_channel(n, |ch, now, drain, product| {
            let model = match product {
                Product::EwDx => "SKM",
                Product::Speechline => "SL HHD DW",
            };
            ch.tx = Some(Transmitter::new(&spec, model, drain, now));
        });
    }

    pub fn set_battery_minutes(&self, n: u8, minutes: f64) {
        self.with_channel(n, |ch, now, _, _| {
            if let Some(t) = ch.tx.as_mut() {
                t.set_minutes(minutes, now);
            }
        });
    }

    pub fn set_encryption_mismatch(&self, n: u8, on: bool) {
        self.with_channel(n, |ch, _, _, _| ch.aes_error = on);
    }

    pub fn set_levels(&self, n: u8, levels: Option<(f64, f64)>) {
        self.with_channel(n, |ch, _, _, _| ch.levels = levels);
    }

    /// Stop (or resume) answering and notifying.
    pub fn set_silent(&self, silent: bool) {
        self.lock().silent = silent;
    }

    /// Send raw bytes to `to` (garbage tests).
    pub async fn inject(&self, to: SocketAddr, bytes: &[u8]) {
        let _ = self.shared.sock.send_to(bytes, to).await;
    }

    /// Every address a subscription currently holds, with its client.
    pub fn subscribers(&self) -> Vec<SocketAddr> {
        let mut v: Vec<SocketAddr> = self.lock().subs.iter().map(|s| s.client).collect();
        v.dedup();
        v
    }

    pub fn gain_db(&self, n: u8) -> Option<i64> {
        self.lock()
            .channels
            .get(usize::from(n).wrapping_sub(1))
            .map(|c| c.gain)
    }

    pub fn rx_muted(&self, n: u8) -> Option<bool> {
        self.lock()
            .channels
            .get(usize::from(n).wrapping_sub(1))
            .map(|c| c.muted)
    }

    async fn run(self, cancel: CancellationToken) {
        let mut buf = vec![0u8; 64 * 1024];
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let out: Vec<(SocketAddr, Vec<u8>)> = tokio::select! {
                _ = cancel.cancelled() => break,
                r = self.shared.sock.recv_from(&mut buf) => match r {
                    Ok((n, from)) => self.handle(&buf[..n], from),
                    Err(_) => continue, // ICMP from a client that went away
                },
                _ = tick.tick() => self.tick(),
            };
            for (to, d) in out {
                let _ = self.shared.sock.send_to(&d, to).await;
            }
        }
    }

    fn handle(&self, datagram: &[u8], from: SocketAddr) -> Vec<(SocketAddr, Vec<u8>)> {
        let now = Instant::now();
        let mut st = self.lock();
        if st.silent {
            return Vec::new();
        }
        let msg = match ssc::parse(datagram) {
            Ok(m) => m,
            Err(_) => {
                st.stats.bad_datagrams += 1;
                return vec![(
                    from,
                    Builder::new()
                        .error("/osc", 400, Some("bad request"))
                        .encode(),
                )];
            }
        };
        st.stats.requests += 1;
        let mut out = Vec::new();
        let mut reply = Builder::new();
        if let Some(x) = msg.xid.clone() {
            reply = reply.xid(x);
        }
        if msg.ping {
            st.stats.pings += 1;
            reply = reply.ping();
        }
        for (address, value) in &msg.values {
            let r = if value.is_null() {
                st.get(address, now)
            } else {
                st.set(address, value)
            };
            reply = match r {
                Ok(v) => reply.value(address, v),
                Err(code) => reply.error(address, code, Some(desc(code))),
            };
        }
        if !msg.subscribe.is_empty() {
            out.push((from, Builder::new().subscribe_echo(&msg.subscribe).encode()));
            for entry in &msg.subscribe {
                out.push((from, st.subscribe(from, entry, now)));
            }
        }
        if !reply.is_empty() {
            out.insert(0, (from, reply.encode()));
        }
        out
    }

    fn tick(&self) -> Vec<(SocketAddr, Vec<u8>)> {
        let now = Instant::now();
        let mut st = self.lock();
        st.tick = st.tick.wrapping_add(1);
        if st.silent {
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut subs = std::mem::take(&mut st.subs);
        subs.retain_mut(|s| {
            if now >= s.expires || s.left == 0 {
                // Lifetime over (or count used up): error 310 for each address (§3.3).
                let mut b = Builder::new();
                for a in &s.addresses {
                    b = b.error(a, ssc::ERR_SUBSCRIPTION_TERMINATED, None);
                }
                out.push((s.client, b.encode()));
                st.stats.expired += 1;
                return false;
            }
            let periodic = s.params.max_ms > 0
                && s.last_sent.is_none_or(|t| {
                    now.duration_since(t) >= Duration::from_millis(u64::from(s.params.max_ms))
                });
            let throttled = s.params.min_ms > 0
                && s.last_sent.is_some_and(|t| {
                    now.duration_since(t) < Duration::from_millis(u64::from(s.params.min_ms))
                });
            let mut b = Builder::new();
            let mut any = false;
            for a in &s.addresses {
                let v = st.get(a, now);
                let changed = s.last.get(a) != Some(&v);
                if periodic || (changed && !throttled) {
                    b = match &v {
                        Ok(x) => b.value(a, x.clone()),
                        Err(c) => b.error(a, *c, Some(desc(*c))),
                    };
                    s.last.insert(a.clone(), v);
                    any = true;
                }
            }
            if any {
                s.last_sent = Some(now);
                s.left = s.left.saturating_sub(1);
                st.stats.notifications += 1;
                out.push((s.client, b.encode()));
            }
            true
        });
        st.subs = subs;
        out
    }
}

fn desc(code: u16) -> &'static str {
    match code {
        400 => "bad request",
        404 => "not found",
        406 => "not acceptable",
        424 => "failed dependency",
        _ => "error",
    }
}

impl State {
    fn subscribe(&mut self, client: SocketAddr, e: &Subscription, now: Instant) -> Vec<u8> {
        let expires = now + Duration::from_secs(u64::from(e.params.lifetime_secs));
        let mut initial = Builder::new();
        let mut last = HashMap::new();
        for a in &e.addresses {
            let v = self.get(a, now);
            initial = match &v {
                Ok(x) => initial.value(a, x.clone()),
                Err(c) => initial.error(a, *c, Some(desc(*c))),
            };
            last.insert(a.clone(), v);
        }
        if let Some(s) = self
            .subs
            .iter_mut()
            .find(|s| s.client == client && s.addresses == e.addresses)
        {
            s.expires = expires;
            s.params = e.params;
            s.left = e.params.count;
            s.last = last;
            self.stats.renewals += 1;
        } else {
            self.subs.push(Sub {
                client,
                params: e.params,
                addresses: e.addresses.clone(),
                expires,
                left: e.params.count,
                last_sent: Some(now),
                last,
            });
            self.stats.subscribes += 1;
        }
        initial.encode()
    }

    fn channel(&self, part: &str, prefix: &str) -> Option<(usize, &RxChannel)> {
        let n: usize = part.strip_prefix(prefix)?.parse().ok()?;
        let ch = self.channels.get(n.checked_sub(1)?)?;
        Some((n, ch))
    }

    fn get(&self, address: &str, now: Instant) -> Result<Json, u16> {
        let parts: Vec<&str> = address.split('/').filter(|p| !p.is_empty()).collect();
        let tick = self.tick;
        match parts.as_slice() {
            ["device", "name"] => Ok(json!(self.name)),
            ["device", "identity", "product"] => Ok(json!(match self.product {
                Product::EwDx => format!("EW-DX EM {}", self.channels.len()),
                Product::Speechline => format!("SL MCR {} DW", self.channels.len()),
            })),
            ["device", "identity", "serial"] => Ok(json!(self.serial)),
            ["device", "identity", "version"] => Ok(json!(self.firmware)),
            ["device", "identity", "vendor"] => Ok(json!("Sennheiser")),
            [rx, field] if rx.starts_with("rx") => {
                let (_, ch) = self.channel(rx, "rx").ok_or(404u16)?;
                match *field {
                    "name" => Ok(json!(ch.name)),
                    "mute" => Ok(json!(ch.muted)),
                    "gain" => Ok(json!(ch.gain)),
                    "frequency" => Ok(json!(548_000)),
                    "warnings" => {
                        let mut w = Vec::new();
                        if !ch.tx.as_ref().is_some_and(|t| t.on_air(now)) {
                            w.push("NoLink");
                        }
                        if ch.aes_error {
                            w.push("Aes256Error");
                        }
                        Ok(json!(w))
                    }
                    _ => Err(404),
                }
            }
            ["m", rx, meter] => {
                let (n, ch) = self.channel(rx, "rx").ok_or(404u16)?;
                let on = ch.tx.as_ref().filter(|t| t.on_air(now));
                let wobble = ((tick + n as u64 * 7) % 9) as f64 - 4.0;
                let (rf, af) = ch.levels.unwrap_or(match on {
                    Some(t) if !t.muted => (-48.0 + wobble / 2.0, -24.0 + wobble),
                    Some(_) => (-48.0, -90.0),
                    None => (-100.0, -90.0),
                });
                match *meter {
                    "rssi" => Ok(json!(rf)),
                    "af" => Ok(json!(af)),
                    "divi" => Ok(json!(if on.is_some() { 1 } else { 0 })),
                    _ => Err(404),
                }
            }
            ["mates", tx, rest @ ..] => {
                let (_, ch) = self.channel(tx, "tx").ok_or(404u16)?;
                let Some(t) = ch.tx.as_ref().filter(|t| t.on_air(now)) else {
                    // EW-DX: the transmitter is not there (§3.3, EW-DX §8.106).
                    return Err(ssc::ERR_FAILED_DEPENDENCY);
                };
                let minutes = t.whole_minutes(now);
                let low = minutes <= 30;
                match (self.product, rest) {
                    (Product::EwDx, ["battery", "gauge"]) => Ok(json!(t.percent(now))),
                    (Product::EwDx, ["battery", "lifetime"]) => Ok(json!(minutes)),
                    (Product::EwDx, ["battery", "type"]) => Ok(json!(match t.kind {
                        BatteryKind::Rechargeable => "Battery",
                        BatteryKind::Alkaline => "Primary Cell",
                    })),
                    (Product::EwDx, ["warnings"]) => {
                        Ok(json!(if low { vec!["LowBattery"] } else { vec![] }))
                    }
                    (Product::EwDx, ["mute"]) => Ok(json!(t.muted)),
                    (Product::EwDx, ["type"]) => Ok(json!(t.model)),
                    (Product::Speechline, ["bat_gauge"]) => Ok(json!(t.percent(now))),
                    // SpeechLine reports seconds (§3.4).
                    (Product::Speechline, ["bat_lifetime"]) => Ok(json!(minutes * 60)),
                    (Product::Speechline, ["bat_bars"]) => Ok(json!(t.bars(now))),
                    (Product::Speechline, ["bat_cycles"]) => Ok(json!(t.cycles)),
                    (Product::Speechline, ["warnings"]) => {
                        Ok(json!(if low { "Low Bat" } else { "" }))
                    }
                    _ => Err(404),
                }
            }
            _ => Err(404),
        }
    }

    fn set(&mut self, address: &str, value: &Json) -> Result<Json, u16> {
        let parts: Vec<&str> = address.split('/').filter(|p| !p.is_empty()).collect();
        let [rx, field] = parts.as_slice() else {
            return Err(405);
        };
        let n: usize = rx
            .strip_prefix("rx")
            .and_then(|x| x.parse().ok())
            .ok_or(404u16)?;
        let ch = self.channels.get_mut(n.wrapping_sub(1)).ok_or(404u16)?;
        match *field {
            "mute" => {
                ch.muted = value.as_bool().ok_or(400u16)?;
                Ok(json!(ch.muted))
            }
            // EW-DX receiver gain: −3…42 dB in 3 dB steps (WirelessMicSuiteServer).
            "gain" => {
                let g = value.as_i64().ok_or(400u16)?;
                if !(-3..=42).contains(&g) || g % 3 != 0 {
                    return Err(406);
                }
                ch.gain = g;
                Ok(json!(g))
            }
            "name" => {
                let s = value.as_str().ok_or(400u16)?;
                if s.is_empty() || s.len() > 8 {
                    return Err(406);
                }
                ch.name = s.to_owned();
                Ok(json!(s))
            }
            _ => Err(405),
        }
    }
}

/// The value checks [`SscSim::start`] makes before it binds (also run by `check-config`).
pub fn check_config(config: &SscSimConfig) -> Result<(), SimError> {
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
    let config: SscSimConfig = parse_options(options)?;
    let SimBind::Udp(addr) = bind else {
        return Err(bind_error("an SSC receiver listens on UDP"));
    };
    let sim = SscSim::start(config, addr, cancel).await?;
    Ok(SimEndpoint::Udp(sim.addr()))
}
