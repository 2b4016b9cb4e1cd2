//! Raw → validated, collecting every problem with its place in the file.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use toml_edit::ImDocument;

use super::locate::{self, Seg};
use super::raw::{RawDevice, RawLink, RawRoom, RawSite};
use super::{
    ApiConfig, ApiToken, BookingsConfig, ConfigError, ConfigProblem, DeviceConfig, LinkPolicy,
    Role, Room, RoomPreset, Secret, SelfTestSettings, Site, SiteConfig, StorageConfig, TokenHash,
};
use crate::model::{DeviceId, RoomId};
use crate::profile::{LinkKind, Profile, ProfileSet};
use crate::schedule::feed::{FeedConfig, FeedSource, DEFAULT_MAX_BYTES, DEFAULT_POLL_INTERVAL};
use crate::transport::serial::{Parity, SerialSpec};
use crate::transport::tcp::TcpSpec;
use crate::transport::LinkSpec;

/// Where secrets come from. Tests pass their own variables instead of the process environment.
pub struct Env {
    vars: Option<BTreeMap<String, String>>,
}

impl Env {
    pub fn process() -> Self {
        Self { vars: None }
    }
    pub fn fixed(vars: &[(&str, &str)]) -> Self {
        Self {
            vars: Some(
                vars.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
        }
    }
    fn get(&self, name: &str) -> Option<String> {
        match &self.vars {
            Some(m) => m.get(name).cloned(),
            None => std::env::var(name).ok(),
        }
    }
}

struct Problems<'a> {
    file: &'a str,
    text: &'a str,
    doc: Option<&'a ImDocument<String>>,
    list: Vec<(usize, ConfigProblem)>,
}

impl<'a> Problems<'a> {
    fn at_path(&mut self, path: &[Seg], message: impl Into<String>) {
        let span = self.doc.and_then(|d| locate::locate(d, path));
        let offset = span.as_ref().map(|r| r.start);
        self.push(offset, locate::render(path), message.into());
    }

    fn push(&mut self, offset: Option<usize>, path: String, message: String) {
        let at = offset.map(|o| crate::profile::line_col_pair(self.text, o));
        self.list.push((
            offset.unwrap_or(usize::MAX),
            ConfigProblem {
                file: self.file.to_owned(),
                at,
                path,
                message,
            },
        ));
    }

    fn into_error(mut self) -> ConfigError {
        // File order; problems without a place last, in the order found.
        self.list.sort_by_key(|(o, _)| *o);
        ConfigError {
            problems: self.list.into_iter().map(|(_, p)| p).collect(),
        }
    }
}

fn k(s: &str) -> Seg {
    Seg::Key(s.to_owned())
}

fn p(segs: &[Seg], more: &[Seg]) -> Vec<Seg> {
    let mut v = segs.to_vec();
    v.extend_from_slice(more);
    v
}

/// The closest candidate by edit distance, when close enough to be a typo.
pub fn suggest<'c>(given: &str, candidates: impl IntoIterator<Item = &'c str>) -> Option<&'c str> {
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(given, c), c))
        .filter(|(d, c)| *d <= 3.max(c.len() / 4) && *d > 0)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn did_you_mean(s: Option<&str>) -> String {
    s.map(|c| format!(" (did you mean \"{c}\"?)"))
        .unwrap_or_default()
}

fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Parse and validate a site config from text. `file` labels messages; `base` resolves
/// relative paths.
/// What `check-config` adds to a valid config: the store's directory must exist and take a
/// file. `run` does not refuse such a config (the daemon starts, the store catches up once
/// the volume is there, issue 16.1), but an operator checking a config wants to know.
pub fn storage_problems(text: &str, file: &str, storage: &Path) -> Vec<ConfigProblem> {
    let doc = ImDocument::parse(text.to_owned()).ok();
    let mut pr = Problems {
        file,
        text,
        doc: doc.as_ref(),
        list: Vec::new(),
    };
    let at = [k("storage"), k("path")];
    let dir = match storage.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        pr.at_path(
            &at,
            format!(
                "directory {} does not exist (a volume not mounted?); the daemon would run \
                 without writing its logbook until it does",
                dir.display()
            ),
        );
    } else {
        let probe = dir.join(format!(".avwarden-check-{}", std::process::id()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe)
        {
            Ok(_) => {
                let _ = std::fs::remove_file(&probe);
            }
            Err(e) => pr.at_path(
                &at,
                format!("directory {} is not writable: {e}", dir.display()),
            ),
        }
        if storage.exists()
            && std::fs::OpenOptions::new()
                .write(true)
                .open(storage)
                .is_err()
        {
            pr.at_path(&at, format!("{} is not writable", storage.display()));
        }
    }
    pr.into_error().problems
}

