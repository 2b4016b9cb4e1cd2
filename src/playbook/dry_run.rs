//! `avwarden playbook test`: what the playbook would do for a fault in a room and context,
//! without touching a device — the rule that matches, the class and its deadlines, who is
//! told now and on escalation, and the steps in order.
//!
//! Pure: renders a decision as text; must not run a step or read the clock.

use std::fmt::Write;

use chrono::{DateTime, Utc};

use super::context::{Context, Importance};
use super::roster::Roster;
use super::rules::{evaluate, fill, Decision, Response, Rules, Step};
use super::taxonomy::FaultKind;
use crate::model::Capability;

/// What the dry run is asked about.
pub struct Question<'a> {
    pub fault: FaultKind,
    pub room: &'a str,
    pub device: &'a str,
    pub component: &'a str,
    pub context: Context,
    pub importance: Importance,
    /// What the faulty device can do (rules may be for a capability).
    pub capabilities: &'a [Capability],
}

/// The decision and its text.
pub fn dry_run(
    q: &Question<'_>,
    rules: &Rules,
    roster: &Roster,
    now: DateTime<Utc>,
) -> (Decision, String) {
    let d = evaluate(q.fault, q.capabilities, q.context, q.importance, rules);
    let mut out = String::new();
    let important = match q.importance {
        Importance::Important => "important meeting",
        Importance::Normal => "normal meeting",
    };
    let _ = writeln!(
        out,
        "fault {} on {} in {} ({}, {important})",
        q.fault, q.device, q.room, q.context
    );
    let _ = writeln!(
        out,
        "rule: {}",
        d.rule.map_or(
            "none matches: graded by default, no steps".to_owned(),
            |i| format!("rules[{i}]")
        )
    );
    let respond = match d.deadlines.response {
        Response::SameDay => "the same day".to_owned(),
        Response::Within(w) => format!("within {} min", w.num_minutes()),
    };
    let _ = writeln!(
        out,
        "class: {} (acknowledge {respond}, by {}; resolve by {})",
        d.class.as_str(),
        d.deadlines
            .respond_by(now, roster.tz)
            .with_timezone(&roster.tz)
            .format("%Y-%m-%d %H:%M %Z"),
        d.deadlines
            .resolve_by(now)
            .with_timezone(&roster.tz)
            .format("%Y-%m-%d %H:%M %Z"),
    );
    let told = roster.recipients(&d.recipients, 0, now);
    let _ = writeln!(
        out,
        "notify now: {}",
        if told.is_empty() {
            "nobody (no one on duty, no out-of-hours contact)".to_owned()
        } else {
            told.join(", ")
        }
    );
    if !roster.escalation.is_empty() {
        let _ = writeln!(
            out,
            "if not acknowledged: {}",
            roster.escalation.join(", then ")
        );
    }
    if d.steps.is_empty() {
        let _ = writeln!(out, "steps: none");
    } else {
        let _ = writeln!(out, "steps:");
    }
    for (i, s) in d.steps.iter().enumerate() {
        let line = match s {
            Step::Auto {
                action,
                timeout,
                on_success,
                on_failure,
            } => format!(
                "{} (check within {} s; worked: {}, failed: {})",
                action.name(),
                timeout.num_seconds(),
                next_word(*on_success),
                next_word(*on_failure)
            ),
            Step::Human { text } => format!("ask: {}", fill(text, q.room, q.device, q.component)),
        };
        let _ = writeln!(out, "  {}. {line}", i + 1);
    }
    (d, out)
}

fn next_word(n: super::rules::Next) -> &'static str {
    match n {
        super::rules::Next::Continue => "next step",
        super::rules::Next::Stop => "stop",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn a_flat_battery_in_a_meeting_with_the_shipped_rules() {
        let tz: chrono_tz::Tz = "Asia/Shanghai".parse().unwrap();
        let mut roster = Roster::of_plan(tz);
        roster.escalation = vec!["wang".into()];
        let rules = Rules::embedded().unwrap();
        // Tuesday 10:00 in Shanghai.
        let now = Utc.with_ymd_and_hms(2026, 11, 3, 2, 0, 0).unwrap();
        let q = Question {
            fault: FaultKind::BatteryCritical,
            room: "r101",
            device: "r101-mics",
            component: "channel 2",
            context: Context::InMeeting,
            importance: Importance::Normal,
            capabilities: &[Capability::Battery],
        };
        let (d, text) = dry_run(&q, &rules, &roster, now);
        assert_eq!(d.rule, Some(0));
        assert_eq!(
            text,
            "fault battery_critical on r101-mics in r101 (in_meeting, normal meeting)\n\
             rule: rules[0]\n\
             class: major (acknowledge within 5 min, by 2026-11-03 10:05 CST; resolve by 2026-11-05 10:00 CST)\n\
             notify now: technician, project_manager\n\
             if not acknowledged: wang\n\
             steps:\n  \
             1. move_to_backup_channel (check within 20 s; worked: next step, failed: next step)\n  \
             2. ask: bring two AA batteries to r101 (r101-mics, channel 2)\n"
        );
        // The same battery in an empty room: general, only the human step of the next rule.
        let idle = Question {
            context: Context::Idle,
            ..q
        };
        let (d, _) = dry_run(&idle, &rules, &roster, now);
        assert_eq!((d.class.as_str(), d.steps.len()), ("general", 1));
    }
}
