//! Integration tests: one binary, one module per area. Real sockets, real pseudo-terminals,
//! paused tokio time where the test is about time.

mod api_auth;
mod api_server;
mod api_snapshot;
mod config;
mod daemon;
mod escvp21;
mod ical;
mod levelwatch;
mod modbus;
mod pjlink;
mod playbook;
mod qsys;
mod records;
mod runtime;
mod schedule;
mod selftest;
mod shure;
mod ssc;
mod support;
mod tesira;
mod thermostat;
