//! Snapshots of the list answers (`/api/v1/devices`, `/api/v1/rooms`, `/api/v1/board`): the
//! serialised JSON kept with its ETag and, made at most once per body, its gzip copy, so a
//! dashboard polling a list costs a lock and a copy of a pointer, and an unchanged list a 304.
//!
//! Owns when a list is rebuilt and how a body is assembled, never what it shows: the handlers
//! in `rooms`, `bookings` and `mod` build the views. A snapshot remembers what it was built
//! from (each device's state channel, the book's change counter, the protection board's, and
//! the first instant at which the passing of time alone changes it: a booking starting or
//! ending) and is rebuilt by the first request that finds any of them moved; requests that
//! arrive meanwhile wait for that one rebuild. The check runs on every request, so an answer
//! is never older than a change a client could have seen through another route. It must not
//! serve a body across a change.
//!
//! The rooms list rebuilds incrementally ([`super::rooms::RoomViews`]): it keeps each room's
//! view with what it was built from and builds again only the views of the rooms whose
//! inputs moved (a device's state channel, the bookings or verdicts once the book's counter
//! moved, protection once the board's did, a booking starting or ending); the others have
//! only their devices' quietly stamped contact instants re-read. A rebuild therefore costs
//! one pass of atomic checks and read locks over the fleet, the changed rooms' views and the
//! concatenation of the kept fragments, not 500 views, so it stays on the requesting worker
//! under the list's lock: the requests waiting meanwhile wait that long, and the freshness
//! rule above holds unchanged (every request still checks the sources first).
//!
//! The devices and rooms lists are assembled from [`Fragments`]: each entry's JSON is kept
//! with the view it was made from and re-serialised only when that view changes, so a rebuild
//! after one device's poll serialises one entry, not the list. Their ETags are weak: they
//! cover what a reader acts on exactly and contact instants only to the step of a global
//! grid ([`CONTACT_GRID_SECS`]), so a poller's 304 survives the polls that move nothing else.

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

/// The runtime stamps a device's `last_contact` on every frame without telling the state's
/// watchers (so a streaming receiver does not wake them per frame): the lists that show it
/// are rebuilt at least this often, so a list's `last_contact` trails the device route's by
/// at most this much.
const QUIET_STAMPS_MAX_AGE: chrono::Duration = chrono::Duration::seconds(1);

/// Counters of the snapshots' work, per list (`list` label), in `/metrics`: how often a body
/// is built, the time spent building (serialising and hashing), and the time requests spend
/// waiting for the list's lock (a rebuild in progress, mostly).
pub const REBUILDS: &str = "avwarden_api_snapshot_rebuilds_total";
pub const BUILD_SECONDS: &str = "avwarden_api_snapshot_build_seconds_total";
pub const WAIT_SECONDS: &str = "avwarden_api_snapshot_wait_seconds_total";
/// Entries whose view a rebuild built again because something it is built from moved (the
/// rooms list: a device's state, the bookings or verdicts, the protection, the time), per
/// list: a rebuild after one device's change builds one room, not every room.
pub const VIEWS_BUILT: &str = "avwarden_api_snapshot_views_built_total";

/// The grid contact instants are judged on, in seconds of wall time: the devices and rooms
/// lists' weak ETags cover everything else they show exactly, and their contact instants
/// only as far as the grid step the body was built in. A poller's ETag therefore matches
/// until something it acts on changes or the step ends; the body it keeps meanwhile shows
/// contact instants less than one step (plus [`QUIET_STAMPS_MAX_AGE`]) old.
const CONTACT_GRID_SECS: i64 = 30;

/// Bodies of one list kept per query (the board's `limit`) at most; a caller asking for more
/// distinct queries is answered freshly built, so memory stays bounded.
const MAX_KEYS: usize = 8;

