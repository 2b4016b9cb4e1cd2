//! The logbook and the equipment archive under `/api/v1`: thin handlers over the records.
//!
//! Reads go through a read-only connection of their own ([`store::open_reader`]), beside the
//! writer; writes (archive fields, maintenance entries) go through the [`LogbookHandle`], so
//! the logbook keeps one writer. The export streams the bytes `avwarden logbook export`
//! writes for the same filter, row by row, never holding the logbook in memory. Must not
//! write SQL that changes anything, nor take who acted from the request body: the actor is
//! the authenticated caller.

use std::io::Write;
use std::path::PathBuf;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use rusqlite::Connection;
use serde::Serialize;

use super::auth::Caller;
use super::{ApiError, ApiState};
use crate::model::{DeviceId, RoomId};
use crate::records::export::{self, Filter, Format};
use crate::records::logbook::Entry;
use crate::records::{
    archive, store, ArchiveFields, EquipmentRecord, LogbookHandle, Maintenance, MaintenanceAction,
    StoreError,
};

/// Where the API finds the records: the store's file (read) and the writer (write).
#[derive(Clone)]
pub struct Records {
    pub path: PathBuf,
    pub logbook: LogbookHandle,
}

/// Entries a logbook query answers when it names no limit, and at most.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;
/// Chunks of export in flight between the reading thread and the connection.
const EXPORT_CHUNKS: usize = 8;

fn records(st: &ApiState) -> Result<&Records, ApiError> {
    st.records.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_records",
            "this daemon keeps no records",
        )
    })
}

fn store_error(e: StoreError) -> ApiError {
    let msg = e.to_string();
    match e {
        StoreError::Invalid(_) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", msg),
        _ => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", msg),
    }
}

fn reader(st: &ApiState) -> Result<Connection, ApiError> {
    store::open_reader(&records(st)?.path).map_err(store_error)
}

/// The logbook filters, as the CLI takes them: `from`/`to` in RFC 3339 or `YYYY-MM-DD`
/// (midnight in `tz`, UTC by default); `room`, `device` and `kind` may repeat.
#[derive(Debug, Default)]
struct LogQuery {
    filter: Filter,
    limit: Option<usize>,
    format: Option<Format>,
    bom: bool,
}

fn bad_query(detail: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_query", detail)
}

/// Parse the query pairs; `export` tells which keys the route takes.
fn log_query(pairs: Vec<(String, String)>, export: bool) -> Result<LogQuery, ApiError> {
    let tz = match pairs.iter().find(|(k, _)| k == "tz") {
        Some((_, v)) => v
            .parse::<chrono_tz::Tz>()
            .map_err(|_| bad_query(format!("tz: unknown time zone {v:?}")))?,
        None => chrono_tz::UTC,
    };
    let time = |k: &str, v: &str| {
        crate::records::cli::parse_time(v, tz).map_err(|e| bad_query(format!("{k}: {e}")))
    };
    let mut q = LogQuery::default();
    for (k, v) in pairs {
        match (k.as_str(), export) {
            ("tz", _) => {}
            ("from", _) => q.filter.from = Some(time(&k, &v)?),
            ("to", _) => q.filter.to = Some(time(&k, &v)?),
            ("room", _) => q.filter.rooms.push(v),
            ("device", _) => q.filter.devices.push(v),
            ("kind", _) => q.filter.kinds.push(v),
            ("limit", false) => match v.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => q.limit = Some(n),
                _ => return Err(bad_query(format!("limit: a number from 1 to {MAX_LIMIT}"))),
            },
            ("format", true) => {
                q.format = Some(match v.as_str() {
                    "csv" => Format::Csv,
                    "jsonl" => Format::Jsonl,
                    _ => return Err(bad_query("format: csv or jsonl")),
                })
            }
            ("bom", true) => {
                q.bom = match v.as_str() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(bad_query("bom: true or false")),
                }
            }
            (other, _) => return Err(bad_query(format!("unknown parameter {other:?}"))),
        }
    }
    if let (Some(from), Some(to)) = (q.filter.from, q.filter.to) {
        if to <= from {
            return Err(bad_query("`to` must be after `from`"));
        }
    }
    Ok(q)
}

