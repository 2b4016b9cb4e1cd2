//! The level-watch controller of one DSP: a pure step `(state, input, now) -> actions` that
//! turns meter frames and the levels the device reports into trims, restores, last-resort
//! mutes and mic gain cuts.
//!
//! It owns every protection decision and the state they need (the technician's set level, the
//! reduction in force, the breach and calm timers, the meter history for the sustained average
//! and the feedback slope, manual-change cooldowns, blindness). It must not do I/O, use tokio
//! or read a clock: the task around it ([`super::task`]) feeds it inputs stamped with `now`
//! and carries out its actions, so every rule is tested without hardware and without waiting.
//!
//! The rules, as a live-sound engineer expects them:
//! - a breach (peak over the limit for N frames, or the power average over a window) trims
//!   the level by one step in the same step, and again on every frame the breach lasts, down
//!   to `set − max_reduction` (never below the zone's `min_db`);
//! - inside the hysteresis band nothing moves; only after the meter stayed below
//!   `limit − hysteresis` for the release time is one step given back, then one more per
//!   release time, until the set level is reached;
//! - at full reduction and still past the last-resort threshold, the zone is muted; it is
//!   unmuted after a release time of calm, and restores from full reduction;
//! - a level the device reports that we did not command is a person's: it becomes the set
//!   level and nothing automatic touches the level during the cooldown (the last-resort mute
//!   stays armed: a person must never be fought, and a tweeter must never burn);
//! - without a meter frame for three meter periods the zone is blind: it holds whatever it
//!   did last and gives nothing back until frames return.

use std::collections::VecDeque;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

use super::policy::Protection;

/// Levels closer than this are the same level (DSPs print single-precision floats).
const SAME_LEVEL_DB: f64 = 0.3;
/// How many of our recent targets a read-back may still report (several trims can be sent
/// before the first read-back arrives).
const RECENT_TARGETS: usize = 8;
/// A rise within this of the previous frame still counts as "keeps rising" (meter jitter).
const RISE_JITTER_DB: f64 = 1.0;
/// Blind after this many meter periods without a frame (DESIGN.md: a point older than three
/// of its periods is stale).
const BLIND_AFTER_PERIODS: u32 = 3;

fn td(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

/// A zone the controller protects.
#[derive(Debug, Clone, PartialEq)]
pub struct ZoneSpec {
    pub id: String,
    pub policy: Protection,
    /// The lowest level the zone's control takes (the site's `min_db`).
    pub min_db: f64,
    /// How often meter frames arrive.
    pub meter_period: Duration,
}

/// A mic input the controller watches (clipping; the gain feedback suspicion cuts).
#[derive(Debug, Clone, PartialEq)]
pub struct MicSpec {
    pub id: String,
    /// The channel number `SetGain` addresses.
    pub number: u16,
    pub policy: Protection,
    pub min_db: f64,
    pub meter_period: Duration,
}

/// What the controller is told.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Input {
    ZoneMeter {
        zone: usize,
        dbfs: f64,
    },
    MicMeter {
        mic: usize,
        dbfs: f64,
    },
    /// The zone's level as the device reports it (a read-back, or a person's change).
    ZoneLevel {
        zone: usize,
        db: f64,
    },
    ZoneMuted {
        zone: usize,
        on: bool,
    },
    MicGain {
        mic: usize,
        db: f64,
    },
    MicMuted {
        mic: usize,
        on: bool,
    },
    /// Time passes (blindness is noticed on ticks).
    Tick,
}

/// Why protection engaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Breach {
    Peak,
    Sustained,
    /// Past the last-resort threshold at full reduction: muted.
    LastResort,
}

impl Breach {
    pub fn as_str(self) -> &'static str {
        match self {
            Breach::Peak => "peak",
            Breach::Sustained => "sustained",
            Breach::LastResort => "last_resort",
        }
    }
}

/// What the controller wants done. Commands first, then what to record.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    SetLevel {
        zone: usize,
        db: f64,
    },
    SetZoneMute {
        zone: usize,
        on: bool,
    },
    SetGain {
        mic: usize,
        db: f64,
    },
    /// A protection episode began (or escalated to a mute).
    Engaged {
        zone: usize,
        reason: Breach,
        peak_dbfs: f64,
        level_before_db: f64,
        level_after_db: f64,
    },
    /// At full reduction and still over the limit (told once per episode).
    Saturated {
        zone: usize,
        peak_dbfs: f64,
    },
    /// An episode ended: `restored` when the set level was reached again, not when a person
    /// took the level over.
    Released {
        zone: usize,
        restored: bool,
        peak_dbfs: f64,
        duration: Duration,
        level_before_db: f64,
        level_after_db: f64,
        max_reduction_db: f64,
        over_limit: Duration,
    },
    /// A person set the zone's level: it is the new set level.
    ManualChange {
        zone: usize,
        level_db: f64,
    },
    /// Read the zone's level from the device now, and report it (`Input::ZoneLevel`): a
    /// restore step raises the level only once the device confirmed it still holds ours,
    /// so a person's change not yet polled is never overwritten by a raise.
    CheckLevel {
        zone: usize,
    },
    FeedbackSuspected {
        zone: usize,
        mic: usize,
        rise_db: f64,
        gain_before_db: f64,
        gain_after_db: f64,
    },
    InputClipping {
        mic: usize,
        peak_dbfs: f64,
        gain_before_db: f64,
        gain_after_db: f64,
    },
    MeteringLost {
        zone: usize,
    },
    MeteringBack {
        zone: usize,
    },
}

