//! iCalendar feeds (RFC 5545) read into series and expanded to instances in a window: what a
//! room mailbox or a shared calendar publishes, understood exactly enough to book self-tests
//! on.
//!
//! Owns the content-line reader (unfolding, parameters, escapes), time zone resolution (IANA
//! names, the Windows names Exchange writes, the feed's VTIMEZONE for any other TZID,
//! X-WR-TIMEZONE, floating times in a given zone,
//! RFC 5545 §3.3.5 for local times that do not exist or occur twice) and recurrence (RRULE
//! through the `rrule` crate, with COUNT, UNTIL, RDATE, EXDATE and RECURRENCE-ID done here to
//! RFC 5545's letter). A dirty feed loses only its bad series, each with a `FeedProblem`; a
//! hostile one is bounded in size, events and instances.
//!
//! Must not fetch anything, map instances to rooms or bookings (that is `feed`), or read the
//! clock: the window is given.
//!
//! The line reader is ours rather than a crate's because a parser that rejects the whole
//! calendar on one stray line would drop every booking of a room for one bad invitation.

pub mod windows_zones;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, Duration, NaiveDate, NaiveDateTime, NaiveTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;
use serde::Serialize;

/// What a hostile or runaway feed may cost at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Feed text larger than this is refused whole.
    pub max_bytes: usize,
    /// VEVENTs past this many are dropped (with one problem).
    pub max_events: usize,
    /// Instances of one series inside one window; past it the series is cut (with a problem).
    pub max_instances_per_series: usize,
    /// Recurrence steps tried for one series while looking for the window.
    pub max_steps_per_series: usize,
    /// Instances of the whole feed inside one window.
    pub max_instances: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: 4 * 1024 * 1024,
            max_events: 20_000,
            max_instances_per_series: 2_000,
            max_steps_per_series: 200_000,
            max_instances: 100_000,
        }
    }
}

/// The text is not an iCalendar stream at all (as opposed to a calendar with bad parts).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotACalendar {
    #[error("no BEGIN:VCALENDAR line: not an iCalendar file")]
    NoCalendar,
    #[error("{bytes} bytes is more than the limit of {limit} bytes for a feed")]
    TooLarge { bytes: usize, limit: usize },
}

/// What was done about a bad part of a feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemAction {
    /// The series (or line) was left out.
    Skipped,
    /// The series was kept with the stated repair.
    Repaired,
}

/// One skipped or repaired part of a feed, with its reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FeedProblem {
    /// The UID of the series concerned, if the problem has one.
    pub uid: Option<String>,
    /// 1-based line (after unfolding, the line a folded property starts on).
    pub line: Option<usize>,
    pub action: ProblemAction,
    pub reason: String,
}

impl FeedProblem {
    fn new(uid: Option<&str>, line: Option<usize>, action: ProblemAction, reason: String) -> Self {
        Self {
            uid: uid.map(str::to_owned),
            line,
            action,
            reason,
        }
    }
}

impl fmt::Display for FeedProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if let Some(uid) = &self.uid {
            write!(f, "UID {uid}: ")?;
        }
        let action = match self.action {
            ProblemAction::Skipped => "skipped",
            ProblemAction::Repaired => "repaired",
        };
        write!(f, "{action}: {}", self.reason)
    }
}

/// Which occurrence of a series an instance is: its original start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecurrenceId {
    Instant(DateTime<Utc>),
    Date(NaiveDate),
}

impl fmt::Display for RecurrenceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecurrenceId::Instant(t) => f.write_str(&utc_text(*t)),
            RecurrenceId::Date(d) => write!(f, "{}", d.format("%Y-%m-%d")),
        }
    }
}

/// One occurrence of an event, in UTC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub uid: String,
    /// `None` outside a series; else the original start of this occurrence.
    pub recurrence_id: Option<RecurrenceId>,
    pub summary: Option<String>,
    pub location: Option<String>,
    pub start_utc: DateTime<Utc>,
    pub end_utc: DateTime<Utc>,
    /// STATUS as written (`CONFIRMED`, `TENTATIVE`, `CANCELLED`), if written.
    pub status: Option<String>,
    pub all_day: bool,
    /// PRIORITY 1–4, or a category "important".
    pub important: bool,
    pub categories: Vec<String>,
}

impl Instance {
    pub fn is_cancelled(&self) -> bool {
        self.status
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("CANCELLED"))
    }

    /// The line `avwarden bookings expand` prints for it: one JSON object, keys in a fixed
    /// order, instants as RFC 3339 UTC with seconds.
    pub fn to_json_line(&self) -> String {
        #[derive(Serialize)]
        struct Line<'a> {
            uid: &'a str,
            recurrence_id: Option<String>,
            summary: Option<&'a str>,
            location: Option<&'a str>,
            start_utc: String,
            end_utc: String,
            status: Option<&'a str>,
            all_day: bool,
            important: bool,
        }
        let line = Line {
            uid: &self.uid,
            recurrence_id: self.recurrence_id.map(|r| r.to_string()),
            summary: self.summary.as_deref(),
            location: self.location.as_deref(),
            start_utc: utc_text(self.start_utc),
            end_utc: utc_text(self.end_utc),
            status: self.status.as_deref(),
            all_day: self.all_day,
            important: self.important,
        };
        serde_json::to_string(&line).unwrap_or_default()
    }
}

