//! Home Assistant MQTT discovery payloads (protocols.md 5.2): config topics, climate and sensor
//! configs, and the `homeassistant/status` birth message.
//!
//! This module only builds and parses payloads; publishing them (retained, again when HA
//! announces `online`) is the MQTT-out task's job. Field order follows the protocols.md
//! vectors, so the bytes match them exactly.

use serde::{Serialize, Serializer};

use super::ProtocolError;

/// The default discovery prefix.
pub const DEFAULT_PREFIX: &str = "homeassistant";

/// HA's topic for its own birth and last-will messages.
pub fn status_topic(prefix: &str) -> String {
    format!("{prefix}/status")
}

/// Whether an id may appear in a discovery topic: `[a-zA-Z0-9_-]` (protocols.md 5.2).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `<prefix>/<component>/[<node_id>/]<object_id>/config`.
pub fn config_topic(
    prefix: &str,
    component: &str,
    node_id: Option<&str>,
    object_id: &str,
) -> Result<String, String> {
    for (what, id) in [
        ("component", Some(component)),
        ("node_id", node_id),
        ("object_id", Some(object_id)),
    ] {
        if let Some(id) = id {
            if !valid_id(id) {
                return Err(format!(
                    "{what} {id:?} may only contain a-z, A-Z, 0-9, _ and -"
                ));
            }
        }
    }
    Ok(match node_id {
        Some(n) => format!("{prefix}/{component}/{n}/{object_id}/config"),
        None => format!("{prefix}/{component}/{object_id}/config"),
    })
}

/// Parse HA's birth/last-will payload: `online` → true, `offline` → false.
pub fn parse_status(payload: &[u8]) -> Result<bool, ProtocolError> {
    match std::str::from_utf8(payload).map(str::trim) {
        Ok("online") => Ok(true),
        Ok("offline") => Ok(false),
        _ => Err(ProtocolError::Unexpected {
            expected: "online or offline".to_owned(),
            got: super::printable(payload, 32),
        }),
    }
}

/// HA's name for an avwarden mode (`fan` is `fan_only` there).
pub fn ha_mode(mode: &str) -> &str {
    match mode {
        "fan" => "fan_only",
        other => other,
    }
}

/// HA's `action` for an avwarden running state.
pub fn ha_action(running: &str) -> &str {
    match running {
        "heat" => "heating",
        "cool" => "cooling",
        "dry" => "drying",
        "fan" => "fan",
        "off" => "off",
        _ => "idle",
    }
}

/// Numbers go out integral when they are (`16`, not `16.0`), as in the vectors.
fn num<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    super::climate_json::json_number(*v).serialize(s)
}

fn opt_num<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => num(v, s),
        None => s.serialize_none(),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceInfo {
    pub identifiers: Vec<String>,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manufacturer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// An MQTT climate entity's discovery config.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClimateConfig {
    pub name: String,
    pub unique_id: String,
    pub current_temperature_topic: String,
    pub temperature_command_topic: String,
    pub temperature_state_topic: String,
    pub mode_command_topic: String,
    pub mode_state_topic: String,
    pub modes: Vec<String>,
    #[serde(serialize_with = "num")]
    pub min_temp: f64,
    #[serde(serialize_with = "num")]
    pub max_temp: f64,
    #[serde(serialize_with = "num")]
    pub precision: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action_topic: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub availability_topic: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceInfo>,
}

/// A sensor entity's discovery config.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SensorConfig {
    pub name: String,
    pub unique_id: String,
    pub state_topic: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_template: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit_of_measurement: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_class: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_class: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "opt_num")]
    pub expire_after: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub availability_topic: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceInfo>,
}

