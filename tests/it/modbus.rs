//! Modbus RTU room controllers: every shipped register map against our simulator (paused time,
//! in-memory line), the thermal model's pre-conditioning time, counted faults, the runtime over
//! a real pseudo-terminal, and interop with pymodbus in both roles.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use avwarden::driver::{Driver, DriverError, Link, Observer};
use avwarden::model::{DeviceCommand, DeviceId, DeviceState, Health, RoomId, Value};
use avwarden::profile::Profile;
use avwarden::runtime::{DeviceSpec, Fleet};
use avwarden::sim::modbus::{ModbusSimOptions, RoomController};
use avwarden::sim::pty::PtyMaster;
use avwarden::sim::thermal::Mode;
use avwarden::sim::SimBind;
use avwarden::transport::serial::{Parity, SerialSpec};
use avwarden::transport::{LinkSpec, Stream};
use tokio::io::AsyncBufReadExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::support::{bus, clock, data, profile, python, wait_state};

const MODBUS_PROFILES: &[&str] = &[
    "avwarden-sim-modbus",
    "kaysun-kc-fcd2",
    "mundoclima-mup-w9",
    "aermec-fcwi",
];

/// A driver talking to a simulated controller over an in-memory line, observed directly.
struct Bench {
    driver: Box<dyn Driver>,
    link: Link,
    obs: Observer,
    state: watch::Receiver<DeviceState>,
    ctl: RoomController,
    _cancel: tokio_util::sync::DropGuard,
}

impl Bench {
    fn new(profile: &Arc<Profile>, opts: ModbusSimOptions) -> Bench {
        let map = avwarden::codec::modbus_map::RegisterMap::from_table(&profile.options).unwrap();
        let ctl = RoomController::new(map, &opts).unwrap();
        let (ours, theirs) = tokio::io::duplex(1024);
        let cancel = CancellationToken::new();
        let served = ctl.clone();
        let c = cancel.clone();
        tokio::spawn(async move { served.serve(theirs, c).await });
        let (tx, state) = watch::channel(DeviceState::new(
            DeviceId::new("hvac-101"),
            RoomId::new("room-101"),
            profile.id.clone(),
            "duplex".into(),
            clock().now(),
        ));
        let obs = Observer::new(clock(), Arc::new(tx), bus());
        let driver = avwarden::driver::for_profile(profile, None, &toml::Table::new()).unwrap();
        Bench {
            driver,
            link: Link::from_stream(Stream::new(ours, "duplex")),
            obs,
            state,
            ctl,
            _cancel: cancel.drop_guard(),
        }
    }

    async fn connect(&mut self) {
        self.driver
            .open(&mut self.link, &mut self.obs)
            .await
            .unwrap();
        self.driver
            .read_all(&mut self.link, &mut self.obs)
            .await
            .unwrap();
        // What the runtime's actor does once a session is up.
        self.obs.update(|s| {
            s.reachable = true;
            s.link.up = true;
        });
    }

    async fn run(&mut self, cmd: DeviceCommand) -> Result<(), DriverError> {
        self.driver
            .execute(&mut self.link, &mut self.obs, &cmd)
            .await
    }

    async fn poll(&mut self) -> Result<(), DriverError> {
        self.driver.poll(&mut self.link, &mut self.obs).await
    }

    fn reading(&self, key: &str) -> Option<Value> {
        self.state.borrow().reading(key).map(|r| r.value.clone())
    }

    fn float(&self, key: &str) -> f64 {
        match self.reading(key) {
            Some(Value::Float(f)) => f,
            other => panic!("{key}: {other:?}"),
        }
    }

    fn text(&self, key: &str) -> String {
        match self.reading(key) {
            Some(Value::Text(t)) => t,
            other => panic!("{key}: {other:?}"),
        }
    }
}

fn opts(temp: f64, setpoint: f64, mode: &str, power: bool) -> ModbusSimOptions {
    ModbusSimOptions {
        temperature_c: temp,
        setpoint_c: setpoint,
        mode: mode.into(),
        power,
        ..Default::default()
    }
}

