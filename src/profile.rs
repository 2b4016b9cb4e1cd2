//! Device profiles: data files that describe one model family on top of a driver.
//!
//! A profile (`devices/<kind>/<vendor>-<family>.toml`) picks a driver, gives transport
//! defaults, poll interval, pacing, warm-up/cool-down times, capabilities, lamp life, the
//! self-test checks it runs (`[selftest]`) and a driver-specific `[options]` table that only its
//! driver reads. A profile cannot add a
//! protocol; that takes a driver in Rust. The profiles shipped in `devices/` are embedded in the
//! binary; a site may add or override them from a directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use include_dir::{include_dir, Dir};
use serde::Deserialize;

use crate::model::{Capability, ProfileId};

static EMBEDDED: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/devices");

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("profile {profile}: option {key}: {message}")]
    Option {
        profile: String,
        key: String,
        message: String,
    },
    /// Several problems found at once (a zone map with three mistakes).
    #[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Many(Vec<ProfileError>),
}

/// The protocol families avwarden speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DriverKind {
    Pjlink,
    Escvp21,
    /// Shure wireless receivers, command strings over TCP 2202 (protocols.md §2).
    Shure,
    /// Sennheiser Sound Control Protocol over UDP 45 (protocols.md §3).
    Ssc,
    Modbus,
    Mqtt,
    Tesira,
    Qsys,
}

impl DriverKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DriverKind::Pjlink => "pjlink",
            DriverKind::Escvp21 => "escvp21",
            DriverKind::Shure => "shure",
            DriverKind::Ssc => "ssc",
            DriverKind::Modbus => "modbus",
            DriverKind::Mqtt => "mqtt",
            DriverKind::Tesira => "tesira",
            DriverKind::Qsys => "qsys",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    Projector,
    Display,
    Mic,
    Dsp,
    Hvac,
}

impl DeviceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceKind::Projector => "projector",
            DeviceKind::Display => "display",
            DeviceKind::Mic => "mic",
            DeviceKind::Dsp => "dsp",
            DeviceKind::Hvac => "hvac",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkKind {
    Tcp,
    Serial,
    Udp,
    Mqtt,
}

/// Link defaults a site config may override per device.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkDefaults {
    pub kind: LinkKind,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub baud: Option<u32>,
    #[serde(default)]
    pub data_bits: Option<u8>,
    #[serde(default)]
    pub parity: Option<String>,
    #[serde(default)]
    pub stop_bits: Option<u8>,
    /// Open a new TCP connection for every exchange (projectors that hang up after a reply).
    #[serde(default)]
    pub connect_per_command: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTiming {
    poll_interval_secs: f64,
    #[serde(default = "default_reply_timeout_ms")]
    reply_timeout_ms: u64,
    #[serde(default = "default_command_gap_ms")]
    command_gap_ms: u64,
    #[serde(default)]
    warm_up_secs: u64,
    #[serde(default)]
    cool_down_secs: u64,
    #[serde(default = "default_unreachable_after")]
    unreachable_after_polls: u32,
    /// The comms monitor's times; derived from the polls when absent.
    #[serde(default)]
    comms_warn_after_secs: Option<f64>,
    #[serde(default)]
    comms_offline_after_secs: Option<f64>,
}

fn default_reply_timeout_ms() -> u64 {
    2000
}
fn default_command_gap_ms() -> u64 {
    100
}
fn default_unreachable_after() -> u32 {
    2
}

/// Polling and pacing, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Timing {
    pub poll_interval: Duration,
    pub reply_timeout: Duration,
    /// Minimum gap between two commands to the device (many projectors drop commands sent
    /// back to back).
    pub command_gap: Duration,
    pub warm_up: Duration,
    pub cool_down: Duration,
    /// Polls without a reply before the device is `unreachable`.
    pub unreachable_after_polls: u32,
    /// The profile's own comms monitor times (`comms_warn_after_secs`,
    /// `comms_offline_after_secs`); see [`Timing::comms`].
    pub comms_override: Option<crate::model::CommsPolicy>,
}

