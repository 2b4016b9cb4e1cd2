//! The hash chain: `avwarden logbook verify` passes an intact logbook and names the first
//! entry that was changed, removed or re-linked — by SQL or by editing the file's bytes.

use std::path::Path;

use avwarden::records::cli::Status;
use avwarden::records::logbook::{self, EntryFields};
use avwarden::records::store::Op;
use avwarden::records::{Actor, NewEntry, Store, StoreOptions};
use rusqlite::Connection;
use serde_json::json;

use super::{cli, t};

/// 100 entries; entry n says `marker-000n`.
fn fill(path: &Path) {
    let mut store = Store::open(path, &StoreOptions::default()).unwrap();
    let ops: Vec<Op> = (1..=100)
        .map(|i| {
            Op::Append(
                NewEntry::new(
                    t(2026, 11, 2, 8, 0) + chrono::Duration::seconds(i),
                    "note",
                    Actor::person("李伟"),
                    format!("marker-{i:04}: projector checked, 投影机正常"),
                )
                .room("r-301")
                .device("proj-1")
                .data(json!({ "i": i })),
            )
        })
        .collect();
    for r in store.apply(&ops).unwrap() {
        r.unwrap();
    }
    // Everything into the main file, so that editing its bytes edits the entries.
    store
        .connection()
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
}

/// Open without our triggers' protection, as someone editing the file would.
fn tamper(path: &Path, sql: &str) {
    let c = Connection::open(path).unwrap();
    c.execute_batch("DROP TRIGGER logbook_no_update; DROP TRIGGER logbook_no_delete;")
        .unwrap();
    c.execute_batch(sql).unwrap();
}

#[test]
fn an_intact_logbook_verifies_and_prints_its_head() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    fill(&db);
    let (status, out) = cli(&db, &["logbook", "verify"]);
    assert_eq!(status, Status::Success, "{out}");
    let head = logbook::get(&Connection::open(&db).unwrap(), 100)
        .unwrap()
        .unwrap();
    assert_eq!(
        out.trim(),
        format!(
            "logbook ok: 100 entries, head 100 {}",
            hex::encode(&head.hash)
        )
    );
}

#[test]
fn a_changed_message_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    fill(&db);
    tamper(
        &db,
        "UPDATE logbook SET message = 'marker-0042: all fine' WHERE seq = 42",
    );
    let (status, out) = cli(&db, &["logbook", "verify"]);
    assert_eq!(status, Status::Problem);
    assert_eq!(
        out.trim(),
        "logbook broken: entry 42: content does not match its stored hash (the entry was changed)"
    );
}

#[test]
fn every_field_is_covered() {
    let updates = [
        "at_us = at_us + 1",
        "kind = 'maintenance'",
        "room = 'r-302'",
        "room = NULL",
        "device = 'proj-2'",
        "booking = 'bk-1'",
        "actor = 'system'",
        "data = '{\"i\":8}'",
    ];
    for set in updates {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("r.db");
        fill(&db);
        tamper(&db, &format!("UPDATE logbook SET {set} WHERE seq = 7"));
        let (status, out) = cli(&db, &["logbook", "verify"]);
        assert_eq!(status, Status::Problem, "{set}");
        assert!(
            out.contains("entry 7: content does not match"),
            "{set}: {out}"
        );
    }
}

#[test]
fn a_rewritten_entry_with_a_new_hash_breaks_the_next_link() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    fill(&db);
    // A careful forger recomputes the changed entry's own hash; the next entry still holds the
    // old one.
    let c = Connection::open(&db).unwrap();
    let mut e = logbook::get(&c, 42).unwrap().unwrap();
    e.message = "marker-0042: nothing happened".into();
    let forged = EntryFields {
        message: &e.message,
        ..e.fields()
    }
    .hash(&e.prev_hash);
    drop(c);
    tamper(
        &db,
        &format!(
            "UPDATE logbook SET message = 'marker-0042: nothing happened', hash = X'{}' WHERE seq = 42",
            hex::encode(forged)
        ),
    );
    let (status, out) = cli(&db, &["logbook", "verify"]);
    assert_eq!(status, Status::Problem);
    assert!(out.contains("entry 43: does not link to entry 42"), "{out}");
}

#[test]
fn a_removed_entry_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    fill(&db);
    tamper(&db, "DELETE FROM logbook WHERE seq = 42");
    let (status, out) = cli(&db, &["logbook", "verify"]);
    assert_eq!(status, Status::Problem);
    assert!(
        out.contains("entry 42: missing (the next stored entry is 43"),
        "{out}"
    );
}

#[test]
fn editing_the_file_bytes_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    fill(&db);
    // Change one character of entry 57's message in the file itself; SQLite does not notice
    // (no page checksums), the chain does.
    let mut bytes = std::fs::read(&db).unwrap();
    let needle = b"marker-0057: projector checked";
    let pos = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("entry 57 in the file");
    bytes[pos + needle.len() - 7] = b'K'; // "checked" -> "cKecked"
    std::fs::write(&db, &bytes).unwrap();
    let (status, out) = cli(&db, &["logbook", "verify"]);
    assert_eq!(status, Status::Problem);
    assert!(out.contains("entry 57: content does not match"), "{out}");
}

#[test]
fn the_writer_continues_a_chain_another_process_extended() {
    // `logbook add` from another process and the daemon's writer share one chain: each reads
    // the head inside its write transaction.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    fill(&db);
    let mut a = Store::open(&db, &StoreOptions::default()).unwrap();
    let mut b = Store::open(&db, &StoreOptions::default()).unwrap();
    for i in 0..10 {
        let s = if i % 2 == 0 { &mut a } else { &mut b };
        s.apply(&[Op::Append(NewEntry::new(
            t(2026, 11, 3, 8, i),
            "note",
            Actor::System,
            format!("from {}", i % 2),
        ))])
        .unwrap()
        .pop()
        .unwrap()
        .unwrap();
    }
    let (status, out) = cli(&db, &["logbook", "verify"]);
    assert_eq!(status, Status::Success, "{out}");
    assert!(out.contains("110 entries"), "{out}");
}
