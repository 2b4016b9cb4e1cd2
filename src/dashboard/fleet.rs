//! The fleet page (`/fleet`) of a central daemon in aggregate mode: each building with its
//! staleness, the fleet's open alerts and every building's rooms, from the fleet API's own
//! views. Plain tables, a word and an icon beside every colour.
//!
//! It must not offer any action: the central daemon is read-only, and acknowledging an alert
//! happens on the building's own dashboard.

use chrono::{DateTime, Utc};

use super::html::{esc, Mark, BAD, GOOD, NEUTRAL, WARN};
use crate::aggregate::state::{BuildingView, FleetAlert, FleetRoom, StaleReason};

fn stale_mark(reason: Option<StaleReason>) -> Mark {
    let (class, icon, word) = match reason {
        None => (GOOD, "✔", "live"),
        Some(StaleReason::Offline) => (BAD, "✖", "offline"),
        Some(StaleReason::Silent) => (WARN, "⌛", "silent (stale)"),
        Some(StaleReason::NeverSeen) => (NEUTRAL, "?", "never seen"),
        Some(StaleReason::Unannounced) => (NEUTRAL, "?", "no daemon status"),
        Some(StaleReason::BrokerDown) => (WARN, "⚠", "unknown (broker down)"),
    };
    Mark { class, icon, word }
}

fn readiness_mark(r: &str) -> Mark {
    let (class, icon, word) = match r {
        "ready" => (GOOD, "✔", "ready"),
        "degraded" => (WARN, "▲", "at risk"),
        "not_ready" => (BAD, "✖", "not ready"),
        _ => (NEUTRAL, "?", "unknown"),
    };
    Mark { class, icon, word }
}

fn counts(m: &std::collections::BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "none".to_owned();
    }
    m.iter()
        .map(|(k, n)| format!("{n} {}", esc(k)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn when(t: Option<DateTime<Utc>>, secs: Option<f64>) -> String {
    match (t, secs) {
        (Some(t), Some(s)) => format!(
            r#"<time datetime="{}">{} s ago</time>"#,
            t.to_rfc3339(),
            s.round()
        ),
        _ => "never".to_owned(),
    }
}

/// The page's body.
pub fn body(
    broker_up: bool,
    broker: &str,
    buildings: &[BuildingView],
    alerts: &[FleetAlert],
    rooms: &[FleetRoom],
) -> String {
    let banner = if broker_up {
        String::new()
    } else {
        format!(
            r#"<p class="panel" role="alert"><strong>The central broker ({}) cannot be reached.</strong> Nothing below is known to be current.</p>"#,
            esc(broker)
        )
    };
    let b_rows: String = buildings
        .iter()
        .map(|b| {
            format!(
                "<tr><th scope=\"row\">{name}</th><td>{state}</td><td>{seen}</td><td>{r} ready, {a} at risk, {n} not ready, {u} unknown</td><td>{dev}</td><td>{al}</td></tr>",
                name = esc(&b.name),
                state = stale_mark(b.stale_reason).badge(),
                seen = when(b.last_seen, b.last_seen_secs),
                r = b.rooms.ready,
                a = b.rooms.at_risk,
                n = b.rooms.not_ready,
                u = b.rooms.unknown,
                dev = counts(&b.devices),
                al = counts(&b.alerts),
            )
        })
        .collect();
    let a_rows: String = alerts
        .iter()
        .map(|a| {
            let s = |k: &str| a.alert.get(k).and_then(|v| v.as_str()).unwrap_or("");
            let stale = if a.stale { " (building stale)" } else { "" };
            format!(
                "<tr><td>{b}{stale}</td><td>{class}</td><td>{room}</td><td>{msg}</td><td>{state}</td><td>{raised}</td></tr>",
                b = esc(&a.building),
                class = esc(s("class")),
                room = esc(s("room")),
                msg = esc(s("message")),
                state = esc(s("state")),
                raised = esc(s("raised_at")),
            )
        })
        .collect();
    let r_rows: String = rooms
        .iter()
        .map(|r| {
            let readiness = if r.stale {
                format!(
                    "{} (last known: {})",
                    stale_mark(r.stale_reason).badge(),
                    esc(readiness_mark(&r.room.readiness).word)
                )
            } else {
                readiness_mark(&r.room.readiness).badge()
            };
            format!(
                "<tr><td>{b}</td><th scope=\"row\">{name}</th><td>{readiness}</td><td>{al}</td></tr>",
                b = esc(&r.building),
                name = esc(r.room.name.as_deref().unwrap_or(&r.id)),
                al = r.room.active_alerts,
            )
        })
        .collect();
    let empty = |rows: &str, what: &str| {
        if rows.is_empty() {
            format!(r#"<p class="empty">{what}</p>"#)
        } else {
            String::new()
        }
    };
    format!(
        r#"{banner}<p>Read-only: act on a building's own dashboard. Reload the page for the newest state.</p>
<section aria-labelledby="buildings-h" class="panel">
<h2 id="buildings-h">Buildings</h2>
<table><thead><tr><th scope="col">Building</th><th scope="col">State</th><th scope="col">Last heard</th><th scope="col">Rooms</th><th scope="col">Devices</th><th scope="col">Open alerts</th></tr></thead>
<tbody>{b_rows}</tbody></table>{b_empty}
</section>
<section aria-labelledby="falerts-h" class="panel">
<h2 id="falerts-h">Open alerts across the fleet</h2>
<table><thead><tr><th scope="col">Building</th><th scope="col">Class</th><th scope="col">Room</th><th scope="col">Alert</th><th scope="col">State</th><th scope="col">Raised</th></tr></thead>
<tbody>{a_rows}</tbody></table>{a_empty}
</section>
<section aria-labelledby="frooms-h" class="panel">
<h2 id="frooms-h">Rooms</h2>
<table><thead><tr><th scope="col">Building</th><th scope="col">Room</th><th scope="col">Readiness</th><th scope="col">Open alerts</th></tr></thead>
<tbody>{r_rows}</tbody></table>{r_empty}
</section>"#,
        b_empty = empty(&b_rows, "No building has published yet."),
        a_empty = empty(&a_rows, "No open alerts."),
        r_empty = empty(&r_rows, "No rooms known yet."),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_room_is_never_shown_as_live() {
        let room = FleetRoom {
            building: "b".into(),
            id: "r1".into(),
            room: crate::aggregate::state::RoomEntry {
                name: Some("<Room>".into()),
                readiness: "ready".into(),
                active_alerts: 0,
                temperature_c: None,
            },
            stale: true,
            stale_reason: Some(StaleReason::Offline),
        };
        let html = body(false, "h:1883", &[], &[], &[room]);
        assert!(html.contains("cannot be reached"));
        assert!(html.contains("offline"));
        assert!(html.contains("last known: ready"));
        assert!(html.contains("&lt;Room&gt;"));
        assert!(!html.contains(r#"badge good"#));
    }
}
