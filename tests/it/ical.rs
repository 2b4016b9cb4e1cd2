//! iCalendar feeds through `avwarden bookings expand`: golden tables of UTC instants for
//! feeds shaped like Exchange and Google exports, exit codes, and a cross-check against an
//! independent implementation (icalendar + recurring-ical-events, PyPI).
//!
//! How the tricky instants in `tests/data/ical/*.expected.jsonl` were worked out by hand
//! (CET = UTC+1, CEST = UTC+2, EST = UTC−5, EDT = UTC−4, China Standard Time = UTC+8):
//!
//! - exchange.ics, "Weekly sales review" (TZID "W. Europe Standard Time" → Europe/Berlin by
//!   CLDR): Mondays 09:00 from 16 March 2026, COUNT=4. 16 Mar 09:00 CET = 08:00Z; 23 Mar is
//!   EXDATE'd but still counts; 30 Mar is overridden by the VEVENT listed *before* its master
//!   (14:00 CEST = 12:00Z, RECURRENCE-ID 09:00 CEST = 07:00Z); 6 Apr 09:00 CEST = 07:00Z is
//!   the fourth and last.
//! - "Projector firmware window", daily 02:30–03:00 Berlin from 28 March, COUNT=3. On 29
//!   March 02:00–03:00 does not exist: §3.3.5 reads 02:30 with the offset before the gap
//!   (+01:00) → 01:30Z (03:30 CEST); the instance lasts the master's exact 30 min → 02:00Z.
//!   28 Mar 02:30 CET = 01:30Z; 30 Mar 02:30 CEST = 00:30Z.
//! - "Late audit", 25 October 02:30–03:30 Berlin: 02:30 occurs twice; §3.3.5 takes the first
//!   (CEST) → 00:30Z; 03:30 CET → 02:30Z.
//! - "Board call Shanghai" 10:00 China Standard Time → 02:00Z each day; PRIORITY:1 →
//!   important.
//! - "Overnight render check", daily 02:30 Eastern from 7 March: 7 Mar EST → 07:30Z; 8 March
//!   02:30 does not exist → offset before the gap (−05:00) → 07:30Z; 9 Mar EDT → 06:30Z.
//! - "Night shift handover", weekly 01:30–02:00 Eastern from 25 October, COUNT=2: 25 Oct EDT
//!   → 05:30Z–06:00Z; 1 November 01:30 occurs twice → the first (EDT) → 05:30Z, and the
//!   exact 30 min → 06:00Z (01:00 EST, not 02:00 EST).
//! - google.ics: X-WR-TIMEZONE Europe/Berlin. "Stand-up" Mon/Wed 10:00 Berlin, UNTIL
//!   2026-10-28T09:00:00Z, which is exactly 28 Oct 10:00 CET: UNTIL is inclusive, so it is
//!   the last; 19/21 Oct CEST → 08:00Z, 26/28 Oct CET → 09:00Z; the 21 Oct occurrence is a
//!   CANCELLED override and is listed as such. The floating 15:00 is read in X-WR-TIMEZONE
//!   (CEST) → 13:00Z. The all-day 23 Oct runs from midnight to midnight Berlin → 22 Oct
//!   22:00Z – 23 Oct 22:00Z. RDATEs 27 Oct 09:00 CET → 08:00Z and 29 Oct 16:00 CET → 15:00Z.
//! - floating.ics with `--floating-tz America/New_York`: floating 09:00 is 14:00Z on 7 March
//!   (EST) and 13:00Z from 8 March (EDT); the all-day 8 March lasts 23 h (05:00Z – 04:00Z);
//!   the weekly all-day series skips its EXDATE'd 9 March.
//! - outlook_custom_tz.ics: TZID "Customized Time Zone" is no IANA or Windows name, so its
//!   VTIMEZONE is the zone: +01:00/+02:00 switching on the 2nd Sunday of March and the 1st
//!   of November at 02:00 (US dates, European offsets; no IANA zone does this). Daily 09:00
//!   from 7 March: 08:00Z, then 07:00Z from 8 March. 8 March 02:30 is in the gap → offset
//!   before (+01:00) → 01:30Z; its DTEND 03:30 (+02:00) is also 01:30Z, so it lasts 0 s.
//!   1 November 01:30 occurs twice → first (+02:00) → 31 Oct 23:30Z; 02:30 (+01:00) → 01:30Z.
//! - dirty.ics keeps its good series beside one of each broken kind (see the warnings test).

use std::path::PathBuf;
use std::process::{Command, Output};

fn ical(file: &str) -> PathBuf {
    PathBuf::from(crate::support::data(&format!("ical/{file}")))
}

fn expand(file: &str, from: &str, to: &str, floating: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_avwarden"));
    cmd.args(["bookings", "expand"])
        .arg(ical(file))
        .args(["--from", from, "--to", to]);
    if let Some(z) = floating {
        cmd.args(["--floating-tz", z]);
    }
    cmd.output().expect("run avwarden")
}

/// (fixture, from, to, floating zone)
const CASES: &[(&str, &str, &str, Option<&str>)] = &[
    (
        "exchange",
        "2026-01-01T00:00:00Z",
        "2027-01-01T00:00:00Z",
        None,
    ),
    (
        "google",
        "2026-10-19T00:00:00Z",
        "2026-11-01T00:00:00Z",
        None,
    ),
    (
        "floating",
        "2026-03-01T00:00:00Z",
        "2026-04-01T00:00:00Z",
        Some("America/New_York"),
    ),
    (
        "outlook_custom_tz",
        "2026-01-01T00:00:00Z",
        "2027-01-01T00:00:00Z",
        None,
    ),
    (
        "dirty",
        "2026-06-01T00:00:00Z",
        "2026-07-01T00:00:00Z",
        None,
    ),
];

