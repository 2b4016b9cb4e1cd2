//! The protection policy of a loudspeaker zone or a mic input: limits, how hard and how fast
//! the level watch may act, and when it gives the level back.
//!
//! This module owns the policy's keys (each with its unit suffix), their defaults, ranges and
//! validation with the key path of every problem. Defaults come from a DSP profile's
//! `[protection]` table and each zone or mic may override any key in its `protect` table of
//! the site settings. It must not decide anything about levels (that is
//! [`super::controller`]) nor do I/O.
//!
//! Every key is relative or independent of the others on purpose: a zone that overrides only
//! `peak_limit_dbfs` cannot end up with a mute threshold below its limit, because the
//! last-resort threshold is written as a distance above the limit.

use std::time::Duration;

/// One problem of a `[protection]` or `protect` table, at its key path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct PolicyError {
    pub key: String,
    pub message: String,
}

/// A zone's or mic's protection policy, validated. Levels are dBFS on the meter's aligned
/// scale; reductions and steps are dB of the zone's level (or mic's gain) control.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Protection {
    /// A peak meter at or above this for `peak_frames` consecutive frames is a breach.
    pub peak_limit_dbfs: f64,
    pub peak_frames: u32,
    /// The power average of the frames of the last `sustained_window` at or above this is a
    /// breach too (a loudspeaker burns from heat, i.e. from average power, not from peaks).
    pub sustained_limit_dbfs: f64,
    pub sustained_window: Duration,
    /// The level is never trimmed more than this below the technician's set level.
    pub max_reduction_db: f64,
    /// One trim or restore step.
    pub step_db: f64,
    /// How long the meter must stay below the limits minus `hysteresis_db` before each
    /// restore step.
    pub release: Duration,
    pub hysteresis_db: f64,
    /// Last resort: at full reduction and still this far above the peak limit for
    /// `peak_frames` frames, the zone is muted.
    pub mute_above_limit_db: f64,
    /// Feedback suspicion: an output rising by at least this within `feedback_window` while
    /// a mic is open.
    pub feedback_rise_db: f64,
    pub feedback_window: Duration,
    /// A mic whose meter is above this is open (it can feed a loudspeaker).
    pub mic_open_dbfs: f64,
    /// A mic input at or above this for `clip_frames` consecutive frames is clipping.
    pub clip_dbfs: f64,
    pub clip_frames: u32,
    /// How much a mic's gain is cut on clipping or suspected feedback.
    pub mic_step_db: f64,
    /// After a person changes a level, automatic restore and trims wait this long.
    pub manual_cooldown: Duration,
}

impl Default for Protection {
    /// Conservative values for speech reinforcement in meeting rooms. Thresholds belong to the
    /// installation (protocols.md §6: no vendor-neutral numbers exist); the clip and feedback
    /// defaults are the heuristics suggested there (≥ −1 dBFS for 3 frames; +6 dB within 1 s).
    fn default() -> Self {
        Self {
            peak_limit_dbfs: -3.0,
            peak_frames: 3,
            sustained_limit_dbfs: -12.0,
            sustained_window: Duration::from_secs(3),
            max_reduction_db: 12.0,
            step_db: 3.0,
            release: Duration::from_secs(2),
            hysteresis_db: 3.0,
            mute_above_limit_db: 3.0,
            feedback_rise_db: 6.0,
            feedback_window: Duration::from_secs(1),
            mic_open_dbfs: -50.0,
            clip_dbfs: -1.0,
            clip_frames: 3,
            mic_step_db: 3.0,
            manual_cooldown: Duration::from_secs(60),
        }
    }
}

/// Every key of the policy, as written in TOML.
pub const KEYS: &[&str] = &[
    "peak_limit_dbfs",
    "peak_frames",
    "sustained_limit_dbfs",
    "sustained_window_ms",
    "max_reduction_db",
    "step_db",
    "release_ms",
    "hysteresis_db",
    "mute_above_limit_db",
    "feedback_rise_db",
    "feedback_window_ms",
    "mic_open_dbfs",
    "clip_dbfs",
    "clip_frames",
    "mic_step_db",
    "manual_cooldown_secs",
];

