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
}

impl ScheduleHandle {
    pub fn new(book: Book, requests: mpsc::Sender<RunRequest>) -> Self {
        Self { book, requests }
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