/// Serialise a config payload.
pub fn to_payload<T: Serialize>(config: &T) -> Vec<u8> {
    // Serialising these plain structs cannot fail; an empty object is the safe fallback.
    serde_json::to_vec(config).unwrap_or_else(|_| b"{}".to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    // protocols.md 5.2: the climate discovery vector, byte for byte.
    #[test]
    fn vector_climate_config() {
        let topic = config_topic(DEFAULT_PREFIX, "climate", None, "avd_room101").unwrap();
        assert_eq!(topic, "homeassistant/climate/avd_room101/config");
        let cfg = ClimateConfig {
            name: "Room 101".into(),
            unique_id: "avd_room101".into(),
            current_temperature_topic: "avd/room101/temp".into(),
            temperature_command_topic: "avd/room101/setpoint/set".into(),
            temperature_state_topic: "avd/room101/setpoint".into(),
            mode_command_topic: "avd/room101/mode/set".into(),
            mode_state_topic: "avd/room101/mode".into(),
            modes: ["off", "heat", "cool", "auto"].map(String::from).to_vec(),
            min_temp: 16.0,
            max_temp: 30.0,
            precision: 0.5,
            action_topic: None,
            availability_topic: Some("avd/status".into()),
            device: Some(DeviceInfo {
                identifiers: vec!["avd_room101".into()],
                name: "Room 101 HVAC".into(),
                manufacturer: None,
                model: None,
            }),
        };
        let expected = r#"{"name":"Room 101","unique_id":"avd_room101","current_temperature_topic":"avd/room101/temp","temperature_command_topic":"avd/room101/setpoint/set","temperature_state_topic":"avd/room101/setpoint","mode_command_topic":"avd/room101/mode/set","mode_state_topic":"avd/room101/mode","modes":["off","heat","cool","auto"],"min_temp":16,"max_temp":30,"precision":0.5,"availability_topic":"avd/status","device":{"identifiers":["avd_room101"],"name":"Room 101 HVAC"}}"#;
        assert_eq!(String::from_utf8(to_payload(&cfg)).unwrap(), expected);
    }

    // protocols.md 5.2: the sensor discovery vector, byte for byte.
    #[test]
    fn vector_sensor_config() {
        let topic = config_topic(DEFAULT_PREFIX, "sensor", None, "avd_room101_mic1_batt").unwrap();
        assert_eq!(topic, "homeassistant/sensor/avd_room101_mic1_batt/config");
        let cfg = SensorConfig {
            name: "Mic 1 battery".into(),
            unique_id: "avd_room101_mic1_batt".into(),
            state_topic: "avd/room101/mic1".into(),
            value_template: Some("{{ value_json.battery }}".into()),
            unit_of_measurement: Some("%".into()),
            device_class: Some("battery".into()),
            state_class: None,
            expire_after: None,
            availability_topic: None,
            device: None,
        };
        let expected = r#"{"name":"Mic 1 battery","unique_id":"avd_room101_mic1_batt","state_topic":"avd/room101/mic1","value_template":"{{ value_json.battery }}","unit_of_measurement":"%","device_class":"battery"}"#;
        assert_eq!(String::from_utf8(to_payload(&cfg)).unwrap(), expected);
    }

    // protocols.md 5.2: `online` on homeassistant/status.
    #[test]
    fn vector_status() {
        assert_eq!(status_topic(DEFAULT_PREFIX), "homeassistant/status");
        assert_eq!(parse_status(b"online"), Ok(true));
        assert_eq!(parse_status(b"offline"), Ok(false));
        assert!(parse_status(b"ONLINE!").is_err());
    }

    #[test]
    fn ids_are_checked() {
        assert!(config_topic("homeassistant", "climate", Some("avd"), "room 101").is_err());
        assert!(config_topic("homeassistant", "climate", Some("a/b"), "x").is_err());
        assert_eq!(
            config_topic("homeassistant", "climate", Some("avd"), "r1").unwrap(),
            "homeassistant/climate/avd/r1/config"
        );
        assert_eq!(ha_mode("fan"), "fan_only");
        assert_eq!(ha_action("cool"), "cooling");
    }
}
