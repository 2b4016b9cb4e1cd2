//! Logbook exports for technicians: CSV (RFC 4180: CRLF, quotes doubled, UTF-8, header row,
//! optional BOM for Excel) and JSON Lines, filtered by time range, room, device and kind.
//!
//! Owns the column set and the streaming: one row is read, written and forgotten at a time, so
//! memory stays constant whatever the size of the logbook. Must not write to the store (it
//! runs on a read-only connection, beside the writer) or hold rows in memory.
//!
//! Columns, in order: `seq, at, kind, room, device, booking, actor, message, data, prev_hash,
//! hash`. `at` is RFC 3339 UTC with microseconds; an absent room/device/booking is an empty
//! field (CSV) or `null` (JSON); `data` is the stored canonical JSON text (CSV) or that JSON
//! value (JSON Lines); hashes are lowercase hex, so an export carries what is needed to check
//! the chain.

use std::io::{self, BufWriter, Write};

use chrono::{DateTime, Utc};
use rusqlite::{Connection, ToSql};

use super::logbook::Entry;
use super::{format_time, to_micros, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Jsonl,
}

/// Which entries to export. Empty lists mean "all".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// Inclusive.
    pub from: Option<DateTime<Utc>>,
    /// Exclusive.
    pub to: Option<DateTime<Utc>>,
    pub rooms: Vec<String>,
    pub devices: Vec<String>,
    pub kinds: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write the export: {0}")]
    Write(#[from] io::Error),
}

impl From<rusqlite::Error> for ExportError {
    fn from(e: rusqlite::Error) -> Self {
        ExportError::Store(StoreError::from_sqlite(e))
    }
}

impl From<csv::Error> for ExportError {
    fn from(e: csv::Error) -> Self {
        match e.into_kind() {
            csv::ErrorKind::Io(e) => ExportError::Write(e),
            other => ExportError::Write(io::Error::other(format!("{other:?}"))),
        }
    }
}

pub const HEADER: [&str; 11] = [
    "seq",
    "at",
    "kind",
    "room",
    "device",
    "booking",
    "actor",
    "message",
    "data",
    "prev_hash",
    "hash",
];

/// The UTF-8 byte order mark Excel needs to read a CSV file as UTF-8.
pub const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Stream the entries that pass `filter`, in sequence (chain) order. Returns the row count.
pub fn export(
    conn: &Connection,
    filter: &Filter,
    format: Format,
    bom: bool,
    out: &mut dyn Write,
) -> Result<u64, ExportError> {
    // Sorting (if the planner chooses to) spills to a temporary file instead of memory.
    conn.pragma_update(None, "temp_store", "FILE")?;
    let (sql, params) = query(filter);
    let mut stmt = conn.prepare(&sql)?;
    let params: Vec<&dyn ToSql> = params.iter().map(|p| p.as_ref()).collect();
    let mut rows = stmt.query(params.as_slice())?;
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    let mut n = 0u64;
    match format {
        Format::Csv => {
            if bom {
                out.write_all(BOM)?;
            }
            let mut w = csv::WriterBuilder::new()
                .terminator(csv::Terminator::CRLF)
                .from_writer(&mut out);
            w.write_record(HEADER)?;
            while let Some(row) = rows.next()? {
                let e = Entry::from_row(row)?;
                let seq = e.seq.to_string();
                let at = format_time(e.at());
                let prev = hex::encode(&e.prev_hash);
                let hash = hex::encode(&e.hash);
                w.write_record([
                    seq.as_str(),
                    &at,
                    &e.kind,
                    e.room.as_deref().unwrap_or(""),
                    e.device.as_deref().unwrap_or(""),
                    e.booking.as_deref().unwrap_or(""),
                    &e.actor,
                    &e.message,
                    &e.data,
                    &prev,
                    &hash,
                ])?;
                n += 1;
            }
            w.flush()?;
        }
        Format::Jsonl => {
            while let Some(row) = rows.next()? {
                let e = Entry::from_row(row)?;
                write_json_line(&mut out, &e)?;
                n += 1;
            }
        }
    }
    out.flush()?;
    Ok(n)
}

