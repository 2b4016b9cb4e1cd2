//! The duty roster: who is on duty when (weekly hours per person and role in the site's zone),
//! holidays, who is called out of hours, and the escalation order. Resolves the recipients a
//! decision names (`on_duty`, a role, a person) at an instant.
//!
//! Owns the `[roster]` section's meaning and its validation. Pure: must not read the clock or
//! send anything.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Datelike, NaiveDate, NaiveTime, Utc, Weekday};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

/// One person's weekly hours.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Shift {
    pub who: String,
    pub role: String,
    pub days: Vec<Weekday>,
    pub from: NaiveTime,
    pub until: NaiveTime,
}

impl Shift {
    fn covers(&self, day: Weekday, at: NaiveTime) -> bool {
        self.days.contains(&day) && self.from <= at && at < self.until
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Roster {
    #[serde(skip)]
    pub tz: Tz,
    pub shifts: Vec<Shift>,
    pub holidays: BTreeSet<NaiveDate>,
    /// Called when nobody is on shift (nights, weekends, holidays).
    pub out_of_hours: Vec<String>,
    /// Who is told, in turn, when an alert is not acknowledged by its deadline.
    pub escalation: Vec<String>,
    /// How to reach a person by name (`[roster.contacts.<name>]`), for the mail sink.
    #[serde(skip)]
    pub contacts: BTreeMap<String, Contact>,
}

/// `[roster.contacts.<name>]`: how to reach one person.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Contact {
    pub email: Option<String>,
}

impl Roster {
    /// The plan's roster (domain.md, "Who works, when"): a technician 08:00–18:00 Monday to
    /// Friday; nobody named out of hours until the site says who.
    pub fn of_plan(tz: Tz) -> Roster {
        Roster {
            tz,
            shifts: vec![Shift {
                who: "technician".into(),
                role: "technician".into(),
                days: vec![
                    Weekday::Mon,
                    Weekday::Tue,
                    Weekday::Wed,
                    Weekday::Thu,
                    Weekday::Fri,
                ],
                from: NaiveTime::from_hms_opt(8, 0, 0).unwrap_or_default(),
                until: NaiveTime::from_hms_opt(18, 0, 0).unwrap_or_default(),
            }],
            holidays: BTreeSet::new(),
            out_of_hours: Vec::new(),
            escalation: Vec::new(),
            contacts: BTreeMap::new(),
        }
    }

    /// Who is on duty at `now`: everyone on shift, or the out-of-hours contacts.
    pub fn on_duty(&self, now: DateTime<Utc>) -> Vec<String> {
        let local = now.with_timezone(&self.tz);
        if !self.holidays.contains(&local.date_naive()) {
            let on: Vec<String> = self
                .shifts
                .iter()
                .filter(|s| s.covers(local.weekday(), local.time()))
                .map(|s| s.who.clone())
                .collect();
            if !on.is_empty() {
                return on;
            }
        }
        self.out_of_hours.clone()
    }

    /// The people a decision's recipients name at `now` (`on_duty`, a role on shift, or a
    /// person's name as given), or the escalation contact of `level` ≥ 1. Each person once.
    pub fn recipients(&self, named: &[String], level: u32, now: DateTime<Utc>) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut add = |who: String| {
            if !out.contains(&who) {
                out.push(who);
            }
        };
        if level > 0 {
            let i = usize::try_from(level - 1).unwrap_or(usize::MAX);
            if let Some(who) = self.escalation.get(i).or(self.escalation.last()) {
                add(who.clone());
            }
            return out;
        }
        for n in named {
            if n == "on_duty" {
                self.on_duty(now).into_iter().for_each(&mut add);
            } else if self.shifts.iter().any(|s| &s.role == n) {
                let on: Vec<String> = self
                    .on_duty(now)
                    .into_iter()
                    .filter(|who| self.shifts.iter().any(|s| &s.who == who && &s.role == n))
                    .collect();
                on.into_iter().for_each(&mut add);
            } else {
                add(n.clone());
            }
        }
        out
    }
}

