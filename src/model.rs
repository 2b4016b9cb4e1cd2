//! Domain vocabulary shared by every layer: ids, capabilities, readings with units and the
//! instant they were observed, health, faults.
//!
//! This module owns plain data only. It must not do I/O or use tokio, so that every other layer
//! (and every pure decision core) can depend on it freely.

pub mod booking;
pub mod plan;
mod point;

pub use booking::{
    Booking, BookingId, BookingSource, BookingStatus, Need, Needs, Readiness, Reason, TestKind,
    Verdict,
};
pub use point::{BadPoint, Point, Quantity};

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

macro_rules! id_newtype {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            pub fn new(s: impl Into<String>) -> Self {
                Self(s.into())
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }
    };
}

id_newtype!(
    /// A device as named in the site config (`devices[].id`).
    DeviceId
);
id_newtype!(
    /// A room as named in the site config (`rooms[].id`).
    RoomId
);
id_newtype!(
    /// A device profile, kebab-case (`epson-escvp21`).
    ProfileId
);

/// What a point is about on its device: the device as a whole, a receiver channel, a DSP
/// output zone or input, a projector lamp. Written `device`, `ch.2`, `zone.main`,
/// `input.lectern`, `lamp.1` in JSON and logs; nothing else parses that form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subject {
    Device,
    Channel(u8),
    Zone(Arc<str>),
    Input(Arc<str>),
    Lamp(u8),
}

impl Subject {
    pub fn zone(id: &str) -> Self {
        Subject::Zone(Arc::from(id))
    }

    pub fn input(id: &str) -> Self {
        Subject::Input(Arc::from(id))
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Device => f.write_str("device"),
            Subject::Channel(n) => write!(f, "ch.{n}"),
            Subject::Zone(id) => write!(f, "zone.{id}"),
            Subject::Input(id) => write!(f, "input.{id}"),
            Subject::Lamp(n) => write!(f, "lamp.{n}"),
        }
    }
}

/// A subject's written form that is not one (`speaker.1`, `ch.x`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a subject (device, ch.N, zone.ID, input.ID, lamp.N)")]
pub struct BadSubject(pub String);

impl std::str::FromStr for Subject {
    type Err = BadSubject;

    fn from_str(s: &str) -> Result<Self, BadSubject> {
        let bad = || BadSubject(s.to_owned());
        if s == "device" {
            return Ok(Subject::Device);
        }
        let (kind, id) = s.split_once('.').ok_or_else(bad)?;
        if id.is_empty() {
            return Err(bad());
        }
        match kind {
            "ch" => id.parse().map(Subject::Channel).map_err(|_| bad()),
            "lamp" => id.parse().map(Subject::Lamp).map_err(|_| bad()),
            "zone" => Ok(Subject::zone(id)),
            "input" => Ok(Subject::input(id)),
            _ => Err(bad()),
        }
    }
}

impl Serialize for Subject {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Subject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What a device can do, independent of its make. Rules, self-tests and the API speak these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    Power,
    Lamp,
    Filter,
    Input,
    AvMute,
    Battery,
    TxPresent,
    Rf,
    Audio,
    Gain,
    Mute,
    Level,
    Meter,
    Temperature,
    Setpoint,
    HvacMode,
    HvacRunning,
    Identity,
}

impl Capability {
    pub const ALL: &'static [Capability] = &[
        Capability::Power,
        Capability::Lamp,
        Capability::Filter,
        Capability::Input,
        Capability::AvMute,
        Capability::Battery,
        Capability::TxPresent,
        Capability::Rf,
        Capability::Audio,
        Capability::Gain,
        Capability::Mute,
        Capability::Level,
        Capability::Meter,
        Capability::Temperature,
        Capability::Setpoint,
        Capability::HvacMode,
        Capability::HvacRunning,
        Capability::Identity,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Power => "power",
            Capability::Lamp => "lamp",
            Capability::Filter => "filter",
            Capability::Input => "input",
            Capability::AvMute => "av_mute",
            Capability::Battery => "battery",
            Capability::TxPresent => "tx_present",
            Capability::Rf => "rf",
            Capability::Audio => "audio",
            Capability::Gain => "gain",
            Capability::Mute => "mute",
            Capability::Level => "level",
            Capability::Meter => "meter",
            Capability::Temperature => "temperature",
            Capability::Setpoint => "setpoint",
            Capability::HvacMode => "hvac_mode",
            Capability::HvacRunning => "hvac_running",
            Capability::Identity => "identity",
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Power as the room sees it. `Unknown` is what a device that never answered has; a device that
/// stopped answering keeps its last value, marked stale, and never turns into `Off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerState {
    Off,
    On,
    WarmingUp,
    CoolingDown,
    /// The device reports an abnormal standby (ESC/VP21 `05`).
    Abnormal,
}

