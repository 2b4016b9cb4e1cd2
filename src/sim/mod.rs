//! Device simulators: product code that speaks each real wire format with its known quirks and
//! scriptable faults. Tests, the demo and `avwarden simulate` all use them.
//!
//! Every simulator offers a typed control API for tests (inject a fault, drain a battery) and a
//! uniform [`spawn`] entry used by the demo and `avwarden simulate`, which reads the
//! simulator's settings from the device's `[devices.simulator]` table in the site config.

pub mod escvp21;
pub mod meter_script;
pub mod mic;
pub mod modbus;
pub mod pjlink;
pub mod pty;
pub mod qsys;
pub mod shure;
pub mod ssc;
pub mod tesira;
pub mod thermal;
pub mod thermostat;

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::profile::{DriverKind, Profile};

/// Where a simulator should listen.
#[derive(Debug, Clone, PartialEq)]
pub enum SimBind {
    /// A TCP listener (port 0 = any free port).
    Tcp(SocketAddr),
    /// A UDP socket (port 0 = any free port).
    Udp(SocketAddr),
    /// A fresh pseudo-terminal pair; the simulator holds the master, the device path is the
    /// slave. When `link` is given, a symlink of that name points at the slave so the site
    /// config can name a stable path.
    Pty { link: Option<PathBuf> },
    /// An MQTT device attached to a broker.
    Mqtt {
        host: String,
        port: u16,
        topic: String,
    },
}

/// Where a running simulator can be reached.
#[derive(Debug, Clone, PartialEq)]
pub enum SimEndpoint {
    Tcp(SocketAddr),
    Udp(SocketAddr),
    Pty(PathBuf),
    Mqtt { topic: String },
}

impl std::fmt::Display for SimEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SimEndpoint::Tcp(a) => write!(f, "tcp {a}"),
            SimEndpoint::Udp(a) => write!(f, "udp {a}"),
            SimEndpoint::Pty(p) => write!(f, "serial {}", p.display()),
            SimEndpoint::Mqtt { topic } => write!(f, "mqtt {topic}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("simulator i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("simulator option {key}: {message}")]
    Option { key: String, message: String },
    /// A key the simulator does not know; `known` are the keys its table accepts there.
    #[error("simulator option {key}: unknown key")]
    UnknownOption { key: String, known: Vec<String> },
    #[error("no simulator for driver {0}")]
    Unsupported(&'static str),
    #[error("pseudo-terminal: {0}")]
    Pty(String),
}

/// Start the simulator for a profile's driver with the device's simulator options. The
/// simulator runs until `cancel` fires.
pub async fn spawn(
    profile: &Profile,
    options: &toml::Table,
    bind: SimBind,
    clock: Clock,
    cancel: CancellationToken,
) -> Result<SimEndpoint, SimError> {
    let _ = (options, &bind, clock, &cancel);
    match profile.driver {
        DriverKind::Pjlink => pjlink::spawn_from_config(options, bind, clock, cancel).await,
        DriverKind::Shure => {
            let options = shure::options_for(&profile.family, options);
            shure::spawn_from_config(&options, bind, clock, cancel).await
        }
        DriverKind::Ssc => ssc::spawn_from_config(options, bind, clock, cancel).await,
        DriverKind::Escvp21 => escvp21::spawn_from_config(options, bind, clock, cancel).await,
        DriverKind::Modbus => modbus::spawn_from_config(profile, options, bind, clock, cancel)
            .await
            .map(|(ep, _)| ep),
        DriverKind::Mqtt => thermostat::spawn_from_config(profile, options, bind, clock, cancel)
            .await
            .map(|(ep, _)| ep),
        DriverKind::Tesira => tesira::spawn_from_config(options, bind, clock, cancel).await,
        DriverKind::Qsys => qsys::spawn_from_config(options, bind, clock, cancel).await,
    }
}

/// The control handle of an in-process simulator whose faults the demo's scenario scripts
/// (a battery that runs down, a worn lamp, a feedback-like rise).
#[derive(Clone)]
pub enum SimControl {
    Pjlink(pjlink::PjlinkSim),
    Shure(shure::ShureSim),
    Tesira(tesira::TesiraSim),
}

/// As [`spawn`], also returning the simulator's control handle where it has one the demo
/// scripts.
pub async fn spawn_controlled(
    profile: &Profile,
    options: &toml::Table,
    bind: SimBind,
    clock: Clock,
    cancel: CancellationToken,
) -> Result<(SimEndpoint, Option<SimControl>), SimError> {
    match profile.driver {
        DriverKind::Pjlink => {
            let sim = pjlink::start_from_config(options, bind, cancel).await?;
            Ok((SimEndpoint::Tcp(sim.addr()), Some(SimControl::Pjlink(sim))))
        }
        DriverKind::Shure => {
            let options = shure::options_for(&profile.family, options);
            let sim = shure::start_from_config(&options, bind, cancel).await?;
            Ok((SimEndpoint::Tcp(sim.addr()), Some(SimControl::Shure(sim))))
        }
        DriverKind::Tesira => {
            let sim = tesira::spawn(parse_options(options)?, bind, cancel).await?;
            Ok((sim.endpoint().clone(), Some(SimControl::Tesira(sim))))
        }
        _ => spawn(profile, options, bind, clock, cancel)
            .await
            .map(|ep| (ep, None)),
    }
}

