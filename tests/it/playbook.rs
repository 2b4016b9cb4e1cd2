//! The playbook end to end (issue 11): the daemon with a simulated wireless-mic receiver it
//! reaches over TCP, a booking running in its room, a transmitter battery falling to critical
//! in the simulator. The alert is raised within one poll as major, its steps run and are
//! logged, the on-duty technician acknowledges it through the API and it resolves itself when
//! the battery is replaced; an alert nobody acknowledges escalates at its deadline.

use std::time::Duration;

use avwarden::app::Daemon;
use avwarden::config::{parse_site, Env};
use avwarden::events::{EventFilter, EventKind, EventSink};
use avwarden::records::report::FaultClass;
use avwarden::sim::shure::{Family, ShureSim, ShureSimConfig};
use tokio_util::sync::CancellationToken;

use crate::support::{api, spawn_settle_pump};

/// One room, one ULX-D receiver reached over loopback TCP, a technician on duty around the
/// clock and a project manager to escalate to.
async fn daemon(dir: &std::path::Path, port: u16) -> Daemon {
    daemon_with(dir, port, "").await
}

async fn daemon_with(dir: &std::path::Path, port: u16, extra: &str) -> Daemon {
    let text = site_text(port, extra);
    let cfg =
        parse_site(&text, "site.toml", dir, &Env::fixed(&[])).unwrap_or_else(|e| panic!("{e}"));
    crate::support::start_daemon(cfg).await
}

fn site_text(port: u16, extra: &str) -> String {
    format!(
        r#"
[site]
name = "Playbook test"
time_zone = "Asia/Shanghai"

[storage]
path = "records.db"

[roster]
shifts = [{{ who = "li", role = "technician", days = ["mon-sun"], from = "00:00", until = "23:59" }}]
out_of_hours = ["zhao"]
escalation = ["wang"]

[[rooms]]
id = "r101"
name = "Room 101"
capacity = 20

[[devices]]
id = "r101-mics"
room = "r101"
profile = "shure-ulxd"
link = {{ host = "127.0.0.1", port = {port} }}
{extra}"#
    )
}

fn alert_events(d: &Daemon) -> EventSink {
    d.events.sink(
        "test",
        EventFilter::matching(|k| {
            matches!(
                k,
                EventKind::AlertChanged { .. }
                    | EventKind::AlertNotified { .. }
                    | EventKind::PlaybookStep { .. }
            )
        }),
        256,
    )
}

