//! Issue 13.6, the aggregate mode end to end: one Mosquitto, two building daemons (each with
//! a simulated wireless-mic receiver and `[mqtt]`) and one central daemon with
//! `[aggregate]`. The central board shows both buildings' rooms; a battery alert raised in
//! building A shows in the fleet's alert list; building B's connection to the broker is cut
//! without a DISCONNECT (its MQTT goes through a proxy the test kills), the broker publishes
//! its last will and B goes stale (offline) while A stays live; the broker is killed (every
//! building's freshness is unknown) and restarted (A is live again, B stays stale).
//!
//! These run in real time (the broker is another process): every wait polls the central
//! API with a bound that only catches a hang.

use std::time::Duration;

use avwarden::app::Daemon;
use avwarden::config::{parse_site, Env};
use avwarden::sim::shure::{Family, ShureSim, ShureSimConfig};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::broker::{mosquitto, Mosquitto};
use crate::support::{api, spawn};

/// Bounds a hang only.
const LIMIT: Duration = Duration::from_secs(40);

fn building(name: &str, broker_port: u16, receiver: u16) -> String {
    format!(
        r#"
[site]
name = "{name}"
time_zone = "Europe/Berlin"

[storage]
path = "records.db"

[mqtt]
host = "127.0.0.1"
port = {broker_port}
client_id = "avwarden-{broker_port}-{receiver}"
reconnect_min_ms = 100
reconnect_max_secs = 1

[[rooms]]
id = "r101"
name = "Room 101"
capacity = 20

[[devices]]
id = "r101-mics"
room = "r101"
profile = "shure-ulxd"
poll_interval_secs = 1
link = {{ host = "127.0.0.1", port = {receiver} }}
"#
    )
}

fn central(broker_port: u16) -> String {
    format!(
        r#"
[site]
name = "Campus"
time_zone = "Europe/Berlin"

[storage]
path = "records.db"

[aggregate]
broker = "mqtt://127.0.0.1:{broker_port}"
client_id = "avwarden-central-{broker_port}"
buildings = ["building-a", "building-b"]
stale_after_secs = 120
reconnect_max_secs = 1
"#
    )
}

async fn start(dir: &std::path::Path, text: &str) -> Daemon {
    let cfg =
        parse_site(text, "site.toml", dir, &Env::fixed(&[])).unwrap_or_else(|e| panic!("{e}"));
    crate::support::start_daemon(cfg).await
}

async fn receiver() -> (ShureSim, CancellationToken) {
    let cancel = CancellationToken::new();
    let mut cfg = ShureSimConfig::new(Family::Ulxd, 2, 600);
    cfg.drain = 0.0;
    let sim = ShureSim::start(cfg, "127.0.0.1:0".parse().unwrap(), cancel.clone())
        .await
        .expect("simulator starts");
    (sim, cancel)
}

/// A TCP proxy to the broker: cancelling it drops every connection at once (no MQTT
/// DISCONNECT, as when a building's host loses power) and refuses new ones.
async fn proxy(to: u16, cancel: CancellationToken) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    spawn(async move {
        loop {
            let (mut inbound, _) = tokio::select! {
                _ = cancel.cancelled() => break,
                a = listener.accept() => match a { Ok(a) => a, Err(_) => break },
            };
            let stop = cancel.clone();
            spawn(async move {
                let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await
                else {
                    return;
                };
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                }
            });
        }
    });
    port
}

