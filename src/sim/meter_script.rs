//! Scripted meter streams for DSP simulators: what a meter reads at a given moment, in dBFS.
//!
//! This module owns the scripts (constant, silence, speech-like, a ramp into overload, a
//! sustained feedback-like rise) as pure, deterministic functions of the time since the script
//! started, so a paused-time test sees exactly the same stream every run. It must not do I/O
//! or know any device's meter unit; the simulators convert dBFS to their own scale.

use std::time::Duration;

use serde::Deserialize;

/// One meter's behaviour over time. In simulator settings:
/// `script = { kind = "speech", level_dbfs = -24.0, seed = 7 }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum MeterScript {
    /// A steady level (a test tone).
    Constant { dbfs: f64 },
    /// Nothing on the line: the converter's noise floor.
    Silence,
    /// Speech-like: syllables of 150 ms scattered around `level_dbfs` (−10…+6 dB), phrases of
    /// about 2.4 s each ending in a short pause at `floor_dbfs`.
    Speech {
        #[serde(default = "default_speech_level")]
        level_dbfs: f64,
        #[serde(default = "default_floor")]
        floor_dbfs: f64,
        #[serde(default)]
        seed: u64,
    },
    /// A straight ramp from `from_dbfs` to `to_dbfs` over `over_secs`, then holding: with
    /// `to_dbfs` at or above 0 this drives the channel into overload.
    Ramp {
        from_dbfs: f64,
        to_dbfs: f64,
        over_secs: f64,
    },
    /// Feedback-like: steady at `start_dbfs` until `onset_secs`, then rising by
    /// `rise_db_per_sec` without pause until it sits at `max_dbfs` (a sustained howl).
    Feedback {
        start_dbfs: f64,
        #[serde(default)]
        onset_secs: f64,
        rise_db_per_sec: f64,
        #[serde(default)]
        max_dbfs: f64,
    },
}

fn default_speech_level() -> f64 {
    -24.0
}
fn default_floor() -> f64 {
    -70.0
}

/// Syllable length of the speech script.
const SYLLABLE: Duration = Duration::from_millis(150);
/// Syllables per phrase, of which the last [`PAUSE_SYLLABLES`] are a pause.
const PHRASE_SYLLABLES: u64 = 16;
const PAUSE_SYLLABLES: u64 = 4;

impl Default for MeterScript {
    fn default() -> Self {
        MeterScript::Speech {
            level_dbfs: default_speech_level(),
            floor_dbfs: default_floor(),
            seed: 0,
        }
    }
}

/// SplitMix64: a tiny, well-mixed hash so the speech script is random-looking yet pure.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A number in [0, 1) from a seed and an index.
fn unit(seed: u64, i: u64) -> f64 {
    (mix(seed ^ mix(i)) >> 11) as f64 / (1u64 << 53) as f64
}

impl MeterScript {
    /// Parse from a TOML value (simulator settings).
    pub fn from_toml(v: &toml::Value) -> Result<MeterScript, String> {
        v.clone()
            .try_into()
            .map_err(|e: toml::de::Error| e.message().trim().to_owned())
    }

