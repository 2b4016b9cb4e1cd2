//! The API's HTTP server: hyper's HTTP/1 connections under limits a hostile network cannot
//! exhaust (issue 16.2).
//!
//! `axum::serve` has no connection limit and no timeouts, so 2,000 idle or half-sent
//! connections used every descriptor: the health probe went unanswered and a projector could
//! not reconnect. Here:
//!
//! - at most [`ApiConfig::max_connections`] are open; a newcomer past the limit closes the
//!   oldest connection that has no request in progress (an idle keep-alive, or a head still
//!   trickling in), so a probe is answered through a flood; when every connection is busy the
//!   newcomer gets `503 overloaded`;
//! - a request head must arrive within the header timeout, which is also the idle timeout
//!   of a kept-alive connection, and a body within the body timeout (`408 body_timeout`);
//! - accept errors (descriptors exhausted) are one rate-limited warning and a counter, with a
//!   short pause instead of a busy loop;
//! - the errors hyper answers itself before any handler runs (a malformed request, a head too
//!   large, a URI too long) carry the same JSON body as every other error.
//!
//! Device links keep their descriptors: [`fit_to_descriptors`] lowers the connection limit
//! to what the descriptor limit leaves after the devices and a margin.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{Request, Response, StatusCode};
use axum::response::IntoResponse;
use axum::Router;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::{ApiError, BODY_LIMIT};
use crate::config::ApiConfig;
use crate::metrics::Metrics;

/// A request head (request line and headers) larger than this is refused with 431.
pub const MAX_HEAD: usize = 32 * 1024;
/// A request target longer than this is refused with 414.
pub const MAX_URI: usize = 8 * 1024;
/// Descriptors kept back from the API for the store, the broker, logs and the runtime.
pub const RESERVED_DESCRIPTORS: u64 = 64;
/// Descriptors kept back per device link (its socket or port, plus one while reconnecting).
pub const DESCRIPTORS_PER_DEVICE: u64 = 2;
/// At most one accept-error warning per this; the rest are counted.
const ACCEPT_WARN_EVERY: Duration = Duration::from_secs(10);
/// After an accept error, wait this long before accepting again (descriptors may be free
/// by then); a busy loop on EMFILE would burn a core.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// The connection limit that leaves device links their descriptors: at most `configured`,
/// and at most what `nofile` (the process's descriptor limit) leaves after `devices` links
/// and [`RESERVED_DESCRIPTORS`]; never below 8, so the API still answers something.
pub fn fit_to_descriptors(configured: usize, devices: usize, nofile: u64) -> usize {
    let kept = RESERVED_DESCRIPTORS + DESCRIPTORS_PER_DEVICE * devices as u64;
    let left = nofile.saturating_sub(kept).max(8);
    configured.min(usize::try_from(left).unwrap_or(usize::MAX))
}

/// The process's soft descriptor limit, if it can be read.
pub fn descriptor_limit() -> Option<u64> {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _)| soft)
}

/// Raise the soft descriptor limit to the hard one (what a daemon is allowed; 1,024 soft is
/// a default for interactive shells). Returns the limit in force.
pub fn raise_descriptor_limit() -> Option<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return Some(hard);
    }
    Some(soft)
}

/// One open connection as the limit sees it.
struct Slot {
    /// Requests received and not yet answered to their last byte.
    requests: AtomicUsize,
    /// Cancelled to close the connection for a newcomer.
    evict: CancellationToken,
}

/// The open connections, oldest first (ids grow with each accept).
#[derive(Default)]
struct Table {
    next: u64,
    open: BTreeMap<u64, Arc<Slot>>,
}

/// What the limit decided for a newly accepted connection.
enum Admit {
    /// Serve it; `evicted` tells whether an idle connection was closed to make room.
    Serve {
        id: u64,
        slot: Arc<Slot>,
        evicted: bool,
    },
    /// Every open connection has a request in progress.
    Full,
}

