//! The per-installation map from a DSP design's controls to the room's speaker zones and mic
//! inputs, read from the device's `[devices.settings]` table in the site config.
//!
//! This module owns the vendor-neutral half of that schema (`[[zones]]` / `[[mics]]` entries with
//! `id`, `channel`, `min_db`, `max_db`), strict reading of TOML with key paths for every error,
//! the reading keys and meter channel names that leave the driver, which mapped control a
//! capability command sets (and why it is refused), and the bookkeeping of mapping faults (a
//! configured tag the design does not have). How a control is addressed
//! (Tesira instance tag + index, Q-SYS control name) is parsed by each driver through
//! [`Entry`]. It must not do I/O.

use std::collections::{BTreeMap, BTreeSet};

use crate::driver::DriverError;
use crate::meter::Alignment;
use crate::model::{DeviceCommand, Fault, Point, Quantity, Severity, Subject};
use crate::profile::ProfileError;

/// A settings problem with the key path inside `[devices.settings]`, e.g. `zones[0].level_tag`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsError {
    pub key: String,
    pub message: String,
}

impl SettingsError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }

    /// As the error `driver::for_profile` returns: the key path is prefixed with `settings.` so
    /// it reads as written under the device in the site config.
    pub fn into_profile_error(self, profile: &str) -> ProfileError {
        ProfileError::Option {
            profile: profile.to_owned(),
            key: format!("settings.{}", self.key),
            message: self.message,
        }
    }

    /// The map, or every problem of it and of the settings table around it (`top`'s unknown
    /// keys), as one error.
    pub fn settle<A>(
        map: Result<DspMap<A>, Vec<SettingsError>>,
        top: &Entry<'_>,
        profile: &str,
    ) -> Result<DspMap<A>, ProfileError> {
        let unknown = top.unknown_keys();
        let problems = match map {
            Ok(m) if unknown.is_empty() => return Ok(m),
            Ok(_) => unknown,
            Err(mut e) => {
                e.extend(unknown);
                e
            }
        };
        Err(Self::all_into_profile_error(problems, profile))
    }

    /// Several problems as one error, each keeping its key path.
    pub fn all_into_profile_error(errors: Vec<SettingsError>, profile: &str) -> ProfileError {
        let mut list: Vec<ProfileError> = errors
            .into_iter()
            .map(|e| e.into_profile_error(profile))
            .collect();
        if list.len() == 1 {
            list.remove(0)
        } else {
            ProfileError::Many(list)
        }
    }
}

/// Strict reader over one TOML table: typed getters that name the key path, and a final check
/// that refuses keys nobody asked for (a misspelt `mute_tg` must not be silently ignored).
pub struct Entry<'a> {
    table: &'a toml::Table,
    path: String,
    used: BTreeSet<&'static str>,
}

impl<'a> Entry<'a> {
    pub fn new(table: &'a toml::Table, path: impl Into<String>) -> Self {
        Self {
            table,
            path: path.into(),
            used: BTreeSet::new(),
        }
    }

