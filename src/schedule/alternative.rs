//! The alternative room proposed when a room is `not_ready` for a booking
//! (../shared/domain.md, "prepare both the booked room and an available room"): free for the
//! whole slot, large enough, equipped for the booking's needs, not known to be broken; nearest
//! first.
//!
//! Pure: it ranks the candidates it is given. It must not look up rooms, bookings or verdicts
//! itself; the caller gathers them.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use crate::model::booking::{Booking, Readiness};
use crate::model::{Capability, RoomId};

/// A room as the ranking needs it. The booked room is among the candidates, so that its
/// building and floor are known; it is never proposed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoomCandidate {
    pub id: RoomId,
    pub building: Option<String>,
    pub floor: Option<i32>,
    /// Seats.
    pub capacity: u32,
    /// What the room's configured devices can do, together.
    pub capabilities: Vec<Capability>,
    /// Wireless microphone channels the room's receivers have.
    pub wireless_channels: u8,
    /// The room's latest verdict, whatever booking it was for; `None` if never tested.
    pub latest: Option<Readiness>,
}

/// The rooms that could take `booking`, best first. `bookings` are every room's bookings
/// around the slot (cancelled ones are ignored).
///
/// Ranking: a room whose latest verdict is known and good enough (ready or degraded) comes
/// before an untested one, because proposing a room that may fail too is the thing to avoid;
/// then the same building and floor, then the same building by floor distance (an unknown
/// floor last), then other buildings (or unknown ones); ties by id.
pub fn alternatives(
    booking: &Booking,
    candidates: &[RoomCandidate],
    bookings: &[Booking],
) -> Vec<RoomId> {
    let home = candidates.iter().find(|c| c.id == booking.room);
    let mut fit: Vec<&RoomCandidate> = candidates
        .iter()
        .filter(|c| c.id != booking.room)
        .filter(|c| c.latest != Some(Readiness::NotReady))
        .filter(|c| c.capacity >= booking.attendees)
        .filter(|c| c.wireless_channels >= booking.needs.wireless_mics)
        .filter(|c| {
            booking
                .needs
                .capabilities()
                .iter()
                .all(|(_, cap)| c.capabilities.contains(cap))
        })
        .filter(|c| {
            !bookings.iter().any(|b| {
                b.room == c.id
                    && b.id != booking.id
                    && b.is_active()
                    && b.overlaps(booking.start, booking.end)
            })
        })
        .collect();
    fit.sort_by(|a, b| rank(home, a, b));
    fit.into_iter().map(|c| c.id.clone()).collect()
}

fn rank(home: Option<&RoomCandidate>, a: &RoomCandidate, b: &RoomCandidate) -> Ordering {
    let key = |c: &RoomCandidate| (c.latest.is_none(), nearness(home, c));
    key(a).cmp(&key(b)).then_with(|| a.id.cmp(&b.id))
}

