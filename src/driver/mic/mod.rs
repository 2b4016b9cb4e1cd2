//! Wireless microphone receivers: Shure command strings ([`shure`]) and Sennheiser SSC
//! ([`ssc`]).
//!
//! This module owns what both vendors share once vendor vocabulary is gone: the per-channel
//! state in neutral terms ([`Channel`]), the readings it publishes (`ch.N.battery_minutes`, …,
//! the keys self-tests and the playbook use), the fault policy (low battery, interference,
//! encryption mismatch, absent transmitter) and how profile options are overridden by a
//! device's site settings. It must not know any wire format.

pub mod shure;
pub mod ssc;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::de::DeserializeOwned;

use super::{DriverError, Observer};
use crate::model::{Capability, Fault, Point, Quantity, Reading, Severity, Subject, Value};
use crate::profile::{Profile, ProfileError};

/// A value a receiver reports, or says it does not know, or never mentioned (the family lacks
/// it: no reading is published then).
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Known<T> {
    #[default]
    NotReported,
    Unknown,
    Value(T),
}

impl<T> Known<T> {
    pub fn from_option(v: Option<T>) -> Self {
        v.map_or(Known::Unknown, Known::Value)
    }
    pub fn value(&self) -> Option<&T> {
        match self {
            Known::Value(v) => Some(v),
            _ => None,
        }
    }
    pub fn is_reported(&self) -> bool {
        !matches!(self, Known::NotReported)
    }
}

/// One receiver channel in vendor-neutral terms.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Channel {
    /// `None` until the receiver said anything that tells.
    pub tx_present: Option<bool>,
    pub tx_model: Known<String>,
    pub tx_muted: Known<bool>,
    pub battery_bars: Known<u8>,
    pub battery_percent: Known<u8>,
    /// Always minutes, whatever unit the wire used.
    pub battery_minutes: Known<u32>,
    pub battery_type: Known<String>,
    pub battery_cycles: Known<u32>,
    /// The receiver cannot talk to the battery (Shure 65533): a warning, not a value.
    pub battery_comm_warning: bool,
    /// The receiver itself flags a low battery (SSC `LowBattery` / `Low Bat`).
    pub device_low_battery: bool,
    pub gain_db: Known<f64>,
    pub muted: Known<bool>,
    pub interference: Known<bool>,
    pub encryption_ok: Known<bool>,
    pub name: Known<String>,
    /// Carrier frequency, MHz (what the technician compares with the frequency plan).
    pub frequency_mhz: Known<f64>,
}

fn known<T: Clone>(k: &Known<T>, f: impl Fn(T) -> Value) -> Option<Value> {
    match k {
        Known::NotReported => None,
        Known::Unknown => Some(Value::Unknown),
        Known::Value(v) => Some(f(v.clone())),
    }
}

impl Channel {
    /// Whether a transmitter is on air now (unknown counts as absent for battery purposes).
    pub fn present(&self) -> bool {
        self.tx_present == Some(true)
    }

    /// The readings this channel publishes. A transmitter that is gone makes its battery and
    /// transmitter readings `unknown` (never 0), whatever stale values the receiver still holds.
    pub fn readings(&self, n: u8) -> Vec<(Point, Value)> {
        let mut out = Vec::new();
        let mut push = |q: Quantity, v: Option<Value>| {
            if let Some(v) = v {
                out.push((Point::channel(n, q), v));
            }
        };
        let gone = self.tx_present == Some(false);
        let tx = |v: Option<Value>| if gone { v.map(|_| Value::Unknown) } else { v };
        push(Quantity::TxPresent, self.tx_present.map(Value::Bool));
        push(Quantity::TxModel, tx(known(&self.tx_model, Value::Text)));
        push(Quantity::TxMuted, tx(known(&self.tx_muted, Value::Bool)));
        push(
            Quantity::BatteryBars,
            tx(known(&self.battery_bars, |b| Value::Int(b.into()))),
        );
        push(
            Quantity::BatteryPercent,
            tx(known(&self.battery_percent, |p| Value::Int(p.into()))),
        );
        push(
            Quantity::BatteryMinutes,
            tx(known(&self.battery_minutes, |m| Value::Int(m.into()))),
        );
        push(
            Quantity::BatteryType,
            tx(known(&self.battery_type, Value::Text)),
        );
        push(
            Quantity::BatteryCycles,
            tx(known(&self.battery_cycles, |c| Value::Int(c.into()))),
        );
        push(Quantity::GainDb, known(&self.gain_db, Value::Float));
        push(Quantity::Muted, known(&self.muted, Value::Bool));
        push(
            Quantity::Interference,
            known(&self.interference, Value::Bool),
        );
        push(
            Quantity::EncryptionOk,
            tx(known(&self.encryption_ok, Value::Bool)),
        );
        push(Quantity::Name, known(&self.name, Value::Text));
        push(
            Quantity::FrequencyMhz,
            known(&self.frequency_mhz, Value::Float),
        );
        out
    }
}

