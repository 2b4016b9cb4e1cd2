//! The room thermal model both HVAC simulators share: while the unit runs, the temperature moves
//! toward the setpoint at a fixed rate (°C per minute) and stops there; when the unit is off or
//! satisfied, the room drifts toward ambient exponentially. A thermostat with a deadband
//! decides when to run, as a wall controller does.
//!
//! [`step`] is pure — `(room, controls, params, dt) -> room` — so it is tested exhaustively and
//! with proptest; [`SimRoom`] advances it lazily to tokio's "now", so paused-time tests see
//! exactly the minutes they skip. The self-test's pre-conditioning relies on the rate being
//! honest: a room at 28 °C reaches 24 °C after (28 − 24) / rate minutes of cooling.

use std::time::Duration;

use tokio::time::Instant;

use super::{option_error, SimError};

/// Physical constants of one simulated room.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThermalParams {
    /// Where the room drifts when nothing conditions it (°C).
    pub ambient_c: f64,
    /// Net heating/cooling rate while the unit runs (°C per minute). A meeting-room fan-coil or
    /// split unit typically moves the air temperature 0.1–0.5 °C per minute.
    pub rate_c_per_min: f64,
    /// Time constant of the drift toward ambient (minutes).
    pub drift_minutes: f64,
    /// Thermostat hysteresis: the unit restarts when the room is this far from the setpoint.
    pub deadband_c: f64,
}

impl Default for ThermalParams {
    fn default() -> Self {
        Self {
            ambient_c: 28.0,
            rate_c_per_min: 0.25,
            drift_minutes: 45.0,
            deadband_c: 0.5,
        }
    }
}

impl ThermalParams {
    /// Minutes the unit needs to bring the room from `from` to `to` while running.
    pub fn predicted_minutes(&self, from: f64, to: f64) -> f64 {
        (from - to).abs() / self.rate_c_per_min
    }

    pub fn check(&self) -> Result<(), String> {
        let ok = |v: f64| v.is_finite() && v > 0.0;
        if !self.ambient_c.is_finite() || !(-30.0..=60.0).contains(&self.ambient_c) {
            return Err("ambient_c: must be between -30 and 60".to_owned());
        }
        if !ok(self.rate_c_per_min) || self.rate_c_per_min > 10.0 {
            return Err("rate_c_per_min: must be above 0 and at most 10".to_owned());
        }
        if !ok(self.drift_minutes) {
            return Err("drift_minutes: must be above 0".to_owned());
        }
        if !self.deadband_c.is_finite() || !(0.0..=5.0).contains(&self.deadband_c) {
            return Err("deadband_c: must be between 0 and 5".to_owned());
        }
        Ok(())
    }
}

/// The mode the unit is set to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Off,
    Heat,
    Cool,
    Auto,
    Fan,
    Dry,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Heat => "heat",
            Mode::Cool => "cool",
            Mode::Auto => "auto",
            Mode::Fan => "fan",
            Mode::Dry => "dry",
        }
    }

    pub fn parse(s: &str) -> Option<Mode> {
        Some(match s {
            "off" => Mode::Off,
            "heat" => Mode::Heat,
            "cool" => Mode::Cool,
            "auto" => Mode::Auto,
            "fan" => Mode::Fan,
            "dry" => Mode::Dry,
            _ => return None,
        })
    }
}

/// What the unit is doing right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Running {
    Off,
    Idle,
    Heating,
    Cooling,
    Fan,
    Drying,
}

impl Running {
    /// avwarden's `hvac_running` vocabulary.
    pub fn as_str(self) -> &'static str {
        match self {
            Running::Off => "off",
            Running::Idle => "idle",
            Running::Heating => "heat",
            Running::Cooling => "cool",
            Running::Fan => "fan",
            Running::Drying => "dry",
        }
    }
}

/// What the occupant or the daemon set on the unit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Controls {
    pub power: bool,
    pub mode: Mode,
    pub setpoint_c: f64,
}

/// The room's state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Room {
    pub temp_c: f64,
    pub running: Running,
}

/// Longest span integrated in one piece; keeps the thermostat's decisions close to when they
/// would happen without making long steps expensive (an hour is 720 pieces).
const MAX_PIECE: Duration = Duration::from_secs(5);

