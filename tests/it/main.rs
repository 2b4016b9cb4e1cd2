//! Integration tests: one binary, one module per area. Real sockets, real pseudo-terminals,
//! paused tokio time where the test is about time.

mod aggregate;
mod api_auth;
mod api_server;
mod api_snapshot;
mod backup;
mod broker;
mod config;
mod daemon;
mod dashboard;
mod demo;
mod escvp21;
mod events_stream;
mod fuzz_smoke;
mod ical;
mod levelwatch;
mod metrics;
mod modbus;
mod mqtt_state;
mod notify;
mod pjlink;
mod playbook;
mod qsys;
mod records;
mod reload;
mod runtime;
mod schedule;
mod schemathesis;
mod selftest;
mod shure;
mod ssc;
mod support;
mod tesira;
mod thermostat;
