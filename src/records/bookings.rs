//! Bookings, self-test verdicts and the jobs the schedule has run, in the records file
//! (schema 2), so all three survive a restart: the writer applies the ops here, the schedule
//! and the API read through [`load_bookings`], [`latest_verdicts`] and [`jobs_done`].
//!
//! Every change is also a logbook entry in the same transaction, so the logbook tells the
//! whole story (a booking made, moved, cancelled; a verdict with its reasons). Must not be
//! written from anywhere but the writer task.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};

use super::logbook::{self, Head, NewEntry};
use super::store::Applied;
use super::{from_micros, to_micros, Actor, StoreError};
use crate::model::{Booking, BookingId, BookingSource, BookingStatus, RoomId, Verdict};

/// What happened to a booking, for its logbook entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BookingChange {
    Created,
    Changed,
    Cancelled,
}

impl BookingChange {
    fn kind(self) -> &'static str {
        match self {
            BookingChange::Created => "booking_created",
            BookingChange::Changed => "booking_changed",
            BookingChange::Cancelled => "booking_cancelled",
        }
    }
}

/// A job of the plan that ran (or was given up): `(booking, kind, planned instant)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DoneJob {
    pub booking: String,
    pub kind: String,
    pub at: DateTime<Utc>,
}

fn source_text(source: &BookingSource) -> String {
    match source {
        BookingSource::Api => "api".to_owned(),
        BookingSource::Feed { feed } => format!("feed:{feed}"),
    }
}

fn status_text(s: BookingStatus) -> &'static str {
    match s {
        BookingStatus::Confirmed => "confirmed",
        BookingStatus::Tentative => "tentative",
        BookingStatus::Cancelled => "cancelled",
    }
}

fn upsert(conn: &Connection, b: &Booking, at: DateTime<Utc>) -> Result<(), StoreError> {
    let body = serde_json::to_string(b).map_err(|e| StoreError::Sql(e.to_string()))?;
    conn.execute(
        "INSERT INTO bookings (id, room, start_us, end_us, status, source, body, updated_us)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (id) DO UPDATE SET room = ?2, start_us = ?3, end_us = ?4, status = ?5,
             source = ?6, body = ?7, updated_us = ?8",
        params![
            b.id.as_str(),
            b.room.as_str(),
            to_micros(b.start),
            to_micros(b.end),
            status_text(b.status),
            source_text(&b.source),
            body,
            to_micros(at),
        ],
    )?;
    Ok(())
}

fn booking_entry(b: &Booking, change: BookingChange, actor: Actor, at: DateTime<Utc>) -> NewEntry {
    let mut e = NewEntry::new(
        at,
        change.kind(),
        actor,
        format!(
            "{} {} in {} from {} to {}",
            match change {
                BookingChange::Created => "booking made:",
                BookingChange::Changed => "booking changed:",
                BookingChange::Cancelled => "booking cancelled:",
            },
            b.title,
            b.room,
            super::format_time(b.start),
            super::format_time(b.end)
        ),
    );
    e.room = Some(b.room.to_string());
    e.data = serde_json::to_value(b).unwrap_or_default();
    e
}

/// Store one booking (made, changed or cancelled through the API) and log it.
pub fn apply_booking(
    conn: &Connection,
    head: &mut Head,
    b: &Booking,
    change: BookingChange,
    actor: &Actor,
    at: DateTime<Utc>,
) -> Result<Applied, StoreError> {
    upsert(conn, b, at)?;
    let mut entry = booking_entry(b, change, actor.clone(), at);
    entry.booking = Some(b.id.to_string());
    let seq = logbook::insert(conn, head, &entry, Some(b.id.as_str()))?;
    Ok(Applied {
        seqs: vec![seq],
        emit: Vec::new(),
    })
}

/// Replace what a feed said of `window` with what it says now: new and changed bookings are
/// stored and logged, bookings of the window the feed no longer lists are marked cancelled (a
/// booking deleted from a calendar is a cancelled meeting), unchanged ones cost nothing, and
/// bookings outside the window (past meetings the poll no longer expands) are left alone.
pub fn apply_feed(
    conn: &Connection,
    head: &mut Head,
    feed: &str,
    bookings: &[Booking],
    window: (DateTime<Utc>, DateTime<Utc>),
    at: DateTime<Utc>,
) -> Result<Applied, StoreError> {
    let source = format!("feed:{feed}");
    let mut stored: BTreeMap<String, Booking> = BTreeMap::new();
    {
        let mut stmt = conn.prepare("SELECT id, body FROM bookings WHERE source = ?1")?;
        let rows = stmt.query_map([&source], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?;
        for row in rows {
            let (id, body) = row?;
            if let Ok(b) = serde_json::from_str::<Booking>(&body) {
                stored.insert(id, b);
            }
        }
    }
    let actor = Actor::System;
    let mut seqs = Vec::new();
    let mut seen = HashSet::new();
    for b in bookings {
        seen.insert(b.id.as_str());
        let change = match stored.get(b.id.as_str()) {
            Some(old) if old == b => continue,
            Some(_) if b.status == BookingStatus::Cancelled => BookingChange::Cancelled,
            Some(_) => BookingChange::Changed,
            None => BookingChange::Created,
        };
        upsert(conn, b, at)?;
        let entry = booking_entry(b, change, actor.clone(), at);
        seqs.push(logbook::insert(conn, head, &entry, Some(b.id.as_str()))?);
    }
    for (id, old) in &stored {
        if seen.contains(id.as_str())
            || old.status == BookingStatus::Cancelled
            || !old.overlaps(window.0, window.1)
        {
            continue;
        }
        let mut gone = old.clone();
        gone.status = BookingStatus::Cancelled;
        upsert(conn, &gone, at)?;
        let entry = booking_entry(&gone, BookingChange::Cancelled, actor.clone(), at);
        seqs.push(logbook::insert(conn, head, &entry, Some(id))?);
    }
    Ok(Applied {
        seqs,
        emit: Vec::new(),
    })
}

/// Store a verdict and write it to the logbook with its reasons.
pub fn apply_verdict(
    conn: &Connection,
    head: &mut Head,
    v: &Verdict,
    extra: &serde_json::Value,
) -> Result<Applied, StoreError> {
    let body = serde_json::to_string(v).map_err(|e| StoreError::Sql(e.to_string()))?;
    conn.execute(
        "INSERT INTO verdicts (room, booking, kind, readiness, finished_us, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            v.room.as_str(),
            v.booking.as_ref().map(BookingId::as_str),
            v.kind.as_str(),
            v.readiness.as_str(),
            to_micros(v.finished_at),
            body,
        ],
    )?;
    let mut e = NewEntry::new(
        v.finished_at,
        "self_test_finished",
        Actor::System,
        format!(
            "self-test ({}) of {}: {}{}",
            v.kind.as_str(),
            v.room,
            v.readiness.as_str(),
            if v.reasons.is_empty() {
                String::new()
            } else {
                format!(
                    " — {}",
                    v.reasons
                        .iter()
                        .map(|r| r.message.as_str())
                        .collect::<Vec<_>>()
                        .join("; ")
                )
            }
        ),
    );
    e.room = Some(v.room.to_string());
    let mut data = serde_json::to_value(v).unwrap_or_default();
    if let (serde_json::Value::Object(m), serde_json::Value::Object(x)) = (&mut data, extra) {
        for (k, val) in x {
            m.insert(k.clone(), val.clone());
        }
    }
    e.data = data;
    let booking = v.booking.as_ref().map(BookingId::as_str);
    let seq = logbook::insert(conn, head, &e, booking)?;
    Ok(Applied {
        seqs: vec![seq],
        emit: Vec::new(),
    })
}

