//! The webhook and mail sinks end to end (issue 11.6): a daemon whose playbook raises alerts
//! from faults emitted on its bus, a local HTTP receiver (axum, port 0) that verifies the
//! signature with the shared secret and can be made to fail, and a local SMTP receiver
//! (aiosmtpd, independent of our code). The logbook is the outbox: a receiver that is down,
//! and a daemon restart in between, lose nothing and keep the order.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use avwarden::app::Daemon;
use avwarden::config::{parse_site, Env, SiteConfig};
use avwarden::events::EventKind;
use avwarden::model::{DeviceId, Fault, RoomId, Severity};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::support::{api, spawn, spawn_settle_pump};

const SECRET: &str = "hook-Secret-4b1e9d07";
const SMTP_PASSWORD: &str = "smtp-Password-77c2a5";
const SINK: &str = "webhook:ops";

/// Paused time a delivery may take: the sinks' first retries and the settle pump's steps.
const LIMIT: Duration = Duration::from_secs(3600);

fn site(dir: &std::path::Path, notify: &str) -> SiteConfig {
    let text = format!(
        r#"
[site]
name = "Notify test"
time_zone = "UTC"

[storage]
path = "records.db"

[roster]
shifts = [{{ who = "li", role = "technician", days = ["mon-sun"], from = "00:00", until = "23:59" }}]
escalation = ["wang"]

[roster.contacts.li]
email = "li@example.org"

[[rooms]]
id = "r101"
capacity = 10

[[rooms]]
id = "r102"
capacity = 10

[[rooms]]
id = "r103"
capacity = 10

{notify}"#
    );
    parse_site(
        &text,
        "site.toml",
        dir,
        &Env::fixed(&[("HOOK_SECRET", SECRET), ("SMTP_PASSWORD", SMTP_PASSWORD)]),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn webhook(url: &str) -> String {
    format!(
        r#"
[notify]
public_url = "https://av.example.org"

[[notify.webhook]]
name = "ops"
url = "{url}"
secret_env = "HOOK_SECRET"
timeout_secs = 300
"#
    )
}

async fn start(cfg: SiteConfig) -> Daemon {
    crate::support::start_daemon(cfg).await
}

/// A projector lamp failure in `room`: the playbook raises an alert and tells the on-duty
/// technician.
fn lamp_fails(d: &Daemon, room: &str) {
    lamp_of_fails(d, room, &format!("{room}-proj"));
}

fn lamp_of_fails(d: &Daemon, room: &str, device: &str) {
    d.events.emit(
        d.clock.now(),
        EventKind::FaultRaised {
            device: DeviceId::new(device),
            room: RoomId::new(room),
            fault: Fault::new("lamp", Severity::Fault, "lamp failed"),
        },
    );
}

/// One request the receiver got, and what it answered.
#[derive(Debug, Clone)]
struct Hit {
    signature: String,
    delivery: String,
    idempotency: String,
    body: Bytes,
    answered: u16,
}

impl Hit {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the payload is JSON")
    }

    /// Verified with the `hmac` crate directly, not with the daemon's signing code.
    fn signed_with(&self, secret: &str) -> bool {
        let Some(hex_sig) = self.signature.strip_prefix("sha256=") else {
            return false;
        };
        let Ok(sig) = hex::decode(hex_sig) else {
            return false;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(&self.body);
        mac.verify_slice(&sig).is_ok()
    }
}

#[derive(Clone)]
struct Receiver {
    /// Answers for the next requests, in order; then `status`.
    script: Arc<Mutex<VecDeque<u16>>>,
    status: Arc<AtomicU16>,
    hits: mpsc::UnboundedSender<Hit>,
}

async fn hook(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let answered = r
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or_else(|| r.status.load(Ordering::SeqCst));
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let _ = r.hits.send(Hit {
        signature: header("x-avwarden-signature"),
        delivery: header("x-avwarden-delivery"),
        idempotency: header("idempotency-key"),
        body,
        answered,
    });
    StatusCode::from_u16(answered).unwrap()
}

/// A receiver on port 0 answering `status` (after the scripted answers).
async fn receiver(status: u16, script: &[u16]) -> (String, Receiver, mpsc::UnboundedReceiver<Hit>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let r = Receiver {
        script: Arc::new(Mutex::new(script.iter().copied().collect())),
        status: Arc::new(AtomicU16::new(status)),
        hits: tx,
    };
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, r, rx)
}

async fn next_hit(rx: &mut mpsc::UnboundedReceiver<Hit>) -> Hit {
    tokio::time::timeout(LIMIT, rx.recv())
        .await
        .expect("the receiver is called in time")
        .expect("the receiver runs")
}

/// The alert entries of the logbook after `after`: (seq, kind, data).
fn alert_entries(dir: &std::path::Path, after: u64) -> Vec<(u64, String, Value)> {
    let conn = avwarden::records::store::open_reader(&dir.join("records.db")).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT seq, kind, data FROM logbook WHERE seq > ?1
             AND kind IN ('alert_changed', 'alert_notified') ORDER BY seq",
        )
        .unwrap();
    stmt.query_map([after as i64], |r| {
        Ok((
            r.get::<_, i64>(0)? as u64,
            r.get::<_, String>(1)?,
            serde_json::from_str(&r.get::<_, String>(2)?).unwrap(),
        ))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

async fn wait_progress(
    d: &Daemon,
    sink: &str,
    what: &str,
    pred: impl FnMut(&avwarden::notify::SinkProgress) -> bool,
) -> avwarden::notify::SinkProgress {
    tokio::time::timeout(LIMIT, d.notify.wait_for(sink, pred))
        .await
        .unwrap_or_else(|_| panic!("{sink}: {what} in time; at {:?}", d.notify.progress(sink)))
        .unwrap_or_else(|| panic!("{sink} runs"))
}

async fn deliveries(d: &Daemon, query: &str) -> Vec<Value> {
    let (status, rows) = api(
        d,
        reqwest::Method::GET,
        &format!("/api/v1/notify/deliveries?{query}"),
        Value::Null,
    )
    .await;
    assert_eq!(status, 200, "{rows}");
    rows.as_array().unwrap().clone()
}

/// Issue 11.6: each alert event reaches the receiver as JSON of the documented shape, signed
/// with the shared secret, with its logbook sequence and idempotency id in the headers.
#[tokio::test(start_paused = true)]
async fn the_webhook_gets_each_alert_event_signed() {
    let pump = CancellationToken::new();
    spawn_settle_pump(pump.clone());
    let dir = tempfile::tempdir().unwrap();
    let (url, _r, mut hits) = receiver(200, &[]).await;
    let d = start(site(dir.path(), &webhook(&url))).await;
    assert_eq!(
        d.services().collect::<Vec<_>>(),
        [
            "devices",
            "archive",
            "schedule",
            "levelwatch",
            "playbook",
            "notify",
            "reload",
            "api"
        ]
    );
    lamp_fails(&d, "r101");
    let first = next_hit(&mut hits).await;
    let second = next_hit(&mut hits).await;
    wait_progress(&d, SINK, "both delivered", |p| p.delivered >= 2).await;
    let logged = alert_entries(dir.path(), 0);
    assert_eq!(logged.len(), 2, "{logged:?}");
    for (hit, (seq, kind, data)) in [&first, &second].into_iter().zip(&logged) {
        assert!(hit.signed_with(SECRET), "{hit:?}");
        assert!(
            !hit.signed_with("another-secret-0000"),
            "the check can fail"
        );
        let body = hit.json();
        assert_eq!(hit.delivery, seq.to_string());
        assert_eq!(body["seq"], *seq);
        assert_eq!(body["id"], hit.idempotency.as_str());
        assert_eq!(body["id"], format!("notify-test:{seq}"));
        assert_eq!(body["kind"], kind.as_str());
        assert_eq!(body["alert"], data["alert"]);
        assert_eq!(body["room"], "r101");
        assert_eq!(body["subject"], "r101-proj");
        assert_eq!(body["class"], data["class"]);
        assert_eq!(body["state"], "raised");
        assert!(
            body["fault"].as_str().is_some_and(|f| !f.is_empty()),
            "{body}"
        );
        assert_eq!(
            body["link"],
            format!("https://av.example.org/api/v1/alerts/{}", data["alert"])
        );
        assert!(body["at"].as_str().unwrap().ends_with('Z'), "{body}");
        assert!(!body["text"].as_str().unwrap().is_empty());
    }
    assert_eq!(first.json()["change"], "raised");
    assert_eq!(second.json()["notice"], "raised");
    assert_eq!(second.json()["recipients"], serde_json::json!(["li"]));
    assert_eq!(
        d.events
            .metrics()
            .get("avwarden_notify_delivered_total", Some(("sink", SINK))),
        2.0
    );
    let rows = deliveries(&d, "sink=webhook:ops").await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows
        .iter()
        .all(|r| r["outcome"] == "delivered" && r["status"] == 200 && r["attempt"] == 1));
    d.shutdown("test").await;
    pump.cancel();
}

/// Issue 11.6: the receiver answers 503 while three alerts are raised and one acknowledged;
/// the daemon is stopped and another started on the same records; the receiver comes back.
/// Every alert event is delivered afterwards, in logbook order, none twice, and each attempt
/// is in the delivery log, its count going on across the restart.
#[tokio::test(start_paused = true)]
async fn a_receiver_that_was_down_gets_everything_in_order_after_a_restart() {
    let pump = CancellationToken::new();
    spawn_settle_pump(pump.clone());
    let dir = tempfile::tempdir().unwrap();
    let (url, r, mut hits) = receiver(503, &[]).await;
    let d = start(site(dir.path(), &webhook(&url))).await;
    let mut changes = d.events.sink(
        "test",
        avwarden::events::EventFilter::matching(|k| matches!(k, EventKind::AlertChanged { .. })),
        64,
    );
    for room in ["r101", "r102", "r103"] {
        lamp_fails(&d, room);
    }
    let mut raised = Vec::new();
    while raised.len() < 3 {
        let e = tokio::time::timeout(LIMIT, changes.recv())
            .await
            .expect("alerts raised in time")
            .unwrap();
        if let EventKind::AlertChanged { alert, what, .. } = &e.kind {
            if what == "raised" {
                raised.push(*alert);
            }
        }
    }
    let first = raised[0];
    d.playbook.acknowledge(first, "li").expect("acknowledged");
    d.logbook.flush().await.unwrap();
    let logged = alert_entries(dir.path(), 0);
    let whats: Vec<&str> = logged
        .iter()
        .filter(|(_, k, _)| k == "alert_changed")
        .map(|(_, _, d)| d["what"].as_str().unwrap())
        .collect();
    assert_eq!(whats, ["raised", "raised", "raised", "acknowledged"]);
    // A few refused attempts, all of the first entry: nothing overtakes it.
    wait_progress(&d, SINK, "three failures", |p| p.failures >= 3).await;
    let p = d.notify.progress(SINK).unwrap();
    assert_eq!(p.delivered, 0);
    assert!(p.cursor < logged[0].0, "{p:?}");
    assert!(
        d.events
            .metrics()
            .get("avwarden_notify_failures_total", Some(("sink", SINK)))
            >= 3.0
    );
    let report = d.shutdown("restart").await;
    assert!(report.within_deadline && report.writer_done, "{report:?}");

    r.status.store(200, Ordering::SeqCst);
    let d = start(site(dir.path(), &webhook(&url))).await;
    let last = logged.last().unwrap().0;
    wait_progress(&d, SINK, "caught up", |p| p.cursor >= last).await;
    let mut got = Vec::new();
    while let Ok(h) = hits.try_recv() {
        assert!(h.signed_with(SECRET));
        if h.answered == 200 {
            got.push(h.json()["seq"].as_u64().unwrap());
        } else {
            assert_eq!(h.json()["seq"], logged[0].0, "only the first was tried");
        }
    }
    let want: Vec<u64> = logged.iter().map(|(s, _, _)| *s).collect();
    assert_eq!(
        got[..want.len().min(got.len())],
        want[..],
        "in order, none twice"
    );
    assert_eq!(got.len(), want.len(), "{got:?}");

    let rows = deliveries(&d, "sink=webhook:ops&limit=1000").await;
    for seq in &want {
        let delivered = rows
            .iter()
            .filter(|r| r["seq"] == *seq && r["outcome"] == "delivered")
            .count();
        assert_eq!(delivered, 1, "entry {seq}: {rows:#?}");
    }
    let mut first_attempts: Vec<(u64, String)> = rows
        .iter()
        .filter(|r| r["seq"] == want[0])
        .map(|r| {
            (
                r["attempt"].as_u64().unwrap(),
                r["outcome"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    first_attempts.sort();
    let n = first_attempts.len() as u64;
    assert!(n >= 4, "{first_attempts:?}");
    for (i, (attempt, outcome)) in first_attempts.iter().enumerate() {
        assert_eq!(
            *attempt,
            i as u64 + 1,
            "attempts counted across the restart"
        );
        let want_outcome = if *attempt == n { "delivered" } else { "retry" };
        assert_eq!(outcome, want_outcome, "{first_attempts:?}");
    }
    assert!(rows
        .iter()
        .filter(|r| r["outcome"] == "retry")
        .all(|r| r["status"] == 503 && r["error"] == "receiver answered 503"));
    d.shutdown("test").await;
    pump.cancel();
}

/// A burst of alerts while the sink backs off from a receiver that is down must not fill its
/// bus sink (the bus would report a consumer that fell behind, at ERROR): the burst is emitted
/// in one go, and the sink drains its wake-ups while it waits. (With 64 wake-ups buffered and
/// no draining, 58 were counted dropped.)
#[tokio::test(start_paused = true)]
async fn a_sink_in_backoff_keeps_taking_its_wake_ups() {
    let pump = CancellationToken::new();
    spawn_settle_pump(pump.clone());
    let dir = tempfile::tempdir().unwrap();
    let (url, _r, _hits) = receiver(503, &[]).await;
    let d = start(site(dir.path(), &webhook(&url))).await;
    lamp_fails(&d, "r102");
    // The sink is now backing off from its first entry.
    wait_progress(&d, SINK, "a first failure", |p| p.failures >= 1).await;
    for i in 0..60 {
        lamp_of_fails(&d, "r101", &format!("r101-proj-{i}"));
    }
    wait_progress(&d, SINK, "retrying", |p| p.failures >= 4).await;
    d.logbook.flush().await.unwrap();
    assert!(
        alert_entries(dir.path(), 0).len() >= 120,
        "a burst beyond the sink's capacity"
    );
    assert_eq!(
        d.events.metrics().get(
            "avwarden_events_dropped_total",
            Some(("sink", "notify:webhook:ops"))
        ),
        0.0
    );
    d.shutdown("test").await;
    pump.cancel();
}

/// Issue 11.6: a receiver that refuses an entry (400) does not block the queue: the refusal
/// is logged, the entry is not tried again, and the next one is delivered.
#[tokio::test(start_paused = true)]
async fn a_refused_entry_is_logged_and_the_next_is_delivered() {
    let pump = CancellationToken::new();
    spawn_settle_pump(pump.clone());
    let dir = tempfile::tempdir().unwrap();
    let (url, _r, mut hits) = receiver(200, &[400]).await;
    let d = start(site(dir.path(), &webhook(&url))).await;
    lamp_fails(&d, "r101");
    let refused = next_hit(&mut hits).await;
    let taken = next_hit(&mut hits).await;
    assert_eq!(refused.answered, 400);
    assert_eq!(taken.answered, 200);
    let logged = alert_entries(dir.path(), 0);
    assert_eq!(refused.json()["seq"], logged[0].0);
    assert_eq!(
        taken.json()["seq"],
        logged[1].0,
        "the refused one is not retried"
    );
    wait_progress(&d, SINK, "past both", |p| p.cursor >= logged[1].0).await;
    let rows = deliveries(&d, "sink=webhook:ops").await;
    let rows: Vec<(u64, &str, u64, u64)> = rows
        .iter()
        .map(|r| {
            (
                r["seq"].as_u64().unwrap(),
                r["outcome"].as_str().unwrap(),
                r["status"].as_u64().unwrap(),
                r["attempt"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (logged[1].0, "delivered", 200, 1),
            (logged[0].0, "rejected", 400, 1)
        ],
        "newest first"
    );
    d.shutdown("test").await;
    pump.cancel();
}

/// The SMTP receiver: a Python process, its messages as JSON lines on a channel. Read on a
/// thread of its own (not a tokio blocking task, which would stop paused time).
struct Smtp {
    port: u16,
    mails: mpsc::UnboundedReceiver<Value>,
    child: std::process::Child,
}

fn smtp_receiver(python: &str) -> Smtp {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let mut child = Command::new(python)
        .arg(crate::support::data("notify/smtp_receiver.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python starts");
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(stdout).lines();
    let first = lines.next().expect("the receiver says its port").unwrap();
    let port = first
        .strip_prefix("port ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
    let (tx, mails) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                let _ = tx.send(v);
            }
        }
    });
    Smtp { port, mails, child }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        // Closing stdin ends it; kill in case it is stuck.
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Issue 11.6: a local SMTP receiver gets the mail for the on-duty contact, with the subject
/// `[CLASS] room: message` and a body that gives the facts and the link.
#[tokio::test(start_paused = true)]
async fn the_on_duty_contact_gets_the_mail() {
    let Some(python) = crate::support::python() else {
        return;
    };
    let mut smtp = smtp_receiver(&python);
    let pump = CancellationToken::new();
    spawn_settle_pump(pump.clone());
    let dir = tempfile::tempdir().unwrap();
    let notify = format!(
        r#"
[notify]
public_url = "https://av.example.org/"

[notify.mail]
smtp_host = "127.0.0.1"
smtp_port = {}
tls = "none"
from = "avwarden <avwarden@example.org>"
timeout_secs = 300
"#,
        smtp.port
    );
    let d = start(site(dir.path(), &notify)).await;
    lamp_fails(&d, "r101");
    let mail = tokio::time::timeout(LIMIT, smtp.mails.recv())
        .await
        .expect("a mail in time")
        .expect("the receiver runs");
    wait_progress(&d, "mail", "delivered", |p| p.delivered >= 1).await;
    let logged = alert_entries(dir.path(), 0);
    let (seq, _, told) = logged
        .iter()
        .find(|(_, k, _)| k == "alert_notified")
        .expect("the playbook told someone");
    assert_eq!(told["recipients"], serde_json::json!(["li"]));
    assert_eq!(mail["rcpt_tos"], serde_json::json!(["li@example.org"]));
    assert_eq!(mail["mail_from"], "avwarden@example.org");
    assert_eq!(
        mail["subject"],
        format!(
            "[{}] r101: {}",
            told["class"].as_str().unwrap().to_uppercase(),
            told["message"].as_str().unwrap()
        )
    );
    let body = mail["body"].as_str().unwrap();
    for want in [
        "Room:       r101".to_owned(),
        "Device:     r101-proj".to_owned(),
        "Told:       li".to_owned(),
        format!(
            "Open: https://av.example.org/api/v1/alerts/{}",
            told["alert"]
        ),
        format!("logbook entry {seq}"),
    ] {
        assert!(body.contains(&want), "{want:?} in\n{body}");
    }
    let rows = deliveries(&d, "sink=mail").await;
    assert_eq!(rows.len(), 1, "only the notice is mailed: {rows:?}");
    assert_eq!(rows[0]["seq"], *seq);
    assert_eq!(rows[0]["outcome"], "delivered");
    assert_eq!(rows[0]["status"], 250);
    d.shutdown("test").await;
    pump.cancel();
}

/// Issue 11.6: neither the webhook secret nor the SMTP password appears in a delivery row,
/// an API answer, the records file or the config's debug form, while both sinks fail and
/// retry. (The log lines of the real binary are searched by
/// `api_auth::no_secret_is_logged_answered_or_stored`, which runs the same sinks.)
#[tokio::test(start_paused = true)]
async fn no_sink_secret_is_stored_or_answered() {
    let pump = CancellationToken::new();
    spawn_settle_pump(pump.clone());
    let dir = tempfile::tempdir().unwrap();
    let (url, _r, mut hits) = receiver(401, &[]).await;
    // A port nobody listens on: the mail sink fails to connect and retries.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let smtp_port = closed.local_addr().unwrap().port();
    drop(closed);
    let notify = format!(
        r#"{}
[notify.mail]
smtp_host = "127.0.0.1"
smtp_port = {smtp_port}
tls = "none"
username = "avwarden"
password_env = "SMTP_PASSWORD"
from = "avwarden@example.org"
timeout_secs = 300
"#,
        webhook(&url)
    );
    let cfg = site(dir.path(), &notify);
    let cfg_debug = format!("{cfg:?}");
    let d = start(cfg).await;
    lamp_fails(&d, "r101");
    next_hit(&mut hits).await;
    wait_progress(&d, SINK, "refused", |p| p.failures >= 1).await;
    wait_progress(&d, "mail", "failed", |p| p.failures >= 2).await;
    let rows = deliveries(&d, "limit=1000").await;
    assert!(rows
        .iter()
        .any(|r| r["sink"] == "mail" && r["outcome"] == "retry"));
    assert!(rows
        .iter()
        .any(|r| r["sink"] == SINK && r["outcome"] == "rejected"));
    let mut outputs: Vec<(String, Vec<u8>)> = vec![
        ("deliveries".into(), serde_json::to_vec(&rows).unwrap()),
        ("config".into(), cfg_debug.into_bytes()),
    ];
    for path in ["/api/v1/site", "/api/v1/logbook?limit=1000", "/metrics"] {
        let url = format!("http://{}{path}", d.api_addr);
        let body = spawn(async move { reqwest::get(url).await.unwrap().bytes().await.unwrap() })
            .await
            .unwrap();
        outputs.push((path.to_owned(), body.to_vec()));
    }
    d.shutdown("test").await;
    pump.cancel();
    for f in std::fs::read_dir(dir.path()).unwrap() {
        let p = f.unwrap().path();
        outputs.push((p.display().to_string(), std::fs::read(&p).unwrap()));
    }
    let has = |bytes: &[u8], s: &str| bytes.windows(s.len()).any(|w| w == s.as_bytes());
    for secret in [SECRET, SMTP_PASSWORD] {
        for (what, bytes) in &outputs {
            assert!(!has(bytes, secret), "{secret:?} found in {what}");
        }
    }
}
