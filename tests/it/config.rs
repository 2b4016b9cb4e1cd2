//! Site config validation: golden files of located errors, the good config's resolved values,
//! and the `check-config` command's exit codes.

use std::path::{Path, PathBuf};
use std::process::Command;

use avwarden::config::{parse_site, Env};
use avwarden::transport::serial::Parity;
use avwarden::transport::LinkSpec;

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/config")
}

/// Each `bad/NAME.toml` must fail with exactly the problems in `bad/NAME.expected`. Run with
/// `AVWARDEN_BLESS=1` to rewrite the expected files after an intended change.
#[test]
fn broken_configs_give_every_located_error() {
    let dir = data().join("bad");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 7, "golden set is missing files");
    let bless = std::env::var_os("AVWARDEN_BLESS").is_some();
    let mut failures = Vec::new();
    for f in files {
        let label = format!(
            "tests/data/config/bad/{}",
            f.file_name().unwrap().to_string_lossy()
        );
        let text = std::fs::read_to_string(&f).unwrap();
        // Relative base (tests run in the package root) keeps paths in messages portable.
        let base = Path::new("tests/data/config/bad");
        let err = parse_site(&text, &label, base, &Env::fixed(&[]))
            .expect_err(&format!("{label} must not validate"));
        let got = format!("{err}\n");
        let expected_path = f.with_extension("expected");
        if bless {
            std::fs::write(&expected_path, &got).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|_| panic!("missing {}", expected_path.display()));
        if got != expected {
            failures.push(format!("{label}\n--- expected\n{expected}--- got\n{got}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn good_config_resolves_defaults_and_secrets() {
    let dir = data();
    let text = std::fs::read_to_string(dir.join("good.toml")).unwrap();
    let cfg = parse_site(
        &text,
        "good.toml",
        &dir,
        &Env::fixed(&[("TEST_PJLINK_PASSWORD", "s3cret")]),
    )
    .expect("good config validates");
    assert_eq!(cfg.site.time_zone, chrono_tz::Asia::Shanghai);
    assert_eq!(cfg.api.bind.to_string(), "127.0.0.1:8080");
    let p1 = cfg.device("p1").unwrap();
    match p1.link.as_ref().unwrap() {
        LinkSpec::Tcp(t) => {
            assert_eq!(
                (t.host.as_str(), t.port),
                ("10.0.0.5", 4352),
                "port from profile"
            );
        }
        other => panic!("expected tcp, got {other:?}"),
    }
    assert_eq!(p1.secret.as_ref().unwrap().expose(), "s3cret");
    assert!(!format!("{p1:?}").contains("s3cret"), "secrets never print");
    match cfg.device("p2").unwrap().link.as_ref().unwrap() {
        LinkSpec::Serial(s) => {
            assert_eq!(s.path, "/dev/ttyUSB0");
            assert_eq!(
                (s.baud, s.data_bits, s.parity, s.stop_bits),
                (9600, 8, Parity::None, 1)
            );
        }
        other => panic!("expected serial, got {other:?}"),
    }
}

/// Issue 16.3: a misspelt or mistyped `[devices.simulator]` key passed `check-config`, then
/// `run --with-simulators` stopped with exit 1 and no location. Both now exit 2, located.
#[test]
fn a_simulator_table_mistake_is_a_located_error_with_exit_2() {
    let bin = env!("CARGO_BIN_EXE_avwarden");
    for args in [
        &["check-config"][..],
        &["run", "--with-simulators", "--config"][..],
    ] {
        let out = Command::new(bin)
            .args(args)
            .arg(data().join("bad/simulator.toml"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("simulator.toml:21:1: devices[0].simulator.pasword: unknown key (did you mean \"password\"?)"),
            "{args:?}: {stderr}"
        );
    }
}

/// `avwarden check-config FILE`, its output.
fn check_config(file: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_avwarden"))
        .arg("check-config")
        .arg(file)
        .output()
        .unwrap()
}

/// Issue 16.5: a config with a byte that is not UTF-8 said only "stream did not contain valid
/// UTF-8", without a place. It names the first bad byte's line:column, exit 2.
#[test]
fn a_config_that_is_not_utf8_names_the_first_bad_bytes_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("latin1.toml");
    // "Aula Magna" with a Latin-1 é on line 3, column 14 (after "name = \"Sala ").
    let mut text = b"# site\n[site]\nname = \"Sala ".to_vec();
    text.push(0xE9);
    text.extend_from_slice(b"\"\n");
    std::fs::write(&file, text).unwrap();
    let out = check_config(&file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("latin1.toml:3:14: byte 0xE9 is not UTF-8"),
        "{stderr}"
    );
}

/// Issue 16.1: `check-config` passed a `[storage] path` in a directory that does not exist
/// (a volume not mounted) or cannot be written. It names the key's place, exit 2; the same
/// config with a writable directory passes.
#[test]
fn check_config_reports_a_storage_directory_missing_or_not_writable() {
    let dir = tempfile::tempdir().unwrap();
    let site = |store: &str| {
        format!(
            "[site]\nname = \"S\"\ntime_zone = \"Europe/Berlin\"\n\n[storage]\npath = \"{store}\"\n\n[[rooms]]\nid = \"r1\"\ncapacity = 4\n"
        )
    };
    let check = |text: String| {
        let file = dir.path().join("site.toml");
        std::fs::write(&file, text).unwrap();
        check_config(&file)
    };
    let out = check(site("not-mounted/avwarden.db"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("site.toml:6:1: storage.path: directory")
            && stderr.contains("not-mounted does not exist"),
        "{stderr}"
    );

    // Root writes anywhere, so a read-only directory is only refused for other users.
    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    let mut perm = std::fs::metadata(&ro).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o555);
    std::fs::set_permissions(&ro, perm).unwrap();
    let writable = std::fs::File::create(ro.join("probe")).is_ok();
    let out = check(site("ro/avwarden.db"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    if writable {
        assert_eq!(out.status.code(), Some(0), "{stderr}");
    } else {
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("is not writable"), "{stderr}");
    }

    let out = check(site("avwarden.db"));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::read_dir(dir.path()).unwrap().flatten().all(|e| !e
            .file_name()
            .to_string_lossy()
            .starts_with(".avwarden-check")),
        "the write probe is removed"
    );
}

#[test]
fn check_config_exits_2_on_errors_and_0_with_a_summary() {
    let bin = env!("CARGO_BIN_EXE_avwarden");
    let bad = Command::new(bin)
        .arg("check-config")
        .arg(data().join("bad/references.toml"))
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("did you mean \"test-escvp21\"?"),
        "{stderr}"
    );
    assert!(stderr.contains("6 problem(s)"), "{stderr}");

    let good = Command::new(bin)
        .arg("check-config")
        .arg(data().join("good.toml"))
        .env("TEST_PJLINK_PASSWORD", "x")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&good.stdout);
    assert_eq!(
        good.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert!(stdout.contains("1 rooms, 2 devices"), "{stdout}");
    assert!(stdout.contains("tcp 10.0.0.5:4352"), "{stdout}");

    let missing = Command::new(bin)
        .arg("check-config")
        .arg(data().join("does-not-exist.toml"))
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
}

/// Every shipped profile parses, builds its driver with default settings, and is listed by
/// `avwarden profiles` with its driver and link.
#[test]
fn every_shipped_profile_loads_builds_and_is_listed() {
    let set = avwarden::profile::ProfileSet::embedded().expect("embedded profiles parse");
    assert!(set.len() >= 18, "only {} profiles", set.len());
    for p in set.iter() {
        avwarden::driver::for_profile(p, None, &toml::Table::new())
            .unwrap_or_else(|e| panic!("profile {} does not build its driver: {e}", p.id));
        assert!(!p.capabilities.is_empty(), "{} has no capabilities", p.id);
    }
    let out = Command::new(env!("CARGO_BIN_EXE_avwarden"))
        .arg("profiles")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    for p in set.iter() {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(p.id.as_str()))
            .unwrap_or_else(|| panic!("{} not listed:\n{text}", p.id));
        assert!(line.contains(p.driver.as_str()), "{line}");
    }
}

/// The shipped example site and the demo site validate (the example with its secrets set).
#[test]
fn shipped_site_configs_validate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let env = Env::fixed(&[
        ("AVWARDEN_MQTT_PASSWORD", "x"),
        ("A301_PJLINK_PASSWORD", "y"),
        ("AVWARDEN_DEMO_PJLINK_PASSWORD", "demo"),
        ("AVWARDEN_TECH_TOKEN", "tech-token-0123456789"),
        ("AVWARDEN_DASHBOARD_TOKEN", "dash-token-0123456789"),
    ]);
    for name in ["site.example.toml", "demo.toml"] {
        let text = std::fs::read_to_string(root.join(name)).unwrap();
        let cfg = parse_site(&text, name, &root, &env)
            .unwrap_or_else(|e| panic!("{name} does not validate:\n{e}"));
        assert!(cfg.devices.len() >= 7, "{name}");
    }
}