/// Remember that a job ran (idempotent: a job recorded twice stays one row).
pub fn apply_job_done(
    conn: &Connection,
    job: &DoneJob,
    ran: DateTime<Utc>,
    outcome: &str,
) -> Result<Applied, StoreError> {
    conn.execute(
        "INSERT OR IGNORE INTO jobs_done (booking, kind, at_us, ran_us, outcome)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            job.booking,
            job.kind,
            to_micros(job.at),
            to_micros(ran),
            outcome
        ],
    )?;
    Ok(Applied::default())
}

/// Every stored booking whose end is after `since` (cancelled ones included: the board shows
/// them struck through, the planner skips them).
pub fn load_bookings(conn: &Connection, since: DateTime<Utc>) -> Result<Vec<Booking>, StoreError> {
    let mut stmt =
        conn.prepare("SELECT body FROM bookings WHERE end_us > ?1 ORDER BY start_us, id")?;
    let rows = stmt.query_map([to_micros(since)], |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for row in rows {
        let body = row?;
        match serde_json::from_str::<Booking>(&body) {
            Ok(b) => out.push(b),
            Err(e) => tracing::warn!(error = %e, "a stored booking cannot be read; skipped"),
        }
    }
    Ok(out)
}

/// The newest verdict of each booking (and of each room for tests without a booking).
pub fn latest_verdicts(
    conn: &Connection,
    since: DateTime<Utc>,
) -> Result<Vec<Verdict>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT body FROM verdicts v WHERE finished_us > ?1 AND id = (
             SELECT max(id) FROM verdicts w
             WHERE w.room = v.room AND w.booking IS v.booking)
         ORDER BY finished_us",
    )?;
    let rows = stmt.query_map([to_micros(since)], |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for row in rows {
        if let Ok(v) = serde_json::from_str::<Verdict>(&row?) {
            out.push(v);
        }
    }
    Ok(out)
}

/// Verdicts, newest first, optionally of one room or one booking.
pub fn verdicts(
    conn: &Connection,
    room: Option<&RoomId>,
    booking: Option<&BookingId>,
    limit: usize,
) -> Result<Vec<Verdict>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT body FROM verdicts WHERE (?1 IS NULL OR room = ?1) AND (?2 IS NULL OR booking = ?2)
         ORDER BY id DESC LIMIT ?3",
    )?;
    let rows = stmt.query_map(
        params![
            room.map(RoomId::as_str),
            booking.map(BookingId::as_str),
            i64::try_from(limit).unwrap_or(i64::MAX)
        ],
        |r| r.get::<_, String>(0),
    )?;
    let mut out = Vec::new();
    for row in rows {
        if let Ok(v) = serde_json::from_str::<Verdict>(&row?) {
            out.push(v);
        }
    }
    Ok(out)
}

/// The jobs that ran, planned for `since` or later.
pub fn jobs_done(conn: &Connection, since: DateTime<Utc>) -> Result<HashSet<DoneJob>, StoreError> {
    let mut stmt = conn.prepare("SELECT booking, kind, at_us FROM jobs_done WHERE at_us >= ?1")?;
    let rows = stmt.query_map([to_micros(since)], |r| {
        Ok(DoneJob {
            booking: r.get(0)?,
            kind: r.get(1)?,
            at: from_micros(r.get(2)?),
        })
    })?;
    rows.collect::<Result<_, _>>().map_err(StoreError::from)
}

/// One booking by id.
pub fn booking(conn: &Connection, id: &BookingId) -> Result<Option<Booking>, StoreError> {
    let body: Option<String> = conn
        .query_row(
            "SELECT body FROM bookings WHERE id = ?1",
            [id.as_str()],
            |r| r.get(0),
        )
        .optional()?;
    Ok(body.and_then(|b| serde_json::from_str(&b).ok()))
}
