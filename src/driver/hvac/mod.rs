//! HVAC drivers: Modbus RTU room controllers ([`modbus`]) and JSON-over-MQTT thermostats
//! ([`mqtt`]). Both publish the same readings — `temperature` and `setpoint` (°C), `hvac_mode`
//! (`off heat cool auto fan dry`), `hvac_running` (`off idle heat cool fan dry`), `fan`,
//! `power` — and take the same commands (`SetSetpoint`, `SetHvacMode`, `Power`, `Refresh`).
//!
//! Each device family's specifics (register map, JSON field map) are profile data; the site's
//! `[devices.settings]` table is laid over the profile's `[options]` (a slave address, a sensor
//! path), so an installation detail never needs a new profile.

pub mod modbus;
pub mod mqtt;

use crate::codec::climate_json::MODES;
use crate::driver::DriverError;
use crate::profile::{Profile, ProfileError};

/// The profile's options with the site's per-device settings laid over them (tables merge,
/// other values replace).
pub(crate) fn merged_options(profile: &Profile, settings: &toml::Table) -> toml::Table {
    let mut out = profile.options.clone();
    merge(&mut out, settings);
    out
}

fn merge(into: &mut toml::Table, from: &toml::Table) {
    for (k, v) in from {
        match (into.get_mut(k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            _ => {
                into.insert(k.clone(), v.clone());
            }
        }
    }
}

/// Refuse a `SetHvacMode` to a mode outside avwarden's vocabulary before anything is sent.
pub(crate) fn check_mode(mode: &str) -> Result<(), DriverError> {
    if MODES.contains(&mode) {
        return Ok(());
    }
    Err(DriverError::Rejected {
        command: "set_hvac_mode".to_owned(),
        reason: format!("{mode:?} is not one of {}", MODES.join(" ")),
    })
}

pub(crate) fn option_error(profile: &Profile, message: String) -> ProfileError {
    ProfileError::Option {
        profile: profile.id.to_string(),
        key: "options".to_owned(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_overlay_profile_options() {
        let mut a: toml::Table =
            toml::from_str("slave = 1\n[points.t]\naddress = 3\nscale = 0.1").unwrap();
        let b: toml::Table = toml::from_str("slave = 7\n[points.t]\naddress = 9").unwrap();
        merge(&mut a, &b);
        let expected: toml::Table =
            toml::from_str("slave = 7\n[points.t]\naddress = 9\nscale = 0.1").unwrap();
        assert_eq!(a, expected);
    }
}
