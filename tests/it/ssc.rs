//! SSC driver + device runtime against the Sennheiser simulator over real loopback UDP, in
//! paused tokio time: full state, absent transmitters (424), SpeechLine seconds, subscription
//! renewal before expiry, silence, commands and bad datagrams.

use avwarden::model::{Point, Quantity};
use std::net::SocketAddr;
use std::time::Duration;

use avwarden::codec::ssc::{self as wire, Builder, SubscribeParams};
use avwarden::model::{DeviceCommand, Health, Severity, Value};
use avwarden::runtime::{CommandOutcome, DeviceSpec};
use avwarden::sim::mic::TxSpec;
use avwarden::sim::ssc::{Product, SscSim, SscSimConfig};
use avwarden::sim::{SimBind, SimEndpoint};
use avwarden::transport::LinkSpec;
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::support::{self, fault, int, val, wait_state, Rig};

/// A receiver under the runtime, reached at `addr`.
fn start(profile: &str, addr: SocketAddr, settings: &str) -> Rig {
    let link = LinkSpec::Udp {
        host: addr.ip().to_string(),
        port: addr.port(),
    };
    let spec = DeviceSpec::new("rx-1", "room-1", support::profile(profile), link);
    Rig::start(spec, settings, |_| {})
}

async fn start_sim(config: SscSimConfig) -> (SscSim, CancellationToken) {
    let cancel = CancellationToken::new();
    let sim = SscSim::start(config, "127.0.0.1:0".parse().unwrap(), cancel.clone())
        .await
        .expect("simulator starts");
    (sim, cancel)
}

/// An EW-DX started the way `avwarden simulate` starts it: identity, per-channel transmitter,
/// battery, receiver settings and meters after connect; channel 2 without a transmitter shows
/// `unknown` battery readings (error 424), never 0.
#[tokio::test(start_paused = true)]
async fn ewdx_full_state_and_absent_transmitter() {
    let options: toml::Table = toml::from_str(
        r#"
        product = "ew-dx"
        channels = 2
        serial = "EWDX-0042"
        [[transmitters]]
        channel = 1
        minutes = 333
        "#,
    )
    .unwrap();
    let cancel = CancellationToken::new();
    let ep = avwarden::sim::spawn(
        &support::profile("sennheiser-ewdx"),
        &options,
        SimBind::Udp("127.0.0.1:0".parse().unwrap()),
        support::clock(),
        cancel.clone(),
    )
    .await
    .expect("simulator");
    let SimEndpoint::Udp(addr) = ep else {
        panic!("udp endpoint expected")
    };
    let mut rig = start("sennheiser-ewdx", addr, "");
    let s = rig.up().await;
    assert_eq!(s.identity.manufacturer.as_deref(), Some("Sennheiser"));
    assert_eq!(s.identity.model.as_deref(), Some("EW-DX EM 2"));
    assert_eq!(s.identity.serial.as_deref(), Some("EWDX-0042"));
    assert_eq!(s.identity.firmware.as_deref(), Some("3.1.0"));
    assert_eq!(
        s.identity.extra.get("channels").map(String::as_str),
        Some("2")
    );
    assert_eq!(
        val(&s, &Point::channel(1, Quantity::TxPresent)),
        Some(&Value::Bool(true))
    );
    assert_eq!(
        val(&s, &Point::channel(1, Quantity::BatteryMinutes)),
        int(333).as_ref()
    );
    assert_eq!(
        val(&s, &Point::channel(1, Quantity::BatteryPercent)),
        int(51).as_ref()
    );
    assert_eq!(
        val(&s, &Point::channel(1, Quantity::BatteryType)),
        Some(&Value::Text("Battery".into()))
    );
    assert_eq!(
        val(&s, &Point::channel(1, Quantity::TxModel)),
        Some(&Value::Text("SKM".into()))
    );
    assert_eq!(
        val(&s, &Point::channel(1, Quantity::TxMuted)),
        Some(&Value::Bool(false))
    );
    assert_eq!(
        val(&s, &Point::channel(1, Quantity::Name)),
        Some(&Value::Text("MIC1".into()))
    );
    assert_eq!(
        val(&s, &Point::channel(1, Quantity::Muted)),
        Some(&Value::Bool(false))
    );
    assert_eq!(
        val(&s, &Point::channel(1, Quantity::GainDb)),
        Some(&Value::Float(0.0))
    );
    assert_eq!(
        val(&s, &Point::channel(1, Quantity::EncryptionOk)),
        Some(&Value::Bool(true))
    );
    assert_eq!(
        val(&s, &Point::channel(1, Quantity::Interference)),
        None,
        "EW-DX has no interference word"
    );
    assert_eq!(
        val(&s, &Point::channel(1, Quantity::FrequencyMhz)),
        Some(&Value::Float(548.0))
    );

    assert_eq!(
        val(&s, &Point::channel(2, Quantity::TxPresent)),
        Some(&Value::Bool(false))
    );
    for k in [
        Quantity::BatteryMinutes,
        Quantity::BatteryPercent,
        Quantity::BatteryType,
        Quantity::TxModel,
        Quantity::TxMuted,
    ] {
        assert_eq!(val(&s, &Point::channel(2, k)), Some(&Value::Unknown), "{k}");
    }
    assert_eq!(s.health, Health::Ok, "{:?}", s.faults);

    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = rig.rx.borrow().clone();
    let rf = val(&s, &Point::channel(1, Quantity::RfDbm))
        .and_then(Value::as_f64)
        .expect("rf meter");
    let board = rig.handle.meters();
    let af = board
        .get(&avwarden::model::Subject::Channel(1))
        .map(|l| l.dbfs)
        .expect("af meter");
    assert!((-60.0..=-40.0).contains(&rf), "{rf}");
    assert!((-30.0..=-18.0).contains(&af), "{af}");
    // Issue 14.3: channel 2's receiver meters its floor without a transmitter; that is no
    // level, so RF and audio are unknown (not -100 dBm / -90 dBFS).
    assert_eq!(
        val(&s, &Point::channel(2, Quantity::RfDbm)),
        Some(&Value::Unknown)
    );
    assert_eq!(board.get(&avwarden::model::Subject::Channel(2)), None);
    assert!(board
        .levels()
        .iter()
        .any(|(s, l)| *s == avwarden::model::Subject::Channel(2) && l.is_none()));
    rig.shutdown().await;
    cancel.cancel();
}

