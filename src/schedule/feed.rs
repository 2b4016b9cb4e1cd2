//! iCalendar booking feeds (`[[bookings.feeds]]`): what a feed is, fetching its text (a file,
//! or HTTP/HTTPS with a timeout and a size bound), and the pure mapping of expanded instances
//! to bookings of rooms.
//!
//! Must not poll, keep the last good bookings, emit events or store anything: the scheduler
//! task does that with these parts. Must not parse iCalendar itself (that is `ical`).

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use chrono::{DateTime, Utc};

use super::ical::{self, FeedProblem, Instance, Limits, NotACalendar, ProblemAction};
use crate::model::{Booking, BookingId, BookingSource, BookingStatus, Needs, RoomId};

/// Feeds are polled every 5 minutes unless the config says otherwise.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(300);
/// 4 MiB holds years of a busy room's calendar; past it a feed is refused, not truncated.
pub const DEFAULT_MAX_BYTES: usize = 4 * 1024 * 1024;
/// A fetch that has not finished in this long failed.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a feed is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedSource {
    /// `http://` or `https://` (`webcal://` is read as `https://`).
    Url(String),
    Path(PathBuf),
}

/// One `[[bookings.feeds]]` entry, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedConfig {
    pub id: String,
    pub source: FeedSource,
    /// Every booking of the feed is in this room (a room mailbox); without it each event's
    /// LOCATION names the room.
    pub room: Option<RoomId>,
    pub poll_interval: Duration,
    pub max_bytes: usize,
    /// What the feed's meetings need. Without it a booking needs nothing: a feed does not
    /// say which equipment a meeting uses, and assuming all of it would fail self-tests of
    /// equipment nobody asked for.
    pub needs: Option<Needs>,
}

impl FeedConfig {
    /// A feed with the defaults, for tests and the API.
    pub fn new(id: impl Into<String>, source: FeedSource) -> Self {
        Self {
            id: id.into(),
            source,
            room: None,
            poll_interval: DEFAULT_POLL_INTERVAL,
            max_bytes: DEFAULT_MAX_BYTES,
            needs: None,
        }
    }
}

impl FeedConfig {
    /// The parse bounds for this feed: its own size limit, the default bounds otherwise.
    pub fn limits(&self) -> Limits {
        Limits {
            max_bytes: self.max_bytes,
            ..Limits::default()
        }
    }
}

/// One poll's worth, after [`fetch`]: the feed's text parsed within its bounds, expanded in
/// `[from, to)` and mapped to bookings, with every problem found on the way (parse, expand,
/// mapping). `Err` means the text is not a calendar at all: keep the last good bookings.
/// `floating` is the site's zone (floating times and all-day dates).
pub fn bookings_from_text(
    feed: &FeedConfig,
    text: &str,
    floating: chrono_tz::Tz,
    rooms: &[RoomRef],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<(Vec<Booking>, Vec<FeedProblem>), NotACalendar> {
    let cal = ical::parse_with_limits(text, floating, feed.limits())?;
    let (instances, expand_problems) = cal.expand_with_problems(from, to);
    let (bookings, map_problems) = to_bookings(feed, &instances, rooms);
    let mut problems = cal.problems;
    problems.extend(expand_problems);
    problems.extend(map_problems);
    Ok((bookings, problems))
}

/// A room as LOCATION may name it: by id or by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomRef {
    pub id: RoomId,
    pub name: String,
}