/// A logbook entry as the API answers it: the export's JSON Lines fields, `data` as JSON.
#[derive(Debug, Serialize)]
pub struct EntryView {
    pub seq: u64,
    pub at: String,
    pub kind: String,
    pub room: Option<String>,
    pub device: Option<String>,
    pub booking: Option<String>,
    pub actor: String,
    pub message: String,
    pub data: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
}

impl From<Entry> for EntryView {
    fn from(e: Entry) -> Self {
        let data = serde_json::from_str(&e.data).unwrap_or(serde_json::Value::String(e.data));
        Self {
            seq: e.seq,
            at: crate::records::format_time(crate::records::from_micros(e.at_us)),
            kind: e.kind,
            room: e.room,
            device: e.device,
            booking: e.booking,
            actor: e.actor,
            message: e.message,
            data,
            prev_hash: hex::encode(e.prev_hash),
            hash: hex::encode(e.hash),
        }
    }
}

/// The logbook filters both `/logbook` and `/logbook/export` take, as the OpenAPI document
/// shows them (the handlers read the pairs themselves: `room`, `device` and `kind` repeat).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct LogFilter {
    /// From this instant (RFC 3339, or a date and time in `tz`).
    from: Option<String>,
    /// Until this instant.
    to: Option<String>,
    /// Only this room (repeatable).
    room: Option<String>,
    /// Only this device (repeatable).
    device: Option<String>,
    /// Only this kind of entry (repeatable).
    kind: Option<String>,
    /// Time zone of `from` and `to` (IANA name; default UTC).
    tz: Option<String>,
}

/// `GET /api/v1/logbook`: the newest entries that pass the filters, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/logbook",
    tag = "records",
    summary = "Logbook entries, newest first",
    params(
        LogFilter,
        ("limit" = Option<usize>, Query, description = "How many (1 to the maximum)"),
    ),
    responses(
        (status = 200, description = "The entries", body = serde_json::Value),
    )
)]
pub async fn logbook(
    State(st): State<ApiState>,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Vec<EntryView>>, ApiError> {
    let Query(pairs) = q.map_err(ApiError::from_query_rejection)?;
    let q = log_query(pairs, false)?;
    let conn = reader(&st)?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    let entries = export::newest(&conn, &q.filter, limit).map_err(store_error)?;
    Ok(Json(entries.into_iter().map(EntryView::from).collect()))
}

/// `GET /api/v1/notify/deliveries?sink=webhook:ops&limit=50`: the alert sinks' delivery
/// log, newest first (issue 11.6).
#[utoipa::path(
    get,
    path = "/api/v1/notify/deliveries",
    tag = "alerts",
    summary = "The alert sinks' delivery log, newest first",
    params(
        ("sink" = Option<String>, Query, description = "One sink: `webhook:<name>` or `mail`"),
        ("limit" = Option<usize>, Query, description = "How many (1 to 1000, default 100)"),
    ),
    responses(
        (status = 200, description = "Delivery attempts, newest first", body = Vec<serde_json::Value>),
    )
)]
pub async fn deliveries(
    State(st): State<ApiState>,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Vec<crate::records::notify::Delivery>>, ApiError> {
    let Query(pairs) = q.map_err(ApiError::from_query_rejection)?;
    let mut sink = None;
    let mut limit = DEFAULT_LIMIT;
    for (k, v) in pairs {
        match k.as_str() {
            "sink" => sink = Some(v),
            "limit" => {
                limit = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| bad_query(format!("limit: expected 1 to {MAX_LIMIT}")))?;
            }
            other => {
                return Err(bad_query(format!(
                    "unknown parameter {other:?} (sink, limit)"
                )))
            }
        }
    }
    let conn = reader(&st)?;
    let rows =
        crate::records::notify::deliveries(&conn, sink.as_deref(), limit).map_err(store_error)?;
    Ok(Json(rows))
}

