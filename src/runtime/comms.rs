//! The comms monitor: one rule for "is the device still talking", the way PepperDash
//! Essentials' `CommunicationMonitor` judges it. Every byte or message from the device is
//! contact; silent for `warn_after` the device is `comms_slow` (a warning: readings are no
//! longer current, the room should be looked at); silent for `offline_after` it is
//! `unreachable` and the session is reopened. Any contact ends either stage at once.
//!
//! A pure step over `(state, input, now)`; the actor feeds it and acts on what it returns.

use std::time::Duration;

use tokio::time::Instant;

pub use crate::model::CommsPolicy;

/// Where the device's comms stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommsStage {
    Ok,
    /// Silent for `warn_after`.
    Slow,
    /// Silent for `offline_after`.
    Offline,
}

#[derive(Debug, Clone)]
pub struct CommsMonitor {
    policy: CommsPolicy,
    last_contact: Instant,
    stage: CommsStage,
}

impl CommsMonitor {
    /// A session that just made contact at `now`.
    pub fn new(policy: CommsPolicy, now: Instant) -> Self {
        Self {
            policy,
            last_contact: now,
            stage: CommsStage::Ok,
        }
    }

    pub fn policy(&self) -> CommsPolicy {
        self.policy
    }

    pub fn stage(&self) -> CommsStage {
        self.stage
    }

    /// The device said something at `now`. Returns the new stage when it changed.
    pub fn heard(&mut self, now: Instant) -> Option<CommsStage> {
        self.last_contact = self.last_contact.max(now);
        self.enter(CommsStage::Ok)
    }

    /// Judge the silence at `now`. Returns the new stage when it changed.
    pub fn check(&mut self, now: Instant) -> Option<CommsStage> {
        let silent = now.saturating_duration_since(self.last_contact);
        let stage = if silent >= self.policy.offline_after {
            CommsStage::Offline
        } else if silent >= self.policy.warn_after {
            CommsStage::Slow
        } else {
            CommsStage::Ok
        };
        self.enter(stage)
    }

    /// How long the device has been silent at `now`.
    pub fn silent_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_contact)
    }

    fn enter(&mut self, stage: CommsStage) -> Option<CommsStage> {
        (stage != self.stage).then(|| {
            self.stage = stage;
            stage
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 8.6: silent for warn_after → slow, offline_after → offline, any contact → ok.
    #[test]
    fn silence_is_slow_then_offline_and_any_contact_ends_it() {
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let policy = CommsPolicy {
            warn_after: Duration::from_secs(32),
            offline_after: Duration::from_secs(60),
        };
        let mut m = CommsMonitor::new(policy, t0);
        use CommsStage::*;
        // (what happens, at second, the change it reports)
        let steps: &[(&str, u64, Option<CommsStage>)] = &[
            ("check", 31, None),
            ("check", 32, Some(Slow)),
            ("check", 40, None),
            ("heard", 41, Some(Ok)),
            ("check", 72, None),
            ("check", 73, Some(Slow)),
            ("check", 101, Some(Offline)),
            ("check", 200, None),
            ("heard", 201, Some(Ok)),
            ("heard", 202, None),
            // Straight from ok to offline when the checks were far apart.
            ("check", 262, Some(Offline)),
        ];
        for &(what, at, want) in steps {
            let got = match what {
                "heard" => m.heard(s(at)),
                _ => m.check(s(at)),
            };
            assert_eq!(got, want, "{what} at {at} s");
        }
        assert_eq!(m.silent_for(s(270)), Duration::from_secs(68));
    }

    #[test]
    fn a_polled_device_is_slow_after_one_missed_poll_and_offline_after_its_polls() {
        let p = CommsPolicy::polled(Duration::from_secs(5), Duration::from_secs(2), 2);
        assert_eq!(p.warn_after, Duration::from_secs(7));
        assert_eq!(p.offline_after, Duration::from_secs(12));
        // One poll allowed: offline is never before slow.
        let p = CommsPolicy::polled(Duration::from_secs(5), Duration::from_secs(2), 1);
        assert_eq!(p.offline_after, p.warn_after);
    }
}
