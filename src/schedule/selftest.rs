//! The self-test runner: for one room and an optional booking, tests each device the
//! booking's needs put under test, concurrently with a bound and each within a timeout. It
//! carries out the active steps through the devices' handles (a projector powered on and back
//! to standby, the setpoint written and read back, the room's audio preset applied), then
//! hands the state to the pure checks and adds the reasons up to a [`Verdict`].
//!
//! Everything it did is in [`SelfTestRun::steps`], for the logbook. It must not spawn tasks,
//! read the wall clock (it is handed a [`Clock`]) or talk to a device except through its
//! handle; persisting the verdict and emitting its event belong to the caller.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt};
use serde::Serialize;

use super::checks::{self, Candidate, DeviceFacts, Finding, StepResults};
use super::history::History;
use crate::clock::Clock;
use crate::config::{RoomPreset, SelfTestSettings};
use crate::model::{
    Booking, DeviceCommand, DeviceId, DeviceState, Need, Point, PowerState, Quantity, Readiness,
    RoomId, Subject, TestKind, Value, Verdict,
};
use crate::runtime::{CommandOutcome, DeviceHandle};

/// What a run needs besides the room's devices and the booking.
#[derive(Debug, Clone)]
pub struct SelfTestContext {
    pub settings: SelfTestSettings,
    /// The room's audio presets, smallest first.
    pub presets: Vec<RoomPreset>,
    /// Battery and temperature history, as the tracker records it.
    pub history: Arc<Mutex<History>>,
    /// The site's zone, for times in remedy texts.
    pub time_zone: chrono_tz::Tz,
    pub clock: Clock,
}

/// One thing the runner did to a device, for the logbook.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepRecord {
    pub device: DeviceId,
    /// `power_on`, `standby`, `set_setpoint`, `read_back`, `apply_preset`, `timeout`.
    pub step: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<DeviceCommand>,
    pub ok: bool,
    /// What came of it, in words.
    pub outcome: String,
    pub at: DateTime<Utc>,
    pub took_ms: u64,
}

/// A finished test: the verdict, the lamp hours it cost, and every step it took.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SelfTestRun {
    pub verdict: Verdict,
    /// Lamp hours the test's power-on cost (counted from the power-on command until standby,
    /// or until the test ended when the projector stays on for the meeting).
    pub lamp_hours_spent: f64,
    pub steps: Vec<StepRecord>,
}

/// Margin on a read-back wait beyond one poll: the poll that shows the new value may come
/// just after the command.
const READ_BACK_POLLS: u32 = 2;

/// Test `room` for `booking` (or for now, without one) over the room's device handles.
pub async fn run(
    room: &RoomId,
    handles: &[DeviceHandle],
    booking: Option<&Booking>,
    kind: TestKind,
    ctx: &SelfTestContext,
) -> SelfTestRun {
    let started_at = ctx.clock.now();
    let in_room: Vec<&DeviceHandle> = handles
        .iter()
        .filter(|h| &h.room == room && h.profile.is_some())
        .collect();
    let candidates: Vec<Candidate<'_>> = in_room
        .iter()
        .map(|h| Candidate {
            id: &h.id,
            capabilities: h.capabilities(),
        })
        .collect();
    let (tested, missing) = checks::devices_under_test(booking.map(|b| &b.needs), &candidates);
    let preset = booking.and_then(|b| crate::config::preset_for(&ctx.presets, b.attendees));

    let concurrency = ctx.settings.concurrency.max(1);
    // The futures are made first and then run a bounded number at a time: a lazy `map` over
    // borrowed items makes the whole run's future not `Send` (rustc's higher-ranked lifetime
    // limits), and the scheduler runs it on a multi-threaded runtime.
    let tests: Vec<_> = in_room
        .iter()
        .filter_map(|h| {
            tested
                .get(&h.id)
                .map(|needs| test_with_timeout(h, needs.as_slice(), booking, preset, ctx))
        })
        .collect();
    let results: Vec<DeviceOutcome> = stream::iter(tests)
        .buffer_unordered(concurrency)
        .collect()
        .await;

    let remedies = &ctx.settings.remedies;
    let mut findings: Vec<Finding> = missing;
    let mut steps = Vec::new();
    let mut lamp_hours_spent = 0.0;
    for r in results {
        findings.extend(r.findings);
        steps.extend(r.steps);
        lamp_hours_spent += r.lamp_hours;
    }
    let mut reasons: Vec<_> = findings
        .into_iter()
        .map(|f| f.into_reason(remedies, room))
        .collect();
    // Worst first, then by device, so that a verdict reads the same every time.
    reasons.sort_by(|a, b| {
        b.readiness
            .cmp(&a.readiness)
            .then_with(|| a.device.cmp(&b.device))
            .then_with(|| a.point.cmp(&b.point))
    });
    steps.sort_by(|a, b| a.at.cmp(&b.at).then_with(|| a.device.cmp(&b.device)));
    SelfTestRun {
        verdict: Verdict {
            room: room.clone(),
            booking: booking.map(|b| b.id.clone()),
            kind,
            readiness: Verdict::readiness_of(&reasons),
            reasons,
            started_at,
            finished_at: ctx.clock.now(),
            alternative: None,
        },
        lamp_hours_spent,
        steps,
    }
}