impl Table {
    fn admit(&mut self, max: usize) -> Admit {
        let mut evicted = false;
        if self.open.len() >= max {
            let idle = self
                .open
                .iter()
                .find(|(_, s)| s.requests.load(Ordering::Acquire) == 0)
                .map(|(id, _)| *id);
            let Some(id) = idle else {
                return Admit::Full;
            };
            if let Some(s) = self.open.remove(&id) {
                s.evict.cancel();
            }
            evicted = true;
        }
        let id = self.next;
        self.next += 1;
        let slot = Arc::new(Slot {
            requests: AtomicUsize::new(0),
            evict: CancellationToken::new(),
        });
        self.open.insert(id, slot.clone());
        Admit::Serve { id, slot, evicted }
    }
}

/// Counts a request as in progress until its response body is dropped (sent or abandoned).
struct InProgress(Arc<Slot>);

impl InProgress {
    fn new(slot: Arc<Slot>) -> Self {
        slot.requests.fetch_add(1, Ordering::AcqRel);
        Self(slot)
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.requests.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted until hyper has sent it.
struct Tracked {
    inner: Body,
    _request: InProgress,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Rate limit for a repeated warning: the first at once, then at most one per period, each
/// telling how many were suppressed since the last. A pure step, tested below.
#[derive(Debug, Default)]
pub struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    /// Record one occurrence at `now`; `Some(suppressed)` when it should be logged.
    pub fn hit(&mut self, now: Instant, every: Duration) -> Option<u64> {
        match self.last {
            Some(t) if now.duration_since(t) < every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// Serve `app` on `listener` under `limits` until `cancel`; then stop accepting, let open
/// connections finish the request they are on, and close idle ones. Connections run on
/// `tracker`, so the daemon's shutdown waits for them within its deadline.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ApiConfig,
    metrics: Metrics,
    tracker: TaskTracker,
    cancel: CancellationToken,
) {
    let table = Arc::new(Mutex::new(Table::default()));
    let mut throttle = Throttle::default();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_header_size(MAX_HEAD)
        .max_buf_size(MAX_HEAD + BODY_LIMIT);
    metrics.set_gauge("avwarden_api_connections", None, 0.0);
    loop {
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(accepted) => accepted,
                Err(e) => {
                    metrics.inc("avwarden_api_accept_errors_total");
                    if let Some(suppressed) = throttle.hit(Instant::now(), ACCEPT_WARN_EVERY) {
                        tracing::warn!(error = %e, suppressed, "API cannot accept connections");
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(ACCEPT_PAUSE) => continue,
                    }
                }
            },
        };
        let (admitted, open) = {
            let mut t = lock(&table);
            let a = t.admit(limits.max_connections);
            (a, t.open.len())
        };
        let (id, slot) = match admitted {
            Admit::Serve { id, slot, evicted } => {
                if evicted {
                    metrics.inc("avwarden_api_connections_evicted_total");
                }
                (id, slot)
            }
            Admit::Full => {
                metrics.inc("avwarden_api_connections_refused_total");
                refuse(stream);
                continue;
            }
        };
        metrics.set_gauge("avwarden_api_connections", None, open as f64);
        let _ = stream.set_nodelay(true);
        let conn = Connection {
            app: app.clone(),
            http: http.clone(),
            body_timeout: limits.body_timeout,
            slot,
            peer,
        };
        let table = table.clone();
        let metrics = metrics.clone();
        let cancel = cancel.clone();
        tracker.spawn(async move {
            conn.run(stream, cancel).await;
            let mut t = lock(&table);
            t.open.remove(&id);
            metrics.set_gauge("avwarden_api_connections", None, t.open.len() as f64);
        });
    }
}

fn lock(t: &Mutex<Table>) -> std::sync::MutexGuard<'_, Table> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}

/// Answer `503 overloaded` without reading the request, best effort, and close.
fn refuse(stream: TcpStream) {
    let body = error_body("overloaded", "every API connection is busy; retry shortly");
    let reply = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(reply.as_bytes());
}

fn error_body(code: &str, detail: &str) -> String {
    serde_json::json!({ "error": code, "detail": detail }).to_string()
}

struct Connection {
    app: Router,
    http: hyper::server::conn::http1::Builder,
    body_timeout: Duration,
    slot: Arc<Slot>,
    /// The client's address: failed logins are counted per client.
    peer: std::net::SocketAddr,
}

impl Connection {
    async fn run(self, stream: TcpStream, cancel: CancellationToken) {
        let Connection {
            app,
            http,
            body_timeout,
            slot,
            peer,
        } = self;
        let evict = slot.evict.clone();
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            let request = InProgress::new(slot.clone());
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            let app = app.clone();
            async move {
                let response = answer(app, req, body_timeout).await;
                Ok::<_, Infallible>(response.map(|inner| {
                    Body::new(Tracked {
                        inner,
                        _request: request,
                    })
                }))
            }
        });
        let conn = http.serve_connection(TokioIo::new(JsonErrors::new(stream)), service);
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => if let Err(e) = r {
                tracing::debug!(error = %e, "API connection ended");
            },
            // Closed for a newcomer: dropping the connection closes the socket.
            _ = evict.cancelled() => {}
            _ = cancel.cancelled() => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.as_mut().await;
            }
        }
    }
}