/// Bytes written by the export, handed to the connection in chunks. A closed connection
/// makes the next write fail, which ends the export.
struct ChannelWriter(tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>);

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client gone"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `GET /api/v1/logbook/export?format=csv|jsonl`: the CLI's export, streamed.
#[utoipa::path(
    get,
    path = "/api/v1/logbook/export",
    tag = "records",
    summary = "The logbook as CSV or JSON lines, as `avwarden logbook export` writes it",
    params(
        LogFilter,
        ("format" = Option<String>, Query, description = "`csv` (default) or `jsonl`"),
        ("bom" = Option<String>, Query, description = "A UTF-8 byte order mark first (`true`/`false`)"),
    ),
    responses(
        (status = 200, description = "The export", body = String, content_type = "text/csv"),
    )
)]
pub async fn export(
    State(st): State<ApiState>,
    q: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(pairs) = q.map_err(ApiError::from_query_rejection)?;
    let q = log_query(pairs, true)?;
    let format = q.format.unwrap_or(Format::Csv);
    // Opened here so a missing store is a JSON error, not a cut-off body.
    let conn = reader(&st)?;
    let (tx, mut rx) = tokio::sync::mpsc::channel(EXPORT_CHUNKS);
    let (filter, bom) = (q.filter, q.bom);
    // SQLite blocks, so the rows are read on a blocking thread; it ends with the export or
    // at the first write after the client went away.
    tokio::task::spawn_blocking(move || {
        let mut w = ChannelWriter(tx.clone());
        if let Err(e) = export::export(&conn, &filter, format, bom, &mut w) {
            tracing::warn!(error = %e, "logbook export over the API ended early");
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let (content_type, name) = match format {
        Format::Csv => ("text/csv; charset=utf-8", "logbook.csv"),
        Format::Jsonl => ("application/x-ndjson", "logbook.jsonl"),
    };
    Ok((
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

/// `GET /api/v1/equipment`: every device the archive knows.
#[utoipa::path(
    get,
    path = "/api/v1/equipment",
    tag = "records",
    summary = "Every device's equipment record",
    responses(
        (status = 200, description = "The records", body = serde_json::Value),
    )
)]
pub async fn equipment(State(st): State<ApiState>) -> Result<Json<Vec<EquipmentRecord>>, ApiError> {
    let conn = reader(&st)?;
    Ok(Json(archive::list(&conn).map_err(store_error)?))
}

fn unknown_equipment(device: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_device",
        format!("the archive has no device {device:?}"),
    )
}

fn one(st: &ApiState, device: &str) -> Result<EquipmentRecord, ApiError> {
    let conn = reader(st)?;
    archive::get(&conn, device)
        .map_err(store_error)?
        .ok_or_else(|| unknown_equipment(device))
}

/// `GET /api/v1/equipment/{device}`.
#[utoipa::path(
    get,
    path = "/api/v1/equipment/{device}",
    tag = "records",
    summary = "One device's equipment record",
    params(
        ("device" = String, Path, description = "The device's id"),
    ),
    responses(
        (status = 200, description = "The record", body = serde_json::Value),
    )
)]
pub async fn equipment_one(
    State(st): State<ApiState>,
    device: Result<Path<String>, PathRejection>,
) -> Result<Json<EquipmentRecord>, ApiError> {
    let Path(device) = device.map_err(ApiError::from_path_rejection)?;
    Ok(Json(one(&st, &device)?))
}

/// `PATCH /api/v1/equipment/{device}`: the technician fields; an absent field is kept, an
/// empty one cleared. Answers the record as it now is.
#[utoipa::path(
    patch,
    path = "/api/v1/equipment/{device}",
    tag = "records",
    summary = "Change fields of an equipment record",
    params(
        ("device" = String, Path, description = "The device's id"),
    ),
    request_body = serde_json::Value,
    responses(
        (status = 200, description = "The record changed", body = serde_json::Value),
    )
)]
pub async fn edit_equipment(
    State(st): State<ApiState>,
    caller: Caller,
    device: Result<Path<String>, PathRejection>,
    body: Result<Json<ArchiveFields>, JsonRejection>,
) -> Result<Json<EquipmentRecord>, ApiError> {
    let Path(device) = device.map_err(ApiError::from_path_rejection)?;
    let Json(fields) = body.map_err(ApiError::from_json_rejection)?;
    check_archive_fields(&fields)?;
    one(&st, &device)?;
    records(&st)?
        .logbook
        .set_fields(
            DeviceId::new(device.clone()),
            fields,
            caller.actor(),
            st.clock.now(),
        )
        .await
        .map_err(store_error)?;
    Ok(Json(one(&st, &device)?))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Recorded {
    pub seq: u64,
}

/// An equipment edit's fields, checked as `PATCH /api/v1/equipment/{device}` checks them
/// before the device is looked up.
pub(crate) fn check_archive_fields(fields: &ArchiveFields) -> Result<(), ApiError> {
    fields.validate().map_err(store_error)
}

/// A maintenance body read apart: the entry's own keys, the rest is the action.
pub(crate) struct MaintenanceBody {
    pub at: Option<DateTime<Utc>>,
    pub note: Option<String>,
    pub room: Option<RoomId>,
    pub action: MaintenanceAction,
}

/// Read a maintenance body as `POST /api/v1/equipment/{device}/maintenance` reads it, before
/// the device is looked up.
pub(crate) fn maintenance_body(
    mut body: serde_json::Map<String, serde_json::Value>,
) -> Result<MaintenanceBody, ApiError> {
    let invalid =
        |detail: String| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", detail);
    let mut take = |key: &str| body.remove(key).filter(|v| !v.is_null());
    let at: Option<DateTime<Utc>> = take("at")
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| invalid(format!("at: {e}")))?;
    let note: Option<String> = take("note")
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| invalid(format!("note: {e}")))?;
    let room: Option<RoomId> = take("room")
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| invalid(format!("room: {e}")))?;
    let action: MaintenanceAction = serde_json::from_value(serde_json::Value::Object(body))
        .map_err(|e| invalid(e.to_string()))?;
    Ok(MaintenanceBody {
        at,
        note,
        room,
        action,
    })
}

