//! The booking book: every booking the daemon knows (made through the API, read from a feed)
//! and the newest verdict of each, in memory for the planner, the board and the API, and
//! durable in the records file through the one writer.
//!
//! A change is acknowledged only once it is committed, so a booking the API confirmed
//! survives a crash; readers never wait for the store. Watchers are told of every change
//! (the scheduler re-plans on each). Must not read the wall clock (it is handed `now`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Duration, Utc};
use tokio::sync::watch;

use crate::config::Room;
use crate::model::{
    Booking, BookingId, BookingSource, BookingStatus, Needs, Readiness, RoomId, Verdict,
};
use crate::records::bookings::BookingChange;
use crate::records::{Actor, LogbookHandle, StoreError};

/// Why a booking change was refused.
#[derive(Debug, thiserror::Error)]
pub enum BookingError {
    #[error("no room {0:?}")]
    UnknownRoom(String),
    #[error("no booking {0:?}")]
    UnknownBooking(String),
    #[error("the end ({end}) is not after the start ({start})")]
    EndBeforeStart {
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    },
    #[error("a booking lasts at most {0} hours")]
    TooLong(i64),
    #[error("{room} is booked from {start} to {end} ({id})")]
    Overlaps {
        room: RoomId,
        id: BookingId,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    },
    #[error("{room} holds {capacity} people, the booking has {attendees}")]
    OverCapacity {
        room: RoomId,
        capacity: u32,
        attendees: u32,
    },
    #[error("a booking from feed {0:?} is changed in its calendar, not here")]
    FromFeed(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the records store: {0}")]
    Store(#[from] StoreError),
}

/// The longest booking accepted (a multi-day event is several bookings).
pub const MAX_HOURS: i64 = 24;

/// A booking as the API makes or changes it: everything but the id, the status and the source.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BookingFields {
    pub room: Option<RoomId>,
    pub title: Option<String>,
    pub organiser: Option<String>,
    pub department: Option<String>,
    pub start: Option<DateTime<Utc>>,
    pub end: Option<DateTime<Utc>>,
    pub attendees: Option<u32>,
    pub needs: Option<Needs>,
    pub important: Option<bool>,
    pub confidential: Option<bool>,
    pub tentative: Option<bool>,
}

#[derive(Default)]
struct Inner {
    bookings: BTreeMap<BookingId, Booking>,
    /// The newest verdict per booking (tests without a booking are kept per room).
    verdicts: BTreeMap<BookingId, Verdict>,
    room_verdicts: BTreeMap<RoomId, Verdict>,
    next_id: u64,
}

/// Shared by the API and the scheduler. Cheap to clone.
#[derive(Clone)]
pub struct Book {
    inner: Arc<RwLock<Inner>>,
    rooms: Arc<BTreeMap<RoomId, Room>>,
    logbook: LogbookHandle,
    changed: Arc<watch::Sender<u64>>,
}

impl Book {
    pub fn new(rooms: &[Room], logbook: LogbookHandle) -> Self {
        Self {
            inner: Arc::default(),
            rooms: Arc::new(rooms.iter().map(|r| (r.id.clone(), r.clone())).collect()),
            logbook,
            changed: Arc::new(watch::channel(0).0),
        }
    }

    /// Fill from what the records file holds (start-up).
    pub fn restore(&self, bookings: Vec<Booking>, verdicts: Vec<Verdict>) {
        let mut g = self.write();
        for b in bookings {
            g.bookings.insert(b.id.clone(), b);
        }
        for v in verdicts {
            keep_verdict(&mut g, v);
        }
        drop(g);
        self.notify();
    }

    /// Told of every change (the value counts them).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn notify(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn rooms(&self) -> impl Iterator<Item = &Room> {
        self.rooms.values()
    }

    pub fn room(&self, id: &RoomId) -> Option<&Room> {
        self.rooms.get(id)
    }