/// One list's serialised answer.
#[derive(Debug)]
pub struct Snapshot {
    json: Bytes,
    /// The ETag as sent (`"…"` or `W/"…"`), and the opaque tag inside it, quotes included.
    etag: String,
    opaque: String,
    gzip: OnceLock<Option<Bytes>>,
    generated_at: DateTime<Utc>,
}

impl Snapshot {
    /// A body with a strong ETag: a hash of its bytes.
    pub fn new(json: Vec<u8>, generated_at: DateTime<Utc>) -> Self {
        // A hash of the bytes, not a counter: a rebuild that comes out the same (a poll that
        // changed nothing shown) keeps the ETag, so a polling dashboard still gets its 304.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        h.write(&json);
        let opaque = format!("\"{:016x}\"", h.finish());
        Self {
            etag: opaque.clone(),
            opaque,
            json: Bytes::from(json),
            gzip: OnceLock::new(),
            generated_at,
        }
    }

    /// A body with a weak ETag (RFC 9110 §8.8.1): `semantic` hashes what a reader acts on,
    /// `step` the contact grid step it was built in; bodies that differ only in contact
    /// instants within one step share it.
    pub fn weak(json: Vec<u8>, semantic: u64, step: i64, generated_at: DateTime<Utc>) -> Self {
        let opaque = format!("\"{semantic:016x}.{step:x}\"");
        Self {
            etag: format!("W/{opaque}"),
            opaque,
            json: Bytes::from(json),
            gzip: OnceLock::new(),
            generated_at,
        }
    }

    pub fn json(&self) -> &Bytes {
        &self.json
    }

    /// The ETag of the identity body as sent, quotes (and a weak one's `W/`) included.
    pub fn etag(&self) -> &str {
        &self.etag
    }

    pub fn generated_at(&self) -> DateTime<Utc> {
        self.generated_at
    }

    /// The gzip body's ETag: another representation, so another validator.
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
        let gzip_opaque = format!("{}-gzip\"", self.opaque.trim_end_matches('"'));
        let mut r = if if_none_match(headers, &self.opaque, &gzip_opaque) {
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

/// Whether `If-None-Match` names either representation's opaque tag (weak comparison, RFC
/// 9110 §13.1.2: a `W/` on either side is ignored), or is `*`.
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
    book: Option<watch::Receiver<u64>>,
    protection: Option<(crate::levelwatch::ProtectionBoard, u64)>,
    /// The fleet whose devices the list shows, with its membership (a device added or removed
    /// by a reload changes the list) and its count of state changes when last seen: one load
    /// each, where asking every device's `watch` was a cache miss per device per request.
    fleet: Option<(Arc<crate::runtime::Fleet>, Seen)>,
    /// The room layout and its generation (the rooms list).
    layout: Option<(super::rooms::LiveLayout, u64)>,
    /// The first instant at which time alone changes a body (None: never).
    valid_until: Option<DateTime<Utc>>,
}

impl Sources {
    fn changed(&self, now: DateTime<Utc>) -> bool {
        self.fleet
            .as_ref()
            .is_some_and(|(fleet, seen)| Seen::of(fleet) != *seen)
            || self
                .book
                .as_ref()
                .is_some_and(|rx| rx.has_changed().unwrap_or(true))
            || self
                .protection
                .as_ref()
                .is_some_and(|(board, seen)| board.changes() != *seen)
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
            *seen = Seen::of(fleet);
        }
        if let Some((layout, seen)) = &mut self.layout {
            *seen = layout.generation();
        }
        if let Some(rx) = &mut self.book {
            rx.mark_unchanged();
        }
        if let Some((board, seen)) = &mut self.protection {
            *seen = board.changes();
        }
        self.valid_until = None;
    }
}

/// A fleet's membership and count of state changes, as a list last saw them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    membership: u64,
    changes: u64,
}

impl Seen {
    fn of(fleet: &crate::runtime::Fleet) -> Self {
        Seen {
            membership: fleet.membership(),
            changes: fleet.state_changes(),
        }
    }
}