    /// The key path of `key` in this table.
    pub fn key(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    pub fn err(&self, key: &str, message: impl Into<String>) -> SettingsError {
        SettingsError::new(self.key(key), message)
    }

    fn get(&mut self, key: &'static str) -> Option<&'a toml::Value> {
        self.used.insert(key);
        self.table.get(key)
    }

    pub fn string(&mut self, key: &'static str) -> Result<Option<String>, SettingsError> {
        match self.get(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(self.err(key, format!("expected a string, got {}", v.type_str()))),
        }
    }

    pub fn integer(
        &mut self,
        key: &'static str,
        range: std::ops::RangeInclusive<i64>,
    ) -> Result<Option<i64>, SettingsError> {
        match self.get(key) {
            None => Ok(None),
            Some(toml::Value::Integer(i)) if range.contains(i) => Ok(Some(*i)),
            Some(toml::Value::Integer(i)) => Err(self.err(
                key,
                format!(
                    "must be between {} and {}, got {i}",
                    range.start(),
                    range.end()
                ),
            )),
            Some(v) => Err(self.err(key, format!("expected an integer, got {}", v.type_str()))),
        }
    }

    /// A number (integer or float) within `range`.
    pub fn number(
        &mut self,
        key: &'static str,
        range: std::ops::RangeInclusive<f64>,
    ) -> Result<Option<f64>, SettingsError> {
        let n = match self.get(key) {
            None => return Ok(None),
            Some(toml::Value::Integer(i)) => *i as f64,
            Some(toml::Value::Float(f)) => *f,
            Some(v) => {
                return Err(self.err(key, format!("expected a number, got {}", v.type_str())))
            }
        };
        if n.is_finite() && range.contains(&n) {
            Ok(Some(n))
        } else {
            Err(self.err(
                key,
                format!(
                    "must be between {} and {}, got {n}",
                    range.start(),
                    range.end()
                ),
            ))
        }
    }

    pub fn alignment(&mut self, key: &'static str) -> Result<Option<Alignment>, SettingsError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => Alignment::from_toml(v)
                .map(Some)
                .map_err(|e| self.err(key, e.0)),
        }
    }

    /// The level watch's `protect` key of a zone or mic: `false` (not protected), `true`
    /// (the profile's `[protection]`), or a table overriding some of its keys, each checked
    /// on its own here (a typo or an out-of-range limit stops the start at its key path).
    pub fn protect(&mut self) -> Result<Protect, SettingsError> {
        match self.get("protect") {
            None => Ok(Protect::Profile),
            Some(toml::Value::Boolean(true)) => Ok(Protect::On(toml::Table::new())),
            Some(toml::Value::Boolean(false)) => Ok(Protect::Off),
            Some(toml::Value::Table(t)) => {
                crate::levelwatch::policy::Protection::default()
                    .with_table(t, &self.key("protect"))
                    .map_err(|mut errs| {
                        let e = errs.remove(0);
                        SettingsError::new(e.key, e.message)
                    })?;
                Ok(Protect::On(t.clone()))
            }
            Some(v) => Err(self.err(
                "protect",
                format!("expected true, false or a table, got {}", v.type_str()),
            )),
        }
    }

    /// An array of tables (`[[zones]]`).
    pub fn tables(&mut self, key: &'static str) -> Result<Vec<&'a toml::Table>, SettingsError> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(toml::Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    toml::Value::Table(t) => Ok(t),
                    other => Err(SettingsError::new(
                        format!("{}[{i}]", self.key(key)),
                        format!("expected a table, got {}", other.type_str()),
                    )),
                })
                .collect(),
            Some(v) => Err(self.err(
                key,
                format!("expected an array of tables, got {}", v.type_str()),
            )),
        }
    }

    /// Refuse keys that no getter asked for.
    pub fn finish(self) -> Result<(), SettingsError> {
        match self.unknown_keys().into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Every key no getter asked for, each with the known key it most likely misspells.
    pub fn unknown_keys(&self) -> Vec<SettingsError> {
        let expected: Vec<&str> = self.used.iter().copied().collect();
        self.table
            .keys()
            .filter(|k| !self.used.contains(k.as_str()))
            .map(|k| {
                let close = expected
                    .iter()
                    .map(|e| (strsim::jaro_winkler(k, e), *e))
                    .filter(|(score, _)| *score >= 0.8)
                    .max_by(|a, b| a.0.total_cmp(&b.0));
                let message = match close {
                    Some((_, e)) => format!("unknown key; did you mean {e}?"),
                    None => format!("unknown key; expected one of: {}", expected.join(", ")),
                };
                SettingsError::new(self.key(k), message)
            })
            .collect()
    }
}

/// Whether and how the level watch protects a zone or mic (its `protect` key).
#[derive(Debug, Clone, PartialEq)]
pub enum Protect {
    /// No `protect` key: protected when the profile has a `[protection]` table.
    Profile,
    /// `protect = true` or a table: protected, these keys over the profile's (or the
    /// built-in) defaults.
    On(toml::Table),
    /// `protect = false`.
    Off,
}

