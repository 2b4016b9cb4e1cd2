//! Issue 13.1: `avwarden demo --fast` tells its story. The binary runs on a free port; each
//! line it prints wakes the test, which reads the API until every moment has happened (the
//! battery verdict with remedy and alternative, the lamp warning, the trim, the alert raised,
//! escalated and acknowledged); then SIGINT stops it cleanly and its temporary files are gone.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::daemon::hang_guard;

/// The moments of the story, each with what the API shows once it happened.
#[derive(Debug, Default)]
struct Moments {
    battery_verdict: bool,
    lamp_warning: bool,
    protection: bool,
    alert_raised: bool,
    alert_escalated: bool,
    alert_acknowledged: bool,
}

impl Moments {
    fn all(&self) -> bool {
        self.battery_verdict
            && self.lamp_warning
            && self.protection
            && self.alert_raised
            && self.alert_escalated
            && self.alert_acknowledged
    }
}

struct Api {
    base: String,
    token: String,
    client: reqwest::Client,
}

impl Api {
    async fn get(&self, path: &str) -> Value {
        self.client
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// Read the board, the alerts and the logbook and tick each moment they show.
    async fn read(&self, m: &mut Moments) {
        let board = self.get("/api/v1/board").await;
        m.battery_verdict |= board.as_array().into_iter().flatten().any(|b| {
            let v = &b["verdict"];
            b["room"] == "r101"
                && b["title"] == "Board meeting"
                && v["readiness"] == "not_ready"
                && v["alternative"].is_string()
                && v["reasons"].as_array().into_iter().flatten().any(|r| {
                    r["code"] == "battery_will_not_last"
                        && r["device"] == "r101-mics"
                        && r["remedy"].is_string()
                })
        });
        let alerts = self.get("/api/v1/alerts").await;
        let alerts: Vec<&Value> = alerts.as_array().into_iter().flatten().collect();
        m.lamp_warning |= alerts
            .iter()
            .any(|a| a["kind"] == "lamp_near_end" && a["subject"]["id"] == "r103-projector");
        let story = alerts
            .iter()
            .find(|a| a["kind"] == "self_test_not_ready" && a["room"] == "r101");
        if let Some(a) = story {
            m.alert_raised = true;
            m.alert_escalated |= a["escalation"].as_u64().is_some_and(|n| n >= 1);
            m.alert_acknowledged |=
                a["state"] == "acknowledged" && a["acknowledged_by"] == "demo-bot";
        }
        let trims = self
            .get("/api/v1/logbook?kind=speaker_protection_engaged")
            .await;
        m.protection |= trims
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["device"] == "r101-dsp" && e["data"]["zone"] == "ceiling");
    }
}

#[test]
fn demo_fast_reaches_every_moment_of_its_story_then_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_avwarden"))
        .args(["demo", "--fast", "--bind", "127.0.0.1:0"])
        .env("TMPDIR", tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The bound on wall time: a demo that has not told its story by then ends, its output
    // closes, and the test fails with the moments that were missing. Generous, as the
    // machine may be busy: at 60× the story takes about five seconds.
    let guard = hang_guard(&child, Duration::from_secs(240));
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut base, mut token) = (None, None);
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(t) = line.strip_prefix("token: ") {
            token = Some(t.to_owned());
        }
        if let Some(u) = line.strip_prefix("dashboard: ") {
            base = Some(u.trim_end_matches('/').to_owned());
        }
        if line.starts_with("devices: ") {
            break;
        }
    }
    let api = Api {
        base: base.expect("the demo prints its dashboard URL"),
        token: token.expect("the demo prints its token"),
        client: reqwest::Client::new(),
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut moments = Moments::default();
    let mut told = Vec::new();
    // Each line is a moment the demo saw (or a step it took): the API is read after each,
    // until it shows all of them.
    for line in lines.by_ref() {
        let Ok(line) = line else { break };
        let end = line.contains("that was the story");
        told.push(line);
        rt.block_on(api.read(&mut moments));
        if moments.all() || end {
            break;
        }
    }
    assert!(
        moments.all(),
        "the story did not reach every moment: {moments:?}\nit told:\n{}",
        told.join("\n")
    );
    // Every moment was also told on stdout, as one line when it happened.
    let text = told.join("\n");
    for said in [
        "battery of channel 2 of r101-mics",
        "→ lamp warning",
        "speaker protection engaged",
        "escalated",
    ] {
        assert!(text.contains(said), "no line about {said:?}:\n{text}");
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    // The rest of the output is read so a full pipe cannot hold the shutdown.
    for _ in lines.by_ref() {}
    assert_eq!(
        child.wait().unwrap().code(),
        Some(0),
        "Ctrl-C is a clean exit"
    );
    drop(guard);
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "the demo left {left:?} behind");
}
