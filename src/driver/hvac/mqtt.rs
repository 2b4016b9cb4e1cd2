//! JSON-over-MQTT thermostats (zigbee2mqtt climate devices, Tasmota's thermostat driver, …)
//! through the daemon's one MQTT client, with the field map from the profile
//! ([`ClimateMap`], protocols.md 5.2).
//!
//! The device's state arrives on its state topics (retained or on request through a `get`
//! topic); its availability topic says whether the bridge can reach it. A set is published and
//! then confirmed by the state the device sends back. Malformed JSON, wrong types and unknown
//! enumeration values are counted as bad input and leave the reading unknown. The driver must
//! not own a broker connection: it speaks topics and payloads on the bus its link hands it
//! ([`Topics`]), and never names the client behind it.

use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::{check_mode, merged_options, option_error};
use crate::codec::climate_json::{
    encode_get, encode_set, parse_availability, ClimateMap, ClimateSet, ClimateState, Outgoing,
};
use crate::driver::{
    DriverError, Link, LinkError, Observer, TopicError, TopicFeed, TopicMessage, Topics,
};
use crate::model::{DeviceCommand, Point, Quantity, Value};
use crate::profile::{Profile, ProfileError};
use std::sync::Arc;

/// Messages buffered per device between two reads of the driver.
const QUEUE: usize = 64;

pub struct MqttClimateDriver {
    map: ClimateMap,
    /// The bus of the open session (from the link).
    client: Option<Arc<dyn Topics>>,
    reply_timeout: Duration,
    topic: String,
    sub: Option<Box<dyn TopicFeed>>,
    state: ClimateState,
    /// A `get` went out and no state has come back since.
    get_outstanding: bool,
}

/// A copy before any session: the subscription is the session's and is made by `open`.
impl Clone for MqttClimateDriver {
    fn clone(&self) -> Self {
        Self {
            map: self.map.clone(),
            client: self.client.clone(),
            reply_timeout: self.reply_timeout,
            topic: self.topic.clone(),
            sub: None,
            state: self.state.clone(),
            get_outstanding: false,
        }
    }
}

impl MqttClimateDriver {
    pub fn new(profile: &Profile, settings: &toml::Table) -> Result<Self, ProfileError> {
        let map = ClimateMap::from_table(&merged_options(profile, settings))
            .map_err(|m| option_error(profile, m))?;
        Ok(Self {
            map,
            client: None,
            reply_timeout: profile.timing.reply_timeout,
            topic: String::new(),
            sub: None,
            state: ClimateState::default(),
            get_outstanding: false,
        })
    }

    fn client(&self) -> Result<&Arc<dyn Topics>, DriverError> {
        self.client.as_ref().ok_or_else(|| {
            DriverError::Link(LinkError::Open(format!(
                "connect to mqtt {} failed: no mqtt client: add an [mqtt] section to the site config",
                self.topic
            )))
        })
    }

    fn publish(&self, out: &Outgoing) -> Result<(), DriverError> {
        self.client()?
            .publish(&out.topic, out.payload.clone(), false)
            .map_err(|e| match e {
                TopicError::NotConnected | TopicError::Stopped => DriverError::Unreachable,
                TopicError::QueueFull => DriverError::Busy {
                    command: "publish".to_owned(),
                    reason: e.to_string(),
                    ready_in: None,
                },
                other => DriverError::Refused {
                    command: "publish".to_owned(),
                    reason: other.to_string(),
                },
            })
    }

    fn request_state(&mut self) -> Result<(), DriverError> {
        if let Some(get) = encode_get(&self.map, &self.topic) {
            self.publish(&get)?;
            self.get_outstanding = true;
        }
        Ok(())
    }

