//! `avwarden demo`: the scripted story the demo site tells in its first five minutes.
//!
//! This module owns the demo's scenario (which fault is injected when, and the one line
//! printed for each moment as it happens). It must not decide anything the daemon decides:
//! verdicts, trims, alerts and escalations come from the daemon's own services, the scenario
//! only drives the simulators and reports what the daemon did.

pub mod scenario;
