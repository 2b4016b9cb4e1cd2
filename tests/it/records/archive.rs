//! The equipment archive: filled from what devices say about themselves (identity events as
//! the PJLink, ESC/VP21, Shure and Sennheiser drivers report them), from profiles and from a
//! technician; a changed serial number is logged as a swap; counters follow readings and
//! maintenance.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use avwarden::clock::Clock;
use avwarden::events::EventKind;
use avwarden::model::{
    DeviceId, DeviceState, Identity, Point, PowerState, ProfileId, Quantity, Reading, RoomId, Value,
};
use avwarden::profile::Profile;
use avwarden::records::archive::{self, feed_counters};
use avwarden::records::{
    store, Actor, ArchiveFields, EquipmentSeed, Maintenance, MaintenanceAction, StoreError,
    WriterConfig,
};
use rusqlite::Connection;
use tokio::sync::watch;

use super::{t, Harness};

const PJLINK_PROFILE: &str = r#"
id = "epson-pjlink"
kind = "projector"
vendor = "Epson"
family = "EB-2200 series (PJLink)"
models = ["EB-2250U"]
driver = "pjlink"
capabilities = ["power", "lamp", "filter", "input", "identity"]
filter_life_hours = 2000
[link]
kind = "tcp"
port = 4352
[timing]
poll_interval_secs = 10
[lamp]
life_hours = 4000
"#;

fn seed(device: &str, room: &str, kind: &str, vendor: &str, family: &str) -> EquipmentSeed {
    EquipmentSeed {
        device: DeviceId::new(device),
        room: RoomId::new(room),
        profile: format!("{}-x", vendor.to_lowercase()),
        kind: kind.into(),
        vendor: vendor.into(),
        family: family.into(),
        lamp_life_hours: None,
        filter_life_hours: None,
        fields: ArchiveFields::default(),
        at: t(2026, 11, 2, 8, 0),
    }
}

fn identity(
    manufacturer: Option<&str>,
    model: Option<&str>,
    name: Option<&str>,
    serial: Option<&str>,
    firmware: Option<&str>,
    extra: &[(&str, &str)],
) -> Identity {
    Identity {
        manufacturer: manufacturer.map(Into::into),
        model: model.map(Into::into),
        name: name.map(Into::into),
        serial: serial.map(Into::into),
        firmware: firmware.map(Into::into),
        extra: extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
    }
}

fn reported(h: &Harness, device: &str, room: &str, id: Identity) {
    h.bus.emit(
        t(2026, 11, 2, 8, 1),
        EventKind::IdentityReported {
            device: DeviceId::new(device),
            room: RoomId::new(room),
            identity: id,
        },
    );
}

