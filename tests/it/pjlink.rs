//! PJLink end to end: the driver under the device runtime against the simulator over real
//! loopback sockets, in paused tokio time; and the simulator against a third-party Python
//! client (aiopjlink2) in real time.

use avwarden::model::{Point, Quantity};
use std::sync::Arc;
use std::time::Duration;

use avwarden::codec::pjlink::{ErrorLevel, ErrorStatus, InputCode};
use avwarden::model::{DeviceCommand, DeviceState, Health, PowerState, Severity, Unit, Value};
use avwarden::profile::Profile;
use avwarden::runtime::{CommandOutcome, DeviceHandle, DeviceSpec, Fleet};
use avwarden::sim::pjlink::{ClssQuirk, PjlinkSim, SimConfig};
use avwarden::transport::tcp::TcpSpec;
use avwarden::transport::LinkSpec;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::support::{bus, clock, has_fault, profile, wait_state};

/// Commands of a full read of a Class 2 projector (what `read_all` must ask).
const FULL_READ_C2: &[&str] = &[
    "%1CLSS ?", "%1POWR ?", "%1ERST ?", "%1LAMP ?", "%2INST ?", "%2INPT ?", "%1AVMT ?", "%1NAME ?",
    "%1INF1 ?", "%1INF2 ?", "%1INFO ?", "%2SNUM ?", "%2SVER ?", "%2RLMP ?", "%2RFIL ?", "%2FILT ?",
    "%2IRES ?",
];

