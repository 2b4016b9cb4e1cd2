//! Every typed event that matters writes one logbook entry through the bus's logbook sink;
//! kinds the bus does not have yet (self-test verdicts, protection, playbook steps) go in
//! through the handle with an open kind.

use avwarden::clock::Clock;
use avwarden::events::EventKind;
use avwarden::model::{DeviceId, Fault, Health, RoomId, Severity};
use avwarden::records::logbook::{self, Entry};
use avwarden::records::{store, Actor, NewEntry, WriterConfig};
use serde_json::json;

use super::{t, Harness};

#[tokio::test]
async fn every_logbook_worthy_event_writes_one_entry() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    let h = Harness::start(
        WriterConfig::new(&db),
        Clock::starting_at(t(2026, 11, 2, 8, 0)),
    );
    let (p1, r1) = (DeviceId::new("proj-1"), RoomId::new("r-301"));
    let (m2, r2) = (DeviceId::new("mic-2"), RoomId::new("r-302"));
    let lamp = Fault::new("lamp", Severity::Fault, "lamp failure").on("lamp 1");
    let batt = Fault::new("battery_low", Severity::Warning, "battery below 20 %").on("channel 2");
    let at = |m| t(2026, 11, 2, 9, m);
    h.bus.emit(
        at(0),
        EventKind::DaemonStarted {
            version: "0.1.0".into(),
            site: "hq".into(),
        },
    );
    let kinds = vec![
        EventKind::BookingStarted {
            room: r1.clone(),
            booking: "bk-42".into(),
        },
        EventKind::LinkUp {
            device: p1.clone(),
            room: r1.clone(),
            peer: "127.0.0.1:4352".into(),
        },
        EventKind::HealthChanged {
            device: p1.clone(),
            room: r1.clone(),
            from: Health::Ok,
            to: Health::Faulted,
        },
        EventKind::FaultRaised {
            device: p1.clone(),
            room: r1.clone(),
            fault: lamp.clone(),
        },
        EventKind::FaultAcknowledged {
            device: p1.clone(),
            room: r1.clone(),
            code: "lamp".into(),
            component: Some("lamp 1".into()),
            by: "李伟".into(),
        },
        EventKind::FaultCleared {
            device: p1.clone(),
            room: r1.clone(),
            fault: lamp.clone(),
        },
        EventKind::FaultRaised {
            device: m2.clone(),
            room: r2.clone(),
            fault: batt.clone(),
        },
        EventKind::CommandExecuted {
            device: p1.clone(),
            room: r1.clone(),
            command: "power".into(),
            outcome: "ok".into(),
            ok: true,
        },
        EventKind::BadInput {
            device: m2.clone(),
            room: r2.clone(),
            detail: "garbage".into(),
            count: 1,
        },
        EventKind::LinkDown {
            device: m2.clone(),
            room: r2.clone(),
            reason: "reset".into(),
            retry_in_ms: 500,
        },
        EventKind::ActorRestarted {
            device: m2.clone(),
            room: r2.clone(),
            restarts: 1,
            reason: "panic".into(),
        },
        EventKind::ActorGaveUp {
            device: m2.clone(),
            room: r2.clone(),
            restarts: 5,
        },
        EventKind::ConfigReloaded {
            added: vec![],
            removed: vec![],
            changed: vec!["device m2".into(), "device p1".into()],
            restart_needed: vec![],
        },
    ];
    let ended = EventKind::BookingEnded {
        room: r1.clone(),
        booking: "bk-42".into(),
    };
    for (i, k) in kinds.iter().enumerate() {
        h.bus.emit(at(i as u32 + 1), k.clone());
    }
    // Kinds from components that do not exist yet plug in with an open kind.
    let verdict = h
        .handle
        .append(
            NewEntry::new(
                at(30),
                "self_test_finished",
                Actor::System,
                "r-301: self-test passed",
            )
            .room("r-301")
            .data(json!({ "verdict": "pass", "steps": 6 })),
        )
        .await
        .unwrap();
    h.bus.emit(at(35), ended);
    h.bus.emit(
        at(36),
        EventKind::FaultRaised {
            device: p1.clone(),
            room: r1.clone(),
            fault: lamp.clone(),
        },
    );
    h.bus.emit(
        at(40),
        EventKind::DaemonStopping {
            reason: "SIGTERM".into(),
        },
    );
    h.stop().await;

    let c = store::open_reader(&db).unwrap();
    assert!(logbook::verify(&c).unwrap().ok());
    let entries: Vec<Entry> = c
        .prepare(&format!(
            "SELECT {} FROM logbook ORDER BY seq",
            Entry::COLUMNS
        ))
        .unwrap()
        .query_map([], Entry::from_row)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let names: Vec<&str> = entries.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        names,
        [
            "daemon_started",
            "booking_started",
            "link_up",
            "health_changed",
            "fault_raised",
            "fault_acknowledged",
            "fault_cleared",
            "fault_raised",
            "command_executed",
            "bad_input",
            "link_down",
            "actor_restarted",
            "actor_gave_up",
            "config_reloaded",
            "self_test_finished",
            "booking_ended",
            "fault_raised",
            "daemon_stopping",
        ],
        "one entry per event"
    );
    assert_eq!(entries[14].seq, verdict);
    let by_kind = |k: &str| entries.iter().find(|e| e.kind == k).unwrap();
    // Entries of a room carry the booking in progress there.
    let raised = &entries[4];
    assert_eq!(raised.booking.as_deref(), Some("bk-42"));
    assert_eq!(
        raised.message,
        EventKind::FaultRaised {
            device: p1.clone(),
            room: r1.clone(),
            fault: lamp.clone()
        }
        .describe()
    );
    assert_eq!(
        (raised.room.as_deref(), raised.device.as_deref()),
        (Some("r-301"), Some("proj-1"))
    );
    let d = raised.data_json();
    assert_eq!(d["fault"]["code"], "lamp");
    assert_eq!(d["fault"]["component"], "lamp 1");
    assert_eq!(d["class"], "major", "a fault during a booking");
    assert!(d.get("event").is_none(), "the kind column names the event");
    let warn = &entries[7];
    assert_eq!(warn.booking, None);
    assert_eq!(warn.data_json()["class"], "general");
    let ack = by_kind("fault_acknowledged");
    assert_eq!(ack.actor, "person:李伟");
    assert_eq!(by_kind("fault_cleared").actor, "system");
    assert_eq!(by_kind("health_changed").data_json()["to"], "faulted");
    assert_eq!(by_kind("config_reloaded").room, None);
    assert_eq!(
        by_kind("self_test_finished").booking.as_deref(),
        Some("bk-42")
    );
    assert_eq!(by_kind("self_test_finished").data_json()["verdict"], "pass");
    assert_eq!(entries[0].at(), at(0));
    let after = &entries[16];
    assert_eq!(
        (after.kind.as_str(), after.booking.as_deref()),
        ("fault_raised", None)
    );
    assert_eq!(
        after.data_json()["class"],
        "important",
        "a fault outside a booking"
    );
}