/// SpeechLine reports lifetime in seconds: 36240 s (protocols.md §3.5 vector 4) is 604 min.
#[tokio::test(start_paused = true)]
async fn speechline_lifetime_seconds_become_minutes() {
    let mut cfg = SscSimConfig::new(Product::Speechline, 4, 604);
    cfg.transmitters.truncate(2);
    let (sim, sc) = start_sim(cfg).await;
    let mut rig = start("sennheiser-speechline", sim.addr(), "");
    let s = rig.up().await;
    assert_eq!(
        s.identity.extra.get("channels").map(String::as_str),
        Some("4")
    );
    assert_eq!(
        val(&s, &Point::channel(1, Quantity::BatteryMinutes)),
        int(604).as_ref()
    );
    assert_eq!(
        val(&s, &Point::channel(1, Quantity::BatteryBars)),
        int(5).as_ref()
    );
    assert!(matches!(
        val(&s, &Point::channel(1, Quantity::BatteryCycles)),
        Some(Value::Int(_))
    ));
    assert_eq!(
        val(&s, &Point::channel(3, Quantity::TxPresent)),
        Some(&Value::Bool(false))
    );
    assert_eq!(
        val(&s, &Point::channel(3, Quantity::BatteryMinutes)),
        Some(&Value::Unknown)
    );
    // The receiver's own low-battery word ("Low Bat") and the minute thresholds agree.
    sim.set_battery_minutes(2, 25.0);
    let s = rig
        .until("low battery", |s| fault(s, "battery_low", 2).is_some())
        .await;
    assert_eq!(
        val(&s, &Point::channel(2, Quantity::BatteryMinutes)),
        int(25).as_ref()
    );
    assert_eq!(
        fault(&s, "battery_low", 2).map(|f| f.severity),
        Some(Severity::Warning),
        "25 min: below 60, above the 20 min fault"
    );
    rig.shutdown().await;
    sc.cancel();
}

