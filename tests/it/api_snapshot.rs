//! The list answers from snapshots (issue 15 point 3): `/api/v1/devices`, `/api/v1/rooms` and
//! `/api/v1/board` answer the JSON their handlers built per request, with an ETag that a
//! dashboard sends back for a 304, gzip when asked, and a new body as soon as a simulator's
//! change shows through another route, a booking is made, or a booking starts.

use std::io::Read;
use std::time::Duration;

use avwarden::api::DeviceSummary;
use avwarden::app::Daemon;
use avwarden::codec::pjlink::{ErrorLevel, ErrorStatus};
use avwarden::config::{parse_site, Env};
use avwarden::sim::pjlink::{PjlinkSim, SimConfig};
use reqwest::header;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::support::{api, spawn, spawn_settle_pump, wait_state};

const MINUTE: Duration = Duration::from_secs(60);

struct Site {
    d: Daemon,
    sims: Vec<PjlinkSim>,
    cancel: CancellationToken,
}

/// Three rooms, a projector each, reached over loopback on simulators this test holds.
async fn site(dir: &std::path::Path) -> Site {
    site_with(dir, "").await
}

/// [`site`] with `device` added to each device's table (e.g. its poll interval).
async fn site_with(dir: &std::path::Path, device: &str) -> Site {
    let cancel = CancellationToken::new();
    spawn_settle_pump(cancel.clone());
    let mut sims = Vec::new();
    let mut text = String::from(
        "[site]\nname = \"Snapshot test\"\ntime_zone = \"UTC\"\n[storage]\npath = \"records.db\"\n",
    );
    for i in 1..=3 {
        let sim = PjlinkSim::start(
            SimConfig {
                power_on: true,
                ..SimConfig::default()
            },
            "127.0.0.1:0".parse().unwrap(),
            cancel.clone(),
        )
        .await
        .unwrap();
        text.push_str(&format!(
            "[[rooms]]\nid = \"r{i}\"\nname = \"Room {i}\"\ncapacity = 10\n\
             [[devices]]\nid = \"p{i}\"\nroom = \"r{i}\"\nprofile = \"generic-pjlink\"\n\
             link = {{ host = \"127.0.0.1\", port = {} }}\n{device}\n",
            sim.addr().port()
        ));
        sims.push(sim);
    }
    let cfg = parse_site(&text, "site.toml", dir, &Env::fixed(&[])).unwrap();
    let d = crate::support::start_daemon(cfg).await;
    for h in d.fleet.handles() {
        wait_state(&mut h.watch(), MINUTE, "reachable", |s| s.reachable).await;
    }
    Site { d, sims, cancel }
}

impl Site {
    /// Waits until projector `i`'s state (0-based: device `p{i + 1}`) carries a fault.
    async fn until_faulted(&self, i: usize) {
        let h = self.d.fleet.get(&format!("p{}", i + 1)).unwrap();
        wait_state(&mut h.watch(), MINUTE, "a fault", |s| !s.faults.is_empty()).await;
    }

    async fn stop(self) {
        self.d.shutdown("test done").await;
        self.cancel.cancel();
    }
}

