//! The SQLite file: open it with the right pragmas, migrate it, check its integrity, and apply
//! one batch of writes in one transaction.
//!
//! Owns the connection of the writer and the mapping of each [`Op`] to rows. Must not be used
//! by more than one task of a daemon (the writer task owns it), and must not commit a batch in
//! part: a failure of the store rolls the whole batch back and hands it back for a retry.
//!
//! Pragmas: WAL (readers never block the writer), `synchronous=FULL` (every commit is on disk
//! before anyone is told it is; batching pays for the fsync), a busy timeout so that a
//! `logbook add` from another process waits its turn instead of failing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use super::archive::{self, ArchiveFields, CounterUpdate, EquipmentSeed};
use super::bookings::{self, BookingChange, DoneJob};
use super::logbook::{self, Head, NewEntry};
use super::maintenance::{self, Maintenance};
use super::report::fault_class;
use super::{Actor, StoreError};
use crate::events::{Event, EventKind};
use crate::model::{Booking, DeviceId, RoomId, Verdict};

/// Schema migrations, applied in order; `PRAGMA user_version` holds the last one applied.
pub const MIGRATIONS: &[(u32, &str)] = &[
    (1, include_str!("../../migrations/0001_init.sql")),
    (2, include_str!("../../migrations/0002_bookings.sql")),
    (3, include_str!("../../migrations/0003_alerts.sql")),
    (4, include_str!("../../migrations/0004_notify.sql")),
];

/// The schema version this build writes.
pub fn schema_version() -> u32 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}

#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Refuse to grow the file beyond this (SQLite reports "database or disk is full", handled
    /// exactly like a full disk). `None`: limited only by the disk.
    pub max_size_bytes: Option<u64>,
    /// How long a write waits for a lock held by another process.
    pub busy_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_size_bytes: None,
            busy_timeout: Duration::from_secs(5),
        }
    }
}

/// One write request. A batch of them is applied in one transaction.
#[derive(Debug, Clone)]
pub enum Op {
    /// A typed event from the bus.
    Event(Arc<Event>),
    /// An entry of any kind (self-test verdicts, playbook steps, …).
    Append(NewEntry),
    Maintenance(Maintenance),
    /// A device from the site config, with what its profile says. (Boxed: the rare large
    /// ops must not make every queued entry as big as they are.)
    Register(Box<EquipmentSeed>),
    /// Fields a technician set (site config or API).
    SetFields {
        device: DeviceId,
        fields: Box<ArchiveFields>,
        actor: Actor,
        at: chrono::DateTime<chrono::Utc>,
    },
    Counters {
        device: DeviceId,
        at: chrono::DateTime<chrono::Utc>,
        updates: Vec<CounterUpdate>,
    },
    /// A booking made, changed or cancelled (API, demo).
    Booking {
        booking: Box<Booking>,
        change: BookingChange,
        actor: Actor,
        at: chrono::DateTime<chrono::Utc>,
    },
    /// What an iCalendar feed lists now (bookings it no longer lists are cancelled).
    FeedBookings {
        feed: String,
        bookings: Vec<Booking>,
        /// The span the feed was expanded over: only its bookings can have been removed.
        window: (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>),
        at: chrono::DateTime<chrono::Utc>,
    },
    /// A self-test's verdict, with details for its logbook entry (steps, lamp hours spent).
    Verdict {
        verdict: Box<Verdict>,
        extra: serde_json::Value,
    },
    /// A job of the plan ran (or was given up as missed).
    JobDone {
        job: DoneJob,
        ran: chrono::DateTime<chrono::Utc>,
        outcome: &'static str,
    },
    /// A playbook alert as it is now (its changes are logged by their own events).
    Alert(Box<super::alerts::AlertRecord>),
    /// A maintenance window added or removed.
    Window(Box<super::alerts::WindowRecord>),
    /// A sink's attempt at one alert entry, and its cursor moved past the entry when the
    /// attempt settled it (issue 11.6).
    Delivery(Box<super::notify::Delivery>),
    /// A sink's cursor moved past entries that were not for it; never moves it back.
    SinkCursor {
        sink: String,
        seq: u64,
        at: chrono::DateTime<chrono::Utc>,
    },
    /// Writes nothing: a barrier whose acknowledgement means everything before it is
    /// committed.
    Flush,
}

