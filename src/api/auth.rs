//! Who is calling the API and whether they may: bearer tokens from `[[api.tokens]]`, the
//! route → minimum role table, and the slow-down of a client that keeps guessing.
//!
//! Owns the one place that says which role each route needs ([`ROUTES`]) and the middleware
//! that gives every handler its [`Caller`]. Must not log, answer or store a presented token
//! (only its SHA-256 is compared, in constant time), and must not decide anything a handler
//! decides: it only lets a request through or answers 401, 403 or 429.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;

use super::{ApiError, ApiState};
use crate::config::{ApiToken, Role};

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone: probes and Prometheus scrape these without a token.
    Open,
    /// A token with at least this role (when tokens are configured).
    AtLeast(Role),
}

/// One route of the API and what it needs.
#[derive(Debug, Clone, Copy)]
pub struct RouteRule {
    pub method: &'static str,
    /// The route as the router declares it, `{id}` placeholders included.
    pub path: &'static str,
    pub access: Access,
}

const fn rule(method: &'static str, path: &'static str, access: Access) -> RouteRule {
    RouteRule {
        method,
        path,
        access,
    }
}

use Access::{AtLeast, Open};
use Role::{Admin, Technician, Viewer};

/// Every route and the least role that may call it; the integration tests' route table must
/// cover exactly this list. A route missing here needs `admin`.
pub const ROUTES: &[RouteRule] = &[
    rule("GET", "/api/v1/health", Open),
    rule("GET", "/metrics", Open),
    rule("GET", "/openapi.json", Open),
    // Login checks the token in its body itself; logout only forgets a cookie.
    rule("POST", "/api/v1/session", Open),
    rule("DELETE", "/api/v1/session", Open),
    rule("GET", "/api/v1/site", AtLeast(Viewer)),
    rule("GET", "/api/v1/rooms", AtLeast(Viewer)),
    rule("GET", "/api/v1/rooms/{id}", AtLeast(Viewer)),
    rule("GET", "/api/v1/devices", AtLeast(Viewer)),
    rule("GET", "/api/v1/devices/{id}", AtLeast(Viewer)),
    rule("POST", "/api/v1/devices/{id}/commands", AtLeast(Technician)),
    rule("GET", "/api/v1/logbook", AtLeast(Viewer)),
    rule("GET", "/api/v1/logbook/export", AtLeast(Viewer)),
    rule("GET", "/api/v1/equipment", AtLeast(Viewer)),
    rule("GET", "/api/v1/equipment/{device}", AtLeast(Viewer)),
    rule("PATCH", "/api/v1/equipment/{device}", AtLeast(Admin)),
    rule(
        "POST",
        "/api/v1/equipment/{device}/maintenance",
        AtLeast(Technician),
    ),
    rule("GET", "/api/v1/bookings", AtLeast(Viewer)),
    rule("POST", "/api/v1/bookings", AtLeast(Admin)),
    rule("GET", "/api/v1/bookings/{id}", AtLeast(Viewer)),
    rule("PATCH", "/api/v1/bookings/{id}", AtLeast(Admin)),
    rule("DELETE", "/api/v1/bookings/{id}", AtLeast(Admin)),
    rule("POST", "/api/v1/rooms/{id}/selftest", AtLeast(Technician)),
    rule("GET", "/api/v1/selftests", AtLeast(Viewer)),
    rule("GET", "/api/v1/board", AtLeast(Viewer)),
    rule("GET", "/api/v1/alerts", AtLeast(Viewer)),
    rule("GET", "/api/v1/alerts/{id}", AtLeast(Viewer)),
    rule("POST", "/api/v1/alerts/{id}/ack", AtLeast(Technician)),
    rule("POST", "/api/v1/alerts/{id}/resolve", AtLeast(Technician)),
    rule("GET", "/api/v1/maintenance-windows", AtLeast(Viewer)),
    rule("POST", "/api/v1/maintenance-windows", AtLeast(Admin)),
    rule("DELETE", "/api/v1/maintenance-windows/{id}", AtLeast(Admin)),
    rule("GET", "/api/v1/roster/on-duty", AtLeast(Viewer)),
    rule("GET", "/api/v1/events", AtLeast(Viewer)),
    // The dashboard (see `dashboard`): its pages and fragments need a viewer (a visitor
    // without a session is sent to `/login`), the login page and the built-in assets none.
    rule("GET", "/", AtLeast(Viewer)),
    rule("GET", "/board/fragment", AtLeast(Viewer)),
    rule("GET", "/alerts/fragment", AtLeast(Viewer)),
    rule("GET", "/rooms/{id}", AtLeast(Viewer)),
    rule("GET", "/rooms/{id}/tile", AtLeast(Viewer)),
    rule("GET", "/devices/{id}", AtLeast(Viewer)),
    rule("GET", "/logbook", AtLeast(Viewer)),
    rule("GET", "/login", Open),
    rule("GET", "/assets/{file}", Open),
    // Delivery errors name receivers and their answers: technicians' business.
    rule("GET", "/api/v1/notify/deliveries", AtLeast(Technician)),
    rule("POST", "/api/v1/reload", AtLeast(Admin)),
    // A central daemon's view of its buildings (`[aggregate]`): read-only.
    rule("GET", "/api/v1/fleet/buildings", AtLeast(Viewer)),
    rule("GET", "/api/v1/fleet/board", AtLeast(Viewer)),
    rule("GET", "/api/v1/fleet/alerts", AtLeast(Viewer)),
    rule("GET", "/fleet", AtLeast(Viewer)),
];