struct Answer {
    status: u16,
    etag: Option<String>,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
    fn header(&self, name: header::HeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn get(d: &Daemon, path: &str, headers: &[(header::HeaderName, &str)]) -> Answer {
    let url = format!("http://{}{path}", d.api_addr);
    let mut req = reqwest::Client::new().get(url);
    for (k, v) in headers {
        req = req.header(k.clone(), *v);
    }
    spawn(async move {
        let r = req.send().await.expect("the API answers");
        let headers = r.headers().clone();
        Answer {
            status: r.status().as_u16(),
            etag: headers
                .get(header::ETAG)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            headers,
            body: r.bytes().await.expect("a body").to_vec(),
        }
    })
    .await
    .unwrap()
}

/// The devices list as the handler built it before snapshots, from the states now.
fn devices_now(d: &Daemon) -> Value {
    let now = d.clock.now();
    let list: Vec<DeviceSummary> = d
        .fleet
        .handles()
        .map(|h| DeviceSummary::from_state(&h.state(), now))
        .collect();
    serde_json::to_value(list).unwrap()
}

/// `list` without its `last_contact` fields, which a weak ETag does not cover exactly.
fn without_contacts(list: &Value) -> Value {
    match list {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| k.as_str() != "last_contact")
                .map(|(k, v)| (k.clone(), without_contacts(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(without_contacts).collect()),
        v => v.clone(),
    }
}

/// Each device's `last_contact` in a devices list, by id.
fn contacts(list: &Value) -> Vec<(Value, Value)> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|d| (d["id"].clone(), d["last_contact"].clone()))
        .collect()
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .expect("a gzip body");
    out
}

/// A request and a second one made from its answer, repeated until both saw the same body
/// (a poll between them may change a device list legitimately; five tries are plenty).
async fn pair(
    d: &Daemon,
    path: &str,
    second: impl Fn(&Answer) -> Vec<(header::HeaderName, String)>,
) -> (Answer, Answer) {
    for _ in 0..5 {
        let a = get(d, path, &[]).await;
        let headers = second(&a);
        let refs: Vec<(header::HeaderName, &str)> = headers
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str()))
            .collect();
        let b = get(d, path, &refs).await;
        let same = |e: &Option<String>| e.as_deref().map(|e| e.replace("-gzip", ""));
        if same(&a.etag) == same(&b.etag) {
            return (a, b);
        }
    }
    panic!("{path} changed on every try");
}