/// What one op wrote: the sequence numbers of its entries, and events to emit once the batch
/// is committed (never before: an event must not announce what might still roll back).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Applied {
    pub seqs: Vec<u64>,
    pub emit: Vec<EventKind>,
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
    options: StoreOptions,
    bookings: BTreeMap<String, String>,
}

impl Store {
    /// Open (creating if needed) with WAL and `synchronous=FULL`, check integrity, migrate.
    pub fn open(path: &Path, options: &StoreOptions) -> Result<Store, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| with_path(path, e))?;
        conn.busy_timeout(options.busy_timeout)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(|e| with_path(path, e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Io(format!(
                "{}: cannot switch to WAL (journal mode stays {mode})",
                path.display()
            )));
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        // Keep the WAL file from growing without bound after a burst.
        conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
        integrity_check(&conn).map_err(|e| match e {
            StoreError::Corrupt(m) => StoreError::Corrupt(format!("{}: {m}", path.display())),
            other => other,
        })?;
        let mut store = Store {
            conn,
            path: path.to_owned(),
            options: options.clone(),
            bookings: BTreeMap::new(),
        };
        migrate(&mut store.conn)?;
        store.set_max_size(options.max_size_bytes)?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn options(&self) -> &StoreOptions {
        &self.options
    }

    /// The writer's connection, for reads in the same process (tests, the CLI).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    pub fn head(&self) -> Result<Head, StoreError> {
        Head::read(&self.conn)
    }

    pub fn set_max_size(&mut self, bytes: Option<u64>) -> Result<(), StoreError> {
        let page_size: i64 = self.conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        // SQLite's own default maximum: effectively unlimited.
        let pages = bytes.map_or(4_294_967_294, |b| (b as i64 / page_size).max(1));
        let _: i64 = self
            .conn
            .query_row(&format!("PRAGMA max_page_count = {pages}"), [], |r| {
                r.get(0)
            })?;
        self.options.max_size_bytes = bytes;
        Ok(())
    }

    /// Apply a batch in one transaction. The outer `Err` is a failure of the store: nothing of
    /// the batch was written (and the booking context is as before), so the batch may be
    /// retried as a whole. An inner `Err` concerns one op (rolled back to its savepoint); the
    /// rest of the batch is written.
    pub fn apply(&mut self, ops: &[Op]) -> Result<Vec<Result<Applied, StoreError>>, StoreError> {
        let mut bookings = self.bookings.clone();
        let mut tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut head = Head::read(&tx)?;
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            // The booking context travels in the event stream, so it applies in event order:
            // a booking's own start and end entries carry it, entries after the end do not.
            if let Op::Event(ev) = op {
                if let EventKind::BookingStarted { room, booking } = &ev.kind {
                    bookings.insert(room.to_string(), booking.clone());
                }
            }
            let before = head;
            let res = if single_statement(op) {
                // SQLite undoes a failed statement by itself; a savepoint would only cost.
                apply_op(&tx, &mut head, &bookings, op)
            } else {
                let sp = tx.savepoint()?;
                let res = apply_op(&sp, &mut head, &bookings, op);
                if res.is_ok() {
                    sp.commit()?;
                }
                res
            };
            if let Op::Event(ev) = op {
                if let EventKind::BookingEnded { room, .. } = &ev.kind {
                    bookings.remove(room.as_str());
                }
            }
            match res {
                Ok(a) => results.push(Ok(a)),
                Err(e) if e.is_store_failure() => return Err(e),
                Err(e) => {
                    head = before;
                    results.push(Err(e));
                }
            }
        }
        tx.commit()?;
        self.bookings = bookings;
        Ok(results)
    }
}

