//! The writer: batched commits, acknowledgements only after the commit, and faults of the store
//! itself (full, unopenable, corrupt, read-only): a clear error, the daemon keeps running,
//! entries wait in a bounded buffer, an alert-worthy event, nothing written half.

use std::sync::Arc;
use std::time::Duration;

use avwarden::clock::Clock;
use avwarden::events::{Event, EventKind};
use avwarden::model::{DeviceId, Health, RoomId};
use avwarden::records::logbook::{self, Entry};
use avwarden::records::{
    store, Actor, NewEntry, Store, StoreError, StoreOptions, StoreStatus, WriterConfig,
};
use rusqlite::{Connection, OpenFlags};

use super::{t, Harness};

fn entry(i: usize) -> NewEntry {
    NewEntry::new(
        t(2026, 11, 2, 9, 0),
        "note",
        Actor::System,
        format!("entry {i}: {}", "x".repeat(2000)),
    )
    .room("r-301")
}

async fn next_event(
    rx: &mut avwarden::events::EventSink,
    what: &str,
    pred: impl Fn(&EventKind) -> bool,
) -> Arc<Event> {
    loop {
        // Bounds a hang only (paused time: costs nothing).
        let ev = tokio::time::timeout(Duration::from_secs(600), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no {what} event"))
            .expect("bus open");
        if pred(&ev.kind) {
            return ev;
        }
    }
}

fn all_entries(db: &std::path::Path) -> Vec<Entry> {
    let c = store::open_reader(db).unwrap();
    let mut stmt = c
        .prepare(&format!(
            "SELECT {} FROM logbook ORDER BY seq",
            Entry::COLUMNS
        ))
        .unwrap();
    stmt.query_map([], Entry::from_row)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test]
async fn commits_are_batched_and_acknowledged_only_once_durable() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    let h = Harness::start(
        WriterConfig::new(&db),
        Clock::starting_at(t(2026, 11, 2, 9, 0)),
    );
    h.handle.flush().await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..300 {
        let handle = h.handle.clone();
        let db = db.clone();
        tasks.push(crate::support::spawn(async move {
            let seq = handle.append(entry(i)).await.unwrap();
            // Acknowledged means committed: a fresh connection sees it at once.
            let c = store::open_reader(&db).unwrap();
            let e = logbook::get(&c, seq)
                .unwrap()
                .expect("acknowledged entry is on disk");
            assert!(e.message.starts_with(&format!("entry {i}:")));
            seq
        }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=300).collect::<Vec<u64>>());
    let commits = h.bus.metrics().get("avwarden_logbook_commits_total", None);
    assert!(
        commits < 300.0 / 4.0,
        "300 concurrent entries took {commits} commits: not batched"
    );
    assert_eq!(
        h.bus.metrics().get("avwarden_logbook_entries_total", None),
        300.0
    );
    h.stop().await;
    assert!(logbook::verify(&store::open_reader(&db).unwrap())
        .unwrap()
        .ok());
}

#[tokio::test(start_paused = true)]
async fn a_full_store_keeps_the_daemon_running_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    // Room for the schema and a few entries only: SQLite then reports "database or disk is
    // full", exactly as on a full disk.
    let size = {
        let s = Store::open(&db, &StoreOptions::default()).unwrap();
        let pages: i64 = s
            .connection()
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        pages as u64 * 4096
    };
    let mut config = WriterConfig::new(&db);
    config.store.max_size_bytes = Some(size + 12 * 4096);
    config.pending_limit = 40;
    config.max_batch = 8;
    config.retry_interval = Duration::from_secs(5);
    let h = Harness::start(config, Clock::starting_at(t(2026, 11, 2, 9, 0)));
    let mut events = h.bus.subscribe();
    let mut status = h.handle.watch_status();

    // Technicians keep recording; each waits for its acknowledgement.
    let mut appends = Vec::new();
    for i in 0..30 {
        let handle = h.handle.clone();
        appends.push(crate::support::spawn(async move {
            handle.append(entry(i)).await
        }));
    }
    let failed = next_event(&mut events, "StoreFailed", |k| {
        matches!(k, EventKind::StoreFailed { .. })
    })
    .await;
    let EventKind::StoreFailed { error, .. } = &failed.kind else {
        unreachable!()
    };
    assert!(error.starts_with("logbook store is full"), "{error}");
    status
        .wait_for(|s| matches!(s, StoreStatus::Failing { .. }))
        .await
        .unwrap();

    // Nothing half-written: the chain on disk verifies; the batch that did not fit is not
    // there in part (checked after recovery: every entry exactly once).
    let on_disk = all_entries(&db);
    assert!(logbook::verify(&store::open_reader(&db).unwrap())
        .unwrap()
        .ok());
    assert!(
        on_disk.len() < 30,
        "the limit was reached ({} entries)",
        on_disk.len()
    );
    let at_failure: Vec<u64> = on_disk.iter().map(|e| e.seq).collect();

    // The daemon keeps running: events still flow, into the bounded buffer and beyond it.
    for i in 0..60 {
        h.bus.emit(
            t(2026, 11, 2, 9, 1),
            EventKind::HealthChanged {
                device: DeviceId::new(format!("d-{i}")),
                room: RoomId::new("r-301"),
                from: Health::Ok,
                to: Health::Degraded,
            },
        );
    }
    // A request that must know it is durable is refused at once when the buffer is full,
    // with a clear error, rather than left waiting.
    let refused = h.handle.append(entry(99)).await.unwrap_err();
    assert!(
        matches!(refused, StoreError::Unavailable { .. }),
        "{refused}"
    );
    assert!(
        refused.to_string().contains("logbook store is full"),
        "{refused}"
    );
    let StoreStatus::Failing {
        pending, dropped, ..
    } = h.handle.status()
    else {
        panic!("still failing: {:?}", h.handle.status())
    };
    assert!(pending >= 40, "{pending}");
    assert!(dropped > 0, "{dropped}");
    assert!(
        appends.iter().any(|a| !a.is_finished()),
        "acknowledgements wait for the commit"
    );

    // Room is made (config reload raises the limit): everything waiting is written.
    h.handle.set_max_size(None).await.unwrap();
    let recovered = next_event(&mut events, "StoreRecovered", |k| {
        matches!(k, EventKind::StoreRecovered { .. })
    })
    .await;
    let EventKind::StoreRecovered { dropped: lost, .. } = recovered.kind else {
        unreachable!()
    };
    assert_eq!(lost, dropped);
    let mut seqs = Vec::new();
    for a in appends {
        seqs.push(a.await.unwrap().expect("acknowledged after recovery"));
    }
    h.handle.flush().await.unwrap();
    h.stop().await;

    let entries = all_entries(&db);
    assert!(logbook::verify(&store::open_reader(&db).unwrap())
        .unwrap()
        .ok());
    for seq in &seqs {
        assert!(entries.iter().any(|e| e.seq == *seq && e.kind == "note"));
    }
    let kinds: Vec<&str> = entries.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "store_failed").count(), 1);
    assert_eq!(kinds.iter().filter(|k| **k == "store_recovered").count(), 1);
    let rec = entries
        .iter()
        .find(|e| e.kind == "store_recovered")
        .unwrap();
    assert_eq!(rec.data_json()["dropped"], lost);
    // The batch that did not fit was not written in part and then again: each entry once.
    let mut notes: Vec<&str> = entries
        .iter()
        .filter(|e| e.kind == "note")
        .map(|e| e.message.split(':').next().unwrap())
        .collect();
    notes.sort_unstable();
    notes.dedup();
    assert_eq!(notes.len(), 30);
    assert_eq!(entries.iter().filter(|e| e.kind == "note").count(), 30);
    // What was on disk when it failed is unchanged, and was acknowledged.
    for seq in &at_failure {
        assert!(
            seqs.contains(seq),
            "entry {seq} on disk but never acknowledged"
        );
    }
    let health = kinds.iter().filter(|k| **k == "health_changed").count() as u64;
    assert_eq!(health + lost, 60, "every event written or counted as lost");
}

