//! One actor task per device, and the supervisor that keeps them running.
//!
//! An actor owns its device's link and driver: it connects (with jittered exponential backoff),
//! opens a session, re-reads full state before reporting `ok`, polls on the profile's interval,
//! executes commands from a bounded queue with pacing, and listens for unsolicited input. State
//! goes out on `watch`, events on the bus. Actors never block and hold no lock across `.await`.

mod actor;
mod supervisor;

pub use actor::{ActorConfig, CommandRequest};
pub use supervisor::{DeviceHandle, DeviceSpec, DriverFactory, Fleet, RestartBudget};

use crate::driver::DriverError;

/// Why a command sent through a [`DeviceHandle`] did not run.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("device {0} not found")]
    UnknownDevice(String),
    #[error("command queue of {0} is full")]
    QueueFull(String),
    #[error("device {0} is shutting down")]
    Stopped(String),
    #[error(transparent)]
    Driver(#[from] DriverError),
}