/// What `method path` needs. A known path called with another method needs the least role
/// any of its methods needs (so the caller learns 405, not 403); an unknown path needs
/// `admin`, so a route added without a rule is closed, not open.
pub fn access(method: &Method, path: &str) -> Access {
    let on_path = || ROUTES.iter().filter(|r| r.path == path);
    if let Some(r) = on_path().find(|r| r.method == method.as_str()) {
        return r.access;
    }
    on_path()
        .map(|r| r.access)
        .min_by_key(|a| match a {
            Open => None,
            AtLeast(role) => Some(*role),
        })
        .unwrap_or(AtLeast(Admin))
}

/// The authenticated caller, for handlers: the name is the logbook's actor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

impl Caller {
    /// Who acts when the API is open (no tokens, loopback bind): the local demo.
    pub fn local() -> Self {
        Self {
            name: "local".to_owned(),
            role: Admin,
        }
    }

    pub fn actor(&self) -> crate::records::Actor {
        crate::records::Actor::person(self.name.clone())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this route needs a bearer token",
            )
        })
    }
}

/// Wrong tokens a client may present before it is slowed down.
pub const FREE_FAILURES: u32 = 5;
/// The first refusal after the free failures; each further failure doubles it.
pub const FIRST_BLOCK: Duration = Duration::from_secs(1);
/// The longest a client is refused for.
pub const MAX_BLOCK: Duration = Duration::from_secs(300);
/// A client's failures are forgotten after this long without one.
pub const FORGET_AFTER: Duration = Duration::from_secs(900);
/// Clients tracked at most; past it the one with the oldest failure is forgotten.
const MAX_CLIENTS: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    blocked_until: Option<Instant>,
}

/// Failed token attempts per client address: after [`FREE_FAILURES`], each further failure
/// refuses the client (429) for a doubling while, up to [`MAX_BLOCK`]. A pure step over the
/// instant it is given, tested below.
#[derive(Debug, Default)]
pub struct Limiter {
    clients: HashMap<IpAddr, Failures>,
}

impl Limiter {
    /// How long `client` must still wait before its token is even looked at.
    pub fn blocked(&mut self, client: IpAddr, now: Instant) -> Option<Duration> {
        let f = self.clients.get(&client)?;
        if now.duration_since(f.last) >= FORGET_AFTER {
            self.clients.remove(&client);
            return None;
        }
        f.blocked_until
            .filter(|until| *until > now)
            .map(|until| until - now)
    }

    /// A wrong token from `client`; answers how long it is now refused for, if it is.
    pub fn failed(&mut self, client: IpAddr, now: Instant) -> Option<Duration> {
        if !self.clients.contains_key(&client) && self.clients.len() >= MAX_CLIENTS {
            self.clients
                .retain(|_, f| now.duration_since(f.last) < FORGET_AFTER);
            if self.clients.len() >= MAX_CLIENTS {
                let oldest = self.clients.iter().min_by_key(|(_, f)| f.last);
                if let Some(ip) = oldest.map(|(ip, _)| *ip) {
                    self.clients.remove(&ip);
                }
            }
        }
        let f = self.clients.entry(client).or_insert(Failures {
            count: 0,
            last: now,
            blocked_until: None,
        });
        if now.duration_since(f.last) >= FORGET_AFTER {
            f.count = 0;
        }
        f.count = f.count.saturating_add(1);
        f.last = now;
        let over = f.count.checked_sub(FREE_FAILURES)?;
        let block = FIRST_BLOCK
            .saturating_mul(2u32.saturating_pow(over.min(16)))
            .min(MAX_BLOCK);
        f.blocked_until = Some(now + block);
        Some(block)
    }

