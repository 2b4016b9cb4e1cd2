//! Bookings and readiness verdicts as plain data (../shared/domain.md, "Bookings" and "Before
//! the meeting"). A booking carries its needs (which equipment must work), its attendee count
//! and its importance, not only a time slot; a verdict says whether the room will meet those
//! needs, and why not, each reason with its device, its point and a remedy.
//!
//! Plain data only: the schedule plans and runs, the records store, the API shows.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Capability, DeviceId, RoomId};

/// A booking's id: `api-…` for bookings made through the API, `<feed>:<uid>[@<instant>]` for
/// an instance read from an iCalendar feed (stable across polls of the feed).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BookingId(pub String);

impl BookingId {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BookingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for BookingId {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

/// What a meeting needs to work. The self-test checks exactly these; a room's equipment is
/// what its configured devices can do, not free text.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Needs {
    pub projection: bool,
    /// Wireless microphones (transmitters on air).
    pub wireless_mics: u8,
    /// Wired microphones (DSP inputs).
    pub wired_mics: u8,
    /// Loudspeakers: the DSP's speaker zones.
    pub speech_reinforcement: bool,
    pub video_conference: bool,
    /// The room brought to temperature before the start.
    pub hvac: bool,
}

impl Needs {
    /// Whether the booking needs anything of the room's equipment at all.
    pub fn any(&self) -> bool {
        self.projection
            || self.wireless_mics > 0
            || self.wired_mics > 0
            || self.speech_reinforcement
            || self.video_conference
            || self.hvac
    }

    /// The capabilities a room must have to meet these needs, with the need each serves.
    pub fn capabilities(&self) -> Vec<(Need, Capability)> {
        let mut out = Vec::new();
        if self.projection {
            out.push((Need::Projection, Capability::Power));
            out.push((Need::Projection, Capability::Input));
        }
        if self.wireless_mics > 0 {
            out.push((Need::WirelessMics, Capability::TxPresent));
        }
        if self.wired_mics > 0 {
            out.push((Need::WiredMics, Capability::Gain));
        }
        // Microphones alone do not imply the room's loudspeakers (a video call or a recording
        // takes them too): a booking that needs the room's sound says so.
        if self.speech_reinforcement {
            out.push((Need::SpeechReinforcement, Capability::Level));
        }
        if self.hvac {
            out.push((Need::Hvac, Capability::Setpoint));
        }
        out
    }
}

/// One of a booking's needs, as a reason names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Need {
    Projection,
    WirelessMics,
    WiredMics,
    SpeechReinforcement,
    VideoConference,
    Hvac,
}

impl Need {
    pub fn as_str(self) -> &'static str {
        match self {
            Need::Projection => "projection",
            Need::WirelessMics => "wireless_mics",
            Need::WiredMics => "wired_mics",
            Need::SpeechReinforcement => "speech_reinforcement",
            Need::VideoConference => "video_conference",
            Need::Hvac => "hvac",
        }
    }
}

/// Where a booking came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BookingSource {
    /// Made through the API (or the demo).
    Api,
    /// Read from the iCalendar feed of this id (`[[bookings.feeds]] id`).
    Feed { feed: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BookingStatus {
    Confirmed,
    Tentative,
    Cancelled,
}

/// A meeting in a room. Times are UTC instants; the site's zone is for display.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Booking {
    pub id: BookingId,
    pub room: RoomId,
    pub title: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organiser: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub department: Option<String>,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    #[serde(default)]
    pub attendees: u32,
    #[serde(default)]
    pub needs: Needs,
    /// Important meetings are tested the day before too (T-24 h).
    #[serde(default)]
    pub important: bool,
    /// A confidential title is never shown outside the records.
    #[serde(default)]
    pub confidential: bool,
    pub status: BookingStatus,
    pub source: BookingSource,
    /// The feed's UID (with the instance's RECURRENCE-ID), for bookings from a feed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_uid: Option<String>,
}

impl Booking {
    pub fn duration(&self) -> chrono::Duration {
        self.end - self.start
    }

    pub fn is_active(&self) -> bool {
        self.status != BookingStatus::Cancelled
    }

