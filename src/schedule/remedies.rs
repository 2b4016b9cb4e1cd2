//! Remedy texts as data: the `[remedies]` table of the playbook file (`config/playbook.toml`,
//! embedded; a site may point at its own), from a reason code to a text with placeholders,
//! validated like the site config (every problem at once, each with file, line:column and key
//! path) and filled in for each reason.
//!
//! Owns only the `[remedies]` section; the playbook's other sections belong to the playbook.
//! Must not decide readiness: the checks do.

use std::collections::BTreeMap;

use toml_edit::ImDocument;

use crate::config::ConfigProblem;

/// The shipped playbook.
pub const EMBEDDED: &str = include_str!("../../config/playbook.toml");
const EMBEDDED_NAME: &str = "config/playbook.toml";

/// Placeholders every code may use.
const COMMON: &[&str] = &["device", "room", "need", "point"];

/// Every reason code the self-test produces, with the placeholders its remedy may use besides
/// [`COMMON`].
pub const CODES: &[(&str, &[&str])] = &[
    ("missing_equipment", &[]),
    ("unreachable", &[]),
    ("stale_readings", &[]),
    ("device_fault", &["fault"]),
    ("device_warning", &["fault"]),
    ("lamp_fault", &["fault"]),
    ("fan_fault", &["fault"]),
    ("temperature_fault", &["fault"]),
    ("cover_fault", &["fault"]),
    ("filter_fault", &["fault"]),
    ("power_on_failed", &[]),
    ("lamp_near_end", &["hours"]),
    ("lamp_past_life", &["hours"]),
    ("no_input", &[]),
    ("no_input_signal", &[]),
    ("transmitters_missing", &["count"]),
    ("tx_muted", &["channel"]),
    ("interference", &["channel"]),
    ("encryption_mismatch", &["channel"]),
    ("battery_will_not_last", &["channel", "minutes", "runs_out"]),
    ("battery_unknown", &["channel"]),
    ("preset_failed", &["count"]),
    ("zone_muted", &["zone"]),
    ("level_off_preset", &["zone"]),
    ("meters_dead", &[]),
    ("setpoint_not_confirmed", &["celsius"]),
    ("temperature_outside_comfort", &["celsius"]),
];

fn placeholders_of(code: &str) -> Option<&'static [&'static str]> {
    CODES.iter().find(|(c, _)| *c == code).map(|(_, p)| *p)
}

/// Remedy texts by reason code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remedies {
    texts: BTreeMap<String, String>,
}

impl Remedies {
    /// The shipped texts.
    pub fn embedded() -> Result<Remedies, Vec<ConfigProblem>> {
        Self::parse(EMBEDDED, EMBEDDED_NAME)
    }

    /// A site's playbook file: its texts over the shipped ones (a code it leaves out keeps the
    /// shipped text).
    pub fn parse_over_embedded(text: &str, file: &str) -> Result<Remedies, Vec<ConfigProblem>> {
        let own = Self::parse(text, file)?;
        let mut all = Self::embedded()?;
        all.texts.extend(own.texts);
        Ok(all)
    }

    /// Parse and validate the `[remedies]` table of a playbook file.
    pub fn parse(text: &str, file: &str) -> Result<Remedies, Vec<ConfigProblem>> {
        let problem = |offset: Option<usize>, path: &str, message: String| ConfigProblem {
            file: file.to_owned(),
            at: offset.map(|o| crate::profile::line_col_pair(text, o)),
            path: path.to_owned(),
            message,
        };
        let doc = match ImDocument::parse(text.to_owned()) {
            Ok(d) => d,
            Err(e) => {
                let msg = e.message().lines().next().unwrap_or("").trim().to_owned();
                return Err(vec![problem(e.span().map(|s| s.start), "", msg)]);
            }
        };
        let Some(table) = doc.get("remedies").and_then(|i| i.as_table_like()) else {
            return Err(vec![problem(
                None,
                "remedies",
                "missing table [remedies] (reason code = remedy text)".to_owned(),
            )]);
        };
        let mut problems = Vec::new();
        let mut texts = BTreeMap::new();
        for (code, item) in table.iter() {
            let path = format!("remedies.{code}");
            let key_at = table
                .get_key_value(code)
                .and_then(|(k, _)| k.span())
                .map(|s| s.start);
            let Some(allowed) = placeholders_of(code) else {
                let hint = crate::config::suggest(code, CODES.iter().map(|(c, _)| *c))
                    .map(|c| format!(" (did you mean \"{c}\"?)"))
                    .unwrap_or_default();
                problems.push(problem(key_at, &path, format!("unknown reason code{hint}")));
                continue;
            };
            let Some(value) = item.as_str() else {
                problems.push(problem(
                    key_at,
                    &path,
                    "expected a string (the remedy text)".to_owned(),
                ));
                continue;
            };
            let value_at = item.span().map(|s| s.start).or(key_at);
            match placeholders(value) {
                Err(m) => problems.push(problem(value_at, &path, m)),
                Ok(names) => {
                    for name in names {
                        if !COMMON.contains(&name) && !allowed.contains(&name) {
                            let mut known: Vec<&str> = COMMON.to_vec();
                            known.extend_from_slice(allowed);
                            problems.push(problem(
                                value_at,
                                &path,
                                format!(
                                    "unknown placeholder {{{name}}} (this code knows {})",
                                    known
                                        .iter()
                                        .map(|k| format!("{{{k}}}"))
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                ),
                            ));
                        }
                    }
                    texts.insert(code.to_owned(), value.to_owned());
                }
            }
        }
        if problems.is_empty() {
            Ok(Remedies { texts })
        } else {
            problems.sort_by_key(|p| p.at);
            Err(problems)
        }
    }