    /// A right token: the client's failures are forgiven.
    pub fn succeeded(&mut self, client: IpAddr) {
        self.clients.remove(&client);
    }
}

/// The tokens a daemon accepts and the failures it has seen. No tokens: the API is open and
/// every caller is [`Caller::local`] (the daemon refuses that on a non-loopback bind).
#[derive(Debug, Default)]
pub struct Auth {
    tokens: Vec<ApiToken>,
    limiter: Mutex<Limiter>,
    /// The dashboard's sessions, opened with a token.
    pub sessions: super::session::Sessions,
}

/// Why a presented token does not let a request through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The client guessed too often: it must wait this long.
    Blocked(Duration),
    /// Not a configured token.
    Wrong,
}

impl Auth {
    pub fn new(tokens: Vec<ApiToken>) -> Self {
        Self {
            tokens,
            limiter: Mutex::default(),
            sessions: Default::default(),
        }
    }

    /// The caller `presented` stands for, with the client's failures counted: refused
    /// while the client is slowed down, a wrong token counted, a right one forgiving.
    pub fn check(&self, client: Option<IpAddr>, presented: &str) -> Result<Caller, Refusal> {
        let client = client.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let now = Instant::now();
        if let Some(wait) = self.limiter().blocked(client, now) {
            return Err(Refusal::Blocked(wait));
        }
        let Some(token) = self.find(presented) else {
            let blocked = self.limiter().failed(client, now);
            tracing::warn!(
                client = %client,
                blocked_secs = blocked.map(|d| d.as_secs()),
                "API token refused"
            );
            return Err(Refusal::Wrong);
        };
        self.limiter().succeeded(client);
        Ok(Caller {
            name: token.name.clone(),
            role: token.role,
        })
    }

    /// Whether any token is configured.
    pub fn is_enforced(&self) -> bool {
        !self.tokens.is_empty()
    }

    fn limiter(&self) -> std::sync::MutexGuard<'_, Limiter> {
        self.limiter.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn find(&self, presented: &str) -> Option<&ApiToken> {
        let hash = crate::config::TokenHash::of(presented);
        // Every token is compared, so the time taken does not tell which one was near.
        self.tokens
            .iter()
            .fold(None, |found, t| match t.hash.matches_hash(&hash) {
                true => Some(t),
                false => found,
            })
    }
}

/// The token in `Authorization: Bearer <token>`: `Ok(None)` when there is no such header.
fn bearer(parts: &axum::http::HeaderMap) -> Result<Option<&str>, ()> {
    let Some(v) = parts.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let v = v.to_str().map_err(|_| ())?;
    let (scheme, token) = v.split_once(' ').ok_or(())?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(());
    }
    Ok(Some(token.trim()))
}

fn unauthorized(detail: &str) -> Response {
    let mut r = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", detail).into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"avwarden\""),
    );
    r
}