struct Rig {
    sim: PjlinkSim,
    fleet: Fleet,
    cancel: CancellationToken,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn rig(cfg: SimConfig) -> Rig {
    let cancel = CancellationToken::new();
    let sim = PjlinkSim::start(cfg, "127.0.0.1:0".parse().unwrap(), cancel.clone())
        .await
        .expect("simulator listens");
    let fleet = Fleet::new(bus(), clock(), TaskTracker::new(), cancel.clone());
    crate::support::spawn_settle_pump(cancel.clone());
    Rig { sim, fleet, cancel }
}

fn spec(profile: &Arc<Profile>, sim: &PjlinkSim, secret: Option<&str>) -> DeviceSpec {
    let mut tcp = TcpSpec::new("127.0.0.1", sim.addr().port());
    tcp.connect_per_command = profile.link.connect_per_command;
    let mut spec = DeviceSpec::new("proj-1", "room-a", profile.clone(), LinkSpec::Tcp(tcp));
    spec.secret = secret.map(str::to_owned);
    spec
}

impl Rig {
    fn spawn(&mut self, spec: DeviceSpec) -> DeviceHandle {
        self.fleet
            .spawn_device(spec)
            .expect("profile options are valid")
    }
}

/// A powered-on generic PJLink projector under the runtime, waited for until `ok`; with its
/// poll interval.
async fn projector_on_and_ok() -> (
    Rig,
    DeviceHandle,
    tokio::sync::watch::Receiver<DeviceState>,
    Duration,
) {
    let mut rig = rig(SimConfig {
        power_on: true,
        ..SimConfig::default()
    })
    .await;
    let prof = profile("generic-pjlink");
    let h = rig.spawn(spec(&prof, &rig.sim, None));
    let mut rx = h.watch();
    wait_state(&mut rx, MINUTE, "ok", |s| s.health == Health::Ok).await;
    (rig, h, rx, prof.timing.poll_interval)
}

fn value(s: &DeviceState, point: &Point) -> Value {
    s.reading(point)
        .unwrap_or_else(|| panic!("no reading {point}: {:#?}", s.readings))
        .value
        .clone()
}

fn power(s: &DeviceState) -> Option<PowerState> {
    s.reading(&Point::device(Quantity::Power))
        .and_then(|r| r.value.as_power())
}

const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test(start_paused = true)]
async fn full_read_reports_state_identity_and_faults() {
    let mut rig = rig(SimConfig {
        power_on: true,
        lamp_hours: vec![12345, 678],
        filter_hours: Some(1200),
        manufacturer: "Panasonic".into(),
        model: "PT-EZ580".into(),
        name: "Room A".into(),
        serial: "SH1234567".into(),
        firmware: "2.04".into(),
        ..SimConfig::default()
    })
    .await;
    rig.sim.set_error_status(ErrorStatus {
        fan: ErrorLevel::Warning,
        ..ErrorStatus::default()
    });
    let h = rig.spawn(spec(&profile("generic-pjlink"), &rig.sim, None));
    let s = wait_state(&mut h.watch(), MINUTE, "first full read", |s| s.reachable).await;

    assert_eq!(power(&s), Some(PowerState::On));
    assert_eq!(
        value(&s, &Point::lamp(1, Quantity::LampHours)),
        Value::Int(12345)
    );
    assert_eq!(
        s.reading(&Point::lamp(1, Quantity::LampHours))
            .unwrap()
            .unit(),
        Some(Unit::Hours)
    );
    assert_eq!(
        value(&s, &Point::lamp(1, Quantity::LampOn)),
        Value::Bool(true)
    );
    assert_eq!(
        value(&s, &Point::lamp(2, Quantity::LampHours)),
        Value::Int(678)
    );
    assert_eq!(
        value(&s, &Point::device(Quantity::Inputs)),
        Value::Text("11 31 32 33".into())
    );
    assert_eq!(
        value(&s, &Point::device(Quantity::Input)),
        Value::Text("11".into())
    );
    assert_eq!(
        value(&s, &Point::device(Quantity::AvMute)),
        Value::Bool(false)
    );
    assert_eq!(
        value(&s, &Point::device(Quantity::Resolution)),
        Value::Text("1920x1080".into())
    );
    assert_eq!(
        value(&s, &Point::device(Quantity::FilterHours)),
        Value::Int(1200)
    );
    let id = &s.identity;
    assert_eq!(id.manufacturer.as_deref(), Some("Panasonic"));
    assert_eq!(id.model.as_deref(), Some("PT-EZ580"));
    assert_eq!(id.name.as_deref(), Some("Room A"));
    assert_eq!(id.serial.as_deref(), Some("SH1234567"));
    assert_eq!(id.firmware.as_deref(), Some("2.04"));
    assert_eq!(id.extra.get("pjlink_class").map(String::as_str), Some("2"));
    assert_eq!(
        id.extra.get("replacement_lamp").map(String::as_str),
        Some("SIM-LAMP-1")
    );
    assert_eq!(
        id.extra.get("replacement_filter").map(String::as_str),
        Some("SIM-FILTER-1")
    );
    // ERST fan warning: degraded, not faulted; the generic profile has no lamp life.
    let fan = s
        .faults
        .iter()
        .find(|f| f.fault.code == "fan")
        .expect("fan");
    assert_eq!(fan.fault.severity, Severity::Warning);
    assert!(!has_fault(&s, "lamp_life"));
    assert_eq!(s.health, Health::Degraded);

    let asked: Vec<String> = rig.sim.requests();
    for cmd in FULL_READ_C2 {
        assert!(asked.iter().any(|r| r == cmd), "{cmd} not asked: {asked:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn class_1_quirky_projector_gets_no_class_2_questions() {
    let mut rig = rig(SimConfig {
        class: avwarden::codec::pjlink::Class::One,
        clss_quirk: ClssQuirk::ClassWord,
        lamp_hours: vec![],
        lower_case: true,
        power_on: true,
        ..SimConfig::default()
    })
    .await;
    let h = rig.spawn(spec(&profile("generic-pjlink"), &rig.sim, None));
    let s = wait_state(&mut h.watch(), MINUTE, "up", |s| s.reachable).await;
    assert_eq!(s.health, Health::Ok, "{s:#?}");
    assert_eq!(
        s.identity.extra.get("pjlink_class").map(String::as_str),
        Some("1")
    );
    // ERR1 on LAMP = a lamp-less model: no lamp readings, no fault.
    assert!(s.reading(&Point::lamp(1, Quantity::LampHours)).is_none());
    assert_eq!(power(&s), Some(PowerState::On));
    assert_eq!(s.counters.bad_frames, 0);
    assert!(
        !rig.sim.requests().iter().any(|r| r.starts_with("%2")),
        "{:?}",
        rig.sim.requests()
    );
    // Lamp-less: LAMP is not asked again by the polls.
    rig.sim.clear_requests();
    let poll = profile("generic-pjlink").timing.poll_interval;
    tokio::time::sleep(poll * 3).await;
    let asked = rig.sim.requests();
    assert!(asked.iter().any(|r| r == "%1POWR ?"), "{asked:?}");
    assert!(!asked.iter().any(|r| r == "%1LAMP ?"), "{asked:?}");
}

#[tokio::test(start_paused = true)]
async fn polling_follows_error_status_and_lamp_hours() {
    let mut rig = rig(SimConfig {
        power_on: true,
        lamp_hours: vec![100],
        ..SimConfig::default()
    })
    .await;
    let prof = profile("generic-pjlink");
    let poll = prof.timing.poll_interval;
    let h = rig.spawn(spec(&prof, &rig.sim, None));
    let mut rx = h.watch();
    wait_state(&mut rx, MINUTE, "ok", |s| s.health == Health::Ok).await;

    rig.sim.set_error_status(ErrorStatus {
        lamp: ErrorLevel::Error,
        temperature: ErrorLevel::Warning,
        ..ErrorStatus::default()
    });
    let t = Instant::now();
    let s = wait_state(&mut rx, MINUTE, "lamp fault", |s| has_fault(s, "lamp")).await;
    assert!(t.elapsed() <= poll, "seen after {:?}", t.elapsed());
    assert_eq!(s.health, Health::Faulted);
    assert!(has_fault(&s, "temperature"));

    rig.sim.set_error_status(ErrorStatus::default());
    let s = wait_state(&mut rx, MINUTE, "faults cleared", |s| s.faults.is_empty()).await;
    assert_eq!(s.health, Health::Ok);

    // Lamp hours move on the projector (they burn in tokio time, see the simulator's unit
    // tests); the next poll reports them.
    rig.sim.add_lamp_hours(25);
    let t = Instant::now();
    wait_state(&mut rx, MINUTE, "lamp hours", |s| {
        s.reading(&Point::lamp(1, Quantity::LampHours))
            .map(|r| r.value.clone())
            == Some(Value::Int(125))
    })
    .await;
    assert!(t.elapsed() <= poll, "seen after {:?}", t.elapsed());
}

#[tokio::test(start_paused = true)]
async fn power_on_goes_through_warm_up_while_busy() {
    let mut rig = rig(SimConfig {
        warm_up: Duration::from_secs(30),
        ..SimConfig::default()
    })
    .await;
    let prof = profile("generic-pjlink");
    let poll = prof.timing.poll_interval;
    let h = rig.spawn(spec(&prof, &rig.sim, None));
    let mut rx = h.watch();
    let s = wait_state(&mut rx, MINUTE, "ok", |s| s.health == Health::Ok).await;
    assert_eq!(power(&s), Some(PowerState::Off));
    // Standby: the projector refuses INPT with ERR3, which is "not now", never offline.
    let e = h
        .command(DeviceCommand::SelectInput { input: "31".into() })
        .await
        .into_result()
        .unwrap_err();
    assert!(matches!(e, CommandOutcome::Busy { .. }), "{e}");

    let t = Instant::now();
    h.command(DeviceCommand::Power { on: true })
        .await
        .into_result()
        .unwrap();
    let s = h.state();
    assert_eq!(power(&s), Some(PowerState::WarmingUp));
    assert!(s.busy);
    assert_eq!(s.health, Health::Busy);
    // Issue 8.4: busy, and when it will be ready: the rest of the warm-up it started.
    let busy = h
        .command(DeviceCommand::SelectInput { input: "31".into() })
        .await;
    let CommandOutcome::Busy {
        until: Some(until), ..
    } = busy
    else {
        panic!("busy until the warm-up ends: {busy:?}");
    };
    // Reckoned on the daemon's clock, from the answer just heard.
    let left = until - h.state().last_contact.expect("heard");
    assert!(
        left > chrono::Duration::seconds(25) && left <= chrono::Duration::seconds(30),
        "ready in {left}"
    );

    let s = wait_state(&mut rx, MINUTE, "on", |s| power(s) == Some(PowerState::On)).await;
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(30) && took <= Duration::from_secs(30) + poll,
        "on after {took:?}"
    );
    assert!(!s.busy);
    assert_eq!(s.health, Health::Ok);
    assert!(s.reachable);

    h.command(DeviceCommand::SelectInput { input: "32".into() })
        .await
        .into_result()
        .unwrap();
    h.command(DeviceCommand::AvMute { on: true })
        .await
        .into_result()
        .unwrap();
    let s = h.state();
    assert_eq!(
        value(&s, &Point::device(Quantity::Input)),
        Value::Text("32".into())
    );
    assert_eq!(
        value(&s, &Point::device(Quantity::AvMute)),
        Value::Bool(true)
    );
    // Not an input of this projector: ERR2, refused.
    let e = h
        .command(DeviceCommand::SelectInput { input: "59".into() })
        .await
        .into_result()
        .unwrap_err();
    assert!(matches!(e, CommandOutcome::Refused { .. }), "{e}");
    assert!(h.state().reachable);
}

#[tokio::test(start_paused = true)]
async fn power_on_while_cooling_is_busy_not_offline() {
    let mut rig = rig(SimConfig {
        power_on: true,
        cool_down: Duration::from_secs(60),
        ..SimConfig::default()
    })
    .await;
    let h = rig.spawn(spec(&profile("generic-pjlink"), &rig.sim, None));
    let mut rx = h.watch();
    wait_state(&mut rx, MINUTE, "ok", |s| s.health == Health::Ok).await;

    h.command(DeviceCommand::Power { on: false })
        .await
        .into_result()
        .unwrap();
    assert_eq!(power(&h.state()), Some(PowerState::CoolingDown));
    let e = h
        .command(DeviceCommand::Power { on: true })
        .await
        .into_result()
        .unwrap_err();
    assert!(matches!(e, CommandOutcome::Busy { .. }), "{e}");
    let s = h.state();
    assert!(s.reachable);
    assert_eq!(s.health, Health::Busy);

    // Through the rest of the cool-down the device is never unreachable.
    let end = Instant::now() + Duration::from_secs(75);
    while Instant::now() < end {
        let r = tokio::time::timeout_at(end, rx.changed()).await;
        assert_ne!(rx.borrow().health, Health::Unreachable);
        if r.is_err() {
            break;
        }
    }
    let s = h.state();
    assert_eq!(power(&s), Some(PowerState::Off));
    assert_eq!(s.health, Health::Ok);
    h.command(DeviceCommand::Power { on: true })
        .await
        .into_result()
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn projector_failure_err4_is_a_fault() {
    let mut rig = rig(SimConfig {
        power_on: true,
        ..SimConfig::default()
    })
    .await;
    let h = rig.spawn(spec(&profile("generic-pjlink"), &rig.sim, None));
    let mut rx = h.watch();
    wait_state(&mut rx, MINUTE, "ok", |s| s.health == Health::Ok).await;
    rig.sim.set_failure(true);
    let s = wait_state(&mut rx, MINUTE, "failure", |s| {
        has_fault(s, "projector_failure")
    })
    .await;
    assert_eq!(s.health, Health::Faulted);
    assert!(s.reachable);
    rig.sim.set_failure(false);
    wait_state(&mut rx, MINUTE, "recovered", |s| s.health == Health::Ok).await;
}

#[tokio::test(start_paused = true)]
async fn password_accepted_digest_only_on_first_command() {
    let mut rig = rig(SimConfig {
        password: Some("JBMIAProjectorLink".into()),
        ..SimConfig::default()
    })
    .await;
    let h = rig.spawn(spec(
        &profile("generic-pjlink"),
        &rig.sim,
        Some("JBMIAProjectorLink"),
    ));
    let s = wait_state(&mut h.watch(), MINUTE, "ok", |s| s.health == Health::Ok).await;
    assert!(s.faults.is_empty());
    let asked = rig.sim.requests();
    assert_eq!(rig.sim.connections(), 1, "persistent session");
    let is_digest = |r: &str| r.len() > 32 && r.as_bytes()[..32].iter().all(u8::is_ascii_hexdigit);
    assert!(is_digest(&asked[0]), "{asked:?}");
    assert!(asked[1..].iter().all(|r| r.starts_with('%')), "{asked:?}");
}

#[tokio::test(start_paused = true)]
async fn password_refused_is_an_auth_fault_never_ok() {
    for secret in [Some("wrong"), None] {
        let mut rig = rig(SimConfig {
            password: Some("JBMIAProjectorLink".into()),
            ..SimConfig::default()
        })
        .await;
        let h = rig.spawn(spec(&profile("generic-pjlink"), &rig.sim, secret));
        let mut rx = h.watch();
        let s = wait_state(&mut rx, MINUTE, "auth fault", |s| {
            has_fault(s, "auth_failed")
        })
        .await;
        assert_eq!(s.health, Health::Unreachable, "secret {secret:?}");
        // Minutes of retries later it is still refused and was never shown ok.
        let end = Instant::now() + 2 * MINUTE;
        loop {
            let r = tokio::time::timeout_at(end, rx.changed()).await;
            let s = rx.borrow_and_update().clone();
            assert!(!s.reachable && s.health != Health::Ok, "{s:#?}");
            assert!(s.readings.is_empty());
            if r.is_err() {
                break;
            }
        }
        assert!(has_fault(&h.state(), "auth_failed"));
        assert!(rig.sim.connections() >= 3, "it keeps retrying with backoff");
    }
}

#[tokio::test(start_paused = true)]
async fn per_exchange_projector_hangs_up_after_every_reply() {
    let prof = profile("panasonic-pjlink");
    assert!(prof.link.connect_per_command);
    let warn_at = prof.lamp.as_ref().expect("lamp spec").warn_at();
    let mut rig = rig(SimConfig {
        password: Some("panasonic".into()),
        close_after_reply: true,
        power_on: true,
        lamp_hours: vec![warn_at - 1],
        inputs: ["31", "3A", "3B"]
            .iter()
            .map(|c| InputCode::parse(c).unwrap())
            .collect(),
        ..SimConfig::default()
    })
    .await;
    let h = rig.spawn(spec(&prof, &rig.sim, Some("panasonic")));
    let mut rx = h.watch();
    let s = wait_state(&mut rx, MINUTE, "ok", |s| s.health == Health::Ok).await;
    assert_eq!(
        value(&s, &Point::device(Quantity::Inputs)),
        Value::Text("31 3A 3B".into())
    );
    let asked = rig.sim.requests();
    assert_eq!(
        rig.sim.connections(),
        asked.len(),
        "one connection per exchange: {asked:?}"
    );
    // Every connection authenticates its one command.
    assert!(
        asked
            .iter()
            .all(|r| r.len() > 32 && r.as_bytes()[32] == b'%'),
        "{asked:?}"
    );

    // A Class 2 input with a letter index goes out as %2INPT.
    h.command(DeviceCommand::SelectInput { input: "3b".into() })
        .await
        .into_result()
        .unwrap();
    assert_eq!(
        value(&h.state(), &Point::device(Quantity::Input)),
        Value::Text("3B".into())
    );
    assert!(rig.sim.requests().iter().any(|r| r.ends_with("%2INPT 3B")));

    // The lamp crosses the profile's warning threshold: lamp_life warning, degraded.
    rig.sim.add_lamp_hours(1);
    let s = wait_state(&mut rx, MINUTE, "lamp life", |s| has_fault(s, "lamp_life")).await;
    let f = s
        .faults
        .iter()
        .find(|f| f.fault.code == "lamp_life")
        .unwrap();
    assert_eq!(f.fault.severity, Severity::Warning);
    assert_eq!(f.fault.component.as_deref(), Some("lamp 1"));
    assert_eq!(s.health, Health::Degraded);
    assert!(s.reachable);
}

/// Projectors drop a session after ~30 s without traffic (protocols.md §1.1). Here it drops
/// it between every two polls: each poll reopens the session transparently and the device is
/// never reported unreachable.
#[tokio::test(start_paused = true)]
async fn idle_session_dropped_by_projector_is_reopened_transparently() {
    let prof = profile("generic-pjlink");
    let poll = prof.timing.poll_interval;
    let mut rig = rig(SimConfig {
        power_on: true,
        idle_timeout: Some(poll / 2),
        ..SimConfig::default()
    })
    .await;
    let h = rig.spawn(spec(&prof, &rig.sim, None));
    let mut rx = h.watch();
    wait_state(&mut rx, MINUTE, "ok", |s| s.health == Health::Ok).await;
    let end = Instant::now() + poll * 6;
    loop {
        let r = tokio::time::timeout_at(end, rx.changed()).await;
        let s = rx.borrow_and_update().clone();
        assert!(s.reachable && s.health == Health::Ok, "{s:#?}");
        if r.is_err() {
            break;
        }
    }
    assert!(
        rig.sim.connections() >= 6,
        "{} sessions",
        rig.sim.connections()
    );
    let s = h.state();
    assert_eq!(s.counters.reconnects, 0);
    assert_eq!(s.counters.timeouts, 0);
    let seen = s
        .reading(&Point::device(Quantity::Power))
        .unwrap()
        .observed_at;
    assert!(
        seen >= crate::support::t0() + chrono::Duration::from_std(poll * 5).unwrap(),
        "power last observed {seen}"
    );
}

#[tokio::test(start_paused = true)]
async fn garbage_and_oversized_replies_are_counted_and_survived() {
    let (rig, h, mut rx, poll) = projector_on_and_ok().await;

    rig.sim.inject_garbage(3);
    wait_state(&mut rx, MINUTE, "garbage counted", |s| {
        s.counters.bad_frames >= 3
    })
    .await;
    rig.sim.inject_oversized(2);
    wait_state(&mut rx, MINUTE, "oversized counted", |s| {
        s.counters.oversized_frames >= 2
    })
    .await;
    // A few clean polls later: exactly what was injected was counted, and all is well.
    tokio::time::sleep(poll * 3).await;
    let s = h.state();
    assert_eq!(s.counters.bad_frames, 3, "{:?}", s.counters);
    assert_eq!(s.counters.oversized_frames, 2, "{:?}", s.counters);
    assert!(s.reachable);
    assert_eq!(s.health, Health::Ok);
    assert_eq!(power(&s), Some(PowerState::On));
    let fresh = s
        .reading(&Point::device(Quantity::Power))
        .unwrap()
        .observed_at;
    assert!(fresh >= crate::support::t0() + chrono::Duration::from_std(poll).unwrap());

    // Lower-case replies are a quirk, not bad input.
    rig.sim.set_lower_case(true);
    tokio::time::sleep(poll * 2).await;
    let s = h.state();
    assert_eq!(s.counters.bad_frames, 3);
    assert_eq!(s.health, Health::Ok);
}

/// Issue 14.8: a fault the projector reported before it went unreachable stays listed, but
/// marked stale with the instant it was last confirmed, as readings are; it is current again
/// once the projector answers.
#[tokio::test(start_paused = true)]
async fn faults_of_an_unreachable_projector_are_stale_with_their_last_confirmation() {
    let (rig, h, mut rx, poll) = projector_on_and_ok().await;
    rig.sim.set_error_status(ErrorStatus {
        lamp: ErrorLevel::Error,
        ..ErrorStatus::default()
    });
    let first = wait_state(&mut rx, MINUTE, "lamp fault", |s| has_fault(s, "lamp")).await;
    let since = first.faults[0].since;
    // Polls keep confirming it.
    let s = wait_state(&mut rx, poll * 3, "confirmed again", |s| {
        s.faults.first().is_some_and(|f| f.confirmed_at > since)
    })
    .await;
    assert_eq!(s.faults[0].since, since, "first sighting kept");
    let view = serde_json::to_value(avwarden::api::views::DeviceDetail::from_state(
        &s,
        s.faults[0].confirmed_at,
    ))
    .unwrap();
    assert_eq!(view["faults"][0]["stale"], false, "{view}");

    rig.sim.stop().await;
    let s = wait_state(&mut rx, poll * 2, "unreachable", |s| !s.reachable).await;
    let f = s
        .faults
        .iter()
        .find(|f| f.fault.code == "lamp")
        .expect("kept while unreachable");
    assert!(f.stale(s.reachable));
    let confirmed = f.confirmed_at;
    assert!(confirmed > since && confirmed < s.link.since.unwrap() + chrono::Duration::seconds(1));
    let view = serde_json::to_value(avwarden::api::views::DeviceDetail::from_state(
        &s, confirmed,
    ))
    .unwrap();
    let vf = &view["faults"][0];
    assert_eq!(vf["code"], "lamp", "{view}");
    assert_eq!(vf["stale"], true, "{view}");
    assert_eq!(
        vf["confirmed_at"],
        serde_json::to_value(confirmed).unwrap(),
        "{view}"
    );
    // Minutes of retries later it still carries its last confirmation, not a fresh one.
    tokio::time::sleep(Duration::from_secs(120)).await;
    let later = h.state();
    let f = later
        .faults
        .iter()
        .find(|f| f.fault.code == "lamp")
        .unwrap();
    assert_eq!(f.confirmed_at, confirmed);
}

/// Issue 16.4: an impostor on the projector's port that answers every connect with an
/// endless line. Each session ends at the first oversized frame (counted), and the reconnects
/// follow a backoff that grows while it keeps misbehaving: it never costs a core.
#[tokio::test(start_paused = true)]
async fn an_endless_line_impostor_is_dropped_at_once_and_retried_ever_more_slowly() {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, mut connects) = tokio::sync::mpsc::unbounded_channel();
    let server = crate::support::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let _ = tx.send(Instant::now());
            crate::support::spawn(async move {
                let chunk = vec![b'A'; 4096];
                while s.write_all(&chunk).await.is_ok() {}
            });
        }
    });
    let prof = profile("generic-pjlink");
    let mut spec = DeviceSpec::new(
        "proj-1",
        "room-a",
        prof.clone(),
        LinkSpec::Tcp(TcpSpec::new("127.0.0.1", port)),
    );
    spec.backoff_min = Duration::from_secs(1);
    spec.backoff_max = Duration::from_secs(16);
    let cancel = CancellationToken::new();
    let mut fleet = Fleet::new(bus(), clock(), TaskTracker::new(), cancel.clone());
    let h = fleet.spawn_device(spec).unwrap();
    let mut at = Vec::new();
    for _ in 0..6 {
        at.push(connects.recv().await.unwrap());
    }
    let gaps: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
    for w in gaps.windows(2) {
        assert!(w[1] >= w[0], "the backoff never shrinks: {gaps:?}");
    }
    assert!(
        gaps[gaps.len() - 1] >= gaps[0] * 4,
        "the backoff grows: {gaps:?}"
    );
    let s = h.state();
    assert!(!s.contacted, "never taken for a projector");
    assert!(
        s.counters.oversized_frames >= 5,
        "each session ended at its oversized frame: {:?}",
        s.counters
    );
    cancel.cancel();
    server.abort();
}