/// One request: the target's length checked, the body read within its timeout and limit,
/// then the router.
async fn answer(app: Router, req: Request<Incoming>, body_timeout: Duration) -> Response<Body> {
    if req.uri().path_and_query().map_or(0, |p| p.as_str().len()) > MAX_URI {
        return ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("request target over {} KiB", MAX_URI / 1024),
        )
        .into_response();
    }
    let (parts, body) = req.into_parts();
    let body = if http_body::Body::is_end_stream(&body) {
        Body::empty()
    } else {
        let limited = http_body_util::Limited::new(body, BODY_LIMIT);
        match tokio::time::timeout(body_timeout, limited.collect()).await {
            Ok(Ok(b)) => Body::from(b.to_bytes()),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                return ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "bad_body",
                    format!("request body over {} KiB", BODY_LIMIT / 1024),
                )
                .into_response();
            }
            Ok(Err(e)) => {
                return ApiError::new(StatusCode::BAD_REQUEST, "bad_body", e.to_string())
                    .into_response();
            }
            Err(_) => {
                return ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    format!(
                        "request body not received within {} ms",
                        body_timeout.as_millis()
                    ),
                )
                .into_response();
            }
        }
    };
    match app.oneshot(Request::from_parts(parts, body)).await {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

/// The socket as hyper sees it, with one change: the responses hyper writes on its own for a
/// request it could not parse (400, 414, 431 with an empty body) leave with the JSON body
/// every other error has. Only those are empty-bodied 4xx: every handler error carries JSON.
struct JsonErrors<S> {
    inner: S,
    /// A replacement being written: its bytes, how many are out, and how many of hyper's
    /// bytes it stands for.
    pending: Option<(Vec<u8>, usize, usize)>,
}

impl<S> JsonErrors<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            pending: None,
        }
    }
}

/// hyper's own error answer for `head`, rewritten with a JSON body; `None` for anything else.
fn rewrite_automatic(head: &[u8]) -> Option<Vec<u8>> {
    let rest = head.strip_prefix(b"HTTP/1.")?.get(2..)?;
    let (code, reason, detail) = match rest.get(..4)? {
        b"400 " => (
            "malformed_request",
            "Bad Request",
            "the request is not valid HTTP/1.1",
        ),
        b"414 " => ("uri_too_long", "URI Too Long", "request target too long"),
        b"431 " => (
            "headers_too_large",
            "Request Header Fields Too Large",
            "request head over 32 KiB",
        ),
        _ => return None,
    };
    // The whole write is one head with no body.
    if !head.ends_with(b"\r\n\r\n") || head.windows(4).filter(|w| w == b"\r\n\r\n").count() != 1 {
        return None;
    }
    let text = std::str::from_utf8(head).ok()?.to_ascii_lowercase();
    if !text.contains("\r\ncontent-length: 0\r\n") {
        return None;
    }
    let status = &rest[..3];
    let body = error_body(code, detail);
    Some(
        format!(
            "HTTP/1.1 {} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            std::str::from_utf8(status).ok()?,
            body.len()
        )
        .into_bytes(),
    )
}

