//! One actor task per device, and the supervisor that keeps them running.
//!
//! An actor owns its device's link and driver: it connects (with jittered exponential backoff),
//! opens a session, re-reads full state before reporting `ok`, polls on the profile's interval,
//! executes commands from a bounded queue with pacing, and listens for unsolicited input. State
//! goes out on `watch`, events on the bus. Actors never block and hold no lock across `.await`.

mod actor;
pub mod comms;
pub mod link;
pub mod phase;
mod supervisor;

pub use actor::{ActorConfig, CommandRequest, Lane, Order};
pub use supervisor::{DeviceHandle, DeviceSpec, DriverFactory, Fleet, RestartBudget, TimedOut};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::driver::{Applied, DriverError};

/// How a command sent through a [`DeviceHandle`] ended, in the runtime's terms: every
/// consumer (the API, the self-test, the level watch, the playbook) maps these, never a
/// driver's errors.
#[derive(Debug, Clone, PartialEq, Serialize, thiserror::Error)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum CommandOutcome {
    /// Carried out; `applied` is what it left on the device when the driver knows it (the
    /// setpoint a whole-degree unit really holds after `set_setpoint 22.5`).
    #[error("done")]
    Done { applied: Option<Applied> },
    /// The device said no (PJLink ERR2, Shure `REP ERR`, a Modbus exception): its answer.
    #[error("the device refused it: {reason}")]
    Refused { reason: String },
    /// avwarden said no before sending anything: outside the profile's or the site's limits,
    /// no such zone or channel, a value between the unit's steps.
    #[error("avwarden rejected it without sending it: {reason}")]
    Rejected { reason: String },
    /// The device cannot do it now (warming up, cooling down): retry later. `until` is when
    /// it expects to be ready, when known.
    #[error("the device is busy: {reason}")]
    Busy {
        reason: String,
        until: Option<DateTime<Utc>>,
    },
    /// The device is not connected, or its link failed while the command was under way.
    #[error("the device is unreachable")]
    Unreachable,
    /// Its driver cannot do this command.
    #[error("the device cannot do {command}")]
    Unsupported { command: &'static str },
    /// Sent, and no answer came within the driver's reply timeout.
    #[error("no answer within {waited_ms} ms")]
    TimedOut { waited_ms: u64 },
    /// [`DeviceHandle::try_command`] found the device's queue full.
    #[error("the command queue is full")]
    QueueFull,
    /// The device is being stopped (daemon shutdown).
    #[error("the device is shutting down")]
    Stopped,
    /// Anything else: bad input from the device in answer, authentication.
    #[error("the command failed: {reason}")]
    Failed { reason: String },
}

impl CommandOutcome {
    /// The outcome of a driver's `execute` at `now` (a busy device's `until` is reckoned from
    /// it).
    pub fn from_driver(res: Result<Option<Applied>, &DriverError>, now: DateTime<Utc>) -> Self {
        let e = match res {
            Ok(applied) => return CommandOutcome::Done { applied },
            Err(e) => e,
        };
        match e {
            DriverError::Refused { reason, .. } => CommandOutcome::Refused {
                reason: reason.clone(),
            },
            DriverError::Rejected { reason, .. } => CommandOutcome::Rejected {
                reason: reason.clone(),
            },
            DriverError::Busy {
                reason, ready_in, ..
            } => CommandOutcome::Busy {
                reason: reason.clone(),
                until: ready_in.and_then(|d| chrono::Duration::from_std(d).ok().map(|d| now + d)),
            },
            DriverError::Unsupported { command, .. } => CommandOutcome::Unsupported { command },
            DriverError::Timeout { waited_ms } => CommandOutcome::TimedOut {
                waited_ms: *waited_ms,
            },
            e if e.is_link_failure() => CommandOutcome::Unreachable,
            e => CommandOutcome::Failed {
                reason: e.to_string(),
            },
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self, CommandOutcome::Done { .. })
    }

    /// `Ok(applied)` when done, the outcome otherwise (for `?` and tests).
    pub fn into_result(self) -> Result<Option<Applied>, CommandOutcome> {
        match self {
            CommandOutcome::Done { applied } => Ok(applied),
            other => Err(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::ProtocolError;

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    #[test]
    fn driver_errors_map_to_one_outcome_each() {
        let cases: Vec<(DriverError, CommandOutcome)> = vec![
            (
                DriverError::Refused {
                    command: "power".into(),
                    reason: "ERR2".into(),
                },
                CommandOutcome::Refused {
                    reason: "ERR2".into(),
                },
            ),
            (
                DriverError::Rejected {
                    command: "set_level".into(),
                    reason: "3 dB is outside -100 to 0 dB".into(),
                },
                CommandOutcome::Rejected {
                    reason: "3 dB is outside -100 to 0 dB".into(),
                },
            ),
            (
                DriverError::Busy {
                    command: "select_input".into(),
                    reason: "warming up".into(),
                    ready_in: None,
                },
                CommandOutcome::Busy {
                    reason: "warming up".into(),
                    until: None,
                },
            ),
            (
                DriverError::Busy {
                    command: "select_input".into(),
                    reason: "warming up".into(),
                    ready_in: Some(std::time::Duration::from_secs(25)),
                },
                CommandOutcome::Busy {
                    reason: "warming up".into(),
                    until: Some(t0() + chrono::Duration::seconds(25)),
                },
            ),
            (
                DriverError::Unsupported {
                    driver: "tesira",
                    command: "power",
                },
                CommandOutcome::Unsupported { command: "power" },
            ),
            (
                DriverError::Timeout { waited_ms: 2000 },
                CommandOutcome::TimedOut { waited_ms: 2000 },
            ),
            (DriverError::Unreachable, CommandOutcome::Unreachable),
            (
                DriverError::Link(crate::driver::LinkError::Closed),
                CommandOutcome::Unreachable,
            ),
            (
                DriverError::Auth("bad password".into()),
                CommandOutcome::Unreachable,
            ),
        ];
        for (e, want) in cases {
            assert_eq!(CommandOutcome::from_driver(Err(&e), t0()), want, "{e}");
        }
        let garbage = DriverError::Protocol(ProtocolError::malformed("x"));
        assert!(matches!(
            CommandOutcome::from_driver(Err(&garbage), t0()),
            CommandOutcome::Failed { .. }
        ));
        assert_eq!(
            CommandOutcome::from_driver(Ok(None), t0()).into_result(),
            Ok(None)
        );
    }
}