impl PowerState {
    pub fn is_transitional(self) -> bool {
        matches!(self, PowerState::WarmingUp | PowerState::CoolingDown)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    Hours,
    Minutes,
    Seconds,
    Percent,
    Dbm,
    Dbfs,
    Db,
    Celsius,
    Count,
}

impl Unit {
    /// Decimal places a quantity in this unit means anything to: levels to 0.1 dB and
    /// temperatures to 0.1 °C. A device's float noise (Tesira `-33.299999`) beyond that is
    /// not information. `None` for units that are whole or kept as reported.
    pub fn decimals(self) -> Option<i32> {
        match self {
            Unit::Dbm | Unit::Dbfs | Unit::Db | Unit::Celsius => Some(1),
            Unit::Hours | Unit::Minutes | Unit::Seconds | Unit::Percent | Unit::Count => None,
        }
    }
}

/// A reading's value. `Unknown` is a value in its own right: device sentinels (Shure 255,
/// 65535, `UNKN`) become `Unknown`, never a number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
pub enum Value {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    Power(PowerState),
    Unknown,
}

impl Value {
    /// This value rounded to the meaningful precision of `unit` (see [`Unit::decimals`]);
    /// anything but a float is returned as it is.
    pub fn rounded_for(self, unit: Option<Unit>) -> Value {
        match (self, unit.and_then(Unit::decimals)) {
            (Value::Float(f), Some(d)) if f.is_finite() => Value::Float(round_to(f, d)),
            (v, _) => v,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_power(&self) -> Option<PowerState> {
        match self {
            Value::Power(p) => Some(*p),
            _ => None,
        }
    }
}

/// `f` rounded half away from zero to `decimals` places, as exactly as an `f64` can hold it.
pub fn round_to(f: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    let r = (f * scale).round() / scale;
    // -0.0 reads as a sign that is not there.
    if r == 0.0 {
        0.0
    } else {
        r
    }
}

/// One observed value of a [`Point`], with the instant the device told us it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    #[serde(rename = "key")]
    pub point: Point,
    pub value: Value,
    /// The instant the device told us this value (not the instant we show it).
    pub observed_at: DateTime<Utc>,
    /// A meter level, refreshed at the device's meter period: stale once older than three
    /// periods (see [`Freshness`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub metered: bool,
}

impl Reading {
    /// A polled or reported value observed `at`, rounded to its unit's meaningful precision.
    pub fn new(point: Point, value: Value, at: DateTime<Utc>) -> Self {
        let value = value.rounded_for(point.unit());
        Self {
            point,
            value,
            observed_at: at,
            metered: false,
        }
    }

    /// A value refreshed at the device's meter period.
    pub fn metered(point: Point, value: Value, at: DateTime<Utc>) -> Self {
        Self {
            metered: true,
            ..Self::new(point, value, at)
        }
    }