fn with_path(path: &Path, e: rusqlite::Error) -> StoreError {
    match StoreError::from_sqlite(e) {
        StoreError::Io(m) => StoreError::Io(format!("{}: {m}", path.display())),
        StoreError::ReadOnly(m) => StoreError::ReadOnly(format!("{}: {m}", path.display())),
        StoreError::Corrupt(m) => StoreError::Corrupt(format!("{}: {m}", path.display())),
        StoreError::Sql(m) => StoreError::Sql(format!("{}: {m}", path.display())),
        other => other,
    }
}

/// Open an existing store for reading (export, verify, report, the API). Never creates, never
/// migrates; readers do not block the writer (WAL).
pub fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    if !path.exists() {
        return Err(StoreError::Missing(path.display().to_string()));
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| with_path(path, e))?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let version: u32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| with_path(path, e))?;
    if version == 0 {
        return Err(StoreError::Missing(format!(
            "{} (the file holds no avwarden records)",
            path.display()
        )));
    }
    if version > schema_version() {
        return Err(StoreError::TooNew {
            found: version,
            known: schema_version(),
        });
    }
    Ok(conn)
}

/// What a verified backup holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupReport {
    /// Logbook entries in the copy, every one of them verified in its chain.
    pub entries: u64,
    /// The copy's last logbook sequence number (`None` for an empty logbook).
    pub last_seq: Option<u64>,
    /// Size of the copy on disk.
    pub bytes: u64,
}

/// Pages copied per backup step: small enough that each step's read snapshot is short, large
/// enough that a store of a few hundred MB is copied in a few hundred steps.
const BACKUP_PAGES_PER_STEP: i32 = 1024;

/// Backup steps in a row that may find the store locked (each after the busy timeout).
const MAX_BUSY_STEPS: u32 = 12;

/// Copy the store at `src` into `to` with SQLite's online backup while the daemon writes, then
/// prove the copy: `PRAGMA integrity_check` (the full one: a backup is read rarely and must be
/// sound) and the logbook's chain verify. The copy is written beside `to` under a temporary
/// name and renamed into place only once it verified, so `to` is never a half-made or broken
/// backup; a copy that fails is removed and reported as [`StoreError::Corrupt`].
pub fn backup(src: &Path, to: &Path) -> Result<BackupReport, StoreError> {
    backup_in_steps(src, to, BACKUP_PAGES_PER_STEP)
}

/// [`backup`] with `pages_per_step` pages copied per step (tests use a few, so that a small
/// store is copied in many steps and writes restart it).
pub fn backup_in_steps(
    src: &Path,
    to: &Path,
    pages_per_step: i32,
) -> Result<BackupReport, StoreError> {
    let source = open_reader(src)?;
    let tmp = temp_beside(to);
    let copied = copy_online(&source, &tmp, pages_per_step.max(1)).and_then(|()| verify_copy(&tmp));
    let report = match copied {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    std::fs::rename(&tmp, to).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        StoreError::Io(format!("rename the backup into {}: {e}", to.display()))
    })?;
    // The rename is durable only once the directory entry is on disk.
    if let Some(dir) = to.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(report)
}

fn temp_beside(to: &Path) -> PathBuf {
    let name = to
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "backup".to_owned());
    to.with_file_name(format!(".{name}.partial-{}", std::process::id()))
}