/// `[roster]` as written.
#[derive(Debug, Default, Deserialize)]
pub struct RawRoster {
    #[serde(default)]
    pub shifts: Vec<RawShift>,
    #[serde(default)]
    pub holidays: Vec<String>,
    #[serde(default)]
    pub out_of_hours: Vec<String>,
    #[serde(default)]
    pub escalation: Vec<String>,
    #[serde(default)]
    pub contacts: BTreeMap<String, RawContact>,
}

/// `[roster.contacts.<name>]`.
#[derive(Debug, Default, Deserialize)]
pub struct RawContact {
    pub email: Option<String>,
}

/// `[[roster.shifts]]`: `who`, `role`, `days` (`mon`…`sun`, or `mon-fri`), `from`/`until`
/// as `HH:MM` in the site's zone.
#[derive(Debug, Default, Deserialize)]
pub struct RawShift {
    pub who: Option<String>,
    pub role: Option<String>,
    #[serde(default)]
    pub days: Vec<String>,
    pub from: Option<String>,
    pub until: Option<String>,
}

/// A problem with its key path below `[roster]` (`shifts[0].from`).
pub type RosterProblem = (Vec<crate::config::locate::Seg>, String);

fn weekday(s: &str) -> Option<Weekday> {
    Some(match s {
        "mon" => Weekday::Mon,
        "tue" => Weekday::Tue,
        "wed" => Weekday::Wed,
        "thu" => Weekday::Thu,
        "fri" => Weekday::Fri,
        "sat" => Weekday::Sat,
        "sun" => Weekday::Sun,
        _ => return None,
    })
}

fn days(s: &str) -> Option<Vec<Weekday>> {
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (weekday(a)?, weekday(b)?);
            let mut out = vec![a];
            let mut d = a;
            while d != b {
                d = d.succ();
                out.push(d);
            }
            Some(out)
        }
        None => weekday(s).map(|d| vec![d]),
    }
}