/// A zone's protection state as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Idle,
    Trimming,
    Restoring,
    Muted,
    Blind,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Idle => "idle",
            Mode::Trimming => "trimming",
            Mode::Restoring => "restoring",
            Mode::Muted => "muted",
            Mode::Blind => "blind",
        }
    }
}

#[derive(Debug, Clone)]
struct Episode {
    started: DateTime<Utc>,
    peak_dbfs: f64,
    level_before_db: f64,
    max_reduction_db: f64,
    over_limit: TimeDelta,
    saturated_told: bool,
}

/// One zone's controller state.
#[derive(Debug, Clone)]
pub struct ZoneState {
    pub spec: ZoneSpec,
    set_db: Option<f64>,
    reduction_db: f64,
    muted_by_us: bool,
    mode: Mode,
    since: DateTime<Utc>,
    peak_run: u32,
    mute_run: u32,
    /// Recent frames: instant, dBFS, and linear power (computed once, summed often).
    frames: VecDeque<(DateTime<Utc>, f64, f64)>,
    next_restore_at: Option<DateTime<Utc>>,
    manual_until: Option<DateTime<Utc>>,
    recent_targets: VecDeque<f64>,
    last_frame: DateTime<Utc>,
    blind: bool,
    episode: Option<Episode>,
    feedback_quiet_until: Option<DateTime<Utc>>,
    /// When the device last reported a level that is ours.
    confirmed_at: Option<DateTime<Utc>>,
    /// When a restore step asked for the level to be read, not yet answered by a raise.
    check_asked: Option<DateTime<Utc>>,
}

/// One mic input's controller state.
#[derive(Debug, Clone)]
pub struct MicState {
    pub spec: MicSpec,
    set_db: Option<f64>,
    reduction_db: f64,
    muted: bool,
    last_dbfs: Option<(DateTime<Utc>, f64)>,
    clip_run: u32,
    manual_until: Option<DateTime<Utc>>,
    recent_targets: VecDeque<f64>,
}

/// A zone's protection state, for the API.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ZoneView {
    pub state: Mode,
    /// The technician's level (`None` until the device reported it).
    pub set_level_db: Option<f64>,
    pub reduction_db: f64,
    pub since: DateTime<Utc>,
    /// Until when automatic restore waits after a person's change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manual_until: Option<DateTime<Utc>>,
}

/// The controller of one DSP's zones and mics.
#[derive(Debug, Clone)]
pub struct Controller {
    pub zones: Vec<ZoneState>,
    pub mics: Vec<MicState>,
}

fn remember(targets: &mut VecDeque<f64>, db: f64) {
    if targets.len() == RECENT_TARGETS {
        targets.pop_front();
    }
    targets.push_back(db);
}

impl ZoneState {
    pub fn new(spec: ZoneSpec, now: DateTime<Utc>) -> Self {
        Self {
            spec,
            set_db: None,
            reduction_db: 0.0,
            muted_by_us: false,
            mode: Mode::Idle,
            since: now,
            peak_run: 0,
            mute_run: 0,
            frames: VecDeque::new(),
            next_restore_at: None,
            manual_until: None,
            recent_targets: VecDeque::new(),
            last_frame: now,
            blind: false,
            episode: None,
            feedback_quiet_until: None,
            confirmed_at: None,
            check_asked: None,
        }
    }

    pub fn view(&self) -> ZoneView {
        ZoneView {
            state: self.mode,
            set_level_db: self.set_db,
            reduction_db: self.reduction_db,
            since: self.since,
            manual_until: self.manual_until,
        }
    }

    /// The level we hold the zone at, when its set level is known.
    pub fn level_db(&self) -> Option<f64> {
        self.set_db.map(|s| s - self.reduction_db)
    }

    pub fn set_level_db(&self) -> Option<f64> {
        self.set_db
    }

