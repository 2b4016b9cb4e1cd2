//! Alert events on `…/alerts/events` (QoS 1, not retained) and the retained list of open
//! alerts on `…/alerts/active`, fed by a reliable sink of the event bus.
//!
//! Events raised while the broker is away wait in an ordered, bounded queue and go out in
//! order once it is back; an overflow drops the oldest, counted and logged as an error. A
//! publish the client accepted just before the connection died is not lost either: rumqttc
//! keeps every unacknowledged QoS 1 publish and every request still in its channel, and sends
//! them first when it reconnects (its `EventLoop::clean`), before anything queued here. So
//! delivery is at least once, in order; a subscriber may see an event twice around a
//! reconnect. This module must not change an alert; it only reports them.

use std::collections::VecDeque;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::MqttOut;
use crate::events::{Event, EventFilter, EventKind, EventSink};
use crate::transport::mqtt::MqttError;

/// The events the alert task takes from the bus.
pub fn filter() -> EventFilter {
    EventFilter::matching(|k| {
        matches!(
            k,
            EventKind::AlertChanged { .. } | EventKind::EventsDropped { .. }
        )
    })
}

/// One alert event as published: the event's own fields, nothing from the logbook.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertEvent<'a> {
    pub alert: u64,
    /// What happened to it: `raised`, `acknowledged`, `escalated`, `resolved` …
    pub state: &'a str,
    pub class: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<&'a str>,
    pub fault: &'a str,
    pub text: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<&'a str>,
    pub at: DateTime<Utc>,
}

/// The payload of an `AlertChanged` event; `None` for any other event.
pub fn event_payload(e: &Event) -> Option<Vec<u8>> {
    let EventKind::AlertChanged {
        alert,
        device,
        room,
        fault,
        class,
        what,
        by,
        detail,
    } = &e.kind
    else {
        return None;
    };
    let ev = AlertEvent {
        alert: *alert,
        state: what,
        class,
        room: room.as_ref().map(|r| r.as_str()),
        subject: device.as_ref().map(|d| d.as_str()),
        fault,
        text: detail,
        by: by.as_deref(),
        at: e.at,
    };
    serde_json::to_vec(&ev).ok()
}

/// The retained list: every open alert, newest first, as `GET /api/v1/alerts?open=true`.
fn active_payload(out: &MqttOut) -> Option<Vec<u8>> {
    let p = out.api.playbook.as_ref()?;
    let open = p.alerts(&crate::playbook::AlertFilter {
        open: Some(true),
        ..Default::default()
    });
    serde_json::to_vec(&open).ok()
}

/// An ordered queue that keeps the newest `cap` items.
#[derive(Debug)]
pub struct Backlog {
    queue: VecDeque<Vec<u8>>,
    cap: usize,
    dropped: u64,
}

impl Backlog {
    pub fn new(cap: usize) -> Self {
        Self {
            queue: VecDeque::new(),
            cap: cap.max(1),
            dropped: 0,
        }
    }

    /// Queue `item`; `true` when the oldest had to go to make room.
    pub fn push(&mut self, item: Vec<u8>) -> bool {
        let full = self.queue.len() >= self.cap;
        if full {
            self.queue.pop_front();
            self.dropped += 1;
        }
        self.queue.push_back(item);
        full
    }

    pub fn front(&self) -> Option<&Vec<u8>> {
        self.queue.front()
    }

    pub fn pop(&mut self) {
        self.queue.pop_front();
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// Publish alert events and the active list until `cancel`.
pub async fn run(out: MqttOut, mut sink: EventSink, cancel: CancellationToken) {
    let mut backlog = Backlog::new(out.alert_queue);
    let mut connected = out.mqtt.connected();
    let events = out.topics.alert_events();
    let active = out.topics.alerts_active();
    // The active list is due at the start, after every change and after every reconnect.
    let mut active_due = true;
    let mut retry = false;
    loop {
        if out.mqtt.is_connected() {
            retry = false;
            while let Some(p) = backlog.front() {
                match out.mqtt.publish(&events, p.clone(), false) {
                    Ok(()) => backlog.pop(),
                    Err(MqttError::QueueFull) => {
                        retry = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            // After the events it follows, so a reader of both never sees the list ahead.
            if active_due && backlog.is_empty() {
                match active_payload(&out) {
                    Some(p) => match out.mqtt.publish(&active, p, true) {
                        Ok(()) => active_due = false,
                        Err(MqttError::QueueFull) => retry = true,
                        Err(_) => {}
                    },
                    None => active_due = false,
                }
            }
        }
        let pause = async {
            if retry {
                tokio::time::sleep(Duration::from_millis(50)).await
            } else {
                std::future::pending().await
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => break,
            e = sink.recv() => {
                let Some(e) = e else { break };
                if let EventKind::EventsDropped { dropped, .. } = &e.kind {
                    tracing::error!(dropped, "alert events lost before mqtt could take them");
                    active_due = true;
                    continue;
                }
                if let Some(p) = event_payload(&e) {
                    if backlog.push(p) {
                        tracing::error!(
                            dropped = backlog.dropped(),
                            queued = backlog.len(),
                            "mqtt alert queue full while the broker is away; oldest alert event dropped"
                        );
                    }
                    active_due = true;
                }
            }
            r = connected.changed() => {
                if r.is_err() {
                    break;
                }
                if *connected.borrow_and_update() {
                    active_due = true;
                }
            }
            _ = pause => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backlog_keeps_order_and_counts_what_it_drops() {
        let mut b = Backlog::new(2);
        assert!(!b.push(b"1".to_vec()));
        assert!(!b.push(b"2".to_vec()));
        assert!(b.push(b"3".to_vec()));
        assert_eq!(b.dropped(), 1);
        assert_eq!(b.front().map(Vec::as_slice), Some(&b"2"[..]));
        b.pop();
        assert_eq!(b.front().map(Vec::as_slice), Some(&b"3"[..]));
    }

    #[test]
    fn an_alert_event_payload() {
        let e = Event {
            at: chrono::DateTime::parse_from_rfc3339("2026-11-27T09:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
            kind: EventKind::AlertChanged {
                alert: 7,
                device: Some(crate::model::DeviceId::from("r101-mics")),
                room: Some(crate::model::RoomId::from("r101")),
                fault: "battery_critical".into(),
                class: "major".into(),
                what: "raised".into(),
                by: None,
                detail: "channel 2 battery 10 min".into(),
            },
        };
        let p = String::from_utf8(event_payload(&e).unwrap()).unwrap();
        assert_eq!(
            p,
            r#"{"alert":7,"state":"raised","class":"major","room":"r101","subject":"r101-mics","fault":"battery_critical","text":"channel 2 battery 10 min","at":"2026-11-27T09:00:00Z"}"#
        );
    }
}