/// One JSON object per line, written field by field. `data` is the stored canonical JSON text
/// itself (checked to be JSON first; text that is not — only possible after tampering — is
/// exported as a string rather than dropped).
fn write_json_line(out: &mut impl Write, e: &Entry) -> io::Result<()> {
    fn field(out: &mut impl Write, name: &str, v: &impl serde::Serialize) -> io::Result<()> {
        write!(out, ",\"{name}\":")?;
        serde_json::to_writer(&mut *out, v).map_err(io::Error::from)
    }
    write!(out, "{{\"seq\":{}", e.seq)?;
    field(out, "at", &format_time(e.at()))?;
    field(out, "kind", &e.kind)?;
    field(out, "room", &e.room)?;
    field(out, "device", &e.device)?;
    field(out, "booking", &e.booking)?;
    field(out, "actor", &e.actor)?;
    field(out, "message", &e.message)?;
    if serde_json::from_str::<serde::de::IgnoredAny>(&e.data).is_ok() {
        out.write_all(b",\"data\":")?;
        out.write_all(e.data.as_bytes())?;
    } else {
        field(out, "data", &e.data)?;
    }
    field(out, "prev_hash", &hex::encode(&e.prev_hash))?;
    field(out, "hash", &hex::encode(&e.hash))?;
    out.write_all(b"}\n")
}

fn query(f: &Filter) -> (String, Vec<Box<dyn ToSql>>) {
    let (filter, params) = where_clause(f);
    (
        format!(
            "SELECT {} FROM logbook{filter} ORDER BY seq",
            Entry::COLUMNS
        ),
        params,
    )
}

/// The `WHERE` clause of `f` (empty when it selects everything) and its numbered parameters.
fn where_clause(f: &Filter) -> (String, Vec<Box<dyn ToSql>>) {
    let mut clauses: Vec<String> = Vec::new();
    let mut params: Vec<Box<dyn ToSql>> = Vec::new();
    if let Some(from) = f.from {
        params.push(Box::new(to_micros(from)));
        clauses.push(format!("at_us >= ?{}", params.len()));
    }
    if let Some(to) = f.to {
        params.push(Box::new(to_micros(to)));
        clauses.push(format!("at_us < ?{}", params.len()));
    }
    for (col, values) in [
        ("room", &f.rooms),
        ("device", &f.devices),
        ("kind", &f.kinds),
    ] {
        if values.is_empty() {
            continue;
        }
        let mut marks = Vec::new();
        for v in values {
            params.push(Box::new(v.clone()));
            marks.push(format!("?{}", params.len()));
        }
        clauses.push(format!("{col} IN ({})", marks.join(", ")));
    }
    let filter = if clauses.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", clauses.join(" AND "))
    };
    (filter, params)
}

/// The newest `limit` entries that pass `f`, newest first (the API's logbook view; the export
/// streams oldest first).
pub fn newest(
    conn: &rusqlite::Connection,
    f: &Filter,
    limit: usize,
) -> Result<Vec<Entry>, super::StoreError> {
    let (filter, mut params) = where_clause(f);
    params.push(Box::new(i64::try_from(limit).unwrap_or(i64::MAX)));
    let sql = format!(
        "SELECT {} FROM logbook{filter} ORDER BY seq DESC LIMIT ?{}",
        Entry::COLUMNS,
        params.len()
    );
    let mut stmt = conn.prepare(&sql)?;
    let params: Vec<&dyn ToSql> = params.iter().map(|p| p.as_ref()).collect();
    let rows = stmt.query_map(params.as_slice(), Entry::from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_numbers_parameters_in_order() {
        let f = Filter {
            from: Some(DateTime::from_timestamp(0, 0).unwrap()),
            to: None,
            rooms: vec!["a".into(), "b".into()],
            devices: vec![],
            kinds: vec!["k".into()],
        };
        let (sql, params) = query(&f);
        assert!(
            sql.contains("WHERE at_us >= ?1 AND room IN (?2, ?3) AND kind IN (?4)"),
            "{sql}"
        );
        assert_eq!(params.len(), 4);
    }
}
