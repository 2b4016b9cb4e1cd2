//! Alerts, maintenance windows and the duty roster under `/api/v1`: thin handlers over the
//! playbook's [`crate::playbook::PlaybookHandle`]. The state machine decides; these only
//! translate requests and errors.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::auth::Caller;
use super::{ApiError, ApiState};
use crate::model::{DeviceId, RoomId};
use crate::playbook::alerts::{Alert, AlertError, MaintenanceWindow, Target};
use crate::playbook::{AlertFilter, PlaybookHandle};

fn playbook(st: &ApiState) -> Result<&PlaybookHandle, ApiError> {
    st.playbook.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_playbook",
            "this daemon runs no playbook",
        )
    })
}

/// Who acts: the authenticated caller, or the person they act for (`by`, the technician on
/// the phone), recorded with the caller so the logbook shows both.
/// With the API open (no tokens: the local demo) nobody is authenticated, so `by` stands alone.
fn acting(caller: &Caller, by: Option<String>) -> String {
    match by {
        Some(by) if *caller == Caller::local() => by,
        Some(by) if by != caller.name => format!("{by} (via {})", caller.name),
        _ => caller.name.clone(),
    }
}

fn alert_error(e: AlertError) -> ApiError {
    let msg = e.to_string();
    match e {
        AlertError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "unknown_alert", msg),
        AlertError::NoWindow(_) => ApiError::new(StatusCode::NOT_FOUND, "unknown_window", msg),
        AlertError::AlreadyResolved(_) => {
            ApiError::new(StatusCode::CONFLICT, "already_resolved", msg)
        }
        AlertError::EmptyWindow => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_window", msg)
        }
    }
}

/// `GET /api/v1/alerts?state=&open=&room=&device=&class=&fault=`, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/alerts",
    tag = "alerts",
    summary = "Alerts, newest first",
    params(
        ("state" = Option<String>, Query, description = "raised, acknowledged or resolved"),
        ("open" = Option<bool>, Query, description = "Only open (raised or acknowledged) alerts, or only closed ones"),
        ("room" = Option<String>, Query, description = "Only this room"),
        ("device" = Option<String>, Query, description = "Only this device"),
        ("class" = Option<String>, Query, description = "Only this fault class"),
        ("fault" = Option<String>, Query, description = "Only this fault kind"),
    ),
    responses(
        (status = 200, description = "The alerts", body = serde_json::Value),
    )
)]
pub async fn list(
    State(st): State<ApiState>,
    q: Result<Query<AlertFilter>, QueryRejection>,
) -> Result<Json<Vec<Alert>>, ApiError> {
    let Query(f) = q.map_err(ApiError::from_query_rejection)?;
    Ok(Json(playbook(&st)?.alerts(&f)))
}

#[utoipa::path(
    get,
    path = "/api/v1/alerts/{id}",
    tag = "alerts",
    summary = "One alert",
    params(
        ("id" = u64, Path, description = "The alert's number"),
    ),
    responses(
        (status = 200, description = "The alert", body = serde_json::Value),
    )
)]
pub async fn get_one(
    State(st): State<ApiState>,
    id: Result<Path<u64>, PathRejection>,
) -> Result<Json<Alert>, ApiError> {
    let Path(id) = id.map_err(ApiError::from_path_rejection)?;
    playbook(&st)?
        .alert(id)
        .map(Json)
        .ok_or_else(|| alert_error(AlertError::NotFound(id)))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckBody {
    /// Who takes it, when the caller is acting for someone (the technician on the phone).
    pub by: Option<String>,
}

/// `POST /api/v1/alerts/{id}/ack` with an optional `{"by": "li"}`.
#[utoipa::path(
    post,
    path = "/api/v1/alerts/{id}/ack",
    tag = "alerts",
    summary = "Acknowledge an alert",
    params(
        ("id" = u64, Path, description = "The alert's number"),
    ),
    request_body = AckBody,
    responses(
        (status = 200, description = "The alert acknowledged", body = serde_json::Value),
    )
)]
pub async fn ack(
    State(st): State<ApiState>,
    caller: Caller,
    id: Result<Path<u64>, PathRejection>,
    body: Option<Json<AckBody>>,
) -> Result<Json<Alert>, ApiError> {
    let Path(id) = id.map_err(ApiError::from_path_rejection)?;
    let by = acting(&caller, body.and_then(|Json(b)| b.by));
    playbook(&st)?
        .acknowledge(id, &by)
        .map(Json)
        .map_err(alert_error)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResolveBody {
    pub note: String,
    pub by: Option<String>,
}

/// A resolve body as the handler checks it before the alert is looked up.
pub(crate) fn check_resolve(b: &ResolveBody) -> Result<(), ApiError> {
    if b.note.trim().is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "note_required",
            "resolving by hand needs a note saying what was done",
        ));
    }
    Ok(())
}

