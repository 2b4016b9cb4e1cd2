//! The schedule end to end: the whole daemon with simulated rooms in paused tokio time, a
//! booking made through the API, the self-test at T-60 and its verdict, the alternative room,
//! pre-conditioning, and a restart between T-60 and T-30 (issue 9).

use std::time::Duration;

use avwarden::app::{Daemon, StartOptions};
use avwarden::config::{parse_site, Env, SiteConfig};
use avwarden::events::{EventFilter, EventKind, EventSink};
use avwarden::model::{Point, Quantity, Readiness, TestKind};
use tokio_util::sync::CancellationToken;

use crate::support::{api, clock, spawn_settle_pump};

/// Two rooms on one floor: r1 and r2, each with a projector, a two-channel receiver and a
/// room controller (Modbus RTU through a serial server, so it runs over loopback TCP:
/// `tests/data/config/profiles/test-modbus-tcp.toml`).
fn site(dir: &std::path::Path, r1_ch2_minutes: u32, hvac_celsius: f64) -> SiteConfig {
    site_with(dir, r1_ch2_minutes, hvac_celsius, "")
}

fn site_with(
    dir: &std::path::Path,
    r1_ch2_minutes: u32,
    hvac_celsius: f64,
    extra: &str,
) -> SiteConfig {
    let port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let room = |id: &str, ch2: u32| {
        format!(
            r#"
[[rooms]]
id = "{id}"
name = "Room {id}"
building = "A"
floor = 2
capacity = 20

[[devices]]
id = "{id}-projector"
room = "{id}"
profile = "generic-pjlink"
simulated = true

[[devices]]
id = "{id}-mics"
room = "{id}"
profile = "shure-ulxd"
simulated = true
[[devices.simulator.transmitters]]
channel = 1
minutes = 600
[[devices.simulator.transmitters]]
channel = 2
minutes = {ch2}

[[devices]]
id = "{id}-hvac"
room = "{id}"
profile = "test-modbus-tcp"
simulated = true
link = {{ host = "127.0.0.1", port = {port} }}
[devices.simulator]
temperature_c = {hvac_celsius}
setpoint_c = 21.0
mode = "cool"
power = false
"#,
            port = port()
        )
    };
    let text = format!(
        r#"
[site]
name = "Schedule test"
time_zone = "Europe/Berlin"

[storage]
path = "records.db"

[profiles]
dir = "{profiles}"
{extra}
{}{}"#,
        room("r1", r1_ch2_minutes),
        room("r2", 600),
        profiles = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/config/profiles"),
    );
    parse_site(&text, "site.toml", dir, &Env::fixed(&[])).unwrap_or_else(|e| panic!("{e}"))
}

async fn start(cfg: SiteConfig) -> Daemon {
    Daemon::start(
        cfg,
        StartOptions {
            with_simulators: true,
            api_bind: Some("127.0.0.1:0".parse().unwrap()),
            demo_bookings: false,
        },
        clock(),
    )
    .await
    .expect("daemon starts")
}

fn verdicts(d: &Daemon) -> EventSink {
    d.events.sink(
        "test",
        EventFilter::matching(|k| {
            matches!(
                k,
                EventKind::SelfTestFinished { .. } | EventKind::NotReadyAtDeadline { .. }
            )
        }),
        64,
    )
}

/// The next event of `sink`, within `limit` of paused time.
async fn next(sink: &mut EventSink, limit: Duration) -> EventKind {
    tokio::time::timeout(limit, sink.recv())
        .await
        .expect("an event in time")
        .expect("the bus is open")
        .kind
        .clone()
}

