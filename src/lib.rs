//! avwarden keeps meeting rooms working: it talks to projectors, wireless microphone
//! receivers, mixers/DSPs and HVAC, tests rooms before bookings, protects loudspeakers, runs the
//! contingency playbook and keeps the equipment archive and maintenance logbook.
//!
//! Layers, each knowing only the ones before it:
//! `model` ← `codec` ← `driver` ← `runtime` ← (`api`, …) ← `app`.
//! `transport` carries bytes for `runtime`; `clock` is the only reader of the wall clock.

pub mod aggregate;
pub mod api;
pub mod app;
pub mod clock;
pub mod codec;
pub mod config;
pub mod dashboard;
pub mod demo;
pub mod driver;
pub mod events;
pub mod heap;
pub mod levelwatch;
pub mod meter;
pub mod metrics;
pub mod model;
pub mod mqtt_out;
pub mod notify;
pub mod playbook;
pub mod profile;
pub mod records;
pub mod reload;
pub mod runtime;
pub mod schedule;
pub mod sim;
pub mod transport;
pub mod watchdog;

/// `tokio::spawn` for unit tests, which are outside the shutdown tree by nature (the ban in
/// clippy.toml is for the daemon's own tasks).
#[cfg(test)]
pub(crate) fn test_spawn<F>(task: F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio_util::task::TaskTracker::new().spawn(task)
}