/// Every shipped Modbus map: read the room, set a setpoint, a mode, power off and on, through
/// the same driver; the simulator serves the same map, so each profile is loaded and exercised.
#[tokio::test(start_paused = true)]
async fn modbus_every_profile_reads_and_writes() {
    for id in MODBUS_PROFILES {
        let p = profile(id);
        let mut b = Bench::new(&p, opts(26.0, 22.0, "cool", true));
        b.connect().await;
        let t = b.float("temperature");
        let step: f64 = if *id == "mundoclima-mup-w9" { 0.5 } else { 0.1 };
        let expect = if *id == "kaysun-kc-fcd2" {
            26.0
        } else {
            (26.0 / step).round() * step
        };
        assert!((t - expect).abs() < 1e-9, "{id}: temperature {t}");
        assert_eq!(b.float("setpoint"), 22.0, "{id}");
        assert_eq!(b.text("hvac_mode"), "cool", "{id}");
        assert_eq!(b.reading("power"), Some(Value::Bool(true)), "{id}");

        b.run(DeviceCommand::SetSetpoint { celsius: 23.0 })
            .await
            .unwrap();
        assert_eq!(b.ctl.controls().setpoint_c, 23.0, "{id}");
        assert_eq!(b.float("setpoint"), 23.0, "{id}");

        b.run(DeviceCommand::SetHvacMode {
            mode: "heat".into(),
        })
        .await
        .unwrap();
        assert_eq!(b.ctl.controls().mode, Mode::Heat, "{id}");
        assert_eq!(b.text("hvac_mode"), "heat", "{id}");

        b.run(DeviceCommand::Power { on: false }).await.unwrap();
        b.poll().await.unwrap();
        assert_eq!(b.reading("power"), Some(Value::Bool(false)), "{id}");
        assert_eq!(b.text("hvac_mode"), "off", "{id}");
        let c = b.ctl.controls();
        assert!(!c.power || c.mode == Mode::Off, "{id}: {c:?}");

        // Power on restores the last active mode.
        b.run(DeviceCommand::Power { on: true }).await.unwrap();
        b.poll().await.unwrap();
        assert_eq!(b.text("hvac_mode"), "heat", "{id}");

        // A setpoint outside the unit's range is refused before it reaches the wire.
        let e = b
            .run(DeviceCommand::SetSetpoint { celsius: 45.0 })
            .await
            .unwrap_err();
        assert!(matches!(e, DriverError::Refused { .. }), "{id}: {e}");
        let e = b
            .run(DeviceCommand::SetHvacMode {
                mode: "boost".into(),
            })
            .await
            .unwrap_err();
        assert!(matches!(e, DriverError::Refused { .. }), "{id}: {e}");
        assert!(
            b.state.borrow().faults.is_empty(),
            "{id}: {:?}",
            b.state.borrow().faults
        );
    }
}

/// The thermal model under a real driver: from 28 °C, cooling to 23 °C at the model's rate
/// reaches the 22–24 °C band when (28 − 24) / rate predicts, not before.
#[tokio::test(start_paused = true)]
async fn modbus_preconditioning_reaches_the_band_when_the_rate_predicts() {
    let p = profile("avwarden-sim-modbus");
    let mut b = Bench::new(&p, opts(28.0, 22.0, "off", false));
    b.connect().await;
    assert_eq!(b.float("temperature"), 28.0);
    let start = tokio::time::Instant::now();
    b.run(DeviceCommand::SetSetpoint { celsius: 23.0 })
        .await
        .unwrap();
    b.run(DeviceCommand::SetHvacMode {
        mode: "cool".into(),
    })
    .await
    .unwrap();
    b.poll().await.unwrap();
    assert_eq!(b.text("hvac_running"), "cool");
    let predicted = Duration::from_secs_f64(b.ctl.params().predicted_minutes(28.0, 24.0) * 60.0);
    assert_eq!(predicted, Duration::from_secs(16 * 60));
    let reached = loop {
        tokio::time::sleep(Duration::from_secs(15)).await;
        b.poll().await.unwrap();
        if b.float("temperature") <= 24.0 {
            break start.elapsed();
        }
        assert!(start.elapsed() < predicted * 2, "never reached the band");
    };
    // Readings are 0.1 °C steps and polls 15 s apart: the band is reached within one poll
    // (plus one reading step) of the prediction.
    let slack = Duration::from_secs(15 + 24);
    assert!(
        reached + slack >= predicted && reached <= predicted + slack,
        "reached after {reached:?}, predicted {predicted:?}"
    );
    let t = b.float("temperature");
    assert!((22.0..=24.0).contains(&t), "{t}");
    // It holds the band: cooling stops at the setpoint and restarts past the deadband.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    b.poll().await.unwrap();
    let t = b.float("temperature");
    assert!((22.0..=24.0).contains(&t), "after an hour: {t}");
}

