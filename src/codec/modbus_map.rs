//! Modbus register maps of HVAC room controllers, as data from the profile (protocols.md 5.1:
//! there is no common map, and scaling differs per vendor).
//!
//! A map names where each point lives (coil, discrete input, input or holding register, PDU
//! address), how raw words become °C (`raw × scale + offset`, signed or not), how enumerations
//! (mode, fan, on/off) map to avwarden's vocabulary, which bits of a status word mean
//! heating/cooling or an alarm, and how writes go out (FC06 or FC16, an address of their own,
//! bits OR-ed in). The driver reads and writes through it and the simulator serves through it,
//! so any shipped map can be simulated. Pure data and arithmetic: no I/O, no panics.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::climate_json::{FAN_SPEEDS, MODES, RUNNING};

/// Which Modbus table a point lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Table {
    /// Read with FC01, written with FC05.
    Coil,
    /// Read with FC02, read-only.
    Discrete,
    /// Read with FC04, read-only.
    Input,
    /// Read with FC03, written with FC06 or FC16.
    Holding,
}

impl Table {
    pub fn writable(self) -> bool {
        matches!(self, Table::Coil | Table::Holding)
    }
    pub fn is_bit(self) -> bool {
        matches!(self, Table::Coil | Table::Discrete)
    }
}

/// How holding registers are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteFunction {
    /// FC06 write single register.
    #[default]
    Fc06,
    /// FC16 write multiple registers (some controllers implement only this one).
    Fc16,
}

/// One point of the map, as written in the profile.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Point {
    pub table: Table,
    /// 0-based PDU address, before the map's `address_offset`.
    pub address: u16,
    /// Where writes go when the device reads back elsewhere (Domat-style effective setpoints).
    #[serde(default)]
    pub write_address: Option<u16>,
    #[serde(default = "one")]
    pub scale: f64,
    #[serde(default)]
    pub offset: f64,
    /// Two's-complement 16-bit value.
    #[serde(default)]
    pub signed: bool,
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
    /// Refuse a number the register cannot hold exactly at its scale (a whole-degree unit
    /// asked for 22.5) instead of writing the nearest step.
    #[serde(default)]
    pub exact: bool,
    /// Enumerations: raw value (decimal string) → avwarden name.
    #[serde(default)]
    pub values: BTreeMap<String, String>,
    /// Status words: bit number (0–15) → name (a running state, or an alarm's description).
    #[serde(default)]
    pub bits: BTreeMap<String, String>,
    /// Bits OR-ed into every written value (a write-enable bit).
    #[serde(default)]
    pub write_or: u16,
    /// Raw values that mean "no value" (a sensor's initialisation value such as -32768).
    #[serde(default)]
    pub unknown: Vec<i64>,
}

fn one() -> f64 {
    1.0
}

/// The points an HVAC controller may have.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Points {
    #[serde(default)]
    pub temperature: Option<Point>,
    #[serde(default)]
    pub setpoint: Option<Point>,
    #[serde(default)]
    pub mode: Option<Point>,
    #[serde(default)]
    pub fan: Option<Point>,
    /// On/off: a coil, or a register with `values = { "0" = "off", "1" = "on" }`. Without it,
    /// power is "mode ≠ off".
    #[serde(default)]
    pub power: Option<Point>,
    /// What the unit is doing: an enumeration or a status word with `bits`.
    #[serde(default)]
    pub running: Option<Point>,
    /// Alarm word: each set bit in `bits` is a fault.
    #[serde(default)]
    pub alarms: Option<Point>,
}

/// A register map (the profile's `[options]`, with the site's `[devices.settings]` on top).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterMap {
    /// Default slave address (1–247); the site usually sets it per device.
    #[serde(default = "default_slave")]
    pub slave: u8,
    /// Added to every address, for documentation that counts from 1 (`-1`).
    #[serde(default)]
    pub address_offset: i32,
    #[serde(default)]
    pub write_function: WriteFunction,
    /// Mode restored by `power on` on units switched through the mode register.
    #[serde(default)]
    pub power_on_mode: Option<String>,
    /// Failed exchanges in a row (timeouts, CRC errors, truncated frames) before the device is
    /// unreachable and its port is reopened.
    #[serde(default = "default_failures")]
    pub unreachable_after_errors: u32,
    pub points: Points,
}

