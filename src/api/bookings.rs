//! Bookings, self-tests and the readiness board under `/api/v1`: thin handlers over the
//! schedule's [`crate::schedule::ScheduleHandle`]. A confidential booking's title is withheld
//! in every answer (the records keep it).

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use super::auth::Caller;
use super::snapshot::{Built, Snapshots};
use super::{ApiError, ApiState};
use crate::model::{Booking, BookingId, Needs, Readiness, Reason, RoomId, Verdict};
use crate::schedule::book::{BookingError, BookingFields};
use crate::schedule::{RunError, ScheduleHandle};

/// A booking as the API shows it: the title withheld when confidential, the newest verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BookingView {
    pub id: BookingId,
    pub room: RoomId,
    pub title: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub organiser: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub department: Option<String>,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub attendees: u32,
    pub needs: Needs,
    pub important: bool,
    pub confidential: bool,
    pub status: crate::model::BookingStatus,
    pub source: crate::model::BookingSource,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<VerdictView>,
}

/// A verdict as the board shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VerdictView {
    pub readiness: Readiness,
    pub kind: crate::model::TestKind,
    pub checked_at: DateTime<Utc>,
    pub reasons: Vec<Reason>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alternative: Option<RoomId>,
}

impl From<&Verdict> for VerdictView {
    fn from(v: &Verdict) -> Self {
        Self {
            readiness: v.readiness,
            kind: v.kind,
            checked_at: v.finished_at,
            reasons: v.reasons.clone(),
            alternative: v.alternative.clone(),
        }
    }
}

impl BookingView {
    pub fn of(b: &Booking, verdict: Option<&Verdict>) -> Self {
        Self {
            id: b.id.clone(),
            room: b.room.clone(),
            title: b.public_title().to_owned(),
            organiser: if b.confidential {
                None
            } else {
                b.organiser.clone()
            },
            department: b.department.clone(),
            start: b.start,
            end: b.end,
            attendees: b.attendees,
            needs: b.needs.clone(),
            important: b.important,
            confidential: b.confidential,
            status: b.status,
            source: b.source.clone(),
            verdict: verdict.map(VerdictView::from),
        }
    }
}

fn schedule(st: &ApiState) -> Result<&ScheduleHandle, ApiError> {
    st.schedule.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_schedule",
            "this daemon runs no schedule",
        )
    })
}

fn booking_error(e: BookingError) -> ApiError {
    let msg = e.to_string();
    match e {
        BookingError::UnknownBooking(_) => {
            ApiError::new(StatusCode::NOT_FOUND, "unknown_booking", msg)
        }
        BookingError::UnknownRoom(_) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "unknown_room", msg)
        }
        BookingError::Overlaps { .. } => ApiError::new(StatusCode::CONFLICT, "room_booked", msg),
        BookingError::FromFeed(_) => ApiError::new(StatusCode::CONFLICT, "from_feed", msg),
        BookingError::Store(_) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", msg)
        }
        BookingError::EndBeforeStart { .. }
        | BookingError::TooLong(_)
        | BookingError::OverCapacity { .. }
        | BookingError::Invalid(_) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_booking", msg)
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    room: Option<RoomId>,
}

#[utoipa::path(
    get,
    path = "/api/v1/bookings",
    tag = "bookings",
    summary = "Bookings, each with its self-test verdict",
    params(
        ("from" = Option<String>, Query, description = "From this instant (RFC 3339)"),
        ("to" = Option<String>, Query, description = "Until this instant (RFC 3339)"),
        ("room" = Option<String>, Query, description = "Only this room"),
    ),
    responses(
        (status = 200, description = "The bookings", body = serde_json::Value),
    )
)]
pub async fn list(
    State(st): State<ApiState>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Vec<BookingView>>, ApiError> {
    let Query(q) = q.map_err(ApiError::from_query_rejection)?;
    let sched = schedule(&st)?;
    let now = st.clock.now();
    let from = q.from.unwrap_or(now);
    let to = q.to.unwrap_or(from + Duration::days(7));
    if to <= from {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_window",
            "`to` must be after `from`",
        ));
    }
    Ok(Json(
        sched
            .book
            .between(from, to)
            .iter()
            .filter(|b| q.room.as_ref().is_none_or(|r| &b.room == r))
            .map(|b| BookingView::of(b, sched.book.verdict(&b.id).as_ref()))
            .collect(),
    ))
}