struct Cache {
    sources: Sources,
    /// Set for the lists that show quietly stamped instants ([`QUIET_STAMPS_MAX_AGE`]).
    max_age: Option<chrono::Duration>,
    bodies: HashMap<String, Arc<Snapshot>>,
    /// The bodies from before the last change, answered while their rebuild is under way.
    previous: HashMap<String, Arc<Snapshot>>,
}

/// One list: its bodies behind a lock held only to look and to store, and its builder's
/// state behind another, held for a rebuild. A request that finds the list changed while
/// another request rebuilds it is answered the body from before the change at once instead
/// of waiting the rebuild's milliseconds (issue 15.3's tail): a list is never more than one
/// rebuild behind the present.
struct List<K> {
    cache: Mutex<Cache>,
    /// What the list's builder keeps for the next rebuild to reuse (its entries as last
    /// serialised, the views they were made from).
    kept: Mutex<K>,
}

impl<K: Default> List<K> {
    fn new(sources: Sources, max_age: Option<chrono::Duration>) -> Self {
        Self {
            cache: Mutex::new(Cache {
                sources,
                max_age,
                bodies: HashMap::new(),
                previous: HashMap::new(),
            }),
            kept: Mutex::new(K::default()),
        }
    }
}

/// What a list's builder returns: the JSON, the first instant at which time alone changes
/// it, and for a list assembled from [`Fragments`] the hash of what a reader acts on.
pub struct Built {
    pub json: Vec<u8>,
    pub valid_until: Option<DateTime<Utc>>,
    semantic: Option<u64>,
    /// How many entries' views this build made again ([`VIEWS_BUILT`]).
    pub views_built: usize,
}

impl Built {
    pub fn of<T: serde::Serialize>(
        value: &T,
        valid_until: Option<DateTime<Utc>>,
    ) -> Result<Self, ApiError> {
        Ok(Self {
            json: serialise(value)?,
            valid_until,
            semantic: None,
            views_built: 0,
        })
    }

    /// A list assembled from its fragments: its ETag is weak, over what a reader acts on.
    pub fn assembled(list: Assembled, valid_until: Option<DateTime<Utc>>) -> Self {
        Self {
            json: list.json,
            valid_until,
            semantic: Some(list.semantic),
            views_built: list.serialised,
        }
    }

    /// The count of entries whose views this build made again, when the builder knows it
    /// better than the count of entries serialised (which contact instants move too).
    pub fn with_views_built(mut self, n: usize) -> Self {
        self.views_built = n;
        self
    }
}

fn serialise<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(value).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("the answer could not be serialised: {e}"),
        )
    })
}

/// One list entry as last serialised: the view it was made from (to tell whether the next
/// rebuild may reuse it), its JSON, and the hash of its view with contact instants blanked.
struct Fragment<T> {
    view: T,
    json: Vec<u8>,
    semantic: u64,
}

/// A list's entries, each serialised once per change of its view: a rebuild re-serialises
/// the entries that changed (a polled device, its room) and concatenates the rest, so a
/// change costs one entry's serialisation, not the list's.
pub struct Fragments<T> {
    kept: HashMap<String, Fragment<T>>,
}

impl<T> Default for Fragments<T> {
    fn default() -> Self {
        Self {
            kept: HashMap::new(),
        }
    }
}

/// A list body assembled from fragments: the JSON array, and the hash of what its entries
/// show a reader once their contact instants are blanked.
pub struct Assembled {
    json: Vec<u8>,
    semantic: u64,
    /// How many entries were serialised again (the others' bytes were reused).
    serialised: usize,
}

impl Assembled {
    /// How many entries were serialised again (the others' bytes were reused).
    pub fn serialised(&self) -> usize {
        self.serialised
    }
}