/// CRC errors, truncated replies and garbage are counted as bad frames; an exception reply is
/// a fault on that point; alarm bits are faults; a run of silences makes the device
/// unreachable. Nothing panics, and the device recovers.
#[tokio::test(start_paused = true)]
async fn modbus_faults_are_counted_and_reported() {
    let p = profile("avwarden-sim-modbus");
    let mut b = Bench::new(&p, opts(21.0, 22.0, "heat", true));
    b.connect().await;
    let bad = |b: &Bench| b.state.borrow().counters.bad_frames;

    b.ctl.faults(|f| f.bad_crc = 1);
    b.poll().await.unwrap();
    assert_eq!(bad(&b), 1);
    b.ctl.faults(|f| f.truncate = 1);
    b.poll().await.unwrap();
    assert_eq!(bad(&b), 2);
    b.ctl.faults(|f| f.garbage = 1);
    b.poll().await.unwrap();
    assert_eq!(bad(&b), 3);
    // One bad reply among good ones is not a run: still reachable, readings fresh.
    assert_eq!(b.float("temperature"), 21.0);

    // Exception 04 on the temperature register: a fault on that point.
    b.ctl.faults(|f| f.exception_at = Some((0, 4)));
    b.poll().await.unwrap();
    let s = b.state.borrow().clone();
    // Address 0 is both input register 0 (temperature) and holding register 0 (setpoint).
    let f = s
        .faults
        .iter()
        .find(|f| {
            f.fault.code == "modbus_exception"
                && f.fault.component.as_deref() == Some("temperature")
        })
        .expect("fault on temperature");
    assert!(
        f.fault.message.contains("04 server device failure"),
        "{}",
        f.fault.message
    );
    assert_eq!(s.health, Health::Faulted);
    b.ctl.faults(|f| f.exception_at = None);
    b.poll().await.unwrap();
    assert!(b.state.borrow().faults.is_empty());

    // Alarm bits from the unit.
    b.ctl
        .faults(|f| f.alarms = vec!["fan motor failure".into()]);
    b.poll().await.unwrap();
    let s = b.state.borrow().clone();
    assert!(s.faults.iter().any(|f| f.fault.code == "hvac_alarm"
        && f.fault.component.as_deref() == Some("fan motor failure")));
    b.ctl.faults(|f| f.alarms.clear());
    b.poll().await.unwrap();
    assert!(b.state.borrow().faults.is_empty());

    // Silence: each exchange times out; the third in a row makes it a link failure.
    let timeouts_before = b.state.borrow().counters.timeouts;
    b.ctl.faults(|f| f.silent = true);
    let e = b.poll().await.unwrap_err();
    assert!(e.is_link_failure(), "{e}");
    assert!(
        e.to_string().contains("3 modbus exchanges in a row failed"),
        "{e}"
    );
    assert_eq!(b.state.borrow().counters.timeouts, timeouts_before + 3);
    // Commands while silent time out rather than hang.
    let e = b
        .run(DeviceCommand::SetSetpoint { celsius: 21.0 })
        .await
        .unwrap_err();
    assert!(matches!(e, DriverError::Timeout { .. }), "{e}");
    b.ctl.faults(|f| f.silent = false);
    b.driver.read_all(&mut b.link, &mut b.obs).await.unwrap();
    assert_eq!(b.float("temperature"), 21.0);
}

