//! `/api/v1/fleet/…`: what a central daemon in aggregate mode knows of its buildings, each
//! with its staleness. Thin, read-only handlers over [`crate::aggregate::FleetHandle`].
//!
//! They must not change anything, and a daemon without `[aggregate]` answers them with 404
//! (JSON), as it would any route it does not serve.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;

use super::{ApiError, ApiState};
use crate::aggregate::state::{BuildingView, FleetAlert, FleetRoom};
use crate::aggregate::FleetHandle;

fn fleet(st: &ApiState) -> Result<&FleetHandle, ApiError> {
    st.aggregate.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_aggregate",
            "this daemon is a building's, not a central one ([aggregate])",
        )
    })
}

/// Every answer says whether the central daemon itself can hear the broker: while it cannot,
/// every building is stale (`broker_down`).
#[derive(Serialize)]
pub struct Fleet<T> {
    pub broker_up: bool,
    #[serde(flatten)]
    pub body: T,
}

#[derive(Serialize)]
pub struct Buildings {
    pub buildings: Vec<BuildingView>,
}

#[derive(Serialize)]
pub struct Rooms {
    pub rooms: Vec<FleetRoom>,
}

#[derive(Serialize)]
pub struct Alerts {
    pub alerts: Vec<FleetAlert>,
}

/// `GET /api/v1/fleet/buildings`.
#[utoipa::path(
    get,
    path = "/api/v1/fleet/buildings",
    tag = "fleet",
    summary = "Each building: online, last seen, stale, rooms by readiness, devices by health, open alerts by class",
    responses(
        (status = 200, description = "The buildings", body = serde_json::Value),
        (status = 404, description = "Not a central daemon", body = serde_json::Value),
    )
)]
pub async fn buildings(State(st): State<ApiState>) -> Result<Json<Fleet<Buildings>>, ApiError> {
    let f = fleet(&st)?;
    Ok(Json(Fleet {
        broker_up: f.broker_up(),
        body: Buildings {
            buildings: f.buildings(),
        },
    }))
}

/// `GET /api/v1/fleet/board`.
#[utoipa::path(
    get,
    path = "/api/v1/fleet/board",
    tag = "fleet",
    summary = "Every building's rooms with their readiness and the building's staleness",
    responses(
        (status = 200, description = "The rooms", body = serde_json::Value),
        (status = 404, description = "Not a central daemon", body = serde_json::Value),
    )
)]
pub async fn board(State(st): State<ApiState>) -> Result<Json<Fleet<Rooms>>, ApiError> {
    let f = fleet(&st)?;
    Ok(Json(Fleet {
        broker_up: f.broker_up(),
        body: Rooms { rooms: f.board() },
    }))
}

/// `GET /api/v1/fleet/alerts`.
#[utoipa::path(
    get,
    path = "/api/v1/fleet/alerts",
    tag = "fleet",
    summary = "Every building's open alerts, newest first",
    responses(
        (status = 200, description = "The alerts", body = serde_json::Value),
        (status = 404, description = "Not a central daemon", body = serde_json::Value),
    )
)]
pub async fn alerts(State(st): State<ApiState>) -> Result<Json<Fleet<Alerts>>, ApiError> {
    let f = fleet(&st)?;
    Ok(Json(Fleet {
        broker_up: f.broker_up(),
        body: Alerts { alerts: f.alerts() },
    }))
}
