//! DSP drivers: Biamp Tesira (TTP over RS-232 or Telnet) and QSC Q-SYS (QRC over TCP).
//!
//! Both report the same capabilities in the same words: `zone.<id>.level_db`, `zone.<id>.muted`,
//! `mic.<id>.level_db`, `mic.<id>.muted`, and meters through `Observer::meter("zone.<id>", dbfs)`
//! already normalised to dBFS by the profile's [`Alignment`](crate::meter::Alignment). Which DSP
//! control serves which zone or mic is per installation ([`zones`]). Vendor vocabulary (instance
//! tags, control names, publish tokens) stops here.

pub mod qsys;
pub mod tesira;
pub mod zones;

use crate::meter::Alignment;
use crate::profile::{Profile, ProfileError};
use zones::Entry;

/// The meter alignment: the site's `meter_alignment` setting if given, else the profile's
/// `meter_alignment` option, else `fallback`.
fn alignment(
    profile: &Profile,
    settings: &mut Entry<'_>,
    fallback: Alignment,
) -> Result<Alignment, ProfileError> {
    if let Some(a) = settings
        .alignment("meter_alignment")
        .map_err(|e| e.into_profile_error(profile.id.as_str()))?
    {
        return Ok(a);
    }
    match profile.options.get("meter_alignment") {
        None => Ok(fallback),
        Some(v) => Alignment::from_toml(v).map_err(|e| ProfileError::Option {
            profile: profile.id.to_string(),
            key: "meter_alignment".to_owned(),
            message: e.0,
        }),
    }
}
