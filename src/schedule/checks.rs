//! The self-test's checks as pure functions: which devices a booking's needs put under test
//! (and which needs no device can serve), and, per device, the checks its profile declares
//! over its state, its history, what the active steps returned, the booking and `now`, each
//! failure a [`Reason`] with its device, point and the values its remedy text needs.
//!
//! Must not talk to a device, wait or read the clock: the runner feeds it.

use std::collections::BTreeMap;

use chrono::{DateTime, DurationRound, Utc};

use super::battery::{self, BatterySample};
use super::remedies::Remedies;
use super::thermal::{self, TempSample};
use crate::config::{RoomPreset, SelfTestSettings};
use crate::meter::stream::MeterLevel;
use crate::model::{Booking, Need, Needs, Readiness, Reason};
use crate::model::{
    Capability, DeviceId, DeviceState, Point, PowerState, Quantity, RoomId, Severity, Subject,
    Value,
};
use crate::profile::{Check, Profile};

/// A reason before its remedy is filled in, with the values the remedy's placeholders take.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub reason: Reason,
    pub vars: BTreeMap<&'static str, String>,
}

impl Finding {
    fn new(readiness: Readiness, code: &str, need: Option<Need>, message: String) -> Self {
        Self {
            reason: Reason {
                readiness,
                code: code.to_owned(),
                need,
                device: None,
                point: None,
                message,
                remedy: None,
                runs_out_at: None,
            },
            vars: BTreeMap::new(),
        }
    }

    fn on(mut self, device: &DeviceId) -> Self {
        self.reason.device = Some(device.clone());
        self
    }

    fn at(mut self, point: Point) -> Self {
        self.reason.point = Some(point.to_string());
        self
    }

    fn var(mut self, key: &'static str, value: impl ToString) -> Self {
        self.vars.insert(key, value.to_string());
        self
    }

    /// The reason with its remedy text, from `remedies`, filled in.
    pub fn into_reason(self, remedies: &Remedies, room: &RoomId) -> Reason {
        let mut vars = self.vars;
        vars.insert("room", room.to_string());
        if let Some(d) = &self.reason.device {
            vars.insert("device", d.to_string());
        }
        if let Some(n) = self.reason.need {
            vars.insert("need", n.as_str().replace('_', " "));
        }
        if let Some(p) = &self.reason.point {
            vars.insert("point", p.clone());
        }
        let mut reason = self.reason;
        reason.remedy = remedies.render(&reason.code, &vars);
        reason
    }
}

/// One device of the room as the planning of a test sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate<'a> {
    pub id: &'a DeviceId,
    pub capabilities: &'a [Capability],
}

/// Which devices a booking puts under test, with the needs each serves, and a
/// `missing_equipment` finding for each need no device can serve. A device serves a need when
/// it has every capability the need asks for (a projector's power *and* input: an HVAC unit's
/// power switch is not projection). Without needs (a test "for now") every device is tested.
pub fn devices_under_test(
    needs: Option<&Needs>,
    devices: &[Candidate<'_>],
) -> (BTreeMap<DeviceId, Vec<Need>>, Vec<Finding>) {
    let mut out: BTreeMap<DeviceId, Vec<Need>> = BTreeMap::new();
    let Some(needs) = needs else {
        for d in devices {
            out.insert(d.id.clone(), Vec::new());
        }
        return (out, Vec::new());
    };
    let mut by_need: BTreeMap<Need, Vec<Capability>> = BTreeMap::new();
    for (need, cap) in needs.capabilities() {
        by_need.entry(need).or_default().push(cap);
    }
    let mut missing = Vec::new();
    for (need, caps) in by_need {
        let serving: Vec<&Candidate<'_>> = devices
            .iter()
            .filter(|d| caps.iter().all(|c| d.capabilities.contains(c)))
            .collect();
        if serving.is_empty() {
            let wanted: Vec<&str> = caps.iter().map(|c| c.as_str()).collect();
            missing.push(Finding::new(
                Readiness::NotReady,
                "missing_equipment",
                Some(need),
                format!(
                    "the booking needs {}; no device of the room has {}",
                    need.as_str(),
                    wanted.join(" and ")
                ),
            ));
        }
        for d in serving {
            let needs = out.entry(d.id.clone()).or_default();
            if !needs.contains(&need) {
                needs.push(need);
            }
        }
    }
    (out, missing)
}

/// What the active steps of a device's test returned (`None`: not run).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepResults {
    /// The projector reported `on` (or was on already), or why not.
    pub power_on: Option<Result<(), String>>,
    /// The setpoint read back (the value the unit holds), or why not.
    pub setpoint: Option<Result<f64, String>>,
    /// The room preset applied, or why not.
    pub preset: Option<Result<(), String>>,
}