/// A zone or mic as the level watch needs it: read leniently from the settings (the driver
/// reads them strictly at start, so a map that got this far is valid).
#[derive(Debug, Clone, PartialEq)]
pub struct Watched {
    pub role: Role,
    pub id: String,
    /// Mic inputs: the channel `SetGain` addresses.
    pub number: u16,
    pub min_db: f64,
    pub max_db: f64,
    /// It has both a level control and a meter: something to act on and to see by.
    pub controlled: bool,
    pub protect: Protect,
}

/// The keys that map a level control and a meter, per DSP driver (the vendors name their
/// controls differently: a Tesira instance tag, a Q-SYS named control).
const CONTROL_KEYS: &[(&str, &str)] = &[
    ("level_tag", "meter_tag"),
    ("level_control", "meter_control"),
];

/// Every zone and mic of a DSP's settings with what the level watch needs of them. Entries
/// the driver would refuse are skipped (the start stops on them anyway).
pub fn watched(settings: &toml::Table, range: LevelRange) -> Vec<Watched> {
    let mut out = Vec::new();
    for role in [Role::Zone, Role::Mic] {
        let Some(toml::Value::Array(items)) = settings.get(role.list_key()) else {
            continue;
        };
        for (i, item) in items.iter().enumerate() {
            let toml::Value::Table(t) = item else {
                continue;
            };
            let mut e = Entry::new(t, format!("{}[{i}]", role.list_key()));
            let Ok(Some(id)) = e.string("id") else {
                continue;
            };
            let number = match role {
                Role::Mic => e
                    .integer("channel", 1..=999)
                    .ok()
                    .flatten()
                    .unwrap_or(i as i64 + 1) as u16,
                Role::Zone => i as u16 + 1,
            };
            let min_db = e.number("min_db", -140.0..=40.0).ok().flatten();
            let max_db = e.number("max_db", -140.0..=40.0).ok().flatten();
            let Ok(protect) = e.protect() else {
                continue;
            };
            let controlled = CONTROL_KEYS
                .iter()
                .any(|(level, meter)| t.contains_key(*level) && t.contains_key(*meter));
            out.push(Watched {
                role,
                id,
                number,
                min_db: min_db.unwrap_or(range.min_db),
                max_db: max_db.unwrap_or(range.max_db),
                controlled,
                protect,
            });
        }
    }
    out
}

/// Whether a mapped channel is a loudspeaker zone (output) or a microphone input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Zone,
    Mic,
}

impl Role {
    pub fn prefix(self) -> &'static str {
        match self {
            Role::Zone => "zone",
            Role::Mic => "mic",
        }
    }
    pub fn list_key(self) -> &'static str {
        match self {
            Role::Zone => "zones",
            Role::Mic => "mics",
        }
    }
}

/// What a control does for a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Function {
    Level,
    Mute,
    Meter,
}

impl Function {
    pub fn as_str(self) -> &'static str {
        match self {
            Function::Level => "level",
            Function::Mute => "mute",
            Function::Meter => "meter",
        }
    }
}

/// One zone or mic input and the controls that serve it (`A`: the vendor's address).
#[derive(Debug, Clone, PartialEq)]
pub struct Channel<A> {
    pub role: Role,
    pub id: String,
    /// What its meter is about: `Zone(id)` for a zone, `Input(id)` for a mic input.
    pub subject: Subject,
    /// Mic inputs: the channel number `SetGain`/`SetMute` address. Zones: position, from 1.
    pub number: u16,
    pub level: Option<A>,
    pub mute: Option<A>,
    pub meter: Option<A>,
    /// Levels outside this range are refused before they reach the DSP (an integrator's
    /// guard against a typo or a runaway controller driving a zone into its amplifier's clip).
    pub min_db: f64,
    pub max_db: f64,
}

