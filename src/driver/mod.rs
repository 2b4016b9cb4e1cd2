//! Drivers turn frames into readings, faults and identity, and capability commands into frames,
//! for one protocol family each, parameterised by a device profile.
//!
//! A driver never knows whether its bytes travel over RS-232 or TCP: the runtime hands it a
//! [`Link`] that is already open, and an [`Observer`] through which it reports what it learnt.
//! Vendor vocabulary stops here: what leaves a driver is readings, faults and capabilities.

pub mod dsp;
pub mod hvac;
pub mod link;
pub mod mic;
pub mod observer;
pub mod projector;

use std::time::Duration;

use async_trait::async_trait;

use crate::codec::ProtocolError;
use crate::model::DeviceCommand;
use crate::profile::Profile;
pub use link::{
    Connection, Link, LinkError, LinkFacts, Reply, Step, TopicError, TopicFeed, TopicMessage,
    Topics, WriteHook,
};
pub use observer::{Applied, Observation, Observer, StateChanges};

/// Why a driver step did not complete. The runtime decides from [`DriverError::is_link_failure`]
/// whether the link is gone ("could not talk to the device") or the device merely said no.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("no reply within {waited_ms} ms")]
    Timeout { waited_ms: u64 },
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The device refused a command (PJLink ERR2, Shure `REP ERR`, Modbus exception …).
    #[error("device refused {command}: {reason}")]
    Refused { command: String, reason: String },
    /// avwarden refused a command before sending anything: outside the profile's or the
    /// site's limits, a zone or channel that does not exist, a value the device cannot hold.
    #[error("avwarden rejected {command} without sending it: {reason}")]
    Rejected { command: String, reason: String },
    /// The device cannot do it now (PJLink ERR3 during warm-up): retry later, not a failure.
    #[error("device busy, {command} not accepted now: {reason}")]
    Busy {
        command: String,
        reason: String,
        /// How long until the device expects to be ready, when the driver knows (the rest
        /// of a warm-up it started itself).
        ready_in: Option<Duration>,
    },
    #[error("{driver} driver does not support {command}")]
    Unsupported {
        driver: &'static str,
        command: &'static str,
    },
    #[error("device unreachable")]
    Unreachable,
}

impl DriverError {
    /// Errors after which the session must be torn down and the link reopened.
    pub fn is_link_failure(&self) -> bool {
        matches!(
            self,
            DriverError::Link(_) | DriverError::Auth(_) | DriverError::Unreachable
        )
    }
}

/// Where a poll cycle stands after [`Driver::poll_step`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollStep {
    /// More steps to go in this cycle.
    More,
    /// The cycle is complete.
    Done,
}

/// One protocol family's behaviour. The runtime calls these in order: [`Driver::open`] on a
/// fresh link, [`Driver::read_all`] before reporting the device `ok`, then [`Driver::poll`] on
/// the profile's interval and [`Driver::execute`] for commands, while [`Driver::listen`] waits
/// for anything the device pushes unasked.
///
/// `listen` must be cancel-safe: the runtime drops it whenever a poll or a command is due, so
/// partial frames must live in the [`Link`]'s buffer, not on the future's stack.
#[async_trait]
pub trait Driver: Send {
    /// Protocol family name (`pjlink`, `escvp21`), for logs and errors.
    fn name(&self) -> &'static str;

    /// Start a session on a freshly opened link: greeting, authentication, negotiation,
    /// subscriptions. Called after every (re)connect.
    async fn open(&mut self, link: &mut Link, obs: &mut Observer) -> Result<(), DriverError>;

    /// Read the device's full state. Called after every (re)connect, before `ok`.
    async fn read_all(&mut self, link: &mut Link, obs: &mut Observer) -> Result<(), DriverError>;

    /// One poll cycle. Defaults to a full read.
    async fn poll(&mut self, link: &mut Link, obs: &mut Observer) -> Result<(), DriverError> {
        self.read_all(link, obs).await
    }

    /// The next step of a poll cycle. The runtime calls it until [`PollStep::Done`] and puts
    /// a priority command between two steps, so a driver whose cycle is many exchanges (a DSP
    /// reading 2×N controls) splits it into steps of one exchange. Defaults to the whole
    /// [`Driver::poll`] as one step.
    async fn poll_step(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
    ) -> Result<PollStep, DriverError> {
        self.poll(link, obs).await.map(|()| PollStep::Done)
    }

    /// Whether `Refresh` is exactly one poll cycle, so the runtime may run it step by step
    /// (a priority command between two steps, as in a scheduled poll) instead of as one
    /// `execute` that a gain cut would wait behind. Drivers whose refresh reads more than a
    /// poll (identity, input lists) keep the default.
    fn refresh_is_poll_cycle(&self) -> bool {
        false
    }

    /// Whether the next [`Driver::poll_step`] may be dropped while it waits for its answer,
    /// so a priority command is written at once instead of after the answer: true only for
    /// a protocol that answers in order (or by id) and a driver that then skips the dropped
    /// step's answer and repeats the step. The runtime asks before each step.
    fn poll_step_can_be_overtaken(&self) -> bool {
        false
    }

