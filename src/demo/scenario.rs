//! The demo's scenario: timed steps relative to the start that inject faults into the demo
//! site's simulators, and the narrator that prints one line for each moment of the story as
//! the daemon reacts (a verdict, a lamp warning, a trim, an alert raised, escalated and
//! acknowledged).
//!
//! The script ([`script`]) and the narration of an event ([`Narrator::line`]) are pure; the
//! task ([`Scenario::start`]) only sleeps to each step and forwards events. It must not make
//! the daemon's decisions: a step that finds no simulator or no escalated alert says so on its
//! line and the story goes on.

use std::collections::BTreeSet;
use std::io::Write;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::Clock;
use crate::events::{Event, EventBus, EventFilter, EventKind};
use crate::model::booking::{BookingId, Readiness, Verdict};
use crate::model::{DeviceId, RoomId};
use crate::playbook::PlaybookHandle;
use crate::schedule::book::Book;
use crate::sim::meter_script::MeterScript;
use crate::sim::SimControl;

/// The boardroom's receiver, whose channel 2 gets a battery too weak for the board meeting.
pub const MICS: &str = "r101-mics";
/// The auditorium's projector, whose lamp is worn to near the end of its life.
pub const PROJECTOR: &str = "r103-projector";
/// The boardroom's DSP, whose ceiling zone starts to howl.
pub const DSP: &str = "r101-dsp";
/// Who acknowledges the escalated alert when the visitor has not.
pub const DEMO_BOT: &str = "demo-bot";

/// What a step does.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Channel `channel` of `device` now holds a battery with `minutes` left.
    Battery {
        device: &'static str,
        channel: u8,
        minutes: f64,
    },
    /// The lamps of `device` have run `hours` more (a worn lamp fitted).
    WearLamp { device: &'static str, hours: u32 },
    /// Channel `index` of meter block `meter_tag` on `device` rises like feedback.
    Feedback {
        device: &'static str,
        meter_tag: &'static str,
        index: usize,
    },
    /// `demo-bot` acknowledges every alert that escalated and nobody took.
    Acknowledge,
    /// The story is told; the daemon runs on for the visitor.
    Done,
}

/// One step of the scenario, `after` the start (in demo time: 60× faster with `--fast`).
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub after: Duration,
    pub action: Action,
}

const fn at(mins: u64, secs: u64) -> Duration {
    Duration::from_secs(mins * 60 + secs)
}

/// The story, in order. The board meeting (schedule::demo) starts 62 minutes after the start,
/// so its T-60 self-test runs at T+2, after the battery went in at T+0:50; the demo site's
/// playbook (`config/demo-playbook.toml`) lets a not-ready room wait one minute for an
/// acknowledgement before it escalates (T+3), then one more minute per contact.
pub fn script() -> Vec<Step> {
    vec![
        Step {
            after: at(0, 50),
            action: Action::Battery {
                device: MICS,
                channel: 2,
                minutes: 100.0,
            },
        },
        Step {
            after: at(2, 20),
            action: Action::WearLamp {
                device: PROJECTOR,
                hours: 120,
            },
        },
        Step {
            after: at(3, 0),
            action: Action::Feedback {
                device: DSP,
                meter_tag: "OutMeter",
                index: 1,
            },
        },
        Step {
            after: at(4, 30),
            action: Action::Acknowledge,
        },
        Step {
            after: at(5, 0),
            action: Action::Done,
        },
    ]
}

/// The feedback-like rise the DSP's meter follows: steady speech level, then 3 dB a second
/// up to full scale, until the level watch's cuts (the meter follows the zone's fader) hold it.
fn howl() -> MeterScript {
    MeterScript::Feedback {
        start_dbfs: -20.0,
        onset_secs: 2.0,
        rise_db_per_sec: 3.0,
        max_dbfs: 0.0,
    }
}

/// Which events the narrator tells.
fn told(kind: &EventKind) -> bool {
    match kind {
        EventKind::SelfTestFinished { readiness, .. } => *readiness == Readiness::NotReady,
        EventKind::FaultRaised { fault, .. } => fault.code == "lamp_life",
        EventKind::AlertChanged { what, .. } => {
            matches!(what.as_str(), "raised" | "escalated" | "acknowledged")
        }
        EventKind::SpeakerProtectionEngaged { .. }
        | EventKind::SpeakerProtectionReleased { .. } => true,
        _ => false,
    }
}

/// Turns the daemon's events into the story's lines; remembers what the story needs later
/// (alerts that escalated, zones already told as protected).
pub struct Narrator {
    tz: Tz,
    escalated: BTreeSet<u64>,
    acknowledged: BTreeSet<u64>,
    protected: BTreeSet<(DeviceId, String)>,
}