/// The middleware: finds the caller, checks the route's role, hands the caller on.
pub async fn authenticate(State(st): State<ApiState>, mut req: Request, next: Next) -> Response {
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| req.uri().path().to_owned());
    let needs = access(req.method(), &path);
    let auth = &st.auth;
    if !auth.is_enforced() {
        req.extensions_mut().insert(Caller::local());
        return next.run(req).await;
    }
    let client = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let role = match needs {
        Open => return next.run(req).await,
        AtLeast(role) => role,
    };
    let caller = match bearer(req.headers()) {
        Ok(Some(presented)) => match auth.check(client, presented) {
            Ok(c) => c,
            Err(Refusal::Blocked(wait)) => return too_many(&st, wait),
            Err(Refusal::Wrong) => return unauthorized("the bearer token is not valid"),
        },
        Err(()) => return unauthorized("expected the header Authorization: Bearer <token>"),
        Ok(None) => match super::session::cookie(req.headers()) {
            None => return unauthorized("this route needs a bearer token or a session"),
            Some(id) => {
                let writes = !matches!(*req.method(), Method::GET | Method::HEAD);
                let csrf = req
                    .headers()
                    .get(super::session::CSRF_HEADER)
                    .and_then(|v| v.to_str().ok());
                match auth.sessions.caller(id, csrf, writes, Instant::now()) {
                    Ok(c) => c,
                    Err(super::session::SessionRefusal::Unknown) => {
                        return unauthorized("the session has ended; log in again")
                    }
                    Err(super::session::SessionRefusal::Csrf) => {
                        return ApiError::new(
                            StatusCode::FORBIDDEN,
                            "csrf",
                            "a change made with a session cookie needs the session's X-CSRF-Token header",
                        )
                        .into_response()
                    }
                }
            }
        },
    };
    if caller.role < role {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "this route needs the role {role}; {} has {}",
                caller.name, caller.role
            ),
        )
        .into_response();
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// The 429 for a client slowed down, with when to retry.
pub fn too_many_error(st: &ApiState, wait: Duration) -> ApiError {
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    let until = st.clock.now() + chrono::Duration::from_std(wait).unwrap_or_default();
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_failures",
        format!("too many wrong tokens from this address; retry in {secs} s"),
    )
    .retry_at(until, secs)
}

fn too_many(st: &ApiState, wait: Duration) -> Response {
    too_many_error(st, wait).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_has_one_rule_and_unknown_paths_need_admin() {
        let mut seen = std::collections::HashSet::new();
        for r in ROUTES {
            assert!(
                seen.insert((r.method, r.path)),
                "twice: {} {}",
                r.method,
                r.path
            );
        }
        assert_eq!(access(&Method::GET, "/api/v1/health"), Open);
        assert_eq!(
            access(&Method::PATCH, "/api/v1/equipment/{device}"),
            AtLeast(Admin)
        );
        // Another method on a known path: the least role of the path, so the answer is 405.
        assert_eq!(access(&Method::PUT, "/api/v1/bookings"), AtLeast(Viewer));
        assert_eq!(access(&Method::GET, "/api/v1/new-thing"), AtLeast(Admin));
    }

    #[tokio::test(start_paused = true)]
    async fn a_guessing_client_is_refused_for_a_doubling_while_and_then_forgotten() {
        let mut l = Limiter::default();
        let guesser = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
        let other = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 8));
        let t0 = Instant::now();
        for _ in 0..FREE_FAILURES - 1 {
            assert_eq!(l.failed(guesser, t0), None);
            assert_eq!(l.blocked(guesser, t0), None);
        }
        assert_eq!(l.failed(guesser, t0), Some(FIRST_BLOCK));
        assert_eq!(l.blocked(guesser, t0), Some(FIRST_BLOCK));
        assert_eq!(l.blocked(other, t0), None);
        let t1 = t0 + FIRST_BLOCK;
        assert_eq!(l.blocked(guesser, t1), None);
        assert_eq!(l.failed(guesser, t1), Some(FIRST_BLOCK * 2));
        assert_eq!(l.failed(guesser, t1), Some(FIRST_BLOCK * 4));
        for _ in 0..20 {
            l.failed(guesser, t1);
        }
        assert_eq!(l.blocked(guesser, t1), Some(MAX_BLOCK));
        // Quiet long enough: forgotten, with its free failures back.
        let t2 = t1 + FORGET_AFTER;
        assert_eq!(l.blocked(guesser, t2), None);
        assert_eq!(l.failed(guesser, t2), None);
        // The right token forgives.
        l.succeeded(guesser);
        assert!(l.clients.is_empty());
    }

    #[test]
    fn a_bearer_header_is_parsed_and_anything_else_refused() {
        let h = |v: &str| {
            let mut m = axum::http::HeaderMap::new();
            m.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            m
        };
        assert_eq!(bearer(&h("Bearer abc")), Ok(Some("abc")));
        assert_eq!(bearer(&h("bearer  abc ")), Ok(Some("abc")));
        assert_eq!(bearer(&h("Basic abc")), Err(()));
        assert_eq!(bearer(&h("Bearer ")), Err(()));
        assert_eq!(bearer(&axum::http::HeaderMap::new()), Ok(None));
    }
}