    /// The meter reading `t` after the script started, in dBFS.
    pub fn level_at(&self, t: Duration) -> f64 {
        match *self {
            MeterScript::Constant { dbfs } => dbfs,
            MeterScript::Silence => default_floor(),
            MeterScript::Speech {
                level_dbfs,
                floor_dbfs,
                seed,
            } => {
                let syllable = (t.as_millis() / SYLLABLE.as_millis()) as u64;
                let in_phrase = syllable % PHRASE_SYLLABLES;
                if in_phrase >= PHRASE_SYLLABLES - PAUSE_SYLLABLES {
                    floor_dbfs + 3.0 * unit(seed, syllable)
                } else {
                    level_dbfs - 10.0 + 16.0 * unit(seed, syllable)
                }
            }
            MeterScript::Ramp {
                from_dbfs,
                to_dbfs,
                over_secs,
            } => {
                if over_secs <= 0.0 {
                    return to_dbfs;
                }
                let f = (t.as_secs_f64() / over_secs).min(1.0);
                from_dbfs + (to_dbfs - from_dbfs) * f
            }
            MeterScript::Feedback {
                start_dbfs,
                onset_secs,
                rise_db_per_sec,
                max_dbfs,
            } => {
                let after = (t.as_secs_f64() - onset_secs).max(0.0);
                (start_dbfs + rise_db_per_sec * after).min(max_dbfs.max(start_dbfs))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn speech_moves_around_its_level_and_pauses() {
        let s = MeterScript::default();
        let samples: Vec<f64> = (0..400).map(|i| s.level_at(ms(i * 50))).collect();
        let talking: Vec<f64> = samples.iter().copied().filter(|&l| l > -60.0).collect();
        let pauses = samples.len() - talking.len();
        assert!(
            pauses > 50 && pauses < 150,
            "a quarter of the time is pause: {pauses}"
        );
        assert!(talking.iter().all(|&l| (-34.0..=-18.0).contains(&l)));
        let min = talking.iter().copied().fold(f64::MAX, f64::min);
        let max = talking.iter().copied().fold(f64::MIN, f64::max);
        assert!(max - min > 8.0, "speech is not a steady tone");
        // Deterministic: the same script gives the same stream.
        assert_eq!(
            s.level_at(ms(1234)),
            MeterScript::default().level_at(ms(1234))
        );
        let other = MeterScript::Speech {
            level_dbfs: -24.0,
            floor_dbfs: -70.0,
            seed: 9,
        };
        assert_ne!(s.level_at(ms(100)), other.level_at(ms(100)));
    }

    #[test]
    fn ramp_reaches_overload_and_holds() {
        let r = MeterScript::Ramp {
            from_dbfs: -30.0,
            to_dbfs: 3.0,
            over_secs: 10.0,
        };
        assert_eq!(r.level_at(ms(0)), -30.0);
        assert!((r.level_at(ms(5000)) - -13.5).abs() < 1e-9);
        assert_eq!(r.level_at(ms(10_000)), 3.0);
        assert_eq!(r.level_at(ms(60_000)), 3.0);
    }

    #[test]
    fn feedback_rises_monotonically_then_sustains() {
        let f = MeterScript::Feedback {
            start_dbfs: -30.0,
            onset_secs: 2.0,
            rise_db_per_sec: 8.0,
            max_dbfs: -2.0,
        };
        assert_eq!(f.level_at(ms(1000)), -30.0);
        let mut prev = f.level_at(ms(2000));
        for i in 1..=20 {
            let l = f.level_at(ms(2000 + i * 50));
            assert!(l > prev);
            prev = l;
        }
        // ≥ 6 dB over 1 s: protocols.md §6's "possible feedback" heuristic would fire.
        assert!(f.level_at(ms(3000)) - f.level_at(ms(2000)) >= 6.0);
        assert_eq!(f.level_at(ms(30_000)), -2.0);
    }

    #[test]
    fn parses_from_settings() {
        let t: toml::Table = toml::from_str(
            "a = { kind = \"constant\", dbfs = -20.0 }\nb = { kind = \"speech\" }\nc = { kind = \"ramp\", from_dbfs = -30, to_dbfs = 0, over_secs = 5 }\nd = { kind = \"howl\" }\ne = { kind = \"constant\", level = 1 }",
        )
        .unwrap();
        assert_eq!(
            MeterScript::from_toml(&t["a"]),
            Ok(MeterScript::Constant { dbfs: -20.0 })
        );
        assert_eq!(MeterScript::from_toml(&t["b"]), Ok(MeterScript::default()));
        assert!(MeterScript::from_toml(&t["c"]).is_ok());
        assert!(MeterScript::from_toml(&t["d"]).is_err());
        assert!(MeterScript::from_toml(&t["e"]).is_err());
    }
}
