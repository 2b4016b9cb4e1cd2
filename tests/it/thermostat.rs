//! MQTT thermostats through a real broker: Mosquitto started by the test on a free port (state
//! in, setpoint out, the broker restarted under the device), bad payloads counted, availability,
//! a Tasmota dialect from profile data alone, and the embedded rumqttd broker.
//!
//! These run in real time (the broker is another process); every wait is bounded generously
//! and only catches a hang.

use avwarden::model::{Point, Quantity};
use std::sync::Arc;
use std::time::Duration;

use avwarden::model::{DeviceCommand, DeviceState, Health, Value};
use avwarden::profile::Profile;
use avwarden::runtime::{DeviceHandle, DeviceSpec, Fleet};
use avwarden::sim::thermal::Mode;
use avwarden::sim::thermostat::ThermostatControl;
use avwarden::sim::SimBind;
use avwarden::transport::mqtt::{self, EmbeddedSettings, MqttHandle, MqttSettings, Subscription};
use avwarden::transport::LinkSpec;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::{free_port, mosquitto, Mosquitto};
use crate::support::{bus, clock, profile, reading, wait_state};

/// Bounds a hang only.
const LIMIT: Duration = Duration::from_secs(40);
const Z2M_TOPIC: &str = "zigbee2mqtt/room101_thermostat";

fn client_settings(port: u16) -> MqttSettings {
    let s = MqttSettings {
        host: Some("127.0.0.1".into()),
        port: Some(port),
        client_id: format!("avwarden-test-{port}"),
        reconnect_min_ms: 100,
        reconnect_max_secs: 1,
        ..Default::default()
    };
    assert!(s.validate().is_empty(), "{:?}", s.validate());
    s
}

/// Fast timing for tests: poll every second, replies within three.
fn quick(id: &str) -> Arc<Profile> {
    let mut p = (*profile(id)).clone();
    p.timing.poll_interval = Duration::from_secs(1);
    p.timing.reply_timeout = Duration::from_secs(3);
    Arc::new(p)
}

struct Rig {
    cancel: CancellationToken,
    tracker: TaskTracker,
    mqtt: MqttHandle,
    sim: ThermostatControl,
    device: DeviceHandle,
    rx: watch::Receiver<DeviceState>,
}

impl Rig {
    async fn start(port: u16, p: Arc<Profile>, topic: &str, sim_options: &str) -> Rig {
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let mqtt = mqtt::start(&client_settings(port), None, None, &tracker, cancel.clone());
        assert!(mqtt.wait_connected(LIMIT).await, "client connects");
        let (_, sim) = avwarden::sim::thermostat::spawn_from_config(
            &p,
            &toml::from_str(sim_options).unwrap(),
            SimBind::Mqtt {
                host: "127.0.0.1".into(),
                port,
                topic: topic.into(),
            },
            clock(),
            cancel.clone(),
        )
        .await
        .unwrap();
        let mut fleet = Fleet::new(bus(), clock(), tracker.clone(), cancel.clone());
        let mut spec = DeviceSpec::new(
            "thermostat-101",
            "room-101",
            p,
            LinkSpec::Mqtt {
                topic: topic.into(),
            },
        );
        spec.mqtt = Some(mqtt.clone());
        spec.backoff_min = Duration::from_millis(200);
        spec.backoff_max = Duration::from_secs(1);
        let device = fleet.spawn_device(spec).unwrap();
        let rx = device.watch();
        Rig {
            cancel,
            tracker,
            mqtt,
            sim,
            device,
            rx,
        }
    }

    async fn wait(&mut self, what: &str, pred: impl FnMut(&DeviceState) -> bool) -> DeviceState {
        wait_state(&mut self.rx, LIMIT, what, pred).await
    }

    async fn stop(self) {
        self.cancel.cancel();
        self.tracker.close();
        let _ = tokio::time::timeout(LIMIT, self.tracker.wait()).await;
    }
}

