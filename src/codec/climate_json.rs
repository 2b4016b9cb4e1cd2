//! JSON-over-MQTT climate devices (zigbee2mqtt thermostats, Tasmota's thermostat driver, …)
//! described by a field map, so a new thermostat family is a new profile, not new code
//! (protocols.md 5.2).
//!
//! This module owns the field map, the merge of state payloads into a [`ClimateState`] (pure:
//! payload in, state and problems out), the set/get payloads and the availability payloads. It
//! must not do I/O and never panics: malformed JSON, wrong types and unknown enum values are
//! [`ProtocolError`]s that the driver counts.
//!
//! Vocabulary leaving this module is avwarden's: modes `off heat cool auto fan dry`, running
//! states `idle heat cool fan dry off`, fan speeds `auto low medium high off`, power `on off`.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value as Json;

use super::ProtocolError;
use crate::model::{Quantity, Value};

/// Canonical HVAC modes (the `hvac_mode` reading and `SetHvacMode` command).
pub const MODES: &[&str] = &["off", "heat", "cool", "auto", "fan", "dry"];
/// Canonical running states (the `hvac_running` reading).
pub const RUNNING: &[&str] = &["idle", "heat", "cool", "fan", "dry", "off"];
/// Canonical fan speeds (the `fan` reading).
pub const FAN_SPEEDS: &[&str] = &["auto", "low", "medium", "high", "off"];
/// Canonical power values.
pub const POWER: &[&str] = &["on", "off"];

/// How set commands are published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SetStyle {
    /// One JSON object `{"<key>": value}` on `set_topic` (zigbee2mqtt `<topic>/set`).
    #[default]
    Json,
    /// The bare value on `set_topic`, whose template names the property with `{key}`
    /// (zigbee2mqtt `<topic>/set/<property>`, Tasmota `cmnd/<topic>/<Command>`).
    Raw,
}

/// A numeric field (temperature, setpoint).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumberField {
    /// JSON pointer into a state payload (`/local_temperature`, `/DS18B20/Temperature`).
    pub path: String,
    /// Name used when setting it; defaults to the last segment of `path`.
    #[serde(default)]
    pub key: Option<String>,
    /// Device value × scale = °C (a device reporting centi-degrees has 0.01).
    #[serde(default = "one")]
    pub scale: f64,
}

/// An enumerated field: canonical name → the device's JSON value (string or number).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnumField {
    pub path: String,
    #[serde(default)]
    pub key: Option<String>,
    pub values: BTreeMap<String, Json>,
}

fn one() -> f64 {
    1.0
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldMap {
    #[serde(default)]
    pub temperature: Option<NumberField>,
    /// The heating (or only) setpoint.
    #[serde(default)]
    pub setpoint: Option<NumberField>,
    /// A separate cooling setpoint, used while the mode is `cool`.
    #[serde(default)]
    pub cooling_setpoint: Option<NumberField>,
    #[serde(default)]
    pub mode: Option<EnumField>,
    #[serde(default)]
    pub running: Option<EnumField>,
    #[serde(default)]
    pub fan: Option<EnumField>,
    /// A separate on/off field (Tasmota `ThermostatModeSet`); without it, power is mode ≠ off.
    #[serde(default)]
    pub power: Option<EnumField>,
}

/// The profile's `[options]` for a JSON climate device. Topic templates use `{topic}` (the
/// device's configured topic) and, in set topics, `{key}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClimateMap {
    #[serde(default = "default_state_topics")]
    pub state_topics: Vec<String>,
    #[serde(default)]
    pub availability_topic: Option<String>,
    #[serde(default = "default_online")]
    pub online: Vec<String>,
    #[serde(default = "default_offline")]
    pub offline: Vec<String>,
    #[serde(default = "default_set_topic")]
    pub set_topic: String,
    #[serde(default)]
    pub set_style: SetStyle,
    /// Where to ask for a fresh state (zigbee2mqtt `{topic}/get`), if the device supports it.
    #[serde(default)]
    pub get_topic: Option<String>,
    /// Setpoint step the device accepts (°C).
    #[serde(default = "default_precision")]
    pub precision: f64,
    #[serde(default)]
    pub min_setpoint: Option<f64>,
    #[serde(default)]
    pub max_setpoint: Option<f64>,
    /// Mode to restore on `power on` when the last mode is unknown.
    #[serde(default = "default_power_on_mode")]
    pub power_on_mode: String,
    pub fields: FieldMap,
}

fn default_state_topics() -> Vec<String> {
    vec!["{topic}".to_owned()]
}
fn default_online() -> Vec<String> {
    vec!["online".to_owned()]
}
fn default_offline() -> Vec<String> {
    vec!["offline".to_owned()]
}
fn default_set_topic() -> String {
    "{topic}/set".to_owned()
}
fn default_precision() -> f64 {
    0.5
}
fn default_power_on_mode() -> String {
    "auto".to_owned()
}

impl ClimateMap {
    /// Parse and check a map from a profile's options table.
    pub fn from_table(options: &toml::Table) -> Result<ClimateMap, String> {
        let map: ClimateMap = toml::Value::Table(options.clone())
            .try_into()
            .map_err(|e: toml::de::Error| e.message().to_owned())?;
        map.check()?;
        Ok(map)
    }

