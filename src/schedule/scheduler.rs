//! The scheduler task: asks the planner what is due, runs it, remembers durably that it ran,
//! and sleeps until the next job, a booking change or a request — whichever comes first.
//!
//! Thin on purpose: what is due is [`plan::due`]'s answer, the test is
//! [`selftest::run`]'s, the end of a meeting is [`meeting`]'s. After a restart the jobs that
//! ran are read back from the records file, so nothing runs twice, and a job missed while the
//! daemon was down runs once if it is still inside its grace. Must not read the wall clock
//! except through its [`Clock`].

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::alternative::{alternatives, RoomCandidate};
use super::book::Book;
use super::history::History;
use super::meeting::{self, RoomSnapshot};
use super::plan::{self, Job, JobKind, PlanSettings};
use super::selftest::{self, SelfTestContext};
use super::service::{RunError, RunRequest};
use crate::clock::Clock;
use crate::config::{Room, SelfTestSettings};
use crate::events::{EventBus, EventKind};
use crate::model::{
    Booking, BookingId, Capability, DeviceCommand, Quantity, Readiness, RoomId, Subject, TestKind,
    Verdict,
};
use crate::records::bookings::DoneJob;
use crate::records::{Actor, LogbookHandle, NewEntry};
use crate::runtime::{DeviceHandle, Fleet};

/// The longest the scheduler sleeps without looking again (a booking change wakes it at
/// once; this bounds the effect of anything it is not told of, such as a learnt thermal rate).
const MAX_SLEEP: std::time::Duration = std::time::Duration::from_secs(60);

/// Everything the task needs.
pub struct Scheduler {
    pub book: Book,
    pub fleet: Arc<Fleet>,
    pub logbook: LogbookHandle,
    pub events: EventBus,
    pub clock: Clock,
    pub tz: Tz,
    pub plan: PlanSettings,
    pub selftest: SelfTestSettings,
    pub rooms: Vec<Room>,
    pub history: Arc<Mutex<History>>,
    pub requests: mpsc::Receiver<RunRequest>,
    /// Jobs that ran before this start (read from the records file).
    pub done: HashSet<DoneJob>,
}

impl Scheduler {
    fn context(&self, room: &RoomId) -> SelfTestContext {
        SelfTestContext {
            settings: self.selftest.clone(),
            presets: self
                .rooms
                .iter()
                .find(|r| &r.id == room)
                .map(|r| r.presets.clone())
                .unwrap_or_default(),
            history: self.history.clone(),
            time_zone: self.tz,
            clock: self.clock,
        }
    }

    fn handles(&self, room: &RoomId) -> Vec<DeviceHandle> {
        self.fleet.room(room)
    }

    fn is_done(&self, key: &plan::JobKey) -> bool {
        let done = |kind: JobKind, at: DateTime<Utc>| {
            self.done.contains(&DoneJob {
                booking: key.booking.to_string(),
                kind: kind.as_str().to_owned(),
                at,
            })
        };
        if key.kind == JobKind::Precondition {
            // The lead follows the room's learnt thermal rate, so the planned instant moves;
            // a booking's room is pre-conditioned once whatever the instant was.
            return self.done.iter().any(|d| {
                d.booking == key.booking.as_str() && d.kind == JobKind::Precondition.as_str()
            });
        }
        done(key.kind, key.at)
    }

    async fn mark(&mut self, job: &Job, outcome: &'static str) {
        let d = DoneJob {
            booking: job.booking.to_string(),
            kind: job.kind.as_str().to_owned(),
            at: job.at,
        };
        if let Err(e) = self
            .logbook
            .job_done(d.clone(), self.clock.now(), outcome)
            .await
        {
            // Remembered in memory all the same: it must not run again in this process.
            tracing::warn!(job = %job.key(), error = %e, "a job that ran could not be stored");
        }
        self.done.insert(d);
    }

    /// Each room that a booking in `bookings` wants conditioned: how long before its start to
    /// begin, from the room's current temperature and its learnt rate. Only those rooms: the
    /// plan reads a room's lead for a booking that needs HVAC and for nothing else, and a
    /// building of hundreds of rooms is asked on every pass.
    fn refresh_leads(&mut self, bookings: &[Booking]) {
        let target = self.selftest.setpoint_c;
        let rooms: std::collections::BTreeSet<&RoomId> = bookings
            .iter()
            .filter(|b| b.needs.hvac)
            .map(|b| &b.room)
            .filter(|id| self.rooms.iter().any(|r| &r.id == *id))
            .collect();
        let mut leads = std::collections::HashMap::new();
        for room in rooms {
            for h in self.fleet.in_room_with(room, Capability::Temperature) {
                let temperature = h.with_state(|s| {
                    s.value(&crate::model::Point::device(Quantity::Temperature))
                        .and_then(|v| v.as_f64())
                });
                let Some(t) = temperature else {
                    continue;
                };
                let Some(profile_rate) = h
                    .profile
                    .as_ref()
                    .map(|p| p.selftest.thermal_rate_c_per_min)
                else {
                    continue;
                };
                let rate = {
                    let hist = self.history.lock().unwrap_or_else(|p| p.into_inner());
                    super::thermal::rate_or(&hist.temperatures(&h.id), profile_rate)
                };
                let lead = super::thermal::precondition_lead(t, target, rate);
                leads.insert(room.clone(), lead.max(self.plan.precondition_lead));
            }
        }
        self.plan.precondition_leads = leads;
    }

