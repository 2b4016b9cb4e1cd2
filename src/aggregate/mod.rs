//! The aggregate mode (docs/architecture.md "Many buildings: the aggregate mode"): a central
//! daemon that reads the building daemons' retained state and alert topics through the
//! site's broker and serves the fleet's readiness board and alert list, read-only, with each
//! building's staleness.
//!
//! This module owns the `[aggregate]` settings and their validation, the one task that feeds
//! MQTT messages into the pure [`state::FleetState`], and the [`FleetHandle`] the API, the
//! dashboard and `/metrics` read. It must never publish anything (it has no last will and no
//! command topic) and must not touch a device, a record or a building's alerts: the buildings
//! decide, the central daemon only shows.

pub mod state;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::Clock;
use crate::metrics::Exposition;
use crate::transport::mqtt::{MqttHandle, MqttSettings};
use state::{Applied, BuildingView, FleetAlert, FleetRoom, FleetState, Freshness};

/// A building daemon publishes its heartbeat this often (`mqtt_out::heartbeat`).
pub const HEARTBEAT_SECS: u64 = 30;
/// The shortest `stale_after_secs`: two heartbeats, so one late heartbeat is not an outage.
pub const MIN_STALE_AFTER_SECS: u64 = 2 * HEARTBEAT_SECS;
const DEFAULT_STALE_AFTER_SECS: u64 = 3 * HEARTBEAT_SECS;
/// After a reconnect, retained topics not sent again within this long are gone.
const RESYNC: Duration = Duration::from_secs(10);
/// Messages waiting for the aggregate task. At connect the broker sends every retained topic
/// of every building at once (50 buildings of 40 rooms and 200 devices: about 12 000), and
/// the MQTT client drops what does not fit rather than stall.
const QUEUE: usize = 32_768;

/// Which buildings to follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Buildings {
    /// `"+"`: every building that publishes `avwarden/<building>/…`.
    All,
    /// These, by the slug their daemons publish under; each shown from the start.
    Named(Vec<String>),
}

/// The site config's `[aggregate]` table.
///
/// ```toml
/// [aggregate]
/// broker = "mqtt://central-broker.example:1883"
/// username = "avwarden-central"
/// password_env = "AVWARDEN_MQTT_PASSWORD"    # or password_file = "mqtt.pass"
/// buildings = ["building-a", "building-b"]    # or "+" (the default) for every building
/// stale_after_secs = 90
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct AggregateSettings {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub username: Option<String>,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
    pub buildings: Buildings,
    pub stale_after_secs: u64,
    pub keep_alive_secs: u64,
    pub reconnect_max_secs: u64,
}

/// The keys `[aggregate]` accepts.
pub const KEYS: &[&str] = &[
    "broker",
    "client_id",
    "username",
    "password_env",
    "password_file",
    "buildings",
    "stale_after_secs",
    "keep_alive_secs",
    "reconnect_max_secs",
];

