//! The aggregate's pure core: what the central daemon knows of each building, changed only by
//! [`FleetState::apply`] (one MQTT message at a time, with the time it arrived) and read only
//! through [`FleetState::buildings`], [`FleetState::board`] and [`FleetState::alerts`], which
//! judge staleness at the `now` they are given.
//!
//! It must not do I/O or read a clock: the service feeds it messages and times, and the tests
//! feed it tables. A payload it cannot read is counted against its building and leaves the
//! building's last good data in place; it never panics and never drops the building.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// What one topic under `avwarden/<building>/` carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic<'a> {
    /// `…/daemon`: `online` (birth) or `offline` (last will, or an orderly stop).
    Daemon,
    /// `…/heartbeat`: `{"v":1,"at":…,"every_secs":…}`, retained, refreshed periodically.
    Heartbeat,
    Room(&'a str),
    Device(&'a str),
    /// `…/alerts/active`: the building's open alerts.
    AlertsActive,
}

/// The building and what its topic carries; `None` for a topic outside the contract (a
/// command topic, alert events, a topic of a later contract version).
pub fn parse_topic(topic: &str) -> Option<(&str, Topic<'_>)> {
    let rest = topic.strip_prefix("avwarden/")?;
    let (building, rest) = rest.split_once('/')?;
    if building.is_empty() {
        return None;
    }
    let one = |s: &str| !s.is_empty() && !s.contains('/');
    let t = match rest {
        "daemon" => Topic::Daemon,
        "heartbeat" => Topic::Heartbeat,
        "alerts/active" => Topic::AlertsActive,
        other => {
            if let Some(room) = other
                .strip_prefix("room/")
                .and_then(|r| r.strip_suffix("/status"))
                .filter(|r| one(r))
            {
                Topic::Room(room)
            } else if let Some(dev) = other
                .strip_prefix("device/")
                .and_then(|d| d.strip_suffix("/state"))
                .filter(|d| one(d))
            {
                Topic::Device(dev)
            } else {
                return None;
            }
        }
    };
    Some((building, t))
}

/// Why a building's data may not be current.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StaleReason {
    /// Its daemon said `offline` (its last will, or it was stopped).
    Offline,
    /// Nothing live from it for longer than `stale_after_secs`.
    Silent,
    /// Nothing says whether its daemon runs: no `daemon` topic (never published, or lost
    /// with a broker restarted without persistence).
    Unannounced,
    /// Its daemon said `online` once (retained) but nothing live or recent came since: a
    /// daemon of a contract without heartbeats, or a retained topic left by an old run.
    NeverSeen,
    /// The central daemon's own broker connection is down: nothing is known to be current.
    BrokerDown,
}

/// A room as its building's retained status says.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoomEntry {
    pub name: Option<String>,
    /// `ready`, `degraded`, `not_ready` or `unknown`, as the building said.
    pub readiness: String,
    pub active_alerts: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature_c: Option<f64>,
}

/// A device as its building's retained state says.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceEntry {
    pub room: Option<String>,
    pub health: String,
}

/// What the central daemon knows of one building.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Building {
    /// From the retained birth/last-will topic; `None` before it arrived.
    pub online: Option<bool>,
    /// When it last said something live (any topic), or its retained heartbeat's `at`.
    pub last_seen: Option<DateTime<Utc>>,
    /// The contract version of its heartbeat.
    pub contract: Option<u64>,
    pub rooms: BTreeMap<String, RoomEntry>,
    pub devices: BTreeMap<String, DeviceEntry>,
    /// Its open alerts, as it published them, newest first.
    pub alerts: Vec<serde_json::Value>,
    /// Payloads of this building that could not be read.
    pub malformed: u64,
    /// What the broker has not sent again since the central daemon's reconnect.
    pending: Option<Pending>,
}

/// Retained data not yet confirmed after a reconnect (see [`FleetState::begin_resync`]).
#[derive(Debug, Clone, Default, PartialEq)]
struct Pending {
    online: bool,
    rooms: std::collections::BTreeSet<String>,
    devices: std::collections::BTreeSet<String>,
    alerts: bool,
}