#[tokio::test(start_paused = true)]
async fn killed_projector_goes_unreachable_then_back_after_full_read_with_backoff() {
    let mut rig = rig(SimConfig {
        power_on: true,
        ..SimConfig::default()
    })
    .await;
    let prof = profile("generic-pjlink");
    let poll = prof.timing.poll_interval;
    let (min, max) = (Duration::from_secs(2), Duration::from_secs(16));
    let mut spec = spec(&prof, &rig.sim, None);
    spec.backoff_min = min;
    spec.backoff_max = max;
    let h = rig.spawn(spec);
    let mut rx = h.watch();
    wait_state(&mut rx, MINUTE, "ok", |s| s.health == Health::Ok).await;
    let before = h.state();
    let power_seen_at = before
        .reading(&Point::device(Quantity::Power))
        .unwrap()
        .observed_at;

    // Kill the projector.
    let stopped = Instant::now();
    rig.sim.stop().await;
    let s = wait_state(&mut rx, poll * 2, "unreachable", |s| !s.reachable).await;
    assert!(stopped.elapsed() <= poll * 2);
    assert_eq!(s.health, Health::Unreachable);
    assert!(s.readings_stale());
    // Readings are kept, marked stale by `reachable == false`; power is never shown off.
    assert_eq!(power(&s), Some(PowerState::On));
    assert_eq!(s.identity, before.identity);
    assert_eq!(s.link.reconnect_attempts, 1);

    // Each failed reconnect bumps `reconnect_attempts`; note when.
    let mut failures = vec![Instant::now()];
    while failures.len() < 5 {
        tokio::time::timeout(MINUTE, rx.changed())
            .await
            .expect("a reconnect attempt within a minute")
            .unwrap();
        let s = rx.borrow_and_update().clone();
        assert!(!s.reachable);
        assert_eq!(power(&s), Some(PowerState::On), "never shown as off");
        assert!(
            s.reading(&Point::device(Quantity::Power))
                .unwrap()
                .observed_at
                <= power_seen_at + chrono::Duration::from_std(poll).unwrap()
        );
        if s.link.reconnect_attempts as usize > failures.len() {
            assert_eq!(s.link.reconnect_attempts as usize, failures.len() + 1);
            failures.push(Instant::now());
        }
    }

    // Meanwhile the projector changed; bring it back on the same port.
    rig.sim.set_name("Room A (serviced)");
    rig.sim.clear_requests();
    let before_restart = rig.sim.connections();
    rig.sim.restart().await.expect("same port again");
    let s = wait_state(&mut rx, MINUTE, "reachable again", |s| s.reachable).await;
    // Reported reachable only with the full re-read done: the new name is already there.
    assert_eq!(s.identity.name.as_deref(), Some("Room A (serviced)"));
    assert_eq!(s.health, Health::Ok);
    let asked = rig.sim.requests();
    for cmd in FULL_READ_C2 {
        assert!(
            asked.iter().any(|r| r == cmd),
            "{cmd} not re-read: {asked:?}"
        );
    }
    let reconnected = rig.sim.connection_instants()[before_restart];

    // Delays between attempts follow the jittered exponential backoff: attempt k waits a
    // uniform delay in [b/2, b] with b = min * 2^(k-1), capped at max.
    let mut instants = failures.clone();
    instants.push(reconnected);
    println!(
        "reconnect delays: {:?}",
        instants.windows(2).map(|p| p[1] - p[0]).collect::<Vec<_>>()
    );
    // A refused connect completes asynchronously when the kernel is busy; with the settle
    // pump its failure is seen at most one step later.
    let tick = crate::support::SETTLE_STEP + Duration::from_millis(2);
    for (k, pair) in instants.windows(2).enumerate() {
        let base = (min * 2u32.pow(k as u32)).min(max);
        let waited = pair[1] - pair[0];
        assert!(
            waited + tick >= base / 2 && waited <= base + tick,
            "attempt {}: waited {waited:?}, base {base:?}",
            k + 2
        );
    }
    assert_eq!(h.state().link.reconnect_attempts, 0);
    assert_eq!(h.state().counters.reconnects, 1);
}