impl<T: serde::Serialize + PartialEq + Clone> Fragments<T> {
    /// The JSON array of `entries` (key, view) in order: the same bytes as serialising the
    /// views as one array. An entry whose view equals the one kept under its key reuses
    /// its bytes; `blank` removes from a copy of a view what moves without a reader having
    /// to act on it (contact instants), for the weak validator. Keys not among `entries`
    /// are forgotten.
    pub fn assemble(
        &mut self,
        entries: impl IntoIterator<Item = (String, T)>,
        blank: impl Fn(&mut T),
    ) -> Result<Assembled, ApiError> {
        self.assemble_changed(entries.into_iter().map(|(k, v)| (k, Some(v))), blank)
    }

    /// [`Fragments::assemble`] where an entry without a view (None) is known unchanged by
    /// the caller: its kept bytes are reused without comparing views. An entry without a
    /// view and without kept bytes is an error (the caller's bookkeeping is wrong), never a
    /// silently missing entry.
    pub fn assemble_changed(
        &mut self,
        entries: impl IntoIterator<Item = (String, Option<T>)>,
        blank: impl Fn(&mut T),
    ) -> Result<Assembled, ApiError> {
        let mut kept = HashMap::with_capacity(self.kept.len());
        let mut json = Vec::with_capacity(self.kept.values().map(|f| f.json.len() + 1).sum());
        let mut semantic = std::collections::hash_map::DefaultHasher::new();
        let mut serialised = 0;
        json.push(b'[');
        for (key, view) in entries {
            let fragment = match (self.kept.remove(&key), view) {
                (Some(f), None) => f,
                (Some(f), Some(view)) if f.view == view => f,
                (_, Some(view)) => {
                    serialised += 1;
                    let mut blanked = view.clone();
                    blank(&mut blanked);
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    h.write(&serialise(&blanked)?);
                    Fragment {
                        json: serialise(&view)?,
                        semantic: h.finish(),
                        view,
                    }
                }
                (None, None) => {
                    return Err(ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        format!("the list entry {key:?} was neither kept nor built"),
                    ))
                }
            };
            if json.len() > 1 {
                json.push(b',');
            }
            json.extend_from_slice(&fragment.json);
            semantic.write_u64(fragment.semantic);
            kept.insert(key, fragment);
        }
        json.push(b']');
        semantic.write_usize(kept.len());
        self.kept = kept;
        Ok(Assembled {
            json,
            semantic: semantic.finish(),
            serialised,
        })
    }
}

/// The three lists' snapshots. One per router; cheap to share.
pub struct Snapshots {
    metrics: crate::metrics::Metrics,
    devices: List<Fragments<super::DeviceSummary>>,
    rooms: List<super::rooms::RoomViews>,
    board: List<()>,
}

impl Snapshots {
    /// Watching what each list shows in `st`: the devices list its devices' states; the rooms
    /// list those, the book and the protection board; the board the book.
    pub fn new(st: &ApiState) -> Self {
        let book = || st.schedule.as_ref().map(|s| s.book.subscribe());
        let fleet = || Some((st.fleet.clone(), Seen::of(&st.fleet)));
        let sources = |book, protection, fleet, layout| Sources {
            book,
            protection,
            fleet,
            layout,
            valid_until: None,
        };
        Self {
            metrics: st.metrics.clone(),
            devices: List::new(
                sources(None, None, fleet(), None),
                Some(QUIET_STAMPS_MAX_AGE),
            ),
            rooms: List::new(
                sources(
                    book(),
                    st.protection.as_ref().map(|b| (b.clone(), b.changes())),
                    fleet(),
                    Some((st.layout.clone(), st.layout.generation())),
                ),
                Some(QUIET_STAMPS_MAX_AGE),
            ),
            board: List::new(sources(book(), None, None, None), None),
        }
    }

    /// The devices list: the kept body while nothing it shows changed, else the one `build`
    /// assembles from the list's fragments (once, whoever else is waiting).
    pub async fn devices(
        &self,
        now: DateTime<Utc>,
        build: impl FnOnce(
            DateTime<Utc>,
            &mut Fragments<super::DeviceSummary>,
        ) -> Result<Built, ApiError>,
    ) -> Result<Arc<Snapshot>, ApiError> {
        self.get(&self.devices, "devices", "", now, build).await
    }