/// A payload that could not be read, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed payload on {topic}: {why}")]
pub struct Malformed {
    pub topic: String,
    pub why: String,
}

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Taken,
    /// Not a topic of the contract, or a building not followed.
    Ignored,
    Malformed(Malformed),
}

/// Every building the central daemon follows.
#[derive(Debug, Clone, Default)]
pub struct FleetState {
    buildings: BTreeMap<String, Building>,
    /// `Some`: only these (the configured list); `None`: whoever publishes (`"+"`).
    only: Option<Vec<String>>,
}

/// One building on `GET /api/v1/fleet/buildings`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BuildingView {
    pub name: String,
    pub online: Option<bool>,
    pub last_seen: Option<DateTime<Utc>>,
    /// Seconds since `last_seen`.
    pub last_seen_secs: Option<f64>,
    pub stale: bool,
    pub stale_reason: Option<StaleReason>,
    pub rooms: ReadinessCounts,
    /// Devices by health (`ok`, `degraded`, `faulted`, `unreachable` …).
    pub devices: BTreeMap<String, u64>,
    /// Open alerts by class.
    pub alerts: BTreeMap<String, u64>,
    pub malformed: u64,
}

/// Rooms by readiness; `degraded` is "at risk".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReadinessCounts {
    pub ready: u64,
    pub at_risk: u64,
    pub not_ready: u64,
    pub unknown: u64,
}

/// One room on `GET /api/v1/fleet/board`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetRoom {
    pub building: String,
    pub id: String,
    #[serde(flatten)]
    pub room: RoomEntry,
    /// Its building's data may not be current: do not read `readiness` as live.
    pub stale: bool,
    pub stale_reason: Option<StaleReason>,
}

/// One alert on `GET /api/v1/fleet/alerts`: the building's own alert view plus where it is.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetAlert {
    pub building: String,
    pub stale: bool,
    pub alert: serde_json::Value,
}

/// How staleness is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    pub now: DateTime<Utc>,
    pub stale_after: Duration,
    /// The central daemon's broker connection is up.
    pub broker_up: bool,
}

impl FleetState {
    /// `only`: the configured buildings (each shown from the start, stale until heard
    /// from), or `None` to follow every building that publishes.
    pub fn new(only: Option<Vec<String>>) -> Self {
        let buildings = only
            .iter()
            .flatten()
            .map(|b| (b.clone(), Building::default()))
            .collect();
        Self { buildings, only }
    }

    pub fn building(&self, name: &str) -> Option<&Building> {
        self.buildings.get(name)
    }

    /// Take one message received at `now`. `retained`: delivered from the broker's store
    /// (possibly hours old), not live.
    pub fn apply(
        &mut self,
        topic: &str,
        payload: &[u8],
        retained: bool,
        now: DateTime<Utc>,
    ) -> Applied {
        let Some((name, what)) = parse_topic(topic) else {
            return Applied::Ignored;
        };
        if self
            .only
            .as_ref()
            .is_some_and(|o| !o.iter().any(|b| b == name))
        {
            return Applied::Ignored;
        }
        let b = self.buildings.entry(name.to_owned()).or_default();
        // A retained message says nothing about when the building last spoke; a live one
        // does, whatever it carries, readable or not.
        if !retained {
            b.last_seen = Some(now);
        }
        if let Some(p) = &mut b.pending {
            match what {
                Topic::Daemon => p.online = false,
                Topic::Room(id) => {
                    p.rooms.remove(id);
                }
                Topic::Device(id) => {
                    p.devices.remove(id);
                }
                Topic::AlertsActive => p.alerts = false,
                Topic::Heartbeat => {}
            }
        }
        match take(b, what, payload, retained, now) {
            Ok(()) => Applied::Taken,
            Err(why) => {
                b.malformed += 1;
                Applied::Malformed(Malformed {
                    topic: topic.to_owned(),
                    why,
                })
            }
        }
    }