fn kinds(db: &Path, device: &str) -> Vec<String> {
    let c = store::open_reader(db).unwrap();
    let mut stmt = c
        .prepare("SELECT kind FROM logbook WHERE device = ?1 ORDER BY seq")
        .unwrap();
    stmt.query_map([device], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test]
async fn identities_from_every_protocol_fill_the_archive() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    let h = Harness::start(
        WriterConfig::new(&db),
        Clock::starting_at(t(2026, 11, 2, 8, 0)),
    );
    let profile = Profile::parse(PJLINK_PROFILE, "test").unwrap();
    h.handle
        .register(EquipmentSeed::from_profile(
            DeviceId::new("proj-1"),
            RoomId::new("r-301"),
            &profile,
            ArchiveFields {
                location: Some("ceiling, above table".into()),
                ..Default::default()
            },
            t(2026, 11, 2, 8, 0),
        ))
        .await
        .unwrap()
        .expect("a new device is logged");
    for s in [
        seed(
            "proj-2",
            "r-302",
            "projector",
            "Epson",
            "ESC/VP21 projectors",
        ),
        seed("mic-1", "r-301", "mic", "Shure", "ULX-D"),
        seed("mic-2", "r-302", "mic", "Sennheiser", "EW-DX"),
        seed("hvac-1", "r-301", "hvac", "Generic", "Modbus thermostat"),
    ] {
        h.handle.register(s).await.unwrap();
    }
    // PJLink: INF1, INF2, NAME, SNUM, SVER, RLMP, RFIL, CLSS.
    reported(
        &h,
        "proj-1",
        "r-301",
        identity(
            Some("EPSON"),
            Some("EB-2250U"),
            Some("R301-PROJ"),
            Some("X4Y1234567"),
            Some("1.01"),
            &[
                ("pjlink_class", "2"),
                ("replacement_lamp", "ELPLP95"),
                ("replacement_filter", "ELPAF54"),
            ],
        ),
    );
    // ESC/VP21: SNO only; the model comes from the profile.
    reported(
        &h,
        "proj-2",
        "r-302",
        identity(None, None, None, Some("X7JK8901234"), None, &[]),
    );
    // Shure: MODEL (Axient Digital, SLX-D; the family on ULX-D), DEVICE_ID, FW_VER. No serial:
    // protocols.md names no command for it.
    reported(
        &h,
        "mic-1",
        "r-301",
        identity(
            Some("Shure"),
            Some("ULXD4D"),
            Some("RX-301"),
            None,
            Some("2.7.6.0"),
            &[],
        ),
    );
    // Sennheiser EW-DX: /device/identity.
    reported(
        &h,
        "mic-2",
        "r-302",
        identity(
            Some("Sennheiser"),
            Some("EW-DX EM 2"),
            Some("EM2-302"),
            Some("1234567890"),
            Some("3.2.0"),
            &[("product", "EW-DX EM 2 (Q1-9)")],
        ),
    );
    h.handle.flush().await.unwrap();

    let c = store::open_reader(&db).unwrap();
    let p1 = archive::get(&c, "proj-1").unwrap().unwrap();
    assert_eq!(p1.manufacturer(), Some("EPSON"));
    assert_eq!(p1.model(), Some("EB-2250U"));
    assert_eq!(p1.identity.serial.as_deref(), Some("X4Y1234567"));
    assert_eq!(p1.identity.firmware.as_deref(), Some("1.01"));
    assert_eq!(p1.identity.extra["replacement_lamp"], "ELPLP95");
    assert_eq!(p1.identity.extra["replacement_filter"], "ELPAF54");
    assert_eq!(p1.lamp_life_hours, Some(4000.0), "from the profile");
    assert_eq!(p1.filter_life_hours, Some(2000.0));
    assert_eq!(p1.function(), Some("projector"));
    assert_eq!(p1.fields.location.as_deref(), Some("ceiling, above table"));
    let p2 = archive::get(&c, "proj-2").unwrap().unwrap();
    assert_eq!(p2.identity.serial.as_deref(), Some("X7JK8901234"));
    assert_eq!(
        (p2.manufacturer(), p2.model()),
        (Some("Epson"), Some("ESC/VP21 projectors"))
    );
    let m1 = archive::get(&c, "mic-1").unwrap().unwrap();
    assert_eq!(
        (m1.model(), m1.identity.firmware.as_deref()),
        (Some("ULXD4D"), Some("2.7.6.0"))
    );
    assert_eq!(m1.identity.serial, None);
    let m2 = archive::get(&c, "mic-2").unwrap().unwrap();
    assert_eq!(m2.identity.serial.as_deref(), Some("1234567890"));
    let hv = archive::get(&c, "hvac-1").unwrap().unwrap();
    assert_eq!(
        (hv.manufacturer(), hv.model()),
        (Some("Generic"), Some("Modbus thermostat"))
    );
    assert_eq!(
        hv.identity,
        Identity::default(),
        "reports nothing: the profile speaks for it"
    );
    assert_eq!(archive::list(&c).unwrap().len(), 5);
    assert_eq!(
        kinds(&db, "proj-1"),
        ["equipment_registered", "identity_reported"]
    );

    // A restarted daemon hears the same identity again: nothing new to log.
    reported(
        &h,
        "proj-1",
        "r-301",
        identity(
            Some("EPSON"),
            Some("EB-2250U"),
            Some("R301-PROJ"),
            Some("X4Y1234567"),
            Some("1.01"),
            &[],
        ),
    );
    // A firmware update is logged, not a swap.
    reported(
        &h,
        "mic-1",
        "r-301",
        identity(None, None, None, None, Some("2.8.1.0"), &[]),
    );
    h.handle.flush().await.unwrap();
    assert_eq!(
        kinds(&db, "proj-1"),
        ["equipment_registered", "identity_reported"]
    );
    assert_eq!(
        kinds(&db, "mic-1"),
        [
            "equipment_registered",
            "identity_reported",
            "identity_reported"
        ]
    );
    // Registering again from an unchanged config writes nothing either.
    assert_eq!(
        h.handle
            .register(seed("mic-1", "r-301", "mic", "Shure", "ULX-D"))
            .await
            .unwrap(),
        None
    );
    h.stop().await;
}