#[test]
fn expand_prints_the_hand_checked_instants() {
    let mut failures = Vec::new();
    for (name, from, to, floating) in CASES {
        let out = expand(&format!("{name}.ics"), from, to, *floating);
        assert_eq!(out.status.code(), Some(0), "{name}: {out:?}");
        let got = String::from_utf8(out.stdout).unwrap();
        let expected = std::fs::read_to_string(ical(&format!("{name}.expected.jsonl"))).unwrap();
        if got != expected {
            failures.push(format!("{name}\n--- expected\n{expected}--- got\n{got}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_window_takes_instances_that_overlap_it() {
    // The sales review of 16 March runs 08:00Z–09:00Z: a window ending at its start or
    // starting at its end does not hold it; one minute of overlap does.
    let count = |from, to| {
        let out = expand("exchange.ics", from, to, None);
        String::from_utf8(out.stdout).unwrap().lines().count()
    };
    assert_eq!(count("2026-03-16T07:00:00Z", "2026-03-16T08:00:00Z"), 0);
    assert_eq!(count("2026-03-16T09:00:00Z", "2026-03-16T10:00:00Z"), 0);
    assert_eq!(count("2026-03-16T08:59:00Z", "2026-03-16T10:00:00Z"), 1);
}

#[test]
fn a_broken_series_is_reported_and_the_rest_kept() {
    let out = expand(
        "dirty.ics",
        "2026-06-01T00:00:00Z",
        "2026-07-01T00:00:00Z",
        None,
    );
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8(out.stderr).unwrap();
    for needle in [
        "stray line",
        "UID bad-rrule: skipped: unparsable RRULE",
        "UID bad-end: skipped: DTEND is before DTSTART",
        "UID bad-until: skipped: RRULE UNTIL is before DTSTART",
        "UID two-rules: repaired: more than one RRULE",
        "UID dup: repaired: UID used by more than one event",
    ] {
        assert!(stderr.contains(needle), "no {needle:?} in:\n{stderr}");
    }
    let stdout = String::from_utf8(out.stdout).unwrap();
    for uid in ["good-single", "good-weekly", "dup", "two-rules"] {
        assert!(stdout.contains(&format!("\"uid\":\"{uid}\"")), "{uid} lost");
    }
    for uid in ["bad-rrule", "bad-end", "bad-until"] {
        assert!(
            !stdout.contains(&format!("\"uid\":\"{uid}\"")),
            "{uid} kept"
        );
    }
}

#[test]
fn exit_3_when_not_a_calendar_and_2_for_bad_arguments() {
    let out = expand(
        "not_a_calendar.ics",
        "2026-06-01T00:00:00Z",
        "2026-07-01T00:00:00Z",
        None,
    );
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an iCalendar file"));
    let bad_time = expand("dirty.ics", "yesterday", "2026-07-01T00:00:00Z", None);
    assert_eq!(bad_time.status.code(), Some(2));
    let bad_zone = expand(
        "dirty.ics",
        "2026-06-01T00:00:00Z",
        "2026-07-01T00:00:00Z",
        Some("Mars/Olympus"),
    );
    assert_eq!(bad_zone.status.code(), Some(2));
    let backwards = expand(
        "dirty.ics",
        "2026-07-01T00:00:00Z",
        "2026-06-01T00:00:00Z",
        None,
    );
    assert_eq!(backwards.status.code(), Some(2));
}

/// The same fixtures expanded by icalendar + recurring-ical-events give the same instances.
/// Where that library is known to differ from RFC 5545 (a start in a DST gap; an end across
/// an offset change, which Python adds in wall-clock time), `expand_peer.py` says so and the
/// RFC reading of the library's own wall time is compared instead, or the end is left out.
#[test]
fn instances_match_an_independent_implementation() {
    let Some(python) = crate::support::python() else {
        return;
    };
    for (name, from, to, floating) in CASES.iter().filter(|c| c.0 != "dirty") {
        let ours: Vec<serde_json::Value> =
            String::from_utf8(expand(&format!("{name}.ics"), from, to, *floating).stdout)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
        let peer = Command::new(&python)
            .arg(ical("expand_peer.py"))
            .arg(ical(&format!("{name}.ics")))
            .args([from, to, floating.unwrap_or("UTC")])
            .output()
            .expect("run python");
        assert!(
            peer.status.success(),
            "{name}: peer failed: {}",
            String::from_utf8_lossy(&peer.stderr)
        );
        let theirs: Vec<serde_json::Value> = String::from_utf8(peer.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let key = |v: &serde_json::Value, start: &str| {
            format!(
                "{} {} all_day={} status={}",
                v["uid"].as_str().unwrap(),
                start,
                v["all_day"],
                v["status"]
            )
        };
        let mut ours_keys: Vec<String> = ours
            .iter()
            .map(|v| key(v, v["start_utc"].as_str().unwrap()))
            .collect();
        let mut their_keys: Vec<String> = theirs
            .iter()
            .map(|v| {
                let start = v["rfc_start_utc"]
                    .as_str()
                    .or(v["start_utc"].as_str())
                    .unwrap();
                key(v, start)
            })
            .collect();
        ours_keys.sort();
        their_keys.sort();
        assert_eq!(ours_keys, their_keys, "{name}: instance sets differ");
        for t in theirs.iter().filter(|t| t["end_exact"] == true) {
            let o = ours
                .iter()
                .find(|o| o["uid"] == t["uid"] && o["start_utc"] == t["start_utc"])
                .unwrap_or_else(|| panic!("{name}: no instance for {t}"));
            assert_eq!(o["end_utc"], t["end_utc"], "{name}: end of {t}");
        }
    }
}
