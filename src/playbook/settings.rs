//! The playbook's `[playbook]` section of the site config: how far ahead a booking makes a
//! room `before_meeting`, how long a device may stay busy, how alerts are damped, renotified
//! and escalated, and which receiver channel is the backup of which (the `move_to_backup_channel`
//! step). Parsed loosely (everything optional) and validated here into [`PlaybookSettings`],
//! with every problem at its key.
//!
//! Owns the meaning of these keys only; must not read files or know other sections.

use std::collections::{BTreeMap, BTreeSet};

use chrono::Duration;
use serde::Deserialize;

use super::alerts::Policy;
use crate::config::locate::Seg;
use crate::model::DeviceId;

/// One receiver channel, written `device:channel` in the config (`r101-mics:2`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChannelRef {
    pub device: DeviceId,
    pub channel: u16,
}

impl ChannelRef {
    /// `r101-mics:2`; `None` for anything else (no device, no colon, channel 0 or not a number).
    pub fn parse(s: &str) -> Option<ChannelRef> {
        let (device, channel) = s.rsplit_once(':')?;
        let device = device.trim();
        let channel: u16 = channel.trim().parse().ok()?;
        if device.is_empty() || channel == 0 {
            return None;
        }
        Some(ChannelRef {
            device: DeviceId::new(device),
            channel,
        })
    }
}

impl std::fmt::Display for ChannelRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "channel {} of {}", self.channel, self.device)
    }
}

/// How the task grades, damps and acts.
#[derive(Debug, Clone)]
pub struct PlaybookSettings {
    /// A booking within this long makes the room `before_meeting`.
    pub horizon: Duration,
    /// A device warming or cooling longer than this is `busy_too_long`.
    pub busy_limit: Duration,
    /// How often open alerts are re-graded against their room's context.
    pub regrade_every: Duration,
    pub policy: Policy,
    /// The backup of each receiver channel that has one: where `move_to_backup_channel` moves
    /// its presenter.
    pub backups: BTreeMap<ChannelRef, ChannelRef>,
}

impl Default for PlaybookSettings {
    fn default() -> Self {
        PlaybookSettings {
            horizon: Duration::hours(2),
            busy_limit: Duration::minutes(5),
            regrade_every: Duration::minutes(1),
            policy: Policy::default(),
            backups: BTreeMap::new(),
        }
    }
}

/// `[playbook]` as the technician writes it.
#[derive(Debug, Default, Deserialize)]
pub struct RawPlaybookSettings {
    pub horizon_mins: Option<i64>,
    pub busy_limit_mins: Option<i64>,
    pub regrade_every_secs: Option<i64>,
    pub flap_window_mins: Option<i64>,
    pub flap_limit: Option<i64>,
    pub renotify_every_mins: Option<i64>,
    pub escalate_every_mins: Option<i64>,
    /// `"r101-mics:2" = "r101-mics:1"`: channel 2's backup is channel 1.
    pub backup: Option<BTreeMap<String, String>>,
}

/// A problem at a key path inside `[playbook]`.
pub type SettingsProblem = (Vec<Seg>, String);

/// The keys `[playbook]` takes, for "did you mean".
pub const KEYS: &[&str] = &[
    "horizon_mins",
    "busy_limit_mins",
    "regrade_every_secs",
    "flap_window_mins",
    "flap_limit",
    "renotify_every_mins",
    "escalate_every_mins",
    "backup",
];