pub fn parse_site(
    text: &str,
    file: &str,
    base: &Path,
    env: &Env,
) -> Result<SiteConfig, ConfigError> {
    let doc = match ImDocument::parse(text.to_owned()) {
        Ok(d) => d,
        Err(e) => {
            let mut pr = Problems {
                file,
                text,
                doc: None,
                list: Vec::new(),
            };
            let offset = e.span().map(|s| s.start);
            pr.push(offset, String::new(), first_line(e.message()));
            return Err(pr.into_error());
        }
    };
    let mut pr = Problems {
        file,
        text,
        doc: Some(&doc),
        list: Vec::new(),
    };

    // Pass 1: structure. Unknown keys are all collected. A value of the wrong type stops
    // serde, so each one is reported, removed from a working copy of the document, and the
    // copy parsed again, until none is left: every type error is reported at once.
    let mut work = doc.clone().into_mut();
    let mut unknown: Vec<Vec<Seg>>;
    let mut rounds = 0;
    let mut removed: Vec<String> = Vec::new();
    let raw = loop {
        rounds += 1;
        unknown = Vec::new();
        let text_now = work.to_string();
        let de = toml::Deserializer::new(&text_now);
        let res: Result<RawSite, _> = serde_ignored::deserialize(de, |path| {
            let mut segs = Vec::new();
            locate::from_ignored(&path, &mut segs);
            unknown.push(segs);
        });
        match res {
            Ok(r) => break Some(r),
            Err(e) => {
                let path = match (ImDocument::parse(text_now.clone()), e.span()) {
                    (Ok(cur), Some(span)) => locate::path_at(&cur, span.start),
                    _ => Vec::new(),
                };
                let message = first_line(e.message());
                if path.is_empty() || rounds > 64 || !locate::remove(&mut work, &path) {
                    // Nothing to take out: report where serde says, as it says, and stop.
                    let offset = if rounds == 1 {
                        e.span().map(|s| s.start)
                    } else {
                        None
                    };
                    pr.push(offset, locate::render(&path), message);
                    break None;
                }
                pr.at_path(&path, message);
                removed.push(locate::render(&path));
            }
        }
    };
    for path in &unknown {
        let last = match path.last() {
            Some(Seg::Key(k)) => k.clone(),
            _ => String::new(),
        };
        let parent = &path[..path.len().saturating_sub(1)];
        let in_tokens = matches!(path.get(..2), Some([Seg::Key(a), Seg::Key(t)]) if a == "api" && t == "tokens");
        let in_webhook = matches!(path.get(..2), Some([Seg::Key(a), Seg::Key(w)]) if a == "notify" && w == "webhook");
        let message = if in_webhook && (last == "secret" || last == "key" || last == "token") {
            "unknown key: a secret is never written in the config; use secret_env (an \
             environment variable) or secret_file"
                .to_owned()
        } else if in_tokens && (last == "token" || last == "secret" || last == "hash") {
            "unknown key: a token is never written in the config; use token_env (an \
             environment variable) or token_file"
                .to_owned()
        } else if last == "password" || last == "secret" {
            "unknown key: secrets are never written in the config; use password_env (an \
             environment variable) or password_file"
                .to_owned()
        } else {
            format!(
                "unknown key{}",
                did_you_mean(suggest(&last, known_keys(parent)))
            )
        };
        pr.at_path(path, message);
    }
    let Some(raw) = raw else {
        return Err(pr.into_error());
    };
    // Problems found from here on about a removed value ("missing key capacity" after a
    // capacity of the wrong type) are noise and are dropped at the end.
    let structural = pr.list.len();

    // Pass 2: meaning.
    let site = validate_site(&raw, &mut pr);
    let api = {
        let a = raw.api.as_ref();
        let dflt = ApiConfig::default();
        let bind = a
            .and_then(|a| a.bind.clone())
            .unwrap_or_else(|| dflt.bind.to_string());
        let bind = match bind.parse::<SocketAddr>() {
            Ok(b) => Some(b),
            Err(_) => {
                pr.at_path(
                    &[k("api"), k("bind")],
                    format!("{bind:?} is not an address:port such as \"127.0.0.1:8080\""),
                );
                None
            }
        };
        let mut in_range = |key: &str, v: Option<i64>, dflt: u64, lo: i64, hi: i64| -> u64 {
            match v {
                None => dflt,
                Some(v) if (lo..=hi).contains(&v) => v as u64,
                Some(_) => {
                    pr.at_path(
                        &[k("api"), k(key)],
                        format!("must be between {lo} and {hi}"),
                    );
                    dflt
                }
            }
        };
        let max_connections = in_range(
            "max_connections",
            a.and_then(|a| a.max_connections),
            dflt.max_connections as u64,
            1,
            100_000,
        ) as usize;
        let header_timeout = Duration::from_millis(in_range(
            "header_timeout_ms",
            a.and_then(|a| a.header_timeout_ms),
            dflt.header_timeout.as_millis() as u64,
            100,
            600_000,
        ));
        let body_timeout = Duration::from_millis(in_range(
            "body_timeout_ms",
            a.and_then(|a| a.body_timeout_ms),
            dflt.body_timeout.as_millis() as u64,
            100,
            600_000,
        ));
        let tokens = validate_tokens(a.and_then(|a| a.tokens.as_deref()), base, env, &mut pr);
        if let Some(b) = bind {
            if !b.ip().is_loopback() && tokens.is_empty() {
                pr.at_path(
                    &[k("api"), k("bind")],
                    format!(
                        "{b} is reachable from the network, so the API needs [[api.tokens]] \
                         (or bind 127.0.0.1)"
                    ),
                );
            }
        }
        bind.map(|bind| ApiConfig {
            bind,
            max_connections,
            header_timeout,
            body_timeout,
            tokens,
        })
    };
    let storage_path = raw
        .storage
        .as_ref()
        .and_then(|s| s.path.clone())
        .unwrap_or_else(|| "avwarden.db".to_owned());
    let max_size_bytes = match raw.storage.as_ref().and_then(|s| s.max_size_mb) {
        None => None,
        Some(mb) if (1..=1_000_000).contains(&mb) => Some(mb as u64 * 1024 * 1024),
        Some(_) => {
            pr.at_path(
                &[k("storage"), k("max_size_mb")],
                "must be between 1 and 1000000",
            );
            None
        }
    };
    let storage = StorageConfig {
        path: resolve(base, &storage_path),
        max_size_bytes,
    };

    let links = {
        let l = raw.links.as_ref();
        let min = l.and_then(|l| l.backoff_min_ms).unwrap_or(1000);
        let max = l.and_then(|l| l.backoff_max_ms).unwrap_or(60_000);
        if !(10..=3_600_000).contains(&min) {
            pr.at_path(
                &[k("links"), k("backoff_min_ms")],
                "must be between 10 and 3600000",
            );
        }
        if !(10..=3_600_000).contains(&max) {
            pr.at_path(
                &[k("links"), k("backoff_max_ms")],
                "must be between 10 and 3600000",
            );
        } else if max < min {
            pr.at_path(
                &[k("links"), k("backoff_max_ms")],
                format!("must not be below backoff_min_ms ({min})"),
            );
        }
        LinkPolicy {
            backoff_min: Duration::from_millis(min.max(0) as u64),
            backoff_max: Duration::from_millis(max.max(min).max(0) as u64),
        }
    };

    let shutdown_deadline = {
        let secs = raw
            .shutdown
            .as_ref()
            .and_then(|s| s.deadline_secs)
            .unwrap_or(10.0);
        if !(secs.is_finite() && (0.1..=300.0).contains(&secs)) {
            pr.at_path(
                &[k("shutdown"), k("deadline_secs")],
                "must be between 0.1 and 300 seconds",
            );
        }
        Duration::from_secs_f64(secs.clamp(0.1, 300.0))
    };

    // Profiles: embedded, plus the site's directory.
    let mut profiles = match ProfileSet::embedded() {
        Ok(p) => p,
        Err(errs) => {
            for e in errs {
                pr.push(None, String::new(), format!("embedded profile: {e}"));
            }
            ProfileSet::default()
        }
    };
    if let Some(dir) = raw.profiles.as_ref().and_then(|p| p.dir.as_ref()) {
        let dir = resolve(base, dir);
        if !dir.is_dir() {
            pr.at_path(
                &[k("profiles"), k("dir")],
                format!("{} is not a directory", dir.display()),
            );
        } else {
            for e in profiles.load_dir(&dir) {
                pr.at_path(&[k("profiles"), k("dir")], e.to_string());
            }
        }
    }

    let mqtt = validate_mqtt(&raw, base, env, &mut pr);
    if raw.mqtt.is_none() {
        for (i, d) in raw.devices.iter().enumerate() {
            let is_mqtt = d
                .profile
                .as_deref()
                .and_then(|p| profiles.get(p))
                .is_some_and(|p| p.link.kind == LinkKind::Mqtt);
            if is_mqtt {
                pr.at_path(
                    &[k("devices"), Seg::Index(i), k("profile")],
                    "an MQTT device needs an [mqtt] section (a broker, or embedded = { bind = \"127.0.0.1:1883\" })",
                );
            }
        }
    }

    let selftest = validate_selftest(&raw, base, &mut pr);
    let rooms = validate_rooms(&raw, &mut pr);
    let room_ids: Vec<String> = rooms.iter().map(|r| r.id.to_string()).collect();
    let devices = validate_devices(&raw, &room_ids, &profiles, base, env, &mut pr);
    let bookings = validate_bookings(&raw, &room_ids, base, &mut pr);
    validate_parents(&raw, &devices, &mut pr);
    let tz = site.as_ref().map_or(chrono_tz::UTC, |s| s.time_zone);
    let roster = match raw.roster.as_ref().map(|r| r.validate(tz)) {
        None => crate::playbook::roster::Roster::of_plan(tz),
        Some(Ok(r)) => r,
        Some(Err(problems)) => {
            for (path, message) in problems {
                pr.at_path(&p(&[k("roster")], &path), message);
            }
            crate::playbook::roster::Roster::of_plan(tz)
        }
    };
    let playbook = validate_playbook(&raw, base, &mut pr);
    let device_ids: std::collections::BTreeSet<String> =
        raw.devices.iter().filter_map(|d| d.id.clone()).collect();
    let playbook_settings = match raw.playbook.as_ref().map(|s| s.validate(&device_ids)) {
        None => crate::playbook::PlaybookSettings::default(),
        Some(Ok(s)) => s,
        Some(Err(problems)) => {
            for (path, message) in problems {
                pr.at_path(&p(&[k("playbook")], &path), message);
            }
            crate::playbook::PlaybookSettings::default()
        }
    };
    let notify = validate_notify(&raw, base, env, &mut pr);
    let aggregate = validate_aggregate(&raw, base, env, &mut pr);

    if !removed.is_empty() {
        let mut i = 0;
        pr.list.retain(|(_, problem)| {
            i += 1;
            i <= structural
                || !removed
                    .iter()
                    .any(|r| r.starts_with(&problem.path) || problem.path.starts_with(r.as_str()))
        });
    }
    if pr.list.is_empty() {
        Ok(SiteConfig {
            file: PathBuf::from(file),
            site: site.expect("site validated"),
            api: api.expect("api validated"),
            storage,
            links,
            shutdown_deadline,
            selftest,
            rooms,
            devices,
            profiles,
            mqtt,
            bookings,
            roster,
            playbook,
            playbook_settings,
            notify,
            aggregate,
        })
    } else {
        Err(pr.into_error())
    }
}

/// The first line of a parser's message that says something: toml's message for some
/// syntax errors (a control character in a comment) starts with an empty line.
pub(crate) fn first_line(s: &str) -> String {
    // serde speaks Rust types; the technician reads TOML.
    s.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("not valid TOML")
        .replace("expected i64", "expected an integer")
        .replace("expected f64", "expected a number")
        .replace("expected a sequence", "expected an array")
        .replace("expected a map", "expected a table")
}

fn resolve(base: &Path, p: &str) -> PathBuf {
    let path = PathBuf::from(p);
    if path.is_absolute() {
        path
    } else {
        base.join(path)
    }
}

/// The keys each table accepts, for "did you mean" on unknown keys.
fn known_keys(parent: &[Seg]) -> Vec<&'static str> {
    let names: Vec<&str> = parent
        .iter()
        .filter_map(|s| match s {
            Seg::Key(k) => Some(k.as_str()),
            Seg::Index(_) => None,
        })
        .collect();
    match names.as_slice() {
        [] => vec![
            "site",
            "api",
            "storage",
            "profiles",
            "links",
            "shutdown",
            "selftest",
            "mqtt",
            "rooms",
            "devices",
            "bookings",
            "roster",
            "playbook",
            "notify",
            "aggregate",
        ],
        ["playbook"] => crate::playbook::settings::KEYS.to_vec(),
        ["roster"] => vec![
            "shifts",
            "holidays",
            "out_of_hours",
            "escalation",
            "contacts",
        ],
        ["roster", "contacts", _] => vec!["email"],
        ["notify"] => vec!["public_url", "webhook", "mail"],
        ["notify", "webhook"] => vec![
            "name",
            "url",
            "secret_env",
            "secret_file",
            "classes",
            "timeout_secs",
        ],
        ["notify", "mail"] => vec![
            "smtp_host",
            "smtp_port",
            "tls",
            "username",
            "password_env",
            "password_file",
            "from",
            "timeout_secs",
        ],
        ["roster", "shifts"] => vec!["who", "role", "days", "from", "until"],
        ["bookings"] => vec!["feeds"],
        ["bookings", "feeds"] => vec![
            "id",
            "url",
            "path",
            "room",
            "poll_interval_secs",
            "max_bytes",
            "needs",
        ],
        ["bookings", "feeds", "needs"] => vec![
            "projection",
            "wireless_mics",
            "wired_mics",
            "speech_reinforcement",
            "video_conference",
            "hvac",
        ],
        ["selftest"] => vec![
            "battery_margin_minutes",
            "lamp_margin_hours",
            "setpoint_c",
            "comfort_min_c",
            "comfort_max_c",
            "concurrency",
            "device_timeout_secs",
            "level_tolerance_db",
            "playbook",
        ],
        ["rooms", "presets"] => vec!["name", "max_attendees", "levels"],
        ["site"] => vec!["name", "time_zone"],
        ["api"] => vec![
            "bind",
            "max_connections",
            "header_timeout_ms",
            "body_timeout_ms",
            "tokens",
        ],
        ["api", "tokens"] => vec!["name", "role", "token_env", "token_file"],
        ["storage"] => vec!["path", "max_size_mb"],
        ["profiles"] => vec!["dir"],
        ["links"] => vec!["backoff_min_ms", "backoff_max_ms"],
        ["shutdown"] => vec!["deadline_secs"],
        ["rooms"] => vec![
            "id",
            "name",
            "building",
            "floor",
            "capacity",
            "equipment",
            "presets",
        ],
        ["devices"] => vec![
            "id",
            "room",
            "name",
            "profile",
            "link",
            "password_env",
            "password_file",
            "simulated",
            "simulator",
            "settings",
            "archive",
            "poll_interval_secs",
            "parent",
        ],
        ["devices", "link"] => vec![
            "kind",
            "host",
            "port",
            "path",
            "baud",
            "data_bits",
            "parity",
            "stop_bits",
            "connect_per_command",
            "connect_timeout_ms",
            "topic",
        ],
        _ => vec![],
    }
}