/// Advance the room by `dt`. Pure.
pub fn step(room: Room, controls: &Controls, params: &ThermalParams, dt: Duration) -> Room {
    let mut r = room;
    let mut left = dt;
    while !left.is_zero() {
        let piece = left.min(MAX_PIECE);
        left -= piece;
        r = piece_step(r, controls, params, piece.as_secs_f64() / 60.0);
    }
    // With no time passing the thermostat still decides (a fresh setpoint starts the unit).
    if dt.is_zero() {
        r.running = decide(r, controls, params);
    }
    r
}

/// What the thermostat runs for this room and these controls.
fn decide(room: Room, c: &Controls, p: &ThermalParams) -> Running {
    let t = room.temp_c;
    let sp = c.setpoint_c;
    if !c.power || c.mode == Mode::Off {
        return Running::Off;
    }
    let heat = match room.running {
        Running::Heating => t < sp,
        _ => t <= sp - p.deadband_c,
    };
    let cool = match room.running {
        Running::Cooling => t > sp,
        _ => t >= sp + p.deadband_c,
    };
    match c.mode {
        Mode::Heat if heat => Running::Heating,
        Mode::Cool if cool => Running::Cooling,
        Mode::Auto if heat => Running::Heating,
        Mode::Auto if cool => Running::Cooling,
        Mode::Fan => Running::Fan,
        Mode::Dry => Running::Drying,
        _ => Running::Idle,
    }
}

fn piece_step(room: Room, c: &Controls, p: &ThermalParams, minutes: f64) -> Room {
    let running = decide(room, c, p);
    let t = room.temp_c;
    let sp = c.setpoint_c;
    let moved = p.rate_c_per_min * minutes;
    let temp_c = match running {
        // Never past the setpoint: the thermostat cuts out there.
        Running::Heating => (t + moved).min(sp.max(t)),
        Running::Cooling => (t - moved).max(sp.min(t)),
        _ => p.ambient_c + (t - p.ambient_c) * (-minutes / p.drift_minutes).exp(),
    };
    let running = match running {
        Running::Heating if temp_c >= sp => Running::Idle,
        Running::Cooling if temp_c <= sp => Running::Idle,
        other => other,
    };
    Room { temp_c, running }
}

/// A room advanced lazily to tokio's "now" whenever it is looked at or its controls change.
#[derive(Debug, Clone)]
pub struct SimRoom {
    pub params: ThermalParams,
    controls: Controls,
    room: Room,
    at: Instant,
}

impl SimRoom {
    pub fn new(params: ThermalParams, temp_c: f64, controls: Controls) -> Self {
        let room = Room {
            temp_c,
            running: Running::Off,
        };
        let mut s = Self {
            params,
            controls,
            room,
            at: Instant::now(),
        };
        s.room = step(s.room, &s.controls, &s.params, Duration::ZERO);
        s
    }

    fn advance(&mut self) {
        let now = Instant::now();
        let dt = now.saturating_duration_since(self.at);
        self.room = step(self.room, &self.controls, &self.params, dt);
        self.at = now;
    }

    /// The room now.
    pub fn room(&mut self) -> Room {
        self.advance();
        self.room
    }

    pub fn controls(&self) -> Controls {
        self.controls
    }

    /// Change the controls from now on (time so far runs under the old ones).
    pub fn set_controls(&mut self, f: impl FnOnce(&mut Controls)) {
        self.advance();
        f(&mut self.controls);
        self.room = step(self.room, &self.controls, &self.params, Duration::ZERO);
    }

    /// Force the room temperature (tests, "someone opened the window").
    pub fn set_temperature(&mut self, temp_c: f64) {
        self.advance();
        self.room.temp_c = temp_c;
        self.room = step(self.room, &self.controls, &self.params, Duration::ZERO);
    }
}

/// How a simulated room starts, from the settings both HVAC simulators read alike (`mode` by
/// name; `ambient_c` and `rate_c_per_min` over [`ThermalParams::default`]).
#[derive(Debug, Clone, Copy)]
pub struct RoomStart<'a> {
    pub temperature_c: f64,
    pub setpoint_c: f64,
    pub mode: &'a str,
    pub power: bool,
    pub ambient_c: Option<f64>,
    pub rate_c_per_min: Option<f64>,
}