    pub fn reduction_db(&self) -> f64 {
        self.reduction_db
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The most the level may be reduced now: the policy's clamp, or less when the zone's
    /// control stops above it.
    fn max_reduction(&self) -> f64 {
        let p = &self.spec.policy;
        match self.set_db {
            Some(set) => p.max_reduction_db.min((set - self.spec.min_db).max(0.0)),
            None => 0.0,
        }
    }

    fn in_cooldown(&self, now: DateTime<Utc>) -> bool {
        self.manual_until.is_some_and(|u| now < u)
    }

    fn enter(&mut self, mode: Mode, now: DateTime<Utc>) {
        if self.mode != mode {
            self.mode = mode;
            self.since = now;
        }
    }

    /// The mode that follows from the reduction and mute in force.
    fn settle(&mut self, now: DateTime<Utc>) {
        let mode = if self.blind {
            Mode::Blind
        } else if self.muted_by_us {
            Mode::Muted
        } else if self.reduction_db <= 0.0 {
            Mode::Idle
        } else if self.next_restore_at.is_some() {
            Mode::Restoring
        } else {
            Mode::Trimming
        };
        self.enter(mode, now);
    }

    /// Power average of the frames in the sustained window, and whether they span it (a
    /// breach needs a whole window; calm is judged on what there is).
    fn sustained_dbfs(&self, now: DateTime<Utc>) -> Option<(f64, bool)> {
        let window = td(self.spec.policy.sustained_window);
        let from = now - window;
        let oldest = self.frames.front()?.0;
        let covered = oldest <= from + td(self.spec.meter_period);
        let (sum, n) = self
            .frames
            .iter()
            .rev()
            .take_while(|f| f.0 >= from)
            .fold((0.0, 0u32), |(s, n), f| (s + f.2, n + 1));
        (n > 0).then(|| (10.0 * (sum / n as f64).log10(), covered))
    }

    /// The rise over the feedback window, when every frame in it kept rising.
    fn steady_rise(&self, now: DateTime<Utc>) -> Option<f64> {
        let window = td(self.spec.policy.feedback_window);
        let from = now - window;
        let oldest = self.frames.front()?.0;
        if oldest > from + td(self.spec.meter_period) {
            return None;
        }
        // Newest first: every earlier frame must lie below its successor (within jitter).
        let mut it = self
            .frames
            .iter()
            .rev()
            .take_while(|f| f.0 >= from)
            .map(|f| f.1);
        let last = it.next()?;
        let mut later = last;
        for db in it {
            if db > later + RISE_JITTER_DB {
                return None;
            }
            later = db;
        }
        Some(last - later)
    }

    fn meter(&mut self, dbfs: f64, now: DateTime<Utc>, out: &mut Vec<Action>, z: usize) {
        let p = self.spec.policy;
        if self.blind {
            self.blind = false;
            out.push(Action::MeteringBack { zone: z });
        }
        let since_last = (now - self.last_frame).min(td(self.spec.meter_period) * 3);
        self.last_frame = now;
        let keep = td(p.sustained_window.max(p.feedback_window)) + td(self.spec.meter_period);
        while self.frames.front().is_some_and(|f| f.0 < now - keep) {
            self.frames.pop_front();
        }
        self.frames.push_back((now, dbfs, 10f64.powf(dbfs / 10.0)));

        self.peak_run = if dbfs >= p.peak_limit_dbfs {
            self.peak_run.saturating_add(1)
        } else {
            0
        };
        let sustained = self.sustained_dbfs(now);
        let breach = if self.peak_run >= p.peak_frames {
            Some(Breach::Peak)
        } else if dbfs >= p.sustained_limit_dbfs
            && sustained.is_some_and(|(s, covered)| covered && s >= p.sustained_limit_dbfs)
        {
            // Only while the signal is still loud: the average lags the signal by a window,
            // and trimming a zone that went quiet protects nothing.
            Some(Breach::Sustained)
        } else {
            None
        };
        if let Some(ep) = &mut self.episode {
            ep.peak_dbfs = ep.peak_dbfs.max(dbfs);
            if breach.is_some() || dbfs >= p.peak_limit_dbfs {
                ep.over_limit += since_last;
            }
        }

        let calm = dbfs < p.peak_limit_dbfs - p.hysteresis_db
            && sustained.is_none_or(|(s, _)| s < p.sustained_limit_dbfs - p.hysteresis_db);

        // Last resort: at the clamp (or with no level to trim, or a person's level we must
        // not trim) and still far too loud.
        let at_floor = self.reduction_db >= self.max_reduction() - 1e-9 || self.in_cooldown(now);
        if !self.muted_by_us && at_floor && dbfs >= p.mute_at_dbfs() {
            self.mute_run = self.mute_run.saturating_add(1);
        } else {
            self.mute_run = 0;
        }
        if self.mute_run >= p.peak_frames {
            self.mute_run = 0;
            self.muted_by_us = true;
            self.next_restore_at = None;
            let level = self.level_db().unwrap_or(f64::NAN);
            self.begin_episode(dbfs, now);
            out.push(Action::SetZoneMute { zone: z, on: true });
            out.push(Action::Engaged {
                zone: z,
                reason: Breach::LastResort,
                peak_dbfs: dbfs,
                level_before_db: level,
                level_after_db: level,
            });
            self.settle(now);
            return;
        }

        if let Some(reason) = breach {
            self.next_restore_at = None;
            if self.in_cooldown(now) || self.muted_by_us {
                self.settle(now);
                return;
            }
            let Some(set) = self.set_db else {
                return;
            };
            let before = set - self.reduction_db;
            let target = (self.reduction_db + p.step_db).min(self.max_reduction());
            if target > self.reduction_db + 1e-9 {
                let first = self.episode.is_none();
                self.begin_episode(dbfs, now);
                self.reduction_db = target;
                let after = set - target;
                remember(&mut self.recent_targets, after);
                if let Some(ep) = &mut self.episode {
                    ep.max_reduction_db = ep.max_reduction_db.max(target);
                }
                out.push(Action::SetLevel { zone: z, db: after });
                if first {
                    out.push(Action::Engaged {
                        zone: z,
                        reason,
                        peak_dbfs: dbfs,
                        level_before_db: before,
                        level_after_db: after,
                    });
                }
            } else if let Some(ep) = &mut self.episode {
                if !ep.saturated_told {
                    ep.saturated_told = true;
                    out.push(Action::Saturated {
                        zone: z,
                        peak_dbfs: dbfs,
                    });
                }
            }
            self.settle(now);
            return;
        }

        if !calm {
            // Inside the hysteresis band: hold, and the release time starts over.
            self.next_restore_at = None;
            self.settle(now);
            return;
        }
        if self.in_cooldown(now) || (self.reduction_db <= 0.0 && !self.muted_by_us) {
            self.next_restore_at = None;
            self.settle(now);
            return;
        }
        let due = *self.next_restore_at.get_or_insert(now + td(p.release));
        if now >= due {
            self.next_restore_at = Some(now + td(p.release));
            if self.muted_by_us {
                self.muted_by_us = false;
                out.push(Action::SetZoneMute { zone: z, on: false });
            } else if self
                .check_asked
                .is_none_or(|asked| self.confirmed_at.is_none_or(|c| c < asked))
            {
                // Not confirmed since we asked (or never asked): ask, at most once per
                // release time, and raise on the first frame after the answer.
                if self
                    .check_asked
                    .is_none_or(|asked| now - asked >= td(p.release))
                {
                    self.check_asked = Some(now);
                    out.push(Action::CheckLevel { zone: z });
                }
                self.next_restore_at = Some(due);
            } else if let Some(set) = self.set_db {
                self.check_asked = None;
                self.reduction_db = (self.reduction_db - p.step_db).max(0.0);
                let level = set - self.reduction_db;
                remember(&mut self.recent_targets, level);
                out.push(Action::SetLevel { zone: z, db: level });
                if self.reduction_db <= 0.0 {
                    self.next_restore_at = None;
                    self.end_episode(true, now, out, z);
                }
            }
        }
        self.settle(now);
    }

    fn begin_episode(&mut self, dbfs: f64, now: DateTime<Utc>) {
        if self.episode.is_none() {
            self.episode = Some(Episode {
                started: now,
                peak_dbfs: dbfs,
                level_before_db: self.set_db.unwrap_or(f64::NAN),
                max_reduction_db: self.reduction_db,
                // The frames over the limit that made the breach count too.
                over_limit: td(self.spec.meter_period) * self.peak_run as i32,
                saturated_told: false,
            });
        }
    }

    fn end_episode(&mut self, restored: bool, now: DateTime<Utc>, out: &mut Vec<Action>, z: usize) {
        if let Some(ep) = self.episode.take() {
            out.push(Action::Released {
                zone: z,
                restored,
                peak_dbfs: ep.peak_dbfs,
                duration: (now - ep.started).to_std().unwrap_or_default(),
                level_before_db: ep.level_before_db,
                level_after_db: self.level_db().unwrap_or(f64::NAN),
                max_reduction_db: ep.max_reduction_db,
                over_limit: ep.over_limit.to_std().unwrap_or_default(),
            });
        }
    }

    fn level_seen(&mut self, db: f64, now: DateTime<Utc>, out: &mut Vec<Action>, z: usize) {
        if !db.is_finite() {
            return;
        }
        let Some(_) = self.set_db else {
            // First contact: whatever the zone holds is the technician's level.
            self.set_db = Some(db);
            return;
        };
        let ours = self
            .recent_targets
            .iter()
            .chain(self.level_db().as_ref())
            .any(|t| (t - db).abs() <= SAME_LEVEL_DB);
        if ours {
            self.confirmed_at = Some(now);
            return;
        }
        self.set_db = Some(db);
        self.check_asked = None;
        self.reduction_db = 0.0;
        self.recent_targets.clear();
        self.next_restore_at = None;
        self.manual_until = Some(now + td(self.spec.policy.manual_cooldown));
        out.push(Action::ManualChange {
            zone: z,
            level_db: db,
        });
        self.end_episode(false, now, out, z);
        self.settle(now);
    }

    fn mute_seen(&mut self, on: bool, now: DateTime<Utc>) {
        if self.muted_by_us && !on {
            // A person unmuted what we muted: theirs now, and the cooldown protects it.
            self.muted_by_us = false;
            self.manual_until = Some(now + td(self.spec.policy.manual_cooldown));
            self.settle(now);
        }
    }

    fn tick(&mut self, now: DateTime<Utc>, out: &mut Vec<Action>, z: usize) {
        let limit = td(self.spec.meter_period) * BLIND_AFTER_PERIODS as i32;
        if !self.blind && now - self.last_frame >= limit {
            self.blind = true;
            self.peak_run = 0;
            self.mute_run = 0;
            self.next_restore_at = None;
            self.frames.clear();
            out.push(Action::MeteringLost { zone: z });
            self.settle(now);
        }
    }
}

impl MicState {
    pub fn new(spec: MicSpec) -> Self {
        Self {
            spec,
            set_db: None,
            reduction_db: 0.0,
            muted: false,
            last_dbfs: None,
            clip_run: 0,
            manual_until: None,
            recent_targets: VecDeque::new(),
        }
    }

