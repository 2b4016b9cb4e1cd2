//! `avwarden backup`: SQLite's online backup of a store that is being written, verified before
//! it is put in place (issue 13.3).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use avwarden::clock::Clock;
use avwarden::records::cli::{self, Status};
use avwarden::records::{logbook, store, Actor, NewEntry, WriterConfig};

use crate::records::Harness;

const WRITERS: usize = 16;

fn entry(clock: Clock, writer: usize, i: u64) -> NewEntry {
    NewEntry::new(
        clock.now(),
        "note",
        Actor::System,
        format!("writer {writer} entry {i}: lamp checked"),
    )
    .room("r-101")
    .data(serde_json::json!({ "writer": writer, "i": i }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_while_sixteen_writers_append_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("records.db");
    let to = dir.path().join("backup.db");
    let clock = Clock::system();
    let h = Harness::start(WriterConfig::new(&db), clock);

    // Some history first, so the copy takes more than one step.
    let mut acked_before = 0;
    for i in 0..300 {
        acked_before = h.handle.append(entry(clock, 99, i)).await.unwrap();
    }

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (handle, stop, acked) = (h.handle.clone(), stop.clone(), acked.clone());
        writers.push(crate::support::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let seq = handle.append(entry(clock, w, i)).await.expect("append");
                acked.fetch_max(seq, Ordering::Relaxed);
                i += 1;
            }
            i
        }));
    }
    // Every writer has been acknowledged at least once before the backup starts.
    while acked.load(Ordering::Relaxed) < acked_before + 2 * WRITERS as u64 {
        tokio::task::yield_now().await;
    }
    let acked_at_start = acked.load(Ordering::Relaxed);

    let (db2, to2) = (db.clone(), to.clone());
    let (status, out) = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        let status = cli::backup(&db2, &to2, &mut out).expect("backup");
        (status, String::from_utf8(out).unwrap())
    })
    .await
    .unwrap();
    // Again two pages a step: many steps, restarted by the writers' commits, until the rest is
    // copied in one step. That copy must verify just the same.
    let (db3, to3) = (db.clone(), dir.path().join("stepped.db"));
    let acked_at_stepped = acked.load(Ordering::Relaxed);
    let stepped = tokio::task::spawn_blocking(move || store::backup_in_steps(&db3, &to3, 2))
        .await
        .unwrap()
        .expect("stepped backup verifies");
    assert!(stepped.last_seq.unwrap() >= acked_at_stepped, "{stepped:?}");
    assert_eq!(stepped.entries, stepped.last_seq.unwrap());
    let acked_at_end = acked.load(Ordering::Relaxed);
    // The writers kept going through the backup: it did not stop them.
    while acked.load(Ordering::Relaxed) < acked_at_end + WRITERS as u64 {
        tokio::task::yield_now().await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut appended = 0;
    for w in writers {
        appended += w.await.unwrap();
    }
    h.stop().await;

    assert_eq!(status, Status::Success, "{out}");
    assert!(out.starts_with("backup ok: "), "{out}");
    assert!(out.contains("verified"), "{out}");
    assert!(appended > 0);

    // The copy, checked on its own, as a restore would.
    let conn = store::open_reader(&to).unwrap();
    store::integrity_check(&conn).unwrap();
    let full: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(full, "ok");
    let chain = logbook::verify(&conn).unwrap();
    assert!(chain.ok(), "{chain:?}");
    let head = chain.head.expect("entries").seq;
    assert!(
        head >= acked_at_start,
        "the copy ends at {head}, before the {acked_at_start} entries acknowledged when it began"
    );
    assert!(
        out.contains(&format!("{} entries, last seq {head},", chain.checked)),
        "{out}"
    );
    // Only the verified copy is left in the directory.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(names.is_empty(), "temporary files left: {names:?}");
}

/// Open without the logbook's triggers, as someone editing the file would.
fn tamper(path: &Path, sql: &str) {
    let c = rusqlite::Connection::open(path).unwrap();
    c.execute_batch("DROP TRIGGER logbook_no_update; DROP TRIGGER logbook_no_delete;")
        .unwrap();
    c.execute_batch(sql).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_that_does_not_verify_is_not_kept_and_the_old_backup_stays() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("records.db");
    let to = dir.path().join("backup.db");
    let clock = Clock::system();
    let h = Harness::start(WriterConfig::new(&db), clock);
    for i in 0..20 {
        h.handle.append(entry(clock, 0, i)).await.unwrap();
    }
    h.stop().await;
    std::fs::write(&to, b"yesterday's backup").unwrap();
    tamper(
        &db,
        "UPDATE logbook SET message = 'rewritten' WHERE seq = 7;",
    );

    let mut out = Vec::new();
    let status = cli::backup(&db, &to, &mut out).unwrap();
    let out = String::from_utf8(out).unwrap();

    assert_eq!(status, Status::Problem, "{out}");
    assert!(out.contains("chain is broken"), "{out}");
    assert!(out.contains("seq 7") || out.contains(" 7"), "{out}");
    assert_eq!(std::fs::read(&to).unwrap(), b"yesterday's backup");
    let left = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with('.')
        })
        .count();
    assert_eq!(left, 0);
}

/// The subcommand as `main.rs` mounts it: `avwarden backup --db PATH --to FILE`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backup_command_prints_one_line_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("records.db");
    let to = dir.path().join("copy.db");
    let clock = Clock::system();
    let h = Harness::start(WriterConfig::new(&db), clock);
    for i in 0..10 {
        h.handle.append(entry(clock, 0, i)).await.unwrap();
    }
    h.stop().await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_avwarden"))
        .args(["backup", "--db"])
        .arg(&db)
        .arg("--to")
        .arg(&to)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.starts_with("backup ok: 10 entries, last seq 10, "),
        "{text}"
    );
    let conn = store::open_reader(&to).unwrap();
    assert!(logbook::verify(&conn).unwrap().ok());
}