/// RFC 3339 in UTC with a `Z` and whole seconds.
pub fn utc_text(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A parsed feed: its series, ready to expand, and what was skipped or repaired.
#[derive(Debug, Clone)]
pub struct Calendar {
    series: Vec<Series>,
    /// Overrides whose master is not in the feed: each is an event of its own.
    orphans: Vec<Event>,
    /// The zone floating times and dates are read in.
    pub floating: Tz,
    pub problems: Vec<FeedProblem>,
    limits: Limits,
}

/// Parse a feed with the default limits. Floating times and all-day dates are read in
/// `floating`, unless the calendar names its zone in X-WR-TIMEZONE.
pub fn parse(text: &str, floating: Tz) -> Result<Calendar, NotACalendar> {
    parse_with_limits(text, floating, Limits::default())
}

/// Parse a feed, bounded by `limits`.
pub fn parse_with_limits(
    text: &str,
    floating: Tz,
    limits: Limits,
) -> Result<Calendar, NotACalendar> {
    if text.len() > limits.max_bytes {
        return Err(NotACalendar::TooLarge {
            bytes: text.len(),
            limit: limits.max_bytes,
        });
    }
    let lines = unfold(text);
    let mut problems = Vec::new();
    let raw = read_components(&lines, &mut problems, limits.max_events)?;
    let floating = raw
        .x_wr_timezone
        .as_deref()
        .and_then(|name| match resolve_tzid(name) {
            Some(tz) => Some(tz),
            None => {
                problems.push(FeedProblem::new(
                    None,
                    None,
                    ProblemAction::Repaired,
                    format!(
                        "X-WR-TIMEZONE {name:?} is not a known zone; floating times use {floating}"
                    ),
                ));
                None
            }
        })
        .unwrap_or(floating);
    let zones = Zones::new(floating, &raw.vtimezones, &mut problems);
    let ctx = Ctx {
        zones: Arc::new(zones),
    };
    let mut events = Vec::new();
    for comp in &raw.events {
        match Event::from_component(comp, &ctx, &mut problems) {
            Ok(ev) => events.push(ev),
            Err(reason) => problems.push(FeedProblem::new(
                comp.uid(),
                Some(comp.line),
                ProblemAction::Skipped,
                reason,
            )),
        }
    }
    let (series, orphans) = group(events, &mut problems);
    Ok(Calendar {
        series,
        orphans,
        floating,
        problems,
        limits,
    })
}

impl Calendar {
    /// Every instance that overlaps `[from, to)` (start < to and end > from), sorted by start.
    /// Problems found while expanding (a series cut at its bound) are logged.
    pub fn expand(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<Instance> {
        let (instances, problems) = self.expand_with_problems(from, to);
        for p in problems {
            tracing::warn!(problem = %p, "calendar expansion bounded");
        }
        instances
    }

    /// As [`Calendar::expand`], also returning the problems expansion found.
    pub fn expand_with_problems(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> (Vec<Instance>, Vec<FeedProblem>) {
        let mut out = Vec::new();
        let mut problems = Vec::new();
        for s in &self.series {
            if out.len() >= self.limits.max_instances {
                problems.push(FeedProblem::new(
                    None,
                    None,
                    ProblemAction::Skipped,
                    format!(
                        "more than {} instances in the window; later series are left out",
                        self.limits.max_instances
                    ),
                ));
                break;
            }
            s.expand(from, to, &self.limits, &mut out, &mut problems);
        }
        for ev in &self.orphans {
            if let Some(inst) = ev.single_instance(ev.recurrence_id) {
                if inst.start_utc < to && inst.end_utc > from {
                    out.push(inst);
                }
            }
        }
        out.sort_by(|a, b| {
            (a.start_utc, &a.uid, a.recurrence_id, a.end_utc).cmp(&(
                b.start_utc,
                &b.uid,
                b.recurrence_id,
                b.end_utc,
            ))
        });
        (out, problems)
    }

    /// How many series (events with their overrides) the feed holds.
    pub fn series_count(&self) -> usize {
        self.series.len() + self.orphans.len()
    }
}

// ---------------------------------------------------------------------------------------
// Content lines (RFC 5545 §3.1)

#[derive(Debug, Clone)]
struct Property {
    name: String,
    params: Vec<(String, String)>,
    value: String,
    line: usize,
}

impl Property {
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Logical lines with the 1-based number of the physical line each starts on. Folding is a
/// line break followed by one space or tab (§3.1); bare LF is accepted as well as CRLF.
fn unfold(text: &str) -> Vec<(usize, String)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out: Vec<(usize, String)> = Vec::new();
    for (i, raw) in text.split('\n').enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if let Some(rest) = line.strip_prefix([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.1.push_str(rest);
                continue;
            }
        }
        if line.trim().is_empty() {
            continue;
        }
        out.push((i + 1, line.to_owned()));
    }
    out
}

/// `NAME;PARAM=VALUE;PARAM="QUOTED":value`, or `None` for a line that is not a property.
fn parse_line(line: &str, number: usize) -> Option<Property> {
    let mut params = Vec::new();
    let name_end = line.find([';', ':'])?;
    let name = line[..name_end].trim().to_ascii_uppercase();
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return None;
    }
    let mut rest = &line[name_end..];
    while let Some(after) = rest.strip_prefix(';') {
        let eq = after.find('=')?;
        let pname = after[..eq].trim().to_ascii_uppercase();
        let mut v = &after[eq + 1..];
        let mut value = String::new();
        loop {
            if let Some(q) = v.strip_prefix('"') {
                let close = q.find('"')?;
                value.push_str(&q[..close]);
                v = &q[close + 1..];
            } else {
                let end = v.find([',', ';', ':']).unwrap_or(v.len());
                value.push_str(&v[..end]);
                v = &v[end..];
            }
            match v.strip_prefix(',') {
                Some(more) => {
                    value.push(',');
                    v = more;
                }
                None => break,
            }
        }
        params.push((pname, value));
        rest = v;
    }
    let value = rest.strip_prefix(':')?;
    Some(Property {
        name,
        params,
        value: value.to_owned(),
        line: number,
    })
}

/// TEXT unescaping (§3.3.11).
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n' | 'N') => out.push('\n'),
                Some(other) => out.push(other),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Split a TEXT list on unescaped commas, then unescape each item.
fn split_text_list(s: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut cur = String::new();
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            cur.push('\\');
            cur.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == ',' {
            items.push(unescape(&cur));
            cur.clear();
        } else {
            cur.push(c);
        }
    }
    items.push(unescape(&cur));
    items
        .into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

#[derive(Debug, Clone)]
struct Component {
    line: usize,
    props: Vec<Property>,
}

impl Component {
    fn get(&self, name: &str) -> Option<&Property> {
        self.props.iter().find(|p| p.name == name)
    }
    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Property> + 'a {
        self.props.iter().filter(move |p| p.name == name)
    }
    fn uid(&self) -> Option<&str> {
        self.get("UID").map(|p| p.value.trim())
    }
}

struct RawCalendar {
    events: Vec<Component>,
    x_wr_timezone: Option<String>,
    vtimezones: Vec<RawVTimezone>,
}

/// A VTIMEZONE as written: its TZID and its STANDARD/DAYLIGHT observances.
#[derive(Debug, Default)]
struct RawVTimezone {
    tzid: Option<String>,
    line: usize,
    observances: Vec<Component>,
}

/// VTIMEZONEs past this many are ignored: a real feed has a handful.
const MAX_VTIMEZONES: usize = 100;

/// Walk BEGIN/END nesting and collect each VEVENT's own properties (not its VALARMs').
fn read_components(
    lines: &[(usize, String)],
    problems: &mut Vec<FeedProblem>,
    max_events: usize,
) -> Result<RawCalendar, NotACalendar> {
    let mut stack: Vec<String> = Vec::new();
    let mut seen_calendar = false;
    let mut events = Vec::new();
    let mut current: Option<Component> = None;
    let mut x_wr_timezone = None;
    let mut vtimezones: Vec<RawVTimezone> = Vec::new();
    let mut dropped = 0usize;
    for (number, text) in lines {
        let Some(prop) = parse_line(text, *number) else {
            problems.push(FeedProblem::new(
                current.as_ref().and_then(|c| c.uid()),
                Some(*number),
                ProblemAction::Skipped,
                format!("stray line {:?} is not a property", shorten(text)),
            ));
            continue;
        };
        match prop.name.as_str() {
            "BEGIN" => {
                let kind = prop.value.trim().to_ascii_uppercase();
                if kind == "VCALENDAR" {
                    seen_calendar = true;
                }
                if kind == "VEVENT" && stack.last().is_some_and(|k| k == "VCALENDAR") {
                    current = Some(Component {
                        line: *number,
                        props: Vec::new(),
                    });
                }
                if kind == "VTIMEZONE"
                    && stack.last().is_some_and(|k| k == "VCALENDAR")
                    && vtimezones.len() < MAX_VTIMEZONES
                {
                    vtimezones.push(RawVTimezone {
                        line: *number,
                        ..RawVTimezone::default()
                    });
                }
                if (kind == "STANDARD" || kind == "DAYLIGHT")
                    && stack.last().is_some_and(|k| k == "VTIMEZONE")
                {
                    if let Some(vtz) = vtimezones.last_mut() {
                        vtz.observances.push(Component {
                            line: *number,
                            props: Vec::new(),
                        });
                    }
                }
                stack.push(kind);
            }
            "END" => {
                let kind = prop.value.trim().to_ascii_uppercase();
                if stack.last() == Some(&kind) {
                    stack.pop();
                } else if let Some(pos) = stack.iter().rposition(|k| *k == kind) {
                    problems.push(FeedProblem::new(
                        None,
                        Some(*number),
                        ProblemAction::Repaired,
                        format!("END:{kind} closes unclosed {}", stack[pos + 1..].join(", ")),
                    ));
                    stack.truncate(pos);
                } else {
                    problems.push(FeedProblem::new(
                        None,
                        Some(*number),
                        ProblemAction::Skipped,
                        format!("END:{kind} without its BEGIN"),
                    ));
                    continue;
                }
                if kind == "VEVENT" || !stack.iter().any(|k| k == "VEVENT") {
                    if let Some(ev) = current.take() {
                        if events.len() < max_events {
                            events.push(ev);
                        } else {
                            dropped += 1;
                        }
                    }
                }
            }
            _ => match stack.last().map(String::as_str) {
                Some("VEVENT") => {
                    if let Some(c) = current.as_mut() {
                        c.props.push(prop);
                    }
                }
                Some("VCALENDAR") if prop.name == "X-WR-TIMEZONE" => {
                    x_wr_timezone = Some(unescape(prop.value.trim()));
                }
                Some("VTIMEZONE") if prop.name == "TZID" => {
                    if let Some(vtz) = vtimezones.last_mut() {
                        vtz.tzid = Some(prop.value.trim().to_owned());
                    }
                }
                Some("STANDARD" | "DAYLIGHT") => {
                    if let Some(obs) = vtimezones.last_mut().and_then(|v| v.observances.last_mut())
                    {
                        obs.props.push(prop);
                    }
                }
                _ => {}
            },
        }
    }
    if !seen_calendar {
        return Err(NotACalendar::NoCalendar);
    }
    if let Some(ev) = current.take() {
        problems.push(FeedProblem::new(
            ev.uid(),
            Some(ev.line),
            ProblemAction::Repaired,
            "VEVENT not closed before the end of the feed; read up to there".into(),
        ));
        if events.len() < max_events {
            events.push(ev);
        } else {
            dropped += 1;
        }
    }
    if dropped > 0 {
        problems.push(FeedProblem::new(
            None,
            None,
            ProblemAction::Skipped,
            format!("{dropped} events past the limit of {max_events} per feed"),
        ));
    }
    Ok(RawCalendar {
        events,
        x_wr_timezone,
        vtimezones,
    })
}

