//! The logbook: append-only entries, each holding the SHA-256 hash of the one before, and the
//! walk that verifies the chain.
//!
//! Owns the entry types, the canonical encoding the hash covers, appending one entry to an
//! open transaction, and `verify`. Must not update or delete an entry, or decide *what* is
//! logged (that is the writer's and the archive's business).
//!
//! Hash of entry `n` = SHA-256 over, in order:
//! the 20 bytes `avwarden-logbook-v1\n`, the 32-byte hash of entry `n-1` (32 zero bytes for
//! entry 1), `seq` as u64 big-endian, `at_us` (microseconds since the Unix epoch, UTC) as i64
//! big-endian, then `kind`, `room`, `device`, `booking`, `actor`, `message`, `data`. A text is
//! its UTF-8 length as u32 big-endian followed by the bytes; an optional text is one byte `0`
//! when absent, or `1` followed by the text. `data` is hashed exactly as stored (canonical JSON:
//! keys sorted, no whitespace), so `verify` never re-serialises anything.
//!
//! The chain proves that no stored entry was changed, removed or inserted. It cannot prove that
//! the newest entries were not cut off; `verify` prints the head hash so it can be noted
//! elsewhere (the monthly report carries it too).

use std::fmt;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, Row};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{from_micros, to_micros, Actor, StoreError};

/// Hash "before" the first entry.
pub const GENESIS: [u8; 32] = [0; 32];

const DOMAIN: &[u8] = b"avwarden-logbook-v1\n";

/// An entry to append. `seq`, `prev_hash` and `hash` are assigned by the writer at commit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewEntry {
    pub at: DateTime<Utc>,
    /// Open vocabulary: `fault_raised`, `maintenance`, `self_test_finished`, … so that kinds
    /// from later components plug in without a schema change.
    pub kind: String,
    pub room: Option<String>,
    pub device: Option<String>,
    /// The booking in progress in that room, if any (stamped by the writer when absent).
    pub booking: Option<String>,
    pub actor: Actor,
    pub message: String,
    /// Structured details; stored as canonical JSON.
    pub data: serde_json::Value,
}

impl NewEntry {
    pub fn new(
        at: DateTime<Utc>,
        kind: impl Into<String>,
        actor: Actor,
        message: impl Into<String>,
    ) -> Self {
        Self {
            at,
            kind: kind.into(),
            room: None,
            device: None,
            booking: None,
            actor,
            message: message.into(),
            data: serde_json::Value::Object(Default::default()),
        }
    }

    pub fn room(mut self, room: impl Into<String>) -> Self {
        self.room = Some(room.into());
        self
    }

    pub fn device(mut self, device: impl Into<String>) -> Self {
        self.device = Some(device.into());
        self
    }

    pub fn booking(mut self, booking: impl Into<String>) -> Self {
        self.booking = Some(booking.into());
        self
    }

    pub fn data(mut self, data: serde_json::Value) -> Self {
        self.data = data;
        self
    }
}

/// A stored entry, exactly as it is in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub seq: u64,
    pub at_us: i64,
    pub kind: String,
    pub room: Option<String>,
    pub device: Option<String>,
    pub booking: Option<String>,
    /// `system` or `person:<name>` (see [`Actor`]).
    pub actor: String,
    pub message: String,
    /// Canonical JSON text.
    pub data: String,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
}

impl Entry {
    pub fn at(&self) -> DateTime<Utc> {
        from_micros(self.at_us)
    }

    pub fn actor(&self) -> Actor {
        Actor::parse(&self.actor)
    }

    pub fn data_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap_or(serde_json::Value::Null)
    }

    pub fn fields(&self) -> EntryFields<'_> {
        EntryFields {
            seq: self.seq,
            at_us: self.at_us,
            kind: &self.kind,
            room: self.room.as_deref(),
            device: self.device.as_deref(),
            booking: self.booking.as_deref(),
            actor: &self.actor,
            message: &self.message,
            data: &self.data,
        }
    }

    /// The columns [`Entry::from_row`] expects, in order.
    pub const COLUMNS: &'static str =
        "seq, at_us, kind, room, device, booking, actor, message, data, prev_hash, hash";

    pub fn from_row(row: &Row<'_>) -> rusqlite::Result<Entry> {
        Ok(Entry {
            seq: row.get::<_, i64>(0)? as u64,
            at_us: row.get(1)?,
            kind: row.get(2)?,
            room: row.get(3)?,
            device: row.get(4)?,
            booking: row.get(5)?,
            actor: row.get(6)?,
            message: row.get(7)?,
            data: row.get(8)?,
            prev_hash: row.get(9)?,
            hash: row.get(10)?,
        })
    }
}

/// The hashed fields of an entry, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct EntryFields<'a> {
    pub seq: u64,
    pub at_us: i64,
    pub kind: &'a str,
    pub room: Option<&'a str>,
    pub device: Option<&'a str>,
    pub booking: Option<&'a str>,
    pub actor: &'a str,
    pub message: &'a str,
    pub data: &'a str,
}

