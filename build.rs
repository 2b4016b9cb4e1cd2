//! Build script: records the commit the binary was built from, so `avwarden --version` and
//! `/api/v1/health` say exactly which code runs in a building's rack.
//!
//! `AVWARDEN_COMMIT` in the environment wins (a build from a source tarball, or a packager
//! that knows better); otherwise `git rev-parse` of the checkout; otherwise `unknown`.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=AVWARDEN_COMMIT");
    let commit = std::env::var("AVWARDEN_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| {
            // Rebuild when HEAD moves: HEAD itself (a checkout) and the branch it names (a commit).
            // Only paths that exist: cargo treats a missing one as changed, so a checkout
            // without packed-refs (a fresh worktree) rebuilt the whole crate on every command.
            for path in ["HEAD", "packed-refs"] {
                if let Some(p) = git(&["rev-parse", "--git-path", path]) {
                    if std::path::Path::new(&p).exists() {
                        println!("cargo:rerun-if-changed={p}");
                    }
                }
            }
            if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
                if let Some(p) = git(&["rev-parse", "--git-path", &r]) {
                    if std::path::Path::new(&p).exists() {
                        println!("cargo:rerun-if-changed={p}");
                    }
                }
            }
            git(&["rev-parse", "--short=12", "HEAD"])
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=AVWARDEN_COMMIT={commit}");
}