    /// The central daemon (re)connected: the broker sends every retained topic again, and a
    /// room or device removed meanwhile has no retained topic any more. What is not sent
    /// again before [`FleetState::end_resync`] goes; until then the last data stays (shown
    /// with its staleness). What each building said live (`last_seen`) stays.
    pub fn begin_resync(&mut self) {
        for b in self.buildings.values_mut() {
            b.pending = Some(Pending {
                online: b.online.is_some(),
                rooms: b.rooms.keys().cloned().collect(),
                devices: b.devices.keys().cloned().collect(),
                alerts: !b.alerts.is_empty(),
            });
        }
    }

    /// Drop what the broker did not send again since [`FleetState::begin_resync`].
    pub fn end_resync(&mut self) {
        for b in self.buildings.values_mut() {
            let Some(p) = b.pending.take() else { continue };
            if p.online {
                b.online = None;
            }
            b.rooms.retain(|id, _| !p.rooms.contains(id));
            b.devices.retain(|id, _| !p.devices.contains(id));
            if p.alerts {
                b.alerts.clear();
            }
        }
    }

    fn stale(&self, b: &Building, f: &Freshness) -> Option<StaleReason> {
        if !f.broker_up {
            return Some(StaleReason::BrokerDown);
        }
        match b.online {
            Some(false) => return Some(StaleReason::Offline),
            None => return Some(StaleReason::Unannounced),
            Some(true) => {}
        }
        match b.last_seen {
            None => Some(StaleReason::NeverSeen),
            Some(at) => {
                let silent = (f.now - at).to_std().unwrap_or_default();
                (silent > f.stale_after).then_some(StaleReason::Silent)
            }
        }
    }

    pub fn buildings(&self, f: &Freshness) -> Vec<BuildingView> {
        self.buildings
            .iter()
            .map(|(name, b)| {
                let reason = self.stale(b, f);
                let mut rooms = ReadinessCounts::default();
                for r in b.rooms.values() {
                    match r.readiness.as_str() {
                        "ready" => rooms.ready += 1,
                        "degraded" => rooms.at_risk += 1,
                        "not_ready" => rooms.not_ready += 1,
                        _ => rooms.unknown += 1,
                    }
                }
                let mut devices = BTreeMap::new();
                for d in b.devices.values() {
                    *devices.entry(d.health.clone()).or_insert(0) += 1;
                }
                let mut alerts = BTreeMap::new();
                for a in &b.alerts {
                    let class = a.get("class").and_then(|c| c.as_str()).unwrap_or("unknown");
                    *alerts.entry(class.to_owned()).or_insert(0) += 1;
                }
                BuildingView {
                    name: name.clone(),
                    online: b.online,
                    last_seen: b.last_seen,
                    last_seen_secs: b
                        .last_seen
                        .map(|at| ((f.now - at).num_milliseconds().max(0) as f64) / 1000.0),
                    stale: reason.is_some(),
                    stale_reason: reason,
                    rooms,
                    devices,
                    alerts,
                    malformed: b.malformed,
                }
            })
            .collect()
    }

    /// Every room of every building, by building then room.
    pub fn board(&self, f: &Freshness) -> Vec<FleetRoom> {
        self.buildings
            .iter()
            .flat_map(|(name, b)| {
                let reason = self.stale(b, f);
                b.rooms.iter().map(move |(id, r)| FleetRoom {
                    building: name.clone(),
                    id: id.clone(),
                    room: r.clone(),
                    stale: reason.is_some(),
                    stale_reason: reason,
                })
            })
            .collect()
    }

    /// Every building's open alerts, newest first across the fleet.
    pub fn alerts(&self, f: &Freshness) -> Vec<FleetAlert> {
        let mut all: Vec<FleetAlert> = self
            .buildings
            .iter()
            .flat_map(|(name, b)| {
                let stale = self.stale(b, f).is_some();
                b.alerts.iter().map(move |a| FleetAlert {
                    building: name.clone(),
                    stale,
                    alert: a.clone(),
                })
            })
            .collect();
        let raised = |a: &FleetAlert| {
            a.alert
                .get("raised_at")
                .and_then(|r| r.as_str())
                .and_then(|r| DateTime::parse_from_rfc3339(r).ok())
        };
        all.sort_by_key(|a| std::cmp::Reverse(raised(a)));
        all
    }
}