impl RoomStart<'_> {
    /// The room, or an option error naming the setting (`mode`, `thermal`).
    pub fn room(self) -> Result<SimRoom, SimError> {
        let mode = Mode::parse(self.mode)
            .ok_or_else(|| option_error("mode", format!("{:?} is not a mode", self.mode)))?;
        let mut params = ThermalParams::default();
        if let Some(a) = self.ambient_c {
            params.ambient_c = a;
        }
        if let Some(r) = self.rate_c_per_min {
            params.rate_c_per_min = r;
        }
        params.check().map_err(|m| option_error("thermal", m))?;
        let controls = Controls {
            power: self.power,
            mode,
            setpoint_c: self.setpoint_c,
        };
        Ok(SimRoom::new(params, self.temperature_c, controls))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn controls(mode: Mode, sp: f64) -> Controls {
        Controls {
            power: true,
            mode,
            setpoint_c: sp,
        }
    }

    fn mins(m: f64) -> Duration {
        Duration::from_secs_f64(m * 60.0)
    }

    #[test]
    fn cooling_from_28_reaches_24_when_the_rate_says() {
        let p = ThermalParams::default();
        let c = controls(Mode::Cool, 23.0);
        let start = Room {
            temp_c: 28.0,
            running: Running::Off,
        };
        let predicted = p.predicted_minutes(28.0, 24.0);
        assert_eq!(predicted, 16.0);
        let before = step(start, &c, &p, mins(predicted - 0.5));
        assert!(before.temp_c > 24.0, "{before:?}");
        assert_eq!(before.running, Running::Cooling);
        let at = step(start, &c, &p, mins(predicted));
        assert!((at.temp_c - 24.0).abs() < 1e-9, "{at:?}");
        // And it stops at the setpoint, then holds inside the deadband.
        let later = step(start, &c, &p, mins(120.0));
        assert!(
            later.temp_c >= 23.0 - 1e-9 && later.temp_c <= 23.0 + p.deadband_c + 0.01,
            "{later:?}"
        );
    }

    #[test]
    fn heating_and_auto() {
        let p = ThermalParams {
            ambient_c: 15.0,
            ..ThermalParams::default()
        };
        let start = Room {
            temp_c: 18.0,
            running: Running::Off,
        };
        let r = step(start, &controls(Mode::Heat, 22.0), &p, mins(8.0));
        assert!((r.temp_c - 20.0).abs() < 1e-9);
        assert_eq!(r.running, Running::Heating);
        let r = step(start, &controls(Mode::Auto, 22.0), &p, mins(16.0));
        assert!((r.temp_c - 22.0).abs() < 1e-9);
        let warm = Room {
            temp_c: 26.0,
            running: Running::Off,
        };
        let r = step(warm, &controls(Mode::Auto, 22.0), &p, mins(1.0));
        assert_eq!(r.running, Running::Cooling);
        // Heat mode in a room already too warm does nothing but drift.
        let r = step(warm, &controls(Mode::Heat, 22.0), &p, mins(1.0));
        assert_eq!(r.running, Running::Idle);
        assert!(r.temp_c < 26.0);
    }

    #[test]
    fn off_fan_and_dry_drift_to_ambient() {
        let p = ThermalParams::default();
        let start = Room {
            temp_c: 20.0,
            running: Running::Off,
        };
        for (c, running) in [
            (
                Controls {
                    power: false,
                    ..controls(Mode::Cool, 22.0)
                },
                Running::Off,
            ),
            (controls(Mode::Off, 22.0), Running::Off),
            (controls(Mode::Fan, 22.0), Running::Fan),
            (controls(Mode::Dry, 22.0), Running::Drying),
        ] {
            let r = step(start, &c, &p, mins(p.drift_minutes));
            let expected = 28.0 - 8.0 * (-1.0f64).exp();
            assert!((r.temp_c - expected).abs() < 1e-6, "{c:?} {r:?}");
            assert_eq!(r.running, running);
            let r = step(start, &c, &p, mins(24.0 * 60.0));
            assert!((r.temp_c - 28.0).abs() < 0.01);
        }
    }

    #[test]
    fn zero_dt_only_decides() {
        let p = ThermalParams::default();
        let r = step(
            Room {
                temp_c: 28.0,
                running: Running::Off,
            },
            &controls(Mode::Cool, 22.0),
            &p,
            Duration::ZERO,
        );
        assert_eq!(
            r,
            Room {
                temp_c: 28.0,
                running: Running::Cooling
            }
        );
    }

    #[test]
    fn params_are_checked() {
        assert!(ThermalParams::default().check().is_ok());
        assert!(ThermalParams {
            rate_c_per_min: 0.0,
            ..Default::default()
        }
        .check()
        .is_err());
        assert!(ThermalParams {
            ambient_c: f64::NAN,
            ..Default::default()
        }
        .check()
        .is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn sim_room_follows_paused_time() {
        let p = ThermalParams::default();
        let mut room = SimRoom::new(p, 28.0, controls(Mode::Off, 23.0));
        room.set_controls(|c| c.mode = Mode::Cool);
        let predicted = mins(p.predicted_minutes(28.0, 24.0));
        tokio::time::sleep(predicted - Duration::from_secs(30)).await;
        assert!(room.room().temp_c > 24.0);
        // Within one integration piece of the prediction, the room is in the 22–24 °C band.
        tokio::time::sleep(Duration::from_secs(30) + MAX_PIECE).await;
        let r = room.room();
        assert!((22.0..=24.0).contains(&r.temp_c), "{r:?}");
    }

    proptest! {
        #[test]
        fn heating_never_overshoots(t in 5.0f64..35.0, sp in 5.0f64..35.0, amb in -10.0f64..35.0, secs in 0u64..20_000, rate in 0.01f64..2.0) {
            prop_assume!(t <= sp && amb <= sp);
            let p = ThermalParams { ambient_c: amb, rate_c_per_min: rate, ..Default::default() };
            let r = step(Room { temp_c: t, running: Running::Off }, &controls(Mode::Heat, sp), &p, Duration::from_secs(secs));
            prop_assert!(r.temp_c <= sp + 1e-9, "{r:?}");
        }

        #[test]
        fn cooling_never_overshoots(t in 5.0f64..40.0, sp in 5.0f64..40.0, amb in 5.0f64..50.0, secs in 0u64..20_000, rate in 0.01f64..2.0) {
            prop_assume!(t >= sp && amb >= sp);
            let p = ThermalParams { ambient_c: amb, rate_c_per_min: rate, ..Default::default() };
            for mode in [Mode::Cool, Mode::Auto] {
                let r = step(Room { temp_c: t, running: Running::Off }, &controls(mode, sp), &p, Duration::from_secs(secs));
                prop_assert!(r.temp_c >= sp - 1e-9, "{r:?}");
            }
        }

        #[test]
        fn off_approaches_ambient_without_crossing(t in -10.0f64..45.0, amb in -10.0f64..45.0, secs in 0u64..100_000) {
            let p = ThermalParams { ambient_c: amb, ..Default::default() };
            let c = Controls { power: false, mode: Mode::Cool, setpoint_c: 22.0 };
            let r = step(Room { temp_c: t, running: Running::Off }, &c, &p, Duration::from_secs(secs));
            prop_assert!((r.temp_c - amb).abs() <= (t - amb).abs() + 1e-9);
            prop_assert!((r.temp_c - amb) * (t - amb) >= 0.0);
            prop_assert_eq!(r.running, Running::Off);
        }

        #[test]
        fn running_moves_at_most_at_the_rate(t in 5.0f64..40.0, sp in 5.0f64..40.0, secs in 0u64..20_000, mode_i in 0usize..3) {
            let p = ThermalParams::default();
            let mode = [Mode::Heat, Mode::Cool, Mode::Auto][mode_i];
            // Ambient equal to the start: any movement comes from the unit.
            let p = ThermalParams { ambient_c: t, ..p };
            let r = step(Room { temp_c: t, running: Running::Off }, &controls(mode, sp), &p, Duration::from_secs(secs));
            prop_assert!((r.temp_c - t).abs() <= p.rate_c_per_min * secs as f64 / 60.0 + 1e-9);
        }
    }
}
