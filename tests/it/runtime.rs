//! The device runtime and the API over it, with a minimal line protocol ("PING" → "PONG n")
//! served on a real TCP socket. Protocol drivers have their own tests; these are about the
//! actor, the supervisor and the HTTP surface.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use avwarden::codec::ProtocolError;
use avwarden::driver::{Driver, DriverError, Link, Observer};
use avwarden::model::{DeviceCommand, DeviceState, Health, Point, ProfileId, Quantity, Value};
use avwarden::runtime::{ActorConfig, Fleet, RestartBudget};
use avwarden::transport::tcp::TcpSpec;
use avwarden::transport::LinkSpec;
use bytes::BytesMut;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::support::{bus, clock, wait_state};

const PONGS: Point = Point::device(Quantity::BatteryCycles);

struct Lines;
impl Decoder for Lines {
    type Item = String;
    type Error = ProtocolError;
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<String>, ProtocolError> {
        match src.iter().position(|b| *b == b'\n') {
            Some(i) => {
                let line = src.split_to(i + 1);
                Ok(Some(String::from_utf8_lossy(&line[..i]).into_owned()))
            }
            None => Ok(None),
        }
    }
}

/// Polls with PING; panics on `Refresh` while `panic_on_refresh` is set (to test the
/// supervisor), reports its pong count as a reading (any counting point would do; it uses
/// `battery_cycles`).
struct PingDriver {
    panic_on_refresh: Arc<AtomicU32>,
}

#[async_trait]
impl Driver for PingDriver {
    fn name(&self) -> &'static str {
        "ping"
    }
    async fn open(&mut self, _l: &mut Link, _o: &mut Observer) -> Result<(), DriverError> {
        Ok(())
    }
    async fn read_all(&mut self, l: &mut Link, o: &mut Observer) -> Result<(), DriverError> {
        l.send(b"PING\n").await?;
        let line = l.read_frame(&mut Lines, Duration::from_secs(1)).await?;
        let n: i64 = line
            .strip_prefix("PONG ")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| ProtocolError::malformed(line.clone()))?;
        o.reading(PONGS, Value::Int(n));
        Ok(())
    }
    async fn execute(
        &mut self,
        l: &mut Link,
        o: &mut Observer,
        c: &DeviceCommand,
    ) -> Result<(), DriverError> {
        match c {
            DeviceCommand::Refresh => {
                if self.panic_on_refresh.load(Ordering::SeqCst) > 0 {
                    self.panic_on_refresh.fetch_sub(1, Ordering::SeqCst);
                    panic!("driver bug triggered by test");
                }
                self.read_all(l, o).await
            }
            // The three outcomes the API must tell apart (issue 14.5, 14.6): avwarden's own
            // limit, the device's refusal, and done with the value the device holds.
            DeviceCommand::SetSetpoint { celsius } if *celsius < 17.0 => {
                Err(DriverError::Rejected {
                    command: c.name().to_owned(),
                    reason: format!("{celsius} °C is below the profile's 17–30 °C"),
                })
            }
            DeviceCommand::SetSetpoint { celsius } if *celsius > 30.0 => {
                Err(DriverError::Refused {
                    command: c.name().to_owned(),
                    reason: "unit answered exception 3 (illegal data value)".to_owned(),
                })
            }
            DeviceCommand::SetSetpoint { celsius } => {
                o.applied(
                    Point::device(Quantity::Setpoint),
                    avwarden::model::Value::Float(celsius.round()),
                );
                Ok(())
            }
            _ => Err(DriverError::Unsupported {
                driver: "ping",
                command: c.name(),
            }),
        }
    }
}

/// A device answering PING with a counter; stops answering when `cancel` fires.
async fn ping_server(cancel: CancellationToken) -> std::net::SocketAddr {
    ping_server_slow(cancel, Duration::ZERO).await
}