#[tokio::test(start_paused = true)]
async fn simulator_entry_point_serves_from_site_config_options() {
    let options: toml::Table = toml::from_str(
        r#"
password = "pw"
class = 2
warm_up_secs = 5
cool_down_secs = 5
lamp_hours = [321]
close_after_reply = true
lower_case = true
manufacturer = "Maker"
model = "M-1"
serial = "S-1"
inputs = ["11", "31"]
power_on = true
"#,
    )
    .unwrap();
    let cancel = CancellationToken::new();
    crate::support::spawn_settle_pump(cancel.clone());
    let prof = profile("panasonic-pjlink");
    let ep = avwarden::sim::spawn(
        &prof,
        &options,
        avwarden::sim::SimBind::Tcp("127.0.0.1:0".parse().unwrap()),
        clock(),
        cancel.clone(),
    )
    .await
    .expect("sim starts");
    let avwarden::sim::SimEndpoint::Tcp(addr) = ep else {
        panic!("{ep}")
    };
    let mut fleet = Fleet::new(bus(), clock(), TaskTracker::new(), cancel.clone());
    let mut tcp = TcpSpec::new("127.0.0.1", addr.port());
    tcp.connect_per_command = true;
    let mut spec = DeviceSpec::new("p", "r", prof, LinkSpec::Tcp(tcp));
    spec.secret = Some("pw".into());
    let h = fleet.spawn_device(spec).unwrap();
    let s = wait_state(&mut h.watch(), MINUTE, "ok", |s| s.health == Health::Ok).await;
    assert_eq!(
        value(&s, &Point::lamp(1, Quantity::LampHours)),
        Value::Int(321)
    );
    assert_eq!(s.identity.manufacturer.as_deref(), Some("Maker"));
    assert_eq!(s.identity.serial.as_deref(), Some("S-1"));
    assert_eq!(
        value(&s, &Point::device(Quantity::Inputs)),
        Value::Text("11 31".into())
    );
    cancel.cancel();

    let bad: toml::Table = toml::from_str("colour = \"red\"").unwrap();
    let e = avwarden::sim::spawn(
        &profile("generic-pjlink"),
        &bad,
        avwarden::sim::SimBind::Tcp("127.0.0.1:0".parse().unwrap()),
        clock(),
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("colour"), "{e}");
}

