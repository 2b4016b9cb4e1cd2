//! The schedule's handle: what the API and the CLI ask of the running schedule (its booking
//! book; a self-test run now). The scheduler task answers the requests.

use tokio::sync::{mpsc, oneshot};

use super::book::Book;
use crate::model::{BookingId, RoomId, Verdict};

/// Why a self-test asked for could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("no room {0:?}")]
    UnknownRoom(String),
    #[error("no booking {0:?} in that room")]
    UnknownBooking(String),
    #[error("the schedule is stopping")]
    Stopped,
}

/// A self-test asked for now.
pub struct RunRequest {
    pub room: RoomId,
    pub booking: Option<BookingId>,
    pub reply: oneshot::Sender<Result<Verdict, RunError>>,
}

/// Cheap to clone.
#[derive(Clone)]
pub struct ScheduleHandle {
    pub book: Book,
    requests: mpsc::Sender<RunRequest>,
    started: tokio::sync::watch::Receiver<bool>,
}

impl ScheduleHandle {
    /// `started` turns true once the book is restored from the records (and, for the demo,
    /// its bookings are made).
    pub fn new(
        book: Book,
        requests: mpsc::Sender<RunRequest>,
        started: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        Self {
            book,
            requests,
            started,
        }
    }

    /// Wait until the schedule has started (the book restored), at most `limit`; whether it has.
    pub async fn started(&self, limit: std::time::Duration) -> bool {
        let mut rx = self.started.clone();
        tokio::time::timeout(limit, rx.wait_for(|s| *s))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Run a room's self-test now (for `booking` when given) and wait for its verdict.
    pub async fn run_now(
        &self,
        room: RoomId,
        booking: Option<BookingId>,
    ) -> Result<Verdict, RunError> {
        if self.book.room(&room).is_none() {
            return Err(RunError::UnknownRoom(room.to_string()));
        }
        if let Some(id) = &booking {
            if self.book.get(id).is_none_or(|b| b.room != room) {
                return Err(RunError::UnknownBooking(id.to_string()));
            }
        }
        let (reply, rx) = oneshot::channel();
        self.requests
            .send(RunRequest {
                room,
                booking,
                reply,
            })
            .await
            .map_err(|_| RunError::Stopped)?;
        rx.await.map_err(|_| RunError::Stopped)?
    }
}

/// A verdict as a technician reads it in a terminal: the readiness, then each reason with its
/// device, point, when a battery runs out, and the remedy.
pub fn render_verdict(v: &Verdict) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}{}: {} ({} test, {})",
        v.room,
        v.booking
            .as_ref()
            .map(|b| format!(" for {b}"))
            .unwrap_or_default(),
        v.readiness.as_str().replace('_', " "),
        v.kind.as_str().replace('_', "-"),
        v.finished_at.format("%Y-%m-%d %H:%M:%SZ")
    );
    for r in &v.reasons {
        let _ = write!(
            out,
            "  - {}: {}",
            r.readiness.as_str().replace('_', " "),
            r.message
        );
        if let Some(d) = &r.device {
            let _ = write!(out, " [{d}");
            if let Some(p) = &r.point {
                let _ = write!(out, " {p}");
            }
            out.push(']');
        }
        if let Some(t) = r.runs_out_at {
            let _ = write!(out, " (runs out at {})", t.format("%H:%MZ"));
        }
        out.push('\n');
        if let Some(remedy) = &r.remedy {
            let _ = writeln!(out, "    remedy: {remedy}");
        }
    }
    if let Some(alt) = &v.alternative {
        let _ = writeln!(out, "  alternative room: {alt}");
    }
    out
}
