//! The playbook's alerts and maintenance windows in the records file (schema 3), so both
//! survive a restart: the writer applies the ops here, the playbook reads back through
//! [`load_alerts`] and [`load_windows`], the monthly report through [`alerts_between`].
//!
//! Stores what the playbook hands it as rows with a JSON body; must not interpret an alert
//! (the playbook owns its meaning) nor be written from anywhere but the writer task.

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection};

use super::store::Applied;
use super::{from_micros, to_micros, StoreError};

/// One alert as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertRecord {
    pub id: u64,
    pub state: String,
    pub room: Option<String>,
    pub subject: String,
    pub fault: String,
    pub class: String,
    pub raised_at: DateTime<Utc>,
    pub acknowledged_at: Option<DateTime<Utc>>,
    pub acknowledged_by: Option<String>,
    pub resolved_at: Option<DateTime<Utc>>,
    /// The playbook's own form of the alert.
    pub body: String,
    pub updated_at: DateTime<Utc>,
}

/// A maintenance window as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowRecord {
    pub id: u64,
    pub until: DateTime<Utc>,
    pub removed: bool,
    pub body: String,
}

fn id_sql(id: u64) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
}

pub fn apply_alert(conn: &Connection, a: &AlertRecord) -> Result<Applied, StoreError> {
    conn.execute(
        "INSERT INTO alerts (id, state, room, subject, fault, class, raised_us, acknowledged_us,
                             acknowledged_by, resolved_us, body, updated_us)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
         ON CONFLICT (id) DO UPDATE SET state = excluded.state, room = excluded.room,
             class = excluded.class, acknowledged_us = excluded.acknowledged_us,
             acknowledged_by = excluded.acknowledged_by, resolved_us = excluded.resolved_us,
             body = excluded.body, updated_us = excluded.updated_us",
        params![
            id_sql(a.id),
            a.state,
            a.room,
            a.subject,
            a.fault,
            a.class,
            to_micros(a.raised_at),
            a.acknowledged_at.map(to_micros),
            a.acknowledged_by,
            a.resolved_at.map(to_micros),
            a.body,
            to_micros(a.updated_at),
        ],
    )?;
    Ok(Applied::default())
}

pub fn apply_window(conn: &Connection, w: &WindowRecord) -> Result<Applied, StoreError> {
    conn.execute(
        "INSERT INTO maintenance_windows (id, until_us, removed, body) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (id) DO UPDATE SET until_us = excluded.until_us,
             removed = excluded.removed, body = excluded.body",
        params![id_sql(w.id), to_micros(w.until), w.removed, w.body],
    )?;
    Ok(Applied::default())
}

fn alert_rows(conn: &Connection, sql: &str, args: &[i64]) -> Result<Vec<AlertRecord>, StoreError> {
    let mut stmt = conn.prepare(sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args.iter()), |r| {
        Ok(AlertRecord {
            id: u64::try_from(r.get::<_, i64>(0)?).unwrap_or_default(),
            state: r.get(1)?,
            room: r.get(2)?,
            subject: r.get(3)?,
            fault: r.get(4)?,
            class: r.get(5)?,
            raised_at: from_micros(r.get(6)?),
            acknowledged_at: r.get::<_, Option<i64>>(7)?.map(from_micros),
            acknowledged_by: r.get(8)?,
            resolved_at: r.get::<_, Option<i64>>(9)?.map(from_micros),
            body: r.get(10)?,
            updated_at: from_micros(r.get(11)?),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

const COLUMNS: &str = "id, state, room, subject, fault, class, raised_us, acknowledged_us, \
                       acknowledged_by, resolved_us, body, updated_us";

/// Every open alert, and the ones resolved after `since` (flapping needs the recent ones).
pub fn load_alerts(
    conn: &Connection,
    since: DateTime<Utc>,
) -> Result<Vec<AlertRecord>, StoreError> {
    alert_rows(
        conn,
        &format!(
            "SELECT {COLUMNS} FROM alerts WHERE state != 'resolved' OR resolved_us > ?1 ORDER BY id"
        ),
        &[to_micros(since)],
    )
}

/// Alerts raised in `[from, to)`, for the monthly report.
pub fn alerts_between(
    conn: &Connection,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<AlertRecord>, StoreError> {
    alert_rows(
        conn,
        &format!(
            "SELECT {COLUMNS} FROM alerts WHERE raised_us >= ?1 AND raised_us < ?2 ORDER BY id"
        ),
        &[to_micros(from), to_micros(to)],
    )
}

/// The windows not removed that have not ended by `now`.
pub fn load_windows(
    conn: &Connection,
    now: DateTime<Utc>,
) -> Result<Vec<WindowRecord>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT id, until_us, removed, body FROM maintenance_windows
         WHERE removed = 0 AND until_us > ?1 ORDER BY id",
    )?;
    let rows = stmt.query_map([to_micros(now)], |r| {
        Ok(WindowRecord {
            id: u64::try_from(r.get::<_, i64>(0)?).unwrap_or_default(),
            until: from_micros(r.get(1)?),
            removed: r.get(2)?,
            body: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn rec(id: u64, state: &str, raised: DateTime<Utc>) -> AlertRecord {
        AlertRecord {
            id,
            state: state.into(),
            room: Some("r101".into()),
            subject: "r101-mics".into(),
            fault: "battery_critical".into(),
            class: "major".into(),
            raised_at: raised,
            acknowledged_at: None,
            acknowledged_by: None,
            resolved_at: None,
            body: format!("{{\"id\":{id}}}"),
            updated_at: raised,
        }
    }

    #[test]
    fn alerts_and_windows_round_trip_and_filter() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        // The store migrates the file; the ops then run on a plain connection, as the writer's.
        drop(super::super::store::Store::open(&path, &Default::default()).unwrap());
        let conn = Connection::open(&path).unwrap();
        let t = Utc.with_ymd_and_hms(2026, 11, 3, 9, 0, 0).unwrap();
        apply_alert(&conn, &rec(1, "raised", t)).unwrap();
        let mut done = rec(2, "resolved", t);
        done.resolved_at = Some(t + chrono::Duration::minutes(5));
        apply_alert(&conn, &done).unwrap();
        let mut old = rec(3, "resolved", t - chrono::Duration::days(3));
        old.resolved_at = Some(t - chrono::Duration::days(3));
        apply_alert(&conn, &old).unwrap();
        // An update replaces the row.
        let mut acked = rec(1, "acknowledged", t);
        acked.acknowledged_at = Some(t + chrono::Duration::minutes(2));
        acked.acknowledged_by = Some("li".into());
        apply_alert(&conn, &acked).unwrap();

        let loaded = load_alerts(&conn, t - chrono::Duration::hours(1)).unwrap();
        assert_eq!(loaded.iter().map(|a| a.id).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(loaded[0], acked);
        let month = alerts_between(
            &conn,
            t - chrono::Duration::days(1),
            t + chrono::Duration::days(1),
        )
        .unwrap();
        assert_eq!(month.len(), 2);

        let w = WindowRecord {
            id: 1,
            until: t + chrono::Duration::hours(1),
            removed: false,
            body: "{}".into(),
        };
        apply_window(&conn, &w).unwrap();
        assert_eq!(load_windows(&conn, t).unwrap(), std::slice::from_ref(&w));
        assert!(load_windows(&conn, t + chrono::Duration::hours(1))
            .unwrap()
            .is_empty());
        apply_window(&conn, &WindowRecord { removed: true, ..w }).unwrap();
        assert!(load_windows(&conn, t).unwrap().is_empty());
    }
}