/// The same, taking `delay` to answer each PING.
async fn ping_server_slow(cancel: CancellationToken, delay: Duration) -> std::net::SocketAddr {
    ping_server_logged(cancel, delay, Arc::new(std::sync::Mutex::new(Vec::new()))).await
}

/// The same, noting the instant each PING arrives.
async fn ping_server_logged(
    cancel: CancellationToken,
    delay: Duration,
    log: Arc<std::sync::Mutex<Vec<tokio::time::Instant>>>,
) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    crate::support::spawn(async move {
        let mut n = 0u64;
        loop {
            let (sock, _) = tokio::select! {
                _ = cancel.cancelled() => return,
                r = listener.accept() => r.unwrap(),
            };
            let (r, mut w) = sock.into_split();
            let mut lines = BufReader::new(r).lines();
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    l = lines.next_line() => match l {
                        Ok(Some(_)) => { log.lock().unwrap().push(tokio::time::Instant::now()); n += 1; tokio::time::sleep(delay).await; if w.write_all(format!("PONG {n}\n").as_bytes()).await.is_err() { break } }
                        _ => break,
                    }
                }
            }
        }
    });
    addr
}

fn spawn_ping(fleet: &mut Fleet, addr: std::net::SocketAddr, panics: Arc<AtomicU32>) {
    spawn_ping_every(fleet, addr, panics, Duration::from_secs(5));
}

fn spawn_ping_every(
    fleet: &mut Fleet,
    addr: std::net::SocketAddr,
    panics: Arc<AtomicU32>,
    poll_interval: Duration,
) {
    spawn_ping_named(fleet, "dev1", addr, panics, poll_interval);
}

fn spawn_ping_named(
    fleet: &mut Fleet,
    id: &str,
    addr: std::net::SocketAddr,
    panics: Arc<AtomicU32>,
    poll_interval: Duration,
) {
    let initial = DeviceState::new(
        id.into(),
        "r1".into(),
        ProfileId::new("ping"),
        "tcp".into(),
        clock().now(),
    );
    let cfg = ActorConfig {
        link: LinkSpec::Tcp(TcpSpec::new("127.0.0.1", addr.port())),
        poll_interval,
        command_gap: Duration::from_millis(100),
        comms: avwarden::model::CommsPolicy::polled(poll_interval, Duration::from_secs(2), 2),
        backoff_min: Duration::from_millis(200),
        backoff_max: Duration::from_secs(2),
        mqtt: None,
        on_write: None,
    };
    fleet.spawn(
        initial,
        cfg,
        Box::new(move || {
            Box::new(PingDriver {
                panic_on_refresh: panics.clone(),
            })
        }),
        4,
    );
}