fn float(s: &DeviceState, point: &Point) -> Option<f64> {
    match reading(s, point) {
        Some(Value::Float(f)) => Some(f),
        _ => None,
    }
}

/// Subscribe and wait until the broker has the subscription in place, shown by the first
/// retained message under the filter (the device's retained state or availability).
async fn live_subscription(mqtt: &MqttHandle, filter: &str) -> Subscription {
    let mut sub = mqtt.subscribe(filter, 1024).unwrap();
    tokio::time::timeout(LIMIT, sub.recv())
        .await
        .expect("a retained message")
        .expect("open");
    sub
}

/// The payload of the next message on `topic`, skipping the others.
async fn next_payload(sub: &mut Subscription, topic: &str) -> String {
    loop {
        let m = tokio::time::timeout(LIMIT, sub.recv())
            .await
            .expect("a message")
            .expect("open");
        if m.topic == topic {
            return String::from_utf8_lossy(&m.payload).into_owned();
        }
    }
}

/// State in, setpoint out (the protocols.md 5.2 bytes on the wire), and the broker killed and
/// restarted under a running device: it goes unreachable, then comes back by itself, with the
/// state that changed meanwhile, and takes commands again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thermostat_through_mosquitto_survives_a_broker_restart() {
    let Some(bin) = mosquitto() else { return };
    let mut broker = Mosquitto::start(bin, false).await;
    let mut rig = Rig::start(
        broker.port,
        quick("zigbee2mqtt-thermostat"),
        Z2M_TOPIC,
        "temperature_c = 21.5\nsetpoint_c = 22.0\nmode = \"heat\"\nambient_c = 21.5",
    )
    .await;
    let s = rig
        .wait("ok with the thermostat's state", |s| {
            s.health == Health::Ok && s.reading(&Point::device(Quantity::HvacRunning)).is_some()
        })
        .await;
    let t = float(&s, &Point::device(Quantity::Temperature)).unwrap();
    assert!((21.4..=21.8).contains(&t), "{t}");
    assert_eq!(
        reading(&s, &Point::device(Quantity::Setpoint)),
        Some(Value::Float(22.0))
    );
    assert_eq!(
        reading(&s, &Point::device(Quantity::HvacMode)),
        Some(Value::Text("heat".into()))
    );
    assert_eq!(
        reading(&s, &Point::device(Quantity::HvacRunning)),
        Some(Value::Text("heat".into()))
    );
    assert_eq!(
        reading(&s, &Point::device(Quantity::Power)),
        Some(Value::Bool(true))
    );

    let mut wire = live_subscription(&rig.mqtt, &format!("{Z2M_TOPIC}/#")).await;
    let set_topic = format!("{Z2M_TOPIC}/set");
    rig.device
        .command(DeviceCommand::SetSetpoint { celsius: 21.0 })
        .await
        .into_result()
        .unwrap();
    assert_eq!(
        next_payload(&mut wire, &set_topic).await,
        r#"{"occupied_heating_setpoint":21}"#
    );
    assert_eq!(rig.sim.controls().setpoint_c, 21.0);
    rig.wait("setpoint read back", |s| {
        reading(s, &Point::device(Quantity::Setpoint)) == Some(Value::Float(21.0))
    })
    .await;

    // Broker gone: the client notices, the device goes unreachable (never "off").
    broker.kill().await;
    let s = rig
        .wait("unreachable without a broker", |s| {
            s.health == Health::Unreachable
        })
        .await;
    assert_eq!(
        reading(&s, &Point::device(Quantity::HvacMode)),
        Some(Value::Text("heat".into())),
        "stale, not off"
    );
    assert!(!rig.mqtt.is_connected());
    let e = rig
        .device
        .command(DeviceCommand::SetSetpoint { celsius: 20.0 })
        .await
        .into_result()
        .unwrap_err();
    assert!(e.to_string().contains("unreachable"), "{e}");
    rig.sim.set_temperature(25.0);

    // Broker back on the same port: client, simulator and device all recover by themselves.
    broker.run().await;
    let s = rig
        .wait("ok again with the new temperature", |s| {
            s.health == Health::Ok
                && float(s, &Point::device(Quantity::Temperature))
                    .is_some_and(|t| (24.9..=25.3).contains(&t))
        })
        .await;
    assert!(s.counters.reconnects >= 1, "{:?}", s.counters);
    assert!(rig.mqtt.stats().connects >= 2, "{:?}", rig.mqtt.stats());
    rig.device
        .command(DeviceCommand::SetHvacMode {
            mode: "cool".into(),
        })
        .await
        .into_result()
        .unwrap();
    assert_eq!(rig.sim.controls().mode, Mode::Cool);
    // The subscription made before the restart was renewed too.
    assert_eq!(
        next_payload(&mut wire, &set_topic).await,
        r#"{"system_mode":"cool"}"#
    );
    rig.stop().await;
    broker.kill().await;
}