    pub fn gain_db(&self) -> Option<f64> {
        self.set_db.map(|s| s - self.reduction_db)
    }

    /// Open: not muted and carrying signal (a fresh frame above the open threshold).
    fn open_level(&self, now: DateTime<Utc>) -> Option<f64> {
        let (at, dbfs) = self.last_dbfs?;
        let fresh = now - at < td(self.spec.meter_period) * BLIND_AFTER_PERIODS as i32;
        (!self.muted && fresh && dbfs >= self.spec.policy.mic_open_dbfs).then_some(dbfs)
    }

    /// Cut the gain by one mic step, within the clamp; the gain before and after.
    fn cut(&mut self) -> Option<(f64, f64)> {
        let set = self.set_db?;
        let p = &self.spec.policy;
        let max = p.max_reduction_db.min((set - self.spec.min_db).max(0.0));
        let target = (self.reduction_db + p.mic_step_db).min(max);
        if target <= self.reduction_db + 1e-9 {
            return None;
        }
        let before = set - self.reduction_db;
        self.reduction_db = target;
        let after = set - target;
        remember(&mut self.recent_targets, after);
        Some((before, after))
    }

    fn meter(&mut self, dbfs: f64, now: DateTime<Utc>, out: &mut Vec<Action>, m: usize) {
        self.last_dbfs = Some((now, dbfs));
        let p = self.spec.policy;
        self.clip_run = if dbfs >= p.clip_dbfs {
            self.clip_run.saturating_add(1)
        } else {
            0
        };
        if self.clip_run >= p.clip_frames {
            // Another cut needs another run of clipped frames: the first cut's effect shows
            // a frame or two later.
            self.clip_run = 0;
            if self.manual_until.is_some_and(|u| now < u) {
                return;
            }
            if let Some((before, after)) = self.cut() {
                out.push(Action::SetGain { mic: m, db: after });
                out.push(Action::InputClipping {
                    mic: m,
                    peak_dbfs: dbfs,
                    gain_before_db: before,
                    gain_after_db: after,
                });
            }
        }
    }

