//! `GET /api/v1/events`: the live event stream as server-sent events, for the dashboard and
//! any other client that wants state changes, verdicts and alerts as they happen.
//!
//! Owns the API's one bus sink ([`EventLog`]): it numbers every event it takes with a
//! monotonically increasing id and keeps the last ones in a ring, so a client that reconnects
//! with `Last-Event-ID` gets exactly what it missed, and one whose id is gone is told to
//! reload (`event: reset`). A client that falls behind is told how much it missed
//! (`event: lagged`) and goes on; it is never silently starved. Must not block the bus (the
//! sink counts what it cannot take, like every sink) and must not decide anything about the
//! events: it only numbers, keeps and forwards them.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::Stream;
use serde::Deserialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{ApiError, ApiState};
use crate::events::{Event, EventBus, EventFilter};

/// Events the ring keeps for clients that reconnect.
pub const RING_CAPACITY: usize = 4096;
/// Events a client may fall behind by before it is told it lagged.
pub const CLIENT_CAPACITY: usize = 1024;
/// A comment line this often keeps proxies from closing a quiet stream.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// One event with its stream id, serialized once for every client.
#[derive(Debug)]
pub struct Numbered {
    pub id: u64,
    pub event: Arc<Event>,
    json: String,
}

struct Ring {
    events: VecDeque<Arc<Numbered>>,
    capacity: usize,
    /// The id the next event gets (ids start at 1, so 0 means "nothing seen").
    next: u64,
}

/// The numbered events and the live feed of new ones. Cheap to clone.
#[derive(Clone)]
pub struct EventLog {
    ring: Arc<Mutex<Ring>>,
    live: broadcast::Sender<Arc<Numbered>>,
    cancel: CancellationToken,
}

/// Where a client starts.
#[derive(Debug, PartialEq, Eq)]
enum Start {
    /// From the events after this id, all of which the ring still holds.
    After(u64),
    /// The id is unknown (too old, or from before a restart): the client must reload.
    Reset { latest: u64 },
}

impl EventLog {
    /// Takes every event of `bus` (the bus carries no meter samples: they travel on the meter
    /// stream) until `cancel`, on `tracker`. `ring` events are kept for reconnects; a client
    /// may lag by `per_client` before it is told.
    pub fn start(
        bus: &EventBus,
        ring: usize,
        per_client: usize,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> Self {
        let log = Self::new(ring, per_client, cancel.clone());
        // As deep as the ring: a burst the numbering task has not reached yet is not lost.
        let mut sink = bus.sink("api-events", EventFilter::all(), ring.max(1));
        let feeder = log.clone();
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    e = sink.recv() => match e {
                        Some(e) => feeder.push(e),
                        None => break,
                    },
                }
            }
        });
        log
    }

    fn new(ring: usize, per_client: usize, cancel: CancellationToken) -> Self {
        let (live, _) = broadcast::channel(per_client.max(1));
        Self {
            ring: Arc::new(Mutex::new(Ring {
                events: VecDeque::with_capacity(ring.max(1)),
                capacity: ring.max(1),
                next: 1,
            })),
            live,
            cancel,
        }
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Numbers `event`, keeps it and sends it to every client.
    fn push(&self, event: Arc<Event>) {
        let json = serde_json::to_string(&*event).unwrap_or_else(|_| "{}".to_owned());
        let mut ring = self.ring();
        let n = Arc::new(Numbered {
            id: ring.next,
            event,
            json,
        });
        ring.next += 1;
        if ring.events.len() == ring.capacity {
            ring.events.pop_front();
        }
        ring.events.push_back(n.clone());
        // Under the ring's lock, so a client subscribing under it sees each event once.
        let _ = self.live.send(n);
    }

    /// The id of the newest event, 0 before the first.
    pub fn latest(&self) -> u64 {
        self.ring().next - 1
    }

    /// Where a client that last saw `last` starts, the events it missed, and its live feed.
    fn open(
        &self,
        last: Option<u64>,
    ) -> (
        Start,
        Vec<Arc<Numbered>>,
        broadcast::Receiver<Arc<Numbered>>,
    ) {
        let ring = self.ring();
        let rx = self.live.subscribe();
        let latest = ring.next - 1;
        let start = match last {
            None => Start::After(latest),
            Some(last) => {
                let oldest = ring.events.front().map_or(ring.next, |n| n.id);
                if last > latest || last + 1 < oldest {
                    Start::Reset { latest }
                } else {
                    Start::After(last)
                }
            }
        };
        let missed = match start {
            Start::After(after) => ring
                .events
                .iter()
                .filter(|n| n.id > after)
                .cloned()
                .collect(),
            Start::Reset { .. } => Vec::new(),
        };
        (start, missed, rx)
    }
}

