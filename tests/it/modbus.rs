//! Modbus RTU room controllers: every shipped register map against our simulator (paused time,
//! in-memory line), vendor maps pinned byte for byte to protocols.md 5.1 against a unit that
//! knows no profile, the FC16 write path, the thermal model's pre-conditioning time, counted
//! faults, the runtime over a real pseudo-terminal, and interop with pymodbus in both roles.

use avwarden::model::{Point, Quantity};
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
use avwarden::transport::LinkSpec;
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

/// The driver a profile (with a device's `settings`) builds, and its observed state.
fn observed(
    profile: &Arc<Profile>,
    settings: &toml::Table,
) -> (Box<dyn Driver>, Observer, watch::Receiver<DeviceState>) {
    let (tx, state) = watch::channel(DeviceState::new(
        DeviceId::new("hvac-101"),
        RoomId::new("room-101"),
        profile.id.clone(),
        "duplex".into(),
        clock().now(),
    ));
    let obs = Observer::new(clock(), Arc::new(tx), bus());
    let driver = avwarden::driver::for_profile(profile, None, settings).unwrap();
    (driver, obs, state)
}

impl Bench {
    fn new(profile: &Arc<Profile>, opts: ModbusSimOptions) -> Bench {
        Bench::with_settings(profile, opts, "")
    }