/// `POST /api/v1/equipment/{device}/maintenance`: `{"action": "lamp_replaced", "lamp": 1,
/// "at": …, "note": …, "room": …}`; `at` defaults to now, the worker is the caller.
#[utoipa::path(
    post,
    path = "/api/v1/equipment/{device}/maintenance",
    tag = "records",
    summary = "Record maintenance done on a device",
    params(
        ("device" = String, Path, description = "The device's id"),
    ),
    request_body = serde_json::Value,
    responses(
        (status = 201, description = "The entry recorded", body = Recorded),
    )
)]
pub async fn add_maintenance(
    State(st): State<ApiState>,
    caller: Caller,
    device: Result<Path<String>, PathRejection>,
    body: Result<Json<serde_json::Map<String, serde_json::Value>>, JsonRejection>,
) -> Result<(StatusCode, Json<Recorded>), ApiError> {
    let Path(device) = device.map_err(ApiError::from_path_rejection)?;
    let Json(body) = body.map_err(ApiError::from_json_rejection)?;
    let MaintenanceBody {
        at,
        note,
        room,
        action,
    } = maintenance_body(body)?;
    one(&st, &device)?;
    let seq = records(&st)?
        .logbook
        .maintenance(Maintenance {
            device: DeviceId::new(device),
            room,
            at: at.unwrap_or_else(|| st.clock.now()),
            by: caller.name.clone(),
            action,
            note: note.unwrap_or_default(),
        })
        .await
        .map_err(store_error)?;
    Ok((StatusCode::CREATED, Json(Recorded { seq })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn logbook_filters_read_as_the_cli_reads_them() {
        let q = log_query(
            pairs(&[
                ("from", "2026-12-01"),
                ("to", "2026-12-02"),
                ("tz", "Asia/Shanghai"),
                ("room", "a"),
                ("room", "b"),
                ("kind", "maintenance"),
                ("limit", "5"),
            ]),
            false,
        )
        .unwrap();
        assert_eq!(
            q.filter.from.unwrap().to_rfc3339(),
            "2026-11-30T16:00:00+00:00"
        );
        assert_eq!(q.filter.rooms, ["a", "b"]);
        assert_eq!(q.limit, Some(5));
        for bad in [
            vec![("limit", "0")],
            vec![("from", "yesterday")],
            vec![("format", "csv")],
            vec![("colour", "red")],
            vec![("from", "2026-12-02"), ("to", "2026-12-01")],
        ] {
            assert!(log_query(pairs(&bad), false).is_err(), "{bad:?}");
        }
        let q = log_query(pairs(&[("format", "jsonl"), ("bom", "true")]), true).unwrap();
        assert_eq!((q.format, q.bom), (Some(Format::Jsonl), true));
        assert!(log_query(pairs(&[("limit", "5")]), true).is_err());
    }
}