#[tokio::test]
async fn a_changed_serial_is_logged_as_device_swapped() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    let h = Harness::start(
        WriterConfig::new(&db),
        Clock::starting_at(t(2026, 11, 2, 8, 0)),
    );
    let mut events = h.bus.subscribe();
    h.handle
        .register(seed("proj-1", "r-301", "projector", "Epson", "EB"))
        .await
        .unwrap();
    // The first serial a device reports fills the archive; that is not a swap.
    reported(
        &h,
        "proj-1",
        "r-301",
        identity(
            Some("EPSON"),
            Some("EB-2250U"),
            None,
            Some("X4Y1234567"),
            None,
            &[],
        ),
    );
    h.handle
        .counters(
            DeviceId::new("proj-1"),
            t(2026, 11, 2, 9, 0),
            vec![
                archive::CounterUpdate::Total {
                    name: "lamp.1.hours".into(),
                    value: 1200.0,
                },
                archive::CounterUpdate::Add {
                    name: "power_cycles".into(),
                    delta: 3.0,
                },
            ],
        )
        .await
        .unwrap();
    h.handle.flush().await.unwrap();
    // The technician puts in the spare unit.
    reported(
        &h,
        "proj-1",
        "r-301",
        identity(
            Some("EPSON"),
            Some("EB-2250U"),
            None,
            Some("X4Y7654321"),
            None,
            &[],
        ),
    );
    h.handle.flush().await.unwrap();

    assert_eq!(
        kinds(&db, "proj-1"),
        [
            "equipment_registered",
            "identity_reported",
            "device_swapped",
            "identity_reported"
        ]
    );
    let c = store::open_reader(&db).unwrap();
    let (message, data): (String, String) = c
        .query_row(
            "SELECT message, data FROM logbook WHERE kind = 'device_swapped'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        message,
        "proj-1: device swapped: serial X4Y1234567 -> X4Y7654321 (EB-2250U)"
    );
    let data: serde_json::Value = serde_json::from_str(&data).unwrap();
    assert_eq!(data["old"]["serial"], "X4Y1234567");
    assert_eq!(data["new"]["serial"], "X4Y7654321");
    assert_eq!(data["counters_before"]["lamp.1.hours"]["value"], 1200.0);
    assert_eq!(data["counters_before"]["power_cycles"]["value"], 3.0);
    // The new unit's counters start afresh.
    let rec = archive::get(&c, "proj-1").unwrap().unwrap();
    assert_eq!(rec.identity.serial.as_deref(), Some("X4Y7654321"));
    assert!(rec.counters.is_empty(), "{:?}", rec.counters);
    // Everyone else hears about it once, after it is in the logbook.
    let swapped = loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("DeviceSwapped event")
            .unwrap();
        if let EventKind::DeviceSwapped {
            old_serial,
            new_serial,
            ..
        } = &ev.kind
        {
            break (old_serial.clone(), new_serial.clone());
        }
    };
    assert_eq!(swapped, ("X4Y1234567".to_owned(), "X4Y7654321".to_owned()));
    h.stop().await;
    // Not written twice (the bus does not route it back to the logbook).
    let n: i64 = Connection::open(&db)
        .unwrap()
        .query_row(
            "SELECT count(*) FROM logbook WHERE kind = 'device_swapped'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn technician_fields_are_set_and_logged() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    let h = Harness::start(
        WriterConfig::new(&db),
        Clock::starting_at(t(2026, 11, 2, 8, 0)),
    );
    h.handle
        .register(seed("proj-1", "r-301", "projector", "Epson", "EB"))
        .await
        .unwrap();
    let fields = ArchiveFields {
        function: Some("main projector, front screen".into()),
        storage_location: Some("AV store room B1-07, shelf 3".into()),
        install_date: Some("2024-03-01".into()),
        supplier: Some("华东视听设备有限公司".into()),
        warranty_end: Some("2027-02-28".into()),
        service_contract: Some("SC-2024-117".into()),
        operation_notes: Some("power on from the wall panel; wait 40 s".into()),
        maintenance_notes: Some("clean the filter every 500 h".into()),
        ..Default::default()
    };
    let seq = h
        .handle
        .set_fields(
            DeviceId::new("proj-1"),
            fields.clone(),
            Actor::person("李伟"),
            t(2026, 11, 2, 10, 0),
        )
        .await
        .unwrap()
        .expect("logged");
    // The same values again change nothing and log nothing.
    assert_eq!(
        h.handle
            .set_fields(
                DeviceId::new("proj-1"),
                fields,
                Actor::person("李伟"),
                t(2026, 11, 2, 10, 5)
            )
            .await
            .unwrap(),
        None
    );
    // An empty string clears one field.
    h.handle
        .set_fields(
            DeviceId::new("proj-1"),
            ArchiveFields {
                service_contract: Some(String::new()),
                ..Default::default()
            },
            Actor::person("王芳"),
            t(2026, 11, 3, 9, 0),
        )
        .await
        .unwrap()
        .expect("logged");
    let bad = h
        .handle
        .set_fields(
            DeviceId::new("proj-1"),
            ArchiveFields {
                warranty_end: Some("28/02/2027".into()),
                ..Default::default()
            },
            Actor::person("李伟"),
            t(2026, 11, 3, 9, 0),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&bad, StoreError::Invalid(m) if m.contains("warranty_end")),
        "{bad}"
    );
    let unknown = h
        .handle
        .set_fields(
            DeviceId::new("nope"),
            ArchiveFields::default(),
            Actor::System,
            t(2026, 11, 3, 9, 0),
        )
        .await
        .unwrap_err();
    assert!(matches!(unknown, StoreError::Invalid(_)), "{unknown}");
    h.stop().await;

    let c = store::open_reader(&db).unwrap();
    let rec = archive::get(&c, "proj-1").unwrap().unwrap();
    assert_eq!(rec.function(), Some("main projector, front screen"));
    assert_eq!(
        rec.fields.storage_location.as_deref(),
        Some("AV store room B1-07, shelf 3")
    );
    assert_eq!(rec.fields.supplier.as_deref(), Some("华东视听设备有限公司"));
    assert_eq!(rec.fields.service_contract, None);
    let e = avwarden::records::logbook::get(&c, seq).unwrap().unwrap();
    assert_eq!(
        (e.kind.as_str(), e.actor.as_str()),
        ("equipment_updated", "person:李伟")
    );
    let data = e.data_json();
    assert_eq!(data["changes"]["supplier"]["to"], "华东视听设备有限公司");
    assert_eq!(data["changes"]["supplier"]["from"], serde_json::Value::Null);
    assert_eq!(
        kinds(&db, "proj-1"),
        [
            "equipment_registered",
            "equipment_updated",
            "equipment_updated"
        ]
    );
}