impl<A> Channel<A> {
    /// `zone.main.level_db` for a zone; a mic input's level is its gain, `input.lectern.gain_db`.
    pub fn level_point(&self) -> Point {
        let quantity = match self.role {
            Role::Zone => Quantity::LevelDb,
            Role::Mic => Quantity::GainDb,
        };
        Point::new(self.subject.clone(), quantity)
    }
    /// `zone.main.muted`, a boolean.
    pub fn muted_point(&self) -> Point {
        Point::new(self.subject.clone(), Quantity::Muted)
    }
    /// `zone main`: the component named in faults.
    pub fn component(&self) -> String {
        format!("{} {}", self.role.prefix(), self.id)
    }
    pub fn address(&self, f: Function) -> Option<&A> {
        match f {
            Function::Level => self.level.as_ref(),
            Function::Mute => self.mute.as_ref(),
            Function::Meter => self.meter.as_ref(),
        }
    }
}

/// Controls of one channel as a driver parsed them.
pub struct Addresses<A> {
    pub level: Option<A>,
    pub mute: Option<A>,
    pub meter: Option<A>,
}

/// All zones and mics of one DSP.
#[derive(Debug, Clone, PartialEq)]
pub struct DspMap<A> {
    pub channels: Vec<Channel<A>>,
}

/// The level range a driver allows when the site sets none (the DSP's own range).
#[derive(Debug, Clone, Copy)]
pub struct LevelRange {
    pub min_db: f64,
    pub max_db: f64,
}

impl<A> DspMap<A> {
    /// Parse `[[zones]]` and `[[mics]]` from the settings table; `addr` reads the vendor keys of
    /// one entry. Keys other than the common ones and those `addr` reads are refused.
    /// Every zone and mic of the map, or every problem found: each entry is read on its own,
    /// so three mistakes in three entries are three errors, each at its key.
    pub fn parse(
        settings: &mut Entry<'_>,
        range: LevelRange,
        mut addr: impl FnMut(&mut Entry<'_>, Role) -> Result<Addresses<A>, SettingsError>,
    ) -> Result<DspMap<A>, Vec<SettingsError>> {
        let mut channels = Vec::new();
        let mut errors = Vec::new();
        for role in [Role::Zone, Role::Mic] {
            let list_key = role.list_key();
            let tables = match settings.tables(list_key) {
                Ok(t) => t,
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            };
            let mut ids = BTreeSet::new();
            let mut numbers = BTreeSet::new();
            for (i, t) in tables.into_iter().enumerate() {
                let mut e = Entry::new(t, format!("{}[{i}]", settings.key(list_key)));
                match Self::entry(&mut e, role, i, range, &mut addr, &mut ids, &mut numbers) {
                    Ok(ch) => {
                        // Unknown keys are only known once every getter has run; a misspelt
                        // control key says more than "maps no control".
                        let unknown = e.unknown_keys();
                        if !unknown.is_empty() {
                            errors.extend(unknown);
                        } else if ch.level.is_none() && ch.mute.is_none() && ch.meter.is_none() {
                            errors.push(SettingsError::new(
                                e.path.clone(),
                                "maps no control; give at least a level, mute or meter control",
                            ));
                        } else {
                            channels.push(ch);
                        }
                    }
                    Err(err) => errors.push(err),
                }
            }
        }
        if errors.is_empty() {
            Ok(DspMap { channels })
        } else {
            Err(errors)
        }
    }

    fn entry(
        e: &mut Entry<'_>,
        role: Role,
        i: usize,
        range: LevelRange,
        addr: &mut impl FnMut(&mut Entry<'_>, Role) -> Result<Addresses<A>, SettingsError>,
        ids: &mut BTreeSet<String>,
        numbers: &mut BTreeSet<u16>,
    ) -> Result<Channel<A>, SettingsError> {
        let list_key = role.list_key();
        let id = e
            .string("id")?
            .ok_or_else(|| e.err("id", "missing; every entry needs an id"))?;
        if id.is_empty()
            || id.len() > 32
            || !id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            return Err(e.err(
                "id",
                format!("{id:?} must be 1 to 32 characters of a-z, 0-9 and _"),
            ));
        }
        if !ids.insert(id.clone()) {
            return Err(e.err("id", format!("{id:?} is used twice in {list_key}")));
        }
        let number = match role {
            Role::Mic => e.integer("channel", 1..=999)?.unwrap_or(i as i64 + 1) as u16,
            Role::Zone => i as u16 + 1,
        };
        if !numbers.insert(number) {
            return Err(e.err(
                "channel",
                format!("channel {number} is used twice in {list_key}"),
            ));
        }
        let min_db = e.number("min_db", -140.0..=40.0)?.unwrap_or(range.min_db);
        let max_db = e.number("max_db", -140.0..=40.0)?.unwrap_or(range.max_db);
        if min_db >= max_db {
            return Err(e.err(
                "max_db",
                format!("must be above min_db ({min_db}), got {max_db}"),
            ));
        }
        e.protect()?;
        let a = addr(e, role)?;
        let subject = match role {
            Role::Zone => Subject::zone(&id),
            Role::Mic => Subject::input(&id),
        };
        Ok(Channel {
            role,
            subject,
            id,
            number,
            level: a.level,
            mute: a.mute,
            meter: a.meter,
            min_db,
            max_db,
        })
    }

    pub fn zone(&self, id: &str) -> Option<&Channel<A>> {
        self.channels
            .iter()
            .find(|c| c.role == Role::Zone && c.id == id)
    }

    pub fn mic(&self, number: u16) -> Option<&Channel<A>> {
        self.channels
            .iter()
            .find(|c| c.role == Role::Mic && c.number == number)
    }
}

/// Where a channel is, for commands: refuses unknown zones/mics and unmapped functions with a
/// message a technician can act on.
pub fn lookup<'m, A>(
    map: &'m DspMap<A>,
    target: Target<'_>,
    f: Function,
) -> Result<(usize, &'m A), String> {
    let idx = match target {
        Target::Zone(z) => map
            .channels
            .iter()
            .position(|c| c.role == Role::Zone && c.id == z)
            .ok_or_else(|| format!("no zone {z:?} is mapped on this DSP"))?,
        Target::Mic(n) => map
            .channels
            .iter()
            .position(|c| c.role == Role::Mic && c.number == n)
            .ok_or_else(|| format!("no mic channel {n} is mapped on this DSP"))?,
    };
    let ch = &map.channels[idx];
    let a = ch
        .address(f)
        .ok_or_else(|| format!("{} has no {} control mapped", ch.component(), f.as_str()))?;
    Ok((idx, a))
}

