//! Dashboard sessions: a browser logs in once with an API token and is then known by a
//! session cookie (`HttpOnly`, `SameSite=Strict`), so the page never keeps the token where
//! a script could read it.
//!
//! Owns the session table and the login/logout routes. A session acts with its token's name
//! and role. Anything but a read made with a session cookie must also carry the session's
//! CSRF token in `X-CSRF-Token` (a cross-site form can send a cookie, never a header). Must
//! not keep a session id itself (only its SHA-256) nor answer or log a token.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::auth::{Caller, Refusal};
use super::{ApiError, ApiState};
use crate::config::{Role, TokenHash};

/// The cookie's name.
pub const COOKIE: &str = "avwarden_session";
/// The header a session's writes carry its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a session lasts from its login.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most; past it the one closest to expiring goes.
const MAX_SESSIONS: usize = 1000;

struct Session {
    name: String,
    role: Role,
    csrf: TokenHash,
    expires: Instant,
}

/// Open sessions, by the SHA-256 of their id.
#[derive(Default)]
pub struct Sessions {
    open: Mutex<HashMap<[u8; 32], Session>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sessions(***)")
    }
}

fn key(id: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(id.as_bytes()).into()
}

fn random_hex() -> String {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// Why a session cookie does not let a request through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionRefusal {
    /// Unknown or expired: log in again.
    Unknown,
    /// A write without the session's CSRF token.
    Csrf,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new session for `caller`: its id and CSRF token.
    fn open(&self, caller: &Caller, now: Instant) -> (String, String) {
        let (id, csrf) = (random_hex(), random_hex());
        let mut open = self.lock();
        open.retain(|_, s| s.expires > now);
        if open.len() >= MAX_SESSIONS {
            let first = open.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| *k);
            if let Some(k) = first {
                open.remove(&k);
            }
        }
        open.insert(
            key(&id),
            Session {
                name: caller.name.clone(),
                role: caller.role,
                csrf: TokenHash::of(&csrf),
                expires: now + SESSION_TTL,
            },
        );
        (id, csrf)
    }

    /// The caller of session `id`; `csrf` is the header's value, needed when `writes`.
    pub fn caller(
        &self,
        id: &str,
        csrf: Option<&str>,
        writes: bool,
        now: Instant,
    ) -> Result<Caller, SessionRefusal> {
        let mut open = self.lock();
        let k = key(id);
        let Some(s) = open.get(&k) else {
            return Err(SessionRefusal::Unknown);
        };
        if s.expires <= now {
            open.remove(&k);
            return Err(SessionRefusal::Unknown);
        }
        if writes && !csrf.is_some_and(|c| s.csrf.matches(c)) {
            return Err(SessionRefusal::Csrf);
        }
        Ok(Caller {
            name: s.name.clone(),
            role: s.role,
        })
    }

    fn close(&self, id: &str) {
        self.lock().remove(&key(id));
    }
}

/// The session id in the request's cookies, if any.
pub fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, v)| v)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    token: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LoggedIn {
    pub name: String,
    /// `viewer`, `technician` or `admin`.
    #[schema(value_type = String)]
    pub role: Role,
    /// To send as `X-CSRF-Token` with every write; `null` when the API is open.
    pub csrf_token: Option<String>,
    pub expires_in_secs: u64,
}

/// `POST /api/v1/session` `{"token": …}`: a session cookie for a valid token. Wrong tokens
/// count towards the client's slow-down as they do on any route.
#[utoipa::path(
    post,
    path = "/api/v1/session",
    tag = "session",
    summary = "Open a dashboard session with a token",
    request_body = Login,
    responses(
        (status = 200, description = "The session: a cookie, and the CSRF token to send with writes", body = LoggedIn),
    )
)]
pub async fn login(
    State(st): State<ApiState>,
    peer: Option<Extension<ConnectInfo<std::net::SocketAddr>>>,
    body: Result<Json<Login>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(login) = body.map_err(ApiError::from_json_rejection)?;
    if !st.auth.is_enforced() {
        return Ok(Json(LoggedIn {
            name: Caller::local().name,
            role: Role::Admin,
            csrf_token: None,
            expires_in_secs: SESSION_TTL.as_secs(),
        })
        .into_response());
    }
    let client = peer.map(|Extension(c)| c.0.ip());
    let caller = st.auth.check(client, &login.token).map_err(|r| match r {
        Refusal::Blocked(wait) => super::auth::too_many_error(&st, wait),
        Refusal::Wrong => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the token is not valid",
        ),
    })?;
    let (id, csrf) = st.auth.sessions.open(&caller, Instant::now());
    let cookie = format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_TTL.as_secs()
    );
    let mut r = Json(LoggedIn {
        name: caller.name,
        role: caller.role,
        csrf_token: Some(csrf),
        expires_in_secs: SESSION_TTL.as_secs(),
    })
    .into_response();
    let mut v = HeaderValue::from_str(&cookie)
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "session", "no cookie"))?;
    v.set_sensitive(true);
    r.headers_mut().insert(header::SET_COOKIE, v);
    Ok(r)
}

/// `DELETE /api/v1/session`: ends the session the cookie names and clears the cookie.
#[utoipa::path(
    delete,
    path = "/api/v1/session",
    tag = "session",
    summary = "End the session of the cookie sent",
    responses(
        (status = 204, description = "The session is gone"),
    )
)]
pub async fn logout(State(st): State<ApiState>, headers: HeaderMap) -> Response {
    if let Some(id) = cookie(&headers) {
        st.auth.sessions.close(id);
    }
    let clear = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    (StatusCode::NO_CONTENT, [(header::SET_COOKIE, clear)]).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_session_acts_as_its_token_needs_csrf_to_write_and_expires() {
        let s = Sessions::default();
        let tech = Caller {
            name: "li-wei".into(),
            role: Role::Technician,
        };
        let t0 = Instant::now();
        let (id, csrf) = s.open(&tech, t0);
        assert_eq!(s.caller(&id, None, false, t0), Ok(tech.clone()));
        assert_eq!(s.caller(&id, None, true, t0), Err(SessionRefusal::Csrf));
        assert_eq!(
            s.caller(&id, Some("forged"), true, t0),
            Err(SessionRefusal::Csrf)
        );
        assert_eq!(s.caller(&id, Some(&csrf), true, t0), Ok(tech));
        assert_eq!(
            s.caller("guess", None, false, t0),
            Err(SessionRefusal::Unknown)
        );
        assert_eq!(
            s.caller(&id, None, false, t0 + SESSION_TTL),
            Err(SessionRefusal::Unknown)
        );
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("theme=dark; avwarden_session=abc123; x=y"),
        );
        assert_eq!(cookie(&h), Some("abc123"));
        assert_eq!(cookie(&HeaderMap::new()), None);
    }
}
