//! Snapshots of the list answers (`/api/v1/devices`, `/api/v1/rooms`, `/api/v1/board`): the
//! serialised JSON kept with its ETag and, made at most once per body, its gzip copy, so a
//! dashboard polling a list costs a lock and a copy of a pointer, and an unchanged list a 304.
//!
//! Owns when a list is rebuilt, never what it shows: the handlers in `rooms`, `bookings` and
//! `mod` build the bodies. A snapshot remembers what it was built from (each device's state
//! channel, the book's change counter, the protection board's, and the first instant at which
//! the passing of time alone changes it: a booking starting or ending) and is rebuilt by the
//! first request that finds any of them moved; requests that arrive meanwhile wait for that
//! one rebuild. The check runs on every request, so an answer is never older than a change a
//! client could have seen through another route. It must not serve a body across a change.

use std::collections::HashMap;
use std::hash::Hasher;
use std::io::Write;
use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio::sync::{watch, Mutex};

use super::{ApiError, ApiState};
use crate::model::DeviceState;

/// The runtime stamps a device's `last_contact` on every frame without telling the state's
/// watchers (so a streaming receiver does not wake them per frame): the lists that show it
/// are rebuilt at least this often, so a list's `last_contact` trails the device route's by
/// at most this much.
const QUIET_STAMPS_MAX_AGE: chrono::Duration = chrono::Duration::seconds(1);

/// Bodies of one list kept per query (the board's `limit`) at most; a caller asking for more
/// distinct queries is answered freshly built, so memory stays bounded.
const MAX_KEYS: usize = 8;

/// One list's serialised answer.
#[derive(Debug)]
pub struct Snapshot {
    json: Bytes,
    etag: String,
    gzip: OnceLock<Option<Bytes>>,
    generated_at: DateTime<Utc>,
}

impl Snapshot {
    pub fn new(json: Vec<u8>, generated_at: DateTime<Utc>) -> Self {
        // A hash of the bytes, not a counter: a rebuild that comes out the same (a poll that
        // changed nothing shown) keeps the ETag, so a polling dashboard still gets its 304.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        h.write(&json);
        Self {
            etag: format!("\"{:016x}\"", h.finish()),
            json: Bytes::from(json),
            gzip: OnceLock::new(),
            generated_at,
        }
    }

    pub fn json(&self) -> &Bytes {
        &self.json
    }

    /// The strong ETag of the identity body, quotes included.
    pub fn etag(&self) -> &str {
        &self.etag
    }

    pub fn generated_at(&self) -> DateTime<Utc> {
        self.generated_at
    }

    /// The gzip body's ETag: another representation, so another strong validator.
    fn gzip_etag(&self) -> String {
        format!("{}-gzip\"", self.etag.trim_end_matches('"'))
    }

    /// The gzip copy, compressed by the first request that asks (None: compression failed,
    /// the identity body is answered).
    fn gzip(&self) -> Option<&Bytes> {
        self.gzip
            .get_or_init(|| {
                let mut enc = flate2::write::GzEncoder::new(
                    Vec::with_capacity(self.json.len() / 4),
                    flate2::Compression::fast(),
                );
                enc.write_all(&self.json).ok()?;
                enc.finish().ok().map(Bytes::from)
            })
            .as_ref()
    }

    /// The answer to a request with `headers`: 304 when `If-None-Match` names this body,
    /// gzip when `Accept-Encoding` takes it, the JSON otherwise.
    pub fn answer(&self, headers: &HeaderMap) -> Response {
        let gzip = accepts_gzip(headers).then(|| self.gzip()).flatten();
        let etag = match gzip {
            Some(_) => self.gzip_etag(),
            None => self.etag.clone(),
        };
        let mut r = if if_none_match(headers, &self.etag, &self.gzip_etag()) {
            StatusCode::NOT_MODIFIED.into_response()
        } else {
            let mut r = Response::new(Body::from(gzip.unwrap_or(&self.json).clone()));
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            if gzip.is_some() {
                h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            }
            r
        };
        let h = r.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&etag) {
            h.insert(header::ETAG, v);
        }
        // Stored, but asked again every time: the ETag makes the asking cheap.
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
        r
    }
}

/// Whether `If-None-Match` names either representation's ETag (weak comparison, RFC 9110
/// §13.1.2), or is `*`.
fn if_none_match(headers: &HeaderMap, etag: &str, gzip_etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim())
        .any(|t| {
            let t = t.strip_prefix("W/").unwrap_or(t);
            t == "*" || t == etag || t == gzip_etag
        })
}

