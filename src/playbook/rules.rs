//! The playbook's rules as data: the `[classes]` and `[[rules]]` sections of the playbook file
//! (`config/playbook.toml`, embedded; a site may point at its own, whose rules replace the
//! shipped ones), validated with every problem located, and the evaluator that turns a fault
//! in its context into a [`Decision`]: class, deadlines, steps and recipients.
//!
//! Owns the rule format and the grading. Pure: must not run a step or read the clock; the
//! playbook task carries out what a decision says.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use toml_edit::ImDocument;

use super::context::{Context, Importance};
use super::taxonomy::FaultKind;
use crate::config::locate::{locate, Seg};
use crate::config::ConfigProblem;
use crate::model::plan::FaultClass;
use crate::model::Capability;

/// The shipped playbook (shared with the self-test's remedy texts).
pub const EMBEDDED: &str = crate::schedule::remedies::EMBEDDED;
const EMBEDDED_NAME: &str = "config/playbook.toml";

/// When handling of a class must have started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// By the end of the local day it was raised on (the plan's "same day" for major).
    SameDay,
    Within(#[serde(with = "secs")] Duration),
}

mod secs {
    pub fn serialize<S: serde::Serializer>(d: &chrono::Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(d.num_seconds())
    }
}

/// A class's deadlines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Deadlines {
    pub response: Response,
    #[serde(with = "secs")]
    pub resolution: Duration,
}

impl Deadlines {
    /// The plan's deadlines (domain.md, "Fault and complaint handling").
    pub fn of_plan(class: FaultClass) -> Deadlines {
        match class {
            FaultClass::Major => Deadlines {
                response: Response::SameDay,
                resolution: Duration::days(2),
            },
            FaultClass::Important => Deadlines {
                response: Response::Within(Duration::hours(1)),
                resolution: Duration::days(3),
            },
            FaultClass::General => Deadlines {
                response: Response::Within(Duration::minutes(10)),
                resolution: Duration::days(2),
            },
        }
    }

    /// The instant handling must have started for a fault raised at `raised`.
    pub fn respond_by(&self, raised: DateTime<Utc>, tz: Tz) -> DateTime<Utc> {
        match self.response {
            Response::SameDay => FaultClass::Major.response_deadline(raised, tz),
            Response::Within(d) => raised + d,
        }
    }

    pub fn resolve_by(&self, raised: DateTime<Utc>) -> DateTime<Utc> {
        raised + self.resolution
    }
}

/// What an automatic step does, through the device's handle.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Read the device's state again now.
    Repoll,
    /// Drop the device's session and open a new one at once, without waiting for the backoff.
    Reconnect,
    /// Off, wait out the cool-down, on, wait out the warm-up.
    PowerCycle,
    SwitchInput {
        input: String,
    },
    /// Unmute the faulty channel or zone.
    Unmute,
    /// Move the faulty channel's presenter to its configured backup channel (site config
    /// `[playbook] backup`): the backup is checked on air with battery for the rest of the
    /// meeting, unmuted, and the faulty channel muted.
    MoveToBackupChannel,
    /// Lower the faulty channel's gain by this many dB.
    LowerGain {
        db: f64,
    },
    ChangeSetpoint {
        celsius: f64,
    },
}

impl Action {
    pub const NAMES: &'static [&'static str] = &[
        "repoll",
        "reconnect",
        "power_cycle",
        "switch_input",
        "unmute",
        "move_to_backup_channel",
        "lower_gain",
        "change_setpoint",
    ];

    pub fn name(&self) -> &'static str {
        match self {
            Action::Repoll => "repoll",
            Action::Reconnect => "reconnect",
            Action::PowerCycle => "power_cycle",
            Action::SwitchInput { .. } => "switch_input",
            Action::Unmute => "unmute",
            Action::MoveToBackupChannel => "move_to_backup_channel",
            Action::LowerGain { .. } => "lower_gain",
            Action::ChangeSetpoint { .. } => "change_setpoint",
        }
    }
}

