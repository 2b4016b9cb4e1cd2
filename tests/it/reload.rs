//! Reload without a restart (issue 13.2): a new site config starts, stops or restarts just the
//! devices it changes while the others keep their sessions; a config with errors changes
//! nothing; SIGHUP reaches the handler in the real binary.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use avwarden::app::{Daemon, StartOptions};
use avwarden::config::SiteConfig;
use avwarden::model::Health;
use avwarden::reload::ReloadError;
use avwarden::sim::pjlink::{PjlinkSim, SimConfig};
use reqwest::Method;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::support::{api, clock, spawn_settle_pump, wait_state};

async fn projector(stop: &CancellationToken) -> PjlinkSim {
    PjlinkSim::start(
        SimConfig::default(),
        "127.0.0.1:0".parse().unwrap(),
        stop.clone(),
    )
    .await
    .unwrap()
}

fn room(id: &str) -> String {
    format!("[[rooms]]\nid = \"{id}\"\nname = \"Room {id}\"\ncapacity = 8\n")
}

fn device(id: &str, room: &str, addr: SocketAddr) -> String {
    format!(
        "[[devices]]\nid = \"{id}\"\nroom = \"{room}\"\nprofile = \"generic-pjlink\"\n\
         link = {{ host = \"127.0.0.1\", port = {} }}\n",
        addr.port()
    )
}

/// A site config file in `dir` with these rooms and devices.
fn write_site(dir: &Path, parts: &[String]) -> PathBuf {
    let file = dir.join("site.toml");
    let text = format!(
        "[site]\nname = \"Reload test\"\ntime_zone = \"UTC\"\n\n\
         [storage]\npath = \"records.db\"\n\n\
         [api]\nbind = \"127.0.0.1:0\"\n\n\
         [links]\nbackoff_min_ms = 50\nbackoff_max_ms = 200\n\n{}",
        parts.join("\n")
    );
    std::fs::write(&file, text).unwrap();
    file
}

async fn start(file: &Path) -> Daemon {
    let cfg = SiteConfig::load(file).unwrap_or_else(|e| panic!("{e}"));
    Daemon::start(
        cfg,
        StartOptions {
            with_simulators: false,
            api_bind: None,
            demo_bookings: false,
        },
        clock(),
    )
    .await
    .expect("daemon starts")
}

async fn until_ok(d: &Daemon, id: &str) {
    let h = d.fleet.get(id).unwrap_or_else(|| panic!("no device {id}"));
    let mut rx = h.watch();
    wait_state(&mut rx, Duration::from_secs(60), "device ok", |s| {
        s.health == Health::Ok
    })
    .await;
}

fn ids(v: &Value, key: &str) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|x| x[key].as_str().unwrap().to_owned())
        .collect();
    out.sort();
    out
}

