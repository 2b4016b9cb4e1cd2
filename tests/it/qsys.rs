//! QSC Q-SYS: the simulator against protocols.md §4.2 byte for byte, then the driver against
//! the simulator over real TCP on loopback with paused time: get/set, change-group pushes,
//! NoOp inside the idle limit, change groups re-created after a restart or a design change,
//! Logon, and bad input (malformed JSON, wrong types, unknown enum values) counted, never fatal.

use avwarden::model::{Point, Quantity};
use std::sync::Arc;
use std::time::Duration;

use avwarden::codec::qrc::EngineState;
use avwarden::model::{DeviceCommand, Health, Severity, Subject, Value};
use avwarden::runtime::DeviceSpec;
use avwarden::sim::meter_script::MeterScript;
use avwarden::sim::qsys::{self, QsysSim, QsysSimConfig};
use avwarden::sim::tesira::{self, TesiraSimConfig};
use avwarden::sim::SimBind;
use avwarden::transport::tcp::TcpSpec;
use avwarden::transport::LinkSpec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::support::{self, meter_where, reading, Rig};

const ROOM: &str = r#"
[[zones]]
id = "main"
level_control = "MainGain"
mute_control = "MainMute"
meter_control = "MainMeter"
max_db = 0
[[mics]]
id = "lectern"
channel = 1
level_control = "MicGain"
mute_control = "MicMute"
meter_control = "MicMeter"
"#;

fn loopback() -> SimBind {
    SimBind::Tcp("127.0.0.1:0".parse().unwrap())
}

/// The Q-SYS Core at `sim` under the runtime.
fn start(sim: &QsysSim, settings: &str, tweak: impl FnOnce(&mut DeviceSpec)) -> Rig {
    let link = LinkSpec::Tcp(TcpSpec::new("127.0.0.1", sim.addr().port()));
    let spec = DeviceSpec::new("core1", "room1", support::profile("qsys-core"), link);
    Rig::start(spec, settings, tweak)
}

/// Read one NUL-terminated message.
async fn read_msg(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    loop {
        let mut b = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut b))
            .await
            .expect("simulator answered in time")
            .unwrap();
        if b[0] == 0 {
            return String::from_utf8(out).unwrap();
        }
        out.push(b[0]);
    }
}

