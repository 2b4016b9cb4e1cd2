//! Retained `…/room/<room>/status` and `…/device/<device>/state`, and (when enabled) Home
//! Assistant's discovery configs, through one [`Debouncer`].
//!
//! The task wakes when a device's state changes, once per debounce period (bookings start,
//! alerts open and verdicts arrive without a device changing), on every reconnect and when
//! Home Assistant announces itself; it builds every payload and publishes what changed. It
//! clears retained topics of rooms and devices the site no longer has. It must not decide
//! anything about a room: the payloads are the API's views.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::debounce::Debouncer;
use super::MqttOut;
use crate::api::views::DeviceDetail;
use crate::api::ApiState;
use crate::model::{DeviceId, Health, Quantity, Readiness, RoomId, Subject, Value};
use crate::transport::mqtt::MqttError;

/// A room's retained status: the API's room view with the live readiness, the open alerts
/// and the temperature.
#[derive(Serialize)]
struct RoomStatus {
    /// `ready`, `degraded`, `not_ready`, or `unknown` before any device answered.
    readiness: &'static str,
    #[serde(flatten)]
    room: serde_json::Value,
    active_alerts: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature_c: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    setpoint_c: Option<f64>,
}

fn health_readiness(h: Health) -> Option<Readiness> {
    match h {
        Health::Ok | Health::Busy => Some(Readiness::Ready),
        Health::Degraded => Some(Readiness::Degraded),
        Health::Faulted | Health::Unreachable => Some(Readiness::NotReady),
        Health::Unknown => None,
    }
}

fn readiness_str(r: Option<Readiness>) -> &'static str {
    match r {
        Some(Readiness::Ready) => "ready",
        Some(Readiness::Degraded) => "degraded",
        Some(Readiness::NotReady) => "not_ready",
        None => "unknown",
    }
}

/// The first device-level reading of `q` in the room.
fn room_float(st: &ApiState, room: &crate::model::RoomId, q: Quantity) -> Option<f64> {
    st.fleet.room(room).iter().find_map(|h| {
        let s = h.state();
        s.readings
            .iter()
            .find(|(p, _)| p.subject == Subject::Device && p.quantity == q)
            .and_then(|(_, r)| match r.value {
                Value::Float(f) => Some(f),
                Value::Int(i) => Some(i as f64),
                _ => None,
            })
    })
}

/// The status payload of every room (`only` = None) or of the rooms named, by topic.
pub fn room_payloads(out: &MqttOut, only: Option<&BTreeSet<RoomId>>) -> Vec<(String, Vec<u8>)> {
    let st = &out.api;
    st.layout
        .get()
        .rooms
        .iter()
        .filter(|room| only.is_none_or(|o| o.contains(&room.id)))
        .map(|room| {
            let view = crate::api::rooms::room_view(st, room, st.clock.now());
            let live = view
                .devices
                .iter()
                .map(|d| health_readiness(d.health))
                .max()
                .flatten();
            let verdict = view.verdict.as_ref().map(|v| v.readiness);
            let readiness = readiness_str(live.max(verdict));
            let active_alerts = st.playbook.as_ref().map_or(0, |p| {
                p.alerts(&crate::playbook::AlertFilter {
                    open: Some(true),
                    room: Some(room.id.to_string()),
                    ..Default::default()
                })
                .len()
            });
            let mut room_json = serde_json::to_value(&view).unwrap_or_default();
            // A device's last contact moves with every poll; a retained status that changed
            // every few seconds would wake every subscriber for nothing.
            if let Some(devs) = room_json.get_mut("devices").and_then(|d| d.as_array_mut()) {
                for d in devs.iter_mut().filter_map(|d| d.as_object_mut()) {
                    d.remove("last_contact");
                }
            }
            let status = RoomStatus {
                readiness,
                room: room_json,
                active_alerts,
                temperature_c: room_float(st, &room.id, Quantity::Temperature),
                setpoint_c: room_float(st, &room.id, Quantity::Setpoint),
            };
            (
                out.topics.room_status(room.id.as_str()),
                serde_json::to_vec(&status).unwrap_or_default(),
            )
        })
        .collect()
}

/// Every device's state payload, by topic: the API's device view without what moves on its
/// own (each reading's age, the link counters, the last contact) — a subscriber computes an
/// age from `observed_at`, which stays right however late the retained message is read.
/// `only` names the devices to build (None: every one).
pub fn device_payloads(out: &MqttOut, only: Option<&BTreeSet<DeviceId>>) -> Vec<(String, Vec<u8>)> {
    let st = &out.api;
    let now = st.clock.now();
    st.fleet
        .handles()
        .filter(|h| only.is_none_or(|o| o.contains(&h.id)))
        .map(|h| {
            let s = h.state();
            let mut detail = DeviceDetail::from_state(&s, now);
            if let Some(board) = &st.protection {
                detail = detail.with_protection(board.zones(&h.id));
            }
            let mut v = serde_json::to_value(&detail).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.remove("counters");
                o.remove("last_contact");
                if let Some(points) = o.get_mut("points").and_then(|p| p.as_object_mut()) {
                    for reading in points
                        .values_mut()
                        .filter_map(|q| q.as_object_mut())
                        .flat_map(|q| q.values_mut())
                        .filter_map(|r| r.as_object_mut())
                    {
                        reading.remove("age_secs");
                    }
                }
            }
            (
                out.topics.device_state(h.id.as_str()),
                serde_json::to_vec(&v).unwrap_or_default(),
            )
        })
        .collect()
}

