//! The status API: axum REST under `/api/v1`, plus `/metrics` in Prometheus text format.
//!
//! Handlers are thin: they read device state from the runtime's `watch` channels and queue
//! commands on device handles; no business logic lives here. Every error is a 4xx/5xx with a
//! JSON body `{"error": code, "detail": text}`, including malformed paths and bodies and the
//! requests [`server`] refuses before the router. Who may call which route is decided in
//! one place, [`auth`], before any handler runs.

mod alerts;
pub mod auth;
mod bookings;
pub mod client;
mod error;
pub mod records;
pub mod rooms;
pub mod server;
pub mod session;
pub mod snapshot;
pub mod views;

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Extension, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;

use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::model::{DeviceCommand, Health};
use crate::runtime::{CommandOutcome, Fleet};

pub use error::ApiError;
pub use views::{DeviceDetail, DeviceSummary, ReadingView};

/// Largest request body accepted (commands are tiny).
pub(crate) const BODY_LIMIT: usize = 64 * 1024;

/// What handlers share. Cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    pub site: String,
    pub version: &'static str,
    pub clock: Clock,
    pub started: chrono::DateTime<chrono::Utc>,
    pub fleet: Arc<Fleet>,
    pub metrics: Metrics,
    /// The records store's condition, shown by `/api/v1/health` (absent in API-only tests).
    pub store: Option<tokio::sync::watch::Receiver<crate::records::writer::StoreStatus>>,
    /// Bookings, self-tests and the board (absent in API-only tests).
    pub schedule: Option<crate::schedule::ScheduleHandle>,
    /// The tokens accepted; the default is open (no tokens: the local demo).
    pub auth: Arc<auth::Auth>,
    /// The logbook and equipment archive (absent in API-only tests).
    pub records: Option<records::Records>,
    /// The site's rooms and time zone.
    pub layout: Arc<rooms::Layout>,
    /// The level watch's zone states (absent in API-only tests).
    pub protection: Option<crate::levelwatch::ProtectionBoard>,
    /// Alerts, maintenance windows and the roster (absent in API-only tests).
    pub playbook: Option<crate::playbook::PlaybookHandle>,
}

pub fn router(state: ApiState) -> Router {
    let snapshots = Arc::new(snapshot::Snapshots::new(&state));
    Router::new()
        .route("/api/v1/health", get(health))
        .route(
            "/api/v1/session",
            post(session::login).delete(session::logout),
        )
        .route("/api/v1/site", get(rooms::site))
        .route("/api/v1/rooms", get(rooms::list))
        .route("/api/v1/rooms/{id}", get(rooms::get_one))
        .route("/api/v1/devices", get(devices))
        .route("/api/v1/devices/{id}", get(device))
        .route("/api/v1/devices/{id}/commands", post(command))
        .route(
            "/api/v1/bookings",
            get(bookings::list).post(bookings::create),
        )
        .route(
            "/api/v1/bookings/{id}",
            get(bookings::get_one)
                .patch(bookings::update)
                .delete(bookings::cancel),
        )
        .route("/api/v1/rooms/{id}/selftest", post(bookings::run_selftest))
        .route("/api/v1/selftests", get(bookings::selftests))
        .route("/api/v1/board", get(bookings::board))
        .route("/api/v1/logbook", get(records::logbook))
        .route("/api/v1/logbook/export", get(records::export))
        .route("/api/v1/equipment", get(records::equipment))
        .route(
            "/api/v1/equipment/{device}",
            get(records::equipment_one).patch(records::edit_equipment),
        )
        .route(
            "/api/v1/equipment/{device}/maintenance",
            post(records::add_maintenance),
        )
        .route("/api/v1/alerts", get(alerts::list))
        .route("/api/v1/alerts/{id}", get(alerts::get_one))
        .route("/api/v1/alerts/{id}/ack", post(alerts::ack))
        .route("/api/v1/alerts/{id}/resolve", post(alerts::resolve))
        .route(
            "/api/v1/maintenance-windows",
            get(alerts::windows).post(alerts::add_window),
        )
        .route(
            "/api/v1/maintenance-windows/{id}",
            axum::routing::delete(alerts::remove_window),
        )
        .route("/api/v1/roster/on-duty", get(alerts::on_duty))
        .route("/metrics", get(metrics))
        // After routing, so the table in `auth` sees the route as declared.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Through the extractor, so an oversized body is a JSON 413 like every other error.
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .layer(Extension(snapshots))
        .with_state(state)
}