/// A write the unit refuses with an exception is a refusal, not a link failure.
#[tokio::test(start_paused = true)]
async fn modbus_write_exception_is_a_refusal() {
    let p = profile("avwarden-sim-modbus");
    // Serve a stricter map than the driver's: the unit refuses setpoints above 25 °C.
    let mut strict = p.options.clone();
    strict["points"]["setpoint"]["max"] = toml::Value::Float(25.0);
    let map = avwarden::codec::modbus_map::RegisterMap::from_table(&strict).unwrap();
    let mut b = Bench::new(&p, opts(21.0, 22.0, "heat", true));
    b.ctl = RoomController::new(map, &opts(21.0, 22.0, "heat", true)).unwrap();
    let (ours, theirs) = tokio::io::duplex(1024);
    let served = b.ctl.clone();
    tokio::spawn(async move { served.serve(theirs, CancellationToken::new()).await });
    b.link = Link::from_stream(Stream::new(ours, "duplex"));
    b.connect().await;
    let e = b
        .run(DeviceCommand::SetSetpoint { celsius: 28.0 })
        .await
        .unwrap_err();
    match e {
        DriverError::Refused { reason, .. } => {
            assert!(reason.contains("03 illegal data value"), "{reason}")
        }
        other => panic!("{other}"),
    }
    assert_eq!(b.ctl.controls().setpoint_c, 22.0);
}

/// The runtime over a real pseudo-terminal: the actor opens the serial path with tokio-serial
/// (exclusive, 9600 8N1), reaches `ok`, executes a command, goes `unreachable` when the unit
/// falls silent and comes back by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modbus_runtime_over_a_pty() {
    let mut p = (*profile("avwarden-sim-modbus")).clone();
    p.timing.poll_interval = Duration::from_millis(300);
    let p = Arc::new(p);
    let cancel = CancellationToken::new();
    let (ep, ctl) = avwarden::sim::modbus::spawn_from_config(
        &p,
        &toml::from_str("temperature_c = 24.5\nmode = \"cool\"\npower = true").unwrap(),
        SimBind::Pty { link: None },
        clock(),
        cancel.clone(),
    )
    .await
    .unwrap();
    let avwarden::sim::SimEndpoint::Pty(path) = ep else {
        panic!("{ep}")
    };
    let link = LinkSpec::Serial(SerialSpec::new(path.display().to_string(), 9600));
    let tracker = TaskTracker::new();
    let mut fleet = Fleet::new(bus(), clock(), tracker.clone(), cancel.clone());
    let mut spec = DeviceSpec::new("hvac-101", "room-101", p.clone(), link);
    spec.backoff_min = Duration::from_millis(100);
    spec.backoff_max = Duration::from_millis(500);
    let h = fleet.spawn_device(spec).unwrap();
    let mut rx = h.watch();
    let limit = Duration::from_secs(20);
    wait_state(&mut rx, limit, "ok over the pty", |s| {
        s.health == Health::Ok
            && s.reading("temperature").map(|r| r.value.clone()) == Some(Value::Float(24.5))
    })
    .await;
    h.command(DeviceCommand::SetSetpoint { celsius: 21.5 })
        .await
        .unwrap();
    assert_eq!(ctl.controls().setpoint_c, 21.5);
    ctl.faults(|f| f.silent = true);
    wait_state(&mut rx, limit, "unreachable when silent", |s| {
        s.health == Health::Unreachable
    })
    .await;
    ctl.faults(|f| f.silent = false);
    let s = wait_state(&mut rx, limit, "back to ok", |s| s.health == Health::Ok).await;
    assert!(s.counters.timeouts >= 3, "{:?}", s.counters);
    assert!(s.counters.reconnects >= 1, "{:?}", s.counters);
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
}