/// A command's target.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    Zone(&'a str),
    Mic(u16),
}

/// The value a command sets on a mapped control.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SetTo {
    Db(f64),
    On(bool),
}

/// What a capability command sets on a DSP — the channel, the function and the value — or
/// `None` for a command that sets no mapped control.
pub fn set_request(command: &DeviceCommand) -> Option<(Target<'_>, Function, SetTo)> {
    Some(match command {
        DeviceCommand::SetLevel { zone, db } => {
            (Target::Zone(zone), Function::Level, SetTo::Db(*db))
        }
        DeviceCommand::SetZoneMute { zone, on } => {
            (Target::Zone(zone), Function::Mute, SetTo::On(*on))
        }
        DeviceCommand::SetGain { channel, db } => {
            (Target::Mic(*channel), Function::Level, SetTo::Db(*db))
        }
        DeviceCommand::SetMute { channel, on } => {
            (Target::Mic(*channel), Function::Mute, SetTo::On(*on))
        }
        _ => return None,
    })
}

/// Which mapped control a one-control read asks for (`ReadZoneLevel`): the zone's level.
pub fn read_request(command: &DeviceCommand) -> Option<(Target<'_>, Function)> {
    match command {
        DeviceCommand::ReadZoneLevel { zone } => Some((Target::Zone(zone), Function::Level)),
        _ => None,
    }
}

/// The channel index and control a read request addresses. A refusal names the command.
pub fn resolve_read<'m, A>(
    map: &'m DspMap<A>,
    command: &DeviceCommand,
    target: Target<'_>,
    f: Function,
) -> Result<(usize, &'m A), DriverError> {
    lookup(map, target, f).map_err(|r| rejected(command, r))
}