impl Timing {
    /// When silence is `comms_slow`, then `unreachable`: the profile's own times, or one poll
    /// missed and `unreachable_after_polls` missed (so they follow a changed poll interval).
    pub fn comms(&self) -> crate::model::CommsPolicy {
        self.comms_override.unwrap_or_else(|| {
            crate::model::CommsPolicy::polled(
                self.poll_interval,
                self.reply_timeout,
                self.unreachable_after_polls,
            )
        })
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LampSpec {
    /// Rated lamp life in hours.
    pub life_hours: u32,
    /// Warn at this many hours (defaults to 90 % of life).
    #[serde(default)]
    pub warn_hours: Option<u32>,
}

impl LampSpec {
    pub fn warn_at(&self) -> u32 {
        self.warn_hours.unwrap_or(self.life_hours / 10 * 9)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    id: String,
    kind: DeviceKind,
    vendor: String,
    family: String,
    #[serde(default)]
    models: Vec<String>,
    driver: DriverKind,
    capabilities: Vec<Capability>,
    link: LinkDefaults,
    timing: RawTiming,
    #[serde(default)]
    lamp: Option<LampSpec>,
    #[serde(default)]
    filter_life_hours: Option<u32>,
    /// Driver-specific settings, read only by the driver.
    #[serde(default)]
    options: toml::Table,
    #[serde(default)]
    selftest: Option<RawSelfTest>,
    /// Loudspeaker protection defaults for the level watch (DSP profiles).
    #[serde(default)]
    protection: Option<toml::Table>,
    #[serde(default)]
    notes: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSelfTest {
    #[serde(default)]
    checks: Option<Vec<Check>>,
    #[serde(default)]
    lamp_margin_hours: Option<u32>,
    #[serde(default)]
    minutes_per_bar: Option<f64>,
    #[serde(default)]
    thermal_rate_c_per_min: Option<f64>,
    #[serde(default)]
    power_on_margin_secs: Option<u64>,
}

/// One self-test check a profile declares. Which checks a model runs is data; what each one
/// looks at is code in `schedule::checks`, the same for every model of a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// Connected, with readings fresher than the comms monitor's warning time.
    Reachable,
    /// No fault or warning on the device.
    Faults,
    /// Projector: powers on within its warm-up time (an active step).
    PowerOn,
    /// Projector: lamp hours below life minus the margin.
    LampLife,
    /// Projector: an input selected, with a signal where the device reports one.
    Input,
    /// Mic: at least the booked number of transmitters on air.
    Transmitters,
    /// Mic: no transmitter muted.
    TxMuted,
    /// Mic: no RF interference.
    Interference,
    /// Mic: every transmitter's encryption key matches.
    Encryption,
    /// Mic: every battery lasts the meeting.
    Battery,
    /// DSP: the room preset for the attendee count applied (an active step).
    Preset,
    /// DSP: no speaker zone muted.
    ZonesUnmuted,
    /// DSP: zone levels inside the room preset.
    Levels,
    /// DSP: meters alive.
    Meters,
    /// HVAC: the setpoint written and read back (an active step).
    Setpoint,
    /// HVAC: the predicted temperature at the start inside the comfort band.
    Temperature,
}

impl Check {
    pub fn as_str(self) -> &'static str {
        match self {
            Check::Reachable => "reachable",
            Check::Faults => "faults",
            Check::PowerOn => "power_on",
            Check::LampLife => "lamp_life",
            Check::Input => "input",
            Check::Transmitters => "transmitters",
            Check::TxMuted => "tx_muted",
            Check::Interference => "interference",
            Check::Encryption => "encryption",
            Check::Battery => "battery",
            Check::Preset => "preset",
            Check::ZonesUnmuted => "zones_unmuted",
            Check::Levels => "levels",
            Check::Meters => "meters",
            Check::Setpoint => "setpoint",
            Check::Temperature => "temperature",
        }
    }

    /// The device kinds a check means something for.
    pub fn applies_to(self, kind: DeviceKind) -> bool {
        use DeviceKind as K;
        match self {
            Check::Reachable | Check::Faults => true,
            Check::PowerOn | Check::LampLife | Check::Input => {
                matches!(kind, K::Projector | K::Display)
            }
            Check::Transmitters
            | Check::TxMuted
            | Check::Interference
            | Check::Encryption
            | Check::Battery => kind == K::Mic,
            Check::Preset | Check::ZonesUnmuted | Check::Levels | Check::Meters => kind == K::Dsp,
            Check::Setpoint | Check::Temperature => kind == K::Hvac,
        }
    }

    /// The checks a profile of `kind` runs when its `[selftest]` names none.
    pub fn defaults_for(kind: DeviceKind) -> Vec<Check> {
        use Check as C;
        match kind {
            DeviceKind::Projector => {
                vec![C::Reachable, C::Faults, C::PowerOn, C::LampLife, C::Input]
            }
            // A display has no lamp.
            DeviceKind::Display => vec![C::Reachable, C::Faults, C::PowerOn, C::Input],
            DeviceKind::Mic => vec![
                C::Reachable,
                C::Faults,
                C::Transmitters,
                C::TxMuted,
                C::Interference,
                C::Encryption,
                C::Battery,
            ],
            DeviceKind::Dsp => vec![
                C::Reachable,
                C::Faults,
                C::Preset,
                C::ZonesUnmuted,
                C::Levels,
                C::Meters,
            ],
            DeviceKind::Hvac => vec![C::Reachable, C::Faults, C::Setpoint, C::Temperature],
        }
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A profile's self-test facts, validated, defaults filled in per kind.
#[derive(Debug, Clone, PartialEq)]
pub struct SelfTestSpec {
    pub checks: Vec<Check>,
    /// Lamp hours kept in reserve below the rated life (a lamp this close to its end may fail
    /// mid-meeting). The site's `[selftest] lamp_margin_hours` overrides it.
    pub lamp_margin_hours: u32,
    /// Minutes of talk time one battery bar stands for when the receiver reports bars only
    /// (alkaline cells).
    pub minutes_per_bar: f64,
    /// How fast the unit moves the room towards its setpoint when the room has no history yet.
    pub thermal_rate_c_per_min: f64,
    /// Added to the warm-up time when waiting for a projector to report `on`.
    pub power_on_margin: Duration,
}

/// Defaults: a lamp margin of 100 h (a week of a busy room), one bar an hour (AA cells in a
/// current bodypack give 8-10 h over 5 bars; an hour per bar stays on the safe side), 0.1 °C per
/// minute (a fan coil in a closed meeting room), 30 s more than the warm-up.
impl SelfTestSpec {
    pub fn defaults_for(kind: DeviceKind) -> Self {
        Self {
            checks: Check::defaults_for(kind),
            lamp_margin_hours: 100,
            minutes_per_bar: 60.0,
            thermal_rate_c_per_min: 0.1,
            power_on_margin: Duration::from_secs(30),
        }
    }

    fn from_raw(
        kind: DeviceKind,
        raw: Option<RawSelfTest>,
        invalid: impl Fn(String) -> ProfileError,
    ) -> Result<Self, ProfileError> {
        let mut spec = Self::defaults_for(kind);
        let Some(raw) = raw else { return Ok(spec) };
        if let Some(checks) = raw.checks {
            for c in &checks {
                if !c.applies_to(kind) {
                    return Err(invalid(format!(
                        "selftest.checks: {c} is not a check of a {}",
                        kind.as_str()
                    )));
                }
            }
            spec.checks = checks;
        }
        if let Some(h) = raw.lamp_margin_hours {
            if h > 100_000 {
                return Err(invalid(
                    "selftest.lamp_margin_hours: must be at most 100000".to_owned(),
                ));
            }
            spec.lamp_margin_hours = h;
        }
        if let Some(m) = raw.minutes_per_bar {
            if !(m.is_finite() && m > 0.0 && m <= 1_440.0) {
                return Err(invalid(
                    "selftest.minutes_per_bar: must be above 0 and at most 1440".to_owned(),
                ));
            }
            spec.minutes_per_bar = m;
        }
        if let Some(r) = raw.thermal_rate_c_per_min {
            if !(r.is_finite() && r > 0.0 && r <= 5.0) {
                return Err(invalid(
                    "selftest.thermal_rate_c_per_min: must be above 0 and at most 5".to_owned(),
                ));
            }
            spec.thermal_rate_c_per_min = r;
        }
        if let Some(s) = raw.power_on_margin_secs {
            if s > 3_600 {
                return Err(invalid(
                    "selftest.power_on_margin_secs: must be at most 3600".to_owned(),
                ));
            }
            spec.power_on_margin = Duration::from_secs(s);
        }
        Ok(spec)
    }
}

/// A validated device profile.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub id: ProfileId,
    pub kind: DeviceKind,
    pub vendor: String,
    pub family: String,
    pub models: Vec<String>,
    pub driver: DriverKind,
    pub capabilities: Vec<Capability>,
    pub link: LinkDefaults,
    pub timing: Timing,
    pub lamp: Option<LampSpec>,
    pub filter_life_hours: Option<u32>,
    pub options: toml::Table,
    /// What its self-test checks, and the facts the checks use.
    pub selftest: SelfTestSpec,
    /// The level watch's defaults for every zone and mic of a device with this profile
    /// (`[protection]`); `None`: the level watch protects only zones that ask for it.
    pub protection: Option<crate::levelwatch::policy::Protection>,
    pub notes: Option<String>,
    /// Where it came from (`embedded:projector/epson-escvp21.toml` or a path).
    pub source: String,
}

impl Profile {
    pub fn parse(text: &str, source: &str) -> Result<Profile, ProfileError> {
        let raw: RawProfile = toml::from_str(text).map_err(|e| ProfileError::Invalid {
            file: source.to_owned(),
            message: e.message().to_owned()
                + &e.span()
                    .map(|s| format!(" (at {})", line_col(text, s.start)))
                    .unwrap_or_default(),
        })?;
        let invalid = |m: String| ProfileError::Invalid {
            file: source.to_owned(),
            message: m,
        };
        if !is_kebab(&raw.id) {
            return Err(invalid(format!("id: {:?} is not kebab-case", raw.id)));
        }
        if !(raw.timing.poll_interval_secs.is_finite()
            && (0.1..=86_400.0).contains(&raw.timing.poll_interval_secs))
        {
            return Err(invalid(
                "timing.poll_interval_secs: must be between 0.1 and 86400".to_owned(),
            ));
        }
        for (key, v, max) in [
            ("reply_timeout_ms", raw.timing.reply_timeout_ms, 600_000),
            ("command_gap_ms", raw.timing.command_gap_ms, 60_000),
            ("warm_up_secs", raw.timing.warm_up_secs, 3_600),
            ("cool_down_secs", raw.timing.cool_down_secs, 3_600),
        ] {
            if v > max {
                return Err(invalid(format!("timing.{key}: must be at most {max}")));
            }
        }
        if raw.timing.unreachable_after_polls > 1_000 {
            return Err(invalid(
                "timing.unreachable_after_polls: must be at most 1000".to_owned(),
            ));
        }
        if raw.timing.unreachable_after_polls == 0 {
            return Err(invalid(
                "timing.unreachable_after_polls: must be at least 1".to_owned(),
            ));
        }
        let poll_interval = Duration::from_secs_f64(raw.timing.poll_interval_secs);
        let reply_timeout = Duration::from_millis(raw.timing.reply_timeout_ms);
        let derived = crate::model::CommsPolicy::polled(
            poll_interval,
            reply_timeout,
            raw.timing.unreachable_after_polls,
        );
        let explicit = raw.timing.comms_warn_after_secs.is_some()
            || raw.timing.comms_offline_after_secs.is_some();
        let secs = |key: &str, v: Option<f64>, or: Duration| match v {
            None => Ok(or),
            Some(s) if s.is_finite() && (0.1..=86_400.0).contains(&s) => {
                Ok(Duration::from_secs_f64(s))
            }
            Some(_) => Err(invalid(format!(
                "timing.{key}: must be between 0.1 and 86400"
            ))),
        };
        let comms = crate::model::CommsPolicy {
            warn_after: secs(
                "comms_warn_after_secs",
                raw.timing.comms_warn_after_secs,
                derived.warn_after,
            )?,
            offline_after: secs(
                "comms_offline_after_secs",
                raw.timing.comms_offline_after_secs,
                derived.offline_after,
            )?,
        };
        if comms.offline_after < comms.warn_after {
            return Err(invalid(
                "timing.comms_offline_after_secs: must not be below comms_warn_after_secs"
                    .to_owned(),
            ));
        }
        let selftest = SelfTestSpec::from_raw(raw.kind, raw.selftest, invalid)?;
        let protection = match &raw.protection {
            None => None,
            Some(t) => Some(
                crate::levelwatch::policy::Protection::default()
                    .with_table(t, "protection")
                    .map_err(|errs| {
                        invalid(
                            errs.iter()
                                .map(|e| e.to_string())
                                .collect::<Vec<_>>()
                                .join("; "),
                        )
                    })?,
            ),
        };
        Ok(Profile {
            id: ProfileId::new(raw.id),
            kind: raw.kind,
            vendor: raw.vendor,
            family: raw.family,
            models: raw.models,
            driver: raw.driver,
            capabilities: raw.capabilities,
            link: raw.link,
            timing: Timing {
                poll_interval,
                reply_timeout,
                command_gap: Duration::from_millis(raw.timing.command_gap_ms),
                warm_up: Duration::from_secs(raw.timing.warm_up_secs),
                cool_down: Duration::from_secs(raw.timing.cool_down_secs),
                unreachable_after_polls: raw.timing.unreachable_after_polls,
                comms_override: explicit.then_some(comms),
            },
            lamp: raw.lamp,
            filter_life_hours: raw.filter_life_hours,
            options: raw.options,
            selftest,
            protection,
            notes: raw.notes,
            source: source.to_owned(),
        })
    }

    pub fn has(&self, cap: Capability) -> bool {
        self.capabilities.contains(&cap)
    }

    /// Read a typed driver option, with a default when absent.
    pub fn option<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
        default: T,
    ) -> Result<T, ProfileError> {
        match self.options.get(key) {
            None => Ok(default),
            Some(v) => v
                .clone()
                .try_into()
                .map_err(|e: toml::de::Error| ProfileError::Option {
                    profile: self.id.to_string(),
                    key: key.to_owned(),
                    message: e.message().to_owned(),
                }),
        }
    }
}

fn is_kebab(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// 1-based `line:column` of a byte offset.
pub fn line_col(text: &str, offset: usize) -> String {
    let (l, c) = line_col_pair(text, offset);
    format!("{l}:{c}")
}

pub fn line_col_pair(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.chars().count(), |i| before[i + 1..].chars().count())
        + 1;
    (line, col)
}

/// All profiles known to a daemon, by id.
#[derive(Debug, Clone, Default)]
pub struct ProfileSet {
    profiles: BTreeMap<ProfileId, Profile>,
}

impl ProfileSet {
    /// The profiles shipped inside the binary.
    pub fn embedded() -> Result<ProfileSet, Vec<ProfileError>> {
        let mut set = ProfileSet::default();
        let mut errors = Vec::new();
        let mut files = Vec::new();
        collect_embedded(&EMBEDDED, &mut files);
        for (path, text) in files {
            match Profile::parse(text, &format!("devices/{path}")) {
                Ok(p) => {
                    set.profiles.insert(p.id.clone(), p);
                }
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(set)
        } else {
            Err(errors)
        }
    }

    /// Add (or override) profiles from `dir/**/*.toml`.
    pub fn load_dir(&mut self, dir: &Path) -> Vec<ProfileError> {
        let mut errors = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        let mut files: Vec<PathBuf> = Vec::new();
        while let Some(d) = stack.pop() {
            match std::fs::read_dir(&d) {
                Ok(rd) => {
                    for e in rd.flatten() {
                        let p = e.path();
                        if p.is_dir() {
                            stack.push(p);
                        } else if p.extension().is_some_and(|x| x == "toml") {
                            files.push(p);
                        }
                    }
                }
                Err(source) => errors.push(ProfileError::Read {
                    file: d.display().to_string(),
                    source,
                }),
            }
        }
        files.sort();
        for f in files {
            let name = f.display().to_string();
            match std::fs::read_to_string(&f) {
                Ok(text) => match Profile::parse(&text, &name) {
                    Ok(p) => {
                        self.profiles.insert(p.id.clone(), p);
                    }
                    Err(e) => errors.push(e),
                },
                Err(source) => errors.push(ProfileError::Read { file: name, source }),
            }
        }
        errors
    }

    pub fn get(&self, id: &str) -> Option<&Profile> {
        self.profiles.get(&ProfileId::new(id))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Profile> {
        self.profiles.values()
    }

    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.profiles.keys().map(|k| k.as_str())
    }

    pub fn len(&self) -> usize {
        self.profiles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.profiles.is_empty()
    }

    pub fn insert(&mut self, p: Profile) {
        self.profiles.insert(p.id.clone(), p);
    }
}

fn collect_embedded<'a>(dir: &'a Dir<'a>, out: &mut Vec<(String, &'a str)>) {
    for f in dir.files() {
        if f.path().extension().is_some_and(|x| x == "toml") {
            if let Some(text) = f.contents_utf8() {
                out.push((f.path().display().to_string(), text));
            }
        }
    }
    for d in dir.dirs() {
        collect_embedded(d, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal projector profile with `timing` as its `[timing]` table.
    fn base(timing: &str) -> String {
        format!(
            "id = \"x\"\nkind = \"projector\"\nvendor = \"v\"\nfamily = \"f\"\ndriver = \"pjlink\"\n\
             capabilities = [\"power\"]\n[link]\nkind = \"tcp\"\n[timing]\n{timing}\n"
        )
    }

    #[test]
    fn protection_defaults_are_read_and_checked_at_their_key() {
        let ok = Profile::parse(
            &(base("poll_interval_secs = 5") + "[protection]\npeak_limit_dbfs = -6\n"),
            "t",
        )
        .unwrap();
        assert_eq!(ok.protection.map(|p| p.peak_limit_dbfs), Some(-6.0));
        assert!(Profile::parse(&base("poll_interval_secs = 5"), "t")
            .unwrap()
            .protection
            .is_none());
        let e = Profile::parse(
            &(base("poll_interval_secs = 5") + "[protection]\nrelease_secs = 2\n"),
            "t",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "t: protection.release_secs: unknown key; did you mean release_ms?"
        );
        for id in ["biamp-tesira-telnet", "biamp-tesira-serial", "qsys-core"] {
            let set = ProfileSet::embedded().unwrap();
            assert!(set.get(id).unwrap().protection.is_some(), "{id}");
        }
    }

    #[test]
    fn timing_out_of_range_is_an_error_not_a_panic() {
        assert!(Profile::parse(&base("poll_interval_secs = 5"), "t").is_ok());
        for bad in [
            "poll_interval_secs = 1e300",
            "poll_interval_secs = 0.01",
            "poll_interval_secs = nan",
            "poll_interval_secs = 5\ncommand_gap_ms = 99999999999",
            "poll_interval_secs = 5\nreply_timeout_ms = 99999999999",
            "poll_interval_secs = 5\nunreachable_after_polls = 0",
            "poll_interval_secs = 5\ncomms_warn_after_secs = 0",
            "poll_interval_secs = 5\ncomms_warn_after_secs = 30\ncomms_offline_after_secs = 20",
        ] {
            let e = Profile::parse(&base(bad), "t").expect_err(bad);
            assert!(e.to_string().contains("timing."), "{bad}: {e}");
        }
    }

    /// Issue 8.6: a profile's comms times, its own or following its polls.
    #[test]
    fn comms_times_are_the_profiles_own_or_follow_the_polls() {
        let p = Profile::parse(
            &base("poll_interval_secs = 5\nunreachable_after_polls = 3"),
            "t",
        )
        .unwrap();
        let mut t = p.timing.clone();
        assert_eq!(t.comms().warn_after, Duration::from_secs(7));
        assert_eq!(t.comms().offline_after, Duration::from_secs(17));
        t.poll_interval = Duration::from_secs(1);
        assert_eq!(
            t.comms().offline_after,
            Duration::from_secs(5),
            "follows the polls"
        );
        let own = Profile::parse(
            &base(
                "poll_interval_secs = 5\ncomms_warn_after_secs = 40\ncomms_offline_after_secs = 90",
            ),
            "t",
        )
        .unwrap();
        assert_eq!(own.timing.comms().warn_after, Duration::from_secs(40));
        assert_eq!(own.timing.comms().offline_after, Duration::from_secs(90));
    }

    #[test]
    fn selftest_checks_default_per_kind_and_are_validated() {
        let p = Profile::parse(&base("poll_interval_secs = 5"), "t").unwrap();
        assert_eq!(
            p.selftest.checks,
            Check::defaults_for(DeviceKind::Projector)
        );
        let own = Profile::parse(
            &(base("poll_interval_secs = 5")
                + "[selftest]\nchecks = [\"reachable\", \"lamp_life\"]\nlamp_margin_hours = 250\n"),
            "t",
        )
        .unwrap();
        assert_eq!(own.selftest.checks, vec![Check::Reachable, Check::LampLife]);
        assert_eq!(own.selftest.lamp_margin_hours, 250);
        for (bad, key) in [
            ("checks = [\"battery\"]", "selftest.checks"),
            ("checks = [\"warp_drive\"]", "unknown variant"),
            ("minutes_per_bar = 0", "selftest.minutes_per_bar"),
            (
                "thermal_rate_c_per_min = -1",
                "selftest.thermal_rate_c_per_min",
            ),
            ("colour = 1", "unknown field"),
        ] {
            let text = base("poll_interval_secs = 5") + "[selftest]\n" + bad + "\n";
            let e = Profile::parse(&text, "t").expect_err(bad);
            assert!(e.to_string().contains(key), "{bad}: {e}");
        }
    }

    #[test]
    fn every_shipped_profile_declares_only_checks_of_its_kind() {
        let set = ProfileSet::embedded().expect("embedded profiles parse");
        for p in set.iter() {
            assert!(!p.selftest.checks.is_empty(), "{}", p.id);
            for c in &p.selftest.checks {
                assert!(c.applies_to(p.kind), "{}: {c}", p.id);
            }
        }
    }

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("ab\ncd", 0), "1:1");
        assert_eq!(line_col("ab\ncd", 4), "2:2");
    }
}