fn validate_site(raw: &RawSite, pr: &mut Problems<'_>) -> Option<Site> {
    let Some(s) = &raw.site else {
        pr.at_path(&[k("site")], "missing table [site] (name, time_zone)");
        return None;
    };
    let name = match &s.name {
        Some(n) if !n.trim().is_empty() => Some(n.clone()),
        Some(_) => {
            pr.at_path(&[k("site"), k("name")], "must not be empty");
            None
        }
        None => {
            pr.at_path(&[k("site"), k("name")], "missing key");
            None
        }
    };
    let tz = match &s.time_zone {
        Some(z) => match z.parse::<chrono_tz::Tz>() {
            Ok(tz) => Some(tz),
            Err(_) => {
                let hint =
                    did_you_mean(suggest(z, chrono_tz::TZ_VARIANTS.iter().map(|t| t.name())));
                pr.at_path(
                    &[k("site"), k("time_zone")],
                    format!("unknown IANA time zone {z:?}{hint}"),
                );
                None
            }
        },
        None => {
            pr.at_path(
                &[k("site"), k("time_zone")],
                "missing key (an IANA zone such as \"Europe/Berlin\")",
            );
            None
        }
    };
    Some(Site {
        name: name?,
        time_zone: tz?,
    })
}

fn validate_mqtt(
    raw: &RawSite,
    base: &Path,
    env: &Env,
    pr: &mut Problems<'_>,
) -> Option<super::MqttConfig> {
    use crate::transport::mqtt::MqttSettings;
    let table = raw.mqtt.as_ref()?;
    let settings = match MqttSettings::from_table(table) {
        Ok(s) => s,
        Err(problems) => {
            for (path, message) in problems {
                let segs: Vec<Seg> = path
                    .split('.')
                    .filter(|s| !s.is_empty())
                    .map(|s| Seg::Key(s.to_owned()))
                    .collect();
                pr.at_path(&segs, message);
            }
            return None;
        }
    };
    let password = broker_password(
        (
            settings.password_env.as_ref(),
            settings.password_file.as_ref(),
        ),
        "mqtt",
        base,
        env,
        pr,
    )?;
    Some(super::MqttConfig { settings, password })
}

/// `[aggregate]`: validated by the aggregate mode, its password resolved as `[mqtt]`'s is. An
/// aggregate daemon shows other buildings and has none of its own: rooms, devices, `[mqtt]`
/// or booking feeds beside it are refused where they are written.
fn validate_aggregate(
    raw: &RawSite,
    base: &Path,
    env: &Env,
    pr: &mut Problems<'_>,
) -> Option<crate::aggregate::AggregateConfig> {
    use crate::aggregate::AggregateSettings;
    let table = raw.aggregate.as_ref()?;
    let why = "an aggregate daemon ([aggregate]) shows other buildings and has none of its own; run this building's daemon with its own config";
    if !raw.rooms.is_empty() {
        pr.at_path(&[k("rooms")], why);
    }
    if !raw.devices.is_empty() {
        pr.at_path(&[k("devices")], why);
    }
    if raw.mqtt.is_some() {
        pr.at_path(
            &[k("mqtt")],
            "an aggregate daemon reaches its broker through [aggregate] broker and publishes nothing; remove [mqtt]",
        );
    }
    if raw.bookings.as_ref().is_some_and(|b| !b.feeds.is_empty()) {
        pr.at_path(&[k("bookings"), k("feeds")], why);
    }
    let settings = match AggregateSettings::from_table(table) {
        Ok(s) => s,
        Err(problems) => {
            for (path, message) in problems {
                let segs: Vec<Seg> = path
                    .split('.')
                    .filter(|s| !s.is_empty())
                    .map(|s| match s.parse::<usize>() {
                        Ok(i) => Seg::Index(i),
                        Err(_) => Seg::Key(s.to_owned()),
                    })
                    .collect();
                pr.at_path(&segs, message);
            }
            return None;
        }
    };
    let password = broker_password(
        (
            settings.password_env.as_ref(),
            settings.password_file.as_ref(),
        ),
        "aggregate",
        base,
        env,
        pr,
    )?;
    Some(crate::aggregate::AggregateConfig { settings, password })
}

/// A room or device id: well formed, present, unique.
/// A broker password named by `password_env` (wins) or `password_file` (its first line) of the
/// `[section]` table; `Err` when it is named but cannot be read (the problem is recorded).
fn broker_password(
    (var, file): (Option<&String>, Option<&PathBuf>),
    section: &str,
    base: &Path,
    env: &Env,
    pr: &mut Problems<'_>,
) -> Option<Option<Secret>> {
    match (var, file) {
        (Some(var), _) => match env.get(var) {
            Some(v) => Some(Some(Secret::new(v))),
            None => {
                pr.at_path(
                    &[k(section), k("password_env")],
                    format!("environment variable {var} is not set"),
                );
                None
            }
        },
        (None, Some(file)) => {
            let path = resolve(base, &file.display().to_string());
            match std::fs::read_to_string(&path) {
                Ok(s) => Some(Some(Secret::new(s.lines().next().unwrap_or("").to_owned()))),
                Err(e) => {
                    pr.at_path(
                        &[k(section), k("password_file")],
                        format!("cannot read {}: {e}", path.display()),
                    );
                    None
                }
            }
        }
        (None, None) => Some(None),
    }
}

fn validate_id(
    what: &str,
    id: Option<&String>,
    at: &[Seg],
    seen: &mut HashSet<String>,
    pr: &mut Problems<'_>,
) -> Option<String> {
    match id {
        Some(id) if is_id(id) => {
            if !seen.insert(id.clone()) {
                pr.at_path(&p(at, &[k("id")]), format!("duplicate {what} id {id:?}"));
            }
            Some(id.clone())
        }
        Some(id) => {
            pr.at_path(
                &p(at, &[k("id")]),
                format!("{id:?} is not an id (letters, digits, '-', '_'; at most 64)"),
            );
            None
        }
        None => {
            pr.at_path(at, "missing key id");
            None
        }
    }
}

fn validate_rooms(raw: &RawSite, pr: &mut Problems<'_>) -> Vec<Room> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (i, r) in raw.rooms.iter().enumerate() {
        let at = [k("rooms"), Seg::Index(i)];
        let id = validate_id("room", r.id.as_ref(), &at, &mut seen, pr);
        let capacity = match r.capacity {
            Some(c) if (1..=100_000).contains(&c) => c as u32,
            Some(_) => {
                pr.at_path(&p(&at, &[k("capacity")]), "must be between 1 and 100000");
                0
            }
            None => {
                pr.at_path(&at, "missing key capacity (number of seats)");
                0
            }
        };
        let floor = match r.floor {
            Some(f) if (-50..=300).contains(&f) => Some(f as i32),
            Some(_) => {
                pr.at_path(&p(&at, &[k("floor")]), "must be between -50 and 300");
                None
            }
            None => None,
        };
        let presets = validate_presets(r, &at, pr);
        if let Some(id) = id {
            out.push(Room {
                presets,
                name: r.name.clone().unwrap_or_else(|| id.clone()),
                id: RoomId::new(id),
                building: r.building.clone(),
                floor,
                capacity,
                equipment: r.equipment.clone().unwrap_or_default(),
            });
        }
    }
    out
}