/// Publish the retained state topics until `cancel`.
pub async fn run(out: MqttOut, tracker: TaskTracker, cancel: CancellationToken) {
    // A device's state change rebuilds its own payload and its room's, not every payload of
    // the site (at 500 devices polled every 10 s that was 50 whole rebuilds a second); the
    // debounce tick rebuilds everything, for what changes without a device (verdicts,
    // alerts, protection, discovery).
    let changed = Arc::new(Notify::new());
    let dirty: Arc<Mutex<BTreeSet<DeviceId>>> = Arc::default();
    for h in out.api.fleet.handles() {
        let mut rx = h.watch();
        let (changed, dirty, id) = (changed.clone(), dirty.clone(), h.id.clone());
        let stop = cancel.clone();
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    r = rx.changed() => if r.is_err() { break },
                }
                dirty
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id.clone());
                changed.notify_one();
            }
        });
    }
    let own = |out: &MqttOut| -> BTreeSet<String> {
        out.api
            .layout
            .get()
            .rooms
            .iter()
            .map(|r| out.topics.room_status(r.id.as_str()))
            .chain(
                out.api
                    .fleet
                    .handles()
                    .map(|h| out.topics.device_state(h.id.as_str())),
            )
            .collect()
    };
    let own = own(&out);
    // Retained state of rooms and devices the site no longer has, left by an earlier run.
    let mut retained = out
        .mqtt
        .subscribe_many(
            &[
                &out.topics.room_status_filter(),
                &out.topics.device_state_filter(),
            ],
            256,
        )
        .ok();
    let ha_status = out.ha_prefix.as_deref().and_then(|p| {
        out.mqtt
            .subscribe(&crate::codec::ha_discovery::status_topic(p), 16)
            .ok()
    });
    let mut ha_status = ha_status;
    let mut connected = out.mqtt.connected();
    let mut deb = Debouncer::new(out.debounce);
    let mut tick = tokio::time::interval(out.debounce);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stale_topics: Vec<String> = Vec::new();
    let mut everything = true;
    loop {
        let devices = std::mem::take(&mut *dirty.lock().unwrap_or_else(|p| p.into_inner()));
        if everything {
            for (t, p) in room_payloads(&out, None)
                .into_iter()
                .chain(device_payloads(&out, None))
                .chain(super::discovery::payloads(&out))
            {
                deb.offer(&t, p);
            }
        } else if !devices.is_empty() {
            let rooms: BTreeSet<RoomId> = devices
                .iter()
                .filter_map(|id| out.api.fleet.get(id.as_str()))
                .map(|h| h.state().room.clone())
                .collect();
            for (t, p) in room_payloads(&out, Some(&rooms))
                .into_iter()
                .chain(device_payloads(&out, Some(&devices)))
            {
                deb.offer(&t, p);
            }
        }
        everything = false;
        let now = Instant::now();
        if out.mqtt.is_connected() {
            for (topic, payload) in deb.due(now) {
                match out.mqtt.publish(&topic, payload.clone(), true) {
                    Ok(()) => deb.published(&topic, &payload, now),
                    Err(MqttError::NotConnected) => break,
                    Err(e) => {
                        tracing::debug!(topic, error = %e, "state not published yet");
                        break;
                    }
                }
            }
            stale_topics.retain(|t| match out.mqtt.publish(t, Vec::new(), true) {
                Ok(()) => {
                    tracing::info!(topic = %t, "cleared the retained state of a room or device the site no longer has");
                    false
                }
                Err(_) => true,
            });
        }
        let next = deb.next_due().map(|d| d.unwrap_or(now));
        let until_next = async {
            match next {
                Some(at) if out.mqtt.is_connected() => tokio::time::sleep_until(at).await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = changed.notified() => {}
            _ = tick.tick() => everything = true,
            _ = until_next => {}
            r = connected.changed() => {
                if r.is_err() {
                    break;
                }
                if *connected.borrow_and_update() {
                    // The broker may have lost what it held (a restart without persistence).
                    deb.republish(|_| true);
                }
            }
            m = recv(&mut retained) => match m {
                Some(m) if !m.payload.is_empty() && !own.contains(&m.topic) => {
                    if !stale_topics.contains(&m.topic) {
                        stale_topics.push(m.topic);
                    }
                }
                Some(_) => {}
                None => retained = None,
            },
            m = recv(&mut ha_status) => match m {
                Some(m) => {
                    if crate::codec::ha_discovery::parse_status(&m.payload) == Ok(true) {
                        if let Some(prefix) = &out.ha_prefix {
                            let prefix = format!("{prefix}/");
                            deb.republish(|t| t.starts_with(&prefix));
                        }
                    }
                }
                None => ha_status = None,
            },
        }
    }
}

async fn recv(
    sub: &mut Option<crate::transport::mqtt::Subscription>,
) -> Option<crate::transport::mqtt::Message> {
    match sub {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}
