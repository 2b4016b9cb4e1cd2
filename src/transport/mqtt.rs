//! The daemon's one MQTT client (rumqttc), driven by one task with cancellation and jittered
//! backoff, and the embedded broker (rumqttd) for sites without one (DESIGN.md "MQTT").
//!
//! This module owns the `[mqtt]` settings and their validation (values that make rumqttc panic
//! are rejected here, before anything starts), the connection task, the routing of incoming
//! messages to per-subscriber channels by topic filter, and re-subscribing after every
//! reconnect. It must not know any device: drivers and the MQTT-out task hold an
//! [`MqttHandle`] and speak topics and bytes.
//!
//! rumqttc itself reconnects on the next `poll` without any delay and replays what was queued;
//! the task below puts a capped, jittered delay between attempts and, because sessions are
//! clean, subscribes again to every filter once the broker acknowledges the connection.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, LastWill, MqttOptions, Packet, QoS};
use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Backoff;

/// MQTT 3.1.1 keep-alive is a u16 of seconds; rumqttc panics below one second, and a keep-alive
/// of a few seconds makes every short network hiccup a disconnect.
pub const MIN_KEEP_ALIVE_SECS: u64 = 5;
pub const MAX_KEEP_ALIVE_SECS: u64 = 65_535;
/// MQTT's largest remaining length (268 435 455 bytes).
pub const MAX_PACKET_LIMIT: usize = 268_435_455;

/// The site config's `[mqtt]` table.
///
/// ```toml
/// [mqtt]
/// host = "broker.example"          # default 127.0.0.1 (or the embedded broker)
/// port = 1883
/// client_id = "avwarden-building-a"
/// keep_alive_secs = 30
/// username = "avwarden"
/// password_env = "AVWARDEN_MQTT_PASSWORD"   # or password_file = "/etc/avwarden/mqtt.pass"
/// embedded = { bind = "127.0.0.1:1883" }    # start a broker inside the daemon
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSettings {
    /// Broker host. With `embedded`, defaults to the embedded broker's address.
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default = "default_client_id")]
    pub client_id: String,
    #[serde(default = "default_keep_alive")]
    pub keep_alive_secs: u64,
    #[serde(default)]
    pub username: Option<String>,
    /// Name of an environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// File holding the password (first line; relative to the config file).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Largest packet accepted or sent (bytes).
    #[serde(default = "default_max_packet")]
    pub max_packet_bytes: usize,
    /// Requests (publish, subscribe) that may wait for the connection task.
    #[serde(default = "default_queue_depth")]
    pub queue_depth: usize,
    /// QoS 1 messages in flight at once.
    #[serde(default = "default_inflight")]
    pub inflight: u16,
    /// First reconnect delay (milliseconds); it doubles per failure, with jitter.
    #[serde(default = "default_reconnect_min_ms")]
    pub reconnect_min_ms: u64,
    /// Longest reconnect delay (seconds).
    #[serde(default = "default_reconnect_max_secs")]
    pub reconnect_max_secs: u64,
    /// Start a broker inside the daemon (for sites without one).
    #[serde(default)]
    pub embedded: Option<EmbeddedSettings>,
    /// At most one publish per retained state topic per this many milliseconds (latest wins).
    #[serde(default = "default_state_debounce_ms")]
    pub state_debounce_ms: u64,
    /// Obey device commands on `…/device/<device>/set` (with a technician's API token).
    #[serde(default)]
    pub commands: bool,
    /// Home Assistant discovery: `true`, or `{ prefix = "homeassistant" }`.
    #[serde(default)]
    pub home_assistant: HomeAssistant,
    /// Alert events kept while the broker is away; past it the oldest are dropped, counted.
    #[serde(default = "default_alert_queue")]
    pub alert_queue: usize,
}

/// `[mqtt] home_assistant`: off, on with the default prefix, or a table with the prefix.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum HomeAssistant {
    Enabled(bool),
    Table(HomeAssistantTable),
}

/// `[mqtt.home_assistant]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HomeAssistantTable {
    /// HA's discovery prefix (its `discovery_prefix`).
    #[serde(default = "default_ha_prefix")]
    pub prefix: String,
}

impl Default for HomeAssistant {
    fn default() -> Self {
        HomeAssistant::Enabled(false)
    }
}

