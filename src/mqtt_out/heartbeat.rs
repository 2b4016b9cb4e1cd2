//! The retained `…/heartbeat`: `{"v":1,"at":…,"every_secs":30}`, published at every connect
//! and every [`crate::aggregate::HEARTBEAT_SECS`], so a reader (the aggregate mode's central
//! daemon) can tell a quiet building from one whose daemon or bridge is gone even when no
//! state changes for hours and the broker never published the last will (a bridge down
//! between buildings, a frozen host).
//!
//! `v` is the version of the topic contract (docs/architecture.md): a reader ignores fields it
//! does not know; a change a reader cannot ignore gets a new `v`. This task decides nothing;
//! it only says the daemon is alive and when.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use tokio_util::sync::CancellationToken;

use super::MqttOut;

/// The contract version the building daemon's payloads follow.
pub const CONTRACT_VERSION: u32 = 1;

/// The payload at `at`.
pub fn payload(at: DateTime<Utc>) -> Vec<u8> {
    serde_json::json!({
        "v": CONTRACT_VERSION,
        "at": at.to_rfc3339_opts(SecondsFormat::Secs, true),
        "every_secs": crate::aggregate::HEARTBEAT_SECS,
    })
    .to_string()
    .into_bytes()
}

/// Publish the heartbeat until `cancel`.
pub async fn run(out: MqttOut, cancel: CancellationToken) {
    let topic = out.topics.heartbeat();
    let mut connected = out.mqtt.connected();
    let mut tick = tokio::time::interval(Duration::from_secs(crate::aggregate::HEARTBEAT_SECS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
            r = connected.changed() => {
                if r.is_err() {
                    break;
                }
                if !*connected.borrow_and_update() {
                    continue;
                }
            }
        }
        if out.mqtt.is_connected() {
            if let Err(e) = out.mqtt.publish(&topic, payload(out.api.clock.now()), true) {
                tracing::debug!(error = %e, "heartbeat not published");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload() {
        let at = DateTime::parse_from_rfc3339("2026-11-27T09:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            String::from_utf8(payload(at)).unwrap(),
            r#"{"at":"2026-11-27T09:00:00Z","every_secs":30,"v":1}"#
        );
    }
}
