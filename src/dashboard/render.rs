//! The dashboard's fragments, rendered from the same views the API answers with (room views,
//! booking views, alerts, device details), so the page and the API never disagree.
//!
//! Owns how a room tile, the board, the alert list, a device page and the logbook look. Must
//! not change anything: it reads state and formats it.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use super::history::{chart, History};
use super::html::{
    esc, health_mark, readiness_mark, room_mark, seg, span, Mark, Zone, BAD, GOOD, NEUTRAL, WARN,
};
use crate::api::bookings::{BookingView, VerdictView};
use crate::api::records::EntryView;
use crate::api::rooms::RoomView;
use crate::api::ApiState;
use crate::model::{DeviceState, Quantity, Subject, Value};
use crate::playbook::alerts::{Alert, AlertState};

fn num(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) => Some(*i as f64),
        Value::Float(f) if f.is_finite() => Some(*f),
        _ => None,
    }
}

/// A reading of `quantity` per subject of `s`.
fn readings(s: &DeviceState, quantity: Quantity) -> Vec<(Subject, f64, DateTime<Utc>)> {
    s.readings
        .values()
        .filter(|r| r.point.quantity == quantity)
        .filter_map(|r| num(&r.value).map(|v| (r.point.subject.clone(), v, r.observed_at)))
        .collect()
}

/// The end of the booking a battery must last: the running one, else the next.
fn booking_end(room: &RoomView) -> Option<DateTime<Utc>> {
    room.current_booking
        .as_ref()
        .or(room.next_booking.as_ref())
        .map(|b| b.end)
}