    /// The unit of its value, from its quantity.
    pub fn unit(&self) -> Option<Unit> {
        self.point.unit()
    }
}

/// A meter is stale, and lost, once silent for this many of its periods.
pub const METER_STALE_PERIODS: u32 = 3;

/// When a device's silence becomes news: from its profile's timing, or declared by its driver
/// for the session (a receiver with a heartbeat: a heartbeat unanswered, then its silence
/// limit). Silent for `warn_after` the device is `comms_slow`, for `offline_after`
/// unreachable; the runtime's comms monitor applies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommsPolicy {
    pub warn_after: std::time::Duration,
    pub offline_after: std::time::Duration,
}

impl CommsPolicy {
    /// For a polled device: one poll without an answer is slow, `polls` of them offline.
    pub fn polled(
        poll_interval: std::time::Duration,
        reply_timeout: std::time::Duration,
        polls: u32,
    ) -> Self {
        let warn_after = poll_interval + reply_timeout;
        Self {
            warn_after,
            offline_after: (poll_interval * polls.max(1) + reply_timeout).max(warn_after),
        }
    }
}

/// How long what a device said stays current, as its driver declares it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Freshness {
    /// The meter period: a metered reading older than three periods is stale (the samples
    /// stopped, the level is no longer known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meter_period_ms: Option<u64>,
    /// A device connected but silent longer than this (its comms monitor's warning time) has
    /// readings that are stale, although the link is still up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiet_after_ms: Option<u64>,
}

impl Freshness {
    /// Samples older than this are no longer a meter's present level.
    pub fn meter_limit(&self) -> Option<chrono::Duration> {
        self.meter_period_ms.map(|p| {
            let ms = p.saturating_mul(u64::from(METER_STALE_PERIODS));
            chrono::Duration::milliseconds(i64::try_from(ms).unwrap_or(i64::MAX))
        })
    }
}

/// How urgent a fault is for the room: a warning degrades, a fault makes the function unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Warning,
    Fault,
}

/// A condition the device reports (or we infer) that needs attention. A fault is data, not an
/// error: a lamp failure is a `Fault`, never an `Err`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fault {
    /// Stable machine code, e.g. `lamp`, `filter`, `temperature`, `auth_failed`, `abnormal_state`.
    pub code: String,
    pub severity: Severity,
    /// The component it concerns (`lamp 1`, `channel 2`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
    /// One line for the technician.
    pub message: String,
}

impl Fault {
    pub fn new(code: impl Into<String>, severity: Severity, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            severity,
            component: None,
            message: message.into(),
        }
    }
    pub fn on(mut self, component: impl Into<String>) -> Self {
        self.component = Some(component.into());
        self
    }
    /// Faults are identified by code and component: the message may change between polls.
    pub fn identity(&self) -> (String, Option<String>) {
        (self.code.clone(), self.component.clone())
    }
}

/// The honest status of a device (DESIGN.md "Honest status").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Never contacted yet.
    Unknown,
    Ok,
    /// Warming up or cooling down: answering, but not accepting every command.
    Busy,
    /// Working, with warnings.
    Degraded,
    /// A fault makes (part of) the device unusable.
    Faulted,
    /// Link down, or no reply for N polls. Never shown as "off".
    Unreachable,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Ok => "ok",
            Health::Busy => "busy",
            Health::Degraded => "degraded",
            Health::Faulted => "faulted",
            Health::Unreachable => "unreachable",
        }
    }

    /// Derive health from what is known about a device. Pure, so the rule is in one place.
    ///
    /// `contacted`: the device has answered since the daemon started; `reachable`: its session
    /// is up and it answers now; `link_failed`: the last attempt to reach it failed.
    pub fn derive(
        contacted: bool,
        reachable: bool,
        link_failed: bool,
        busy: bool,
        faults: &[Fault],
    ) -> Health {
        Health::from_flags(
            contacted,
            reachable,
            link_failed,
            busy,
            faults.iter().any(|f| f.severity == Severity::Fault),
            !faults.is_empty(),
        )
    }

    /// [`Health::derive`] from what it needs of the faults: whether one is a fault and
    /// whether there is any.
    fn from_flags(
        contacted: bool,
        reachable: bool,
        link_failed: bool,
        busy: bool,
        faulted: bool,
        any_fault: bool,
    ) -> Health {
        if !reachable {
            // Before the first session completes the device is unknown, not unreachable,
            // unless an attempt to reach it has already failed.
            return if contacted || link_failed {
                Health::Unreachable
            } else {
                Health::Unknown
            };
        }
        if faulted {
            Health::Faulted
        } else if busy {
            Health::Busy
        } else if any_fault {
            Health::Degraded
        } else {
            Health::Ok
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a device says about itself; feeds the equipment archive.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manufacturer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub firmware: Option<String>,
    /// Anything else the protocol reports (PJLink class, replacement lamp model, …).
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub extra: BTreeMap<String, String>,
}

impl Identity {
    pub fn is_empty(&self) -> bool {
        *self == Identity::default()
    }
}

/// A command any layer may send to a device, in capability terms. Drivers map them to the wire;
/// a driver that cannot do one answers `DriverError::Unsupported`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum DeviceCommand {
    /// Switch power on or off.
    Power { on: bool },
    /// Select an input by the device's own code (PJLink `31`, ESC/VP21 `30`).
    SelectInput { input: String },
    /// Picture and sound mute on a display.
    AvMute { on: bool },
    /// Gain of a channel in dB (mic receiver channel, DSP input).
    SetGain { channel: u16, db: f64 },
    /// Mute of a channel.
    SetMute { channel: u16, on: bool },
    /// Output level of a named zone in dB (DSP).
    SetLevel { zone: String, db: f64 },
    /// Mute of a named zone.
    SetZoneMute { zone: String, on: bool },
    /// Read one named zone's output level now (one exchange): what the level watch asks
    /// before a restore step, instead of a `Refresh` of every control.
    ReadZoneLevel { zone: String },
    /// HVAC setpoint in °C.
    SetSetpoint { celsius: f64 },
    /// HVAC mode (`off`, `heat`, `cool`, `auto`, `fan`).
    SetHvacMode { mode: String },
    /// Re-read everything now (technician's "refresh").
    Refresh,
}

