//! iCalendar import: arbitrary text through `schedule::ical::parse_with_limits` and
//! `Calendar::expand_with_problems`, as a feed poll and `avwarden bookings expand` read it.
//!
//! The first bytes pick the floating zone and the window, the rest is the feed. Checks, beyond
//! "no panic": every instance overlaps the requested window and ends no earlier than it starts;
//! instances come sorted by start and within the feed's instance limit; the zone floating times
//! are read in is a real zone (the floating one or the feed's X-WR-TIMEZONE, resolved); every
//! problem with a line names one inside the feed; expanding twice gives the same answer; each
//! instance's JSON line is one JSON object.

use avwarden::schedule::ical::{self, Limits};
use chrono::{DateTime, Duration, TimeZone, Utc};
use chrono_tz::Tz;

/// Small limits, so a hostile feed is cut quickly and the cuts themselves get exercised.
const LIMITS: Limits = Limits {
    max_bytes: 64 * 1024,
    max_events: 200,
    max_instances_per_series: 100,
    max_steps_per_series: 5_000,
    max_instances: 1_000,
};

const ZONES: [Tz; 4] = [
    Tz::UTC,
    Tz::Europe__Berlin,
    Tz::America__New_York,
    Tz::Australia__Lord_Howe,
];

/// One input: panics when a check fails.
pub fn check(data: &[u8]) {
    let Some((head, feed)) = data.split_first_chunk::<4>() else {
        return;
    };
    let floating = ZONES[usize::from(head[0]) % ZONES.len()];
    // Windows around the seeds' dates (2024–2027), from an hour to about two months long.
    let base: DateTime<Utc> = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap();
    let from = base + Duration::days(i64::from(u16::from_le_bytes([head[1], head[2]])) % 1_500);
    let to = from + Duration::hours(1 + i64::from(head[3]) * 6);
    let text = String::from_utf8_lossy(feed);
    let Ok(cal) = ical::parse_with_limits(&text, floating, LIMITS) else {
        return;
    };
    assert!(
        ical::resolve_tzid(cal.floating.name()).is_some(),
        "floating zone {} does not resolve",
        cal.floating
    );
    let lines = text.split('\n').count();
    for p in &cal.problems {
        if let Some(line) = p.line {
            assert!(
                (1..=lines).contains(&line),
                "problem line {line} of {lines}: {p}"
            );
        }
    }
    let (instances, _) = cal.expand_with_problems(from, to);
    // The feed-wide limit is checked between series; one series may add its own limit more.
    assert!(
        instances.len()
            <= LIMITS.max_instances + LIMITS.max_instances_per_series + cal.series_count(),
        "{} instances",
        instances.len()
    );
    for (i, inst) in instances.iter().enumerate() {
        assert!(
            inst.start_utc <= inst.end_utc,
            "{} ends {} before it starts {}",
            inst.uid,
            inst.end_utc,
            inst.start_utc
        );
        assert!(
            inst.start_utc < to && inst.end_utc > from,
            "{} [{}, {}) is outside [{from}, {to})",
            inst.uid,
            inst.start_utc,
            inst.end_utc
        );
        if let Some(prev) = i.checked_sub(1).map(|p| &instances[p]) {
            assert!(prev.start_utc <= inst.start_utc, "instances out of order");
        }
        let line = inst.to_json_line();
        let value: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert!(value.is_object(), "{line}");
    }
    let (again, _) = cal.expand_with_problems(from, to);
    assert_eq!(again, instances, "expansion is not deterministic");
}