struct DeviceOutcome {
    findings: Vec<Finding>,
    steps: Vec<StepRecord>,
    lamp_hours: f64,
}

async fn test_with_timeout(
    h: &DeviceHandle,
    needs: &[Need],
    booking: Option<&Booking>,
    preset: Option<&RoomPreset>,
    ctx: &SelfTestContext,
) -> DeviceOutcome {
    let limit = ctx.settings.device_timeout;
    let started = ctx.clock.now();
    match tokio::time::timeout(limit, test_device(h, needs, booking, preset, ctx)).await {
        Ok(out) => out,
        Err(_) => {
            let mut finding = Finding {
                reason: crate::model::Reason {
                    readiness: Readiness::NotReady,
                    code: "unreachable".to_owned(),
                    need: needs.first().copied(),
                    device: Some(h.id.clone()),
                    point: None,
                    message: format!(
                        "{} did not finish its test within {} s",
                        h.id,
                        limit.as_secs()
                    ),
                    remedy: None,
                    runs_out_at: None,
                },
                vars: BTreeMap::new(),
            };
            finding.vars.insert("device", h.id.to_string());
            DeviceOutcome {
                findings: vec![finding],
                steps: vec![StepRecord {
                    device: h.id.clone(),
                    step: "timeout".to_owned(),
                    command: None,
                    ok: false,
                    outcome: format!("gave up after {} s", limit.as_secs()),
                    at: started,
                    took_ms: limit.as_millis() as u64,
                }],
                lamp_hours: 0.0,
            }
        }
    }
}

/// A step's timing and record.
struct Steps<'a> {
    id: &'a DeviceId,
    clock: &'a Clock,
    list: Vec<StepRecord>,
}

impl Steps<'_> {
    async fn command(
        &mut self,
        h: &DeviceHandle,
        step: &str,
        command: DeviceCommand,
    ) -> CommandOutcome {
        let at = self.clock.now();
        let outcome = h.command(command.clone()).await;
        self.push(
            step,
            Some(command),
            outcome.is_done(),
            outcome.to_string(),
            at,
        );
        outcome
    }

    async fn wait(
        &mut self,
        h: &DeviceHandle,
        step: &str,
        what: &str,
        pred: impl FnMut(&DeviceState) -> bool,
        limit: Duration,
    ) -> Result<(), String> {
        let at = self.clock.now();
        let res = h.wait_for(pred, limit).await;
        let outcome = match &res {
            Ok(_) => what.to_owned(),
            Err(_) => format!("not {what} within {} s", limit.as_secs()),
        };
        self.push(step, None, res.is_ok(), outcome.clone(), at);
        res.map(drop).map_err(|_| outcome)
    }

    fn push(
        &mut self,
        step: &str,
        command: Option<DeviceCommand>,
        ok: bool,
        outcome: String,
        at: DateTime<Utc>,
    ) {
        let took = (self.clock.now() - at).num_milliseconds().max(0) as u64;
        self.list.push(StepRecord {
            device: self.id.clone(),
            step: step.to_owned(),
            command,
            ok,
            outcome,
            at,
            took_ms: took,
        });
    }
}

fn power(s: &DeviceState) -> Option<PowerState> {
    s.value(&Point::device(Quantity::Power))
        .and_then(Value::as_power)
}

