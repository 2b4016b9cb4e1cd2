//! Meter alignment: how a device's meter reading maps onto dBFS, so that the level watch sees
//! one scale whatever the make (protocols.md §6: "normalise everything to dBFS per device
//! profile, and keep the device's dBu↔dBFS alignment as a per-device constant").
//!
//! This module owns the pure conversion and its validation only. It must not do I/O, keep
//! state, or know any wire format: drivers hand it a number in the device's own unit.
//! [`stream`] carries the aligned samples from the drivers to their consumers.

pub mod stream;

use serde::Deserialize;

/// The lowest level reported, in dBFS. A linear meter at 0.0 (or a dBu meter at its floor) is
/// silence, not minus infinity: JSON, the dashboard and the level watch all need a finite
/// number. 24-bit converters bottom out near −144 dBFS; nothing useful is quieter than −120.
pub const SILENCE_DBFS: f64 = -120.0;

/// How a device's meter unit relates to dBFS. Written in a profile's `[options]` as
/// `meter_alignment = { kind = "dbu", zero_dbfs_at_dbu = 24.0 }`, overridable per device.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Alignment {
    /// Meter reads dBu; `zero_dbfs_at_dbu` is the analogue level of digital full scale
    /// (Tesira meters clip at +24 dBu, so 0 dBFS = +24 dBu there; protocols.md §4.1, §6).
    Dbu { zero_dbfs_at_dbu: f64 },
    /// Meter reads a linear amplitude with 1.0 = 0 dBFS (X32-style; protocols.md §6).
    Linear,
    /// Meter reads dB on a scale that differs from dBFS by a constant: dBFS = reading + `db`
    /// (Shure ULX-D sample offset −50, or 0 for devices that already report dBFS).
    Offset { db: f64 },
}

/// Why an alignment from a profile or site config is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AlignmentError(pub String);

impl Alignment {
    /// Parse and validate an alignment from a TOML value (profile option or site setting).
    pub fn from_toml(value: &toml::Value) -> Result<Alignment, AlignmentError> {
        let a: Alignment = value
            .clone()
            .try_into()
            .map_err(|e: toml::de::Error| AlignmentError(e.message().trim().to_owned()))?;
        a.validate()?;
        Ok(a)
    }