/// Everything a device's checks look at.
#[derive(Debug, Clone)]
pub struct DeviceFacts<'a> {
    pub state: &'a DeviceState,
    pub profile: &'a Profile,
    /// The needs this device serves for the booking (empty: tested without a booking).
    pub needs: &'a [Need],
    pub booking: Option<&'a Booking>,
    pub settings: &'a SelfTestSettings,
    pub preset: Option<&'a RoomPreset>,
    pub steps: &'a StepResults,
    /// Battery history per channel, time order (the current reading included).
    pub batteries: &'a BTreeMap<u8, Vec<BatterySample>>,
    /// Temperature history, time order.
    pub temperatures: &'a [TempSample],
    /// The device's meters as its meter board holds them.
    pub meters: &'a [(Subject, Option<MeterLevel>)],
    /// For times in remedy texts.
    pub time_zone: chrono_tz::Tz,
    pub now: DateTime<Utc>,
}

/// Meters older than this are dead when the device does not say how often it meters.
const DEFAULT_METER_LIMIT_SECS: i64 = 10;

/// The checks the device's profile declares, over its facts. An unreachable device gets only
/// `unreachable`: its other readings are stale and would only repeat it.
pub fn check_device(f: &DeviceFacts<'_>) -> Vec<Finding> {
    let id = &f.state.id;
    let need = f.needs.first().copied();
    let state = f.state;
    if !state.reachable {
        return vec![Finding::new(
            Readiness::NotReady,
            "unreachable",
            need,
            format!("{id} is {} and cannot be tested", state.health),
        )
        .on(id)];
    }
    let mut out = Vec::new();
    for check in &f.profile.selftest.checks {
        match check {
            Check::Reachable => reachable(f, need, &mut out),
            Check::Faults => faults(f, need, &mut out),
            Check::PowerOn => {
                if let Some(Err(why)) = &f.steps.power_on {
                    out.push(
                        Finding::new(
                            Readiness::NotReady,
                            "power_on_failed",
                            need,
                            format!("{id} did not power on: {why}"),
                        )
                        .on(id)
                        .at(Point::device(Quantity::Power)),
                    );
                }
            }
            Check::LampLife => lamp_life(f, need, &mut out),
            Check::Input => input(f, need, &mut out),
            Check::Transmitters => transmitters(f, need, &mut out),
            Check::TxMuted => per_channel(f, need, Quantity::TxMuted, true, &mut out),
            Check::Interference => per_channel(f, need, Quantity::Interference, true, &mut out),
            Check::Encryption => per_channel(f, need, Quantity::EncryptionOk, false, &mut out),
            Check::Battery => batteries(f, need, &mut out),
            Check::Preset => {
                if let Some(Err(why)) = &f.steps.preset {
                    let count = f.booking.map_or(0, |b| b.attendees);
                    out.push(
                        Finding::new(
                            Readiness::Degraded,
                            "preset_failed",
                            need,
                            format!("the room preset was not applied on {id}: {why}"),
                        )
                        .on(id)
                        .var("count", count),
                    );
                }
            }
            Check::ZonesUnmuted => zones_unmuted(f, need, &mut out),
            Check::Levels => levels(f, need, &mut out),
            Check::Meters => meters(f, need, &mut out),
            Check::Setpoint => {
                if let Some(Err(why)) = &f.steps.setpoint {
                    out.push(
                        Finding::new(
                            Readiness::NotReady,
                            "setpoint_not_confirmed",
                            need,
                            format!(
                                "{id} did not confirm the setpoint of {} °C: {why}",
                                f.settings.setpoint_c
                            ),
                        )
                        .on(id)
                        .at(Point::device(Quantity::Setpoint))
                        .var("celsius", f.settings.setpoint_c),
                    );
                }
            }
            Check::Temperature => temperature(f, need, &mut out),
        }
    }
    out
}