    /// The simulator serves the profile's own map; the driver also gets the device's
    /// `[devices.settings]` (TOML).
    fn with_settings(profile: &Arc<Profile>, opts: ModbusSimOptions, settings: &str) -> Bench {
        let map = avwarden::codec::modbus_map::RegisterMap::from_table(&profile.options).unwrap();
        let ctl = RoomController::new(map, &opts).unwrap();
        let (ours, theirs) = tokio::io::duplex(1024);
        let cancel = CancellationToken::new();
        let served = ctl.clone();
        let c = cancel.clone();
        crate::support::spawn(async move { served.serve(theirs, c).await });
        let settings: toml::Table = toml::from_str(settings).expect("settings");
        let (driver, obs, state) = observed(profile, &settings);
        Bench {
            driver,
            link: Link::over(ours),
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

    fn reading(&self, point: &Point) -> Option<Value> {
        self.state.borrow().reading(point).map(|r| r.value.clone())
    }

    fn float(&self, point: &Point) -> f64 {
        match self.reading(point) {
            Some(Value::Float(f)) => f,
            other => panic!("{point}: {other:?}"),
        }
    }

    fn text(&self, point: &Point) -> String {
        match self.reading(point) {
            Some(Value::Text(t)) => t,
            other => panic!("{point}: {other:?}"),
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
        let t = b.float(&Point::device(Quantity::Temperature));
        let step: f64 = if *id == "mundoclima-mup-w9" { 0.5 } else { 0.1 };
        let expect = if *id == "kaysun-kc-fcd2" {
            26.0
        } else {
            (26.0 / step).round() * step
        };
        assert!((t - expect).abs() < 1e-9, "{id}: temperature {t}");
        assert_eq!(b.float(&Point::device(Quantity::Setpoint)), 22.0, "{id}");
        assert_eq!(b.text(&Point::device(Quantity::HvacMode)), "cool", "{id}");
        assert_eq!(
            b.reading(&Point::device(Quantity::Power)),
            Some(Value::Bool(true)),
            "{id}"
        );

        b.run(DeviceCommand::SetSetpoint { celsius: 23.0 })
            .await
            .unwrap();
        assert_eq!(b.ctl.controls().setpoint_c, 23.0, "{id}");
        assert_eq!(b.float(&Point::device(Quantity::Setpoint)), 23.0, "{id}");

        // Issue 14.6: a half degree on a whole-degree unit is applied as the unit holds it,
        // and the command says so instead of answering a silent "ok".
        b.obs.take_applied();
        b.run(DeviceCommand::SetSetpoint { celsius: 22.5 })
            .await
            .unwrap();
        let held = if matches!(*id, "kaysun-kc-fcd2" | "mundoclima-mup-w9") {
            23.0
        } else {
            22.5
        };
        assert_eq!(b.ctl.controls().setpoint_c, held, "{id}");
        let applied = b.obs.take_applied().expect("applied setpoint");
        assert_eq!(
            (applied.point, applied.value),
            (Point::device(Quantity::Setpoint), Value::Float(held)),
            "{id}"
        );
        b.run(DeviceCommand::SetSetpoint { celsius: 23.0 })
            .await
            .unwrap();

        b.run(DeviceCommand::SetHvacMode {
            mode: "heat".into(),
        })
        .await
        .unwrap();
        assert_eq!(b.ctl.controls().mode, Mode::Heat, "{id}");
        assert_eq!(b.text(&Point::device(Quantity::HvacMode)), "heat", "{id}");

        b.run(DeviceCommand::Power { on: false }).await.unwrap();
        b.poll().await.unwrap();
        assert_eq!(
            b.reading(&Point::device(Quantity::Power)),
            Some(Value::Bool(false)),
            "{id}"
        );
        assert_eq!(b.text(&Point::device(Quantity::HvacMode)), "off", "{id}");
        let c = b.ctl.controls();
        assert!(!c.power || c.mode == Mode::Off, "{id}: {c:?}");

        // Power on restores the last active mode.
        b.run(DeviceCommand::Power { on: true }).await.unwrap();
        b.poll().await.unwrap();
        assert_eq!(b.text(&Point::device(Quantity::HvacMode)), "heat", "{id}");

        // A setpoint outside the unit's range is rejected by avwarden before it reaches the
        // wire (issue 14.5: rejected, with the limit, not "device refused").
        let e = b
            .run(DeviceCommand::SetSetpoint { celsius: 45.0 })
            .await
            .unwrap_err();
        assert!(matches!(e, DriverError::Rejected { .. }), "{id}: {e}");
        assert!(e.to_string().contains("outside"), "{id}: {e}");
        let e = b
            .run(DeviceCommand::SetHvacMode {
                mode: "boost".into(),
            })
            .await
            .unwrap_err();
        assert!(matches!(e, DriverError::Rejected { .. }), "{id}: {e}");
        assert!(
            b.state.borrow().faults.is_empty(),
            "{id}: {:?}",
            b.state.borrow().faults
        );
    }
}

/// Issue 14.6: a site whose whole-degree unit must never be rounded marks the point `exact`;
/// 22.5 is then rejected with the unit's step and nothing is written.
#[tokio::test(start_paused = true)]
async fn an_exact_setpoint_point_rejects_a_value_between_steps() {
    let p = profile("kaysun-kc-fcd2");
    let mut b = Bench::with_settings(
        &p,
        opts(26.0, 22.0, "cool", true),
        "[points.setpoint]\nexact = true",
    );
    b.connect().await;
    let e = b
        .run(DeviceCommand::SetSetpoint { celsius: 22.5 })
        .await
        .unwrap_err();
    assert!(matches!(e, DriverError::Rejected { .. }), "{e}");
    assert!(e.to_string().contains("step of 1"), "{e}");
    assert_eq!(b.ctl.controls().setpoint_c, 22.0, "nothing written");
    b.run(DeviceCommand::SetSetpoint { celsius: 23.0 })
        .await
        .unwrap();
    assert_eq!(b.ctl.controls().setpoint_c, 23.0);
}

/// Exact RTU bytes, written as the hex dumps of protocols.md 5.1.
fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).expect("hex byte"))
        .collect()
}

