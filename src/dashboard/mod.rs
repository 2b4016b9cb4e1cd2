//! The technician's dashboard, served by the daemon outside `/api/v1`: server-rendered HTML
//! pages (the readiness board, the room grid, alerts, rooms, devices, the logbook), their
//! fragments for live updates, the login page, and the CSS and script built into the binary.
//!
//! Owns the page routes and how they answer a visitor without a session (a redirect to
//! `/login`, where the API answers 401). Must not decide anything the API decides: pages
//! are built from the API's own views, acknowledging goes through `POST
//! /api/v1/alerts/{id}/ack`, and who may see what is the one table in [`crate::api::auth`].

pub mod fleet;
pub mod history;
pub mod html;
pub mod render;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use crate::api::auth::Caller;
use crate::api::bookings::BookingView;
use crate::api::{rooms, ApiState};
use crate::config::Role;
use crate::playbook::AlertFilter;
use html::{esc, page, Viewer, Zone};

pub use history::History;

const CSS: &str = include_str!("../../assets/dashboard.css");
const JS: &str = include_str!("../../assets/dashboard.js");

/// Bookings the board shows.
const BOARD_ROWS: usize = 20;
/// Logbook entries a page shows.
const LOGBOOK_ROWS: &str = "100";

/// The dashboard's routes, for [`crate::api::router`] to merge before its authentication
/// layer (so every page is checked against [`crate::api::auth::ROUTES`]).
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/", get(board_page))
        .route("/board/fragment", get(board_fragment))
        .route("/alerts/fragment", get(alerts_fragment))
        .route("/rooms/{id}", get(room_page))
        .route("/rooms/{id}/tile", get(room_tile))
        .route("/devices/{id}", get(device_page))
        .route("/logbook", get(logbook_page))
        .route("/fleet", get(fleet_page))
        .route("/login", get(login_page))
        .route("/assets/{file}", get(asset))
}

/// Whether `path` is one of the dashboard's (HTML) routes rather than the API's.
pub fn is_page(path: &str) -> bool {
    !path.starts_with("/api/") && path != "/metrics"
}

/// Outside the authentication layer: a page a visitor may not see yet sends them to the
/// login page, where the API would answer 401 (a browser shows a login form, not JSON).
pub async fn redirect_to_login(req: Request, next: Next) -> Response {
    let page = is_page(req.uri().path());
    let r = next.run(req).await;
    if page && r.status() == StatusCode::UNAUTHORIZED {
        return Redirect::to("/login").into_response();
    }
    r
}

fn viewer(st: &ApiState, caller: &Caller) -> Viewer {
    Viewer {
        name: caller.name.clone(),
        may_act: caller.role >= Role::Technician,
        login: st.auth.is_enforced(),
    }
}

fn zone(st: &ApiState) -> Zone {
    Zone::of(&st.layout.get().time_zone)
}

fn html(body: String) -> Response {
    ([(header::CACHE_CONTROL, "no-store")], Html(body)).into_response()
}

fn not_found(st: &ApiState, caller: &Caller, what: &str) -> Response {
    let body = format!(
        r#"<p>{}</p><p><a href="/">Back to the board</a></p>"#,
        esc(what)
    );
    (
        StatusCode::NOT_FOUND,
        html(page("Not found", &st.site, "", &viewer(st, caller), &body)),
    )
        .into_response()
}

fn upcoming(st: &ApiState) -> Vec<BookingView> {
    let Some(sched) = &st.schedule else {
        return Vec::new();
    };
    sched
        .book
        .upcoming(st.clock.now())
        .iter()
        .filter(|b| b.is_active())
        .take(BOARD_ROWS)
        .map(|b| BookingView::of(b, sched.book.verdict(&b.id).as_ref()))
        .collect()
}

fn open_alerts(st: &ApiState) -> Vec<crate::playbook::alerts::Alert> {
    let filter = AlertFilter {
        open: Some(true),
        ..Default::default()
    };
    st.playbook
        .as_ref()
        .map(|p| p.alerts(&filter))
        .unwrap_or_default()
}

