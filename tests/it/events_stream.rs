//! Issue 12.2: `GET /api/v1/events`, read as a client reads it: numbered events, a reconnect
//! with `Last-Event-ID` that gets exactly the missed ones, a reset when the id is gone, a
//! filter per client, and a lagging client that is told.

use std::sync::Arc;

use avwarden::api::events::EventLog;
use avwarden::api::{self, ApiState};
use avwarden::events::{EventBus, EventKind};
use avwarden::model::RoomId;
use avwarden::runtime::Fleet;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::support::{bus, clock};

/// The API over an empty fleet with an event log of `ring` events and `per_client` lag.
async fn serve(
    bus: &EventBus,
    ring: usize,
    per_client: usize,
    cancel: &CancellationToken,
) -> std::net::SocketAddr {
    let tracker = TaskTracker::new();
    let state = ApiState {
        site: "test".into(),
        version: "test",
        clock: clock(),
        started: clock().now(),
        fleet: Arc::new(Fleet::new(
            bus.clone(),
            clock(),
            tracker.clone(),
            cancel.clone(),
        )),
        metrics: bus.metrics().clone(),
        store: None,
        schedule: None,
        auth: Default::default(),
        records: None,
        layout: Default::default(),
        protection: None,
        playbook: None,
        reload: None,
        aggregate: None,
        history: None,
        events: Some(EventLog::start(
            bus,
            ring,
            per_client,
            &tracker,
            cancel.clone(),
        )),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tracker.spawn(api::server::serve(
        listener,
        api::router(state),
        Default::default(),
        bus.metrics().clone(),
        tracker.clone(),
        cancel.clone(),
    ));
    addr
}

#[derive(Debug, Clone, PartialEq)]
struct Message {
    id: Option<String>,
    event: String,
    data: Value,
}

/// One open stream, read message by message (keep-alive comments skipped).
struct Reader {
    resp: reqwest::Response,
    buf: String,
}

impl Reader {
    async fn open(addr: std::net::SocketAddr, query: &str, last: Option<&str>) -> Reader {
        let mut req = reqwest::Client::new().get(format!("http://{addr}/api/v1/events{query}"));
        if let Some(last) = last {
            req = req.header("Last-Event-ID", last);
        }
        let resp = req.send().await.expect("the API answers");
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Reader {
            resp,
            buf: String::new(),
        }
    }

    async fn next(&mut self) -> Message {
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (None, String::new(), String::new());
                for line in block.lines() {
                    let field = |p: &str| line.strip_prefix(p).map(|v| v.trim_start().to_owned());
                    if let Some(v) = field("id:") {
                        id = Some(v);
                    } else if let Some(v) = field("event:") {
                        event = v;
                    } else if let Some(v) = field("data:") {
                        data.push_str(&v);
                    }
                }
                if !event.is_empty() {
                    let data = serde_json::from_str(&data).expect("data is JSON");
                    return Message { id, event, data };
                }
            }
            let chunk = self
                .resp
                .chunk()
                .await
                .unwrap()
                .expect("the stream goes on");
            self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }
}

fn reloaded(bus: &EventBus, n: u32) {
    bus.emit(
        clock().now(),
        EventKind::ConfigReloaded {
            added: vec![format!("change {n}")],
            removed: vec![],
            changed: vec![],
            restart_needed: vec![],
        },
    );
}

fn summary(m: &Message) -> &str {
    m.data["added"][0].as_str().unwrap_or_default()
}