fn reachable(f: &DeviceFacts<'_>, need: Option<Need>, out: &mut Vec<Finding>) {
    let limit = f.profile.timing.comms().warn_after;
    let limit = chrono::Duration::from_std(limit).unwrap_or(chrono::Duration::MAX);
    let stale = f.state.last_contact.is_none_or(|c| f.now - c > limit);
    if stale {
        let id = &f.state.id;
        out.push(
            Finding::new(
                Readiness::Degraded,
                "stale_readings",
                need,
                format!("{id} has not answered for longer than its poll interval allows"),
            )
            .on(id),
        );
    }
}

/// The reason code of a device fault: the projector's own components have their own remedies.
fn fault_code(code: &str, severity: Severity) -> &'static str {
    match (code, severity) {
        (_, Severity::Warning) => "device_warning",
        ("lamp", _) => "lamp_fault",
        ("fan", _) => "fan_fault",
        ("temperature", _) => "temperature_fault",
        ("cover_open", _) => "cover_fault",
        ("filter", _) => "filter_fault",
        _ => "device_fault",
    }
}

fn faults(f: &DeviceFacts<'_>, need: Option<Need>, out: &mut Vec<Finding>) {
    let checks = &f.profile.selftest.checks;
    for a in &f.state.faults {
        let code = a.fault.code.as_str();
        // Checked with their own margins by their own checks.
        if (code == "lamp_life" && checks.contains(&Check::LampLife))
            || (code.starts_with("battery") && checks.contains(&Check::Battery))
        {
            continue;
        }
        let readiness = match a.fault.severity {
            Severity::Fault => Readiness::NotReady,
            Severity::Warning => Readiness::Degraded,
        };
        let mut finding = Finding::new(
            readiness,
            fault_code(code, a.fault.severity),
            need,
            a.fault.message.clone(),
        )
        .on(&f.state.id)
        .var("fault", &a.fault.message);
        if let Some(c) = &a.fault.component {
            if let Some(n) = c.strip_prefix("lamp ").and_then(|n| n.parse().ok()) {
                finding = finding.at(Point::lamp(n, Quantity::LampOn));
            }
        }
        out.push(finding);
    }
}

fn lamp_life(f: &DeviceFacts<'_>, need: Option<Need>, out: &mut Vec<Finding>) {
    let Some(spec) = &f.profile.lamp else { return };
    let margin = f
        .settings
        .lamp_margin_hours
        .unwrap_or(f.profile.selftest.lamp_margin_hours);
    let life = i64::from(spec.life_hours);
    for (point, r) in &f.state.readings {
        let (Subject::Lamp(_), Quantity::LampHours) = (&point.subject, point.quantity) else {
            continue;
        };
        let Some(hours) = r.value.as_f64() else {
            continue;
        };
        let hours = hours as i64;
        let id = &f.state.id;
        let finding = if hours >= life {
            Finding::new(
                Readiness::NotReady,
                "lamp_past_life",
                need,
                format!("{point} of {id} has run {hours} h, past its rated {life} h"),
            )
        } else if hours + i64::from(margin) >= life {
            Finding::new(
                Readiness::Degraded,
                "lamp_near_end",
                need,
                format!("{point} of {id} has run {hours} h of its rated {life} h"),
            )
        } else {
            continue;
        };
        out.push(finding.on(id).at(point.clone()).var("hours", hours));
    }
}

fn input(f: &DeviceFacts<'_>, need: Option<Need>, out: &mut Vec<Finding>) {
    let power = f
        .state
        .value(&Point::device(Quantity::Power))
        .and_then(Value::as_power);
    // An input is only known to be there while the projector is on.
    if power != Some(PowerState::On) {
        return;
    }
    let id = &f.state.id;
    let input = Point::device(Quantity::Input);
    match f.state.value(&input) {
        None | Some(Value::Unknown) => out.push(
            Finding::new(
                Readiness::Degraded,
                "no_input",
                need,
                format!("{id} has no input selected"),
            )
            .on(id)
            .at(input),
        ),
        Some(_) => {
            let res = Point::device(Quantity::Resolution);
            if f.state.value(&res).and_then(Value::as_text) == Some("no_signal") {
                out.push(
                    Finding::new(
                        Readiness::Degraded,
                        "no_input_signal",
                        need,
                        format!("{id} sees no signal on its input"),
                    )
                    .on(id)
                    .at(res),
                );
            }
        }
    }
}

/// The channels with a transmitter on air.
fn present_channels(state: &DeviceState) -> Vec<u8> {
    state
        .readings
        .iter()
        .filter_map(|(p, r)| match (&p.subject, p.quantity) {
            (Subject::Channel(n), Quantity::TxPresent) if r.value == Value::Bool(true) => Some(*n),
            _ => None,
        })
        .collect()
}