impl From<&crate::config::Room> for RoomRef {
    fn from(r: &crate::config::Room) -> Self {
        Self {
            id: r.id.clone(),
            name: r.name.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot fetch {url}: {source}")]
    Http { url: String, source: reqwest::Error },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("feed is larger than its limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// The feed's text, at most `max_bytes` of it (a larger feed is an error, so a runaway feed
/// cannot take the daemon's memory). Bytes that are not UTF-8 become U+FFFD.
pub async fn fetch(feed: &FeedConfig) -> Result<String, FeedError> {
    let bytes = match &feed.source {
        FeedSource::Path(path) => read_file(path, feed.max_bytes).await?,
        FeedSource::Url(url) => {
            match tokio::time::timeout(FETCH_TIMEOUT, fetch_url(url, feed.max_bytes)).await {
                Ok(res) => res?,
                Err(_) => return Err(FeedError::Timeout(FETCH_TIMEOUT)),
            }
        }
    };
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

async fn read_file(path: &std::path::Path, max: usize) -> Result<Vec<u8>, FeedError> {
    let err = |source| FeedError::Read {
        path: path.display().to_string(),
        source,
    };
    let file = tokio::fs::File::open(path).await.map_err(err)?;
    let mut buf = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    file.take(limit).read_to_end(&mut buf).await.map_err(err)?;
    if buf.len() > max {
        return Err(FeedError::TooLarge { limit: max });
    }
    Ok(buf)
}

/// `webcal://` is how calendars are offered for subscription; it is HTTPS underneath.
pub fn http_url(url: &str) -> String {
    match url.get(..9) {
        Some(scheme) if scheme.eq_ignore_ascii_case("webcal://") => {
            format!("https://{}", &url[9..])
        }
        _ => url.to_owned(),
    }
}

async fn fetch_url(url: &str, max: usize) -> Result<Vec<u8>, FeedError> {
    let url = http_url(url);
    let http = |source| FeedError::Http {
        url: url.clone(),
        source,
    };
    let client = reqwest::Client::builder()
        .timeout(FETCH_TIMEOUT)
        .build()
        .map_err(http)?;
    let mut resp = client.get(&url).send().await.map_err(http)?;
    if !resp.status().is_success() {
        return Err(FeedError::Status {
            url: url.clone(),
            status: resp.status().as_u16(),
        });
    }
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(FeedError::TooLarge { limit: max });
    }
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(http)? {
        if buf.len() + chunk.len() > max {
            return Err(FeedError::TooLarge { limit: max });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// The bookings a feed's instances make: the room from the feed, else the instance's
/// LOCATION matched to a room id or name (trimmed, case-insensitive). All-day instances are
/// not bookings of AV (they stay visible through `bookings expand`). An instance that
/// names no room is a problem, not a booking. Cancelled instances are kept, cancelled, so a
/// planned self-test for them is called off.
pub fn to_bookings(
    feed: &FeedConfig,
    instances: &[Instance],
    rooms: &[RoomRef],
) -> (Vec<Booking>, Vec<FeedProblem>) {
    let mut bookings = Vec::new();
    let mut problems = Vec::new();
    for inst in instances.iter().filter(|i| !i.all_day) {
        let room = match &feed.room {
            Some(r) => Some(r.clone()),
            None => inst
                .location
                .as_deref()
                .and_then(|loc| room_named(loc, rooms)),
        };
        let Some(room) = room else {
            let reason = match inst.location.as_deref() {
                Some(loc) => format!("LOCATION {loc:?} matches no room id or name"),
                None => "no LOCATION and the feed has no room".to_owned(),
            };
            problems.push(FeedProblem {
                uid: Some(inst.uid.clone()),
                line: None,
                action: ProblemAction::Skipped,
                reason,
            });
            continue;
        };
        let instance_key = match inst.recurrence_id {
            Some(rid) => format!("{}@{rid}", inst.uid),
            None => inst.uid.clone(),
        };
        let status = match inst.status.as_deref() {
            Some(s) if s.eq_ignore_ascii_case("CANCELLED") => BookingStatus::Cancelled,
            Some(s) if s.eq_ignore_ascii_case("TENTATIVE") => BookingStatus::Tentative,
            _ => BookingStatus::Confirmed,
        };
        bookings.push(Booking {
            id: BookingId::new(format!("{}:{instance_key}", feed.id)),
            room,
            title: inst
                .summary
                .clone()
                .unwrap_or_else(|| "(no title)".to_owned()),
            organiser: None,
            department: None,
            start: inst.start_utc,
            end: inst.end_utc,
            attendees: 0,
            needs: feed.needs.clone().unwrap_or_default(),
            important: inst.important,
            confidential: false,
            status,
            source: BookingSource::Feed {
                feed: feed.id.clone(),
            },
            source_uid: Some(instance_key),
        });
    }
    (bookings, problems)
}

fn room_named(location: &str, rooms: &[RoomRef]) -> Option<RoomId> {
    let loc = location.trim();
    rooms
        .iter()
        .find(|r| {
            r.id.as_str().eq_ignore_ascii_case(loc) || r.name.trim().eq_ignore_ascii_case(loc)
        })
        .map(|r| r.id.clone())
}

/// How far back and ahead a feed is expanded at each poll.
pub const WINDOW_BEHIND: chrono::Duration = chrono::Duration::days(1);
pub const WINDOW_AHEAD: chrono::Duration = chrono::Duration::days(35);

/// Poll one feed until `cancel`: each good poll replaces what the feed said (through the
/// book, so it is stored and re-planned); a failing feed keeps its last good bookings and is
/// announced once per distinct reason (`BookingFeedFailed`), its return once
/// (`BookingFeedRecovered`). Problems inside a good feed are logged once each.
pub async fn watch(
    feed: FeedConfig,
    book: super::book::Book,
    rooms: Vec<RoomRef>,
    floating: chrono_tz::Tz,
    events: crate::events::EventBus,
    clock: crate::clock::Clock,
    cancel: tokio_util::sync::CancellationToken,
) {
    use crate::events::EventKind;
    let mut failing: Option<String> = None;
    let mut logged = std::collections::HashSet::new();
    loop {
        let now = clock.now();
        let window = (now - WINDOW_BEHIND, now + WINDOW_AHEAD);
        let read = tokio::select! {
            _ = cancel.cancelled() => return,
            r = fetch(&feed) => r.map_err(|e| e.to_string()),
        };
        let parsed = read.and_then(|text| {
            bookings_from_text(&feed, &text, floating, &rooms, window.0, window.1)
                .map_err(|e| e.to_string())
        });
        let stored = match parsed {
            Ok((bookings, problems)) => {
                for p in problems {
                    let line = p.to_string();
                    if logged.insert(line.clone()) {
                        tracing::warn!(feed = %feed.id, "{line}");
                    }
                }
                let n = bookings.len();
                book.replace_feed(&feed.id, bookings, window, now)
                    .await
                    .map(|()| n)
                    .map_err(|e| format!("the records store: {e}"))
            }
            Err(reason) => Err(reason),
        };
        match stored {
            Ok(bookings) => {
                if failing.take().is_some() {
                    events.emit(
                        clock.now(),
                        EventKind::BookingFeedRecovered {
                            feed: feed.id.clone(),
                            bookings,
                        },
                    );
                }
            }
            Err(reason) => {
                if failing.as_deref() != Some(reason.as_str()) {
                    events.emit(
                        clock.now(),
                        EventKind::BookingFeedFailed {
                            feed: feed.id.clone(),
                            reason: reason.clone(),
                        },
                    );
                }
                failing = Some(reason);
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(feed.poll_interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};

    use super::*;
    use crate::schedule::ical::RecurrenceId;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn inst(uid: &str, location: Option<&str>) -> Instance {
        Instance {
            uid: uid.into(),
            recurrence_id: None,
            summary: Some("Review".into()),
            location: location.map(str::to_owned),
            start_utc: utc("2026-06-01T09:00:00Z"),
            end_utc: utc("2026-06-01T10:00:00Z"),
            status: None,
            all_day: false,
            important: false,
            categories: Vec::new(),
        }
    }

    fn rooms() -> Vec<RoomRef> {
        vec![
            RoomRef {
                id: RoomId::from("elbe"),
                name: "Room Elbe".into(),
            },
            RoomRef {
                id: RoomId::from("spree"),
                name: "Spree Boardroom".into(),
            },
        ]
    }

    fn feed() -> FeedConfig {
        FeedConfig::new("hq", FeedSource::Path("x.ics".into()))
    }

    #[test]
    fn location_matches_room_id_or_name_trimmed_and_caseless() {
        let (b, p) = to_bookings(
            &feed(),
            &[
                inst("a", Some("  room ELBE ")),
                inst("b", Some("spree")),
                inst("c", Some("Atrium")),
                inst("d", None),
            ],
            &rooms(),
        );
        let got: Vec<_> = b.iter().map(|b| b.room.as_str()).collect();
        assert_eq!(got, vec!["elbe", "spree"]);
        assert_eq!(p.len(), 2);
        assert!(p[0].reason.contains("\"Atrium\" matches no room"));
        assert_eq!(p[1].uid.as_deref(), Some("d"));
    }

    #[test]
    fn the_feed_room_wins_over_location() {
        let mut f = feed();
        f.room = Some(RoomId::from("spree"));
        let (b, p) = to_bookings(&f, &[inst("a", Some("Room Elbe"))], &rooms());
        assert_eq!(b[0].room.as_str(), "spree");
        assert!(p.is_empty());
    }

    #[test]
    fn ids_are_stable_and_series_instances_carry_their_original_start() {
        let mut series = inst("s", Some("elbe"));
        series.recurrence_id = Some(RecurrenceId::Instant(utc("2026-06-01T09:00:00Z")));
        series.status = Some("CANCELLED".into());
        series.important = true;
        let (b, _) = to_bookings(&feed(), &[inst("a", Some("elbe")), series], &rooms());
        assert_eq!(b[0].id.as_str(), "hq:a");
        assert_eq!(b[1].id.as_str(), "hq:s@2026-06-01T09:00:00Z");
        assert_eq!(b[1].status, BookingStatus::Cancelled);
        assert!(b[1].important);
        assert_eq!(b[1].source, BookingSource::Feed { feed: "hq".into() });
    }

    #[test]
    fn all_day_instances_are_not_bookings_and_needs_come_from_the_feed() {
        let mut day = inst("day", Some("elbe"));
        day.all_day = true;
        let mut f = feed();
        let (b, p) = to_bookings(&f, &[day.clone(), inst("a", Some("elbe"))], &rooms());
        assert_eq!(b.len(), 1);
        assert!(p.is_empty());
        assert_eq!(b[0].needs, Needs::default());
        f.needs = Some(Needs {
            projection: true,
            ..Needs::default()
        });
        let (b, _) = to_bookings(&f, &[inst("a", Some("elbe"))], &rooms());
        assert!(b[0].needs.projection);
    }

    #[tokio::test]
    async fn a_file_feed_is_read_within_its_size_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("feed.ics");
        std::fs::write(&path, "BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n").unwrap();
        let mut f = FeedConfig::new("f", FeedSource::Path(path));
        assert!(fetch(&f).await.unwrap().starts_with("BEGIN:VCALENDAR"));
        f.max_bytes = 10;
        assert!(matches!(
            fetch(&f).await,
            Err(FeedError::TooLarge { limit: 10 })
        ));
        f.source = FeedSource::Path(dir.path().join("missing.ics"));
        assert!(matches!(fetch(&f).await, Err(FeedError::Read { .. })));
    }

    /// One HTTP answer on an ephemeral port.
    async fn serve_once(response: &'static str) -> String {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tracker = tokio_util::task::TaskTracker::new();
        tracker.spawn(async move {
            if let Ok((mut sock, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = sock.read(&mut buf).await;
                let _ = sock.write_all(response.as_bytes()).await;
                let _ = sock.shutdown().await;
            }
        });
        tracker.close();
        format!("http://{addr}/room.ics")
    }

    #[tokio::test]
    async fn an_http_feed_is_fetched_and_bounded() {
        let body = "BEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n";
        let ok = serve_once(
            "HTTP/1.1 200 OK\r\nContent-Length: 32\r\nContent-Type: text/calendar\r\nConnection: close\r\n\r\nBEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n",
        )
        .await;
        let f = FeedConfig::new("h", FeedSource::Url(ok));
        assert_eq!(fetch(&f).await.unwrap(), body);

        let big = serve_once(
            "HTTP/1.1 200 OK\r\nContent-Length: 32\r\nConnection: close\r\n\r\nBEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n",
        )
        .await;
        let mut f = FeedConfig::new("h", FeedSource::Url(big));
        f.max_bytes = 8;
        assert!(matches!(fetch(&f).await, Err(FeedError::TooLarge { .. })));

        let missing =
            serve_once("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .await;
        let f = FeedConfig::new("h", FeedSource::Url(missing));
        assert!(matches!(
            fetch(&f).await,
            Err(FeedError::Status { status: 404, .. })
        ));
    }

    #[test]
    fn a_feed_text_becomes_bookings_with_its_problems() {
        let text = concat!(
            "BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nUID:w\r\nDTSTART;TZID=Europe/Berlin:20260601T090000\r\n",
            "DTEND;TZID=Europe/Berlin:20260601T100000\r\nRRULE:FREQ=WEEKLY;COUNT=2\r\n",
            "LOCATION:Room Elbe\r\nEND:VEVENT\r\nBEGIN:VEVENT\r\nUID:x\r\n",
            "DTSTART:20260601T090000Z\r\nLOCATION:Atrium\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
        );
        let (b, p) = bookings_from_text(
            &feed(),
            text,
            chrono_tz::Europe::Berlin,
            &rooms(),
            utc("2026-06-01T00:00:00Z"),
            utc("2026-07-01T00:00:00Z"),
        )
        .unwrap();
        let ids: Vec<_> = b.iter().map(|b| b.id.as_str()).collect();
        assert_eq!(
            ids,
            vec!["hq:w@2026-06-01T07:00:00Z", "hq:w@2026-06-08T07:00:00Z"]
        );
        assert_eq!(p.len(), 1);
        assert!(bookings_from_text(
            &feed(),
            "<html>",
            chrono_tz::UTC,
            &rooms(),
            utc("2026-06-01T00:00:00Z"),
            utc("2026-07-01T00:00:00Z"),
        )
        .is_err());
    }

    #[test]
    fn webcal_is_https() {
        assert_eq!(
            http_url("webcal://calendar.example/room.ics"),
            "https://calendar.example/room.ics"
        );
        assert_eq!(http_url("http://x/y"), "http://x/y");
    }
}