    pub fn validate(&self) -> Result<(), AlignmentError> {
        match *self {
            Alignment::Dbu { zero_dbfs_at_dbu } => {
                // Real converters align 0 dBFS somewhere between about +10 and +28 dBu; a
                // value far outside that is a typo (dBFS entered instead of dBu, say).
                if !(zero_dbfs_at_dbu.is_finite() && (0.0..=40.0).contains(&zero_dbfs_at_dbu)) {
                    return Err(AlignmentError(format!(
                        "zero_dbfs_at_dbu must be between 0 and 40 dBu, got {zero_dbfs_at_dbu}"
                    )));
                }
            }
            Alignment::Linear => {}
            Alignment::Offset { db } => {
                if !(db.is_finite() && (-200.0..=200.0).contains(&db)) {
                    return Err(AlignmentError(format!(
                        "offset db must be between -200 and 200, got {db}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The device reading in dBFS, or `None` when the reading is not a number (NaN, ±∞):
    /// the caller counts that as bad input instead of passing it on.
    pub fn to_dbfs(&self, reading: f64) -> Option<f64> {
        if !reading.is_finite() {
            return None;
        }
        let dbfs = match *self {
            Alignment::Dbu { zero_dbfs_at_dbu } => reading - zero_dbfs_at_dbu,
            Alignment::Linear => {
                if reading <= 0.0 {
                    SILENCE_DBFS
                } else {
                    20.0 * reading.log10()
                }
            }
            Alignment::Offset { db } => reading + db,
        };
        Some(dbfs.max(SILENCE_DBFS))
    }

    /// The device reading that shows `dbfs` (simulators use this to speak the device's unit).
    pub fn from_dbfs(&self, dbfs: f64) -> f64 {
        match *self {
            Alignment::Dbu { zero_dbfs_at_dbu } => dbfs + zero_dbfs_at_dbu,
            Alignment::Linear => 10f64.powf(dbfs / 20.0),
            Alignment::Offset { db } => dbfs - db,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn tesira_dbu_alignment_puts_plus_24_dbu_at_full_scale() {
        let a = Alignment::Dbu {
            zero_dbfs_at_dbu: 24.0,
        };
        assert_eq!(a.to_dbfs(24.0), Some(0.0));
        assert_eq!(a.to_dbfs(4.0), Some(-20.0));
        // Tesira's meter floor (−100 dBu) is below silence: clamped, still a number.
        assert_eq!(a.to_dbfs(-100.0), Some(-120.0));
        assert_eq!(a.to_dbfs(-150.0), Some(SILENCE_DBFS));
    }

    #[test]
    fn linear_one_is_full_scale_and_zero_is_silence() {
        let a = Alignment::Linear;
        assert_eq!(a.to_dbfs(1.0), Some(0.0));
        assert!(close(a.to_dbfs(0.5).unwrap(), -6.020_599_913_279_6));
        assert!(close(a.to_dbfs(8.0).unwrap(), 18.061_799_739_838_9));
        assert_eq!(a.to_dbfs(0.0), Some(SILENCE_DBFS));
        assert_eq!(a.to_dbfs(-1.0), Some(SILENCE_DBFS));
    }

    #[test]
    fn offset_adds_a_constant() {
        let a = Alignment::Offset { db: -50.0 };
        assert_eq!(a.to_dbfs(40.0), Some(-10.0));
        assert_eq!(Alignment::Offset { db: 0.0 }.to_dbfs(-23.5), Some(-23.5));
    }

    #[test]
    fn non_numbers_are_refused() {
        for a in [
            Alignment::Linear,
            Alignment::Offset { db: 0.0 },
            Alignment::Dbu {
                zero_dbfs_at_dbu: 24.0,
            },
        ] {
            assert_eq!(a.to_dbfs(f64::NAN), None);
            assert_eq!(a.to_dbfs(f64::INFINITY), None);
        }
    }

    #[test]
    fn round_trips_through_the_device_unit() {
        for a in [
            Alignment::Linear,
            Alignment::Offset { db: -50.0 },
            Alignment::Dbu {
                zero_dbfs_at_dbu: 24.0,
            },
        ] {
            for dbfs in [-90.0, -18.0, -1.0, 0.0, 6.0] {
                let back = a.to_dbfs(a.from_dbfs(dbfs)).unwrap();
                assert!(close(back, dbfs), "{a:?} {dbfs} -> {back}");
            }
        }
    }

    #[test]
    fn parses_from_toml_and_rejects_bad_values() {
        let v: toml::Value = toml::from_str::<toml::Table>(
            "a = { kind = \"dbu\", zero_dbfs_at_dbu = 24.0 }\nb = { kind = \"linear\" }\nc = { kind = \"offset\", db = -50 }\nd = { kind = \"dbu\", zero_dbfs_at_dbu = -18.0 }\ne = { kind = \"dbu\", zero_dbfs = 24.0 }\nf = { kind = \"log\" }",
        )
        .unwrap()
        .into();
        let get = |k: &str| Alignment::from_toml(&v[k]);
        assert_eq!(
            get("a"),
            Ok(Alignment::Dbu {
                zero_dbfs_at_dbu: 24.0
            })
        );
        assert_eq!(get("b"), Ok(Alignment::Linear));
        assert_eq!(get("c"), Ok(Alignment::Offset { db: -50.0 }));
        assert!(get("d").unwrap_err().0.contains("between 0 and 40"));
        assert!(get("e").is_err(), "unknown field must be refused");
        assert!(get("f").is_err(), "unknown kind must be refused");
    }
}