async fn test_device(
    h: &DeviceHandle,
    needs: &[Need],
    booking: Option<&Booking>,
    preset: Option<&RoomPreset>,
    ctx: &SelfTestContext,
) -> DeviceOutcome {
    let Some(profile) = h.profile.as_deref() else {
        return DeviceOutcome {
            findings: Vec::new(),
            steps: Vec::new(),
            lamp_hours: 0.0,
        };
    };
    let checks = &profile.selftest.checks;
    let settings = &ctx.settings;
    let mut steps = Steps {
        id: &h.id,
        clock: &ctx.clock,
        list: Vec::new(),
    };
    let mut results = StepResults::default();
    let mut lamp_on_since: Option<DateTime<Utc>> = None;
    // A device not yet contacted (the daemon just started) gets its first poll before it is
    // judged: a restart must not make every room "not ready" for a moment.
    let reachable = if h.state().health == crate::model::Health::Unknown {
        let first_contact = profile.timing.poll_interval * 2 + profile.timing.reply_timeout;
        h.wait_for(|s| s.reachable, first_contact).await.is_ok()
    } else {
        h.state().reachable
    };
    let read_back = profile.timing.poll_interval * READ_BACK_POLLS + profile.timing.reply_timeout;

    if reachable
        && checks.contains(&crate::profile::Check::PowerOn)
        && needs.contains(&Need::Projection)
    {
        if power(&h.state()) == Some(PowerState::On) {
            results.power_on = Some(Ok(()));
        } else {
            let at = ctx.clock.now();
            let outcome = steps
                .command(h, "power_on", DeviceCommand::Power { on: true })
                .await;
            results.power_on = Some(match outcome {
                // Busy: already warming up; the wait below sees it through.
                CommandOutcome::Done { .. } | CommandOutcome::Busy { .. } => {
                    lamp_on_since = Some(at);
                    let limit = profile.timing.warm_up + profile.selftest.power_on_margin;
                    steps
                        .wait(
                            h,
                            "warm_up",
                            "reported on",
                            |s| power(s) == Some(PowerState::On),
                            limit,
                        )
                        .await
                }
                other => Err(other.to_string()),
            });
        }
    }

    // The projector reads its input on the poll after it is on; the input check needs it.
    let input = Point::device(Quantity::Input);
    let input_known = |s: &DeviceState| s.value(&input).is_some_and(|v| *v != Value::Unknown);
    if matches!(results.power_on, Some(Ok(())))
        && checks.contains(&crate::profile::Check::Input)
        && !input_known(&h.state())
    {
        // A timeout leaves the missing input for the input check to report.
        let _ = steps
            .wait(h, "input", "input read", input_known, read_back)
            .await;
    }

    if reachable && checks.contains(&crate::profile::Check::Setpoint) && needs.contains(&Need::Hvac)
    {
        let asked = settings.setpoint_c;
        let outcome = steps
            .command(
                h,
                "set_setpoint",
                DeviceCommand::SetSetpoint { celsius: asked },
            )
            .await;
        results.setpoint = Some(match outcome {
            CommandOutcome::Done { applied } => {
                // A whole-degree unit holds what it can; that is what must read back.
                let held = applied
                    .filter(|a| a.point == Point::device(Quantity::Setpoint))
                    .and_then(|a| a.value.as_f64())
                    .unwrap_or(asked);
                let sp = Point::device(Quantity::Setpoint);
                steps
                    .wait(
                        h,
                        "read_back",
                        &format!("read back {held} °C"),
                        |s| {
                            s.value(&sp)
                                .and_then(Value::as_f64)
                                .is_some_and(|v| (v - held).abs() < 0.05)
                        },
                        read_back,
                    )
                    .await
                    .map(|()| held)
            }
            other => Err(other.to_string()),
        });
    }

    if let (true, true, Some(preset)) = (
        reachable,
        checks.contains(&crate::profile::Check::Preset)
            && needs.contains(&Need::SpeechReinforcement),
        preset,
    ) {
        let mut failed = Vec::new();
        for (zone, db) in &preset.levels {
            let command = DeviceCommand::SetLevel {
                zone: zone.clone(),
                db: *db,
            };
            if !h.takes(&command) {
                failed.push(format!("{} takes no levels", h.id));
                break;
            }
            let outcome = steps.command(h, "apply_preset", command).await;
            if !outcome.is_done() {
                failed.push(format!("zone {zone}: {outcome}"));
            }
        }
        if failed.is_empty() {
            let tolerance = settings.level_tolerance_db;
            let levels = preset.levels.clone();
            // The levels check looks at the read-back state; a wait that times out leaves the
            // mismatch for it to report.
            let _ = steps
                .wait(
                    h,
                    "read_back",
                    "levels read back",
                    |s| {
                        levels.iter().all(|(zone, want)| {
                            s.value(&Point::new(Subject::zone(zone), Quantity::LevelDb))
                                .and_then(Value::as_f64)
                                .is_none_or(|have| (have - want).abs() <= tolerance + 1e-9)
                        })
                    },
                    read_back,
                )
                .await;
        }
        results.preset = Some(if failed.is_empty() {
            Ok(())
        } else {
            Err(failed.join("; "))
        });
    }

    let state = h.state();
    let now = ctx.clock.now();
    let (batteries, temperatures) = {
        let mut history = ctx.history.lock().unwrap_or_else(|p| p.into_inner());
        history.record(&state);
        (history.batteries(&h.id), history.temperatures(&h.id))
    };
    let meters = h.meters().levels();
    let findings = checks::check_device(&DeviceFacts {
        state: &state,
        profile,
        needs,
        booking,
        settings,
        preset,
        steps: &results,
        batteries: &batteries,
        temperatures: &temperatures,
        meters: &meters,
        time_zone: ctx.time_zone,
        now,
    });

    let mut lamp_hours = 0.0;
    if let Some(since) = lamp_on_since {
        // Left on when the meeting starts before a second warm-up could finish: switching
        // off now would only cost a cool-down and another warm-up.
        let horizon = chrono::Duration::from_std(
            profile.timing.warm_up + profile.timing.cool_down + profile.selftest.power_on_margin,
        )
        .unwrap_or(chrono::Duration::MAX);
        let stays_on = booking.is_some_and(|b| b.start - ctx.clock.now() <= horizon);
        let off_at = ctx.clock.now();
        if stays_on {
            steps.push(
                "standby",
                None,
                true,
                "left on: the meeting starts within the warm-up horizon".to_owned(),
                off_at,
            );
        } else {
            steps
                .command(h, "standby", DeviceCommand::Power { on: false })
                .await;
        }
        lamp_hours = (off_at - since).num_milliseconds().max(0) as f64 / 3_600_000.0;
    }

    DeviceOutcome {
        findings,
        steps: steps.list,
        lamp_hours,
    }
}
