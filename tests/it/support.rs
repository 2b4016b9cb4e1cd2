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