impl Narrator {
    pub fn new(tz: Tz) -> Self {
        Self {
            tz,
            escalated: BTreeSet::new(),
            acknowledged: BTreeSet::new(),
            protected: BTreeSet::new(),
        }
    }

    fn clock_time(&self, at: DateTime<Utc>) -> String {
        at.with_timezone(&self.tz).format("%H:%M").to_string()
    }

    /// One line (without the time) for a step the scenario takes.
    fn step_line(&self, action: &Action) -> String {
        match action {
            Action::Battery {
                device,
                channel,
                minutes,
            } => format!(
                "demo: mic {channel} of {device} gets a half-charged battery ({minutes:.0} min left)"
            ),
            Action::WearLamp { device, hours } => {
                format!("demo: the lamp of {device} ages by {hours} h")
            }
            Action::Feedback { device, .. } => {
                format!("demo: a mic near the ceiling speakers of {device} starts to howl")
            }
            Action::Acknowledge => format!("demo: {DEMO_BOT} takes the escalated alerts"),
            Action::Done => "demo: that was the story; the dashboard stays up, Ctrl-C ends the \
                             demo and removes its files"
                .to_owned(),
        }
    }

    /// The line for an event the story tells, `verdict` being the booking's verdict when the
    /// event is a self-test that found the room not ready (and `start` its booking's start).
    pub fn line(
        &mut self,
        event: &Event,
        verdict: Option<(&Verdict, Option<DateTime<Utc>>)>,
    ) -> Option<String> {
        let text = match &event.kind {
            EventKind::SelfTestFinished {
                room,
                readiness: Readiness::NotReady,
                ..
            } => self.not_ready(room, verdict),
            EventKind::FaultRaised {
                device,
                room,
                fault,
            } if fault.code == "lamp_life" => {
                format!("{room}: {device} warns: {} → lamp warning", fault.message)
            }
            EventKind::SpeakerProtectionEngaged {
                device,
                room,
                zone,
                peak_dbfs,
                level_before_db,
                level_after_db,
                ..
            } => {
                if !self.protected.insert((device.clone(), zone.clone())) {
                    return None;
                }
                format!(
                    "{room}: zone {zone} of {device} peaked at {peak_dbfs:.1} dBFS → the level \
                     watch trims it from {level_before_db:.1} dB to {level_after_db:.1} dB \
                     (speaker protection engaged)"
                )
            }
            EventKind::SpeakerProtectionReleased {
                device,
                room,
                zone,
                max_reduction_db,
                ..
            } => {
                self.protected.remove(&(device.clone(), zone.clone()));
                format!(
                    "{room}: zone {zone} of {device} is calm again (cut by up to \
                     {max_reduction_db:.1} dB); speaker protection released"
                )
            }
            EventKind::AlertChanged {
                alert,
                room,
                fault,
                class,
                what,
                by,
                detail,
                ..
            } => {
                let room = room.as_ref().map_or("site", RoomId::as_str);
                match what.as_str() {
                    "raised" => {
                        format!("{room}: alert #{alert} raised: {fault} ({class}): {detail}")
                    }
                    "escalated" => {
                        self.escalated.insert(*alert);
                        format!(
                            "{room}: alert #{alert} escalated: nobody acknowledged it in time: {detail}"
                        )
                    }
                    "acknowledged" => {
                        self.acknowledged.insert(*alert);
                        format!(
                            "{room}: alert #{alert} acknowledged by {}",
                            by.as_deref().unwrap_or("someone")
                        )
                    }
                    _ => return None,
                }
            }
            _ => return None,
        };
        Some(format!("{} {text}", self.clock_time(event.at)))
    }

    fn not_ready(
        &self,
        room: &RoomId,
        verdict: Option<(&Verdict, Option<DateTime<Utc>>)>,
    ) -> String {
        let Some((v, start)) = verdict else {
            return format!("{room}: self-test → not ready");
        };
        let meeting = start.map_or_else(
            || "the next meeting".to_owned(),
            |s| format!("the {} meeting", self.clock_time(s)),
        );
        let reason = v
            .reasons
            .iter()
            .find(|r| r.readiness == Readiness::NotReady)
            .or(v.reasons.first());
        let what = reason.map_or_else(|| "a check failed".to_owned(), |r| r.message.clone());
        let remedy = reason
            .and_then(|r| r.remedy.clone())
            .unwrap_or_else(|| "see the dashboard".to_owned());
        let instead = v.alternative.as_ref().map_or_else(
            || "no other room is free and fit".to_owned(),
            |a| format!("use {a} instead"),
        );
        format!(
            "{room}: {what}; it will not do for {meeting} → not ready; remedy: {remedy}; {instead}"
        )
    }

    /// Alerts that escalated and nobody has acknowledged yet.
    pub fn unacknowledged_escalations(&self) -> Vec<u64> {
        self.escalated
            .difference(&self.acknowledged)
            .copied()
            .collect()
    }
}