fn shorten(s: &str) -> String {
    let mut out: String = s.chars().take(40).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

// ---------------------------------------------------------------------------------------
// Values and zones

/// A DATE-TIME or DATE value as written: its zone decides how it becomes an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum When {
    Utc(DateTime<Utc>),
    /// Local time in a zone (TZID, or floating read in the floating zone).
    Local(NaiveDateTime, Zone),
    Date(NaiveDate),
}

impl When {
    fn is_date(&self) -> bool {
        matches!(self, When::Date(_))
    }

    /// The instant, with RFC 5545 §3.3.5 for gaps and folds; a date is its midnight in the
    /// floating zone.
    fn to_utc(self, zones: &Zones) -> DateTime<Utc> {
        match self {
            When::Utc(t) => t,
            When::Local(n, zone) => zones.local_to_utc(n, zone),
            When::Date(d) => local_to_utc(d.and_time(NaiveTime::MIN), zones.floating),
        }
    }

    /// The wall-clock time recurrence steps in (UTC values step in UTC).
    fn wall(self) -> NaiveDateTime {
        match self {
            When::Utc(t) => t.naive_utc(),
            When::Local(n, _) => n,
            When::Date(d) => d.and_time(NaiveTime::MIN),
        }
    }

    fn recurrence_id(self, zones: &Zones) -> RecurrenceId {
        match self {
            When::Date(d) => RecurrenceId::Date(d),
            other => RecurrenceId::Instant(other.to_utc(zones)),
        }
    }
}

/// A local time in a zone as an instant, per RFC 5545 §3.3.5: a time that occurs twice is
/// the first occurrence; a time in a gap is read with the offset in force before the gap
/// (so 02:30 on a spring-forward night that skips 02:00–03:00 is 03:30 after the gap).
pub fn local_to_utc(local: NaiveDateTime, tz: Tz) -> DateTime<Utc> {
    match tz.from_local_datetime(&local) {
        chrono::LocalResult::Single(t) => t.with_timezone(&Utc),
        chrono::LocalResult::Ambiguous(first, second) => {
            first.with_timezone(&Utc).min(second.with_timezone(&Utc))
        }
        chrono::LocalResult::None => {
            // Walk back to the last wall time before the gap; gaps are whole quarter hours
            // and at most a day long (Samoa, 2011).
            let mut probe = local;
            for _ in 0..(4 * 26) {
                probe -= Duration::minutes(15);
                if let Some(before) = tz.from_local_datetime(&probe).latest() {
                    let offset = before.offset().fix();
                    return (local - Duration::seconds(i64::from(offset.local_minus_utc())))
                        .and_utc();
                }
            }
            local.and_utc()
        }
    }
}

/// A TZID as a zone: an IANA name (also at the end of a path such as
/// `/freeassociation.sourceforge.net/Europe/Berlin`), or a Windows name as Exchange writes.
pub fn resolve_tzid(tzid: &str) -> Option<Tz> {
    let name = tzid.trim().trim_matches('"');
    if let Ok(tz) = name.parse::<Tz>() {
        return Some(tz);
    }
    if let Some(tz) = windows_zones::iana_of(name) {
        return Some(tz);
    }
    let parts: Vec<&str> = name.split('/').filter(|p| !p.is_empty()).collect();
    (1..parts.len()).find_map(|skip| parts[skip..].join("/").parse::<Tz>().ok())
}

/// A zone a local time is in: an IANA zone (also for Windows names), or a VTIMEZONE of the
/// feed whose TZID is neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Zone {
    Iana(Tz),
    Custom(usize),
}

/// The zones of one feed: the floating zone and the feed's own VTIMEZONE definitions.
#[derive(Debug)]
struct Zones {
    floating: Tz,
    custom: Vec<VZone>,
}

impl Zones {
    /// IANA and Windows names resolve through tzdata (CLDR for Windows names), which is
    /// right for every year; a VTIMEZONE is used only for a TZID they do not know
    /// ("Customized Time Zone", a display name), as Outlook writes for edited zones.
    fn new(floating: Tz, raw: &[RawVTimezone], problems: &mut Vec<FeedProblem>) -> Self {
        let mut custom = Vec::new();
        for vtz in raw {
            let Some(tzid) = vtz.tzid.as_deref() else {
                continue;
            };
            if resolve_tzid(tzid).is_some() {
                continue;
            }
            match VZone::from_raw(tzid, &vtz.observances) {
                Ok(z) => custom.push(z),
                Err(reason) => problems.push(FeedProblem::new(
                    None,
                    Some(vtz.line),
                    ProblemAction::Skipped,
                    format!("VTIMEZONE {tzid:?}: {reason}"),
                )),
            }
        }
        Self { floating, custom }
    }

    fn resolve(&self, tzid: &str) -> Option<Zone> {
        if let Some(tz) = resolve_tzid(tzid) {
            return Some(Zone::Iana(tz));
        }
        let name = tzid.trim().trim_matches('"');
        self.custom
            .iter()
            .position(|z| z.tzid == name)
            .map(Zone::Custom)
    }

    fn local_to_utc(&self, local: NaiveDateTime, zone: Zone) -> DateTime<Utc> {
        match zone {
            Zone::Iana(tz) => local_to_utc(local, tz),
            Zone::Custom(i) => match self.custom.get(i) {
                Some(z) => z.local_to_utc(local),
                None => local_to_utc(local, self.floating),
            },
        }
    }
}

/// A VTIMEZONE's transitions, as instants with the UTC offsets (seconds) before and after.
#[derive(Debug)]
struct VZone {
    tzid: String,
    transitions: Vec<(DateTime<Utc>, i32, i32)>,
}

/// Transitions computed per VTIMEZONE observance at most; a yearly rule from 1601 to 2200 is
/// 600.
const MAX_TRANSITIONS: usize = 2_000;