/// Whether `path` answers what `expected` builds now, allowing for the list's one second of
/// quietly stamped contact instants (see `QUIET_STAMPS_MAX_AGE`) and a poll in between.
async fn answers_as_built(d: &Daemon, path: &str, expected: impl Fn(&Daemon) -> Value) {
    let mut last = (Value::Null, Value::Null);
    for _ in 0..5 {
        let got = get(d, path, &[]).await.json();
        let want = expected(d);
        if got == want {
            return;
        }
        last = (got, want);
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    panic!(
        "{path} answered {:#} where the handler builds {:#}",
        last.0, last.1
    );
}

#[tokio::test(start_paused = true)]
async fn an_unchanged_list_answers_304_and_gzip_decodes_to_the_same_json() {
    let dir = tempfile::tempdir().unwrap();
    let s = site(dir.path()).await;
    let d = &s.d;
    for path in ["/api/v1/devices", "/api/v1/rooms", "/api/v1/board"] {
        let a = get(d, path, &[]).await;
        assert_eq!(a.status, 200, "{path}");
        assert_eq!(a.header(header::CONTENT_TYPE), Some("application/json"));
        assert_eq!(a.header(header::CACHE_CONTROL), Some("no-cache"));
        assert_eq!(a.header(header::VARY), Some("accept-encoding"));
        assert_eq!(a.header(header::CONTENT_ENCODING), None);
        assert!(a.etag.is_some(), "{path}: an ETag");

        // The same state: a 304 without a body for the poller that holds the ETag.
        let inm = |a: &Answer| vec![(header::IF_NONE_MATCH, a.etag.clone().unwrap())];
        let (a, cond) = pair(d, path, inm).await;
        assert_eq!(cond.status, 304, "{path}");
        assert!(cond.body.is_empty());
        assert_eq!(cond.etag, a.etag);
        let other = get(d, path, &[(header::IF_NONE_MATCH, "\"not-this-one\"")]).await;
        assert_eq!(other.status, 200, "{path}");

        let gzip = |_: &Answer| vec![(header::ACCEPT_ENCODING, "gzip, br".to_owned())];
        let (a, gz) = pair(d, path, gzip).await;
        assert_eq!(gz.header(header::CONTENT_ENCODING), Some("gzip"), "{path}");
        assert_eq!(gunzip(&gz.body), a.body, "{path}");
        let gz_etag = gz.etag.clone().expect("an ETag");
        assert_ne!(gz.etag, a.etag, "another representation, another ETag");
        let both = |g: &Answer| {
            vec![
                (
                    header::IF_NONE_MATCH,
                    g.etag.clone().unwrap().replace("-gzip", ""),
                ),
                (header::ACCEPT_ENCODING, "gzip".to_owned()),
            ]
        };
        let (_, cond) = pair(d, path, both).await;
        assert_eq!(cond.status, 304, "{path}: {gz_etag}");
        let refused = get(d, path, &[(header::ACCEPT_ENCODING, "gzip;q=0, *")]).await;
        assert_eq!(refused.header(header::CONTENT_ENCODING), None);
    }
    // What the handler built per request before snapshots, field for field.
    answers_as_built(d, "/api/v1/devices", devices_now).await;
    assert_eq!(
        get(d, "/api/v1/devices", &[])
            .await
            .json()
            .as_array()
            .map(Vec::len),
        Some(3)
    );
    // A query the board keys its snapshot by; a bad one is refused as before.
    let one = get(d, "/api/v1/board?limit=1", &[]).await;
    assert_eq!((one.status, one.json()), (200, serde_json::json!([])));
    let bad = get(d, "/api/v1/board?limit=x", &[]).await;
    assert_eq!(bad.status, 400);
    s.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_change_seen_through_another_route_is_in_the_next_list() {
    let dir = tempfile::tempdir().unwrap();
    let s = site(dir.path()).await;
    let d = &s.d;
    let before = get(d, "/api/v1/devices", &[]).await;
    let rooms_before = get(d, "/api/v1/rooms", &[]).await;

    // The lamp fails on p2's projector; once the device's own route shows the fault, the
    // lists must too, with no wait.
    s.sims[1].set_error_status(ErrorStatus {
        lamp: ErrorLevel::Error,
        ..ErrorStatus::default()
    });
    s.until_faulted(1).await;
    let (status, one) = api(d, reqwest::Method::GET, "/api/v1/devices/p2", Value::Null).await;
    assert_eq!(status, 200);
    assert!(!one["faults"].as_array().unwrap().is_empty());

    let after = get(d, "/api/v1/devices", &[]).await;
    assert_ne!(after.etag, before.etag);
    assert_ne!(after.body, before.body);
    let p2 = |list: &Value| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|x| x["id"] == "p2")
            .cloned()
            .unwrap()
    };
    assert!(p2(&after.json())["faults"].as_u64().unwrap() >= 1);
    assert_eq!(p2(&after.json())["health"], one["health"]);
    answers_as_built(d, "/api/v1/devices", devices_now).await;
    // The ETag the dashboard held is stale now: the whole new body.
    let cond = get(
        d,
        "/api/v1/devices",
        &[(header::IF_NONE_MATCH, before.etag.as_deref().unwrap())],
    )
    .await;
    assert_eq!(cond.status, 200);
    assert!(!cond.body.is_empty());

    // Only p2's entry changed meaning; the others are what they were but for contacts.
    let others = |list: &Value| {
        let mut l = without_contacts(list);
        l.as_array_mut().unwrap().retain(|x| x["id"] != "p2");
        l
    };
    assert_eq!(others(&after.json()), others(&before.json()));
    assert_ne!(
        without_contacts(&p2(&after.json())),
        without_contacts(&p2(&before.json()))
    );
    let rooms_after = get(d, "/api/v1/rooms", &[]).await;
    assert_ne!(rooms_after.etag, rooms_before.etag);
    let r2 = rooms_after.json()[1].clone();
    assert_eq!(r2["id"], "r2");
    assert_eq!(r2["devices"][0]["faults"], p2(&after.json())["faults"]);
    s.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_booking_changes_the_rooms_and_the_board_and_its_start_alone_does_too() {
    let dir = tempfile::tempdir().unwrap();
    let s = site(dir.path()).await;
    let d = &s.d;
    let rooms = get(d, "/api/v1/rooms", &[]).await;
    let board = get(d, "/api/v1/board", &[]).await;
    assert_eq!(board.json(), serde_json::json!([]));

    let start = d.clock.now() + chrono::Duration::minutes(10);
    let (status, body) = api(
        d,
        reqwest::Method::POST,
        "/api/v1/bookings",
        serde_json::json!({
            "room": "r3", "title": "Weekly sync", "start": start,
            "end": start + chrono::Duration::minutes(30), "attendees": 4,
        }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let board_after = get(d, "/api/v1/board", &[]).await;
    assert_ne!(board_after.etag, board.etag);
    assert_eq!(board_after.json()[0]["title"], "Weekly sync");
    let rooms_after = get(d, "/api/v1/rooms", &[]).await;
    assert_ne!(rooms_after.etag, rooms.etag);
    let r3 = |a: &Answer| a.json()[2].clone();
    assert_eq!(r3(&rooms_after)["next_booking"]["title"], "Weekly sync");
    assert_eq!(r3(&rooms_after)["current_booking"], Value::Null);

    // Nothing but time: the meeting starts, so the room's view changes.
    tokio::time::sleep(Duration::from_secs(11 * 60)).await;
    let running = get(d, "/api/v1/rooms", &[]).await;
    assert_eq!(r3(&running)["current_booking"]["title"], "Weekly sync");
    assert_eq!(r3(&running)["next_booking"], Value::Null);
    // And it ends: it leaves the board.
    tokio::time::sleep(Duration::from_secs(30 * 60)).await;
    let later = get(d, "/api/v1/board", &[]).await;
    assert_eq!(later.json(), serde_json::json!([]));
    assert_eq!(
        r3(&get(d, "/api/v1/rooms", &[]).await)["current_booking"],
        Value::Null
    );
    s.stop().await;
}

#[tokio::test(start_paused = true)]
async fn concurrent_requests_during_a_rebuild_get_one_consistent_body() {
    let dir = tempfile::tempdir().unwrap();
    let s = site(dir.path()).await;
    let d = &s.d;
    let before = get(d, "/api/v1/rooms", &[]).await;
    s.sims[0].set_error_status(ErrorStatus {
        fan: ErrorLevel::Error,
        ..ErrorStatus::default()
    });
    s.until_faulted(0).await;
    // Many requests find the list changed at once; each body is whole and matches its ETag.
    let answers = futures::future::join_all((0..24).map(|i| {
        let enc = if i % 2 == 0 { "gzip" } else { "identity" };
        async move { get(d, "/api/v1/rooms", &[(header::ACCEPT_ENCODING, enc)]).await }
    }))
    .await;
    let mut bodies = std::collections::BTreeMap::new();
    for a in &answers {
        assert_eq!(a.status, 200);
        let body = match a.header(header::CONTENT_ENCODING) {
            Some("gzip") => gunzip(&a.body),
            _ => a.body.clone(),
        };
        let etag = a.etag.clone().unwrap();
        assert!(
            etag.starts_with("W/"),
            "the rooms list's ETag is weak: {etag}"
        );
        let etag = etag.trim_end_matches("-gzip\"").trim_end_matches('"');
        let rooms: Value = serde_json::from_slice(&body).unwrap();
        // A weak ETag: bodies sharing it show the same but for contact instants.
        let seen = bodies
            .entry(etag.to_owned())
            .or_insert_with(|| without_contacts(&rooms));
        assert_eq!(seen, &without_contacts(&rooms), "one ETag, one meaning");
        assert_eq!(rooms.as_array().map(Vec::len), Some(3));
        assert!(rooms[0]["devices"][0]["faults"].as_u64().unwrap() >= 1);
    }
    assert!(!bodies.contains_key(before.etag.as_deref().unwrap().trim_end_matches('"')));
    s.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_rooms_list_is_each_room_as_its_own_route_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = site(dir.path()).await;
    let d = &s.d;
    let start = d.clock.now() + chrono::Duration::minutes(5);
    let (status, body) = api(
        d,
        reqwest::Method::POST,
        "/api/v1/bookings",
        serde_json::json!({
            "room": "r2", "title": "Review", "start": start,
            "end": start + chrono::Duration::minutes(30), "attendees": 4,
        }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    // The list assembled from fragments is, room for room, what the per-request route
    // builds (tried again if a quietly stamped contact moved in between).
    for _ in 0..5 {
        let list = get(d, "/api/v1/rooms", &[]).await.json();
        let mut one_by_one = Vec::new();
        for i in 1..=3 {
            let (status, room) = api(
                d,
                reqwest::Method::GET,
                &format!("/api/v1/rooms/r{i}"),
                Value::Null,
            )
            .await;
            assert_eq!(status, 200);
            one_by_one.push(room);
        }
        if list == Value::Array(one_by_one) {
            assert_eq!(list[1]["next_booking"]["title"], "Review");
            s.stop().await;
            return;
        }
        // A contact stamped, or the booking's self-test verdict landing, in between.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    panic!("the rooms list never matched the rooms' own views");
}

#[tokio::test(start_paused = true)]
async fn contact_instants_moving_within_the_grid_keep_the_weak_etag() {
    let dir = tempfile::tempdir().unwrap();
    let s = site(dir.path()).await;
    let d = &s.d;
    // Start just after a step of the 30 s contact grid (wall time), so two polls fit in it.
    let into_step = d.clock.now().timestamp().rem_euclid(30) as u64;
    tokio::time::sleep(Duration::from_secs(30 - into_step) + Duration::from_millis(200)).await;
    for path in ["/api/v1/devices", "/api/v1/rooms"] {
        let a = get(d, path, &[]).await;
        assert!(a.etag.as_deref().unwrap().starts_with("W/\""), "{path}");
        let inm = [(header::IF_NONE_MATCH, a.etag.as_deref().unwrap())];
        // Projectors polled every 10 s: their contact instants move, nothing else does.
        tokio::time::sleep(Duration::from_secs(11)).await;
        let b = get(d, path, &[]).await;
        assert_ne!(b.body, a.body, "{path}: a poll moved the contact instants");
        assert_eq!(without_contacts(&b.json()), without_contacts(&a.json()));
        assert_eq!(b.etag, a.etag, "{path}");
        let cond = get(d, path, &inm).await;
        assert_eq!(cond.status, 304, "{path}");
        assert!(cond.body.is_empty());
        let gz = get(
            d,
            path,
            &[(header::ACCEPT_ENCODING, "gzip"), inm[0].clone()],
        )
        .await;
        assert_eq!(gz.status, 304, "{path}: the gzip form of the same list");
    }
    let devices = get(d, "/api/v1/devices", &[]).await;
    let before = contacts(&devices.json());
    // The grid steps: the validator changes once, though nothing but contacts did.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let cond = get(
        d,
        "/api/v1/devices",
        &[(header::IF_NONE_MATCH, devices.etag.as_deref().unwrap())],
    )
    .await;
    assert_eq!(cond.status, 200);
    assert_ne!(cond.etag, devices.etag);
    assert_ne!(contacts(&cond.json()), before);
    // The body a 304 vouches for is never more than a step (and a second) behind.
    let now = d.clock.now();
    for (_, at) in contacts(&cond.json()) {
        let at: chrono::DateTime<chrono::Utc> = serde_json::from_value(at).unwrap();
        assert!(now - at <= chrono::Duration::seconds(31), "{at} at {now}");
    }
    s.stop().await;
}

/// Which of `watches` moved since last asked (their indices).
fn moved(watches: &mut [tokio::sync::watch::Receiver<avwarden::model::DeviceState>]) -> Vec<usize> {
    let mut out = Vec::new();
    for (i, w) in watches.iter_mut().enumerate() {
        if w.has_changed().unwrap_or(true) {
            w.mark_unchanged();
            out.push(i);
        }
    }
    out
}

/// The rooms list's count of room views built (`/metrics`).
async fn views_built(d: &Daemon) -> f64 {
    let text = String::from_utf8(get(d, "/metrics", &[]).await.body).unwrap();
    let key = format!("{}{{list=\"rooms\"}}", avwarden::api::snapshot::VIEWS_BUILT);
    text.lines()
        .find_map(|l| l.strip_prefix(key.as_str()))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test(start_paused = true)]
async fn one_device_changing_rebuilds_only_its_rooms_view_and_a_booking_only_its_room() {
    let dir = tempfile::tempdir().unwrap();
    // Polled once an hour: between the requests below nothing moves but what the test moves.
    let s = site_with(dir.path(), "poll_interval_secs = 3600").await;
    let d = &s.d;
    // The sessions opened at start-up settle (a projector closes an idle connection).
    tokio::time::sleep(Duration::from_secs(120)).await;
    let first = get(d, "/api/v1/rooms", &[]).await;
    assert_eq!(first.status, 200);
    let m = views_built(d).await;
    assert!(m >= 3.0, "the first list builds every room: {m}");
    // Watched from here: a device the list finds moved at a later rebuild moved after this,
    // so these see it too; the list may build those rooms' views, and no others.
    let mut watches: Vec<_> = (1..=3)
        .map(|i| {
            let mut w = d.fleet.get(&format!("p{i}")).unwrap().watch();
            w.mark_unchanged();
            w
        })
        .collect();
    let m0 = views_built(d).await;
    get(d, "/api/v1/rooms", &[]).await;
    let quiet = moved(&mut watches);
    assert!(
        views_built(d).await - m0 <= quiet.len() as f64,
        "only rooms whose devices moved: {quiet:?}"
    );
    let m0 = views_built(d).await;

    // p2's lamp fails; a refresh reads it now rather than in an hour.
    s.sims[1].set_error_status(ErrorStatus {
        lamp: ErrorLevel::Error,
        ..ErrorStatus::default()
    });
    let (status, body) = api(
        d,
        reqwest::Method::POST,
        "/api/v1/devices/p2/commands",
        serde_json::json!({"command": "refresh"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    s.until_faulted(1).await;
    let list = get(d, "/api/v1/rooms", &[]).await.json();
    let moved = moved(&mut watches);
    let built = views_built(d).await - m0;
    assert!(moved.contains(&1), "p2 moved");
    assert!(
        built >= 1.0 && built <= moved.len() as f64,
        "r2's view and those of rooms whose devices moved, no others: {built} of {moved:?}"
    );
    assert!(list[1]["devices"][0]["faults"].as_u64().unwrap() >= 1);
    // Each room as its own route shows it (the others' entries reused as they were).
    for i in 1..=3 {
        let (status, room) = api(
            d,
            reqwest::Method::GET,
            &format!("/api/v1/rooms/r{i}"),
            Value::Null,
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(
            without_contacts(&list[i - 1]),
            without_contacts(&room),
            "r{i}"
        );
    }

    // A booking of r3: the book moved, every room's bookings are looked at, r3's alone built.
    let m1 = views_built(d).await;
    let start = d.clock.now() + chrono::Duration::minutes(10);
    let (status, body) = api(
        d,
        reqwest::Method::POST,
        "/api/v1/bookings",
        serde_json::json!({
            "room": "r3", "title": "Weekly sync", "start": start,
            "end": start + chrono::Duration::minutes(30), "attendees": 4,
        }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let booked = get(d, "/api/v1/rooms", &[]).await.json();
    assert_eq!(booked[2]["next_booking"]["title"], "Weekly sync");
    assert_eq!(views_built(d).await, m1 + 1.0, "r3's view alone is built");

    // Time alone: the meeting starts and the next list shows it running, r1 and r2 untouched
    // (r3's self-test before the start may have built r3 again meanwhile).
    tokio::time::sleep(Duration::from_secs(11 * 60)).await;
    let m2 = views_built(d).await;
    let running = get(d, "/api/v1/rooms", &[]).await.json();
    assert_eq!(running[2]["current_booking"]["title"], "Weekly sync");
    assert_eq!(running[2]["next_booking"], Value::Null);
    let m3 = views_built(d).await;
    assert!(m3 - m2 <= 1.0, "one room's view at most: {m2} -> {m3}");
    assert_eq!(
        without_contacts(&running[0]),
        without_contacts(&list[0]),
        "r1 unchanged"
    );
    s.stop().await;
}