/// A raw client that subscribes and never renews gets error 310 when the lifetime ends: the
/// simulator really expires subscriptions, so the renewal test below can fail.
#[tokio::test(start_paused = true)]
async fn unrenewed_subscription_expires_with_310() {
    let (sim, sc) = start_sim(SscSimConfig::new(Product::EwDx, 2, 300)).await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.connect(sim.addr()).await.unwrap();
    let params = SubscribeParams {
        min_ms: 0,
        max_ms: 0,
        count: 1000,
        lifetime_secs: 5,
    };
    let addr = "/mates/tx1/battery/gauge".to_owned();
    sock.send(
        &Builder::new()
            .subscribe(params, std::slice::from_ref(&addr))
            .encode(),
    )
    .await
    .unwrap();
    let t = Instant::now();
    let mut buf = vec![0u8; 4096];
    let mut echoed = false;
    let mut value = false;
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), sock.recv(&mut buf))
            .await
            .expect("datagram")
            .unwrap();
        let m = wire::parse(&buf[..n]).unwrap();
        echoed |= !m.subscribe.is_empty();
        value |= m.value(&addr).is_some();
        if let Some(e) = m.error(&addr) {
            assert_eq!(e.code, wire::ERR_SUBSCRIPTION_TERMINATED);
            break;
        }
    }
    assert!(echoed && value, "echo, then the current value");
    let after = t.elapsed();
    assert!(
        after >= Duration::from_secs(5) && after <= Duration::from_millis(5200),
        "{after:?}"
    );
    assert_eq!(sim.stats().expired, 1);
    sc.cancel();
}

/// The driver renews every subscription at half its lifetime: five minutes without a single
/// expiry, state changes and meters still flowing at the end.
#[tokio::test(start_paused = true)]
async fn subscriptions_are_renewed_before_they_expire() {
    let (sim, sc) = start_sim(SscSimConfig::new(Product::EwDx, 2, 300)).await;
    let mut rig = start("sennheiser-ewdx", sim.addr(), "");
    rig.up().await;
    rig.until("meters flow", |s| {
        s.reading(&Point::channel(2, Quantity::RfDbm)).is_some()
    })
    .await;
    assert_eq!(sim.subscriptions(), 4, "state + meters for two channels");
    tokio::time::sleep(Duration::from_secs(300)).await;
    let st = sim.stats();
    assert_eq!(st.expired, 0, "no subscription lapsed");
    assert!(
        st.renewals >= 4 * 9,
        "renewed every 30 s: {} renewals",
        st.renewals
    );
    assert_eq!(sim.subscriptions(), 4);
    // Battery drain arrived through the state subscription.
    let s = rig.rx.borrow().clone();
    assert_eq!(
        val(&s, &Point::channel(1, Quantity::BatteryMinutes)),
        int(295).as_ref()
    );
    // Meters still at 1 Hz.
    let mut ev = rig.bus.meters().subscribe("count");
    let end = Instant::now() + Duration::from_secs(10);
    let mut meters = 0;
    while let Ok(batch) = tokio::time::timeout_at(end, ev.recv()).await {
        meters += batch
            .iter()
            .filter(|s| s.subject == avwarden::model::Subject::Channel(2))
            .count();
    }
    assert!(
        (9..=11).contains(&meters),
        "{meters} meter values in 10 s at 1000 ms"
    );
    rig.shutdown().await;
    sc.cancel();
}

/// Transmitters leaving and arriving, and an encryption mismatch, arrive through the
/// subscriptions without a poll.
#[tokio::test(start_paused = true)]
async fn transmitter_changes_and_warnings_arrive_unasked() {
    let (sim, sc) = start_sim(SscSimConfig::new(Product::EwDx, 2, 300)).await;
    let mut rig = start("sennheiser-ewdx", sim.addr(), "expected_channels = [1, 2]");
    rig.up().await;

    sim.remove_tx(1);
    let s = rig
        .until("tx gone", |s| {
            val(s, &Point::channel(1, Quantity::TxPresent)) == Some(&Value::Bool(false))
        })
        .await;
    assert_eq!(
        val(&s, &Point::channel(1, Quantity::BatteryMinutes)),
        Some(&Value::Unknown)
    );
    assert_eq!(
        val(&s, &Point::channel(1, Quantity::BatteryPercent)),
        Some(&Value::Unknown)
    );
    assert!(fault(&s, "tx_absent", 1).is_some());

    sim.insert_tx(TxSpec::new(1, 500));
    let s = rig
        .until("new tx", |s| {
            // 500 min at insertion, reported on the simulator's next 100 ms tick (rounded down).
            matches!(
                val(s, &Point::channel(1, Quantity::BatteryMinutes)),
                Some(Value::Int(499 | 500))
            )
        })
        .await;
    assert_eq!(
        val(&s, &Point::channel(1, Quantity::TxPresent)),
        Some(&Value::Bool(true))
    );
    assert!(fault(&s, "tx_absent", 1).is_none());

    sim.set_encryption_mismatch(2, true);
    let s = rig
        .until("aes error", |s| {
            fault(s, "encryption_mismatch", 2).is_some()
        })
        .await;
    assert_eq!(
        val(&s, &Point::channel(2, Quantity::EncryptionOk)),
        Some(&Value::Bool(false))
    );
    assert_eq!(s.health, Health::Faulted);
    sim.set_encryption_mismatch(2, false);
    rig.until("aes ok", |s| s.faults.is_empty()).await;
    rig.shutdown().await;
    sc.cancel();
}

