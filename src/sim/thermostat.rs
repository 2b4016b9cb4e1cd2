//! An MQTT thermostat: a device on a broker that speaks whatever JSON field map its profile
//! gives (zigbee2mqtt climate, Tasmota, …) over the shared room thermal model.
//!
//! It publishes its state (retained) on its state topics when it connects, on every change,
//! on a `get` and every `report_secs`; it answers sets on its set topics; it publishes
//! `online` on its availability topic and leaves `offline` as its last will. Like a real
//! device it has its own MQTT connection (not the daemon's) and reconnects by itself when the
//! broker restarts. Scriptable faults: go offline, ignore commands, publish malformed JSON or
//! an unknown mode.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
use serde::Deserialize;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::thermal::{Controls, Mode, RoomStart, Running, SimRoom};
use super::{option_error, parse_options, SimBind, SimEndpoint, SimError};
use crate::clock::Clock;
use crate::codec::climate_json::{
    command_filters, decode_set, state_payload, ClimateMap, ClimateSet, ClimateSnapshot,
};
use crate::profile::Profile;

/// `[devices.simulator]` options of an MQTT thermostat.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThermostatOptions {
    #[serde(default = "default_temp")]
    pub temperature_c: f64,
    #[serde(default = "default_setpoint")]
    pub setpoint_c: f64,
    #[serde(default = "default_mode")]
    pub mode: String,
    #[serde(default = "default_true")]
    pub power: bool,
    #[serde(default)]
    pub ambient_c: Option<f64>,
    #[serde(default)]
    pub rate_c_per_min: Option<f64>,
    /// Periodic state report (zigbee2mqtt devices report on an interval and on change).
    #[serde(default = "default_report")]
    pub report_secs: u64,
    #[serde(default)]
    pub client_id: Option<String>,
}

fn default_temp() -> f64 {
    28.0
}
fn default_setpoint() -> f64 {
    22.0
}
fn default_mode() -> String {
    "off".to_owned()
}
fn default_true() -> bool {
    true
}
fn default_report() -> u64 {
    30
}

impl Default for ThermostatOptions {
    fn default() -> Self {
        Self {
            temperature_c: default_temp(),
            setpoint_c: default_setpoint(),
            mode: default_mode(),
            power: true,
            ambient_c: None,
            rate_c_per_min: None,
            report_secs: default_report(),
            client_id: None,
        }
    }
}

/// Faults a test or the demo can switch on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ThermostatFaults {
    /// Ignore sets and gets (a sleepy or jammed device).
    pub deaf: bool,
    /// Publish this many malformed state payloads instead of the state.
    pub malformed: u32,
    /// Publish this many states with a mode value the map does not know.
    pub unknown_mode: u32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ThermostatCounters {
    pub connects: u64,
    pub sets: u64,
    pub bad_sets: u64,
    pub gets: u64,
    pub states_published: u64,
}

struct State {
    room: SimRoom,
    fan: Option<String>,
    available: bool,
    faults: ThermostatFaults,
    counters: ThermostatCounters,
}

/// The simulated thermostat's room and faults, for tests and the demo.
#[derive(Clone)]
pub struct ThermostatControl {
    inner: Arc<Mutex<State>>,
    changed: Arc<Notify>,
}

impl std::fmt::Debug for ThermostatControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThermostatControl").finish_non_exhaustive()
    }
}

impl ThermostatControl {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub fn temperature(&self) -> f64 {
        self.lock().room.room().temp_c
    }
    pub fn running(&self) -> Running {
        self.lock().room.room().running
    }
    pub fn controls(&self) -> Controls {
        self.lock().room.controls()
    }
    pub fn counters(&self) -> ThermostatCounters {
        self.lock().counters
    }
    pub fn set_temperature(&self, c: f64) {
        self.lock().room.set_temperature(c);
        self.changed.notify_one();
    }
    /// Go offline (as the bridge reports a device it lost) or back online.
    pub fn set_available(&self, available: bool) {
        self.lock().available = available;
        self.changed.notify_one();
    }
    pub fn faults(&self, f: impl FnOnce(&mut ThermostatFaults)) {
        f(&mut self.lock().faults);
        self.changed.notify_one();
    }
}

/// The checks [`spawn_from_config`] makes before it connects (also run by `check-config`).
pub fn check_options(profile: &Profile, options: &toml::Table) -> Result<(), SimError> {
    ClimateMap::from_table(&profile.options)
        .map_err(|m| option_error(format!("profile {} options", profile.id), m))?;
    let opts: ThermostatOptions = parse_options(options)?;
    RoomStart {
        temperature_c: opts.temperature_c,
        setpoint_c: opts.setpoint_c,
        mode: &opts.mode,
        power: opts.power,
        ambient_c: opts.ambient_c,
        rate_c_per_min: opts.rate_c_per_min,
    }
    .room()
    .map(drop)
}

