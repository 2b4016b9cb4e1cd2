//! The pre-meeting self-test against simulated devices over real loopback sockets, in paused
//! tokio time: a room of a PJLink projector, a Shure ULX-D receiver, a Q-SYS Core and a Modbus
//! room controller, tested for bookings with different needs.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use avwarden::config::{RoomPreset, SelfTestSettings};
use avwarden::model::{
    Booking, BookingId, BookingSource, BookingStatus, Health, Needs, Point, Quantity, Readiness,
    RoomId, TestKind, Value,
};
use avwarden::runtime::{DeviceHandle, DeviceSpec, Fleet};
use avwarden::schedule::history::{self, History};
use avwarden::schedule::selftest::{self, SelfTestContext, SelfTestRun};
use avwarden::sim::modbus::RoomController;
use avwarden::sim::pjlink::{PjlinkSim, SimConfig};
use avwarden::sim::qsys::{self, QsysSim, QsysSimConfig};
use avwarden::sim::shure::{Family, ShureSim, ShureSimConfig};
use avwarden::sim::{SimBind, SimEndpoint};
use avwarden::transport::tcp::TcpSpec;
use avwarden::transport::LinkSpec;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::support::{bus, clock, profile, spawn_settle_pump, wait_state};

const ROOM: &str = "r1";

const DSP_SETTINGS: &str = r#"
[[zones]]
id = "main"
level_control = "MainGain"
mute_control = "MainMute"
meter_control = "MainMeter"
max_db = 0
"#;

struct Site {
    projector: PjlinkSim,
    dsp: QsysSim,
    hvac: RoomController,
    fleet: Fleet,
    clock: avwarden::clock::Clock,
    cancel: CancellationToken,
    history: Arc<Mutex<History>>,
}

impl Drop for Site {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn tcp(addr: std::net::SocketAddr) -> LinkSpec {
    LinkSpec::Tcp(TcpSpec::new("127.0.0.1", addr.port()))
}

fn loopback() -> SimBind {
    SimBind::Tcp("127.0.0.1:0".parse().unwrap())
}

/// A room of four simulated devices under the runtime, each waited for until it is `ok`.
async fn site(projector: SimConfig, mics: ShureSimConfig) -> Site {
    let cancel = CancellationToken::new();
    spawn_settle_pump(cancel.clone());
    let projector = PjlinkSim::start(projector, "127.0.0.1:0".parse().unwrap(), cancel.clone())
        .await
        .expect("projector simulator listens");
    let mics = ShureSim::start(mics, "127.0.0.1:0".parse().unwrap(), cancel.clone())
        .await
        .expect("receiver simulator listens");
    let dsp = qsys::spawn(QsysSimConfig::default(), loopback(), cancel.clone())
        .await
        .expect("core simulator listens");
    let hvac_profile = profile("avwarden-sim-modbus");
    let (ep, hvac) = avwarden::sim::modbus::spawn_from_config(
        &hvac_profile,
        &toml::from_str("temperature_c = 23.5\nsetpoint_c = 21.0\nmode = \"cool\"\npower = true")
            .unwrap(),
        loopback(),
        clock(),
        cancel.clone(),
    )
    .await
    .expect("room controller simulator listens");
    let SimEndpoint::Tcp(hvac_addr) = ep else {
        panic!("{ep}")
    };
    let clock = clock();
    let mut fleet = Fleet::new(bus(), clock, TaskTracker::new(), cancel.clone());
    let specs = [
        (
            DeviceSpec::new(
                "proj",
                ROOM,
                profile("generic-pjlink"),
                tcp(projector.addr()),
            ),
            "",
        ),
        (
            DeviceSpec::new("rx", ROOM, profile("shure-ulxd"), tcp(mics.addr())),
            "",
        ),
        (
            DeviceSpec::new("dsp", ROOM, profile("qsys-core"), tcp(dsp.addr())),
            DSP_SETTINGS,
        ),
        (
            DeviceSpec::new("hvac", ROOM, hvac_profile, tcp(hvac_addr)),
            "",
        ),
    ];
    for (mut spec, settings) in specs {
        spec.settings = toml::from_str(settings).unwrap();
        let h = fleet.spawn_device(spec).expect("device spawns");
        wait_state(&mut h.watch(), Duration::from_secs(60), "device ok", |s| {
            s.health == Health::Ok
        })
        .await;
    }
    Site {
        projector,
        dsp,
        hvac,
        fleet,
        clock,
        cancel,
        history: Arc::new(Mutex::new(History::new())),
    }
}

impl Site {
    fn handles(&self) -> Vec<DeviceHandle> {
        self.fleet.room(&RoomId::new(ROOM))
    }

