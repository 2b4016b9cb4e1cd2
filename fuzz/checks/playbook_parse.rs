//! The playbook: arbitrary text as `config/playbook.toml` through `playbook::rules::Rules::parse`
//! and `parse_over_embedded`, as the daemon and `check-config` read it.
//!
//! Checks, beyond "no panic": every problem is located inside the text (a line:column that
//! exists) and has a one-line message; a playbook that parses parses again to the same rules,
//! also over the shipped ones; every class has deadlines; each rule decides its own fault (or
//! an earlier rule does, first match wins), with someone to notify and a deadline that exists.

use avwarden::config::ConfigProblem;
use avwarden::playbook::rules::{evaluate, Rules};
use avwarden::playbook::{Context, Importance};

const FILE: &str = "playbook.toml";

/// One input: panics when a check fails.
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let rules = match Rules::parse(text, FILE) {
        Ok(r) => r,
        Err(problems) => {
            assert!(!problems.is_empty(), "refused with no problem");
            for p in &problems {
                check_problem(text, p);
            }
            return;
        }
    };
    let again = Rules::parse(text, FILE).expect("a parsed playbook parses again");
    assert_eq!(again, rules, "parsing is not deterministic");
    let merged = Rules::parse_over_embedded(text, FILE).expect("a valid playbook merges");
    for (class, deadlines) in &rules.classes {
        assert_eq!(
            merged.classes.get(class),
            Some(deadlines),
            "{class:?} lost in the merge"
        );
    }
    if !rules.rules.is_empty() {
        assert_eq!(
            merged.rules, rules.rules,
            "own rules replace the shipped ones"
        );
    }
    for (i, rule) in rules.rules.iter().enumerate() {
        let Some(&fault) = rule.faults.first() else {
            continue;
        };
        let context = rule.contexts.first().copied().unwrap_or(Context::InMeeting);
        let importance = match rule.important {
            Some(true) => Importance::Important,
            _ => Importance::Normal,
        };
        let caps: Vec<_> = rule.capability.into_iter().collect();
        let d = evaluate(fault, &caps, context, importance, &rules);
        let first = d
            .rule
            .unwrap_or_else(|| panic!("rule {i} does not match its own fault"));
        assert!(
            first <= i,
            "rule {first} decided before rule {i} that matches first"
        );
        assert!(!d.recipients.is_empty(), "rule {first} notifies no one");
        if first == i {
            assert_eq!(d.steps, rule.steps);
            if let Some(class) = rule.class {
                assert_eq!(d.class, class);
            }
        }
    }
}

fn check_problem(text: &str, p: &ConfigProblem) {
    assert_eq!(p.file, FILE);
    assert!(!p.message.is_empty(), "problem without a message: {p}");
    assert!(!p.message.contains('\n'), "message over lines: {p}");
    if let Some((line, col)) = p.at {
        let lines: Vec<&str> = text.split('\n').collect();
        assert!(
            (1..=lines.len()).contains(&line),
            "{p}: line {line} of {}",
            lines.len()
        );
        let width = lines[line - 1].chars().count();
        assert!(
            (1..=width + 1).contains(&col),
            "{p}: column {col} of {width}"
        );
    }
}