/// `[[rooms.presets]]`, sorted by `max_attendees`; each problem located.
fn validate_presets(r: &RawRoom, at: &[Seg], pr: &mut Problems<'_>) -> Vec<RoomPreset> {
    let mut out: Vec<RoomPreset> = Vec::new();
    for (j, raw) in r.presets.iter().flatten().enumerate() {
        let here = p(at, &[k("presets"), Seg::Index(j)]);
        let max_attendees = match raw.max_attendees {
            Some(n) if (1..=100_000).contains(&n) => n as u32,
            Some(_) => {
                pr.at_path(
                    &p(&here, &[k("max_attendees")]),
                    "must be between 1 and 100000",
                );
                continue;
            }
            None => {
                pr.at_path(
                    &here,
                    "missing key max_attendees (the largest meeting it is for)",
                );
                continue;
            }
        };
        if let Some(other) = out.iter().find(|o| o.max_attendees == max_attendees) {
            pr.at_path(
                &p(&here, &[k("max_attendees")]),
                format!(
                    "preset {:?} is for {max_attendees} attendees already",
                    other.name
                ),
            );
            continue;
        }
        let levels = raw.levels.clone().unwrap_or_default();
        if levels.is_empty() {
            pr.at_path(&here, "missing key levels (zone = level in dB)");
        }
        for (zone, db) in &levels {
            if !(db.is_finite() && (-100.0..=20.0).contains(db)) {
                pr.at_path(
                    &p(&here, &[k("levels"), k(zone)]),
                    "must be between -100 and 20 dB",
                );
            }
        }
        out.push(RoomPreset {
            name: raw
                .name
                .clone()
                .unwrap_or_else(|| format!("up to {max_attendees}")),
            max_attendees,
            levels,
        });
    }
    out.sort_by_key(|p| p.max_attendees);
    out
}

/// `[selftest]`, with the playbook it names (or the shipped one).
fn validate_selftest(raw: &RawSite, base: &Path, pr: &mut Problems<'_>) -> SelfTestSettings {
    let mut out = SelfTestSettings::default();
    let Some(st) = raw.selftest.as_ref() else {
        return out;
    };
    let at = |key: &str| [k("selftest"), k(key)];
    let mut int = |key: &str, v: Option<i64>, lo: i64, hi: i64| -> Option<i64> {
        match v {
            Some(v) if (lo..=hi).contains(&v) => Some(v),
            Some(_) => {
                pr.at_path(&at(key), format!("must be between {lo} and {hi}"));
                None
            }
            None => None,
        }
    };
    if let Some(m) = int("battery_margin_minutes", st.battery_margin_minutes, 0, 600) {
        out.battery_margin_minutes = m as u32;
    }
    if let Some(h) = int("lamp_margin_hours", st.lamp_margin_hours, 0, 100_000) {
        out.lamp_margin_hours = Some(h as u32);
    }
    if let Some(c) = int("concurrency", st.concurrency, 1, 256) {
        out.concurrency = c as usize;
    }
    let mut float = |key: &str, v: Option<f64>, lo: f64, hi: f64, unit: &str| -> Option<f64> {
        match v {
            Some(v) if v.is_finite() && (lo..=hi).contains(&v) => Some(v),
            Some(_) => {
                pr.at_path(&at(key), format!("must be between {lo} and {hi}{unit}"));
                None
            }
            None => None,
        }
    };
    if let Some(c) = float("setpoint_c", st.setpoint_c, 10.0, 35.0, " °C") {
        out.setpoint_c = c;
    }
    if let Some(c) = float("comfort_min_c", st.comfort_min_c, 10.0, 35.0, " °C") {
        out.comfort_min_c = c;
    }
    if let Some(c) = float("comfort_max_c", st.comfort_max_c, 10.0, 35.0, " °C") {
        out.comfort_max_c = c;
    }
    if let Some(s) = float(
        "device_timeout_secs",
        st.device_timeout_secs,
        1.0,
        3_600.0,
        " s",
    ) {
        out.device_timeout = Duration::from_secs_f64(s);
    }
    if let Some(d) = float(
        "level_tolerance_db",
        st.level_tolerance_db,
        0.0,
        20.0,
        " dB",
    ) {
        out.level_tolerance_db = d;
    }
    if out.comfort_max_c < out.comfort_min_c {
        pr.at_path(&at("comfort_max_c"), "must not be below comfort_min_c");
    } else if !(out.comfort_min_c..=out.comfort_max_c).contains(&out.setpoint_c) {
        pr.at_path(
            &at("setpoint_c"),
            format!(
                "must be inside the comfort band {} to {} °C",
                out.comfort_min_c, out.comfort_max_c
            ),
        );
    }
    if let Some(file) = st.playbook.as_ref() {
        let path = resolve(base, file);
        match std::fs::read_to_string(&path) {
            Err(e) => pr.at_path(
                &at("playbook"),
                format!("cannot read {}: {e}", path.display()),
            ),
            Ok(text) => {
                match crate::schedule::remedies::Remedies::parse_over_embedded(
                    &text,
                    &path.display().to_string(),
                ) {
                    Ok(r) => out.remedies = Arc::new(r),
                    // The playbook's problems are in its own file, with its own places.
                    Err(problems) => pr
                        .list
                        .extend(problems.into_iter().map(|p| (usize::MAX, p))),
                }
            }
        }
    }
    out
}

/// `parent` of each device names another device of the site, and no device is its own
/// ancestor.
fn validate_parents(raw: &RawSite, devices: &[DeviceConfig], pr: &mut Problems<'_>) {
    let parent_of = |id: &str| {
        raw.devices
            .iter()
            .find(|d| d.id.as_deref() == Some(id))
            .and_then(|d| d.parent.as_deref())
    };
    for (i, d) in raw.devices.iter().enumerate() {
        let Some(parent) = d.parent.as_deref() else {
            continue;
        };
        let at = [k("devices"), Seg::Index(i), k("parent")];
        if !devices.iter().any(|x| x.id.as_str() == parent) {
            let hint = did_you_mean(suggest(parent, devices.iter().map(|x| x.id.as_str())));
            pr.at_path(&at, format!("unknown device \"{parent}\"{hint}"));
            continue;
        }
        let mut seen = vec![d.id.as_deref().unwrap_or("")];
        let mut at_dev = Some(parent);
        while let Some(x) = at_dev {
            if seen.contains(&x) {
                pr.at_path(
                    &at,
                    format!("devices reach each other in a circle through \"{x}\""),
                );
                break;
            }
            seen.push(x);
            at_dev = parent_of(x);
        }
    }
}

/// The contingency rules of the playbook `[selftest] playbook` names, or the shipped ones.
fn validate_playbook(
    raw: &RawSite,
    base: &Path,
    pr: &mut Problems<'_>,
) -> Arc<crate::playbook::rules::Rules> {
    use crate::playbook::rules::Rules;
    let shipped = || Arc::new(Rules::embedded().unwrap_or_default());
    let Some(file) = raw.selftest.as_ref().and_then(|s| s.playbook.as_ref()) else {
        return shipped();
    };
    let path = resolve(base, file);
    // A file that cannot be read is reported with the remedies.
    let Ok(text) = std::fs::read_to_string(&path) else {
        return shipped();
    };
    match Rules::parse_over_embedded(&text, &path.display().to_string()) {
        Ok(r) => Arc::new(r),
        Err(problems) => {
            pr.list
                .extend(problems.into_iter().map(|p| (usize::MAX, p)));
            shipped()
        }
    }
}

/// `[[bookings.feeds]]`: each feed read from a url or a path (exactly one), its room known.
fn validate_bookings(
    raw: &RawSite,
    rooms: &[String],
    base: &Path,
    pr: &mut Problems<'_>,
) -> BookingsConfig {
    let mut feeds = Vec::new();
    let mut seen = HashSet::new();
    let Some(b) = raw.bookings.as_ref() else {
        return BookingsConfig::default();
    };
    for (i, f) in b.feeds.iter().enumerate() {
        let at = [k("bookings"), k("feeds"), Seg::Index(i)];
        let id = validate_id("feed", f.id.as_ref(), &at, &mut seen, pr);
        let source = match (&f.url, &f.path) {
            (Some(_), Some(_)) => {
                pr.at_path(&p(&at, &[k("path")]), "give url or path, not both");
                None
            }
            (None, None) => {
                pr.at_path(&at, "missing key url or path (where the feed is read from)");
                None
            }
            (Some(url), None) => {
                let scheme_ok = ["http://", "https://", "webcal://"].iter().any(|s| {
                    url.get(..s.len())
                        .is_some_and(|head| head.eq_ignore_ascii_case(s))
                        && url.len() > s.len()
                });
                if scheme_ok {
                    Some(FeedSource::Url(url.clone()))
                } else {
                    pr.at_path(
                        &p(&at, &[k("url")]),
                        format!("{url:?} is not an http://, https:// or webcal:// URL"),
                    );
                    None
                }
            }
            (None, Some(path)) => Some(FeedSource::Path(resolve(base, path))),
        };
        let room = match &f.room {
            None => None,
            Some(r) if rooms.iter().any(|x| x == r) => Some(RoomId::new(r.clone())),
            Some(r) => {
                let hint = did_you_mean(suggest(r, rooms.iter().map(|s| s.as_str())));
                pr.at_path(&p(&at, &[k("room")]), format!("unknown room {r:?}{hint}"));
                None
            }
        };
        let poll_interval = match f.poll_interval_secs {
            None => DEFAULT_POLL_INTERVAL,
            Some(s) if s.is_finite() && (10.0..=86_400.0).contains(&s) => {
                Duration::from_secs_f64(s)
            }
            Some(_) => {
                pr.at_path(
                    &p(&at, &[k("poll_interval_secs")]),
                    "must be between 10 and 86400 seconds",
                );
                DEFAULT_POLL_INTERVAL
            }
        };
        const MAX_FEED_BYTES: i64 = 256 * 1024 * 1024;
        let max_bytes = match f.max_bytes {
            None => DEFAULT_MAX_BYTES,
            Some(n) if (1024..=MAX_FEED_BYTES).contains(&n) => n as usize,
            Some(_) => {
                pr.at_path(
                    &p(&at, &[k("max_bytes")]),
                    format!("must be between 1024 and {MAX_FEED_BYTES}"),
                );
                DEFAULT_MAX_BYTES
            }
        };
        if let (Some(id), Some(source)) = (id, source) {
            feeds.push(FeedConfig {
                id,
                source,
                room,
                poll_interval,
                max_bytes,
                needs: f.needs.clone(),
            });
        }
    }
    BookingsConfig { feeds }
}