fn json(payload: &[u8]) -> Result<serde_json::Value, String> {
    serde_json::from_slice(payload).map_err(|e| format!("not JSON: {e}"))
}

fn text(v: &serde_json::Value, key: &str) -> Option<String> {
    v.get(key).and_then(|x| x.as_str()).map(str::to_owned)
}

fn take(
    b: &mut Building,
    what: Topic<'_>,
    payload: &[u8],
    retained: bool,
    now: DateTime<Utc>,
) -> Result<(), String> {
    match what {
        Topic::Daemon => match payload {
            b"online" => b.online = Some(true),
            b"offline" => b.online = Some(false),
            // An operator cleared the retained topic: nothing is known either way.
            b"" => b.online = None,
            _ => return Err("expected online or offline".to_owned()),
        },
        Topic::Heartbeat => {
            if payload.is_empty() {
                return Ok(());
            }
            let v = json(payload)?;
            let at = text(&v, "at")
                .and_then(|a| DateTime::parse_from_rfc3339(&a).ok())
                .map(|a| a.with_timezone(&Utc))
                .ok_or("no readable at")?;
            b.contract = v.get("v").and_then(|x| x.as_u64());
            if retained {
                // The building's clock: never later than ours, never earlier than what we
                // already know.
                let at = at.min(now);
                b.last_seen = Some(b.last_seen.map_or(at, |s| s.max(at)));
            }
        }
        Topic::Room(id) => {
            if payload.is_empty() {
                b.rooms.remove(id);
                return Ok(());
            }
            let v = json(payload)?;
            let readiness = text(&v, "readiness").ok_or("no readiness")?;
            let entry = RoomEntry {
                name: text(&v, "name"),
                readiness,
                active_alerts: v.get("active_alerts").and_then(|x| x.as_u64()).unwrap_or(0),
                temperature_c: v.get("temperature_c").and_then(|x| x.as_f64()),
            };
            b.rooms.insert(id.to_owned(), entry);
        }
        Topic::Device(id) => {
            if payload.is_empty() {
                b.devices.remove(id);
                return Ok(());
            }
            let v = json(payload)?;
            let health = text(&v, "health").ok_or("no health")?;
            b.devices.insert(
                id.to_owned(),
                DeviceEntry {
                    room: text(&v, "room"),
                    health,
                },
            );
        }
        Topic::AlertsActive => {
            if payload.is_empty() {
                b.alerts.clear();
                return Ok(());
            }
            let v = json(payload)?;
            let list = v.as_array().ok_or("expected a list of alerts")?;
            if list
                .iter()
                .any(|a| a.get("class").is_none_or(|c| !c.is_string()))
            {
                return Err("an alert without a class".to_owned());
            }
            b.alerts = list.clone();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: u32) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-27T09:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
            + chrono::Duration::seconds(i64::from(s))
    }

    fn fresh(now: u32) -> Freshness {
        Freshness {
            now: at(now),
            stale_after: Duration::from_secs(90),
            broker_up: true,
        }
    }

    const ROOM: &str = r#"{"readiness":"ready","id":"r1","name":"Room 1","active_alerts":0}"#;
    const BEAT: &str = r#"{"v":1,"at":"2026-11-27T09:00:00Z","every_secs":30}"#;

    /// `(topic, payload, retained, at)` in order, then the reason each building is stale.
    type Case = (
        &'static str,
        Vec<(&'static str, &'static str, bool, u32)>,
        u32,
        Vec<(&'static str, Option<StaleReason>)>,
    );

    #[test]
    fn staleness_table() {
        use StaleReason::*;
        let cases: Vec<Case> = vec![
            (
                "live birth",
                vec![("avwarden/a/daemon", "online", false, 0)],
                10,
                vec![("a", None)],
            ),
            (
                "silent past the limit",
                vec![("avwarden/a/daemon", "online", false, 0)],
                91,
                vec![("a", Some(Silent))],
            ),
            (
                "a live heartbeat refreshes",
                vec![
                    ("avwarden/a/daemon", "online", false, 0),
                    ("avwarden/a/heartbeat", BEAT, false, 60),
                ],
                120,
                vec![("a", None)],
            ),
            (
                "the last will",
                vec![
                    ("avwarden/a/daemon", "online", false, 0),
                    ("avwarden/a/daemon", "offline", false, 5),
                ],
                6,
                vec![("a", Some(Offline))],
            ),
            (
                "retained online alone is not a sign of life",
                vec![("avwarden/a/daemon", "online", true, 0)],
                1,
                vec![("a", Some(NeverSeen))],
            ),
            (
                "an old retained heartbeat counts from its at",
                vec![
                    ("avwarden/a/daemon", "online", true, 200),
                    ("avwarden/a/heartbeat", BEAT, true, 200),
                ],
                200,
                vec![("a", Some(Silent))],
            ),
            (
                "a recent retained heartbeat is life",
                vec![
                    ("avwarden/a/daemon", "online", true, 30),
                    ("avwarden/a/heartbeat", BEAT, true, 30),
                ],
                30,
                vec![("a", None)],
            ),
            (
                "malformed keeps the building and counts as live",
                vec![
                    ("avwarden/a/daemon", "online", true, 0),
                    ("avwarden/a/room/r1/status", "{not json", false, 0),
                ],
                1,
                vec![("a", None)],
            ),
            (
                "data without a daemon status",
                vec![("avwarden/a/room/r1/status", ROOM, false, 0)],
                1,
                vec![("a", Some(Unannounced))],
            ),
            (
                "two buildings, one gone",
                vec![
                    ("avwarden/a/daemon", "online", false, 0),
                    ("avwarden/b/daemon", "online", false, 0),
                    ("avwarden/b/daemon", "offline", false, 1),
                    ("avwarden/a/heartbeat", BEAT, false, 2),
                ],
                3,
                vec![("a", None), ("b", Some(Offline))],
            ),
        ];
        for (name, msgs, now, want) in cases {
            let mut s = FleetState::new(None);
            for (t, p, r, when) in msgs {
                s.apply(t, p.as_bytes(), r, at(when));
            }
            let got: Vec<(String, Option<StaleReason>)> = s
                .buildings(&fresh(now))
                .into_iter()
                .map(|b| (b.name, b.stale_reason))
                .collect();
            let want: Vec<(String, Option<StaleReason>)> =
                want.into_iter().map(|(n, r)| (n.to_owned(), r)).collect();
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn the_broker_down_makes_every_building_of_unknown_freshness() {
        let mut s = FleetState::new(None);
        s.apply("avwarden/a/daemon", b"online", false, at(0));
        s.apply("avwarden/a/room/r1/status", ROOM.as_bytes(), false, at(0));
        let f = Freshness {
            broker_up: false,
            ..fresh(1)
        };
        let b = &s.buildings(&f)[0];
        assert_eq!(b.stale_reason, Some(StaleReason::BrokerDown));
        let board = s.board(&f);
        assert_eq!(board.len(), 1);
        assert!(
            board[0].stale,
            "a room of unknown freshness is not shown as live"
        );
    }

    #[test]
    fn configured_buildings_show_before_they_speak_and_others_are_ignored() {
        let mut s = FleetState::new(Some(vec!["a".into()]));
        assert_eq!(
            s.buildings(&fresh(0))[0].stale_reason,
            Some(StaleReason::Unannounced)
        );
        assert_eq!(
            s.apply("avwarden/z/daemon", b"online", false, at(0)),
            Applied::Ignored
        );
        assert_eq!(s.buildings(&fresh(0)).len(), 1);
    }

    #[test]
    fn counts_rooms_devices_and_alerts() {
        let mut s = FleetState::new(None);
        let now = at(0);
        for (t, p) in [
            ("avwarden/a/room/r1/status", ROOM),
            ("avwarden/a/room/r2/status", r#"{"readiness":"degraded"}"#),
            ("avwarden/a/room/r3/status", r#"{"readiness":"not_ready"}"#),
            (
                "avwarden/a/device/d1/state",
                r#"{"health":"ok","room":"r1"}"#,
            ),
            ("avwarden/a/device/d2/state", r#"{"health":"faulted"}"#),
            ("avwarden/a/device/d3/state", r#"{"health":"ok"}"#),
            (
                "avwarden/a/alerts/active",
                r#"[{"id":2,"class":"major","raised_at":"2026-11-27T09:00:02Z"},{"id":1,"class":"minor","raised_at":"2026-11-27T09:00:01Z"}]"#,
            ),
        ] {
            assert_eq!(s.apply(t, p.as_bytes(), true, now), Applied::Taken, "{t}");
        }
        let b = &s.buildings(&fresh(0))[0];
        assert_eq!(
            b.rooms,
            ReadinessCounts {
                ready: 1,
                at_risk: 1,
                not_ready: 1,
                unknown: 0
            }
        );
        assert_eq!(b.devices.get("ok"), Some(&2));
        assert_eq!(b.devices.get("faulted"), Some(&1));
        assert_eq!(b.alerts.get("major"), Some(&1));
        assert_eq!(s.alerts(&fresh(0))[0].alert["id"], 2);
        // A cleared retained topic removes the room.
        s.apply("avwarden/a/room/r2/status", b"", true, now);
        assert_eq!(s.board(&fresh(0)).len(), 2);
    }

    #[test]
    fn malformed_payloads_are_counted_and_keep_the_last_good_data() {
        let mut s = FleetState::new(None);
        let now = at(0);
        s.apply("avwarden/a/room/r1/status", ROOM.as_bytes(), true, now);
        for (t, p) in [
            ("avwarden/a/room/r1/status", "{"),
            ("avwarden/a/room/r1/status", r#"{"name":"no readiness"}"#),
            ("avwarden/a/daemon", "maybe"),
            ("avwarden/a/heartbeat", r#"{"at":"yesterday"}"#),
            ("avwarden/a/alerts/active", r#"{"not":"a list"}"#),
            ("avwarden/a/alerts/active", r#"[{"id":1}]"#),
            ("avwarden/a/device/d1/state", "\u{0}\u{ff}"),
        ] {
            assert!(
                matches!(s.apply(t, p.as_bytes(), false, now), Applied::Malformed(_)),
                "{t} {p}"
            );
        }
        let b = s.building("a").unwrap();
        assert_eq!(b.malformed, 7);
        assert_eq!(b.rooms["r1"].readiness, "ready");
    }

    #[test]
    fn topics() {
        assert_eq!(parse_topic("avwarden/a/daemon"), Some(("a", Topic::Daemon)));
        assert_eq!(
            parse_topic("avwarden/a/room/r1/status"),
            Some(("a", Topic::Room("r1")))
        );
        assert_eq!(
            parse_topic("avwarden/a/device/d/state"),
            Some(("a", Topic::Device("d")))
        );
        assert_eq!(parse_topic("avwarden/a/device/d/set"), None);
        assert_eq!(parse_topic("avwarden/a/room//status"), None);
        assert_eq!(parse_topic("avwarden//daemon"), None);
        assert_eq!(parse_topic("other/a/daemon"), None);
        assert_eq!(parse_topic("avwarden/a/alerts/events"), None);
    }

    #[test]
    fn a_resync_drops_only_what_the_broker_did_not_send_again() {
        let mut s = FleetState::new(None);
        s.apply("avwarden/a/daemon", b"online", false, at(0));
        s.apply("avwarden/a/room/r1/status", ROOM.as_bytes(), false, at(0));
        s.apply("avwarden/a/room/r2/status", ROOM.as_bytes(), false, at(0));
        s.begin_resync();
        assert_eq!(s.board(&fresh(1)).len(), 2, "kept until the resync ends");
        s.apply("avwarden/a/daemon", b"online", true, at(1));
        s.apply("avwarden/a/room/r1/status", ROOM.as_bytes(), true, at(1));
        s.end_resync();
        let b = s.building("a").unwrap();
        assert_eq!(b.rooms.keys().collect::<Vec<_>>(), vec!["r1"]);
        assert_eq!(b.online, Some(true));
        assert_eq!(b.last_seen, Some(at(0)));
    }
}