#[utoipa::path(
    get,
    path = "/api/v1/bookings/{id}",
    tag = "bookings",
    summary = "One booking",
    params(
        ("id" = String, Path, description = "The booking's id"),
    ),
    responses(
        (status = 200, description = "The booking", body = serde_json::Value),
    )
)]
pub async fn get_one(
    State(st): State<ApiState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<BookingView>, ApiError> {
    let Path(id) = id.map_err(ApiError::from_path_rejection)?;
    let sched = schedule(&st)?;
    let id = BookingId::new(id);
    let b = sched
        .book
        .get(&id)
        .ok_or_else(|| booking_error(BookingError::UnknownBooking(id.to_string())))?;
    Ok(Json(BookingView::of(&b, sched.book.verdict(&id).as_ref())))
}

#[utoipa::path(
    post,
    path = "/api/v1/bookings",
    tag = "bookings",
    summary = "Add a booking",
    request_body = serde_json::Value,
    responses(
        (status = 201, description = "The booking made", body = serde_json::Value),
    )
)]
pub async fn create(
    State(st): State<ApiState>,
    caller: Caller,
    body: Result<Json<BookingFields>, JsonRejection>,
) -> Result<(StatusCode, Json<BookingView>), ApiError> {
    let Json(f) = body.map_err(ApiError::from_json_rejection)?;
    let sched = schedule(&st)?;
    let b = sched
        .book
        .create(f, caller.actor(), st.clock.now())
        .await
        .map_err(booking_error)?;
    Ok((StatusCode::CREATED, Json(BookingView::of(&b, None))))
}

#[utoipa::path(
    patch,
    path = "/api/v1/bookings/{id}",
    tag = "bookings",
    summary = "Change a booking",
    params(
        ("id" = String, Path, description = "The booking's id"),
    ),
    request_body = serde_json::Value,
    responses(
        (status = 200, description = "The booking changed", body = serde_json::Value),
    )
)]
pub async fn update(
    State(st): State<ApiState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<BookingFields>, JsonRejection>,
) -> Result<Json<BookingView>, ApiError> {
    let Path(id) = id.map_err(ApiError::from_path_rejection)?;
    let Json(f) = body.map_err(ApiError::from_json_rejection)?;
    let sched = schedule(&st)?;
    let id = BookingId::new(id);
    let b = sched
        .book
        .update(&id, f, caller.actor(), st.clock.now())
        .await
        .map_err(booking_error)?;
    Ok(Json(BookingView::of(&b, sched.book.verdict(&id).as_ref())))
}

#[utoipa::path(
    delete,
    path = "/api/v1/bookings/{id}",
    tag = "bookings",
    summary = "Cancel a booking",
    params(
        ("id" = String, Path, description = "The booking's id"),
    ),
    responses(
        (status = 200, description = "The booking cancelled", body = serde_json::Value),
    )
)]
pub async fn cancel(
    State(st): State<ApiState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<BookingView>, ApiError> {
    let Path(id) = id.map_err(ApiError::from_path_rejection)?;
    let sched = schedule(&st)?;
    let id = BookingId::new(id);
    let b = sched
        .book
        .cancel(&id, caller.actor(), st.clock.now())
        .await
        .map_err(booking_error)?;
    Ok(Json(BookingView::of(&b, sched.book.verdict(&id).as_ref())))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunBody {
    #[schema(value_type = Option<String>)]
    booking: Option<BookingId>,
}

/// A self-test request's body, read before the room is looked up.
pub(crate) fn run_body(body: &[u8]) -> Result<RunBody, ApiError> {
    // The body is optional: none (or whitespace) runs the room's test without a booking.
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(RunBody::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            e.to_string(),
        )
    })
}