#[tokio::test(start_paused = true)]
async fn a_store_that_cannot_open_at_start_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("not-yet").join("r.db");
    let h = Harness::start(
        WriterConfig::new(&db),
        Clock::starting_at(t(2026, 11, 2, 9, 0)),
    );
    let mut events = h.bus.subscribe();
    let mut status = h.handle.watch_status();
    status
        .wait_for(|s| matches!(s, StoreStatus::Failing { .. }))
        .await
        .unwrap();
    let StoreStatus::Failing { error, .. } = h.handle.status() else {
        unreachable!()
    };
    assert!(
        error.contains("not-yet/r.db"),
        "the error names the file: {error}"
    );
    h.bus.emit(
        t(2026, 11, 2, 9, 1),
        EventKind::DaemonStarted {
            version: "0.1.0".into(),
            site: "hq".into(),
        },
    );
    let pending_append = {
        let handle = h.handle.clone();
        crate::support::spawn(async move { handle.append(entry(1)).await })
    };
    // The directory appears (the state directory was mounted late).
    std::fs::create_dir(dir.path().join("not-yet")).unwrap();
    next_event(&mut events, "StoreRecovered", |k| {
        matches!(k, EventKind::StoreRecovered { .. })
    })
    .await;
    let seq = pending_append.await.unwrap().unwrap();
    h.handle.flush().await.unwrap();
    h.stop().await;
    let kinds: Vec<String> = all_entries(&db).into_iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        ["store_failed", "daemon_started", "note", "store_recovered"]
    );
    assert_eq!(seq, 3);
}