fn alerts_html(st: &ApiState, caller: &Caller) -> String {
    render::alerts(&open_alerts(st), viewer(st, caller).may_act, zone(st))
}

fn board_html(st: &ApiState) -> String {
    if st.schedule.is_none() {
        return r#"<p class="empty">This daemon runs no schedule.</p>"#.to_owned();
    }
    render::board(&upcoming(st), zone(st))
}

async fn board_page(State(st): State<ApiState>, caller: Caller) -> Response {
    // A central daemon has no rooms of its own: its board is the fleet's.
    if st.aggregate.is_some() {
        return Redirect::to("/fleet").into_response();
    }
    let z = zone(&st);
    let layout = st.layout.get();
    // The fleet and the book grouped by room once, not scanned once per tile.
    let tiles: String = rooms::room_views(&st, &layout.rooms, st.clock.now())
        .iter()
        .map(|(view, devices)| render::room_article_of(&st, view, devices, z))
        .collect();
    let body = format!(
        r#"<section aria-labelledby="alerts-h" class="panel">
<h2 id="alerts-h">Open alerts</h2>
<div id="alerts" data-fragment="/alerts/fragment" aria-live="polite">{alerts}</div>
<p id="action-status" class="sr-only" role="status"></p>
</section>
<section aria-labelledby="rooms-h" class="panel">
<h2 id="rooms-h">Rooms</h2>
<div class="grid">{tiles}</div>
</section>
<section aria-labelledby="board-h" class="panel">
<h2 id="board-h">Upcoming bookings</h2>
<div id="board" data-fragment="/board/fragment">{board}</div>
</section>"#,
        alerts = alerts_html(&st, &caller),
        board = board_html(&st),
    );
    html(page(
        "Readiness",
        &st.site,
        "/",
        &viewer(&st, &caller),
        &body,
    ))
}

async fn board_fragment(State(st): State<ApiState>) -> Response {
    html(board_html(&st))
}

async fn alerts_fragment(State(st): State<ApiState>, caller: Caller) -> Response {
    html(alerts_html(&st, &caller))
}

fn find_room(st: &ApiState, id: &str) -> Option<crate::config::Room> {
    st.layout
        .get()
        .rooms
        .iter()
        .find(|r| r.id.as_str() == id)
        .cloned()
}

async fn room_page(
    State(st): State<ApiState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let Ok(Path(id)) = id else {
        return not_found(&st, &caller, "No such room.");
    };
    let Some(room) = find_room(&st, &id) else {
        return not_found(&st, &caller, &format!("No room {id}."));
    };
    let z = zone(&st);
    let view = rooms::room_view(&st, &room, st.clock.now());
    let bookings: Vec<BookingView> = upcoming(&st)
        .into_iter()
        .filter(|b| b.room == room.id)
        .collect();
    let body = format!(
        r#"<div class="grid one">{tile}</div>
<section aria-labelledby="rb-h" class="panel"><h2 id="rb-h">Upcoming bookings here</h2>{board}</section>
<p><a href="/logbook?room={href}">Logbook of this room</a> · <a href="/api/v1/rooms/{href}">as JSON</a></p>"#,
        tile = render::room_article(&st, &view, z),
        board = render::board(&bookings, z),
        href = html::seg(room.id.as_str()),
    );
    html(page(
        &format!("Room {}", room.name),
        &st.site,
        "",
        &viewer(&st, &caller),
        &body,
    ))
}

async fn room_tile(
    State(st): State<ApiState>,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let room = id.ok().and_then(|Path(id)| find_room(&st, &id));
    let Some(room) = room else {
        return (StatusCode::NOT_FOUND, html("<p>No such room.</p>".into())).into_response();
    };
    html(render::room_tile(
        &st,
        &rooms::room_view(&st, &room, st.clock.now()),
        zone(&st),
    ))
}