#[tokio::test(start_paused = true)]
async fn supervisor_restarts_a_crashed_actor_then_gives_up_past_its_budget() {
    let server_stop = CancellationToken::new();
    let addr = ping_server(server_stop.clone()).await;
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let events = bus();
    let mut ev = events.subscribe();
    let mut fleet = Fleet::new(events.clone(), clock(), tracker.clone(), cancel.clone())
        .with_budget(RestartBudget {
            max_restarts: 2,
            window: Duration::from_secs(600),
            delay: Duration::from_millis(500),
        });
    let panics = Arc::new(AtomicU32::new(1));
    spawn_ping(&mut fleet, addr, panics.clone());
    let h = fleet.get("dev1").unwrap().clone();
    let mut rx = h.watch();
    wait_state(&mut rx, Duration::from_secs(30), "ok", |s| {
        s.health == Health::Ok
    })
    .await;

    // One panic: the command fails (its reply channel is dropped), the actor is restarted and
    // the device comes back by itself.
    assert!(h
        .command(DeviceCommand::Refresh)
        .await
        .into_result()
        .is_err());
    wait_state(
        &mut rx,
        Duration::from_secs(30),
        "unreachable after crash",
        |s| s.health == Health::Unreachable,
    )
    .await;
    wait_state(&mut rx, Duration::from_secs(30), "ok after restart", |s| {
        s.health == Health::Ok
    })
    .await;
    assert!(
        h.command(DeviceCommand::Refresh)
            .await
            .into_result()
            .is_ok(),
        "the queue survived the crash"
    );

    // Past the budget: faulted with actor_crashed, and commands are refused, not hung.
    panics.store(10, Ordering::SeqCst);
    for _ in 0..3 {
        let _ = h.command(DeviceCommand::Refresh).await.into_result();
        let _ = tokio::time::timeout(
            Duration::from_secs(30),
            rx.wait_for(|s| s.health == Health::Ok),
        )
        .await;
    }
    let s = wait_state(&mut rx, Duration::from_secs(30), "gave up", |s| {
        s.faults.iter().any(|f| f.fault.code == "actor_crashed")
    })
    .await;
    // Nobody is talking to the device any more: unreachable, with the reason as a fault.
    assert_eq!(s.health, Health::Unreachable);
    let refused = tokio::time::timeout(Duration::from_secs(5), h.command(DeviceCommand::Refresh))
        .await
        .expect("refused at once, not hung");
    assert_eq!(refused, avwarden::runtime::CommandOutcome::Unreachable);
    let mut names = Vec::new();
    while let Ok(e) = ev.try_recv() {
        names.push(e.kind.name());
    }
    // Budget 2: the third crash within the window is the one it gives up on.
    let restarts = names.iter().filter(|n| **n == "actor_restarted").count();
    assert_eq!(restarts, 2, "{names:?}");
    assert_eq!(
        names.iter().filter(|n| **n == "actor_gave_up").count(),
        1,
        "{names:?}"
    );

    cancel.cancel();
    tracker.close();
    tracker.wait().await;
    server_stop.cancel();
}

async fn api_with_one_device() -> (String, CancellationToken, TaskTracker) {
    let addr = ping_server(CancellationToken::new()).await;
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let events = bus();
    let mut fleet = Fleet::new(events.clone(), clock(), tracker.clone(), cancel.clone());
    spawn_ping(&mut fleet, addr, Arc::new(AtomicU32::new(0)));
    let mut rx = fleet.get("dev1").unwrap().watch();
    wait_state(&mut rx, Duration::from_secs(10), "ok", |s| {
        s.health == Health::Ok
    })
    .await;
    let addr = crate::support::serve_api(
        fleet,
        &events,
        avwarden::config::ApiConfig::default(),
        &tracker,
        &cancel,
    )
    .await;
    (format!("http://{addr}"), cancel, tracker)
}

