//! Issue 12.5: the dashboard in a real browser. A daemon with a simulated wireless-mic
//! receiver and tokens; headless Chromium (Debian's, through chromedriver and selenium) signs
//! in, sees the room ready, sees it turn not ready by the live stream when a transmitter
//! battery is broken in the simulator, acknowledges the alert by clicking, saves screenshots
//! at 1280×800 and 390×844 (`target/test-artifacts/`), and axe-core finds no serious or
//! critical accessibility violation.
//!
//! A real browser runs on real time: this test waits on conditions (the script's words, the
//! browser's `WebDriverWait`), never on fixed sleeps, and does not pause tokio's clock.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use avwarden::app::Daemon;
use avwarden::config::{parse_site, Env};
use avwarden::sim::shure::{Family, ShureSim, ShureSimConfig};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;

const TECH: &str = "techn-token-0123456789";
const ADMIN: &str = "admin-token-0123456789";
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// What the browser test needs, or why it cannot run: skipped with a message, failed under CI.
fn browser_kit() -> Option<(String, PathBuf)> {
    let python = crate::support::python()?;
    let axe = manifest().join("tests/browser/node_modules/axe-core/axe.min.js");
    let missing: Vec<String> = [Path::new(CHROMIUM), Path::new(CHROMEDRIVER), axe.as_path()]
        .iter()
        .filter(|p| !p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if missing.is_empty() {
        return Some((python, axe));
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "the browser test needs {missing:?} under CI (scripts/test installs them)"
    );
    eprintln!("skipped: the browser test needs {missing:?} (./scripts/test installs them)");
    None
}

async fn daemon(dir: &Path, port: u16) -> Daemon {
    let text = format!(
        r#"
[site]
name = "Dashboard test"
time_zone = "Europe/Berlin"

[storage]
path = "records.db"

[api]
bind = "127.0.0.1:0"
[[api.tokens]]
name = "li-wei"
role = "technician"
token_env = "TECH_TOKEN"
[[api.tokens]]
name = "boss"
role = "admin"
token_env = "ADMIN_TOKEN"

[roster]
shifts = [{{ who = "li", role = "technician", days = ["mon-sun"], from = "00:00", until = "23:59" }}]

[[rooms]]
id = "r101"
name = "Room 101"
capacity = 20

[[devices]]
id = "r101-mics"
room = "r101"
profile = "shure-ulxd"
link = {{ host = "127.0.0.1", port = {port} }}
"#
    );
    let cfg = parse_site(
        &text,
        "site.toml",
        dir,
        &Env::fixed(&[("TECH_TOKEN", TECH), ("ADMIN_TOKEN", ADMIN)]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    crate::support::start_daemon_on(cfg, avwarden::clock::Clock::system()).await
}

/// The script's next word, with what it said before it.
async fn next_word(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
) -> Option<String> {
    lines.next_line().await.ok().flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_technician_sees_a_room_turn_not_ready_live_and_acknowledges_its_alert() {
    let Some((python, axe)) = browser_kit() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sim_cancel = CancellationToken::new();
    let mut sim_cfg = ShureSimConfig::new(Family::Ulxd, 2, 600);
    // Batteries hold still unless the test breaks one.
    sim_cfg.drain = 0.0;
    let sim = ShureSim::start(sim_cfg, "127.0.0.1:0".parse().unwrap(), sim_cancel.clone())
        .await
        .expect("simulator starts");
    let d = daemon(dir.path(), sim.addr().port()).await;
    d.fleet
        .get("r101-mics")
        .unwrap()
        .wait_for(|s| s.reachable, Duration::from_secs(60))
        .await
        .expect("receiver reachable");
    // A meeting running for two hours: the tile says whether each battery lasts it.
    let start = d.clock.now() - chrono::Duration::minutes(1);
    let url = format!("http://{}/api/v1/bookings", d.api_addr);
    let booking = serde_json::json!({
        "room": "r101", "title": "Board meeting", "start": start,
        "end": start + chrono::Duration::hours(2), "attendees": 10,
    });
    let made = reqwest::Client::new()
        .post(url)
        .bearer_auth(ADMIN)
        .json(&booking)
        .send()
        .await
        .expect("the API answers");
    assert_eq!(made.status(), 201);
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest().join("target"));
    let artifacts = target.join("test-artifacts");
    let mut child = tokio::process::Command::new(python)
        .arg(manifest().join("tests/browser/dashboard.py"))
        .arg(format!("http://{}", d.api_addr))
        .arg(TECH)
        .arg("r101")
        .arg(&artifacts)
        .arg(&axe)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("python runs");
    let mut stdin = child.stdin.take().unwrap();
    let mut words = BufReader::new(child.stdout.take().unwrap()).lines();
    let scenario = async {
        assert_eq!(next_word(&mut words).await.as_deref(), Some("ready"));
        // A transmitter battery at 10 minutes: a fault, the room is not ready.
        sim.set_battery_minutes(1, 10.0);
        stdin.write_all(b"injected\n").await.unwrap();
        stdin.flush().await.unwrap();
        assert_eq!(next_word(&mut words).await.as_deref(), Some("acknowledged"));
        assert_eq!(next_word(&mut words).await.as_deref(), Some("done"));
        child.wait().await.unwrap()
    };
    let status = tokio::time::timeout(Duration::from_secs(300), scenario)
        .await
        .expect("the browser scenario finishes");
    assert!(status.success(), "dashboard.py failed: {status}");
    // The click went through the API: the alert is acknowledged by the signed-in technician.
    let alerts = d.playbook.alerts(&Default::default());
    let acked = alerts
        .iter()
        .find(|a| a.acknowledged_by.is_some())
        .expect("an acknowledged alert");
    assert_eq!(acked.acknowledged_by.as_deref(), Some("li-wei"));
    for size in ["1280x800", "390x844"] {
        let png = artifacts.join(format!("dashboard-{size}.png"));
        let bytes = std::fs::read(&png).unwrap_or_default();
        assert!(bytes.starts_with(b"\x89PNG"), "{} is a PNG", png.display());
    }
    d.shutdown("test").await;
    sim_cancel.cancel();
}
