//! A room's context for grading a fault: in a meeting (a booking runs or starts within 20
//! minutes — domain.md: one person stays in the room from T-20, after which faults are "in
//! meeting" priority), before a meeting (a booking starts within the configured horizon) or
//! idle, and whether that meeting is marked important.
//!
//! Pure: a function of the room's current and next booking and `now`; must not read the clock
//! or the book itself.

use std::fmt;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::model::Booking;

/// From this long before a booking's start, faults are graded as in the meeting (domain.md,
/// "20 min before").
pub const IN_MEETING_LEAD: Duration = Duration::minutes(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Context {
    InMeeting,
    BeforeMeeting,
    Idle,
}

impl Context {
    pub const ALL: [Context; 3] = [Context::InMeeting, Context::BeforeMeeting, Context::Idle];

    pub fn as_str(self) -> &'static str {
        match self {
            Context::InMeeting => "in_meeting",
            Context::BeforeMeeting => "before_meeting",
            Context::Idle => "idle",
        }
    }

    pub fn parse(s: &str) -> Option<Context> {
        Context::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether the meeting the context is about is marked important (domain.md, "Bookings").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Importance {
    Normal,
    Important,
}

/// A room's context now, and the importance of the meeting that sets it (`Normal` when idle).
pub fn room_context(
    current: Option<&Booking>,
    next: Option<&Booking>,
    now: DateTime<Utc>,
    horizon: Duration,
) -> (Context, Importance) {
    let importance = |b: &Booking| {
        if b.important {
            Importance::Important
        } else {
            Importance::Normal
        }
    };
    if let Some(b) = current.filter(|b| b.is_active() && b.start <= now && now < b.end) {
        return (Context::InMeeting, importance(b));
    }
    match next.filter(|b| b.is_active() && b.start > now) {
        Some(b) if b.start - now <= IN_MEETING_LEAD => (Context::InMeeting, importance(b)),
        Some(b) if b.start - now <= horizon => (Context::BeforeMeeting, importance(b)),
        _ => (Context::Idle, Importance::Normal),
    }
}

/// The next instant the context of a room can change without a booking being added: the
/// re-grading timer of the playbook task waits for it.
pub fn next_change(
    current: Option<&Booking>,
    next: Option<&Booking>,
    now: DateTime<Utc>,
    horizon: Duration,
) -> Option<DateTime<Utc>> {
    let mut at: Vec<DateTime<Utc>> = Vec::new();
    if let Some(b) = current.filter(|b| b.is_active()) {
        at.push(b.end);
    }
    if let Some(b) = next.filter(|b| b.is_active()) {
        at.push(b.start - horizon);
        at.push(b.start - IN_MEETING_LEAD);
    }
    at.into_iter().filter(|t| *t > now).min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{BookingId, BookingSource, BookingStatus, Needs};
    use chrono::TimeZone;

    fn booking(start: DateTime<Utc>, mins: i64, important: bool) -> Booking {
        Booking {
            id: BookingId::new("b"),
            room: "r".into(),
            title: "t".into(),
            organiser: None,
            department: None,
            start,
            end: start + Duration::minutes(mins),
            attendees: 4,
            needs: Needs::default(),
            important,
            confidential: false,
            status: BookingStatus::Confirmed,
            source: BookingSource::Api,
            source_uid: None,
        }
    }

    #[test]
    fn contexts_by_distance_to_the_booking() {
        let now = Utc.with_ymd_and_hms(2026, 11, 3, 9, 0, 0).unwrap();
        let horizon = Duration::hours(2);
        let at = |m: i64, imp: bool| booking(now + Duration::minutes(m), 60, imp);
        let cases = [
            (None, None, (Context::Idle, Importance::Normal)),
            (
                Some(at(-10, true)),
                None,
                (Context::InMeeting, Importance::Important),
            ),
            (
                None,
                Some(at(20, false)),
                (Context::InMeeting, Importance::Normal),
            ),
            (
                None,
                Some(at(21, true)),
                (Context::BeforeMeeting, Importance::Important),
            ),
            (
                None,
                Some(at(120, false)),
                (Context::BeforeMeeting, Importance::Normal),
            ),
            (
                None,
                Some(at(121, true)),
                (Context::Idle, Importance::Normal),
            ),
        ];
        for (cur, next, want) in cases {
            assert_eq!(
                room_context(cur.as_ref(), next.as_ref(), now, horizon),
                want,
                "{cur:?} {next:?}"
            );
        }
        let mut cancelled = at(5, false);
        cancelled.status = BookingStatus::Cancelled;
        assert_eq!(
            room_context(None, Some(&cancelled), now, horizon).0,
            Context::Idle
        );
    }

    #[test]
    fn next_change_is_the_nearest_boundary() {
        let now = Utc.with_ymd_and_hms(2026, 11, 3, 9, 0, 0).unwrap();
        let next = booking(now + Duration::hours(3), 60, false);
        assert_eq!(
            next_change(None, Some(&next), now, Duration::hours(2)),
            Some(now + Duration::hours(1))
        );
        let cur = booking(now - Duration::minutes(30), 60, false);
        assert_eq!(
            next_change(Some(&cur), None, now, Duration::hours(2)),
            Some(now + Duration::minutes(30))
        );
    }
}