fn state_with(readings: &[(Point, Value)]) -> DeviceState {
    let mut s = DeviceState::new(
        DeviceId::new("proj-1"),
        RoomId::new("r-301"),
        ProfileId::new("epson-pjlink"),
        "tcp 127.0.0.1:4352".into(),
        t(2026, 11, 2, 8, 0),
    );
    for (p, v) in readings {
        s.readings.insert(
            p.clone(),
            Reading::new(p.clone(), v.clone(), t(2026, 11, 2, 8, 0)),
        );
    }
    s
}

#[tokio::test]
async fn counters_follow_readings_and_maintenance_resets_them() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    let clock = Clock::starting_at(t(2026, 11, 2, 8, 0));
    let h = Harness::start(WriterConfig::new(&db), clock);
    let mut events = h.bus.subscribe();
    h.handle
        .register(seed("proj-1", "r-301", "projector", "Epson", "EB"))
        .await
        .unwrap();
    let (tx, rx) = watch::channel(state_with(&[
        (
            Point::device(Quantity::Power),
            Value::Power(PowerState::Off),
        ),
        (Point::lamp(1, Quantity::LampHours), Value::Int(1200)),
        (Point::device(Quantity::FilterHours), Value::Int(480)),
    ]));
    let feed = crate::support::spawn(feed_counters(
        h.handle.clone(),
        rx,
        clock,
        h.cancel.child_token(),
    ));
    let counter = |name: &str| {
        let c = store::open_reader(&db).unwrap();
        archive::get(&c, "proj-1")
            .unwrap()
            .unwrap()
            .counter(name)
            .cloned()
    };
    let settle = |h: &Harness| {
        let handle = h.handle.clone();
        async move {
            // Let the feed task (same single-threaded runtime) take the new state and queue
            // its counters; the flush behind them returns once they are committed.
            for _ in 0..100 {
                tokio::task::yield_now().await;
            }
            handle.flush().await.unwrap();
        }
    };
    settle(&h).await;
    assert_eq!(counter("lamp.1.hours").unwrap().value, 1200.0);

    // Switched on (a power cycle), an hour of use.
    tx.send_replace(state_with(&[
        (
            Point::device(Quantity::Power),
            Value::Power(PowerState::WarmingUp),
        ),
        (Point::lamp(1, Quantity::LampHours), Value::Int(1200)),
        (Point::device(Quantity::FilterHours), Value::Int(480)),
    ]));
    settle(&h).await;
    tx.send_replace(state_with(&[
        (Point::device(Quantity::Power), Value::Power(PowerState::On)),
        (Point::lamp(1, Quantity::LampHours), Value::Int(1201)),
        (Point::device(Quantity::FilterHours), Value::Int(481)),
    ]));
    settle(&h).await;
    assert_eq!(counter("power_cycles").unwrap().value, 1.0);
    let lamp = counter("lamp.1.hours").unwrap();
    assert_eq!((lamp.value, lamp.since_service()), (1201.0, 1201.0));

    // Lamp replaced: use since service restarts at 0.
    let seq = h
        .handle
        .maintenance(Maintenance {
            device: DeviceId::new("proj-1"),
            room: None,
            at: t(2026, 11, 2, 12, 0),
            by: "李伟".into(),
            action: MaintenanceAction::LampReplaced { lamp: 1 },
            note: "ELPLP95, old lamp returned to the supplier".into(),
        })
        .await
        .unwrap();
    let lamp = counter("lamp.1.hours").unwrap();
    assert_eq!((lamp.value, lamp.since_service()), (1201.0, 0.0));
    assert_eq!(counter("lamp.1.replacements").unwrap().value, 1.0);
    // The projector keeps counting its total…
    tx.send_replace(state_with(&[
        (Point::device(Quantity::Power), Value::Power(PowerState::On)),
        (Point::lamp(1, Quantity::LampHours), Value::Int(1210)),
        (Point::device(Quantity::FilterHours), Value::Int(490)),
    ]));
    settle(&h).await;
    assert_eq!(counter("lamp.1.hours").unwrap().since_service(), 9.0);
    // …or the technician resets it in the projector's menu: a drop restarts the series.
    tx.send_replace(state_with(&[
        (Point::device(Quantity::Power), Value::Power(PowerState::On)),
        (Point::lamp(1, Quantity::LampHours), Value::Int(2)),
        (Point::device(Quantity::FilterHours), Value::Int(490)),
    ]));
    settle(&h).await;
    let lamp = counter("lamp.1.hours").unwrap();
    assert_eq!((lamp.value, lamp.since_service()), (2.0, 2.0));

    h.handle
        .maintenance(Maintenance {
            device: DeviceId::new("proj-1"),
            room: None,
            at: t(2026, 11, 2, 13, 0),
            by: "王芳".into(),
            action: MaintenanceAction::FilterCleaned,
            note: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(counter("filter.hours").unwrap().since_service(), 0.0);
    // The level watch adds the time a speaker zone spent above its limit.
    for secs in [12.5, 3.0] {
        h.handle
            .counters(
                DeviceId::new("proj-1"),
                t(2026, 11, 2, 14, 0),
                vec![archive::CounterUpdate::zone_over_limit("main", secs)],
            )
            .await
            .unwrap();
    }
    h.handle.flush().await.unwrap();
    assert_eq!(counter("zone.main.over_limit_secs").unwrap().value, 15.5);
    let who = h
        .handle
        .maintenance(Maintenance {
            device: DeviceId::new("proj-1"),
            room: None,
            at: t(2026, 11, 2, 13, 0),
            by: "  ".into(),
            action: MaintenanceAction::FilterCleaned,
            note: String::new(),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&who, StoreError::Invalid(m) if m.contains("who")),
        "{who}"
    );

    // Everyone hears of the maintenance once, after it is written.
    let ev = loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .unwrap()
            .unwrap();
        if matches!(ev.kind, EventKind::MaintenanceRecorded { .. }) {
            break ev;
        }
    };
    assert_eq!(
        ev.kind,
        EventKind::MaintenanceRecorded {
            device: DeviceId::new("proj-1"),
            room: Some(RoomId::new("r-301")),
            action: "lamp_replaced".into(),
            by: "李伟".into(),
        }
    );
    h.cancel.cancel();
    feed.await.unwrap();
    let c = store::open_reader(&db).unwrap();
    let e = avwarden::records::logbook::get(&c, seq).unwrap().unwrap();
    assert_eq!(e.kind, "maintenance");
    assert_eq!(e.actor, "person:李伟");
    assert_eq!(e.room.as_deref(), Some("r-301"), "room from the archive");
    assert_eq!(
        e.message,
        "proj-1: lamp 1 replaced by 李伟: ELPLP95, old lamp returned to the supplier"
    );
    assert_eq!(e.data_json()["counters_before"]["lamp.1.hours"], 1201.0);
    assert_eq!(
        kinds(&db, "proj-1"),
        ["equipment_registered", "maintenance", "maintenance"]
    );
}