#[tokio::test(start_paused = true)]
async fn events_arrive_numbered_and_a_reconnect_gets_exactly_the_missed_ones() {
    let cancel = CancellationToken::new();
    let bus = bus();
    let addr = serve(&bus, 4, 64, &cancel).await;
    let mut first = Reader::open(addr, "", None).await;
    for n in 1..=3 {
        reloaded(&bus, n);
    }
    for n in 1..=3 {
        let m = first.next().await;
        assert_eq!(m.id.as_deref(), Some(n.to_string().as_str()));
        assert_eq!(m.event, "config_reloaded");
        assert_eq!(m.data["event"], "config_reloaded");
        assert_eq!(summary(&m), format!("change {n}"));
        assert!(m.data["at"].is_string());
    }
    drop(first);
    for n in 4..=6 {
        reloaded(&bus, n);
    }
    // Back with the last id it saw: 4, 5, 6 and then what comes live, nothing twice.
    let mut again = Reader::open(addr, "", Some("3")).await;
    reloaded(&bus, 7);
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(again.next().await.id.unwrap());
    }
    assert_eq!(got, ["4", "5", "6", "7"]);
    // The query parameter serves clients that cannot set the header.
    let mut by_query = Reader::open(addr, "?last_event_id=5", None).await;
    assert_eq!(by_query.next().await.id.as_deref(), Some("6"));
    assert_eq!(by_query.next().await.id.as_deref(), Some("7"));
    // The ring keeps 4 (4..=7): after 2, event 3 is gone; 99 was never given.
    for (latest, last) in (7..).zip(["2", "99", "garbage"]) {
        let mut stale = Reader::open(addr, "", Some(last)).await;
        let m = stale.next().await;
        assert_eq!(m.event, "reset", "after {last}");
        assert_eq!(m.data["last_event_id"], latest);
        reloaded(&bus, 100);
        assert_eq!(summary(&stale.next().await), "change 100");
    }
    cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn each_client_sees_only_what_its_filter_selects() {
    let cancel = CancellationToken::new();
    let bus = bus();
    let addr = serve(&bus, 64, 64, &cancel).await;
    let mut r1 = Reader::open(addr, "?kinds=booking_started,booking_ended&room=r1", None).await;
    let mut all = Reader::open(addr, "", None).await;
    let booking = |room: &str, b: &str| EventKind::BookingStarted {
        room: RoomId::new(room),
        booking: b.into(),
    };
    bus.emit(clock().now(), booking("r2", "elsewhere"));
    reloaded(&bus, 1);
    bus.emit(clock().now(), booking("r1", "here"));
    bus.emit(
        clock().now(),
        EventKind::BookingEnded {
            room: RoomId::new("r1"),
            booking: "here".into(),
        },
    );
    let m = r1.next().await;
    assert_eq!(
        (m.id.as_deref(), m.event.as_str()),
        (Some("3"), "booking_started")
    );
    assert_eq!(m.data["booking"], "here");
    assert_eq!(r1.next().await.event, "booking_ended");
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(all.next().await.event);
    }
    assert_eq!(
        got,
        [
            "booking_started",
            "config_reloaded",
            "booking_started",
            "booking_ended"
        ]
    );
    // A bad query is a JSON error, not a stream.
    let r = reqwest::get(format!("http://{addr}/api/v1/events?last_event_id=soon"))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "bad_query");
    cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_client_that_lags_is_told_how_much_it_missed_and_goes_on() {
    let cancel = CancellationToken::new();
    let bus = bus();
    // A client may fall 4 behind; the burst is 50 (emitted without yielding, so the stream
    // cannot take them as they come).
    let addr = serve(&bus, 256, 4, &cancel).await;
    let mut slow = Reader::open(addr, "", None).await;
    for n in 1..=50 {
        reloaded(&bus, n);
    }
    let m = slow.next().await;
    assert_eq!(m.event, "lagged", "{m:?}");
    let missed = m.data["missed"].as_u64().unwrap();
    assert!(missed > 0 && missed < 50, "{m:?}");
    assert!(m.id.is_none(), "a notice moves no client's position");
    // It goes on with what it still holds, up to the last of the burst, then live.
    let mut last = 0;
    while last < 50 {
        let m = slow.next().await;
        assert_eq!(m.event, "config_reloaded");
        last = m.id.unwrap().parse().unwrap();
    }
    reloaded(&bus, 51);
    assert_eq!(summary(&slow.next().await), "change 51");
    // What it missed is still in the ring: a reconnect from before the gap gets it.
    let mut again = Reader::open(addr, "", Some("1")).await;
    assert_eq!(again.next().await.id.as_deref(), Some("2"));
    cancel.cancel();
}