/// Our simulator answers a third-party PJLink client: aiopjlink2 (PyPI), run by the Python the
/// lead's CI provides in `AVWARDEN_PYTHON`.
#[tokio::test]
async fn interop_aiopjlink_client_talks_to_our_simulator() {
    let Some(python) = crate::support::python() else {
        return;
    };
    let cancel = CancellationToken::new();
    let sim = PjlinkSim::start(
        SimConfig {
            password: Some("JBMIAProjectorLink".into()),
            lamp_hours: vec![12345, 678],
            name: "Room A".into(),
            manufacturer: "Panasonic".into(),
            inputs: ["11", "12", "31", "32"]
                .iter()
                .map(|c| InputCode::parse(c).unwrap())
                .collect(),
            // aiopjlink opens one connection per command, like many projectors expect.
            close_after_reply: true,
            ..SimConfig::default()
        },
        "127.0.0.1:0".parse().unwrap(),
        cancel.clone(),
    )
    .await
    .unwrap();
    sim.set_error_status(ErrorStatus {
        filter: ErrorLevel::Error,
        ..ErrorStatus::default()
    });
    let script = crate::support::data("pjlink_client.py");
    let child = tokio::process::Command::new(python)
        .arg(script)
        .arg("127.0.0.1")
        .arg(sim.addr().port().to_string())
        .arg("JBMIAProjectorLink")
        .kill_on_drop(true)
        .output();
    // Only bounds a hang; the script needs well under a second.
    let out = tokio::time::timeout(Duration::from_secs(120), child)
        .await
        .expect("python client finished")
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "client failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    println!("{stdout}");
    assert!(
        stdout.contains("pjlink client: all checks passed"),
        "{stdout}"
    );
    // The client's power-on reached the projector, and its wrong-password try was refused.
    assert_eq!(sim.power(), avwarden::codec::pjlink::PowerStatus::WarmUp);
    cancel.cancel();
}