impl HomeAssistant {
    /// The discovery prefix when discovery is on.
    pub fn prefix(&self) -> Option<&str> {
        match self {
            HomeAssistant::Enabled(false) => None,
            HomeAssistant::Enabled(true) => Some(crate::codec::ha_discovery::DEFAULT_PREFIX),
            HomeAssistant::Table(t) => Some(&t.prefix),
        }
    }
}

fn default_ha_prefix() -> String {
    crate::codec::ha_discovery::DEFAULT_PREFIX.to_owned()
}
fn default_state_debounce_ms() -> u64 {
    1000
}
fn default_alert_queue() -> usize {
    10_000
}

/// `[mqtt.embedded]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedSettings {
    /// Address the broker listens on (`127.0.0.1:1883`; `0.0.0.0:1883` to serve the LAN).
    pub bind: SocketAddr,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

fn default_client_id() -> String {
    "avwarden".to_owned()
}
fn default_keep_alive() -> u64 {
    30
}
fn default_max_packet() -> usize {
    256 * 1024
}
fn default_queue_depth() -> usize {
    256
}
fn default_inflight() -> u16 {
    64
}
fn default_reconnect_min_ms() -> u64 {
    500
}
fn default_reconnect_max_secs() -> u64 {
    60
}
fn default_max_connections() -> usize {
    256
}

impl Default for MqttSettings {
    fn default() -> Self {
        Self {
            host: None,
            port: None,
            client_id: default_client_id(),
            keep_alive_secs: default_keep_alive(),
            username: None,
            password_env: None,
            password_file: None,
            max_packet_bytes: default_max_packet(),
            queue_depth: default_queue_depth(),
            inflight: default_inflight(),
            reconnect_min_ms: default_reconnect_min_ms(),
            reconnect_max_secs: default_reconnect_max_secs(),
            embedded: None,
            state_debounce_ms: default_state_debounce_ms(),
            commands: false,
            home_assistant: HomeAssistant::default(),
            alert_queue: default_alert_queue(),
        }
    }
}

impl MqttSettings {
    /// Parse the `[mqtt]` table and validate it. Problems come back as `(key path, why)`, all
    /// at once, with key paths under `mqtt.`.
    pub fn from_table(table: &toml::Table) -> Result<MqttSettings, Vec<(String, String)>> {
        let s: MqttSettings = toml::Value::Table(table.clone())
            .try_into()
            .map_err(|e: toml::de::Error| vec![("mqtt".to_owned(), e.message().to_owned())])?;
        let problems = s.validate();
        if problems.is_empty() {
            Ok(s)
        } else {
            Err(problems)
        }
    }

