//! The monthly maintenance report (《客户投诉月统计表》, due by the 30th): per room and device,
//! faults by class with time to acknowledge and to resolve against the class deadlines,
//! availability, lamp and filter hours used with the forecast replacement date, batteries
//! replaced. Rendered as HTML or CSV.
//!
//! Owns the fault classes and their deadlines (domain.md, "Fault and complaint handling"), the
//! rule that classes a fault, and the arithmetic. Reads only the store (logbook entries,
//! counter samples, the archive), never the live daemon, so a report can be produced again
//! later and gives the same numbers. Must not write anything.
//!
//! Rules, as of the end of the month (month boundaries in the site's time zone):
//! - A fault incident opens at `fault_raised` (device, code, component); a raise while the same
//!   incident is open continues it (a restarted daemon raises present faults again). It is
//!   acknowledged by the first `fault_acknowledged` for the same key, resolved by
//!   `fault_cleared` or by a `repair_done` maintenance entry naming its code. Incidents open
//!   when the daemon restarts are resolved at the device's first `ok` health after the restart.
//!   The report counts incidents raised in the month.
//! - Response time is the time to acknowledgement, or to resolution when it was resolved
//!   without one. A deadline still running at the end of the month is not late (yet).
//! - Availability = time up / (time up + time down): up is ok, busy or degraded; down is
//!   faulted or unreachable; time while the daemon was not running or the device was not yet
//!   contacted is unknown and left out. A room is down while any of its devices is down.
//! - Hours used in the month = the sum of increases of the device's counter (a drop means the
//!   device reset it at a replacement: the new value counts). A swapped unit starts a new
//!   series. Forecast = end of month + (rated life − use since replacement) / (use per day
//!   this month).
//! - The playbook's alerts raised in the month (its alerts table) are counted in their own
//!   class (graded in the room's context by the site's rules) with time to acknowledge, time
//!   to resolve and whether the response deadline was met (acknowledged, or resolved, by it;
//!   not yet decided while it still runs at the end of the month). A fault incident the
//!   playbook raised an alert for (same device, code and component, raised while it was open)
//!   takes the alert's class and deadlines instead of the logbook's rule.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use chrono_tz::Tz;
use rusqlite::Connection;
use serde::Serialize;
use serde_json::Value as Json;

use super::logbook::{Entry, Head};
use super::{archive, format_time, to_micros, StoreError};
use crate::model::Severity;

pub use crate::model::plan::{fault_class, local_midnight, FaultClass};

/// A calendar month in the site's time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Month {
    pub year: i32,
    pub month: u32,
}

impl Month {
    /// `YYYY-MM`.
    pub fn parse(s: &str) -> Result<Month, String> {
        let (y, m) = s
            .split_once('-')
            .ok_or_else(|| format!("{s:?} is not a month (YYYY-MM)"))?;
        let year: i32 = y.parse().map_err(|_| format!("{s:?}: bad year"))?;
        let month: u32 = m.parse().map_err(|_| format!("{s:?}: bad month"))?;
        if !(1..=12).contains(&month) || y.len() != 4 || m.len() != 2 {
            return Err(format!("{s:?} is not a month (YYYY-MM)"));
        }
        Ok(Month { year, month })
    }

    pub fn first_day(self) -> NaiveDate {
        NaiveDate::from_ymd_opt(self.year, self.month, 1).unwrap_or_default()
    }