/// Whether `Accept-Encoding` allows gzip: `gzip` (or `x-gzip`, or `*`) with a q-value above
/// zero, `gzip;q=0` refusing it whatever `*` says (RFC 9110 §12.5.3).
pub fn accepts_gzip(headers: &HeaderMap) -> bool {
    let mut gzip = None;
    let mut star = None;
    for item in headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
    {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        match name.as_str() {
            "gzip" | "x-gzip" => gzip = Some(q > 0.0),
            "*" => star = Some(q > 0.0),
            _ => {}
        }
    }
    gzip.or(star).unwrap_or(false)
}

/// What a list's bodies were built from, to tell whether they still show the present.
struct Sources {
    devices: Vec<watch::Receiver<DeviceState>>,
    book: Option<watch::Receiver<u64>>,
    protection: Option<(crate::levelwatch::ProtectionBoard, u64)>,
    /// The fleet whose devices `devices` watches, and its membership when they were taken: a
    /// device added or removed by a reload changes the list.
    fleet: Option<(Arc<crate::runtime::Fleet>, u64)>,
    /// The room layout and its generation (the rooms list).
    layout: Option<(super::rooms::LiveLayout, u64)>,
    /// The first instant at which time alone changes a body (None: never).
    valid_until: Option<DateTime<Utc>>,
}

impl Sources {
    fn changed(&self, now: DateTime<Utc>) -> bool {
        // A closed channel counts as changed once: its last state is read by the rebuild,
        // which then stops watching it.
        self.devices
            .iter()
            .any(|rx| rx.has_changed().unwrap_or(true))
            || self
                .book
                .as_ref()
                .is_some_and(|rx| rx.has_changed().unwrap_or(true))
            || self
                .protection
                .as_ref()
                .is_some_and(|(board, seen)| board.changes() != *seen)
            || self
                .fleet
                .as_ref()
                .is_some_and(|(fleet, seen)| fleet.membership() != *seen)
            || self
                .layout
                .as_ref()
                .is_some_and(|(layout, seen)| layout.generation() != *seen)
            || self.valid_until.is_some_and(|t| now >= t)
    }

    /// Take the present as seen, before the rebuild reads it: a change during the rebuild
    /// then marks the new bodies changed again rather than being lost.
    fn mark_seen(&mut self) {
        if let Some((fleet, seen)) = &mut self.fleet {
            if fleet.membership() != *seen {
                *seen = fleet.membership();
                self.devices = fleet.handles().map(|h| h.watch()).collect();
            }
        }
        if let Some((layout, seen)) = &mut self.layout {
            *seen = layout.generation();
        }
        for rx in &mut self.devices {
            rx.mark_unchanged();
        }
        self.devices.retain(|rx| rx.has_changed().is_ok());
        if let Some(rx) = &mut self.book {
            rx.mark_unchanged();
        }
        if let Some((board, seen)) = &mut self.protection {
            *seen = board.changes();
        }
        self.valid_until = None;
    }
}

struct Cache {
    sources: Sources,
    /// Set for the lists that show quietly stamped instants ([`QUIET_STAMPS_MAX_AGE`]).
    max_age: Option<chrono::Duration>,
    bodies: HashMap<String, Arc<Snapshot>>,
}

impl Cache {
    fn new(sources: Sources, max_age: Option<chrono::Duration>) -> Mutex<Self> {
        Mutex::new(Self {
            sources,
            max_age,
            bodies: HashMap::new(),
        })
    }
}

/// What a list's builder returns: the JSON, and the first instant at which time alone
/// changes it.
pub struct Built {
    pub json: Vec<u8>,
    pub valid_until: Option<DateTime<Utc>>,
}

impl Built {
    pub fn of<T: serde::Serialize>(
        value: &T,
        valid_until: Option<DateTime<Utc>>,
    ) -> Result<Self, ApiError> {
        let json = serde_json::to_vec(value).map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("the answer could not be serialised: {e}"),
            )
        })?;
        Ok(Self { json, valid_until })
    }
}

/// The three lists' snapshots. One per router; cheap to share.
pub struct Snapshots {
    devices: Mutex<Cache>,
    rooms: Mutex<Cache>,
    board: Mutex<Cache>,
}

/// Which list.
#[derive(Debug, Clone, Copy)]
pub enum List {
    Devices,
    Rooms,
    Board,
}