    fn gain_seen(&mut self, db: f64, now: DateTime<Utc>) {
        if !db.is_finite() {
            return;
        }
        if self.set_db.is_none() {
            self.set_db = Some(db);
            return;
        }
        let ours = self
            .recent_targets
            .iter()
            .chain(self.gain_db().as_ref())
            .any(|t| (t - db).abs() <= SAME_LEVEL_DB);
        if !ours {
            self.set_db = Some(db);
            self.reduction_db = 0.0;
            self.recent_targets.clear();
            self.manual_until = Some(now + td(self.spec.policy.manual_cooldown));
        }
    }
}

impl Controller {
    pub fn new(zones: Vec<ZoneSpec>, mics: Vec<MicSpec>, now: DateTime<Utc>) -> Self {
        Self {
            zones: zones.into_iter().map(|z| ZoneState::new(z, now)).collect(),
            mics: mics.into_iter().map(MicState::new).collect(),
        }
    }

    /// One step: the actions `input` calls for at `now`, appended to `out` (reused by the
    /// task so a frame costs no allocation).
    pub fn step(&mut self, input: Input, now: DateTime<Utc>, out: &mut Vec<Action>) {
        match input {
            Input::ZoneMeter { zone, dbfs } => {
                if !dbfs.is_finite() {
                    return;
                }
                let Some(z) = self.zones.get_mut(zone) else {
                    return;
                };
                z.meter(dbfs, now, out, zone);
                self.feedback(zone, now, out);
            }
            Input::MicMeter { mic, dbfs } => {
                if let Some(m) = self.mics.get_mut(mic).filter(|_| dbfs.is_finite()) {
                    m.meter(dbfs, now, out, mic);
                }
            }
            Input::ZoneLevel { zone, db } => {
                if let Some(z) = self.zones.get_mut(zone) {
                    z.level_seen(db, now, out, zone);
                }
            }
            Input::ZoneMuted { zone, on } => {
                if let Some(z) = self.zones.get_mut(zone) {
                    z.mute_seen(on, now);
                }
            }
            Input::MicGain { mic, db } => {
                if let Some(m) = self.mics.get_mut(mic) {
                    m.gain_seen(db, now);
                }
            }
            Input::MicMuted { mic, on } => {
                if let Some(m) = self.mics.get_mut(mic) {
                    m.muted = on;
                }
            }
            Input::Tick => {
                for (i, z) in self.zones.iter_mut().enumerate() {
                    z.tick(now, out, i);
                }
            }
        }
    }