    /// Every problem, including each value that would make rumqttc panic.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        let mut bad = |k: &str, m: String| p.push((format!("mqtt.{k}"), m));
        if let Some(h) = &self.host {
            if h.trim().is_empty() || h.contains(char::is_whitespace) || h.contains('/') {
                bad("host", format!("{h:?} is not a host name or address"));
            }
        }
        if self.port == Some(0) {
            bad("port", "must be 1–65535".to_owned());
        }
        if self.client_id.is_empty() {
            // rumqttc panics on an empty client id with a persistent session, and many brokers
            // refuse an empty id even with a clean one.
            bad("client_id", "must not be empty".to_owned());
        } else if self.client_id.len() > 256 || self.client_id.chars().any(char::is_control) {
            bad(
                "client_id",
                "must be at most 256 printable characters (23 or fewer is safest)".to_owned(),
            );
        }
        if !(MIN_KEEP_ALIVE_SECS..=MAX_KEEP_ALIVE_SECS).contains(&self.keep_alive_secs) {
            bad(
                "keep_alive_secs",
                format!(
                    "must be {MIN_KEEP_ALIVE_SECS}–{MAX_KEEP_ALIVE_SECS} (rumqttc panics below 1 s; MQTT carries it as 16 bits)"
                ),
            );
        }
        if self.password_env.is_some() && self.password_file.is_some() {
            bad(
                "password_file",
                "give the password either by password_env or by password_file, not both".to_owned(),
            );
        }
        if (self.password_env.is_some() || self.password_file.is_some()) && self.username.is_none()
        {
            bad(
                "username",
                "a password needs a username (MQTT 3.1.1)".to_owned(),
            );
        }
        if let Some(u) = &self.username {
            if u.is_empty() {
                bad("username", "must not be empty".to_owned());
            }
        }
        if let Some(v) = &self.password_env {
            if v.is_empty() || v.contains('=') || v.contains('\0') {
                bad(
                    "password_env",
                    format!("{v:?} is not an environment variable name"),
                );
            }
        }
        if !(1024..=MAX_PACKET_LIMIT).contains(&self.max_packet_bytes) {
            bad(
                "max_packet_bytes",
                format!("must be 1024–{MAX_PACKET_LIMIT}"),
            );
        }
        if !(1..=100_000).contains(&self.queue_depth) {
            // 0 makes rumqttc's request channel a rendezvous: every try_publish would fail.
            bad("queue_depth", "must be 1–100000".to_owned());
        }
        if self.inflight == 0 {
            bad(
                "inflight",
                "must be at least 1 (rumqttc panics on 0)".to_owned(),
            );
        }
        if !(10..=60_000).contains(&self.reconnect_min_ms) {
            bad("reconnect_min_ms", "must be 10–60000".to_owned());
        }
        if self.reconnect_max_secs == 0
            || self.reconnect_max_secs > 3600
            || self.reconnect_max_secs * 1000 < self.reconnect_min_ms
        {
            bad(
                "reconnect_max_secs",
                "must be 1–3600 and not below reconnect_min_ms".to_owned(),
            );
        }
        if !(10..=600_000).contains(&self.state_debounce_ms) {
            bad("state_debounce_ms", "must be 10–600000".to_owned());
        }
        if !(1..=1_000_000).contains(&self.alert_queue) {
            bad("alert_queue", "must be 1–1000000".to_owned());
        }
        if let HomeAssistant::Table(HomeAssistantTable { prefix }) = &self.home_assistant {
            if !valid_topic(prefix) || prefix.starts_with('/') || prefix.ends_with('/') {
                bad(
                    "home_assistant.prefix",
                    format!(
                        "{prefix:?} is not a topic prefix (no wildcards, no leading or trailing /)"
                    ),
                );
            }
        }
        if let Some(e) = &self.embedded {
            if e.bind.port() == 0 {
                bad(
                    "embedded.bind",
                    "needs a fixed port: devices and tools connect to it".to_owned(),
                );
            }
            if e.max_connections == 0 {
                bad("embedded.max_connections", "must be at least 1".to_owned());
            }
            if let Some(port) = self.port {
                if port != e.bind.port() {
                    bad(
                        "port",
                        format!(
                            "{port} differs from the embedded broker's port {}; the daemon connects to its own broker",
                            e.bind.port()
                        ),
                    );
                }
            }
        }
        p
    }

    /// Where the client connects: the configured broker, or the embedded one.
    pub fn broker_address(&self) -> (String, u16) {
        match (&self.embedded, &self.host) {
            (Some(e), None) => {
                let ip = if e.bind.ip().is_unspecified() {
                    if e.bind.is_ipv4() {
                        "127.0.0.1".to_owned()
                    } else {
                        "::1".to_owned()
                    }
                } else {
                    e.bind.ip().to_string()
                };
                (ip, e.bind.port())
            }
            (Some(e), Some(h)) => (h.clone(), self.port.unwrap_or(e.bind.port())),
            (None, h) => (
                h.clone().unwrap_or_else(|| "127.0.0.1".to_owned()),
                self.port.unwrap_or(1883),
            ),
        }
    }

    /// Read the password from `password_env` or `password_file` (relative paths against
    /// `base_dir`, the config file's directory). `Ok(None)` when none is configured.
    pub fn resolve_password(&self, base_dir: Option<&Path>) -> Result<Option<String>, String> {
        if let Some(var) = &self.password_env {
            return std::env::var(var)
                .map(Some)
                .map_err(|_| format!("mqtt.password_env: environment variable {var} is not set"));
        }
        if let Some(file) = &self.password_file {
            let path = match base_dir {
                Some(b) if file.is_relative() => b.join(file),
                _ => file.clone(),
            };
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("mqtt.password_file: cannot read {}: {e}", path.display()))?;
            return Ok(Some(text.lines().next().unwrap_or("").to_owned()));
        }
        Ok(None)
    }

    fn options(&self, password: Option<String>, will: Option<Will>) -> MqttOptions {
        let (host, port) = self.broker_address();
        let mut o = MqttOptions::new(self.client_id.clone(), host, port);
        // Values were validated: keep-alive ≥ 5 s and inflight ≥ 1, so rumqttc's asserts hold.
        o.set_keep_alive(Duration::from_secs(
            self.keep_alive_secs
                .clamp(MIN_KEEP_ALIVE_SECS, MAX_KEEP_ALIVE_SECS),
        ));
        o.set_clean_session(true);
        o.set_max_packet_size(self.max_packet_bytes, self.max_packet_bytes);
        o.set_inflight(self.inflight.max(1));
        o.set_request_channel_capacity(self.queue_depth.max(1));
        if let Some(u) = &self.username {
            o.set_credentials(u.clone(), password.unwrap_or_default());
        }
        if let Some(w) = will {
            o.set_last_will(LastWill::new(
                w.topic,
                w.payload,
                QoS::AtLeastOnce,
                w.retain,
            ));
        }
        o
    }
}