impl RawRoster {
    /// Validate, reporting every problem with its path under `roster`.
    pub fn validate(&self, tz: Tz) -> Result<Roster, Vec<RosterProblem>> {
        use crate::config::locate::Seg;
        let key = |k: &str| Seg::Key(k.to_owned());
        let mut problems = Vec::new();
        let mut roster = Roster {
            tz,
            shifts: Vec::new(),
            holidays: BTreeSet::new(),
            out_of_hours: self.out_of_hours.clone(),
            escalation: self.escalation.clone(),
            contacts: BTreeMap::new(),
        };
        for (i, s) in self.shifts.iter().enumerate() {
            let at = |k: &str| vec![key("shifts"), Seg::Index(i), key(k)];
            let who = s.who.clone().unwrap_or_default();
            if who.trim().is_empty() {
                problems.push((at("who"), "missing: the person's name".to_owned()));
            }
            let mut ds = Vec::new();
            for d in &s.days {
                match days(d) {
                    Some(v) => ds.extend(v),
                    None => problems.push((
                        at("days"),
                        format!("unknown day \"{d}\" (mon … sun, or a range like mon-fri)"),
                    )),
                }
            }
            if s.days.is_empty() {
                problems.push((at("days"), "missing: the days of the shift".to_owned()));
            }
            let mut time = |k: &str, v: &Option<String>| match v
                .as_deref()
                .map(|t| NaiveTime::parse_from_str(t, "%H:%M"))
            {
                Some(Ok(t)) => Some(t),
                Some(Err(_)) => {
                    problems.push((at(k), "expected a time as HH:MM".to_owned()));
                    None
                }
                None => {
                    problems.push((at(k), "missing: a time as HH:MM".to_owned()));
                    None
                }
            };
            let from = time("from", &s.from);
            let until = time("until", &s.until);
            if let (Some(from), Some(until)) = (from, until) {
                if until <= from {
                    problems.push((at("until"), "must be after `from`".to_owned()));
                }
                roster.shifts.push(Shift {
                    role: s.role.clone().unwrap_or_else(|| "technician".to_owned()),
                    who,
                    days: ds,
                    from,
                    until,
                });
            }
        }
        for (i, h) in self.holidays.iter().enumerate() {
            match NaiveDate::parse_from_str(h, "%Y-%m-%d") {
                Ok(d) => {
                    roster.holidays.insert(d);
                }
                Err(_) => problems.push((
                    vec![key("holidays"), Seg::Index(i)],
                    "expected a date as YYYY-MM-DD".to_owned(),
                )),
            }
        }
        for (name, c) in &self.contacts {
            if let Some(email) = &c.email {
                if let Err(e) = email.parse::<lettre::Address>() {
                    problems.push((
                        vec![key("contacts"), key(name), key("email")],
                        format!("not an e-mail address: {e}"),
                    ));
                    continue;
                }
            }
            roster.contacts.insert(
                name.clone(),
                Contact {
                    email: c.email.clone(),
                },
            );
        }
        if problems.is_empty() {
            Ok(roster)
        } else {
            Err(problems)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn shanghai() -> Tz {
        "Asia/Shanghai".parse().unwrap()
    }

    fn roster() -> Roster {
        let raw: RawRoster = toml::from_str(
            r#"
shifts = [
  { who = "li", role = "technician", days = ["mon-fri"], from = "08:00", until = "18:00" },
  { who = "wang", role = "project_manager", days = ["mon-fri"], from = "09:00", until = "17:00" },
]
holidays = ["2026-10-01"]
out_of_hours = ["zhao"]
escalation = ["wang", "chen"]
"#,
        )
        .unwrap();
        raw.validate(shanghai()).unwrap()
    }

    /// A local wall time in Shanghai as UTC.
    fn local(y: i32, m: u32, d: u32, h: u32, min: u32) -> DateTime<Utc> {
        shanghai()
            .with_ymd_and_hms(y, m, d, h, min, 0)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn who_is_on_duty_when() {
        let r = roster();
        // Tuesday 2026-11-03.
        let cases = [
            (local(2026, 11, 3, 7, 59), vec!["zhao"]),
            (local(2026, 11, 3, 8, 0), vec!["li"]),
            (local(2026, 11, 3, 10, 0), vec!["li", "wang"]),
            (local(2026, 11, 3, 18, 0), vec!["zhao"]),
            // Saturday, and a holiday on a Thursday.
            (local(2026, 11, 7, 10, 0), vec!["zhao"]),
            (local(2026, 10, 1, 10, 0), vec!["zhao"]),
        ];
        for (at, want) in cases {
            assert_eq!(r.on_duty(at), want, "{at}");
        }
    }

    #[test]
    fn recipients_by_role_person_and_escalation_level() {
        let r = roster();
        let at = local(2026, 11, 3, 10, 0);
        let named = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            r.recipients(&named(&["on_duty", "project_manager"]), 0, at),
            ["li", "wang"]
        );
        assert_eq!(
            r.recipients(&named(&["technician", "gm"]), 0, at),
            ["li", "gm"]
        );
        assert_eq!(r.recipients(&[], 1, at), ["wang"]);
        assert_eq!(r.recipients(&[], 2, at), ["chen"]);
        assert_eq!(r.recipients(&[], 5, at), ["chen"], "the last contact stays");
        // Out of hours the project manager is not on shift: nobody by that role.
        assert!(r
            .recipients(&named(&["project_manager"]), 0, local(2026, 11, 3, 20, 0))
            .is_empty());
    }

    #[test]
    fn the_plans_roster() {
        let r = Roster::of_plan(shanghai());
        assert_eq!(r.on_duty(local(2026, 11, 3, 9, 0)), ["technician"]);
        assert!(r.on_duty(local(2026, 11, 8, 9, 0)).is_empty());
    }

    #[test]
    fn every_problem_has_its_path() {
        let raw: RawRoster = toml::from_str(
            r#"
shifts = [{ days = ["mon-fry"], from = "8am", until = "07:00" }]
holidays = ["1 May"]
"#,
        )
        .unwrap();
        let p = raw.validate(shanghai()).unwrap_err();
        let paths: Vec<String> = p
            .iter()
            .map(|(path, _)| crate::config::locate::render(path))
            .collect();
        assert_eq!(
            paths,
            [
                "shifts[0].who",
                "shifts[0].days",
                "shifts[0].from",
                "holidays[0]"
            ]
        );
    }
}
