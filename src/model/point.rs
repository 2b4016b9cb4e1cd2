//! Typed points: what a reading is about ([`Subject`]) and what it measures ([`Quantity`]).
//! Unit and capability follow from the quantity; nothing builds or parses a reading's name
//! except [`Point`]'s `Display` and `FromStr`, which serialisation uses.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{Capability, Subject, Unit};

macro_rules! quantities {
    ($($(#[$m:meta])* $name:ident = $text:literal, $unit:expr, $cap:expr;)*) => {
        /// What a reading measures. Its written name is the last part of a point's name
        /// (`battery_minutes` in `ch.2.battery_minutes`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Quantity {
            $($(#[$m])* $name,)*
        }

        impl Quantity {
            pub const ALL: &'static [Quantity] = &[$(Quantity::$name,)*];

            /// The name it is written with inside a point's name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Quantity::$name => $text,)*
                }
            }

            /// The unit its values are in, when it has one.
            pub fn unit(self) -> Option<Unit> {
                match self {
                    $(Quantity::$name => $unit,)*
                }
            }

            /// The capability it belongs to, when it is one a rule can ask for.
            pub fn capability(self) -> Option<Capability> {
                match self {
                    $(Quantity::$name => $cap,)*
                }
            }
        }
    };
}

quantities! {
    /// Projector power (a [`super::PowerState`]) or an HVAC unit's on/off.
    Power = "power", None, Some(Capability::Power);
    /// Hours a lamp has run (on a `lamp.N` subject).
    LampHours = "hours", Some(Unit::Hours), Some(Capability::Lamp);
    /// Whether a lamp is lit (on a `lamp.N` subject).
    LampOn = "on", None, Some(Capability::Lamp);
    /// Hours since the filter was last cleaned.
    FilterHours = "filter.hours", Some(Unit::Hours), Some(Capability::Filter);
    /// The selected input, as the device names it (`31`, `30`).
    Input = "input", None, Some(Capability::Input);
    /// The inputs the device has.
    Inputs = "inputs", None, Some(Capability::Input);
    /// The input signal's resolution, when the device reports it.
    Resolution = "resolution", None, Some(Capability::Input);
    /// Picture or sound muted (either).
    AvMute = "av_mute", None, Some(Capability::AvMute);
    VideoMute = "av_mute.video", None, Some(Capability::AvMute);
    AudioMute = "av_mute.audio", None, Some(Capability::AvMute);
    /// A transmitter is on air on this channel.
    TxPresent = "tx_present", None, Some(Capability::TxPresent);
    TxModel = "tx_model", None, Some(Capability::TxPresent);
    /// The transmitter's own mute switch.
    TxMuted = "tx_muted", None, Some(Capability::TxPresent);
    BatteryBars = "battery_bars", Some(Unit::Count), Some(Capability::Battery);
    BatteryPercent = "battery_percent", Some(Unit::Percent), Some(Capability::Battery);
    /// Run time left on the transmitter's battery.
    BatteryMinutes = "battery_minutes", Some(Unit::Minutes), Some(Capability::Battery);
    BatteryType = "battery_type", None, Some(Capability::Battery);
    BatteryCycles = "battery_cycles", Some(Unit::Count), Some(Capability::Battery);
    /// A channel's or DSP input's gain.
    GainDb = "gain_db", Some(Unit::Db), Some(Capability::Gain);
    /// A channel, zone or input muted.
    Muted = "muted", None, Some(Capability::Mute);
    Interference = "interference", None, Some(Capability::Rf);
    EncryptionOk = "encryption_ok", None, Some(Capability::Rf);
    FrequencyMhz = "frequency_mhz", None, Some(Capability::Rf);
    /// Received RF level, refreshed at meter rate.
    RfDbm = "rf_dbm", Some(Unit::Dbm), Some(Capability::Rf);
    /// An audio level, from the meter stream.
    AudioDbfs = "audio_dbfs", Some(Unit::Dbfs), Some(Capability::Meter);
    /// A DSP zone's or input's fader level.
    LevelDb = "level_db", Some(Unit::Db), Some(Capability::Level);
    /// A channel's name as the receiver holds it.
    Name = "name", None, Some(Capability::Identity);
    /// Warnings as the device words them (Sennheiser SSC).
    Warnings = "warnings", None, None;
    /// A Q-SYS core's engine state (`Active`, `Standby`, `Idle`).
    EngineState = "engine_state", None, Some(Capability::Identity);
    Temperature = "temperature", Some(Unit::Celsius), Some(Capability::Temperature);
    Setpoint = "setpoint", Some(Unit::Celsius), Some(Capability::Setpoint);
    HvacMode = "hvac_mode", None, Some(Capability::HvacMode);
    Fan = "fan", None, Some(Capability::HvacMode);
    HvacRunning = "hvac_running", None, Some(Capability::HvacRunning);
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Quantity {
    type Err = BadPoint;

    fn from_str(s: &str) -> Result<Self, BadPoint> {
        Quantity::ALL
            .iter()
            .copied()
            .find(|q| q.as_str() == s)
            .ok_or_else(|| BadPoint(s.to_owned()))
    }
}

/// One thing a device reports: a quantity of a subject. Written `power`, `lamp.1.hours`,
/// `ch.2.battery_minutes`, `zone.main.level_db` (the device subject is left out).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Point {
    pub subject: Subject,
    pub quantity: Quantity,
}

impl Point {
    pub fn new(subject: Subject, quantity: Quantity) -> Self {
        Self { subject, quantity }
    }

    /// A quantity of the device as a whole.
    pub const fn device(quantity: Quantity) -> Self {
        Self {
            subject: Subject::Device,
            quantity,
        }
    }

    /// A quantity of receiver channel `n`.
    pub const fn channel(n: u8, quantity: Quantity) -> Self {
        Self {
            subject: Subject::Channel(n),
            quantity,
        }
    }

    /// A quantity of lamp `n`.
    pub const fn lamp(n: u8, quantity: Quantity) -> Self {
        Self {
            subject: Subject::Lamp(n),
            quantity,
        }
    }

    pub fn unit(&self) -> Option<Unit> {
        self.quantity.unit()
    }

    pub fn capability(&self) -> Option<Capability> {
        self.quantity.capability()
    }
}

impl fmt::Display for Point {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.subject {
            Subject::Device => f.write_str(self.quantity.as_str()),
            s => write!(f, "{s}.{}", self.quantity),
        }
    }
}