fn validate_devices(
    raw: &RawSite,
    rooms: &[String],
    profiles: &ProfileSet,
    base: &Path,
    env: &Env,
    pr: &mut Problems<'_>,
) -> Vec<DeviceConfig> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut shared_profiles: HashMap<String, Arc<Profile>> = HashMap::new();
    for (i, d) in raw.devices.iter().enumerate() {
        let at = [k("devices"), Seg::Index(i)];
        let id = validate_id("device", d.id.as_ref(), &at, &mut seen, pr);
        let room = match &d.room {
            Some(r) if rooms.iter().any(|x| x == r) => Some(r.clone()),
            Some(r) => {
                let hint = did_you_mean(suggest(r, rooms.iter().map(|s| s.as_str())));
                pr.at_path(&p(&at, &[k("room")]), format!("unknown room {r:?}{hint}"));
                None
            }
            None => {
                pr.at_path(&at, "missing key room");
                None
            }
        };
        let profile = match &d.profile {
            // One copy per profile, shared by its devices: a profile is kilobytes of tables
            // and a building has thousands of devices of a handful of profiles.
            Some(name) => match profiles.get(name) {
                Some(p) => Some(
                    shared_profiles
                        .entry(name.clone())
                        .or_insert_with(|| Arc::new(p.clone()))
                        .clone(),
                ),
                None => {
                    let hint = did_you_mean(suggest(name, profiles.ids()));
                    pr.at_path(
                        &p(&at, &[k("profile")]),
                        format!("unknown profile {name:?}{hint}"),
                    );
                    None
                }
            },
            None => {
                pr.at_path(&at, "missing key profile");
                None
            }
        };
        // A site may poll one device more or less often than its profile says.
        let profile = match (profile, d.poll_interval_secs) {
            (Some(prof), Some(secs)) if secs.is_finite() && (0.1..=3600.0).contains(&secs) => {
                let mut prof = (*prof).clone();
                // Comms times that follow from the interval follow the new one.
                prof.timing.poll_interval = std::time::Duration::from_secs_f64(secs);
                Some(Arc::new(prof))
            }
            (prof, Some(_)) => {
                pr.at_path(
                    &p(&at, &[k("poll_interval_secs")]),
                    "must be between 0.1 and 3600 seconds",
                );
                prof
            }
            (prof, None) => prof,
        };
        let simulated = d.simulated.unwrap_or(false);
        let link = match (&profile, &d.link) {
            (Some(prof), Some(l)) => validate_link(prof, l, &p(&at, &[k("link")]), pr),
            (Some(_), None) if !simulated => {
                pr.at_path(&at, "missing table link (where the device is connected)");
                None
            }
            _ => None,
        };
        let secret = validate_secret(d, &at, base, env, pr);
        if let (Some(prof), Some(settings)) = (&profile, &d.settings) {
            // Let the driver check its own settings now, so a bad tag stops the start.
            if let Err(e) = crate::driver::for_profile(
                prof,
                secret.as_ref().map(|s| s.expose().to_owned()),
                settings,
            ) {
                settings_problem(&at, e, pr);
            }
        }
        if let (Some(prof), Some(options)) = (&profile, &d.simulator) {
            // The simulator's own parse, so `check-config` refuses what `run
            // --with-simulators` would (issue 16, point 3).
            if let Err(e) = crate::sim::check_options(prof, options) {
                simulator_problem(&p(&at, &[k("simulator")]), e, pr);
            }
        }
        let archive = match &d.archive {
            None => crate::records::ArchiveFields::default(),
            Some(t) => {
                let parsed: Result<crate::records::ArchiveFields, _> =
                    toml::Value::Table(t.clone()).try_into();
                match parsed {
                    Ok(a) => {
                        if let Err(e) = a.validate() {
                            let m = match e {
                                crate::records::StoreError::Invalid(m) => m,
                                other => other.to_string(),
                            };
                            pr.at_path(&p(&at, &[k("archive")]), m);
                        }
                        a
                    }
                    Err(e) => {
                        pr.at_path(&p(&at, &[k("archive")]), first_line(e.message()));
                        crate::records::ArchiveFields::default()
                    }
                }
            }
        };
        if let (Some(id), Some(room), Some(profile)) = (id, room, profile) {
            out.push(DeviceConfig {
                id: DeviceId::new(id),
                room: RoomId::new(room),
                name: d.name.clone(),
                profile,
                link,
                secret,
                simulated,
                simulator: d.simulator.clone().unwrap_or_default(),
                settings: d.settings.clone().unwrap_or_default(),
                archive,
                parent: d.parent.as_deref().map(DeviceId::new),
            });
        }
    }
    out
}

/// A simulator's complaint about its table, at the key it names (`blocks[1].kind`).
fn simulator_problem(at: &[Seg], e: crate::sim::SimError, pr: &mut Problems<'_>) {
    use crate::sim::SimError;
    let (key, message) = match e {
        SimError::UnknownOption { key, known } => {
            let last = key.rsplit('.').next().unwrap_or(&key).to_owned();
            let hint = did_you_mean(suggest(&last, known.iter().map(String::as_str)));
            (key, format!("unknown key{hint}"))
        }
        SimError::Option { key, message } => (key, message),
        other => (String::new(), other.to_string()),
    };
    let mut path = at.to_vec();
    // "simulator" is the whole table: the error belongs to no single key in it.
    if key != "simulator" {
        push_key_path(&mut path, &key);
    }
    pr.at_path(&path, message);
}

/// `zones[0].level_tag` onto `path` as segments.
fn push_key_path(path: &mut Vec<Seg>, key: &str) {
    for part in key.split('.').filter(|s| !s.is_empty()) {
        let mut pieces = part.split('[');
        if let Some(name) = pieces.next() {
            path.push(k(name));
        }
        for index in pieces {
            match index.trim_end_matches(']').parse() {
                Ok(i) => path.push(Seg::Index(i)),
                Err(_) => break,
            }
        }
    }
}

/// A driver's verdict on `[devices.settings]`: each problem at its own key (`settings.zones[2]
/// .max_db`), all of them; a profile option's problem at the settings table.
fn settings_problem(at: &[Seg], e: crate::profile::ProfileError, pr: &mut Problems<'_>) {
    use crate::profile::ProfileError;
    match e {
        ProfileError::Many(list) => {
            for e in list {
                settings_problem(at, e, pr);
            }
        }
        ProfileError::Option { key, message, .. } if key.starts_with("settings.") => {
            let mut path = at.to_vec();
            push_key_path(&mut path, &key);
            pr.at_path(&path, message);
        }
        other => pr.at_path(&p(at, &[k("settings")]), other.to_string()),
    }
}

/// A token shorter than this is refused: it could be guessed.
const MIN_TOKEN_LEN: usize = 16;

/// `[[api.tokens]]`: each a unique name, a known role and exactly one source; the token is
/// read, checked for length and kept only as its SHA-256.
/// The required `name` of the table at `at`: an id, not yet in `names` (a `what` name).
fn unique_name(
    name: Option<&str>,
    at: &[Seg],
    what: &str,
    names: &mut HashSet<String>,
    pr: &mut Problems<'_>,
) -> Option<String> {
    match name {
        None => {
            pr.at_path(at, "missing key name");
            None
        }
        Some(n) if !is_id(n) => {
            pr.at_path(
                &p(at, &[k("name")]),
                format!("{n:?} is not a name (letters, digits, '-' and '_', up to 64)"),
            );
            None
        }
        Some(n) if !names.insert(n.to_owned()) => {
            pr.at_path(&p(at, &[k("name")]), format!("duplicate {what} name {n:?}"));
            None
        }
        Some(n) => Some(n.to_owned()),
    }
}