/// Issue 8.8: a site may poll one device more or less often than its profile says; a value out
/// of range is a located error.
#[test]
fn a_device_may_override_its_profiles_poll_interval() {
    let site = |secs: &str| {
        format!(
            "[site]\nname = \"x\"\ntime_zone = \"UTC\"\n[[rooms]]\nid = \"r\"\ncapacity = 1\n\
             [[devices]]\nid = \"p\"\nroom = \"r\"\nprofile = \"generic-pjlink\"\n\
             link = {{ host = \"192.0.2.1\" }}\npoll_interval_secs = {secs}\n"
        )
    };
    let cfg = parse_site(&site("2.5"), "site.toml", Path::new("."), &Env::fixed(&[])).unwrap();
    assert_eq!(
        cfg.devices[0].profile.timing.poll_interval,
        std::time::Duration::from_millis(2500)
    );
    let err = parse_site(&site("0"), "site.toml", Path::new("."), &Env::fixed(&[]))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err.trim(),
        "site.toml:12:1: devices[0].poll_interval_secs: must be between 0.1 and 3600 seconds"
    );
}

/// Issue 13.4: `avwarden --version` names the commit, so a technician can tell exactly which
/// build runs in the rack (the same string `/api/v1/health` shows as `commit`).
#[test]
fn version_names_the_commit_it_was_built_from() {
    let out = Command::new(env!("CARGO_BIN_EXE_avwarden"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let line = String::from_utf8_lossy(&out.stdout);
    let expected = format!(
        "avwarden {} (commit {})",
        env!("CARGO_PKG_VERSION"),
        avwarden::app::COMMIT
    );
    assert_eq!(line.trim(), expected);
    // Built in a checkout (CI clones one): the commit is HEAD's short hash, never `unknown`.
    let in_checkout = Command::new("git")
        .args(["rev-parse", "--is-inside-work-tree"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .is_ok_and(|o| o.status.success());
    if in_checkout && std::env::var_os("AVWARDEN_COMMIT").is_none() {
        let commit = avwarden::app::COMMIT;
        assert!(
            commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit()),
            "{line}"
        );
    }
}