/// One device's line on a room tile: health and age, battery bars and minutes and whether
/// they last the booking, lamp hours, temperature, zone protection.
fn device_line(s: &DeviceState, room: &RoomView, now: DateTime<Utc>, zone: Zone) -> String {
    let m = health_mark(s.health);
    let mut out = format!(
        r#"<li class="device {cls}"><a href="/devices/{href}">{id}</a> {badge} <span class="age">for {age}</span>"#,
        cls = m.class,
        href = seg(s.id.as_str()),
        id = esc(s.id.as_str()),
        badge = m.badge(),
        age = span(now - s.health_since),
    );
    let bars = readings(s, Quantity::BatteryBars);
    let minutes = readings(s, Quantity::BatteryMinutes);
    let end = booking_end(room);
    if !minutes.is_empty() || !bars.is_empty() {
        out.push_str(r#"<ul class="batteries">"#);
        let mut subjects: Vec<&Subject> = minutes
            .iter()
            .map(|m| &m.0)
            .chain(bars.iter().map(|b| &b.0))
            .collect();
        subjects.sort();
        subjects.dedup();
        for subj in subjects {
            let bar = bars.iter().find(|b| &b.0 == subj).map(|b| b.1);
            let min = minutes.iter().find(|m| &m.0 == subj);
            let _ = write!(
                out,
                r#"<li><span class="subject">{}</span> "#,
                esc(&subj.to_string())
            );
            if let Some(b) = bar {
                let b = b.clamp(0.0, 5.0) as usize;
                let _ = write!(
                    out,
                    r#"<span class="bars" role="img" aria-label="{b} of 5 bars"><span aria-hidden="true">{}{}</span></span> "#,
                    "▮".repeat(b),
                    "▯".repeat(5 - b)
                );
            }
            if let Some((_, mins, at)) = min {
                let empty_at = *at + chrono::Duration::seconds((*mins * 60.0) as i64);
                let _ = write!(out, "{mins:.0} min");
                if let Some(end) = end {
                    let mark = if empty_at >= end {
                        Mark {
                            class: GOOD,
                            icon: "✓",
                            word: "",
                        }
                    } else {
                        Mark {
                            class: BAD,
                            icon: "✗",
                            word: "",
                        }
                    };
                    let text = if empty_at >= end {
                        format!("lasts until {}", zone.hm(end))
                    } else {
                        format!("runs out at {}", zone.hm(empty_at))
                    };
                    let _ = write!(
                        out,
                        r#" <span class="lasts {}">{text} <span aria-hidden="true">{}</span></span>"#,
                        mark.class, mark.icon
                    );
                }
            }
            out.push_str("</li>");
        }
        out.push_str("</ul>");
    }
    let mut facts = Vec::new();
    for (subj, hours, _) in readings(s, Quantity::LampHours) {
        facts.push(format!("{} {hours:.0} h", esc(&subj.to_string())));
    }
    for (_, t, _) in readings(s, Quantity::Temperature) {
        facts.push(format!("temperature {t:.1} °C"));
    }
    if let Some(zones) = room.protection.get(s.id.as_str()) {
        for (z, p) in zones {
            let state = serde_json::to_value(p.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            let cls = if state == "idle" {
                GOOD
            } else if state == "blind" || state == "muted" {
                BAD
            } else {
                WARN
            };
            facts.push(format!(
                r#"zone {} <span class="badge {cls}">{}</span>{}"#,
                esc(z),
                esc(&state),
                if p.reduction_db > 0.0 {
                    format!(" −{:.1} dB", p.reduction_db)
                } else {
                    String::new()
                }
            ));
        }
    }
    if !facts.is_empty() {
        let _ = write!(out, r#"<p class="facts">{}</p>"#, facts.join(" · "));
    }
    for f in &s.faults {
        let _ = write!(
            out,
            r#"<p class="fault">{} {}</p>"#,
            Mark {
                class: BAD,
                icon: "⚠",
                word: "fault:"
            }
            .badge(),
            esc(&f.fault.message)
        );
    }
    out.push_str("</li>");
    out
}

fn booking_line(b: &BookingView, zone: Zone) -> String {
    format!(
        "{}–{} {}",
        zone.time(b.start, false),
        zone.time(b.end, false),
        esc(&b.title)
    )
}

/// A room's tile: its readiness now, the booking running and the next, its devices.
pub fn room_tile(st: &ApiState, room: &RoomView, zone: Zone) -> String {
    room_tile_of(st, room, &st.fleet.room(&room.id), zone)
}

/// [`room_tile`] with the room's devices given (the index page groups the fleet by room
/// once rather than scanning it per tile).
fn room_tile_of(
    st: &ApiState,
    room: &RoomView,
    devices: &[crate::runtime::DeviceHandle],
    zone: Zone,
) -> String {
    let now = st.clock.now();
    let m = room_mark(room.state);
    let mut out = format!(
        r#"<h3><a href="/rooms/{href}">{name}</a></h3><p class="state">{badge}</p>"#,
        href = seg(room.id.as_str()),
        name = esc(&room.name),
        badge = m.badge(),
    );
    if let Some(b) = &room.current_booking {
        let _ = write!(
            out,
            r#"<p class="booking">Now: {}</p>"#,
            booking_line(b, zone)
        );
    }
    if let Some(b) = &room.next_booking {
        let _ = write!(
            out,
            r#"<p class="booking">Next: {}</p>"#,
            booking_line(b, zone)
        );
    }
    if let Some(v) = &room.verdict {
        let _ = write!(
            out,
            r#"<p class="verdict">Last self-test {} at {}</p>"#,
            readiness_mark(v.readiness).badge(),
            zone.time(v.checked_at, false)
        );
    }
    out.push_str(r#"<ul class="devices">"#);
    for h in devices {
        out.push_str(&device_line(&h.state(), room, now, zone));
    }
    out.push_str("</ul>");
    out
}

/// The tile wrapped as the grid holds it, with what live updates re-fetch.
pub fn room_article(st: &ApiState, room: &RoomView, zone: Zone) -> String {
    room_article_of(st, room, &st.fleet.room(&room.id), zone)
}

/// [`room_article`] with the room's devices given, as [`room_tile_of`].
pub fn room_article_of(
    st: &ApiState,
    room: &RoomView,
    devices: &[crate::runtime::DeviceHandle],
    zone: Zone,
) -> String {
    format!(
        r#"<article class="tile {cls}" id="room-{id}" data-room="{id}" data-fragment="/rooms/{href}/tile" aria-label="Room {name}">{}</article>"#,
        room_tile_of(st, room, devices, zone),
        cls = room_mark(room.state).class,
        id = esc(room.id.as_str()),
        href = seg(room.id.as_str()),
        name = esc(&room.name),
    )
}

fn verdict_cells(v: Option<&VerdictView>) -> (String, String, String) {
    let Some(v) = v else {
        return (
            Mark {
                class: NEUTRAL,
                icon: "?",
                word: "not yet tested",
            }
            .badge(),
            String::new(),
            String::new(),
        );
    };
    let mut reasons = String::new();
    let mut remedies = String::new();
    for r in &v.reasons {
        let _ = write!(reasons, "<li>{}</li>", esc(&r.message));
        if let Some(rem) = &r.remedy {
            let _ = write!(remedies, "<li>{}</li>", esc(rem));
        }
    }
    let wrap = |s: String| {
        if s.is_empty() {
            s
        } else {
            format!("<ul>{s}</ul>")
        }
    };
    (
        readiness_mark(v.readiness).badge(),
        wrap(reasons),
        wrap(remedies),
    )
}

/// The readiness board: upcoming bookings by time with verdict, reasons, remedy and the
/// alternative room.
pub fn board(bookings: &[BookingView], zone: Zone) -> String {
    if bookings.is_empty() {
        return r#"<p class="empty">No upcoming bookings.</p>"#.to_owned();
    }
    let mut out = String::from(
        r#"<div class="scroll"><table class="board"><caption class="sr-only">Upcoming bookings and their readiness</caption><thead><tr><th scope="col">When</th><th scope="col">Room</th><th scope="col">Booking</th><th scope="col">Verdict</th><th scope="col">Reasons</th><th scope="col">Remedy</th><th scope="col">Alternative</th></tr></thead><tbody>"#,
    );
    for b in bookings {
        let (verdict, reasons, remedies) = verdict_cells(b.verdict.as_ref());
        let alt = b
            .verdict
            .as_ref()
            .and_then(|v| v.alternative.as_ref())
            .map(|a| {
                format!(
                    r#"<a href="/rooms/{}">{}</a>"#,
                    seg(a.as_str()),
                    esc(a.as_str())
                )
            })
            .unwrap_or_default();
        let _ = write!(
            out,
            r#"<tr><td>{}–{}</td><td><a href="/rooms/{}">{}</a></td><td>{}</td><td>{verdict}</td><td>{reasons}</td><td>{remedies}</td><td>{alt}</td></tr>"#,
            zone.time(b.start, true),
            zone.time(b.end, false),
            seg(b.room.as_str()),
            esc(b.room.as_str()),
            esc(&b.title),
        );
    }
    out.push_str("</tbody></table></div>");
    out
}

/// The open alerts, newest first, each with Acknowledge while it is raised.
pub fn alerts(list: &[Alert], may_act: bool, zone: Zone) -> String {
    let open: Vec<&Alert> = list.iter().filter(|a| a.is_open()).collect();
    if open.is_empty() {
        return r#"<p class="empty"><span aria-hidden="true">✓</span> No open alerts.</p>"#
            .to_owned();
    }
    let mut out = String::from(r#"<ul class="alerts">"#);
    for a in open {
        let v = serde_json::to_value(a).unwrap_or_default();
        let text = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
        let class = text("class");
        let cls = match class.as_str() {
            "critical" | "major" => BAD,
            _ => WARN,
        };
        let (state, action) = match a.state {
            AlertState::Raised => (
                Mark {
                    class: cls,
                    icon: "⚠",
                    word: "raised",
                }
                .badge(),
                if may_act {
                    format!(
                        r#"<button type="button" class="ack" data-alert="{}">Acknowledge<span class="sr-only"> alert {}</span></button>"#,
                        a.id, a.id
                    )
                } else {
                    String::new()
                },
            ),
            _ => (
                Mark {
                    class: NEUTRAL,
                    icon: "✓",
                    word: "acknowledged",
                }
                .badge(),
                format!(
                    r#"<span class="by">by {}</span>"#,
                    esc(a.acknowledged_by.as_deref().unwrap_or("someone"))
                ),
            ),
        };
        let _ = write!(
            out,
            r#"<li class="alert {cls}" id="alert-{id}"><p><strong>{class}</strong> · {kind} · {room} · raised {at}</p><p class="msg">{msg}</p><p class="act">{state} {action}</p></li>"#,
            id = a.id,
            class = esc(&class),
            kind = esc(&text("kind")),
            room = a
                .room
                .as_ref()
                .map(|r| esc(r.as_str()))
                .unwrap_or_else(|| "site".into()),
            at = zone.time(a.raised_at, false),
            msg = esc(&a.message),
        );
    }
    out.push_str("</ul>");
    out
}

/// The device page: state, faults, readings, protection and the charts.
pub fn device_page(
    st: &ApiState,
    s: &DeviceState,
    history: Option<&History>,
    zone: Zone,
) -> String {
    let now = st.clock.now();
    let m = health_mark(s.health);
    let mut out = format!(
        r#"<section aria-labelledby="state-h" id="device-state" data-device="{id}"><h2 id="state-h">State</h2><p>{badge} for {age} · room <a href="/rooms/{room_href}">{room}</a> · {reach}</p>"#,
        id = esc(s.id.as_str()),
        badge = m.badge(),
        age = span(now - s.health_since),
        room_href = seg(s.room.as_str()),
        room = esc(s.room.as_str()),
        reach = if s.reachable {
            "reachable"
        } else {
            "not reachable"
        },
    );
    if !s.faults.is_empty() {
        out.push_str(r#"<ul class="faults">"#);
        for f in &s.faults {
            let _ = write!(
                out,
                "<li>{} {}</li>",
                Mark {
                    class: BAD,
                    icon: "⚠",
                    word: "fault"
                }
                .badge(),
                esc(&f.fault.message)
            );
        }
        out.push_str("</ul>");
    }
    out.push_str("</section>");
    out.push_str(r#"<section aria-labelledby="hist-h"><h2 id="hist-h">Last hours</h2>"#);
    let series = history.map(|h| h.of(s, now)).unwrap_or_default();
    if series.is_empty() {
        out.push_str(r#"<p class="empty">No battery or temperature readings sampled yet (every minute, kept 6 hours in memory).</p>"#);
    }
    for (point, s) in &series {
        let (title, unit) = if point.ends_with("battery_minutes") {
            (
                format!(
                    "Battery minutes, {}",
                    point.trim_end_matches(".battery_minutes")
                ),
                "min",
            )
        } else {
            (format!("Temperature, {point}"), "°C")
        };
        out.push_str(&chart(&title, unit, s, now, zone));
    }
    out.push_str("</section>");
    out.push_str(r#"<section aria-labelledby="read-h"><h2 id="read-h">Readings</h2><div class="scroll"><table><thead><tr><th scope="col">Point</th><th scope="col">Value</th><th scope="col">Observed</th></tr></thead><tbody>"#);
    for r in s.readings.values() {
        let v = serde_json::to_value(&r.value).unwrap_or_default();
        let shown = match &v["value"] {
            serde_json::Value::String(t) => t.clone(),
            serde_json::Value::Null => "unknown".to_owned(),
            other => other.to_string(),
        };
        let unit = r
            .point
            .unit()
            .map(|u| {
                serde_json::to_value(u)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            })
            .unwrap_or_default();
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{} {}</td><td>{} ago</td></tr>",
            esc(&r.point.to_string()),
            esc(&shown),
            esc(&unit),
            span(now - r.observed_at)
        );
    }
    out.push_str("</tbody></table></div></section>");
    out
}

/// The logbook's entries, newest first.
pub fn logbook(entries: &[EntryView]) -> String {
    if entries.is_empty() {
        return r#"<p class="empty">No entries match.</p>"#.to_owned();
    }
    let mut out = String::from(
        r#"<div class="scroll"><table class="logbook"><thead><tr><th scope="col">#</th><th scope="col">When (UTC)</th><th scope="col">Kind</th><th scope="col">Room</th><th scope="col">Device</th><th scope="col">Who</th><th scope="col">What</th></tr></thead><tbody>"#,
    );
    for e in entries {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            e.seq,
            esc(&e.at),
            esc(&e.kind),
            esc(e.room.as_deref().unwrap_or("")),
            e.device
                .as_deref()
                .map(|d| format!(r#"<a href="/devices/{}">{}</a>"#, seg(d), esc(d)))
                .unwrap_or_default(),
            esc(&e.actor),
            esc(&e.message),
        );
    }
    out.push_str("</tbody></table></div>");
    out
}