#[test]
fn a_corrupt_file_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    {
        let mut s = Store::open(&db, &StoreOptions::default()).unwrap();
        let ops: Vec<_> = (0..200)
            .map(|i| avwarden::records::store::Op::Append(entry(i)))
            .collect();
        s.apply(&ops).unwrap();
        s.connection()
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .unwrap();
    }
    // Scribble over the middle of the file, as a failing disk would.
    let mut bytes = std::fs::read(&db).unwrap();
    let mid = bytes.len() / 2 / 4096 * 4096;
    for b in &mut bytes[mid..mid + 4096] {
        *b = 0xA5;
    }
    std::fs::write(&db, &bytes).unwrap();
    let e = Store::open(&db, &StoreOptions::default())
        .err()
        .expect("refused");
    assert!(matches!(e, StoreError::Corrupt(_)), "{e}");
    let text = e.to_string();
    assert!(text.starts_with("logbook store is corrupt: "), "{text}");
    assert!(text.contains("r.db"), "names the file: {text}");
    assert!(e.is_store_failure());
    // Not a database at all.
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, vec![b'x'; 8192]).unwrap();
    let e = Store::open(&junk, &StoreOptions::default())
        .err()
        .expect("refused");
    assert!(matches!(e, StoreError::Corrupt(_)), "{e}");
}

#[test]
fn a_read_only_store_is_a_store_failure_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    drop(Store::open(&db, &StoreOptions::default()).unwrap());
    // What the writer sees when the file system was remounted read-only.
    let c = Connection::open_with_flags(&db, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let err = c
        .execute(
            "INSERT INTO counters (device, name, value, updated_us) VALUES ('d', 'n', 1, 0)",
            [],
        )
        .unwrap_err();
    let e = StoreError::from_sqlite(err);
    assert!(matches!(e, StoreError::ReadOnly(_)), "{e:?}");
    assert!(
        e.to_string().starts_with("logbook store is read-only: "),
        "{e}"
    );
    assert!(e.is_store_failure(), "the batch is kept and retried");
    assert!(e.needs_reopen(), "the file is reopened before the retry");
}
