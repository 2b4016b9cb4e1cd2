//! The status API: axum REST under `/api/v1`, plus `/metrics` in Prometheus text format.
//!
//! Handlers are thin: they read device state from the runtime's `watch` channels and queue
//! commands on device handles; no business logic lives here. Every error is a 4xx/5xx with a
//! JSON body `{"error": code, "detail": text}`, including malformed paths and bodies and the
//! requests [`server`] refuses before the router. Who may call which route is decided in
//! one place, [`auth`], before any handler runs.

mod alerts;
pub mod auth;
pub mod bodies;
pub mod bookings;
pub mod client;
mod error;
pub mod events;
pub mod fleet;
pub mod openapi;
pub mod records;
pub mod rooms;
mod scrape;
pub mod server;
pub mod session;
pub mod snapshot;
pub mod views;

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Extension, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::model::DeviceCommand;
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
    pub layout: rooms::LiveLayout,
    /// The level watch's zone states (absent in API-only tests).
    pub protection: Option<crate::levelwatch::ProtectionBoard>,
    /// Alerts, maintenance windows and the roster (absent in API-only tests).
    pub playbook: Option<crate::playbook::PlaybookHandle>,
    /// The numbered live events behind `/api/v1/events` (absent in API-only tests).
    pub events: Option<events::EventLog>,
    /// The dashboard's recent battery and temperature samples (absent in API-only tests).
    pub history: Option<crate::dashboard::History>,
    /// Re-reads the site config (`POST /api/v1/reload`; absent in API-only tests).
    pub reload: Option<crate::reload::ReloadHandle>,
    /// The buildings a central daemon follows (`[aggregate]`; absent otherwise).
    pub aggregate: Option<crate::aggregate::FleetHandle>,
}

/// The JSON API: each route registered with its `#[utoipa::path]` documentation. A new
/// route goes here with `routes!` (handlers of one path in one call), gets a rule in
/// `auth::ROUTES` and a case in `tests/it/api_auth.rs`.
fn api_routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(health))
        .routes(routes!(session::login, session::logout))
        .routes(routes!(rooms::site))
        .routes(routes!(rooms::list))
        .routes(routes!(rooms::get_one))
        .routes(routes!(devices))
        .routes(routes!(device))
        .routes(routes!(command))
        .routes(routes!(bookings::list, bookings::create))
        .routes(routes!(
            bookings::get_one,
            bookings::update,
            bookings::cancel
        ))
        .routes(routes!(bookings::run_selftest))
        .routes(routes!(bookings::selftests))
        .routes(routes!(bookings::board))
        .routes(routes!(records::logbook))
        .routes(routes!(records::export))
        .routes(routes!(records::equipment))
        .routes(routes!(records::equipment_one, records::edit_equipment))
        .routes(routes!(records::add_maintenance))
        .routes(routes!(alerts::list))
        .routes(routes!(alerts::get_one))
        .routes(routes!(alerts::ack))
        .routes(routes!(alerts::resolve))
        .routes(routes!(alerts::windows, alerts::add_window))
        .routes(routes!(alerts::remove_window))
        .routes(routes!(alerts::on_duty))
        .routes(routes!(events::stream))
        .routes(routes!(records::deliveries))
        .routes(routes!(reload))
        .routes(routes!(fleet::buildings))
        .routes(routes!(fleet::board))
        .routes(routes!(fleet::alerts))
}

/// The OpenAPI document `GET /openapi.json` serves: the routes [`router`] registers under
/// `/api/`, each with its required role.
pub fn openapi() -> utoipa::openapi::OpenApi {
    openapi::finish(api_routes().split_for_parts().1)
}

pub fn router(state: ApiState) -> Router {
    let snapshots = Arc::new(snapshot::Snapshots::new(&state));
    let (api, doc) = api_routes().split_for_parts();
    let doc = openapi::finish(doc);
    // Outside `/api/`, not the JSON API: undocumented by the rule in `openapi`.
    api.route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi::serve(&doc)))
        .merge(crate::dashboard::routes())
        // After routing, so the table in `auth` sees the route as declared.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .layer(axum::middleware::from_fn(
            crate::dashboard::redirect_to_login,
        ))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Through the extractor, so an oversized body is a JSON 413 like every other error.
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .layer(Extension(snapshots))
        .with_state(state)
}