impl<S: AsyncWrite + Unpin> JsonErrors<S> {
    /// Write out a pending replacement; ready with the count of hyper's bytes it replaced.
    fn drive_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        while let Some((bytes, done, _)) = &mut self.pending {
            if *done == bytes.len() {
                let (_, _, claimed) = self.pending.take().unwrap_or_default();
                return Poll::Ready(Ok(claimed));
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*done..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *done += n;
        }
        Poll::Ready(Ok(0))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for JsonErrors<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for JsonErrors<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.pending.is_none() {
            match rewrite_automatic(buf) {
                Some(reply) => this.pending = Some((reply, 0, buf.len())),
                None => return Pin::new(&mut this.inner).poll_write(cx, buf),
            }
        }
        this.drive_pending(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.pending.is_none() {
            let first = bufs.iter().find(|b| !b.is_empty()).map(|b| &b[..]);
            match first.and_then(|b| rewrite_automatic(b).map(|r| (r, b.len()))) {
                Some((reply, len)) => this.pending = Some((reply, 0, len)),
                None => return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs),
            }
        }
        this.drive_pending(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.drive_pending(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.drive_pending(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_limit_leaves_device_links_their_descriptors() {
        // The machine: 1,024 descriptors. 50 devices keep 100 + 64.
        assert_eq!(fit_to_descriptors(512, 50, 1024), 512);
        assert_eq!(fit_to_descriptors(5000, 50, 1024), 1024 - 164);
        // 2,500 devices under the unit's LimitNOFILE.
        assert_eq!(fit_to_descriptors(512, 2500, 16384), 512);
        // Too many devices for the limit: the API keeps a few.
        assert_eq!(fit_to_descriptors(512, 1000, 1024), 8);
    }

    #[test]
    fn a_full_table_closes_its_oldest_idle_connection_and_never_a_busy_one() {
        let mut t = Table::default();
        let slots: Vec<_> = (0..3)
            .map(|_| match t.admit(3) {
                Admit::Serve { slot, evicted, .. } => {
                    assert!(!evicted);
                    slot
                }
                Admit::Full => panic!("room left"),
            })
            .collect();
        // The oldest is answering a request, so the second goes.
        let busy = InProgress::new(slots[0].clone());
        let Admit::Serve { evicted, .. } = t.admit(3) else {
            panic!("an idle one can go");
        };
        assert!(evicted);
        assert!(!slots[0].evict.is_cancelled());
        assert!(slots[1].evict.is_cancelled());
        assert!(!slots[2].evict.is_cancelled());
        // All busy: the newcomer is refused.
        let _b2 = InProgress::new(slots[2].clone());
        let newest = t.open.values().last().unwrap().clone();
        let _b3 = InProgress::new(newest);
        assert!(matches!(t.admit(3), Admit::Full));
        // The request ends: its connection is idle again and can go.
        drop(busy);
        assert!(matches!(t.admit(3), Admit::Serve { evicted: true, .. }));
        assert!(slots[0].evict.is_cancelled());
    }

    #[test]
    fn accept_warnings_are_one_per_period_with_the_count_suppressed() {
        let every = Duration::from_secs(10);
        let t0 = Instant::now();
        let mut th = Throttle::default();
        assert_eq!(th.hit(t0, every), Some(0));
        for i in 1..40 {
            assert_eq!(th.hit(t0 + Duration::from_millis(100 * i), every), None);
        }
        assert_eq!(th.hit(t0 + every, every), Some(39));
        assert_eq!(th.hit(t0 + every + Duration::from_secs(1), every), None);
    }

    #[test]
    fn only_hypers_empty_error_answers_are_rewritten() {
        let hyper_400 = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: Fri, 04 Dec 2026 02:00:00 GMT\r\n\r\n";
        let r = String::from_utf8(rewrite_automatic(hyper_400).unwrap()).unwrap();
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"], "malformed_request");
        assert!(v["detail"].as_str().is_some_and(|d| !d.is_empty()));
        let hyper_431 =
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n";
        assert!(rewrite_automatic(hyper_431).is_some());
        // A handler's error has its body; a 200 is never touched; nor is half a head.
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 40\r\n\r\n";
        assert!(rewrite_automatic(ours).is_none());
        assert!(rewrite_automatic(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(rewrite_automatic(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n").is_none());
        assert!(rewrite_automatic(b"{\"error\":\"x\"}").is_none());
    }
}
