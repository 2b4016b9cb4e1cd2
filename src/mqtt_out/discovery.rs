//! Home Assistant MQTT discovery (protocols.md 5.2) for the site: each room's readiness and
//! temperature, each microphone channel's battery minutes, each projector's power and lamp
//! hours, as sensors whose `state_topic` is the retained status or state topic and whose
//! value template picks the field.
//!
//! Pure: it builds `(topic, payload)` pairs from the site's rooms and the devices' states; the
//! state task publishes them (retained, debounced, again when HA announces `online`). Climate
//! entities are not offered: HA would send setpoints without a token, and commands over MQTT
//! need one (docs/mqtt.md).

use crate::codec::ha_discovery::{config_topic, to_payload, DeviceInfo, SensorConfig};
use crate::model::{Capability, Quantity, Subject};

use super::MqttOut;

/// `[a-zA-Z0-9_-]` only (protocols.md 5.2): anything else becomes `_`.
pub fn object_id(parts: &[&str]) -> String {
    parts
        .iter()
        .map(|p| {
            p.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("_")
}

/// One sensor's discovery config, with the daemon's topic as availability.
#[allow(clippy::too_many_arguments)]
pub fn sensor(
    name: String,
    unique_id: String,
    state_topic: String,
    template: String,
    unit: Option<&str>,
    device_class: Option<&str>,
    state_class: Option<&str>,
    availability: String,
    device: DeviceInfo,
) -> SensorConfig {
    SensorConfig {
        name,
        unique_id,
        state_topic,
        value_template: Some(template),
        unit_of_measurement: unit.map(str::to_owned),
        device_class: device_class.map(str::to_owned),
        state_class: state_class.map(str::to_owned),
        expire_after: None,
        availability_topic: Some(availability),
        device: Some(device),
    }
}

/// The discovery configs of the whole site, by config topic; empty when discovery is off.
pub fn payloads(out: &MqttOut) -> Vec<(String, Vec<u8>)> {
    let Some(prefix) = out.ha_prefix.as_deref() else {
        return Vec::new();
    };
    let site = out.topics.site();
    let avail = out.topics.daemon();
    let mut v: Vec<(String, SensorConfig)> = Vec::new();
    for room in &out.api.layout.get().rooms {
        let rid = room.id.as_str();
        let dev = DeviceInfo {
            identifiers: vec![object_id(&["avd", site, rid])],
            name: room.name.clone(),
            manufacturer: None,
            model: None,
        };
        let status = out.topics.room_status(rid);
        let uid = object_id(&["avd", site, rid, "readiness"]);
        v.push((
            uid.clone(),
            sensor(
                format!("{} readiness", room.name),
                uid,
                status.clone(),
                "{{ value_json.readiness }}".to_owned(),
                None,
                None,
                None,
                avail.clone(),
                dev.clone(),
            ),
        ));
        let has_temperature = out.api.fleet.room(&room.id).iter().any(|h| {
            h.capabilities().contains(&Capability::Temperature)
                || h.quantities().contains(&Quantity::Temperature)
        });
        if has_temperature {
            let uid = object_id(&["avd", site, rid, "temp"]);
            v.push((
                uid.clone(),
                sensor(
                    format!("{} temperature", room.name),
                    uid,
                    status,
                    "{{ value_json.temperature_c }}".to_owned(),
                    Some("°C"),
                    Some("temperature"),
                    Some("measurement"),
                    avail.clone(),
                    dev,
                ),
            ));
        }
    }
    for h in out.api.fleet.handles() {
        let did = h.id.as_str();
        let s = h.state();
        let dev = DeviceInfo {
            identifiers: vec![object_id(&["avd", site, did])],
            name: did.to_owned(),
            manufacturer: None,
            model: None,
        };
        let state_topic = out.topics.device_state(did);
        let template = |subject: &Subject, q: Quantity| {
            format!(
                "{{{{ value_json.points['{subject}']['{}'].value }}}}",
                q.as_str()
            )
        };
        let mut channels: Vec<u8> = s
            .readings
            .keys()
            .filter(|p| p.quantity == Quantity::BatteryMinutes)
            .filter_map(|p| match p.subject {
                Subject::Channel(n) => Some(n),
                _ => None,
            })
            .collect();
        channels.dedup();
        for n in channels {
            let uid = object_id(&["avd", site, did, &format!("ch{n}"), "batt"]);
            v.push((
                uid.clone(),
                sensor(
                    format!("Mic {n} battery"),
                    uid,
                    state_topic.clone(),
                    template(&Subject::Channel(n), Quantity::BatteryMinutes),
                    Some("min"),
                    Some("duration"),
                    Some("measurement"),
                    avail.clone(),
                    dev.clone(),
                ),
            ));
        }
        if h.capabilities().contains(&Capability::Lamp) {
            let uid = object_id(&["avd", site, did, "power"]);
            v.push((
                uid.clone(),
                sensor(
                    format!("{did} power"),
                    uid,
                    state_topic.clone(),
                    template(&Subject::Device, Quantity::Power),
                    None,
                    None,
                    None,
                    avail.clone(),
                    dev.clone(),
                ),
            ));
            let mut lamps: Vec<u8> = s
                .readings
                .keys()
                .filter(|p| p.quantity == Quantity::LampHours)
                .filter_map(|p| match p.subject {
                    Subject::Lamp(n) => Some(n),
                    _ => None,
                })
                .collect();
            lamps.dedup();
            for n in lamps {
                let uid = object_id(&["avd", site, did, &format!("lamp{n}"), "hours"]);
                v.push((
                    uid.clone(),
                    sensor(
                        format!("{did} lamp {n} hours"),
                        uid,
                        state_topic.clone(),
                        template(&Subject::Lamp(n), Quantity::LampHours),
                        Some("h"),
                        Some("duration"),
                        Some("total_increasing"),
                        avail.clone(),
                        dev.clone(),
                    ),
                ));
            }
        }
    }
    v.into_iter()
        .filter_map(|(uid, cfg)| {
            config_topic(prefix, "sensor", None, &uid)
                .ok()
                .map(|t| (t, to_payload(&cfg)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_ids_are_what_home_assistant_accepts() {
        assert_eq!(object_id(&["avd", "b-a", "r 1.2"]), "avd_b-a_r_1_2");
        assert!(crate::codec::ha_discovery::valid_id(&object_id(&[
            "é/#", "x"
        ])));
    }

    // protocols.md 5.2: the builder the daemon uses gives the sensor vector's bytes when it
    // is given the vector's values (the vector has no availability and no device).
    #[test]
    fn the_sensor_builder_reproduces_the_vector() {
        let mut cfg = sensor(
            "Mic 1 battery".into(),
            "avd_room101_mic1_batt".into(),
            "avd/room101/mic1".into(),
            "{{ value_json.battery }}".into(),
            Some("%"),
            Some("battery"),
            None,
            String::new(),
            DeviceInfo {
                identifiers: vec![],
                name: String::new(),
                manufacturer: None,
                model: None,
            },
        );
        cfg.availability_topic = None;
        cfg.device = None;
        let expected = r#"{"name":"Mic 1 battery","unique_id":"avd_room101_mic1_batt","state_topic":"avd/room101/mic1","value_template":"{{ value_json.battery }}","unit_of_measurement":"%","device_class":"battery"}"#;
        assert_eq!(String::from_utf8(to_payload(&cfg)).unwrap(), expected);
    }
}