    /// Apply one message. Returns the state fields it carried (none for availability).
    fn handle(
        &mut self,
        obs: &mut Observer,
        msg: &TopicMessage,
    ) -> Result<Vec<&'static str>, DriverError> {
        if self.map.availability_topic_for(&self.topic).as_deref() == Some(msg.topic.as_str()) {
            return match parse_availability(&self.map, &msg.payload) {
                Ok(true) => Ok(Vec::new()),
                Ok(false) => Err(DriverError::Link(LinkError::Open(format!(
                    "connect to {} failed: the availability topic reports the device offline",
                    msg.topic
                )))),
                Err(e) => Err(DriverError::Protocol(e)),
            };
        }
        let applied = self.state.apply(&self.map, &msg.payload)?;
        for p in &applied.problems {
            obs.bad_input(p);
        }
        if !applied.fields.is_empty() {
            self.get_outstanding = false;
            obs.contact();
            for (quantity, value) in self.state.readings(&self.map) {
                obs.reading(Point::device(quantity), value);
            }
        }
        Ok(applied.fields)
    }

    /// Wait until a state message arrives for which `done` holds. A device that keeps
    /// answering with something else has refused; one that says nothing has timed out.
    async fn wait_until(
        &mut self,
        obs: &mut Observer,
        command: &str,
        done: impl Fn(&ClimateState, &ClimateMap) -> bool,
    ) -> Result<(), DriverError> {
        let deadline = Instant::now() + self.reply_timeout;
        let mut answered = false;
        loop {
            let sub = self.sub.as_mut().ok_or(DriverError::Unreachable)?;
            let msg = match tokio::time::timeout_at(deadline, sub.recv()).await {
                Err(_) if answered => {
                    return Err(DriverError::Refused {
                        command: command.to_owned(),
                        reason: "the device kept reporting its previous state".to_owned(),
                    })
                }
                Err(_) => {
                    return Err(DriverError::Timeout {
                        waited_ms: self.reply_timeout.as_millis() as u64,
                    })
                }
                Ok(None) => return Err(LinkError::Closed.into()),
                Ok(Some(m)) => m,
            };
            match self.handle(obs, &msg) {
                Ok(got) if !got.is_empty() => {
                    answered = true;
                    if done(&self.state, &self.map) {
                        return Ok(());
                    }
                }
                Ok(_) => {}
                Err(DriverError::Protocol(e)) => obs.bad_input(&e),
                Err(e) => return Err(e),
            }
        }
    }

    async fn set(
        &mut self,
        obs: &mut Observer,
        command: &'static str,
        set: ClimateSet,
    ) -> Result<(), DriverError> {
        let out = encode_set(&self.map, &self.topic, &set, &self.state).map_err(|e| {
            DriverError::Rejected {
                command: command.to_owned(),
                reason: e.to_string(),
            }
        })?;
        for o in &out {
            self.publish(o)?;
        }
        let precision = self.map.precision;
        let setpoint = match &set {
            ClimateSet::Setpoint { cooling, .. } => Some(*cooling),
            _ => None,
        };
        // Confirmed by the state the device reports back, not by any state that happens by.
        self.wait_until(obs, command, move |st, map| match &set {
            ClimateSet::Setpoint { celsius, cooling } => {
                let want = (celsius / precision).round() * precision;
                let got = setpoint_of(st, map, *cooling);
                got.is_some_and(|g| (g - want).abs() <= precision / 2.0)
            }
            ClimateSet::Mode(m) => st.effective_mode(map).flatten().as_deref() == Some(m.as_str()),
            ClimateSet::Power(on) => st.power_on(map) == Some(*on),
            ClimateSet::Fan(f) => st.fan.clone().flatten().as_deref() == Some(f.as_str()),
        })
        .await?;
        // The thermostat's own steps (0.5 °C) decide what it holds: say that value.
        if let Some(c) = setpoint.and_then(|cooling| setpoint_of(&self.state, &self.map, cooling)) {
            obs.applied(Point::device(Quantity::Setpoint), Value::Float(c));
        }
        Ok(())
    }
}

/// The setpoint a set addressed: the cooling one when asked and the device has it, else the
/// (heating) setpoint, else the only one there is.
fn setpoint_of(st: &ClimateState, map: &ClimateMap, cooling: bool) -> Option<f64> {
    if cooling && map.fields.cooling_setpoint.is_some() {
        st.cooling_setpoint.flatten()
    } else if map.fields.setpoint.is_some() {
        st.heating_setpoint.flatten()
    } else {
        st.cooling_setpoint.flatten()
    }
}

