//! Fuzz smoke run inside the test suite: every fuzz target's checks (`fuzz/checks/`, the same
//! code `cargo fuzz` runs) over its committed seeds and a few thousand mutations of them.
//!
//! This is not coverage-guided: it costs no extra build (the checks compile into this test
//! binary) and so runs on every CI run, catching a parser that panics or breaks an invariant
//! on inputs near the seeds. The long, coverage-guided hunt is `scripts/fuzz-smoke` (libFuzzer).
//! The mutations come from a fixed seed, so a failure reproduces; a failing input is written
//! under `target/fuzz-smoke/` with the command that replays it under libFuzzer.
//!
//!   AVWARDEN_FUZZ_SMOKE_RUNS   mutated inputs per target (default 1500)
//!   AVWARDEN_FUZZ_SMOKE_SEED   the mutations' random seed (default fixed)

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

#[allow(dead_code)]
#[path = "../../fuzz/checks/api_bodies.rs"]
mod api_bodies;
#[allow(dead_code)]
#[path = "../../fuzz/checks/climate_json.rs"]
mod climate_json;
#[allow(dead_code)]
#[path = "../../fuzz/checks/escvp21_decoder.rs"]
mod escvp21_decoder;
#[allow(dead_code)]
#[path = "../../fuzz/checks/ical_import.rs"]
mod ical_import;
#[allow(dead_code)]
#[path = "../../fuzz/checks/modbus_rtu.rs"]
mod modbus_rtu;
#[allow(dead_code)]
#[path = "../../fuzz/checks/pjlink_decoder.rs"]
mod pjlink_decoder;
#[allow(dead_code)]
#[path = "../../fuzz/checks/playbook_parse.rs"]
mod playbook_parse;
#[allow(dead_code)]
#[path = "../../fuzz/checks/qrc_decoder.rs"]
mod qrc_decoder;
#[allow(dead_code)]
#[path = "../../fuzz/checks/shure_decoder.rs"]
mod shure_decoder;
#[allow(dead_code)]
#[path = "../../fuzz/checks/site_config.rs"]
mod site_config;
#[allow(dead_code)]
#[path = "../../fuzz/checks/ssc_parse.rs"]
mod ssc_parse;
#[allow(dead_code)]
#[path = "../../fuzz/checks/telnet_filter.rs"]
mod telnet_filter;
#[allow(dead_code)]
#[path = "../../fuzz/checks/tesira_decoder.rs"]
mod tesira_decoder;

/// A target's checks: panics when one fails.
type Check = fn(&[u8]);

/// Every target of `fuzz/Cargo.toml` with its checks.
const TARGETS: &[(&str, Check)] = &[
    ("api_bodies", api_bodies::check),
    ("climate_json", climate_json::check),
    ("escvp21_decoder", escvp21_decoder::check),
    ("ical_import", ical_import::check),
    ("modbus_rtu", modbus_rtu::check),
    ("pjlink_decoder", pjlink_decoder::check),
    ("playbook_parse", playbook_parse::check),
    ("qrc_decoder", qrc_decoder::check),
    ("shure_decoder", shure_decoder::check),
    ("site_config", site_config::check),
    ("ssc_parse", ssc_parse::check),
    ("telnet_filter", telnet_filter::check),
    ("tesira_decoder", tesira_decoder::check),
];

/// Tokens the mutations splice in: the separators and keywords the parsers branch on.
const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r",
    b"\0",
    b" ",
    b"=",
    b":",
    b";",
    b",",
    b"\"",
    b"'",
    b"[",
    b"]",
    b"{",
    b"}",
    b"[[",
    b"]]",
    b"\\",
    b"%1",
    b"%2",
    b"ERR",
    b"PJLINK 1 ",
    b"< REP ",
    b" >",
    b"+OK ",
    b"-ERR ",
    b"BEGIN:VEVENT\r\n",
    b"END:VEVENT\r\n",
    b"RRULE:FREQ=DAILY;COUNT=",
    b"TZID=",
    b"\xff\xfb",
    b"\xc3\xa9",
    b"\xe2\x80\x8b",
    b"-1",
    b"0",
    b"9999999999999999999999",
    b"1e308",
    b"NaN",
    b"null",
    b"true",
];