/// A building slug as `app::site_slug` writes it.
fn is_slug(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// `mqtt://host[:port]` into host and port.
fn parse_broker(url: &str) -> Result<(String, u16), String> {
    let Some(rest) = url.strip_prefix("mqtt://") else {
        return Err(if url.starts_with("mqtts://") {
            "mqtts:// is not supported; reach a TLS broker through a local bridge (docs/architecture.md)".to_owned()
        } else {
            format!("{url:?} is not mqtt://host:port")
        });
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => match p.parse::<u16>() {
            Ok(port) if port > 0 => (h, port),
            _ => return Err(format!("{p:?} is not a port (1–65535)")),
        },
        _ => (rest, 1883),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains(['/', '@', '?', '#']) || host.contains(char::is_whitespace)
    {
        return Err(format!("{url:?} is not mqtt://host:port"));
    }
    Ok((host.to_owned(), port))
}

impl AggregateSettings {
    /// Parse and validate `[aggregate]`. Problems come back as `(key path, why)`, all at
    /// once; key paths start with `aggregate.` and an array index is a numeric segment
    /// (`aggregate.buildings.1`).
    pub fn from_table(t: &toml::Table) -> Result<AggregateSettings, Vec<(String, String)>> {
        let mut p: Vec<(String, String)> = Vec::new();
        let mut bad = |k: &str, m: String| p.push((format!("aggregate.{k}"), m));
        for key in t.keys().filter(|k| !KEYS.contains(&k.as_str())) {
            let hint = crate::config::suggest(key, KEYS.iter().copied())
                .map(|s| format!(" (did you mean {s}?)"))
                .unwrap_or_default();
            if key == "password" {
                bad(
                    key,
                    "unknown key: secrets are never written in the config; use password_env (an environment variable) or password_file".to_owned(),
                );
            } else {
                bad(key, format!("unknown key{hint}"));
            }
        }
        let string = |k: &str, bad: &mut dyn FnMut(&str, String)| match t.get(k) {
            None => None,
            Some(toml::Value::String(s)) => Some(s.clone()),
            Some(other) => {
                bad(k, format!("expected a string, found {}", other.type_str()));
                None
            }
        };
        let secs = |k: &str,
                    default: u64,
                    range: std::ops::RangeInclusive<u64>,
                    bad: &mut dyn FnMut(&str, String)| match t.get(k) {
            None => default,
            Some(toml::Value::Integer(i)) if *i >= 0 && range.contains(&(*i as u64)) => *i as u64,
            Some(toml::Value::Integer(_)) => {
                bad(k, format!("must be {}–{}", range.start(), range.end()));
                default
            }
            Some(other) => {
                bad(
                    k,
                    format!("expected an integer, found {}", other.type_str()),
                );
                default
            }
        };
        let broker = match string("broker", &mut bad) {
            Some(url) => match parse_broker(&url) {
                Ok(b) => Some(b),
                Err(m) => {
                    bad("broker", m);
                    None
                }
            },
            None if t.contains_key("broker") => None,
            None => {
                bad(
                    "broker",
                    "missing key broker (the central broker, mqtt://host:1883)".to_owned(),
                );
                None
            }
        };
        let client_id =
            string("client_id", &mut bad).unwrap_or_else(|| "avwarden-aggregate".into());
        let username = string("username", &mut bad);
        let password_env = string("password_env", &mut bad);
        let password_file = string("password_file", &mut bad).map(PathBuf::from);
        if password_env.is_some() && password_file.is_some() {
            bad(
                "password_file",
                "give password_env or password_file, not both".to_owned(),
            );
        }
        let buildings = match t.get("buildings") {
            None => Buildings::All,
            Some(toml::Value::String(s)) if s == "+" => Buildings::All,
            Some(toml::Value::Array(list)) => {
                let mut names = Vec::new();
                for (i, v) in list.iter().enumerate() {
                    let at = format!("buildings.{i}");
                    match v.as_str() {
                        Some(s) if is_slug(s) => {
                            if names.iter().any(|n| n == s) {
                                bad(&at, format!("{s:?} is listed twice"));
                            } else {
                                names.push(s.to_owned());
                            }
                        }
                        Some(s) => {
                            let slug = crate::app::site_slug(s);
                            bad(
                                &at,
                                format!(
                                    "{s:?} is not a building as its daemon publishes it (avwarden/<slug>/…: lower case letters, digits and -); did you mean {slug:?}?"
                                ),
                            );
                        }
                        None => bad(&at, "expected a string".to_owned()),
                    }
                }
                if list.is_empty() {
                    bad(
                        "buildings",
                        "an empty list follows nobody; list the buildings or use \"+\" for every one".to_owned(),
                    );
                }
                Buildings::Named(names)
            }
            Some(_) => {
                bad(
                    "buildings",
                    "expected a list of building names, or \"+\" for every building".to_owned(),
                );
                Buildings::All
            }
        };
        let stale_after_secs = secs(
            "stale_after_secs",
            DEFAULT_STALE_AFTER_SECS,
            MIN_STALE_AFTER_SECS..=86_400,
            &mut bad,
        );
        let keep_alive_secs = secs("keep_alive_secs", 30, 5..=65_535, &mut bad);
        let reconnect_max_secs = secs("reconnect_max_secs", 30, 1..=3_600, &mut bad);
        let s = broker.map(|(host, port)| AggregateSettings {
            host,
            port,
            client_id,
            username,
            password_env,
            password_file,
            buildings,
            stale_after_secs,
            keep_alive_secs,
            reconnect_max_secs,
        });
        if let Some(s) = &s {
            for (k, m) in s.mqtt_settings().validate() {
                let k = k.strip_prefix("mqtt.").unwrap_or(&k).to_owned();
                p.push((format!("aggregate.{k}"), m));
            }
        }
        match s {
            Some(s) if p.is_empty() => Ok(s),
            _ => Err(p),
        }
    }

    /// The MQTT client's settings: a clean session to the central broker.
    pub fn mqtt_settings(&self) -> MqttSettings {
        MqttSettings {
            host: Some(self.host.clone()),
            port: Some(self.port),
            client_id: self.client_id.clone(),
            keep_alive_secs: self.keep_alive_secs,
            username: self.username.clone(),
            password_env: self.password_env.clone(),
            password_file: self.password_file.clone(),
            reconnect_min_ms: 100,
            reconnect_max_secs: self.reconnect_max_secs,
            ..Default::default()
        }
    }

    /// The topic filters to subscribe to.
    pub fn filters(&self) -> Vec<String> {
        let each = |b: &str| {
            [
                "daemon",
                "heartbeat",
                "room/+/status",
                "device/+/state",
                "alerts/active",
            ]
            .map(|t| format!("avwarden/{b}/{t}"))
        };
        match &self.buildings {
            Buildings::All => each("+").to_vec(),
            Buildings::Named(names) => names.iter().flat_map(|b| each(b)).collect(),
        }
    }
}

/// `[aggregate]` with its password resolved.
#[derive(Debug, Clone)]
pub struct AggregateConfig {
    pub settings: AggregateSettings,
    pub password: Option<crate::config::Secret>,
}

/// What the API, the dashboard and `/metrics` read of the fleet. Cheap to clone.
#[derive(Clone)]
pub struct FleetHandle {
    state: Arc<RwLock<FleetState>>,
    mqtt: MqttHandle,
    clock: Clock,
    stale_after: Duration,
}

impl std::fmt::Debug for FleetHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetHandle")
            .field("broker", &self.mqtt.broker())
            .finish()
    }
}