impl DeviceCommand {
    /// One of each command, for tables that go through them all (arguments are examples).
    pub fn samples() -> Vec<DeviceCommand> {
        vec![
            DeviceCommand::Power { on: true },
            DeviceCommand::SelectInput { input: "31".into() },
            DeviceCommand::AvMute { on: false },
            DeviceCommand::SetGain {
                channel: 1,
                db: 0.0,
            },
            DeviceCommand::SetMute {
                channel: 1,
                on: false,
            },
            DeviceCommand::SetLevel {
                zone: "main".into(),
                db: -20.0,
            },
            DeviceCommand::SetZoneMute {
                zone: "main".into(),
                on: false,
            },
            DeviceCommand::ReadZoneLevel {
                zone: "main".into(),
            },
            DeviceCommand::SetSetpoint { celsius: 23.0 },
            DeviceCommand::SetHvacMode {
                mode: "cool".into(),
            },
            DeviceCommand::Refresh,
        ]
    }

    /// The capability a device must have to take this command (`None`: every device).
    pub fn capability(&self) -> Option<Capability> {
        Some(match self {
            DeviceCommand::Power { .. } => Capability::Power,
            DeviceCommand::SelectInput { .. } => Capability::Input,
            DeviceCommand::AvMute { .. } => Capability::AvMute,
            DeviceCommand::SetGain { .. } => Capability::Gain,
            DeviceCommand::SetMute { .. } => Capability::Mute,
            // Zones are what a device with output levels has (a DSP), not a mic's channels.
            DeviceCommand::SetLevel { .. }
            | DeviceCommand::SetZoneMute { .. }
            | DeviceCommand::ReadZoneLevel { .. } => Capability::Level,
            DeviceCommand::SetSetpoint { .. } => Capability::Setpoint,
            DeviceCommand::SetHvacMode { .. } => Capability::HvacMode,
            DeviceCommand::Refresh => return None,
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            DeviceCommand::Power { .. } => "power",
            DeviceCommand::SelectInput { .. } => "select_input",
            DeviceCommand::AvMute { .. } => "av_mute",
            DeviceCommand::SetGain { .. } => "set_gain",
            DeviceCommand::SetMute { .. } => "set_mute",
            DeviceCommand::SetLevel { .. } => "set_level",
            DeviceCommand::SetZoneMute { .. } => "set_zone_mute",
            DeviceCommand::ReadZoneLevel { .. } => "read_zone_level",
            DeviceCommand::SetSetpoint { .. } => "set_setpoint",
            DeviceCommand::SetHvacMode { .. } => "set_hvac_mode",
            DeviceCommand::Refresh => "refresh",
        }
    }
}

/// A fault with the instant it was first seen and the instant it was last confirmed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActiveFault {
    #[serde(flatten)]
    pub fault: Fault,
    pub since: DateTime<Utc>,
    /// The last instant the source still reported it (the device's last answer saying so).
    pub confirmed_at: DateTime<Utc>,
    /// Reported by the device (its status, its readings), not avwarden's own finding about
    /// the link: such a fault is stale, not current, while the device is unreachable.
    #[serde(default, skip_serializing)]
    pub from_device: bool,
}