#[test]
fn every_fuzz_target_holds_on_its_seeds_and_their_mutations() {
    let runs: usize = env_or("AVWARDEN_FUZZ_SMOKE_RUNS", 1500);
    let seed: u64 = env_or("AVWARDEN_FUZZ_SMOKE_SEED", 0x5eed_a7a7_2026_1207);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut failures = Vec::new();
    let mut seeded = 0;
    for &(name, check) in TARGETS {
        let seeds = read_seeds(&root.join("fuzz/seeds").join(name));
        if seeds.len() > 1 {
            seeded += 1;
        }
        let mut rng = Rng(seed ^ fnv(name.as_bytes()));
        let mutated = (0..runs).map(|_| mutate(&seeds, &mut rng));
        for input in seeds.iter().cloned().chain(mutated) {
            if let Err(message) = run_one(check, &input) {
                failures.push(record_failure(root, name, &input, &message));
                break;
            }
        }
    }
    // The four parsers of the operations issue are seeded; a lost seed directory would turn
    // their runs into random bytes that stop at the first check.
    assert!(seeded >= 4, "only {seeded} targets have seeds");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Runs one input, turning a panic into its message. The default hook still prints it.
fn run_one(check: Check, input: &[u8]) -> Result<(), String> {
    panic::catch_unwind(AssertUnwindSafe(|| check(input))).map_err(|payload| {
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "panic".to_owned())
    })
}

/// Keeps the failing input where `cargo fuzz run` can replay it and says how.
fn record_failure(root: &Path, target: &str, input: &[u8], message: &str) -> String {
    let dir = root.join("target/fuzz-smoke");
    let file = dir.join(format!("{target}-{:016x}", fnv(input)));
    let saved = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&file, input))
        .map(|()| {
            format!(
                "saved as {}; replay: cd fuzz && cargo fuzz run {target} {}",
                file.display(),
                file.display()
            )
        })
        .unwrap_or_else(|e| format!("not saved: {e}"));
    format!("{target}: {message} ({} input bytes; {saved})", input.len())
}

/// A target's seed files, sorted so runs are repeatable, and the empty input.
fn read_seeds(dir: &Path) -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    let mut seeds = vec![Vec::new()];
    seeds.extend(files.iter().filter_map(|f| std::fs::read(f).ok()));
    seeds
}

/// One to four stacked mutations of a random seed.
fn mutate(seeds: &[Vec<u8>], rng: &mut Rng) -> Vec<u8> {
    let mut data = seeds[rng.below(seeds.len())].clone();
    for _ in 0..1 + rng.below(4) {
        let len = data.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                data[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                data[i] = [0, 0x7f, 0x80, 0xff, b'0', b'9', b'-', b'\n'][rng.below(8)];
            }
            2 => {
                let token = TOKENS[rng.below(TOKENS.len())];
                let at = rng.below(len + 1);
                data.splice(at..at, token.iter().copied());
            }
            3 if len > 0 => {
                let from = rng.below(len);
                let to = (from + 1 + rng.below(16)).min(len);
                data.drain(from..to);
            }
            4 if len > 0 => {
                let from = rng.below(len);
                let to = (from + 1 + rng.below(64)).min(len);
                let copy = data[from..to].to_vec();
                let at = rng.below(len + 1);
                data.splice(at..at, copy);
            }
            5 => {
                let other = &seeds[rng.below(seeds.len())];
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                data.truncate(cut);
                data.extend_from_slice(&other[from..]);
            }
            6 if len > 0 => data.truncate(rng.below(len)),
            _ => {
                let n = 1 + rng.below(8);
                let at = rng.below(len + 1);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                data.splice(at..at, bytes);
            }
        }
    }
    data
}

/// xorshift64*: small, seeded, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0.max(1);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