#[derive(Serialize)]
struct HealthBody {
    status: &'static str,
    version: &'static str,
    site: String,
    now: chrono::DateTime<chrono::Utc>,
    uptime_secs: i64,
    devices: std::collections::BTreeMap<&'static str, usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    store: Option<serde_json::Value>,
}

/// The store as the health answer shows it: `ok`, `starting`, `stopped`, or `failing` with
/// the error, since when, and how many entries wait or were lost.
fn store_view(s: &crate::records::writer::StoreStatus) -> serde_json::Value {
    use crate::records::writer::StoreStatus;
    match s {
        StoreStatus::Starting => serde_json::json!({ "state": "starting" }),
        StoreStatus::Ok => serde_json::json!({ "state": "ok" }),
        StoreStatus::Stopped => serde_json::json!({ "state": "stopped" }),
        StoreStatus::Failing {
            error,
            since,
            pending,
            dropped,
        } => serde_json::json!({
            "state": "failing",
            "error": error,
            "since": since,
            "pending": pending,
            "dropped": dropped,
        }),
    }
}

async fn health(State(st): State<ApiState>) -> Json<HealthBody> {
    let now = st.clock.now();
    let mut counts = std::collections::BTreeMap::new();
    for h in st.fleet.handles() {
        *counts.entry(h.state().health.as_str()).or_insert(0) += 1;
    }
    let store = st.store.as_ref().map(|rx| rx.borrow().clone());
    let failing = matches!(
        store,
        Some(crate::records::writer::StoreStatus::Failing { .. })
    );
    Json(HealthBody {
        status: if failing { "degraded" } else { "ok" },
        store: store.as_ref().map(store_view),
        version: st.version,
        site: st.site.clone(),
        now,
        uptime_secs: (now - st.started).num_seconds(),
        devices: counts,
    })
}

/// `GET /api/v1/devices`: every device's summary, from the list's snapshot.
async fn devices(
    State(st): State<ApiState>,
    Extension(snapshots): Extension<Arc<snapshot::Snapshots>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let body = snapshots
        .get(snapshot::List::Devices, "", st.clock.now(), |now| {
            let list: Vec<DeviceSummary> = st
                .fleet
                .handles()
                .map(|h| DeviceSummary::from_state(&h.watch().borrow(), now))
                .collect();
            snapshot::Built::of(&list, None)
        })
        .await?;
    Ok(body.answer(&headers))
}