fn default_slave() -> u8 {
    1
}
fn default_failures() -> u32 {
    3
}

/// Why a value cannot be encoded, or a map is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MapError {
    #[error("{point}: {value} is outside {min}–{max}")]
    OutOfRange {
        point: &'static str,
        value: f64,
        min: f64,
        max: f64,
    },
    #[error("{point}: {value} is not a multiple of this unit's step of {step}")]
    NotOnStep {
        point: &'static str,
        value: f64,
        step: f64,
    },
    #[error("{point}: {value} does not fit a 16-bit register at this scale")]
    DoesNotFit { point: &'static str, value: f64 },
    #[error("{point}: {value:?} is not supported by this unit (supported: {supported})")]
    NoValue {
        point: &'static str,
        value: String,
        supported: String,
    },
    #[error("this unit has no {0} point")]
    NoPoint(&'static str),
    #[error("{0} is read-only on this unit")]
    ReadOnly(&'static str),
}

impl RegisterMap {
    pub fn from_table(options: &toml::Table) -> Result<RegisterMap, String> {
        let map: RegisterMap = toml::Value::Table(options.clone())
            .try_into()
            .map_err(|e: toml::de::Error| e.message().to_owned())?;
        map.check()?;
        Ok(map)
    }

    fn check(&self) -> Result<(), String> {
        if !(1..=247).contains(&self.slave) {
            return Err(format!("slave: {} is not a unit address 1–247", self.slave));
        }
        if self.unreachable_after_errors == 0 {
            return Err("unreachable_after_errors: must be at least 1".to_owned());
        }
        let p = &self.points;
        if p.temperature.is_none() && p.setpoint.is_none() && p.mode.is_none() {
            return Err("points: a map needs at least temperature, setpoint or mode".to_owned());
        }
        for (name, point) in self.all_points() {
            let at = |m: String| format!("points.{name}.{m}");
            for a in std::iter::once(point.address).chain(point.write_address) {
                let resolved = i64::from(a) + i64::from(self.address_offset);
                if !(0..=65535).contains(&resolved) {
                    return Err(at(format!(
                        "address: {a} with address_offset {} is outside 0–65535",
                        self.address_offset
                    )));
                }
            }
            if !(point.scale.is_finite() && point.scale != 0.0 && point.offset.is_finite()) {
                return Err(at(
                    "scale: must be a non-zero number and offset finite".to_owned()
                ));
            }
            for k in point.values.keys() {
                let v: i64 = k
                    .parse()
                    .map_err(|_| at(format!("values: key {k:?} is not an integer")))?;
                if !(-32768..=65535).contains(&v) {
                    return Err(at(format!("values: key {v} does not fit 16 bits")));
                }
            }
            for k in point.bits.keys() {
                match k.parse::<u8>() {
                    Ok(b) if b < 16 => {}
                    _ => return Err(at(format!("bits: key {k:?} is not a bit number 0–15"))),
                }
            }
            let vocab: Option<&[&str]> = match name {
                "mode" => Some(MODES),
                "fan" => Some(FAN_SPEEDS),
                "power" => Some(&["on", "off"]),
                "running" => Some(RUNNING),
                _ => None,
            };
            if let Some(vocab) = vocab {
                for v in point.values.values() {
                    if !vocab.contains(&v.as_str()) {
                        return Err(at(format!(
                            "values: {v:?} is not one of {}",
                            vocab.join(" ")
                        )));
                    }
                }
                if name == "running" {
                    for v in point.bits.values() {
                        if !RUNNING.contains(&v.as_str()) {
                            return Err(at(format!(
                                "bits: {v:?} is not one of {}",
                                RUNNING.join(" ")
                            )));
                        }
                    }
                }
                if !point.table.is_bit() && point.values.is_empty() && point.bits.is_empty() {
                    return Err(at("values: an enumeration needs its values".to_owned()));
                }
                if point.table.is_bit() && name != "power" && name != "running" {
                    return Err(at(format!("table: {name} cannot be a single bit")));
                }
            }
            if name == "alarms" && (point.bits.is_empty() || point.table.is_bit()) {
                return Err(at("bits: an alarm word needs its bits".to_owned()));
            }
        }
        for name in ["setpoint", "mode", "fan", "power"] {
            if let Some(point) = self.point(name) {
                if (point.write_address.is_some() || point.write_or != 0) && !point.table.writable()
                {
                    return Err(format!(
                        "points.{name}: writes need a coil or holding register"
                    ));
                }
            }
        }
        if let Some(m) = &self.power_on_mode {
            if !MODES.contains(&m.as_str()) || m == "off" {
                return Err(format!(
                    "power_on_mode: {m:?} is not one of heat cool auto fan dry"
                ));
            }
        }
        Ok(())
    }

    pub fn all_points(&self) -> Vec<(&'static str, &Point)> {
        let p = &self.points;
        [
            ("temperature", &p.temperature),
            ("setpoint", &p.setpoint),
            ("mode", &p.mode),
            ("fan", &p.fan),
            ("power", &p.power),
            ("running", &p.running),
            ("alarms", &p.alarms),
        ]
        .into_iter()
        .filter_map(|(n, p)| p.as_ref().map(|p| (n, p)))
        .collect()
    }

    pub fn point(&self, name: &str) -> Option<&Point> {
        self.all_points()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, p)| p)
    }

    /// The PDU address a point is read at.
    pub fn read_address(&self, p: &Point) -> u16 {
        offset(p.address, self.address_offset)
    }

    /// The PDU address a point is written at.
    pub fn write_address(&self, p: &Point) -> u16 {
        offset(p.write_address.unwrap_or(p.address), self.address_offset)
    }

    /// Whether power is switched through the mode register (no power point, mode has `off`).
    pub fn power_via_mode(&self) -> bool {
        self.points.power.is_none()
            && self
                .points
                .mode
                .as_ref()
                .is_some_and(|m| m.values.values().any(|v| v == "off"))
    }
}