/// Issue 8.4: `wait_for` returns when the projector reports `on` after its warm-up (paused
/// time), and gives up at its deadline when the warm-up never ends in time.
#[tokio::test(start_paused = true)]
async fn wait_for_returns_when_warm_up_ends_and_times_out_when_it_does_not() {
    for (warm_up, deadline, done) in [
        (Duration::from_secs(30), Duration::from_secs(60), true),
        (Duration::from_secs(600), Duration::from_secs(60), false),
    ] {
        let mut rig = rig(SimConfig {
            warm_up,
            ..SimConfig::default()
        })
        .await;
        let prof = profile("generic-pjlink");
        let h = rig.spawn(spec(&prof, &rig.sim, None));
        h.wait_for(|s| s.health == Health::Ok, MINUTE)
            .await
            .expect("up");
        let on = h.command(DeviceCommand::Power { on: true }).await;
        assert!(on.is_done(), "{on:?}");
        let t = Instant::now();
        let r = h
            .wait_for(|s| power(s) == Some(PowerState::On), deadline)
            .await;
        match (done, r) {
            (true, Ok(s)) => {
                assert!(!s.busy);
                assert!(t.elapsed() >= warm_up, "{:?}", t.elapsed());
            }
            (false, Err(e)) => {
                assert_eq!(e.waited, deadline);
                assert_eq!(t.elapsed(), deadline);
                assert_eq!(power(&h.state()), Some(PowerState::WarmingUp));
            }
            (_, r) => panic!("warm-up {warm_up:?}: {r:?}"),
        }
    }
}