async fn device(
    State(st): State<ApiState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<DeviceDetail>, ApiError> {
    let Path(id) = id.map_err(ApiError::from_path_rejection)?;
    let h = st
        .fleet
        .get(&id)
        .ok_or_else(|| ApiError::unknown_device(&id))?;
    let (s, now) = (h.state(), st.clock.now());
    let mut detail = DeviceDetail::from_state(&s, now).with_meters(&s, h.meters(), now);
    detail.catalogue = Some(views::Catalogue::of(h));
    if let Some(board) = &st.protection {
        detail = detail.with_protection(board.zones(&h.id));
    }
    Ok(Json(detail))
}

#[derive(Serialize)]
struct CommandAccepted {
    device: String,
    command: &'static str,
    result: &'static str,
    /// What the command left on the device when that is known (a whole-degree unit holds 23
    /// after `set_setpoint 22.5`): the reading's key, value and unit.
    #[serde(skip_serializing_if = "Option::is_none")]
    applied: Option<crate::driver::Applied>,
}

async fn command(
    State(st): State<ApiState>,
    caller: auth::Caller,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<DeviceCommand>, JsonRejection>,
) -> Result<Json<CommandAccepted>, ApiError> {
    let Path(id) = id.map_err(ApiError::from_path_rejection)?;
    let Json(cmd) = body.map_err(ApiError::from_json_rejection)?;
    let h = st
        .fleet
        .get(&id)
        .ok_or_else(|| ApiError::unknown_device(&id))?;
    let name = cmd.name();
    let detail = serde_json::to_value(&cmd).unwrap_or_default();
    let room = h.state().room.to_string();
    let outcome = h.try_command(cmd).await;
    record_command(&st, &caller, &id, &room, name, detail, &outcome);
    let applied = outcome_to_api(outcome, st.clock.now())?;
    Ok(Json(CommandAccepted {
        device: id,
        command: name,
        result: "ok",
        applied,
    }))
}

/// A device command in the logbook, with who gave it and how it went. Queued, not awaited:
/// a store in trouble must not hold a projector's power-on.
fn record_command(
    st: &ApiState,
    caller: &auth::Caller,
    device: &str,
    room: &str,
    name: &str,
    command: serde_json::Value,
    outcome: &CommandOutcome,
) {
    let Some(records) = &st.records else {
        return;
    };
    let ok = matches!(outcome, CommandOutcome::Done { .. });
    let entry = crate::records::NewEntry::new(
        st.clock.now(),
        "device_command",
        caller.actor(),
        format!("{name} by {}: {outcome}", caller.name),
    )
    .device(device)
    .room(room)
    .data(serde_json::json!({ "command": command, "ok": ok }));
    if let Err(e) = records.logbook.record(entry) {
        tracing::warn!(device, error = %e, "device command not written to the logbook");
    }
}

/// A command's outcome as the API answers it: the applied value, or a status and code.
fn outcome_to_api(
    outcome: CommandOutcome,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Option<crate::driver::Applied>, ApiError> {
    let message = outcome.to_string();
    let (status, code) = match outcome {
        CommandOutcome::Done { applied } => return Ok(applied),
        CommandOutcome::Busy {
            until: Some(until), ..
        } => {
            let secs = (until - now).num_seconds().max(1) as u64;
            return Err(
                ApiError::new(StatusCode::CONFLICT, "device_busy", message).retry_at(until, secs)
            );
        }
        CommandOutcome::QueueFull => (StatusCode::SERVICE_UNAVAILABLE, "queue_full"),
        CommandOutcome::Unsupported { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "unsupported"),
        CommandOutcome::Busy { .. } => (StatusCode::CONFLICT, "device_busy"),
        CommandOutcome::Refused { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "refused"),
        CommandOutcome::Rejected { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "rejected"),
        CommandOutcome::Unreachable | CommandOutcome::Stopped => {
            (StatusCode::SERVICE_UNAVAILABLE, "device_unreachable")
        }
        CommandOutcome::TimedOut { .. } => (StatusCode::GATEWAY_TIMEOUT, "device_timeout"),
        CommandOutcome::Failed { .. } => (StatusCode::BAD_GATEWAY, "command_failed"),
    };
    Err(ApiError::new(status, code, message))
}

async fn metrics(State(st): State<ApiState>) -> Response {
    // Health gauges are computed on scrape from the live state.
    for h in [
        Health::Unknown,
        Health::Ok,
        Health::Busy,
        Health::Degraded,
        Health::Faulted,
        Health::Unreachable,
    ] {
        let n = st.fleet.handles().filter(|d| d.state().health == h).count();
        st.metrics
            .set_gauge("avwarden_devices", Some(("health", h.as_str())), n as f64);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(),
    )
        .into_response()
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this endpoint",
    )
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}