/// A booking `mins` ahead in `room`, made through the API; answers its id.
async fn book(d: &Daemon, room: &str, mins: i64, needs: serde_json::Value) -> String {
    let start = d.clock.now() + chrono::Duration::minutes(mins);
    let (status, body) = api(
        d,
        reqwest::Method::POST,
        "/api/v1/bookings",
        serde_json::json!({
            "room": room,
            "title": "Board meeting",
            "start": start,
            "end": start + chrono::Duration::minutes(90),
            "attendees": 10,
            "needs": needs,
        }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

/// Issue 9: a booking 61 minutes ahead is tested at T-60 and is ready; the board shows it
/// with its verdict.
#[tokio::test(start_paused = true)]
async fn a_booking_61_minutes_ahead_is_tested_at_t60_and_ready() {
    let pump = CancellationToken::new();
    spawn_settle_pump(pump.clone());
    let dir = tempfile::tempdir().unwrap();
    let d = start(site(dir.path(), 600, 23.0)).await;
    let mut sink = verdicts(&d);
    let made = d.clock.now();
    let id = book(
        &d,
        "r1",
        61,
        serde_json::json!({ "projection": true, "wireless_mics": 2 }),
    )
    .await;
    let ev = next(&mut sink, Duration::from_secs(3 * 3600)).await;
    let EventKind::SelfTestFinished {
        room,
        booking,
        kind,
        readiness,
        ..
    } = ev
    else {
        panic!("{ev:?}")
    };
    assert_eq!(
        (room.as_str(), booking.as_deref(), kind),
        ("r1", Some(id.as_str()), TestKind::SelfTest)
    );
    let v = d
        .schedule
        .book
        .verdict(&avwarden::model::BookingId::new(&id))
        .expect("verdict kept");
    assert_eq!(readiness, Readiness::Ready, "{v:#?}");
    // Not before T-60: one minute after the booking was made.
    assert!(
        v.started_at >= made + chrono::Duration::minutes(1),
        "tested at {} for a booking made at {made}",
        v.started_at
    );
    let (status, board) = api(
        &d,
        reqwest::Method::GET,
        "/api/v1/board",
        serde_json::json!(null),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(board[0]["id"], id.as_str());
    assert_eq!(board[0]["verdict"]["readiness"], "ready");
    // The lamp hours the test cost are counted on the projector it lit.
    d.logbook.flush().await.unwrap();
    let conn = avwarden::records::store::open_reader(&dir.path().join("records.db")).unwrap();
    let spent: f64 = conn
        .query_row(
            "SELECT value FROM counters WHERE device = 'r1-projector' AND name = 'selftest.lamp_hours'",
            [],
            |r| r.get(0),
        )
        .expect("a selftest.lamp_hours counter");
    assert!(spent > 0.0 && spent < 0.05, "{spent} h");
    d.shutdown("test").await;
    pump.cancel();
}

/// The daemon with r1's second transmitter at 45 minutes, and a 90-minute booking in r1
/// 61 minutes ahead that needs both mics: its T-60 test will be `not_ready`.
async fn short_battery_booked() -> (
    CancellationToken,
    tempfile::TempDir,
    Daemon,
    EventSink,
    String,
) {
    let pump = CancellationToken::new();
    spawn_settle_pump(pump.clone());
    let dir = tempfile::tempdir().unwrap();
    let d = start(site(dir.path(), 45, 23.0)).await;
    let sink = verdicts(&d);
    let id = book(&d, "r1", 61, serde_json::json!({ "wireless_mics": 2 })).await;
    (pump, dir, d, sink, id)
}

/// Issue 9: a transmitter whose battery will not last the meeting makes the room not ready,
/// with the remedy, the minute it runs out, and the free room next door as the alternative.
#[tokio::test(start_paused = true)]
async fn a_battery_that_will_not_last_is_not_ready_with_an_alternative_room() {
    let (pump, _dir, d, mut sink, id) = short_battery_booked().await;
    let ev = next(&mut sink, Duration::from_secs(3 * 3600)).await;
    assert!(
        matches!(
            ev,
            EventKind::SelfTestFinished {
                readiness: Readiness::NotReady,
                ..
            }
        ),
        "{ev:?}"
    );
    let (status, v) = api(
        &d,
        reqwest::Method::GET,
        &format!("/api/v1/bookings/{id}"),
        serde_json::json!(null),
    )
    .await;
    assert_eq!(status, 200);
    let verdict = &v["verdict"];
    assert_eq!(verdict["readiness"], "not_ready", "{v:#}");
    assert_eq!(verdict["alternative"], "r2", "{v:#}");
    let reason = verdict["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["code"] == "battery_will_not_last")
        .unwrap_or_else(|| panic!("{v:#}"));
    assert_eq!(reason["device"], "r1-mics");
    assert_eq!(reason["point"], "ch.2.battery_minutes");
    assert!(
        reason["remedy"].as_str().unwrap().contains("mic 2"),
        "{reason}"
    );
    let runs_out: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(reason["runs_out_at"].clone()).expect("runs_out_at");
    let start: chrono::DateTime<chrono::Utc> = serde_json::from_value(v["start"].clone()).unwrap();
    assert!(
        runs_out < start + chrono::Duration::minutes(90),
        "{runs_out}"
    );
    d.shutdown("test").await;
    pump.cancel();
}

/// Issue 9: a restart between T-60 and T-30 runs nothing twice and keeps the verdict; the
/// T-30 deadline still runs once after it.
#[tokio::test(start_paused = true)]
async fn a_restart_between_t60_and_t30_runs_nothing_twice_and_keeps_the_verdict() {
    let (pump, dir, d, mut sink, id) = short_battery_booked().await;
    let first = next(&mut sink, Duration::from_secs(3 * 3600)).await;
    assert!(
        matches!(first, EventKind::SelfTestFinished { .. }),
        "{first:?}"
    );
    let before = d
        .schedule
        .book
        .verdict(&avwarden::model::BookingId::new(&id))
        .unwrap();
    d.shutdown("restart").await;
    tokio::time::sleep(Duration::from_secs(5 * 60)).await;

    let d = start(site(dir.path(), 45, 23.0)).await;
    let mut sink = verdicts(&d);
    // The verdict is back from the records before any test could have run again.
    let restored = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if let Some(v) = d
                .schedule
                .book
                .verdict(&avwarden::model::BookingId::new(&id))
            {
                return v;
            }
            d.schedule.book.subscribe().changed().await.ok();
        }
    })
    .await
    .expect("verdict restored");
    assert_eq!(restored.finished_at, before.finished_at);
    assert_eq!(restored.readiness, Readiness::NotReady);
    // The next thing to happen is the T-30 deadline (not ready → escalated), then the T-20
    // re-check: never the T-60 test again.
    let ev = next(&mut sink, Duration::from_secs(3600)).await;
    assert!(
        matches!(ev, EventKind::NotReadyAtDeadline { .. }),
        "expected the T-30 deadline, got {ev:?}"
    );
    let ev = next(&mut sink, Duration::from_secs(3600)).await;
    assert!(
        matches!(
            ev,
            EventKind::SelfTestFinished {
                kind: TestKind::Recheck,
                ..
            }
        ),
        "expected the T-20 re-check, got {ev:?}"
    );
    d.shutdown("test").await;
    // One T-60 verdict in the records, whatever the restart did.
    let conn = avwarden::records::store::open_reader(&dir.path().join("records.db")).unwrap();
    let n: i64 = conn
        .query_row(
            "SELECT count(*) FROM verdicts WHERE booking = ?1 AND kind = 'self_test'",
            [&id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 1);
    pump.cancel();
}

/// Issue 9: a booking that needs air conditioning has its room conditioned from the planned
/// instant, and the simulated room is inside 22–24 °C at the start.
#[tokio::test(start_paused = true)]
async fn preconditioning_starts_at_the_planned_instant_and_the_room_is_comfortable_at_the_start() {
    let pump = CancellationToken::new();
    spawn_settle_pump(pump.clone());
    let dir = tempfile::tempdir().unwrap();
    let d = start(site(dir.path(), 600, 28.0)).await;
    let hvac = d.fleet.get("r1-hvac").unwrap().clone();
    hvac.wait_for(|s| s.reachable, Duration::from_secs(60))
        .await
        .expect("hvac up");
    let id = book(&d, "r1", 70, serde_json::json!({ "hvac": true })).await;
    let b = d
        .schedule
        .book
        .get(&avwarden::model::BookingId::new(&id))
        .unwrap();
    // Until the start: then read the room.
    let until = (b.start - d.clock.now()).to_std().unwrap();
    tokio::time::sleep(until).await;
    let temp = hvac
        .state()
        .value(&Point::device(Quantity::Temperature))
        .and_then(|v| v.as_f64())
        .expect("temperature");
    assert!((22.0..=24.0).contains(&temp), "{temp} °C at the start");
    // The conditioning began before the start, at least the time the room needs at the
    // simulator's rate (28 → 24 °C at 0.25 °C/min is 16 minutes), and was logged.
    d.logbook.flush().await.unwrap();
    let conn = avwarden::records::store::open_reader(&dir.path().join("records.db")).unwrap();
    let at_us: i64 = conn
        .query_row(
            "SELECT at_us FROM logbook WHERE kind = 'preconditioning_started' AND booking = ?1",
            [&id],
            |r| r.get(0),
        )
        .expect("a preconditioning entry");
    let at = avwarden::records::from_micros(at_us);
    assert!(
        b.start - at >= chrono::Duration::minutes(16),
        "conditioning began at {at}, start {}",
        b.start
    );
    // The room's own lead, not the default 30 minutes: 28 → 23 °C at the profile's
    // 0.1 °C/min is 50 minutes, computed for the room because its booking needs HVAC.
    assert!(
        b.start - at > chrono::Duration::minutes(30),
        "conditioning began at {at}, start {}: the room's lead was not used",
        b.start
    );
    d.shutdown("test").await;
    pump.cancel();
}

/// One event in room r1 two hours after the test's clock starts (2026-11-27 09:00 UTC).
const FEED: &str = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//test//EN\r\n\
BEGIN:VEVENT\r\nUID:weekly-1\r\nDTSTAMP:20261120T080000Z\r\n\
DTSTART:20261127T110000Z\r\nDTEND:20261127T120000Z\r\nSUMMARY:Weekly review\r\n\
LOCATION:Room r1\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";

/// Issue 9.2: a feed's bookings reach the book; an unparsable feed keeps the last good
/// bookings and is announced once; its return is announced too.
#[tokio::test(start_paused = true)]
async fn a_failing_feed_keeps_its_last_good_bookings_and_is_announced() {
    let pump = CancellationToken::new();
    spawn_settle_pump(pump.clone());
    let dir = tempfile::tempdir().unwrap();
    let feed = dir.path().join("feed.ics");
    std::fs::write(&feed, FEED).unwrap();
    let extra = "[[bookings.feeds]]\nid = \"cal\"\npath = \"feed.ics\"\npoll_interval_secs = 60\n";
    let d = start(site_with(dir.path(), 600, 23.0, extra)).await;
    let mut sink = d.events.sink(
        "feeds",
        EventFilter::matching(|k| {
            matches!(
                k,
                EventKind::BookingFeedFailed { .. } | EventKind::BookingFeedRecovered { .. }
            )
        }),
        16,
    );
    let mut changes = d.schedule.book.subscribe();
    let id = avwarden::model::BookingId::new("cal:weekly-1");
    let booked = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            if let Some(b) = d.schedule.book.get(&id) {
                return b;
            }
            changes.changed().await.unwrap();
        }
    })
    .await
    .expect("the feed's booking arrives");
    assert_eq!(booked.room.as_str(), "r1", "mapped by LOCATION");
    assert_eq!(booked.title, "Weekly review");

    std::fs::write(&feed, "this is not a calendar").unwrap();
    let ev = next(&mut sink, Duration::from_secs(180)).await;
    assert!(
        matches!(ev, EventKind::BookingFeedFailed { ref feed, .. } if feed == "cal"),
        "{ev:?}"
    );
    // Two more failing polls: no second announcement, and the booking is kept.
    tokio::time::sleep(Duration::from_secs(150)).await;
    assert!(sink.try_recv().is_err(), "announced once");
    assert!(d.schedule.book.get(&id).is_some_and(|b| b.is_active()));

    std::fs::write(
        &feed,
        FEED.replace("Weekly review", "Weekly review (moved agenda)"),
    )
    .unwrap();
    let ev = next(&mut sink, Duration::from_secs(180)).await;
    assert!(
        matches!(ev, EventKind::BookingFeedRecovered { bookings: 1, .. }),
        "{ev:?}"
    );
    assert_eq!(
        d.schedule.book.get(&id).unwrap().title,
        "Weekly review (moved agenda)"
    );
    d.shutdown("test").await;
    pump.cancel();
}