/// Fault thresholds and expectations, from profile options overridden by device settings.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultPolicy {
    /// Warning at or below this many minutes.
    pub battery_low_minutes: u32,
    /// Fault at or below this many minutes.
    pub battery_critical_minutes: u32,
    /// When minutes are unknown (alkaline cells report bars only): warning at or below.
    pub battery_low_bars: u8,
    pub battery_critical_bars: u8,
    /// Channels whose transmitter must be on air; absence is a fault only there.
    pub expected_channels: BTreeSet<u8>,
}

impl FaultPolicy {
    pub fn from_options(o: &Options<'_>) -> Result<Self, ProfileError> {
        let p = FaultPolicy {
            battery_low_minutes: o.get("battery_low_minutes", 60u32)?,
            battery_critical_minutes: o.get("battery_critical_minutes", 20u32)?,
            battery_low_bars: o.get("battery_low_bars", 2u8)?,
            battery_critical_bars: o.get("battery_critical_bars", 1u8)?,
            expected_channels: o
                .get("expected_channels", Vec::<u8>::new())?
                .into_iter()
                .collect(),
        };
        if p.battery_critical_minutes > p.battery_low_minutes {
            return Err(o.error(
                "battery_critical_minutes",
                "must not exceed battery_low_minutes",
            ));
        }
        Ok(p)
    }
}

/// The faults of one channel (pure: a function of what is known and the policy).
pub fn channel_faults(n: u8, ch: &Channel, policy: &FaultPolicy) -> Vec<Fault> {
    let component = format!("channel {n}");
    let mut out = Vec::new();
    let mut add = |code: &str, sev: Severity, msg: String| {
        out.push(Fault::new(code, sev, msg).on(component.clone()));
    };
    if ch.present() {
        let low = match (&ch.battery_minutes, ch.battery_bars.value()) {
            (Known::Value(m), _) if *m <= policy.battery_critical_minutes => Some((
                Severity::Fault,
                format!("{m} min of battery left on channel {n}; change it now"),
            )),
            (Known::Value(m), _) if *m <= policy.battery_low_minutes => Some((
                Severity::Warning,
                format!(
                    "{m} min of battery left on channel {n}; change it before the next meeting"
                ),
            )),
            (Known::Value(_), _) => None,
            (_, Some(b)) if *b <= policy.battery_critical_bars => Some((
                Severity::Fault,
                format!("battery on channel {n} at {b} of 5 bars; change it now"),
            )),
            (_, Some(b)) if *b <= policy.battery_low_bars => Some((
                Severity::Warning,
                format!("battery on channel {n} at {b} of 5 bars"),
            )),
            _ => None,
        };
        match low {
            Some((sev, msg)) => add("battery_low", sev, msg),
            None if ch.device_low_battery => add(
                "battery_low",
                Severity::Warning,
                format!("receiver reports a low battery on channel {n}"),
            ),
            None => {}
        }
        if ch.battery_comm_warning {
            add(
                "battery_comm",
                Severity::Warning,
                format!(
                    "receiver cannot read the battery on channel {n}; check the battery contacts"
                ),
            );
        }
        if ch.encryption_ok == Known::Value(false) {
            add(
                "encryption_mismatch",
                Severity::Fault,
                format!("transmitter on channel {n} does not match the receiver's encryption; re-sync it (IR)"),
            );
        }
    } else if ch.tx_present == Some(false) && policy.expected_channels.contains(&n) {
        add(
            "tx_absent",
            Severity::Warning,
            format!("no transmitter on air on channel {n}; switch it on or fit batteries"),
        );
    }
    if ch.interference == Known::Value(true) {
        add(
            "interference",
            Severity::Warning,
            format!("RF interference on channel {n}; consider another frequency"),
        );
    }
    out
}

/// Profile options with a device's site settings taking precedence (per-installation facts
/// such as channel count or expected transmitters).
pub struct Options<'a> {
    pub profile: &'a Profile,
    pub settings: &'a toml::Table,
}

impl<'a> Options<'a> {
    pub fn new(profile: &'a Profile, settings: &'a toml::Table) -> Self {
        Self { profile, settings }
    }