    /// Feedback suspicion on zone `zone`: its output kept rising by the policy's rise within
    /// the window while a mic is open. The loudest open mic is cut (the one most likely in
    /// the loop), and the zone must rise through a whole window again before the next cut.
    fn feedback(&mut self, zone: usize, now: DateTime<Utc>, out: &mut Vec<Action>) {
        let z = &self.zones[zone];
        if z.feedback_quiet_until.is_some_and(|u| now < u) {
            return;
        }
        let Some(rise) = z.steady_rise(now) else {
            return;
        };
        let p = z.spec.policy;
        if rise < p.feedback_rise_db {
            return;
        }
        let loudest = self
            .mics
            .iter()
            .enumerate()
            .filter_map(|(i, m)| m.open_level(now).map(|l| (i, l)))
            .max_by(|a, b| a.1.total_cmp(&b.1));
        let Some((mic, _)) = loudest else {
            return;
        };
        self.zones[zone].feedback_quiet_until = Some(now + td(p.feedback_window));
        let m = &mut self.mics[mic];
        if m.manual_until.is_some_and(|u| now < u) {
            return;
        }
        if let Some((before, after)) = m.cut() {
            out.push(Action::SetGain { mic, db: after });
            out.push(Action::FeedbackSuspected {
                zone,
                mic,
                rise_db: rise,
                gain_before_db: before,
                gain_after_db: after,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const PERIOD: Duration = Duration::from_millis(100);

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    fn at(frame: u32) -> DateTime<Utc> {
        t0() + td(PERIOD) * frame as i32
    }

    fn policy() -> Protection {
        Protection {
            manual_cooldown: Duration::from_secs(10),
            ..Protection::default()
        }
    }

    fn controller(mics: usize) -> Controller {
        let zone = ZoneSpec {
            id: "main".into(),
            policy: policy(),
            min_db: -100.0,
            meter_period: PERIOD,
        };
        let mics = (0..mics)
            .map(|i| MicSpec {
                id: format!("m{i}"),
                number: i as u16 + 1,
                policy: policy(),
                min_db: -100.0,
                meter_period: PERIOD,
            })
            .collect();
        let mut c = Controller::new(vec![zone], mics, t0());
        let mut out = Vec::new();
        c.step(Input::ZoneLevel { zone: 0, db: -10.0 }, t0(), &mut out);
        for m in 0..c.mics.len() {
            c.step(Input::MicGain { mic: m, db: 0.0 }, t0(), &mut out);
        }
        assert!(out.is_empty());
        c
    }

    /// A meter frame; a level check is answered at once with the level the zone holds, as
    /// the device would.
    fn feed(c: &mut Controller, frame: u32, dbfs: f64) -> Vec<Action> {
        let mut out = Vec::new();
        c.step(Input::ZoneMeter { zone: 0, dbfs }, at(frame), &mut out);
        answer_checks(c, &out, at(frame));
        out
    }

    fn answer_checks(c: &mut Controller, out: &[Action], now: DateTime<Utc>) {
        if out.iter().any(|a| matches!(a, Action::CheckLevel { .. })) {
            let db = c.zones[0].level_db().unwrap();
            let mut more = Vec::new();
            c.step(Input::ZoneLevel { zone: 0, db }, now, &mut more);
            assert!(more.is_empty(), "{more:?}");
        }
    }

    fn levels(actions: &[Action]) -> Vec<f64> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::SetLevel { db, .. } => Some(*db),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_peak_breach_trims_at_once_and_keeps_trimming_to_the_clamp() {
        let mut c = controller(0);
        assert!(feed(&mut c, 0, -1.0).is_empty());
        assert!(feed(&mut c, 1, -1.0).is_empty());
        let third = feed(&mut c, 2, -1.0);
        assert_eq!(levels(&third), vec![-13.0]);
        assert!(matches!(
            third[1],
            Action::Engaged {
                reason: Breach::Peak,
                level_before_db: -10.0,
                level_after_db: -13.0,
                ..
            }
        ));
        let mut all = Vec::new();
        for f in 3..10 {
            all.extend(feed(&mut c, f, -1.0));
        }
        assert_eq!(levels(&all), vec![-16.0, -19.0, -22.0]);
        assert!(all.iter().any(|a| matches!(a, Action::Saturated { .. })));
        assert_eq!(c.zones[0].mode(), Mode::Trimming);
    }

    #[test]
    fn restore_waits_for_the_release_time_then_steps_back_to_the_set_level() {
        let mut c = controller(0);
        for f in 0..4 {
            feed(&mut c, f, -1.0);
        }
        assert_eq!(c.zones[0].level_db(), Some(-16.0));
        let mut restored = Vec::new();
        for f in 4..100 {
            let out = feed(&mut c, f, -30.0);
            for l in levels(&out) {
                restored.push((f, l));
            }
            if let Some(Action::Released {
                restored: true,
                level_before_db,
                level_after_db,
                over_limit,
                ..
            }) = out.iter().find(|a| matches!(a, Action::Released { .. }))
            {
                assert_eq!((*level_before_db, *level_after_db), (-10.0, -10.0));
                assert!(*over_limit >= Duration::from_millis(300));
            }
        }
        // Calm begins once the loud frames weigh less than the limit minus hysteresis in the
        // 3 s average (frame 33), then one step per 2 s release time, each on the frame after
        // the device confirmed the level.
        assert_eq!(restored, vec![(54, -13.0), (75, -10.0)]);
        assert_eq!(c.zones[0].mode(), Mode::Idle);
    }

    #[test]
    fn the_last_resort_mutes_at_full_reduction_and_unmutes_when_calm() {
        let mut c = controller(0);
        let mut all = Vec::new();
        for f in 0..12 {
            all.extend(feed(&mut c, f, 3.0));
        }
        assert!(all.contains(&Action::SetZoneMute { zone: 0, on: true }));
        assert_eq!(c.zones[0].mode(), Mode::Muted);
        let mut later = Vec::new();
        for f in 12..80 {
            later.extend(feed(&mut c, f, -40.0));
        }
        assert!(later.contains(&Action::SetZoneMute { zone: 0, on: false }));
        assert_eq!(c.zones[0].mode(), Mode::Restoring);
    }

    #[test]
    fn a_sustained_average_over_its_limit_trims_though_no_peak_does() {
        let mut c = controller(0);
        let mut all = Vec::new();
        for f in 0..40 {
            all.extend(feed(&mut c, f, -8.0));
        }
        assert!(all.iter().any(|a| matches!(
            a,
            Action::Engaged {
                reason: Breach::Sustained,
                ..
            }
        )));
    }

    #[test]
    fn a_person_changing_the_level_sets_it_and_is_not_undone_in_the_cooldown() {
        let mut c = controller(0);
        for f in 0..4 {
            feed(&mut c, f, -1.0);
        }
        let mut out = Vec::new();
        // Our own read-back is not a person.
        c.step(Input::ZoneLevel { zone: 0, db: -13.0 }, at(4), &mut out);
        assert!(out.is_empty(), "{out:?}");
        c.step(Input::ZoneLevel { zone: 0, db: -8.0 }, at(5), &mut out);
        assert!(matches!(
            out[0],
            Action::ManualChange { level_db: -8.0, .. }
        ));
        assert!(matches!(
            out[1],
            Action::Released {
                restored: false,
                ..
            }
        ));
        assert_eq!(c.zones[0].set_level_db(), Some(-8.0));
        for f in 6..100 {
            assert!(levels(&feed(&mut c, f, -1.0)).is_empty(), "frame {f}");
        }
        // After the 10 s cooldown, protection resumes from the new set level.
        assert_eq!(levels(&feed(&mut c, 106, -1.0)), vec![-11.0]);
    }

    #[test]
    fn a_restore_step_raises_only_after_the_device_confirmed_our_level() {
        let mut c = controller(0);
        for f in 0..4 {
            feed(&mut c, f, -1.0);
        }
        // Calm from frame 4 on, unanswered: the check is asked for, nothing is raised.
        let mut asked = Vec::new();
        for f in 4..80 {
            let mut out = Vec::new();
            c.step(
                Input::ZoneMeter {
                    zone: 0,
                    dbfs: -40.0,
                },
                at(f),
                &mut out,
            );
            assert!(levels(&out).is_empty(), "raised unconfirmed at {f}");
            if out.contains(&Action::CheckLevel { zone: 0 }) {
                asked.push(f);
            }
        }
        assert!(asked.len() >= 2, "asked again each release time: {asked:?}");
        // A person had turned it down meanwhile: the answer is theirs, and nothing is raised.
        let mut out = Vec::new();
        c.step(Input::ZoneLevel { zone: 0, db: -30.0 }, at(80), &mut out);
        assert!(matches!(
            out[0],
            Action::ManualChange {
                level_db: -30.0,
                ..
            }
        ));
        for f in 81..200 {
            assert!(levels(&feed(&mut c, f, -40.0)).is_empty());
        }
        assert_eq!(c.zones[0].level_db(), Some(-30.0));
    }

    #[test]
    fn blind_is_reported_holds_and_does_not_restore() {
        let mut c = controller(0);
        for f in 0..4 {
            feed(&mut c, f, -1.0);
        }
        let mut out = Vec::new();
        c.step(Input::Tick, at(5), &mut out);
        assert!(out.is_empty());
        c.step(Input::Tick, at(6), &mut out);
        assert_eq!(out, vec![Action::MeteringLost { zone: 0 }]);
        assert_eq!(c.zones[0].mode(), Mode::Blind);
        out.clear();
        c.step(Input::Tick, at(200), &mut out);
        assert!(out.is_empty(), "told once: {out:?}");
        assert_eq!(c.zones[0].level_db(), Some(-16.0), "held");
        let back = feed(&mut c, 201, -40.0);
        assert_eq!(back, vec![Action::MeteringBack { zone: 0 }]);
        assert_eq!(c.zones[0].level_db(), Some(-16.0), "release starts afresh");
    }

    #[test]
    fn a_steady_rise_with_an_open_mic_cuts_that_mic() {
        let mut c = controller(2);
        let mut out = Vec::new();
        let mut found = None;
        for f in 0..30u32 {
            c.step(
                Input::MicMeter {
                    mic: 0,
                    dbfs: -60.0,
                },
                at(f),
                &mut out,
            );
            c.step(
                Input::MicMeter {
                    mic: 1,
                    dbfs: -30.0,
                },
                at(f),
                &mut out,
            );
            let level = -40.0 + f as f64 * 0.8;
            let o = feed(&mut c, f, level);
            if let Some(a) = o
                .iter()
                .find(|a| matches!(a, Action::FeedbackSuspected { .. }))
            {
                found = Some((f, a.clone(), o.clone()));
                break;
            }
        }
        let (f, a, o) = found.expect("feedback suspected");
        assert!(f <= 11, "within about a second: frame {f}");
        assert!(matches!(
            a,
            Action::FeedbackSuspected {
                mic: 1,
                gain_before_db: 0.0,
                gain_after_db: -3.0,
                ..
            }
        ));
        assert!(o.contains(&Action::SetGain { mic: 1, db: -3.0 }));
    }

    #[test]
    fn a_rise_with_every_mic_closed_is_not_feedback() {
        let mut c = controller(1);
        let mut out = Vec::new();
        for f in 0..30u32 {
            c.step(Input::MicMuted { mic: 0, on: true }, at(f), &mut out);
            c.step(
                Input::MicMeter {
                    mic: 0,
                    dbfs: -20.0,
                },
                at(f),
                &mut out,
            );
            out.extend(feed(&mut c, f, -40.0 + f as f64 * 0.8));
        }
        assert!(!out
            .iter()
            .any(|a| matches!(a, Action::FeedbackSuspected { .. })));
    }

    #[test]
    fn a_clipping_mic_is_trimmed_and_warned_about() {
        let mut c = controller(1);
        let mut out = Vec::new();
        for f in 0..3 {
            c.step(Input::MicMeter { mic: 0, dbfs: -0.5 }, at(f), &mut out);
        }
        assert_eq!(out[0], Action::SetGain { mic: 0, db: -3.0 });
        assert!(matches!(out[1], Action::InputClipping { .. }));
    }

    #[test]
    fn garbage_inputs_are_ignored() {
        let mut c = controller(0);
        let mut out = Vec::new();
        c.step(Input::ZoneMeter { zone: 7, dbfs: 0.0 }, t0(), &mut out);
        c.step(
            Input::ZoneMeter {
                zone: 0,
                dbfs: f64::NAN,
            },
            t0(),
            &mut out,
        );
        c.step(
            Input::ZoneLevel {
                zone: 0,
                db: f64::INFINITY,
            },
            t0(),
            &mut out,
        );
        c.step(Input::MicGain { mic: 3, db: 0.0 }, t0(), &mut out);
        assert!(out.is_empty());
    }

    /// Meter frames in dBFS, some gaps (no frame for a while), and some person's changes.
    #[derive(Debug, Clone)]
    enum Ev {
        Frame(f64),
        Gap(u32),
        Person(f64),
    }

    fn events() -> impl Strategy<Value = Vec<Ev>> {
        prop::collection::vec(
            prop_oneof![
                8 => (-60.0..6.0f64).prop_map(Ev::Frame),
                1 => (1u32..50).prop_map(Ev::Gap),
                1 => (-40.0..0.0f64).prop_map(Ev::Person),
            ],
            1..400,
        )
    }

    /// Runs the events; calls `check` after every step with the zone before and after.
    fn run(
        evs: &[Ev],
        mut check: impl FnMut(&Ev, &ZoneState, &ZoneState, &[Action], DateTime<Utc>),
    ) {
        let mut c = controller(0);
        let mut frame = 0u32;
        for ev in evs {
            frame += 1;
            let mut out = Vec::new();
            let before = c.zones[0].clone();
            match ev {
                Ev::Frame(db) => {
                    c.step(Input::ZoneMeter { zone: 0, dbfs: *db }, at(frame), &mut out);
                    answer_checks(&mut c, &out, at(frame));
                }
                Ev::Gap(n) => {
                    frame += n;
                    c.step(Input::Tick, at(frame), &mut out);
                }
                Ev::Person(db) => {
                    c.step(Input::ZoneLevel { zone: 0, db: *db }, at(frame), &mut out)
                }
            }
            check(ev, &before, &c.zones[0], &out, at(frame));
        }
    }

    proptest! {
        #[test]
        fn the_level_never_leaves_its_clamp(evs in events()) {
            run(&evs, |_, _, z, out, _| {
                let set = z.set_level_db().unwrap();
                let max = z.spec.policy.max_reduction_db;
                for l in levels(out) {
                    assert!(l <= set + 1e-9 && l >= set - max - 1e-9, "{l} outside [{}, {set}]", set - max);
                }
                assert!((0.0..=max + 1e-9).contains(&z.reduction_db()));
            });
        }

        #[test]
        fn nothing_moves_inside_the_hysteresis_band(
            evs in events(),
            band in prop::collection::vec(-5.9..-3.1f64, 1..100),
        ) {
            // Whatever came before, frames in [limit − hysteresis, limit) never change a level.
            let mut c = controller(0);
            let mut frame = 0;
            let mut out = Vec::new();
            for ev in &evs {
                frame += 1;
                if let Ev::Frame(db) = ev {
                    c.step(Input::ZoneMeter { zone: 0, dbfs: *db }, at(frame), &mut out);
                    answer_checks(&mut c, &out, at(frame));
                }
            }
            let mut mutes = 0;
            for db in band {
                frame += 1;
                let mut out = Vec::new();
                c.step(Input::ZoneMeter { zone: 0, dbfs: db }, at(frame), &mut out);
                // A sustained average over the limit may still trim (down only).
                let before = c.zones[0].level_db().unwrap();
                for l in levels(&out) {
                    assert!(l <= before + 1e-9, "restored inside the band");
                }
                mutes += out.iter().filter(|a| matches!(a, Action::SetZoneMute { on: false, .. })).count();
            }
            assert_eq!(mutes, 0, "unmuted inside the band");
        }

        #[test]
        fn a_breach_always_acts_in_the_same_step(evs in events()) {
            run(&evs, |ev, before, after, out, now| {
                let Ev::Frame(db) = ev else { return };
                let p = after.spec.policy;
                let peak = after.peak_run >= p.peak_frames && *db >= p.peak_limit_dbfs;
                let room = before.reduction_db() + 1e-9 < before.max_reduction();
                if peak && room && !before.in_cooldown(now) && !before.muted_by_us {
                    assert!(!levels(out).is_empty(), "breach at {db} without a trim");
                }
            });
        }

        #[test]
        fn restore_is_monotonic_and_ends_at_the_set_level(
            evs in events(),
            calm in 200u32..400,
        ) {
            let mut c = controller(0);
            let mut frame = 0;
            let mut out = Vec::new();
            for ev in &evs {
                frame += 1;
                if let Ev::Frame(db) = ev {
                    c.step(Input::ZoneMeter { zone: 0, dbfs: *db }, at(frame), &mut out);
                    answer_checks(&mut c, &out, at(frame));
                }
            }
            // The sustained average may still trim while the loud frames fill its window.
            for _ in 0..40 {
                frame += 1;
                c.step(Input::ZoneMeter { zone: 0, dbfs: -40.0 }, at(frame), &mut out);
                answer_checks(&mut c, &out, at(frame));
            }
            let mut last = c.zones[0].level_db().unwrap();
            for _ in 0..calm {
                frame += 1;
                let mut out = Vec::new();
                c.step(Input::ZoneMeter { zone: 0, dbfs: -40.0 }, at(frame), &mut out);
                answer_checks(&mut c, &out, at(frame));
                for l in levels(&out) {
                    assert!(l >= last, "restore went down: {last} -> {l}");
                    last = l;
                }
            }
            assert_eq!(c.zones[0].level_db(), c.zones[0].set_level_db());
            assert_eq!(c.zones[0].mode(), Mode::Idle);
        }

        #[test]
        fn a_persons_change_is_never_undone_in_its_cooldown(evs in events()) {
            let mut cooldown: Option<(DateTime<Utc>, f64)> = None;
            run(&evs, |ev, _, z, out, now| {
                if let Ev::Person(db) = ev {
                    if out.iter().any(|a| matches!(a, Action::ManualChange { .. })) {
                        cooldown = Some((now + td(z.spec.policy.manual_cooldown), *db));
                    }
                }
                if let Some((until, db)) = cooldown {
                    if now < until {
                        assert!(levels(out).is_empty(), "level moved in the cooldown");
                        assert_eq!(z.set_level_db(), Some(db));
                    }
                }
            });
        }
    }
}