    fn context(&self, settings: SelfTestSettings) -> SelfTestContext {
        SelfTestContext {
            settings,
            presets: vec![RoomPreset {
                name: "small".into(),
                max_attendees: 12,
                levels: [("main".to_owned(), -20.0)].into_iter().collect(),
            }],
            history: self.history.clone(),
            time_zone: chrono_tz::Europe::Berlin,
            clock: self.clock,
        }
    }

    fn booking(&self, needs: Needs) -> Booking {
        let start = self.clock.now() + chrono::Duration::minutes(60);
        Booking {
            id: BookingId::new("api-1"),
            room: RoomId::new(ROOM),
            title: "Board meeting".into(),
            organiser: None,
            department: None,
            start,
            end: start + chrono::Duration::minutes(60),
            attendees: 8,
            needs,
            important: false,
            confidential: false,
            status: BookingStatus::Confirmed,
            source: BookingSource::Api,
            source_uid: None,
        }
    }

    async fn run(&self, booking: &Booking) -> SelfTestRun {
        selftest::run(
            &RoomId::new(ROOM),
            &self.handles(),
            Some(booking),
            TestKind::SelfTest,
            &self.context(SelfTestSettings::default()),
        )
        .await
    }
}

fn everything() -> Needs {
    Needs {
        projection: true,
        wireless_mics: 2,
        speech_reinforcement: true,
        hvac: true,
        ..Needs::default()
    }
}

fn codes(run: &SelfTestRun) -> Vec<(String, Option<String>)> {
    run.verdict
        .reasons
        .iter()
        .map(|r| (r.code.clone(), r.device.as_ref().map(|d| d.to_string())))
        .collect()
}

fn steps(run: &SelfTestRun) -> Vec<(String, String, bool)> {
    run.steps
        .iter()
        .map(|s| (s.device.to_string(), s.step.clone(), s.ok))
        .collect()
}

/// Issue 9.5: a room whose devices all work is ready for a booking that needs all of them;
/// the projector was powered on, waited for and sent back to standby (the meeting is an hour
/// away), the setpoint read back and the preset applied.
#[tokio::test(start_paused = true)]
async fn a_working_room_is_ready() {
    let s = site(
        SimConfig::default(),
        ShureSimConfig::new(Family::Ulxd, 2, 300),
    )
    .await;
    let b = s.booking(everything());
    let run = s.run(&b).await;
    assert_eq!(
        run.verdict.readiness,
        Readiness::Ready,
        "{:#?}\n{:#?}",
        run.verdict,
        run.steps
    );
    assert_eq!(run.verdict.booking, Some(b.id.clone()));
    let steps = steps(&run);
    for want in [
        ("proj", "power_on"),
        ("proj", "warm_up"),
        ("proj", "standby"),
        ("hvac", "set_setpoint"),
        ("hvac", "read_back"),
        ("dsp", "apply_preset"),
    ] {
        assert!(
            steps
                .iter()
                .any(|(d, st, ok)| (d.as_str(), st.as_str()) == want && *ok),
            "{want:?} in {steps:#?}"
        );
    }
    // The simulator warms up in 30 s: the test cost about that much lamp time.
    assert!(
        run.lamp_hours_spent > 0.0 && run.lamp_hours_spent < 0.05,
        "{}",
        run.lamp_hours_spent
    );
    assert_eq!(s.hvac.controls().setpoint_c, 23.0);
    assert_eq!(s.dsp.control("MainGain"), Some(-20.0));
}

/// Issue 9.5: a transmitter draining twice as fast as real time with 100 minutes left cannot
/// last an hour's meeting an hour from now; the verdict names the channel, the minute it runs
/// out (from the drain observed by the history tracker, not the current value alone) and the
/// remedy from playbook.toml.
#[tokio::test(start_paused = true)]
async fn a_battery_that_will_not_last_is_not_ready_with_the_minute_it_runs_out() {
    let mut mics = ShureSimConfig::new(Family::Ulxd, 2, 300);
    mics.drain = 2.0;
    mics.transmitters[1].minutes = 100;
    mics.transmitters[0].minutes = 600;
    let s = site(SimConfig::default(), mics).await;
    let t_start = s.clock.now();
    let rx = s.fleet.get("rx").expect("receiver").clone();
    let tracker = crate::support::spawn(history::track(
        s.handles(),
        s.history.clone(),
        s.cancel.clone(),
    ));
    // Twenty minutes of drain observed: 100 → 60 at twice real time.
    let battery = Point::channel(2, Quantity::BatteryMinutes);
    wait_state(
        &mut rx.watch(),
        Duration::from_secs(3600),
        "channel 2 at 60 minutes",
        |st| st.value(&battery).and_then(Value::as_f64) <= Some(60.0),
    )
    .await;
    let b = s.booking(Needs {
        wireless_mics: 2,
        ..Needs::default()
    });
    let run = s.run(&b).await;
    assert_eq!(
        run.verdict.readiness,
        Readiness::NotReady,
        "{:#?}",
        run.verdict
    );
    let r = run
        .verdict
        .reasons
        .iter()
        .find(|r| r.code == "battery_will_not_last")
        .unwrap_or_else(|| panic!("{:#?}", run.verdict));
    assert_eq!(r.device.as_ref().map(|d| d.as_str()), Some("rx"));
    assert_eq!(r.point.as_deref(), Some("ch.2.battery_minutes"));
    let runs_out = r.runs_out_at.expect("runs_out_at");
    // 100 minutes at twice real time: 50 minutes after the simulator started (its estimate
    // moves in whole minutes, so within a minute either side), on a whole minute.
    let expected = t_start + chrono::Duration::minutes(50);
    assert!(
        (runs_out - expected).num_seconds().abs() <= 90,
        "runs out at {runs_out}, expected about {expected}"
    );
    assert_eq!(runs_out.timestamp() % 60, 0);
    let local = runs_out
        .with_timezone(&chrono_tz::Europe::Berlin)
        .format("%H:%M")
        .to_string();
    let remedy = r.remedy.as_deref().expect("remedy");
    assert!(
        remedy.starts_with(&format!(
            "replace the batteries of mic 2 on rx (runs out at {local}, 0 min left at the start)"
        )),
        "{remedy}"
    );
    // Channel 1 lasts: one reason only.
    assert_eq!(
        codes(&run),
        vec![("battery_will_not_last".into(), Some("rx".into()))]
    );
    s.cancel.cancel();
    tracker.await.expect("tracker ends on cancel");
}

/// Issue 9.5: a lamp fault fails a booking that needs projection and does not touch one that
/// does not (the projector is not even tested).
#[tokio::test(start_paused = true)]
async fn a_lamp_fault_matters_only_to_projection() {
    let s = site(
        SimConfig {
            power_on: true,
            ..SimConfig::default()
        },
        ShureSimConfig::new(Family::Ulxd, 2, 300),
    )
    .await;
    s.projector
        .set_error_status(avwarden::codec::pjlink::ErrorStatus {
            lamp: avwarden::codec::pjlink::ErrorLevel::Error,
            ..Default::default()
        });
    let proj = s.fleet.get("proj").unwrap().clone();
    wait_state(
        &mut proj.watch(),
        Duration::from_secs(60),
        "lamp fault",
        |st| st.faults.iter().any(|f| f.fault.code == "lamp"),
    )
    .await;

    let with = s.run(&s.booking(everything())).await;
    assert_eq!(with.verdict.readiness, Readiness::NotReady);
    let lamp = with
        .verdict
        .reasons
        .iter()
        .find(|r| r.code == "lamp_fault")
        .unwrap_or_else(|| panic!("{:#?}", with.verdict));
    assert_eq!(lamp.device.as_ref().map(|d| d.as_str()), Some("proj"));
    assert!(
        lamp.remedy.as_deref().unwrap_or("").contains("replace it"),
        "{lamp:?}"
    );

    let without = s
        .run(&s.booking(Needs {
            wireless_mics: 2,
            hvac: true,
            ..Needs::default()
        }))
        .await;
    assert_eq!(
        without.verdict.readiness,
        Readiness::Ready,
        "{:#?}",
        without.verdict
    );
    assert!(without.steps.iter().all(|st| st.device.as_str() != "proj"));
}

/// Issue 9.5: the setpoint is written and read back; a whole-degree unit would be waited for
/// at the value it holds.
#[tokio::test(start_paused = true)]
async fn the_setpoint_is_written_and_read_back() {
    let s = site(
        SimConfig::default(),
        ShureSimConfig::new(Family::Ulxd, 2, 300),
    )
    .await;
    assert_eq!(s.hvac.controls().setpoint_c, 21.0);
    let run = s
        .run(&s.booking(Needs {
            hvac: true,
            ..Needs::default()
        }))
        .await;
    assert_eq!(
        run.verdict.readiness,
        Readiness::Ready,
        "{:#?}",
        run.verdict
    );
    assert_eq!(
        steps(&run),
        vec![
            ("hvac".into(), "set_setpoint".into(), true),
            ("hvac".into(), "read_back".into(), true),
        ]
    );
    assert_eq!(s.hvac.controls().setpoint_c, 23.0);
    let hvac = s.fleet.get("hvac").unwrap();
    assert_eq!(
        hvac.state().value(&Point::device(Quantity::Setpoint)),
        Some(&Value::Float(23.0))
    );
}

/// Issue 9.5: a projector that accepts the connection and never answers is `unreachable`,
/// and the test ends within the device timeout instead of waiting for it.
#[tokio::test(start_paused = true)]
async fn a_device_that_does_not_answer_is_unreachable_within_the_timeout() {
    let cancel = CancellationToken::new();
    spawn_settle_pump(cancel.clone());
    let sim = PjlinkSim::start(
        SimConfig::default(),
        "127.0.0.1:0".parse().unwrap(),
        cancel.clone(),
    )
    .await
    .unwrap();
    sim.set_silent(true);
    let clock = clock();
    let mut fleet = Fleet::new(bus(), clock, TaskTracker::new(), cancel.clone());
    let h = fleet
        .spawn_device(DeviceSpec::new(
            "proj",
            ROOM,
            profile("generic-pjlink"),
            tcp(sim.addr()),
        ))
        .unwrap();
    let settings = SelfTestSettings {
        device_timeout: Duration::from_secs(10),
        ..SelfTestSettings::default()
    };
    let ctx = SelfTestContext {
        settings,
        presets: Vec::new(),
        history: Arc::new(Mutex::new(History::new())),
        time_zone: chrono_tz::UTC,
        clock,
    };
    let start = clock.now() + chrono::Duration::minutes(60);
    let booking = Booking {
        id: BookingId::new("api-2"),
        room: RoomId::new(ROOM),
        title: "t".into(),
        organiser: None,
        department: None,
        start,
        end: start + chrono::Duration::minutes(30),
        attendees: 4,
        needs: Needs {
            projection: true,
            ..Needs::default()
        },
        important: false,
        confidential: false,
        status: BookingStatus::Confirmed,
        source: BookingSource::Api,
        source_uid: None,
    };
    let began = clock.now();
    let run = selftest::run(
        &RoomId::new(ROOM),
        &[h],
        Some(&booking),
        TestKind::Recheck,
        &ctx,
    )
    .await;
    assert!(clock.now() - began <= chrono::Duration::seconds(10));
    assert_eq!(run.verdict.readiness, Readiness::NotReady);
    let r = &run.verdict.reasons[0];
    assert_eq!(
        (r.code.as_str(), r.device.as_ref().map(|d| d.as_str())),
        ("unreachable", Some("proj"))
    );
    assert!(r
        .remedy
        .as_deref()
        .unwrap_or("")
        .contains("proj does not answer"));
    cancel.cancel();
}

/// A booking that needs loudspeakers in a room without a DSP is `not_ready` with
/// `missing_equipment`, not silently ready.
#[tokio::test(start_paused = true)]
async fn a_need_no_device_serves_is_missing_equipment() {
    let s = site(
        SimConfig::default(),
        ShureSimConfig::new(Family::Ulxd, 2, 300),
    )
    .await;
    let handles: Vec<DeviceHandle> = s
        .handles()
        .into_iter()
        .filter(|h| h.id.as_str() != "dsp")
        .collect();
    let b = s.booking(Needs {
        speech_reinforcement: true,
        ..Needs::default()
    });
    let run = selftest::run(
        &RoomId::new(ROOM),
        &handles,
        Some(&b),
        TestKind::Manual,
        &s.context(SelfTestSettings::default()),
    )
    .await;
    assert_eq!(run.verdict.readiness, Readiness::NotReady);
    assert_eq!(codes(&run), vec![("missing_equipment".into(), None)]);
    assert!(run.steps.is_empty());
}

const CONFIG: &str = r#"
[site]
name = "t"
time_zone = "Europe/Berlin"

[selftest]
battery_margin_minutes = 20
setpoint_c = 22.5
concurrency = 4
device_timeout_secs = 120

[[rooms]]
id = "r1"
capacity = 20
[[rooms.presets]]
name = "large"
max_attendees = 20
levels = { main = -12.0 }
[[rooms.presets]]
name = "small"
max_attendees = 8
levels = { main = -20.0, ceiling = -24.0 }
"#;

/// `[selftest]` and `[[rooms.presets]]` are read with their defaults; presets come sorted and
/// the one for a meeting is the smallest that holds it.
#[test]
fn selftest_settings_and_room_presets_are_read() {
    let cfg = avwarden::config::parse_site(
        CONFIG,
        "site.toml",
        std::path::Path::new("."),
        &avwarden::config::Env::fixed(&[]),
    )
    .expect("valid");
    let st = &cfg.selftest;
    assert_eq!(st.battery_margin_minutes, 20);
    assert_eq!(st.setpoint_c, 22.5);
    assert_eq!((st.comfort_min_c, st.comfort_max_c), (22.0, 24.0));
    assert_eq!(st.concurrency, 4);
    assert_eq!(st.device_timeout, Duration::from_secs(120));
    let room = &cfg.rooms[0];
    let names: Vec<&str> = room.presets.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, vec!["small", "large"]);
    assert_eq!(room.preset_for(5).map(|p| p.name.as_str()), Some("small"));
    assert_eq!(room.preset_for(12).map(|p| p.name.as_str()), Some("large"));
    assert_eq!(room.preset_for(50).map(|p| p.name.as_str()), Some("large"));
}

