//! The site and its rooms under `/api/v1`: what a technician's dashboard shows per room —
//! its devices with their health, the booking running and the next one (a confidential
//! title withheld), the newest self-test verdict, and each DSP's zone protection.
//!
//! Reads the runtime's device states, the schedule's book and the level watch's board;
//! decides nothing but a room's overall state, which is its worst device's.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use axum::extract::rejection::PathRejection;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use serde::Serialize;

use super::bookings::{BookingView, VerdictView};
use super::snapshot::{Built, Snapshots};
use super::views::{DeviceSummary, ProtectionView};
use super::{ApiError, ApiState};
use crate::config::Room;
use crate::model::{Booking, Health, RoomId};

/// The rooms the site config names, for the views (the runtime knows only devices).
#[derive(Debug, Clone, Default)]
pub struct Layout {
    pub time_zone: String,
    pub rooms: Vec<Room>,
}

/// The layout as the running config has it: a config reload replaces it whole, and a request
/// reads one consistent copy.
#[derive(Debug, Clone, Default)]
pub struct LiveLayout {
    layout: Arc<RwLock<Arc<Layout>>>,
    /// Bumped by every [`LiveLayout::set`]: the rooms list's snapshot rebuilds on it.
    generation: Arc<std::sync::atomic::AtomicU64>,
}

impl LiveLayout {
    pub fn new(layout: Layout) -> Self {
        Self {
            layout: Arc::new(RwLock::new(Arc::new(layout))),
            generation: Arc::default(),
        }
    }