/// The channel index and control a set request addresses, a level checked against the
/// channel's range. A refusal names the command.
pub fn resolve<'m, A>(
    map: &'m DspMap<A>,
    command: &DeviceCommand,
    target: Target<'_>,
    f: Function,
    to: SetTo,
) -> Result<(usize, &'m A), DriverError> {
    let (idx, a) = lookup(map, target, f).map_err(|r| rejected(command, r))?;
    if let (Function::Level, SetTo::Db(db)) = (f, to) {
        check_level(&map.channels[idx], db).map_err(|r| rejected(command, r))?;
    }
    Ok((idx, a))
}

/// We refuse a command before sending it (no such zone, a level outside its range).
pub fn rejected(command: &DeviceCommand, reason: String) -> DriverError {
    DriverError::Rejected {
        command: command.name().to_owned(),
        reason,
    }
}

/// The DSP refused a command, for this reason.
pub fn refused(command: &DeviceCommand, reason: String) -> DriverError {
    DriverError::Refused {
        command: command.name().to_owned(),
        reason,
    }
}

/// Check a commanded level against the channel's range.
pub fn check_level<A>(ch: &Channel<A>, db: f64) -> Result<(), String> {
    if !db.is_finite() {
        return Err(format!("level {db} is not a number"));
    }
    if db < ch.min_db || db > ch.max_db {
        return Err(format!(
            "{db} dB is outside {}'s range {} to {} dB",
            ch.component(),
            ch.min_db,
            ch.max_db
        ));
    }
    Ok(())
}

/// Faults about the mapping itself: a configured control the DSP design does not have. Kept
/// per (channel, function) so a later success clears exactly that fault.
#[derive(Debug, Clone, Default)]
pub struct MappingFaults {
    faults: BTreeMap<(String, Function), Fault>,
}

/// The fault source name used with `Observer::faults`.
pub const MAPPING_SOURCE: &str = "mapping";

impl MappingFaults {
    pub fn failed<A>(&mut self, ch: &Channel<A>, f: Function, detail: &str) {
        let component = format!("{} {}", ch.component(), f.as_str());
        let fault = Fault::new(
            "dsp_mapping",
            Severity::Warning,
            format!(
                "{} control of {} was refused by the DSP ({detail}); check the site settings against the DSP design",
                f.as_str(),
                ch.component()
            ),
        )
        .on(component.clone());
        self.faults.insert((component, f), fault);
    }

    pub fn ok<A>(&mut self, ch: &Channel<A>, f: Function) {
        self.faults
            .remove(&(format!("{} {}", ch.component(), f.as_str()), f));
    }

    pub fn is_failed<A>(&self, ch: &Channel<A>, f: Function) -> bool {
        self.faults
            .contains_key(&(format!("{} {}", ch.component(), f.as_str()), f))
    }

