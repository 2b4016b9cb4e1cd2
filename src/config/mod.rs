//! Site configuration: raw serde structs for the TOML a technician writes, and the validated
//! types the daemon runs on.
//!
//! Validation collects **every** problem, each with file, line and column, and key path, and
//! suggests near names (`did you mean "epson-escvp21"?`). `check-config` prints them and exits 2.
//! Unknown keys are collected with `serde_ignored` rather than rejected by
//! `deny_unknown_fields`, which would stop at the first one.

pub(crate) mod locate;
mod raw;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::model::{DeviceId, RoomId};
use crate::profile::{Profile, ProfileSet};
use crate::transport::LinkSpec;

pub(crate) use validate::first_line;
pub use validate::{parse_site, storage_problems, suggest, Env};

/// One problem in a config file, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub file: String,
    /// 1-based line and column, when the problem has a place in the file.
    pub at: Option<(usize, usize)>,
    /// Key path such as `devices[2].link.port`; empty for whole-file problems.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some((l, c)) = self.at {
            write!(f, ":{l}:{c}")?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in a config, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// A secret such as a PJLink password, read from the environment or a file at load time.
/// Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone)]
pub struct Site {
    pub name: String,
    pub time_zone: chrono_tz::Tz,
}

#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub bind: SocketAddr,
    /// Open API connections at most; past it, the oldest connection with no request in
    /// progress is closed for the new one (health probes answer under a connection flood).
    pub max_connections: usize,
    /// A request head must arrive within this; it is also the keep-alive idle timeout.
    pub header_timeout: Duration,
    /// A request body must arrive within this once its head has.
    pub body_timeout: Duration,
    /// `[[api.tokens]]`. None configured on a loopback bind: the API is open (local demo).
    pub tokens: Vec<ApiToken>,
}

/// What an API caller may do; each role includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads everything.
    Viewer,
    /// Acknowledges, runs self-tests, commands devices, records maintenance.
    Technician,
    /// Edits the archive, bookings and maintenance windows.
    Admin,
}

impl Role {
    pub const NAMES: [&'static str; 3] = ["viewer", "technician", "admin"];

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "technician" => Some(Role::Technician),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Technician => "technician",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The SHA-256 of an API token: all the daemon keeps of it after loading the config, so a
/// memory dump or a debug print shows no token.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    pub fn of(token: &str) -> Self {
        use sha2::Digest;
        Self(sha2::Sha256::digest(token.as_bytes()).into())
    }

    /// Whether `presented` is this token, in time that does not depend on where they differ.
    pub fn matches(&self, presented: &str) -> bool {
        self.matches_hash(&TokenHash::of(presented))
    }

    pub fn matches_hash(&self, other: &TokenHash) -> bool {
        use subtle::ConstantTimeEq;
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenHash(***)")
    }
}