/// A point's written form that is not one (`ch.2.volume`, `speaker.1.power`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a point (a quantity, or a subject and a quantity: ch.2.battery_minutes)")]
pub struct BadPoint(pub String);

impl std::str::FromStr for Point {
    type Err = BadPoint;

    fn from_str(s: &str) -> Result<Self, BadPoint> {
        let bad = || BadPoint(s.to_owned());
        if let Ok(q) = s.parse::<Quantity>() {
            return Ok(Point::device(q));
        }
        // `kind.id.quantity`: ids hold no dot, quantities of a subject hold none either.
        let mut parts = s.splitn(3, '.');
        let (Some(kind), Some(id), Some(q)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad());
        };
        let subject: Subject = format!("{kind}.{id}").parse().map_err(|_| bad())?;
        let quantity = q.parse().map_err(|_| bad())?;
        Ok(Point::new(subject, quantity))
    }
}

impl Serialize for Point {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Point {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for Quantity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_are_written_as_before_and_read_back() {
        for (p, text) in [
            (Point::device(Quantity::Power), "power"),
            (Point::device(Quantity::VideoMute), "av_mute.video"),
            (Point::device(Quantity::FilterHours), "filter.hours"),
            (Point::lamp(1, Quantity::LampHours), "lamp.1.hours"),
            (
                Point::channel(2, Quantity::BatteryMinutes),
                "ch.2.battery_minutes",
            ),
            (
                Point::new(Subject::zone("main"), Quantity::LevelDb),
                "zone.main.level_db",
            ),
            (
                Point::new(Subject::input("lectern"), Quantity::Muted),
                "input.lectern.muted",
            ),
        ] {
            assert_eq!(p.to_string(), text);
            assert_eq!(text.parse::<Point>(), Ok(p.clone()));
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(serde_json::from_str::<Point>(&json).unwrap(), p);
        }
        for bad in [
            "",
            "volume",
            "ch.2",
            "ch.2.volume",
            "ch.x.muted",
            "speaker.1.power",
        ] {
            assert!(bad.parse::<Point>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_quantity_has_one_name() {
        let mut names: Vec<_> = Quantity::ALL.iter().map(|q| q.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Quantity::ALL.len());
    }

    #[test]
    fn units_follow_from_the_quantity() {
        assert_eq!(Quantity::BatteryMinutes.unit(), Some(Unit::Minutes));
        assert_eq!(Quantity::RfDbm.unit(), Some(Unit::Dbm));
        assert_eq!(Quantity::Setpoint.unit(), Some(Unit::Celsius));
        assert_eq!(Quantity::Power.unit(), None);
        assert_eq!(
            Quantity::LevelDb.capability(),
            Some(Capability::Level),
            "a zone's level is what a level command sets"
        );
    }

    proptest::proptest! {
        #[test]
        fn any_point_round_trips(n in 0u8.., id in "[a-z0-9_-]{1,12}", kind in 0..5u8, q in 0..Quantity::ALL.len()) {
            let subject = match kind {
                0 => Subject::Device,
                1 => Subject::Channel(n),
                2 => Subject::zone(&id),
                3 => Subject::input(&id),
                _ => Subject::Lamp(n),
            };
            let p = Point::new(subject, Quantity::ALL[q]);
            proptest::prop_assert_eq!(p.to_string().parse::<Point>(), Ok(p));
        }
    }
}