async fn device_page(
    State(st): State<ApiState>,
    caller: Caller,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let Ok(Path(id)) = id else {
        return not_found(&st, &caller, "No such device.");
    };
    let Some(h) = st.fleet.get(&id) else {
        return not_found(&st, &caller, &format!("No device {id}."));
    };
    let mut body = render::device_page(&st, &h.state(), st.history.as_ref(), zone(&st));
    body.push_str(&format!(
        r#"<p><a href="/logbook?device={href}">Logbook of this device</a> · <a href="/api/v1/devices/{href}">as JSON</a></p>"#,
        href = html::seg(&id)
    ));
    html(page(
        &format!("Device {id}"),
        &st.site,
        "",
        &viewer(&st, &caller),
        &body,
    ))
}

async fn logbook_page(
    State(st): State<ApiState>,
    caller: Caller,
    q: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let pairs: Vec<(String, String)> = q
        .map(|Query(p)| p)
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, v)| matches!(k.as_str(), "room" | "device" | "kind") && !v.is_empty())
        .collect();
    let value = |k: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let mut query = pairs.clone();
    query.push(("limit".into(), LOGBOOK_ROWS.into()));
    let listed = crate::api::records::logbook(State(st.clone()), Ok(Query(query))).await;
    let table = match listed {
        Ok(axum::Json(entries)) => render::logbook(&entries),
        Err(e) => format!(
            r#"<p class="empty">The logbook cannot be read: {}</p>"#,
            esc(&e.message)
        ),
    };
    let export_q: String = pairs
        .iter()
        .map(|(k, v)| format!("&{}={}", html::seg(k), html::seg(v)))
        .collect();
    let body = format!(
        r#"<form class="filters" method="get" action="/logbook">
<label>Room <input name="room" value="{room}"></label>
<label>Device <input name="device" value="{device}"></label>
<label>Kind <input name="kind" value="{kind}" placeholder="e.g. fault_raised"></label>
<button type="submit">Filter</button>
</form>
<p>Export: <a href="/api/v1/logbook/export?format=csv{export_q}" download>CSV</a> · <a href="/api/v1/logbook/export?format=jsonl{export_q}" download>JSON Lines</a></p>
{table}"#,
        room = esc(&value("room")),
        device = esc(&value("device")),
        kind = esc(&value("kind")),
    );
    html(page(
        "Logbook",
        &st.site,
        "/logbook",
        &viewer(&st, &caller),
        &body,
    ))
}

/// `/fleet`: a central daemon's buildings, their alerts and rooms (aggregate mode only).
async fn fleet_page(State(st): State<ApiState>, caller: Caller) -> Response {
    let Some(f) = &st.aggregate else {
        return not_found(
            &st,
            &caller,
            "This daemon is a building's, not a central one.",
        );
    };
    let body = fleet::body(
        f.broker_up(),
        f.broker(),
        &f.buildings(),
        &f.alerts(),
        &f.board(),
    );
    html(page(
        "Fleet",
        &st.site,
        "/fleet",
        &viewer(&st, &caller),
        &body,
    ))
}

async fn login_page(State(st): State<ApiState>) -> Response {
    let guest = Viewer {
        name: String::new(),
        may_act: false,
        login: false,
    };
    let body = if st.auth.is_enforced() {
        r#"<form id="login" class="login panel">
<p>Sign in with your avwarden access token. The page keeps a session cookie, never the token.</p>
<label for="token">Access token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required>
<button type="submit">Sign in</button>
<p id="login-error" class="error" role="alert"></p>
<noscript><p>The dashboard needs JavaScript to sign in; the API works without it.</p></noscript>
</form>"#
            .to_owned()
    } else {
        r#"<p>This is the open local demo: no sign-in is needed. <a href="/">Go to the board</a>.</p>"#.to_owned()
    };
    html(page("Sign in", &st.site, "/login", &guest, &body))
}

async fn asset(file: Result<Path<String>, PathRejection>) -> Response {
    let (body, kind) = match file.as_ref().map(|Path(f)| f.as_str()) {
        Ok("dashboard.css") => (CSS, "text/css; charset=utf-8"),
        Ok("dashboard.js") => (JS, "text/javascript; charset=utf-8"),
        _ => return (StatusCode::NOT_FOUND, "no such asset").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}