/// `POST /api/v1/alerts/{id}/resolve` with `{"note": "…"}`.
#[utoipa::path(
    post,
    path = "/api/v1/alerts/{id}/resolve",
    tag = "alerts",
    summary = "Resolve an alert by hand, with a note",
    params(
        ("id" = u64, Path, description = "The alert's number"),
    ),
    request_body = ResolveBody,
    responses(
        (status = 200, description = "The alert resolved", body = serde_json::Value),
    )
)]
pub async fn resolve(
    State(st): State<ApiState>,
    caller: Caller,
    id: Result<Path<u64>, PathRejection>,
    body: Result<Json<ResolveBody>, JsonRejection>,
) -> Result<Json<Alert>, ApiError> {
    let Path(id) = id.map_err(ApiError::from_path_rejection)?;
    let Json(b) = body.map_err(ApiError::from_json_rejection)?;
    check_resolve(&b)?;
    let by = acting(&caller, b.by);
    playbook(&st)?
        .resolve(id, &by, &b.note)
        .map(Json)
        .map_err(alert_error)
}

#[utoipa::path(
    get,
    path = "/api/v1/maintenance-windows",
    tag = "alerts",
    summary = "Maintenance windows in force or ahead",
    responses(
        (status = 200, description = "The windows", body = serde_json::Value),
    )
)]
pub async fn windows(State(st): State<ApiState>) -> Result<Json<Vec<MaintenanceWindow>>, ApiError> {
    Ok(Json(playbook(&st)?.windows()))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WindowBody {
    /// Exactly one of `room` and `device`.
    #[schema(value_type = Option<String>)]
    pub room: Option<RoomId>,
    #[schema(value_type = Option<String>)]
    pub device: Option<DeviceId>,
    /// Defaults to now.
    pub from: Option<DateTime<Utc>>,
    pub until: DateTime<Utc>,
    #[serde(default)]
    pub reason: String,
}

/// What a maintenance window silences: exactly one of a room and a device, as the handler
/// checks it before the device is looked up.
pub(crate) fn window_target(
    room: Option<RoomId>,
    device: Option<DeviceId>,
) -> Result<Target, ApiError> {
    match (room, device) {
        (Some(r), None) => Ok(Target::Room(r)),
        (None, Some(d)) => Ok(Target::Device(d)),
        _ => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_window",
            "name exactly one of room and device",
        )),
    }
}

/// `POST /api/v1/maintenance-windows`.
#[utoipa::path(
    post,
    path = "/api/v1/maintenance-windows",
    tag = "alerts",
    summary = "Silence a room's or device's alerts until a time",
    request_body = WindowBody,
    responses(
        (status = 201, description = "The window", body = serde_json::Value),
    )
)]
pub async fn add_window(
    State(st): State<ApiState>,
    caller: Caller,
    body: Result<Json<WindowBody>, JsonRejection>,
) -> Result<(StatusCode, Json<MaintenanceWindow>), ApiError> {
    let Json(b) = body.map_err(ApiError::from_json_rejection)?;
    let pb = playbook(&st)?;
    let target = window_target(b.room, b.device)?;
    if let Target::Device(d) = &target {
        if st.fleet.get(d.as_str()).is_none() {
            return Err(ApiError::unknown_device(d.as_str()));
        }
    }
    let from = b.from.unwrap_or_else(|| st.clock.now());
    pb.add_window(target, from, b.until, &b.reason, &caller.name)
        .map(|w| (StatusCode::CREATED, Json(w)))
        .map_err(alert_error)
}

/// `DELETE /api/v1/maintenance-windows/{id}`.
#[utoipa::path(
    delete,
    path = "/api/v1/maintenance-windows/{id}",
    tag = "alerts",
    summary = "End a maintenance window",
    params(
        ("id" = u64, Path, description = "The maintenance window's number"),
    ),
    responses(
        (status = 204, description = "The window is gone"),
    )
)]
pub async fn remove_window(
    State(st): State<ApiState>,
    caller: Caller,
    id: Result<Path<u64>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let Path(id) = id.map_err(ApiError::from_path_rejection)?;
    playbook(&st)?
        .remove_window(id, &caller.name)
        .map(|()| StatusCode::NO_CONTENT)
        .map_err(alert_error)
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OnDuty {
    pub at: DateTime<Utc>,
    pub on_duty: Vec<String>,
    pub escalation: Vec<String>,
}

/// `GET /api/v1/roster/on-duty`: who is on duty now, and whom an unanswered alert reaches.
#[utoipa::path(
    get,
    path = "/api/v1/roster/on-duty",
    tag = "alerts",
    summary = "Who is on duty now, and the escalation",
    responses(
        (status = 200, description = "Who is on duty", body = OnDuty),
    )
)]
pub async fn on_duty(State(st): State<ApiState>) -> Result<Json<OnDuty>, ApiError> {
    let pb = playbook(&st)?;
    Ok(Json(OnDuty {
        at: st.clock.now(),
        on_duty: pb.on_duty(),
        escalation: pb.roster().escalation.clone(),
    }))
}
