//! The alert sinks' part of the records file (schema 4): each sink's cursor into the logbook
//! and the delivery log, one row per attempt.
//!
//! The writer applies [`apply_delivery`] and [`advance`]; the sinks and the API read through
//! the other functions on a read-only connection. Must not decide whether an attempt
//! succeeded (the sink does), store a secret (callers hand over error texts already free of
//! them), nor move a cursor backwards.

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::logbook::Entry;
use super::store::Applied;
use super::{from_micros, to_micros, StoreError};

/// The logbook kinds the alert sinks deliver.
pub const ALERT_KINDS: [&str; 2] = ["alert_changed", "alert_notified"];

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The receiver took it: the cursor moves past the entry.
    Delivered,
    /// A failure worth another try (connection refused, timeout, 5xx, 408, 429, SMTP 4xx):
    /// the cursor stays and the same entry is tried again after a backoff.
    Retry,
    /// The receiver refused it for good (4xx, SMTP 5xx): recorded, and the cursor moves on so
    /// one bad entry cannot block every later alert.
    Rejected,
    /// Nothing to send for this sink (no recipient has an address): recorded so a technician
    /// sees why nobody was mailed, and the cursor moves on.
    Skipped,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Retry => "retry",
            Outcome::Rejected => "rejected",
            Outcome::Skipped => "skipped",
        }
    }

    fn parse(s: &str) -> Outcome {
        match s {
            "delivered" => Outcome::Delivered,
            "rejected" => Outcome::Rejected,
            "skipped" => Outcome::Skipped,
            _ => Outcome::Retry,
        }
    }

    /// Whether the entry is done with for this sink (the cursor moves past it).
    pub fn settles(self) -> bool {
        self != Outcome::Retry
    }
}

/// One row of the delivery log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Delivery {
    pub sink: String,
    /// The logbook entry.
    pub seq: u64,
    pub attempt: u32,
    pub at: DateTime<Utc>,
    pub outcome: Outcome,
    /// HTTP status or SMTP reply code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn seq_sql(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// Log an attempt; when it settles the entry, move the sink's cursor past it in the same
/// transaction, so a crash cannot leave a delivered entry behind the cursor.
pub fn apply_delivery(conn: &Connection, d: &Delivery) -> Result<Applied, StoreError> {
    conn.execute(
        "INSERT INTO deliveries (sink, seq, attempt, at_us, outcome, status, reply, error)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            d.sink,
            seq_sql(d.seq),
            d.attempt,
            to_micros(d.at),
            d.outcome.as_str(),
            d.status,
            d.reply,
            d.error,
        ],
    )?;
    if d.outcome.settles() {
        advance(conn, &d.sink, d.seq, d.at)?;
    }
    Ok(Applied::default())
}

/// Move `sink`'s cursor to `seq`, never backwards.
pub fn advance(
    conn: &Connection,
    sink: &str,
    seq: u64,
    at: DateTime<Utc>,
) -> Result<Applied, StoreError> {
    conn.execute(
        "INSERT INTO sink_cursors (sink, seq, updated_us) VALUES (?1, ?2, ?3)
         ON CONFLICT (sink) DO UPDATE SET seq = max(seq, excluded.seq),
             updated_us = excluded.updated_us",
        params![sink, seq_sql(seq), to_micros(at)],
    )?;
    Ok(Applied::default())
}

/// The sink's cursor, `None` for a sink never started on this file.
pub fn cursor(conn: &Connection, sink: &str) -> Result<Option<u64>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT seq FROM sink_cursors WHERE sink = ?1",
            [sink],
            |r| r.get::<_, i64>(0),
        )
        .optional()?
        .map(|s| u64::try_from(s).unwrap_or(0)))
}

/// Up to `limit` alert entries after `after`, in sequence order.
pub fn alert_entries_after(
    conn: &Connection,
    after: u64,
    limit: usize,
) -> Result<Vec<Entry>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {} FROM logbook WHERE seq > ?1 AND kind IN ('alert_changed', 'alert_notified')
         ORDER BY seq LIMIT ?2",
        Entry::COLUMNS
    ))?;
    let rows = stmt.query_map(
        params![seq_sql(after), i64::try_from(limit).unwrap_or(i64::MAX)],
        Entry::from_row,
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Alert entries after `after`: a sink's backlog.
pub fn backlog(conn: &Connection, after: u64) -> Result<u64, StoreError> {
    let n: i64 = conn.query_row(
        "SELECT count(*) FROM logbook WHERE seq > ?1
         AND kind IN ('alert_changed', 'alert_notified')",
        [seq_sql(after)],
        |r| r.get(0),
    )?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// The newest entry's sequence number (0 for an empty logbook): where a new sink starts.
pub fn head_seq(conn: &Connection) -> Result<u64, StoreError> {
    let n: Option<i64> = conn.query_row("SELECT max(seq) FROM logbook", [], |r| r.get(0))?;
    Ok(n.map_or(0, |n| u64::try_from(n).unwrap_or(0)))
}

/// Attempts already logged for one entry by one sink (a restart continues the count).
pub fn attempts(conn: &Connection, sink: &str, seq: u64) -> Result<u32, StoreError> {
    let n: Option<i64> = conn.query_row(
        "SELECT max(attempt) FROM deliveries WHERE sink = ?1 AND seq = ?2",
        params![sink, seq_sql(seq)],
        |r| r.get(0),
    )?;
    Ok(n.map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX)))
}