    pub fn next(self) -> Month {
        if self.month == 12 {
            Month {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Month {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    pub fn bounds(self, tz: Tz) -> (DateTime<Utc>, DateTime<Utc>) {
        (
            local_midnight(self.first_day(), tz),
            local_midnight(self.next().first_day(), tz),
        )
    }

    pub fn days(self) -> i64 {
        (self.next().first_day() - self.first_day()).num_days()
    }
}

impl std::fmt::Display for Month {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

/// One fault from raise to resolution.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Incident {
    pub device: String,
    pub room: Option<String>,
    pub code: String,
    pub component: Option<String>,
    pub class: FaultClass,
    pub message: String,
    pub raised: DateTime<Utc>,
    pub booking: Option<String>,
    pub acknowledged: Option<DateTime<Utc>>,
    pub acknowledged_by: Option<String>,
    pub resolved: Option<DateTime<Utc>>,
    /// `device` (it cleared the fault) or the actor of the repair.
    pub resolved_by: Option<String>,
    pub response_deadline: DateTime<Utc>,
    pub resolution_deadline: DateTime<Utc>,
    /// The playbook's alert for this fault, when it raised one: its class and deadlines are
    /// then the incident's (graded in the room's context, by the site's rules).
    pub alert: Option<u64>,
    /// Not yet acknowledged or resolved when the daemon restarted (see module rules).
    #[serde(skip)]
    unconfirmed: bool,
}

impl Incident {
    /// Acknowledgement, or resolution when there was none.
    pub fn responded(&self) -> Option<DateTime<Utc>> {
        match (self.acknowledged, self.resolved) {
            (Some(a), Some(r)) => Some(a.min(r)),
            (a, r) => a.or(r),
        }
    }

    pub fn response_late(&self, end: DateTime<Utc>) -> bool {
        match self.responded() {
            Some(t) => t > self.response_deadline,
            None => end > self.response_deadline,
        }
    }

    pub fn resolution_late(&self, end: DateTime<Utc>) -> bool {
        match self.resolved {
            Some(t) => t > self.resolution_deadline,
            None => end > self.resolution_deadline,
        }
    }
}

/// Faults of one class, for a device or a room.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ClassStats {
    pub count: u32,
    pub responded: u32,
    pub response_late: u32,
    pub resolved: u32,
    pub resolution_late: u32,
    pub open_at_end: u32,
    pub total_response_secs: i64,
    pub max_response_secs: i64,
    pub total_resolution_secs: i64,
    pub max_resolution_secs: i64,
}

impl ClassStats {
    fn add(&mut self, i: &Incident, end: DateTime<Utc>) {
        self.count += 1;
        if let Some(t) = i.responded() {
            let s = (t - i.raised).num_seconds();
            self.responded += 1;
            self.total_response_secs += s;
            self.max_response_secs = self.max_response_secs.max(s);
        }
        if let Some(t) = i.resolved {
            let s = (t - i.raised).num_seconds();
            self.resolved += 1;
            self.total_resolution_secs += s;
            self.max_resolution_secs = self.max_resolution_secs.max(s);
        } else {
            self.open_at_end += 1;
        }
        self.response_late += u32::from(i.response_late(end));
        self.resolution_late += u32::from(i.resolution_late(end));
    }

    pub fn mean_response_minutes(&self) -> Option<f64> {
        (self.responded > 0)
            .then(|| self.total_response_secs as f64 / 60.0 / f64::from(self.responded))
    }

    pub fn mean_resolution_hours(&self) -> Option<f64> {
        (self.resolved > 0)
            .then(|| self.total_resolution_secs as f64 / 3600.0 / f64::from(self.resolved))
    }
}

/// One of the playbook's alerts raised in the month, as its alerts table holds it at the end
/// of the month.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertIncident {
    pub id: u64,
    pub room: Option<String>,
    /// `r101-mics`, `room r101`, `feed …`, `store`.
    pub subject: String,
    /// The playbook's fault kind (`battery_critical`).
    pub fault: String,
    /// The device's own fault code behind it, when it came from one (`battery_low`).
    pub code: Option<String>,
    pub component: Option<String>,
    pub class: FaultClass,
    /// The room's context when it was graded (`in_meeting`, `before_meeting`, `idle`).
    pub context: Option<String>,
    pub raised: DateTime<Utc>,
    pub respond_by: DateTime<Utc>,
    pub resolve_by: DateTime<Utc>,
    pub acknowledged: Option<DateTime<Utc>>,
    pub acknowledged_by: Option<String>,
    pub resolved: Option<DateTime<Utc>>,
    /// `None` when it resolved itself.
    pub resolved_by: Option<String>,
}

impl AlertIncident {
    pub fn time_to_acknowledge(&self) -> Option<Duration> {
        self.acknowledged.map(|a| a - self.raised)
    }

    pub fn time_to_resolve(&self) -> Option<Duration> {
        self.resolved.map(|r| r - self.raised)
    }

    /// Whether the response deadline was met: acknowledged (or resolved, which needs no
    /// answer any more) by `respond_by`. `None` while it is still running at `end`.
    pub fn response_met(&self, end: DateTime<Utc>) -> Option<bool> {
        let responded = match (self.acknowledged, self.resolved) {
            (Some(a), Some(r)) => Some(a.min(r)),
            (a, r) => a.or(r),
        };
        match responded {
            Some(t) => Some(t <= self.respond_by),
            None if end > self.respond_by => Some(false),
            None => None,
        }
    }

    /// The alert as the store keeps it; `None` for a body that is not an alert.
    fn from_record(a: &super::alerts::AlertRecord, tz: Tz) -> Option<AlertIncident> {
        let body: Json = serde_json::from_str(&a.body).ok()?;
        let time = |k: &str| {
            body.get(k)
                .and_then(|v| serde_json::from_value::<DateTime<Utc>>(v.clone()).ok())
        };
        let class = FaultClass::parse(&a.class)?;
        Some(AlertIncident {
            id: a.id,
            room: a.room.clone(),
            subject: a.subject.clone(),
            fault: a.fault.clone(),
            code: str_at(&body, &["code"]).map(str::to_owned),
            component: str_at(&body, &["component"]).map(str::to_owned),
            class,
            context: str_at(&body, &["context"]).map(str::to_owned),
            raised: a.raised_at,
            respond_by: time("respond_by")
                .unwrap_or_else(|| class.response_deadline(a.raised_at, tz)),
            resolve_by: time("resolve_by")
                .unwrap_or_else(|| class.resolution_deadline(a.raised_at)),
            acknowledged: a.acknowledged_at,
            acknowledged_by: a.acknowledged_by.clone(),
            resolved: a.resolved_at,
            resolved_by: str_at(&body, &["resolved_by"]).map(str::to_owned),
        })
    }
}

/// The playbook's alerts of one class in the month.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AlertClassStats {
    pub count: u32,
    pub acknowledged: u32,
    pub response_met: u32,
    pub response_missed: u32,
    pub resolved: u32,
    pub open_at_end: u32,
    pub total_acknowledge_secs: i64,
    pub max_acknowledge_secs: i64,
    pub total_resolve_secs: i64,
    pub max_resolve_secs: i64,
}

impl AlertClassStats {
    fn add(&mut self, a: &AlertIncident, end: DateTime<Utc>) {
        self.count += 1;
        if let Some(d) = a.time_to_acknowledge() {
            let s = d.num_seconds();
            self.acknowledged += 1;
            self.total_acknowledge_secs += s;
            self.max_acknowledge_secs = self.max_acknowledge_secs.max(s);
        }
        if let Some(d) = a.time_to_resolve() {
            let s = d.num_seconds();
            self.resolved += 1;
            self.total_resolve_secs += s;
            self.max_resolve_secs = self.max_resolve_secs.max(s);
        } else {
            self.open_at_end += 1;
        }
        match a.response_met(end) {
            Some(true) => self.response_met += 1,
            Some(false) => self.response_missed += 1,
            None => {}
        }
    }

    pub fn mean_acknowledge_minutes(&self) -> Option<f64> {
        (self.acknowledged > 0)
            .then(|| self.total_acknowledge_secs as f64 / 60.0 / f64::from(self.acknowledged))
    }