/// Every problem of `[selftest]`, the presets and a site's playbook file, each with its file,
/// line:column and key path.
#[test]
fn selftest_problems_are_located() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("playbook.toml"),
        "[remedies]\nunreachable = \"ring {devise}\"\n",
    )
    .unwrap();
    let text = r#"[site]
name = "t"
time_zone = "Europe/Berlin"

[selftest]
battery_margin_minute = 20
setpoint_c = 40
concurrency = 0
playbook = "playbook.toml"

[[rooms]]
id = "r1"
capacity = 20
[[rooms.presets]]
max_attendees = 8
levels = { main = 99.0 }
[[rooms.presets]]
max_attendees = 8
levels = { main = -20.0 }
[[rooms.presets]]
levels = { main = -20.0 }
"#;
    let err = avwarden::config::parse_site(
        text,
        "site.toml",
        dir.path(),
        &avwarden::config::Env::fixed(&[]),
    )
    .expect_err("invalid");
    let shown: Vec<String> = err
        .problems
        .iter()
        .map(|p| {
            p.to_string()
                .replace(&dir.path().display().to_string(), "DIR")
        })
        .collect();
    let want = [
        "site.toml:6:1: selftest.battery_margin_minute: unknown key (did you mean \"battery_margin_minutes\"?)",
        "site.toml:7:1: selftest.setpoint_c: must be between 10 and 35 °C",
        "site.toml:8:1: selftest.concurrency: must be between 1 and 256",
        "site.toml:16:12: rooms[0].presets[0].levels.main: must be between -100 and 20 dB",
        "site.toml:18:1: rooms[0].presets[1].max_attendees: preset \"up to 8\" is for 8 attendees already",
        "site.toml:20:1: rooms[0].presets[2]: missing key max_attendees (the largest meeting it is for)",
        "DIR/playbook.toml:2:15: remedies.unreachable: unknown placeholder {devise} (this code knows {device}, {room}, {need}, {point})",
    ];
    assert_eq!(shown, want, "{shown:#?}");
}