/// `POST /api/v1/rooms/{id}/selftest`: run the room's self-test now (for a booking, when one
/// is named) and answer its verdict.
#[utoipa::path(
    post,
    path = "/api/v1/rooms/{id}/selftest",
    tag = "bookings",
    summary = "Run the room's self-test now (for a booking, when one is named)",
    params(
        ("id" = String, Path, description = "The room's id"),
    ),
    request_body = RunBody,
    responses(
        (status = 200, description = "The verdict", body = serde_json::Value),
    )
)]
pub async fn run_selftest(
    State(st): State<ApiState>,
    id: Result<Path<String>, PathRejection>,
    body: axum::body::Bytes,
) -> Result<Json<Verdict>, ApiError> {
    let Path(room) = id.map_err(ApiError::from_path_rejection)?;
    let body = run_body(&body)?;
    let sched = schedule(&st)?;
    let v = sched
        .run_now(RoomId::new(room), body.booking)
        .await
        .map_err(|e| {
            let msg = e.to_string();
            match e {
                RunError::UnknownRoom(_) => {
                    ApiError::new(StatusCode::NOT_FOUND, "unknown_room", msg)
                }
                RunError::UnknownBooking(_) => {
                    ApiError::new(StatusCode::NOT_FOUND, "unknown_booking", msg)
                }
                RunError::Stopped => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "stopped", msg),
            }
        })?;
    Ok(Json(v))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelftestQuery {
    room: Option<RoomId>,
    booking: Option<BookingId>,
}

/// `GET /api/v1/selftests`: the newest verdict of each booking and room still in memory.
#[utoipa::path(
    get,
    path = "/api/v1/selftests",
    tag = "bookings",
    summary = "The newest verdict of each booking and room",
    params(
        ("room" = Option<String>, Query, description = "Only this room"),
        ("booking" = Option<String>, Query, description = "Only this booking"),
    ),
    responses(
        (status = 200, description = "The verdicts", body = serde_json::Value),
    )
)]
pub async fn selftests(
    State(st): State<ApiState>,
    q: Result<Query<SelftestQuery>, QueryRejection>,
) -> Result<Json<Vec<Verdict>>, ApiError> {
    let Query(q) = q.map_err(ApiError::from_query_rejection)?;
    let sched = schedule(&st)?;
    let mut out = sched.book.verdicts();
    out.retain(|v| {
        q.room.as_ref().is_none_or(|r| &v.room == r)
            && q.booking
                .as_ref()
                .is_none_or(|b| v.booking.as_ref() == Some(b))
    });
    Ok(Json(out))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoardQuery {
    limit: Option<usize>,
}

/// `GET /api/v1/board`: the next bookings across all rooms by time, each with its verdict,
/// reasons and alternative room; a running booking first.
#[utoipa::path(
    get,
    path = "/api/v1/board",
    tag = "bookings",
    summary = "The next bookings across all rooms, with verdicts",
    params(
        ("limit" = Option<usize>, Query, description = "How many (1 to 500; default 50)"),
    ),
    responses(
        (status = 200, description = "The board", body = serde_json::Value),
    )
)]
pub async fn board(
    State(st): State<ApiState>,
    Extension(snapshots): Extension<Arc<Snapshots>>,
    headers: HeaderMap,
    q: Result<Query<BoardQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(ApiError::from_query_rejection)?;
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let sched = schedule(&st)?;
    let body = snapshots
        .board(&limit.to_string(), st.clock.now(), |now| {
            let upcoming: Vec<Booking> = sched
                .book
                .upcoming(now)
                .into_iter()
                .filter(|b| b.is_active())
                .collect();
            let views: Vec<BookingView> = upcoming
                .iter()
                .take(limit)
                .map(|b| BookingView::of(b, sched.book.verdict(&b.id).as_ref()))
                .collect();
            // A booking leaves the board when it ends (and lets the next one in).
            let valid_until = upcoming.iter().map(|b| b.end).min();
            Built::of(&views, valid_until)
        })
        .await?;
    Ok(body.answer(&headers))
}