/// Every scheduled poll is observed in `avwarden_poll_lag_seconds` (the fleet benchmark's poll
/// lag); under paused time a tick is never late, so the polls land in the lowest bucket.
/// The histograms are process-wide and other tests poll too: only growth is checked.
#[tokio::test(start_paused = true)]
async fn each_scheduled_poll_is_counted_in_the_lag_histogram() {
    let mut rig = rig(SimConfig {
        power_on: true,
        ..SimConfig::default()
    })
    .await;
    let h = rig.spawn(spec(&profile("generic-pjlink"), &rig.sim, None));
    wait_state(&mut h.watch(), MINUTE, "up", |s| s.reachable).await;
    let lags = avwarden::metrics::poll_lags().family("pjlink");
    let before = lags.count();
    rig.sim.clear_requests();
    let poll = profile("generic-pjlink").timing.poll_interval;
    tokio::time::sleep(poll * 3 + poll / 2).await;
    let polls = rig
        .sim
        .requests()
        .iter()
        .filter(|r| *r == "%1POWR ?")
        .count() as u64;
    assert!(polls >= 3, "{:?}", rig.sim.requests());
    assert!(
        lags.count() >= before + polls,
        "{} < {before} + {polls}",
        lags.count()
    );
    let mut out = avwarden::metrics::Exposition::new();
    avwarden::metrics::poll_lags().render(&mut out);
    let text = out.finish();
    assert!(
        text.contains("avwarden_poll_lag_seconds_bucket{family=\"pjlink\",le=\"0.0005\"}"),
        "{text}"
    );
}