impl EntryFields<'_> {
    /// SHA-256 over the canonical encoding (see the module docs).
    pub fn hash(&self, prev: &[u8]) -> [u8; 32] {
        fn text(h: &mut Sha256, s: &str) {
            // Entries are far below 4 GiB; the length prefix makes field boundaries unambiguous.
            h.update((s.len() as u32).to_be_bytes());
            h.update(s.as_bytes());
        }
        fn opt(h: &mut Sha256, s: Option<&str>) {
            match s {
                None => h.update([0u8]),
                Some(s) => {
                    h.update([1u8]);
                    text(h, s);
                }
            }
        }
        let mut h = Sha256::new();
        h.update(DOMAIN);
        h.update(prev);
        h.update(self.seq.to_be_bytes());
        h.update(self.at_us.to_be_bytes());
        text(&mut h, self.kind);
        opt(&mut h, self.room);
        opt(&mut h, self.device);
        opt(&mut h, self.booking);
        text(&mut h, self.actor);
        text(&mut h, self.message);
        text(&mut h, self.data);
        h.finalize().into()
    }
}

/// JSON with object keys sorted at every level and no whitespace: one text per value, whatever
/// map type serde_json was built with.
pub fn canonical_json(v: &serde_json::Value) -> String {
    fn is_sorted(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::Object(m) => {
                m.keys().zip(m.keys().skip(1)).all(|(a, b)| a < b) && m.values().all(is_sorted)
            }
            serde_json::Value::Array(a) => a.iter().all(is_sorted),
            _ => true,
        }
    }
    // serde_json's default map is already sorted; rebuild only when it is not.
    if is_sorted(v) {
        return v.to_string();
    }
    fn sorted(v: &serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                let mut out = serde_json::Map::new();
                for k in keys {
                    out.insert(k.clone(), sorted(&m[k]));
                }
                serde_json::Value::Object(out)
            }
            serde_json::Value::Array(a) => serde_json::Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    sorted(v).to_string()
}

/// The last entry's sequence number and hash, read inside the write transaction so that a
/// second process (the `logbook add` command) appending to the same file keeps the chain whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub hash: [u8; 32],
}

impl Head {
    pub fn read(conn: &Connection) -> Result<Head, StoreError> {
        let mut stmt =
            conn.prepare_cached("SELECT seq, hash FROM logbook ORDER BY seq DESC LIMIT 1")?;
        let mut rows = stmt.query([])?;
        match rows.next()? {
            None => Ok(Head {
                seq: 0,
                hash: GENESIS,
            }),
            Some(row) => {
                let seq: i64 = row.get(0)?;
                let hash: Vec<u8> = row.get(1)?;
                let hash: [u8; 32] = hash.try_into().map_err(|_| {
                    StoreError::Corrupt(format!("entry {seq}: stored hash is not 32 bytes"))
                })?;
                Ok(Head {
                    seq: seq as u64,
                    hash,
                })
            }
        }
    }
}

/// Append one entry after `head` and advance it (only once the row is in). The caller owns
/// the transaction. `default_booking` is stamped when the entry names no booking.
pub fn insert(
    conn: &Connection,
    head: &mut Head,
    e: &NewEntry,
    default_booking: Option<&str>,
) -> Result<u64, StoreError> {
    let data = canonical_json(&e.data);
    let actor = e.actor.to_string();
    let fields = EntryFields {
        seq: head.seq + 1,
        at_us: to_micros(e.at),
        kind: &e.kind,
        room: e.room.as_deref(),
        device: e.device.as_deref(),
        booking: e.booking.as_deref().or(default_booking),
        actor: &actor,
        message: &e.message,
        data: &data,
    };
    let hash = fields.hash(&head.hash);
    let mut stmt = conn.prepare_cached(
        "INSERT INTO logbook (seq, at_us, kind, room, device, booking, actor, message, data, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?;
    stmt.execute(rusqlite::params![
        fields.seq as i64,
        fields.at_us,
        fields.kind,
        fields.room,
        fields.device,
        fields.booking,
        fields.actor,
        fields.message,
        fields.data,
        &head.hash[..],
        &hash[..],
    ])?;
    head.seq = fields.seq;
    head.hash = hash;
    Ok(fields.seq)
}

/// Why the chain is broken at an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The entry's fields do not hash to its stored hash: the entry was changed.
    ContentChanged,
    /// The entry does not link to the entry before it: that one was changed together with its
    /// hash, or an entry was inserted.
    BadLink { previous: u64 },
    /// Sequence numbers jump: entries were removed.
    Missing { expected: u64 },
}

/// The first broken entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    pub seq: u64,
    pub problem: Problem,
}