    pub fn get(&self) -> Arc<Layout> {
        self.layout
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set(&self, layout: Layout) {
        *self.layout.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(layout);
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Changes whenever the layout is replaced.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl From<Layout> for LiveLayout {
    fn from(layout: Layout) -> Self {
        Self::new(layout)
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SiteView {
    pub name: String,
    pub time_zone: String,
    pub version: &'static str,
    pub now: chrono::DateTime<chrono::Utc>,
    pub rooms: usize,
    pub devices: usize,
    /// Whether the API asks for tokens (false: a local demo, open on loopback).
    pub tokens_required: bool,
}

/// `GET /api/v1/site`.
#[utoipa::path(
    get,
    path = "/api/v1/site",
    tag = "rooms",
    summary = "The site: name, time zone, rooms",
    responses(
        (status = 200, description = "The site", body = SiteView),
    )
)]
pub async fn site(State(st): State<ApiState>) -> Json<SiteView> {
    let layout = st.layout.get();
    Json(SiteView {
        name: st.site.clone(),
        time_zone: layout.time_zone.clone(),
        version: st.version,
        now: st.clock.now(),
        rooms: layout.rooms.len(),
        devices: st.fleet.handles().count(),
        tokens_required: st.auth.is_enforced(),
    })
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoomView {
    pub id: RoomId,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub building: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub floor: Option<i32>,
    pub capacity: u32,
    /// The worst health among its devices (`unknown` for a room without devices).
    pub state: Health,
    pub devices: Vec<DeviceSummary>,
    pub current_booking: Option<BookingView>,
    pub next_booking: Option<BookingView>,
    /// The newest self-test verdict of the room.
    pub verdict: Option<VerdictView>,
    /// Each protected zone's level-watch state, by device id then zone id, as the device
    /// view shows it; absent when nothing in the room is protected.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub protection: BTreeMap<String, BTreeMap<String, ProtectionView>>,
}

/// How bad a health is, for a room's overall state.
fn severity(h: Health) -> u8 {
    match h {
        Health::Ok => 0,
        Health::Busy => 1,
        Health::Unknown => 2,
        Health::Degraded => 3,
        Health::Faulted => 4,
        Health::Unreachable => 5,
    }
}

/// A room as `GET /api/v1/rooms/{id}` shows it at `now` (the dashboard's tiles and MQTT
/// status too).
pub fn room_view(st: &ApiState, room: &Room, now: chrono::DateTime<chrono::Utc>) -> RoomView {
    let bookings = match &st.schedule {
        Some(s) => s.book.current_and_next(&room.id, now),
        None => (None, None),
    };
    room_view_of(st, room, &st.fleet.room(&room.id), bookings, now)
}

/// [`room_view`] from the room's devices and its current and next bookings, which the list
/// gathers for all rooms in one pass (per room, each is a scan of the fleet or the book).
fn room_view_of(
    st: &ApiState,
    room: &Room,
    handles: &[crate::runtime::DeviceHandle],
    (current, next): (Option<Booking>, Option<Booking>),
    now: chrono::DateTime<chrono::Utc>,
) -> RoomView {
    let devices: Vec<DeviceSummary> = handles
        .iter()
        .map(|h| DeviceSummary::from_state(&h.watch().borrow(), now))
        .collect();
    let protection = match &st.protection {
        Some(board) => handles
            .iter()
            .map(|h| (h.id.to_string(), zones_view(board.zones(&h.id))))
            .filter(|(_, zones)| !zones.is_empty())
            .collect(),
        None => BTreeMap::new(),
    };
    let state = devices
        .iter()
        .map(|d| d.health)
        .max_by_key(|h| severity(*h))
        .unwrap_or(Health::Unknown);
    let (current, next, verdict) = match &st.schedule {
        Some(s) => {
            let view = |b: Booking| {
                let v = s.book.verdict(&b.id);
                BookingView::of(&b, v.as_ref())
            };
            (
                current.map(view),
                next.map(view),
                s.book.room_verdict(&room.id),
            )
        }
        None => (None, None, None),
    };
    RoomView {
        id: room.id.clone(),
        name: room.name.clone(),
        building: room.building.clone(),
        floor: room.floor,
        capacity: room.capacity,
        state,
        devices,
        current_booking: current,
        next_booking: next,
        verdict: verdict.as_ref().map(VerdictView::from),
        protection,
    }
}

/// A device's protected zones as the API shows them, the same fields as the device view's.
fn zones_view(
    zones: BTreeMap<String, crate::levelwatch::controller::ZoneView>,
) -> BTreeMap<String, ProtectionView> {
    zones
        .into_iter()
        .map(|(id, z)| {
            let view = ProtectionView {
                state: z.state,
                set_level_db: z.set_level_db,
                reduction_db: z.reduction_db,
                since: z.since,
                manual_until: z.manual_until,
            };
            (id, view)
        })
        .collect()
}

/// `GET /api/v1/rooms`, from the list's snapshot.
#[utoipa::path(
    get,
    path = "/api/v1/rooms",
    tag = "rooms",
    summary = "Every room with its devices' health",
    responses(
        (status = 200, description = "The rooms", body = serde_json::Value),
    )
)]
pub async fn list(
    State(st): State<ApiState>,
    Extension(snapshots): Extension<Arc<Snapshots>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let body = snapshots
        .rooms(st.clock.now(), |now, fragments| {
            // The fleet and the book grouped by room once, not scanned once per room.
            let mut handles: HashMap<RoomId, Vec<crate::runtime::DeviceHandle>> = HashMap::new();
            for h in st.fleet.handles() {
                handles.entry(h.room.clone()).or_default().push(h);
            }
            let mut bookings = st
                .schedule
                .as_ref()
                .map(|s| s.book.current_and_next_by_room(now))
                .unwrap_or_default();
            let rooms: Vec<(String, RoomView)> = st
                .layout
                .get()
                .rooms
                .iter()
                .map(|r| {
                    let devices = handles.get(&r.id).map_or(&[][..], Vec::as_slice);
                    let booked = bookings.remove(&r.id).unwrap_or_default();
                    let view = room_view_of(&st, r, devices, booked, now);
                    (r.id.to_string(), view)
                })
                .collect();
            // A booking starting or ending changes its room's view with no other change.
            let valid_until = rooms
                .iter()
                .flat_map(|(_, r)| {
                    let current = r.current_booking.as_ref().map(|b| b.end);
                    let next = r.next_booking.as_ref().map(|b| b.start);
                    current.into_iter().chain(next)
                })
                .min();
            let list = fragments.assemble(rooms, |r| {
                for d in &mut r.devices {
                    d.blank_contact();
                }
            })?;
            Ok(Built::assembled(list, valid_until))
        })
        .await?;
    Ok(body.answer(&headers))
}

/// `GET /api/v1/rooms/{id}`.
#[utoipa::path(
    get,
    path = "/api/v1/rooms/{id}",
    tag = "rooms",
    summary = "One room",
    params(
        ("id" = String, Path, description = "The room's id"),
    ),
    responses(
        (status = 200, description = "The room", body = serde_json::Value),
    )
)]
pub async fn get_one(
    State(st): State<ApiState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<RoomView>, ApiError> {
    let Path(id) = id.map_err(ApiError::from_path_rejection)?;
    let layout = st.layout.get();
    let room = layout
        .rooms
        .iter()
        .find(|r| r.id.as_str() == id)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_room",
                format!("no room {id:?}"),
            )
        })?;
    Ok(Json(room_view(&st, room, st.clock.now())))
}
