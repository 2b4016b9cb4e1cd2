//! JSON climate devices: arbitrary bytes as MQTT payloads (NUL-separated, so one input is a
//! sequence of messages) through the field maps of the shipped profiles (zigbee2mqtt,
//! Tasmota): state merging, availability, and the simulator's set decoder.
//!
//! Checks, beyond "no panic": readings are finite, a state the driver merged survives the
//! simulator's `state_payload` → `apply` unchanged (the simulator and the driver read the map
//! alike), and every set the simulator decodes, re-encoded by the driver's `encode_set`, decodes
//! back to the same request (setpoints within the device's step).

use std::sync::OnceLock;

use avwarden::codec::climate_json::{
    command_filters, decode_set, encode_get, encode_set, json_number, parse_availability,
    state_payload, ClimateMap, ClimateSet, ClimateSnapshot, ClimateState, NumberField, SetStyle,
    FAN_SPEEDS, MODES,
};
use avwarden::model::Value;
use avwarden::profile::{DriverKind, ProfileSet};

const TOPIC: &str = "zigbee2mqtt/room101";

/// The field maps of every shipped JSON climate profile.
fn maps() -> &'static [(String, ClimateMap)] {
    static MAPS: OnceLock<Vec<(String, ClimateMap)>> = OnceLock::new();
    MAPS.get_or_init(|| {
        let set = ProfileSet::embedded().expect("embedded profiles load");
        let maps: Vec<_> = set
            .iter()
            .filter(|p| p.driver == DriverKind::Mqtt)
            .map(|p| {
                let map = ClimateMap::from_table(&p.options).expect("shipped map is valid");
                (p.id.to_string(), map)
            })
            .collect();
        assert!(maps.len() >= 2, "zigbee2mqtt and tasmota maps");
        maps
    })
}

/// One input: panics when a check fails.
pub fn check(data: &[u8]) {
    for (id, map) in maps() {
        let mut state = ClimateState::default();
        for payload in data.split(|&b| b == 0) {
            if let Ok(applied) = state.apply(map, payload) {
                assert!(applied.problems.len() <= applied.fields.len(), "{id}");
            }
            let _ = parse_availability(map, payload);
            for (topic, body) in set_messages(map, payload) {
                if let Ok(sets) = decode_set(map, TOPIC, &topic, body) {
                    for s in sets {
                        check_set(id, map, &state, &s);
                    }
                }
            }
        }
        check_readings(id, map, &state);
        check_state_round_trip(id, map, &state);
        if let Some(get) = encode_get(map, TOPIC) {
            assert!(serde_json::from_slice::<serde_json::Value>(&get.payload).is_ok());
        }
        assert!(!command_filters(map, TOPIC).is_empty());
    }
}

/// Where a payload could arrive as a set: the set topic (JSON style) or each field's set topic
/// (raw style), and, split at the first line feed, any topic the input names.
fn set_messages<'a>(map: &ClimateMap, payload: &'a [u8]) -> Vec<(String, &'a [u8])> {
    let template = ClimateMap::topic(&map.set_topic, TOPIC);
    let mut out = Vec::new();
    match map.set_style {
        SetStyle::Json => out.push((template.clone(), payload)),
        SetStyle::Raw => {
            let f = &map.fields;
            let keys = [&f.temperature, &f.setpoint, &f.cooling_setpoint]
                .into_iter()
                .flatten()
                .map(|n| n.key().to_owned())
                .chain(
                    [&f.mode, &f.running, &f.fan, &f.power]
                        .into_iter()
                        .flatten()
                        .map(|e| e.key().to_owned()),
                );
            for k in keys {
                out.push((template.replace("{key}", &k), payload));
            }
        }
    }
    if let Some(nl) = payload.iter().position(|&b| b == b'\n') {
        if let Ok(topic) = std::str::from_utf8(&payload[..nl]) {
            out.push((topic.to_owned(), &payload[nl + 1..]));
        }
    }
    out
}

fn check_readings(id: &str, map: &ClimateMap, state: &ClimateState) {
    for (key, value) in state.readings(map) {
        if let Value::Float(v) = value {
            assert!(v.is_finite(), "{id}: {key} = {v}");
        }
    }
}

/// Values a simulator would publish: the numbers it can write exactly enough.
fn plausible(v: f64) -> bool {
    v.abs() <= 1e9
}