    pub fn mean_resolve_hours(&self) -> Option<f64> {
        (self.resolved > 0)
            .then(|| self.total_resolve_secs as f64 / 3600.0 / f64::from(self.resolved))
    }
}

/// Use of a lamp or the filter.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Wear {
    /// `lamp.1.hours`, `filter.hours`.
    pub counter: String,
    pub used_in_month: f64,
    /// Use since the last replacement/cleaning, at the end of the month.
    pub since_service: Option<f64>,
    pub life: Option<f64>,
    /// Local date when the rated life is reached at this month's rate.
    pub forecast: Option<NaiveDate>,
    /// The rated life is already reached.
    pub overdue: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceReport {
    pub device: String,
    pub room: Option<String>,
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub up_secs: i64,
    pub down_secs: i64,
    pub faults: BTreeMap<FaultClass, ClassStats>,
    pub lamps: Vec<Wear>,
    pub filter: Option<Wear>,
    pub batteries_replaced: u32,
}

impl DeviceReport {
    pub fn availability(&self) -> Option<f64> {
        availability(self.up_secs, self.down_secs)
    }
}

fn availability(up: i64, down: i64) -> Option<f64> {
    (up + down > 0).then(|| up as f64 / (up + down) as f64)
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoomReport {
    /// Empty for devices without a room.
    pub room: String,
    pub up_secs: i64,
    pub down_secs: i64,
    pub faults: BTreeMap<FaultClass, ClassStats>,
    pub batteries_replaced: u32,
    pub devices: Vec<DeviceReport>,
}

impl RoomReport {
    pub fn availability(&self) -> Option<f64> {
        availability(self.up_secs, self.down_secs)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MonthlyReport {
    pub month: String,
    pub tz: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// Entries dated in the month.
    pub entries: u64,
    /// The logbook's last entry when the report was made: note it elsewhere to anchor the
    /// chain (see logbook.rs).
    pub head_seq: u64,
    pub head_hash: String,
    pub rooms: Vec<RoomReport>,
    pub incidents: Vec<Incident>,
    /// The playbook's alerts raised in the month, oldest first.
    pub alerts: Vec<AlertIncident>,
    /// Those alerts per class (every class, zero when none).
    pub alert_classes: BTreeMap<FaultClass, AlertClassStats>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Avail {
    Up,
    Down,
    Unknown,
}

/// Availability changes of one device in time order.
type Timeline = Vec<(DateTime<Utc>, Avail)>;

fn avail_of(health: &str) -> Avail {
    match health {
        "ok" | "busy" | "degraded" => Avail::Up,
        "faulted" | "unreachable" => Avail::Down,
        _ => Avail::Unknown,
    }
}

#[derive(Default)]
struct DeviceAcc {
    room: Option<String>,
    /// Availability changes in time order, starting at the month start.
    changes: Timeline,
    batteries: u32,
}

impl DeviceAcc {
    fn set(&mut self, at: DateTime<Utc>, a: Avail) {
        if self.changes.last().map(|c| c.1) != Some(a) {
            self.changes.push((at, a));
        }
    }
}

fn str_at<'a>(v: &'a Json, path: &[&str]) -> Option<&'a str> {
    let mut v = v;
    for p in path {
        v = v.get(p)?;
    }
    v.as_str()
}

/// Build the report for `month` from the store.
pub fn monthly(conn: &Connection, month: Month, tz: Tz) -> Result<MonthlyReport, StoreError> {
    let (start, end) = month.bounds(tz);
    let (start_us, end_us) = (to_micros(start), to_micros(end));
    let mut devices: BTreeMap<String, DeviceAcc> = BTreeMap::new();

    // State at the start of the month: was the daemon running, and each device's last health
    // since it last started.
    let last_daemon: Option<(String, i64)> = conn
        .prepare(
            "SELECT kind, seq FROM logbook WHERE kind IN ('daemon_started', 'daemon_stopping')
             AND at_us < ?1 ORDER BY at_us DESC, seq DESC LIMIT 1",
        )?
        .query_map([start_us], |r| Ok((r.get(0)?, r.get(1)?)))?
        .next()
        .transpose()?;
    let running_since = match &last_daemon {
        Some((k, seq)) if k == "daemon_started" => Some(*seq),
        _ => None,
    };
    {
        let mut stmt = conn.prepare(
            "SELECT device, room, data, seq FROM logbook WHERE seq IN (
                 SELECT max(seq) FROM logbook WHERE kind = 'health_changed' AND at_us < ?1
                 GROUP BY device)",
        )?;
        let mut rows = stmt.query([start_us])?;
        while let Some(r) = rows.next()? {
            let (device, room, data, seq): (Option<String>, Option<String>, String, i64) =
                (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
            let Some(device) = device else { continue };
            let data: Json = serde_json::from_str(&data).unwrap_or(Json::Null);
            let a = match running_since {
                Some(since) if seq > since => avail_of(str_at(&data, &["to"]).unwrap_or("")),
                _ => Avail::Unknown,
            };
            let acc = devices.entry(device).or_default();
            acc.room = room;
            acc.set(start, a);
        }
    }

    // The month, in time order.
    let mut open: BTreeMap<(String, String, Option<String>), usize> = BTreeMap::new();
    let mut incidents: Vec<Incident> = Vec::new();
    let mut entries = 0u64;
    let mut stmt = conn.prepare(&format!(
        "SELECT {} FROM logbook WHERE at_us >= ?1 AND at_us < ?2 ORDER BY at_us, seq",
        Entry::COLUMNS
    ))?;
    let mut rows = stmt.query([start_us, end_us])?;
    while let Some(row) = rows.next()? {
        let e = Entry::from_row(row)?;
        entries += 1;
        let at = e.at();
        let data = e.data_json();
        if let Some(d) = &e.device {
            let acc = devices.entry(d.clone()).or_default();
            if acc.room.is_none() {
                acc.room = e.room.clone();
            }
        }
        match e.kind.as_str() {
            "daemon_started" | "daemon_stopping" => {
                for acc in devices.values_mut() {
                    acc.set(at, Avail::Unknown);
                }
                if e.kind == "daemon_started" {
                    for i in incidents.iter_mut().filter(|i| i.resolved.is_none()) {
                        i.unconfirmed = true;
                    }
                }
            }
            "health_changed" => {
                let Some(d) = &e.device else { continue };
                let to = str_at(&data, &["to"]).unwrap_or("");
                if let Some(acc) = devices.get_mut(d) {
                    acc.set(at, avail_of(to));
                }
                if to == "ok" {
                    for (key, idx) in open.clone() {
                        if &key.0 == d && incidents[idx].unconfirmed {
                            incidents[idx].resolved = Some(at);
                            incidents[idx].resolved_by = Some("device".into());
                            open.remove(&key);
                        }
                    }
                }
            }
            "fault_raised" => {
                let Some(d) = e.device.clone() else { continue };
                let code = str_at(&data, &["fault", "code"]).unwrap_or("").to_owned();
                let component = str_at(&data, &["fault", "component"]).map(str::to_owned);
                let key = (d.clone(), code.clone(), component.clone());
                if let Some(&idx) = open.get(&key) {
                    incidents[idx].unconfirmed = false;
                    continue;
                }
                let severity = match str_at(&data, &["fault", "severity"]) {
                    Some("warning") => Severity::Warning,
                    _ => Severity::Fault,
                };
                let explicit = str_at(&data, &["class"]).and_then(FaultClass::parse);
                let class = fault_class(severity, explicit, e.booking.is_some());
                open.insert(key, incidents.len());
                incidents.push(Incident {
                    device: d,
                    room: e.room.clone(),
                    code,
                    component,
                    class,
                    message: str_at(&data, &["fault", "message"])
                        .unwrap_or("")
                        .to_owned(),
                    raised: at,
                    booking: e.booking.clone(),
                    acknowledged: None,
                    acknowledged_by: None,
                    resolved: None,
                    resolved_by: None,
                    response_deadline: class.response_deadline(at, tz),
                    resolution_deadline: class.resolution_deadline(at),
                    alert: None,
                    unconfirmed: false,
                });
            }
            "fault_acknowledged" => {
                let Some(d) = e.device.clone() else { continue };
                let key = (
                    d,
                    str_at(&data, &["code"]).unwrap_or("").to_owned(),
                    str_at(&data, &["component"]).map(str::to_owned),
                );
                if let Some(&idx) = open.get(&key) {
                    let i = &mut incidents[idx];
                    if i.acknowledged.is_none() {
                        i.acknowledged = Some(at);
                        i.acknowledged_by = Some(e.actor().to_string());
                    }
                }
            }
            "fault_cleared" => {
                let Some(d) = e.device.clone() else { continue };
                let key = (
                    d,
                    str_at(&data, &["fault", "code"]).unwrap_or("").to_owned(),
                    str_at(&data, &["fault", "component"]).map(str::to_owned),
                );
                if let Some(idx) = open.remove(&key) {
                    incidents[idx].resolved = Some(at);
                    incidents[idx].resolved_by = Some("device".into());
                }
            }
            "maintenance" => {
                let Some(d) = e.device.clone() else { continue };
                match str_at(&data, &["action"]) {
                    Some("batteries_replaced") => {
                        let n = data.get("count").and_then(Json::as_u64).unwrap_or(1);
                        if let Some(acc) = devices.get_mut(&d) {
                            acc.batteries += u32::try_from(n).unwrap_or(u32::MAX);
                        }
                    }
                    Some("repair_done") => {
                        let Some(code) = str_at(&data, &["fault"]) else {
                            continue;
                        };
                        let component = str_at(&data, &["component"]);
                        let hit: Vec<_> = open
                            .keys()
                            .filter(|k| {
                                k.0 == d
                                    && k.1 == code
                                    && (component.is_none() || k.2.as_deref() == component)
                            })
                            .cloned()
                            .collect();
                        for key in hit {
                            if let Some(idx) = open.remove(&key) {
                                incidents[idx].resolved = Some(at);
                                incidents[idx].resolved_by = Some(e.actor().to_string());
                            }
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    drop(rows);
    drop(stmt);

    // The playbook's alerts: counted by their own class, and the class of the fault behind
    // each (graded in its room's context) replaces the logbook's rule for that incident.
    let alerts: Vec<AlertIncident> = super::alerts::alerts_between(conn, start, end)?
        .iter()
        .filter_map(|a| AlertIncident::from_record(a, tz))
        .collect();
    let mut alert_classes: BTreeMap<FaultClass, AlertClassStats> = FaultClass::ALL
        .iter()
        .map(|c| (*c, AlertClassStats::default()))
        .collect();
    for a in &alerts {
        alert_classes.entry(a.class).or_default().add(a, end);
    }
    link_alerts(&mut incidents, &alerts, end);

    // Devices the archive knows but the month never mentioned are in the report too.
    for rec in archive::list(conn)? {
        let acc = devices.entry(rec.device.clone()).or_default();
        if rec.room.is_some() {
            acc.room = rec.room.clone();
        }
    }

    let mut rooms: BTreeMap<String, RoomReport> = BTreeMap::new();
    let mut room_changes: BTreeMap<String, Vec<Timeline>> = BTreeMap::new();
    for (device, acc) in &devices {
        let rec = archive::get(conn, device)?;
        let (up, down) = durations(&acc.changes, start, end);
        let mut faults: BTreeMap<FaultClass, ClassStats> = FaultClass::ALL
            .iter()
            .map(|c| (*c, ClassStats::default()))
            .collect();
        for i in incidents.iter().filter(|i| &i.device == device) {
            faults.entry(i.class).or_default().add(i, end);
        }
        let (lamps, filter) = wear(conn, device, rec.as_ref(), month, tz, start, end)?;
        let room = acc.room.clone().unwrap_or_default();
        let report = DeviceReport {
            device: device.clone(),
            room: acc.room.clone(),
            manufacturer: rec
                .as_ref()
                .and_then(|r| r.manufacturer().map(str::to_owned)),
            model: rec.as_ref().and_then(|r| r.model().map(str::to_owned)),
            serial: rec.as_ref().and_then(|r| r.identity.serial.clone()),
            up_secs: up,
            down_secs: down,
            faults,
            lamps,
            filter,
            batteries_replaced: acc.batteries,
        };
        room_changes
            .entry(room.clone())
            .or_default()
            .push(acc.changes.clone());
        let r = rooms.entry(room.clone()).or_insert_with(|| RoomReport {
            room,
            up_secs: 0,
            down_secs: 0,
            faults: FaultClass::ALL
                .iter()
                .map(|c| (*c, ClassStats::default()))
                .collect(),
            batteries_replaced: 0,
            devices: Vec::new(),
        });
        r.batteries_replaced += report.batteries_replaced;
        for i in incidents.iter().filter(|i| &i.device == device) {
            r.faults.entry(i.class).or_default().add(i, end);
        }
        r.devices.push(report);
    }
    for (room, changes) in room_changes {
        let (up, down) = room_durations(&changes, start, end);
        if let Some(r) = rooms.get_mut(&room) {
            r.up_secs = up;
            r.down_secs = down;
        }
    }

    let head = Head::read(conn)?;
    incidents.sort_by(|a, b| (a.raised, &a.device).cmp(&(b.raised, &b.device)));
    Ok(MonthlyReport {
        month: month.to_string(),
        tz: tz.name().to_owned(),
        start,
        end,
        entries,
        head_seq: head.seq,
        head_hash: hex::encode(head.hash),
        rooms: rooms.into_values().collect(),
        incidents,
        alerts,
        alert_classes,
    })
}

/// Give each incident the playbook alert raised for it: same device, fault code and
/// component, raised while the incident was open (the alert follows its fault within the
/// same poll). Each alert goes to one incident.
fn link_alerts(incidents: &mut [Incident], alerts: &[AlertIncident], end: DateTime<Utc>) {
    let mut used = BTreeSet::new();
    for i in incidents.iter_mut() {
        let until = i.resolved.unwrap_or(end);
        let hit = alerts.iter().find(|a| {
            !used.contains(&a.id)
                && a.subject == i.device
                && a.code.as_deref() == Some(i.code.as_str())
                && a.component == i.component
                && a.raised >= i.raised - Duration::seconds(1)
                && a.raised <= until
        });
        if let Some(a) = hit {
            used.insert(a.id);
            i.alert = Some(a.id);
            i.class = a.class;
            i.response_deadline = a.respond_by;
            i.resolution_deadline = a.resolve_by;
        }
    }
}

/// Seconds up and down between `start` and `end` from a list of changes. Pure.
fn durations(
    changes: &[(DateTime<Utc>, Avail)],
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> (i64, i64) {
    let (mut up, mut down) = (0, 0);
    let mut cur = (start, Avail::Unknown);
    for &(at, a) in changes
        .iter()
        .chain(std::iter::once(&(end, Avail::Unknown)))
    {
        let at = at.clamp(start, end);
        let secs = (at - cur.0).num_seconds().max(0);
        match cur.1 {
            Avail::Up => up += secs,
            Avail::Down => down += secs,
            Avail::Unknown => {}
        }
        cur = (at.max(cur.0), a);
    }
    (up, down)
}

/// A room is down while any device is down, up while none is down and one is up. Pure.
fn room_durations(devices: &[Timeline], start: DateTime<Utc>, end: DateTime<Utc>) -> (i64, i64) {
    let mut points: BTreeSet<DateTime<Utc>> = BTreeSet::new();
    for ch in devices {
        points.extend(ch.iter().map(|c| c.0.clamp(start, end)));
    }
    points.insert(start);
    points.insert(end);
    let state_at = |ch: &[(DateTime<Utc>, Avail)], t: DateTime<Utc>| {
        ch.iter()
            .take_while(|c| c.0.clamp(start, end) <= t)
            .last()
            .map_or(Avail::Unknown, |c| c.1)
    };
    let points: Vec<_> = points.into_iter().collect();
    let (mut up, mut down) = (0, 0);
    for w in points.windows(2) {
        let states: Vec<Avail> = devices.iter().map(|ch| state_at(ch, w[0])).collect();
        let secs = (w[1] - w[0]).num_seconds();
        if states.contains(&Avail::Down) {
            down += secs;
        } else if states.contains(&Avail::Up) {
            up += secs;
        }
    }
    (up, down)
}

fn wear(
    conn: &Connection,
    device: &str,
    rec: Option<&archive::EquipmentRecord>,
    month: Month,
    tz: Tz,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<(Vec<Wear>, Option<Wear>), StoreError> {
    let names: Vec<String> = conn
        .prepare(
            "SELECT DISTINCT name FROM counter_samples WHERE device = ?1 AND at_us < ?2
             AND (name = 'filter.hours' OR (name LIKE 'lamp.%' AND name LIKE '%.hours'))
             ORDER BY name",
        )?
        .query_map(rusqlite::params![device, to_micros(end)], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut lamps = Vec::new();
    let mut filter = None;
    for name in names {
        // The series up to the end of the month: the last value before the month (unless a
        // reset follows it) and every sample in the month.
        let mut stmt = conn.prepare_cached(
            "SELECT at_us, value, reset FROM counter_samples
             WHERE device = ?1 AND name = ?2 AND at_us < ?3 ORDER BY at_us, rowid",
        )?;
        let samples: Vec<(i64, f64, bool)> = stmt
            .query_map(rusqlite::params![device, name, to_micros(end)], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? != 0))
            })?
            .collect::<Result<_, _>>()?;
        let start_us = to_micros(start);
        let mut used = 0.0;
        let mut prev: Option<f64> = None;
        let mut last_reset_us = i64::MIN;
        for (at, v, reset) in &samples {
            if *reset {
                prev = None;
                last_reset_us = *at;
                continue;
            }
            if let Some(p) = prev {
                if *at >= start_us {
                    used += if *v >= p { v - p } else { *v };
                }
            }
            prev = Some(*v);
        }
        let baseline = last_service_baseline(conn, device, &name, last_reset_us, to_micros(end))?;
        let since_service = prev.map(|v| match baseline {
            Some(b) if v >= b => v - b,
            _ => v,
        });
        let life = if name == "filter.hours" {
            rec.and_then(|r| r.filter_life_hours)
        } else {
            rec.and_then(|r| r.lamp_life_hours)
        };
        let rate_per_day = used / month.days() as f64;
        let (forecast, overdue) = match (life, since_service) {
            (Some(life), Some(s)) if s >= life => (
                Some((end - Duration::seconds(1)).with_timezone(&tz).date_naive()),
                true,
            ),
            (Some(life), Some(s)) if rate_per_day > 0.0 => {
                let days = (life - s) / rate_per_day;
                let secs = (days * 86_400.0).round() as i64;
                (
                    Some(
                        (end + Duration::seconds(secs))
                            .with_timezone(&tz)
                            .date_naive(),
                    ),
                    false,
                )
            }
            _ => (None, false),
        };
        let w = Wear {
            counter: name.clone(),
            used_in_month: used,
            since_service,
            life,
            forecast,
            overdue,
        };
        if name == "filter.hours" {
            filter = Some(w);
        } else {
            lamps.push(w);
        }
    }
    Ok((lamps, filter))
}

/// The counter's value at its last maintenance (from the entry's `counters_before`) after the
/// last unit swap and before `end_us`.
fn last_service_baseline(
    conn: &Connection,
    device: &str,
    counter: &str,
    after_us: i64,
    end_us: i64,
) -> Result<Option<f64>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT data FROM logbook WHERE device = ?1 AND kind = 'maintenance'
         AND at_us >= ?2 AND at_us < ?3 ORDER BY at_us DESC, seq DESC",
    )?;
    let mut rows = stmt.query(rusqlite::params![device, after_us, end_us])?;
    while let Some(r) = rows.next()? {
        let data: String = r.get(0)?;
        let data: Json = serde_json::from_str(&data).unwrap_or(Json::Null);
        if let Some(v) = data.get("counters_before").and_then(|c| c.get(counter)) {
            // A counter that did not exist yet at the service starts from 0.
            return Ok(Some(v.as_f64().unwrap_or(0.0)));
        }
    }
    Ok(None)
}

// --- rendering ------------------------------------------------------------------------------

fn num(v: Option<f64>, decimals: usize) -> String {
    v.map_or(String::new(), |v| format!("{v:.decimals$}"))
}

fn pct(v: Option<f64>) -> String {
    num(v.map(|a| a * 100.0), 2)
}

fn date(d: Option<NaiveDate>) -> String {
    d.map_or(String::new(), |d| d.to_string())
}

/// The lamp that is due first, and the sum of all lamps' use.
fn lamp_summary(lamps: &[Wear]) -> (Option<f64>, Option<&Wear>) {
    let used = (!lamps.is_empty()).then(|| lamps.iter().map(|l| l.used_in_month).sum());
    let first = lamps
        .iter()
        .filter(|l| l.forecast.is_some())
        .min_by_key(|l| l.forecast)
        .or(lamps.first());
    (used, first)
}

pub const CSV_HEADER: [&str; 31] = [
    "room",
    "device",
    "manufacturer",
    "model",
    "serial",
    "availability_percent",
    "down_hours",
    "major_faults",
    "major_response_late",
    "major_resolution_late",
    "major_open",
    "major_mean_response_minutes",
    "major_mean_resolution_hours",
    "important_faults",
    "important_response_late",
    "important_resolution_late",
    "important_open",
    "important_mean_response_minutes",
    "important_mean_resolution_hours",
    "general_faults",
    "general_response_late",
    "general_resolution_late",
    "general_open",
    "general_mean_response_minutes",
    "general_mean_resolution_hours",
    "lamp_hours_used",
    "lamp_hours_since_replacement",
    "lamp_forecast_replacement",
    "filter_hours_used",
    "filter_forecast_replacement",
    "batteries_replaced",
];

fn class_cells(faults: &BTreeMap<FaultClass, ClassStats>, out: &mut Vec<String>) {
    for c in FaultClass::ALL {
        let s = faults.get(&c).cloned().unwrap_or_default();
        out.push(s.count.to_string());
        out.push(s.response_late.to_string());
        out.push(s.resolution_late.to_string());
        out.push(s.open_at_end.to_string());
        out.push(num(s.mean_response_minutes(), 1));
        out.push(num(s.mean_resolution_hours(), 1));
    }
}

/// One row per device and one total row per room (empty `device`), RFC 4180.
pub fn write_csv(r: &MonthlyReport, out: &mut dyn Write) -> std::io::Result<()> {
    let io = |e: csv::Error| std::io::Error::other(format!("cannot write the report: {e}"));
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(out);
    w.write_record(CSV_HEADER).map_err(io)?;
    for room in &r.rooms {
        for d in &room.devices {
            let mut row = vec![
                room.room.clone(),
                d.device.clone(),
                d.manufacturer.clone().unwrap_or_default(),
                d.model.clone().unwrap_or_default(),
                d.serial.clone().unwrap_or_default(),
                pct(d.availability()),
                num(Some(d.down_secs as f64 / 3600.0), 2),
            ];
            class_cells(&d.faults, &mut row);
            let (used, first) = lamp_summary(&d.lamps);
            row.push(num(used, 1));
            row.push(num(first.and_then(|l| l.since_service), 1));
            row.push(date(first.and_then(|l| l.forecast)));
            row.push(num(d.filter.as_ref().map(|f| f.used_in_month), 1));
            row.push(date(d.filter.as_ref().and_then(|f| f.forecast)));
            row.push(d.batteries_replaced.to_string());
            w.write_record(&row).map_err(io)?;
        }
        let mut row = vec![
            room.room.clone(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            pct(room.availability()),
            num(Some(room.down_secs as f64 / 3600.0), 2),
        ];
        class_cells(&room.faults, &mut row);
        row.extend([
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
        ]);
        row.push(room.batteries_replaced.to_string());
        w.write_record(&row).map_err(io)?;
    }
    w.flush()?;
    Ok(())
}

/// One row per fault incident.
pub fn write_incidents_csv(r: &MonthlyReport, out: &mut dyn Write) -> std::io::Result<()> {
    let io = |e: csv::Error| std::io::Error::other(format!("cannot write the report: {e}"));
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(out);
    w.write_record([
        "room",
        "device",
        "code",
        "component",
        "class",
        "message",
        "booking",
        "raised",
        "response_deadline",
        "acknowledged",
        "acknowledged_by",
        "response_late",
        "resolution_deadline",
        "resolved",
        "resolved_by",
        "resolution_late",
        "alert",
    ])
    .map_err(io)?;
    let t = |d: Option<DateTime<Utc>>| d.map(format_time).unwrap_or_default();
    for i in &r.incidents {
        w.write_record([
            i.room.clone().unwrap_or_default(),
            i.device.clone(),
            i.code.clone(),
            i.component.clone().unwrap_or_default(),
            i.class.as_str().to_owned(),
            i.message.clone(),
            i.booking.clone().unwrap_or_default(),
            format_time(i.raised),
            format_time(i.response_deadline),
            t(i.acknowledged),
            i.acknowledged_by.clone().unwrap_or_default(),
            i.response_late(r.end).to_string(),
            format_time(i.resolution_deadline),
            t(i.resolved),
            i.resolved_by.clone().unwrap_or_default(),
            i.resolution_late(r.end).to_string(),
            i.alert.map(|a| a.to_string()).unwrap_or_default(),
        ])
        .map_err(io)?;
    }
    w.flush()?;
    Ok(())
}

fn minutes(d: Option<Duration>) -> String {
    num(d.map(|d| d.num_seconds() as f64 / 60.0), 1)
}

/// `met`, `missed`, or empty while the deadline is still running.
fn met(m: Option<bool>) -> &'static str {
    match m {
        Some(true) => "met",
        Some(false) => "missed",
        None => "",
    }
}

/// One row per playbook alert raised in the month, then nothing else: the per-class counts
/// are in the HTML and the JSON.
pub fn write_alerts_csv(r: &MonthlyReport, out: &mut dyn Write) -> std::io::Result<()> {
    let io = |e: csv::Error| std::io::Error::other(format!("cannot write the report: {e}"));
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(out);
    w.write_record([
        "alert",
        "class",
        "room",
        "subject",
        "fault",
        "code",
        "component",
        "context",
        "raised",
        "respond_by",
        "acknowledged",
        "acknowledged_by",
        "minutes_to_acknowledge",
        "response_deadline",
        "resolved",
        "resolved_by",
        "minutes_to_resolve",
    ])
    .map_err(io)?;
    let t = |d: Option<DateTime<Utc>>| d.map(format_time).unwrap_or_default();
    for a in &r.alerts {
        w.write_record([
            a.id.to_string(),
            a.class.as_str().to_owned(),
            a.room.clone().unwrap_or_default(),
            a.subject.clone(),
            a.fault.clone(),
            a.code.clone().unwrap_or_default(),
            a.component.clone().unwrap_or_default(),
            a.context.clone().unwrap_or_default(),
            format_time(a.raised),
            format_time(a.respond_by),
            t(a.acknowledged),
            a.acknowledged_by.clone().unwrap_or_default(),
            minutes(a.time_to_acknowledge()),
            met(a.response_met(r.end)).to_owned(),
            t(a.resolved),
            a.resolved_by.clone().unwrap_or_else(|| {
                if a.resolved.is_some() {
                    "itself".into()
                } else {
                    String::new()
                }
            }),
            minutes(a.time_to_resolve()),
        ])
        .map_err(io)?;
    }
    w.flush()?;
    Ok(())
}

/// The report as one JSON document (every number the other formats show, and the rows).
pub fn write_json(r: &MonthlyReport, out: &mut dyn Write) -> std::io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, r)?;
    out.write_all(b"\n")
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A self-contained HTML page (no scripts, no external resources), printable.
pub fn write_html(r: &MonthlyReport, out: &mut dyn Write) -> std::io::Result<()> {
    let mut h = String::new();
    let tz: Tz = r.tz.parse().unwrap_or(chrono_tz::UTC);
    let local = |t: DateTime<Utc>| t.with_timezone(&tz).format("%Y-%m-%d %H:%M").to_string();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>avwarden maintenance report {m}</title>\
         <style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin:1em 0}}\
         th,td{{border:1px solid #999;padding:.25em .5em;text-align:right}}\
         th:first-child,td:first-child,td.t{{text-align:left}}tr.total{{font-weight:bold;background:#eee}}\
         .late{{color:#b00;font-weight:bold}}</style></head><body>\n\
         <h1>Maintenance report {m}</h1>\n<p>Month {s} to {e} ({tz}). {n} logbook entries in the month. \
         Logbook head when this report was made: entry {hs}, hash <code>{hh}</code>.</p>\n",
        m = esc(&r.month),
        s = esc(&local(r.start)),
        e = esc(&local(r.end)),
        tz = esc(&r.tz),
        n = r.entries,
        hs = r.head_seq,
        hh = esc(&r.head_hash),
    );
    h.push_str(
        "<p>Deadlines: major — response the same day, resolution within 2 days; important — \
         response within 1 hour, resolution within 3 days; general — response within 10 \
         minutes, resolution within 2 days.</p>\n",
    );
    for room in &r.rooms {
        let name = if room.room.is_empty() {
            "(no room)"
        } else {
            &room.room
        };
        let _ = write!(
            h,
            "<h2>Room {}</h2>\n<table><tr><th>Device</th><th>Model</th><th>Serial</th>\
             <th>Availability %</th><th>Faults major / important / general</th>\
             <th>Response late</th><th>Resolution late</th><th>Open</th>\
             <th>Mean response min</th><th>Mean resolution h</th>\
             <th>Lamp h used</th><th>Lamp h since replacement</th><th>Lamp due</th>\
             <th>Filter h used</th><th>Filter due</th><th>Batteries replaced</th></tr>\n",
            esc(name)
        );
        let row = |h: &mut String,
                   label: &str,
                   model: &str,
                   serial: &str,
                   avail: Option<f64>,
                   f: &BTreeMap<FaultClass, ClassStats>,
                   wear: [String; 5],
                   batt: u32,
                   total: bool| {
            let all = f.values().fold(ClassStats::default(), |mut a, s| {
                a.count += s.count;
                a.response_late += s.response_late;
                a.resolution_late += s.resolution_late;
                a.open_at_end += s.open_at_end;
                a.responded += s.responded;
                a.total_response_secs += s.total_response_secs;
                a.resolved += s.resolved;
                a.total_resolution_secs += s.total_resolution_secs;
                a
            });
            let c = |k: FaultClass| f.get(&k).map_or(0, |s| s.count);
            let late = |n: u32| {
                if n > 0 {
                    format!("<span class=\"late\">{n}</span>")
                } else {
                    "0".into()
                }
            };
            let _ = writeln!(
                h,
                "<tr{}><td>{}</td><td class=\"t\">{}</td><td class=\"t\">{}</td><td>{}</td>\
                 <td>{} / {} / {}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
                 <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                if total { " class=\"total\"" } else { "" },
                esc(label),
                esc(model),
                esc(serial),
                pct(avail),
                c(FaultClass::Major),
                c(FaultClass::Important),
                c(FaultClass::General),
                late(all.response_late),
                late(all.resolution_late),
                all.open_at_end,
                num(all.mean_response_minutes(), 1),
                num(all.mean_resolution_hours(), 1),
                esc(&wear[0]),
                esc(&wear[1]),
                esc(&wear[2]),
                esc(&wear[3]),
                esc(&wear[4]),
                batt
            );
        };
        for d in &room.devices {
            let (used, first) = lamp_summary(&d.lamps);
            let due = |w: Option<&Wear>| match w {
                Some(w) if w.overdue => format!("{} (overdue)", date(w.forecast)),
                Some(w) => date(w.forecast),
                None => String::new(),
            };
            row(
                &mut h,
                &d.device,
                d.model.as_deref().unwrap_or(""),
                d.serial.as_deref().unwrap_or(""),
                d.availability(),
                &d.faults,
                [
                    num(used, 1),
                    num(first.and_then(|l| l.since_service), 1),
                    due(first),
                    num(d.filter.as_ref().map(|f| f.used_in_month), 1),
                    due(d.filter.as_ref()),
                ],
                d.batteries_replaced,
                false,
            );
        }
        row(
            &mut h,
            "room total",
            "",
            "",
            room.availability(),
            &room.faults,
            Default::default(),
            room.batteries_replaced,
            true,
        );
        h.push_str("</table>\n");
    }
    alerts_html(r, &mut h, &local);
    h.push_str(
        "<h2>Faults raised this month</h2>\n<table><tr><th>Raised</th><th>Room</th>\
         <th>Device</th><th>Fault</th><th>Class</th><th>Acknowledged</th><th>By</th>\
         <th>Resolved</th><th>By</th><th>Response</th><th>Resolution</th></tr>\n",
    );
    for i in &r.incidents {
        let status = |late: bool, done: bool| match (late, done) {
            (true, _) => "<span class=\"late\">late</span>",
            (false, true) => "in time",
            (false, false) => "open",
        };
        let fault = match &i.component {
            Some(c) => format!("{} ({c}): {}", i.code, i.message),
            None => format!("{}: {}", i.code, i.message),
        };
        let _ = writeln!(
            h,
            "<tr><td class=\"t\">{}</td><td class=\"t\">{}</td><td class=\"t\">{}</td>\
             <td class=\"t\">{}</td><td class=\"t\">{}</td><td class=\"t\">{}</td>\
             <td class=\"t\">{}</td><td class=\"t\">{}</td><td class=\"t\">{}</td>\
             <td class=\"t\">{}</td><td class=\"t\">{}</td></tr>",
            esc(&local(i.raised)),
            esc(i.room.as_deref().unwrap_or("")),
            esc(&i.device),
            esc(&fault),
            i.class.as_str(),
            esc(&i.acknowledged.map(local).unwrap_or_default()),
            esc(i.acknowledged_by.as_deref().unwrap_or("")),
            esc(&i.resolved.map(local).unwrap_or_default()),
            esc(i.resolved_by.as_deref().unwrap_or("")),
            status(i.response_late(r.end), i.responded().is_some()),
            status(i.resolution_late(r.end), i.resolved.is_some()),
        );
    }
    h.push_str("</table>\n</body></html>\n");
    out.write_all(h.as_bytes())
}

/// The playbook's alerts by class, with time to acknowledge and the response deadline.
fn alerts_html(r: &MonthlyReport, h: &mut String, local: &dyn Fn(DateTime<Utc>) -> String) {
    h.push_str("<h2>Alerts by class</h2>\n");
    if r.alerts.is_empty() {
        h.push_str("<p>The playbook raised no alerts this month.</p>\n");
        return;
    }
    h.push_str(
        "<table><tr><th>Class</th><th>Alerts</th><th>Acknowledged</th>\
         <th>Mean min to acknowledge</th><th>Longest min to acknowledge</th>\
         <th>Response deadline met</th><th>Missed</th><th>Resolved</th>\
         <th>Mean h to resolve</th><th>Open</th></tr>\n",
    );
    for (class, s) in &r.alert_classes {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td></tr>",
            class.as_str(),
            s.count,
            s.acknowledged,
            num(s.mean_acknowledge_minutes(), 1),
            num(
                (s.acknowledged > 0).then(|| s.max_acknowledge_secs as f64 / 60.0),
                1
            ),
            s.response_met,
            if s.response_missed > 0 {
                format!("<span class=\"late\">{}</span>", s.response_missed)
            } else {
                "0".into()
            },
            s.resolved,
            num(s.mean_resolve_hours(), 1),
            s.open_at_end,
        );
    }
    h.push_str(
        "</table>\n<table><tr><th>Raised</th><th>Class</th><th>Room</th><th>Subject</th>\
         <th>Fault</th><th>Acknowledged</th><th>By</th><th>Min to acknowledge</th>\
         <th>Response</th><th>Resolved</th><th>By</th></tr>\n",
    );
    for a in &r.alerts {
        let fault = match &a.component {
            Some(c) => format!("{} ({c})", a.fault),
            None => a.fault.clone(),
        };
        let _ = writeln!(
            h,
            "<tr><td class=\"t\">{}</td><td class=\"t\">{}</td><td class=\"t\">{}</td>\
             <td class=\"t\">{}</td><td class=\"t\">{}</td><td class=\"t\">{}</td>\
             <td class=\"t\">{}</td><td>{}</td><td class=\"t\">{}</td><td class=\"t\">{}</td>\
             <td class=\"t\">{}</td></tr>",
            esc(&local(a.raised)),
            a.class.as_str(),
            esc(a.room.as_deref().unwrap_or("")),
            esc(&a.subject),
            esc(&fault),
            esc(&a.acknowledged.map(local).unwrap_or_default()),
            esc(a.acknowledged_by.as_deref().unwrap_or("")),
            minutes(a.time_to_acknowledge()),
            match a.response_met(r.end) {
                Some(false) => "<span class=\"late\">missed</span>",
                Some(true) => "met",
                None => "open",
            },
            esc(&a.resolved.map(local).unwrap_or_default()),
            esc(a.resolved_by.as_deref().unwrap_or(if a.resolved.is_some() {
                "itself"
            } else {
                ""
            })),
        );
    }
    h.push_str("</table>\n");
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn months_parse_and_bound_in_local_time() {
        let m = Month::parse("2026-11").unwrap();
        assert_eq!(m.days(), 30);
        let tz: Tz = "Asia/Shanghai".parse().unwrap();
        let (s, e) = m.bounds(tz);
        assert_eq!(s, Utc.with_ymd_and_hms(2026, 10, 31, 16, 0, 0).unwrap());
        assert_eq!(e, Utc.with_ymd_and_hms(2026, 11, 30, 16, 0, 0).unwrap());
        assert_eq!(
            Month::parse("2026-12").unwrap().next().to_string(),
            "2027-01"
        );
        for bad in ["2026-13", "2026-1", "26-11", "2026/11", "x"] {
            assert!(Month::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn alerts_count_in_their_class_with_time_to_acknowledge() {
        let t = |m| Utc.with_ymd_and_hms(2026, 11, 3, 9, m, 0).unwrap();
        let end = Utc.with_ymd_and_hms(2026, 11, 30, 16, 0, 0).unwrap();
        let alert = |id, class, ack: Option<u32>, resolved: Option<u32>| AlertIncident {
            id,
            room: Some("r101".into()),
            subject: "r101-mics".into(),
            fault: "battery_critical".into(),
            code: Some("battery_low".into()),
            component: Some("channel 2".into()),
            class,
            context: Some("in_meeting".into()),
            raised: t(0),
            respond_by: t(5),
            resolve_by: t(0) + Duration::days(2),
            acknowledged: ack.map(t),
            acknowledged_by: ack.map(|_| "li".into()),
            resolved: resolved.map(t),
            resolved_by: None,
        };
        let in_time = alert(1, FaultClass::Major, Some(3), Some(30));
        let late = alert(2, FaultClass::Major, Some(9), None);
        let unanswered = alert(3, FaultClass::General, None, None);
        let resolved_alone = alert(4, FaultClass::General, None, Some(2));
        assert_eq!(in_time.time_to_acknowledge(), Some(Duration::minutes(3)));
        assert_eq!(in_time.response_met(end), Some(true));
        assert_eq!(late.response_met(end), Some(false));
        assert_eq!(unanswered.response_met(end), Some(false));
        assert_eq!(unanswered.response_met(t(4)), None, "still running");
        assert_eq!(resolved_alone.response_met(end), Some(true));

        let mut major = AlertClassStats::default();
        major.add(&in_time, end);
        major.add(&late, end);
        assert_eq!(
            (
                major.count,
                major.acknowledged,
                major.response_met,
                major.response_missed
            ),
            (2, 2, 1, 1)
        );
        assert_eq!(major.mean_acknowledge_minutes(), Some(6.0));
        assert_eq!(major.max_acknowledge_secs, 9 * 60);
        assert_eq!((major.resolved, major.open_at_end), (1, 1));
        assert_eq!(major.mean_resolve_hours(), Some(0.5));

        // The incident behind an alert takes its class and deadlines; another fault does not.
        let incident = |code: &str| Incident {
            device: "r101-mics".into(),
            room: Some("r101".into()),
            code: code.into(),
            component: Some("channel 2".into()),
            class: FaultClass::General,
            message: String::new(),
            raised: t(0),
            booking: None,
            acknowledged: None,
            acknowledged_by: None,
            resolved: None,
            resolved_by: None,
            response_deadline: t(10),
            resolution_deadline: t(0) + Duration::days(2),
            alert: None,
            unconfirmed: false,
        };
        let mut incidents = vec![incident("battery_low"), incident("interference")];
        link_alerts(&mut incidents, &[in_time], end);
        assert_eq!(incidents[0].alert, Some(1));
        assert_eq!(incidents[0].class, FaultClass::Major);
        assert_eq!(incidents[0].response_deadline, t(5));
        assert_eq!(incidents[1].alert, None);
        assert_eq!(incidents[1].class, FaultClass::General);
    }

    #[test]
    fn availability_durations() {
        let t = |h| Utc.with_ymd_and_hms(2026, 11, 1, h, 0, 0).unwrap();
        let ch = vec![
            (t(0), Avail::Unknown),
            (t(1), Avail::Up),
            (t(3), Avail::Down),
            (t(4), Avail::Up),
        ];
        assert_eq!(durations(&ch, t(0), t(10)), (8 * 3600, 3600));
        // Changes before the window are clamped to it.
        let ch = vec![(t(0), Avail::Down)];
        assert_eq!(durations(&ch, t(2), t(5)), (0, 3 * 3600));
        let a = vec![(t(0), Avail::Up), (t(2), Avail::Down), (t(3), Avail::Up)];
        let b = vec![
            (t(0), Avail::Unknown),
            (t(1), Avail::Up),
            (t(5), Avail::Down),
        ];
        // Room: up 0-2, down 2-3, up 3-5, down 5-6.
        assert_eq!(room_durations(&[a, b], t(0), t(6)), (4 * 3600, 2 * 3600));
    }
}