/// Issue 9's benchmark (a measurement, not a timed assertion): a room's self-test against the
/// slowest device's own protocol time. The projector's power-on to `on` (warm-up and the poll
/// that sees it) is measured alone first, then the whole self-test of the room for a booking
/// that needs every device; both in paused time, so the figures are the protocol's and the
/// runner's waiting, not this machine's speed. Printed for docs/benchmarks.md
/// (`cargo test --test it self_test_wall_time -- --nocapture`).
#[tokio::test(start_paused = true)]
async fn self_test_wall_time_against_the_slowest_device() {
    use avwarden::model::{DeviceCommand, PowerState};
    let s = site(
        SimConfig {
            cool_down: Duration::from_secs(5),
            ..SimConfig::default()
        },
        ShureSimConfig::new(Family::Ulxd, 2, 300),
    )
    .await;
    let proj = s.fleet.get("proj").expect("projector").clone();
    let is = |want: PowerState| {
        move |st: &avwarden::model::DeviceState| {
            st.value(&Point::device(Quantity::Power)) == Some(&Value::Power(want))
        }
    };
    let t = tokio::time::Instant::now();
    assert!(proj
        .command(DeviceCommand::Power { on: true })
        .await
        .is_done());
    proj.wait_for(is(PowerState::On), Duration::from_secs(300))
        .await
        .expect("on");
    let alone = t.elapsed();
    assert!(proj
        .command(DeviceCommand::Power { on: false })
        .await
        .is_done());
    proj.wait_for(is(PowerState::Off), Duration::from_secs(300))
        .await
        .expect("off");
    let b = s.booking(everything());
    let t = tokio::time::Instant::now();
    let run = s.run(&b).await;
    let whole = t.elapsed();
    assert_eq!(
        run.verdict.readiness,
        Readiness::Ready,
        "{:#?}",
        run.verdict
    );
    println!(
        "self-test of a 4-device room: {:.1} s; slowest device alone (projector power-on to on): {:.1} s; ratio {:.2}",
        whole.as_secs_f64(),
        alone.as_secs_f64(),
        whole.as_secs_f64() / alone.as_secs_f64()
    );
}