/// The message the broker publishes for us if we vanish (`avwarden/<site>/daemon` = `offline`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

/// One received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Bytes,
    pub retain: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MqttError {
    #[error("not connected to the mqtt broker")]
    NotConnected,
    #[error("mqtt request queue is full")]
    QueueFull,
    #[error("invalid mqtt topic {0:?}")]
    InvalidTopic(String),
    #[error("invalid mqtt topic filter {0:?}")]
    InvalidFilter(String),
    #[error("mqtt client stopped")]
    Stopped,
}

/// A topic we may publish to: not empty, no wildcards, no NUL, fits a u16 length.
pub fn valid_topic(topic: &str) -> bool {
    !topic.is_empty() && topic.len() <= 65_535 && !topic.contains(['+', '#', '\0'])
}

/// A filter we may subscribe to (MQTT 3.1.1 §4.7).
pub fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.len() > 65_535 || filter.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    levels.iter().enumerate().all(|(i, l)| match *l {
        "#" => i == levels.len() - 1,
        "+" => true,
        l => !l.contains(['+', '#']),
    })
}

/// Whether `topic` matches `filter` (MQTT 3.1.1 §4.7). Topics starting with `$` match no
/// filter that starts with a wildcard. (rumqttc's `matches` slices the first byte and panics on
/// a topic starting with a multi-byte character, so we keep our own.)
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut t = topic.split('/');
    for f in filter.split('/') {
        if f == "#" {
            return true;
        }
        match t.next() {
            Some(level) if f == "+" || f == level => {}
            _ => return false,
        }
    }
    t.next().is_none()
}

struct Route {
    id: u64,
    filter: String,
    tx: mpsc::Sender<Message>,
}

#[derive(Default)]
struct Routes {
    next_id: u64,
    routes: Vec<Route>,
    /// Filters whose subscribe request could not be queued yet.
    pending: BTreeSet<String>,
}

struct Inner {
    client: AsyncClient,
    routes: Mutex<Routes>,
    has_pending: AtomicBool,
    connected: watch::Sender<bool>,
    broker: String,
    received: AtomicU64,
    dropped: AtomicU64,
    connects: AtomicU64,
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Routes> {
        // A panic while holding this lock cannot leave the routes half-updated in a way that
        // matters; keep serving.
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn subscribe_filter(&self, routes: &mut Routes, filter: &str) {
        if self.client.try_subscribe(filter, QoS::AtLeastOnce).is_err() {
            routes.pending.insert(filter.to_owned());
            self.has_pending.store(true, Ordering::Release);
        }
    }

    fn resubscribe_all(&self) {
        let mut r = self.lock();
        let filters: BTreeSet<String> = r.routes.iter().map(|x| x.filter.clone()).collect();
        r.pending.clear();
        for f in filters {
            self.subscribe_filter(&mut r, &f);
        }
        self.has_pending
            .store(!r.pending.is_empty(), Ordering::Release);
    }

    fn retry_pending(&self) {
        if !self.has_pending.load(Ordering::Acquire) {
            return;
        }
        let mut r = self.lock();
        let pending: Vec<String> = std::mem::take(&mut r.pending).into_iter().collect();
        for f in pending {
            if r.routes.iter().any(|x| x.filter == f) {
                self.subscribe_filter(&mut r, &f);
            }
        }
        self.has_pending
            .store(!r.pending.is_empty(), Ordering::Release);
    }

    fn route(&self, p: rumqttc::Publish) {
        self.received.fetch_add(1, Ordering::Relaxed);
        let msg = Message {
            topic: p.topic,
            payload: p.payload,
            retain: p.retain,
        };
        let r = self.lock();
        let mut delivered: Vec<u64> = Vec::new();
        for route in r
            .routes
            .iter()
            .filter(|x| topic_matches(&x.filter, &msg.topic))
        {
            // One copy per subscriber, even when several of its filters match.
            if delivered.contains(&route.id) {
                continue;
            }
            delivered.push(route.id);
            if let Err(mpsc::error::TrySendError::Full(_)) = route.tx.try_send(msg.clone()) {
                // A subscriber that does not keep up loses messages rather than stalling every
                // other subscriber of the daemon.
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    tracing::warn!(filter = %route.filter, dropped = n, "mqtt subscriber is not keeping up; messages dropped");
                }
            }
        }
    }