/// What the scenario drives and reads: taken from the running daemon.
pub struct Scenario {
    pub events: EventBus,
    pub clock: Clock,
    pub tz: Tz,
    pub simulators: Vec<(DeviceId, SimControl)>,
    pub playbook: PlaybookHandle,
    pub book: Book,
}

impl Scenario {
    pub fn from_daemon(daemon: &crate::app::Daemon, tz: Tz) -> Self {
        Self {
            events: daemon.events.clone(),
            clock: daemon.clock,
            tz,
            simulators: daemon.sim_controls.clone(),
            playbook: daemon.playbook.clone(),
            book: daemon.schedule.book.clone(),
        }
    }

    /// Run the script from now on `tasks` until `cancel`, writing each moment's line to `out`.
    /// The event sink is taken before this returns, so no moment after it is missed.
    pub fn start(self, out: Box<dyn Write + Send>, tasks: &TaskTracker, cancel: CancellationToken) {
        let sink = self
            .events
            .sink("demo-scenario", EventFilter::matching(told), 256);
        let start = self.clock.instant();
        tasks.spawn(self.run(sink, start, out, cancel));
    }

    async fn run(
        self,
        mut sink: crate::events::EventSink,
        start: tokio::time::Instant,
        mut out: Box<dyn Write + Send>,
        cancel: CancellationToken,
    ) {
        let mut narrator = Narrator::new(self.tz);
        let mut steps = script().into_iter().peekable();
        loop {
            let next = steps.peek().map(|s| start + s.after);
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = sleep_until(next) => {
                    let Some(step) = steps.next() else { continue };
                    let line = self.take(&step.action, &narrator);
                    say(&mut out, &format!("{} {line}", narrator.clock_time(self.clock.now())));
                    if step.action == Action::Acknowledge {
                        for id in narrator.unacknowledged_escalations() {
                            if let Err(e) = self.playbook.acknowledge(id, DEMO_BOT) {
                                say(&mut out, &format!("demo: alert #{id} not acknowledged: {e}"));
                            }
                        }
                    }
                }
                ev = sink.recv() => {
                    let Some(ev) = ev else { break };
                    let verdict = self.verdict_for(&ev.kind);
                    let verdict = verdict.as_ref().map(|(v, s)| (v, *s));
                    if let Some(line) = narrator.line(&ev, verdict) {
                        say(&mut out, &line);
                    }
                }
            }
        }
    }

    /// Inject a step's fault; the line says what was done (or why it could not be).
    fn take(&self, action: &Action, narrator: &Narrator) -> String {
        let control = |device: &str| {
            self.simulators
                .iter()
                .find(|(id, _)| id.as_str() == device)
                .map(|(_, c)| c)
        };
        let done = match action {
            Action::Battery {
                device,
                channel,
                minutes,
            } => match control(device) {
                Some(SimControl::Shure(s)) => {
                    s.set_battery_minutes(*channel, *minutes);
                    true
                }
                _ => false,
            },
            Action::WearLamp { device, hours } => match control(device) {
                Some(SimControl::Pjlink(p)) => {
                    p.add_lamp_hours(*hours);
                    true
                }
                _ => false,
            },
            Action::Feedback {
                device,
                meter_tag,
                index,
            } => match control(device) {
                Some(SimControl::Tesira(t)) => t.set_meter_script(meter_tag, *index, howl()),
                _ => false,
            },
            Action::Acknowledge => {
                if narrator.unacknowledged_escalations().is_empty() {
                    return "demo: no escalated alert is waiting; nothing for demo-bot to take"
                        .to_owned();
                }
                true
            }
            Action::Done => true,
        };
        let line = narrator.step_line(action);
        if done {
            line
        } else {
            format!("{line} (skipped: the site has no such simulator)")
        }
    }

    /// The verdict and booking start a not-ready self-test is about.
    fn verdict_for(&self, kind: &EventKind) -> Option<(Verdict, Option<DateTime<Utc>>)> {
        let EventKind::SelfTestFinished {
            room,
            booking,
            readiness: Readiness::NotReady,
            ..
        } = kind
        else {
            return None;
        };
        let from_booking = booking.as_ref().and_then(|b| {
            let id = BookingId::new(b);
            let start = self.book.get(&id).map(|b| b.start);
            self.book.verdict(&id).map(|v| (v, start))
        });
        from_booking.or_else(|| self.book.room_verdict(room).map(|v| (v, None)))
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Print a line now: the reader may be a pipe, which must see each moment as it happens. A
/// closed stdout does not stop the story (the daemon is the point, the lines a courtesy).
fn say(out: &mut Box<dyn Write + Send>, line: &str) {
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::booking::{Reason, TestKind};
    use chrono::TimeZone;

    #[test]
    fn the_story_fits_five_minutes_in_order() {
        let s = script();
        assert!(s.windows(2).all(|w| w[0].after < w[1].after));
        assert!(s.last().is_some_and(|l| l.after <= at(5, 0)));
        // The battery goes in before the board meeting's T-60 test at T+2.
        assert!(s[0].after < at(2, 0));
    }

    /// Every simulator the script drives is in the demo site, with the driver whose control
    /// the step needs (a renamed device would silently skip its moment).
    #[test]
    fn the_script_names_devices_of_the_demo_site() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let text = std::fs::read_to_string(dir.join("demo.toml")).unwrap();
        let cfg = crate::config::parse_site(
            &text,
            "demo.toml",
            &dir,
            &crate::config::Env::fixed(&[("AVWARDEN_DEMO_PJLINK_PASSWORD", "demo")]),
        )
        .expect("the demo site validates");
        let driver = |id: &str| {
            cfg.devices
                .iter()
                .find(|d| d.id.as_str() == id && d.simulated)
                .map(|d| d.profile.driver)
        };
        use crate::profile::DriverKind;
        for step in script() {
            let (device, want) = match step.action {
                Action::Battery { device, .. } => (device, DriverKind::Shure),
                Action::WearLamp { device, .. } => (device, DriverKind::Pjlink),
                Action::Feedback { device, .. } => (device, DriverKind::Tesira),
                Action::Acknowledge | Action::Done => continue,
            };
            assert_eq!(driver(device), Some(want), "{device}");
        }
    }

    fn ev(kind: EventKind) -> Event {
        Event {
            at: Utc.with_ymd_and_hms(2026, 12, 7, 13, 3, 0).unwrap(),
            kind,
        }
    }

    #[test]
    fn a_not_ready_verdict_is_told_with_remedy_and_alternative() {
        let mut n = Narrator::new(chrono_tz::Europe::Berlin);
        let start = Utc.with_ymd_and_hms(2026, 12, 7, 14, 5, 0).unwrap();
        let v = Verdict {
            room: RoomId::new("r101"),
            booking: Some(BookingId::new("b1")),
            kind: TestKind::SelfTest,
            readiness: Readiness::NotReady,
            reasons: vec![Reason {
                readiness: Readiness::NotReady,
                code: "battery_will_not_last".into(),
                need: None,
                device: None,
                point: None,
                message: "mic 2's battery runs out at 14:45".into(),
                remedy: Some("replace the batteries of mic 2".into()),
                runs_out_at: None,
            }],
            started_at: start,
            finished_at: start,
            alternative: Some(RoomId::new("r104")),
        };
        let e = ev(EventKind::SelfTestFinished {
            room: RoomId::new("r101"),
            booking: Some("b1".into()),
            kind: TestKind::SelfTest,
            readiness: Readiness::NotReady,
            reasons: 1,
        });
        let line = n.line(&e, Some((&v, Some(start)))).expect("told");
        assert_eq!(
            line,
            "14:03 r101: mic 2's battery runs out at 14:45; it will not do for the 15:05 \
             meeting → not ready; remedy: replace the batteries of mic 2; use r104 instead"
        );
    }

    #[test]
    fn escalations_are_remembered_until_acknowledged() {
        let mut n = Narrator::new(chrono_tz::UTC);
        let alert = |what: &str, by: Option<&str>| {
            ev(EventKind::AlertChanged {
                alert: 7,
                device: None,
                room: Some(RoomId::new("r101")),
                fault: "self_test_not_ready".into(),
                class: "major".into(),
                what: what.into(),
                by: by.map(str::to_owned),
                detail: "level 1".into(),
            })
        };
        assert!(n.line(&alert("raised", None), None).is_some());
        assert!(n.unacknowledged_escalations().is_empty());
        let l = n.line(&alert("escalated", None), None).unwrap();
        assert!(l.contains("alert #7 escalated"), "{l}");
        assert_eq!(n.unacknowledged_escalations(), vec![7]);
        let l = n
            .line(&alert("acknowledged", Some(DEMO_BOT)), None)
            .unwrap();
        assert!(l.ends_with("acknowledged by demo-bot"), "{l}");
        assert!(n.unacknowledged_escalations().is_empty());
        assert!(n.line(&alert("updated", None), None).is_none());
    }

    #[test]
    fn a_protection_episode_is_told_once() {
        let mut n = Narrator::new(chrono_tz::UTC);
        let engaged = ev(EventKind::SpeakerProtectionEngaged {
            device: DeviceId::new(DSP),
            room: RoomId::new("r101"),
            zone: "ceiling".into(),
            reason: "peak".into(),
            peak_dbfs: -1.0,
            level_before_db: -10.0,
            level_after_db: -13.0,
        });
        assert!(n.line(&engaged, None).is_some());
        assert!(n.line(&engaged, None).is_none());
    }
}