impl VZone {
    fn from_raw(tzid: &str, observances: &[Component]) -> Result<Self, String> {
        let mut transitions = Vec::new();
        for obs in observances {
            let offset = |name: &str| {
                obs.get(name)
                    .and_then(|p| parse_utc_offset(&p.value))
                    .ok_or_else(|| format!("{name} missing or not an offset"))
            };
            let from = offset("TZOFFSETFROM")?;
            let to = offset("TZOFFSETTO")?;
            let start = obs
                .get("DTSTART")
                .and_then(|p| NaiveDateTime::parse_from_str(p.value.trim(), "%Y%m%dT%H%M%S").ok())
                .ok_or("observance without a local DTSTART")?;
            let onset = |wall: NaiveDateTime| wall.and_utc() - Duration::seconds(i64::from(from));
            transitions.push((onset(start), from, to));
            if let Some(rule) = obs.get("RRULE") {
                let mut kept = Vec::new();
                let mut until = None;
                let mut count = None;
                for part in rule.value.split(';') {
                    match part.split_once('=') {
                        Some((k, v)) if k.eq_ignore_ascii_case("UNTIL") => {
                            let v = v.trim();
                            until = match v.strip_suffix(['Z', 'z']) {
                                Some(u) => NaiveDateTime::parse_from_str(u, "%Y%m%dT%H%M%S")
                                    .ok()
                                    .map(|n| n.and_utc()),
                                None => NaiveDateTime::parse_from_str(v, "%Y%m%dT%H%M%S")
                                    .ok()
                                    .map(onset),
                            };
                        }
                        Some((k, v)) if k.eq_ignore_ascii_case("COUNT") => {
                            count = v.trim().parse::<usize>().ok();
                        }
                        _ => kept.push(part),
                    }
                }
                let text = kept.join(";");
                // The rrule crate slices its input by byte offsets and panics inside a
                // multi-byte character; every valid RRULE is ASCII.
                if !text.is_ascii() {
                    return Err(format!("RRULE {text:?} is not ASCII"));
                }
                let set = rrule::RRule::<rrule::Unvalidated>::from_str(&text)
                    .and_then(|r| r.build(rrule::Tz::UTC.from_utc_datetime(&start)))
                    .map_err(|e| format!("RRULE: {e}"))?;
                let last_year = NaiveDate::from_ymd_opt(2200, 1, 1)
                    .map(|d| d.and_time(NaiveTime::MIN))
                    .unwrap_or(NaiveDateTime::MAX);
                for (n, occ) in set.into_iter().enumerate() {
                    let wall = occ.naive_utc();
                    let at = onset(wall);
                    if n >= MAX_TRANSITIONS
                        || wall > last_year
                        || until.is_some_and(|u| at > u)
                        || count.is_some_and(|c| n >= c)
                    {
                        break;
                    }
                    if wall != start {
                        transitions.push((at, from, to));
                    }
                }
            }
            for rdate in obs.all("RDATE") {
                for v in rdate.value.split(',') {
                    if let Ok(wall) = NaiveDateTime::parse_from_str(v.trim(), "%Y%m%dT%H%M%S") {
                        transitions.push((onset(wall), from, to));
                    }
                }
            }
        }
        if transitions.is_empty() {
            return Err("no STANDARD or DAYLIGHT observance".into());
        }
        transitions.sort_by_key(|t| t.0);
        Ok(Self {
            tzid: tzid.trim().trim_matches('"').to_owned(),
            transitions,
        })
    }

    fn offset_at(&self, at: DateTime<Utc>) -> i32 {
        match self.transitions.partition_point(|t| t.0 <= at) {
            0 => self.transitions.first().map_or(0, |t| t.1),
            i => self.transitions[i - 1].2,
        }
    }

    /// RFC 5545 §3.3.5 as for IANA zones: the first of two, the offset before a gap.
    fn local_to_utc(&self, local: NaiveDateTime) -> DateTime<Utc> {
        let mut offsets: Vec<i32> = self.transitions.iter().flat_map(|t| [t.1, t.2]).collect();
        offsets.sort_unstable();
        offsets.dedup();
        let candidate = |o: i32| local.and_utc() - Duration::seconds(i64::from(o));
        if let Some(first) = offsets
            .iter()
            .map(|&o| (o, candidate(o)))
            .filter(|&(o, u)| self.offset_at(u) == o)
            .map(|(_, u)| u)
            .min()
        {
            return first;
        }
        // In a gap: the transition whose skipped wall times hold `local`.
        self.transitions
            .iter()
            .find(|(at, from, to)| {
                let before = at.naive_utc() + Duration::seconds(i64::from(*from));
                let after = at.naive_utc() + Duration::seconds(i64::from(*to));
                before <= local && local < after
            })
            .map(|&(_, from, _)| candidate(from))
            .unwrap_or_else(|| candidate(self.offset_at(local.and_utc())))
    }
}

/// A UTC-OFFSET value (§3.3.14): `+0100`, `-0500`, `+053000`.
fn parse_utc_offset(s: &str) -> Option<i32> {
    let s = s.trim();
    let (sign, digits) = match s.as_bytes().first()? {
        b'+' => (1, &s[1..]),
        b'-' => (-1, &s[1..]),
        _ => return None,
    };
    if !(digits.len() == 4 || digits.len() == 6) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let h: i32 = digits[0..2].parse().ok()?;
    let m: i32 = digits[2..4].parse().ok()?;
    let sec: i32 = if digits.len() == 6 {
        digits[4..6].parse().ok()?
    } else {
        0
    };
    Some(sign * (h * 3600 + m * 60 + sec))
}

struct Ctx {
    zones: Arc<Zones>,
}

impl Ctx {
    /// Read one DATE or DATE-TIME value of a property that has `tzid` (or not).
    fn when(
        &self,
        value: &str,
        tzid: Option<&str>,
        value_type: Option<&str>,
    ) -> Result<When, String> {
        let v = value.trim();
        let is_date = value_type.is_some_and(|t| t.eq_ignore_ascii_case("DATE"))
            || (v.len() == 8 && v.bytes().all(|b| b.is_ascii_digit()));
        if is_date {
            return NaiveDate::parse_from_str(v, "%Y%m%d")
                .map(When::Date)
                .map_err(|_| format!("{v:?} is not a DATE"));
        }
        if let Some(utc) = v.strip_suffix(['Z', 'z']) {
            return NaiveDateTime::parse_from_str(utc, "%Y%m%dT%H%M%S")
                .map(|n| When::Utc(n.and_utc()))
                .map_err(|_| format!("{v:?} is not a DATE-TIME"));
        }
        let n = NaiveDateTime::parse_from_str(v, "%Y%m%dT%H%M%S")
            .map_err(|_| format!("{v:?} is not a DATE-TIME"))?;
        match tzid {
            None => Ok(When::Local(n, Zone::Iana(self.zones.floating))),
            Some(id) => match self.zones.resolve(id) {
                Some(zone) => Ok(When::Local(n, zone)),
                None => Err(format!(
                    "unknown TZID {id:?} (not IANA, not a Windows name, no VTIMEZONE)"
                )),
            },
        }
    }

    /// A property's values (comma-separated lists for RDATE/EXDATE).
    fn whens(&self, prop: &Property) -> Result<Vec<When>, String> {
        prop.value
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|v| {
                // A PERIOD (RDATE;VALUE=PERIOD) starts the instance; its end is not kept.
                let start = v.split('/').next().unwrap_or(v);
                self.when(start, prop.param("TZID"), prop.param("VALUE"))
            })
            .collect()
    }
}

/// DURATION (§3.3.6): nominal days (weeks are 7 days) and exact seconds.
fn parse_duration(s: &str) -> Option<(i64, i64)> {
    let s = s.trim();
    let (neg, s) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let s = s.strip_prefix(['P', 'p'])?;
    let (mut days, mut secs) = (0i64, 0i64);
    let mut num = String::new();
    let mut in_time = false;
    let mut any = false;
    for c in s.chars() {
        match c.to_ascii_uppercase() {
            d if d.is_ascii_digit() => num.push(d),
            'T' => in_time = true,
            unit => {
                let n: i64 = num.parse().ok()?;
                num.clear();
                any = true;
                match (unit, in_time) {
                    ('W', false) => days = days.checked_add(n.checked_mul(7)?)?,
                    ('D', false) => days = days.checked_add(n)?,
                    ('H', true) => secs = secs.checked_add(n.checked_mul(3600)?)?,
                    ('M', true) => secs = secs.checked_add(n.checked_mul(60)?)?,
                    ('S', true) => secs = secs.checked_add(n)?,
                    _ => return None,
                }
            }
        }
    }
    if !num.is_empty() || !any || days > 100_000 || secs > 100_000 * 86_400 {
        return None;
    }
    Some(if neg { (-days, -secs) } else { (days, secs) })
}