    fn remove_route(&self, id: u64) {
        let mut r = self.lock();
        while let Some(pos) = r.routes.iter().position(|x| x.id == id) {
            let route = r.routes.remove(pos);
            if !r.routes.iter().any(|x| x.filter == route.filter) {
                r.pending.remove(&route.filter);
                if *self.connected.borrow() {
                    let _ = self.client.try_unsubscribe(route.filter);
                }
            }
        }
    }
}

/// What the rest of the daemon holds of the MQTT client. Cheap to clone.
#[derive(Clone)]
pub struct MqttHandle {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MqttHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttHandle")
            .field("broker", &self.inner.broker)
            .field("connected", &*self.inner.connected.borrow())
            .finish()
    }
}

/// Messages for one subscriber. Dropping it unsubscribes (when it was the filter's last).
pub struct Subscription {
    rx: mpsc::Receiver<Message>,
    id: u64,
    filter: String,
    inner: Arc<Inner>,
}

impl Subscription {
    /// The next message; `None` once the client has stopped. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Message> {
        self.rx.recv().await
    }

    pub fn try_recv(&mut self) -> Option<Message> {
        self.rx.try_recv().ok()
    }

    pub fn filter(&self) -> &str {
        &self.filter
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.inner.remove_route(self.id);
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("filter", &self.filter)
            .finish()
    }
}

/// Counters for the status page and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MqttStats {
    pub received: u64,
    pub dropped: u64,
    /// Successful connections so far (the first one included).
    pub connects: u64,
}

impl MqttHandle {
    /// `host:port` of the broker.
    pub fn broker(&self) -> &str {
        &self.inner.broker
    }

    pub fn is_connected(&self) -> bool {
        *self.inner.connected.borrow()
    }

    /// Watch the connection state (true while the broker has acknowledged us).
    pub fn connected(&self) -> watch::Receiver<bool> {
        self.inner.connected.subscribe()
    }

    pub fn stats(&self) -> MqttStats {
        MqttStats {
            received: self.inner.received.load(Ordering::Relaxed),
            dropped: self.inner.dropped.load(Ordering::Relaxed),
            connects: self.inner.connects.load(Ordering::Relaxed),
        }
    }

    /// Receive every message matching `filter` on a channel of `capacity`. The subscription
    /// survives reconnects: the client subscribes again after each one.
    pub fn subscribe(&self, filter: &str, capacity: usize) -> Result<Subscription, MqttError> {
        self.subscribe_many(&[filter], capacity)
    }

    /// One channel for several filters (a device's state and availability topics).
    pub fn subscribe_many(
        &self,
        filters: &[&str],
        capacity: usize,
    ) -> Result<Subscription, MqttError> {
        if let Some(bad) = filters.iter().find(|f| !valid_filter(f)) {
            return Err(MqttError::InvalidFilter((*bad).to_owned()));
        }
        if filters.is_empty() {
            return Err(MqttError::InvalidFilter(String::new()));
        }
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let mut r = self.inner.lock();
        r.next_id += 1;
        let id = r.next_id;
        for filter in filters {
            let first = !r.routes.iter().any(|x| x.filter == *filter);
            r.routes.push(Route {
                id,
                filter: (*filter).to_owned(),
                tx: tx.clone(),
            });
            if first {
                // Queued even while disconnected: rumqttc keeps it, and the reconnect
                // resubscribes anyway; a duplicate SUBSCRIBE is harmless.
                self.inner.subscribe_filter(&mut r, filter);
            }
        }
        Ok(Subscription {
            rx,
            id,
            filter: filters.join(" "),
            inner: self.inner.clone(),
        })
    }

