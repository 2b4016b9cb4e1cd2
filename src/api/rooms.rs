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
use super::snapshot::{Built, Fragments, Snapshots};
use super::views::{DeviceSummary, ProtectionView};
use super::{ApiError, ApiState};
use crate::config::Room;
use crate::model::{Booking, DeviceId, DeviceState, Health, RoomId};
use tokio::sync::watch;

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

/// The rooms' views at `now` in `rooms`' order, with the fleet and the book grouped by room
/// in one pass each (per room, each is a scan of the fleet or the book), and each room's
/// devices: the dashboard's index page.
pub fn room_views(
    st: &ApiState,
    rooms: &[Room],
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<(RoomView, Vec<crate::runtime::DeviceHandle>)> {
    let mut handles = handles_by_room(st);
    let mut bookings = bookings_by_room(st, now);
    rooms
        .iter()
        .map(|r| {
            let devices = handles.remove(&r.id).unwrap_or_default();
            let booked = bookings.remove(&r.id).unwrap_or_default();
            (room_view_of(st, r, &devices, booked, now), devices)
        })
        .collect()
}

fn handles_by_room(st: &ApiState) -> HashMap<RoomId, Vec<crate::runtime::DeviceHandle>> {
    let mut handles: HashMap<RoomId, Vec<crate::runtime::DeviceHandle>> = HashMap::new();
    for h in st.fleet.handles() {
        handles.entry(h.room.clone()).or_default().push(h);
    }
    handles
}

type Booked = (Option<Booking>, Option<Booking>);

fn bookings_by_room(st: &ApiState, now: chrono::DateTime<chrono::Utc>) -> HashMap<RoomId, Booked> {
    st.schedule
        .as_ref()
        .map(|s| s.book.current_and_next_by_room(now))
        .unwrap_or_default()
}

/// [`room_view`] from the room's devices and its current and next bookings, which the list
/// gathers for all rooms in one pass (per room, each is a scan of the fleet or the book).
fn room_view_of(
    st: &ApiState,
    room: &Room,
    handles: &[crate::runtime::DeviceHandle],
    booked: Booked,
    now: chrono::DateTime<chrono::Utc>,
) -> RoomView {
    let (devices, state) = devices_part(handles.iter().map(|h| h.watch()), now);
    let ids: Vec<&DeviceId> = handles.iter().map(|h| &h.id).collect();
    let (current_booking, next_booking, verdict) = bookings_part(st, &room.id, booked);
    RoomView {
        id: room.id.clone(),
        name: room.name.clone(),
        building: room.building.clone(),
        floor: room.floor,
        capacity: room.capacity,
        state,
        devices,
        current_booking,
        next_booking,
        verdict,
        protection: protection_part(st, ids.into_iter()),
    }
}

/// A room's device summaries and its overall state (its worst device's health), from its
/// devices' states.
fn devices_part<R: std::borrow::BorrowMut<watch::Receiver<DeviceState>>>(
    states: impl Iterator<Item = R>,
    now: chrono::DateTime<chrono::Utc>,
) -> (Vec<DeviceSummary>, Health) {
    let devices: Vec<DeviceSummary> = states
        .map(|mut rx| DeviceSummary::from_state(&rx.borrow_mut().borrow_and_update(), now))
        .collect();
    let state = devices
        .iter()
        .map(|d| d.health)
        .max_by_key(|h| severity(*h))
        .unwrap_or(Health::Unknown);
    (devices, state)
}

/// The protected zones of a room's devices, by device id.
fn protection_part<'a>(
    st: &ApiState,
    devices: impl Iterator<Item = &'a DeviceId>,
) -> BTreeMap<String, BTreeMap<String, ProtectionView>> {
    match &st.protection {
        Some(board) => devices
            .map(|id| (id.to_string(), zones_view(board.zones(id))))
            .filter(|(_, zones)| !zones.is_empty())
            .collect(),
        None => BTreeMap::new(),
    }
}

type BookingsPart = (
    Option<BookingView>,
    Option<BookingView>,
    Option<VerdictView>,
);

/// A room's current and next bookings with their verdicts, and the room's newest verdict.
fn bookings_part(st: &ApiState, room: &RoomId, (current, next): Booked) -> BookingsPart {
    match &st.schedule {
        Some(s) => {
            let view = |b: Booking| {
                let v = s.book.verdict(&b.id);
                BookingView::of(&b, v.as_ref())
            };
            (
                current.map(view),
                next.map(view),
                s.book.room_verdict(room).as_ref().map(VerdictView::from),
            )
        }
        None => (None, None, None),
    }
}

/// The first instant at which time alone changes a room's view: its booking ending or its
/// next one starting.
fn booked_until(view: &RoomView) -> Option<chrono::DateTime<chrono::Utc>> {
    let current = view.current_booking.as_ref().map(|b| b.end);
    let next = view.next_booking.as_ref().map(|b| b.start);
    current.into_iter().chain(next).min()
}

/// One room as the rooms list keeps it between rebuilds: its view, the state channels of
/// its devices (in the view's order) and when time alone changes its bookings.
struct Slot {
    view: RoomView,
    devices: Vec<(DeviceId, watch::Receiver<DeviceState>)>,
    valid_until: Option<chrono::DateTime<chrono::Utc>>,
}