/// The Aermec profile is 8E1 (the Modbus default); a pseudo-terminal carries no parity
/// (protocols.md 5.1), so even parity is checked as configuration: the profile asks for it and
/// the serial settings say so.
#[test]
fn modbus_even_parity_profile() {
    let p = profile("aermec-fcwi");
    assert_eq!(p.link.parity.as_deref(), Some("even"));
    let mut s = SerialSpec::new("/dev/ttyUSB0", p.link.baud.unwrap());
    s.parity = Parity::Even;
    assert_eq!(s.settings(), "9600 8E1");
    for id in MODBUS_PROFILES {
        let p = profile(id);
        assert_eq!(p.driver.as_str(), "modbus");
        // A bad per-device setting is refused when the driver is built, naming the option.
        let bad: toml::Table = toml::from_str("slave = 300").unwrap();
        assert!(
            avwarden::driver::for_profile(&p, None, &bad).is_err(),
            "{id}"
        );
        let good: toml::Table = toml::from_str("slave = 12").unwrap();
        assert!(
            avwarden::driver::for_profile(&p, None, &good).is_ok(),
            "{id}"
        );
    }
}

/// Our driver as the master, pymodbus as the slave, joined by two pseudo-terminals and a byte
/// relay (a null-modem cable): both sides open real tty paths with their serial libraries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modbus_driver_against_pymodbus_server() {
    let Some(py) = python() else { return };
    let mut am = PtyMaster::open(None).unwrap();
    let mut bm = PtyMaster::open(None).unwrap();
    let (a_path, b_path) = (am.path().to_path_buf(), bm.path().to_path_buf());
    let cancel = CancellationToken::new();
    let relay_cancel = cancel.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = relay_cancel.cancelled() => {}
            _ = tokio::io::copy_bidirectional(&mut am, &mut bm) => {}
        }
    });
    let mut server = tokio::process::Command::new(&py)
        .arg(data("modbus_room_server.py"))
        .arg(&a_path)
        .arg("9600")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start pymodbus server");
    let mut writes = tokio::io::BufReader::new(server.stdout.take().unwrap()).lines();

    let mut p = (*profile("avwarden-sim-modbus")).clone();
    p.timing.poll_interval = Duration::from_millis(500);
    p.timing.reply_timeout = Duration::from_secs(2);
    let p = Arc::new(p);
    let tracker = TaskTracker::new();
    let mut fleet = Fleet::new(bus(), clock(), tracker.clone(), cancel.clone());
    let link = LinkSpec::Serial(SerialSpec::new(b_path.display().to_string(), 9600));
    let mut spec = DeviceSpec::new("hvac-101", "room-101", p, link);
    spec.backoff_min = Duration::from_millis(200);
    spec.backoff_max = Duration::from_secs(1);
    let h = fleet.spawn_device(spec).unwrap();
    let mut rx = h.watch();
    // Generous: only bounds a hang (python start-up on a loaded machine).
    let limit = Duration::from_secs(60);
    // Every point read at least once (the first request may meet a server still starting).
    let s = wait_state(&mut rx, limit, "ok against pymodbus", |s| {
        s.health == Health::Ok
            && [
                "temperature",
                "setpoint",
                "hvac_mode",
                "hvac_running",
                "power",
                "fan",
            ]
            .iter()
            .all(|k| s.reading(k).is_some())
    })
    .await;
    let v = |k: &str| s.reading(k).map(|r| r.value.clone());
    assert_eq!(v("temperature"), Some(Value::Float(24.1)), "{s:#?}");
    assert_eq!(v("setpoint"), Some(Value::Float(22.5)));
    assert_eq!(v("hvac_mode"), Some(Value::Text("cool".into())));
    assert_eq!(v("hvac_running"), Some(Value::Text("cool".into())));
    assert_eq!(v("power"), Some(Value::Bool(true)));
    assert_eq!(v("fan"), Some(Value::Text("auto".into())));

    h.command(DeviceCommand::SetSetpoint { celsius: 22.0 })
        .await
        .unwrap();
    h.command(DeviceCommand::Power { on: false }).await.unwrap();
    let mut seen = Vec::new();
    let read_writes = async {
        while let Ok(Some(line)) = writes.next_line().await {
            let j: serde_json::Value = serde_json::from_str(&line).unwrap();
            seen.push((
                j["fc"].as_u64().unwrap(),
                j["address"].as_u64().unwrap(),
                j["values"][0].as_u64().unwrap(),
            ));
            if seen.len() == 2 {
                break;
            }
        }
    };
    tokio::time::timeout(limit, read_writes)
        .await
        .expect("pymodbus saw the writes");
    // FC06 holding 0 = 220 (22.0 °C ×10, protocols.md 5.1), then FC05 coil 0 off.
    assert_eq!(seen, vec![(6, 0, 220), (5, 0, 0)]);
    let s = wait_state(&mut rx, limit, "read back", |s| {
        s.reading("power").map(|r| r.value.clone()) == Some(Value::Bool(false))
    })
    .await;
    assert_eq!(s.reading("setpoint").unwrap().value, Value::Float(22.0));
    assert_eq!(
        s.reading("hvac_mode").unwrap().value,
        Value::Text("off".into())
    );
    // On a loaded machine a reply may come after its deadline and be counted as a bad frame
    // for the next request (RTU has no transaction ids); that must not cost the device.
    assert_eq!(s.health, Health::Ok, "{:?}", s.counters);
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
    let _ = server.start_kill();
}