    /// Publish with QoS 1. Refused while disconnected (a command to a device must not sit in a
    /// queue and fire minutes later) and when the request queue is full; never waits.
    pub fn publish(
        &self,
        topic: &str,
        payload: impl Into<Vec<u8>>,
        retain: bool,
    ) -> Result<(), MqttError> {
        if !valid_topic(topic) {
            return Err(MqttError::InvalidTopic(topic.to_owned()));
        }
        if !self.is_connected() {
            return Err(MqttError::NotConnected);
        }
        self.inner
            .client
            .try_publish(topic, QoS::AtLeastOnce, retain, payload.into())
            .map_err(|_| MqttError::QueueFull)
    }

    /// Wait until connected, at most `limit`.
    pub async fn wait_connected(&self, limit: Duration) -> bool {
        let mut rx = self.connected();
        tokio::time::timeout(limit, rx.wait_for(|c| *c))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// Start the daemon's MQTT client: one task on `tracker` that connects, reconnects with
/// jittered backoff, routes messages, and disconnects cleanly when `cancel` fires.
/// `settings` must have passed [`MqttSettings::validate`].
pub fn start(
    settings: &MqttSettings,
    password: Option<String>,
    will: Option<Will>,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) -> MqttHandle {
    let farewell = will.clone();
    let options = settings.options(password, will);
    let (host, port) = settings.broker_address();
    let (client, eventloop) = AsyncClient::new(options, settings.queue_depth.max(1));
    let (connected, _) = watch::channel(false);
    let inner = Arc::new(Inner {
        client,
        routes: Mutex::new(Routes::default()),
        has_pending: AtomicBool::new(false),
        connected,
        broker: format!("{host}:{port}"),
        received: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
        connects: AtomicU64::new(0),
    });
    let backoff = Backoff::new(
        Duration::from_millis(settings.reconnect_min_ms),
        Duration::from_secs(settings.reconnect_max_secs),
    );
    tracker.spawn(run(eventloop, inner.clone(), backoff, farewell, cancel));
    MqttHandle { inner }
}

async fn run(
    mut eventloop: EventLoop,
    inner: Arc<Inner>,
    mut backoff: Backoff,
    farewell: Option<Will>,
    cancel: CancellationToken,
) {
    let mut down_logged = false;
    loop {
        let ev = tokio::select! {
            biased;
            _ = cancel.cancelled() => break,
            ev = eventloop.poll() => ev,
        };
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                // rumqttc returns refused CONNACKs as errors, so this one was accepted.
                backoff.reset();
                down_logged = false;
                inner.connects.fetch_add(1, Ordering::Relaxed);
                inner.resubscribe_all();
                inner.connected.send_replace(true);
                tracing::info!(broker = %inner.broker, "mqtt connected");
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                inner.route(p);
                inner.retry_pending();
            }
            Ok(_) => inner.retry_pending(),
            Err(e) => {
                let was_up = inner.connected.send_replace(false);
                let delay = backoff.next_delay();
                if was_up || !down_logged {
                    down_logged = true;
                    let why = describe_error(&e);
                    tracing::warn!(broker = %inner.broker, error = %why, retry_in_ms = delay.as_millis() as u64, "mqtt connection down");
                }
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    // Orderly end: a DISCONNECT keeps the broker from publishing our last will, so we say it
    // ourselves first; otherwise a daemon stopped on purpose would stay `online` (retained)
    // for every reader. Requests leave in order, so the broker has it before the DISCONNECT.
    if *inner.connected.borrow() {
        if let Some(w) = farewell {
            let _ = inner
                .client
                .try_publish(w.topic, QoS::AtLeastOnce, w.retain, w.payload);
        }
        let _ = inner.client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
    inner.connected.send_replace(false);
    // Subscribers see the end of their stream.
    inner.lock().routes.clear();
}

fn describe_error(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ConnectionRefused(code) => {
            format!("broker refused the connection: {code:?}")
        }
        other => other.to_string(),
    }
}

/// A broker running inside the daemon. It lives until the process exits (rumqttd has no stop).
#[derive(Debug, Clone)]
pub struct EmbeddedBroker {
    /// Where clients on this machine reach it.
    pub addr: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("embedded mqtt broker cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("embedded mqtt broker did not start listening on {addr} within {waited_ms} ms")]
    NotListening { addr: SocketAddr, waited_ms: u64 },
    #[error("embedded mqtt broker thread: {0}")]
    Thread(std::io::Error),
}

/// Start rumqttd on `settings.bind` (MQTT 3.1.1) and wait until it accepts connections.
pub async fn spawn_embedded_broker(
    settings: &EmbeddedSettings,
) -> Result<EmbeddedBroker, BrokerError> {
    let bind = settings.bind;
    // rumqttd binds inside its own thread and only logs a failure; find out here instead.
    std::net::TcpListener::bind(bind)
        .map(drop)
        .map_err(|source| BrokerError::Bind { addr: bind, source })?;
    let mut v4 = std::collections::HashMap::new();
    v4.insert(
        "1".to_owned(),
        rumqttd::ServerSettings {
            name: "avwarden-embedded".to_owned(),
            listen: bind,
            tls: None,
            next_connection_delay_ms: 1,
            connections: rumqttd::ConnectionSettings {
                connection_timeout_ms: 60_000,
                max_payload_size: 256 * 1024,
                max_inflight_count: 100,
                auth: None,
                external_auth: None,
                dynamic_filters: true,
            },
        },
    );
    let config = rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: settings.max_connections.max(1),
            max_outgoing_packet_count: 200,
            // Segments must hold the largest payload; a small site needs little memory.
            max_segment_size: 1024 * 1024,
            max_segment_count: 10,
            ..Default::default()
        },
        v4: Some(v4),
        ..Default::default()
    };
    std::thread::Builder::new()
        .name("mqtt-broker".to_owned())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded mqtt broker stopped");
            }
        })
        .map_err(BrokerError::Thread)?;
    let addr = if bind.ip().is_unspecified() {
        SocketAddr::new(
            if bind.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            },
            bind.port(),
        )
    } else {
        bind
    };
    let limit = Duration::from_secs(5);
    let ready = tokio::time::timeout(limit, async {
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    match ready {
        Ok(()) => Ok(EmbeddedBroker { addr }),
        Err(_) => Err(BrokerError::NotListening {
            addr,
            waited_ms: limit.as_millis() as u64,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(s: &str) -> toml::Table {
        toml::from_str(s).unwrap()
    }

    #[test]
    fn defaults_are_valid() {
        let s = MqttSettings::from_table(&toml::Table::new()).unwrap();
        assert_eq!(s.broker_address(), ("127.0.0.1".to_owned(), 1883));
        assert!(s.validate().is_empty());
    }

    #[test]
    fn values_that_make_rumqttc_panic_are_rejected() {
        let cases = [
            ("keep_alive_secs = 0", "mqtt.keep_alive_secs"),
            ("keep_alive_secs = 1", "mqtt.keep_alive_secs"),
            ("keep_alive_secs = 70000", "mqtt.keep_alive_secs"),
            ("inflight = 0", "mqtt.inflight"),
            ("client_id = \"\"", "mqtt.client_id"),
            ("queue_depth = 0", "mqtt.queue_depth"),
            ("max_packet_bytes = 10", "mqtt.max_packet_bytes"),
            ("port = 0", "mqtt.port"),
            ("password_env = \"X\"", "mqtt.username"),
            (
                "username = \"u\"\npassword_env = \"X\"\npassword_file = \"p\"",
                "mqtt.password_file",
            ),
            (
                "reconnect_min_ms = 5000\nreconnect_max_secs = 1",
                "mqtt.reconnect_max_secs",
            ),
            (
                "embedded = { bind = \"127.0.0.1:0\" }",
                "mqtt.embedded.bind",
            ),
            (
                "port = 1884\nembedded = { bind = \"127.0.0.1:1883\" }",
                "mqtt.port",
            ),
            ("state_debounce_ms = 0", "mqtt.state_debounce_ms"),
            ("alert_queue = 0", "mqtt.alert_queue"),
            (
                "home_assistant = { prefix = \"ha/#\" }",
                "mqtt.home_assistant.prefix",
            ),
        ];
        for (text, key) in cases {
            let problems = MqttSettings::from_table(&table(text)).unwrap_err();
            assert!(
                problems.iter().any(|(k, _)| k == key),
                "{text}: {problems:?}"
            );
        }
        // Every problem at once.
        let all = MqttSettings::from_table(&table("keep_alive_secs = 0\ninflight = 0\nport = 0"))
            .unwrap_err();
        assert_eq!(all.len(), 3, "{all:?}");
        // Unknown keys are refused with the table's path.
        let e = MqttSettings::from_table(&table("hots = \"x\"")).unwrap_err();
        assert_eq!(e[0].0, "mqtt");
    }

    #[test]
    fn validated_options_build_without_panicking() {
        for ka in [MIN_KEEP_ALIVE_SECS, 30, MAX_KEEP_ALIVE_SECS] {
            let s = MqttSettings {
                keep_alive_secs: ka,
                inflight: 1,
                username: Some("u".into()),
                ..Default::default()
            };
            assert!(s.validate().is_empty());
            let o = s.options(Some("p".into()), None);
            assert_eq!(o.keep_alive(), Duration::from_secs(ka));
        }
    }

    #[test]
    fn home_assistant_forms() {
        let off = MqttSettings::from_table(&table("")).unwrap();
        assert_eq!(off.home_assistant.prefix(), None);
        let on = MqttSettings::from_table(&table("home_assistant = true")).unwrap();
        assert_eq!(on.home_assistant.prefix(), Some("homeassistant"));
        let t = MqttSettings::from_table(&table("home_assistant = { prefix = \"ha\" }")).unwrap();
        assert_eq!(t.home_assistant.prefix(), Some("ha"));
        let t = MqttSettings::from_table(&table("home_assistant = {}")).unwrap();
        assert_eq!(t.home_assistant.prefix(), Some("homeassistant"));
    }

    #[test]
    fn embedded_address() {
        let s = MqttSettings::from_table(&table("embedded = { bind = \"0.0.0.0:1884\" }")).unwrap();
        assert_eq!(s.broker_address(), ("127.0.0.1".to_owned(), 1884));
    }

    #[test]
    fn password_sources() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), "s3cret\nignored\n").unwrap();
        let s = MqttSettings {
            username: Some("u".into()),
            password_file: Some("pw".into()),
            ..Default::default()
        };
        assert_eq!(
            s.resolve_password(Some(dir.path())).unwrap(),
            Some("s3cret".into())
        );
        let s = MqttSettings {
            username: Some("u".into()),
            password_env: Some("AVWARDEN_TEST_SURELY_UNSET_VAR".into()),
            ..Default::default()
        };
        assert!(s.resolve_password(None).is_err());
    }

    #[test]
    fn filters_and_matching() {
        assert!(valid_filter("zigbee2mqtt/+/availability"));
        assert!(valid_filter("a/#"));
        assert!(valid_filter("#"));
        assert!(!valid_filter("a/#/b"));
        assert!(!valid_filter("a+/b"));
        assert!(!valid_filter(""));
        assert!(valid_topic("a/b"));
        assert!(!valid_topic("a/+"));
        assert!(!valid_topic(""));
        assert!(topic_matches("a/+/c", "a/b/c"));
        assert!(topic_matches("a/#", "a"));
        assert!(topic_matches("a/#", "a/b/c"));
        assert!(!topic_matches("a/+", "a/b/c"));
        assert!(!topic_matches("a/b", "a/b/c"));
        assert!(!topic_matches("#", "$SYS/x"));
        assert!(topic_matches("$SYS/#", "$SYS/x"));
        // A topic starting with a multi-byte character must not panic (rumqttc's would).
        assert!(topic_matches("+", "é"));
        assert!(topic_matches("é/x", "é/x"));
    }

    proptest::proptest! {
        #[test]
        fn matching_never_panics(f in "[a-z+#/é$]{0,12}", t in "[a-z/é$]{0,12}") {
            let _ = topic_matches(&f, &t);
            let _ = valid_filter(&f);
        }
    }
}