/// What the rooms list keeps between rebuilds so that a rebuild builds again only the views
/// of the rooms whose inputs moved: per room its view and what it was built from (its
/// devices' state channels, when time changes its bookings); for the inputs that only say
/// "something changed" (the book's change counter, the protection board's) the count seen,
/// after which every room's part from that input is made again and compared.
#[derive(Default)]
pub struct RoomViews {
    fragments: Fragments<RoomView>,
    rooms: HashMap<RoomId, Slot>,
    /// The layout generation and fleet membership `rooms` was made for.
    made_for: Option<(u64, u64)>,
    book: Option<watch::Receiver<u64>>,
    protection_seen: u64,
}

impl RoomViews {
    /// The rooms list at `now`. Every input is marked seen before it is read, so a change
    /// racing the rebuild leaves it marked changed for the next request, never lost.
    fn build(
        &mut self,
        st: &ApiState,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Built, ApiError> {
        let made_for = (st.layout.generation(), st.fleet.membership());
        let layout = st.layout.get();
        let protection_seen = st.protection.as_ref().map_or(0, |b| b.changes());
        let full = self.made_for != Some(made_for) || self.rooms.len() != layout.rooms.len();
        let book_moved = match (&mut self.book, &st.schedule) {
            (Some(rx), _) => {
                let moved = rx.has_changed().unwrap_or(true);
                rx.mark_unchanged();
                moved
            }
            (None, Some(s)) => {
                self.book = Some(s.book.subscribe());
                true
            }
            (None, None) => false,
        };
        let protection_moved = protection_seen != self.protection_seen;
        self.protection_seen = protection_seen;
        let time_moved = |slot: &Slot| slot.valid_until.is_some_and(|t| now >= t);
        let mut bookings = if full || book_moved || self.rooms.values().any(time_moved) {
            bookings_by_room(st, now)
        } else {
            HashMap::new()
        };

        let mut built = 0;
        let mut entries = Vec::with_capacity(layout.rooms.len());
        if full {
            self.made_for = Some(made_for);
            self.rooms.clear();
            let mut handles = handles_by_room(st);
            for room in &layout.rooms {
                let handles = handles.remove(&room.id).unwrap_or_default();
                // Watched before they are read: a change in between is seen twice, not lost.
                // A handle's receiver is a clone that may remember an older version: marked
                // seen here, or every room would count as moved at the next rebuild.
                let devices = handles
                    .iter()
                    .map(|h| {
                        let mut rx = h.watch();
                        rx.mark_unchanged();
                        (h.id.clone(), rx)
                    })
                    .collect();
                let booked = bookings.remove(&room.id).unwrap_or_default();
                let view = room_view_of(st, room, &handles, booked, now);
                let slot = Slot {
                    valid_until: booked_until(&view),
                    view: view.clone(),
                    devices,
                };
                self.rooms.insert(room.id.clone(), slot);
                entries.push((room.id.to_string(), Some(view)));
                built += 1;
            }
        } else {
            for room in &layout.rooms {
                let Some(slot) = self.rooms.get_mut(&room.id) else {
                    continue;
                };
                let mut rebuilt = false;
                let mut changed = false;
                if slot
                    .devices
                    .iter()
                    .any(|(_, rx)| rx.has_changed().unwrap_or(true))
                {
                    let (devices, state) =
                        devices_part(slot.devices.iter_mut().map(|(_, rx)| rx), now);
                    slot.view.devices = devices;
                    slot.view.state = state;
                    rebuilt = true;
                } else {
                    // The runtime stamps contact instants without telling the watchers: read
                    // them on every rebuild (a read lock each), see `QUIET_STAMPS_MAX_AGE`.
                    for ((_, rx), d) in slot.devices.iter().zip(&mut slot.view.devices) {
                        let contact = rx.borrow().last_contact;
                        if d.last_contact != contact {
                            d.last_contact = contact;
                            changed = true;
                        }
                    }
                }
                if protection_moved {
                    let p = protection_part(st, slot.devices.iter().map(|(id, _)| id));
                    if p != slot.view.protection {
                        slot.view.protection = p;
                        rebuilt = true;
                    }
                }
                if book_moved || time_moved(slot) {
                    let booked = bookings.remove(&room.id).unwrap_or_default();
                    let (current, next, verdict) = bookings_part(st, &room.id, booked);
                    let v = &mut slot.view;
                    if (&current, &next, &verdict)
                        != (&v.current_booking, &v.next_booking, &v.verdict)
                    {
                        v.current_booking = current;
                        v.next_booking = next;
                        v.verdict = verdict;
                        rebuilt = true;
                    }
                    slot.valid_until = booked_until(&slot.view);
                }
                built += usize::from(rebuilt);
                let view = (rebuilt || changed).then(|| slot.view.clone());
                entries.push((room.id.to_string(), view));
            }
        }
        let valid_until = self.rooms.values().filter_map(|s| s.valid_until).min();
        let list = self
            .fragments
            .assemble_changed(entries, |r| {
                for d in &mut r.devices {
                    d.blank_contact();
                }
            })
            .inspect_err(|_| {
                // The fragments may be half taken apart: the next rebuild starts afresh.
                self.made_for = None;
            })?;
        Ok(Built::assembled(list, valid_until).with_views_built(built))
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
        .rooms(st.clock.now(), |now, kept| kept.build(&st, now))
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
