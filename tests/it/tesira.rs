//! Biamp Tesira: the simulator against protocols.md §4.1 byte for byte, then the driver against
//! the simulator over Telnet (real TCP on loopback, paused time) and over RS-232 (a real
//! pseudo-terminal, real time): get/set, meter subscriptions and their rate, re-subscription
//! after a restart or a banner, mapping faults, and bad input counted without harm.

use avwarden::model::{Point, Quantity};
use std::time::Duration;

use avwarden::model::{DeviceCommand, Health, Severity, Subject, Value};
use avwarden::profile::ProfileError;
use avwarden::runtime::{CommandOutcome, DeviceSpec};
use avwarden::sim::meter_script::MeterScript;
use avwarden::sim::tesira::{self, LineEnding, TesiraSim, TesiraSimConfig};
use avwarden::sim::{SimBind, SimEndpoint};
use avwarden::transport::serial::SerialSpec;
use avwarden::transport::tcp::TcpSpec;
use avwarden::transport::LinkSpec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::support::{self, meter_where, reading, Rig};

const ROOM: &str = r#"
[[zones]]
id = "main"
level_tag = "Level1"
index = 1
meter_tag = "OutMeter"
meter_index = 1
max_db = 0
[[mics]]
id = "lectern"
channel = 1
level_tag = "MicGain"
level_attribute = "level"
index = 1
meter_tag = "MicMeter"
"#;

fn loopback() -> SimBind {
    SimBind::Tcp("127.0.0.1:0".parse().unwrap())
}

/// The DSP behind `link` under the runtime with `profile`.
fn start(
    profile: &str,
    link: LinkSpec,
    settings: &str,
    tweak: impl FnOnce(&mut DeviceSpec),
) -> Rig {
    let spec = DeviceSpec::new("dsp1", "room1", support::profile(profile), link);
    Rig::start(spec, settings, tweak)
}

/// A default simulator on a real pseudo-terminal, and the serial link to it.
async fn pty_sim(cancel: &CancellationToken) -> (TesiraSim, LinkSpec) {
    let sim = tesira::spawn(
        TesiraSimConfig::default(),
        SimBind::Pty { link: None },
        cancel.clone(),
    )
    .await
    .unwrap();
    let path = sim.pty_path().unwrap();
    let link = LinkSpec::Serial(SerialSpec::new(path.display().to_string(), 115_200));
    (sim, link)
}

fn telnet_link(sim: &TesiraSim) -> LinkSpec {
    let a = sim.tcp_addr().unwrap();
    LinkSpec::Tcp(TcpSpec::new(a.ip().to_string(), a.port()))
}

async fn expect_bytes(s: &mut TcpStream, want: &[u8]) {
    let mut got = vec![0u8; want.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
        .await
        .expect("simulator answered in time")
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(want),
        "raw bytes differ"
    );
}

/// protocols.md §4.1 vectors 0–5 replayed byte for byte against the simulator's Telnet side,
/// echo lines included, so the simulator the driver is tested against is the documented device.
#[tokio::test(start_paused = true)]
async fn simulator_speaks_every_documented_vector_over_telnet() {
    let cancel = CancellationToken::new();
    let sim = tesira::spawn(TesiraSimConfig::default(), loopback(), cancel.clone())
        .await
        .unwrap();
    let mut s = TcpStream::connect(sim.tcp_addr().unwrap()).await.unwrap();
    // 0: negotiation, refused; then the banner.
    expect_bytes(&mut s, b"\xff\xfd\x18\xff\xfd\x20\xff\xfd\x23\xff\xfd\x27").await;
    s.write_all(b"\xff\xfc\x18\xff\xfc\x20\xff\xfc\x23\xff\xfc\x27")
        .await
        .unwrap();
    expect_bytes(&mut s, b"Welcome to the Tesira Text Protocol Server...\r\n").await;
    // 1: get level, echo then answer.
    s.write_all(b"Level1 get level 1\n").await.unwrap();
    expect_bytes(
        &mut s,
        b"Level1 get level 1\r\n+OK \"value\":-10.000000\r\n",
    )
    .await;
    // 2: set level and mute.
    for (cmd, answer) in [
        ("Level1 set level 1 -20", "+OK"),
        ("Level1 set mute 1 true", "+OK"),
        ("Level1 get mute 1", "+OK \"value\":true"),
        // 3: errors.
        (
            "Mixer1 set inputMute 1",
            "-ERR Parse error at 22: not enough parameters supplied",
        ),
        (
            "MyLevel1 get level 10",
            "-ERR INVALID_PARAMETER Index out of range:channelIndex min:1 max:8 received:10",
        ),
        (
            "Session get aliases",
            "-ERR address not found: {\"deviceId\":0 \"classCode\":0 \"instanceNum\":0}",
        ),
    ] {
        s.write_all(format!("{cmd}\n").as_bytes()).await.unwrap();
        expect_bytes(&mut s, format!("{cmd}\r\n{answer}\r\n").as_bytes()).await;
    }
    assert_eq!(sim.level("Level1", 1), Some(-20.0));
    assert_eq!(sim.mute("Level1", 1), Some(true));
    // 4: meter subscription at 100 ms (the meter reads silence, −100 dBu), a new level, then
    // unsubscribe.
    s.write_all(b"AudioMeter1 subscribe level 1 mtr1 100\n")
        .await
        .unwrap();
    expect_bytes(
        &mut s,
        b"AudioMeter1 subscribe level 1 mtr1 100\r\n! \"publishToken\":\"mtr1\" \"value\":-100.000000\r\n+OK\r\n",
    )
    .await;
    assert_eq!(sim.subscriptions(), 1);
    sim.set_meter_script("AudioMeter1", 1, MeterScript::Constant { dbfs: -59.3 });
    expect_bytes(
        &mut s,
        b"! \"publishToken\":\"mtr1\" \"value\":-35.299999\r\n",
    )
    .await;
    s.write_all(b"AudioMeter1 unsubscribe level 1 mtr1\n")
        .await
        .unwrap();
    // A publish may already be on its way; what matters is that the +OK arrives and the
    // stream stops.
    let mut tail = Vec::new();
    while !tail.ends_with(b"AudioMeter1 unsubscribe level 1 mtr1\r\n+OK\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        tail.push(b[0]);
        assert!(tail.len() < 500, "{}", String::from_utf8_lossy(&tail));
    }
    assert_eq!(sim.subscriptions(), 0);
    // 5: concise mode.
    s.write_all(b"SESSION set verbose false\n").await.unwrap();
    expect_bytes(&mut s, b"SESSION set verbose false\r\n+OK\r\n").await;
    s.write_all(b"Mute1 get numChannels\n").await.unwrap();
    expect_bytes(&mut s, b"Mute1 get numChannels\r\n+OK 2\r\n").await;
    cancel.cancel();
}