impl RawPlaybookSettings {
    /// The settings, or every problem at its key. `devices` are the site's device ids (a
    /// backup must name one of them).
    pub fn validate(
        &self,
        devices: &BTreeSet<String>,
    ) -> Result<PlaybookSettings, Vec<SettingsProblem>> {
        let mut problems: Vec<SettingsProblem> = Vec::new();
        let d = PlaybookSettings::default();
        let mut span =
            |key: &str, v: Option<i64>, unit: Duration, max: i64, default: Duration| match v {
                None => default,
                Some(n) if (1..=max).contains(&n) => unit * i32::try_from(n).unwrap_or(i32::MAX),
                Some(n) => {
                    problems.push((
                        vec![Seg::Key(key.to_owned())],
                        format!("{n} is outside 1 to {max}"),
                    ));
                    default
                }
            };
        let minute = Duration::minutes(1);
        let week = 7 * 24 * 60;
        let horizon = span("horizon_mins", self.horizon_mins, minute, week, d.horizon);
        let busy_limit = span(
            "busy_limit_mins",
            self.busy_limit_mins,
            minute,
            24 * 60,
            d.busy_limit,
        );
        let regrade_every = span(
            "regrade_every_secs",
            self.regrade_every_secs,
            Duration::seconds(1),
            3600,
            d.regrade_every,
        );
        let flap_window = span(
            "flap_window_mins",
            self.flap_window_mins,
            minute,
            24 * 60,
            d.policy.flap_window,
        );
        let renotify_every = span(
            "renotify_every_mins",
            self.renotify_every_mins,
            minute,
            week,
            d.policy.renotify_every,
        );
        let escalate_every = span(
            "escalate_every_mins",
            self.escalate_every_mins,
            minute,
            week,
            d.policy.escalate_every,
        );
        let flap_limit = match self.flap_limit {
            None => d.policy.flap_limit,
            Some(n @ 1..=100) => n as u32,
            Some(n) => {
                problems.push((
                    vec![Seg::Key("flap_limit".into())],
                    format!("{n} is outside 1 to 100"),
                ));
                d.policy.flap_limit
            }
        };
        let mut backups = BTreeMap::new();
        for (from, to) in self.backup.iter().flatten() {
            let at = vec![Seg::Key("backup".into()), Seg::Key(from.clone())];
            let mut side = |s: &str, what: &str| match ChannelRef::parse(s) {
                None => {
                    problems.push((
                        at.clone(),
                        format!("{what} {s:?} is not \"device:channel\" (such as \"r101-mics:2\")"),
                    ));
                    None
                }
                Some(c) if !devices.contains(c.device.as_str()) => {
                    problems.push((
                        at.clone(),
                        format!("{what} {s:?} names no device of this site"),
                    ));
                    None
                }
                Some(c) => Some(c),
            };
            let (Some(f), Some(t)) = (side(from, "the channel"), side(to, "its backup")) else {
                continue;
            };
            if f == t {
                problems.push((at, "a channel cannot be its own backup".to_owned()));
                continue;
            }
            backups.insert(f, t);
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(PlaybookSettings {
            horizon,
            busy_limit,
            regrade_every,
            policy: Policy {
                flap_window,
                flap_limit,
                renotify_every,
                escalate_every,
                ..d.policy
            },
            backups,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn devices() -> BTreeSet<String> {
        ["r101-mics".to_owned(), "r102-mics".to_owned()].into()
    }

    fn parse(text: &str) -> Result<PlaybookSettings, Vec<SettingsProblem>> {
        let raw: RawPlaybookSettings = toml::from_str(text).expect("parses");
        raw.validate(&devices())
    }

    #[test]
    fn nothing_written_is_the_defaults() {
        let s = parse("").unwrap();
        assert_eq!(s.horizon, Duration::hours(2));
        assert_eq!(s.policy.flap_limit, 3);
        assert!(s.backups.is_empty());
    }

    #[test]
    fn every_key_is_read() {
        let s = parse(
            r#"
horizon_mins = 90
busy_limit_mins = 7
regrade_every_secs = 30
flap_window_mins = 20
flap_limit = 4
renotify_every_mins = 45
escalate_every_mins = 10
backup = { "r101-mics:2" = "r101-mics:1", "r102-mics:1" = "r101-mics:3" }
"#,
        )
        .unwrap();
        assert_eq!(s.horizon, Duration::minutes(90));
        assert_eq!(s.busy_limit, Duration::minutes(7));
        assert_eq!(s.regrade_every, Duration::seconds(30));
        assert_eq!(s.policy.flap_window, Duration::minutes(20));
        assert_eq!(s.policy.flap_limit, 4);
        assert_eq!(s.policy.renotify_every, Duration::minutes(45));
        assert_eq!(s.policy.escalate_every, Duration::minutes(10));
        let from = ChannelRef::parse("r102-mics:1").unwrap();
        assert_eq!(
            s.backups.get(&from),
            Some(&ChannelRef {
                device: DeviceId::new("r101-mics"),
                channel: 3
            })
        );
    }

    #[test]
    fn bad_values_are_told_at_their_key() {
        let e = parse(
            r#"
horizon_mins = 0
flap_limit = -1
backup = { "r101-mics:0" = "r101-mics:1", "r101-mics:2" = "nope:1", "r102-mics:1" = "r102-mics:1" }
"#,
        )
        .unwrap_err();
        let rendered: Vec<String> = e
            .iter()
            .map(|(p, m)| format!("{}: {m}", crate::config::locate::render(p)))
            .collect();
        assert_eq!(
            rendered,
            [
                "horizon_mins: 0 is outside 1 to 10080",
                "flap_limit: -1 is outside 1 to 100",
                "backup.r101-mics:0: the channel \"r101-mics:0\" is not \"device:channel\" (such as \"r101-mics:2\")",
                "backup.r101-mics:2: its backup \"nope:1\" names no device of this site",
                "backup.r102-mics:1: a channel cannot be its own backup",
            ]
        );
    }
}