fn validate_tokens(
    raw: Option<&[super::raw::RawToken]>,
    base: &Path,
    env: &Env,
    pr: &mut Problems<'_>,
) -> Vec<ApiToken> {
    let mut out = Vec::new();
    let mut names = HashSet::new();
    for (i, t) in raw.unwrap_or_default().iter().enumerate() {
        let at = [k("api"), k("tokens"), Seg::Index(i)];
        let name = unique_name(t.name.as_deref(), &at, "token", &mut names, pr);
        let role = match t.role.as_deref() {
            None => {
                pr.at_path(&at, "missing key role (viewer, technician or admin)");
                None
            }
            Some(r) => match Role::parse(r) {
                Some(role) => Some(role),
                None => {
                    pr.at_path(
                        &p(&at, &[k("role")]),
                        format!(
                            "unknown role {r:?}{} (viewer, technician or admin)",
                            did_you_mean(suggest(r, Role::NAMES))
                        ),
                    );
                    None
                }
            },
        };
        let token = match (&t.token_env, &t.token_file) {
            (Some(_), Some(_)) => {
                pr.at_path(
                    &p(&at, &[k("token_file")]),
                    "give either token_env or token_file, not both",
                );
                None
            }
            (None, None) => {
                pr.at_path(&at, "missing key token_env or token_file");
                None
            }
            (Some(var), None) => match env.get(var) {
                Some(v) => Some((v, k("token_env"))),
                None => {
                    pr.at_path(
                        &p(&at, &[k("token_env")]),
                        format!("environment variable {var} is not set"),
                    );
                    None
                }
            },
            (None, Some(file)) => {
                let path = resolve(base, file);
                match std::fs::read_to_string(&path) {
                    Ok(s) => Some((s.lines().next().unwrap_or("").to_owned(), k("token_file"))),
                    Err(e) => {
                        pr.at_path(
                            &p(&at, &[k("token_file")]),
                            format!("cannot read {}: {e}", path.display()),
                        );
                        None
                    }
                }
            }
        };
        // Never quote the token itself: the message names only its length.
        let token = token.and_then(|(v, key)| {
            let v = v.trim();
            if v.chars().count() < MIN_TOKEN_LEN {
                pr.at_path(
                    &p(&at, &[key]),
                    format!(
                        "the token has {} characters; at least {MIN_TOKEN_LEN} are needed",
                        v.chars().count()
                    ),
                );
                None
            } else {
                Some(TokenHash::of(v))
            }
        });
        if let Some(hash) = &token {
            if let Some(same) = out.iter().find(|o: &&ApiToken| o.hash.matches_hash(hash)) {
                pr.at_path(
                    &at,
                    format!("the same token as {:?}: give each its own", same.name),
                );
                continue;
            }
        }
        if let (Some(name), Some(role), Some(hash)) = (name, role, token) {
            out.push(ApiToken { name, role, hash });
        }
    }
    out
}

/// Shortest webhook signing secret accepted: a short HMAC key is guessable offline from one
/// signed payload.
const MIN_WEBHOOK_SECRET_LEN: usize = 16;

/// A secret from `<env_key>` or `<file_key>`, exactly one of them; `None` (reported) when it
/// cannot be read. The message names the variable or file, never the value.
fn secret_from(
    env_var: Option<&String>,
    file: Option<&String>,
    keys: (&str, &str),
    at: &[Seg],
    base: &Path,
    env: &Env,
    pr: &mut Problems<'_>,
) -> Option<Option<Secret>> {
    match (env_var, file) {
        (Some(_), Some(_)) => {
            pr.at_path(
                &p(at, &[k(keys.1)]),
                format!("give either {} or {}, not both", keys.0, keys.1),
            );
            None
        }
        (Some(var), None) => match env.get(var) {
            Some(v) => Some(Some(Secret::new(v.trim().to_owned()))),
            None => {
                pr.at_path(
                    &p(at, &[k(keys.0)]),
                    format!("environment variable {var} is not set"),
                );
                None
            }
        },
        (None, Some(f)) => {
            let path = resolve(base, f);
            match std::fs::read_to_string(&path) {
                Ok(s) => Some(Some(Secret::new(
                    s.lines().next().unwrap_or("").trim().to_owned(),
                ))),
                Err(e) => {
                    pr.at_path(
                        &p(at, &[k(keys.1)]),
                        format!("cannot read {}: {e}", path.display()),
                    );
                    None
                }
            }
        }
        (None, None) => Some(None),
    }
}

fn http_url(s: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(s).map_err(|e| format!("not a URL: {e}"))?;
    match url.scheme() {
        "http" | "https" if url.host().is_some() => Ok(url),
        "http" | "https" => Err("the URL names no host".to_owned()),
        other => Err(format!("scheme {other:?}: use http or https")),
    }
}

fn timeout_secs(v: Option<f64>, default: u64, at: &[Seg], pr: &mut Problems<'_>) -> Duration {
    match v {
        None => Duration::from_secs(default),
        Some(t) if t > 0.0 && t <= 300.0 => Duration::from_secs_f64(t),
        Some(_) => {
            pr.at_path(
                &p(at, &[k("timeout_secs")]),
                "must be more than 0 and at most 300",
            );
            Duration::from_secs(default)
        }
    }
}

/// `[notify]`: webhooks (unique names, http(s) URLs, a signing secret from the environment
/// or a file, known classes) and the mail relay.
fn validate_notify(
    raw: &RawSite,
    base: &Path,
    env: &Env,
    pr: &mut Problems<'_>,
) -> crate::notify::NotifyConfig {
    use crate::notify::{MailConfig, MailTls, NotifyConfig, WebhookConfig};
    const CLASSES: [&str; 3] = ["major", "important", "general"];
    let mut out = NotifyConfig::default();
    let Some(n) = &raw.notify else {
        return out;
    };
    if let Some(u) = &n.public_url {
        match http_url(u) {
            Ok(_) => out.public_url = Some(u.clone()),
            Err(m) => pr.at_path(&[k("notify"), k("public_url")], m),
        }
    }
    let mut names = HashSet::new();
    for (i, w) in n.webhook.iter().enumerate() {
        let at = [k("notify"), k("webhook"), Seg::Index(i)];
        let name = unique_name(w.name.as_deref(), &at, "webhook", &mut names, pr);
        let url = match w.url.as_deref() {
            None => {
                pr.at_path(&at, "missing key url");
                None
            }
            Some(u) => match http_url(u) {
                Ok(url) => Some(url),
                Err(m) => {
                    pr.at_path(&p(&at, &[k("url")]), m);
                    None
                }
            },
        };
        let secret = match secret_from(
            w.secret_env.as_ref(),
            w.secret_file.as_ref(),
            ("secret_env", "secret_file"),
            &at,
            base,
            env,
            pr,
        ) {
            Some(None) => {
                pr.at_path(
                    &at,
                    "missing key secret_env or secret_file (the signing key)",
                );
                None
            }
            Some(Some(s)) if s.expose().chars().count() < MIN_WEBHOOK_SECRET_LEN => {
                let key = if w.secret_env.is_some() {
                    "secret_env"
                } else {
                    "secret_file"
                };
                pr.at_path(
                    &p(&at, &[k(key)]),
                    format!(
                        "the secret has {} characters; at least {MIN_WEBHOOK_SECRET_LEN} are needed",
                        s.expose().chars().count()
                    ),
                );
                None
            }
            Some(s) => s,
            None => None,
        };
        let mut classes = Vec::new();
        for (j, c) in w.classes.iter().flatten().enumerate() {
            if CLASSES.contains(&c.as_str()) {
                classes.push(c.clone());
            } else {
                pr.at_path(
                    &p(&at, &[k("classes"), Seg::Index(j)]),
                    format!(
                        "unknown class {c:?}{} (major, important or general)",
                        did_you_mean(suggest(c, CLASSES))
                    ),
                );
            }
        }
        let timeout = timeout_secs(w.timeout_secs, 10, &at, pr);
        if let (Some(name), Some(url), Some(secret)) = (name, url, secret) {
            out.webhooks.push(WebhookConfig {
                name,
                url,
                secret,
                classes,
                timeout,
            });
        }
    }
    if let Some(m) = &n.mail {
        let at = [k("notify"), k("mail")];
        let host = match m.smtp_host.as_deref().map(str::trim) {
            None => {
                pr.at_path(&at, "missing key smtp_host");
                None
            }
            Some("") => {
                pr.at_path(&p(&at, &[k("smtp_host")]), "empty: name the SMTP relay");
                None
            }
            Some(h) => Some(h.to_owned()),
        };
        let tls = match m.tls.as_deref() {
            None => Some(MailTls::Starttls),
            Some(t) => match MailTls::parse(t) {
                Some(t) => Some(t),
                None => {
                    pr.at_path(
                        &p(&at, &[k("tls")]),
                        format!(
                            "unknown tls {t:?}{} (none, starttls or tls)",
                            did_you_mean(suggest(t, MailTls::NAMES))
                        ),
                    );
                    None
                }
            },
        };
        let port = match m.smtp_port {
            None => tls.map(|t| match t {
                MailTls::None => 25,
                MailTls::Starttls => 587,
                MailTls::Tls => 465,
            }),
            Some(port) => match u16::try_from(port) {
                Ok(port) if port > 0 => Some(port),
                _ => {
                    pr.at_path(&p(&at, &[k("smtp_port")]), "must be 1 to 65535");
                    None
                }
            },
        };
        let password = secret_from(
            m.password_env.as_ref(),
            m.password_file.as_ref(),
            ("password_env", "password_file"),
            &at,
            base,
            env,
            pr,
        );
        if matches!(password, Some(Some(_))) && m.username.is_none() {
            pr.at_path(&at, "a password needs a username");
        }
        let from = match m.from.as_deref() {
            None => {
                pr.at_path(&at, "missing key from (the sender's address)");
                None
            }
            Some(f) => match f.parse::<lettre::message::Mailbox>() {
                Ok(_) => Some(f.to_owned()),
                Err(e) => {
                    pr.at_path(&p(&at, &[k("from")]), format!("not an e-mail address: {e}"));
                    None
                }
            },
        };
        let timeout = timeout_secs(m.timeout_secs, 30, &at, pr);
        if let (Some(smtp_host), Some(tls), Some(smtp_port), Some(password), Some(from)) =
            (host, tls, port, password, from)
        {
            out.mail = Some(MailConfig {
                smtp_host,
                smtp_port,
                tls,
                username: m.username.clone(),
                password,
                from,
                timeout,
            });
        }
    }
    out
}