impl fmt::Display for Broken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.problem {
            Problem::ContentChanged => write!(
                f,
                "entry {}: content does not match its stored hash (the entry was changed)",
                self.seq
            ),
            Problem::BadLink { previous } => write!(
                f,
                "entry {}: does not link to entry {previous} (entry {previous} was changed together with its hash, or an entry was inserted)",
                self.seq
            ),
            Problem::Missing { expected } => write!(
                f,
                "entry {expected}: missing (the next stored entry is {}; entries were removed)",
                self.seq
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Entries checked (up to and including the first broken one).
    pub checked: u64,
    /// The last entry, when the whole chain verified.
    pub head: Option<Head>,
    pub broken: Option<Broken>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.broken.is_none()
    }
}

/// Walk the whole chain in sequence order, streaming (constant memory), and stop at the first
/// broken entry.
pub fn verify(conn: &Connection) -> Result<VerifyReport, StoreError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {} FROM logbook ORDER BY seq",
        Entry::COLUMNS
    ))?;
    let mut rows = stmt.query([])?;
    let mut prev = Head {
        seq: 0,
        hash: GENESIS,
    };
    let mut checked = 0u64;
    while let Some(row) = rows.next()? {
        let e = Entry::from_row(row)?;
        checked += 1;
        let broken = |problem| {
            Ok(VerifyReport {
                checked,
                head: None,
                broken: Some(Broken {
                    seq: e.seq,
                    problem,
                }),
            })
        };
        if e.seq != prev.seq + 1 {
            return broken(Problem::Missing {
                expected: prev.seq + 1,
            });
        }
        if e.prev_hash != prev.hash {
            return broken(Problem::BadLink { previous: prev.seq });
        }
        let computed = e.fields().hash(&e.prev_hash);
        if e.hash != computed {
            return broken(Problem::ContentChanged);
        }
        prev = Head {
            seq: e.seq,
            hash: computed,
        };
    }
    Ok(VerifyReport {
        checked,
        head: (checked > 0).then_some(prev),
        broken: None,
    })
}

/// One entry by sequence number.
pub fn get(conn: &Connection, seq: u64) -> Result<Option<Entry>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {} FROM logbook WHERE seq = ?1",
        Entry::COLUMNS
    ))?;
    let mut rows = stmt.query([seq as i64])?;
    Ok(match rows.next()? {
        Some(r) => Some(Entry::from_row(r)?),
        None => None,
    })
}

/// Number of stored entries (the head's sequence number when the chain is whole).
pub fn count(conn: &Connection) -> Result<u64, StoreError> {
    let n: i64 = conn.query_row("SELECT count(*) FROM logbook", [], |r| r.get(0))?;
    Ok(n as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Golden value computed independently (Python `hashlib`, see the module docs for the
    /// encoding) so that the encoding cannot drift silently.
    #[test]
    fn hash_matches_the_documented_encoding() {
        let f = EntryFields {
            seq: 1,
            at_us: 1_795_770_000_000_000,
            kind: "fault_raised",
            room: Some("r-301"),
            device: Some("proj-1"),
            booking: None,
            actor: "system",
            message: "proj-1: fault lamp raised: 灯泡故障, \"lamp\"",
            data: r#"{"code":"lamp"}"#,
        };
        let h = f.hash(&GENESIS);
        assert_eq!(
            hex::encode(h),
            "e876a31083e828065ad893b19bdaf701a6c035daaa37e96ee688fc251cac3c8a"
        );
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let v = json!({"b": 1, "a": {"d": [ {"z": 1, "y": 2} ], "c": null}});
        assert_eq!(
            canonical_json(&v),
            r#"{"a":{"c":null,"d":[{"y":2,"z":1}]},"b":1}"#
        );
    }

    #[test]
    fn every_field_changes_the_hash() {
        let base = EntryFields {
            seq: 7,
            at_us: 10,
            kind: "k",
            room: Some("r"),
            device: None,
            booking: None,
            actor: "system",
            message: "m",
            data: "{}",
        };
        let h = base.hash(&GENESIS);
        let variants = [
            EntryFields { seq: 8, ..base },
            EntryFields { at_us: 11, ..base },
            EntryFields { kind: "k2", ..base },
            EntryFields { room: None, ..base },
            EntryFields {
                room: Some(""),
                ..base
            },
            EntryFields {
                device: Some("r"),
                ..base
            },
            EntryFields {
                booking: Some("b"),
                ..base
            },
            EntryFields {
                actor: "person:x",
                ..base
            },
            EntryFields {
                message: "m ",
                ..base
            },
            EntryFields {
                data: "{ }",
                ..base
            },
        ];
        for v in variants {
            assert_ne!(v.hash(&GENESIS), h, "{v:?}");
        }
        assert_ne!(base.hash(&[1; 32]), h);
        // Moving bytes between adjacent fields changes the hash (length prefixes).
        let a = EntryFields {
            kind: "ab",
            message: "c",
            ..base
        };
        let b = EntryFields {
            kind: "a",
            message: "bc",
            ..base
        };
        assert_ne!(a.hash(&GENESIS), b.hash(&GENESIS));
    }
}