/// What follows a step's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Next {
    /// Run the next step.
    Continue,
    /// Run no more steps: wait for the fault to clear (or a person).
    Stop,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Step {
    Auto {
        #[serde(flatten)]
        action: Action,
        #[serde(with = "secs")]
        timeout: Duration,
        on_success: Next,
        on_failure: Next,
    },
    /// A text for the person on duty; placeholders `{room}`, `{device}`, `{component}`.
    Human { text: String },
}

/// One rule: which faults, where, and what to do.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub faults: Vec<FaultKind>,
    /// Empty: every context.
    pub contexts: Vec<Context>,
    /// The device must have it (rules for a kind of equipment).
    pub capability: Option<Capability>,
    /// Only for (`Some(true)`) or never for (`Some(false)`) important meetings.
    pub important: Option<bool>,
    pub class: Option<FaultClass>,
    pub respond_within: Option<Duration>,
    pub notify: Vec<String>,
    pub steps: Vec<Step>,
}

impl Rule {
    fn matches(
        &self,
        fault: FaultKind,
        caps: &[Capability],
        context: Context,
        importance: Importance,
    ) -> bool {
        self.faults.contains(&fault)
            && (self.contexts.is_empty() || self.contexts.contains(&context))
            && self.capability.is_none_or(|c| caps.contains(&c))
            && self
                .important
                .is_none_or(|i| i == (importance == Importance::Important))
    }
}

/// The validated playbook: class deadlines and rules in file order (the first match wins).
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    pub classes: BTreeMap<FaultClass, Deadlines>,
    pub rules: Vec<Rule>,
}

impl Default for Rules {
    /// The plan's deadlines and no rules: every fault is graded by default and gets no steps.
    fn default() -> Self {
        Rules {
            classes: FaultClass::ALL
                .into_iter()
                .map(|c| (c, Deadlines::of_plan(c)))
                .collect(),
            rules: Vec::new(),
        }
    }
}

/// The playbook's answer for one fault.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub class: FaultClass,
    pub deadlines: Deadlines,
    pub steps: Vec<Step>,
    /// Roles or people of the roster to tell (`on_duty`, `project_manager`, a name).
    pub recipients: Vec<String>,
    /// The index of the rule that matched, if any (for the logbook and the dry run).
    pub rule: Option<usize>,
}

/// The default grading: the same fault is major in a meeting, important before one and general
/// in an empty room; a warning (a fault that has not yet taken a function away) is one class
/// lower, and an important meeting one class higher.
pub fn default_class(fault: FaultKind, context: Context, importance: Importance) -> FaultClass {
    let mut rank: i32 = match context {
        Context::InMeeting => 0,
        Context::BeforeMeeting => 1,
        Context::Idle => 2,
    };
    if !fault.disabling() {
        rank += 1;
    }
    if importance == Importance::Important && context != Context::Idle {
        rank -= 1;
    }
    match rank {
        i32::MIN..=0 => FaultClass::Major,
        1 => FaultClass::Important,
        _ => FaultClass::General,
    }
}

/// Who is told of a class when no rule names anyone: the person on duty always, the project
/// manager too for a major fault (domain.md: urgent ones bring the project manager on site).
pub fn default_recipients(class: FaultClass) -> Vec<String> {
    match class {
        FaultClass::Major => vec!["on_duty".into(), "project_manager".into()],
        _ => vec!["on_duty".into()],
    }
}

/// Decide what a fault means here and now. Pure.
pub fn evaluate(
    fault: FaultKind,
    caps: &[Capability],
    context: Context,
    importance: Importance,
    rules: &Rules,
) -> Decision {
    let found = rules
        .rules
        .iter()
        .enumerate()
        .find(|(_, r)| r.matches(fault, caps, context, importance));
    let class = found
        .and_then(|(_, r)| r.class)
        .unwrap_or_else(|| default_class(fault, context, importance));
    let mut deadlines = rules
        .classes
        .get(&class)
        .copied()
        .unwrap_or_else(|| Deadlines::of_plan(class));
    if let Some(d) = found.and_then(|(_, r)| r.respond_within) {
        deadlines.response = Response::Within(d);
    }
    let recipients = found
        .map(|(_, r)| r.notify.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| default_recipients(class));
    Decision {
        class,
        deadlines,
        steps: found.map(|(_, r)| r.steps.clone()).unwrap_or_default(),
        recipients,
        rule: found.map(|(i, _)| i),
    }
}