fn transmitters(f: &DeviceFacts<'_>, need: Option<Need>, out: &mut Vec<Finding>) {
    let Some(b) = f.booking else { return };
    let wanted = usize::from(b.needs.wireless_mics);
    let present = present_channels(f.state).len();
    if present < wanted {
        let id = &f.state.id;
        out.push(
            Finding::new(
                Readiness::NotReady,
                "transmitters_missing",
                need,
                format!("{present} transmitters on air on {id}, the booking needs {wanted}"),
            )
            .on(id)
            .var("count", present),
        );
    }
}

/// A per-channel boolean that is bad at `bad` (muted, interference) or at `!bad` (encryption
/// ok false), for channels with a transmitter.
fn per_channel(
    f: &DeviceFacts<'_>,
    need: Option<Need>,
    q: Quantity,
    bad: bool,
    out: &mut Vec<Finding>,
) {
    let id = &f.state.id;
    for n in present_channels(f.state) {
        let point = Point::channel(n, q);
        if f.state.value(&point).and_then(Value::as_bool) != Some(bad) {
            continue;
        }
        let (readiness, code, what) = match q {
            Quantity::TxMuted => (Readiness::Degraded, "tx_muted", "is muted"),
            Quantity::Interference => (Readiness::Degraded, "interference", "sees interference"),
            _ => (
                Readiness::NotReady,
                "encryption_mismatch",
                "has a wrong encryption key",
            ),
        };
        out.push(
            Finding::new(readiness, code, need, format!("channel {n} of {id} {what}"))
                .on(id)
                .at(point)
                .var("channel", n),
        );
    }
}

fn batteries(f: &DeviceFacts<'_>, need: Option<Need>, out: &mut Vec<Finding>) {
    let id = &f.state.id;
    let margin = i64::from(f.settings.battery_margin_minutes);
    // With a booking the battery must last from its start to its end and the margin; without
    // one, the margin from now.
    let (at, must_last) = match f.booking {
        Some(b) => (
            b.start.max(f.now),
            b.duration().num_minutes().max(0) + margin,
        ),
        None => (f.now, margin),
    };
    let empty = Vec::new();
    for n in present_channels(f.state) {
        let samples = f.batteries.get(&n).unwrap_or(&empty);
        let minutes_point = Point::channel(n, Quantity::BatteryMinutes);
        let Some(p) = battery::predict(samples, at, f.profile.selftest.minutes_per_bar) else {
            out.push(
                Finding::new(
                    Readiness::Degraded,
                    "battery_unknown",
                    need,
                    format!("channel {n} of {id} reports no battery state"),
                )
                .on(id)
                .at(Point::channel(n, Quantity::BatteryBars))
                .var("channel", n),
            );
            continue;
        };
        if p.minutes_left >= must_last as f64 {
            continue;
        }
        let point = if p.from_bars {
            Point::channel(n, Quantity::BatteryBars)
        } else {
            minutes_point
        };
        // The minute it runs out, not a second later than predicted.
        let runs_out = p
            .runs_out_at
            .duration_trunc(chrono::Duration::minutes(1))
            .unwrap_or(p.runs_out_at);
        let local = runs_out.with_timezone(&f.time_zone).format("%H:%M");
        let left = p.minutes_left.floor() as i64;
        let mut finding = Finding::new(
            Readiness::NotReady,
            "battery_will_not_last",
            need,
            format!(
                "the battery of channel {n} of {id} runs out at {local} ({left} min left at the start, {must_last} needed)"
            ),
        )
        .on(id)
        .at(point)
        .var("channel", n)
        .var("minutes", left)
        .var("runs_out", local);
        finding.reason.runs_out_at = Some(runs_out);
        out.push(finding);
    }
}

fn zones_unmuted(f: &DeviceFacts<'_>, need: Option<Need>, out: &mut Vec<Finding>) {
    let id = &f.state.id;
    for (point, r) in &f.state.readings {
        let (Subject::Zone(zone), Quantity::Muted) = (&point.subject, point.quantity) else {
            continue;
        };
        if r.value == Value::Bool(true) {
            out.push(
                Finding::new(
                    Readiness::NotReady,
                    "zone_muted",
                    need,
                    format!("speaker zone {zone} of {id} is muted"),
                )
                .on(id)
                .at(point.clone())
                .var("zone", zone),
            );
        }
    }
}

