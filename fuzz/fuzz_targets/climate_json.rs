//! Fuzz target `climate_json`: what it feeds and what it checks is `fuzz/checks/climate_json.rs`, shared with
//! the fuzz smoke test of the main test suite (`tests/it/fuzz_smoke.rs`).

#![no_main]

#[path = "../checks/climate_json.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
