//! Fuzz target `pjlink_decoder`: what it feeds and what it checks is `fuzz/checks/pjlink_decoder.rs`, shared with
//! the fuzz smoke test of the main test suite (`tests/it/fuzz_smoke.rs`).

#![no_main]

#[path = "../checks/pjlink_decoder.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