impl Protection {
    /// This policy with the keys of `table` applied on top; `path` is the table's key path
    /// (`protection`, `zones[0].protect`) for the errors. Every problem is reported.
    pub fn with_table(
        &self,
        table: &toml::Table,
        path: &str,
    ) -> Result<Protection, Vec<PolicyError>> {
        let mut p = *self;
        let mut errors = Vec::new();
        let at = |k: &str| {
            if path.is_empty() {
                k.to_owned()
            } else {
                format!("{path}.{k}")
            }
        };
        for (key, value) in table {
            let number = match value {
                toml::Value::Integer(i) => Some(*i as f64),
                toml::Value::Float(f) => Some(*f),
                _ => None,
            };
            let Some(n) = number.filter(|n| n.is_finite()) else {
                if KEYS.contains(&key.as_str()) {
                    errors.push(PolicyError {
                        key: at(key),
                        message: format!("expected a number, got {}", value.type_str()),
                    });
                } else {
                    errors.push(unknown(at(key), key));
                }
                continue;
            };
            let mut set = |range: std::ops::RangeInclusive<f64>, apply: &mut dyn FnMut(f64)| {
                if range.contains(&n) {
                    apply(n);
                } else {
                    errors.push(PolicyError {
                        key: at(key),
                        message: format!(
                            "must be between {} and {}, got {n}",
                            range.start(),
                            range.end()
                        ),
                    });
                }
            };
            let ms = |n: f64| Duration::from_secs_f64(n / 1000.0);
            match key.as_str() {
                "peak_limit_dbfs" => set(-60.0..=0.0, &mut |n| p.peak_limit_dbfs = n),
                "peak_frames" => set(1.0..=100.0, &mut |n| p.peak_frames = n as u32),
                "sustained_limit_dbfs" => set(-60.0..=0.0, &mut |n| p.sustained_limit_dbfs = n),
                "sustained_window_ms" => set(100.0..=60_000.0, &mut |n| p.sustained_window = ms(n)),
                "max_reduction_db" => set(0.5..=40.0, &mut |n| p.max_reduction_db = n),
                "step_db" => set(0.25..=12.0, &mut |n| p.step_db = n),
                "release_ms" => set(100.0..=600_000.0, &mut |n| p.release = ms(n)),
                "hysteresis_db" => set(0.0..=20.0, &mut |n| p.hysteresis_db = n),
                "mute_above_limit_db" => set(0.5..=30.0, &mut |n| p.mute_above_limit_db = n),
                "feedback_rise_db" => set(1.0..=40.0, &mut |n| p.feedback_rise_db = n),
                "feedback_window_ms" => set(200.0..=10_000.0, &mut |n| p.feedback_window = ms(n)),
                "mic_open_dbfs" => set(-100.0..=0.0, &mut |n| p.mic_open_dbfs = n),
                "clip_dbfs" => set(-20.0..=0.0, &mut |n| p.clip_dbfs = n),
                "clip_frames" => set(1.0..=100.0, &mut |n| p.clip_frames = n as u32),
                "mic_step_db" => set(0.5..=20.0, &mut |n| p.mic_step_db = n),
                "manual_cooldown_secs" => set(1.0..=3_600.0, &mut |n| {
                    p.manual_cooldown = Duration::from_secs_f64(n)
                }),
                other => errors.push(unknown(at(other), other)),
            }
        }
        for frames in ["peak_frames", "clip_frames"] {
            if let Some(v) = table.get(frames).and_then(|v| v.as_float()) {
                if v.fract() != 0.0 {
                    errors.push(PolicyError {
                        key: at(frames),
                        message: format!("must be a whole number of frames, got {v}"),
                    });
                }
            }
        }
        // Only judged when this table sets one of the two: a zone that overrides only the
        // step is held to its profile's reduction, and the profile was checked on its own.
        if p.step_db > p.max_reduction_db
            && (table.contains_key("step_db") || table.contains_key("max_reduction_db"))
        {
            errors.push(PolicyError {
                key: at("step_db"),
                message: format!(
                    "must not exceed max_reduction_db ({}), got {}",
                    p.max_reduction_db, p.step_db
                ),
            });
        }
        if errors.is_empty() {
            Ok(p)
        } else {
            Err(errors)
        }
    }

    /// The level at or above which a zone at full reduction is muted.
    pub fn mute_at_dbfs(&self) -> f64 {
        self.peak_limit_dbfs + self.mute_above_limit_db
    }
}

fn unknown(key: String, given: &str) -> PolicyError {
    let close = KEYS
        .iter()
        .map(|k| (strsim::jaro_winkler(given, k), *k))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    let message = match close {
        Some((_, k)) => format!("unknown key; did you mean {k}?"),
        None => format!("unknown key; expected one of: {}", KEYS.join(", ")),
    };
    PolicyError { key, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn overrides_apply_on_top_of_the_defaults() {
        let p = Protection::default()
            .with_table(
                &table("peak_limit_dbfs = -6\nrelease_ms = 500\nmanual_cooldown_secs = 5\n"),
                "protect",
            )
            .unwrap();
        assert_eq!(p.peak_limit_dbfs, -6.0);
        assert_eq!(p.release, Duration::from_millis(500));
        assert_eq!(p.manual_cooldown, Duration::from_secs(5));
        assert_eq!(p.step_db, Protection::default().step_db);
        assert_eq!(p.mute_at_dbfs(), -3.0);
    }

    #[test]
    fn every_problem_is_reported_at_its_key() {
        let errs = Protection::default()
            .with_table(
                &table(
                    "peak_limit_dbfs = 3\npeak_lmit_dbfs = -3\nstep_db = \"3\"\npeak_frames = 2.5\n\
                     max_reduction_db = 2\n",
                ),
                "zones[0].protect",
            )
            .unwrap_err();
        let got: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert!(
            got.contains(
                &"zones[0].protect.peak_limit_dbfs: must be between -60 and 0, got 3".to_owned()
            ),
            "{got:?}"
        );
        assert!(
            got.contains(
                &"zones[0].protect.peak_lmit_dbfs: unknown key; did you mean peak_limit_dbfs?"
                    .to_owned()
            ),
            "{got:?}"
        );
        assert!(
            got.contains(&"zones[0].protect.step_db: expected a number, got string".to_owned()),
            "{got:?}"
        );
        assert!(
            got.iter()
                .any(|e| e.starts_with("zones[0].protect.peak_frames: must be a whole")),
            "{got:?}"
        );
        assert!(
            got.iter()
                .any(|e| e.starts_with("zones[0].protect.step_db: must not exceed")),
            "{got:?}"
        );
    }

    #[test]
    fn every_key_has_a_unit_suffix() {
        for k in KEYS {
            assert!(
                ["_dbfs", "_db", "_ms", "_secs", "_frames"]
                    .iter()
                    .any(|s| k.ends_with(s)),
                "{k}"
            );
        }
    }
}