    pub fn get<T: DeserializeOwned>(&self, key: &str, default: T) -> Result<T, ProfileError> {
        match self.settings.get(key) {
            Some(v) => v
                .clone()
                .try_into()
                .map_err(|e: toml::de::Error| ProfileError::Option {
                    profile: format!("{} (device settings)", self.profile.id),
                    key: key.to_owned(),
                    message: e.message().to_owned(),
                }),
            None => self.profile.option(key, default),
        }
    }

    pub fn error(&self, key: &str, message: &str) -> ProfileError {
        ProfileError::Option {
            profile: self.profile.id.to_string(),
            key: key.to_owned(),
            message: message.to_owned(),
        }
    }
}

/// A command's channel as the receiver numbers it (1 to `count`), or a refusal.
pub fn channel_arg(channel: u16, count: u8) -> Result<u8, DriverError> {
    u8::try_from(channel)
        .ok()
        .filter(|c| (1..=count).contains(c))
        .ok_or_else(|| DriverError::Rejected {
            command: "channel".to_owned(),
            reason: format!("channel {channel} does not exist (1-{count})"),
        })
}

/// Refuse a gain (already rounded to the receiver's step) outside the profile's range.
pub fn check_gain(db: f64, min_db: f64, max_db: f64) -> Result<(), DriverError> {
    if !db.is_finite() || db < min_db || db > max_db {
        return Err(DriverError::Rejected {
            command: "set_gain".to_owned(),
            reason: format!("{db} dB is outside {min_db}…{max_db} dB"),
        });
    }
    Ok(())
}

/// Channels of a model from the profile's `model_channels` table: the longest key the model
/// name contains wins (`SLXD4D` beats `SLXD4` for `SLXD4D+`).
pub fn channels_for_model(table: &BTreeMap<String, u8>, model: &str) -> Option<u8> {
    let m = model.to_ascii_uppercase();
    table
        .iter()
        .filter(|(k, _)| m.contains(&k.to_ascii_uppercase()))
        .max_by_key(|(k, _)| k.len())
        .map(|(_, n)| *n)
}

/// A channel without a transmitter: its receiver's RF and audio meters read their floor
/// (ULX-D -128 dBm / -50 dBFS, SLX-D and AD -120 / -120), which is not a level but the
/// absence of one, so the RF reading is unknown (and the audio level, on the meter board).
fn absent_rf(n: u8) -> (Point, Value) {
    (Point::channel(n, Quantity::RfDbm), Value::Unknown)
}

/// Writes readings to the device state, skipping derived values that did not change so that a
/// reading's instant stays the instant the receiver told us, and faults per channel.
#[derive(Debug, Default, Clone)]
pub struct Publisher {
    last: HashMap<Point, Value>,
    /// While a full read is under way, faults wait until the channel is read completely:
    /// judged from half a channel (bars before minutes), a good battery would be raised as
    /// low and cleared a moment later, in the log and the logbook.
    hold_faults: bool,
    /// The capabilities the profile declares (`None`: all). A receiver may report more than
    /// its profile promises (QLX-D's transmitter mute, SpeechLine's absent-transmitter RF
    /// floor); a consumer must be able to trust the catalogue, so the rest is not published.
    declared: Option<Vec<Capability>>,
}

impl Publisher {
    /// A publisher that publishes only what `profile` declares.
    pub fn for_profile(profile: &Profile) -> Self {
        Self {
            declared: Some(profile.capabilities.clone()),
            ..Self::default()
        }
    }

    fn declares(&self, quantity: Quantity) -> bool {
        match (&self.declared, quantity.capability()) {
            (Some(caps), Some(c)) => caps.contains(&c),
            _ => true,
        }
    }

    /// Forget what was published (after a reconnect everything is re-stamped).
    pub fn reset(&mut self) {
        self.last.clear();
        self.hold_faults = false;
    }

    /// Hold fault evaluation (during a full read) or resume it.
    pub fn hold_faults(&mut self, hold: bool) {
        self.hold_faults = hold;
    }

    /// Publish a channel's faults now, held or not (at the end of its full read).
    pub fn channel_faults(
        &mut self,
        obs: &mut Observer,
        n: u8,
        ch: &Channel,
        policy: &FaultPolicy,
    ) {
        obs.faults(
            &Subject::Channel(n).to_string(),
            channel_faults(n, ch, policy),
        );
    }