/// pymodbus as the master reading and writing our simulator on a pseudo-terminal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pymodbus_client_reads_and_writes_our_simulator() {
    let Some(py) = python() else { return };
    let p = profile("avwarden-sim-modbus");
    let cancel = CancellationToken::new();
    let (ep, ctl) = avwarden::sim::modbus::spawn_from_config(
        &p,
        &toml::from_str("temperature_c = 22.5\nsetpoint_c = 21.0\nmode = \"cool\"\npower = false")
            .unwrap(),
        SimBind::Pty { link: None },
        clock(),
        cancel.clone(),
    )
    .await
    .unwrap();
    let avwarden::sim::SimEndpoint::Pty(path) = ep else {
        panic!("{ep}")
    };
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(&py)
            .arg(data("modbus_room_client.py"))
            .arg(&path)
            .arg("9600")
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("pymodbus client finished")
    .expect("run pymodbus client");
    let text = String::from_utf8_lossy(&out.stdout);
    let j: serde_json::Value =
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"));
    // Input 0: 22.5 °C ×10 = 225 (protocols.md 5.1); input 1: running (power off → 4 "off").
    assert_eq!(j["input"], serde_json::json!([225, 4, 0]), "{j}");
    // Holding 0..2: setpoint 21.0 = 210, mode cool = 2, fan auto = 0.
    assert_eq!(j["holding"], serde_json::json!([210, 2, 0]), "{j}");
    assert_eq!(j["coil"], serde_json::json!(false));
    assert_eq!(j["write_setpoint"], serde_json::json!(true));
    assert_eq!(j["write_mode"], serde_json::json!(true));
    assert_eq!(j["write_coil"], serde_json::json!(true));
    assert_eq!(j["holding_after"], serde_json::json!([230, 1, 0]), "{j}");
    assert_eq!(j["coil_after"], serde_json::json!(true));
    assert_eq!(j["unmapped"], serde_json::json!({"exception": 2}), "{j}");
    assert_eq!(
        j["out_of_range"],
        serde_json::json!({"exception": 3}),
        "{j}"
    );
    let c = ctl.controls();
    assert_eq!((c.setpoint_c, c.mode, c.power), (23.0, Mode::Heat, true));
    let n = ctl.counters();
    assert_eq!(n.rejected, 0, "{n:?}");
    assert!(n.exceptions >= 2, "{n:?}");
    cancel.cancel();
}
