//! The equipment archive (设备档案): one record per device, and its counters.
//!
//! A record is filled from three sources: what the device says about itself (identity events:
//! PJLink INF1/INF2/NAME/SNUM/SVER/RLMP/RFIL, ESC/VP21 SNO, Shure model/device id/firmware,
//! Sennheiser identity — drivers report them as [`Identity`]), what its profile says (vendor,
//! family, lamp and filter life: the only source for devices that report nothing), and what a
//! technician sets (site config or API). A changed serial number is a swapped unit: the writer
//! logs `device_swapped` and starts the unit's counters afresh.
//!
//! Counters: lamp hours and filter hours (totals the device reports), power cycles, transmitter
//! battery cycles, speaker-zone time above limit (added by whoever counts them). The app feeds
//! the reading-based ones with [`feed_counters`] per device; the level watch adds zone time
//! with [`LogbookHandle::counters`]. Rules for readings are in the pure [`counter_updates`].
//!
//! Must not change a record without writing a logbook entry in the same transaction (counter
//! values excepted: they are measurements, kept in `counter_samples`).

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use rusqlite::{Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::logbook::{self, Head, NewEntry};
use super::store::Applied;
use super::writer::LogbookHandle;
use super::{from_micros, to_micros, Actor, StoreError};
use crate::clock::Clock;
use crate::events::EventKind;
use crate::model::{
    DeviceId, DeviceState, Identity, Point, PowerState, Quantity, RoomId, Subject, Value,
};
use crate::profile::Profile;

/// Facts a technician keeps about a device (site config `archive` table or the API). In an
/// update, an absent field is left as it is and an empty string clears it. Dates are
/// `YYYY-MM-DD`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveFields {
    /// What the device is for ("main projector, front screen").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// Where it is installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Where it (or its spares) is stored when not installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_location: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install_date: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supplier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warranty_end: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_contract: Option<String>,
    /// How to operate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation_notes: Option<String>,
    /// How to maintain it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance_notes: Option<String>,
}

