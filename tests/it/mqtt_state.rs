//! Issue 12.3 (MQTT half) and issue 11's MQTT sink through a real Mosquitto: the daemon with a
//! simulated wireless-mic receiver publishes retained room status and device state (debounced),
//! obeys a `…/set` command only with a technician's token, publishes Home Assistant discovery
//! (again when HA announces `online`), and delivers every alert event raised while the broker
//! was down, in order, once it is back.
//!
//! These run in real time (the broker is another process); every wait is bounded generously
//! and only catches a hang.

use std::collections::BTreeMap;
use std::time::Duration;

use avwarden::app::Daemon;
use avwarden::config::{parse_site, Env};
use avwarden::events::{EventFilter, EventKind};
use avwarden::sim::shure::{Family, ShureSim, ShureSimConfig};
use avwarden::transport::mqtt::{self, MqttHandle, MqttSettings, Subscription};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::{mosquitto, Mosquitto};
use crate::support::spawn;

/// Bounds a hang only.
const LIMIT: Duration = Duration::from_secs(40);
const VIEWER: &str = "viewer-token-0123456789";
const TECH: &str = "techn-token-0123456789";
const BASE: &str = "avwarden/mqtt-test";

fn site(port: u16, receiver: u16, mqtt_extra: &str) -> String {
    format!(
        r#"
[site]
name = "MQTT test"
time_zone = "Europe/Berlin"

[storage]
path = "records.db"

[[api.tokens]]
name = "viewer"
role = "viewer"
token_env = "VIEWER_TOKEN"
[[api.tokens]]
name = "li-wei"
role = "technician"
token_env = "TECH_TOKEN"

[mqtt]
host = "127.0.0.1"
port = {port}
client_id = "avwarden-daemon-{port}"
reconnect_min_ms = 100
reconnect_max_secs = 1
{mqtt_extra}

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

async fn daemon(dir: &std::path::Path, text: &str) -> Daemon {
    let env = Env::fixed(&[("VIEWER_TOKEN", VIEWER), ("TECH_TOKEN", TECH)]);
    let cfg = parse_site(text, "site.toml", dir, &env).unwrap_or_else(|e| panic!("{e}"));
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

/// A client of our own (clean session), connected.
async fn client(
    port: u16,
    id: &str,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) -> MqttHandle {
    let s = MqttSettings {
        host: Some("127.0.0.1".into()),
        port: Some(port),
        client_id: format!("{id}-{port}"),
        reconnect_min_ms: 100,
        reconnect_max_secs: 1,
        ..Default::default()
    };
    let h = mqtt::start(&s, None, None, tracker, cancel.clone());
    assert!(h.wait_connected(LIMIT).await, "test client connects");
    h
}

/// The newest message already seen on `topic`, or else the next one.
async fn latest(
    sub: &mut Subscription,
    seen: &mut Vec<(String, String, bool)>,
    topic: &str,
) -> String {
    if let Some((_, p, _)) = seen.iter().rev().find(|(t, _, _)| t == topic) {
        return p.clone();
    }
    wait_msg(sub, seen, topic, |_| true).await
}

/// The next message on `topic` whose payload satisfies `pred`; every message seen is kept.
async fn wait_msg(
    sub: &mut Subscription,
    seen: &mut Vec<(String, String, bool)>,
    topic: &str,
    mut pred: impl FnMut(&str) -> bool,
) -> String {
    tokio::time::timeout(LIMIT, async {
        loop {
            let m = sub.recv().await.expect("client open");
            let p = String::from_utf8_lossy(&m.payload).into_owned();
            seen.push((m.topic.clone(), p.clone(), m.retain));
            if m.topic == topic && pred(&p) {
                return p;
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        let on: Vec<_> = seen.iter().filter(|(t, _, _)| t == topic).collect();
        panic!("nothing on {topic} as expected; seen there: {on:#?}")
    })
}

fn json(p: &str) -> Value {
    serde_json::from_str(p).unwrap_or(Value::Null)
}

fn battery(p: &str, ch: u8) -> Option<f64> {
    json(p)["points"][format!("ch.{ch}")]["battery_minutes"]["value"].as_f64()
}

async fn publish_command(h: &MqttHandle, payload: Value) {
    h.publish(
        &format!("{BASE}/device/r101-mics/set"),
        payload.to_string(),
        false,
    )
    .unwrap();
}

/// Retained room status and device state for a fresh subscriber, changed when the simulator
/// changes, a burst debounced; a `…/set` command obeyed with a technician's token and refused
/// without one; discovery payloads in the protocols.md 5.2 shape, again after HA's `online`;
/// a room's retained status of an earlier run cleared; no token in any payload or logbook
/// entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_commands_and_discovery_through_mosquitto() {
    let Some(bin) = mosquitto() else { return };
    let broker = Mosquitto::start(bin, false).await;
    let tracker = TaskTracker::new();
    let cancel = CancellationToken::new();
    let probe = client(broker.port, "probe", &tracker, &cancel).await;
    // What an earlier run with another room left behind.
    let gone_topic = format!("{BASE}/room/gone/status");
    probe
        .publish(&gone_topic, "{\"readiness\":\"ready\"}", true)
        .unwrap();
    let mut gone = probe.subscribe(&gone_topic, 16).unwrap();
    // Subscribed once the retained message comes back.
    let m = tokio::time::timeout(LIMIT, gone.recv())
        .await
        .expect("retained")
        .unwrap();
    assert!(!m.payload.is_empty());
    let (sim, sim_cancel) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(
        dir.path(),
        &site(
            broker.port,
            sim.addr().port(),
            "state_debounce_ms = 2000\ncommands = true\nhome_assistant = true",
        ),
    )
    .await;
    d.fleet
        .get("r101-mics")
        .unwrap()
        .wait_for(|s| s.reachable, LIMIT)
        .await
        .expect("receiver reachable");

    // A subscriber that comes after the publishes sees the retained state.
    let watcher = client(broker.port, "watcher", &tracker, &cancel).await;
    let mut sub = watcher
        .subscribe_many(&[&format!("{BASE}/#"), "homeassistant/#"], 4096)
        .unwrap();
    let mut seen = Vec::new();
    let dev_topic = format!("{BASE}/device/r101-mics/state");
    let room_topic = format!("{BASE}/room/r101/status");
    let state = wait_msg(&mut sub, &mut seen, &dev_topic, |p| battery(p, 1).is_some()).await;
    assert_eq!(json(&state)["room"], "r101", "{state}");
    assert!(json(&state)["points"]["ch.1"]["battery_minutes"]["age_secs"].is_null());
    // The room's status may have come before the device's state: look at what was seen first.
    let known = |p: &str| json(p)["readiness"] != "unknown";
    let room = match seen
        .iter()
        .rev()
        .find(|(t, p, _)| t == &room_topic && known(p))
    {
        Some((_, p, _)) => p.clone(),
        None => wait_msg(&mut sub, &mut seen, &room_topic, known).await,
    };
    let room = json(&room);
    assert_eq!(room["id"], "r101");
    assert_eq!(room["readiness"], "ready", "{room}");
    assert_eq!(room["active_alerts"], 0);
    assert_eq!(room["devices"][0]["id"], "r101-mics");
    // A subscriber that comes now gets it as a retained message. (Whether `watcher` saw it
    // retained depends on whether the debounced publish came before its subscription.)
    let late = client(broker.port, "late", &tracker, &cancel).await;
    let mut late_sub = late.subscribe(&room_topic, 16).unwrap();
    let m = tokio::time::timeout(LIMIT, late_sub.recv())
        .await
        .expect("a fresh subscriber gets the room status")
        .unwrap();
    assert!(
        m.retain,
        "a fresh subscriber gets the room status as a retained message"
    );
    assert_eq!(json(&String::from_utf8_lossy(&m.payload))["id"], "r101");
    // The stale room of an earlier run is cleared (an empty retained payload).
    let mut gone_seen = Vec::new();
    wait_msg(&mut gone, &mut gone_seen, &gone_topic, str::is_empty).await;

    // A burst of battery changes: at most one publish per 2 s, and the newest value wins.
    let burst_start = tokio::time::Instant::now();
    for minutes in [300.0, 290.0, 280.0, 270.0, 260.0] {
        sim.set_battery_minutes(1, minutes);
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let last = wait_msg(&mut sub, &mut seen, &dev_topic, |p| {
        battery(p, 1) == Some(260.0)
    })
    .await;
    assert_eq!(battery(&last, 1), Some(260.0));
    let burst: Vec<_> = seen
        .iter()
        .filter(|(t, p, _)| {
            t == &dev_topic
                && [300.0, 290.0, 280.0, 270.0, 260.0].contains(&battery(p, 1).unwrap_or(0.0))
        })
        .collect();
    let span = burst_start.elapsed();
    assert!(
        burst.len() as u128 <= span.as_millis() / 2000 + 1,
        "{} publishes in {span:?}: {burst:#?}",
        burst.len()
    );
    assert!(burst.len() < 5, "the burst was debounced: {burst:#?}");

    // Commands: a viewer's token and no token are refused and nothing reaches the receiver.
    let result_topic = format!("{BASE}/device/r101-mics/set/result");
    let before = sim.gain_db(1);
    publish_command(
        &probe,
        serde_json::json!({"id": "v1", "token": VIEWER, "command": "set_gain", "channel": 1, "db": 6.0}),
    )
    .await;
    let r = json(
        &wait_msg(&mut sub, &mut seen, &result_topic, |p| {
            json(p)["id"] == "v1"
        })
        .await,
    );
    assert_eq!(r["result"], "refused", "{r}");
    publish_command(
        &probe,
        serde_json::json!({"id": "n1", "command": "set_gain", "channel": 1, "db": 6.0}),
    )
    .await;
    let r = json(
        &wait_msg(&mut sub, &mut seen, &result_topic, |p| {
            json(p)["id"] == "n1"
        })
        .await,
    );
    assert_eq!(r["result"], "refused", "{r}");
    assert_eq!(
        sim.gain_db(1),
        before,
        "a refused command does not reach the device"
    );
    // The technician's is obeyed.
    publish_command(
        &probe,
        serde_json::json!({"id": "t1", "token": TECH, "command": "set_gain", "channel": 1, "db": 6.0}),
    )
    .await;
    let r = json(
        &wait_msg(&mut sub, &mut seen, &result_topic, |p| {
            json(p)["id"] == "t1"
        })
        .await,
    );
    assert_eq!(r["result"], "done", "{r}");
    assert_eq!(r["command"], "set_gain");
    assert_eq!(sim.gain_db(1), Some(6));

    // Discovery: the mic channel's battery and the room's readiness, in the field order of
    // the protocols.md 5.2 sensor vector, with the daemon's availability and a device.
    let mic_cfg = "homeassistant/sensor/avd_mqtt-test_r101-mics_ch1_batt/config";
    let got = latest(&mut sub, &mut seen, mic_cfg).await;
    let expected = r#"{"name":"Mic 1 battery","unique_id":"avd_mqtt-test_r101-mics_ch1_batt","state_topic":"avwarden/mqtt-test/device/r101-mics/state","value_template":"{{ value_json.points['ch.1']['battery_minutes'].value }}","unit_of_measurement":"min","device_class":"duration","state_class":"measurement","availability_topic":"avwarden/mqtt-test/daemon","device":{"identifiers":["avd_mqtt-test_r101-mics"],"name":"r101-mics"}}"#;
    assert_eq!(got, expected);
    let room_cfg = "homeassistant/sensor/avd_mqtt-test_r101_readiness/config";
    let got = latest(&mut sub, &mut seen, room_cfg).await;
    let expected = r#"{"name":"Room 101 readiness","unique_id":"avd_mqtt-test_r101_readiness","state_topic":"avwarden/mqtt-test/room/r101/status","value_template":"{{ value_json.readiness }}","availability_topic":"avwarden/mqtt-test/daemon","device":{"identifiers":["avd_mqtt-test_r101"],"name":"Room 101"}}"#;
    assert_eq!(got, expected);
    // HA restarts and says `online`: the configs come again.
    let n = seen.iter().filter(|(t, _, _)| t == mic_cfg).count();
    probe
        .publish("homeassistant/status", "online", false)
        .unwrap();
    wait_msg(&mut sub, &mut seen, mic_cfg, |_| true).await;
    assert_eq!(seen.iter().filter(|(t, _, _)| t == mic_cfg).count(), n + 1);

    // No token in anything published, nor in the logbook, where the refusals are.
    for (t, p, _) in seen.iter().filter(|(t, _, _)| !t.ends_with("/set")) {
        assert!(
            !p.contains(TECH) && !p.contains(VIEWER),
            "token on {t}: {p}"
        );
    }
    d.logbook.flush().await.unwrap();
    let url = format!("http://{}/api/v1/logbook", d.api_addr);
    let log = spawn(async move {
        reqwest::Client::new()
            .get(url)
            .bearer_auth(VIEWER)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    })
    .await
    .unwrap();
    assert!(log.contains("device_command_refused"), "{log}");
    assert!(log.contains("person:li-wei"), "{log}");
    assert!(!log.contains(TECH) && !log.contains(VIEWER));

    d.shutdown("test").await;
    sim_cancel.cancel();
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
}

/// A persistent subscriber (clean_session = false, QoS 1) on `…/alerts/events`: its messages
/// are queued by the broker while it is away, across a restart since the broker persists.
async fn persistent_subscriber(
    port: u16,
    topic: &str,
    cancel: CancellationToken,
) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let mut o = MqttOptions::new("alert-watch", "127.0.0.1", port);
    o.set_clean_session(false);
    o.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(o, 64);
    client.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    let mut subscribed_tx = Some(subscribed_tx);
    spawn(async move {
        let _client = client;
        loop {
            let ev = tokio::select! {
                _ = cancel.cancelled() => break,
                ev = eventloop.poll() => ev,
            };
            match ev {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(t) = subscribed_tx.take() {
                        let _ = t.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send(String::from_utf8_lossy(&p.payload).into_owned());
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    tokio::time::timeout(LIMIT, subscribed)
        .await
        .expect("subscribed")
        .unwrap();
    rx
}

/// Issue 11: Mosquitto stopped while alerts are raised and restarted: every alert event
/// arrives, in order, none lost, and the retained active list names the open alerts.
///
/// The subscriber is persistent on a broker with persistence, so what the daemon publishes
/// in the moment after the restart, before the subscriber is back, is queued for it: the
/// test sees exactly what the daemon delivered, not what a race let it catch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_events_survive_a_broker_restart() {
    let Some(bin) = mosquitto() else { return };
    let mut broker = Mosquitto::start(bin, true).await;
    let (sim, sim_cancel) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(dir.path(), &site(broker.port, sim.addr().port(), "")).await;
    let mut bus = d.events.sink(
        "test",
        EventFilter::matching(|k| matches!(k, EventKind::AlertChanged { .. })),
        256,
    );
    let watch_cancel = CancellationToken::new();
    let mut rx = persistent_subscriber(
        broker.port,
        &format!("{BASE}/alerts/events"),
        watch_cancel.clone(),
    )
    .await;
    d.fleet
        .get("r101-mics")
        .unwrap()
        .wait_for(|s| s.reachable, LIMIT)
        .await
        .expect("receiver reachable");
    let mqtt = d.mqtt.clone().unwrap();

    broker.stop().await;
    let mut down = mqtt.connected();
    tokio::time::timeout(LIMIT, down.wait_for(|c| !*c))
        .await
        .expect("the daemon sees the broker go")
        .unwrap();
    // Two channels' batteries go critical while the broker is away.
    sim.set_battery_minutes(1, 5.0);
    sim.set_battery_minutes(2, 6.0);
    let mut raised: Vec<(u64, String)> = Vec::new();
    tokio::time::timeout(LIMIT, async {
        while raised.iter().filter(|(_, w)| w == "raised").count() < 2 {
            let e = bus.recv().await.expect("bus open");
            if let EventKind::AlertChanged { alert, what, .. } = &e.kind {
                raised.push((*alert, what.clone()));
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("two alerts raised; saw {raised:?}"));
    assert!(!mqtt.is_connected());

    broker.run().await;
    let mut got: Vec<(u64, String)> = Vec::new();
    tokio::time::timeout(LIMIT, async {
        while got.len() < raised.len() {
            let p = rx.recv().await.expect("subscriber open");
            let v = json(&p);
            got.push((
                v["alert"].as_u64().unwrap_or(0),
                v["state"].as_str().unwrap_or("").to_owned(),
            ));
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "raised {raised:?}, delivered {got:?}; {}",
            std::fs::read_to_string(broker.dir.path().join("log")).unwrap_or_default()
        )
    });
    assert_eq!(got, raised, "every alert event, in order");

    // The retained list names both open alerts.
    let tracker = TaskTracker::new();
    let cancel = CancellationToken::new();
    let late = client(broker.port, "late", &tracker, &cancel).await;
    let mut sub = late
        .subscribe(&format!("{BASE}/alerts/active"), 16)
        .unwrap();
    let mut seen = Vec::new();
    let ids: BTreeMap<u64, ()> = raised.iter().map(|(id, _)| (*id, ())).collect();
    let active = wait_msg(&mut sub, &mut seen, &format!("{BASE}/alerts/active"), |p| {
        let open: Vec<u64> = json(p)
            .as_array()
            .map(|a| a.iter().filter_map(|x| x["id"].as_u64()).collect())
            .unwrap_or_default();
        open.len() == ids.len() && open.iter().all(|id| ids.contains_key(id))
    })
    .await;
    assert!(!active.is_empty());

    d.shutdown("test").await;
    watch_cancel.cancel();
    sim_cancel.cancel();
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
}