    pub async fn run(mut self, cancel: CancellationToken) {
        let mut changes = self.book.subscribe();
        let mut snapshots: BTreeMap<BookingId, RoomSnapshot> = BTreeMap::new();
        loop {
            let now = self.clock.now();
            let horizon = now - chrono::Duration::hours(26);
            let bookings = self.book.between(horizon, DateTime::<Utc>::MAX_UTC);
            self.refresh_leads(&bookings);
            let due = plan::due(&bookings, &self.plan, self.tz, &|k| self.is_done(k), now);
            for job in &due.missed {
                tracing::warn!(job = %job.key(), "a job was missed while the daemon was down");
                self.mark(job, "missed").await;
            }
            for job in due.run {
                if cancel.is_cancelled() {
                    return;
                }
                let booking = bookings.iter().find(|b| b.id == job.booking).cloned();
                if let Some(b) = booking {
                    self.execute(&job, &b, &bookings, &mut snapshots).await;
                }
                self.mark(&job, "ran").await;
            }
            // Wake at the next job, on a change, on a request, or after MAX_SLEEP.
            let sleep = due
                .next_at
                .and_then(|at| (at - self.clock.now()).to_std().ok())
                .unwrap_or(MAX_SLEEP)
                .min(MAX_SLEEP);
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(sleep) => {}
                r = changes.changed() => if r.is_err() { return },
                req = self.requests.recv() => match req {
                    Some(req) => self.answer(req).await,
                    None => return,
                },
            }
        }
    }

    async fn answer(&mut self, req: RunRequest) {
        let booking = match &req.booking {
            Some(id) => match self.book.get(id) {
                Some(b) => Some(b),
                None => {
                    let _ = req
                        .reply
                        .send(Err(RunError::UnknownBooking(id.to_string())));
                    return;
                }
            },
            None => None,
        };
        let v = self
            .test(&req.room, booking.as_ref(), TestKind::Manual)
            .await;
        let _ = req.reply.send(Ok(v));
    }

    /// Run a room's test, find an alternative room when it is not ready, store and announce the
    /// verdict.
    async fn test(&mut self, room: &RoomId, booking: Option<&Booking>, kind: TestKind) -> Verdict {
        let handles = self.handles(room);
        let ctx = self.context(room);
        let run = selftest::run(room, &handles, booking, kind, &ctx).await;
        let mut verdict = run.verdict;
        if verdict.readiness == Readiness::NotReady {
            if let Some(b) = booking {
                verdict.alternative = self.alternative(b);
            }
        }
        let extra = serde_json::json!({
            "steps": run.steps,
            "lamp_hours_spent": run.lamp_hours_spent,
        });
        // The lamp hours a test costs are counted in the archive, on the projectors it lit.
        let lit: std::collections::BTreeSet<_> = run
            .steps
            .iter()
            .filter(|s| s.step == "power_on" && s.ok)
            .map(|s| s.device.clone())
            .collect();
        if run.lamp_hours_spent > 0.0 && !lit.is_empty() {
            let share = run.lamp_hours_spent / lit.len() as f64;
            for device in lit {
                let add = crate::records::CounterUpdate::Add {
                    name: "selftest.lamp_hours".into(),
                    delta: share,
                };
                let _ = self
                    .logbook
                    .counters(device, self.clock.now(), vec![add])
                    .await;
            }
        }
        if let Err(e) = self.logbook.verdict(verdict.clone(), extra).await {
            tracing::warn!(%room, error = %e, "a verdict could not be stored");
        }
        self.book.keep_verdict(verdict.clone());
        self.events.emit(
            self.clock.now(),
            EventKind::SelfTestFinished {
                room: room.clone(),
                booking: verdict.booking.as_ref().map(ToString::to_string),
                kind,
                readiness: verdict.readiness,
                reasons: verdict.reasons.len(),
            },
        );
        verdict
    }

    /// The nearest room that is free for the whole slot, large and equipped enough, and not
    /// known to be not ready.
    fn alternative(&self, booking: &Booking) -> Option<RoomId> {
        let readiness = self.book.room_readiness();
        let candidates: Vec<RoomCandidate> = self
            .rooms
            .iter()
            .map(|r| {
                let handles = self.fleet.room(&r.id);
                let mut capabilities: Vec<Capability> = handles
                    .iter()
                    .flat_map(|h| h.capabilities().iter().copied())
                    .collect();
                capabilities.sort();
                capabilities.dedup();
                let wireless_channels = handles
                    .iter()
                    .filter(|h| h.can(Capability::TxPresent))
                    .map(|h| {
                        let s = h.state();
                        let mut chans: Vec<u8> = s
                            .readings
                            .keys()
                            .filter_map(|p| match p.subject {
                                Subject::Channel(n) => Some(n),
                                _ => None,
                            })
                            .collect();
                        chans.dedup();
                        chans.len() as u8
                    })
                    .sum();
                RoomCandidate {
                    id: r.id.clone(),
                    building: r.building.clone(),
                    floor: r.floor,
                    capacity: r.capacity,
                    capabilities,
                    wireless_channels,
                    latest: readiness.get(&r.id).copied(),
                }
            })
            .collect();
        let others = self.book.between(booking.start, booking.end);
        alternatives(booking, &candidates, &others)
            .into_iter()
            .next()
    }

    async fn execute(
        &mut self,
        job: &Job,
        b: &Booking,
        bookings: &[Booking],
        snapshots: &mut BTreeMap<BookingId, RoomSnapshot>,
    ) {
        tracing::info!(job = %job.key(), room = %b.room, "running");
        match job.kind {
            JobKind::FullTest => {
                self.test(&b.room, Some(b), TestKind::Full).await;
            }
            JobKind::SelfTest => {
                self.test(&b.room, Some(b), TestKind::SelfTest).await;
            }
            JobKind::Recheck => {
                self.test(&b.room, Some(b), TestKind::Recheck).await;
            }
            JobKind::ReadyDeadline => {
                let readiness = self.book.verdict(&b.id).map(|v| v.readiness);
                if readiness != Some(Readiness::Ready) {
                    self.events.emit(
                        self.clock.now(),
                        EventKind::NotReadyAtDeadline {
                            room: b.room.clone(),
                            booking: b.id.to_string(),
                            readiness,
                        },
                    );
                }
            }
            JobKind::Precondition => self.precondition(b).await,
            JobKind::Start => {
                let snap = RoomSnapshot {
                    at: Some(self.clock.now()),
                    devices: self
                        .handles(&b.room)
                        .iter()
                        .map(|h| meeting::snapshot(&h.state()))
                        .collect(),
                };
                snapshots.insert(b.id.clone(), snap);
                self.events.emit(
                    self.clock.now(),
                    EventKind::BookingStarted {
                        room: b.room.clone(),
                        booking: b.id.to_string(),
                    },
                );
            }
            JobKind::End => {
                // A restart between start and end lost the snapshot: nothing is restored
                // blindly, but the power-down still happens.
                let start = snapshots.remove(&b.id).unwrap_or_default();
                let handles = self.handles(&b.room);
                let minutes = (b.end - b.start).num_seconds() as f64 / 60.0;
                let (steps, usage) =
                    meeting::end_of_meeting(&handles, &start, job.power_down, minutes).await;
                let now = self.clock.now();
                for (device, updates) in usage {
                    let _ = self.logbook.counters(device, now, updates).await;
                }
                let follows = bookings
                    .iter()
                    .any(|n| n.room == b.room && n.id != b.id && n.is_active() && n.start >= b.end);
                let mut e = NewEntry::new(
                    now,
                    "meeting_closed",
                    Actor::System,
                    format!(
                        "{}: booking {} closed: {} setting(s) restored{}",
                        b.room,
                        b.id,
                        steps.len(),
                        if job.power_down {
                            ", equipment switched off"
                        } else {
                            ""
                        }
                    ),
                );
                e.room = Some(b.room.to_string());
                e.booking = Some(b.id.to_string());
                e.data = serde_json::json!({ "steps": steps, "power_down": job.power_down, "next_booking_soon": follows && !job.power_down });
                let _ = self.logbook.record(e);
                self.events.emit(
                    now,
                    EventKind::BookingEnded {
                        room: b.room.clone(),
                        booking: b.id.to_string(),
                    },
                );
            }
        }
    }

    /// Bring the room to temperature: the setpoint on every HVAC unit, switched on when off.
    async fn precondition(&mut self, b: &Booking) {
        let celsius = self.selftest.setpoint_c;
        let mut done = Vec::new();
        for h in self.fleet.in_room_with(&b.room, Capability::Setpoint) {
            let on = DeviceCommand::Power { on: true };
            if h.takes(&on) {
                let outcome = h.command(on).await;
                done.push(serde_json::json!({ "device": h.id, "command": "power_on", "outcome": outcome.to_string() }));
            }
            let outcome = h.command(DeviceCommand::SetSetpoint { celsius }).await;
            done.push(serde_json::json!({ "device": h.id, "command": "set_setpoint", "celsius": celsius, "outcome": outcome.to_string() }));
        }
        let mut e = NewEntry::new(
            self.clock.now(),
            "preconditioning_started",
            Actor::System,
            format!(
                "{}: conditioning to {celsius} °C for booking {} at {}",
                b.room,
                b.id,
                crate::records::format_time(b.start)
            ),
        );
        e.room = Some(b.room.to_string());
        e.booking = Some(b.id.to_string());
        e.data = serde_json::json!({ "steps": done, "setpoint_c": celsius });
        let _ = self.logbook.record(e);
    }
}