/// Malformed JSON, wrong types and unknown enum values are counted bad input; the reading they
/// spoil is unknown, nothing panics, and the next good state repairs it. Availability `offline`
/// makes the device unreachable until `online`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thermostat_bad_payloads_and_availability() {
    let Some(bin) = mosquitto() else { return };
    let mut broker = Mosquitto::start(bin, false).await;
    let mut rig = Rig::start(
        broker.port,
        quick("zigbee2mqtt-thermostat"),
        Z2M_TOPIC,
        "temperature_c = 23.0\nsetpoint_c = 23.2\nmode = \"auto\"\nambient_c = 23.0",
    )
    .await;
    rig.wait("ok", |s| s.health == Health::Ok).await;
    let bad = |s: &DeviceState| s.counters.bad_frames;

    rig.sim.faults(|f| f.malformed = 1);
    let s = rig.wait("malformed JSON counted", |s| bad(s) >= 1).await;
    assert_eq!(s.health, Health::Ok);

    // Deaf to `get` for a moment, so no good state overwrites the bad one before we look.
    rig.sim.faults(|f| {
        f.deaf = true;
        f.unknown_mode = 1;
    });
    let s = rig
        .wait("unknown mode counted and unknown", |s| {
            bad(s) >= 2 && reading(s, &Point::device(Quantity::HvacMode)) == Some(Value::Unknown)
        })
        .await;
    assert_eq!(
        reading(&s, &Point::device(Quantity::Setpoint)),
        Some(Value::Float(23.2)),
        "the rest of the payload applies"
    );

    // Wrong types, straight onto the state topic.
    rig.mqtt
        .publish(
            Z2M_TOPIC,
            r#"{"local_temperature":"warm","occupied_heating_setpoint":[22]}"#,
            false,
        )
        .unwrap();
    rig.wait("wrong types counted", |s| {
        bad(s) >= 4 && reading(s, &Point::device(Quantity::Temperature)) == Some(Value::Unknown)
    })
    .await;
    rig.mqtt
        .publish(Z2M_TOPIC, "not json at all", false)
        .unwrap();
    rig.wait("garbage counted", |s| bad(s) >= 5).await;

    // A good state repairs the readings.
    rig.sim.faults(|f| f.deaf = false);
    rig.sim.set_temperature(23.5);
    rig.wait("repaired", |s| {
        s.health == Health::Ok
            && reading(s, &Point::device(Quantity::HvacMode)) == Some(Value::Text("auto".into()))
            && float(s, &Point::device(Quantity::Temperature)) == Some(23.5)
    })
    .await;

    rig.sim.set_available(false);
    rig.wait("offline is unreachable", |s| {
        s.health == Health::Unreachable
    })
    .await;
    rig.sim.set_available(true);
    rig.wait("online again", |s| s.health == Health::Ok).await;
    rig.stop().await;
    broker.kill().await;
}

