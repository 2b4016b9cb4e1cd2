//! Shared test helpers: clocks, profiles, waiting for state without sleeping, one device under
//! the runtime ([`Rig`]), reading state and meter events, and the Python interop peer.

#![allow(dead_code)]

use avwarden::model::Point;
use std::sync::Arc;
use std::time::Duration;

use avwarden::clock::Clock;
use avwarden::events::EventBus;
use avwarden::metrics::Metrics;
use avwarden::model::{DeviceState, Fault, Value};
use avwarden::profile::{Profile, ProfileSet};
use avwarden::runtime::{DeviceHandle, DeviceSpec, Fleet};
use chrono::TimeZone;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// 2026-11-27 09:00 UTC, a Friday.
pub fn t0() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc.with_ymd_and_hms(2026, 11, 27, 9, 0, 0).unwrap()
}

pub fn clock() -> Clock {
    Clock::starting_at(t0())
}

pub fn bus() -> EventBus {
    EventBus::new(Metrics::new())
}

/// A shipped profile by id.
pub fn profile(id: &str) -> Arc<Profile> {
    let set = ProfileSet::embedded().expect("embedded profiles parse");
    Arc::new(
        set.get(id)
            .unwrap_or_else(|| panic!("no embedded profile {id}"))
            .clone(),
    )
}

/// Wait until the device state satisfies `pred`; fails (does not hang) after `limit` of tokio
/// time, which under paused time costs nothing.
pub async fn wait_state(
    rx: &mut watch::Receiver<DeviceState>,
    limit: Duration,
    what: &str,
    pred: impl FnMut(&DeviceState) -> bool,
) -> DeviceState {
    let res =
        tokio::time::timeout(limit, async { rx.wait_for(pred).await.map(|s| s.clone()) }).await;
    match res {
        Ok(Ok(s)) => s,
        Ok(Err(_)) => panic!("state channel closed while waiting for {what}"),
        Err(_) => panic!(
            "timed out waiting for {what}; last state: {:#?}",
            *rx.borrow()
        ),
    }
}

/// Largest jump of paused time between two real-time settles (see [`spawn_settle_pump`]).
pub const SETTLE_STEP: Duration = Duration::from_millis(100);

/// Paused tokio time over real sockets has a race: tokio advances paused time as soon as all
/// its tasks wait, but under CPU load the kernel may still be moving loopback bytes (softirq
/// work deferred to ksoftirqd), so a reply deadline can pass before a reply that is already on
/// its way arrives. Measured: 9 of 30 runs failed with a python process running in parallel.
///
/// This pump keeps paused time honest: it caps each auto-advance jump at [`SETTLE_STEP`] and,
/// before the next jump, gives the kernel a short moment of real time by running a blocking
/// task (tokio does not auto-advance while a blocking task runs). Jumps still land exactly on
/// the earliest timer, so measured instants stay exact to the millisecond.
pub fn spawn_settle_pump(cancel: CancellationToken) {
    spawn(async move {
        loop {
            let settle = tokio::task::spawn_blocking(|| {
                // Real time on a blocking-pool thread, by design: that is the whole point.
                #[allow(clippy::disallowed_methods)]
                std::thread::sleep(Duration::from_micros(500));
            });
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = settle => {}
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(SETTLE_STEP) => {}
            }
        }
    });
}

/// One device under the runtime, in a fleet of its own.
pub struct Rig {
    pub handle: DeviceHandle,
    pub rx: watch::Receiver<DeviceState>,
    pub bus: EventBus,
    /// Subscribed before the device started: no event is missed.
    pub events: avwarden::events::EventSink,
    /// The meter stream, subscribed before the device started.
    pub meters: avwarden::meter::stream::MeterReceiver,
    pub cancel: CancellationToken,
    pub tracker: TaskTracker,
    _fleet: Fleet,
}

impl Rig {
    /// Start `spec` with `settings` (the TOML of its `[devices.settings]`), then `tweak`.
    pub fn start(mut spec: DeviceSpec, settings: &str, tweak: impl FnOnce(&mut DeviceSpec)) -> Rig {
        let bus = bus();
        let events = bus.subscribe();
        let meters = bus.meters().subscribe("rig");
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let mut fleet = Fleet::new(bus.clone(), clock(), tracker.clone(), cancel.clone());
        spec.settings = toml::from_str(settings).expect("settings");
        tweak(&mut spec);
        let handle = fleet.spawn_device(spec).expect("device spawns");
        Rig {
            rx: handle.watch(),
            handle,
            bus,
            events,
            meters,
            cancel,
            tracker,
            _fleet: fleet,
        }
    }

    pub async fn up(&mut self) -> DeviceState {
        wait_state(&mut self.rx, Duration::from_secs(30), "link up", |s| {
            s.reachable
        })
        .await
    }

    pub async fn until(
        &mut self,
        what: &str,
        pred: impl FnMut(&DeviceState) -> bool,
    ) -> DeviceState {
        wait_state(&mut self.rx, Duration::from_secs(30), what, pred).await
    }