/// `?kinds=alert_changed,verdict_changed&room=r101&device=x&last_event_id=17`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// Comma-separated event names ([`crate::events::EventKind::name`]); all when absent.
    pub kinds: Option<String>,
    pub room: Option<String>,
    pub device: Option<String>,
    /// For clients that cannot set the `Last-Event-ID` header; the header wins.
    pub last_event_id: Option<u64>,
}

/// What one client wants to see.
#[derive(Debug, Default, Clone)]
pub struct ClientFilter {
    kinds: Option<Vec<String>>,
    room: Option<String>,
    device: Option<String>,
}

impl ClientFilter {
    pub fn of(q: &StreamQuery) -> Self {
        let kinds = q.kinds.as_ref().map(|k| {
            k.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        });
        Self {
            kinds,
            room: q.room.clone().filter(|r| !r.is_empty()),
            device: q.device.clone().filter(|d| !d.is_empty()),
        }
    }

    pub fn accepts(&self, e: &Event) -> bool {
        if let Some(kinds) = &self.kinds {
            if !kinds.iter().any(|k| k == e.kind.name()) {
                return false;
            }
        }
        if let Some(room) = &self.room {
            if e.kind.room().map(|r| r.as_str()) != Some(room.as_str()) {
                return false;
            }
        }
        if let Some(device) = &self.device {
            if e.kind.device().map(|d| d.as_str()) != Some(device.as_str()) {
                return false;
            }
        }
        true
    }
}

fn message(n: &Numbered) -> SseEvent {
    SseEvent::default()
        .id(n.id.to_string())
        .event(n.event.kind.name())
        .data(&n.json)
}

/// The client's stream: what it missed, then live events, each through its filter.
struct Client {
    pending: VecDeque<SseEvent>,
    rx: broadcast::Receiver<Arc<Numbered>>,
    filter: ClientFilter,
    /// The last id this client was given (or skipped by its filter).
    last: u64,
    cancel: CancellationToken,
}

impl Client {
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(e);
            }
            let got = tokio::select! {
                _ = self.cancel.cancelled() => return None,
                got = self.rx.recv() => got,
            };
            match got {
                Ok(n) if n.id <= self.last => continue,
                Ok(n) => {
                    self.last = n.id;
                    if self.filter.accepts(&n.event) {
                        return Some(message(&n));
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    let data = serde_json::json!({
                        "missed": missed,
                        "last_event_id": self.last,
                    });
                    return Some(SseEvent::default().event("lagged").data(data.to_string()));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// The id a reconnecting client last saw: the `Last-Event-ID` header, else the query's.
/// A header that is not a number names no event of this daemon: the client resets.
fn last_seen(headers: &HeaderMap, q: &StreamQuery) -> Option<u64> {
    match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(u64::MAX),
        ),
        None => q.last_event_id,
    }
}

/// One message of the stream as the OpenAPI document describes it (SSE fields are text;
/// `data` is the event as JSON text). `lagged` has no `id`. Never built: a schema only.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct SseMessage {
    /// The event's number (absent on `lagged`).
    id: Option<String>,
    /// The event's name (`EventKind::name`), or `reset` / `lagged`.
    event: Option<String>,
    /// The event as JSON text.
    data: String,
}