    /// Whether it overlaps `[from, to)`.
    pub fn overlaps(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> bool {
        self.start < to && self.end > from
    }

    /// The title as shown outside the records (API, dashboard, MQTT): a confidential one is
    /// withheld.
    pub fn public_title(&self) -> &str {
        if self.confidential {
            "(confidential)"
        } else {
            &self.title
        }
    }
}

/// How ready a room is for a booking, worst last (so `max` of reasons is the verdict).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Readiness {
    Ready,
    /// Works, with reasons a technician should see.
    Degraded,
    /// A need will not be met.
    NotReady,
}

impl Readiness {
    pub fn as_str(self) -> &'static str {
        match self {
            Readiness::Ready => "ready",
            Readiness::Degraded => "degraded",
            Readiness::NotReady => "not_ready",
        }
    }

    /// `avwarden selftest`'s exit code: 0 ready, 1 degraded, 2 not ready.
    pub fn exit_code(self) -> i32 {
        match self {
            Readiness::Ready => 0,
            Readiness::Degraded => 1,
            Readiness::NotReady => 2,
        }
    }
}

/// Why a room is not (quite) ready: one check that failed, on one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reason {
    /// What it does to the booking: `degraded` or `not_ready`.
    pub readiness: Readiness,
    /// Stable machine code (`battery_will_not_last`, `lamp_fault`, `unreachable`), the key of
    /// its remedy text.
    pub code: String,
    /// The need it threatens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub need: Option<Need>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceId>,
    /// The point that failed, written as the API writes points (`ch.2.battery_minutes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point: Option<String>,
    /// One line for the technician: what is wrong.
    pub message: String,
    /// What to do about it ("replace the batteries of mic 2 — spares in cabinet B").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remedy: Option<String>,
    /// For a battery that will not last: the instant it is predicted to run out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runs_out_at: Option<DateTime<Utc>>,
}

/// Which test of a booking produced a verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TestKind {
    /// T-24 h, important meetings.
    Full,
    /// T-60.
    SelfTest,
    /// T-20.
    Recheck,
    /// Asked for (API, CLI).
    Manual,
}

impl TestKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TestKind::Full => "full",
            TestKind::SelfTest => "self_test",
            TestKind::Recheck => "recheck",
            TestKind::Manual => "manual",
        }
    }
}

/// A room's readiness for a booking (or for "now", without one), as a test found it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub room: RoomId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub booking: Option<BookingId>,
    pub kind: TestKind,
    pub readiness: Readiness,
    pub reasons: Vec<Reason>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// When `not_ready`: a room that is free for the whole slot, large enough, equipped and
    /// ready, nearest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alternative: Option<RoomId>,
}

impl Verdict {
    /// The readiness the reasons add up to: the worst of them, `ready` with none.
    pub fn readiness_of(reasons: &[Reason]) -> Readiness {
        reasons
            .iter()
            .map(|r| r.readiness)
            .max()
            .unwrap_or(Readiness::Ready)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_reason_is_the_verdict() {
        let r = |readiness| Reason {
            readiness,
            code: "x".into(),
            need: None,
            device: None,
            point: None,
            message: String::new(),
            remedy: None,
            runs_out_at: None,
        };
        assert_eq!(Verdict::readiness_of(&[]), Readiness::Ready);
        assert_eq!(
            Verdict::readiness_of(&[r(Readiness::Degraded), r(Readiness::NotReady)]),
            Readiness::NotReady
        );
        assert_eq!(
            Verdict::readiness_of(&[r(Readiness::Degraded)]),
            Readiness::Degraded
        );
    }

    #[test]
    fn needs_ask_for_exactly_their_capabilities() {
        let n = Needs {
            projection: true,
            wireless_mics: 2,
            ..Needs::default()
        };
        let caps: Vec<_> = n.capabilities().into_iter().map(|(_, c)| c).collect();
        assert!(caps.contains(&Capability::Power));
        assert!(caps.contains(&Capability::Input));
        assert!(caps.contains(&Capability::TxPresent));
        assert!(!caps.contains(&Capability::Level));
        let loud = Needs {
            speech_reinforcement: true,
            ..Needs::default()
        };
        assert!(loud
            .capabilities()
            .contains(&(Need::SpeechReinforcement, Capability::Level)));
        assert!(!Needs::default().any());
    }
}