fn offset(a: u16, by: i32) -> u16 {
    (i64::from(a) + i64::from(by)).clamp(0, 65535) as u16
}

fn signed_value(p: &Point, raw: u16) -> i64 {
    if p.signed {
        i64::from(raw as i16)
    } else {
        i64::from(raw)
    }
}

impl Point {
    /// °C (or whatever the point measures) from a raw word; `None` for a sentinel.
    pub fn decode_number(&self, raw: u16) -> Option<f64> {
        let v = signed_value(self, raw);
        if self.unknown.contains(&v) {
            return None;
        }
        Some(v as f64 * self.scale + self.offset)
    }

    /// The raw word for a value, checked against the point's range and 16 bits.
    pub fn encode_number(&self, name: &'static str, value: f64) -> Result<u16, MapError> {
        let min = self.min.unwrap_or(f64::NEG_INFINITY);
        let max = self.max.unwrap_or(f64::INFINITY);
        if !value.is_finite() || value < min || value > max {
            return Err(MapError::OutOfRange {
                point: name,
                value,
                min,
                max,
            });
        }
        let raw = ((value - self.offset) / self.scale).round();
        let held = raw * self.scale + self.offset;
        if self.exact && (held - value).abs() > self.scale.abs() * 1e-6 {
            return Err(MapError::NotOnStep {
                point: name,
                value,
                step: self.scale.abs(),
            });
        }
        let (lo, hi) = if self.signed {
            (-32768.0, 32767.0)
        } else {
            (0.0, 65535.0)
        };
        if !(lo..=hi).contains(&raw) {
            return Err(MapError::DoesNotFit { point: name, value });
        }
        Ok((raw as i64 as u16) | self.write_or)
    }