impl ActiveFault {
    /// The device cannot be asked: what it said last is kept, but may no longer hold.
    pub fn stale(&self, reachable: bool) -> bool {
        self.from_device && !reachable
    }
}

/// Link status as the technician sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkStatus {
    pub up: bool,
    /// When the link last went up or down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Failed connection attempts since the link was last up.
    pub reconnect_attempts: u32,
    /// Human description of the link (`tcp 10.0.0.5:4352`, `serial /dev/ttyUSB0 9600 8N1`).
    pub describe: String,
}

/// Counters of bad input and missed replies; bounded input, counted, logged once.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkCounters {
    pub bad_frames: u64,
    pub oversized_frames: u64,
    pub timeouts: u64,
    pub reconnects: u64,
    pub commands_ok: u64,
    pub commands_failed: u64,
}

/// Everything known about one device right now. Published by its actor on a `watch` channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceState {
    pub id: DeviceId,
    pub room: RoomId,
    pub profile: ProfileId,
    pub health: Health,
    pub health_since: DateTime<Utc>,
    /// True once the device has answered at least once since the daemon started.
    pub contacted: bool,
    /// Link up and answering.
    pub reachable: bool,
    /// Warming up / cooling down.
    pub busy: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_contact: Option<DateTime<Utc>>,
    pub readings: BTreeMap<Point, Reading>,
    pub faults: Vec<ActiveFault>,
    pub identity: Identity,
    pub link: LinkStatus,
    pub counters: LinkCounters,
    #[serde(default)]
    pub freshness: Freshness,
}