    pub fn current(&self) -> Vec<Fault> {
        self.faults.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first problem, as the older single-error tests expect.
    fn parse(text: &str) -> Result<DspMap<String>, SettingsError> {
        parse_all(text).map_err(|mut e| e.remove(0))
    }

    fn parse_all(text: &str) -> Result<DspMap<String>, Vec<SettingsError>> {
        let t: toml::Table = toml::from_str(text).unwrap();
        let mut e = Entry::new(&t, "");
        let map = DspMap::parse(
            &mut e,
            LevelRange {
                min_db: -100.0,
                max_db: 12.0,
            },
            |e, _| {
                Ok(Addresses {
                    level: e.string("level")?,
                    mute: e.string("mute")?,
                    meter: e.string("meter")?,
                })
            },
        )?;
        let unknown = e.unknown_keys();
        if !unknown.is_empty() {
            return Err(unknown);
        }
        Ok(map)
    }

    #[test]
    fn every_mistake_of_a_map_is_reported_at_its_key_with_a_suggestion() {
        let errs = parse_all(
            "[[zones]]\nid = \"main\"\nlevl = \"L\"\nmeter = \"M\"\n\
             [[zones]]\nid = \"side\"\nlevel = \"L\"\nmax_db = 99\n\
             [[mics]]\nid = \"Lectern\"\nmeter = \"M\"\n",
        )
        .unwrap_err();
        let got: Vec<(&str, &str)> = errs
            .iter()
            .map(|e| (e.key.as_str(), e.message.as_str()))
            .collect();
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(
            got[0],
            ("zones[0].levl", "unknown key; did you mean level?")
        );
        assert_eq!(got[1].0, "zones[1].max_db");
        assert_eq!(got[2].0, "mics[0].id");
    }

    #[test]
    fn parses_zones_and_mics_with_defaults() {
        let m = parse(
            "[[zones]]\nid = \"main\"\nlevel = \"L\"\nmax_db = 0\n[[mics]]\nid = \"lectern\"\nmeter = \"M\"\n[[mics]]\nid = \"ceiling\"\nchannel = 5\nmute = \"X\"\n",
        )
        .unwrap();
        assert_eq!(m.channels.len(), 3);
        let z = m.zone("main").unwrap();
        assert_eq!((z.min_db, z.max_db), (-100.0, 0.0));
        assert_eq!(z.level_point().to_string(), "zone.main.level_db");
        assert_eq!(m.mic(1).unwrap().id, "lectern");
        assert_eq!(
            m.mic(5).unwrap().muted_point().to_string(),
            "input.ceiling.muted"
        );
        assert_eq!(m.mic(5).unwrap().subject, Subject::input("ceiling"));
        assert!(check_level(z, 0.5).is_err());
        assert!(check_level(z, f64::NAN).is_err());
        assert!(check_level(z, -10.0).is_ok());
        assert!(lookup(&m, Target::Zone("main"), Function::Meter)
            .unwrap_err()
            .contains("no meter control"));
        assert!(lookup(&m, Target::Zone("foyer"), Function::Level)
            .unwrap_err()
            .contains("no zone \"foyer\""));
        assert_eq!(lookup(&m, Target::Mic(1), Function::Meter).unwrap().0, 1);
    }

    #[test]
    fn set_commands_resolve_to_their_control_or_a_named_refusal() {
        let m = parse("[[zones]]\nid = \"main\"\nlevel = \"L\"\nmax_db = 0\n[[mics]]\nid = \"lectern\"\nmute = \"X\"\n")
            .unwrap();
        let level = DeviceCommand::SetLevel {
            zone: "main".into(),
            db: -10.0,
        };
        let (t, f, to) = set_request(&level).unwrap();
        assert_eq!((f, to), (Function::Level, SetTo::Db(-10.0)));
        assert_eq!(resolve(&m, &level, t, f, to).unwrap(), (0, &"L".to_owned()));
        let mute = DeviceCommand::SetMute {
            channel: 1,
            on: true,
        };
        let (t, f, to) = set_request(&mute).unwrap();
        assert_eq!((f, to), (Function::Mute, SetTo::On(true)));
        assert_eq!(resolve(&m, &mute, t, f, to).unwrap(), (1, &"X".to_owned()));
        assert!(set_request(&DeviceCommand::Refresh).is_none());
        assert!(set_request(&DeviceCommand::ReadZoneLevel {
            zone: "main".into()
        })
        .is_none());
        assert!(matches!(
            read_request(&DeviceCommand::ReadZoneLevel {
                zone: "main".into()
            }),
            Some((Target::Zone("main"), Function::Level))
        ));
        assert!(read_request(&DeviceCommand::Refresh).is_none());
        for (command, why) in [
            (
                DeviceCommand::SetLevel {
                    zone: "main".into(),
                    db: 3.0,
                },
                "outside",
            ),
            (
                DeviceCommand::SetZoneMute {
                    zone: "main".into(),
                    on: true,
                },
                "no mute control",
            ),
            (
                DeviceCommand::SetGain {
                    channel: 2,
                    db: 0.0,
                },
                "no mic channel 2",
            ),
        ] {
            let (t, f, to) = set_request(&command).unwrap();
            match resolve(&m, &command, t, f, to) {
                Err(DriverError::Rejected { command: c, reason }) => {
                    assert_eq!(c, command.name());
                    assert!(reason.contains(why), "{reason}");
                }
                other => panic!("{command:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn every_problem_names_its_key_path() {
        let cases = [
            ("[[zones]]\nlevel = \"L\"\n", "zones[0].id"),
            ("[[zones]]\nid = \"Main Hall\"\nlevel = \"L\"\n", "zones[0].id"),
            (
                "[[zones]]\nid = \"a\"\nlevel = \"L\"\n[[zones]]\nid = \"a\"\nlevel = \"L\"\n",
                "zones[1].id",
            ),
            ("[[zones]]\nid = \"a\"\nlevel = 3\n", "zones[0].level"),
            ("[[zones]]\nid = \"a\"\nlevel = \"L\"\nlevle = 1\n", "zones[0].levle"),
            ("[[zones]]\nid = \"a\"\n", "zones[0]"),
            ("[[zones]]\nid = \"a\"\nlevel = \"L\"\nmin_db = 5\nmax_db = 0\n", "zones[0].max_db"),
            ("[[mics]]\nid = \"a\"\nmute = \"M\"\nchannel = 0\n", "mics[0].channel"),
            (
                "[[mics]]\nid = \"a\"\nmute = \"M\"\nchannel = 2\n[[mics]]\nid = \"b\"\nmute = \"M\"\n",
                "mics[1].channel",
            ),
            ("zones = 3\n", "zones"),
            ("zones = [1]\n", "zones[0]"),
            ("speakers = []\n", "speakers"),
        ];
        for (text, key) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.key, key, "{text}: {e:?}");
        }
        let pe = parse("[[zones]]\nlevel = \"L\"\n")
            .unwrap_err()
            .into_profile_error("biamp-tesira-telnet");
        assert_eq!(
            pe.to_string(),
            "profile biamp-tesira-telnet: option settings.zones[0].id: missing; every entry needs an id"
        );
    }

    #[test]
    fn protect_overrides_are_checked_at_their_key_and_read_for_the_level_watch() {
        let e =
            parse("[[zones]]\nid = \"main\"\nlevel = \"L\"\nprotect = { peak_limit_dbfs = 4.0 }\n")
                .unwrap_err();
        assert_eq!(e.key, "zones[0].protect.peak_limit_dbfs");
        let e = parse("[[zones]]\nid = \"main\"\nlevel = \"L\"\nprotect = \"yes\"\n").unwrap_err();
        assert_eq!(e.key, "zones[0].protect");
        let t: toml::Table = toml::from_str(
            "[[zones]]\nid = \"main\"\nlevel_tag = \"L\"\nmeter_tag = \"M\"\nmin_db = -60\n\
             protect = { peak_limit_dbfs = -6.0 }\n\
             [[zones]]\nid = \"lobby\"\nlevel_tag = \"L\"\nprotect = false\n\
             [[mics]]\nid = \"lectern\"\nchannel = 3\nlevel_control = \"g\"\nmeter_control = \"m\"\n",
        )
        .unwrap();
        let w = watched(
            &t,
            LevelRange {
                min_db: -100.0,
                max_db: 12.0,
            },
        );
        assert_eq!(w.len(), 3);
        assert_eq!(
            (w[0].id.as_str(), w[0].min_db, w[0].controlled),
            ("main", -60.0, true)
        );
        assert!(matches!(&w[0].protect, Protect::On(t) if t.len() == 1));
        assert_eq!((w[1].controlled, &w[1].protect), (false, &Protect::Off));
        assert_eq!(
            (w[2].role, w[2].number, w[2].controlled),
            (Role::Mic, 3, true)
        );
        assert_eq!(w[2].protect, Protect::Profile);
    }

    #[test]
    fn mapping_faults_clear_individually() {
        let m = parse("[[zones]]\nid = \"main\"\nlevel = \"L\"\nmeter = \"M\"\n").unwrap();
        let z = &m.channels[0];
        let mut f = MappingFaults::default();
        f.failed(z, Function::Level, "address not found");
        f.failed(z, Function::Meter, "address not found");
        assert_eq!(f.current().len(), 2);
        assert!(f.is_failed(z, Function::Meter));
        f.ok(z, Function::Level);
        let left = f.current();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].component.as_deref(), Some("zone main meter"));
        assert_eq!(left[0].severity, Severity::Warning);
    }
}