    /// The avwarden name of a raw enumeration value; `None` when the map does not know it.
    pub fn decode_enum(&self, raw: u16) -> Option<&str> {
        let v = signed_value(self, raw);
        self.values
            .iter()
            .find(|(k, _)| k.parse::<i64>().ok() == Some(v))
            .map(|(_, name)| name.as_str())
    }

    /// The raw value for an avwarden name: the smallest raw value that maps to it.
    pub fn encode_enum(&self, name: &'static str, value: &str) -> Result<u16, MapError> {
        self.values
            .iter()
            .filter(|(_, v)| *v == value)
            .filter_map(|(k, _)| k.parse::<i64>().ok())
            .min()
            .map(|raw| (raw as u16) | self.write_or)
            .ok_or_else(|| MapError::NoValue {
                point: name,
                value: value.to_owned(),
                supported: {
                    let mut s: Vec<&str> = self.values.values().map(String::as_str).collect();
                    s.dedup();
                    s.join(" ")
                },
            })
    }

    /// Names of the set bits, lowest bit first.
    pub fn decode_bits(&self, raw: u16) -> Vec<&str> {
        let mut set: Vec<(u8, &str)> = self
            .bits
            .iter()
            .filter_map(|(k, name)| k.parse::<u8>().ok().map(|b| (b, name.as_str())))
            .filter(|(b, _)| *b < 16 && raw & (1 << b) != 0)
            .collect();
        set.sort_by_key(|(b, _)| *b);
        set.into_iter().map(|(_, n)| n).collect()
    }

