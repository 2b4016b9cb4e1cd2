//! The site config: arbitrary text as `site.toml` through `config::parse_site`, as `run`,
//! `check-config` and a reload read it (profiles from the test fixtures' directory, secrets
//! from a fixed environment).
//!
//! Checks, beyond "no panic": a refused config has at least one problem; every problem names
//! the file, has a one-line message and a place to find it by (a line:column or a key path);
//! every line:column lies inside the text; problems come in file order, unplaced ones last;
//! a config that is accepted is accepted again.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use avwarden::config::{parse_site, ConfigProblem, Env};

const FILE: &str = "site.toml";

fn base() -> &'static Path {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    // Built from `fuzz/` by cargo-fuzz, from the repository's root by the smoke test.
    BASE.get_or_init(|| {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let here = manifest.join("tests/data/config");
        if here.is_dir() {
            here
        } else {
            manifest.join("../tests/data/config")
        }
    })
}

/// One input: panics when a check fails.
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = Env::fixed(&[("TEST_PJLINK_PASSWORD", "secret")]);
    let problems = match parse_site(text, FILE, base(), &env) {
        Ok(_) => {
            assert!(
                parse_site(text, FILE, base(), &env).is_ok(),
                "accepted once, refused the second time"
            );
            return;
        }
        Err(e) => e.problems,
    };
    assert!(!problems.is_empty(), "refused with no problem");
    let lines: Vec<&str> = text.split('\n').collect();
    for p in &problems {
        check_problem(&lines, p);
    }
    let placed: Vec<(usize, usize)> = problems.iter().map_while(|p| p.at).collect();
    assert!(
        placed.windows(2).all(|w| w[0] <= w[1]),
        "problems out of file order: {placed:?}"
    );
    assert!(
        problems[placed.len()..].iter().all(|p| p.at.is_none()),
        "a placed problem after an unplaced one"
    );
}

fn check_problem(lines: &[&str], p: &ConfigProblem) {
    assert_eq!(p.file, FILE);
    assert!(
        !p.message.trim().is_empty(),
        "problem without a message: {p}"
    );
    assert!(!p.message.contains('\n'), "message over lines: {p}");
    assert!(
        p.at.is_some() || !p.path.is_empty(),
        "problem with neither a place nor a key path: {p}"
    );
    if let Some((line, col)) = p.at {
        assert!(
            (1..=lines.len()).contains(&line),
            "{p}: line {line} of {}",
            lines.len()
        );
        let width = lines[line - 1].chars().count();
        assert!(
            (1..=width + 1).contains(&col),
            "{p}: column {col} of {width}"
        );
    }
}