// ---------------------------------------------------------------------------------------
// Events and series

/// How long each instance lasts (RFC 5545 §3.8.5.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Length {
    /// DTEND − DTSTART as instants: every instance lasts exactly this.
    Exact(Duration),
    /// DURATION (or all-day DTEND): days in local wall time, then exact seconds.
    Nominal { days: i64, secs: i64 },
}

#[derive(Debug, Clone)]
struct Event {
    uid: String,
    line: usize,
    sequence: i64,
    start: When,
    length: Length,
    recurrence_id: Option<RecurrenceId>,
    rule: Option<Rule>,
    rdates: Vec<When>,
    exdates: Vec<When>,
    summary: Option<String>,
    location: Option<String>,
    status: Option<String>,
    important: bool,
    categories: Vec<String>,
    zones: Arc<Zones>,
}

#[derive(Debug, Clone)]
struct Rule {
    /// The rule without COUNT and UNTIL, which are applied here (DTSTART counts; UNTIL in
    /// the value's own zone).
    set: rrule::RRuleSet,
    count: Option<u32>,
    until: Option<When>,
}

impl Event {
    fn from_component(
        comp: &Component,
        ctx: &Ctx,
        problems: &mut Vec<FeedProblem>,
    ) -> Result<Event, String> {
        let uid = comp
            .uid()
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| "VEVENT without UID".to_owned())?;
        let mut repaired = |reason: String, line: usize| {
            problems.push(FeedProblem::new(
                Some(&uid),
                Some(line),
                ProblemAction::Repaired,
                reason,
            ));
        };
        let dtstart_prop = comp
            .get("DTSTART")
            .ok_or_else(|| "VEVENT without DTSTART".to_owned())?;
        let start = ctx
            .when(
                &dtstart_prop.value,
                dtstart_prop.param("TZID"),
                dtstart_prop.param("VALUE"),
            )
            .map_err(|e| format!("DTSTART: {e}"))?;
        let length = match (comp.get("DTEND"), comp.get("DURATION")) {
            (Some(end), _) => {
                let end = ctx
                    .when(&end.value, end.param("TZID"), end.param("VALUE"))
                    .map_err(|e| format!("DTEND: {e}"))?;
                match (start, end) {
                    (When::Date(s), When::Date(e)) => {
                        let days = (e - s).num_days();
                        if days < 0 {
                            return Err("DTEND is before DTSTART".into());
                        }
                        Length::Nominal { days, secs: 0 }
                    }
                    (s, e) if s.is_date() != e.is_date() => {
                        return Err("DTSTART and DTEND are not both dates or both times".into())
                    }
                    (s, e) => {
                        let d = e.to_utc(&ctx.zones) - s.to_utc(&ctx.zones);
                        if d < Duration::zero() {
                            return Err("DTEND is before DTSTART".into());
                        }
                        Length::Exact(d)
                    }
                }
            }
            (None, Some(dur)) => {
                let (days, secs) = parse_duration(&dur.value)
                    .ok_or_else(|| format!("DURATION {:?} is not a duration", dur.value))?;
                if days < 0 || secs < 0 {
                    return Err("DURATION is negative".into());
                }
                Length::Nominal { days, secs }
            }
            // §3.6.1: a date lasts one day, a date-time ends where it starts.
            (None, None) if start.is_date() => Length::Nominal { days: 1, secs: 0 },
            (None, None) => Length::Exact(Duration::zero()),
        };
        let recurrence_id = match comp.get("RECURRENCE-ID") {
            Some(p) => {
                if p.param("RANGE").is_some() {
                    repaired(
                        "RECURRENCE-ID;RANGE=THISANDFUTURE read as an override of that one instance".into(),
                        p.line,
                    );
                }
                Some(
                    ctx.when(&p.value, p.param("TZID"), p.param("VALUE"))
                        .map_err(|e| format!("RECURRENCE-ID: {e}"))?
                        .recurrence_id(&ctx.zones),
                )
            }
            None => None,
        };
        let mut rrules = comp.all("RRULE");
        let rule = match rrules.next() {
            Some(first) if recurrence_id.is_none() => {
                if let Some(second) = rrules.next() {
                    repaired(
                        "more than one RRULE (RFC 5545 allows one); the first is used".into(),
                        second.line,
                    );
                }
                Some(parse_rule(&first.value, start, ctx)?)
            }
            Some(first) => {
                repaired("RRULE on an override ignored".into(), first.line);
                None
            }
            None => None,
        };
        let mut rdates = Vec::new();
        for p in comp.all("RDATE") {
            match ctx.whens(p) {
                Ok(w) => rdates.extend(w),
                Err(e) => repaired(format!("RDATE ignored: {e}"), p.line),
            }
        }
        let mut exdates = Vec::new();
        for p in comp.all("EXDATE") {
            match ctx.whens(p) {
                Ok(w) => exdates.extend(w),
                Err(e) => repaired(format!("EXDATE ignored: {e}"), p.line),
            }
        }
        let text = |name: &str| {
            comp.get(name)
                .map(|p| unescape(&p.value))
                .filter(|s| !s.trim().is_empty())
        };
        let categories: Vec<String> = comp
            .all("CATEGORIES")
            .flat_map(|p| split_text_list(&p.value))
            .collect();
        let priority = comp
            .get("PRIORITY")
            .and_then(|p| p.value.trim().parse::<u8>().ok());
        let important = priority.is_some_and(|p| (1..=4).contains(&p))
            || categories
                .iter()
                .any(|c| c.eq_ignore_ascii_case("important"));
        Ok(Event {
            uid: uid.clone(),
            line: comp.line,
            sequence: comp
                .get("SEQUENCE")
                .and_then(|p| p.value.trim().parse().ok())
                .unwrap_or(0),
            start,
            length,
            recurrence_id,
            rule,
            rdates,
            exdates,
            summary: text("SUMMARY"),
            location: text("LOCATION").map(|s| s.trim().to_owned()),
            status: comp
                .get("STATUS")
                .map(|p| p.value.trim().to_owned())
                .filter(|s| !s.is_empty()),
            important,
            categories,
            zones: ctx.zones.clone(),
        })
    }

    fn is_series(&self) -> bool {
        self.rule.is_some() || !self.rdates.is_empty()
    }

    /// The end of an instance that starts at `start` (wall time `wall` in the series' zone).
    fn end_of(&self, start: When) -> DateTime<Utc> {
        match self.length {
            Length::Exact(d) => start.to_utc(&self.zones) + d,
            Length::Nominal { days, secs } => {
                let later = match start {
                    When::Utc(t) => When::Utc(t + Duration::days(days)),
                    When::Local(n, tz) => When::Local(n + Duration::days(days), tz),
                    When::Date(d) => When::Date(d + Duration::days(days)),
                };
                later.to_utc(&self.zones) + Duration::seconds(secs)
            }
        }
    }

    fn instance_at(&self, start: When, recurrence_id: Option<RecurrenceId>) -> Instance {
        Instance {
            uid: self.uid.clone(),
            recurrence_id,
            summary: self.summary.clone(),
            location: self.location.clone(),
            start_utc: start.to_utc(&self.zones),
            end_utc: self.end_of(start),
            status: self.status.clone(),
            all_day: start.is_date(),
            important: self.important,
            categories: self.categories.clone(),
        }
    }

    fn single_instance(&self, recurrence_id: Option<RecurrenceId>) -> Option<Instance> {
        Some(self.instance_at(self.start, recurrence_id))
    }
}

