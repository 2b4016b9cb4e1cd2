//! Shared test helpers: clocks, profiles, waiting for state without sleeping.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use avwarden::clock::Clock;
use avwarden::events::EventBus;
use avwarden::metrics::Metrics;
use avwarden::model::DeviceState;
use avwarden::profile::{Profile, ProfileSet};
use chrono::TimeZone;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// 2026-11-27 09:00 UTC, a Friday.
pub fn t0() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc.with_ymd_and_hms(2026, 11, 27, 9, 0, 0).unwrap()
}

pub fn clock() -> Clock {
    Clock::starting_at(t0())
}

pub fn bus() -> EventBus {
    EventBus::new(Metrics::new())
}

/// A shipped profile by id.
pub fn profile(id: &str) -> Arc<Profile> {
    let set = ProfileSet::embedded().expect("embedded profiles parse");
    Arc::new(
        set.get(id)
            .unwrap_or_else(|| panic!("no embedded profile {id}"))
            .clone(),
    )
}

/// Wait until the device state satisfies `pred`; fails (does not hang) after `limit` of tokio
/// time, which under paused time costs nothing.
pub async fn wait_state(
    rx: &mut watch::Receiver<DeviceState>,
    limit: Duration,
    what: &str,
    pred: impl FnMut(&DeviceState) -> bool,
) -> DeviceState {
    let res =
        tokio::time::timeout(limit, async { rx.wait_for(pred).await.map(|s| s.clone()) }).await;
    match res {
        Ok(Ok(s)) => s,
        Ok(Err(_)) => panic!("state channel closed while waiting for {what}"),
        Err(_) => panic!(
            "timed out waiting for {what}; last state: {:#?}",
            *rx.borrow()
        ),
    }
}

/// Largest jump of paused time between two real-time settles (see [`spawn_settle_pump`]).
pub const SETTLE_STEP: Duration = Duration::from_millis(100);

/// Paused tokio time over real sockets has a race: tokio advances paused time as soon as all
/// its tasks wait, but under CPU load the kernel may still be moving loopback bytes (softirq
/// work deferred to ksoftirqd), so a reply deadline can pass before a reply that is already on
/// its way arrives. Measured: 9 of 30 runs failed with a python process running in parallel.
///
/// This pump keeps paused time honest: it caps each auto-advance jump at [`SETTLE_STEP`] and,
/// before the next jump, gives the kernel a short moment of real time by running a blocking
/// task (tokio does not auto-advance while a blocking task runs). Jumps still land exactly on
/// the earliest timer, so measured instants stay exact to the millisecond.
pub fn spawn_settle_pump(cancel: CancellationToken) {
    tokio::spawn(async move {
        loop {
            let settle = tokio::task::spawn_blocking(|| {
                // Real time on a blocking-pool thread, by design: that is the whole point.
                #[allow(clippy::disallowed_methods)]
                std::thread::sleep(Duration::from_micros(500));
            });
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = settle => {}
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(SETTLE_STEP) => {}
            }
        }
    });
}
