//! What the daemon says on MQTT besides its own `daemon` topic (docs/mqtt.md): retained room
//! status and device state (debounced), device commands on `…/set` topics, alert events and
//! the retained list of open alerts, and Home Assistant discovery.
//!
//! One task per concern on the service's tracker, all through the daemon's one
//! [`MqttHandle`]. The payloads are the API's own views (`api::rooms`, `api::views`), so MQTT
//! and REST say the same thing. This module decides nothing about devices or alerts: it reads
//! the runtime, the schedule and the playbook, sends commands only through device handles,
//! and must never publish or log an API token.

pub mod alerts;
pub mod commands;
pub mod debounce;
pub mod discovery;
pub mod heartbeat;
pub mod state;

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::ApiState;
use crate::events::EventSink;
use crate::transport::mqtt::{MqttHandle, MqttSettings};

/// The daemon's topics under `avwarden/<site>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    base: String,
    site: String,
}

impl Topics {
    /// `site_slug` is the site's name as `app::site_slug` writes it.
    pub fn new(site_slug: &str) -> Self {
        Self {
            base: format!("avwarden/{site_slug}"),
            site: site_slug.to_owned(),
        }
    }

    pub fn site(&self) -> &str {
        &self.site
    }

    pub fn daemon(&self) -> String {
        format!("{}/daemon", self.base)
    }

    pub fn room_status(&self, room: &str) -> String {
        format!("{}/room/{room}/status", self.base)
    }

    pub fn device_state(&self, device: &str) -> String {
        format!("{}/device/{device}/state", self.base)
    }

    pub fn room_status_filter(&self) -> String {
        format!("{}/room/+/status", self.base)
    }

    pub fn device_state_filter(&self) -> String {
        format!("{}/device/+/state", self.base)
    }

    pub fn set_filter(&self) -> String {
        format!("{}/device/+/set", self.base)
    }

    pub fn set_result(&self, device: &str) -> String {
        format!("{}/device/{device}/set/result", self.base)
    }

    /// The device a `…/device/<device>/set` topic addresses.
    pub fn device_of_set<'a>(&self, topic: &'a str) -> Option<&'a str> {
        topic
            .strip_prefix(self.base.as_str())?
            .strip_prefix("/device/")?
            .strip_suffix("/set")
            .filter(|d| !d.is_empty() && !d.contains('/'))
    }

    pub fn alert_events(&self) -> String {
        format!("{}/alerts/events", self.base)
    }

    pub fn heartbeat(&self) -> String {
        format!("{}/heartbeat", self.base)
    }

    pub fn alerts_active(&self) -> String {
        format!("{}/alerts/active", self.base)
    }
}

/// What the MQTT-out tasks need.
#[derive(Clone)]
pub struct MqttOut {
    pub mqtt: MqttHandle,
    /// The API's state: fleet, schedule, playbook, level watch, tokens and logbook.
    pub api: ApiState,
    pub topics: Topics,
    pub debounce: Duration,
    /// Obey `…/set` commands (`[mqtt] commands`).
    pub commands: bool,
    /// Home Assistant's discovery prefix, when discovery is on.
    pub ha_prefix: Option<String>,
    pub alert_queue: usize,
}

impl MqttOut {
    pub fn new(mqtt: MqttHandle, api: ApiState, site_slug: &str, s: &MqttSettings) -> Self {
        Self {
            mqtt,
            api,
            topics: Topics::new(site_slug),
            debounce: Duration::from_millis(s.state_debounce_ms),
            commands: s.commands,
            ha_prefix: s.home_assistant.prefix().map(str::to_owned),
            alert_queue: s.alert_queue,
        }
    }
}

/// Start the state, command and alert tasks on `tracker`. `alerts` must be a sink of
/// [`alerts::filter`] taken before the playbook started, so no alert of the start is missed.
pub fn start(out: MqttOut, alerts: EventSink, tracker: &TaskTracker, cancel: CancellationToken) {
    tracker.spawn(state::run(out.clone(), tracker.clone(), cancel.clone()));
    tracker.spawn(commands::run(out.clone(), cancel.clone()));
    tracker.spawn(heartbeat::run(out.clone(), cancel.clone()));
    tracker.spawn(alerts::run(out, alerts, cancel));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics() {
        let t = Topics::new("building-a");
        assert_eq!(t.room_status("r1"), "avwarden/building-a/room/r1/status");
        assert_eq!(t.device_state("p1"), "avwarden/building-a/device/p1/state");
        assert_eq!(
            t.device_of_set("avwarden/building-a/device/p1/set"),
            Some("p1")
        );
        assert_eq!(t.device_of_set("avwarden/building-a/device//set"), None);
        assert_eq!(t.device_of_set("avwarden/other/device/p1/set"), None);
        assert_eq!(t.device_of_set("avwarden/building-a/device/p1/state"), None);
    }
}