/// Lower is nearer: (0 same floor | 1 same building | 2 elsewhere, floor distance).
fn nearness(home: Option<&RoomCandidate>, c: &RoomCandidate) -> (u8, u32) {
    let Some(home) = home else {
        return (2, 0);
    };
    match (&home.building, &c.building) {
        (Some(h), Some(b)) if h == b => match (home.floor, c.floor) {
            (Some(hf), Some(cf)) if hf == cf => (0, 0),
            (Some(hf), Some(cf)) => (1, hf.abs_diff(cf)),
            _ => (1, u32::MAX),
        },
        _ => (2, 0),
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, TimeZone, Utc};

    use super::*;
    use crate::model::booking::{BookingId, BookingSource, BookingStatus, Needs};

    fn t(h: u32, m: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 5, 4, h, m, 0)
            .single()
            .expect("valid")
    }

    fn booking(id: &str, room: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> Booking {
        Booking {
            id: BookingId::new(id),
            room: RoomId::new(room),
            title: "review".into(),
            organiser: None,
            department: None,
            start: from,
            end: to,
            attendees: 10,
            needs: Needs {
                projection: true,
                wireless_mics: 2,
                ..Needs::default()
            },
            important: false,
            confidential: false,
            status: BookingStatus::Confirmed,
            source: BookingSource::Api,
            source_uid: None,
        }
    }

    fn room(id: &str, building: &str, floor: i32) -> RoomCandidate {
        RoomCandidate {
            id: RoomId::new(id),
            building: Some(building.into()),
            floor: Some(floor),
            capacity: 20,
            capabilities: vec![
                Capability::Power,
                Capability::Input,
                Capability::TxPresent,
                Capability::Level,
            ],
            wireless_channels: 4,
            latest: Some(Readiness::Ready),
        }
    }

    fn ids(v: Vec<RoomId>) -> Vec<String> {
        v.into_iter().map(|r| r.0).collect()
    }

    #[test]
    fn nearest_first_same_floor_then_floor_distance_then_other_buildings() {
        let b = booking("b", "a-3-1", t(9, 0), t(10, 0));
        let rooms = vec![
            room("a-3-1", "A", 3),
            room("c-3-1", "C", 3),
            room("a-5-1", "A", 5),
            room("a-2-1", "A", 2),
            room("a-3-2", "A", 3),
            room("b-3-1", "B", 3),
            RoomCandidate {
                floor: None,
                ..room("a-x-1", "A", 0)
            },
        ];
        assert_eq!(
            ids(alternatives(&b, &rooms, &[])),
            ["a-3-2", "a-2-1", "a-5-1", "a-x-1", "b-3-1", "c-3-1"]
        );
    }

    #[test]
    fn each_requirement_excludes_a_room() {
        let b = booking("b", "home", t(9, 0), t(10, 0));
        let mut rooms = vec![room("home", "A", 1), room("ok", "A", 1)];
        let excluded = [
            RoomCandidate {
                capacity: 9,
                ..room("small", "A", 1)
            },
            RoomCandidate {
                capabilities: vec![Capability::Power, Capability::TxPresent, Capability::Level],
                ..room("no-input", "A", 1)
            },
            RoomCandidate {
                wireless_channels: 1,
                ..room("one-channel", "A", 1)
            },
            RoomCandidate {
                latest: Some(Readiness::NotReady),
                ..room("broken", "A", 1)
            },
            room("busy-overlap-start", "A", 1),
            room("busy-inside", "A", 1),
        ];
        rooms.extend(excluded);
        let others = [
            booking("x1", "busy-overlap-start", t(8, 30), t(9, 1)),
            booking("x2", "busy-inside", t(9, 20), t(9, 40)),
            // Touching the slot is not overlapping it.
            booking("x3", "ok", t(8, 0), t(9, 0)),
            booking("x4", "ok", t(10, 0), t(11, 0)),
        ];
        assert_eq!(ids(alternatives(&b, &rooms, &others)), ["ok"]);
    }

    #[test]
    fn a_cancelled_booking_does_not_hold_a_room() {
        let b = booking("b", "home", t(9, 0), t(10, 0));
        let rooms = vec![room("home", "A", 1), room("other", "A", 1)];
        let mut held = booking("x", "other", t(9, 0), t(10, 0));
        assert!(alternatives(&b, &rooms, std::slice::from_ref(&held)).is_empty());
        held.status = BookingStatus::Cancelled;
        assert_eq!(ids(alternatives(&b, &rooms, &[held])), ["other"]);
    }

    #[test]
    fn an_untested_room_ranks_after_a_known_good_one_even_if_nearer() {
        let b = booking("b", "home", t(9, 0), t(10, 0));
        let rooms = vec![
            room("home", "A", 1),
            RoomCandidate {
                latest: None,
                ..room("untested-same-floor", "A", 1)
            },
            RoomCandidate {
                latest: Some(Readiness::Degraded),
                ..room("degraded-other-building", "B", 7)
            },
            room("ready-other-building", "C", 1),
        ];
        assert_eq!(
            ids(alternatives(&b, &rooms, &[])),
            [
                "degraded-other-building",
                "ready-other-building",
                "untested-same-floor"
            ]
        );
    }

    #[test]
    fn without_the_booked_room_among_candidates_ties_go_by_id() {
        let b = booking("b", "gone", t(9, 0), t(10, 0));
        let rooms = vec![room("r2", "A", 1), room("r1", "B", 2)];
        assert_eq!(ids(alternatives(&b, &rooms, &[])), ["r1", "r2"]);
    }

    #[test]
    fn needs_without_equipment_accept_any_free_room_large_enough() {
        let mut b = booking("b", "home", t(9, 0), t(10, 0));
        b.needs = Needs::default();
        b.attendees = 0;
        let bare = RoomCandidate {
            capacity: 0,
            capabilities: vec![],
            wireless_channels: 0,
            ..room("bare", "A", 1)
        };
        assert_eq!(ids(alternatives(&b, &[bare], &[])), ["bare"]);
    }
}