// ----- the file format -------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    #[allow(dead_code)]
    remedies: Option<toml::Table>,
    #[serde(default)]
    classes: BTreeMap<String, RawClass>,
    #[serde(default)]
    rules: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClass {
    /// Minutes, or the string `same_day`.
    response: Option<toml::Value>,
    resolution_hours: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    fault: OneOrMany,
    #[serde(default)]
    context: Option<OneOrMany>,
    capability: Option<String>,
    important: Option<bool>,
    class: Option<String>,
    respond_within_mins: Option<i64>,
    #[serde(default)]
    notify: Vec<String>,
    #[serde(default)]
    steps: Vec<RawStep>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn items(&self) -> Vec<&str> {
        match self {
            OneOrMany::One(s) => vec![s.as_str()],
            OneOrMany::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    action: Option<String>,
    human: Option<String>,
    timeout_secs: Option<u32>,
    input: Option<String>,
    db: Option<f64>,
    celsius: Option<f64>,
    on_success: Option<Next>,
    on_failure: Option<Next>,
}

/// An automatic step that names no timeout gets this long to show it worked.
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::seconds(30);

impl Rules {
    /// The shipped rules.
    pub fn embedded() -> Result<Rules, Vec<ConfigProblem>> {
        Self::parse(EMBEDDED, EMBEDDED_NAME)
    }

    /// A site's playbook file: its rules when it has any, else the shipped ones; its class
    /// deadlines over the shipped ones.
    pub fn parse_over_embedded(text: &str, file: &str) -> Result<Rules, Vec<ConfigProblem>> {
        let own = Self::parse(text, file)?;
        let mut all = Self::embedded()?;
        all.classes.extend(own.classes);
        if !own.rules.is_empty() {
            all.rules = own.rules;
        }
        Ok(all)
    }

    /// Parse and validate the `[classes]` and `[[rules]]` sections, reporting every problem.
    pub fn parse(text: &str, file: &str) -> Result<Rules, Vec<ConfigProblem>> {
        let at = |offset: Option<usize>| offset.map(|o| crate::profile::line_col_pair(text, o));
        let doc = match ImDocument::parse(text.to_owned()) {
            Ok(d) => d,
            Err(e) => {
                return Err(vec![ConfigProblem {
                    file: file.to_owned(),
                    at: at(e.span().map(|s| s.start)),
                    path: String::new(),
                    message: crate::config::first_line(e.message()),
                }])
            }
        };
        let raw: RawFile = match toml::from_str(text) {
            Ok(r) => r,
            Err(e) => {
                let offset = e.span().map(|s| s.start);
                let path = offset
                    .map(|o| {
                        crate::config::locate::render(&crate::config::locate::path_at(&doc, o))
                    })
                    .unwrap_or_default();
                return Err(vec![ConfigProblem {
                    file: file.to_owned(),
                    at: at(offset),
                    path,
                    message: crate::config::first_line(e.message()),
                }]);
            }
        };
        let mut problems = Vec::new();
        let mut problem = |path: Vec<Seg>, message: String| {
            problems.push(ConfigProblem {
                file: file.to_owned(),
                at: at(locate(&doc, &path).map(|r| r.start)),
                path: crate::config::locate::render(&path),
                message,
            })
        };
        let key = |k: &str| Seg::Key(k.to_owned());

        let mut rules = Rules::default();
        for (name, c) in &raw.classes {
            let base = vec![key("classes"), key(name)];
            let Some(class) = FaultClass::parse(name) else {
                problem(base, "unknown class (major, important or general)".into());
                continue;
            };
            let mut d = Deadlines::of_plan(class);
            match &c.response {
                None => {}
                Some(toml::Value::String(s)) if s == "same_day" => d.response = Response::SameDay,
                Some(toml::Value::Integer(m)) if *m > 0 => {
                    d.response = Response::Within(Duration::minutes(*m))
                }
                Some(_) => problem(
                    [base.clone(), vec![key("response")]].concat(),
                    "expected minutes (a positive integer) or \"same_day\"".into(),
                ),
            }
            match c.resolution_hours {
                None => {}
                Some(h) if h > 0 => d.resolution = Duration::hours(h),
                Some(_) => problem(
                    [base, vec![key("resolution_hours")]].concat(),
                    "must be positive".into(),
                ),
            }
            rules.classes.insert(class, d);
        }

        for (i, r) in raw.rules.iter().enumerate() {
            let base = vec![key("rules"), Seg::Index(i)];
            let at_key = |k: &str| [base.clone(), vec![key(k)]].concat();
            let mut faults = Vec::new();
            for f in r.fault.items() {
                match FaultKind::parse(f) {
                    Some(k) => faults.push(k),
                    None => problem(
                        at_key("fault"),
                        format!(
                            "unknown fault \"{f}\"{}",
                            hint(f, FaultKind::ALL.iter().map(|k| k.as_str()))
                        ),
                    ),
                }
            }
            if faults.is_empty() && r.fault.items().is_empty() {
                problem(at_key("fault"), "names no fault".into());
            }
            let mut contexts = Vec::new();
            for c in r.context.as_ref().map(|c| c.items()).unwrap_or_default() {
                match Context::parse(c) {
                    Some(c) => contexts.push(c),
                    None => problem(
                        at_key("context"),
                        format!(
                            "unknown context \"{c}\"{}",
                            hint(c, Context::ALL.iter().map(|c| c.as_str()))
                        ),
                    ),
                }
            }
            let capability = r.capability.as_deref().and_then(|c| {
                let found = Capability::ALL.iter().copied().find(|k| k.as_str() == c);
                if found.is_none() {
                    problem(
                        at_key("capability"),
                        format!(
                            "unknown capability \"{c}\"{}",
                            hint(c, Capability::ALL.iter().map(|k| k.as_str()))
                        ),
                    );
                }
                found
            });
            let class = r.class.as_deref().and_then(|c| {
                let found = FaultClass::parse(c);
                if found.is_none() {
                    problem(
                        at_key("class"),
                        format!("unknown class \"{c}\" (major, important or general)"),
                    );
                }
                found
            });
            let respond_within = match r.respond_within_mins {
                Some(m) if m > 0 => Some(Duration::minutes(m)),
                Some(_) => {
                    problem(at_key("respond_within_mins"), "must be positive".into());
                    None
                }
                None => None,
            };
            let mut steps = Vec::new();
            for (j, s) in r.steps.iter().enumerate() {
                let path = [base.clone(), vec![key("steps"), Seg::Index(j)]].concat();
                match step(s) {
                    Ok(st) => steps.push(st),
                    Err(m) => problem(path, m),
                }
            }
            rules.rules.push(Rule {
                faults,
                contexts,
                capability,
                important: r.important,
                class,
                respond_within,
                notify: r.notify.clone(),
                steps,
            });
        }
        if problems.is_empty() {
            Ok(rules)
        } else {
            Err(problems)
        }
    }
}

fn hint<'c>(given: &str, candidates: impl IntoIterator<Item = &'c str>) -> String {
    crate::config::suggest(given, candidates)
        .map(|c| format!(" (did you mean \"{c}\"?)"))
        .unwrap_or_default()
}

fn step(s: &RawStep) -> Result<Step, String> {
    match (&s.action, &s.human) {
        (Some(_), Some(_)) => Err("a step is either `action` or `human`, not both".into()),
        (None, None) => Err("a step needs `action = \"…\"` or `human = \"…\"`".into()),
        (None, Some(text)) => {
            if s.timeout_secs.is_some() || s.on_success.is_some() || s.on_failure.is_some() {
                return Err("a human step takes only its text".into());
            }
            Ok(Step::Human { text: text.clone() })
        }
        (Some(name), None) => {
            let need = |v: Option<f64>, what: &str| {
                v.filter(|x| x.is_finite())
                    .ok_or_else(|| format!("action {name} needs `{what}` (a number)"))
            };
            let action = match name.as_str() {
                "repoll" => Action::Repoll,
                "reconnect" => Action::Reconnect,
                "power_cycle" => Action::PowerCycle,
                "unmute" => Action::Unmute,
                "move_to_backup_channel" => Action::MoveToBackupChannel,
                "switch_input" => Action::SwitchInput {
                    input: s
                        .input
                        .clone()
                        .ok_or_else(|| "action switch_input needs `input`".to_owned())?,
                },
                "lower_gain" => {
                    let db = need(s.db, "db")?;
                    if db <= 0.0 {
                        return Err("lower_gain needs a positive `db`".into());
                    }
                    Action::LowerGain { db }
                }
                "change_setpoint" => Action::ChangeSetpoint {
                    celsius: need(s.celsius, "celsius")?,
                },
                other => {
                    return Err(format!(
                        "unknown action \"{other}\"{}",
                        hint(other, Action::NAMES.iter().copied())
                    ))
                }
            };
            let timeout = match s.timeout_secs {
                Some(0) => return Err("timeout_secs must be positive".into()),
                Some(t) => Duration::seconds(i64::from(t)),
                None => DEFAULT_STEP_TIMEOUT,
            };
            Ok(Step::Auto {
                action,
                timeout,
                on_success: s.on_success.unwrap_or(Next::Stop),
                on_failure: s.on_failure.unwrap_or(Next::Continue),
            })
        }
    }
}

/// Fill a human step's placeholders.
pub fn fill(text: &str, room: &str, device: &str, component: &str) -> String {
    text.replace("{room}", room)
        .replace("{device}", device)
        .replace("{component}", component)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Context::*;
    use FaultClass::*;
    use Importance::Normal;
    const VIP: Importance = Importance::Important;

    #[test]
    fn default_grading_table() {
        let table = [
            // The brief's example: the same flat battery in three rooms.
            (FaultKind::BatteryCritical, InMeeting, Normal, Major),
            (FaultKind::BatteryCritical, BeforeMeeting, Normal, Important),
            (FaultKind::BatteryCritical, Idle, Normal, General),
            // Warnings start a class lower.
            (FaultKind::BatteryLow, InMeeting, Normal, Important),
            (FaultKind::LampNearEnd, BeforeMeeting, Normal, General),
            (FaultKind::LampNearEnd, Idle, Normal, General),
            // An important meeting raises a class, never above major, and not when idle.
            (FaultKind::Unreachable, BeforeMeeting, VIP, Major),
            (FaultKind::Unreachable, InMeeting, VIP, Major),
            (FaultKind::BatteryLow, BeforeMeeting, VIP, Important),
            (FaultKind::Unreachable, Idle, VIP, General),
        ];
        for (f, c, i, want) in table {
            assert_eq!(default_class(f, c, i), want, "{f} {c} {i:?}");
        }
    }

    #[test]
    fn the_shipped_playbook_is_valid() {
        let r = Rules::embedded().expect("embedded playbook");
        assert!(!r.rules.is_empty());
    }

    const SITE: &str = r#"
[classes.general]
response = 15

[[rules]]
fault = ["battery_critical", "battery_will_not_last"]
context = "in_meeting"
capability = "battery"
class = "major"
respond_within_mins = 5
notify = ["on_duty"]
steps = [
  { action = "move_to_backup_channel", timeout_secs = 20 },
  { human = "bring two AA batteries to {room}" },
]

[[rules]]
fault = "battery_critical"
important = true
class = "major"

[[rules]]
fault = "battery_critical"
steps = [{ human = "change the batteries of {device} before the next meeting" }]
"#;

    #[test]
    fn evaluator_table() {
        let rules = Rules::parse(SITE, "site.toml").expect("valid");
        const MIC: &[Capability] = &[Capability::Battery, Capability::TxPresent];
        struct Case {
            fault: FaultKind,
            caps: &'static [Capability],
            ctx: Context,
            imp: Importance,
            class: FaultClass,
            rule: Option<usize>,
            steps: usize,
            recipients: &'static [&'static str],
        }
        let cases = [
            Case {
                fault: FaultKind::BatteryCritical,
                caps: MIC,
                ctx: InMeeting,
                imp: Normal,
                class: Major,
                rule: Some(0),
                steps: 2,
                recipients: &["on_duty"],
            },
            // Without the capability the first rule does not apply; the third does.
            Case {
                fault: FaultKind::BatteryCritical,
                caps: &[],
                ctx: InMeeting,
                imp: Normal,
                class: Major,
                rule: Some(2),
                steps: 1,
                recipients: &["on_duty", "project_manager"],
            },
            Case {
                fault: FaultKind::BatteryCritical,
                caps: MIC,
                ctx: BeforeMeeting,
                imp: VIP,
                class: Major,
                rule: Some(1),
                steps: 0,
                recipients: &["on_duty", "project_manager"],
            },
            Case {
                fault: FaultKind::BatteryCritical,
                caps: MIC,
                ctx: Idle,
                imp: Normal,
                class: General,
                rule: Some(2),
                steps: 1,
                recipients: &["on_duty"],
            },
            Case {
                fault: FaultKind::ProjectorLamp,
                caps: &[],
                ctx: BeforeMeeting,
                imp: Normal,
                class: Important,
                rule: None,
                steps: 0,
                recipients: &["on_duty"],
            },
        ];
        for c in cases {
            let d = evaluate(c.fault, c.caps, c.ctx, c.imp, &rules);
            let what = format!("{} {} {:?}", c.fault, c.ctx, c.imp);
            assert_eq!(d.class, c.class, "{what}");
            assert_eq!(d.rule, c.rule, "{what}");
            assert_eq!(d.steps.len(), c.steps, "{what}");
            assert_eq!(d.recipients, c.recipients, "{what}");
        }
        let d = evaluate(FaultKind::BatteryCritical, MIC, InMeeting, Normal, &rules);
        assert_eq!(d.deadlines.response, Response::Within(Duration::minutes(5)));
        assert_eq!(
            d.steps[0],
            Step::Auto {
                action: Action::MoveToBackupChannel,
                timeout: Duration::seconds(20),
                on_success: Next::Stop,
                on_failure: Next::Continue
            }
        );
        let g = evaluate(FaultKind::LampNearEnd, &[], Idle, Normal, &rules);
        assert_eq!(
            g.deadlines.response,
            Response::Within(Duration::minutes(15))
        );
    }

    #[test]
    fn every_problem_is_located() {
        let bad = r#"
[classes.urgent]
response = 5

[[rules]]
fault = "battery_critcal"
context = "in_meting"
capability = "batery"
class = "huge"
steps = [
  { action = "power_cycel" },
  { human = "x", timeout_secs = 3 },
  { action = "lower_gain" },
]
"#;
        let problems = Rules::parse(bad, "pb.toml").unwrap_err();
        let paths: Vec<_> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "classes.urgent",
                "rules[0].fault",
                "rules[0].context",
                "rules[0].capability",
                "rules[0].class",
                "rules[0].steps[0]",
                "rules[0].steps[1]",
                "rules[0].steps[2]",
            ]
        );
        assert!(problems.iter().all(|p| p.at.is_some()), "{problems:?}");
        assert!(problems[1]
            .message
            .contains("did you mean \"battery_critical\""));
        assert!(problems[5].message.contains("did you mean \"power_cycle\""));
        let unknown_key =
            Rules::parse("[[rules]]\nfault = \"tx_absent\"\nwhen = 1\n", "pb.toml").unwrap_err();
        assert_eq!(unknown_key[0].at.map(|a| a.0), Some(3), "{unknown_key:?}");
    }

    #[test]
    fn a_site_file_replaces_rules_and_keeps_shipped_deadlines() {
        let r = Rules::parse_over_embedded(SITE, "site.toml").expect("valid");
        assert_eq!(r.rules.len(), 3);
        assert_eq!(
            r.classes[&General].response,
            Response::Within(Duration::minutes(15))
        );
        assert_eq!(r.classes[&Major], Deadlines::of_plan(Major));
    }

    /// Found by the `playbook_parse` fuzz target: a control character in a comment made toml
    /// report a message whose first line is empty, so the problem said nothing.
    #[test]
    fn control_character_in_a_comment_is_a_problem_with_a_message() {
        let problems = Rules::parse("# hours {\u{0}ours}\n", "pb.toml").unwrap_err();
        assert_eq!(problems.len(), 1);
        assert!(!problems[0].message.is_empty(), "{problems:?}");
        assert_eq!(problems[0].at.map(|a| a.0), Some(1));
    }
}