/// Start a thermostat for `profile`'s field map on the broker named by `bind`.
pub async fn spawn_from_config(
    profile: &Profile,
    options: &toml::Table,
    bind: SimBind,
    clock: Clock,
    cancel: CancellationToken,
) -> Result<(SimEndpoint, ThermostatControl), SimError> {
    let _ = clock;
    let SimBind::Mqtt { host, port, topic } = bind else {
        return Err(SimError::Unsupported("mqtt thermostat needs an mqtt bind"));
    };
    let map = ClimateMap::from_table(&profile.options)
        .map_err(|m| option_error(format!("profile {} options", profile.id), m))?;
    let opts: ThermostatOptions = parse_options(options)?;
    let room = RoomStart {
        temperature_c: opts.temperature_c,
        setpoint_c: opts.setpoint_c,
        mode: &opts.mode,
        power: opts.power,
        ambient_c: opts.ambient_c,
        rate_c_per_min: opts.rate_c_per_min,
    }
    .room()?;
    if !crate::transport::mqtt::valid_topic(&topic) {
        return Err(option_error("topic", format!("{topic:?} is not a topic")));
    }
    let control = ThermostatControl {
        inner: Arc::new(Mutex::new(State {
            room,
            fan: map.fields.fan.as_ref().map(|_| "auto".to_owned()),
            available: true,
            faults: ThermostatFaults::default(),
            counters: ThermostatCounters::default(),
        })),
        changed: Arc::new(Notify::new()),
    };
    let client_id = opts
        .client_id
        .clone()
        .unwrap_or_else(|| format!("avwarden-sim-{}", topic.replace('/', "-")));
    let mut mo = MqttOptions::new(client_id, host, port);
    mo.set_keep_alive(Duration::from_secs(5));
    mo.set_clean_session(true);
    if let Some(avail) = map.availability_topic_for(&topic) {
        let offline = map
            .offline
            .first()
            .cloned()
            .unwrap_or_else(|| "offline".to_owned());
        mo.set_last_will(LastWill::new(avail, offline, QoS::AtLeastOnce, true));
    }
    let (client, mut eventloop) = AsyncClient::new(mo, 64);
    let (tx, rx) = mpsc::channel::<Incoming>(64);
    let loop_cancel = cancel.clone();
    // The event loop runs alone in its task: rumqttc's poll must not be cancelled half-way
    // through a write, so nothing else shares its select.
    crate::sim::detached(async move {
        let mut delay = Duration::from_millis(100);
        loop {
            let ev = tokio::select! {
                _ = loop_cancel.cancelled() => break,
                ev = eventloop.poll() => ev,
            };
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    delay = Duration::from_millis(100);
                    if tx.send(Incoming::Connected).await.is_err() {
                        break;
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if tx
                        .send(Incoming::Message(p.topic, p.payload.to_vec()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                Ok(_) => {}
                Err(_) => {
                    let _ = tx.send(Incoming::Disconnected).await;
                    tokio::select! {
                        _ = loop_cancel.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
        // Give a final offline/DISCONNECT a moment to go out.
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            while let Ok(ev) = eventloop.poll().await {
                if matches!(ev, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                    break;
                }
            }
        })
        .await;
    });
    let device = Device {
        map,
        topic: topic.clone(),
        client,
        control: control.clone(),
        report: Duration::from_secs(opts.report_secs.max(1)),
        connected: false,
        last_available: None,
    };
    crate::sim::detached(device.run(rx, cancel));
    Ok((SimEndpoint::Mqtt { topic }, control))
}

enum Incoming {
    Connected,
    Disconnected,
    Message(String, Vec<u8>),
}

struct Device {
    map: ClimateMap,
    topic: String,
    client: AsyncClient,
    control: ThermostatControl,
    report: Duration,
    connected: bool,
    last_available: Option<bool>,
}

impl Device {
    async fn run(mut self, mut rx: mpsc::Receiver<Incoming>, cancel: CancellationToken) {
        let mut ticker = tokio::time::interval(self.report);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let changed = self.control.changed.clone();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = ticker.tick() => self.publish_state(),
                _ = changed.notified() => {
                    self.publish_availability(false);
                    self.publish_state();
                }
                m = rx.recv() => match m {
                    None => break,
                    Some(Incoming::Connected) => {
                        self.connected = true;
                        self.control.lock().counters.connects += 1;
                        for f in command_filters(&self.map, &self.topic) {
                            let _ = self.client.try_subscribe(f, QoS::AtLeastOnce);
                        }
                        self.publish_availability(true);
                        self.publish_state();
                    }
                    Some(Incoming::Disconnected) => self.connected = false,
                    Some(Incoming::Message(topic, payload)) => self.on_message(&topic, &payload),
                },
            }
        }
        if self.connected {
            self.last_available = None;
            self.control.lock().available = false;
            self.publish_availability(true);
            let _ = self.client.try_disconnect();
        }
    }

    fn publish_availability(&mut self, force: bool) {
        let Some(topic) = self.map.availability_topic_for(&self.topic) else {
            return;
        };
        let available = self.control.lock().available;
        if !self.connected || (!force && self.last_available == Some(available)) {
            return;
        }
        self.last_available = Some(available);
        let word = if available {
            &self.map.online
        } else {
            &self.map.offline
        };
        let payload = word.first().cloned().unwrap_or_default();
        let _ = self
            .client
            .try_publish(topic, QoS::AtLeastOnce, true, payload);
    }

    fn snapshot(&self) -> ClimateSnapshot {
        let mut st = self.control.lock();
        let room = st.room.room();
        let c = st.room.controls();
        let has_power = self.map.fields.power.is_some();
        let on = c.power && c.mode != Mode::Off;
        let mode = if !has_power && !on { Mode::Off } else { c.mode };
        let running = match room.running {
            Running::Off
                if self
                    .map
                    .fields
                    .running
                    .as_ref()
                    .is_some_and(|r| !r.values.contains_key("off")) =>
            {
                "idle"
            }
            r => r.as_str(),
        };
        ClimateSnapshot {
            temperature: Some((room.temp_c * 10.0).round() / 10.0),
            heating_setpoint: Some(c.setpoint_c),
            cooling_setpoint: Some(c.setpoint_c),
            mode: Some(mode.as_str().to_owned()),
            running: Some(running.to_owned()),
            fan: st.fan.clone(),
            power: Some(c.power),
        }
    }

    fn publish_state(&mut self) {
        if !self.connected || !self.control.lock().available {
            return;
        }
        let snap = self.snapshot();
        let payload = {
            let mut st = self.control.lock();
            if st.faults.malformed > 0 {
                st.faults.malformed -= 1;
                b"{\"local_temperature\": 21.5, \"system_mode\": ".to_vec()
            } else if st.faults.unknown_mode > 0 {
                st.faults.unknown_mode -= 1;
                let mut v: serde_json::Value =
                    serde_json::from_slice(&state_payload(&self.map, &snap)).unwrap_or_default();
                if let Some(m) = &self.map.fields.mode {
                    if let Some(slot) = v.pointer_mut(&m.path) {
                        *slot = serde_json::Value::from("emergency_heat");
                    }
                }
                v.to_string().into_bytes()
            } else {
                state_payload(&self.map, &snap)
            }
        };
        for t in self.map.state_topics_for(&self.topic) {
            let _ = self
                .client
                .try_publish(t, QoS::AtLeastOnce, true, payload.clone());
        }
        self.control.lock().counters.states_published += 1;
    }

    fn on_message(&mut self, topic: &str, payload: &[u8]) {
        if self.control.lock().faults.deaf || !self.control.lock().available {
            return;
        }
        if self
            .map
            .get_topic
            .as_deref()
            .map(|t| ClimateMap::topic(t, &self.topic))
            .as_deref()
            == Some(topic)
        {
            self.control.lock().counters.gets += 1;
            self.publish_state();
            return;
        }
        match decode_set(&self.map, &self.topic, topic, payload) {
            Ok(sets) if sets.is_empty() => {}
            Ok(sets) => {
                {
                    let mut st = self.control.lock();
                    st.counters.sets += 1;
                    for s in sets {
                        match s {
                            ClimateSet::Setpoint { celsius, .. } => {
                                let ok = self.map.min_setpoint.is_none_or(|m| celsius >= m)
                                    && self.map.max_setpoint.is_none_or(|m| celsius <= m);
                                if ok {
                                    st.room.set_controls(|c| c.setpoint_c = celsius);
                                } else {
                                    st.counters.bad_sets += 1;
                                }
                            }
                            ClimateSet::Mode(m) => {
                                if let Some(mode) = Mode::parse(&m) {
                                    let has_power = self.map.fields.power.is_some();
                                    st.room.set_controls(|c| {
                                        c.mode = mode;
                                        if !has_power {
                                            c.power = mode != Mode::Off;
                                        }
                                    });
                                }
                            }
                            ClimateSet::Power(on) => st.room.set_controls(|c| c.power = on),
                            ClimateSet::Fan(f) => st.fan = Some(f),
                        }
                    }
                }
                self.publish_state();
            }
            Err(_) => self.control.lock().counters.bad_sets += 1,
        }
    }
}
