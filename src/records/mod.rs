//! Records: the equipment archive and the maintenance logbook, kept in one SQLite file.
//!
//! Owns the store (open, pragmas, migrations, integrity check), the single writer task that
//! turns events and requests into hash-chained logbook entries in batched transactions, the
//! equipment archive with its counters, maintenance entries, streamed exports, the monthly
//! report and the `logbook` / `report` commands.
//!
//! Must not: be written from more than one task in a daemon (everything goes through the
//! writer's channel), update or delete a logbook entry (triggers in the schema refuse it), or
//! read the wall clock (times come from events, requests or [`crate::clock::Clock`]).
//!
//! Readers (export, verify, report, the API) open their own read-only connections: WAL lets
//! them read while the writer writes.

pub mod alerts;
pub mod archive;
pub mod bookings;
pub mod cli;
pub mod export;
pub mod logbook;
pub mod maintenance;
pub mod notify;
pub mod report;
pub mod store;
pub mod writer;

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::ErrorCode;
use serde::{Deserialize, Serialize};

pub use archive::{ArchiveFields, CounterUpdate, EquipmentRecord, EquipmentSeed};
pub use logbook::{Entry, NewEntry, VerifyReport};
pub use maintenance::{Maintenance, MaintenanceAction};
pub use store::{Store, StoreOptions};
pub use writer::{LogbookHandle, StoreStatus, WriterConfig, WriterTask};

/// What went wrong with the store. The first five are failures of the store itself (the disk,
/// the file): the writer keeps the batch and retries. The others concern one request only.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    #[error("logbook store is full (disk full or size limit reached): {0}")]
    Full(String),
    #[error("logbook store is read-only: {0}")]
    ReadOnly(String),
    #[error("logbook store i/o error: {0}")]
    Io(String),
    #[error("logbook store is corrupt: {0}")]
    Corrupt(String),
    #[error("logbook store is locked by another process: {0}")]
    Busy(String),
    #[error("logbook store schema version {found} is newer than this avwarden knows ({known})")]
    TooNew { found: u32, known: u32 },
    #[error("no logbook store at {0}")]
    Missing(String),
    #[error("logbook store: {0}")]
    Sql(String),
    #[error("invalid logbook request: {0}")]
    Invalid(String),
    #[error(
        "logbook store unavailable ({reason}): {pending} entries already waiting, request refused"
    )]
    Unavailable { reason: String, pending: u64 },
    #[error("logbook writer has stopped")]
    Stopped,
}

impl StoreError {
    /// Classify an SQLite error: disk full, read-only, I/O and corruption are failures of the
    /// store, everything else a failure of one statement.
    pub fn from_sqlite(e: rusqlite::Error) -> Self {
        let text = e.to_string();
        match e.sqlite_error_code() {
            Some(ErrorCode::DiskFull) => StoreError::Full(text),
            Some(ErrorCode::ReadOnly) => StoreError::ReadOnly(text),
            Some(ErrorCode::SystemIoFailure)
            | Some(ErrorCode::CannotOpen)
            | Some(ErrorCode::FileLockingProtocolFailed)
            | Some(ErrorCode::PermissionDenied) => StoreError::Io(text),
            Some(ErrorCode::DatabaseCorrupt) | Some(ErrorCode::NotADatabase) => {
                StoreError::Corrupt(text)
            }
            Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked) => {
                StoreError::Busy(text)
            }
            _ => StoreError::Sql(text),
        }
    }

    /// A failure of the store itself: the batch is kept and retried, the daemon keeps running.
    pub fn is_store_failure(&self) -> bool {
        matches!(
            self,
            StoreError::Full(_)
                | StoreError::ReadOnly(_)
                | StoreError::Io(_)
                | StoreError::Corrupt(_)
                | StoreError::Busy(_)
                | StoreError::Missing(_)
        )
    }

    /// After these the connection is reopened before the next attempt (a file system remounted
    /// read-write again, a replaced disk).
    pub fn needs_reopen(&self) -> bool {
        matches!(
            self,
            StoreError::ReadOnly(_) | StoreError::Io(_) | StoreError::Missing(_)
        )
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::from_sqlite(e)
    }
}

/// Who caused an entry: the daemon itself, or a named person (technician, project manager).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", from = "String")]
pub enum Actor {
    System,
    Person(String),
}

impl Actor {
    pub fn person(name: impl Into<String>) -> Self {
        Actor::Person(name.into())
    }

    /// Parse the stored form: `system` or `person:<name>`. Anything else is kept as a person's
    /// name so nothing stored is ever lost in the round trip.
    pub fn parse(s: &str) -> Self {
        match s {
            "system" => Actor::System,
            _ => Actor::Person(s.strip_prefix("person:").unwrap_or(s).to_owned()),
        }
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::System => f.write_str("system"),
            Actor::Person(name) => write!(f, "person:{name}"),
        }
    }
}

impl From<Actor> for String {
    fn from(a: Actor) -> String {
        a.to_string()
    }
}

impl From<String> for Actor {
    fn from(s: String) -> Actor {
        Actor::parse(&s)
    }
}

/// Stored instants are microseconds since the Unix epoch, UTC: exact, sortable, and what the
/// hash covers.
pub fn to_micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

pub fn from_micros(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// RFC 3339 with microseconds and `Z`, the form every export uses.
pub fn format_time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actor_round_trips() {
        for a in [
            Actor::System,
            Actor::person("李伟"),
            Actor::person("system"),
        ] {
            assert_eq!(Actor::parse(&a.to_string()), a);
        }
    }

    #[test]
    fn sqlite_errors_are_classified() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let e = conn
            .execute("INSERT INTO nowhere VALUES (1)", [])
            .unwrap_err();
        let e = StoreError::from_sqlite(e);
        assert!(matches!(e, StoreError::Sql(_)), "{e:?}");
        assert!(!e.is_store_failure());
    }
}