    /// The rooms list, as [`Snapshots::devices`].
    pub async fn rooms(
        &self,
        now: DateTime<Utc>,
        build: impl FnOnce(DateTime<Utc>, &mut super::rooms::RoomViews) -> Result<Built, ApiError>,
    ) -> Result<Arc<Snapshot>, ApiError> {
        self.get(&self.rooms, "rooms", "", now, build).await
    }

    /// The board for query `key` (its `limit`), built whole by `build`.
    pub async fn board(
        &self,
        key: &str,
        now: DateTime<Utc>,
        build: impl FnOnce(DateTime<Utc>) -> Result<Built, ApiError>,
    ) -> Result<Arc<Snapshot>, ApiError> {
        self.get(&self.board, "board", key, now, |now, _| build(now))
            .await
    }

    /// The body of `list` for query `key`: the kept one while nothing it shows changed, else
    /// one built by `build` (once, whoever else is asking: they get the body from before the
    /// change meanwhile, or wait when there is none).
    async fn get<K>(
        &self,
        list: &List<K>,
        name: &'static str,
        key: &str,
        now: DateTime<Utc>,
        build: impl FnOnce(DateTime<Utc>, &mut K) -> Result<Built, ApiError>,
    ) -> Result<Arc<Snapshot>, ApiError> {
        let asked = tokio::time::Instant::now();
        let mut kept = loop {
            let mut c = list.cache.lock().await;
            if c.sources.changed(now) && !c.bodies.is_empty() {
                c.previous = std::mem::take(&mut c.bodies);
            }
            if let Some(body) = c.bodies.get(key) {
                let body = body.clone();
                drop(c);
                self.waited(name, asked);
                return Ok(body);
            }
            match list.kept.try_lock() {
                Ok(kept) => {
                    if c.bodies.is_empty() {
                        // Before the build reads the present: a change during it marks the
                        // new body changed again rather than being lost.
                        c.sources.mark_seen();
                        c.sources.valid_until = c.max_age.map(|a| now + a);
                    }
                    break kept;
                }
                Err(_) => {
                    if let Some(body) = c.previous.get(key) {
                        let body = body.clone();
                        drop(c);
                        self.waited(name, asked);
                        return Ok(body);
                    }
                    drop(c);
                    // Nothing from before to answer with: wait for the rebuild, look again.
                    drop(list.kept.lock().await);
                }
            }
        };
        let locked = self.waited(name, asked);
        let built = build(now, &mut kept)?;
        let body = Arc::new(match built.semantic {
            // The weak validator steps with the contact grid: a 304 then vouches for contact
            // instants at most one grid step old (see `CONTACT_GRID`).
            Some(semantic) => Snapshot::weak(built.json, semantic, grid_step(now), now),
            None => Snapshot::new(built.json, now),
        });
        let grid_ends = built.semantic.map(|_| grid_end(now));
        self.metrics.inc_labeled_static(REBUILDS, "list", name);
        if built.views_built > 0 {
            self.metrics
                .add_labeled(VIEWS_BUILT, "list", name, built.views_built as f64);
        }
        self.metrics
            .add_labeled(BUILD_SECONDS, "list", name, locked.elapsed().as_secs_f64());
        let mut c = list.cache.lock().await;
        if c.bodies.len() < MAX_KEYS {
            c.bodies.insert(key.to_owned(), body.clone());
            c.sources.valid_until = [c.sources.valid_until, built.valid_until, grid_ends]
                .into_iter()
                .flatten()
                .min();
        }
        Ok(body)
    }