/// The logbook entries of one kind: (message, data).
async fn entries(d: &Daemon, dir: &Path, kind: &str) -> Vec<(String, Value)> {
    d.logbook.flush().await.unwrap();
    let conn = avwarden::records::store::open_reader(&dir.join("records.db")).unwrap();
    let mut stmt = conn
        .prepare("SELECT message, data FROM logbook WHERE kind = ?1 ORDER BY seq")
        .unwrap();
    stmt.query_map([kind], |r| {
        let data: String = r.get(1)?;
        Ok((r.get(0)?, serde_json::from_str(&data).unwrap_or_default()))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

#[tokio::test(start_paused = true)]
async fn reload_adds_removes_and_changes_devices_and_rooms_and_leaves_the_rest_alone() {
    let pump = CancellationToken::new();
    spawn_settle_pump(pump.clone());
    let stop = CancellationToken::new();
    let (keep, gone, moved_from, moved_to, added) = (
        projector(&stop).await,
        projector(&stop).await,
        projector(&stop).await,
        projector(&stop).await,
        projector(&stop).await,
    );
    let dir = tempfile::tempdir().unwrap();
    let file = write_site(
        dir.path(),
        &[
            room("r1"),
            room("r9"),
            device("keep", "r1", keep.addr()),
            device("gone", "r9", gone.addr()),
            device("moved", "r1", moved_from.addr()),
        ],
    );
    let d = start(&file).await;
    for id in ["keep", "gone", "moved"] {
        until_ok(&d, id).await;
    }
    let sessions = keep.connections();
    let keep_handle = d.fleet.get("keep").unwrap();

    // Room r9 and its projector go, r2 and a projector in it come, `moved` gets a new port.
    write_site(
        dir.path(),
        &[
            room("r1"),
            room("r2"),
            device("keep", "r1", keep.addr()),
            device("moved", "r1", moved_to.addr()),
            device("new", "r2", added.addr()),
        ],
    );
    // Keep the untouched projector busy while the reload runs.
    let busy = {
        let h = keep_handle.clone();
        crate::support::spawn(async move {
            for _ in 0..5 {
                let _ = h
                    .command(avwarden::model::DeviceCommand::Power { on: false })
                    .await;
            }
        })
    };
    let report = d.reload.reload().await.expect("the new config is valid");
    busy.await.unwrap();

    assert_eq!(report.added, ["device new", "room r2"]);
    assert_eq!(report.removed, ["device gone", "room r9"]);
    assert_eq!(report.changed, ["device moved"]);
    assert_eq!(report.restart_needed, ["schedule (rooms)"]);
    assert!(report.failed.is_empty(), "{:?}", report.failed);

    until_ok(&d, "new").await;
    until_ok(&d, "moved").await;
    moved_to.wait_connections(1).await;
    added.wait_connections(1).await;
    // The untouched projector kept its actor and its one TCP session: no new connection.
    let polled = keep.requests().len();
    let mut rx = keep_handle.watch();
    let seen = rx.borrow().last_contact;
    wait_state(&mut rx, Duration::from_secs(60), "polled again", |s| {
        s.last_contact != seen
    })
    .await;
    assert!(keep.requests().len() > polled);
    assert_eq!(keep.connections(), sessions);
    assert!(keep_handle.state().reachable);
    assert!(d.fleet.get("gone").is_none());

    // The API shows the new set.
    let (status, devices) = api(&d, Method::GET, "/api/v1/devices", Value::Null).await;
    assert_eq!(status, 200, "{devices}");
    assert_eq!(ids(&devices, "id"), ["keep", "moved", "new"]);
    let (status, rooms) = api(&d, Method::GET, "/api/v1/rooms", Value::Null).await;
    assert_eq!(status, 200, "{rooms}");
    assert_eq!(ids(&rooms, "id"), ["r1", "r2"]);
    let (status, _) = api(&d, Method::GET, "/api/v1/devices/gone", Value::Null).await;
    assert_eq!(status, 404);

    // One logbook entry says what changed.
    let logged = entries(&d, dir.path(), "config_reloaded").await;
    assert_eq!(logged.len(), 1, "{logged:?}");
    let (message, data) = &logged[0];
    assert!(message.contains("added device new, room r2"), "{message}");
    assert!(
        message.contains("removed device gone, room r9"),
        "{message}"
    );
    assert!(message.contains("changed device moved"), "{message}");
    assert_eq!(data["restart_needed"], json!(["schedule (rooms)"]));

    // A second reload of the same file finds nothing to do and touches nothing.
    let again = d.reload.reload().await.unwrap();
    assert!(again.added.is_empty() && again.removed.is_empty() && again.changed.is_empty());
    assert_eq!(keep.connections(), sessions);

    let r = d.shutdown("test").await;
    assert!(r.within_deadline, "{r:?}");
    stop.cancel();
    pump.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_config_with_errors_is_refused_whole_and_nothing_changes() {
    let pump = CancellationToken::new();
    spawn_settle_pump(pump.clone());
    let stop = CancellationToken::new();
    let (one, two) = (projector(&stop).await, projector(&stop).await);
    let dir = tempfile::tempdir().unwrap();
    let good = [
        room("r1"),
        device("p1", "r1", one.addr()),
        device("p2", "r1", two.addr()),
    ];
    let file = write_site(dir.path(), &good);
    let d = start(&file).await;
    until_ok(&d, "p1").await;
    until_ok(&d, "p2").await;
    let sessions = (one.connections(), two.connections());

    // Two located errors: a misspelt profile, and a device in a room that does not exist.
    // The valid part of the file (p1 removed, r2 added) must not be applied either.
    let bad = [
        room("r1"),
        room("r2"),
        device("p2", "r1", two.addr()).replace("generic-pjlink", "generic-pjlnk"),
        device("p3", "r7", one.addr()),
    ];
    write_site(dir.path(), &bad);
    let err = d.reload.reload().await.expect_err("the config has errors");
    let ReloadError::Refused { errors } = &err else {
        panic!("{err:?}");
    };
    assert_eq!(errors.len(), 2, "{errors:#?}");
    let file_name = file.display().to_string();
    for e in errors {
        // file:line:column: key path: message
        assert!(e.starts_with(&format!("{file_name}:")), "{e}");
        assert!(e.contains("devices["), "{e}");
    }
    assert!(
        errors.iter().any(|e| e.contains("generic-pjlnk")),
        "{errors:?}"
    );
    assert!(errors.iter().any(|e| e.contains("r7")), "{errors:?}");

    // Through the API: 422 with the same errors.
    let (status, body) = api(&d, Method::POST, "/api/v1/reload", Value::Null).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"], "config_refused");
    assert_eq!(body["errors"], json!(errors));

    // Nothing changed: the same devices on the same sessions, the same rooms.
    assert_eq!(d.fleet.len(), 2);
    assert!(d.fleet.get("p1").is_some() && d.fleet.get("p3").is_none());
    assert_eq!((one.connections(), two.connections()), sessions);
    let (_, rooms) = api(&d, Method::GET, "/api/v1/rooms", Value::Null).await;
    assert_eq!(ids(&rooms, "id"), ["r1"]);
    let refused = entries(&d, dir.path(), "config_reload_refused").await;
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(refused[0].0.contains("2 error(s)"), "{}", refused[0].0);
    assert_eq!(refused[0].1["errors"], json!(errors));
    assert!(entries(&d, dir.path(), "config_reloaded").await.is_empty());

    // Fixed, the same file is taken.
    write_site(dir.path(), &good);
    let report = d.reload.reload().await.unwrap();
    assert!(report.changed.is_empty() && report.added.is_empty());

    d.shutdown("test").await;
    stop.cancel();
    pump.cancel();
}

/// The signal wiring through the real binary (a SIGHUP to this shared test process would
/// reach every test in it): SIGHUP reloads, and does not end the daemon as its default would.
#[test]
fn sighup_reloads_the_running_binary() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let dir = tempfile::tempdir().unwrap();
    let sim = |id: &str, room: &str| {
        format!(
            "[[devices]]\nid = \"{id}\"\nroom = \"{room}\"\nprofile = \"generic-pjlink\"\n\
             simulated = true\n[devices.simulator]\npower_on = true\n"
        )
    };
    let file = write_site(dir.path(), &[room("r1"), sim("p1", "r1")]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_avwarden"))
        .args(["--log", "info", "run", "--with-simulators", "--config"])
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _guard = crate::daemon::hang_guard(&child, Duration::from_secs(120));
    let stdout = child.stdout.take().unwrap();
    let mut started = false;
    for line in BufReader::new(stdout).lines() {
        if line.unwrap().starts_with("status: http://") {
            started = true;
            break;
        }
    }
    assert!(started, "the daemon prints its status URL");

    write_site(
        dir.path(),
        &[room("r1"), room("r2"), sim("p1", "r1"), sim("p2", "r2")],
    );
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let reloaded = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.contains("config reloaded:"))
        .expect("the daemon logs the reload");
    assert!(reloaded.contains("added device p2, room r2"), "{reloaded}");
    // Keep the pipe drained so the daemon's last log lines never block it.
    let drain = std::thread::spawn(move || lines.count());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    drain.join().unwrap();
}