    /// Publish a channel's readings and faults. `touched` are the quantities the receiver
    /// just reported: they are re-stamped even when unchanged.
    pub fn channel(
        &mut self,
        obs: &mut Observer,
        n: u8,
        ch: &Channel,
        policy: &FaultPolicy,
        touched: &[Quantity],
    ) {
        let mut all = ch.readings(n);
        if ch.tx_present == Some(false) {
            all.push(absent_rf(n));
            if self.declares(Quantity::AudioDbfs) {
                obs.board().unknown(&Subject::Channel(n));
            }
        }
        let readings: Vec<_> = all
            .into_iter()
            .filter(|(p, v)| touched.contains(&p.quantity) || self.last.get(p) != Some(v))
            .filter(|(p, _)| self.declares(p.quantity))
            .collect();
        self.write(obs, readings);
        if !self.hold_faults {
            obs.faults(
                &Subject::Channel(n).to_string(),
                channel_faults(n, ch, policy),
            );
        }
    }

    /// Write readings in one state update.
    pub fn write(&mut self, obs: &mut Observer, readings: Vec<(Point, Value)>) {
        if readings.is_empty() {
            return;
        }
        let now = obs.now();
        let readings: Vec<Reading> = readings
            .into_iter()
            .map(|(p, v)| Reading::new(p, v, now))
            .collect();
        for r in &readings {
            self.last.insert(r.point.clone(), r.value.clone());
        }
        obs.update(|s| {
            s.last_contact = Some(now);
            for r in readings {
                s.readings.insert(r.point.clone(), r);
            }
        });
    }