    /// The remedy for `code`, its placeholders filled from `vars` (a placeholder without a
    /// value is left out rather than shown in braces).
    pub fn render(&self, code: &str, vars: &BTreeMap<&str, String>) -> Option<String> {
        let text = self.texts.get(code)?;
        let mut out = String::with_capacity(text.len());
        let mut rest = text.as_str();
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            let Some(close) = after.find('}') else {
                out.push_str(&rest[open..]);
                return Some(out);
            };
            if let Some(v) = vars.get(&after[..close]) {
                out.push_str(v);
            }
            rest = &after[close + 1..];
        }
        out.push_str(rest);
        Some(out)
    }

    pub fn has(&self, code: &str) -> bool {
        self.texts.contains_key(code)
    }
}

/// The placeholder names of a text, or why its braces do not parse.
fn placeholders(text: &str) -> Result<Vec<&str>, String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find(['{', '}']) {
        if rest[open..].starts_with('}') {
            return Err("a \"}\" without its \"{\"".to_owned());
        }
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| "a \"{\" without its \"}\"".to_owned())?;
        let name = &after[..close];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            return Err(format!("{{{name}}} is not a placeholder name"));
        }
        names.push(name);
        rest = &after[close + 1..];
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_playbook_has_a_remedy_for_every_code() {
        let r = Remedies::embedded().expect("shipped playbook validates");
        for (code, _) in CODES {
            assert!(r.has(code), "no remedy for {code}");
        }
    }

    #[test]
    fn remedies_are_filled_in() {
        let r = Remedies::embedded().unwrap();
        let vars = BTreeMap::from([
            ("device", "rx-1".to_owned()),
            ("channel", "2".to_owned()),
            ("runs_out", "10:40".to_owned()),
            ("minutes", "0".to_owned()),
        ]);
        assert_eq!(
            r.render("battery_will_not_last", &vars).unwrap(),
            "replace the batteries of mic 2 on rx-1 (runs out at 10:40, 0 min left at the start) — spares in cabinet B"
        );
        assert_eq!(r.render("no_such_code", &vars), None);
    }

    #[test]
    fn every_problem_is_reported_with_its_place() {
        let text = "[remedies]\nunreachable = \"check {device}\"\nunreachabel = \"x\"\ntx_muted = \"unmute {chanel}\"\nzone_muted = 3\nlamp_fault = \"broken {\"\n";
        let problems = Remedies::parse(text, "site-playbook.toml").expect_err("invalid");
        let shown: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(shown.len(), 4, "{shown:#?}");
        assert!(shown[0].starts_with("site-playbook.toml:3:1: remedies.unreachabel: unknown reason code (did you mean \"unreachable\"?)"), "{shown:#?}");
        assert!(
            shown[1].starts_with(
                "site-playbook.toml:4:12: remedies.tx_muted: unknown placeholder {chanel}"
            ),
            "{shown:#?}"
        );
        assert!(
            shown[2].starts_with("site-playbook.toml:5:1: remedies.zone_muted: expected a string"),
            "{shown:#?}"
        );
        assert!(
            shown[3].contains("remedies.lamp_fault: a \"{\" without its \"}\""),
            "{shown:#?}"
        );
        let missing = Remedies::parse("[rules]\n", "p.toml").expect_err("no remedies");
        assert_eq!(missing[0].path, "remedies");
    }

    #[test]
    fn a_sites_playbook_overrides_some_texts_and_keeps_the_rest() {
        let r = Remedies::parse_over_embedded(
            "[remedies]\nunreachable = \"call the front desk about {device}\"\n",
            "own.toml",
        )
        .unwrap();
        let vars = BTreeMap::from([("device", "p1".to_owned())]);
        assert_eq!(
            r.render("unreachable", &vars).unwrap(),
            "call the front desk about p1"
        );
        assert!(r.has("lamp_fault"));
    }
}