    /// Cancel the device and wait until its tasks have finished (`close` ran).
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// A reading's value, owned.
pub fn reading(s: &DeviceState, point: &Point) -> Option<Value> {
    s.reading(point).map(|r| r.value.clone())
}

/// A reading's value, borrowed.
pub fn val<'a>(s: &'a DeviceState, point: &Point) -> Option<&'a Value> {
    s.reading(point).map(|r| &r.value)
}

pub fn int(v: i64) -> Option<Value> {
    Some(Value::Int(v))
}

pub fn has_fault(s: &DeviceState, code: &str) -> bool {
    s.faults.iter().any(|f| f.fault.code == code)
}

/// The active fault `code` on a receiver channel (component `channel N`).
pub fn fault<'a>(s: &'a DeviceState, code: &str, channel: u8) -> Option<&'a Fault> {
    let comp = format!("channel {channel}");
    s.faults
        .iter()
        .map(|a| &a.fault)
        .find(|f| f.code == code && f.component.as_deref() == Some(comp.as_str()))
}

/// The next meter level of `subject` that satisfies `pred`, within `limit`.
pub async fn meter_where(
    rx: &mut avwarden::meter::stream::MeterReceiver,
    subject: &avwarden::model::Subject,
    limit: Duration,
    mut pred: impl FnMut(f64) -> bool,
) -> f64 {
    let res = tokio::time::timeout(limit, async {
        loop {
            for s in rx.recv().await {
                if &s.subject == subject && pred(s.dbfs) {
                    return s.dbfs;
                }
            }
        }
    })
    .await;
    res.unwrap_or_else(|_| panic!("no meter on {subject} matching within {limit:?}"))
}

/// `AVWARDEN_PYTHON` (the interop peers' venv) or a clear skip; a failure under CI.
pub fn python() -> Option<String> {
    match std::env::var("AVWARDEN_PYTHON") {
        Ok(p) if !p.is_empty() => Some(p),
        _ => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "AVWARDEN_PYTHON must be set under CI (scripts/test sets it)"
            );
            eprintln!("skipped: AVWARDEN_PYTHON not set");
            None
        }
    }
}

/// A file under `tests/data`.
pub fn data(file: &str) -> String {
    format!("{}/tests/data/{file}", env!("CARGO_MANIFEST_DIR"))
}

/// The status API over `fleet` on an ephemeral port, served under `limits` until `cancel`.
pub async fn serve_api(
    fleet: Fleet,
    events: &EventBus,
    limits: avwarden::config::ApiConfig,
    tracker: &TaskTracker,
    cancel: &CancellationToken,
) -> std::net::SocketAddr {
    use avwarden::api::{self, ApiState};
    let state = ApiState {
        site: "test".into(),
        version: "test",
        clock: clock(),
        started: clock().now(),
        fleet: Arc::new(fleet),
        metrics: events.metrics().clone(),
        store: None,
        schedule: None,
        auth: Default::default(),
        records: None,
        layout: Default::default(),
        protection: None,
        playbook: None,
        history: None,
        events: None,
        reload: None,
        aggregate: None,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tracker.spawn(api::server::serve(
        listener,
        api::router(state),
        limits,
        events.metrics().clone(),
        tracker.clone(),
        cancel.clone(),
    ));
    addr
}

/// `tokio::spawn` for tests, which are outside the daemon's shutdown tree by nature (the ban
/// in clippy.toml is for the daemon's own tasks).
pub fn spawn<F>(task: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    TaskTracker::new().spawn(task)
}

/// One request to a daemon's API with a JSON body (`null` for none): its status and JSON
/// answer (`null` when the answer is not JSON).
pub async fn api(
    d: &avwarden::app::Daemon,
    method: reqwest::Method,
    path: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let url = format!("http://{}{path}", d.api_addr);
    spawn(async move {
        let r = reqwest::Client::new()
            .request(method, url)
            .json(&body)
            .send()
            .await
            .expect("the API answers");
        let status = r.status().as_u16();
        (
            status,
            r.json::<serde_json::Value>().await.unwrap_or_default(),
        )
    })
    .await
    .unwrap()
}

/// A daemon for `cfg` on the test clock, its API on a free loopback port, no simulators of
/// its own (the test holds them) and no demo bookings.
pub async fn start_daemon(cfg: avwarden::config::SiteConfig) -> avwarden::app::Daemon {
    start_daemon_on(cfg, clock()).await
}

/// [`start_daemon`] on `clock` (e.g. the wall clock, for a test that runs in real time).
pub async fn start_daemon_on(
    cfg: avwarden::config::SiteConfig,
    clock: Clock,
) -> avwarden::app::Daemon {
    avwarden::app::Daemon::start(
        cfg,
        avwarden::app::StartOptions {
            with_simulators: false,
            api_bind: Some("127.0.0.1:0".parse().unwrap()),
            demo_bookings: false,
        },
        clock,
    )
    .await
    .expect("daemon starts")
}
