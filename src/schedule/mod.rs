//! Bookings and what follows from them: the sources bookings come from (the API, iCalendar
//! feeds), the plan of timed jobs around each booking (T-24 h, T-60, T-30, T-20, HVAC
//! pre-conditioning, start, end), the self-test runner and its verdicts.
//!
//! Must not read the wall clock directly (it is handed `now` or a `Clock`), and must not talk
//! to a device except through the runtime's handles.

pub mod alternative;
pub mod battery;
pub mod book;
pub mod checks;
pub mod demo;
pub mod feed;
pub mod history;
pub mod ical;
pub mod meeting;
pub mod plan;
pub mod remedies;
pub mod scheduler;
pub mod selftest;
pub mod service;
pub mod thermal;

pub use service::{render_verdict, RunError, RunRequest, ScheduleHandle};