/// What the driver merged, published back by the simulator, merges to the same state.
fn check_state_round_trip(id: &str, map: &ClimateMap, state: &ClimateState) {
    let f = &map.fields;
    let num = |v: Option<Option<f64>>| v.flatten().filter(|v| plausible(*v));
    let snap = ClimateSnapshot {
        temperature: num(state.temperature),
        heating_setpoint: num(state.heating_setpoint),
        cooling_setpoint: num(state.cooling_setpoint),
        mode: state.mode.clone().flatten(),
        running: state.running.clone().flatten(),
        fan: state.fan.clone().flatten(),
        power: state.power.flatten(),
    };
    let payload = state_payload(map, &snap);
    let mut again = ClimateState::default();
    let applied = again.apply(map, &payload).unwrap_or_else(|e| {
        panic!(
            "{id}: own payload {:?}: {e}",
            String::from_utf8_lossy(&payload)
        )
    });
    assert!(applied.problems.is_empty(), "{id}: {:?}", applied.problems);
    let written = |v: Option<f64>, scale: Option<f64>| -> Option<Option<f64>> {
        let (v, scale) = (v?, scale?);
        Some(json_number(v / scale).as_f64().map(|d| d * scale))
    };
    let scale = |n: &Option<NumberField>| n.as_ref().map(|n| n.scale);
    for (name, got, want) in [
        (
            "temperature",
            again.temperature,
            written(snap.temperature, scale(&f.temperature)),
        ),
        (
            "setpoint",
            again.heating_setpoint,
            written(snap.heating_setpoint, scale(&f.setpoint)),
        ),
        (
            "cooling_setpoint",
            again.cooling_setpoint,
            written(snap.cooling_setpoint, scale(&f.cooling_setpoint)),
        ),
    ] {
        assert!(same(got, want), "{id}: {name} {got:?} != {want:?}");
    }
    let known = |v: &Option<String>| v.clone().map(Some);
    assert_eq!(again.mode, known(&snap.mode), "{id}");
    assert_eq!(again.running, known(&snap.running), "{id}");
    assert_eq!(again.fan, known(&snap.fan), "{id}");
    assert_eq!(again.power, snap.power.map(Some), "{id}");
}

/// A set the simulator decoded, sent again by the driver, decodes to the same request.
fn check_set(id: &str, map: &ClimateMap, state: &ClimateState, asked: &ClimateSet) {
    let f = &map.fields;
    match asked {
        ClimateSet::Setpoint { celsius, .. } if !plausible(*celsius) => return,
        ClimateSet::Mode(m) => assert!(MODES.contains(&m.as_str()), "{id}: mode {m}"),
        ClimateSet::Fan(s) => assert!(FAN_SPEEDS.contains(&s.as_str()), "{id}: fan {s}"),
        _ => {}
    }
    let Ok(out) = encode_set(map, TOPIC, asked, state) else {
        return;
    };
    assert!(!out.is_empty(), "{id}: {asked:?} sends nothing");
    let mut got = Vec::new();
    for m in &out {
        let sets = decode_set(map, TOPIC, &m.topic, &m.payload)
            .unwrap_or_else(|e| panic!("{id}: {asked:?} sent as {m:?} does not decode: {e}"));
        assert!(!sets.is_empty(), "{id}: {m:?} is not a set topic");
        got.extend(sets);
    }
    let first = &got[0];
    match asked {
        ClimateSet::Setpoint { celsius, cooling } => {
            let to_cooling = (*cooling && f.cooling_setpoint.is_some()) || f.setpoint.is_none();
            let field = if to_cooling {
                &f.cooling_setpoint
            } else {
                &f.setpoint
            };
            let scale = field.as_ref().map_or(1.0, |n| n.scale).abs();
            let tol = map.precision / 2.0 + 0.005 * scale + 1e-9 * celsius.abs().max(1.0);
            match first {
                ClimateSet::Setpoint {
                    celsius: c2,
                    cooling: k2,
                } => {
                    assert_eq!(*k2, to_cooling, "{id}: {asked:?} → {got:?}");
                    assert!((c2 - celsius).abs() <= tol, "{id}: {asked:?} → {got:?}");
                }
                other => panic!("{id}: {asked:?} → {other:?}"),
            }
        }
        ClimateSet::Mode(m) if m == "off" && f.power.is_some() => {
            assert_eq!(first, &ClimateSet::Power(false), "{id}")
        }
        ClimateSet::Mode(_) | ClimateSet::Fan(_) => assert_eq!(first, asked, "{id}"),
        ClimateSet::Power(on) if f.power.is_some() => {
            assert_eq!(first, &ClimateSet::Power(*on), "{id}")
        }
        ClimateSet::Power(on) => match first {
            ClimateSet::Mode(m) => assert_eq!(m != "off", *on, "{id}: {asked:?} → {got:?}"),
            other => panic!("{id}: {asked:?} → {other:?}"),
        },
    }
}

/// Equal, except that a float may come back one rounding step off: serde_json's default float
/// parser is fast, not exact (its `float_roundtrip` feature is off).
fn same(a: Option<Option<f64>>, b: Option<Option<f64>>) -> bool {
    match (a, b) {
        (Some(Some(x)), Some(Some(y))) => x == y || (x - y).abs() <= 1e-12 * x.abs().max(y.abs()),
        (x, y) => x == y,
    }
}
