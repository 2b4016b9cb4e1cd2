//! The TOML a technician writes, as serde sees it. Everything is optional here so that a
//! missing key becomes a located problem in validation instead of stopping the parse; integers
//! are `i64` so out-of-range values get our message, not serde's.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
pub struct RawSite {
    pub site: Option<RawSiteInfo>,
    pub api: Option<RawApi>,
    pub storage: Option<RawStorage>,
    pub profiles: Option<RawProfiles>,
    pub links: Option<RawLinks>,
    pub shutdown: Option<RawShutdown>,
    pub selftest: Option<RawSelfTest>,
    /// Validated by the MQTT transport, which owns its settings.
    pub mqtt: Option<toml::Table>,
    #[serde(default)]
    pub rooms: Vec<RawRoom>,
    #[serde(default)]
    pub devices: Vec<RawDevice>,
    pub bookings: Option<RawBookings>,
    /// Validated by the playbook, which owns the roster's meaning.
    pub roster: Option<crate::playbook::roster::RawRoster>,
    /// Validated by the playbook, which owns its settings' meaning.
    pub playbook: Option<crate::playbook::settings::RawPlaybookSettings>,
    pub notify: Option<RawNotify>,
    /// Validated by the aggregate mode, which owns its settings.
    pub aggregate: Option<toml::Table>,
}

/// `[notify]`: where alerts go besides MQTT and the dashboard.
#[derive(Debug, Default, Deserialize)]
pub struct RawNotify {
    pub public_url: Option<String>,
    #[serde(default)]
    pub webhook: Vec<RawWebhook>,
    pub mail: Option<RawMail>,
}

/// `[[notify.webhook]]`. The signing secret is never in the config: it comes from an
/// environment variable or a file.
#[derive(Debug, Default, Deserialize)]
pub struct RawWebhook {
    pub name: Option<String>,
    pub url: Option<String>,
    pub secret_env: Option<String>,
    pub secret_file: Option<String>,
    pub classes: Option<Vec<String>>,
    pub timeout_secs: Option<f64>,
}

/// `[notify.mail]`.
#[derive(Debug, Default, Deserialize)]
pub struct RawMail {
    pub smtp_host: Option<String>,
    pub smtp_port: Option<i64>,
    pub tls: Option<String>,
    pub username: Option<String>,
    pub password_env: Option<String>,
    pub password_file: Option<String>,
    pub from: Option<String>,
    pub timeout_secs: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawBookings {
    #[serde(default)]
    pub feeds: Vec<RawFeed>,
}

/// `[[bookings.feeds]]`: an iCalendar feed of bookings.
#[derive(Debug, Default, Deserialize)]
pub struct RawFeed {
    pub id: Option<String>,
    pub url: Option<String>,
    pub path: Option<String>,
    pub room: Option<String>,
    pub poll_interval_secs: Option<f64>,
    pub max_bytes: Option<i64>,
    pub needs: Option<crate::model::Needs>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawSiteInfo {
    pub name: Option<String>,
    pub time_zone: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawApi {
    pub bind: Option<String>,
    pub max_connections: Option<i64>,
    pub header_timeout_ms: Option<i64>,
    pub body_timeout_ms: Option<i64>,
    pub tokens: Option<Vec<RawToken>>,
}

/// `[[api.tokens]]`: who may call the API, with which role. The token itself is never in
/// the config: it comes from an environment variable or a file.
#[derive(Debug, Default, Deserialize)]
pub struct RawToken {
    pub name: Option<String>,
    pub role: Option<String>,
    pub token_env: Option<String>,
    pub token_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawStorage {
    pub path: Option<String>,
    pub max_size_mb: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawProfiles {
    pub dir: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawLinks {
    pub backoff_min_ms: Option<i64>,
    pub backoff_max_ms: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawShutdown {
    pub deadline_secs: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawRoom {
    pub id: Option<String>,
    pub name: Option<String>,
    pub building: Option<String>,
    pub floor: Option<i64>,
    pub capacity: Option<i64>,
    pub equipment: Option<Vec<String>>,
    pub presets: Option<Vec<RawPreset>>,
}

/// `[[rooms.presets]]`: the audio levels for meetings up to `max_attendees`.
#[derive(Debug, Default, Deserialize)]
pub struct RawPreset {
    pub name: Option<String>,
    pub max_attendees: Option<i64>,
    pub levels: Option<std::collections::BTreeMap<String, f64>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawSelfTest {
    pub battery_margin_minutes: Option<i64>,
    pub lamp_margin_hours: Option<i64>,
    pub setpoint_c: Option<f64>,
    pub comfort_min_c: Option<f64>,
    pub comfort_max_c: Option<f64>,
    pub concurrency: Option<i64>,
    pub device_timeout_secs: Option<f64>,
    pub level_tolerance_db: Option<f64>,
    pub playbook: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawDevice {
    pub id: Option<String>,
    pub room: Option<String>,
    pub name: Option<String>,
    pub profile: Option<String>,
    pub link: Option<RawLink>,
    /// Name of an environment variable holding the device password.
    pub password_env: Option<String>,
    /// Path of a file holding the device password (first line).
    pub password_file: Option<String>,
    pub simulated: Option<bool>,
    pub simulator: Option<toml::Table>,
    pub settings: Option<toml::Table>,
    /// Equipment archive facts a technician keeps (location, supplier, warranty …).
    pub archive: Option<toml::Table>,
    /// Overrides the profile's poll interval for this device.
    pub poll_interval_secs: Option<f64>,
    /// The device this one is reached through (a serial server, a room gateway): while it is
    /// down, this device's reachability alerts are inhibited.
    pub parent: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RawLink {
    pub kind: Option<String>,
    pub host: Option<String>,
    pub port: Option<i64>,
    pub path: Option<String>,
    pub baud: Option<i64>,
    pub data_bits: Option<i64>,
    pub parity: Option<String>,
    pub stop_bits: Option<i64>,
    pub connect_per_command: Option<bool>,
    pub connect_timeout_ms: Option<i64>,
    pub topic: Option<String>,
}