#[derive(Serialize, utoipa::ToSchema)]
struct HealthBody {
    /// `ok`, or `degraded` while the store is failing.
    status: &'static str,
    version: &'static str,
    /// The commit the binary was built from (`build.rs`).
    commit: &'static str,
    site: String,
    now: chrono::DateTime<chrono::Utc>,
    uptime_secs: i64,
    /// Devices by health state.
    #[schema(value_type = std::collections::BTreeMap<String, usize>)]
    devices: std::collections::BTreeMap<&'static str, usize>,
    /// The records store: `{"state": "ok"}`, or `failing` with the error and counts.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
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

#[utoipa::path(
    get,
    path = "/api/v1/health",
    tag = "status",
    summary = "The daemon's health: devices by state, the store's condition",
    responses(
        (status = 200, description = "The daemon's condition", body = HealthBody),
    )
)]
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
        commit: env!("AVWARDEN_COMMIT"),
        site: st.site.clone(),
        now,
        uptime_secs: (now - st.started).num_seconds(),
        devices: counts,
    })
}

/// `GET /api/v1/devices`: every device's summary, from the list's snapshot.
#[utoipa::path(
    get,
    path = "/api/v1/devices",
    tag = "devices",
    summary = "Every device's health and last contact",
    responses(
        (status = 200, description = "The devices", body = Vec<views::DeviceSummary>),
    )
)]
async fn devices(
    State(st): State<ApiState>,
    Extension(snapshots): Extension<Arc<snapshot::Snapshots>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let body = snapshots
        .devices(st.clock.now(), |now, fragments| {
            let list = st.fleet.handles().map(|h| {
                let s = DeviceSummary::from_state(&h.watch().borrow(), now);
                (s.id.clone(), s)
            });
            let list = fragments.assemble(list, DeviceSummary::blank_contact)?;
            Ok(snapshot::Built::assembled(list, None))
        })
        .await?;
    Ok(body.answer(&headers))
}

#[utoipa::path(
    get,
    path = "/api/v1/devices/{id}",
    tag = "devices",
    summary = "One device: its points, faults, link, catalogue and zone protection",
    params(
        ("id" = String, Path, description = "The device's id"),
    ),
    responses(
        (status = 200, description = "The device", body = serde_json::Value),
    )
)]
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
    detail.catalogue = Some(views::Catalogue::of(&h));
    if let Some(board) = &st.protection {
        detail = detail.with_protection(board.zones(&h.id));
    }
    Ok(Json(detail))
}

#[derive(Serialize, utoipa::ToSchema)]
struct CommandAccepted {
    device: String,
    command: &'static str,
    result: &'static str,
    /// What the command left on the device when that is known (a whole-degree unit holds 23
    /// after `set_setpoint 22.5`): the reading's key, value and unit.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    applied: Option<crate::driver::Applied>,
}

#[utoipa::path(
    post,
    path = "/api/v1/devices/{id}/commands",
    tag = "devices",
    summary = "Queue a command on a device and wait for its outcome",
    params(
        ("id" = String, Path, description = "The device's id"),
    ),
    request_body = serde_json::Value,
    responses(
        (status = 200, description = "The device did it", body = CommandAccepted),
    )
)]
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

/// `POST /api/v1/reload`: re-read the site config. 200 with what changed (and what waits for
/// a restart); 422 with every located error when the config is refused, nothing changed.
#[utoipa::path(
    post,
    path = "/api/v1/reload",
    tag = "status",
    summary = "Re-read the site config and apply what changed",
    responses(
        (status = 200, description = "Added, removed, changed devices and rooms, and what needs a restart", body = serde_json::Value),
        (status = 422, description = "The config has errors: every located error; nothing changed", body = serde_json::Value),
    )
)]
async fn reload(State(st): State<ApiState>) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let Some(reload) = &st.reload else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "reload_unavailable",
            "this server cannot reload a config",
        ));
    };
    match reload.reload().await {
        Ok(report) => Ok(Json(report).into_response()),
        Err(crate::reload::ReloadError::Refused { errors }) => {
            let body = serde_json::json!({
                "error": "config_refused",
                "detail": format!(
                    "the site config has {} error(s); the running config stays",
                    errors.len()
                ),
                "errors": errors,
            });
            Ok((StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response())
        }
        Err(e) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "reload_unavailable",
            e.to_string(),
        )),
    }
}

/// A device command in the logbook, with who gave it and how it went. Queued, not awaited:
/// a store in trouble must not hold a projector's power-on.
pub(crate) fn record_command(
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
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        scrape::render(&st),
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