/// Parse an RRULE value for a series starting at `start`. COUNT and UNTIL are taken out and
/// applied by the caller; the rest is stepped by `rrule` in the series' wall time (given to
/// it as UTC, which has no DST, so a 09:00 meeting stays at 09:00 local across a change).
fn parse_rule(value: &str, start: When, ctx: &Ctx) -> Result<Rule, String> {
    let mut count = None;
    let mut until = None;
    let mut kept = Vec::new();
    for part in value.trim().split(';').filter(|p| !p.trim().is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("RRULE part {part:?} is not KEY=VALUE"))?;
        match k.trim().to_ascii_uppercase().as_str() {
            "COUNT" => {
                let n: u32 = v
                    .trim()
                    .parse()
                    .map_err(|_| format!("RRULE COUNT {v:?} is not a number"))?;
                if n == 0 {
                    return Err("RRULE COUNT=0".into());
                }
                count = Some(n);
            }
            "UNTIL" => {
                // §3.3.10: UNTIL with a zoned DTSTART is UTC; a floating UNTIL is read in the
                // DTSTART's own zone, which is what a sloppy writer meant.
                let u = ctx
                    .when(v, None, None)
                    .map_err(|e| format!("RRULE UNTIL: {e}"))?;
                until = Some(match (u, start) {
                    (When::Local(n, _), When::Local(_, zone)) => When::Local(n, zone),
                    (u, _) => u,
                });
            }
            _ => kept.push(part.trim()),
        }
    }
    if count.is_some() && until.is_some() {
        return Err("RRULE has both COUNT and UNTIL".into());
    }
    let text = kept.join(";");
    // The rrule crate slices its input by byte offsets and panics inside a multi-byte
    // character; every valid RRULE is ASCII.
    if !text.is_ascii() {
        return Err(format!("unparsable RRULE {value:?}: not ASCII"));
    }
    let unvalidated = rrule::RRule::<rrule::Unvalidated>::from_str(&text)
        .map_err(|e| format!("unparsable RRULE {value:?}: {e}"))?;
    let dtstart = rrule::Tz::UTC.from_utc_datetime(&start.wall());
    let set = unvalidated
        .build(dtstart)
        .map_err(|e| format!("unusable RRULE {value:?}: {e}"))?;
    if let Some(u) = until {
        if !until_admits(u, start, &ctx.zones) {
            return Err("RRULE UNTIL is before DTSTART".into());
        }
    }
    Ok(Rule { set, count, until })
}

/// Whether an occurrence starting at `occ` is within UNTIL (inclusive, §3.3.10).
fn until_admits(until: When, occ: When, zones: &Zones) -> bool {
    match (until, occ) {
        (When::Date(u), o) => o.wall().date() <= u,
        (u, When::Date(d)) => d <= u.wall().date(),
        (u, o) => o.to_utc(zones) <= u.to_utc(zones),
    }
}

#[derive(Default)]
struct Exclusions {
    instants: HashSet<DateTime<Utc>>,
    /// Whole days: EXDATE;VALUE=DATE, or any EXDATE of an all-day series.
    dates: HashSet<NaiveDate>,
}

impl Exclusions {
    fn holds(&self, occ: When, zones: &Zones) -> bool {
        self.dates.contains(&occ.wall().date())
            || (!occ.is_date() && self.instants.contains(&occ.to_utc(zones)))
    }
}

/// A master (if the feed has one) and the overrides of its instances.
#[derive(Debug, Clone)]
struct Series {
    master: Event,
    overrides: Vec<Event>,
}

/// Group events by UID: one master each (the highest SEQUENCE; duplicates are problems),
/// overrides by RECURRENCE-ID, wherever in the file they stand.
fn group(events: Vec<Event>, problems: &mut Vec<FeedProblem>) -> (Vec<Series>, Vec<Event>) {
    let mut masters: Vec<Event> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut overrides: Vec<Event> = Vec::new();
    for ev in events {
        if ev.recurrence_id.is_some() {
            overrides.push(ev);
            continue;
        }
        match index.get(&ev.uid) {
            Some(&i) => {
                let kept = &mut masters[i];
                let (keep_new, dropped_line) = if ev.sequence > kept.sequence {
                    (true, kept.line)
                } else {
                    (false, ev.line)
                };
                problems.push(FeedProblem::new(
                    Some(&ev.uid),
                    Some(dropped_line),
                    ProblemAction::Repaired,
                    "UID used by more than one event; the one with the highest SEQUENCE (else the first) is kept".into(),
                ));
                if keep_new {
                    *kept = ev;
                }
            }
            None => {
                index.insert(ev.uid.clone(), masters.len());
                masters.push(ev);
            }
        }
    }
    let mut series: Vec<Series> = masters
        .into_iter()
        .map(|master| Series {
            master,
            overrides: Vec::new(),
        })
        .collect();
    let mut orphans: Vec<Event> = Vec::new();
    for ov in overrides {
        let list = match index.get(&ov.uid) {
            Some(&i) => &mut series[i].overrides,
            None => &mut orphans,
        };
        match list
            .iter_mut()
            .find(|o| o.uid == ov.uid && o.recurrence_id == ov.recurrence_id)
        {
            Some(existing) => {
                problems.push(FeedProblem::new(
                    Some(&ov.uid),
                    Some(ov.line.min(existing.line)),
                    ProblemAction::Repaired,
                    "the same RECURRENCE-ID overridden twice; the highest SEQUENCE (else the first) is kept".into(),
                ));
                if ov.sequence > existing.sequence {
                    *existing = ov;
                }
            }
            None => list.push(ov),
        }
    }
    (series, orphans)
}

impl Series {
    fn expand(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        limits: &Limits,
        out: &mut Vec<Instance>,
        problems: &mut Vec<FeedProblem>,
    ) {
        let m = &self.master;
        let overridden: BTreeSet<RecurrenceId> = self
            .overrides
            .iter()
            .filter_map(|o| o.recurrence_id)
            .collect();
        let excluded = self.exclusions();
        let in_window = |i: &Instance| i.start_utc < to && i.end_utc > from;
        let mut emitted = 0usize;
        let mut push = |inst: Instance, out: &mut Vec<Instance>| -> bool {
            if emitted >= limits.max_instances_per_series {
                return false;
            }
            emitted += 1;
            out.push(inst);
            true
        };
        let mut cut = false;
        if !m.is_series() {
            let inst = m.instance_at(m.start, None);
            if in_window(&inst) {
                push(inst, out);
            }
        } else {
            for start in self.occurrences(to, limits, problems) {
                let rid = start.recurrence_id(&m.zones);
                if overridden.contains(&rid) || excluded.holds(start, &m.zones) {
                    continue;
                }
                let inst = m.instance_at(start, Some(rid));
                if in_window(&inst) && !push(inst, out) {
                    cut = true;
                    break;
                }
            }
        }
        for ov in &self.overrides {
            let inst = ov.instance_at(ov.start, ov.recurrence_id);
            if in_window(&inst) && !push(inst, out) {
                cut = true;
            }
        }
        if cut {
            problems.push(FeedProblem::new(
                Some(&m.uid),
                Some(m.line),
                ProblemAction::Repaired,
                format!(
                    "more than {} instances in the window; the rest are left out",
                    limits.max_instances_per_series
                ),
            ));
        }
    }

    /// EXDATEs as the instants and dates they exclude, so that a feed with thousands of them
    /// costs a lookup per occurrence, not a scan.
    fn exclusions(&self) -> Exclusions {
        let m = &self.master;
        let mut ex = Exclusions::default();
        for e in &m.exdates {
            match (e, m.start) {
                (When::Date(d), _) => {
                    ex.dates.insert(*d);
                }
                (e, When::Date(_)) => {
                    ex.dates.insert(e.wall().date());
                }
                (e, _) => {
                    ex.instants.insert(e.to_utc(&m.zones));
                }
            }
        }
        ex
    }