fn validate_secret(
    d: &RawDevice,
    at: &[Seg],
    base: &Path,
    env: &Env,
    pr: &mut Problems<'_>,
) -> Option<Secret> {
    match (&d.password_env, &d.password_file) {
        (Some(_), Some(_)) => {
            pr.at_path(
                &p(at, &[k("password_file")]),
                "give either password_env or password_file, not both",
            );
            None
        }
        (Some(var), None) => match env.get(var) {
            Some(v) => Some(Secret::new(v)),
            None => {
                pr.at_path(
                    &p(at, &[k("password_env")]),
                    format!("environment variable {var} is not set"),
                );
                None
            }
        },
        (None, Some(file)) => {
            let path = resolve(base, file);
            match std::fs::read_to_string(&path) {
                Ok(s) => Some(Secret::new(s.lines().next().unwrap_or("").to_owned())),
                Err(e) => {
                    pr.at_path(
                        &p(at, &[k("password_file")]),
                        format!("cannot read {}: {e}", path.display()),
                    );
                    None
                }
            }
        }
        (None, None) => None,
    }
}

fn validate_link(
    profile: &Profile,
    l: &RawLink,
    at: &[Seg],
    pr: &mut Problems<'_>,
) -> Option<LinkSpec> {
    let defaults = &profile.link;
    let kind = match l.kind.as_deref() {
        None => defaults.kind,
        Some("tcp") => LinkKind::Tcp,
        Some("serial") => LinkKind::Serial,
        Some("udp") => LinkKind::Udp,
        Some("mqtt") => LinkKind::Mqtt,
        Some(other) => {
            let hint = did_you_mean(suggest(other, ["tcp", "serial", "udp", "mqtt"]));
            pr.at_path(
                &p(at, &[k("kind")]),
                format!("unknown link kind {other:?}{hint}"),
            );
            return None;
        }
    };
    if kind != defaults.kind {
        pr.at_path(
            &p(at, &[k("kind")]),
            format!(
                "profile {} speaks over {:?}, not {:?}",
                profile.id, defaults.kind, kind
            )
            .to_lowercase(),
        );
        return None;
    }
    // Keys that belong to another kind of link are mistakes, not options.
    let stray: &[(&str, bool)] = match kind {
        LinkKind::Tcp | LinkKind::Udp => &[
            ("path", l.path.is_some()),
            ("baud", l.baud.is_some()),
            ("data_bits", l.data_bits.is_some()),
            ("parity", l.parity.is_some()),
            ("stop_bits", l.stop_bits.is_some()),
            ("topic", l.topic.is_some()),
        ],
        LinkKind::Serial => &[
            ("host", l.host.is_some()),
            ("port", l.port.is_some()),
            ("connect_per_command", l.connect_per_command.is_some()),
            ("connect_timeout_ms", l.connect_timeout_ms.is_some()),
            ("topic", l.topic.is_some()),
        ],
        LinkKind::Mqtt => &[
            ("host", l.host.is_some()),
            ("port", l.port.is_some()),
            ("path", l.path.is_some()),
            ("baud", l.baud.is_some()),
        ],
    };
    let mut ok = true;
    for (key, present) in stray {
        if *present {
            pr.at_path(
                &p(at, &[k(key)]),
                format!(
                    "not a setting of a {} link",
                    format!("{kind:?}").to_lowercase()
                ),
            );
            ok = false;
        }
    }
    match kind {
        LinkKind::Tcp | LinkKind::Udp => {
            let host = match &l.host {
                Some(h) if !h.trim().is_empty() => Some(h.clone()),
                Some(_) => {
                    pr.at_path(&p(at, &[k("host")]), "must not be empty");
                    None
                }
                None => {
                    pr.at_path(at, "missing key host");
                    None
                }
            };
            let port = match l.port.or(defaults.port.map(i64::from)) {
                Some(n) if (1..=65535).contains(&n) => Some(n as u16),
                Some(n) => {
                    pr.at_path(&p(at, &[k("port")]), format!("{n} is not a port (1-65535)"));
                    None
                }
                None => {
                    pr.at_path(at, "missing key port");
                    None
                }
            };
            let timeout = match l.connect_timeout_ms {
                Some(n) if (10..=120_000).contains(&n) => Duration::from_millis(n as u64),
                Some(_) => {
                    pr.at_path(
                        &p(at, &[k("connect_timeout_ms")]),
                        "must be between 10 and 120000",
                    );
                    ok = false;
                    Duration::from_secs(5)
                }
                None => Duration::from_secs(5),
            };
            let (host, port) = (host?, port?);
            if !ok {
                return None;
            }
            if kind == LinkKind::Udp {
                return Some(LinkSpec::Udp { host, port });
            }
            let mut t = TcpSpec::new(host, port);
            t.connect_timeout = timeout;
            t.connect_per_command = l
                .connect_per_command
                .unwrap_or(defaults.connect_per_command);
            Some(LinkSpec::Tcp(t))
        }
        LinkKind::Serial => {
            let path = match &l.path {
                Some(p) if !p.trim().is_empty() => Some(p.clone()),
                Some(_) => {
                    pr.at_path(&p(at, &[k("path")]), "must not be empty");
                    None
                }
                None => {
                    pr.at_path(at, "missing key path (e.g. \"/dev/ttyUSB0\")");
                    None
                }
            };
            const BAUDS: &[i64] = &[
                300, 600, 1200, 2400, 4800, 9600, 14400, 19200, 38400, 57600, 115200, 230400,
            ];
            let baud = match l.baud.or(defaults.baud.map(i64::from)) {
                Some(b) if BAUDS.contains(&b) => Some(b as u32),
                Some(b) => {
                    pr.at_path(
                        &p(at, &[k("baud")]),
                        format!("{b} is not a standard baud rate (9600, 19200, 38400, 57600, 115200, …)"),
                    );
                    None
                }
                None => Some(9600),
            };
            let data_bits = match l.data_bits.or(defaults.data_bits.map(i64::from)) {
                Some(n @ 5..=8) => Some(n as u8),
                Some(n) => {
                    pr.at_path(
                        &p(at, &[k("data_bits")]),
                        format!("{n} is not 5, 6, 7 or 8"),
                    );
                    None
                }
                None => Some(8),
            };
            let stop_bits = match l.stop_bits.or(defaults.stop_bits.map(i64::from)) {
                Some(n @ 1..=2) => Some(n as u8),
                Some(n) => {
                    pr.at_path(&p(at, &[k("stop_bits")]), format!("{n} is not 1 or 2"));
                    None
                }
                None => Some(1),
            };
            let parity_s = l
                .parity
                .clone()
                .or(defaults.parity.clone())
                .unwrap_or_else(|| "none".to_owned());
            let parity = match parity_s.to_ascii_lowercase().as_str() {
                "none" | "n" => Some(Parity::None),
                "even" | "e" => Some(Parity::Even),
                "odd" | "o" => Some(Parity::Odd),
                other => {
                    let hint = did_you_mean(suggest(other, ["none", "even", "odd"]));
                    pr.at_path(
                        &p(at, &[k("parity")]),
                        format!("{other:?} is not none, even or odd{hint}"),
                    );
                    None
                }
            };
            if !ok {
                return None;
            }
            Some(LinkSpec::Serial(SerialSpec {
                path: path?,
                baud: baud?,
                data_bits: data_bits?,
                parity: parity?,
                stop_bits: stop_bits?,
            }))
        }
        LinkKind::Mqtt => match &l.topic {
            Some(t) if !t.is_empty() && !t.contains(['+', '#']) => {
                ok.then(|| LinkSpec::Mqtt { topic: t.clone() })
            }
            Some(_) => {
                pr.at_path(
                    &p(at, &[k("topic")]),
                    "must be a concrete topic (no wildcards)",
                );
                None
            }
            None => {
                pr.at_path(at, "missing key topic");
                None
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_near_names() {
        assert_eq!(
            suggest("epson-escvp2", ["epson-escvp21", "generic-pjlink"]),
            Some("epson-escvp21")
        );
        assert_eq!(suggest("zzzzzzzz", ["epson-escvp21"]), None);
    }

    #[test]
    fn feeds_resolve_their_source_room_and_defaults() {
        let text = r#"
[site]
name = "Feeds"
time_zone = "Europe/Berlin"

[[rooms]]
id = "elbe"
capacity = 12

[[bookings.feeds]]
id = "elbe-mailbox"
url = "webcal://calendar.invalid/elbe.ics"
room = "elbe"
needs = { projection = true, wireless_mics = 2 }

[[bookings.feeds]]
id = "shared"
path = "feeds/shared.ics"
poll_interval_secs = 60
max_bytes = 65536
"#;
        let cfg = parse_site(
            text,
            "site.toml",
            Path::new("/etc/avwarden"),
            &Env::fixed(&[]),
        )
        .unwrap();
        let feeds = &cfg.bookings.feeds;
        assert_eq!(feeds.len(), 2);
        assert_eq!(
            feeds[0].source,
            FeedSource::Url("webcal://calendar.invalid/elbe.ics".into())
        );
        assert_eq!(feeds[0].room, Some(RoomId::from("elbe")));
        assert_eq!(feeds[0].poll_interval, DEFAULT_POLL_INTERVAL);
        assert_eq!(feeds[0].max_bytes, DEFAULT_MAX_BYTES);
        assert_eq!(feeds[0].needs.as_ref().map(|n| n.wireless_mics), Some(2));
        assert_eq!(
            feeds[1].source,
            FeedSource::Path(PathBuf::from("/etc/avwarden/feeds/shared.ics"))
        );
        assert_eq!(feeds[1].poll_interval, Duration::from_secs(60));
        assert_eq!(feeds[1].max_bytes, 65536);
        assert_eq!(feeds[1].needs, None);
    }

    fn site_with_api(api: &str) -> String {
        format!("[site]\nname = \"x\"\ntime_zone = \"UTC\"\n{api}")
    }

    fn problems(text: &str, env: &Env) -> Vec<String> {
        match parse_site(text, "site.toml", Path::new("."), env) {
            Ok(_) => vec![],
            Err(e) => e.problems.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn api_tokens_are_kept_as_hashes_with_their_roles() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tech.token"), "tech-token-0123456789\n").unwrap();
        let text = site_with_api(
            "[api]\nbind = \"0.0.0.0:8080\"\n\
             [[api.tokens]]\nname = \"ops\"\nrole = \"viewer\"\ntoken_env = \"OPS_TOKEN\"\n\
             [[api.tokens]]\nname = \"li-wei\"\nrole = \"technician\"\ntoken_file = \"tech.token\"\n",
        );
        let env = Env::fixed(&[("OPS_TOKEN", "ops-token-0123456789")]);
        let cfg = parse_site(&text, "site.toml", dir.path(), &env).unwrap();
        let t = &cfg.api.tokens;
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].name.as_str(), t[0].role), ("ops", Role::Viewer));
        assert_eq!(
            (t[1].name.as_str(), t[1].role),
            ("li-wei", Role::Technician)
        );
        assert!(t[0].hash.matches("ops-token-0123456789"));
        assert!(!t[0].hash.matches("ops-token-012345678"));
        // The file's line ending is not part of the token.
        assert!(t[1].hash.matches("tech-token-0123456789"));
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("ops-token"), "{shown}");
    }

    #[test]
    fn bad_api_tokens_are_located_and_never_quoted() {
        let text = site_with_api(
            "[[api.tokens]]\nname = \"a\"\nrole = \"admn\"\ntoken_env = \"A\"\n\
             [[api.tokens]]\nname = \"a\"\nrole = \"viewer\"\ntoken_env = \"B\"\ntoken_file = \"b\"\n\
             [[api.tokens]]\nname = \"c\"\nrole = \"viewer\"\n\
             [[api.tokens]]\nname = \"d\"\nrole = \"viewer\"\ntoken_env = \"SHORT\"\n\
             [[api.tokens]]\nname = \"e\"\nrole = \"viewer\"\ntoken = \"inline-token-0123456789\"\n",
        );
        let env = Env::fixed(&[("A", "a-token-0123456789"), ("SHORT", "short-secret")]);
        let got = problems(&text, &env);
        let want = [
            "site.toml:6:1: api.tokens[0].role: unknown role \"admn\" (did you mean \"admin\"?) (viewer, technician or admin)",
            "site.toml:9:1: api.tokens[1].name: duplicate token name \"a\"",
            "site.toml:12:1: api.tokens[1].token_file: give either token_env or token_file, not both",
            "site.toml:13:1: api.tokens[2]: missing key token_env or token_file",
            "site.toml:19:1: api.tokens[3].token_env: the token has 12 characters; at least 16 are needed",
            "site.toml:20:1: api.tokens[4]: missing key token_env or token_file",
            "site.toml:23:1: api.tokens[4].token: unknown key: a token is never written in the config; use token_env (an environment variable) or token_file",
        ];
        assert_eq!(got, want);
        let all = got.join("\n");
        assert!(!all.contains("short-secret") && !all.contains("inline-token"));
    }

    #[test]
    fn a_network_bind_without_tokens_is_refused() {
        let open = site_with_api("[api]\nbind = \"0.0.0.0:8080\"\n");
        assert_eq!(
            problems(&open, &Env::fixed(&[])),
            ["site.toml:5:1: api.bind: 0.0.0.0:8080 is reachable from the network, so the API needs [[api.tokens]] (or bind 127.0.0.1)"]
        );
        for local in ["127.0.0.1:8080", "[::1]:8080"] {
            let text = site_with_api(&format!("[api]\nbind = \"{local}\"\n"));
            assert!(problems(&text, &Env::fixed(&[])).is_empty(), "{local}");
        }
    }

    const PARENTS: &str = r#"
[site]
name = "Parents"
time_zone = "Asia/Shanghai"

[[rooms]]
id = "r101"
capacity = 12

[[devices]]
id = "gw"
room = "r101"
profile = "shure-ulxd"
link = { host = "127.0.0.1" }

[[devices]]
id = "mic"
room = "r101"
profile = "shure-ulxd"
link = { host = "127.0.0.1" }
parent = "gw"

[roster]
escalation = ["wang"]
out_of_hours = ["zhao"]
shifts = [{ who = "li", days = ["mon-fri"], from = "08:00", until = "18:00" }]
"#;

    #[test]
    fn notify_sinks_get_defaults_and_secrets_that_never_print() {
        let text = site_with_api(
            "[roster.contacts.li]\nemail = \"li@example.org\"\n\
             [notify]\npublic_url = \"https://av.example.org\"\n\
             [[notify.webhook]]\nname = \"ops\"\nurl = \"https://hooks.example.org/av\"\n\
             secret_env = \"HOOK\"\nclasses = [\"major\"]\n\
             [notify.mail]\nsmtp_host = \"smtp.example.org\"\nusername = \"av\"\n\
             password_env = \"SMTP\"\nfrom = \"AV <av@example.org>\"\n",
        );
        let env = Env::fixed(&[("HOOK", "hook-secret-0123456789"), ("SMTP", "smtp-pass-42")]);
        let cfg = parse_site(&text, "site.toml", Path::new("."), &env).unwrap();
        let n = &cfg.notify;
        assert_eq!(n.webhooks.len(), 1);
        assert_eq!(n.webhooks[0].secret.expose(), "hook-secret-0123456789");
        assert_eq!(n.webhooks[0].classes, ["major"]);
        assert_eq!(n.webhooks[0].timeout, Duration::from_secs(10));
        let mail = n.mail.as_ref().unwrap();
        assert_eq!(mail.tls, crate::notify::MailTls::Starttls);
        assert_eq!(
            mail.smtp_port, 587,
            "the STARTTLS submission port by default"
        );
        assert_eq!(
            cfg.roster.contacts["li"].email.as_deref(),
            Some("li@example.org")
        );
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("hook-secret-0123456789") && !shown.contains("smtp-pass-42"));
        let none = parse_site(&site_with_api(""), "site.toml", Path::new("."), &env).unwrap();
        assert!(none.notify.is_empty());
    }

    #[test]
    fn parents_and_roster_are_validated_with_their_places() {
        let env = Env::fixed(&[]);
        let cfg = parse_site(PARENTS, "site.toml", Path::new("/etc/avwarden"), &env).unwrap();
        assert_eq!(cfg.devices[1].parent, Some(DeviceId::from("gw")));
        assert_eq!(cfg.roster.escalation, ["wang"]);
        assert_eq!(cfg.roster.shifts[0].who, "li");
        assert!(!cfg.playbook.rules.is_empty(), "the shipped rules");

        let bad = PARENTS
            .replace("parent = \"gw\"", "parent = \"gx\"")
            .replace("\"mon-fri\"", "\"mon-fry\"");
        let e = parse_site(&bad, "site.toml", Path::new("/etc/avwarden"), &env).unwrap_err();
        let shown: Vec<String> = e.problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(shown.len(), 2, "{shown:?}");
        assert!(
            shown[0].starts_with(
                "site.toml:21:1: devices[1].parent: unknown device \"gx\" (did you mean \"gw\"?)"
            ),
            "{shown:?}"
        );
        assert!(shown[1].contains("roster.shifts[0].days"), "{shown:?}");

        let circle = PARENTS.replace(
            "link = { host = \"127.0.0.1\" }\n\n[[devices]]",
            "link = { host = \"127.0.0.1\" }\nparent = \"mic\"\n\n[[devices]]",
        );
        let e = parse_site(&circle, "site.toml", Path::new("/etc/avwarden"), &env).unwrap_err();
        assert!(e.to_string().contains("circle"), "{e}");
    }

    /// Found by the `site_config` fuzz target: a control character in a comment made toml
    /// report a message whose first line is empty, so the problem said nothing.
    #[test]
    fn control_character_in_a_comment_is_a_problem_with_a_message() {
        let env = Env::fixed(&[]);
        let e = parse_site(
            "# Issue 8.8:\u{1a}a map\n",
            "site.toml",
            Path::new("."),
            &env,
        )
        .expect_err("a syntax error");
        assert_eq!(e.problems.len(), 1);
        assert!(!e.problems[0].message.is_empty(), "{e}");
        assert_eq!(e.problems[0].at.map(|a| a.0), Some(1), "{e}");
    }
}