/// A client that accepts an option instead of refusing it never gets a session.
#[tokio::test(start_paused = true)]
async fn simulator_withholds_the_banner_from_a_client_that_accepts_options() {
    let cancel = CancellationToken::new();
    let sim = tesira::spawn(TesiraSimConfig::default(), loopback(), cancel.clone())
        .await
        .unwrap();
    let mut s = TcpStream::connect(sim.tcp_addr().unwrap()).await.unwrap();
    expect_bytes(&mut s, b"\xff\xfd\x18\xff\xfd\x20\xff\xfd\x23\xff\xfd\x27").await;
    s.write_all(b"\xff\xfb\x18\xff\xfc\x20\xff\xfc\x23\xff\xfc\x27")
        .await
        .unwrap();
    let mut b = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_secs(30), s.read(&mut b)).await;
    assert!(r.is_err(), "no banner after WILL TTYPE");
    cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn telnet_driver_reads_sets_and_streams_normalised_meters() {
    let cancel = CancellationToken::new();
    let sim = tesira::spawn(TesiraSimConfig::default(), loopback(), cancel.clone())
        .await
        .unwrap();
    // −20 dBFS shows as +4 dBu on a Tesira meter; the driver must hand on −20 dBFS.
    sim.set_meter_script("OutMeter", 1, MeterScript::Constant { dbfs: -20.0 });
    sim.set_meter_script("MicMeter", 1, MeterScript::Constant { dbfs: -35.5 });
    let mut rig = start("biamp-tesira-telnet", telnet_link(&sim), ROOM, |_| {});
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
        reading(&s, &Point::new(Subject::input("lectern"), Quantity::GainDb)),
        Some(Value::Float(0.0))
    );
    assert_eq!(s.identity.firmware.as_deref(), Some("4.2.0.24"));
    assert_eq!(s.identity.manufacturer.as_deref(), Some("Biamp"));
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
    assert_eq!(
        meter_where(
            &mut rig.meters,
            &Subject::input("lectern"),
            Duration::from_secs(5),
            |_| true
        )
        .await,
        -35.5
    );
    let received = sim.received();
    assert!(received.contains(&"OutMeter subscribe level 1 zone-main 100".to_owned()));
    assert!(received.contains(&"MicMeter subscribe level 1 mic-lectern 100".to_owned()));

    // Zone level and mute, mic gain and mute: on the DSP and read back.
    rig.handle
        .command(DeviceCommand::SetLevel {
            zone: "main".into(),
            db: -20.0,
        })
        .await
        .into_result()
        .unwrap();
    rig.handle
        .command(DeviceCommand::SetZoneMute {
            zone: "main".into(),
            on: true,
        })
        .await
        .into_result()
        .unwrap();
    rig.handle
        .command(DeviceCommand::SetGain {
            channel: 1,
            db: -6.5,
        })
        .await
        .into_result()
        .unwrap();
    rig.handle
        .command(DeviceCommand::SetMute {
            channel: 1,
            on: true,
        })
        .await
        .into_result()
        .unwrap();
    assert_eq!(sim.level("Level1", 1), Some(-20.0));
    assert_eq!(sim.mute("Level1", 1), Some(true));
    assert_eq!(sim.level("MicGain", 1), Some(-6.5));
    assert_eq!(sim.mute("MicGain", 1), Some(true));
    let s = rig.handle.state();
    assert_eq!(
        reading(&s, &Point::new(Subject::zone("main"), Quantity::LevelDb)),
        Some(Value::Float(-20.0))
    );
    assert_eq!(
        reading(&s, &Point::new(Subject::zone("main"), Quantity::Muted)),
        Some(Value::Bool(true))
    );
    assert_eq!(
        reading(&s, &Point::new(Subject::input("lectern"), Quantity::GainDb)),
        Some(Value::Float(-6.5))
    );
    assert_eq!(
        reading(&s, &Point::new(Subject::input("lectern"), Quantity::Muted)),
        Some(Value::Bool(true))
    );
    assert!(sim
        .received()
        .contains(&"Level1 set level 1 -20".to_owned()));

    // Issue 14.5: above the zone's max_db, an unknown zone, an unmapped mic are avwarden's
    // rejections (nothing sent, the limit named), not the DSP's refusals.
    for (cmd, why) in [
        (
            DeviceCommand::SetLevel {
                zone: "main".into(),
                db: 3.0,
            },
            "0",
        ),
        (
            DeviceCommand::SetLevel {
                zone: "foyer".into(),
                db: -10.0,
            },
            "foyer",
        ),
        (
            DeviceCommand::SetGain {
                channel: 9,
                db: -10.0,
            },
            "9",
        ),
    ] {
        match rig.handle.command(cmd.clone()).await.into_result() {
            Err(e @ CommandOutcome::Rejected { .. }) => {
                let text = e.to_string();
                assert!(text.starts_with("avwarden rejected"), "{text}");
                assert!(text.contains(why), "{cmd:?}: {text}");
            }
            other => panic!("{cmd:?}: {other:?}"),
        }
    }
    let r = rig
        .handle
        .command(DeviceCommand::Power { on: true })
        .await
        .into_result();
    assert!(
        matches!(r, Err(CommandOutcome::Unsupported { .. })),
        "{r:?}"
    );
    assert_eq!(
        sim.level("Level1", 1),
        Some(-20.0),
        "refused level never sent"
    );
    // Someone changes the level at the DSP: the next poll shows it.
    sim.set_level("Level1", 1, -14.0);
    support::wait_state(&mut rx, Duration::from_secs(30), "polled level", |s| {
        s.reading(&Point::new(Subject::zone("main"), Quantity::LevelDb))
            .map(|r| r.value.clone())
            == Some(Value::Float(-14.0))
    })
    .await;
    // Issue 14.7: the DSP prints single-precision floats (-33.3 → "-33.299999"); a level
    // means something to 0.1 dB, so that is what the reading holds.
    sim.set_level("Level1", 1, -33.3);
    support::wait_state(&mut rx, Duration::from_secs(30), "rounded level", |s| {
        s.reading(&Point::new(Subject::zone("main"), Quantity::LevelDb))
            .map(|r| r.value.clone())
            == Some(Value::Float(-33.3))
    })
    .await;
    assert_eq!(rig.handle.state().counters.bad_frames, 0);
    rig.cancel.cancel();
    cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn meter_rate_follows_the_site_setting() {
    let cancel = CancellationToken::new();
    let sim = tesira::spawn(TesiraSimConfig::default(), loopback(), cancel.clone())
        .await
        .unwrap();
    let settings = format!("meter_rate_ms = 250\n{ROOM}");
    let mut rig = start("biamp-tesira-telnet", telnet_link(&sim), &settings, |_| {});
    meter_where(
        &mut rig.meters,
        &Subject::zone("main"),
        Duration::from_secs(30),
        |_| true,
    )
    .await;
    assert!(sim
        .received()
        .contains(&"OutMeter subscribe level 1 zone-main 250".to_owned()));
    let t0 = tokio::time::Instant::now();
    let mut n = 0;
    while t0.elapsed() < Duration::from_secs(10) {
        meter_where(
            &mut rig.meters,
            &Subject::zone("main"),
            Duration::from_secs(2),
            |_| true,
        )
        .await;
        n += 1;
    }
    // 10 s at 4 per second.
    assert!(
        (39..=41).contains(&n),
        "{n} meter updates in 10 s at 250 ms"
    );
    rig.cancel.cancel();
    cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn telnet_resubscribes_after_the_simulator_restarts() {
    let cancel = CancellationToken::new();
    let sim = tesira::spawn(TesiraSimConfig::default(), loopback(), cancel.clone())
        .await
        .unwrap();
    let addr = sim.tcp_addr().unwrap();
    let mut rig = start("biamp-tesira-telnet", telnet_link(&sim), ROOM, |_| {});
    meter_where(
        &mut rig.meters,
        &Subject::zone("main"),
        Duration::from_secs(30),
        |_| true,
    )
    .await;
    // The subscribe answer carries the first sample, so the zone's meter can arrive before
    // the mic is subscribed: wait for the mic's as well.
    meter_where(
        &mut rig.meters,
        &Subject::input("lectern"),
        Duration::from_secs(10),
        |_| true,
    )
    .await;
    assert_eq!(sim.subscriptions(), 2);
    let mut rx = rig.handle.watch();
    // Meters now arrive while the session is still opening: stop the DSP once it is up.
    support::wait_state(&mut rx, Duration::from_secs(30), "ok", |s| {
        s.health == Health::Ok
    })
    .await;

    sim.stop().await;
    support::wait_state(&mut rx, Duration::from_secs(60), "unreachable", |s| {
        s.health == Health::Unreachable
    })
    .await;

    // The DSP comes back on the same address with a fresh session and no subscriptions.
    let sim2 = tesira::spawn(
        TesiraSimConfig::default(),
        SimBind::Tcp(addr),
        cancel.clone(),
    )
    .await
    .unwrap();
    sim2.set_meter_script("OutMeter", 1, MeterScript::Constant { dbfs: -30.0 });
    support::wait_state(&mut rx, Duration::from_secs(120), "ok again", |s| {
        s.health == Health::Ok
    })
    .await;
    assert_eq!(
        meter_where(
            &mut rig.meters,
            &Subject::zone("main"),
            Duration::from_secs(5),
            |v| v == -30.0
        )
        .await,
        -30.0
    );
    assert_eq!(sim2.subscriptions(), 2);
    assert_eq!(rig.handle.state().counters.reconnects, 1);
    rig.cancel.cancel();
    cancel.cancel();
}

/// Issue 14.1: the value in a subscribe answer (`! "publishToken":… "value":…` before `+OK`,
/// protocols.md §4.1 vector 4) was dropped as an unknown token, so a DSP that publishes only on
/// change never showed its meter after a (re)subscribe. It is the first sample.
#[tokio::test(start_paused = true)]
async fn a_meter_that_publishes_only_on_change_is_known_from_the_subscribe_answer() {
    let cancel = CancellationToken::new();
    let cfg = || TesiraSimConfig {
        meters_on_change: true,
        ..TesiraSimConfig::default()
    };
    let sim = tesira::spawn(cfg(), loopback(), cancel.clone())
        .await
        .unwrap();
    sim.set_meter_script("OutMeter", 1, MeterScript::Constant { dbfs: -30.0 });
    let addr = sim.tcp_addr().unwrap();
    let mut rig = start("biamp-tesira-telnet", telnet_link(&sim), ROOM, |_| {});
    assert_eq!(
        meter_where(
            &mut rig.meters,
            &Subject::zone("main"),
            Duration::from_secs(30),
            |_| true
        )
        .await,
        -30.0,
        "the subscribe answer's value"
    );

    // After a restart the DSP holds another steady level: the new subscribe answer carries it.
    sim.stop().await;
    let mut rx = rig.handle.watch();
    support::wait_state(&mut rx, Duration::from_secs(60), "unreachable", |s| {
        s.health == Health::Unreachable
    })
    .await;
    let sim2 = tesira::spawn(cfg(), SimBind::Tcp(addr), cancel.clone())
        .await
        .unwrap();
    sim2.set_meter_script("OutMeter", 1, MeterScript::Constant { dbfs: -24.0 });
    assert_eq!(
        meter_where(
            &mut rig.meters,
            &Subject::zone("main"),
            Duration::from_secs(120),
            |_| true
        )
        .await,
        -24.0,
        "the new subscribe answer's value after the reconnect"
    );
    rig.cancel.cancel();
    cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn cr_nul_endings_preamble_and_offered_options_are_handled() {
    let cancel = CancellationToken::new();
    let cfg = TesiraSimConfig {
        line_ending: LineEnding::Crnul,
        preamble: true,
        telnet_will: vec![0x01, 0x03],
        ..TesiraSimConfig::default()
    };
    let sim = tesira::spawn(cfg, loopback(), cancel.clone())
        .await
        .unwrap();
    sim.set_meter_script("OutMeter", 1, MeterScript::Constant { dbfs: -12.0 });
    let mut rig = start("biamp-tesira-telnet", telnet_link(&sim), ROOM, |_| {});
    let mut rx = rig.handle.watch();
    let s = support::wait_state(&mut rx, Duration::from_secs(30), "ok", |s| {
        s.health == Health::Ok
    })
    .await;
    assert_eq!(
        reading(&s, &Point::new(Subject::zone("main"), Quantity::LevelDb)),
        Some(Value::Float(-10.0))
    );
    assert_eq!(
        meter_where(
            &mut rig.meters,
            &Subject::zone("main"),
            Duration::from_secs(5),
            |_| { true }
        )
        .await,
        -12.0
    );
    assert_eq!(
        s.counters.bad_frames, 0,
        "no NUL or preamble taken for garbage"
    );
    rig.cancel.cancel();
    cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn tags_missing_from_the_design_raise_a_mapping_fault() {
    let cancel = CancellationToken::new();
    let sim = tesira::spawn(TesiraSimConfig::default(), loopback(), cancel.clone())
        .await
        .unwrap();
    let settings = format!(
        "{ROOM}\n[[zones]]\nid = \"foyer\"\nlevel_tag = \"FoyerLevel\"\nmeter_tag = \"FoyerMeter\"\n"
    );
    let rig = start("biamp-tesira-telnet", telnet_link(&sim), &settings, |_| {});
    let mut rx = rig.handle.watch();
    let s = support::wait_state(&mut rx, Duration::from_secs(30), "degraded", |s| {
        s.health == Health::Degraded
    })
    .await;
    let mut components: Vec<&str> = s
        .faults
        .iter()
        .filter(|f| f.fault.code == "dsp_mapping")
        .filter_map(|f| f.fault.component.as_deref())
        .collect();
    components.sort();
    assert_eq!(
        components,
        ["zone foyer level", "zone foyer meter", "zone foyer mute"]
    );
    assert!(s
        .faults
        .iter()
        .all(|f| f.fault.severity == Severity::Warning));
    assert_eq!(
        reading(&s, &Point::new(Subject::zone("main"), Quantity::LevelDb)),
        Some(Value::Float(-10.0))
    );
    assert!(s
        .reading(&Point::new(Subject::zone("foyer"), Quantity::LevelDb))
        .is_none());
    rig.cancel.cancel();
    cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn garbage_and_broken_publishes_are_counted_and_harmless() {
    let cancel = CancellationToken::new();
    let sim = tesira::spawn(TesiraSimConfig::default(), loopback(), cancel.clone())
        .await
        .unwrap();
    sim.set_meter_script("OutMeter", 1, MeterScript::Constant { dbfs: -20.0 });
    let mut rig = start("biamp-tesira-telnet", telnet_link(&sim), ROOM, |_| {});
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
    let mut junk = Vec::new();
    junk.extend_from_slice(b"! \"publishToken\":\"zone-main\" \"value\":\"loud\"\r\n");
    junk.extend_from_slice(b"! \"publishToken\":\"zone-main\"\r\n");
    junk.extend_from_slice(b"! garbage\r\n");
    junk.extend(std::iter::repeat_n(b'x', 20_000));
    junk.extend_from_slice(b"\r\n");
    sim.inject(&junk);
    let s = support::wait_state(&mut rx, Duration::from_secs(10), "bad input counted", |s| {
        s.counters.bad_frames >= 3 && s.counters.oversized_frames >= 1
    })
    .await;
    // Issue 16.4: the oversized line ended the session; it is back after the backoff.
    assert_eq!(s.counters.oversized_frames, 1);
    let s = support::wait_state(&mut rx, Duration::from_secs(30), "back", |s| {
        s.health == Health::Ok && s.counters.reconnects == 1
    })
    .await;
    assert_eq!(s.counters.oversized_frames, 1);
    sim.set_meter_script("OutMeter", 1, MeterScript::Constant { dbfs: -21.0 });
    meter_where(
        &mut rig.meters,
        &Subject::zone("main"),
        Duration::from_secs(5),
        |v| v == -21.0,
    )
    .await;
    rig.cancel.cancel();
    cancel.cancel();
}

/// Scripted streams reach the level watch on the dBFS scale: a ramp into overload tops out at
/// 0 dBFS (the Tesira meter clips at +24 dBu), and a feedback-like rise climbs ≥ 6 dB in 1 s.
#[tokio::test(start_paused = true)]
async fn scripted_overload_and_feedback_arrive_in_dbfs() {
    let cancel = CancellationToken::new();
    let sim = tesira::spawn(TesiraSimConfig::default(), loopback(), cancel.clone())
        .await
        .unwrap();
    let mut rig = start("biamp-tesira-telnet", telnet_link(&sim), ROOM, |_| {});
    // A marker level first, so the events that follow are known to belong to the script.
    let marker = MeterScript::Constant { dbfs: -50.0 };
    sim.set_meter_script("OutMeter", 1, marker.clone());
    sim.set_meter_script("MicMeter", 1, marker);
    meter_where(
        &mut rig.meters,
        &Subject::zone("main"),
        Duration::from_secs(30),
        |v| v == -50.0,
    )
    .await;
    meter_where(
        &mut rig.meters,
        &Subject::input("lectern"),
        Duration::from_secs(5),
        |v| v == -50.0,
    )
    .await;
    sim.set_meter_script(
        "OutMeter",
        1,
        MeterScript::Ramp {
            from_dbfs: -30.0,
            to_dbfs: 6.0,
            over_secs: 3.0,
        },
    );
    let mut prev = -30.0;
    loop {
        let v = meter_where(
            &mut rig.meters,
            &Subject::zone("main"),
            Duration::from_secs(5),
            |v| v != -50.0,
        )
        .await;
        assert!(v >= prev - 1e-3, "ramp is monotonic: {prev} then {v}");
        assert!(v <= 0.0, "a Tesira meter cannot read above full scale: {v}");
        prev = v;
        if v == 0.0 {
            break;
        }
    }
    sim.set_meter_script(
        "MicMeter",
        1,
        MeterScript::Feedback {
            start_dbfs: -40.0,
            onset_secs: 0.0,
            rise_db_per_sec: 10.0,
            max_dbfs: -3.0,
        },
    );
    let start = meter_where(
        &mut rig.meters,
        &Subject::input("lectern"),
        Duration::from_secs(5),
        |v| v != -50.0,
    )
    .await;
    let t0 = tokio::time::Instant::now();
    let mut last = start;
    while t0.elapsed() < Duration::from_millis(1000) {
        last = meter_where(
            &mut rig.meters,
            &Subject::input("lectern"),
            Duration::from_secs(5),
            |_| true,
        )
        .await;
    }
    assert!(last - start >= 6.0, "rose {start} → {last} in 1 s");
    rig.cancel.cancel();
    cancel.cancel();
}

/// RS-232 through a real pseudo-terminal: no Telnet, no banner to wait for, the same
/// readings; a reboot (banner on the line, subscriptions gone) is followed by re-subscription.
/// Real time: the kernel moves pty bytes asynchronously, so paused time would race it.
#[tokio::test]
async fn serial_over_a_pty_reads_sets_meters_and_resubscribes_after_a_banner() {
    let cancel = CancellationToken::new();
    let (sim, link) = pty_sim(&cancel).await;
    sim.set_meter_script("OutMeter", 1, MeterScript::Constant { dbfs: -18.0 });
    let mut rig = start("biamp-tesira-serial", link, ROOM, |spec| {
        spec.backoff_min = Duration::from_millis(100);
        spec.backoff_max = Duration::from_millis(500);
    });
    let mut rx = rig.handle.watch();
    let s = support::wait_state(&mut rx, Duration::from_secs(20), "ok over serial", |s| {
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
        meter_where(
            &mut rig.meters,
            &Subject::zone("main"),
            Duration::from_secs(10),
            |_| true
        )
        .await,
        -18.0
    );
    rig.handle
        .command(DeviceCommand::SetLevel {
            zone: "main".into(),
            db: -23.5,
        })
        .await
        .into_result()
        .unwrap();
    assert_eq!(sim.level("Level1", 1), Some(-23.5));
    assert_eq!(
        reading(
            &rig.handle.state(),
            &Point::new(Subject::zone("main"), Quantity::LevelDb)
        ),
        Some(Value::Float(-23.5))
    );
    assert_eq!(sim.subscriptions(), 2);
    assert!(
        !sim.received().iter().any(|l| l.contains('\u{ff}')),
        "no Telnet bytes on a serial line"
    );

    // The DSP reboots: banner on the line, subscriptions gone.
    sim.reboot();
    sim.set_meter_script("OutMeter", 1, MeterScript::Constant { dbfs: -9.0 });
    assert_eq!(
        meter_where(
            &mut rig.meters,
            &Subject::zone("main"),
            Duration::from_secs(10),
            |v| v == -9.0
        )
        .await,
        -9.0
    );
    // The subscribe answer carries the first sample, so the zone's meter can arrive before
    // the mic is subscribed: wait for the mic's as well.
    meter_where(
        &mut rig.meters,
        &Subject::input("lectern"),
        Duration::from_secs(10),
        |_| true,
    )
    .await;
    assert_eq!(sim.subscriptions(), 2);
    let subs = sim
        .received()
        .iter()
        .filter(|l| l.as_str() == "OutMeter subscribe level 1 zone-main 100")
        .count();
    assert_eq!(subs, 2, "subscribed once per session");
    assert_eq!(
        rig.handle.state().counters.reconnects,
        0,
        "no reconnect was needed"
    );
    rig.cancel.cancel();
    cancel.cancel();
}

#[tokio::test]
async fn bad_settings_are_refused_with_their_key_path() {
    for (settings, key) in [
        (
            "[[zones]]\nid = \"main\"\nlevel_tag = \"\"\n",
            "settings.zones[0].level_tag",
        ),
        (
            "[[zones]]\nid = \"main\"\nlevel_tg = \"Level1\"\n",
            "settings.zones[0].level_tg",
        ),
        (
            "[[mics]]\nid = \"m\"\nlevel_tag = \"L\"\nchannel = \"one\"\n",
            "settings.mics[0].channel",
        ),
        ("meter_rate_ms = 1\n", "settings.meter_rate_ms"),
    ] {
        let table: toml::Table = toml::from_str(settings).unwrap();
        let err =
            avwarden::driver::for_profile(&support::profile("biamp-tesira-telnet"), None, &table)
                .err()
                .unwrap_or_else(|| panic!("{settings} accepted"));
        match err {
            ProfileError::Option { key: k, .. } => assert_eq!(k, key, "{settings}"),
            other => panic!("{settings}: {other}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn uniform_simulator_entry_reads_site_options() {
    let cancel = CancellationToken::new();
    let options: toml::Table = toml::from_str(
        "line_ending = \"crnul\"\n[[blocks]]\ntag = \"Level1\"\nkind = \"level\"\nchannels = 2\nlevel_db = -7.0\n",
    )
    .unwrap();
    let ep = avwarden::sim::spawn(
        &support::profile("biamp-tesira-telnet"),
        &options,
        loopback(),
        support::clock(),
        cancel.clone(),
    )
    .await
    .unwrap();
    let SimEndpoint::Tcp(addr) = ep else {
        panic!("{ep}")
    };
    let rig = start(
        "biamp-tesira-telnet",
        LinkSpec::Tcp(TcpSpec::new("127.0.0.1", addr.port())),
        "[[zones]]\nid = \"main\"\nlevel_tag = \"Level1\"\n",
        |_| {},
    );
    let mut rx = rig.handle.watch();
    support::wait_state(
        &mut rx,
        Duration::from_secs(30),
        "level from configured design",
        |s| {
            s.reading(&Point::new(Subject::zone("main"), Quantity::LevelDb))
                .map(|r| r.value.clone())
                == Some(Value::Float(-7.0))
        },
    )
    .await;
    let bad: toml::Table = toml::from_str("colour = \"red\"\n").unwrap();
    assert!(avwarden::sim::spawn(
        &support::profile("biamp-tesira-telnet"),
        &bad,
        loopback(),
        support::clock(),
        cancel.clone()
    )
    .await
    .is_err());
    rig.cancel.cancel();
    cancel.cancel();
}

/// The `metering_lost` fault on `component`, if raised.
fn metering_lost<'a>(
    s: &'a avwarden::model::DeviceState,
    component: &str,
) -> Option<&'a avwarden::model::ActiveFault> {
    s.faults.iter().find(|f| {
        f.fault.code == "metering_lost" && f.fault.component.as_deref() == Some(component)
    })
}

/// Issue 14.2, shared by Telnet and RS-232: a DSP that keeps answering commands but stops
/// publishing. Its meter points turn stale once three periods old and each zone/mic gets a
/// `metering_lost` warning, kept for `hold` while the stall lasts (a re-subscribe answer is one
/// value, not a stream); both clear when samples stream again.
async fn stalled_meters_are_stale_and_lost_until_samples_return(
    rig: &mut Rig,
    sim: &TesiraSim,
    hold: Duration,
) {
    let mut rx = rig.handle.watch();
    support::wait_state(&mut rx, Duration::from_secs(20), "ok", |s| {
        s.health == Health::Ok
    })
    .await;
    meter_where(
        &mut rig.meters,
        &Subject::input("lectern"),
        Duration::from_secs(20),
        |_| true,
    )
    .await;
    let subscribes = || {
        sim.received()
            .iter()
            .filter(|l| l.starts_with("OutMeter subscribe"))
            .count()
    };
    let subscribed = subscribes();

    sim.stall_publishing(true);
    let s = support::wait_state(&mut rx, Duration::from_secs(20), "metering lost", |s| {
        metering_lost(s, "zone.main").is_some() && metering_lost(s, "input.lectern").is_some()
    })
    .await;
    let lost = metering_lost(&s, "zone.main").unwrap();
    assert_eq!(lost.fault.severity, Severity::Warning);
    assert!(s.reachable, "commands are still answered");
    assert_eq!(s.health, Health::Degraded);
    let view = serde_json::to_value(
        avwarden::api::views::DeviceDetail::from_state(&s, lost.since).with_meters(
            &s,
            rig.handle.meters(),
            lost.since,
        ),
    )
    .unwrap();
    assert_eq!(
        view["points"]["zone.main"]["audio_dbfs"]["stale"], true,
        "{view}"
    );
    assert_eq!(
        view["points"]["zone.main"]["level_db"]["stale"], false,
        "the polled level is current: {view}"
    );

    if !hold.is_zero() {
        tokio::time::sleep(hold).await;
        let s = rig.handle.state();
        assert!(
            metering_lost(&s, "zone.main").is_some(),
            "still lost after {hold:?}"
        );
        assert!(
            subscribes() > subscribed,
            "the driver re-subscribed after the stall"
        );
    }

    sim.stall_publishing(false);
    let s = support::wait_state(&mut rx, Duration::from_secs(20), "metering back", |s| {
        metering_lost(s, "zone.main").is_none() && metering_lost(s, "input.lectern").is_none()
    })
    .await;
    assert_eq!(s.health, Health::Ok, "{:?}", s.faults);
    let at = rig
        .handle
        .meters()
        .get(&Subject::zone("main"))
        .expect("a level")
        .at;
    let view = serde_json::to_value(
        avwarden::api::views::DeviceDetail::from_state(&s, at).with_meters(
            &s,
            rig.handle.meters(),
            at,
        ),
    )
    .unwrap();
    assert_eq!(
        view["points"]["zone.main"]["audio_dbfs"]["stale"], false,
        "{view}"
    );
}

#[tokio::test(start_paused = true)]
async fn telnet_meters_that_stop_publishing_are_stale_and_metering_lost() {
    let cancel = CancellationToken::new();
    let sim = tesira::spawn(TesiraSimConfig::default(), loopback(), cancel.clone())
        .await
        .unwrap();
    let mut rig = start("biamp-tesira-telnet", telnet_link(&sim), ROOM, |_| {});
    stalled_meters_are_stale_and_lost_until_samples_return(&mut rig, &sim, Duration::from_secs(30))
        .await;
    rig.cancel.cancel();
    cancel.cancel();
}

/// Real time (pty bytes move asynchronously), so the stall is not held for 30 s here.
#[tokio::test]
async fn serial_meters_that_stop_publishing_are_stale_and_metering_lost() {
    let cancel = CancellationToken::new();
    let (sim, link) = pty_sim(&cancel).await;
    let mut rig = start("biamp-tesira-serial", link, ROOM, |_| {});
    stalled_meters_are_stale_and_lost_until_samples_return(&mut rig, &sim, Duration::ZERO).await;
    rig.cancel.cancel();
    cancel.cancel();
}

/// A Tesira with 16 zones on a real pseudo-terminal at 115200 baud, polled every `poll`, its
/// driver up (`ok`).
async fn sixteen_zones_at_115200(poll: Duration, cancel: &CancellationToken) -> (TesiraSim, Rig) {
    use avwarden::sim::tesira::{BlockKind, BlockSpec};
    let mut cfg = TesiraSimConfig::default();
    cfg.blocks
        .push(BlockSpec::new("Zones", BlockKind::Level, 16).level_db(-20.0));
    let sim = tesira::spawn(cfg, SimBind::Pty { link: None }, cancel.clone())
        .await
        .unwrap();
    let link = LinkSpec::Serial(SerialSpec::new(
        sim.pty_path().unwrap().display().to_string(),
        115_200,
    ));
    let zones: String = (1..=16)
        .map(|n| format!("[[zones]]\nid = \"z{n}\"\nlevel_tag = \"Zones\"\nindex = {n}\n"))
        .collect();
    let mut rig = start("biamp-tesira-serial", link, &zones, |spec| {
        let mut p = (*spec.profile).clone();
        p.timing.poll_interval = poll;
        spec.profile = std::sync::Arc::new(p);
    });
    rig.until("ok", |s| s.health == Health::Ok).await;
    (sim, rig)
}

/// Issue 8.4: a protection command on the priority lane of a Tesira with 16 zones polled over
/// a 115200-baud pseudo-terminal is written after at most the one exchange in flight, not
/// after the rest of the 2×16-read poll cycle; a normal command waits for the cycle. Counted
/// in exchanges the DSP received, not in wall-clock time.
#[tokio::test]
async fn a_priority_command_goes_between_two_steps_of_a_long_poll() {
    let cancel = CancellationToken::new();
    let (sim, rig) = sixteen_zones_at_115200(Duration::from_secs(1), &cancel).await;

    // Exchanges of the cycle that ran between `from` (a received-line count) and the line
    // `set`, and whether `set` came at all.
    let gets_between = |from: u64, set: &str| -> Option<usize> {
        let lines = sim.received();
        let first = sim.received_total() - lines.len() as u64;
        let start = usize::try_from(from.saturating_sub(first)).unwrap();
        let at = lines.iter().rposition(|l| l == set)?;
        Some(
            lines[start..at]
                .iter()
                .filter(|l| l.starts_with("Zones get"))
                .count(),
        )
    };
    // Wait for the start of a poll cycle (zone 1's level read), then act at once.
    let cycle_start = |sim: &TesiraSim, after: u64| {
        let lines = sim.received();
        let first = sim.received_total() - lines.len() as u64;
        lines
            .iter()
            .enumerate()
            .any(|(i, l)| first + i as u64 >= after && l == "Zones get level 1")
    };
    for (lane, set, db) in [
        (
            avwarden::runtime::Lane::Priority,
            "Zones set level 16 -30",
            -30.0,
        ),
        (
            avwarden::runtime::Lane::Normal,
            "Zones set level 16 -31",
            -31.0,
        ),
    ] {
        let after = sim.received_total();
        while !cycle_start(&sim, after) {
            let n = sim.received_total();
            sim.wait_received(n + 1).await;
        }
        let issued = sim.received_total();
        let cmd = DeviceCommand::SetLevel {
            zone: "z16".into(),
            db,
        };
        let outcome = match lane {
            avwarden::runtime::Lane::Priority => rig.handle.priority_command(cmd).await,
            avwarden::runtime::Lane::Normal => rig.handle.command(cmd).await,
        };
        assert!(outcome.is_done(), "{outcome:?}");
        let gets = gets_between(issued, set).expect("the set was sent");
        match lane {
            avwarden::runtime::Lane::Priority => {
                assert!(
                    gets <= 1,
                    "{gets} poll exchanges before the priority command"
                )
            }
            avwarden::runtime::Lane::Normal => {
                assert!(gets >= 8, "a normal command waits for the cycle: {gets}")
            }
        }
        eprintln!("{lane:?}: {gets} poll exchanges between the command and its write");
    }
    rig.shutdown().await;
    cancel.cancel();
}

/// Regression (issue 10's latency benchmark: every slow gain cut waited behind a refresh): the
/// level watch asks for a `Refresh` before each restore step, and on a Tesira that re-read
/// every control as one command, so a cut for another zone waited for 2×N serial exchanges. A
/// refresh now runs as a stepped poll: the cut is written after at most the exchange in flight.
#[tokio::test]
async fn a_priority_command_goes_between_two_steps_of_a_refresh() {
    let cancel = CancellationToken::new();
    // No scheduled poll during the test: every "Zones get" is the refresh's.
    let (sim, rig) = sixteen_zones_at_115200(Duration::from_secs(3600), &cancel).await;
    let issued = sim.received_total();
    let h = rig.handle.clone();
    let refresh = crate::support::spawn(async move { h.command(DeviceCommand::Refresh).await });
    // The refresh has begun once the DSP has its first read.
    let started = |sim: &TesiraSim| {
        let lines = sim.received();
        let first = sim.received_total() - lines.len() as u64;
        lines
            .iter()
            .enumerate()
            .any(|(i, l)| first + i as u64 >= issued && l == "Zones get level 1")
    };
    while !started(&sim) {
        let n = sim.received_total();
        sim.wait_received(n + 1).await;
    }
    let from = sim.received_total();
    let cut = rig
        .handle
        .priority_command(DeviceCommand::SetLevel {
            zone: "z16".into(),
            db: -30.0,
        })
        .await;
    assert!(cut.is_done(), "{cut:?}");
    let lines = sim.received();
    let first = sim.received_total() - lines.len() as u64;
    let start = usize::try_from(from.saturating_sub(first)).unwrap();
    let at = lines
        .iter()
        .rposition(|l| l == "Zones set level 16 -30")
        .expect("the cut was sent");
    let gets = lines[start..at]
        .iter()
        .filter(|l| l.starts_with("Zones get"))
        .count();
    assert!(gets <= 1, "{gets} refresh exchanges before the cut");
    let refreshed = refresh.await.unwrap();
    assert!(refreshed.is_done(), "{refreshed:?}");
    // The refresh still read every zone.
    let lines = sim.received();
    let reads = lines
        .iter()
        .filter(|l| l.starts_with("Zones get level"))
        .count();
    assert!(reads >= 16, "{reads} level reads");
    rig.shutdown().await;
    cancel.cancel();
}

/// Regression (x-tesira-serial "never came up" in the daemon): the daemon keeps only a
/// simulator's endpoint, and dropping the handle closed the serial session's control channel,
/// which ended the session and closed the pty before the driver could open it. A pty
/// simulator started from config must serve the driver with its handle gone.
#[tokio::test]
async fn serial_simulator_started_from_config_outlives_its_handle() {
    let cancel = CancellationToken::new();
    let endpoint = tesira::spawn_from_config(
        &toml::Table::new(),
        SimBind::Pty { link: None },
        avwarden::clock::Clock::system(),
        cancel.clone(),
    )
    .await
    .unwrap();
    let SimEndpoint::Pty(path) = endpoint else {
        panic!("a pty bind gives a pty endpoint, got {endpoint:?}")
    };
    let link = LinkSpec::Serial(SerialSpec::new(path.display().to_string(), 115_200));
    let rig = start("biamp-tesira-serial", link, ROOM, |spec| {
        spec.backoff_min = Duration::from_millis(100);
        spec.backoff_max = Duration::from_millis(500);
    });
    let mut rx = rig.handle.watch();
    support::wait_state(&mut rx, Duration::from_secs(20), "ok over serial", |s| {
        s.health == Health::Ok
    })
    .await;
    rig.cancel.cancel();
    cancel.cancel();
}

/// Issue 10: the level watch's check before a restore step reads the one zone's level, one
/// exchange, not every control (a `Refresh` is 2×N exchanges on the priority lane): what a
/// person set at the DSP is reported at once, and a zone that is not mapped is refused
/// without a byte sent.
#[tokio::test]
async fn a_zone_level_read_is_one_exchange() {
    let cancel = CancellationToken::new();
    // No scheduled poll during the test: every line the DSP gets is the read's.
    let (sim, rig) = sixteen_zones_at_115200(Duration::from_secs(3600), &cancel).await;
    assert!(sim.set_level("Zones", 7, -25.0));
    let issued = sim.received_total();
    let outcome = rig
        .handle
        .priority_command(DeviceCommand::ReadZoneLevel { zone: "z7".into() })
        .await;
    assert!(outcome.is_done(), "{outcome:?}");
    let lines = sim.received();
    let first = sim.received_total() - lines.len() as u64;
    let start = usize::try_from(issued.saturating_sub(first)).unwrap();
    assert_eq!(lines[start..], ["Zones get level 7".to_owned()]);
    assert_eq!(
        reading(
            &rig.handle.state(),
            &Point::new(Subject::zone("z7"), Quantity::LevelDb)
        ),
        Some(Value::Float(-25.0))
    );
    let issued = sim.received_total();
    let outcome = rig
        .handle
        .priority_command(DeviceCommand::ReadZoneLevel {
            zone: "nowhere".into(),
        })
        .await;
    assert!(
        matches!(outcome, CommandOutcome::Rejected { .. }),
        "{outcome:?}"
    );
    assert_eq!(
        sim.received_total(),
        issued,
        "nothing sent for an unmapped zone"
    );
    rig.shutdown().await;
    cancel.cancel();
}

/// How many times the DSP received `line` after its first `issued` lines.
fn received_since(sim: &TesiraSim, issued: u64, line: &str) -> usize {
    let lines = sim.received();
    let first = sim.received_total() - lines.len() as u64;
    lines
        .iter()
        .enumerate()
        .filter(|&(i, l)| first + i as u64 >= issued && l == line)
        .count()
}

/// Sixteen zones at 115200 baud (no scheduled poll), zone 1 at -12 dB, the DSP holding every
/// answer from now on; how many lines it had received before.
async fn holding_answers(cancel: &CancellationToken) -> (TesiraSim, Rig, u64) {
    let (sim, rig) = sixteen_zones_at_115200(Duration::from_secs(3600), cancel).await;
    assert!(sim.set_level("Zones", 1, -12.0));
    let issued = sim.received_total();
    sim.hold_answers(true);
    (sim, rig, issued)
}

/// Return once the DSP has received `line` after its first `issued` lines (it would wait
/// forever otherwise: the bound only keeps a failure from hanging the suite).
async fn until_received(sim: &TesiraSim, issued: u64, line: &str, failure: &str) {
    tokio::time::timeout(Duration::from_secs(20), async {
        while received_since(sim, issued, line) == 0 {
            let n = sim.received_total();
            sim.wait_received(n + 1).await;
        }
    })
    .await
    .expect(failure);
}

/// A cut of zone 16 to -30 dB on the priority lane.
fn spawn_cut(rig: &Rig) -> tokio::task::JoinHandle<CommandOutcome> {
    let h = rig.handle.clone();
    crate::support::spawn(async move {
        h.priority_command(DeviceCommand::SetLevel {
            zone: "z16".into(),
            db: -30.0,
        })
        .await
    })
}

/// Once the DSP holding its answers has received `read` (after its first `issued` lines), a
/// cut of zone 16 on the priority lane, returned once the DSP has received it too.
async fn cut_while_read_waits(
    sim: &TesiraSim,
    rig: &Rig,
    issued: u64,
    read: &str,
) -> tokio::task::JoinHandle<CommandOutcome> {
    until_received(sim, issued, read, "the read is written").await;
    let cut = spawn_cut(rig);
    until_received(
        sim,
        issued,
        "Zones set level 16 -30",
        "the cut is written while the read in flight waits for its answer",
    )
    .await;
    cut
}

#[tokio::test]
async fn a_cut_overtakes_the_level_read_on_the_priority_lane_in_flight() {
    // Pins issue 10's tail: a cut that came while the level watch's pre-restore read of
    // another zone waited for its answer was written only after that answer.
    let cancel = CancellationToken::new();
    let (sim, rig, issued) = holding_answers(&cancel).await;
    let h = rig.handle.clone();
    let read = crate::support::spawn(async move {
        h.priority_command(DeviceCommand::ReadZoneLevel { zone: "z1".into() })
            .await
    });
    let cut = cut_while_read_waits(&sim, &rig, issued, "Zones get level 1").await;
    assert!(
        !read.is_finished(),
        "the read was over (answered or given up) before the cut was written"
    );
    sim.hold_answers(false);
    let outcome = cut.await.unwrap();
    assert!(outcome.is_done(), "{outcome:?}");
    let read = read.await.unwrap();
    assert!(read.is_done(), "{read:?}");
    assert_eq!(zone_level(&rig, "z16"), Some(Value::Float(-30.0)));
    // The overtaken read was asked again and answered.
    assert_eq!(zone_level(&rig, "z1"), Some(Value::Float(-12.0)));
    assert_eq!(received_since(&sim, issued, "Zones get level 1"), 2);
    rig.shutdown().await;
    cancel.cancel();
}

fn zone_level(rig: &Rig, zone: &str) -> Option<Value> {
    rig.handle
        .state()
        .readings
        .get(&Point::new(Subject::zone(zone), Quantity::LevelDb))
        .map(|r| r.value.clone())
}

/// Issue 10 (a cut waited for the poll read in flight, p99 ≈ 10 ms in the latency benchmark):
/// TTP answers in order, so a priority command is written while a poll read still waits for
/// its answer; the read's answer, when it comes, is skipped (not taken for the cut's), the
/// cut's read-back gives the level it set, and the read is repeated. Ordered by the lines the
/// DSP received while it held every answer back, not by wall-clock time.
#[tokio::test]
async fn a_priority_command_overtakes_the_poll_read_in_flight() {
    let cancel = CancellationToken::new();
    // No scheduled poll during the test: every "Zones get" is the refresh's.
    let (sim, rig, issued) = holding_answers(&cancel).await;
    let h = rig.handle.clone();
    let refresh = crate::support::spawn(async move { h.command(DeviceCommand::Refresh).await });
    // The refresh's first read is in flight: received, unanswered.
    let cut = cut_while_read_waits(&sim, &rig, issued, "Zones get level 1").await;
    assert_eq!(
        received_since(&sim, issued, "Zones get level 2"),
        0,
        "the poll went on before the cut"
    );
    sim.hold_answers(false);
    let outcome = cut.await.unwrap();
    // Zone 1's `+OK "value":-12` came first and is not the cut's answer: taken for it, the
    // cut's read-back would have got the set's bare `+OK` and failed.
    assert!(outcome.is_done(), "{outcome:?}");
    assert_eq!(zone_level(&rig, "z16"), Some(Value::Float(-30.0)));
    let refreshed = refresh.await.unwrap();
    assert!(refreshed.is_done(), "{refreshed:?}");
    // The overtaken read was repeated: zone 1's level is known, and every zone was read.
    assert_eq!(zone_level(&rig, "z1"), Some(Value::Float(-12.0)));
    let lines = sim.received();
    let reads = lines
        .iter()
        .filter(|l| l.starts_with("Zones get level"))
        .count();
    assert!(reads >= 16, "{reads} level reads");
    rig.shutdown().await;
    cancel.cancel();
}

/// Issue 10 (a cut queued behind another cut of the same DSP waited for two round trips, the
/// set's and its read-back's, p99 1.2 ms in the latency benchmark): a set and its read-back go
/// in one write, so the DSP has both lines before it answers either, and the answers, taken in
/// order, give the set's outcome and the level it left.
#[tokio::test]
async fn a_set_and_its_read_back_are_written_together_and_answered_in_order() {
    let cancel = CancellationToken::new();
    let (sim, rig, issued) = holding_answers(&cancel).await;
    let cut = spawn_cut(&rig);
    until_received(
        &sim,
        issued,
        "Zones get level 16",
        "the read-back is written before the set is answered",
    )
    .await;
    assert_eq!(received_since(&sim, issued, "Zones set level 16 -30"), 1);
    sim.hold_answers(false);
    let outcome = cut.await.unwrap();
    assert!(outcome.is_done(), "{outcome:?}");
    assert_eq!(zone_level(&rig, "z16"), Some(Value::Float(-30.0)));
    // The next exchange is not confused by the pair: a read of another zone answers its own.
    let read = rig
        .handle
        .priority_command(DeviceCommand::ReadZoneLevel { zone: "z1".into() })
        .await;
    assert!(read.is_done(), "{read:?}");
    assert_eq!(zone_level(&rig, "z1"), Some(Value::Float(-12.0)));
    rig.shutdown().await;
    cancel.cancel();
}