fn dump(frames: &[Vec<u8>]) -> Vec<String> {
    frames
        .iter()
        .map(|f| {
            f.iter()
                .map(|b| format!("{b:02X}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// The FC16 write path (Write Multiple Registers), which no shipped profile selects: the
/// Kaysun KC-FCD2 manual lists functions 03, 06 and 16, so a site may choose
/// `write_function = "fc16"`. The simulator must receive exactly: unit 1, function 0x10,
/// start address 4, quantity 1, byte count 2, value 21 (0x0015), CRC-16/MODBUS low byte first
/// (recomputed independently), and the driver reads the setpoint back.
#[tokio::test(start_paused = true)]
async fn modbus_fc16_setpoint_write_bytes_on_the_wire() {
    let p = profile("kaysun-kc-fcd2");
    let mut b = Bench::with_settings(
        &p,
        opts(26.0, 22.0, "cool", true),
        r#"write_function = "fc16""#,
    );
    b.connect().await;
    let before = b.ctl.received().len();
    b.run(DeviceCommand::SetSetpoint { celsius: 21.0 })
        .await
        .unwrap();
    let sent = b.ctl.received()[before..].to_vec();
    assert_eq!(
        dump(&sent),
        dump(&[
            // unit 01, FC 10, address 0004, quantity 0001, 2 bytes, value 0015, CRC 1B66
            hex("01 10 00 04 00 01 02 00 15 66 1B"),
            // read back: unit 01, FC 03, address 0004, quantity 0001, CRC CBC5
            hex("01 03 00 04 00 01 C5 CB"),
        ])
    );
    assert_eq!(b.ctl.controls().setpoint_c, 21.0);
    assert_eq!(b.float(&Point::device(Quantity::Setpoint)), 21.0);
    assert_eq!(b.ctl.counters().exceptions, 0);
}

/// A Modbus unit that knows no profile: raw holding-register words at the PDU addresses a
/// vendor manual gives (protocols.md 5.1 table), exception 02 anywhere else, and a record of
/// every request frame. A profile with a wrong address or scale cannot agree with it by
/// accident, as it can with a simulator that serves the profile's own map.
#[derive(Clone)]
struct RawUnit {
    regs: Arc<std::sync::Mutex<std::collections::BTreeMap<u16, u16>>>,
    frames: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    /// How the next replies go wrong, one entry a reply.
    mangle: Arc<std::sync::Mutex<std::collections::VecDeque<Mangle>>>,
}

/// A way a reply reaches the driver other than whole and alone.
#[derive(Debug, Clone, Copy)]
enum Mangle {
    /// Line noise, then the reply.
    NoiseFirst,
    /// Another unit's reply (unit id + 1) in place of ours.
    OtherUnit,
    /// The reply, this long after the request (past the driver's deadline, before its next
    /// request).
    Late(Duration),
}

impl RawUnit {
    fn new(regs: &[(u16, u16)]) -> RawUnit {
        RawUnit {
            regs: Arc::new(std::sync::Mutex::new(regs.iter().copied().collect())),
            frames: Arc::default(),
            mangle: Arc::default(),
        }
    }

    fn mangle_next(&self, m: Mangle) {
        self.mangle.lock().unwrap().push_back(m);
    }

    fn set(&self, address: u16, raw: u16) {
        self.regs.lock().unwrap().insert(address, raw);
    }

    fn get(&self, address: u16) -> Option<u16> {
        self.regs.lock().unwrap().get(&address).copied()
    }

    /// Frames received since the last call.
    fn take(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut *self.frames.lock().unwrap())
    }

    async fn serve(self, mut io: tokio::io::DuplexStream) {
        use avwarden::codec::modbus::{
            scan_request, ExceptionCode, RequestPdu, Response, ResponsePdu, Scan,
        };
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = Vec::new();
        let mut chunk = [0u8; 256];
        loop {
            let n = match io.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            while let Scan::Frame { len, frame } = scan_request(&buf) {
                self.frames.lock().unwrap().push(buf[..len].to_vec());
                buf.drain(..len);
                let fc = frame.pdu.function_code();
                let pdu = match frame.pdu {
                    RequestPdu::ReadHoldingRegisters { address, count } => (address..)
                        .take(usize::from(count))
                        .map(|a| self.get(a))
                        .collect::<Option<Vec<u16>>>()
                        .map_or(
                            ResponsePdu::Exception {
                                function: fc,
                                code: ExceptionCode::IllegalDataAddress,
                            },
                            |values| ResponsePdu::Registers {
                                function: fc,
                                values,
                            },
                        ),
                    RequestPdu::WriteSingleRegister { address, value }
                        if self.get(address).is_some() =>
                    {
                        self.set(address, value);
                        ResponsePdu::WriteSingleRegister { address, value }
                    }
                    _ => ResponsePdu::Exception {
                        function: fc,
                        code: ExceptionCode::IllegalDataAddress,
                    },
                };
                let mangle = self.mangle.lock().unwrap().pop_front();
                let mut reply = Response {
                    slave: frame.slave,
                    pdu: pdu.clone(),
                }
                .encode();
                match mangle {
                    None => {}
                    Some(Mangle::NoiseFirst) => {
                        reply.splice(0..0, *b"\xff\x00\x13");
                    }
                    Some(Mangle::OtherUnit) => {
                        reply = Response {
                            slave: frame.slave.wrapping_add(1),
                            pdu,
                        }
                        .encode()
                    }
                    Some(Mangle::Late(after)) => tokio::time::sleep(after).await,
                }
                if io.write_all(&reply).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// A shipped profile's driver against a [`RawUnit`].
async fn against_raw_unit(
    id: &str,
    regs: &[(u16, u16)],
) -> (
    Box<dyn Driver>,
    Link,
    Observer,
    watch::Receiver<DeviceState>,
    RawUnit,
) {
    let p = profile(id);
    let unit = RawUnit::new(regs);
    let (ours, theirs) = tokio::io::duplex(1024);
    crate::support::spawn(unit.clone().serve(theirs));
    let (mut driver, mut obs, state) = observed(&p, &toml::Table::new());
    let mut link = Link::over(ours);
    driver.open(&mut link, &mut obs).await.unwrap();
    driver.read_all(&mut link, &mut obs).await.unwrap();
    (driver, link, obs, state, unit)
}

fn sorted(mut frames: Vec<Vec<u8>>) -> Vec<String> {
    frames.sort();
    dump(&frames)
}

fn value(state: &watch::Receiver<DeviceState>, point: &Point) -> Option<Value> {
    state.borrow().reading(point).map(|r| r.value.clone())
}

/// Kaysun KC-FCD2-M pinned to protocols.md 5.1 (FC03 holding registers, unit 1; the manual's
/// register numbers used as PDU addresses, as the profile notes): 2 room temperature (whole
/// °C, UNCONFIRMED scale), 3 on/off, 4 setpoint, 5 mode (1 cool), 6 fan (2 medium). Writing
/// the setpoint is FC06 to register 4.
#[tokio::test(start_paused = true)]
async fn modbus_kaysun_map_matches_the_manual() {
    let (mut driver, mut link, mut obs, state, unit) = against_raw_unit(
        "kaysun-kc-fcd2",
        &[(2, 23), (3, 1), (4, 22), (5, 1), (6, 2)],
    )
    .await;
    assert_eq!(
        sorted(unit.take()),
        sorted(vec![
            hex("01 03 00 02 00 01 25 CA"), // room temperature
            hex("01 03 00 03 00 01 74 0A"), // on/off
            hex("01 03 00 04 00 01 C5 CB"), // setpoint
            hex("01 03 00 05 00 01 94 0B"), // mode
            hex("01 03 00 06 00 01 64 0B"), // fan
        ])
    );
    assert_eq!(
        value(&state, &Point::device(Quantity::Temperature)),
        Some(Value::Float(23.0))
    );
    assert_eq!(
        value(&state, &Point::device(Quantity::Setpoint)),
        Some(Value::Float(22.0))
    );
    assert_eq!(
        value(&state, &Point::device(Quantity::HvacMode)),
        Some(Value::Text("cool".into()))
    );
    assert_eq!(
        value(&state, &Point::device(Quantity::Fan)),
        Some(Value::Text("medium".into()))
    );
    assert_eq!(
        value(&state, &Point::device(Quantity::Power)),
        Some(Value::Bool(true))
    );
    assert!(
        state.borrow().faults.is_empty(),
        "{:?}",
        state.borrow().faults
    );

    // 3 and 4 are the auxiliary-heater variants of heating.
    unit.set(5, 4);
    driver.poll(&mut link, &mut obs).await.unwrap();
    assert_eq!(
        value(&state, &Point::device(Quantity::HvacMode)),
        Some(Value::Text("heat".into()))
    );
    unit.set(3, 0);
    driver.poll(&mut link, &mut obs).await.unwrap();
    unit.take();
    assert_eq!(
        value(&state, &Point::device(Quantity::Power)),
        Some(Value::Bool(false))
    );
    assert_eq!(
        value(&state, &Point::device(Quantity::HvacMode)),
        Some(Value::Text("off".into()))
    );

    driver
        .execute(
            &mut link,
            &mut obs,
            &DeviceCommand::SetSetpoint { celsius: 21.0 },
        )
        .await
        .unwrap();
    assert_eq!(
        dump(&unit.take()),
        dump(&[
            hex("01 06 00 04 00 15 09 C4"), // write register 4 = 21
            hex("01 03 00 04 00 01 C5 CB"), // read it back
        ])
    );
    assert_eq!(unit.get(4), Some(21));
    assert_eq!(
        value(&state, &Point::device(Quantity::Setpoint)),
        Some(Value::Float(21.0))
    );
}

/// Issue 8.7: each reply is parsed once and checked against its request. Noise before a good
/// reply is one bad frame and the reply is taken; another unit's reply is one bad frame, not
/// a timeout, and not taken for ours; a reply that comes after its deadline is not taken for
/// the next request's (the next request's answer is read, the late one drained first).
#[tokio::test(start_paused = true)]
async fn modbus_replies_are_checked_against_their_request() {
    let (mut driver, mut link, mut obs, state, unit) = against_raw_unit(
        "kaysun-kc-fcd2",
        &[(2, 23), (3, 1), (4, 22), (5, 1), (6, 2)],
    )
    .await;
    let counters = |s: &watch::Receiver<DeviceState>| {
        let c = &s.borrow().counters;
        (c.bad_frames, c.timeouts)
    };
    assert_eq!(counters(&state), (0, 0));

    unit.mangle_next(Mangle::NoiseFirst);
    unit.set(2, 24);
    driver.poll(&mut link, &mut obs).await.unwrap();
    assert_eq!(counters(&state), (1, 0), "noise before the reply");
    assert_eq!(
        value(&state, &Point::device(Quantity::Temperature)),
        Some(Value::Float(24.0)),
        "the reply after the noise is taken"
    );

    unit.mangle_next(Mangle::OtherUnit);
    unit.set(2, 25);
    driver.poll(&mut link, &mut obs).await.unwrap();
    assert_eq!(
        counters(&state),
        (2, 0),
        "another unit's reply is a bad frame"
    );

    // The first reply of the poll comes 1 ms after its deadline, before the t3.5 gap has
    // passed: that exchange times out, and the next one reads its own answer, not that one.
    let wait = profile("kaysun-kc-fcd2").timing.reply_timeout;
    unit.mangle_next(Mangle::Late(wait + Duration::from_millis(1)));
    unit.set(2, 26);
    unit.set(4, 19);
    driver.poll(&mut link, &mut obs).await.unwrap();
    assert_eq!(counters(&state), (2, 1), "one timeout, nothing else");
    assert_eq!(
        value(&state, &Point::device(Quantity::Setpoint)),
        Some(Value::Float(19.0))
    );
    driver.poll(&mut link, &mut obs).await.unwrap();
    assert_eq!(
        value(&state, &Point::device(Quantity::Temperature)),
        Some(Value::Float(26.0))
    );
    assert_eq!(counters(&state), (2, 1));
}

/// Mundoclima MUP-W9 pinned to protocols.md 5.1: holding registers 1601 mode (3 heat), 1602
/// setpoint (whole °C), 1603 fan (3 mid), 1606 room temperature raw with T = (raw − 30) / 2
/// (raw 80 = 25.0 °C, raw 71 = 20.5 °C); off is mode 0. Writing the setpoint is FC06 to 1602.
#[tokio::test(start_paused = true)]
async fn modbus_mundoclima_map_matches_the_manual() {
    let (mut driver, mut link, mut obs, state, unit) = against_raw_unit(
        "mundoclima-mup-w9",
        &[(1601, 3), (1602, 24), (1603, 3), (1606, 80)],
    )
    .await;
    assert_eq!(
        sorted(unit.take()),
        sorted(vec![
            hex("01 03 06 41 00 01 D4 96"), // 1601 mode
            hex("01 03 06 42 00 01 24 96"), // 1602 setpoint
            hex("01 03 06 43 00 01 75 56"), // 1603 fan
            hex("01 03 06 46 00 01 65 57"), // 1606 room temperature
        ])
    );
    assert_eq!(
        value(&state, &Point::device(Quantity::Temperature)),
        Some(Value::Float(25.0))
    );
    assert_eq!(
        value(&state, &Point::device(Quantity::Setpoint)),
        Some(Value::Float(24.0))
    );
    assert_eq!(
        value(&state, &Point::device(Quantity::HvacMode)),
        Some(Value::Text("heat".into()))
    );
    assert_eq!(
        value(&state, &Point::device(Quantity::Fan)),
        Some(Value::Text("medium".into()))
    );
    assert_eq!(
        value(&state, &Point::device(Quantity::Power)),
        Some(Value::Bool(true))
    );
    assert!(
        state.borrow().faults.is_empty(),
        "{:?}",
        state.borrow().faults
    );

    unit.set(1606, 71);
    unit.set(1601, 0);
    driver.poll(&mut link, &mut obs).await.unwrap();
    unit.take();
    assert_eq!(
        value(&state, &Point::device(Quantity::Temperature)),
        Some(Value::Float(20.5))
    );
    assert_eq!(
        value(&state, &Point::device(Quantity::Power)),
        Some(Value::Bool(false))
    );
    assert_eq!(
        value(&state, &Point::device(Quantity::HvacMode)),
        Some(Value::Text("off".into()))
    );

    driver
        .execute(
            &mut link,
            &mut obs,
            &DeviceCommand::SetSetpoint { celsius: 21.0 },
        )
        .await
        .unwrap();
    assert_eq!(
        dump(&unit.take()),
        dump(&[
            hex("01 06 06 42 00 15 E8 99"), // write 1602 = 21
            hex("01 03 06 42 00 01 24 96"), // read it back
        ])
    );
    assert_eq!(unit.get(1602), Some(21));
    assert_eq!(
        value(&state, &Point::device(Quantity::Setpoint)),
        Some(Value::Float(21.0))
    );
}

/// The thermal model under a real driver: from 28 °C, cooling to 23 °C at the model's rate
/// reaches the 22–24 °C band when (28 − 24) / rate predicts, not before.
#[tokio::test(start_paused = true)]
async fn modbus_preconditioning_reaches_the_band_when_the_rate_predicts() {
    let p = profile("avwarden-sim-modbus");
    let mut b = Bench::new(&p, opts(28.0, 22.0, "off", false));
    b.connect().await;
    assert_eq!(b.float(&Point::device(Quantity::Temperature)), 28.0);
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
    assert_eq!(b.text(&Point::device(Quantity::HvacRunning)), "cool");
    let predicted = Duration::from_secs_f64(b.ctl.params().predicted_minutes(28.0, 24.0) * 60.0);
    assert_eq!(predicted, Duration::from_secs(16 * 60));
    let reached = loop {
        tokio::time::sleep(Duration::from_secs(15)).await;
        b.poll().await.unwrap();
        if b.float(&Point::device(Quantity::Temperature)) <= 24.0 {
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
    let t = b.float(&Point::device(Quantity::Temperature));
    assert!((22.0..=24.0).contains(&t), "{t}");
    // It holds the band: cooling stops at the setpoint and restarts past the deadband.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    b.poll().await.unwrap();
    let t = b.float(&Point::device(Quantity::Temperature));
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
    assert_eq!(b.float(&Point::device(Quantity::Temperature)), 21.0);

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
    // Issue 14.9: the reason names the likely causes, with the slave id configured here.
    for cause in [
        "powered",
        "Modbus address is 1",
        "baud rate and parity",
        "wiring",
    ] {
        assert!(e.to_string().contains(cause), "{cause}: {e}");
    }
    assert_eq!(b.state.borrow().counters.timeouts, timeouts_before + 3);
    // Commands while silent time out rather than hang.
    let e = b
        .run(DeviceCommand::SetSetpoint { celsius: 21.0 })
        .await
        .unwrap_err();
    assert!(matches!(e, DriverError::Timeout { .. }), "{e}");
    b.ctl.faults(|f| f.silent = false);
    b.driver.read_all(&mut b.link, &mut b.obs).await.unwrap();
    assert_eq!(b.float(&Point::device(Quantity::Temperature)), 21.0);

    // A run of garbled answers points at the line's framing, not at the address.
    b.ctl.faults(|f| f.bad_crc = 10);
    let e = b.poll().await.unwrap_err();
    assert!(e.is_link_failure(), "{e}");
    assert!(e.to_string().contains("garbled"), "{e}");
    assert!(e.to_string().contains("parity and stop bits"), "{e}");
    b.ctl.faults(|f| f.bad_crc = 0);
    b.driver.read_all(&mut b.link, &mut b.obs).await.unwrap();
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
    crate::support::spawn(async move { served.serve(theirs, CancellationToken::new()).await });
    b.link = Link::over(ours);
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
            && s.reading(&Point::device(Quantity::Temperature))
                .map(|r| r.value.clone())
                == Some(Value::Float(24.5))
    })
    .await;
    h.command(DeviceCommand::SetSetpoint { celsius: 21.5 })
        .await
        .into_result()
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
    crate::support::spawn(async move {
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
                Quantity::Temperature,
                Quantity::Setpoint,
                Quantity::HvacMode,
                Quantity::HvacRunning,
                Quantity::Power,
                Quantity::Fan,
            ]
            .into_iter()
            .all(|q| s.reading(&Point::device(q)).is_some())
    })
    .await;
    let v = |p: &Point| s.reading(p).map(|r| r.value.clone());
    assert_eq!(
        v(&Point::device(Quantity::Temperature)),
        Some(Value::Float(24.1)),
        "{s:#?}"
    );
    assert_eq!(
        v(&Point::device(Quantity::Setpoint)),
        Some(Value::Float(22.5))
    );
    assert_eq!(
        v(&Point::device(Quantity::HvacMode)),
        Some(Value::Text("cool".into()))
    );
    assert_eq!(
        v(&Point::device(Quantity::HvacRunning)),
        Some(Value::Text("cool".into()))
    );
    assert_eq!(v(&Point::device(Quantity::Power)), Some(Value::Bool(true)));
    assert_eq!(
        v(&Point::device(Quantity::Fan)),
        Some(Value::Text("auto".into()))
    );

    h.command(DeviceCommand::SetSetpoint { celsius: 22.0 })
        .await
        .into_result()
        .unwrap();
    h.command(DeviceCommand::Power { on: false })
        .await
        .into_result()
        .unwrap();
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
        s.reading(&Point::device(Quantity::Power))
            .map(|r| r.value.clone())
            == Some(Value::Bool(false))
    })
    .await;
    assert_eq!(
        s.reading(&Point::device(Quantity::Setpoint)).unwrap().value,
        Value::Float(22.0)
    );
    assert_eq!(
        s.reading(&Point::device(Quantity::HvacMode)).unwrap().value,
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