    /// Meter levels of one sample: the RF reading `ch.N.rf_dbm` and the channel's audio level
    /// on the meter stream. A channel whose transmitter is absent (`tx_present` false)
    /// reports its meters' floor, not a level: its RF and audio are unknown.
    pub fn meters(
        &mut self,
        obs: &mut Observer,
        n: u8,
        tx_present: Option<bool>,
        rf_dbm: Option<f64>,
        audio_dbfs: Option<f64>,
    ) {
        let subject = Subject::Channel(n);
        let metered = self.declares(Quantity::AudioDbfs);
        if tx_present == Some(false) {
            let (p, v) = absent_rf(n);
            if self.declares(p.quantity) && self.last.get(&p) != Some(&v) {
                self.write(obs, vec![(p, v)]);
            }
            if metered {
                obs.meter_unknown(&subject);
            }
            return;
        }
        if let Some(rf) = rf_dbm.filter(|_| self.declares(Quantity::RfDbm)) {
            let p = Point::channel(n, Quantity::RfDbm);
            let v = Value::Float(rf).rounded_for(p.unit());
            // Overwritten in place: the point is the same on every sample.
            match self.last.get_mut(&p) {
                Some(last) => *last = v.clone(),
                None => {
                    self.last.insert(p.clone(), v.clone());
                }
            }
            obs.metered_reading(p, v);
        }
        if let Some(a) = audio_dbfs.filter(|_| metered) {
            obs.meter_ref(&subject, a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> FaultPolicy {
        FaultPolicy {
            battery_low_minutes: 60,
            battery_critical_minutes: 20,
            battery_low_bars: 2,
            battery_critical_bars: 1,
            expected_channels: [1].into_iter().collect(),
        }
    }

    fn codes(f: &[Fault]) -> Vec<(&str, Severity)> {
        f.iter().map(|f| (f.code.as_str(), f.severity)).collect()
    }

    #[test]
    fn battery_thresholds_are_inclusive_and_escalate() {
        let mut ch = Channel {
            tx_present: Some(true),
            battery_minutes: Known::Value(61),
            battery_bars: Known::Value(1),
            ..Default::default()
        };
        assert!(
            channel_faults(1, &ch, &policy()).is_empty(),
            "minutes beat bars"
        );
        ch.battery_minutes = Known::Value(60);
        assert_eq!(
            codes(&channel_faults(1, &ch, &policy())),
            vec![("battery_low", Severity::Warning)]
        );
        ch.battery_minutes = Known::Value(20);
        assert_eq!(
            codes(&channel_faults(1, &ch, &policy())),
            vec![("battery_low", Severity::Fault)]
        );
        // Alkaline cells: no minutes, bars decide.
        ch.battery_minutes = Known::Unknown;
        ch.battery_bars = Known::Value(2);
        assert_eq!(
            codes(&channel_faults(1, &ch, &policy())),
            vec![("battery_low", Severity::Warning)]
        );
        ch.battery_bars = Known::Value(3);
        assert!(channel_faults(1, &ch, &policy()).is_empty());
    }

    #[test]
    fn absent_transmitter_is_unknown_not_zero_and_a_fault_only_when_expected() {
        let ch = Channel {
            tx_present: Some(false),
            battery_minutes: Known::Value(0),
            battery_bars: Known::Value(0),
            battery_comm_warning: true,
            tx_model: Known::Value("ULXD2".into()),
            ..Default::default()
        };
        let r = ch.readings(2);
        let get = |q: Quantity| {
            r.iter()
                .find(|(p, _)| *p == Point::channel(2, q))
                .map(|(_, v)| v)
        };
        assert_eq!(get(Quantity::BatteryMinutes), Some(&Value::Unknown));
        assert_eq!(get(Quantity::BatteryBars), Some(&Value::Unknown));
        assert_eq!(get(Quantity::TxModel), Some(&Value::Unknown));
        assert_eq!(get(Quantity::TxPresent), Some(&Value::Bool(false)));
        assert_eq!(
            get(Quantity::BatteryPercent),
            None,
            "never reported: no reading"
        );
        assert!(channel_faults(2, &ch, &policy()).is_empty());
        assert_eq!(
            codes(&channel_faults(1, &ch, &policy())),
            vec![("tx_absent", Severity::Warning)]
        );
    }

    #[test]
    fn channel_and_gain_arguments_are_refused_outside_their_range() {
        assert_eq!(channel_arg(2, 2).unwrap(), 2);
        for bad in [0, 3, 300] {
            match channel_arg(bad, 2) {
                Err(DriverError::Rejected { command, reason }) => {
                    assert_eq!(command, "channel");
                    assert_eq!(reason, format!("channel {bad} does not exist (1-2)"));
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert!(check_gain(42.0, -18.0, 42.0).is_ok());
        for bad in [43.0, -19.0, f64::NAN] {
            assert!(
                matches!(
                    check_gain(bad, -18.0, 42.0),
                    Err(DriverError::Rejected { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn model_table_longest_match() {
        let t: BTreeMap<String, u8> = [("SLXD4", 1), ("SLXD4D", 2), ("SLXD4Q", 4)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        assert_eq!(channels_for_model(&t, "SLXD4D+"), Some(2));
        assert_eq!(channels_for_model(&t, "SLXD4"), Some(1));
        assert_eq!(channels_for_model(&t, "slxd4q+"), Some(4));
        assert_eq!(channels_for_model(&t, "AD4Q"), None);
    }

    /// Issue 8.2: SpeechLine declares neither RF nor meters, yet an absent transmitter wrote
    /// `ch.N.rf_dbm` unknown and marked its meter; QLX-D declares no mute, yet published
    /// `tx_muted`. A publisher for a profile publishes only what the profile declares.
    #[test]
    fn a_publisher_publishes_only_what_its_profile_declares() {
        let set = crate::profile::ProfileSet::embedded().expect("embedded profiles");
        let clock = crate::clock::Clock::starting_at(chrono::DateTime::UNIX_EPOCH);
        let state = crate::model::DeviceState::new(
            "d".into(),
            "r".into(),
            crate::model::ProfileId::new("p"),
            "test".into(),
            clock.now(),
        );
        let (tx, rx) = tokio::sync::watch::channel(state);
        let bus = crate::events::EventBus::new(crate::metrics::Metrics::new());
        let mut obs = Observer::new(clock, std::sync::Arc::new(tx), bus);
        let ch = Channel {
            tx_present: Some(false),
            tx_muted: Known::Value(true),
            ..Channel::default()
        };
        let all = [Quantity::RfDbm, Quantity::TxMuted, Quantity::TxPresent];
        for (id, want) in [
            // A transmitter's own mute switch belongs to the transmitter (`tx_present`), so
            // every receiver that reports it publishes it; RF only where the profile has it.
            (
                "sennheiser-speechline",
                vec![Quantity::TxMuted, Quantity::TxPresent],
            ),
            (
                "shure-qlxd",
                vec![Quantity::RfDbm, Quantity::TxMuted, Quantity::TxPresent],
            ),
            (
                "shure-ulxd",
                vec![Quantity::RfDbm, Quantity::TxMuted, Quantity::TxPresent],
            ),
        ] {
            let mut p = Publisher::for_profile(set.get(id).expect("shipped profile"));
            obs.update(|s| s.readings.clear());
            p.channel(&mut obs, 1, &ch, &policy(), &all);
            p.meters(&mut obs, 1, Some(false), Some(-90.0), Some(-40.0));
            let got: std::collections::BTreeSet<&str> = rx
                .borrow()
                .readings
                .keys()
                .map(|k| k.quantity)
                .filter(|q| all.contains(q))
                .map(|q| q.as_str())
                .collect();
            let want: std::collections::BTreeSet<&str> = want.iter().map(|q| q.as_str()).collect();
            assert_eq!(got, want, "{id}");
        }
    }
}