impl FleetHandle {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, FleetState> {
        // The state is replaced message by message; a panic elsewhere cannot leave it torn.
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Staleness as of now.
    pub fn freshness(&self) -> Freshness {
        Freshness {
            now: self.clock.now(),
            stale_after: self.stale_after,
            broker_up: self.mqtt.is_connected(),
        }
    }

    pub fn broker_up(&self) -> bool {
        self.mqtt.is_connected()
    }

    pub fn broker(&self) -> &str {
        self.mqtt.broker()
    }

    pub fn buildings(&self) -> Vec<BuildingView> {
        self.read().buildings(&self.freshness())
    }

    pub fn board(&self) -> Vec<FleetRoom> {
        self.read().board(&self.freshness())
    }

    pub fn alerts(&self) -> Vec<FleetAlert> {
        self.read().alerts(&self.freshness())
    }

    /// The fleet's gauges for `/metrics`.
    pub fn render_metrics(&self, out: &mut Exposition) {
        let buildings = self.buildings();
        out.family(
            "avwarden_fleet_broker_up",
            "gauge",
            "1 while the aggregate daemon is connected to the central broker.",
        );
        out.sample(
            "avwarden_fleet_broker_up",
            &[],
            if self.broker_up() { 1.0 } else { 0.0 },
        );
        out.family(
            "avwarden_fleet_building_up",
            "gauge",
            "1 when the building's daemon says online and is not stale.",
        );
        for b in &buildings {
            let up = b.online == Some(true) && !b.stale;
            out.sample(
                "avwarden_fleet_building_up",
                &[("building", &b.name)],
                if up { 1.0 } else { 0.0 },
            );
        }
        out.family(
            "avwarden_fleet_building_stale",
            "gauge",
            "1 when the building's data may not be current (offline, silent, never seen, or the broker is down).",
        );
        for b in &buildings {
            out.sample(
                "avwarden_fleet_building_stale",
                &[("building", &b.name)],
                if b.stale { 1.0 } else { 0.0 },
            );
        }
        out.family(
            "avwarden_fleet_building_last_seen_seconds",
            "gauge",
            "Seconds since the building last said something live (absent: never).",
        );
        for b in &buildings {
            if let Some(s) = b.last_seen_secs {
                out.sample(
                    "avwarden_fleet_building_last_seen_seconds",
                    &[("building", &b.name)],
                    s,
                );
            }
        }
        out.family(
            "avwarden_fleet_malformed_total",
            "counter",
            "Payloads of the building that could not be read.",
        );
        for b in &buildings {
            out.sample(
                "avwarden_fleet_malformed_total",
                &[("building", &b.name)],
                b.malformed as f64,
            );
        }
    }
}

/// Connect to the central broker and follow the buildings until `cancel`.
pub fn start(
    cfg: &AggregateConfig,
    clock: Clock,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) -> Result<FleetHandle, crate::transport::mqtt::MqttError> {
    let s = &cfg.settings;
    let mqtt = crate::transport::mqtt::start(
        &s.mqtt_settings(),
        cfg.password.as_ref().map(|p| p.expose().to_owned()),
        None,
        tracker,
        cancel.clone(),
    );
    let only = match &s.buildings {
        Buildings::All => None,
        Buildings::Named(n) => Some(n.clone()),
    };
    let handle = FleetHandle {
        state: Arc::new(RwLock::new(FleetState::new(only))),
        mqtt: mqtt.clone(),
        clock,
        stale_after: Duration::from_secs(s.stale_after_secs),
    };
    let filters = s.filters();
    let refs: Vec<&str> = filters.iter().map(String::as_str).collect();
    let sub = mqtt.subscribe_many(&refs, QUEUE)?;
    tracker.spawn(run(handle.clone(), sub, cancel));
    Ok(handle)
}

async fn run(
    fleet: FleetHandle,
    mut sub: crate::transport::mqtt::Subscription,
    cancel: CancellationToken,
) {
    let mut connected = fleet.mqtt.connected();
    let mut resync_until: Option<tokio::time::Instant> = None;
    loop {
        let resync_end = async {
            match resync_until {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // The connection's change first: the client marks itself connected before it
            // routes the first retained message of the new session, so a message is never
            // taken before the resync it belongs to begins.
            biased;
            _ = cancel.cancelled() => break,
            r = connected.changed() => {
                if r.is_err() {
                    break;
                }
                if *connected.borrow_and_update() {
                    fleet.state.write().unwrap_or_else(|e| e.into_inner()).begin_resync();
                    resync_until = Some(tokio::time::Instant::now() + RESYNC);
                } else {
                    tracing::warn!(broker = %fleet.mqtt.broker(), "aggregate: central broker down; every building's data is of unknown freshness");
                }
            }
            _ = resync_end => {
                resync_until = None;
                fleet.state.write().unwrap_or_else(|e| e.into_inner()).end_resync();
            }
            m = sub.recv() => {
                let Some(m) = m else { break };
                let now = fleet.clock.now();
                let applied = fleet
                    .state
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .apply(&m.topic, &m.payload, m.retain, now);
                if let Applied::Malformed(e) = applied {
                    tracing::warn!(error = %e, "aggregate: a building's payload could not be read; its last good data stays");
                }
            }
        }
    }
}
