//! The level watch: loudspeaker protection and keeping every channel in range.
//!
//! It owns the zones and mic inputs it protects (from each DSP's settings and profile), the
//! pure [`controller`] that decides, and the thin [`task`] that feeds it meter frames and the
//! levels devices report, and carries out its decisions on the runtime's priority lane. It
//! must not decide from stale meters (a zone without frames is blind, never "ok") nor send
//! anything except through [`crate::runtime::DeviceHandle`]s.

pub mod controller;
pub mod policy;
pub mod task;

pub use task::{start, start_probed, CutProbe, CutStamp, ProtectionBoard, WatchedDevice};