/// 60 s without a datagram drops the link; it comes back when the receiver answers again.
#[tokio::test(start_paused = true)]
async fn silence_drops_and_reopens_the_link() {
    let (sim, sc) = start_sim(SscSimConfig::new(Product::EwDx, 2, 300)).await;
    let mut rig = start("sennheiser-ewdx", sim.addr(), "");
    rig.up().await;
    sim.set_silent(true);
    let t = Instant::now();
    let s = wait_state(&mut rig.rx, Duration::from_secs(90), "drop", |s| {
        !s.reachable
    })
    .await;
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_secs(59) && waited <= Duration::from_secs(61),
        "{waited:?}"
    );
    assert_eq!(s.health, Health::Unreachable);
    sim.set_silent(false);
    let s = wait_state(&mut rig.rx, Duration::from_secs(120), "back", |s| {
        s.reachable
    })
    .await;
    assert_eq!(s.health, Health::Ok);
    assert_eq!(s.counters.reconnects, 1);
    rig.shutdown().await;
    sc.cancel();
}

/// `set_gain` rounds to the receiver's 3 dB steps; out of range is refused; `set_mute` lands.
#[tokio::test(start_paused = true)]
async fn gain_and_mute_commands() {
    let (sim, sc) = start_sim(SscSimConfig::new(Product::EwDx, 2, 300)).await;
    let mut rig = start("sennheiser-ewdx", sim.addr(), "");
    rig.up().await;
    rig.handle
        .command(DeviceCommand::SetGain {
            channel: 1,
            db: 13.0,
        })
        .await
        .into_result()
        .expect("gain");
    assert_eq!(sim.gain_db(1), Some(12));
    assert_eq!(
        val(&rig.rx.borrow(), &Point::channel(1, Quantity::GainDb)),
        Some(&Value::Float(12.0))
    );
    let err = rig
        .handle
        .command(DeviceCommand::SetGain {
            channel: 1,
            db: 60.0,
        })
        .await
        .into_result()
        .expect_err("too loud");
    assert!(
        matches!(err, CommandOutcome::Rejected { .. }),
        "issue 14.5: avwarden's own limit, nothing sent: {err}"
    );
    rig.handle
        .command(DeviceCommand::SetMute {
            channel: 2,
            on: true,
        })
        .await
        .into_result()
        .expect("mute");
    assert_eq!(sim.rx_muted(2), Some(true));
    assert_eq!(
        val(&rig.rx.borrow(), &Point::channel(2, Quantity::Muted)),
        Some(&Value::Bool(true))
    );
    rig.shutdown().await;
    sc.cancel();
}

/// Non-JSON and oversized datagrams are counted and dropped; the link stays up and good
/// datagrams still land.
#[tokio::test(start_paused = true)]
async fn bad_datagrams_are_counted_not_fatal() {
    let (sim, sc) = start_sim(SscSimConfig::new(Product::EwDx, 2, 300)).await;
    let mut rig = start("sennheiser-ewdx", sim.addr(), "");
    rig.up().await;
    rig.until("meters flow", |s| {
        s.reading(&Point::channel(1, Quantity::RfDbm)).is_some()
    })
    .await;
    let client = sim.subscribers()[0];
    sim.inject(client, b"{not json").await;
    sim.inject(client, &vec![b'x'; 20_000]).await;
    sim.inject(client, br#"{"rx1":{"name":"AFTER"}}"#).await;
    let s = rig
        .until("good datagram", |s| {
            val(s, &Point::channel(1, Quantity::Name)) == Some(&Value::Text("AFTER".into()))
        })
        .await;
    assert_eq!(s.counters.bad_frames, 1);
    assert_eq!(s.counters.oversized_frames, 1);
    assert!(s.link.up);
    assert_eq!(s.counters.reconnects, 0);
    rig.shutdown().await;
    sc.cancel();
}