/// One `[[api.tokens]]` entry, validated.
#[derive(Debug, Clone)]
pub struct ApiToken {
    /// Who the caller is: the logbook's actor for what they do.
    pub name: String,
    pub role: Role,
    pub hash: TokenHash,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_connections: 512,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            tokens: Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct StorageConfig {
    pub path: PathBuf,
    /// Refuse to grow the store past this size (the writer then buffers and alerts).
    pub max_size_bytes: Option<u64>,
}

/// Reconnect policy shared by all links.
#[derive(Debug, Clone, Copy)]
pub struct LinkPolicy {
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

#[derive(Debug, Clone)]
pub struct Room {
    pub id: RoomId,
    pub name: String,
    pub building: Option<String>,
    pub floor: Option<i32>,
    pub capacity: u32,
    pub equipment: Vec<String>,
    /// Audio presets by meeting size, smallest first (`[[rooms.presets]]`).
    pub presets: Vec<RoomPreset>,
}

/// A room's audio levels for meetings of up to `max_attendees` ("set audio to the best effect
/// for the size of the meeting").
#[derive(Debug, Clone, PartialEq)]
pub struct RoomPreset {
    pub name: String,
    pub max_attendees: u32,
    /// Level per DSP zone id, dB.
    pub levels: std::collections::BTreeMap<String, f64>,
}

impl Room {
    /// The preset for a meeting of `attendees`: the smallest that holds them, else the
    /// largest.
    pub fn preset_for(&self, attendees: u32) -> Option<&RoomPreset> {
        preset_for(&self.presets, attendees)
    }
}

/// [`Room::preset_for`] over a list of presets sorted by `max_attendees`.
pub fn preset_for(presets: &[RoomPreset], attendees: u32) -> Option<&RoomPreset> {
    presets
        .iter()
        .find(|p| p.max_attendees >= attendees)
        .or_else(|| presets.last())
}

/// `[selftest]`: margins, targets and limits of the pre-meeting self-test.
#[derive(Debug, Clone)]
pub struct SelfTestSettings {
    /// A battery must last the meeting and this much more.
    pub battery_margin_minutes: u32,
    /// Overrides every profile's lamp margin when set.
    pub lamp_margin_hours: Option<u32>,
    /// The setpoint the self-test writes.
    pub setpoint_c: f64,
    pub comfort_min_c: f64,
    pub comfort_max_c: f64,
    /// Devices tested at once.
    pub concurrency: usize,
    /// The longest one device's test may take (a projector's warm-up included).
    pub device_timeout: Duration,
    /// How far a zone level may be from its preset.
    pub level_tolerance_db: f64,
    /// Remedy texts (the playbook's `[remedies]`).
    pub remedies: Arc<crate::schedule::remedies::Remedies>,
}

impl Default for SelfTestSettings {
    fn default() -> Self {
        Self {
            battery_margin_minutes: 15,
            lamp_margin_hours: None,
            setpoint_c: 23.0,
            comfort_min_c: 22.0,
            comfort_max_c: 24.0,
            concurrency: 8,
            device_timeout: Duration::from_secs(300),
            level_tolerance_db: 1.0,
            remedies: Arc::new(
                crate::schedule::remedies::Remedies::embedded()
                    .expect("the shipped playbook validates (a unit test holds it to that)"),
            ),
        }
    }
}

#[derive(Debug, Clone)]
pub struct DeviceConfig {
    pub id: DeviceId,
    pub room: RoomId,
    pub name: Option<String>,
    pub profile: Arc<Profile>,
    /// `None` only for simulated devices without a fixed address: the demo assigns one.
    pub link: Option<LinkSpec>,
    pub secret: Option<Secret>,
    /// Run this device's simulator inside the daemon (demo) or under `avwarden simulate`.
    pub simulated: bool,
    pub simulator: toml::Table,
    pub settings: toml::Table,
    /// What the equipment archive keeps about this device besides what it reports itself.
    pub archive: crate::records::ArchiveFields,
    /// The device this one is reached through (`parent = "dev-id"`).
    pub parent: Option<DeviceId>,
}

/// `[mqtt]`, validated by the MQTT transport's own rules (including every value that would
/// make rumqttc panic), with its password resolved.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    pub settings: crate::transport::mqtt::MqttSettings,
    pub password: Option<Secret>,
}

/// A validated site configuration.
#[derive(Debug, Clone)]
pub struct SiteConfig {
    pub file: PathBuf,
    pub site: Site,
    pub api: ApiConfig,
    pub storage: StorageConfig,
    pub links: LinkPolicy,
    pub shutdown_deadline: Duration,
    pub selftest: SelfTestSettings,
    pub rooms: Vec<Room>,
    pub devices: Vec<DeviceConfig>,
    pub profiles: ProfileSet,
    /// The daemon's one MQTT client (and embedded broker), when the site has `[mqtt]`.
    pub mqtt: Option<MqttConfig>,
    pub bookings: BookingsConfig,
    /// `[roster]`, or the plan's roster in the site's zone.
    pub roster: crate::playbook::roster::Roster,
    /// The contingency rules of the playbook file `[selftest] playbook` names (or the shipped
    /// ones).
    pub playbook: Arc<crate::playbook::rules::Rules>,
    /// `[playbook]`: the playbook task's timing, damping and backup channels.
    pub playbook_settings: crate::playbook::PlaybookSettings,
    /// `[notify]`: the webhook and mail sinks (none when the section is absent).
    pub notify: crate::notify::NotifyConfig,
    /// `[aggregate]`: this daemon is a central one showing other buildings (no devices).
    pub aggregate: Option<crate::aggregate::AggregateConfig>,
}

/// `[bookings]`: where bookings come from besides the API.
#[derive(Debug, Clone, Default)]
pub struct BookingsConfig {
    pub feeds: Vec<crate::schedule::feed::FeedConfig>,
}

/// The 1-based line and column (in characters) of the first byte that is not UTF-8, and
/// that byte.
fn utf8_error_at(bytes: &[u8], valid_up_to: usize) -> ((usize, usize), u8) {
    let good = std::str::from_utf8(&bytes[..valid_up_to]).unwrap_or_default();
    let line = good.matches('\n').count() + 1;
    let col = good.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    ((line, col), bytes.get(valid_up_to).copied().unwrap_or(0))
}

impl SiteConfig {
    /// Read and validate a site config file. Relative paths inside it (storage, profiles dir,
    /// secret files) are resolved against the file's directory.
    pub fn load(path: &Path) -> Result<SiteConfig, ConfigError> {
        let label = path.display().to_string();
        let problem = |at, message| ConfigError {
            problems: vec![ConfigProblem {
                file: label.clone(),
                at,
                path: String::new(),
                message,
            }],
        };
        let bytes = std::fs::read(path).map_err(|e| problem(None, format!("cannot read: {e}")))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let (at, byte) = utf8_error_at(e.as_bytes(), e.utf8_error().valid_up_to());
            problem(
                Some(at),
                format!("byte 0x{byte:02X} is not UTF-8 (a config is UTF-8 text)"),
            )
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        parse_site(&text, &label, base, &Env::process())
    }

    pub fn room(&self, id: &RoomId) -> Option<&Room> {
        self.rooms.iter().find(|r| &r.id == id)
    }

    pub fn device(&self, id: &str) -> Option<&DeviceConfig> {
        self.devices.iter().find(|d| d.id.as_str() == id)
    }

    /// A one-screen summary for `check-config`.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "site {:?} ({}), {} rooms, {} devices, {} profiles",
            self.site.name,
            self.site.time_zone,
            self.rooms.len(),
            self.devices.len(),
            self.profiles.len()
        );
        let _ = writeln!(s, "api     http://{}", self.api.bind);
        let _ = writeln!(s, "storage {}", self.storage.path.display());
        for room in &self.rooms {
            let _ = writeln!(
                s,
                "room {:<12} {:<24} capacity {}",
                room.id, room.name, room.capacity
            );
            for d in self.devices.iter().filter(|d| d.room == room.id) {
                let link = match (&d.link, d.simulated) {
                    (Some(l), false) => l.describe(),
                    (Some(l), true) => format!("simulated at {}", l.describe()),
                    (None, _) => "simulated".to_owned(),
                };
                let _ = writeln!(s, "  {:<20} {:<22} {}", d.id, d.profile.id, link);
            }
        }
        s
    }
}
