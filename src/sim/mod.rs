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
