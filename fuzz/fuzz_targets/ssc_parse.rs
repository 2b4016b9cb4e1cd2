//! Fuzz target `ssc_parse`: what it feeds and what it checks is `fuzz/checks/ssc_parse.rs`, shared with
//! the fuzz smoke test of the main test suite (`tests/it/fuzz_smoke.rs`).

#![no_main]

#[path = "../checks/ssc_parse.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