    fn check(&self) -> Result<(), String> {
        if self.state_topics.is_empty() {
            return Err("state_topics: at least one topic is needed".to_owned());
        }
        for t in self
            .state_topics
            .iter()
            .chain(self.availability_topic.iter())
            .chain(std::iter::once(&self.set_topic))
            .chain(self.get_topic.iter())
        {
            if !t.contains("{topic}") {
                return Err(format!("topic template {t:?} does not contain {{topic}}"));
            }
            if t.contains('+') || t.contains('#') {
                return Err(format!("topic template {t:?} must not contain wildcards"));
            }
        }
        if self.set_style == SetStyle::Raw && !self.set_topic.contains("{key}") {
            return Err("set_topic: raw set style needs {key} in the template".to_owned());
        }
        if !(self.precision.is_finite() && self.precision > 0.0) {
            return Err("precision: must be a positive number".to_owned());
        }
        if !MODES.contains(&self.power_on_mode.as_str()) || self.power_on_mode == "off" {
            return Err(format!(
                "power_on_mode: {:?} is not one of heat cool auto fan dry",
                self.power_on_mode
            ));
        }
        let f = &self.fields;
        for (name, nf) in [
            ("temperature", &f.temperature),
            ("setpoint", &f.setpoint),
            ("cooling_setpoint", &f.cooling_setpoint),
        ] {
            if let Some(nf) = nf {
                check_path(name, &nf.path)?;
                if !(nf.scale.is_finite() && nf.scale != 0.0) {
                    return Err(format!("fields.{name}.scale: must be a non-zero number"));
                }
            }
        }
        for (name, ef, vocab) in [
            ("mode", &f.mode, MODES),
            ("running", &f.running, RUNNING),
            ("fan", &f.fan, FAN_SPEEDS),
            ("power", &f.power, POWER),
        ] {
            if let Some(ef) = ef {
                check_path(name, &ef.path)?;
                if ef.values.is_empty() {
                    return Err(format!("fields.{name}.values: empty"));
                }
                for (k, v) in &ef.values {
                    if !vocab.contains(&k.as_str()) {
                        return Err(format!(
                            "fields.{name}.values: {k:?} is not one of {}",
                            vocab.join(" ")
                        ));
                    }
                    if !(v.is_string() || v.is_number() || v.is_boolean()) {
                        return Err(format!(
                            "fields.{name}.values.{k}: must be a string, number or boolean"
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// Expand a topic template for a device topic.
    pub fn topic(template: &str, device_topic: &str) -> String {
        template.replace("{topic}", device_topic)
    }

    pub fn state_topics_for(&self, device_topic: &str) -> Vec<String> {
        self.state_topics
            .iter()
            .map(|t| Self::topic(t, device_topic))
            .collect()
    }

    pub fn availability_topic_for(&self, device_topic: &str) -> Option<String> {
        self.availability_topic
            .as_deref()
            .map(|t| Self::topic(t, device_topic))
    }
}

fn check_path(name: &str, path: &str) -> Result<(), String> {
    if !path.starts_with('/') || path.len() < 2 {
        return Err(format!(
            "fields.{name}.path: {path:?} is not a JSON pointer like \"/local_temperature\""
        ));
    }
    Ok(())
}

fn key_of<'a>(path: &'a str, key: &'a Option<String>) -> &'a str {
    key.as_deref()
        .unwrap_or_else(|| path.rsplit('/').next().unwrap_or(path))
}

/// A JSON number, integral when the value is (so 21.0 goes out as `21`, as devices and the
/// protocols.md vectors expect), otherwise rounded to hundredths.
pub fn json_number(v: f64) -> Json {
    let r = (v * 100.0).round() / 100.0;
    if r.fract() == 0.0 && r.abs() < 9.0e15 {
        Json::from(r as i64)
    } else {
        serde_json::Number::from_f64(r).map_or(Json::Null, Json::Number)
    }
}

/// Text form of a JSON scalar for raw payloads (`off`, `21`, `22.5`).
fn raw_text(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Whether a device value equals a map value: numbers numerically, strings ignoring case
/// (Tasmota answers `ON`, zigbee2mqtt `on`).
fn json_eq(device: &Json, mapped: &Json) -> bool {
    match (device, mapped) {
        (Json::String(a), Json::String(b)) => a.eq_ignore_ascii_case(b),
        (Json::Number(a), Json::Number(b)) => a.as_f64() == b.as_f64(),
        (Json::String(a), Json::Number(b)) | (Json::Number(b), Json::String(a)) => {
            a.trim().parse::<f64>().ok() == b.as_f64()
        }
        (a, b) => a == b,
    }
}

/// What we know of a JSON climate device, merged from every state payload seen.
/// `Some(None)` means the device said the value is unknown (JSON `null`, unknown enum value).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClimateState {
    pub temperature: Option<Option<f64>>,
    pub heating_setpoint: Option<Option<f64>>,
    pub cooling_setpoint: Option<Option<f64>>,
    pub mode: Option<Option<String>>,
    pub running: Option<Option<String>>,
    pub fan: Option<Option<String>>,
    pub power: Option<Option<bool>>,
    /// The last mode other than `off`, restored by `power on`.
    pub last_active_mode: Option<String>,
}

/// What a payload changed: the fields it carried.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Applied {
    pub fields: Vec<&'static str>,
    /// Values that were present but unusable (wrong type, unknown enum value).
    pub problems: Vec<ProtocolError>,
}

impl ClimateState {
    /// Merge one state payload. A payload that is not a JSON object is an error; a field of
    /// the wrong type or with an unknown value is a problem in [`Applied`] and leaves that
    /// reading unknown.
    pub fn apply(&mut self, map: &ClimateMap, payload: &[u8]) -> Result<Applied, ProtocolError> {
        let doc: Json = serde_json::from_slice(payload).map_err(|e| {
            ProtocolError::malformed(format!(
                "state is not JSON ({e}): {}",
                super::printable(payload, 64)
            ))
        })?;
        if !doc.is_object() {
            return Err(ProtocolError::malformed(format!(
                "state is not a JSON object: {}",
                super::printable(payload, 64)
            )));
        }
        let mut out = Applied::default();
        let f = &map.fields;
        if let Some(v) = number(&doc, f.temperature.as_ref(), "temperature", &mut out) {
            self.temperature = Some(v);
        }
        if let Some(v) = number(&doc, f.setpoint.as_ref(), "setpoint", &mut out) {
            self.heating_setpoint = Some(v);
        }
        if let Some(v) = number(
            &doc,
            f.cooling_setpoint.as_ref(),
            "cooling_setpoint",
            &mut out,
        ) {
            self.cooling_setpoint = Some(v);
        }
        if let Some(v) = enumerated(&doc, f.mode.as_ref(), "mode", &mut out) {
            if let Some(m) = v.as_deref().filter(|m| *m != "off") {
                self.last_active_mode = Some(m.to_owned());
            }
            self.mode = Some(v);
        }
        if let Some(v) = enumerated(&doc, f.running.as_ref(), "running", &mut out) {
            self.running = Some(v);
        }
        if let Some(v) = enumerated(&doc, f.fan.as_ref(), "fan", &mut out) {
            self.fan = Some(v);
        }
        if let Some(v) = enumerated(&doc, f.power.as_ref(), "power", &mut out) {
            self.power = Some(v.map(|p| p == "on"));
        }
        Ok(out)
    }

    /// Power as the room sees it: the power field if the device has one, else mode ≠ off.
    pub fn power_on(&self, map: &ClimateMap) -> Option<bool> {
        if map.fields.power.is_some() {
            self.power.flatten()
        } else {
            self.mode.clone().flatten().map(|m| m != "off")
        }
    }

    /// The effective mode: `off` whenever a separate power field says off.
    pub fn effective_mode(&self, map: &ClimateMap) -> Option<Option<String>> {
        if map.fields.power.is_some() && self.power == Some(Some(false)) {
            return Some(Some("off".to_owned()));
        }
        self.mode.clone()
    }

    /// The setpoint in force: the cooling one while cooling, if the device has one.
    pub fn setpoint(&self) -> Option<Option<f64>> {
        let cooling = matches!(self.mode, Some(Some(ref m)) if m == "cool");
        if cooling && self.cooling_setpoint.is_some() {
            self.cooling_setpoint
        } else {
            self.heating_setpoint.or(self.cooling_setpoint)
        }
    }

    /// Readings for everything known: `temperature`, `setpoint` (°C), `hvac_mode`,
    /// `hvac_running`, `fan` (text), `power` (bool).
    pub fn readings(&self, map: &ClimateMap) -> Vec<(Quantity, Value)> {
        let mut r = Vec::new();
        let num = |v: Option<f64>| v.map_or(Value::Unknown, Value::Float);
        let text = |v: Option<String>| v.map_or(Value::Unknown, Value::Text);
        if let Some(t) = self.temperature {
            r.push((Quantity::Temperature, num(t)));
        }
        if let Some(s) = self.setpoint() {
            r.push((Quantity::Setpoint, num(s)));
        }
        if let Some(m) = self.effective_mode(map) {
            r.push((Quantity::HvacMode, text(m)));
        }
        if let Some(x) = self.running.clone() {
            r.push((Quantity::HvacRunning, text(x)));
        }
        if let Some(x) = self.fan.clone() {
            r.push((Quantity::Fan, text(x)));
        }
        if map.fields.power.is_some() || map.fields.mode.is_some() {
            if let Some(p) = self.power_on(map) {
                r.push((Quantity::Power, Value::Bool(p)));
            }
        }
        r
    }
}

fn number(
    doc: &Json,
    field: Option<&NumberField>,
    name: &'static str,
    out: &mut Applied,
) -> Option<Option<f64>> {
    let field = field?;
    let v = doc.pointer(&field.path)?;
    out.fields.push(name);
    match v {
        Json::Null => Some(None),
        Json::Number(n) => match n.as_f64().map(|x| x * field.scale) {
            Some(x) if x.is_finite() => Some(Some(x)),
            _ => {
                out.problems.push(ProtocolError::malformed(format!(
                    "{name} {n} is not a finite number"
                )));
                Some(None)
            }
        },
        other => {
            out.problems.push(ProtocolError::malformed(format!(
                "{name} at {} should be a number, got {}",
                field.path,
                preview(other)
            )));
            Some(None)
        }
    }
}

fn enumerated(
    doc: &Json,
    field: Option<&EnumField>,
    name: &'static str,
    out: &mut Applied,
) -> Option<Option<String>> {
    let field = field?;
    let v = doc.pointer(&field.path)?;
    out.fields.push(name);
    if v.is_null() {
        return Some(None);
    }
    if !(v.is_string() || v.is_number() || v.is_boolean()) {
        out.problems.push(ProtocolError::malformed(format!(
            "{name} at {} should be a string or number, got {}",
            field.path,
            preview(v)
        )));
        return Some(None);
    }
    match field.values.iter().find(|(_, dv)| json_eq(v, dv)) {
        Some((canonical, _)) => Some(Some(canonical.clone())),
        None => {
            out.problems.push(ProtocolError::Unexpected {
                expected: format!("{name} value in the profile's map"),
                got: preview(v),
            });
            Some(None)
        }
    }
}

fn preview(v: &Json) -> String {
    let s = v.to_string();
    if s.len() > 48 {
        let cut = (0..=48).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
        format!("{}…", &s[..cut])
    } else {
        s
    }
}

/// A change to ask of a climate device, in avwarden's vocabulary.
#[derive(Debug, Clone, PartialEq)]
pub enum ClimateSet {
    /// °C; the cooling setpoint when `cooling` and the device has a separate one.
    Setpoint {
        celsius: f64,
        cooling: bool,
    },
    Mode(String),
    Fan(String),
    Power(bool),
}

/// One MQTT message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub topic: String,
    pub payload: Vec<u8>,
}

/// Why a set cannot be expressed for this device.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SetError {
    #[error("this device has no {0} field in its profile")]
    NoField(&'static str),
    #[error("{what} {value:?} is not supported by this device (supported: {supported})")]
    NoValue {
        what: &'static str,
        value: String,
        supported: String,
    },
    #[error("setpoint {celsius} °C is outside the device's range {min}–{max} °C")]
    OutOfRange { celsius: f64, min: f64, max: f64 },
}

/// The messages that carry out a set. Mode `off` on a device with a separate power field, and
/// power on a device without one, are translated (power on restores the last active mode).
pub fn encode_set(
    map: &ClimateMap,
    device_topic: &str,
    set: &ClimateSet,
    state: &ClimateState,
) -> Result<Vec<Outgoing>, SetError> {
    let f = &map.fields;
    match set {
        ClimateSet::Setpoint { celsius, cooling } => {
            let field = match (cooling, &f.cooling_setpoint, &f.setpoint) {
                (true, Some(c), _) => c,
                (_, _, Some(h)) => h,
                (_, Some(c), None) => c,
                (_, None, None) => return Err(SetError::NoField("setpoint")),
            };
            let min = map.min_setpoint.unwrap_or(f64::NEG_INFINITY);
            let max = map.max_setpoint.unwrap_or(f64::INFINITY);
            if !celsius.is_finite() || *celsius < min || *celsius > max {
                return Err(SetError::OutOfRange {
                    celsius: *celsius,
                    min,
                    max,
                });
            }
            let stepped = (celsius / map.precision).round() * map.precision;
            let device_value = json_number(stepped / field.scale);
            Ok(vec![one_set(
                map,
                device_topic,
                key_of(&field.path, &field.key),
                device_value,
            )])
        }
        ClimateSet::Mode(mode) => {
            if mode == "off" {
                if let Some(p) = &f.power {
                    return Ok(vec![enum_set(map, device_topic, p, "power", "off")?]);
                }
            }
            let Some(mf) = &f.mode else {
                return Err(SetError::NoField("mode"));
            };
            let mut out = vec![enum_set(map, device_topic, mf, "mode", mode)?];
            // Choosing a mode on a unit that is off switches it on, as a wall controller does.
            if mode != "off" {
                if let Some(p) = &f.power {
                    if state.power != Some(Some(true)) {
                        out.push(enum_set(map, device_topic, p, "power", "on")?);
                    }
                }
            }
            Ok(out)
        }
        ClimateSet::Fan(speed) => {
            let Some(ff) = &f.fan else {
                return Err(SetError::NoField("fan"));
            };
            Ok(vec![enum_set(map, device_topic, ff, "fan", speed)?])
        }
        ClimateSet::Power(on) => {
            if let Some(p) = &f.power {
                return Ok(vec![enum_set(
                    map,
                    device_topic,
                    p,
                    "power",
                    if *on { "on" } else { "off" },
                )?]);
            }
            let Some(mf) = &f.mode else {
                return Err(SetError::NoField("power"));
            };
            let mode = if *on {
                state
                    .last_active_mode
                    .clone()
                    .filter(|m| mf.values.contains_key(m))
                    .unwrap_or_else(|| map.power_on_mode.clone())
            } else {
                "off".to_owned()
            };
            Ok(vec![enum_set(map, device_topic, mf, "mode", &mode)?])
        }
    }
}

fn enum_set(
    map: &ClimateMap,
    device_topic: &str,
    field: &EnumField,
    what: &'static str,
    canonical: &str,
) -> Result<Outgoing, SetError> {
    let v = field
        .values
        .get(canonical)
        .ok_or_else(|| SetError::NoValue {
            what,
            value: canonical.to_owned(),
            supported: field.values.keys().cloned().collect::<Vec<_>>().join(" "),
        })?;
    Ok(one_set(
        map,
        device_topic,
        key_of(&field.path, &field.key),
        v.clone(),
    ))
}

fn one_set(map: &ClimateMap, device_topic: &str, key: &str, value: Json) -> Outgoing {
    let topic = ClimateMap::topic(&map.set_topic, device_topic).replace("{key}", key);
    let payload = match map.set_style {
        SetStyle::Json => {
            let mut obj = serde_json::Map::new();
            obj.insert(key.to_owned(), value);
            Json::Object(obj).to_string().into_bytes()
        }
        SetStyle::Raw => raw_text(&value).into_bytes(),
    };
    Outgoing { topic, payload }
}

/// A request for a fresh state (zigbee2mqtt `/get` with `{"<property>":""}` per field).
pub fn encode_get(map: &ClimateMap, device_topic: &str) -> Option<Outgoing> {
    let template = map.get_topic.as_deref()?;
    let f = &map.fields;
    let mut obj = serde_json::Map::new();
    let numbers = [&f.temperature, &f.setpoint, &f.cooling_setpoint];
    for nf in numbers.into_iter().flatten() {
        obj.insert(key_of(&nf.path, &nf.key).to_owned(), Json::from(""));
    }
    let enums = [&f.mode, &f.running, &f.fan, &f.power];
    for ef in enums.into_iter().flatten() {
        obj.insert(key_of(&ef.path, &ef.key).to_owned(), Json::from(""));
    }
    Some(Outgoing {
        topic: ClimateMap::topic(template, device_topic),
        payload: Json::Object(obj).to_string().into_bytes(),
    })
}

/// Parse an availability payload: legacy `online`/`offline` or `{"state":"online"}`
/// (protocols.md 5.2: the format changed across zigbee2mqtt versions, so both are accepted).
pub fn parse_availability(map: &ClimateMap, payload: &[u8]) -> Result<bool, ProtocolError> {
    let text = std::str::from_utf8(payload)
        .map_err(|_| ProtocolError::malformed("availability payload is not UTF-8"))?
        .trim();
    let word = match serde_json::from_str::<Json>(text) {
        Ok(Json::Object(o)) => match o.get("state") {
            Some(Json::String(s)) => s.clone(),
            _ => {
                return Err(ProtocolError::malformed(format!(
                    "availability object without a \"state\" string: {}",
                    super::printable(payload, 64)
                )))
            }
        },
        Ok(Json::String(s)) => s,
        _ => text.to_owned(),
    };
    if map.online.iter().any(|o| o.eq_ignore_ascii_case(&word)) {
        Ok(true)
    } else if map.offline.iter().any(|o| o.eq_ignore_ascii_case(&word)) {
        Ok(false)
    } else {
        Err(ProtocolError::Unexpected {
            expected: "online or offline".to_owned(),
            got: super::printable(payload, 64),
        })
    }
}

impl NumberField {
    /// The name used to set this field.
    pub fn key(&self) -> &str {
        key_of(&self.path, &self.key)
    }
}

impl EnumField {
    pub fn key(&self) -> &str {
        key_of(&self.path, &self.key)
    }

    /// The avwarden name of a device value.
    pub fn canonical_of(&self, device: &Json) -> Option<&str> {
        self.values
            .iter()
            .find(|(_, v)| json_eq(device, v))
            .map(|(k, _)| k.as_str())
    }
}

/// A device-side view of a climate device's state, for building state payloads (simulators).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClimateSnapshot {
    pub temperature: Option<f64>,
    pub heating_setpoint: Option<f64>,
    pub cooling_setpoint: Option<f64>,
    pub mode: Option<String>,
    pub running: Option<String>,
    pub fan: Option<String>,
    pub power: Option<bool>,
}

/// Put `value` at a JSON pointer inside `doc`, creating objects on the way.
fn set_pointer(doc: &mut Json, path: &str, value: Json) {
    let mut cur = doc;
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        let key = part.replace("~1", "/").replace("~0", "~");
        if !cur.is_object() {
            *cur = Json::Object(serde_json::Map::new());
        }
        let Json::Object(obj) = cur else { return };
        if i + 1 == parts.len() {
            obj.insert(key, value);
            return;
        }
        cur = obj
            .entry(key)
            .or_insert_with(|| Json::Object(serde_json::Map::new()));
    }
}

/// The state payload a device with this map would publish. Values the map cannot express
/// (a running state it has no name for) are left out.
pub fn state_payload(map: &ClimateMap, s: &ClimateSnapshot) -> Vec<u8> {
    let mut doc = Json::Object(serde_json::Map::new());
    let f = &map.fields;
    let numbers = [
        (&f.temperature, s.temperature),
        (&f.setpoint, s.heating_setpoint),
        (&f.cooling_setpoint, s.cooling_setpoint),
    ];
    for (field, value) in numbers {
        if let (Some(field), Some(v)) = (field, value) {
            set_pointer(&mut doc, &field.path, json_number(v / field.scale));
        }
    }
    let power = s.power.map(|p| if p { "on" } else { "off" }.to_owned());
    let enums = [
        (&f.mode, &s.mode),
        (&f.running, &s.running),
        (&f.fan, &s.fan),
        (&f.power, &power),
    ];
    for (field, value) in enums {
        if let (Some(field), Some(v)) = (field, value) {
            if let Some(dv) = field.values.get(v) {
                set_pointer(&mut doc, &field.path, dv.clone());
            }
        }
    }
    doc.to_string().into_bytes()
}

/// What a set message asks for (the device side of [`encode_set`]): JSON objects on the set
/// topic, or a bare value on the property's set topic. `Ok(empty)` when the topic is not a
/// set topic of this device.
pub fn decode_set(
    map: &ClimateMap,
    device_topic: &str,
    topic: &str,
    payload: &[u8],
) -> Result<Vec<ClimateSet>, ProtocolError> {
    let template = ClimateMap::topic(&map.set_topic, device_topic);
    let mut pairs: Vec<(String, Json)> = Vec::new();
    match map.set_style {
        SetStyle::Json => {
            if topic != template {
                return Ok(Vec::new());
            }
            let doc: Json = serde_json::from_slice(payload)
                .map_err(|e| ProtocolError::malformed(format!("set is not JSON: {e}")))?;
            let Json::Object(obj) = doc else {
                return Err(ProtocolError::malformed("set is not a JSON object"));
            };
            pairs.extend(obj);
        }
        SetStyle::Raw => {
            let Some(key) = set_key_of(&template, topic) else {
                return Ok(Vec::new());
            };
            let text = std::str::from_utf8(payload)
                .map_err(|_| ProtocolError::malformed("set payload is not UTF-8"))?
                .trim()
                .to_owned();
            let value = text
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map_or(Json::String(text), Json::Number);
            pairs.push((key, value));
        }
    }
    let f = &map.fields;
    let mut out = Vec::new();
    for (key, value) in pairs {
        let number = |field: &NumberField| -> Result<f64, ProtocolError> {
            value
                .as_f64()
                .or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()))
                .map(|v| v * field.scale)
                .filter(|v| v.is_finite())
                .ok_or_else(|| {
                    ProtocolError::malformed(format!("{key} should be a number, got {value}"))
                })
        };
        let canonical = |field: &EnumField| -> Result<String, ProtocolError> {
            field
                .canonical_of(&value)
                .map(str::to_owned)
                .ok_or_else(|| ProtocolError::Unexpected {
                    expected: format!("a {key} value in the map"),
                    got: preview(&value),
                })
        };
        if let Some(sp) = f.setpoint.as_ref().filter(|x| x.key() == key) {
            out.push(ClimateSet::Setpoint {
                celsius: number(sp)?,
                cooling: false,
            });
        } else if let Some(sp) = f.cooling_setpoint.as_ref().filter(|x| x.key() == key) {
            out.push(ClimateSet::Setpoint {
                celsius: number(sp)?,
                cooling: true,
            });
        } else if let Some(m) = f.mode.as_ref().filter(|x| x.key() == key) {
            out.push(ClimateSet::Mode(canonical(m)?));
        } else if let Some(p) = f.power.as_ref().filter(|x| x.key() == key) {
            out.push(ClimateSet::Power(canonical(p)? == "on"));
        } else if let Some(fan) = f.fan.as_ref().filter(|x| x.key() == key) {
            out.push(ClimateSet::Fan(canonical(fan)?));
        } else {
            return Err(ProtocolError::Unexpected {
                expected: "a settable field of this device".to_owned(),
                got: key,
            });
        }
    }
    Ok(out)
}

/// The `{key}` part of a set topic, if `topic` fits the template.
fn set_key_of(template: &str, topic: &str) -> Option<String> {
    let (pre, post) = template.split_once("{key}")?;
    let rest = topic.strip_prefix(pre)?.strip_suffix(post)?;
    (!rest.is_empty() && !rest.contains('/')).then(|| rest.to_owned())
}

/// Topic filters a device with this map listens on for sets and gets.
pub fn command_filters(map: &ClimateMap, device_topic: &str) -> Vec<String> {
    let mut out = vec![ClimateMap::topic(&map.set_topic, device_topic).replace("{key}", "+")];
    out.extend(
        map.get_topic
            .as_deref()
            .map(|t| ClimateMap::topic(t, device_topic)),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn z2m_map() -> ClimateMap {
        let text = r#"
            availability_topic = "{topic}/availability"
            get_topic = "{topic}/get"
            min_setpoint = 5.0
            max_setpoint = 30.0
            [fields.temperature]
            path = "/local_temperature"
            [fields.setpoint]
            path = "/occupied_heating_setpoint"
            [fields.cooling_setpoint]
            path = "/occupied_cooling_setpoint"
            [fields.mode]
            path = "/system_mode"
            values = { off = "off", heat = "heat", cool = "cool", auto = "auto", dry = "dry", fan = "fan_only" }
            [fields.running]
            path = "/running_state"
            values = { idle = "idle", heat = "heat", cool = "cool" }
        "#;
        ClimateMap::from_table(&toml::from_str(text).unwrap()).unwrap()
    }

    const TOPIC: &str = "zigbee2mqtt/room101_thermostat";

    // protocols.md 5.2: the zigbee2mqtt state vector.
    #[test]
    fn vector_z2m_state() {
        let map = z2m_map();
        assert_eq!(map.state_topics_for(TOPIC), vec![TOPIC.to_owned()]);
        let mut s = ClimateState::default();
        let payload = br#"{"local_temperature":21.5,"occupied_heating_setpoint":22,"system_mode":"heat","running_state":"heat","linkquality":120}"#;
        let applied = s.apply(&map, payload).unwrap();
        assert!(applied.problems.is_empty());
        let r = s.readings(&map);
        let get = |q: Quantity| r.iter().find(|x| x.0 == q).map(|x| x.1.clone());
        assert_eq!(get(Quantity::Temperature), Some(Value::Float(21.5)));
        assert_eq!(get(Quantity::Setpoint), Some(Value::Float(22.0)));
        assert_eq!(get(Quantity::HvacMode), Some(Value::Text("heat".into())));
        assert_eq!(get(Quantity::HvacRunning), Some(Value::Text("heat".into())));
        assert_eq!(get(Quantity::Power), Some(Value::Bool(true)));
    }

    // protocols.md 5.2: `{"occupied_heating_setpoint":21}` on `<topic>/set`.
    #[test]
    fn vector_z2m_set_json() {
        let map = z2m_map();
        let out = encode_set(
            &map,
            TOPIC,
            &ClimateSet::Setpoint {
                celsius: 21.0,
                cooling: false,
            },
            &ClimateState::default(),
        )
        .unwrap();
        assert_eq!(
            out,
            vec![Outgoing {
                topic: "zigbee2mqtt/room101_thermostat/set".into(),
                payload: br#"{"occupied_heating_setpoint":21}"#.to_vec(),
            }]
        );
    }

    // protocols.md 5.2: raw `off` on `<topic>/set/system_mode`.
    #[test]
    fn vector_z2m_set_raw_property() {
        let mut map = z2m_map();
        map.set_style = SetStyle::Raw;
        map.set_topic = "{topic}/set/{key}".into();
        let out = encode_set(
            &map,
            TOPIC,
            &ClimateSet::Mode("off".into()),
            &ClimateState::default(),
        )
        .unwrap();
        assert_eq!(
            out,
            vec![Outgoing {
                topic: "zigbee2mqtt/room101_thermostat/set/system_mode".into(),
                payload: b"off".to_vec(),
            }]
        );
    }

    #[test]
    fn setpoint_rounding_range_and_cooling() {
        let map = z2m_map();
        let st = ClimateState::default();
        let enc = |c: f64, cooling| {
            encode_set(
                &map,
                TOPIC,
                &ClimateSet::Setpoint {
                    celsius: c,
                    cooling,
                },
                &st,
            )
        };
        assert_eq!(
            enc(22.4, false).unwrap()[0].payload,
            br#"{"occupied_heating_setpoint":22.5}"#.to_vec()
        );
        assert_eq!(
            enc(24.0, true).unwrap()[0].payload,
            br#"{"occupied_cooling_setpoint":24}"#.to_vec()
        );
        assert!(matches!(enc(31.0, false), Err(SetError::OutOfRange { .. })));
        assert!(matches!(
            enc(f64::NAN, false),
            Err(SetError::OutOfRange { .. })
        ));
    }

    #[test]
    fn fan_mode_name_maps_to_fan_only_and_power_restores_last_mode() {
        let map = z2m_map();
        let mut st = ClimateState::default();
        let out = encode_set(&map, TOPIC, &ClimateSet::Mode("fan".into()), &st).unwrap();
        assert_eq!(out[0].payload, br#"{"system_mode":"fan_only"}"#.to_vec());
        st.apply(&map, br#"{"system_mode":"cool"}"#).unwrap();
        st.apply(&map, br#"{"system_mode":"off"}"#).unwrap();
        let out = encode_set(&map, TOPIC, &ClimateSet::Power(true), &st).unwrap();
        assert_eq!(out[0].payload, br#"{"system_mode":"cool"}"#.to_vec());
        assert!(matches!(
            encode_set(&map, TOPIC, &ClimateSet::Mode("turbo".into()), &st),
            Err(SetError::NoValue { .. })
        ));
        assert!(matches!(
            encode_set(&map, TOPIC, &ClimateSet::Fan("low".into()), &st),
            Err(SetError::NoField("fan"))
        ));
    }

    #[test]
    fn bad_payloads_are_errors_or_problems_never_panics() {
        let map = z2m_map();
        let mut s = ClimateState::default();
        assert!(s.apply(&map, b"{not json").is_err());
        assert!(s.apply(&map, b"[1,2]").is_err());
        assert!(s.apply(&map, b"").is_err());
        let a = s
            .apply(
                &map,
                br#"{"local_temperature":"warm","system_mode":"turbo","running_state":{"x":1}}"#,
            )
            .unwrap();
        assert_eq!(a.problems.len(), 3, "{:?}", a.problems);
        assert_eq!(s.temperature, Some(None));
        assert_eq!(s.mode, Some(None));
        let r = s.readings(&map);
        assert!(r
            .iter()
            .any(|x| x.0 == Quantity::Temperature && x.1 == Value::Unknown));
        // null is the device saying "unknown", not a fault.
        let a = s.apply(&map, br#"{"local_temperature":null}"#).unwrap();
        assert!(a.problems.is_empty());
    }

    #[test]
    fn availability_both_formats() {
        let map = z2m_map();
        assert_eq!(parse_availability(&map, b"online"), Ok(true));
        assert_eq!(parse_availability(&map, b"offline"), Ok(false));
        assert_eq!(parse_availability(&map, br#"{"state":"online"}"#), Ok(true));
        assert_eq!(
            parse_availability(&map, br#"{"state":"offline"}"#),
            Ok(false)
        );
        assert!(parse_availability(&map, b"maybe").is_err());
        assert!(parse_availability(&map, br#"{"status":1}"#).is_err());
        assert!(parse_availability(&map, &[0xff, 0xfe]).is_err());
    }

    #[test]
    fn get_payload_names_every_field() {
        let out = encode_get(&z2m_map(), TOPIC).unwrap();
        assert_eq!(out.topic, "zigbee2mqtt/room101_thermostat/get");
        let v: Json = serde_json::from_slice(&out.payload).unwrap();
        assert_eq!(v["local_temperature"], Json::from(""));
        assert_eq!(v["system_mode"], Json::from(""));
    }

    #[test]
    fn map_validation_rejects_nonsense() {
        let bad = [
            r#"fields = {} 
               state_topics = []"#,
            r#"set_style = "raw"
               fields = {}"#,
            r#"[fields.mode]
               path = "system_mode"
               values = { heat = "heat" }"#,
            r#"[fields.mode]
               path = "/system_mode"
               values = { boost = "boost" }"#,
            r#"state_topics = ["zigbee2mqtt/#"]
               fields = {}"#,
        ];
        for t in bad {
            assert!(
                ClimateMap::from_table(&toml::from_str(t).unwrap()).is_err(),
                "{t}"
            );
        }
    }

    #[test]
    fn set_roundtrips_through_the_device_side() {
        let mut map = z2m_map();
        let st = ClimateState::default();
        for style in [SetStyle::Json, SetStyle::Raw] {
            map.set_style = style;
            map.set_topic = match style {
                SetStyle::Json => "{topic}/set".into(),
                SetStyle::Raw => "{topic}/set/{key}".into(),
            };
            for set in [
                ClimateSet::Setpoint {
                    celsius: 21.5,
                    cooling: false,
                },
                ClimateSet::Setpoint {
                    celsius: 24.0,
                    cooling: true,
                },
                ClimateSet::Mode("fan".into()),
                ClimateSet::Mode("off".into()),
            ] {
                let out = encode_set(&map, TOPIC, &set, &st).unwrap();
                let back = decode_set(&map, TOPIC, &out[0].topic, &out[0].payload).unwrap();
                assert_eq!(back, vec![set.clone()], "{style:?}");
            }
            assert_eq!(
                decode_set(&map, TOPIC, "other/topic", b"1").unwrap(),
                vec![]
            );
        }
        map.set_style = SetStyle::Json;
        map.set_topic = "{topic}/set".into();
        let set_topic = format!("{TOPIC}/set");
        assert!(decode_set(&map, TOPIC, &set_topic, b"{oops").is_err());
        assert!(decode_set(&map, TOPIC, &set_topic, br#"{"system_mode":"turbo"}"#).is_err());
        assert!(decode_set(
            &map,
            TOPIC,
            &set_topic,
            br#"{"occupied_heating_setpoint":"hot"}"#
        )
        .is_err());
        assert!(decode_set(&map, TOPIC, &set_topic, br#"{"child_lock":"LOCK"}"#).is_err());
    }

    #[test]
    fn state_payload_roundtrips_with_nested_paths() {
        let mut map = z2m_map();
        map.fields.temperature = Some(NumberField {
            path: "/DS18B20/Temperature".into(),
            key: None,
            scale: 1.0,
        });
        let snap = ClimateSnapshot {
            temperature: Some(23.4),
            heating_setpoint: Some(21.0),
            mode: Some("fan".into()),
            running: Some("dry".into()), // not in the map: left out
            ..Default::default()
        };
        let payload = state_payload(&map, &snap);
        let v: Json = serde_json::from_slice(&payload).unwrap();
        assert_eq!(v["DS18B20"]["Temperature"], json_number(23.4));
        assert_eq!(v["system_mode"], Json::from("fan_only"));
        assert!(v.get("running_state").is_none());
        let mut st = ClimateState::default();
        st.apply(&map, &payload).unwrap();
        assert_eq!(st.temperature, Some(Some(23.4)));
        assert_eq!(st.mode, Some(Some("fan".into())));
        assert_eq!(
            command_filters(&map, TOPIC),
            vec![format!("{TOPIC}/set"), format!("{TOPIC}/get")]
        );
    }

    proptest::proptest! {
        #[test]
        fn apply_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let map = z2m_map();
            let mut s = ClimateState::default();
            let _ = s.apply(&map, &bytes);
            let _ = parse_availability(&map, &bytes);
        }
    }
}