/// The backup proper, in steps. Each step reads under its own snapshot; in WAL mode a reader
/// never blocks the writer, so the writer waits for no step. A write between two steps makes
/// SQLite restart the copy, which under a steady stream of appends could go on for ever: after
/// a bounded number of steps the rest is copied in one step, under one snapshot, which the
/// writer does not wait for either (it only keeps the WAL from being checkpointed meanwhile).
fn copy_online(source: &Connection, tmp: &Path, pages_per_step: i32) -> Result<(), StoreError> {
    use rusqlite::backup::{Backup, StepResult};
    let _ = std::fs::remove_file(tmp);
    let mut dest = Connection::open(tmp).map_err(|e| with_path(tmp, e))?;
    {
        let backup = Backup::new(source, &mut dest).map_err(|e| with_path(tmp, e))?;
        let mut steps = 0u32;
        let mut busy = 0u32;
        let mut budget: Option<u32> = None;
        loop {
            let pages = match budget {
                Some(b) if steps >= b => -1,
                _ => pages_per_step,
            };
            let r = backup.step(pages).map_err(StoreError::from_sqlite)?;
            steps += 1;
            if budget.is_none() {
                // Twice the steps a copy without restarts needs, from the first step's count.
                let total = backup.progress().pagecount.max(1) as u32;
                budget = Some(2 * total.div_ceil(pages_per_step as u32) + 2);
            }
            match r {
                StepResult::Done => break,
                // A lock the step needs is held elsewhere: the source's busy timeout has already
                // waited for it, so a few of these in a row mean a store that stays locked.
                StepResult::Busy | StepResult::Locked => {
                    busy += 1;
                    if busy > MAX_BUSY_STEPS {
                        return Err(StoreError::Busy(format!(
                            "the backup of {} could not read the store",
                            tmp.display()
                        )));
                    }
                }
                _ => busy = 0,
            }
        }
    }
    // The copy is a file of its own: no WAL beside it, everything in the main file.
    let _: String = dest
        .query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))
        .map_err(|e| with_path(tmp, e))?;
    dest.close().map_err(|(_, e)| with_path(tmp, e))?;
    let f =
        std::fs::File::open(tmp).map_err(|e| StoreError::Io(format!("{}: {e}", tmp.display())))?;
    f.sync_all()
        .map_err(|e| StoreError::Io(format!("{}: {e}", tmp.display())))?;
    Ok(())
}

fn verify_copy(tmp: &Path) -> Result<BackupReport, StoreError> {
    let conn = open_reader(tmp)?;
    let mut stmt = conn.prepare("PRAGMA integrity_check(10)")?;
    let problems: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<Result<_, _>>()?;
    drop(stmt);
    if problems.len() != 1 || problems[0] != "ok" {
        return Err(StoreError::Corrupt(format!(
            "the backup failed its integrity check: {}",
            problems.join("; ")
        )));
    }
    let chain = logbook::verify(&conn)?;
    if let Some(b) = &chain.broken {
        return Err(StoreError::Corrupt(format!(
            "the backup's logbook chain is broken: {b}"
        )));
    }
    drop(conn);
    let bytes = std::fs::metadata(tmp)
        .map_err(|e| StoreError::Io(format!("{}: {e}", tmp.display())))?
        .len();
    Ok(BackupReport {
        entries: chain.checked,
        last_seq: chain.head.map(|h| h.seq),
        bytes,
    })
}

/// `PRAGMA quick_check`: the b-trees and pages are sound (it skips only the index-content
/// cross-check of `integrity_check`, which costs minutes on a large file at every start).
pub fn integrity_check(conn: &Connection) -> Result<(), StoreError> {
    let mut stmt = conn.prepare("PRAGMA quick_check(10)")?;
    let problems: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<Result<_, _>>()?;
    if problems.len() == 1 && problems[0] == "ok" {
        Ok(())
    } else {
        Err(StoreError::Corrupt(format!(
            "integrity check failed: {}",
            problems.join("; ")
        )))
    }
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    for (version, sql) in MIGRATIONS {
        // Read the version inside the write transaction: two processes opening a new file at
        // once must not both apply a migration.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let current: u32 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if current > schema_version() {
            return Err(StoreError::TooNew {
                found: current,
                known: schema_version(),
            });
        }
        if current >= *version {
            continue;
        }
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version)?;
        tx.commit()?;
    }
    Ok(())
}

/// Ops that write one logbook row and nothing else.
fn single_statement(op: &Op) -> bool {
    match op {
        Op::Append(_) => true,
        Op::Event(ev) => !matches!(ev.kind, EventKind::IdentityReported { .. }),
        _ => false,
    }
}

fn booking_for<'a>(bookings: &'a BTreeMap<String, String>, room: Option<&str>) -> Option<&'a str> {
    room.and_then(|r| bookings.get(r)).map(String::as_str)
}