/// The next event the predicate accepts, within `limit` of paused time; the others are kept.
async fn until(
    sink: &mut EventSink,
    limit: Duration,
    seen: &mut Vec<(chrono::DateTime<chrono::Utc>, EventKind)>,
    mut pred: impl FnMut(&EventKind) -> bool,
) -> EventKind {
    tokio::time::timeout(limit, async {
        loop {
            let e = sink.recv().await.expect("the bus is open");
            seen.push((e.at, e.kind.clone()));
            if pred(&e.kind) {
                return e.kind.clone();
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no such event in time; seen: {seen:#?}"))
}

/// A meeting in r101 that started a minute ago and runs for two hours.
async fn meeting_now(d: &Daemon) {
    let start = d.clock.now() - chrono::Duration::minutes(1);
    let (status, body) = api(
        d,
        reqwest::Method::POST,
        "/api/v1/bookings",
        serde_json::json!({
            "room": "r101",
            "title": "Board meeting",
            "start": start,
            "end": start + chrono::Duration::hours(2),
            "attendees": 10,
        }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
}

async fn receiver() -> (ShureSim, CancellationToken) {
    let cancel = CancellationToken::new();
    let mut cfg = ShureSimConfig::new(Family::Ulxd, 2, 600);
    // Batteries hold still unless the test changes them.
    cfg.drain = 0.0;
    let sim = ShureSim::start(cfg, "127.0.0.1:0".parse().unwrap(), cancel.clone())
        .await
        .expect("simulator starts");
    (sim, cancel)
}

fn is_battery(kind: &EventKind, what_is: &str) -> bool {
    matches!(kind, EventKind::AlertChanged { fault, what, .. } if fault == "battery_critical" && what == what_is)
}

/// Issue 11, end to end: critical battery in a running meeting → major alert within one poll,
/// steps run and logged, acknowledged through the API by the technician, resolved by itself
/// when the battery is replaced.
#[tokio::test(start_paused = true)]
async fn a_critical_battery_in_a_meeting_is_major_acknowledged_and_resolves_itself() {
    let pump = CancellationToken::new();
    spawn_settle_pump(pump.clone());
    let dir = tempfile::tempdir().unwrap();
    let (sim, sim_cancel) = receiver().await;
    // Channel 1 is the spare handheld, kept muted at the receiver until it is needed.
    sim.set_rx_muted(1, true);
    let d = daemon_with(
        dir.path(),
        sim.addr().port(),
        "\n[playbook]\nbackup = { \"r101-mics:2\" = \"r101-mics:1\" }\n",
    )
    .await;
    let mut sink = alert_events(&d);
    let mut seen = Vec::new();
    meeting_now(&d).await;
    // Let the receiver be contacted first.
    d.fleet
        .get("r101-mics")
        .unwrap()
        .wait_for(|s| s.reachable, Duration::from_secs(60))
        .await
        .expect("receiver reachable");

    sim.set_battery_minutes(2, 10.0);
    let dropped_at = d.clock.now();
    until(&mut sink, Duration::from_secs(11), &mut seen, |k| {
        is_battery(k, "raised")
    })
    .await;
    let raised_at = seen.last().unwrap().0;
    assert!(
        raised_at - dropped_at <= chrono::Duration::seconds(10),
        "within one poll (10 s): {raised_at} vs {dropped_at}"
    );
    let (status, alerts) = api(
        &d,
        reqwest::Method::GET,
        "/api/v1/alerts?open=true&fault=battery_critical",
        serde_json::json!(null),
    )
    .await;
    assert_eq!(status, 200);
    let alert = &alerts[0];
    assert_eq!(alert["class"], "major", "{alert}");
    assert_eq!(alert["context"], "in_meeting", "{alert}");
    assert_eq!(alert["component"], "channel 2", "{alert}");
    let id = alert["id"].as_u64().unwrap();

    // The technician on duty is told; the steps run and each is written down.
    let told = until(&mut sink, Duration::from_secs(1), &mut seen, |k| {
        matches!(k, EventKind::AlertNotified { .. })
    })
    .await;
    let EventKind::AlertNotified { recipients, .. } = told else {
        unreachable!()
    };
    assert_eq!(recipients, ["li", "project_manager"]);
    let human = until(
        &mut sink,
        Duration::from_secs(60),
        &mut seen,
        |k| matches!(k, EventKind::PlaybookStep { step, .. } if step == "human"),
    )
    .await;
    let EventKind::PlaybookStep { outcome, .. } = human else {
        unreachable!()
    };
    assert!(
        outcome.contains("bring two AA batteries to r101"),
        "{outcome}"
    );
    let steps: Vec<&EventKind> = seen
        .iter()
        .map(|(_, k)| k)
        .filter(|k| matches!(k, EventKind::PlaybookStep { .. }))
        .collect();
    assert_eq!(steps.len(), 2, "{steps:#?}");
    // The presenter was moved to the spare on the simulated receiver, and that was checked.
    let EventKind::PlaybookStep {
        step, ok, outcome, ..
    } = steps[0]
    else {
        unreachable!()
    };
    assert_eq!(step, "move_to_backup_channel");
    assert!(ok, "{outcome}");
    assert!(
        outcome.contains("channel 1 of r101-mics is on air, unmuted, with 600 min of battery")
            && outcome.contains("channel 2 of r101-mics muted"),
        "{outcome}"
    );
    assert_eq!(sim.rx_muted(1), Some(false), "the spare is live");
    assert_eq!(sim.rx_muted(2), Some(true), "the failing mic is muted");

    let (status, acked) = api(
        &d,
        reqwest::Method::POST,
        &format!("/api/v1/alerts/{id}/ack"),
        serde_json::json!({ "by": "li" }),
    )
    .await;
    assert_eq!(status, 200, "{acked}");
    assert_eq!(acked["state"], "acknowledged");
    assert_eq!(acked["acknowledged_by"], "li");

    sim.set_battery_minutes(2, 480.0);
    until(&mut sink, Duration::from_secs(11), &mut seen, |k| {
        is_battery(k, "resolved")
    })
    .await;
    let (_, a) = api(
        &d,
        reqwest::Method::GET,
        &format!("/api/v1/alerts/{id}"),
        serde_json::json!(null),
    )
    .await;
    assert_eq!(a["state"], "resolved");
    assert_eq!(
        a["resolved_by"],
        serde_json::Value::Null,
        "resolved by itself"
    );
    let (status, _) = api(
        &d,
        reqwest::Method::POST,
        &format!("/api/v1/alerts/{id}/resolve"),
        serde_json::json!({ "note": "again" }),
    )
    .await;
    assert_eq!(status, 409);

    // The logbook holds the chain, in order, with its times.
    d.logbook.flush().await.expect("flushed");
    let conn = avwarden::records::store::open_reader(&dir.path().join("records.db")).unwrap();
    let kinds: Vec<String> = conn
        .prepare("SELECT kind FROM logbook WHERE kind IN ('alert_changed', 'alert_notified', 'playbook_step') ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        kinds.first().map(String::as_str),
        Some("alert_changed"),
        "{kinds:?}"
    );
    assert!(
        kinds.iter().filter(|k| *k == "playbook_step").count() == 2,
        "{kinds:?}"
    );
    assert!(
        kinds.len() >= 6,
        "raised, notified, 2 steps, acknowledged, resolved: {kinds:?}"
    );

    // Each link of the chain carries its time, in the order it happened.
    let times: Vec<(String, i64)> = conn
        .prepare("SELECT kind, at_us FROM logbook WHERE kind IN ('alert_changed', 'playbook_step', 'fault_acknowledged') ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(times.windows(2).all(|w| w[0].1 <= w[1].1), "{times:?}");
    assert!(
        times.iter().any(|(k, _)| k == "fault_acknowledged"),
        "{times:?}"
    );

    // The monthly report counts it in the playbook's class, with its time to acknowledge.
    let tz: chrono_tz::Tz = "Asia/Shanghai".parse().unwrap();
    let month = avwarden::records::report::Month::parse("2026-11").unwrap();
    let report = avwarden::records::report::monthly(&conn, month, tz).unwrap();
    let incident = report
        .incidents
        .iter()
        .find(|i| i.code == "battery_low" && i.component.as_deref() == Some("channel 2"))
        .unwrap_or_else(|| panic!("{:#?}", report.incidents));
    assert_eq!(incident.acknowledged_by.as_deref(), Some("person:li"));
    assert!(incident.acknowledged.is_some_and(|a| a >= incident.raised));
    assert_eq!(incident.alert, Some(id));
    assert_eq!(incident.class, FaultClass::Major, "the alert's class");
    let alert = report
        .alerts
        .iter()
        .find(|a| a.id == id)
        .unwrap_or_else(|| panic!("{:#?}", report.alerts));
    assert_eq!(alert.class, FaultClass::Major);
    assert_eq!(alert.acknowledged_by.as_deref(), Some("li"));
    let to_ack = alert.time_to_acknowledge().expect("acknowledged");
    assert!(
        to_ack >= chrono::Duration::zero() && to_ack <= chrono::Duration::minutes(5),
        "{to_ack}"
    );
    assert_eq!(alert.response_met(report.end), Some(true));
    assert!(alert.time_to_resolve().is_some_and(|r| r >= to_ack));
    let major = &report.alert_classes[&FaultClass::Major];
    assert_eq!(
        (
            major.count,
            major.acknowledged,
            major.response_met,
            major.resolved
        ),
        (1, 1, 1, 1)
    );
    assert_eq!(report.alert_classes[&FaultClass::General].count, 0);

    d.shutdown("test").await;
    sim_cancel.cancel();
    pump.cancel();
}

/// Issue 11: nobody acknowledges → the next contact is told at the deadline (5 minutes in a
/// meeting, by the shipped rule), in paused time.
#[tokio::test(start_paused = true)]
async fn an_unacknowledged_alert_escalates_at_its_deadline() {
    let pump = CancellationToken::new();
    spawn_settle_pump(pump.clone());
    let dir = tempfile::tempdir().unwrap();
    let (sim, sim_cancel) = receiver().await;
    let d = daemon(dir.path(), sim.addr().port()).await;
    let mut sink = alert_events(&d);
    let mut seen = Vec::new();
    meeting_now(&d).await;
    d.fleet
        .get("r101-mics")
        .unwrap()
        .wait_for(|s| s.reachable, Duration::from_secs(60))
        .await
        .expect("receiver reachable");
    sim.set_battery_minutes(1, 5.0);
    until(&mut sink, Duration::from_secs(11), &mut seen, |k| {
        is_battery(k, "raised")
    })
    .await;
    let raised_at = seen.last().unwrap().0;
    let escalated = until(
        &mut sink,
        Duration::from_secs(600),
        &mut seen,
        |k| matches!(k, EventKind::AlertNotified { notice, .. } if notice.starts_with("escalated")),
    )
    .await;
    let at = seen.last().unwrap().0;
    let EventKind::AlertNotified { recipients, .. } = escalated else {
        unreachable!()
    };
    assert_eq!(recipients, ["wang"]);
    assert_eq!(
        at - raised_at,
        chrono::Duration::minutes(5),
        "at the deadline"
    );

    // Alerts survive a restart: the same alert, still escalated, is the one the fault
    // (reported again by the receiver) updates.
    d.shutdown("test").await;
    let d = daemon(dir.path(), sim.addr().port()).await;
    let mut sink = alert_events(&d);
    until(&mut sink, Duration::from_secs(60), &mut seen, |k| {
        matches!(k, EventKind::AlertChanged { fault, what, .. } if fault == "battery_critical" && what == "updated")
    })
    .await;
    let (_, alerts) = api(
        &d,
        reqwest::Method::GET,
        "/api/v1/alerts?fault=battery_critical",
        serde_json::json!(null),
    )
    .await;
    assert_eq!(alerts.as_array().map(Vec::len), Some(1), "{alerts}");
    assert_eq!(alerts[0]["state"], "raised");
    assert_eq!(alerts[0]["escalation"], 1);
    d.shutdown("test").await;
    sim_cancel.cancel();
    pump.cancel();
}

/// A port nothing listens on: a device there is unreachable.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn notified(seen: &[(chrono::DateTime<chrono::Utc>, EventKind)], id: u64) -> Vec<String> {
    seen.iter()
        .filter_map(|(_, k)| match k {
            EventKind::AlertNotified { alert, notice, .. } if *alert == id => Some(notice.clone()),
            _ => None,
        })
        .collect()
}

/// Issue 11: a maintenance window silences exactly its device, and a gateway that is down
/// inhibits exactly its children's unreachable alerts; ending the window tells what is still
/// wrong.
#[tokio::test(start_paused = true)]
async fn a_maintenance_window_and_a_down_parent_silence_exactly_what_they_should() {
    let pump = CancellationToken::new();
    spawn_settle_pump(pump.clone());
    let dir = tempfile::tempdir().unwrap();
    let (sim, sim_cancel) = receiver().await;
    let extra = format!(
        r#"
[[devices]]
id = "gw"
room = "r101"
profile = "shure-ulxd"
link = {{ host = "127.0.0.1", port = {gw} }}

[[devices]]
id = "behind-gw"
room = "r101"
profile = "shure-ulxd"
link = {{ host = "127.0.0.1", port = {child} }}
parent = "gw"
"#,
        gw = closed_port(),
        child = closed_port()
    );
    let d = daemon_with(dir.path(), sim.addr().port(), &extra).await;
    let mut sink = alert_events(&d);
    let mut seen = Vec::new();
    meeting_now(&d).await;
    d.fleet
        .get("r101-mics")
        .unwrap()
        .wait_for(|s| s.reachable, Duration::from_secs(60))
        .await
        .expect("receiver reachable");
    let until_at = d.clock.now() + chrono::Duration::hours(1);
    let (status, w) = api(
        &d,
        reqwest::Method::POST,
        "/api/v1/maintenance-windows",
        serde_json::json!({ "device": "r101-mics", "until": until_at, "reason": "battery swap" }),
    )
    .await;
    assert_eq!(status, 201, "{w}");
    let (status, _) = api(
        &d,
        reqwest::Method::POST,
        "/api/v1/maintenance-windows",
        serde_json::json!({ "device": "nope", "until": until_at }),
    )
    .await;
    assert_eq!(status, 404);

    sim.set_battery_minutes(2, 10.0);
    until(&mut sink, Duration::from_secs(11), &mut seen, |k| {
        is_battery(k, "raised")
    })
    .await;
    // Both unreachable alerts are raised, whichever comes first (maybe before the battery).
    let raised_unreachable = |seen: &[(chrono::DateTime<chrono::Utc>, EventKind)]| {
        seen.iter()
            .filter_map(|(_, k)| match k {
                EventKind::AlertChanged {
                    alert,
                    device: Some(device),
                    fault,
                    what,
                    ..
                } if fault == "unreachable" && what == "raised" => {
                    Some((device.to_string(), *alert))
                }
                _ => None,
            })
            .collect::<std::collections::BTreeMap<String, u64>>()
    };
    while raised_unreachable(&seen).len() < 2 {
        until(&mut sink, Duration::from_secs(120), &mut seen, |k| {
            matches!(k, EventKind::AlertChanged { fault, what, .. } if fault == "unreachable" && what == "raised")
        })
        .await;
    }
    let unreachable = raised_unreachable(&seen);
    // Let every notice of this instant out.
    tokio::time::sleep(Duration::from_secs(1)).await;
    while let Ok(e) = sink.try_recv() {
        seen.push((e.at, e.kind.clone()));
    }
    let (_, alerts) = api(
        &d,
        reqwest::Method::GET,
        "/api/v1/alerts?open=true",
        serde_json::json!(null),
    )
    .await;
    let by_fault = |fault: &str, device: &str| {
        alerts
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["kind"] == fault && a["subject"]["id"] == device)
            .cloned()
            .unwrap_or_else(|| panic!("no {fault} alert on {device}: {alerts}"))
    };
    let battery = by_fault("battery_critical", "r101-mics");
    assert_eq!(battery["silenced"]["by"], "maintenance", "{battery}");
    let battery_id = battery["id"].as_u64().unwrap();
    assert!(notified(&seen, battery_id).is_empty(), "{seen:#?}");
    let child = by_fault("unreachable", "behind-gw");
    assert_eq!(child["silenced"]["by"], "parent", "{child}");
    assert_eq!(child["silenced"]["device"], "gw", "{child}");
    let gw = by_fault("unreachable", "gw");
    assert_eq!(gw["silenced"], serde_json::Value::Null, "{gw}");
    assert_eq!(
        notified(&seen, unreachable["gw"])
            .first()
            .map(String::as_str),
        Some("raised")
    );
    // The child may have been told before its parent went down; never after.
    let gw_down = seen
        .iter()
        .position(|(_, k)| matches!(k, EventKind::AlertChanged { alert, what, .. } if *alert == unreachable["gw"] && what == "raised"))
        .unwrap();
    assert!(
        !seen[gw_down..].iter().any(|(_, k)| matches!(k, EventKind::AlertNotified { alert, .. } if *alert == unreachable["behind-gw"])),
        "{seen:#?}"
    );

    // Ending the window tells of the battery that is still flat.
    let (status, _) = api(
        &d,
        reqwest::Method::DELETE,
        &format!("/api/v1/maintenance-windows/{}", w["id"]),
        serde_json::json!(null),
    )
    .await;
    assert_eq!(status, 204);
    until(&mut sink, Duration::from_secs(1), &mut seen, |k| {
        matches!(k, EventKind::AlertNotified { alert, notice, .. } if *alert == battery_id && notice == "unsilenced")
    })
    .await;
    d.shutdown("test").await;
    sim_cancel.cancel();
    pump.cancel();
}

/// `avwarden maintenance` with `args`, run as its own process (on a blocking thread, so the
/// paused clock does not run ahead while it talks to the daemon): exit success, stdout, stderr.
async fn cli(args: Vec<String>) -> (bool, String, String) {
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_avwarden"))
            .arg("maintenance")
            .args(args)
            .env_remove("AVWARDEN_TOKEN")
            .output()
            .expect("the binary runs")
    })
    .await
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Issue 11: maintenance windows are added, listed and removed from the command line, through
/// the running daemon's API, with local times in the site's zone.
#[tokio::test(start_paused = true)]
async fn maintenance_windows_from_the_cli_go_through_the_running_daemon() {
    let pump = CancellationToken::new();
    spawn_settle_pump(pump.clone());
    let dir = tempfile::tempdir().unwrap();
    let (sim, sim_cancel) = receiver().await;
    let d = daemon(dir.path(), sim.addr().port()).await;
    let addr = d.api_addr.to_string();
    // The site config the CLI reads: the daemon's address, and its zone (UTC+8).
    let config = dir.path().join("site.toml");
    let text = site_text(sim.addr().port(), &format!("\n[api]\nbind = \"{addr}\"\n"));
    std::fs::write(&config, text).unwrap();
    let config = config.display().to_string();
    let tz: chrono_tz::Tz = "Asia/Shanghai".parse().unwrap();
    let until = (d.clock.now() + chrono::Duration::hours(3)).with_timezone(&tz);
    let until_local = until.format("%Y-%m-%dT%H:%M").to_string();

    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let (ok, out, err) = cli(s(&[
        "--config",
        &config,
        "add",
        "--room",
        "r101",
        "--until",
        &until_local,
        "--reason",
        "projector swap",
    ]))
    .await;
    assert!(ok, "{err}");
    assert!(
        out.contains("room r101")
            && out.contains(&until.format("%Y-%m-%d %H:%M").to_string())
            && out.contains("projector swap"),
        "{out}"
    );
    let (status, windows) = api(
        &d,
        reqwest::Method::GET,
        "/api/v1/maintenance-windows",
        serde_json::json!(null),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(windows.as_array().map(Vec::len), Some(1), "{windows}");
    let w = &windows[0];
    assert_eq!(
        w["target"],
        serde_json::json!({ "type": "room", "id": "r101" })
    );
    assert_eq!(w["reason"], "projector swap");
    let stored: chrono::DateTime<chrono::Utc> = serde_json::from_value(w["until"].clone()).unwrap();
    assert_eq!(
        stored
            .with_timezone(&tz)
            .format("%Y-%m-%dT%H:%M")
            .to_string(),
        until_local,
        "the local time was read in the site's zone"
    );
    let id = w["id"].as_u64().unwrap().to_string();

    // The address may come from --api too; the list shows the window.
    let (ok, out, err) = cli(s(&["list", "--api", &addr])).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("room r101") && out.contains("projector swap"),
        "{out}"
    );

    // A window on an unknown device is the daemon's refusal, told as such.
    let (ok, _, err) = cli(s(&[
        "--api",
        &addr,
        "add",
        "--device",
        "nope",
        "--until",
        &until_local,
    ]))
    .await;
    assert!(!ok);
    assert!(err.contains("the daemon answered 404"), "{err}");

    let (ok, out, err) = cli(s(&["--config", &config, "remove", &id])).await;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), format!("window {id} removed"));
    let (ok, out, _) = cli(s(&["--config", &config, "list"])).await;
    assert!(ok);
    assert_eq!(out.trim(), "no maintenance windows");
    let (ok, _, err) = cli(s(&["--config", &config, "remove", &id])).await;
    assert!(!ok, "removed twice");
    assert!(err.contains("the daemon answered 404"), "{err}");

    d.shutdown("test").await;
    sim_cancel.cancel();
    pump.cancel();
}

/// Issue 11, the `reconnect` step's means: a device handle ends the session and starts a new
/// one at once — on a live session, and on a device that is down, long before its backoff
/// (at least 30 s here) would have tried again.
#[tokio::test(start_paused = true)]
async fn a_reconnect_starts_a_new_session_at_once_without_waiting_for_the_backoff() {
    let pump = CancellationToken::new();
    spawn_settle_pump(pump.clone());
    let dir = tempfile::tempdir().unwrap();
    let (sim, sim_cancel) = receiver().await;
    let d = daemon_with(
        dir.path(),
        sim.addr().port(),
        "\n[links]\nbackoff_min_ms = 60000\nbackoff_max_ms = 120000\n",
    )
    .await;
    let h = d.fleet.get("r101-mics").unwrap().clone();
    h.wait_for(|s| s.reachable, Duration::from_secs(60))
        .await
        .expect("receiver reachable");
    assert_eq!(sim.stats().connections, 1);

    let outcome = tokio::time::timeout(Duration::from_secs(5), h.reconnect())
        .await
        .expect("at once");
    assert!(outcome.is_done(), "{outcome}");
    assert_eq!(sim.stats().connections, 2, "a new session");
    let s = h.state();
    assert!(s.reachable);
    assert_eq!(s.counters.reconnects, 1);

    // Down: the receiver stops answering until the session is declared lost.
    sim.set_silent(true);
    h.wait_for(|s| !s.reachable, Duration::from_secs(120))
        .await
        .expect("declared unreachable");
    sim.set_silent(false);
    let asked = d.clock.now();
    let outcome = tokio::time::timeout(Duration::from_secs(5), h.reconnect())
        .await
        .expect("not after the backoff");
    assert!(outcome.is_done(), "{outcome}");
    assert!(h.state().reachable);
    assert!(d.clock.now() - asked < chrono::Duration::seconds(30));

    d.shutdown("test").await;
    sim_cancel.cancel();
    pump.cancel();
}