/// Check a device's simulator options without starting anything, so `check-config` refuses
/// what `run --with-simulators` would (issue 16, point 3). Runs the same parse and value checks
/// as [`spawn`]; only what needs a socket or a broker is left to start-up.
pub fn check_options(profile: &Profile, options: &toml::Table) -> Result<(), SimError> {
    match profile.driver {
        DriverKind::Pjlink => pjlink::SimConfig::from_options(options).map(drop),
        DriverKind::Shure => {
            let c: shure::ShureSimConfig =
                parse_options(&shure::options_for(&profile.family, options))?;
            shure::check_config(&c)
        }
        DriverKind::Ssc => ssc::check_config(&parse_options(options)?),
        DriverKind::Escvp21 => escvp21::SimConfig::from_options(options).map(drop),
        DriverKind::Modbus => modbus::check_options(profile, options),
        DriverKind::Mqtt => thermostat::check_options(profile, options),
        DriverKind::Tesira => tesira::check_config(&parse_options(options)?),
        DriverKind::Qsys => qsys::check_config(&parse_options(options)?),
    }
}

/// An error about one simulator setting; `key` is its path inside `[devices.simulator]`.
pub(crate) fn option_error(key: impl Into<String>, message: impl Into<String>) -> SimError {
    SimError::Option {
        key: key.into(),
        message: message.into(),
    }
}

/// A simulator started on a bind it cannot serve (`needs` says what it listens on).
pub(crate) fn bind_error(needs: impl Into<String>) -> SimError {
    option_error("bind", needs)
}

/// Deserialize a simulator's settings (`[devices.simulator]`). A bad value is an error at its
/// key path (`blocks.kind`); an error no single key owns (an unknown key, which the message
/// names) is at `simulator`, the whole table.
pub(crate) fn parse_options<T: DeserializeOwned>(options: &toml::Table) -> Result<T, SimError> {
    toml::Value::Table(options.clone())
        .try_into()
        .map_err(|e: toml::de::Error| {
            let at = key_path(&e);
            if let Some((key, known)) = unknown_field(e.message()) {
                let key = match at {
                    Some(parent) => format!("{parent}.{key}"),
                    None => key,
                };
                return SimError::UnknownOption { key, known };
            }
            option_error(
                at.unwrap_or_else(|| "simulator".to_owned()),
                e.message().trim(),
            )
        })
}

/// serde's "unknown field `x`, expected one of `a`, `b`" (or "expected `a`"), taken apart.
fn unknown_field(message: &str) -> Option<(String, Vec<String>)> {
    let rest = message.trim().strip_prefix("unknown field `")?;
    let (key, expected) = rest.split_once('`')?;
    let known = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    Some((key.to_owned(), known))
}

/// The key path a TOML deserialization error names. `toml` keeps it private and shows it only
/// in `Display`, as a line "in `a.b`" after the message (pinned by a test).
fn key_path(e: &toml::de::Error) -> Option<String> {
    e.to_string()
        .lines()
        .find_map(|l| l.strip_prefix("in `")?.strip_suffix('`').map(str::to_owned))
        .filter(|k| !k.is_empty())
}

/// Run a simulator's task on its own. A simulator ends with its own cancel token, and the
/// daemon gives simulators a bounded grace at shutdown rather than waiting for each task, so
/// this is the one place outside the shutdown tree allowed to spawn.
#[allow(clippy::disallowed_methods)]
pub(crate) fn detached<F>(task: F)
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(task);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Opts {
        #[serde(default)]
        echo: bool,
        #[serde(default)]
        blocks: Vec<Block>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Block {
        tag: String,
        #[serde(default)]
        channels: u32,
    }

    fn err(text: &str) -> (String, String) {
        let t: toml::Table = toml::from_str(text).unwrap();
        match parse_options::<Opts>(&t) {
            Err(SimError::Option { key, message }) => (key, message),
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn option_errors_name_their_key_path() {
        assert_eq!(
            err("echo = 3"),
            (
                "echo".into(),
                "invalid type: integer `3`, expected a boolean".into()
            )
        );
        assert_eq!(
            err("[[blocks]]\ntag = \"a\"\nchannels = -1").0,
            "blocks.channels"
        );
        assert_eq!(
            err("[[blocks]]\nchannels = 1"),
            ("blocks".into(), "missing field `tag`".into())
        );
        // An unknown key names itself and what the table accepts, for "did you mean".
        match parse_options::<Opts>(&toml::from_str("ech = true").unwrap()) {
            Err(SimError::UnknownOption { key, known }) => {
                assert_eq!(key, "ech");
                assert_eq!(known, ["echo", "blocks"]);
            }
            other => panic!("{other:?}"),
        }
        match parse_options::<Opts>(
            &toml::from_str("[[blocks]]\ntag = \"a\"\nchanels = 1").unwrap(),
        ) {
            Err(SimError::UnknownOption { key, .. }) => assert_eq!(key, "blocks.chanels"),
            other => panic!("{other:?}"),
        }
        let ok: Opts = parse_options(&toml::from_str("echo = true").unwrap()).unwrap();
        assert!(ok.echo);
    }

    #[test]
    fn a_simulator_setting_error_names_its_key_path() {
        let t: toml::Table =
            toml::from_str("[[blocks]]\ntag = \"Level1\"\nkind = \"lvl\"").unwrap();
        let e = parse_options::<tesira::TesiraSimConfig>(&t).expect_err("bad kind");
        assert!(
            e.to_string()
                .starts_with("simulator option blocks.kind: unknown variant `lvl`"),
            "{e}"
        );
    }
}