impl ArchiveFields {
    fn pairs(&self) -> [(&'static str, &Option<String>); 9] {
        [
            ("function", &self.function),
            ("location", &self.location),
            ("storage_location", &self.storage_location),
            ("install_date", &self.install_date),
            ("supplier", &self.supplier),
            ("warranty_end", &self.warranty_end),
            ("service_contract", &self.service_contract),
            ("operation_notes", &self.operation_notes),
            ("maintenance_notes", &self.maintenance_notes),
        ]
    }

    /// Dates must be `YYYY-MM-DD` (or empty, to clear).
    pub fn validate(&self) -> Result<(), StoreError> {
        for (key, v) in [
            ("install_date", &self.install_date),
            ("warranty_end", &self.warranty_end),
        ] {
            if let Some(v) = v {
                if !v.is_empty() && NaiveDate::parse_from_str(v, "%Y-%m-%d").is_err() {
                    return Err(StoreError::Invalid(format!(
                        "{key}: {v:?} is not a date (YYYY-MM-DD)"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// A device as the site config names it, with what its profile says. Registered at start.
#[derive(Debug, Clone, PartialEq)]
pub struct EquipmentSeed {
    pub device: DeviceId,
    pub room: RoomId,
    pub profile: String,
    pub kind: String,
    pub vendor: String,
    pub family: String,
    pub lamp_life_hours: Option<f64>,
    pub filter_life_hours: Option<f64>,
    pub fields: ArchiveFields,
    pub at: DateTime<Utc>,
}

impl EquipmentSeed {
    pub fn from_profile(
        device: DeviceId,
        room: RoomId,
        profile: &Profile,
        fields: ArchiveFields,
        at: DateTime<Utc>,
    ) -> Self {
        Self {
            device,
            room,
            profile: profile.id.to_string(),
            kind: profile.kind.as_str().to_owned(),
            vendor: profile.vendor.clone(),
            family: profile.family.clone(),
            lamp_life_hours: profile.lamp.as_ref().map(|l| f64::from(l.life_hours)),
            filter_life_hours: profile.filter_life_hours.map(f64::from),
            fields,
            at,
        }
    }
}

/// One counter of a device.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Counter {
    pub name: String,
    pub value: f64,
    /// The value at the last maintenance that reset it.
    pub baseline: f64,
    pub updated: DateTime<Utc>,
}

impl Counter {
    /// Use since the last replacement / cleaning / reset.
    pub fn since_service(&self) -> f64 {
        (self.value - self.baseline).max(0.0)
    }
}

/// A change to a counter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum CounterUpdate {
    /// A total the device keeps (lamp hours). A value below the stored one means the device's
    /// counter was reset (after a replacement): use since service restarts from it.
    Total { name: String, value: f64 },
    /// Something we count (power cycles, seconds above limit).
    Add { name: String, delta: f64 },
}

impl CounterUpdate {
    /// Seconds a speaker zone spent above its limit (the level watch adds them as it sees
    /// them); counter `zone.<zone>.over_limit_secs`.
    pub fn zone_over_limit(zone: &str, secs: f64) -> Self {
        CounterUpdate::Add {
            name: format!("zone.{zone}.over_limit_secs"),
            delta: secs,
        }
    }
}

/// A device's archive record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EquipmentRecord {
    pub device: String,
    pub room: Option<String>,
    pub profile: Option<String>,
    pub kind: Option<String>,
    pub profile_vendor: Option<String>,
    pub profile_family: Option<String>,
    /// What the device said about itself.
    pub identity: Identity,
    pub fields: ArchiveFields,
    pub lamp_life_hours: Option<f64>,
    pub filter_life_hours: Option<f64>,
    pub first_seen: DateTime<Utc>,
    pub updated: DateTime<Utc>,
    pub counters: Vec<Counter>,
}

impl EquipmentRecord {
    /// Manufacturer as the device says it, else the profile's vendor.
    pub fn manufacturer(&self) -> Option<&str> {
        self.identity
            .manufacturer
            .as_deref()
            .or(self.profile_vendor.as_deref())
    }

    /// Model as the device says it, else the profile's family.
    pub fn model(&self) -> Option<&str> {
        self.identity
            .model
            .as_deref()
            .or(self.profile_family.as_deref())
    }

    /// Function as a technician described it, else the device kind.
    pub fn function(&self) -> Option<&str> {
        self.fields.function.as_deref().or(self.kind.as_deref())
    }

    pub fn counter(&self, name: &str) -> Option<&Counter> {
        self.counters.iter().find(|c| c.name == name)
    }
}

// --- rows -----------------------------------------------------------------------------------

const TEXT_COLUMNS: [&str; 19] = [
    "room",
    "profile",
    "kind",
    "profile_vendor",
    "profile_family",
    "manufacturer",
    "model",
    "name",
    "serial",
    "firmware",
    "function",
    "location",
    "storage_location",
    "install_date",
    "supplier",
    "warranty_end",
    "service_contract",
    "operation_notes",
    "maintenance_notes",
];

#[derive(Debug, Clone, PartialEq)]
struct Row {
    text: BTreeMap<&'static str, Option<String>>,
    extra: BTreeMap<String, String>,
    lamp_life: Option<f64>,
    filter_life: Option<f64>,
    first_seen_us: i64,
    updated_us: i64,
}

impl Row {
    fn new(at: DateTime<Utc>) -> Row {
        Row {
            text: TEXT_COLUMNS.iter().map(|c| (*c, None)).collect(),
            extra: BTreeMap::new(),
            lamp_life: None,
            filter_life: None,
            first_seen_us: to_micros(at),
            updated_us: to_micros(at),
        }
    }

    fn get(&self, col: &str) -> Option<&str> {
        self.text.get(col).and_then(|v| v.as_deref())
    }
}

/// Field changes of one record, for the entry's data.
#[derive(Default)]
struct Changes(serde_json::Map<String, Json>);

impl Changes {
    fn note(&mut self, field: &str, from: Json, to: Json) {
        if from != to {
            self.0
                .insert(field.to_owned(), json!({ "from": from, "to": to }));
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn names(&self) -> String {
        self.0.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

fn opt_json(v: Option<&str>) -> Json {
    v.map_or(Json::Null, |s| Json::String(s.to_owned()))
}

/// Set a text column; records the change.
fn set_text(row: &mut Row, ch: &mut Changes, col: &'static str, to: Option<String>) {
    let from = row.get(col).map(str::to_owned);
    if from != to {
        ch.note(col, opt_json(from.as_deref()), opt_json(to.as_deref()));
        row.text.insert(col, to);
    }
}

fn set_num(field: &str, slot: &mut Option<f64>, ch: &mut Changes, to: Option<f64>) {
    if to.is_some() && *slot != to {
        ch.note(field, json!(*slot), json!(to));
        *slot = to;
    }
}

/// Technician fields: absent leaves, empty clears.
fn apply_fields(row: &mut Row, ch: &mut Changes, fields: &ArchiveFields) {
    for (col, v) in fields.pairs() {
        if let Some(v) = v {
            let to = (!v.trim().is_empty()).then(|| v.clone());
            set_text(row, ch, col, to);
        }
    }
}

fn load(conn: &Connection, device: &str) -> Result<Option<Row>, StoreError> {
    let sql = format!(
        "SELECT {}, identity_extra, lamp_life_hours, filter_life_hours, first_seen_us, updated_us
         FROM equipment WHERE device = ?1",
        TEXT_COLUMNS.join(", ")
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let row = stmt
        .query_row([device], |r| {
            let mut text = BTreeMap::new();
            for (i, c) in TEXT_COLUMNS.iter().enumerate() {
                text.insert(*c, r.get::<_, Option<String>>(i)?);
            }
            let n = TEXT_COLUMNS.len();
            let extra: String = r.get(n)?;
            Ok(Row {
                text,
                extra: serde_json::from_str(&extra).unwrap_or_default(),
                lamp_life: r.get(n + 1)?,
                filter_life: r.get(n + 2)?,
                first_seen_us: r.get(n + 3)?,
                updated_us: r.get(n + 4)?,
            })
        })
        .optional()?;
    Ok(row)
}

fn save(conn: &Connection, device: &str, row: &Row) -> Result<(), StoreError> {
    let mut cols: Vec<&str> = vec!["device"];
    cols.extend(TEXT_COLUMNS);
    cols.extend([
        "identity_extra",
        "lamp_life_hours",
        "filter_life_hours",
        "first_seen_us",
        "updated_us",
    ]);
    let placeholders: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
    let updates: Vec<String> = cols[1..]
        .iter()
        .filter(|c| **c != "first_seen_us")
        .map(|c| format!("{c} = excluded.{c}"))
        .collect();
    let sql = format!(
        "INSERT INTO equipment ({}) VALUES ({}) ON CONFLICT (device) DO UPDATE SET {}",
        cols.join(", "),
        placeholders.join(", "),
        updates.join(", ")
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut params: Vec<Box<dyn rusqlite::ToSql>> = vec![Box::new(device.to_owned())];
    for c in TEXT_COLUMNS {
        params.push(Box::new(row.get(c).map(str::to_owned)));
    }
    params.push(Box::new(
        serde_json::to_string(&row.extra).unwrap_or_else(|_| "{}".into()),
    ));
    params.push(Box::new(row.lamp_life));
    params.push(Box::new(row.filter_life));
    params.push(Box::new(row.first_seen_us));
    params.push(Box::new(row.updated_us));
    stmt.execute(rusqlite::params_from_iter(params.iter()))?;
    Ok(())
}

fn record_json(row: &Row) -> Json {
    let mut m = serde_json::Map::new();
    for c in TEXT_COLUMNS {
        if let Some(v) = row.get(c) {
            m.insert(c.to_owned(), Json::String(v.to_owned()));
        }
    }
    if !row.extra.is_empty() {
        m.insert("identity_extra".into(), json!(row.extra));
    }
    if let Some(l) = row.lamp_life {
        m.insert("lamp_life_hours".into(), json!(l));
    }
    if let Some(f) = row.filter_life {
        m.insert("filter_life_hours".into(), json!(f));
    }
    Json::Object(m)
}

// --- writes (inside the writer's transaction) -----------------------------------------------

pub(crate) fn register(
    conn: &Connection,
    head: &mut Head,
    seed: &EquipmentSeed,
    booking: Option<&str>,
) -> Result<Applied, StoreError> {
    seed.fields.validate()?;
    let device = seed.device.as_str();
    let existing = load(conn, device)?;
    let is_new = existing.is_none();
    let mut row = existing.unwrap_or_else(|| Row::new(seed.at));
    let mut ch = Changes::default();
    set_text(&mut row, &mut ch, "room", Some(seed.room.to_string()));
    set_text(&mut row, &mut ch, "profile", Some(seed.profile.clone()));
    set_text(&mut row, &mut ch, "kind", Some(seed.kind.clone()));
    set_text(
        &mut row,
        &mut ch,
        "profile_vendor",
        Some(seed.vendor.clone()),
    );
    set_text(
        &mut row,
        &mut ch,
        "profile_family",
        Some(seed.family.clone()),
    );
    set_num(
        "lamp_life_hours",
        &mut row.lamp_life,
        &mut ch,
        seed.lamp_life_hours,
    );
    set_num(
        "filter_life_hours",
        &mut row.filter_life,
        &mut ch,
        seed.filter_life_hours,
    );
    apply_fields(&mut row, &mut ch, &seed.fields);
    if !is_new && ch.is_empty() {
        return Ok(Applied::default());
    }
    row.updated_us = to_micros(seed.at);
    save(conn, device, &row)?;
    let entry = if is_new {
        NewEntry::new(
            seed.at,
            "equipment_registered",
            Actor::System,
            format!(
                "{device}: registered in the archive ({} {}, room {})",
                seed.vendor, seed.family, seed.room
            ),
        )
        .data(json!({ "record": record_json(&row), "source": "config" }))
    } else {
        NewEntry::new(
            seed.at,
            "equipment_updated",
            Actor::System,
            format!(
                "{device}: archive updated from the site config ({})",
                ch.names()
            ),
        )
        .data(json!({ "changes": Json::Object(ch.0), "source": "config" }))
    };
    let mut entry = entry.device(device).room(seed.room.as_str());
    entry.booking = booking.map(str::to_owned);
    let seq = logbook::insert(conn, head, &entry, None)?;
    Ok(Applied {
        seqs: vec![seq],
        emit: Vec::new(),
    })
}

pub(crate) fn set_fields(
    conn: &Connection,
    head: &mut Head,
    device: &DeviceId,
    fields: &ArchiveFields,
    actor: &Actor,
    at: DateTime<Utc>,
) -> Result<Applied, StoreError> {
    fields.validate()?;
    let Some(mut row) = load(conn, device.as_str())? else {
        return Err(StoreError::Invalid(format!(
            "device {device} is not in the archive"
        )));
    };
    let mut ch = Changes::default();
    apply_fields(&mut row, &mut ch, fields);
    if ch.is_empty() {
        return Ok(Applied::default());
    }
    row.updated_us = to_micros(at);
    save(conn, device.as_str(), &row)?;
    let mut entry = NewEntry::new(
        at,
        "equipment_updated",
        actor.clone(),
        format!("{device}: archive updated ({})", ch.names()),
    )
    .device(device.as_str())
    .data(json!({ "changes": Json::Object(ch.0) }));
    entry.room = row.get("room").map(str::to_owned);
    let seq = logbook::insert(conn, head, &entry, None)?;
    Ok(Applied {
        seqs: vec![seq],
        emit: Vec::new(),
    })
}

fn clean(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// What a device said about itself. Writes `identity_reported` when it taught the archive
/// something, and `device_swapped` (first) when the serial number changed.
pub(crate) fn apply_identity(
    conn: &Connection,
    head: &mut Head,
    at: DateTime<Utc>,
    device: &DeviceId,
    room: &RoomId,
    identity: &Identity,
    booking: Option<&str>,
) -> Result<Applied, StoreError> {
    let mut row = load(conn, device.as_str())?.unwrap_or_else(|| Row::new(at));
    let before = row.clone();
    let mut ch = Changes::default();
    if row.get("room").is_none() {
        set_text(&mut row, &mut ch, "room", Some(room.to_string()));
    }
    let reported = [
        ("manufacturer", clean(&identity.manufacturer)),
        ("model", clean(&identity.model)),
        ("name", clean(&identity.name)),
        ("serial", clean(&identity.serial)),
        ("firmware", clean(&identity.firmware)),
    ];
    for (col, v) in reported.iter() {
        if v.is_some() {
            set_text(&mut row, &mut ch, col, v.clone());
        }
    }
    for (k, v) in &identity.extra {
        let v = v.trim();
        if !v.is_empty() && row.extra.get(k).map(String::as_str) != Some(v) {
            ch.note(
                &format!("extra.{k}"),
                opt_json(row.extra.get(k).map(String::as_str)),
                Json::String(v.to_owned()),
            );
            row.extra.insert(k.clone(), v.to_owned());
        }
    }
    if ch.is_empty() {
        return Ok(Applied::default());
    }
    row.updated_us = to_micros(at);
    save(conn, device.as_str(), &row)?;

    let mut out = Applied::default();
    let stamp = |e: NewEntry| {
        let mut e = e.device(device.as_str()).room(room.as_str());
        e.booking = booking.map(str::to_owned);
        e
    };
    if let (Some(old), Some(new)) = (before.get("serial"), row.get("serial")) {
        if old != new {
            let counters = counters(conn, device.as_str())?;
            let counters_before: serde_json::Map<String, Json> = counters
                .iter()
                .map(|c| {
                    (
                        c.name.clone(),
                        json!({ "value": c.value, "baseline": c.baseline }),
                    )
                })
                .collect();
            // The new unit starts its own counters: the next reading is a starting point.
            conn.prepare_cached("DELETE FROM counters WHERE device = ?1")?
                .execute([device.as_str()])?;
            let mut mark = conn.prepare_cached(
                "INSERT INTO counter_samples (device, name, at_us, value, reset) VALUES (?1, ?2, ?3, 0, 1)",
            )?;
            for c in &counters {
                mark.execute(rusqlite::params![device.as_str(), c.name, to_micros(at)])?;
            }
            let unit = |r: &Row| {
                json!({
                    "manufacturer": r.get("manufacturer"),
                    "model": r.get("model"),
                    "serial": r.get("serial"),
                    "firmware": r.get("firmware"),
                })
            };
            let entry = stamp(
                NewEntry::new(
                    at,
                    "device_swapped",
                    Actor::System,
                    format!(
                        "{device}: device swapped: serial {old} -> {new} ({})",
                        row.get("model").unwrap_or("model unknown")
                    ),
                )
                .data(json!({
                    "old": unit(&before),
                    "new": unit(&row),
                    "counters_before": Json::Object(counters_before),
                })),
            );
            out.seqs.push(logbook::insert(conn, head, &entry, None)?);
            out.emit.push(EventKind::DeviceSwapped {
                device: device.clone(),
                room: room.clone(),
                old_serial: old.to_owned(),
                new_serial: new.to_owned(),
            });
        }
    }
    let entry = stamp(
        NewEntry::new(
            at,
            "identity_reported",
            Actor::System,
            format!(
                "{device}: identity {} {} serial {} firmware {}",
                row.get("manufacturer").unwrap_or("?"),
                row.get("model").unwrap_or("?"),
                row.get("serial").unwrap_or("?"),
                row.get("firmware").unwrap_or("?"),
            ),
        )
        .data(json!({ "identity": identity, "changes": Json::Object(ch.0) })),
    );
    out.seqs.push(logbook::insert(conn, head, &entry, None)?);
    Ok(out)
}

fn get_counter(
    conn: &Connection,
    device: &str,
    name: &str,
) -> Result<Option<(f64, f64)>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT value, baseline FROM counters WHERE device = ?1 AND name = ?2")?
        .query_row([device, name], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?)
}

fn put_counter(
    conn: &Connection,
    device: &str,
    name: &str,
    value: f64,
    baseline: f64,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO counters (device, name, value, baseline, updated_us) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (device, name) DO UPDATE SET value = excluded.value, baseline = excluded.baseline, updated_us = excluded.updated_us",
    )?
    .execute(rusqlite::params![device, name, value, baseline, to_micros(at)])?;
    Ok(())
}

fn sample(
    conn: &Connection,
    device: &str,
    name: &str,
    at: DateTime<Utc>,
    value: f64,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO counter_samples (device, name, at_us, value) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(rusqlite::params![device, name, to_micros(at), value])?;
    Ok(())
}

pub(crate) fn apply_counters(
    conn: &Connection,
    device: &DeviceId,
    at: DateTime<Utc>,
    updates: &[CounterUpdate],
) -> Result<Applied, StoreError> {
    let device = device.as_str();
    for u in updates {
        match u {
            CounterUpdate::Total { name, value } => {
                check_counter(name, *value)?;
                match get_counter(conn, device, name)? {
                    Some((v, _)) if v == *value => continue,
                    // The device's own counter went back: it was reset at a replacement.
                    Some((v, _)) if *value < v => put_counter(conn, device, name, *value, 0.0, at)?,
                    Some((_, b)) => put_counter(conn, device, name, *value, b, at)?,
                    None => put_counter(conn, device, name, *value, 0.0, at)?,
                }
                sample(conn, device, name, at, *value)?;
            }
            CounterUpdate::Add { name, delta } => {
                check_counter(name, *delta)?;
                if *delta == 0.0 {
                    continue;
                }
                let (v, b) = get_counter(conn, device, name)?.unwrap_or((0.0, 0.0));
                put_counter(conn, device, name, v + delta, b, at)?;
                sample(conn, device, name, at, v + delta)?;
            }
        }
    }
    Ok(Applied::default())
}

fn check_counter(name: &str, v: f64) -> Result<(), StoreError> {
    if name.is_empty() || !v.is_finite() {
        return Err(StoreError::Invalid(format!(
            "counter {name:?}: value {v} is not usable"
        )));
    }
    Ok(())
}

/// Reset a counter's use-since-service (maintenance). Returns the value it had.
pub(crate) fn rebase_counter(
    conn: &Connection,
    device: &str,
    name: &str,
    at: DateTime<Utc>,
) -> Result<Option<f64>, StoreError> {
    match get_counter(conn, device, name)? {
        Some((v, _)) => {
            put_counter(conn, device, name, v, v, at)?;
            Ok(Some(v))
        }
        None => Ok(None),
    }
}

/// Add to a counter without a reading (maintenance: replacements, batteries replaced).
pub(crate) fn add_counter(
    conn: &Connection,
    device: &str,
    name: &str,
    delta: f64,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    apply_counters(
        conn,
        &DeviceId::new(device),
        at,
        &[CounterUpdate::Add {
            name: name.to_owned(),
            delta,
        }],
    )
    .map(|_| ())
}

// --- reads ----------------------------------------------------------------------------------

pub fn counters(conn: &Connection, device: &str) -> Result<Vec<Counter>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT name, value, baseline, updated_us FROM counters WHERE device = ?1 ORDER BY name",
    )?;
    let rows = stmt.query_map([device], |r| {
        Ok(Counter {
            name: r.get(0)?,
            value: r.get(1)?,
            baseline: r.get(2)?,
            updated: from_micros(r.get(3)?),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn to_record(conn: &Connection, device: &str, row: Row) -> Result<EquipmentRecord, StoreError> {
    let t = |c: &str| row.get(c).map(str::to_owned);
    Ok(EquipmentRecord {
        device: device.to_owned(),
        room: t("room"),
        profile: t("profile"),
        kind: t("kind"),
        profile_vendor: t("profile_vendor"),
        profile_family: t("profile_family"),
        identity: Identity {
            manufacturer: t("manufacturer"),
            model: t("model"),
            name: t("name"),
            serial: t("serial"),
            firmware: t("firmware"),
            extra: row.extra.clone(),
        },
        fields: ArchiveFields {
            function: t("function"),
            location: t("location"),
            storage_location: t("storage_location"),
            install_date: t("install_date"),
            supplier: t("supplier"),
            warranty_end: t("warranty_end"),
            service_contract: t("service_contract"),
            operation_notes: t("operation_notes"),
            maintenance_notes: t("maintenance_notes"),
        },
        lamp_life_hours: row.lamp_life,
        filter_life_hours: row.filter_life,
        first_seen: from_micros(row.first_seen_us),
        updated: from_micros(row.updated_us),
        counters: counters(conn, device)?,
    })
}

pub fn get(conn: &Connection, device: &str) -> Result<Option<EquipmentRecord>, StoreError> {
    match load(conn, device)? {
        Some(row) => Ok(Some(to_record(conn, device, row)?)),
        None => Ok(None),
    }
}

pub fn list(conn: &Connection) -> Result<Vec<EquipmentRecord>, StoreError> {
    let devices: Vec<String> = conn
        .prepare("SELECT device FROM equipment ORDER BY room, device")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    devices
        .iter()
        .filter_map(|d| get(conn, d).transpose())
        .collect()
}

// --- counters from device state ---------------------------------------------------------------

/// A battery level this far up (percentage points) means a fresh or charged battery went in.
pub const BATTERY_CYCLE_RISE_PERCENT: f64 = 50.0;

/// What the counters read of one published state: the numbers of the points they count and
/// the power state. A few dozen bytes where the whole state is a map of every reading, so the
/// per-device feed keeps this, not a copy of the state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CounterInputs {
    /// Numeric values of counted points, in point order (the state's map order).
    numbers: Vec<(Point, f64)>,
    /// Channels whose device counts battery cycles itself: a reading, numeric or not.
    cycles_reported: Vec<u8>,
    power: Option<PowerState>,
}

impl CounterInputs {
    pub fn of(state: &DeviceState) -> Self {
        let mut inputs = Self::default();
        inputs.read(state);
        inputs
    }

    /// Refill from `state`, keeping the allocations: the feed calls this on every change of
    /// the device's state, metered devices many times a second.
    pub fn read(&mut self, state: &DeviceState) {
        self.numbers.clear();
        self.cycles_reported.clear();
        self.power = None;
        for (point, reading) in &state.readings {
            match (&point.subject, point.quantity) {
                (Subject::Device, Quantity::Power) => {
                    if let Value::Power(p) = &reading.value {
                        self.power = Some(*p);
                    }
                    continue;
                }
                (&Subject::Channel(n), Quantity::BatteryCycles) => self.cycles_reported.push(n),
                (Subject::Lamp(_), Quantity::LampHours)
                | (Subject::Device, Quantity::FilterHours)
                | (Subject::Channel(_), Quantity::BatteryPercent | Quantity::BatteryBars) => {}
                _ => continue,
            }
            if let Some(v) = reading.value.as_f64() {
                self.numbers.push((point.clone(), v));
            }
        }
    }

    fn number(&self, point: &Point) -> Option<f64> {
        self.numbers
            .binary_search_by(|(p, _)| p.cmp(point))
            .ok()
            .map(|i| self.numbers[i].1)
    }
}

/// Counter changes between two published states of one device. Pure: the rules in one place.
///
/// - `lamp.<n>.hours` → total `lamp.<n>.hours`; `filter.hours` → total `filter.hours`.
/// - `power` going from off / cooling down / abnormal to warming up / on → `power_cycles` + 1
///   (an unknown previous power counts nothing: a reconnect is not a power cycle).
/// - `ch.<n>.battery_cycles` (devices that count them, Sennheiser `bat_cycles`) → total
///   `tx.<n>.battery_cycles`; otherwise `ch.<n>.battery_percent` (or `battery_bars` × 20)
///   rising by at least [`BATTERY_CYCLE_RISE_PERCENT`] → `tx.<n>.battery_cycles` + 1.
pub fn counter_updates(prev: Option<&DeviceState>, next: &DeviceState) -> Vec<CounterUpdate> {
    let prev = prev.map(CounterInputs::of);
    input_updates(prev.as_ref(), &CounterInputs::of(next))
}

/// [`counter_updates`] on what the counters read of the two states.
pub fn input_updates(prev: Option<&CounterInputs>, next: &CounterInputs) -> Vec<CounterUpdate> {
    let mut out = Vec::new();
    for (point, v) in &next.numbers {
        let v = *v;
        let prev_v = prev.and_then(|p| p.number(point));
        if prev_v == Some(v) {
            continue;
        }
        // The counters' names are the archive's, written as they always were.
        let tx_cycles = |n: u8| format!("tx.{n}.battery_cycles");
        match (&point.subject, point.quantity) {
            (Subject::Lamp(_), Quantity::LampHours) | (Subject::Device, Quantity::FilterHours) => {
                out.push(CounterUpdate::Total {
                    name: point.to_string(),
                    value: v,
                })
            }
            (Subject::Channel(n), Quantity::BatteryCycles) => out.push(CounterUpdate::Total {
                name: tx_cycles(*n),
                value: v,
            }),
            (&Subject::Channel(n), level @ (Quantity::BatteryPercent | Quantity::BatteryBars)) => {
                if next.cycles_reported.contains(&n) {
                    continue;
                }
                let scale = if level == Quantity::BatteryBars {
                    20.0
                } else {
                    1.0
                };
                if let Some(p) = prev_v {
                    if (v - p) * scale >= BATTERY_CYCLE_RISE_PERCENT {
                        out.push(CounterUpdate::Add {
                            name: tx_cycles(n),
                            delta: 1.0,
                        });
                    }
                }
            }
            _ => {}
        }
    }
    if let (Some(from), Some(to)) = (prev.and_then(|p| p.power), next.power) {
        let was_off = matches!(
            from,
            PowerState::Off | PowerState::CoolingDown | PowerState::Abnormal
        );
        let is_on = matches!(to, PowerState::On | PowerState::WarmingUp);
        if was_off && is_on {
            out.push(CounterUpdate::Add {
                name: "power_cycles".into(),
                delta: 1.0,
            });
        }
    }
    out
}

/// Feed one device's counters from its published state until cancelled or the device goes
/// away. The app runs one per device in its task tracker.
pub async fn feed_counters(
    handle: LogbookHandle,
    mut rx: watch::Receiver<DeviceState>,
    clock: Clock,
    cancel: CancellationToken,
) {
    let device = rx.borrow().id.clone();
    let mut prev: Option<CounterInputs> = None;
    let mut next = CounterInputs::default();
    loop {
        // Under the borrow only what the counters read: most changes (meters, freshness)
        // touch none of it and end at the comparison.
        next.read(&rx.borrow_and_update());
        if prev.as_ref() != Some(&next) {
            let updates = input_updates(prev.as_ref(), &next);
            if !updates.is_empty() {
                // Boxed: a queued write holds a whole writer request, and an inline one would
                // size this task (one per device, idle nearly always) for its rare send.
                let send = Box::pin(handle.counters(device.clone(), clock.now(), updates));
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    r = send => if r.is_err() { return },
                }
            }
        }
        match &mut prev {
            Some(p) => std::mem::swap(p, &mut next),
            None => prev = Some(std::mem::take(&mut next)),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = rx.changed() => if r.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ProfileId, Reading};
    use chrono::TimeZone;

    fn state(readings: &[(Point, Value)]) -> DeviceState {
        let at = Utc.with_ymd_and_hms(2026, 11, 2, 8, 0, 0).unwrap();
        let mut s = DeviceState::new(
            DeviceId::new("p"),
            RoomId::new("r"),
            ProfileId::new("x"),
            "tcp".into(),
            at,
        );
        for (p, v) in readings {
            s.readings
                .insert(p.clone(), Reading::new(p.clone(), v.clone(), at));
        }
        s
    }

    #[test]
    fn lamp_and_filter_hours_are_totals_sent_on_change() {
        let a = state(&[
            (Point::lamp(1, Quantity::LampHours), Value::Int(100)),
            (Point::device(Quantity::FilterHours), Value::Int(50)),
        ]);
        let b = state(&[
            (Point::lamp(1, Quantity::LampHours), Value::Int(101)),
            (Point::device(Quantity::FilterHours), Value::Int(50)),
        ]);
        assert_eq!(
            counter_updates(None, &a),
            vec![
                CounterUpdate::Total {
                    name: "filter.hours".into(),
                    value: 50.0
                },
                CounterUpdate::Total {
                    name: "lamp.1.hours".into(),
                    value: 100.0
                },
            ]
        );
        assert_eq!(
            counter_updates(Some(&a), &b),
            vec![CounterUpdate::Total {
                name: "lamp.1.hours".into(),
                value: 101.0
            }]
        );
        assert!(counter_updates(Some(&b), &b).is_empty());
        // Unknown (device sentinel) is never a number.
        let u = state(&[(Point::lamp(1, Quantity::LampHours), Value::Unknown)]);
        assert!(counter_updates(Some(&b), &u).is_empty());
    }

    #[test]
    fn power_cycles_count_off_to_on_only() {
        let p = |ps| state(&[(Point::device(Quantity::Power), Value::Power(ps))]);
        let cyc = vec![CounterUpdate::Add {
            name: "power_cycles".into(),
            delta: 1.0,
        }];
        assert_eq!(
            counter_updates(Some(&p(PowerState::Off)), &p(PowerState::WarmingUp)),
            cyc
        );
        assert_eq!(
            counter_updates(Some(&p(PowerState::Off)), &p(PowerState::On)),
            cyc
        );
        assert!(counter_updates(Some(&p(PowerState::WarmingUp)), &p(PowerState::On)).is_empty());
        assert!(counter_updates(Some(&p(PowerState::On)), &p(PowerState::CoolingDown)).is_empty());
        assert!(
            counter_updates(None, &p(PowerState::On)).is_empty(),
            "reconnect is not a cycle"
        );
        assert!(counter_updates(Some(&state(&[])), &p(PowerState::On)).is_empty());
    }

    #[test]
    fn battery_cycles_reported_or_inferred() {
        let lvl = |p| state(&[(Point::channel(2, Quantity::BatteryPercent), Value::Int(p))]);
        assert_eq!(
            counter_updates(Some(&lvl(15)), &lvl(100)),
            vec![CounterUpdate::Add {
                name: "tx.2.battery_cycles".into(),
                delta: 1.0
            }]
        );
        assert!(
            counter_updates(Some(&lvl(60)), &lvl(100)).is_empty(),
            "a top-up is no cycle"
        );
        assert!(counter_updates(None, &lvl(100)).is_empty());
        let bars = |b| state(&[(Point::channel(1, Quantity::BatteryBars), Value::Int(b))]);
        assert_eq!(counter_updates(Some(&bars(1)), &bars(5)).len(), 1);
        // A device that counts cycles itself is believed, not second-guessed.
        let counted = |p, c| {
            state(&[
                (Point::channel(2, Quantity::BatteryPercent), Value::Int(p)),
                (Point::channel(2, Quantity::BatteryCycles), Value::Int(c)),
            ])
        };
        assert_eq!(
            counter_updates(Some(&counted(10, 41)), &counted(100, 42)),
            vec![CounterUpdate::Total {
                name: "tx.2.battery_cycles".into(),
                value: 42.0
            }]
        );
    }

    #[test]
    fn counter_inputs_keep_only_what_the_counters_read() {
        let level = |db: f64| {
            state(&[
                (Point::lamp(1, Quantity::LampHours), Value::Int(100)),
                (Point::device(Quantity::Power), Value::Power(PowerState::On)),
                (
                    Point::new(Subject::zone("main"), Quantity::LevelDb),
                    Value::Float(db),
                ),
                (Point::channel(1, Quantity::BatteryCycles), Value::Unknown),
            ])
        };
        // A meter moving changes the state but nothing a counter reads: the feed stops at the
        // comparison and sends nothing.
        let (a, b) = (
            CounterInputs::of(&level(-20.0)),
            CounterInputs::of(&level(-3.0)),
        );
        assert_eq!(a, b);
        assert_eq!(
            a.numbers,
            vec![(Point::lamp(1, Quantity::LampHours), 100.0)]
        );
        assert_eq!(a.power, Some(PowerState::On));
        // A reported cycle counter without a number still says "the device counts them".
        assert_eq!(a.cycles_reported, vec![1]);
        // Refilling keeps no stale value of the previous state.
        let mut c = CounterInputs::of(&level(-20.0));
        c.read(&state(&[]));
        assert_eq!(c, CounterInputs::default());
        assert!(input_updates(Some(&a), &b).is_empty());
    }

    #[test]
    fn dates_are_validated() {
        let ok = ArchiveFields {
            install_date: Some("2024-03-01".into()),
            warranty_end: Some(String::new()),
            ..Default::default()
        };
        assert!(ok.validate().is_ok());
        let bad = ArchiveFields {
            warranty_end: Some("03/01/2027".into()),
            ..Default::default()
        };
        let e = bad.validate().unwrap_err().to_string();
        assert!(e.contains("warranty_end"), "{e}");
    }
}
