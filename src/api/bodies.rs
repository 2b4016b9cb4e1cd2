//! The JSON bodies of the API's write routes, read and checked as their handlers read and
//! check them before anything is looked up: one entry point for the `api_bodies` fuzz target,
//! built from the same functions the handlers call, so what it proves holds for the routes.
//!
//! Must not look anything up (devices, bookings, alerts), touch the daemon's state or decide
//! who may call a route: what needs the daemon stays in the handler.

use axum::Json;
use serde::de::DeserializeOwned;

use super::ApiError;

/// A route that takes a JSON body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyRoute {
    /// `POST /api/v1/devices/{id}/commands`
    DeviceCommand,
    /// `POST /api/v1/bookings`, `PATCH /api/v1/bookings/{id}`
    Booking,
    /// `POST /api/v1/rooms/{id}/selftest`
    SelfTest,
    /// `PATCH /api/v1/equipment/{device}`
    EquipmentEdit,
    /// `POST /api/v1/equipment/{device}/maintenance`
    Maintenance,
    /// `POST /api/v1/alerts/{id}/ack`
    AlertAck,
    /// `POST /api/v1/alerts/{id}/resolve`
    AlertResolve,
    /// `POST /api/v1/maintenance-windows`
    MaintenanceWindow,
    /// `POST /api/v1/session`
    Login,
}

impl BodyRoute {
    pub const ALL: [BodyRoute; 9] = [
        BodyRoute::DeviceCommand,
        BodyRoute::Booking,
        BodyRoute::SelfTest,
        BodyRoute::EquipmentEdit,
        BodyRoute::Maintenance,
        BodyRoute::AlertAck,
        BodyRoute::AlertResolve,
        BodyRoute::MaintenanceWindow,
        BodyRoute::Login,
    ];
}

/// Read `body` (sent as `application/json`) as `route`'s handler does: `Ok` when the handler
/// would go on to look things up, else the error it answers.
pub fn check_body(route: BodyRoute, body: &[u8]) -> Result<(), ApiError> {
    match route {
        BodyRoute::DeviceCommand => json::<crate::model::DeviceCommand>(body).map(drop),
        BodyRoute::Booking => json::<crate::schedule::book::BookingFields>(body).map(drop),
        BodyRoute::SelfTest => super::bookings::run_body(body).map(drop),
        BodyRoute::EquipmentEdit => {
            super::records::check_archive_fields(&json::<crate::records::ArchiveFields>(body)?)
        }
        BodyRoute::Maintenance => super::records::maintenance_body(json(body)?).map(drop),
        // The handler takes the body as optional: one it cannot read is no body.
        BodyRoute::AlertAck => {
            let _ = json::<super::alerts::AckBody>(body);
            Ok(())
        }
        BodyRoute::AlertResolve => super::alerts::check_resolve(&json(body)?),
        BodyRoute::MaintenanceWindow => {
            let w: super::alerts::WindowBody = json(body)?;
            super::alerts::window_target(w.room, w.device).map(drop)
        }
        BodyRoute::Login => json::<super::session::Login>(body).map(drop),
    }
}

/// The `Json` extractor's reading of a body whose content type is right.
fn json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    Json::<T>::from_bytes(body)
        .map(|Json(t)| t)
        .map_err(ApiError::from_json_rejection)
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::*;

    #[test]
    fn bodies_read_as_their_handlers_read_them() {
        let ok: &[(BodyRoute, &str)] = &[
            (BodyRoute::SelfTest, "  \n"),
            (BodyRoute::AlertAck, "not json"),
            (BodyRoute::AlertResolve, r#"{"note": "lamp swapped"}"#),
            (
                BodyRoute::MaintenanceWindow,
                r#"{"room": "r1", "until": "2026-12-07T10:00:00Z"}"#,
            ),
            (BodyRoute::Login, r#"{"token": "t"}"#),
        ];
        for (route, body) in ok {
            assert!(
                check_body(*route, body.as_bytes()).is_ok(),
                "{route:?} {body}"
            );
        }
        let bad: &[(BodyRoute, &str, StatusCode, &str)] = &[
            (
                BodyRoute::Login,
                "{",
                StatusCode::BAD_REQUEST,
                "malformed_json",
            ),
            (
                BodyRoute::Login,
                "{}",
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
            ),
            (
                BodyRoute::AlertResolve,
                r#"{"note": " "}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                "note_required",
            ),
            (
                BodyRoute::MaintenanceWindow,
                r#"{"room": "r1", "device": "p1", "until": "2026-12-07T10:00:00Z"}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_window",
            ),
            (
                BodyRoute::SelfTest,
                "[",
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
            ),
            (
                BodyRoute::Maintenance,
                r#"{"at": "noon"}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
            ),
            (
                BodyRoute::EquipmentEdit,
                r#"{"install_date": "May"}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
            ),
        ];
        for (route, body, status, code) in bad {
            let e = check_body(*route, body.as_bytes()).expect_err(body);
            assert_eq!((e.status, e.code), (*status, *code), "{route:?} {body}");
        }
    }
}