    /// Every booking (cancelled ones too) overlapping `[from, to)`, by start.
    pub fn between(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<Booking> {
        let mut v: Vec<Booking> = self
            .read()
            .bookings
            .values()
            .filter(|b| b.overlaps(from, to))
            .cloned()
            .collect();
        v.sort_by(|a, b| (a.start, &a.id).cmp(&(b.start, &b.id)));
        v
    }

    /// Every booking that has not ended by `now`.
    pub fn upcoming(&self, now: DateTime<Utc>) -> Vec<Booking> {
        self.between(now, DateTime::<Utc>::MAX_UTC)
    }

    pub fn get(&self, id: &BookingId) -> Option<Booking> {
        self.read().bookings.get(id).cloned()
    }

    /// The newest verdict of a booking.
    pub fn verdict(&self, id: &BookingId) -> Option<Verdict> {
        self.read().verdicts.get(id).cloned()
    }

    /// The newest verdict of each booking and each room, newest first.
    pub fn verdicts(&self) -> Vec<Verdict> {
        let g = self.read();
        let mut v: Vec<Verdict> = g.verdicts.values().cloned().collect();
        v.extend(
            g.room_verdicts
                .values()
                .filter(|r| r.booking.is_none())
                .cloned(),
        );
        v.sort_by_key(|v| std::cmp::Reverse(v.finished_at));
        v
    }

    /// The newest verdict of any test of a room.
    pub fn room_verdict(&self, room: &RoomId) -> Option<Verdict> {
        self.read().room_verdicts.get(room).cloned()
    }

    /// The booking running in `room` at `now`, or the next one.
    pub fn current_and_next(
        &self,
        room: &RoomId,
        now: DateTime<Utc>,
    ) -> (Option<Booking>, Option<Booking>) {
        let g = self.read();
        let mut current = None;
        let mut next: Option<&Booking> = None;
        for b in g
            .bookings
            .values()
            .filter(|b| &b.room == room && b.is_active())
        {
            if b.start <= now && now < b.end {
                current = Some(b.clone());
            } else if b.start > now && next.is_none_or(|n| b.start < n.start) {
                next = Some(b);
            }
        }
        (current, next.cloned())
    }

    /// [`Book::current_and_next`] of every room with an active booking, in one pass over the
    /// book (the rooms list asks for all rooms at once).
    pub fn current_and_next_by_room(
        &self,
        now: DateTime<Utc>,
    ) -> HashMap<RoomId, (Option<Booking>, Option<Booking>)> {
        let g = self.read();
        let mut rooms: HashMap<RoomId, (Option<&Booking>, Option<&Booking>)> = HashMap::new();
        for b in g.bookings.values().filter(|b| b.is_active()) {
            let (current, next) = rooms.entry(b.room.clone()).or_default();
            if b.start <= now && now < b.end {
                *current = Some(b);
            } else if b.start > now && next.is_none_or(|n| b.start < n.start) {
                *next = Some(b);
            }
        }
        rooms
            .into_iter()
            .map(|(room, (c, n))| (room, (c.cloned(), n.cloned())))
            .collect()
    }

    fn check(&self, b: &Booking, now: DateTime<Utc>) -> Result<(), BookingError> {
        let room = self
            .rooms
            .get(&b.room)
            .ok_or_else(|| BookingError::UnknownRoom(b.room.to_string()))?;
        if b.end <= b.start {
            return Err(BookingError::EndBeforeStart {
                start: b.start,
                end: b.end,
            });
        }
        if b.end - b.start > Duration::hours(MAX_HOURS) {
            return Err(BookingError::TooLong(MAX_HOURS));
        }
        if b.title.trim().is_empty() {
            return Err(BookingError::Invalid("the title is empty".into()));
        }
        if b.title.chars().count() > 200 {
            return Err(BookingError::Invalid(
                "the title is longer than 200 characters".into(),
            ));
        }
        if b.end <= now {
            return Err(BookingError::Invalid(
                "the booking has already ended".into(),
            ));
        }
        if room.capacity > 0 && b.attendees > room.capacity {
            return Err(BookingError::OverCapacity {
                room: room.id.clone(),
                capacity: room.capacity,
                attendees: b.attendees,
            });
        }
        let g = self.read();
        if let Some(o) = g.bookings.values().find(|o| {
            o.id != b.id && o.room == b.room && o.is_active() && o.overlaps(b.start, b.end)
        }) {
            return Err(BookingError::Overlaps {
                room: o.room.clone(),
                id: o.id.clone(),
                start: o.start,
                end: o.end,
            });
        }
        Ok(())
    }

    /// Make a booking through the API; answers once it is committed.
    pub async fn create(
        &self,
        f: BookingFields,
        actor: Actor,
        now: DateTime<Utc>,
    ) -> Result<Booking, BookingError> {
        let missing = |k: &str| BookingError::Invalid(format!("{k} is required"));
        let id = {
            let mut g = self.write();
            g.next_id += 1;
            BookingId::new(format!("api-{}-{}", now.format("%Y%m%dT%H%M%S"), g.next_id))
        };
        let b = Booking {
            id,
            room: f.room.ok_or_else(|| missing("room"))?,
            title: f.title.ok_or_else(|| missing("title"))?,
            organiser: f.organiser,
            department: f.department,
            start: f.start.ok_or_else(|| missing("start"))?,
            end: f.end.ok_or_else(|| missing("end"))?,
            attendees: f.attendees.unwrap_or(0),
            needs: f.needs.unwrap_or_default(),
            important: f.important.unwrap_or(false),
            confidential: f.confidential.unwrap_or(false),
            status: if f.tentative == Some(true) {
                BookingStatus::Tentative
            } else {
                BookingStatus::Confirmed
            },
            source: BookingSource::Api,
            source_uid: None,
        };
        self.check(&b, now)?;
        self.commit(b, BookingChange::Created, actor, now).await
    }

    /// A booking the API may change: it exists and no feed owns it.
    fn api_booking(&self, id: &BookingId) -> Result<Booking, BookingError> {
        let b = self
            .get(id)
            .ok_or_else(|| BookingError::UnknownBooking(id.to_string()))?;
        match &b.source {
            BookingSource::Feed { feed } => Err(BookingError::FromFeed(feed.clone())),
            BookingSource::Api => Ok(b),
        }
    }

    /// Change a booking made through the API.
    pub async fn update(
        &self,
        id: &BookingId,
        f: BookingFields,
        actor: Actor,
        now: DateTime<Utc>,
    ) -> Result<Booking, BookingError> {
        let mut b = self.api_booking(id)?;
        if b.status == BookingStatus::Cancelled {
            return Err(BookingError::Invalid("the booking is cancelled".into()));
        }
        if let Some(v) = f.room {
            b.room = v;
        }
        if let Some(v) = f.title {
            b.title = v;
        }
        if f.organiser.is_some() {
            b.organiser = f.organiser;
        }
        if f.department.is_some() {
            b.department = f.department;
        }
        if let Some(v) = f.start {
            b.start = v;
        }
        if let Some(v) = f.end {
            b.end = v;
        }
        if let Some(v) = f.attendees {
            b.attendees = v;
        }
        if let Some(v) = f.needs {
            b.needs = v;
        }
        if let Some(v) = f.important {
            b.important = v;
        }
        if let Some(v) = f.confidential {
            b.confidential = v;
        }
        if let Some(t) = f.tentative {
            b.status = if t {
                BookingStatus::Tentative
            } else {
                BookingStatus::Confirmed
            };
        }
        self.check(&b, now)?;
        self.commit(b, BookingChange::Changed, actor, now).await
    }

    /// Cancel a booking made through the API (the row stays, marked cancelled).
    pub async fn cancel(
        &self,
        id: &BookingId,
        actor: Actor,
        now: DateTime<Utc>,
    ) -> Result<Booking, BookingError> {
        let mut b = self.api_booking(id)?;
        if b.status == BookingStatus::Cancelled {
            return Ok(b);
        }
        b.status = BookingStatus::Cancelled;
        self.commit(b, BookingChange::Cancelled, actor, now).await
    }

    async fn commit(
        &self,
        b: Booking,
        change: BookingChange,
        actor: Actor,
        now: DateTime<Utc>,
    ) -> Result<Booking, BookingError> {
        self.logbook.booking(b.clone(), change, actor, now).await?;
        self.write().bookings.insert(b.id.clone(), b.clone());
        self.notify();
        Ok(b)
    }

    /// What a feed lists now for `window`: stored (bookings of the window it no longer lists
    /// are cancelled), then shown.
    pub async fn replace_feed(
        &self,
        feed: &str,
        bookings: Vec<Booking>,
        window: (DateTime<Utc>, DateTime<Utc>),
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.logbook
            .feed_bookings(feed.to_owned(), bookings.clone(), window, now)
            .await?;
        let mut g = self.write();
        let listed: std::collections::HashSet<BookingId> =
            bookings.iter().map(|b| b.id.clone()).collect();
        for b in g.bookings.values_mut() {
            if matches!(&b.source, BookingSource::Feed { feed: f } if f == feed)
                && !listed.contains(&b.id)
                && b.overlaps(window.0, window.1)
            {
                b.status = BookingStatus::Cancelled;
            }
        }
        for b in bookings {
            g.bookings.insert(b.id.clone(), b);
        }
        drop(g);
        self.notify();
        Ok(())
    }

    /// Keep a verdict (the caller has stored it).
    pub fn keep_verdict(&self, v: Verdict) {
        keep_verdict(&mut self.write(), v);
        self.notify();
    }

    /// The newest readiness of each room (for the alternative-room search).
    pub fn room_readiness(&self) -> BTreeMap<RoomId, Readiness> {
        self.read()
            .room_verdicts
            .iter()
            .map(|(r, v)| (r.clone(), v.readiness))
            .collect()
    }

    /// Forget bookings that ended before `before` (memory only; the records keep them).
    pub fn prune(&self, before: DateTime<Utc>) {
        let mut g = self.write();
        g.bookings.retain(|_, b| b.end >= before);
        let kept: std::collections::HashSet<BookingId> = g.bookings.keys().cloned().collect();
        g.verdicts.retain(|id, _| kept.contains(id));
    }
}

fn keep_verdict(g: &mut Inner, v: Verdict) {
    let newer = |old: Option<&Verdict>| old.is_none_or(|o| o.finished_at <= v.finished_at);
    if newer(g.room_verdicts.get(&v.room)) {
        g.room_verdicts.insert(v.room.clone(), v.clone());
    }
    if let Some(id) = v.booking.clone() {
        if newer(g.verdicts.get(&id)) {
            g.verdicts.insert(id, v);
        }
    }
}