/// protocols.md §4.2 replayed byte for byte against the simulator.
#[tokio::test(start_paused = true)]
async fn simulator_speaks_the_documented_messages() {
    let cancel = CancellationToken::new();
    let emulator = QsysSimConfig {
        emulator: true,
        ..QsysSimConfig::default()
    };
    let sim = qsys::spawn(emulator, loopback(), cancel.clone())
        .await
        .unwrap();
    let mut s = TcpStream::connect(sim.addr()).await.unwrap();
    assert_eq!(
        read_msg(&mut s).await,
        "{\"jsonrpc\":\"2.0\",\"method\":\"EngineStatus\",\"params\":{\"State\":\"Active\",\"DesignName\":\"MyDesign\",\"DesignCode\":\"qALFilm6IcCo\",\"IsRedundant\":false,\"IsEmulator\":true}}"
    );
    let sim = qsys::spawn(QsysSimConfig::default(), loopback(), cancel.clone())
        .await
        .unwrap();
    sim.set_meter_script("MicMeter", MeterScript::Constant { dbfs: -23.5 });
    let mut s = TcpStream::connect(sim.addr()).await.unwrap();
    read_msg(&mut s).await;
    // Logon and NoOp without an id are notifications: no answer.
    s.write_all(b"{\"jsonrpc\":\"2.0\",\"method\":\"Logon\",\"params\":{\"User\":\"username\",\"Password\":\"1234\"}}\x00{\"jsonrpc\":\"2.0\",\"method\":\"NoOp\",\"params\":{}}\x00")
        .await
        .unwrap();
    s.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1234,\"method\":\"StatusGet\",\"params\":0}\x00")
        .await
        .unwrap();
    assert_eq!(
        read_msg(&mut s).await,
        "{\"jsonrpc\":\"2.0\",\"id\":1234,\"result\":{\"Platform\":\"Core 500i\",\"State\":\"Active\",\"DesignName\":\"MyDesign\",\"DesignCode\":\"qALFilm6IcCo\",\"IsRedundant\":false,\"IsEmulator\":false}}"
    );
    assert_eq!(sim.noops(), 1);
    s.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"Control.Set\",\"params\":{\"Name\":\"MainGain\",\"Value\":-10.0,\"Ramp\":2.0}}\x00")
        .await
        .unwrap();
    assert_eq!(
        read_msg(&mut s).await,
        "{\"jsonrpc\":\"2.0\",\"id\":2,\"result\":true}"
    );
    s.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"ChangeGroup.AddControl\",\"params\":{\"Id\":\"meters\",\"Controls\":[\"MicMeter\"]}}\x00")
        .await
        .unwrap();
    assert_eq!(
        read_msg(&mut s).await,
        "{\"jsonrpc\":\"2.0\",\"id\":3,\"result\":true}"
    );
    s.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"ChangeGroup.AutoPoll\",\"params\":{\"Id\":\"meters\",\"Rate\":0.1}}\x00")
        .await
        .unwrap();
    assert_eq!(
        read_msg(&mut s).await,
        "{\"jsonrpc\":\"2.0\",\"id\":4,\"result\":true}"
    );
    assert_eq!(
        read_msg(&mut s).await,
        "{\"jsonrpc\":\"2.0\",\"method\":\"ChangeGroup.Poll\",\"params\":{\"Id\":\"meters\",\"Changes\":[{\"Name\":\"MicMeter\",\"Value\":-23.5,\"String\":\"-23.5dB\"}]}}"
    );
    assert_eq!(sim.change_groups(), 1);
    // A silent client is dropped after the Core's 60 s idle limit; AutoPoll pushes do not count.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(61), s.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "session closed after 60 s of client silence"
    );
    assert_eq!(
        sim.change_groups(),
        0,
        "change groups die with the connection"
    );
    cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn driver_reads_sets_and_streams_normalised_meters() {
    let cancel = CancellationToken::new();
    let sim = qsys::spawn(QsysSimConfig::default(), loopback(), cancel.clone())
        .await
        .unwrap();
    sim.set_meter_script("MainMeter", MeterScript::Constant { dbfs: -20.0 });
    let mut rig = start(&sim, ROOM, |_| {});
    let mut rx = rig.handle.watch();
    let s = support::wait_state(&mut rx, Duration::from_secs(30), "ok with levels", |s| {
        s.health == Health::Ok
            && s.reading(&Point::new(Subject::input("lectern"), Quantity::Muted))
                .is_some()
    })
    .await;
    assert_eq!(
        reading(&s, &Point::new(Subject::zone("main"), Quantity::LevelDb)),
        Some(Value::Float(-10.0))
    );
    assert_eq!(
        reading(&s, &Point::new(Subject::zone("main"), Quantity::Muted)),
        Some(Value::Bool(false))
    );
    assert_eq!(
        reading(&s, &Point::device(Quantity::EngineState)),
        Some(Value::Text("active".into()))
    );
    assert_eq!(s.identity.model.as_deref(), Some("Core 500i"));
    assert_eq!(
        s.identity.extra.get("design").map(String::as_str),
        Some("MyDesign")
    );
    assert_eq!(
        meter_where(
            &mut rig.meters,
            &Subject::zone("main"),
            Duration::from_secs(5),
            |_| { true }
        )
        .await,
        -20.0
    );
    assert_eq!(sim.change_groups(), 1);

    for cmd in [
        DeviceCommand::SetLevel {
            zone: "main".into(),
            db: -18.0,
        },
        DeviceCommand::SetZoneMute {
            zone: "main".into(),
            on: true,
        },
        DeviceCommand::SetGain {
            channel: 1,
            db: 6.0,
        },
        DeviceCommand::SetMute {
            channel: 1,
            on: true,
        },
    ] {
        rig.handle.command(cmd).await.into_result().unwrap();
    }
    assert_eq!(sim.control("MainGain"), Some(-18.0));
    assert_eq!(sim.control("MainMute"), Some(1.0));
    assert_eq!(sim.control("MicGain"), Some(6.0));
    assert_eq!(sim.control("MicMute"), Some(1.0));
    let s = rig.handle.state();
    assert_eq!(
        reading(&s, &Point::new(Subject::zone("main"), Quantity::LevelDb)),
        Some(Value::Float(-18.0))
    );
    assert_eq!(
        reading(&s, &Point::new(Subject::zone("main"), Quantity::Muted)),
        Some(Value::Bool(true))
    );
    assert_eq!(
        reading(&s, &Point::new(Subject::input("lectern"), Quantity::GainDb)),
        Some(Value::Float(6.0))
    );
    assert_eq!(
        reading(&s, &Point::new(Subject::input("lectern"), Quantity::Muted)),
        Some(Value::Bool(true))
    );
    assert!(rig
        .handle
        .command(DeviceCommand::SetLevel {
            zone: "main".into(),
            db: 1.0
        })
        .await
        .into_result()
        .is_err());
    assert_eq!(sim.control("MainGain"), Some(-18.0));

    // A change at the Core arrives through the change group, long before the next poll.
    sim.set_control("MainGain", -33.0);
    support::wait_state(&mut rx, Duration::from_millis(500), "pushed level", |s| {
        s.reading(&Point::new(Subject::zone("main"), Quantity::LevelDb))
            .map(|r| r.value.clone())
            == Some(Value::Float(-33.0))
    })
    .await;
    assert_eq!(rig.handle.state().counters.bad_frames, 0);
    rig.cancel.cancel();
    cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn noop_keeps_an_otherwise_silent_session_alive() {
    let cancel = CancellationToken::new();
    let sim = qsys::spawn(QsysSimConfig::default(), loopback(), cancel.clone())
        .await
        .unwrap();
    // Poll far less often than the idle limit: only NoOp can keep the session.
    let mut profile = (*support::profile("qsys-core")).clone();
    profile.timing.poll_interval = Duration::from_secs(600);
    let rig = start(&sim, ROOM, |spec| spec.profile = Arc::new(profile));
    let mut rx = rig.handle.watch();
    support::wait_state(&mut rx, Duration::from_secs(30), "ok", |s| {
        s.health == Health::Ok
    })
    .await;
    tokio::time::sleep(Duration::from_secs(300)).await;
    let s = rig.handle.state();
    assert_eq!(s.health, Health::Ok);
    assert_eq!(s.counters.reconnects, 0, "the Core never dropped us");
    assert_eq!(sim.sessions(), 1);
    // keepalive_secs = 20: about 15 NoOps in 5 minutes.
    assert!((13..=16).contains(&sim.noops()), "{} NoOps", sim.noops());
    rig.cancel.cancel();
    cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn change_group_is_recreated_after_the_simulator_restarts() {
    let cancel = CancellationToken::new();
    let sim = qsys::spawn(QsysSimConfig::default(), loopback(), cancel.clone())
        .await
        .unwrap();
    let addr = sim.addr();
    let mut rig = start(&sim, ROOM, |_| {});
    meter_where(
        &mut rig.meters,
        &Subject::zone("main"),
        Duration::from_secs(30),
        |_| true,
    )
    .await;
    sim.stop().await;
    let mut rx = rig.handle.watch();
    support::wait_state(&mut rx, Duration::from_secs(60), "unreachable", |s| {
        s.health == Health::Unreachable
    })
    .await;
    let sim2 = qsys::spawn(QsysSimConfig::default(), SimBind::Tcp(addr), cancel.clone())
        .await
        .unwrap();
    sim2.set_meter_script("MainMeter", MeterScript::Constant { dbfs: -31.0 });
    support::wait_state(&mut rx, Duration::from_secs(120), "ok again", |s| {
        s.health == Health::Ok
    })
    .await;
    assert_eq!(
        meter_where(
            &mut rig.meters,
            &Subject::zone("main"),
            Duration::from_secs(5),
            |v| v == -31.0
        )
        .await,
        -31.0
    );
    assert_eq!(sim2.change_groups(), 1);
    let methods = sim2.methods();
    assert_eq!(
        methods
            .iter()
            .filter(|m| *m == "ChangeGroup.AddControl")
            .count(),
        6,
        "one AddControl per mapped control"
    );
    assert!(methods.contains(&"ChangeGroup.AutoPoll".to_owned()));
    rig.cancel.cancel();
    cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn malformed_json_wrong_types_and_unknown_states_are_counted() {
    let cancel = CancellationToken::new();
    let sim = qsys::spawn(QsysSimConfig::default(), loopback(), cancel.clone())
        .await
        .unwrap();
    sim.set_meter_script("MainMeter", MeterScript::Constant { dbfs: -20.0 });
    let mut rig = start(&sim, ROOM, |_| {});
    let mut rx = rig.handle.watch();
    support::wait_state(&mut rx, Duration::from_secs(30), "ok", |s| {
        s.health == Health::Ok
    })
    .await;
    meter_where(
        &mut rig.meters,
        &Subject::zone("main"),
        Duration::from_secs(5),
        |_| true,
    )
    .await;
    let before = rig.handle.state().counters.bad_frames;
    // 1 malformed JSON, 2 wrong types in one push (the good change in it still applies),
    // 1 unknown engine state.
    sim.inject(b"{\"jsonrpc\":\"2.0\",\"method\":\"ChangeGroup.Poll\",\x00");
    sim.inject(b"{\"jsonrpc\":\"2.0\",\"method\":\"ChangeGroup.Poll\",\"params\":{\"Id\":\"avwarden\",\"Changes\":[{\"Name\":\"MainMeter\",\"Value\":\"loud\"},{\"Name\":\"MainMute\",\"Value\":\"sort of\"},{\"Name\":\"MicGain\",\"Value\":-4.0}]}}\x00");
    sim.inject(b"{\"jsonrpc\":\"2.0\",\"method\":\"EngineStatus\",\"params\":{\"State\":\"Melting\",\"DesignName\":\"MyDesign\",\"DesignCode\":\"qALFilm6IcCo\",\"IsRedundant\":false,\"IsEmulator\":false}}\x00");
    let s = support::wait_state(&mut rx, Duration::from_secs(5), "four bad inputs", |s| {
        s.counters.bad_frames >= before + 4
    })
    .await;
    assert_eq!(s.counters.bad_frames, before + 4);
    assert_eq!(s.health, Health::Ok, "bad input is not a fault");
    assert_eq!(
        reading(&s, &Point::new(Subject::input("lectern"), Quantity::GainDb)),
        Some(Value::Float(-4.0))
    );
    assert_eq!(
        reading(&s, &Point::device(Quantity::EngineState)),
        Some(Value::Unknown)
    );
    sim.set_meter_script("MainMeter", MeterScript::Constant { dbfs: -22.0 });
    meter_where(
        &mut rig.meters,
        &Subject::zone("main"),
        Duration::from_secs(5),
        |v| v == -22.0,
    )
    .await;
    rig.cancel.cancel();
    cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn idle_engine_faults_and_a_new_design_rebuilds_the_change_group() {
    let cancel = CancellationToken::new();
    let sim = qsys::spawn(QsysSimConfig::default(), loopback(), cancel.clone())
        .await
        .unwrap();
    let mut rig = start(&sim, ROOM, |_| {});
    let mut rx = rig.handle.watch();
    support::wait_state(&mut rx, Duration::from_secs(30), "ok", |s| {
        s.health == Health::Ok
    })
    .await;
    sim.set_engine(EngineState::Idle, None);
    let s = support::wait_state(&mut rx, Duration::from_secs(5), "faulted", |s| {
        s.health == Health::Faulted
    })
    .await;
    assert!(s
        .faults
        .iter()
        .any(|f| f.fault.code == "dsp_no_design" && f.fault.severity == Severity::Fault));
    let adds_before = sim
        .methods()
        .iter()
        .filter(|m| *m == "ChangeGroup.AddControl")
        .count();
    sim.set_engine(EngineState::Active, Some("newDesign01"));
    support::wait_state(&mut rx, Duration::from_secs(5), "ok again", |s| {
        s.health == Health::Ok
    })
    .await;
    // The group is rebuilt on the next listen; meter pushes keep coming meanwhile, so they
    // pace the wait.
    let adds = || {
        sim.methods()
            .iter()
            .filter(|m| *m == "ChangeGroup.AddControl")
            .count()
    };
    let t0 = tokio::time::Instant::now();
    while adds() < adds_before + 6 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "change group not rebuilt"
        );
        meter_where(
            &mut rig.meters,
            &Subject::zone("main"),
            Duration::from_secs(5),
            |_| true,
        )
        .await;
    }
    assert_eq!(adds(), adds_before + 6);
    rig.cancel.cancel();
    cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn logon_with_the_device_secret_and_refusal_of_a_wrong_one() {
    let cancel = CancellationToken::new();
    let cfg = QsysSimConfig {
        user: Some("avwarden".into()),
        password: Some("s3cret".into()),
        ..QsysSimConfig::default()
    };
    let sim = qsys::spawn(cfg, loopback(), cancel.clone()).await.unwrap();
    let settings = format!("user = \"avwarden\"\n{ROOM}");
    let good = start(&sim, &settings, |spec| spec.secret = Some("s3cret".into()));
    let mut rx = good.handle.watch();
    support::wait_state(&mut rx, Duration::from_secs(30), "ok", |s| {
        s.health == Health::Ok
    })
    .await;
    let bad = start(&sim, &settings, |spec| spec.secret = Some("guess".into()));
    let mut rx = bad.handle.watch();
    let s = support::wait_state(&mut rx, Duration::from_secs(30), "auth fault", |s| {
        s.faults.iter().any(|f| f.fault.code == "auth_failed")
    })
    .await;
    assert_eq!(s.health, Health::Unreachable);
    good.cancel.cancel();
    bad.cancel.cancel();
    cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn unknown_control_names_raise_a_mapping_fault() {
    let cancel = CancellationToken::new();
    let sim = qsys::spawn(QsysSimConfig::default(), loopback(), cancel.clone())
        .await
        .unwrap();
    let settings = format!("{ROOM}\n[[zones]]\nid = \"foyer\"\nlevel_control = \"FoyerGain\"\n");
    let rig = start(&sim, &settings, |_| {});
    let mut rx = rig.handle.watch();
    let s = support::wait_state(&mut rx, Duration::from_secs(30), "degraded", |s| {
        s.health == Health::Degraded
    })
    .await;
    let f: Vec<_> = s
        .faults
        .iter()
        .filter(|f| f.fault.code == "dsp_mapping")
        .collect();
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].fault.component.as_deref(), Some("zone foyer level"));
    assert_eq!(
        reading(&s, &Point::new(Subject::zone("main"), Quantity::LevelDb)),
        Some(Value::Float(-10.0))
    );
    rig.cancel.cancel();
    cancel.cancel();
}

/// The point of alignment: a Tesira (dBu meters) and a Q-SYS Core (dB meters) carrying the
/// same signal show the level watch the same dBFS number.
#[tokio::test(start_paused = true)]
async fn meters_from_both_dsps_land_on_one_dbfs_scale() {
    let cancel = CancellationToken::new();
    let q = qsys::spawn(QsysSimConfig::default(), loopback(), cancel.clone())
        .await
        .unwrap();
    q.set_meter_script("MainMeter", MeterScript::Constant { dbfs: -18.0 });
    let t = tesira::spawn(TesiraSimConfig::default(), loopback(), cancel.clone())
        .await
        .unwrap();
    t.set_meter_script("OutMeter", 1, MeterScript::Constant { dbfs: -18.0 });
    let mut qrig = start(&q, ROOM, |_| {});
    let taddr = t.tcp_addr().unwrap();
    let mut trig = start(
        &q,
        "[[zones]]\nid = \"main\"\nmeter_tag = \"OutMeter\"\n",
        |spec| {
            spec.profile = support::profile("biamp-tesira-telnet");
            spec.link = LinkSpec::Tcp(TcpSpec::new("127.0.0.1", taddr.port()));
        },
    );
    let from_qsys = meter_where(
        &mut qrig.meters,
        &Subject::zone("main"),
        Duration::from_secs(30),
        |_| true,
    )
    .await;
    let from_tesira = meter_where(
        &mut trig.meters,
        &Subject::zone("main"),
        Duration::from_secs(30),
        |_| true,
    )
    .await;
    assert_eq!(from_qsys, -18.0);
    assert_eq!(from_tesira, -18.0);
    qrig.cancel.cancel();
    trig.cancel.cancel();
    cancel.cancel();
}

/// Issue 10: the level watch's check before a restore step is one `Control.Get` of the zone's
/// level control (not `StatusGet` and every control), and an unmapped zone is refused
/// without a request.
#[tokio::test(start_paused = true)]
async fn a_zone_level_read_is_one_control_get() {
    let cancel = CancellationToken::new();
    let sim = qsys::spawn(QsysSimConfig::default(), loopback(), cancel.clone())
        .await
        .unwrap();
    let rig = start(&sim, ROOM, |_| {});
    let mut rx = rig.handle.watch();
    support::wait_state(&mut rx, Duration::from_secs(30), "ok", |s| {
        s.health == Health::Ok
    })
    .await;
    sim.set_control("MainGain", -25.0);
    let before = sim.methods().len();
    let outcome = rig
        .handle
        .priority_command(DeviceCommand::ReadZoneLevel {
            zone: "main".into(),
        })
        .await;
    assert!(outcome.is_done(), "{outcome:?}");
    let sent: Vec<String> = sim.methods()[before..]
        .iter()
        .filter(|m| *m != "NoOp")
        .cloned()
        .collect();
    assert_eq!(sent, ["Control.Get".to_owned()]);
    assert_eq!(
        reading(
            &rig.handle.state(),
            &Point::new(Subject::zone("main"), Quantity::LevelDb)
        ),
        Some(Value::Float(-25.0))
    );
    let before = sim.methods().len();
    let outcome = rig
        .handle
        .priority_command(DeviceCommand::ReadZoneLevel {
            zone: "nowhere".into(),
        })
        .await;
    assert!(
        matches!(outcome, avwarden::runtime::CommandOutcome::Rejected { .. }),
        "{outcome:?}"
    );
    assert_eq!(
        sim.methods().len(),
        before,
        "nothing sent for an unmapped zone"
    );
    rig.cancel.cancel();
    cancel.cancel();
}