    /// The series' original starts (DTSTART, the rule's, RDATEs), deduplicated, up to the
    /// last one that can start before `to`.
    fn occurrences(
        &self,
        to: DateTime<Utc>,
        limits: &Limits,
        problems: &mut Vec<FeedProblem>,
    ) -> Vec<When> {
        let m = &self.master;
        // No zone is more than 14 h ahead of UTC: a wall time past `to` + 14 h (+ a margin
        // for a gap) starts after `to` wherever it is.
        let wall_limit = to.naive_utc() + Duration::hours(40);
        let mut starts = vec![m.start];
        if let Some(rule) = &m.rule {
            let mut taken: u32 = 1;
            let mut steps = 0usize;
            for occ in &rule.set {
                steps += 1;
                if steps > limits.max_steps_per_series {
                    problems.push(FeedProblem::new(
                        Some(&m.uid),
                        Some(m.line),
                        ProblemAction::Repaired,
                        format!(
                            "recurrence stopped after {} steps before reaching the window end",
                            limits.max_steps_per_series
                        ),
                    ));
                    break;
                }
                let wall = occ.naive_utc();
                if wall > wall_limit {
                    break;
                }
                let when = match m.start {
                    When::Utc(_) => When::Utc(wall.and_utc()),
                    When::Local(_, tz) => When::Local(wall, tz),
                    When::Date(_) => When::Date(wall.date()),
                };
                if when == m.start {
                    // DTSTART is already the first instance and counts as one.
                    continue;
                }
                if let Some(until) = rule.until {
                    if !until_admits(until, when, &m.zones) {
                        break;
                    }
                }
                if let Some(count) = rule.count {
                    if taken >= count {
                        break;
                    }
                }
                taken += 1;
                starts.push(when);
            }
        }
        let mut seen: HashSet<RecurrenceId> =
            starts.iter().map(|s| s.recurrence_id(&m.zones)).collect();
        for rd in &m.rdates {
            let rd = match (m.start, *rd) {
                // An RDATE date in a timed series keeps the series' time of day.
                (When::Local(n, tz), When::Date(d)) => When::Local(d.and_time(n.time()), tz),
                (When::Utc(t), When::Date(d)) => When::Utc(d.and_time(t.time()).and_utc()),
                (When::Date(_), other) => When::Date(other.wall().date()),
                (_, other) => other,
            };
            if seen.insert(rd.recurrence_id(&m.zones)) {
                starts.push(rd);
            }
        }
        starts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn cal(events: &str) -> Calendar {
        let text = format!("BEGIN:VCALENDAR\r\nVERSION:2.0\r\n{events}END:VCALENDAR\r\n");
        parse(&text, chrono_tz::Europe::Berlin).unwrap()
    }

    fn starts(c: &Calendar, from: &str, to: &str) -> Vec<String> {
        c.expand(utc(from), utc(to))
            .iter()
            .map(|i| utc_text(i.start_utc))
            .collect()
    }

    fn reasons(c: &Calendar) -> Vec<String> {
        c.problems.iter().map(|p| p.reason.clone()).collect()
    }

    #[test]
    fn a_text_without_a_calendar_is_refused() {
        assert_eq!(
            parse("hello\n", Tz::UTC).unwrap_err(),
            NotACalendar::NoCalendar
        );
        let big = "X".repeat(100);
        let limits = Limits {
            max_bytes: 10,
            ..Limits::default()
        };
        assert!(matches!(
            parse_with_limits(&big, Tz::UTC, limits),
            Err(NotACalendar::TooLarge { .. })
        ));
    }

    #[test]
    fn gap_times_move_forward_and_fold_times_take_the_first() {
        let berlin = chrono_tz::Europe::Berlin;
        let gap = NaiveDate::from_ymd_opt(2026, 3, 29)
            .unwrap()
            .and_hms_opt(2, 30, 0)
            .unwrap();
        assert_eq!(local_to_utc(gap, berlin), utc("2026-03-29T01:30:00Z"));
        let fold = NaiveDate::from_ymd_opt(2026, 10, 25)
            .unwrap()
            .and_hms_opt(2, 30, 0)
            .unwrap();
        assert_eq!(local_to_utc(fold, berlin), utc("2026-10-25T00:30:00Z"));
    }

    #[test]
    fn folded_lines_quoted_params_and_escapes_are_read() {
        let c = cal(concat!(
            "BEGIN:VEVENT\r\nUID:a\r\nDTSTART;TZID=\"W. Europe Standard Time\":20260601T090000\r\n",
            "DTEND;TZID=\"W. Europe Standard Time\":20260601T100000\r\n",
            "SUMMARY:Board\\, quarterly\r\n  review\r\nLOCATION:Room\\;A\r\nEND:VEVENT\r\n"
        ));
        let i = &c.expand(utc("2026-06-01T00:00:00Z"), utc("2026-06-02T00:00:00Z"))[0];
        assert_eq!(i.summary.as_deref(), Some("Board, quarterly review"));
        assert_eq!(i.location.as_deref(), Some("Room;A"));
        assert_eq!(utc_text(i.start_utc), "2026-06-01T07:00:00Z");
        assert!(c.problems.is_empty(), "{:?}", c.problems);
    }

    #[test]
    fn count_includes_dtstart_even_off_rule_and_exdates_still_count() {
        // DTSTART is a Sunday, the rule says Mondays: Sunday + 2 Mondays = COUNT 3.
        let c = cal(concat!(
            "BEGIN:VEVENT\r\nUID:c\r\nDTSTART:20260607T090000Z\r\nDTEND:20260607T100000Z\r\n",
            "RRULE:FREQ=WEEKLY;BYDAY=MO;COUNT=3\r\nEXDATE:20260608T090000Z\r\nEND:VEVENT\r\n"
        ));
        assert_eq!(
            starts(&c, "2026-06-01T00:00:00Z", "2026-07-01T00:00:00Z"),
            vec!["2026-06-07T09:00:00Z", "2026-06-15T09:00:00Z"]
        );
    }

    #[test]
    fn until_is_inclusive() {
        let c = cal(concat!(
            "BEGIN:VEVENT\r\nUID:u\r\nDTSTART;TZID=Europe/Berlin:20260601T090000\r\n",
            "DURATION:PT1H\r\nRRULE:FREQ=DAILY;UNTIL=20260603T070000Z\r\nEND:VEVENT\r\n"
        ));
        assert_eq!(
            starts(&c, "2026-06-01T00:00:00Z", "2026-07-01T00:00:00Z").len(),
            3
        );
    }

    #[test]
    fn a_bad_rrule_skips_its_series_and_keeps_the_rest() {
        let c = cal(concat!(
            "BEGIN:VEVENT\r\nUID:bad\r\nDTSTART:20260601T090000Z\r\nRRULE:FREQ=SOMETIMES\r\nEND:VEVENT\r\n",
            "BEGIN:VEVENT\r\nUID:good\r\nDTSTART:20260601T090000Z\r\nEND:VEVENT\r\n"
        ));
        assert_eq!(c.series_count(), 1);
        assert!(reasons(&c)[0].contains("RRULE"), "{:?}", c.problems);
        assert_eq!(c.problems[0].action, ProblemAction::Skipped);
    }

    #[test]
    fn dtend_before_dtstart_skips_the_series() {
        let c = cal(
            "BEGIN:VEVENT\r\nUID:x\r\nDTSTART:20260601T090000Z\r\nDTEND:20260601T080000Z\r\nEND:VEVENT\r\n",
        );
        assert_eq!(c.series_count(), 0);
        assert_eq!(reasons(&c), vec!["DTEND is before DTSTART"]);
    }

    #[test]
    fn until_before_dtstart_skips_the_series() {
        let c = cal(concat!(
            "BEGIN:VEVENT\r\nUID:x\r\nDTSTART:20260601T090000Z\r\n",
            "RRULE:FREQ=DAILY;UNTIL=20260501T000000Z\r\nEND:VEVENT\r\n"
        ));
        assert_eq!(c.series_count(), 0);
        assert_eq!(reasons(&c), vec!["RRULE UNTIL is before DTSTART"]);
    }

    #[test]
    fn a_stray_line_is_skipped_with_its_line_number() {
        let c = cal("this is not a property\r\nBEGIN:VEVENT\r\nUID:x\r\nDTSTART:20260601T090000Z\r\nEND:VEVENT\r\n");
        assert_eq!(c.series_count(), 1);
        assert_eq!(c.problems[0].line, Some(3));
        assert!(c.problems[0].reason.starts_with("stray line"));
    }

    #[test]
    fn duplicated_uids_keep_the_highest_sequence() {
        let c = cal(concat!(
            "BEGIN:VEVENT\r\nUID:d\r\nSEQUENCE:1\r\nDTSTART:20260601T090000Z\r\nSUMMARY:old\r\nEND:VEVENT\r\n",
            "BEGIN:VEVENT\r\nUID:d\r\nSEQUENCE:2\r\nDTSTART:20260601T100000Z\r\nSUMMARY:new\r\nEND:VEVENT\r\n"
        ));
        let got = c.expand(utc("2026-06-01T00:00:00Z"), utc("2026-06-02T00:00:00Z"));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].summary.as_deref(), Some("new"));
        assert_eq!(c.problems[0].action, ProblemAction::Repaired);
    }

    #[test]
    fn two_rrules_use_the_first() {
        let c = cal(concat!(
            "BEGIN:VEVENT\r\nUID:t\r\nDTSTART:20260601T090000Z\r\n",
            "RRULE:FREQ=DAILY;COUNT=2\r\nRRULE:FREQ=WEEKLY;COUNT=5\r\nEND:VEVENT\r\n"
        ));
        assert_eq!(
            starts(&c, "2026-06-01T00:00:00Z", "2026-08-01T00:00:00Z").len(),
            2
        );
        assert!(reasons(&c)[0].contains("more than one RRULE"));
    }

    #[test]
    fn an_override_before_its_master_replaces_its_instance() {
        let c = cal(concat!(
            "BEGIN:VEVENT\r\nUID:o\r\nRECURRENCE-ID:20260602T090000Z\r\nDTSTART:20260602T130000Z\r\n",
            "DTEND:20260602T140000Z\r\nEND:VEVENT\r\n",
            "BEGIN:VEVENT\r\nUID:o\r\nDTSTART:20260601T090000Z\r\nDTEND:20260601T100000Z\r\n",
            "RRULE:FREQ=DAILY;COUNT=3\r\nEND:VEVENT\r\n"
        ));
        assert_eq!(
            starts(&c, "2026-06-01T00:00:00Z", "2026-07-01T00:00:00Z"),
            vec![
                "2026-06-01T09:00:00Z",
                "2026-06-02T13:00:00Z",
                "2026-06-03T09:00:00Z"
            ]
        );
    }

    #[test]
    fn a_runaway_rule_is_bounded_per_window() {
        let c = cal(concat!(
            "BEGIN:VEVENT\r\nUID:r\r\nDTSTART:20260601T000000Z\r\n",
            "RRULE:FREQ=MINUTELY\r\nEND:VEVENT\r\n"
        ));
        let (got, problems) =
            c.expand_with_problems(utc("2026-06-01T00:00:00Z"), utc("2026-07-01T00:00:00Z"));
        assert_eq!(got.len(), Limits::default().max_instances_per_series);
        assert_eq!(problems.len(), 1);
    }

    #[test]
    fn an_unknown_tzid_uses_its_vtimezone_and_without_one_skips_the_event() {
        let c = cal(concat!(
            "BEGIN:VTIMEZONE\r\nTZID:Customized Time Zone\r\nBEGIN:STANDARD\r\n",
            "DTSTART:16010101T000000\r\nTZOFFSETFROM:+0530\r\nTZOFFSETTO:+0530\r\n",
            "END:STANDARD\r\nEND:VTIMEZONE\r\n",
            "BEGIN:VEVENT\r\nUID:v\r\nDTSTART;TZID=Customized Time Zone:20260601T090000\r\nEND:VEVENT\r\n",
            "BEGIN:VEVENT\r\nUID:w\r\nDTSTART;TZID=Nowhere:20260601T090000\r\nEND:VEVENT\r\n"
        ));
        assert_eq!(
            starts(&c, "2026-06-01T00:00:00Z", "2026-06-02T00:00:00Z"),
            vec!["2026-06-01T03:30:00Z"]
        );
        assert_eq!(c.problems.len(), 1);
        assert!(c.problems[0].reason.contains("unknown TZID \"Nowhere\""));
        assert_eq!(parse_utc_offset("-0500"), Some(-5 * 3600));
        assert_eq!(parse_utc_offset("+053000"), Some(5 * 3600 + 30 * 60));
        assert_eq!(parse_utc_offset("0100"), None);
    }

    #[test]
    fn thousands_of_rdates_and_exdates_are_sets_not_scans() {
        // 20,000 RDATEs (every 10 minutes), every second one EXDATE'd.
        let base = utc("2026-06-01T00:00:00Z");
        let stamp = |i: i64| {
            (base + Duration::minutes(10 * i))
                .format("%Y%m%dT%H%M%SZ")
                .to_string()
        };
        let rdates: Vec<String> = (1..=20_000).map(stamp).collect();
        let exdates: Vec<String> = (1..=20_000).step_by(2).map(stamp).collect();
        let c = cal(&format!(
            "BEGIN:VEVENT\r\nUID:many\r\nDTSTART:20260601T000000Z\r\nRDATE:{}\r\nEXDATE:{}\r\nEND:VEVENT\r\n",
            rdates.join(","),
            exdates.join(",")
        ));
        let limits = Limits {
            max_instances_per_series: 100_000,
            ..Limits::default()
        };
        let c = Calendar { limits, ..c };
        let got = c.expand(base, base + Duration::days(365));
        // DTSTART lasts 0 s at the window's start, so it does not overlap it (end > from).
        assert_eq!(got.len(), 10_000);
    }

    #[test]
    fn durations_parse_nominal_days_and_exact_seconds() {
        assert_eq!(parse_duration("P1W"), Some((7, 0)));
        assert_eq!(parse_duration("P1DT2H30M"), Some((1, 9000)));
        assert_eq!(parse_duration("PT15M"), Some((0, 900)));
        assert_eq!(parse_duration("P"), None);
        assert_eq!(parse_duration("1H"), None);
    }

    #[test]
    fn importance_from_priority_or_category() {
        let c = cal(concat!(
            "BEGIN:VEVENT\r\nUID:p\r\nDTSTART:20260601T090000Z\r\nPRIORITY:3\r\nEND:VEVENT\r\n",
            "BEGIN:VEVENT\r\nUID:q\r\nDTSTART:20260601T100000Z\r\nPRIORITY:5\r\nEND:VEVENT\r\n",
            "BEGIN:VEVENT\r\nUID:k\r\nDTSTART:20260601T110000Z\r\nCATEGORIES:Board,Important\r\nEND:VEVENT\r\n"
        ));
        let got: Vec<bool> = c
            .expand(utc("2026-06-01T00:00:00Z"), utc("2026-06-02T00:00:00Z"))
            .iter()
            .map(|i| i.important)
            .collect();
        assert_eq!(got, vec![true, false, true]);
    }

    /// Found by the `ical_import` fuzz target: a multi-byte character in an RRULE part made
    /// the rrule crate panic on a byte offset inside it.
    #[test]
    fn non_ascii_rrule_skips_the_series_instead_of_panicking() {
        let feed = "BEGIN:VCALENDAR\nBEGIN:VEVENT\nUID:x\nDTSTART:20261001T100000Z\n\
                    RRULE:FREQ=WEEKLY;BYDAY=WE\u{fffd}\u{fffd}\u{fffd}\nEND:VEVENT\n\
                    BEGIN:VEVENT\nUID:y\nDTSTART:20261001T100000Z\nEND:VEVENT\nEND:VCALENDAR\n";
        let cal = parse(feed, Tz::UTC).expect("a calendar");
        assert_eq!(cal.series_count(), 1, "{:?}", cal.problems);
        assert!(
            cal.problems.iter().any(|p| p.reason.contains("ASCII")),
            "{:?}",
            cal.problems
        );
    }
}