    /// Whether a priority command may be written while `command` waits for its answer (the
    /// command then runs again after it): as [`Driver::poll_step_can_be_overtaken`], true
    /// only for a read whose dropped answer the driver skips.
    fn command_can_be_overtaken(&self, command: &DeviceCommand) -> bool {
        let _ = command;
        false
    }

    /// Carry out one command.
    async fn execute(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
        command: &DeviceCommand,
    ) -> Result<(), DriverError>;

    /// Wait for one unsolicited message and apply it. Protocols that never push keep the
    /// default, which waits forever.
    async fn listen(&mut self, _link: &mut Link, _obs: &mut Observer) -> Result<(), DriverError> {
        std::future::pending().await
    }

    /// Orderly end of a session (switch metering off, unsubscribe). Best effort.
    async fn close(&mut self, _link: &mut Link, _obs: &mut Observer) {}

    /// A copy of this driver as built, before any session: its profile options and settings
    /// already parsed, so a restarted actor gets one without parsing them again. Shipped
    /// drivers give one; `None` makes the runtime build the driver anew.
    fn fresh(&self) -> Option<Box<dyn Driver>> {
        None
    }
}

/// Build the driver a profile names. A profile cannot add a protocol; this match can.
///
/// `secret` is the device's password or key (resolved from the environment or a file by the
/// config layer); `settings` is the device's `[devices.settings]` table from the site config
/// (per-installation facts such as DSP instance tags), read only by the driver.
pub fn for_profile(
    profile: &Profile,
    secret: Option<String>,
    settings: &toml::Table,
) -> Result<Box<dyn Driver>, crate::profile::ProfileError> {
    use crate::profile::DriverKind;
    Ok(match profile.driver {
        DriverKind::Pjlink => Box::new(projector::pjlink::PjlinkDriver::new(profile, secret)?),
        DriverKind::Escvp21 => Box::new(projector::escvp21::Escvp21Driver::new(profile)?),
        DriverKind::Shure => Box::new(mic::shure::ShureDriver::new(profile, settings)?),
        DriverKind::Ssc => Box::new(mic::ssc::SscDriver::new(profile, settings)?),
        DriverKind::Modbus => Box::new(hvac::modbus::ModbusDriver::new(profile, settings)?),
        DriverKind::Mqtt => Box::new(hvac::mqtt::MqttClimateDriver::new(profile, settings)?),
        DriverKind::Tesira => Box::new(dsp::tesira::TesiraDriver::new(profile, settings)?),
        DriverKind::Qsys => Box::new(dsp::qsys::QsysDriver::new(profile, secret, settings)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 8.8: a restarted actor gets a copy of the driver built (and its settings parsed)
    /// once, not a new parse: every shipped driver gives one.
    #[test]
    fn every_shipped_driver_gives_a_fresh_copy_of_itself() {
        let set = crate::profile::ProfileSet::embedded().expect("embedded profiles");
        let mut families = std::collections::BTreeSet::new();
        for p in set.iter() {
            let driver = for_profile(p, None, &toml::Table::new())
                .unwrap_or_else(|e| panic!("{}: {e}", p.id));
            let copy = driver
                .fresh()
                .unwrap_or_else(|| panic!("{}: no fresh copy", p.id));
            assert_eq!(copy.name(), driver.name());
            families.insert(driver.name());
        }
        assert_eq!(families.len(), 8, "{families:?}");
    }

    /// Issue 8.7, the driver/transport cut: a driver must not know which transport carries
    /// it, so no file under `src/driver/` names the transport module; the runtime hands a
    /// driver a [`Link`] (and a topic device its bus) instead.
    #[test]
    fn no_driver_names_the_transport() {
        // Spelt in pieces so this test does not find itself.
        let module = ["trans", "port"].concat();
        let path_of = format!("{module}::");
        let visit = |dir: &std::path::Path, offenders: &mut Vec<String>| {
            visit_dir(dir, &module, &path_of, offenders)
        };
        fn visit_dir(
            dir: &std::path::Path,
            module: &str,
            path_of: &str,
            offenders: &mut Vec<String>,
        ) {
            for entry in std::fs::read_dir(dir).expect("src/driver is readable") {
                let path = entry.expect("a directory entry").path();
                if path.is_dir() {
                    visit_dir(&path, module, path_of, offenders);
                    continue;
                }
                let text = std::fs::read_to_string(&path).expect("a source file");
                for (n, line) in text.lines().enumerate() {
                    let code = line.split("//").next().unwrap_or("");
                    let names = code.contains(path_of)
                        || (code.contains("crate::{") && code.contains(module));
                    if names {
                        offenders.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
                    }
                }
            }
        }
        let mut offenders = Vec::new();
        visit(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/driver"),
            &mut offenders,
        );
        assert!(offenders.is_empty(), "{}", offenders.join("\n"));
    }
}