    /// A raw word with the bits of `names` set.
    pub fn encode_bits(&self, names: &[&str]) -> u16 {
        self.bits
            .iter()
            .filter(|(_, n)| names.contains(&n.as_str()))
            .filter_map(|(k, _)| k.parse::<u8>().ok())
            .filter(|b| *b < 16)
            .fold(0u16, |acc, b| acc | (1 << b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(text: &str) -> Result<RegisterMap, String> {
        RegisterMap::from_table(&toml::from_str(text).unwrap())
    }

    const SIM: &str = r#"
        [points.temperature]
        table = "input"
        address = 0
        scale = 0.1
        signed = true
        [points.setpoint]
        table = "holding"
        address = 0
        scale = 0.1
        signed = true
        min = 5.0
        max = 35.0
        [points.mode]
        table = "holding"
        address = 1
        values = { "0" = "off", "1" = "heat", "2" = "cool", "3" = "auto", "4" = "fan" }
        [points.power]
        table = "coil"
        address = 0
    "#;

    #[test]
    fn x10_scaling_matches_the_vectors() {
        let m = map(SIM).unwrap();
        let sp = m.points.setpoint.as_ref().unwrap();
        // protocols.md 5.1: 0x00E1 = 22.5 °C, 0x00DC = 22.0 °C, 0x00D2 = 21.0 °C.
        assert_eq!(sp.decode_number(0x00E1), Some(22.5));
        assert_eq!(sp.encode_number("setpoint", 22.0), Ok(0x00DC));
        assert_eq!(sp.decode_number(0x00D2), Some(21.0));
        assert!(matches!(
            sp.encode_number("setpoint", 40.0),
            Err(MapError::OutOfRange { .. })
        ));
        assert!(matches!(
            sp.encode_number("setpoint", f64::NAN),
            Err(MapError::OutOfRange { .. })
        ));
        let mut whole = sp.clone();
        whole.scale = 1.0;
        assert_eq!(
            whole.encode_number("setpoint", 22.5),
            Ok(23),
            "nearest step"
        );
        whole.exact = true;
        assert!(matches!(
            whole.encode_number("setpoint", 22.5),
            Err(MapError::NotOnStep { step, .. }) if step == 1.0
        ));
        assert_eq!(whole.encode_number("setpoint", 22.0), Ok(22));
        let mut tenths = sp.clone();
        tenths.exact = true;
        assert_eq!(
            tenths.encode_number("setpoint", 22.3),
            Ok(223),
            "float noise is no step"
        );
        let t = m.points.temperature.as_ref().unwrap();
        assert_eq!(t.decode_number(0xFFF6), Some(-1.0));
        assert!(!m.power_via_mode());
    }

    #[test]
    fn mundoclima_offset_scaling() {
        // protocols.md 5.1: T = (raw − 30) / 2.
        let p = Point {
            table: Table::Holding,
            address: 1606,
            write_address: None,
            scale: 0.5,
            offset: -15.0,
            signed: false,
            min: None,
            max: None,
            exact: false,
            values: BTreeMap::new(),
            bits: BTreeMap::new(),
            write_or: 0,
            unknown: vec![],
        };
        assert_eq!(p.decode_number(74), Some(22.0));
        assert_eq!(p.decode_number(0), Some(-15.0));
        assert_eq!(p.decode_number(240), Some(105.0));
        assert_eq!(p.encode_number("temperature", 22.5), Ok(75));
    }

    #[test]
    fn enums_bits_sentinels_and_write_or() {
        let m = map(r#"
            [points.mode]
            table = "holding"
            address = 5
            values = { "0" = "fan", "1" = "cool", "2" = "heat", "3" = "heat", "4" = "heat" }
            [points.running]
            table = "holding"
            address = 34
            bits = { "0" = "cool", "2" = "heat" }
            [points.alarms]
            table = "holding"
            address = 33
            bits = { "0" = "room sensor", "3" = "fan" }
            [points.fan]
            table = "holding"
            address = 24
            write_or = 32768
            values = { "1" = "auto", "2" = "off", "4" = "low" }
            [points.temperature]
            table = "holding"
            address = 21
            signed = true
            scale = 0.01
            unknown = [-32768]
        "#)
        .unwrap();
        let mode = m.points.mode.as_ref().unwrap();
        assert_eq!(mode.decode_enum(3), Some("heat"));
        assert_eq!(mode.decode_enum(9), None);
        assert_eq!(mode.encode_enum("mode", "heat"), Ok(2));
        assert!(matches!(
            mode.encode_enum("mode", "auto"),
            Err(MapError::NoValue { .. })
        ));
        let run = m.points.running.as_ref().unwrap();
        assert_eq!(run.decode_bits(0b101), vec!["cool", "heat"]);
        assert_eq!(run.encode_bits(&["heat"]), 0b100);
        assert_eq!(
            m.points.alarms.as_ref().unwrap().decode_bits(0b1000),
            vec!["fan"]
        );
        assert_eq!(
            m.points.fan.as_ref().unwrap().encode_enum("fan", "low"),
            Ok(0x8004)
        );
        let t = m.points.temperature.as_ref().unwrap();
        assert_eq!(t.decode_number(0x8000), None);
        assert_eq!(t.decode_number(2150), Some(21.5));
    }

    #[test]
    fn bad_maps_are_refused() {
        let bad = [
            "slave = 0\n[points.temperature]\ntable = \"input\"\naddress = 0",
            "[points.mode]\ntable = \"holding\"\naddress = 1\nvalues = { \"0\" = \"turbo\" }",
            "[points.mode]\ntable = \"holding\"\naddress = 1",
            "[points.mode]\ntable = \"holding\"\naddress = 1\nvalues = { \"x\" = \"off\" }",
            "[points.temperature]\ntable = \"input\"\naddress = 0\nscale = 0.0",
            "address_offset = -1\n[points.temperature]\ntable = \"input\"\naddress = 0",
            "[points.alarms]\ntable = \"holding\"\naddress = 3\n[points.temperature]\ntable = \"input\"\naddress = 0",
            "[points.setpoint]\ntable = \"input\"\naddress = 0\nwrite_address = 4",
            "[points.fan]\ntable = \"holding\"\naddress = 0\nvalues = { \"0\" = \"auto\" }",
            "[points.temperature]\ntable = \"input\"\naddress = 0\nbogus = 1",
        ];
        for t in bad {
            assert!(map(t).is_err(), "{t}");
        }
    }
}