/// Tasmota's dialect (raw values on cmnd/<topic>/<Command>, state from stat/…/RESULT and
/// tele/…/SENSOR, LWT availability) is profile data only: same driver, same simulator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasmota_thermostat_is_a_profile_not_code() {
    let Some(bin) = mosquitto() else { return };
    let mut broker = Mosquitto::start(bin, false).await;
    let mut rig = Rig::start(
        broker.port,
        quick("tasmota-thermostat"),
        "room101",
        "temperature_c = 19.0\nsetpoint_c = 21.0\nmode = \"heat\"\nambient_c = 19.0",
    )
    .await;
    let s = rig
        .wait("ok", |s| {
            s.health == Health::Ok && s.reading(&Point::device(Quantity::Temperature)).is_some()
        })
        .await;
    assert_eq!(
        reading(&s, &Point::device(Quantity::Setpoint)),
        Some(Value::Float(21.0))
    );
    assert_eq!(
        reading(&s, &Point::device(Quantity::HvacMode)),
        Some(Value::Text("heat".into()))
    );
    let mut wire = live_subscription(&rig.mqtt, "+/room101/#").await;
    rig.device
        .command(DeviceCommand::SetSetpoint { celsius: 22.5 })
        .await
        .into_result()
        .unwrap();
    assert_eq!(
        next_payload(&mut wire, "cmnd/room101/TempTargetSet").await,
        "22.5"
    );
    assert_eq!(rig.sim.controls().setpoint_c, 22.5);
    rig.device
        .command(DeviceCommand::SetHvacMode {
            mode: "cool".into(),
        })
        .await
        .into_result()
        .unwrap();
    assert_eq!(
        next_payload(&mut wire, "cmnd/room101/ClimateModeSet").await,
        "1"
    );
    assert_eq!(rig.sim.controls().mode, Mode::Cool);
    rig.device
        .command(DeviceCommand::Power { on: false })
        .await
        .into_result()
        .unwrap();
    assert_eq!(
        next_payload(&mut wire, "cmnd/room101/ThermostatModeSet").await,
        "0"
    );
    assert!(!rig.sim.controls().power);
    rig.wait("off", |s| {
        reading(s, &Point::device(Quantity::HvacMode)) == Some(Value::Text("off".into()))
    })
    .await;
    let e = rig
        .device
        .command(DeviceCommand::SetHvacMode { mode: "dry".into() })
        .await
        .into_result()
        .unwrap_err();
    assert!(e.to_string().contains("not supported"), "{e}");
    rig.stop().await;
    broker.kill().await;
}

/// A site without a broker: the embedded rumqttd serves the daemon's client and a thermostat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_broker_serves_a_thermostat() {
    let port = free_port();
    let settings: MqttSettings = MqttSettings::from_table(
        &toml::from_str(&format!("embedded = {{ bind = \"127.0.0.1:{port}\" }}")).unwrap(),
    )
    .unwrap();
    let broker = mqtt::spawn_embedded_broker(settings.embedded.as_ref().unwrap())
        .await
        .unwrap();
    assert_eq!(broker.addr.port(), port);
    assert_eq!(settings.broker_address(), ("127.0.0.1".to_owned(), port));
    // Binding the same address again is a clear error, not a silent second broker.
    let again = mqtt::spawn_embedded_broker(&EmbeddedSettings {
        bind: broker.addr,
        max_connections: 4,
    })
    .await;
    assert!(again.is_err());
    let mut rig = Rig::start(
        port,
        quick("zigbee2mqtt-thermostat"),
        Z2M_TOPIC,
        "temperature_c = 27.0\nsetpoint_c = 23.0\nmode = \"cool\"",
    )
    .await;
    let s = rig
        .wait("ok through the embedded broker", |s| {
            s.health == Health::Ok && s.reading(&Point::device(Quantity::Temperature)).is_some()
        })
        .await;
    assert_eq!(
        reading(&s, &Point::device(Quantity::HvacRunning)),
        Some(Value::Text("cool".into()))
    );
    rig.device
        .command(DeviceCommand::SetSetpoint { celsius: 24.0 })
        .await
        .into_result()
        .unwrap();
    assert_eq!(rig.sim.controls().setpoint_c, 24.0);
    rig.stop().await;
}