    /// Count the time since `asked` as waiting for the list; the instant it ended.
    fn waited(&self, name: &'static str, asked: tokio::time::Instant) -> tokio::time::Instant {
        let now = tokio::time::Instant::now();
        self.metrics
            .add_labeled(WAIT_SECONDS, "list", name, (now - asked).as_secs_f64());
        now
    }
}

/// The contact grid step `now` falls in: the same for every device, so all contact instants
/// cross a step together and a list's weak validator changes once per step at most.
fn grid_step(now: DateTime<Utc>) -> i64 {
    now.timestamp().div_euclid(CONTACT_GRID_SECS)
}

/// The instant the grid step of `now` ends.
fn grid_end(now: DateTime<Utc>) -> DateTime<Utc> {
    let next = (grid_step(now) + 1).saturating_mul(CONTACT_GRID_SECS);
    DateTime::<Utc>::from_timestamp(next, 0).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A list watching only a book counter, and that counter's sender.
    fn book_list() -> (Snapshots, watch::Sender<u64>) {
        let (tx, rx) = watch::channel(0u64);
        let sources = |book| Sources {
            book,
            protection: None,
            fleet: None,
            layout: None,
            valid_until: None,
        };
        let snapshots = Snapshots {
            metrics: crate::metrics::Metrics::new(),
            devices: List::new(sources(None), None),
            rooms: List::new(sources(None), None),
            board: List::new(sources(Some(rx)), None),
        };
        (snapshots, tx)
    }

    /// Pins issue 15.3's tail: every request that came while a list was rebuilt waited for
    /// the rebuild's milliseconds. Now the body from before the change answers them, and the
    /// next request after the rebuild gets the new one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_during_a_rebuild_gets_the_body_before_the_change_without_waiting() {
        let (snapshots, book) = book_list();
        let snapshots = Arc::new(snapshots);
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let body = |n: u64| Built::of(&serde_json::json!({ "book": n }), None);
        let first = snapshots.board("", now, |_| body(0)).await.unwrap();
        book.send_replace(1);
        // A rebuild that holds until the second request has been answered.
        let (entered_tx, entered_rx) = tokio::sync::oneshot::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let tasks = tokio_util::task::TaskTracker::new();
        let rebuilding = {
            let snapshots = snapshots.clone();
            tasks.spawn(async move {
                snapshots
                    .board("", now, move |_| {
                        let _ = entered_tx.send(());
                        let _ = release_rx.recv();
                        body(1)
                    })
                    .await
            })
        };
        entered_rx.await.unwrap();
        let during = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            snapshots.board("", now, |_| panic!("a second rebuild at the same time")),
        )
        .await
        .expect("answered while the rebuild holds")
        .unwrap();
        assert_eq!(
            during.json(),
            first.json(),
            "the body from before the change"
        );
        release_tx.send(()).unwrap();
        let rebuilt = rebuilding.await.unwrap().unwrap();
        assert_eq!(&rebuilt.json()[..], br#"{"book":1}"#);
        let after = snapshots
            .board("", now, |_| panic!("built again with nothing changed"))
            .await
            .unwrap();
        assert_eq!(after.json(), rebuilt.json());
    }

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

    #[derive(Debug, Clone, PartialEq, serde::Serialize)]
    struct Entry {
        id: String,
        health: &'static str,
        last_contact: Option<i64>,
    }

    fn entries(contacts: [i64; 3], health: [&'static str; 3]) -> Vec<(String, Entry)> {
        (0..3)
            .map(|i| {
                let id = format!("d{i}");
                let e = Entry {
                    id: id.clone(),
                    health: health[i],
                    last_contact: Some(contacts[i]),
                };
                (id, e)
            })
            .collect()
    }

    fn blank(e: &mut Entry) {
        e.last_contact = e.last_contact.map(|_| 0);
    }

    #[test]
    fn fragments_assemble_the_bytes_of_the_whole_list_and_hash_what_readers_act_on() {
        let mut f = Fragments::default();
        let list = entries([1, 2, 3], ["ok"; 3]);
        let views: Vec<&Entry> = list.iter().map(|(_, e)| e).collect();
        let a = f.assemble(list.clone(), blank).unwrap();
        assert_eq!(a.json, serde_json::to_vec(&views).unwrap());
        let kept = f.kept["d0"].json.as_ptr();

        // Contacts move: new bytes, the same meaning; the unchanged entry is reused.
        let moved = entries([1, 5, 6], ["ok"; 3]);
        let b = f.assemble(moved.clone(), blank).unwrap();
        let views: Vec<&Entry> = moved.iter().map(|(_, e)| e).collect();
        assert_eq!(b.json, serde_json::to_vec(&views).unwrap());
        assert_eq!(b.semantic, a.semantic);
        assert_eq!(f.kept["d0"].json, serde_json::to_vec(&moved[0].1).unwrap());
        assert_eq!(f.kept["d0"].json.as_ptr(), kept, "d0 unchanged: reused");
        assert_eq!(f.kept["d1"].json, serde_json::to_vec(&moved[1].1).unwrap());

        // A health changes: another meaning. An entry gone: forgotten, another meaning.
        let c = f
            .assemble(entries([1, 5, 6], ["ok", "faulted", "ok"]), blank)
            .unwrap();
        assert_ne!(c.semantic, b.semantic);
        let d = f
            .assemble(entries([1, 5, 6], ["ok"; 3]).into_iter().take(2), blank)
            .unwrap();
        assert_ne!(d.semantic, b.semantic);
        assert_eq!(f.kept.len(), 2);
        let empty = f.assemble(Vec::new(), blank).unwrap();
        assert_eq!(empty.json, b"[]");
    }

    #[test]
    fn a_weak_etag_matches_either_form_and_steps_with_the_grid() {
        let t = chrono::DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::seconds(61);
        let a = Snapshot::weak(b"[1]".to_vec(), 7, grid_step(t), t);
        assert!(a.etag().starts_with("W/\""));
        let inm = header::IF_NONE_MATCH;
        for tag in [a.etag().to_owned(), a.etag()[2..].to_owned(), a.gzip_etag()] {
            let h = headers(&[(inm.clone(), &tag)]);
            assert_eq!(a.answer(&h).status(), StatusCode::NOT_MODIFIED, "{tag}");
        }
        let later = t + chrono::Duration::seconds(29);
        let b = Snapshot::weak(b"[2]".to_vec(), 7, grid_step(later), later);
        assert_ne!(a.etag(), b.etag(), "another step of the grid");
        assert_eq!(grid_step(t), grid_step(t + chrono::Duration::seconds(28)));
        assert_eq!(grid_end(t), t + chrono::Duration::seconds(29));
    }

    #[test]
    fn an_entry_known_unchanged_reuses_its_bytes_and_one_never_kept_is_an_error() {
        let mut f = Fragments::default();
        let list = entries([1, 2, 3], ["ok"; 3]);
        let a = f.assemble(list.clone(), blank).unwrap();
        assert_eq!(a.serialised(), 3);
        let kept = f.kept["d1"].json.as_ptr();
        // d1 given as unchanged (None) while its view moved: the caller vouched, so its
        // bytes are reused as they are; d2's new view is serialised.
        let moved = entries([1, 9, 9], ["ok", "ok", "faulted"]);
        let changed = moved
            .iter()
            .enumerate()
            .map(|(i, (k, v))| (k.clone(), (i != 1).then(|| v.clone())));
        let b = f.assemble_changed(changed, blank).unwrap();
        assert_eq!(b.serialised(), 1, "d0 equal, d1 vouched for, d2 new");
        assert_eq!(f.kept["d1"].json.as_ptr(), kept);
        let want = [&list[0].1, &list[1].1, &moved[2].1];
        assert_eq!(b.json, serde_json::to_vec(&want).unwrap());
        let unknown = f.assemble_changed([("d9".to_owned(), None)], blank);
        assert!(unknown.is_err());
    }
}
