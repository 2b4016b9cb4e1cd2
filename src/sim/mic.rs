//! Wireless transmitters for the receiver simulators ([`super::shure`], [`super::ssc`]): a
//! battery that drains in (simulated) tokio time at a realistic rate, a power switch, a mute
//! switch and the battery faults receivers report.
//!
//! Pure model: no sockets. Time is a `tokio::time::Instant` passed in, so paused-time tests
//! drain an afternoon of batteries in milliseconds.

use serde::Deserialize;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BatteryKind {
    /// Smart lithium-ion pack (Shure SB900, Sennheiser BA 70): reports minutes and percent.
    #[default]
    Rechargeable,
    /// AA cells: the receiver only knows bars.
    Alkaline,
}

/// What the battery electronics say besides the charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BatteryState {
    #[default]
    Normal,
    /// Just inserted: runtime still being worked out.
    Calculating,
    /// The receiver cannot read the battery.
    CommWarning,
}

/// A transmitter as configured (`[[transmitters]]` in a simulator's settings).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxSpec {
    pub channel: u8,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub battery: BatteryKind,
    /// Runtime of a full battery in minutes (an SB900 in a ULXD2 lasts about 11 h).
    #[serde(default = "default_full")]
    pub full_minutes: u32,
    /// Runtime left now.
    #[serde(default = "default_left")]
    pub minutes: u32,
    #[serde(default = "yes")]
    pub on: bool,
    #[serde(default)]
    pub muted: bool,
    #[serde(default = "default_cycles")]
    pub cycles: u32,
}

fn default_full() -> u32 {
    660
}
fn default_left() -> u32 {
    480
}
fn yes() -> bool {
    true
}
fn default_cycles() -> u32 {
    37
}

impl TxSpec {
    pub fn new(channel: u8, minutes: u32) -> Self {
        Self {
            channel,
            model: None,
            battery: BatteryKind::Rechargeable,
            full_minutes: default_full(),
            minutes,
            on: true,
            muted: false,
            cycles: default_cycles(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Transmitter {
    pub model: String,
    pub kind: BatteryKind,
    pub full_minutes: f64,
    left_at_anchor: f64,
    anchor: Instant,
    pub on: bool,
    pub muted: bool,
    pub cycles: u32,
    pub state: BatteryState,
    /// Battery minutes used per minute of time while on; 1.0 is real life.
    pub drain: f64,
}

impl Transmitter {
    pub fn new(spec: &TxSpec, default_model: &str, drain: f64, now: Instant) -> Self {
        Self {
            model: spec
                .model
                .clone()
                .unwrap_or_else(|| default_model.to_owned()),
            kind: spec.battery,
            full_minutes: f64::from(spec.full_minutes.max(1)),
            left_at_anchor: f64::from(spec.minutes.min(spec.full_minutes.max(1))),
            anchor: now,
            on: spec.on,
            muted: spec.muted,
            cycles: spec.cycles,
            state: BatteryState::Normal,
            drain,
        }
    }

    /// Runtime left, in minutes.
    pub fn minutes_left(&self, now: Instant) -> f64 {
        if !self.on {
            return self.left_at_anchor;
        }
        let used = now.saturating_duration_since(self.anchor).as_secs_f64() / 60.0 * self.drain;
        (self.left_at_anchor - used).max(0.0)
    }

    /// Whole minutes left, as receivers report them (rounded down).
    pub fn whole_minutes(&self, now: Instant) -> u32 {
        self.minutes_left(now).floor() as u32
    }

    pub fn percent(&self, now: Instant) -> u8 {
        (self.minutes_left(now) / self.full_minutes * 100.0)
            .ceil()
            .clamp(0.0, 100.0) as u8
    }

    /// Five-bar gauge: every started 20 % is a bar.
    pub fn bars(&self, now: Instant) -> u8 {
        self.percent(now).div_ceil(20).min(5)
    }

    pub fn set_minutes(&mut self, minutes: f64, now: Instant) {
        self.left_at_anchor = minutes.clamp(0.0, self.full_minutes);
        self.anchor = now;
    }

    pub fn set_on(&mut self, on: bool, now: Instant) {
        let left = self.minutes_left(now);
        self.on = on;
        self.set_minutes(left, now);
    }

    /// On air: switched on and not flat.
    pub fn on_air(&self, now: Instant) -> bool {
        self.on && self.minutes_left(now) > 0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn drains_in_simulated_time_only_while_on() {
        let t0 = Instant::now();
        let mut tx = Transmitter::new(&TxSpec::new(1, 90), "ULXD2", 1.0, t0);
        assert_eq!(tx.whole_minutes(t0), 90);
        tokio::time::sleep(Duration::from_secs(30 * 60)).await;
        let now = Instant::now();
        assert_eq!(tx.whole_minutes(now), 60);
        tx.set_on(false, now);
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(tx.whole_minutes(Instant::now()), 60, "off: no drain");
        tx.set_on(true, Instant::now());
        tokio::time::sleep(Duration::from_secs(7200)).await;
        assert_eq!(tx.whole_minutes(Instant::now()), 0);
        assert!(!tx.on_air(Instant::now()), "flat battery is off air");
        assert_eq!(tx.bars(Instant::now()), 0);
    }

    #[test]
    fn bars_follow_percent() {
        let now = Instant::now();
        let mut tx = Transmitter::new(&TxSpec::new(1, 660), "X", 1.0, now);
        assert_eq!((tx.percent(now), tx.bars(now)), (100, 5));
        tx.set_minutes(330.0, now);
        assert_eq!((tx.percent(now), tx.bars(now)), (50, 3));
        tx.set_minutes(60.0, now);
        assert_eq!(tx.bars(now), 1);
    }
}