/// Issue 9.9: the booking API refuses what a room cannot take, each with a JSON reason, changes
/// and cancels what it made, and withholds a confidential title.
#[tokio::test(start_paused = true)]
async fn the_booking_api_refuses_conflicts_and_keeps_confidential_titles_inside() {
    let pump = CancellationToken::new();
    spawn_settle_pump(pump.clone());
    let dir = tempfile::tempdir().unwrap();
    let d = start(site(dir.path(), 600, 23.0)).await;
    let at = |mins: i64| d.clock.now() + chrono::Duration::minutes(mins);
    let post = |body: serde_json::Value| api(&d, reqwest::Method::POST, "/api/v1/bookings", body);
    let (status, made) = post(serde_json::json!({
        "room": "r1", "title": "Merger talks", "confidential": true,
        "start": at(120), "end": at(180), "attendees": 6,
    }))
    .await;
    assert_eq!(status, 201, "{made}");
    assert_eq!(made["title"], "(confidential)");
    let id = made["id"].as_str().unwrap().to_owned();
    for (body, want, code) in [
        // Overlaps the confidential meeting.
        (
            serde_json::json!({"room": "r1", "title": "x", "start": at(150), "end": at(200)}),
            409,
            "room_booked",
        ),
        (
            serde_json::json!({"room": "r1", "title": "x", "start": at(300), "end": at(240)}),
            422,
            "invalid_booking",
        ),
        (
            serde_json::json!({"room": "r1", "title": "x", "start": at(300), "end": at(360), "attendees": 21}),
            422,
            "invalid_booking",
        ),
        (
            serde_json::json!({"room": "r9", "title": "x", "start": at(300), "end": at(360)}),
            422,
            "unknown_room",
        ),
        (
            serde_json::json!({"room": "r1", "title": "x", "start": "tomorrow"}),
            422,
            "invalid_body",
        ),
    ] {
        let (status, err) = post(body.clone()).await;
        assert_eq!(
            (status, err["error"].as_str()),
            (want, Some(code)),
            "{body} -> {err}"
        );
        assert!(
            err["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{err}"
        );
    }
    let path = format!("/api/v1/bookings/{id}");
    let (status, moved) = api(
        &d,
        reqwest::Method::PATCH,
        &path,
        serde_json::json!({"start": at(240), "end": at(300)}),
    )
    .await;
    assert_eq!(status, 200, "{moved}");
    let (status, gone) = api(&d, reqwest::Method::DELETE, &path, serde_json::json!(null)).await;
    assert_eq!((status, gone["status"].as_str()), (200, Some("cancelled")));
    let (status, missing) = api(
        &d,
        reqwest::Method::GET,
        "/api/v1/bookings/nope",
        serde_json::json!(null),
    )
    .await;
    assert_eq!(
        (status, missing["error"].as_str()),
        (404, Some("unknown_booking"))
    );
    // The records keep the real title; the API never showed it.
    d.logbook.flush().await.unwrap();
    let conn = avwarden::records::store::open_reader(&dir.path().join("records.db")).unwrap();
    let kinds: Vec<String> = conn
        .prepare("SELECT kind FROM logbook WHERE booking = ?1 ORDER BY seq")
        .unwrap()
        .query_map([&id], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        kinds,
        ["booking_created", "booking_changed", "booking_cancelled"]
    );
    let body: String = conn
        .query_row("SELECT body FROM bookings WHERE id = ?1", [&id], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(body.contains("Merger talks"));
    d.shutdown("test").await;
    pump.cancel();
}