impl Snapshots {
    /// Watching what each list shows in `st`: the devices list its devices' states; the rooms
    /// list those, the book and the protection board; the board the book.
    pub fn new(st: &ApiState) -> Self {
        let devices = || st.fleet.handles().map(|h| h.watch()).collect::<Vec<_>>();
        let book = || st.schedule.as_ref().map(|s| s.book.subscribe());
        let fleet = || Some((st.fleet.clone(), st.fleet.membership()));
        let sources = |devices, book, protection, fleet, layout| Sources {
            devices,
            book,
            protection,
            fleet,
            layout,
            valid_until: None,
        };
        Self {
            devices: Cache::new(
                sources(devices(), None, None, fleet(), None),
                Some(QUIET_STAMPS_MAX_AGE),
            ),
            rooms: Cache::new(
                sources(
                    devices(),
                    book(),
                    st.protection.as_ref().map(|b| (b.clone(), b.changes())),
                    fleet(),
                    Some((st.layout.clone(), st.layout.generation())),
                ),
                Some(QUIET_STAMPS_MAX_AGE),
            ),
            board: Cache::new(sources(Vec::new(), book(), None, None, None), None),
        }
    }

    /// The body of `list` for query `key`: the kept one while nothing it shows changed, else
    /// one built by `build` (once, whoever else is waiting).
    pub async fn get(
        &self,
        list: List,
        key: &str,
        now: DateTime<Utc>,
        build: impl FnOnce(DateTime<Utc>) -> Result<Built, ApiError>,
    ) -> Result<Arc<Snapshot>, ApiError> {
        let cache = match list {
            List::Devices => &self.devices,
            List::Rooms => &self.rooms,
            List::Board => &self.board,
        };
        let mut c = cache.lock().await;
        if c.sources.changed(now) {
            c.bodies.clear();
        }
        if let Some(body) = c.bodies.get(key) {
            return Ok(body.clone());
        }
        if c.bodies.is_empty() {
            c.sources.mark_seen();
            c.sources.valid_until = c.max_age.map(|a| now + a);
        }
        let built = build(now)?;
        let body = Arc::new(Snapshot::new(built.json, now));
        if c.bodies.len() < MAX_KEYS {
            c.bodies.insert(key.to_owned(), body.clone());
            c.sources.valid_until = match (c.sources.valid_until, built.valid_until) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn gzip_is_taken_only_when_allowed() {
        let ae = header::ACCEPT_ENCODING;
        assert!(accepts_gzip(&headers(&[(ae.clone(), "gzip, deflate, br")])));
        assert!(accepts_gzip(&headers(&[(
            ae.clone(),
            "br;q=1.0, GZIP;q=0.5"
        )])));
        assert!(accepts_gzip(&headers(&[(ae.clone(), "*")])));
        assert!(!accepts_gzip(&headers(&[(ae.clone(), "gzip;q=0, *")])));
        assert!(!accepts_gzip(&headers(&[(ae.clone(), "identity")])));
        assert!(!accepts_gzip(&headers(&[(ae.clone(), "*;q=0")])));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn the_etag_follows_the_bytes_and_matches_either_representation() {
        let t = chrono::DateTime::<Utc>::UNIX_EPOCH;
        let a = Snapshot::new(b"[1]".to_vec(), t);
        let b = Snapshot::new(b"[1]".to_vec(), t + chrono::Duration::seconds(5));
        let c = Snapshot::new(b"[2]".to_vec(), t);
        assert_eq!(a.etag(), b.etag());
        assert_ne!(a.etag(), c.etag());
        let inm = header::IF_NONE_MATCH;
        let status = |s: &Snapshot, h: &HeaderMap| s.answer(h).status();
        assert_eq!(
            status(&a, &headers(&[(inm.clone(), b.etag())])),
            StatusCode::NOT_MODIFIED
        );
        let listed = format!("\"x\", W/{}", a.gzip_etag());
        assert_eq!(
            status(&a, &headers(&[(inm.clone(), &listed)])),
            StatusCode::NOT_MODIFIED
        );
        assert_eq!(
            status(&c, &headers(&[(inm.clone(), a.etag())])),
            StatusCode::OK
        );
        assert_eq!(status(&c, &HeaderMap::new()), StatusCode::OK);
    }

    #[test]
    fn the_gzip_body_decodes_to_the_json() {
        use std::io::Read;
        let json = serde_json::to_vec(&vec!["room"; 1000]).unwrap();
        let s = Snapshot::new(json.clone(), chrono::DateTime::<Utc>::UNIX_EPOCH);
        let gz = s.gzip().unwrap().clone();
        assert!(gz.len() < json.len() / 10);
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, json);
        // Made once: the same bytes again.
        assert_eq!(s.gzip().unwrap().as_ptr(), gz.as_ptr());
    }
}