impl DeviceState {
    pub fn new(
        id: DeviceId,
        room: RoomId,
        profile: ProfileId,
        link: String,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            id,
            room,
            profile,
            health: Health::Unknown,
            health_since: now,
            contacted: false,
            reachable: false,
            busy: false,
            last_contact: None,
            readings: BTreeMap::new(),
            faults: Vec::new(),
            identity: Identity::default(),
            link: LinkStatus {
                up: false,
                since: None,
                last_error: None,
                reconnect_attempts: 0,
                describe: link,
            },
            counters: LinkCounters::default(),
            freshness: Freshness::default(),
        }
    }

    /// Whether all readings are the last known values at `now`, not the present ones: the
    /// device is unreachable, or connected but silent past its comms monitor's warning time.
    pub fn readings_stale_at(&self, now: DateTime<Utc>) -> bool {
        self.readings_stale()
            || self.freshness.quiet_after_ms.is_some_and(|q| {
                self.last_contact.is_some_and(|c| {
                    (now - c).num_milliseconds() > i64::try_from(q).unwrap_or(i64::MAX)
                })
            })
    }

    /// Whether `r` is a meter whose samples stopped (older than its periods allow) at `now`.
    pub fn meter_stale(&self, r: &Reading, now: DateTime<Utc>) -> bool {
        r.metered && self.sample_stale(r.observed_at, now)
    }

    /// Whether a meter sample taken at `at` is older at `now` than the meter periods allow.
    pub fn sample_stale(&self, at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        self.freshness
            .meter_limit()
            .is_some_and(|limit| now - at > limit)
    }

    pub fn reading(&self, point: &Point) -> Option<&Reading> {
        self.readings.get(point)
    }

    /// The value of `point`, if the device reported it.
    pub fn value(&self, point: &Point) -> Option<&Value> {
        self.readings.get(point).map(|r| &r.value)
    }

    /// Readings are stale while the device is unreachable: they are the last known values, not
    /// the present ones.
    pub fn readings_stale(&self) -> bool {
        !self.reachable
    }

    /// Recompute health from the facts; returns the previous health when it changed.
    pub fn refresh_health(&mut self, now: DateTime<Utc>) -> Option<Health> {
        // Called on every state update (every meter sample): the faults are looked at where
        // they lie, not copied (issue 15.2).
        let link_failed = !self.link.up && self.link.last_error.is_some();
        let h = Health::from_flags(
            self.contacted,
            self.reachable,
            link_failed,
            self.busy,
            self.faults
                .iter()
                .any(|a| a.fault.severity == Severity::Fault),
            !self.faults.is_empty(),
        );
        if h != self.health {
            let prev = self.health;
            self.health = h;
            self.health_since = now;
            Some(prev)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_written_and_read_back_alike() {
        for (s, text) in [
            (Subject::Device, "device"),
            (Subject::Channel(2), "ch.2"),
            (Subject::zone("main"), "zone.main"),
            (Subject::input("lectern"), "input.lectern"),
            (Subject::Lamp(1), "lamp.1"),
        ] {
            assert_eq!(s.to_string(), text);
            assert_eq!(text.parse::<Subject>(), Ok(s.clone()));
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{text}\""));
            assert_eq!(serde_json::from_str::<Subject>(&json).unwrap(), s);
        }
        for bad in [
            "",
            "ch",
            "ch.",
            "ch.x",
            "ch.300",
            "speaker.1",
            "zone.",
            "lamp.-1",
        ] {
            assert!(bad.parse::<Subject>().is_err(), "{bad:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_subject_round_trips(n in 0u8.., id in "[a-z0-9_-]{1,12}", kind in 0..5u8) {
            let s = match kind {
                0 => Subject::Device,
                1 => Subject::Channel(n),
                2 => Subject::zone(&id),
                3 => Subject::input(&id),
                _ => Subject::Lamp(n),
            };
            proptest::prop_assert_eq!(s.to_string().parse::<Subject>(), Ok(s));
        }
    }

    fn fault(sev: Severity) -> Fault {
        Fault::new("x", sev, "x")
    }

    /// Issue 14.7: levels and temperatures to their meaningful 0.1, other values untouched.
    #[test]
    fn values_are_rounded_to_their_units_precision() {
        let cases = [
            (
                Value::Float(-33.299999),
                Some(Unit::Db),
                Value::Float(-33.3),
            ),
            (
                Value::Float(-35.299999),
                Some(Unit::Dbfs),
                Value::Float(-35.3),
            ),
            (
                Value::Float(22.449),
                Some(Unit::Celsius),
                Value::Float(22.4),
            ),
            (Value::Float(-0.04), Some(Unit::Dbm), Value::Float(0.0)),
            (
                Value::Float(1.2345),
                Some(Unit::Hours),
                Value::Float(1.2345),
            ),
            (Value::Float(578.35), None, Value::Float(578.35)),
            (Value::Int(7), Some(Unit::Db), Value::Int(7)),
            (Value::Unknown, Some(Unit::Db), Value::Unknown),
        ];
        for (v, unit, want) in cases {
            let got = v.clone().rounded_for(unit);
            assert_eq!(got, want, "{v:?} in {unit:?}");
            if let Value::Float(f) = got {
                assert!(!(f == 0.0 && f.is_sign_negative()), "no -0.0");
            }
        }
    }

    #[test]
    fn health_rules() {
        let w = [fault(Severity::Warning)];
        let f = [fault(Severity::Fault)];
        // (contacted, reachable, link_failed, busy, faults) -> health
        assert_eq!(
            Health::derive(false, false, false, false, &[]),
            Health::Unknown
        );
        assert_eq!(
            Health::derive(false, false, true, false, &[]),
            Health::Unreachable
        );
        assert_eq!(
            Health::derive(true, false, false, false, &[]),
            Health::Unreachable
        );
        assert_eq!(Health::derive(true, true, false, false, &[]), Health::Ok);
        assert_eq!(Health::derive(true, true, false, true, &[]), Health::Busy);
        assert_eq!(
            Health::derive(true, true, false, false, &w),
            Health::Degraded
        );
        assert_eq!(Health::derive(true, true, false, true, &f), Health::Faulted);
        // Unreachable beats everything: a stale fault does not make an unreachable device
        // "faulted", and a stale "busy" does not make it "warming up".
        assert_eq!(
            Health::derive(true, false, true, true, &f),
            Health::Unreachable
        );
    }
}
