//! The demo site's bookings: meetings in every room over the next hours, made when `avwarden
//! demo` starts, so the readiness board is never empty. The board meeting starts 62 minutes
//! after the start, so its T-60 self-test runs at T+2, after the demo's scenario
//! (`demo::scenario`) has put a weak battery in one of its mics.

use chrono::{DateTime, Duration, DurationRound, Utc};

use super::book::{Book, BookingError, BookingFields};
use crate::model::{Needs, RoomId};
use crate::records::Actor;

/// The demo's meetings, relative to `now`: (room, title, minutes from now, minutes long,
/// attendees, needs, important).
fn meetings(now: DateTime<Utc>) -> Vec<BookingFields> {
    let at = |mins: i64| now + Duration::minutes(mins);
    let later = |mins: i64| {
        // Round later meetings to the quarter hour, as people book them.
        at(mins)
            .duration_round(Duration::minutes(15))
            .unwrap_or(at(mins))
    };
    let board = Needs {
        projection: true,
        wireless_mics: 2,
        speech_reinforcement: true,
        hvac: true,
        ..Needs::default()
    };
    let training = Needs {
        projection: true,
        hvac: true,
        ..Needs::default()
    };
    let one = |room: &str,
               title: &str,
               start: DateTime<Utc>,
               mins: i64,
               attendees: u32,
               needs: Needs,
               important: bool| BookingFields {
        room: Some(RoomId::new(room)),
        title: Some(title.to_owned()),
        department: Some("Demo".to_owned()),
        organiser: Some("Front desk".to_owned()),
        start: Some(start),
        end: Some(start + Duration::minutes(mins)),
        attendees: Some(attendees),
        needs: Some(needs),
        important: Some(important),
        ..BookingFields::default()
    };
    let small = Needs {
        projection: true,
        ..Needs::default()
    };
    let all_hands = Needs {
        projection: true,
        wireless_mics: 2,
        speech_reinforcement: true,
        ..Needs::default()
    };
    vec![
        one("r101", "Board meeting", at(62), 90, 12, board.clone(), true),
        one(
            "r105",
            "Hiring interview",
            later(90),
            60,
            3,
            small.clone(),
            false,
        ),
        one(
            "r102",
            "New starters training",
            later(120),
            120,
            24,
            training,
            false,
        ),
        one("r103", "All-hands", later(180), 60, 90, all_hands, true),
        one("r106", "Design review", later(210), 45, 5, small, false),
        one("r101", "Budget review", later(240), 60, 8, board, false),
        one(
            "r102",
            "Supplier call",
            later(300),
            45,
            6,
            Needs::default(),
            false,
        ),
    ]
}

/// Make the demo's bookings; a slot already taken (the demo's records file kept from an
/// earlier run) is left as it is.
pub async fn seed(book: &Book, now: DateTime<Utc>) {
    for f in meetings(now) {
        if f.room.as_ref().is_none_or(|r| book.room(r).is_none()) {
            continue;
        }
        match book.create(f, Actor::person("demo"), now).await {
            Ok(b) => {
                tracing::info!(booking = %b.id, room = %b.room, start = %b.start, "demo booking made")
            }
            Err(BookingError::Overlaps { .. }) => {}
            Err(e) => tracing::warn!(error = %e, "demo booking not made"),
        }
    }
}