fn levels(f: &DeviceFacts<'_>, need: Option<Need>, out: &mut Vec<Finding>) {
    let Some(preset) = f.preset else { return };
    let id = &f.state.id;
    for (zone, want) in &preset.levels {
        let point = Point::new(Subject::zone(zone), Quantity::LevelDb);
        let Some(have) = f.state.value(&point).and_then(Value::as_f64) else {
            continue;
        };
        if (have - want).abs() > f.settings.level_tolerance_db + 1e-9 {
            out.push(
                Finding::new(
                    Readiness::Degraded,
                    "level_off_preset",
                    need,
                    format!(
                        "speaker zone {zone} of {id} is at {have} dB, its preset {:?} says {want} dB",
                        preset.name
                    ),
                )
                .on(id)
                .at(point)
                .var("zone", zone),
            );
        }
    }
}

fn meters(f: &DeviceFacts<'_>, need: Option<Need>, out: &mut Vec<Finding>) {
    if f.meters.is_empty() {
        return;
    }
    let limit = f
        .state
        .freshness
        .meter_limit()
        .unwrap_or(chrono::Duration::seconds(DEFAULT_METER_LIMIT_SECS));
    let alive = f
        .meters
        .iter()
        .any(|(_, l)| l.is_some_and(|l| f.now - l.at <= limit));
    if !alive {
        let id = &f.state.id;
        out.push(
            Finding::new(
                Readiness::Degraded,
                "meters_dead",
                need,
                format!("no meter of {id} has moved recently"),
            )
            .on(id),
        );
    }
}