async fn get(d: &Daemon, path: &str) -> Value {
    let (status, body) = api(d, reqwest::Method::GET, path, Value::Null).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

/// Poll `path` on the central daemon until `pred` holds; the last answer otherwise.
async fn until(d: &Daemon, path: &str, what: &str, mut pred: impl FnMut(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let found = tokio::time::timeout(LIMIT, async {
        loop {
            last = get(d, path).await;
            if pred(&last) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(found.is_ok(), "{what}: last answer {last:#}");
    last
}

fn building_of<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["buildings"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["name"] == name))
        .unwrap_or(&Value::Null)
}

fn live(v: &Value, name: &str) -> bool {
    let b = building_of(v, name);
    b["online"] == true && b["stale"] == false
}

#[tokio::test]
async fn a_central_daemon_shows_every_building_and_which_ones_are_stale() {
    let Some(bin) = mosquitto() else { return };
    let mut broker = Mosquitto::start(bin, false).await;
    let (sim_a, sim_a_cancel) = receiver().await;
    let (sim_b, sim_b_cancel) = receiver().await;
    let cut_b = CancellationToken::new();
    let b_port = proxy(broker.port, cut_b.clone()).await;
    let (dir_a, dir_b, dir_c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let a = start(
        dir_a.path(),
        &building("Building A", broker.port, sim_a.addr().port()),
    )
    .await;
    let b = start(
        dir_b.path(),
        &building("Building B", b_port, sim_b.addr().port()),
    )
    .await;
    let c = start(dir_c.path(), &central(broker.port)).await;
    assert_eq!(
        c.services().collect::<Vec<_>>(),
        [
            "devices",
            "archive",
            "schedule",
            "levelwatch",
            "playbook",
            "reload",
            "aggregate",
            "api"
        ]
    );

    // Both buildings' rooms, ready, from live buildings.
    let board = until(&c, "/api/v1/fleet/board", "both buildings' rooms", |v| {
        let rooms = v["rooms"].as_array().map_or(&[][..], |r| r.as_slice());
        ["building-a", "building-b"].iter().all(|b| {
            rooms.iter().any(|r| {
                r["building"] == *b
                    && r["id"] == "r101"
                    && r["readiness"] == "ready"
                    && r["stale"] == false
            })
        })
    })
    .await;
    assert_eq!(board["broker_up"], true);
    let buildings = until(&c, "/api/v1/fleet/buildings", "both live", |v| {
        live(v, "building-a") && live(v, "building-b")
    })
    .await;
    let a_view = building_of(&buildings, "building-a");
    assert_eq!(a_view["rooms"]["ready"], 1, "{a_view}");
    assert_eq!(a_view["devices"]["ok"], 1, "{a_view}");

    // An alert in building A reaches the fleet's list.
    sim_a.set_battery_minutes(1, 5.0);
    let alerts = until(&c, "/api/v1/fleet/alerts", "A's alert", |v| {
        v["alerts"].as_array().is_some_and(|a| {
            a.iter()
                .any(|x| x["building"] == "building-a" && x["alert"]["kind"] == "battery_critical")
        })
    })
    .await;
    assert!(
        alerts["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["building"] == "building-a"),
        "{alerts:#}"
    );
    until(&c, "/api/v1/fleet/buildings", "A's alert counted", |v| {
        building_of(v, "building-a")["alerts"]
            .as_object()
            .is_some_and(|m| !m.is_empty())
    })
    .await;

    // Building B vanishes without a word: the broker says its last will.
    cut_b.cancel();
    let buildings = until(&c, "/api/v1/fleet/buildings", "B offline", |v| {
        building_of(v, "building-b")["stale_reason"] == "offline"
    })
    .await;
    assert!(live(&buildings, "building-a"), "{buildings:#}");
    let board = get(&c, "/api/v1/fleet/board").await;
    for r in board["rooms"].as_array().unwrap() {
        let b_room = r["building"] == "building-b";
        assert_eq!(r["stale"], b_room, "{r}");
    }
    let metrics = spawn({
        let url = format!("http://{}/metrics", c.api_addr);
        async move { reqwest::get(url).await.unwrap().text().await.unwrap() }
    })
    .await
    .unwrap();
    assert!(
        metrics.contains("avwarden_fleet_building_up{building=\"building-a\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("avwarden_fleet_building_stale{building=\"building-b\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("avwarden_fleet_building_last_seen_seconds{building=\"building-a\"}"));
    // The fleet page says so in words.
    let page = spawn({
        let url = format!("http://{}/fleet", c.api_addr);
        async move { reqwest::get(url).await.unwrap().text().await.unwrap() }
    })
    .await
    .unwrap();
    assert!(
        page.contains("building-b") && page.contains("offline"),
        "{page}"
    );
    // Read-only: the central daemon has nothing to command and no alert to acknowledge.
    let (status, body) = api(
        &c,
        reqwest::Method::POST,
        "/api/v1/alerts/1/ack",
        serde_json::json!({}),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = api(
        &c,
        reqwest::Method::POST,
        "/api/v1/devices/r101-mics/commands",
        serde_json::json!({"command": "refresh"}),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    let start = c.clock.now() + chrono::Duration::hours(1);
    let (status, body) = api(
        &c,
        reqwest::Method::POST,
        "/api/v1/bookings",
        serde_json::json!({"room": "r101", "title": "x", "start": start,
            "end": start + chrono::Duration::hours(1), "attendees": 2}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"], "unknown_room", "{body}");

    // The broker dies: nothing the central daemon shows is known to be current.
    broker.kill().await;
    let buildings = until(&c, "/api/v1/fleet/buildings", "broker down", |v| {
        v["broker_up"] == false
    })
    .await;
    for b in buildings["buildings"].as_array().unwrap() {
        assert_eq!(b["stale_reason"], "broker_down", "{b}");
    }
    // Back (without persistence: every retained topic is gone); A says it all again, B
    // cannot and stays stale.
    broker.run().await;
    let buildings = until(&c, "/api/v1/fleet/buildings", "A live again", |v| {
        v["broker_up"] == true && live(v, "building-a")
    })
    .await;
    assert_eq!(building_of(&buildings, "building-b")["stale"], true);
    until(&c, "/api/v1/fleet/board", "A's room again", |v| {
        v["rooms"].as_array().is_some_and(|r| {
            r.iter()
                .any(|r| r["building"] == "building-a" && r["stale"] == false)
        })
    })
    .await;

    c.shutdown("test").await;
    b.shutdown("test").await;
    a.shutdown("test").await;
    sim_a_cancel.cancel();
    sim_b_cancel.cancel();
    broker.stop().await;
}

/// An orderly stop of a building daemon says `offline` itself (a DISCONNECT keeps the broker
/// from publishing the last will), so the central daemon shows it stopped at once.
#[tokio::test]
async fn a_building_stopped_on_purpose_is_offline_at_once() {
    let Some(bin) = mosquitto() else { return };
    let mut broker = Mosquitto::start(bin, false).await;
    let (sim, sim_cancel) = receiver().await;
    let (dir_a, dir_c) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = start(
        dir_a.path(),
        &building("Building A", broker.port, sim.addr().port()),
    )
    .await;
    let c = start(
        dir_c.path(),
        &central(broker.port).replace(r#"["building-a", "building-b"]"#, r#""+""#),
    )
    .await;
    until(&c, "/api/v1/fleet/buildings", "A live", |v| {
        live(v, "building-a")
    })
    .await;
    a.shutdown("test").await;
    let buildings = until(&c, "/api/v1/fleet/buildings", "A offline", |v| {
        building_of(v, "building-a")["stale_reason"] == "offline"
    })
    .await;
    // Discovered, not configured: nobody else appears.
    assert_eq!(buildings["buildings"].as_array().unwrap().len(), 1);
    c.shutdown("test").await;
    sim_cancel.cancel();
    broker.stop().await;
}