fn apply_op(
    conn: &Connection,
    head: &mut Head,
    bookings: &BTreeMap<String, String>,
    op: &Op,
) -> Result<Applied, StoreError> {
    match op {
        Op::Event(ev) => apply_event(conn, head, bookings, ev),
        Op::Append(e) => {
            let booking = booking_for(bookings, e.room.as_deref());
            let seq = logbook::insert(conn, head, e, booking)?;
            Ok(Applied {
                seqs: vec![seq],
                emit: Vec::new(),
            })
        }
        Op::Maintenance(m) => maintenance::apply(conn, head, m, |room| {
            booking_for(bookings, room).map(str::to_owned)
        }),
        Op::Register(seed) => archive::register(
            conn,
            head,
            seed,
            booking_for(bookings, Some(seed.room.as_str())),
        ),
        Op::SetFields {
            device,
            fields,
            actor,
            at,
        } => archive::set_fields(conn, head, device, fields, actor, *at),
        Op::Counters {
            device,
            at,
            updates,
        } => archive::apply_counters(conn, device, *at, updates),
        Op::Booking {
            booking,
            change,
            actor,
            at,
        } => bookings::apply_booking(conn, head, booking, *change, actor, *at),
        Op::FeedBookings {
            feed,
            bookings: list,
            window,
            at,
        } => bookings::apply_feed(conn, head, feed, list, *window, *at),
        Op::Verdict { verdict, extra } => bookings::apply_verdict(conn, head, verdict, extra),
        Op::JobDone { job, ran, outcome } => bookings::apply_job_done(conn, job, *ran, outcome),
        Op::Alert(a) => super::alerts::apply_alert(conn, a),
        Op::Window(w) => super::alerts::apply_window(conn, w),
        Op::Delivery(d) => super::notify::apply_delivery(conn, d),
        Op::SinkCursor { sink, seq, at } => super::notify::advance(conn, sink, *seq, *at),
        Op::Flush => Ok(Applied::default()),
    }
}

fn apply_event(
    conn: &Connection,
    head: &mut Head,
    bookings: &BTreeMap<String, String>,
    ev: &Event,
) -> Result<Applied, StoreError> {
    let booking = booking_for(bookings, ev.kind.room().map(RoomId::as_str));
    if let EventKind::IdentityReported {
        device,
        room,
        identity,
    } = &ev.kind
    {
        return archive::apply_identity(conn, head, ev.at, device, room, identity, booking);
    }
    let mut entry = entry_for_event(ev);
    entry.booking = booking.map(str::to_owned);
    if let EventKind::FaultRaised { fault, .. } = &ev.kind {
        // The class is fixed when the fault is raised, while the booking context is known.
        let class = fault_class(fault.severity, None, entry.booking.is_some());
        if let serde_json::Value::Object(m) = &mut entry.data {
            m.insert("class".into(), class.as_str().into());
        }
    }
    let seq = logbook::insert(conn, head, &entry, None)?;
    Ok(Applied {
        seqs: vec![seq],
        emit: Vec::new(),
    })
}