fn temperature(f: &DeviceFacts<'_>, need: Option<Need>, out: &mut Vec<Finding>) {
    let point = Point::device(Quantity::Temperature);
    let Some(current) = f.state.value(&point).and_then(Value::as_f64) else {
        return;
    };
    let s = f.settings;
    let target = match &f.steps.setpoint {
        Some(Ok(held)) => *held,
        _ => s.setpoint_c,
    };
    let rate = thermal::rate_or(f.temperatures, f.profile.selftest.thermal_rate_c_per_min);
    let start = f.booking.map_or(f.now, |b| b.start);
    let predicted = thermal::predicted_at(current, target, rate, f.now, start);
    let shown = (predicted * 10.0).round() / 10.0;
    if shown < s.comfort_min_c || shown > s.comfort_max_c {
        let id = &f.state.id;
        out.push(
            Finding::new(
                Readiness::NotReady,
                "temperature_outside_comfort",
                need,
                format!(
                    "the room is predicted at {shown} °C at the start (now {current} °C, {rate:.3} °C/min), outside {} to {} °C",
                    s.comfort_min_c, s.comfort_max_c
                ),
            )
            .on(id)
            .at(point)
            .var("celsius", shown),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ActiveFault, Fault, ProfileId, Reading};
    use crate::model::{BookingId, BookingSource, BookingStatus};
    use crate::profile::ProfileSet;
    use chrono::{Duration, TimeZone};

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 27, 9, 0, 0).unwrap()
    }

    fn profile(id: &str) -> Profile {
        ProfileSet::embedded().unwrap().get(id).unwrap().clone()
    }

    fn state(readings: &[(Point, Value)]) -> DeviceState {
        let mut s = DeviceState::new(
            DeviceId::new("d1"),
            RoomId::new("r1"),
            ProfileId::new("p"),
            "test".into(),
            t0(),
        );
        s.reachable = true;
        s.contacted = true;
        s.last_contact = Some(t0());
        for (p, v) in readings {
            s.readings
                .insert(p.clone(), Reading::new(p.clone(), v.clone(), t0()));
        }
        s
    }

    fn booking(minutes: i64, needs: Needs) -> Booking {
        Booking {
            id: BookingId::new("b1"),
            room: RoomId::new("r1"),
            title: "t".into(),
            organiser: None,
            department: None,
            start: t0() + Duration::minutes(60),
            end: t0() + Duration::minutes(60 + minutes),
            attendees: 8,
            needs,
            important: false,
            confidential: false,
            status: BookingStatus::Confirmed,
            source: BookingSource::Api,
            source_uid: None,
        }
    }

    struct Case {
        profile: &'static str,
        state: DeviceState,
        booking: Option<Booking>,
        steps: StepResults,
        batteries: BTreeMap<u8, Vec<BatterySample>>,
        want: Vec<(&'static str, Readiness)>,
    }

    fn run(c: &Case) -> Vec<Finding> {
        let settings = SelfTestSettings::default();
        let profile = profile(c.profile);
        check_device(&DeviceFacts {
            state: &c.state,
            profile: &profile,
            needs: &[],
            booking: c.booking.as_ref(),
            settings: &settings,
            preset: None,
            steps: &c.steps,
            batteries: &c.batteries,
            temperatures: &[],
            meters: &[],
            time_zone: chrono_tz::Europe::Berlin,
            now: t0(),
        })
    }

    fn mic(n: u8, extra: &[(Quantity, Value)]) -> Vec<(Point, Value)> {
        let mut v = vec![(Point::channel(n, Quantity::TxPresent), Value::Bool(true))];
        v.extend(
            extra
                .iter()
                .map(|(q, val)| (Point::channel(n, *q), val.clone())),
        );
        v
    }

    fn minutes(n: u8, m: f64) -> BTreeMap<u8, Vec<BatterySample>> {
        BTreeMap::from([(
            n,
            vec![BatterySample {
                at: t0(),
                minutes: Some(m),
                bars: None,
            }],
        )])
    }

    #[test]
    fn each_check_as_a_table() {
        let mics = Needs {
            wireless_mics: 2,
            ..Needs::default()
        };
        let mut lamp_fault = state(&[
            (Point::device(Quantity::Power), Value::Power(PowerState::On)),
            (Point::device(Quantity::Input), Value::Text("31".into())),
        ]);
        lamp_fault.faults.push(ActiveFault {
            fault: Fault::new("lamp", Severity::Fault, "projector reports a lamp error"),
            since: t0(),
            confirmed_at: t0(),
            from_device: true,
        });
        let mut unreachable = state(&[]);
        unreachable.reachable = false;
        let on_with_input = [
            (Point::device(Quantity::Power), Value::Power(PowerState::On)),
            (Point::device(Quantity::Input), Value::Text("31".into())),
        ];
        let mut stale = state(&on_with_input);
        stale.last_contact = Some(t0() - Duration::minutes(5));
        let cases = vec![
            Case {
                profile: "panasonic-pjlink",
                state: state(&on_with_input),
                booking: None,
                steps: StepResults::default(),
                batteries: BTreeMap::new(),
                want: vec![],
            },
            Case {
                profile: "panasonic-pjlink",
                state: unreachable,
                booking: None,
                steps: StepResults::default(),
                batteries: BTreeMap::new(),
                want: vec![("unreachable", Readiness::NotReady)],
            },
            Case {
                profile: "panasonic-pjlink",
                state: stale,
                booking: None,
                steps: StepResults::default(),
                batteries: BTreeMap::new(),
                want: vec![("stale_readings", Readiness::Degraded)],
            },
            Case {
                profile: "panasonic-pjlink",
                state: lamp_fault,
                booking: None,
                steps: StepResults::default(),
                batteries: BTreeMap::new(),
                want: vec![("lamp_fault", Readiness::NotReady)],
            },
            Case {
                profile: "panasonic-pjlink",
                state: state(&[(
                    Point::device(Quantity::Power),
                    Value::Power(PowerState::Off),
                )]),
                booking: None,
                steps: StepResults {
                    power_on: Some(Err("no answer".into())),
                    ..StepResults::default()
                },
                batteries: BTreeMap::new(),
                want: vec![("power_on_failed", Readiness::NotReady)],
            },
            Case {
                profile: "panasonic-pjlink",
                state: state(&[
                    on_with_input[0].clone(),
                    on_with_input[1].clone(),
                    (Point::lamp(1, Quantity::LampHours), Value::Int(4950)),
                ]),
                booking: None,
                steps: StepResults::default(),
                batteries: BTreeMap::new(),
                want: vec![("lamp_near_end", Readiness::Degraded)],
            },
            Case {
                profile: "panasonic-pjlink",
                state: state(&[
                    on_with_input[0].clone(),
                    on_with_input[1].clone(),
                    (Point::lamp(1, Quantity::LampHours), Value::Int(5001)),
                ]),
                booking: None,
                steps: StepResults::default(),
                batteries: BTreeMap::new(),
                want: vec![("lamp_past_life", Readiness::NotReady)],
            },
            Case {
                profile: "panasonic-pjlink",
                state: state(&[
                    on_with_input[0].clone(),
                    (
                        Point::device(Quantity::Resolution),
                        Value::Text("no_signal".into()),
                    ),
                ]),
                booking: None,
                steps: StepResults::default(),
                batteries: BTreeMap::new(),
                want: vec![("no_input", Readiness::Degraded)],
            },
            Case {
                profile: "panasonic-pjlink",
                state: state(&[
                    on_with_input[0].clone(),
                    on_with_input[1].clone(),
                    (
                        Point::device(Quantity::Resolution),
                        Value::Text("no_signal".into()),
                    ),
                ]),
                booking: None,
                steps: StepResults::default(),
                batteries: BTreeMap::new(),
                want: vec![("no_input_signal", Readiness::Degraded)],
            },
            // Mics: two booked, one on air, muted, with interference, a battery that lasts.
            Case {
                profile: "shure-ulxd",
                state: state(&mic(
                    1,
                    &[
                        (Quantity::TxMuted, Value::Bool(true)),
                        (Quantity::Interference, Value::Bool(true)),
                        (Quantity::EncryptionOk, Value::Bool(true)),
                    ],
                )),
                booking: Some(booking(60, mics.clone())),
                steps: StepResults::default(),
                batteries: minutes(1, 300.0),
                want: vec![
                    ("transmitters_missing", Readiness::NotReady),
                    ("tx_muted", Readiness::Degraded),
                    ("interference", Readiness::Degraded),
                ],
            },
            Case {
                profile: "shure-ulxd",
                state: state(&mic(2, &[(Quantity::EncryptionOk, Value::Bool(false))])),
                booking: None,
                steps: StepResults::default(),
                batteries: minutes(2, 300.0),
                want: vec![("encryption_mismatch", Readiness::NotReady)],
            },
            // 100 min at 09:00, meeting 10:00-11:30 with a 15 min margin: 40 min left at the start.
            Case {
                profile: "shure-ulxd",
                state: state(&mic(1, &[])),
                booking: Some(booking(
                    90,
                    Needs {
                        wireless_mics: 1,
                        ..Needs::default()
                    },
                )),
                steps: StepResults::default(),
                batteries: minutes(1, 100.0),
                want: vec![("battery_will_not_last", Readiness::NotReady)],
            },
            // 170 min lasts 90 + 15 from 10:00 (110 left at the start).
            Case {
                profile: "shure-ulxd",
                state: state(&mic(1, &[])),
                booking: Some(booking(
                    90,
                    Needs {
                        wireless_mics: 1,
                        ..Needs::default()
                    },
                )),
                steps: StepResults::default(),
                batteries: minutes(1, 170.0),
                want: vec![],
            },
            Case {
                profile: "shure-ulxd",
                state: state(&mic(1, &[])),
                booking: None,
                steps: StepResults::default(),
                batteries: BTreeMap::new(),
                want: vec![("battery_unknown", Readiness::Degraded)],
            },
            Case {
                profile: "qsys-core",
                state: state(&[
                    (
                        Point::new(Subject::zone("main"), Quantity::Muted),
                        Value::Bool(true),
                    ),
                    (
                        Point::new(Subject::zone("ceiling"), Quantity::Muted),
                        Value::Bool(false),
                    ),
                ]),
                booking: None,
                steps: StepResults {
                    preset: Some(Err("refused".into())),
                    ..StepResults::default()
                },
                batteries: BTreeMap::new(),
                want: vec![
                    ("preset_failed", Readiness::Degraded),
                    ("zone_muted", Readiness::NotReady),
                ],
            },
            Case {
                profile: "avwarden-sim-modbus",
                state: state(&[(Point::device(Quantity::Temperature), Value::Float(23.5))]),
                booking: Some(booking(
                    60,
                    Needs {
                        hvac: true,
                        ..Needs::default()
                    },
                )),
                steps: StepResults {
                    setpoint: Some(Ok(23.0)),
                    ..StepResults::default()
                },
                batteries: BTreeMap::new(),
                want: vec![],
            },
            // 31 °C now, 0.1 °C/min for 60 min: 25 °C at the start.
            Case {
                profile: "avwarden-sim-modbus",
                state: state(&[(Point::device(Quantity::Temperature), Value::Float(31.0))]),
                booking: Some(booking(
                    60,
                    Needs {
                        hvac: true,
                        ..Needs::default()
                    },
                )),
                steps: StepResults {
                    setpoint: Some(Err("no read-back".into())),
                    ..StepResults::default()
                },
                batteries: BTreeMap::new(),
                want: vec![
                    ("setpoint_not_confirmed", Readiness::NotReady),
                    ("temperature_outside_comfort", Readiness::NotReady),
                ],
            },
        ];
        for (i, c) in cases.iter().enumerate() {
            let got: Vec<(String, Readiness)> = run(c)
                .into_iter()
                .map(|f| (f.reason.code, f.reason.readiness))
                .collect();
            let want: Vec<(String, Readiness)> =
                c.want.iter().map(|(c, r)| ((*c).to_owned(), *r)).collect();
            assert_eq!(got, want, "case {i} ({})", c.profile);
        }
    }

    #[test]
    fn a_battery_that_will_not_last_says_when_it_runs_out_with_its_remedy() {
        let c = Case {
            profile: "shure-ulxd",
            state: state(&mic(2, &[])),
            booking: Some(booking(
                90,
                Needs {
                    wireless_mics: 1,
                    ..Needs::default()
                },
            )),
            steps: StepResults::default(),
            batteries: minutes(2, 100.5),
            want: vec![],
        };
        let f = run(&c).remove(0);
        let r = f.into_reason(&Remedies::embedded().unwrap(), &RoomId::new("r1"));
        assert_eq!(r.runs_out_at, Some(t0() + Duration::minutes(100)));
        assert_eq!(r.point.as_deref(), Some("ch.2.battery_minutes"));
        assert_eq!(r.device, Some(DeviceId::new("d1")));
        // 10:40 UTC is 11:40 in Berlin.
        assert_eq!(
            r.remedy.as_deref(),
            Some("replace the batteries of mic 2 on d1 (runs out at 11:40, 40 min left at the start) — spares in cabinet B")
        );
    }

    /// Every shipped profile's checks run over a healthy device with nothing to report, and
    /// over an unreachable one.
    #[test]
    fn every_shipped_profile_runs_its_checks() {
        let settings = SelfTestSettings::default();
        for profile in ProfileSet::embedded().unwrap().iter() {
            let mut s = state(&[]);
            let facts = |s: &DeviceState| {
                check_device(&DeviceFacts {
                    state: s,
                    profile,
                    needs: &[],
                    booking: None,
                    settings: &settings,
                    preset: None,
                    steps: &StepResults::default(),
                    batteries: &BTreeMap::new(),
                    temperatures: &[],
                    meters: &[],
                    time_zone: chrono_tz::UTC,
                    now: t0(),
                })
            };
            assert_eq!(facts(&s), vec![], "{}", profile.id);
            s.reachable = false;
            let codes: Vec<String> = facts(&s).into_iter().map(|f| f.reason.code).collect();
            assert_eq!(codes, vec!["unreachable"], "{}", profile.id);
        }
    }

    #[test]
    fn needs_pick_the_devices_and_name_what_is_missing() {
        let (p, m, h) = (DeviceId::new("p"), DeviceId::new("m"), DeviceId::new("h"));
        let devices = [
            Candidate {
                id: &p,
                capabilities: &[Capability::Power, Capability::Input, Capability::Lamp],
            },
            Candidate {
                id: &m,
                capabilities: &[Capability::TxPresent, Capability::Battery],
            },
            Candidate {
                id: &h,
                capabilities: &[Capability::Power, Capability::Setpoint],
            },
        ];
        // Loudspeakers asked for: no DSP here.
        let needs = Needs {
            wireless_mics: 1,
            speech_reinforcement: true,
            hvac: true,
            ..Needs::default()
        };
        let (tested, missing) = devices_under_test(Some(&needs), &devices);
        assert_eq!(
            tested.keys().collect::<Vec<_>>(),
            vec![&h, &m],
            "the projector is not tested"
        );
        assert_eq!(missing.len(), 1);
        assert_eq!(missing[0].reason.code, "missing_equipment");
        assert_eq!(missing[0].reason.need, Some(Need::SpeechReinforcement));
        // The HVAC unit's power switch does not make it a projector.
        let (tested, _) = devices_under_test(
            Some(&Needs {
                projection: true,
                ..Needs::default()
            }),
            &devices,
        );
        assert_eq!(tested.get(&p), Some(&vec![Need::Projection]));
        assert!(!tested.contains_key(&h));
        let (all, none) = devices_under_test(None, &devices);
        assert_eq!((all.len(), none.len()), (3, 0));
    }
}