/// What the alert was at an entry: its subject (from the alert's row), its state as of that
/// entry (the last raise, acknowledgement or resolution logged up to it) and the playbook's
/// JSON body of the alert as it is now (for deadlines).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AlertAt {
    pub subject: Option<String>,
    /// The taxonomy's kind (an `alert_notified` entry does not name it).
    pub fault: Option<String>,
    pub state: Option<String>,
    pub body: Option<String>,
}

pub fn alert_at(conn: &Connection, alert: u64, seq: u64) -> Result<AlertAt, StoreError> {
    let row: Option<(String, String, String)> = conn
        .query_row(
            "SELECT subject, fault, body FROM alerts WHERE id = ?1",
            [seq_sql(alert)],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let state: Option<String> = conn
        .query_row(
            "SELECT json_extract(data, '$.what') FROM logbook
             WHERE kind = 'alert_changed' AND json_extract(data, '$.alert') = ?1 AND seq <= ?2
               AND json_extract(data, '$.what') IN ('raised', 'acknowledged', 'resolved')
             ORDER BY seq DESC LIMIT 1",
            params![seq_sql(alert), seq_sql(seq)],
            |r| r.get(0),
        )
        .optional()?;
    let (subject, fault, body) = match row {
        Some((s, f, b)) => (Some(s), Some(f), Some(b)),
        None => (None, None, None),
    };
    Ok(AlertAt {
        subject,
        fault,
        state,
        body,
    })
}

/// The delivery log, newest first, of one sink or all.
pub fn deliveries(
    conn: &Connection,
    sink: Option<&str>,
    limit: usize,
) -> Result<Vec<Delivery>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT sink, seq, attempt, at_us, outcome, status, reply, error FROM deliveries
         WHERE ?1 IS NULL OR sink = ?1 ORDER BY id DESC LIMIT ?2",
    )?;
    let rows = stmt.query_map(
        params![sink, i64::try_from(limit).unwrap_or(i64::MAX)],
        |r| {
            Ok(Delivery {
                sink: r.get(0)?,
                seq: u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
                attempt: r.get(2)?,
                at: from_micros(r.get(3)?),
                outcome: Outcome::parse(&r.get::<_, String>(4)?),
                status: r.get(5)?,
                reply: r.get(6)?,
                error: r.get(7)?,
            })
        },
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::logbook::NewEntry;
    use crate::records::store::{Op, Store, StoreOptions};
    use crate::records::Actor;
    use chrono::TimeZone;

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 2, 8, 0, 0).unwrap()
    }

    fn attempt(seq: u64, attempt: u32, outcome: Outcome) -> Op {
        Op::Delivery(Box::new(Delivery {
            sink: "webhook:ops".into(),
            seq,
            attempt,
            at: at(),
            outcome,
            status: Some(503),
            reply: None,
            error: None,
        }))
    }

    #[test]
    fn the_cursor_moves_only_when_an_attempt_settles_and_never_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("r.db"), &StoreOptions::default()).unwrap();
        let note = |kind: &str, alert: u64| {
            Op::Append(
                NewEntry::new(at(), kind, Actor::System, "x")
                    .data(serde_json::json!({"alert": alert, "what": "raised"})),
            )
        };
        s.apply(&[
            note("alert_changed", 1),
            note("fault_raised", 1),
            note("alert_notified", 1),
        ])
        .unwrap();
        let c = s.connection();
        assert_eq!(cursor(c, "webhook:ops").unwrap(), None);
        let rows: Vec<u64> = alert_entries_after(c, 0, 10)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(rows, [1, 3], "only alert kinds, in order");
        assert_eq!(backlog(c, 1).unwrap(), 1);
        s.apply(&[attempt(1, 1, Outcome::Retry)]).unwrap();
        assert_eq!(cursor(s.connection(), "webhook:ops").unwrap(), None);
        s.apply(&[attempt(1, 2, Outcome::Delivered)]).unwrap();
        assert_eq!(cursor(s.connection(), "webhook:ops").unwrap(), Some(1));
        assert_eq!(attempts(s.connection(), "webhook:ops", 1).unwrap(), 2);
        s.apply(&[Op::SinkCursor {
            sink: "webhook:ops".into(),
            seq: 0,
            at: at(),
        }])
        .unwrap();
        assert_eq!(cursor(s.connection(), "webhook:ops").unwrap(), Some(1));
        let log = deliveries(s.connection(), Some("webhook:ops"), 10).unwrap();
        assert_eq!(log.len(), 2);
        assert_eq!(log[0].outcome, Outcome::Delivered, "newest first");
        assert!(deliveries(s.connection(), Some("mail"), 10)
            .unwrap()
            .is_empty());
        let a = alert_at(s.connection(), 1, 3).unwrap();
        assert_eq!(a.state.as_deref(), Some("raised"));
        assert_eq!(a.subject, None, "no alert row in this file");
    }
}