/// The logbook entry for a typed event: kind = the event's stable name, message = its one-line
/// description, data = the event's fields. Pure.
pub fn entry_for_event(ev: &Event) -> NewEntry {
    let actor = match &ev.kind {
        EventKind::FaultAcknowledged { by, .. } => Actor::person(by.clone()),
        EventKind::MaintenanceRecorded { by, .. } => Actor::person(by.clone()),
        _ => Actor::System,
    };
    let mut data = serde_json::to_value(&ev.kind).unwrap_or(serde_json::Value::Null);
    if let serde_json::Value::Object(m) = &mut data {
        // The kind column already says which event it is.
        m.remove("event");
    }
    NewEntry {
        at: ev.at,
        kind: ev.kind.name().to_owned(),
        room: ev.kind.room().map(|r| r.to_string()),
        device: ev.kind.device().map(|d| d.to_string()),
        booking: None,
        actor,
        message: ev.kind.describe(),
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at() -> chrono::DateTime<chrono::Utc> {
        chrono::Utc.with_ymd_and_hms(2026, 11, 2, 8, 0, 0).unwrap()
    }

    #[test]
    fn migrations_are_idempotent_and_set_the_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        drop(Store::open(&path, &StoreOptions::default()).unwrap());
        let s = Store::open(&path, &StoreOptions::default()).unwrap();
        let v: u32 = s
            .connection()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, schema_version());
        let mode: String = s
            .connection()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = s
            .connection()
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2, "synchronous=FULL");
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let s = Store::open(&path, &StoreOptions::default()).unwrap();
        s.connection()
            .pragma_update(None, "user_version", schema_version() + 1)
            .unwrap();
        drop(s);
        let e = Store::open(&path, &StoreOptions::default()).err().unwrap();
        assert!(matches!(e, StoreError::TooNew { .. }), "{e}");
        let e = open_reader(&path).err().unwrap();
        assert!(matches!(e, StoreError::TooNew { .. }), "{e}");
    }

    #[test]
    fn the_logbook_refuses_update_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("r.db"), &StoreOptions::default()).unwrap();
        s.apply(&[Op::Append(NewEntry::new(at(), "note", Actor::System, "x"))])
            .unwrap();
        let e = s
            .connection()
            .execute("UPDATE logbook SET message = 'y'", [])
            .unwrap_err();
        assert!(e.to_string().contains("append-only"), "{e}");
        let e = s
            .connection()
            .execute("DELETE FROM logbook", [])
            .unwrap_err();
        assert!(e.to_string().contains("append-only"), "{e}");
    }

    #[test]
    fn a_bad_op_fails_alone_and_the_batch_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("r.db"), &StoreOptions::default()).unwrap();
        let bad = Maintenance {
            device: DeviceId::new("proj-1"),
            room: None,
            at: at(),
            by: String::new(),
            action: crate::records::MaintenanceAction::FilterCleaned,
            note: String::new(),
        };
        let res = s
            .apply(&[
                Op::Append(NewEntry::new(at(), "note", Actor::System, "a")),
                Op::Maintenance(bad),
                Op::Append(NewEntry::new(at(), "note", Actor::System, "b")),
            ])
            .unwrap();
        assert_eq!(res[0].as_ref().unwrap().seqs, vec![1]);
        assert!(
            matches!(res[1], Err(StoreError::Invalid(_))),
            "{:?}",
            res[1]
        );
        assert_eq!(res[2].as_ref().unwrap().seqs, vec![2]);
        assert!(logbook::verify(s.connection()).unwrap().ok());
    }

    #[test]
    fn bookings_stamp_room_entries() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("r.db"), &StoreOptions::default()).unwrap();
        let ev = |kind| Op::Event(Arc::new(Event { at: at(), kind }));
        let note =
            |room: &str| Op::Append(NewEntry::new(at(), "note", Actor::System, "n").room(room));
        let r301 = RoomId::new("r-301");
        s.apply(&[
            note("r-301"),
            ev(EventKind::BookingStarted {
                room: r301.clone(),
                booking: "bk-7".into(),
            }),
            note("r-301"),
        ])
        .unwrap();
        s.apply(&[
            note("r-301"),
            note("r-302"),
            ev(EventKind::BookingEnded {
                room: r301.clone(),
                booking: "bk-7".into(),
            }),
            note("r-301"),
        ])
        .unwrap();
        let b = |seq| logbook::get(s.connection(), seq).unwrap().unwrap().booking;
        assert_eq!(b(1), None, "before the booking");
        assert_eq!(b(2).as_deref(), Some("bk-7"), "the start itself");
        assert_eq!(b(3).as_deref(), Some("bk-7"));
        assert_eq!(b(4).as_deref(), Some("bk-7"), "across batches");
        assert_eq!(b(5), None, "another room");
        assert_eq!(b(6).as_deref(), Some("bk-7"), "the end itself");
        assert_eq!(b(7), None, "after the end");
    }
}