#[tokio::test]
async fn api_reports_devices_with_reading_ages() {
    let (base, cancel, _t) = api_with_one_device().await;
    let c = reqwest::Client::new();
    let health: serde_json::Value = c
        .get(format!("{base}/api/v1/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["devices"]["ok"], 1);
    let list: serde_json::Value = c
        .get(format!("{base}/api/v1/devices"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list[0]["id"], "dev1");
    assert_eq!(list[0]["health"], "ok");
    let d: serde_json::Value = c
        .get(format!("{base}/api/v1/devices/dev1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(d["reachable"], true);
    assert_eq!(d["points"]["device"]["battery_cycles"]["type"], "int");
    assert_eq!(d["points"]["device"]["battery_cycles"]["stale"], false);
    let m = c
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("avwarden_devices{health=\"ok\"} 1"), "{m}");
    cancel.cancel();
}

#[tokio::test]
async fn api_errors_are_json_with_4xx() {
    let (base, cancel, _t) = api_with_one_device().await;
    let c = reqwest::Client::new();
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            c.get(format!("{base}/api/v1/devices/nope")),
            404,
            "unknown_device",
        ),
        (c.get(format!("{base}/api/v2/whatever")), 404, "not_found"),
        // Issue 16.5: a path that is not UTF-8 answered 400 as text/plain.
        (
            c.get(format!("{base}/api/v1/devices/%ff%fe")),
            400,
            "bad_path",
        ),
        (
            c.delete(format!("{base}/api/v1/devices")),
            405,
            "method_not_allowed",
        ),
        (
            c.post(format!("{base}/api/v1/devices/dev1/commands"))
                .header("content-type", "application/json")
                .body("{not json"),
            400,
            "malformed_json",
        ),
        (
            c.post(format!("{base}/api/v1/devices/dev1/commands"))
                .header("content-type", "application/json")
                .body(r#"{"command":"self_destruct"}"#),
            422,
            "invalid_body",
        ),
        (
            c.post(format!("{base}/api/v1/devices/dev1/commands"))
                .body("power on"),
            415,
            "expected_json",
        ),
        (
            c.post(format!("{base}/api/v1/devices/dev1/commands"))
                .header("content-type", "application/json")
                .body(vec![b' '; 200 * 1024]),
            413,
            "bad_body",
        ),
        (
            c.post(format!("{base}/api/v1/devices/dev1/commands"))
                .json(&serde_json::json!({"command":"power","on":true})),
            422,
            "unsupported",
        ),
        (
            c.post(format!("{base}/api/v1/devices/dev1/commands"))
                .json(&serde_json::json!({"command":"set_setpoint","celsius":16.0})),
            422,
            "rejected",
        ),
        (
            c.post(format!("{base}/api/v1/devices/dev1/commands"))
                .json(&serde_json::json!({"command":"set_setpoint","celsius":31.0})),
            422,
            "refused",
        ),
    ];
    for (req, status, code) in cases {
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), status, "for {code}");
        let body: serde_json::Value = r.json().await.expect("json body");
        assert_eq!(body["error"], code, "{body}");
        assert!(body["detail"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // A good command goes through.
    let ok = c
        .post(format!("{base}/api/v1/devices/dev1/commands"))
        .json(&serde_json::json!({"command":"refresh"}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status().as_u16(), 200);
    let ok: serde_json::Value = ok.json().await.unwrap();
    assert!(ok.get("applied").is_none(), "refresh sets nothing: {ok}");
    // Issue 14.6: done, with the value applied rather than the one asked for.
    let r = c
        .post(format!("{base}/api/v1/devices/dev1/commands"))
        .json(&serde_json::json!({"command":"set_setpoint","celsius":22.5}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        body["applied"],
        serde_json::json!({"key":"setpoint","type":"float","value":23.0,"unit":"celsius"}),
        "{body}"
    );
    cancel.cancel();
}

/// Regression (found in the ESC/VP21 work): with the poll tick served before the command
/// queue, a device whose polls take longer than the poll interval never ran a command.
#[tokio::test(start_paused = true)]
async fn commands_get_through_when_polls_take_longer_than_the_interval() {
    let stop = CancellationToken::new();
    let addr = ping_server_slow(stop.clone(), Duration::from_millis(900)).await;
    let cancel = CancellationToken::new();
    let mut fleet = Fleet::new(bus(), clock(), TaskTracker::new(), cancel.clone());
    spawn_ping_every(
        &mut fleet,
        addr,
        Arc::new(AtomicU32::new(0)),
        Duration::from_millis(300),
    );
    let h = fleet.get("dev1").unwrap().clone();
    let mut rx = h.watch();
    // Let polls run back to back first: the tick is then always overdue.
    wait_state(&mut rx, Duration::from_secs(30), "polling", |s| {
        s.reading(&PONGS).and_then(|r| r.value.as_f64()) >= Some(3.0)
    })
    .await;
    let done =
        tokio::time::timeout(Duration::from_secs(10), h.command(DeviceCommand::Refresh)).await;
    assert!(
        matches!(done, Ok(avwarden::runtime::CommandOutcome::Done { .. })),
        "command starved: {done:?}"
    );
    cancel.cancel();
    stop.cancel();
}

/// Devices whose sessions start at different instants poll in the same instants, on the
/// wall clock's grid of their interval, and stay there when a poll overruns it (issue 15.1:
/// polls spread over the second cost a wake-up per exchange; aligned, one wake-up serves
/// them all). Before, each ticker ran from its own connect, 370 ms apart here, and a late
/// poll moved every later one. A fleet of two has one phase: both poll on the interval's
/// multiples since the epoch.
#[tokio::test(start_paused = true)]
async fn devices_started_apart_poll_in_the_same_instants() {
    let interval = Duration::from_millis(800);
    let ids = ["dev0", "dev1"];
    let stop = CancellationToken::new();
    let logs: Vec<Arc<std::sync::Mutex<Vec<tokio::time::Instant>>>> =
        (0..2).map(|_| Arc::default()).collect();
    let cancel = CancellationToken::new();
    let clock = clock();
    let mut fleet = Fleet::new(bus(), clock, TaskTracker::new(), cancel.clone());
    let started = tokio::time::Instant::now();
    let mut rxs = Vec::new();
    for (i, (log, id)) in logs.iter().zip(&ids).enumerate() {
        if i == 1 {
            tokio::time::sleep(Duration::from_millis(370)).await;
        }
        // The second device takes 0.9 s to answer: each of its polls overruns the interval.
        let delay = Duration::from_millis(900 * i as u64);
        let addr = ping_server_logged(stop.clone(), delay, log.clone()).await;
        spawn_ping_named(&mut fleet, id, addr, Arc::new(AtomicU32::new(0)), interval);
        rxs.push(fleet.get(id).unwrap().watch());
    }
    for rx in &mut rxs {
        wait_state(rx, Duration::from_secs(30), "six pongs", |s| {
            s.reading(&PONGS).and_then(|r| r.value.as_f64()) >= Some(6.0)
        })
        .await;
    }
    cancel.cancel();
    stop.cancel();
    // The grid in tokio time: the clock started on a whole second, a multiple of 800 ms
    // since the epoch.
    let period = interval.as_millis();
    let phase = 0;
    let tick = |at: tokio::time::Instant| {
        let ms = at.duration_since(started).as_millis();
        let off = (ms + period - phase) % period;
        assert!(
            off <= 5 || off >= period - 5,
            "a poll at {ms} ms is off the grid ({phase} ms into every {period} ms)"
        );
        (ms + period / 2 - phase) / period
    };
    let polls = |i: usize| -> Vec<u128> {
        // The first PING is the session's full read, at its connect.
        logs[i].lock().unwrap()[1..]
            .iter()
            .map(|t| tick(*t))
            .collect()
    };
    let (a, b) = (polls(0), polls(1));
    assert!(a.len() >= 5 && b.len() >= 5, "{a:?} {b:?}");
    assert!(
        b.iter().all(|t| a.contains(t)),
        "the later device polls at other instants: {a:?} vs {b:?}"
    );
}

/// Pacing: every exchange with the device keeps `command_gap` (100 ms here) from the previous
/// one, polls included; and a full queue refuses at once instead of waiting.
#[tokio::test(start_paused = true)]
async fn commands_are_paced_and_a_full_queue_refuses_at_once() {
    let stop = CancellationToken::new();
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let addr = ping_server_logged(stop.clone(), Duration::from_millis(10), log.clone()).await;
    let cancel = CancellationToken::new();
    let mut fleet = Fleet::new(bus(), clock(), TaskTracker::new(), cancel.clone());
    spawn_ping_every(
        &mut fleet,
        addr,
        Arc::new(AtomicU32::new(0)),
        Duration::from_millis(150),
    );
    let h = fleet.get("dev1").unwrap().clone();
    let mut rx = h.watch();
    wait_state(&mut rx, Duration::from_secs(30), "ok", |s| {
        s.health == Health::Ok
    })
    .await;

    // Ten commands at once into a queue of four: some are refused at once, the rest done.
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let h = h.clone();
        tasks.push(crate::support::spawn(async move {
            h.try_command(DeviceCommand::Refresh).await.into_result()
        }));
    }
    let mut ok = 0;
    let mut full = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(avwarden::runtime::CommandOutcome::QueueFull) => full += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(
        full >= 1 && ok >= 4 && ok + full == 10,
        "ok {ok}, full {full}"
    );

    // Let polls interleave with more commands, then check every gap on the wire.
    for _ in 0..5 {
        h.command(DeviceCommand::Refresh)
            .await
            .into_result()
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let instants = log.lock().unwrap().clone();
    assert!(instants.len() >= 15, "{}", instants.len());
    for w in instants.windows(2) {
        let gap = w[1] - w[0];
        // Each exchange ends 10 ms after its PING; the next starts ≥ 100 ms after that end.
        assert!(gap >= Duration::from_millis(110), "exchanges {gap:?} apart");
    }
    cancel.cancel();
    stop.cancel();
}

/// Issue 8.3/8.5: 200 devices meter every 100 ms while a consumer sleeps for ten seconds. It
/// wakes to the newest sample of each subject and no backlog; a fault raised meanwhile
/// reaches the playbook's sink exactly once; and no meter woke a device's state watchers.
#[tokio::test(start_paused = true)]
async fn a_sleeping_consumer_gets_the_latest_meters_and_every_fault_once() {
    use avwarden::events::{EventFilter, EventKind};
    use avwarden::model::{DeviceId, Fault, RoomId, Severity, Subject};

    let bus = bus();
    let mut meters = bus.meters().subscribe("level watch");
    let mut faults = bus.sink(
        "playbook",
        EventFilter::matching(|k| matches!(k, EventKind::FaultRaised { .. })),
        64,
    );
    let mut watchers = Vec::new();
    let mut tasks = Vec::new();
    for d in 0..200u32 {
        let (tx, rx) = tokio::sync::watch::channel(DeviceState::new(
            DeviceId::new(format!("mic-{d:03}")),
            RoomId::new("r"),
            ProfileId::new("shure-ulxd"),
            "test".into(),
            clock().now(),
        ));
        watchers.push(rx);
        let mut obs = Observer::new(clock(), Arc::new(tx), bus.clone());
        tasks.push(crate::support::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            for n in 0..100u32 {
                tick.tick().await;
                for ch in 1..=2 {
                    obs.meter(Subject::Channel(ch), -60.0 + f64::from(n) * 0.5);
                }
                if d == 7 && n == 50 {
                    obs.faults(
                        "battery",
                        vec![Fault::new("battery_low", Severity::Warning, "ch 1 low").on("ch.1")],
                    );
                }
            }
            obs
        }));
    }
    // The consumer sleeps through all of it.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut observers = Vec::new();
    for t in tasks {
        observers.push(t.await.unwrap());
    }
    let batch = meters.try_recv();
    assert_eq!(
        batch.len(),
        400,
        "one sample per device and channel, no backlog"
    );
    assert!(
        batch.iter().all(|s| s.dbfs == -60.0 + 99.0 * 0.5),
        "each is the newest"
    );
    assert!(meters.try_recv().is_empty());
    let fault = faults.try_recv().expect("the fault");
    assert!(
        matches!(&fault.kind, EventKind::FaultRaised { device, .. } if device.as_str() == "mic-007")
    );
    assert!(faults.try_recv().is_err(), "exactly once");
    // Meters never woke the state watchers; only mic-007's fault did.
    let woken: Vec<usize> = watchers
        .iter()
        .enumerate()
        .filter(|(_, rx)| rx.has_changed().unwrap_or(false))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(woken, vec![7]);
}

/// Issue 8.2: the fleet knows its rooms, and which of a room's devices can do what, from their
/// profiles (the self-test asks "the projector of room 301", the level watch "its DSP").
#[tokio::test(start_paused = true)]
async fn the_fleet_answers_rooms_and_devices_by_capability() {
    use avwarden::model::{Capability, RoomId};
    use avwarden::runtime::DeviceSpec;
    let cancel = CancellationToken::new();
    let mut fleet = Fleet::new(bus(), clock(), TaskTracker::new(), cancel.clone());
    for (id, room, profile) in [
        ("proj-301", "r301", "generic-pjlink"),
        ("mics-301", "r301", "shure-ulxd"),
        ("dsp-301", "r301", "biamp-tesira-telnet"),
        ("proj-302", "r302", "epson-escvp21"),
        ("hvac-302", "r302", "avwarden-sim-modbus"),
    ] {
        // Nothing listens on port 9: the devices stay unreachable, which is beside the point.
        let spec = DeviceSpec::new(
            id,
            room,
            crate::support::profile(profile),
            LinkSpec::Tcp(TcpSpec::new("127.0.0.1", 9)),
        );
        let spec = DeviceSpec {
            settings: if profile == "biamp-tesira-telnet" {
                toml::from_str("[[zones]]\nid = \"main\"\nlevel_tag = \"Level1\"\n").unwrap()
            } else {
                toml::Table::new()
            },
            ..spec
        };
        fleet.spawn_device(spec).unwrap();
    }
    let r301 = RoomId::new("r301");
    assert_eq!(fleet.rooms(), vec![r301.clone(), RoomId::new("r302")]);
    let ids = |hs: Vec<avwarden::runtime::DeviceHandle>| {
        hs.into_iter().map(|h| h.id.to_string()).collect::<Vec<_>>()
    };
    assert_eq!(ids(fleet.room(&r301)), ["dsp-301", "mics-301", "proj-301"]);
    assert_eq!(
        ids(fleet.in_room_with(&r301, Capability::Lamp)),
        ["proj-301"]
    );
    assert_eq!(
        ids(fleet.in_room_with(&r301, Capability::Battery)),
        ["mics-301"]
    );
    assert_eq!(
        ids(fleet.in_room_with(&RoomId::new("r302"), Capability::Setpoint)),
        ["hvac-302"]
    );
    let h = fleet.get("dsp-301").unwrap();
    assert_eq!(h.room, r301);
    assert_eq!(
        h.profile.as_ref().unwrap().id.as_str(),
        "biamp-tesira-telnet"
    );
    assert!(h.can(Capability::Level) && !h.can(Capability::Power));

    // The fleet answers rooms from an index kept with its membership: a removed device leaves
    // its room, a room without devices leaves the list, and a device started again in another
    // room (a reload moving it) is found there and only there.
    assert!(fleet.remove_device(&"proj-302".into()).await);
    assert!(fleet.remove_device(&"hvac-302".into()).await);
    assert_eq!(fleet.rooms(), vec![r301.clone()]);
    assert!(fleet.room(&RoomId::new("r302")).is_empty());
    assert!(fleet.remove_device(&"proj-301".into()).await);
    let moved = DeviceSpec::new(
        "proj-301",
        "r303",
        crate::support::profile("generic-pjlink"),
        LinkSpec::Tcp(TcpSpec::new("127.0.0.1", 9)),
    );
    fleet.add_device(moved).unwrap();
    assert_eq!(ids(fleet.room(&r301)), ["dsp-301", "mics-301"]);
    assert!(fleet.in_room_with(&r301, Capability::Lamp).is_empty());
    assert_eq!(
        ids(fleet.in_room_with(&RoomId::new("r303"), Capability::Lamp)),
        ["proj-301"]
    );
    assert_eq!(fleet.rooms(), vec![r301, RoomId::new("r303")]);
    assert_eq!(fleet.len(), 3);
    cancel.cancel();
}