#[utoipa::path(
    get,
    path = "/api/v1/events",
    tag = "live",
    summary = "Server-sent events: state changes, verdicts, alerts; resumable with Last-Event-ID",
    params(
        ("kinds" = Option<String>, Query, description = "Comma-separated event names; all when absent"),
        ("room" = Option<String>, Query, description = "Only events of this room"),
        ("device" = Option<String>, Query, description = "Only events of this device"),
        ("last_event_id" = Option<u64>, Query, description = "Resume after this id (the `Last-Event-ID` header wins)"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this id"),
    ),
    responses(
        (status = 200, description = "An event stream (`text/event-stream`): `id`, `event`, `data` per message", content_type = "text/event-stream", body = SseMessage),
    )
)]
pub async fn stream(
    State(st): State<ApiState>,
    headers: HeaderMap,
    q: Result<Query<StreamQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let Query(q) = q.map_err(ApiError::from_query_rejection)?;
    let log = st.events.clone().ok_or_else(|| {
        ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "no_event_stream",
            "this daemon does not stream events",
        )
    })?;
    let filter = ClientFilter::of(&q);
    let (start, missed, rx) = log.open(last_seen(&headers, &q));
    let mut pending = VecDeque::new();
    let last = match start {
        Start::After(after) => {
            let last = missed.last().map_or(after, |n| n.id);
            pending.extend(
                missed
                    .iter()
                    .filter(|n| filter.accepts(&n.event))
                    .map(|n| message(n)),
            );
            last
        }
        Start::Reset { latest } => {
            let data = serde_json::json!({
                "reason": "the last event id is unknown or no longer kept; reload the state",
                "last_event_id": latest,
            });
            pending.push_back(
                SseEvent::default()
                    .event("reset")
                    .id(latest.to_string())
                    .data(data.to_string()),
            );
            latest
        }
    };
    let client = Client {
        pending,
        rx,
        filter,
        last,
        cancel: log.cancel.clone(),
    };
    let stream =
        futures::stream::unfold(
            client,
            |mut c| async move { c.next().await.map(|e| (Ok(e), c)) },
        );
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventKind;

    fn event(n: u32) -> Arc<Event> {
        Arc::new(Event {
            at: chrono::DateTime::from_timestamp(1_700_000_000 + i64::from(n), 0)
                .unwrap_or_default(),
            kind: EventKind::ConfigReloadRefused {
                errors: vec![format!("{n}")],
            },
        })
    }

    #[test]
    fn a_known_id_resumes_after_it_and_an_unknown_one_resets() {
        let log = EventLog::new(3, 8, CancellationToken::new());
        assert_eq!(log.open(Some(0)).0, Start::After(0));
        for n in 1..=5 {
            log.push(event(n));
        }
        assert_eq!(log.latest(), 5);
        // The ring holds 3, 4, 5: after 2 nothing is lost.
        let (start, missed, _) = log.open(Some(2));
        assert_eq!(start, Start::After(2));
        assert_eq!(missed.iter().map(|n| n.id).collect::<Vec<_>>(), [3, 4, 5]);
        assert_eq!(log.open(Some(5)).1.len(), 0);
        // 1 is too old (2 is gone), 9 was never given (a restart): reload.
        assert_eq!(log.open(Some(1)).0, Start::Reset { latest: 5 });
        assert_eq!(log.open(Some(9)).0, Start::Reset { latest: 5 });
        assert_eq!(log.open(None).0, Start::After(5));
    }

    #[test]
    fn a_filter_selects_by_kind_room_and_device() {
        let q = |kinds: &str, room: &str| StreamQuery {
            kinds: Some(kinds.into()),
            room: Some(room.into()),
            ..Default::default()
        };
        let e = Event {
            at: chrono::DateTime::default(),
            kind: EventKind::BookingStarted {
                room: crate::model::RoomId::new("r101"),
                booking: "b1".into(),
            },
        };
        assert!(ClientFilter::of(&q("booking_started, alert_changed", "r101")).accepts(&e));
        assert!(!ClientFilter::of(&q("alert_changed", "r101")).accepts(&e));
        assert!(!ClientFilter::of(&q("booking_started", "r102")).accepts(&e));
        assert!(ClientFilter::of(&StreamQuery::default()).accepts(&e));
        let by_device = StreamQuery {
            device: Some("x".into()),
            ..Default::default()
        };
        assert!(!ClientFilter::of(&by_device).accepts(&e));
    }
}