#[async_trait]
impl crate::driver::Driver for MqttClimateDriver {
    fn name(&self) -> &'static str {
        "mqtt"
    }

    fn fresh(&self) -> Option<Box<dyn crate::driver::Driver>> {
        Some(Box::new(self.clone()))
    }

    async fn open(&mut self, link: &mut Link, obs: &mut Observer) -> Result<(), DriverError> {
        link.take_fresh();
        let Some((topic, bus)) = link.topic() else {
            return Err(LinkError::Open("an mqtt thermostat needs an mqtt link".to_owned()).into());
        };
        self.topic = topic.to_owned();
        if !self.client.as_ref().is_some_and(|c| Arc::ptr_eq(c, bus)) {
            // A subscription belongs to the bus it was made on.
            self.sub = None;
            self.client = Some(bus.clone());
        }
        let client = self.client()?.clone();
        // At daemon start the client connects alongside the devices: give it a moment rather
        // than reporting a thermostat unreachable for a race with our own broker connection.
        if !client.is_connected() && !client.wait_connected(Duration::from_secs(5)).await {
            return Err(LinkError::Open(format!(
                "connect to mqtt broker {} failed: not connected to the broker",
                client.broker()
            ))
            .into());
        }
        if self.sub.is_none() {
            let mut filters = self.map.state_topics_for(&self.topic);
            filters.extend(self.map.availability_topic_for(&self.topic));
            let refs: Vec<&str> = filters.iter().map(String::as_str).collect();
            let sub = client
                .subscribe(&refs, QUEUE)
                .map_err(|e| DriverError::Refused {
                    command: "subscribe".to_owned(),
                    reason: e.to_string(),
                })?;
            self.sub = Some(sub);
        }
        let topic = self.topic.clone();
        obs.identity(|id| {
            id.extra.insert("mqtt_topic".to_owned(), topic);
        });
        Ok(())
    }

    async fn read_all(&mut self, link: &mut Link, obs: &mut Observer) -> Result<(), DriverError> {
        let _ = link;
        self.request_state()?;
        self.wait_until(obs, "read", |_, _| true).await
    }

    async fn poll(&mut self, _link: &mut Link, obs: &mut Observer) -> Result<(), DriverError> {
        let connected = self.client.as_ref().is_some_and(|c| c.is_connected());
        // A request that went unanswered for a whole poll interval is a missed poll, and the
        // comms monitor judges the silence. Devices without a get topic only report on change,
        // so their silence says nothing: while the broker is up (its availability topic would
        // say the device went offline) they count as heard.
        if connected && encode_get(&self.map, &self.topic).is_none() {
            obs.contact();
        }
        let missed = self.get_outstanding || !connected;
        if connected {
            self.request_state()?;
        }
        if missed {
            return Err(DriverError::Timeout {
                waited_ms: self.reply_timeout.as_millis() as u64,
            });
        }
        Ok(())
    }

    async fn execute(
        &mut self,
        _link: &mut Link,
        obs: &mut Observer,
        command: &DeviceCommand,
    ) -> Result<(), DriverError> {
        match command {
            DeviceCommand::SetSetpoint { celsius } => {
                let cooling = matches!(self.state.effective_mode(&self.map), Some(Some(ref m)) if m == "cool");
                self.set(
                    obs,
                    "set_setpoint",
                    ClimateSet::Setpoint {
                        celsius: *celsius,
                        cooling,
                    },
                )
                .await
            }
            DeviceCommand::SetHvacMode { mode } => {
                check_mode(mode)?;
                self.set(obs, "set_hvac_mode", ClimateSet::Mode(mode.clone()))
                    .await
            }
            DeviceCommand::Power { on } => self.set(obs, "power", ClimateSet::Power(*on)).await,
            DeviceCommand::Refresh => {
                self.request_state()?;
                if self.map.get_topic.is_some() {
                    self.wait_until(obs, "refresh", |_, _| true).await
                } else {
                    Ok(())
                }
            }
            other => Err(DriverError::Unsupported {
                driver: "mqtt",
                command: other.name(),
            }),
        }
    }

    async fn listen(&mut self, _link: &mut Link, obs: &mut Observer) -> Result<(), DriverError> {
        let Some(sub) = self.sub.as_mut() else {
            return std::future::pending().await;
        };
        // Cancel-safe: a message is either taken whole or left in the channel.
        let Some(msg) = sub.recv().await else {
            return Err(LinkError::Closed.into());
        };
        self.handle(obs, &msg).map(|_| ())
    }

    async fn close(&mut self, _link: &mut Link, _obs: &mut Observer) {
        self.sub = None;
        self.get_outstanding = false;
    }
}
