//! The API's HTTP server under a hostile network (issue 16.2, 16.5): connection limit,
//! header, idle and body timeouts, and JSON for the requests refused before the router.

use std::net::SocketAddr;
use std::time::Duration;

use avwarden::config::ApiConfig;
use avwarden::metrics::Metrics;
use avwarden::runtime::Fleet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::support::{bus, clock, serve_api};

/// The API with no devices under `limits`, on an ephemeral port.
async fn serve(limits: ApiConfig) -> (SocketAddr, Metrics, CancellationToken) {
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let events = bus();
    let fleet = Fleet::new(events.clone(), clock(), tracker.clone(), cancel.clone());
    let addr = serve_api(fleet, &events, limits, &tracker, &cancel).await;
    (addr, events.metrics().clone(), cancel)
}

/// Send `request` raw and read until the server closes: (status, headers, body).
async fn exchange(addr: SocketAddr, request: &[u8]) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    read_response(&mut s).await
}

async fn read_response(s: &mut TcpStream) -> (u16, String, String) {
    let mut buf = Vec::new();
    // The server closes after these answers; a reset after the answer is fine.
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if complete(&buf) {
                    break;
                }
            }
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_owned())
}

/// A whole response with a content-length has arrived.
fn complete(buf: &[u8]) -> bool {
    let text = String::from_utf8_lossy(buf);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    head.to_ascii_lowercase()
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|n| n.trim().parse::<usize>().ok())
        .is_some_and(|n| body.len() >= n)
}

fn json_error(head: &str, body: &str) -> serde_json::Value {
    assert!(head.contains("content-type: application/json"), "{head}");
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    assert!(v["detail"].as_str().is_some_and(|d| !d.is_empty()), "{v}");
    v
}

/// Issue 16.5: requests hyper refuses before any handler ran (a malformed request line, a
/// head over the limit, a target too long) answered with empty bodies. Every error is JSON
/// with `error` and `detail`.
#[tokio::test]
async fn requests_refused_before_the_router_answer_json() {
    let (addr, _, cancel) = serve(ApiConfig::default()).await;

    let (status, head, body) = exchange(addr, b"HELLO there\r\n\r\n").await;
    assert_eq!(status, 400, "{head}");
    assert_eq!(json_error(&head, &body)["error"], "malformed_request");

    let big = format!(
        "GET /api/v1/health HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(40 * 1024)
    );
    let (status, head, body) = exchange(addr, big.as_bytes()).await;
    assert_eq!(status, 431, "{head}");
    assert_eq!(json_error(&head, &body)["error"], "headers_too_large");

    let long = format!(
        "GET /api/v1/devices/{} HTTP/1.1\r\nhost: x\r\n\r\n",
        "d".repeat(10 * 1024)
    );
    let (status, head, body) = exchange(addr, long.as_bytes()).await;
    assert_eq!(status, 414, "{head}");
    assert_eq!(json_error(&head, &body)["error"], "uri_too_long");

    // A good request on the same server is untouched.
    let (status, _, body) = exchange(
        addr,
        b"GET /api/v1/health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.contains("\"status\""), "{body}");
    cancel.cancel();
}

/// Issue 16.2: a head that never completes and a kept-alive connection left idle held their
/// descriptors forever. Both are closed after the header timeout.
#[tokio::test(start_paused = true)]
async fn a_half_sent_head_and_an_idle_keep_alive_are_closed_after_the_header_timeout() {
    let limits = ApiConfig {
        header_timeout: Duration::from_secs(5),
        ..ApiConfig::default()
    };
    let (addr, _, cancel) = serve(limits).await;

    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /api/v1/health HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let start = tokio::time::Instant::now();
    let mut b = [0u8; 256];
    let n = slow.read(&mut b).await.unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    assert!(
        start.elapsed() >= Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );

    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /api/v1/health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let (status, head, _) = read_response(&mut idle).await;
    assert_eq!(status, 200);
    assert!(!head.contains("connection: close"), "kept alive: {head}");
    let answered = tokio::time::Instant::now();
    assert_eq!(idle.read(&mut b).await.unwrap_or(0), 0, "closed when idle");
    assert!(answered.elapsed() >= Duration::from_secs(5));
    cancel.cancel();
}

/// Issue 16.2: a body announced and never sent held a handler (and its connection) open. It
/// is answered `408 body_timeout` after the body timeout.
#[tokio::test(start_paused = true)]
async fn a_body_that_never_arrives_is_a_json_408() {
    let limits = ApiConfig {
        body_timeout: Duration::from_secs(3),
        ..ApiConfig::default()
    };
    let (addr, _, cancel) = serve(limits).await;
    let start = tokio::time::Instant::now();
    let (status, head, body) = exchange(
        addr,
        b"POST /api/v1/devices/p1/commands HTTP/1.1\r\nhost: x\r\n\
          content-type: application/json\r\ncontent-length: 100\r\n\r\n{\"comm",
    )
    .await;
    assert_eq!(status, 408, "{head}");
    assert_eq!(json_error(&head, &body)["error"], "body_timeout");
    assert!(start.elapsed() >= Duration::from_secs(3));
    cancel.cancel();
}

/// Issue 16.2: past the connection limit, a newcomer closes the oldest connection with no
/// request in progress, so a probe is answered through a flood of idle and half-sent
/// connections; when every connection is busy with a request, the newcomer gets a JSON 503.
#[tokio::test]
async fn past_the_limit_a_probe_closes_the_oldest_idle_connection_and_busy_ones_stay() {
    let limits = ApiConfig {
        max_connections: 8,
        ..ApiConfig::default()
    };
    let (addr, metrics, cancel) = serve(limits).await;
    let mut flood = Vec::new();
    for i in 0..40 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        if i % 2 == 1 {
            s.write_all(b"GET /api/v1/health HTTP/1.1\r\nhost: x\r\n")
                .await
                .unwrap();
        }
        flood.push(s);
    }
    for _ in 0..7 {
        let (status, _, body) = exchange(
            addr,
            b"GET /api/v1/health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    assert!(metrics.get("avwarden_api_connections", None) <= 8.0);
    // 40 into 8 places closes 32; the first probe closes one more and leaves a place free
    // for the next ones once it is answered.
    assert_eq!(
        metrics.get("avwarden_api_connections_evicted_total", None),
        33.0,
        "{}",
        metrics.render()
    );
    // The flood's connections were closed, the oldest first.
    let mut b = [0u8; 16];
    assert_eq!(flood[0].read(&mut b).await.unwrap_or(0), 0);
    drop(flood);

    // Eight requests whose bodies are still arriving: all busy, none can go. `100 Continue`
    // comes when the handler starts reading the body, so each is known to be in progress.
    let mut busy = Vec::new();
    for _ in 0..8 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(
            b"POST /api/v1/devices/p1/commands HTTP/1.1\r\nhost: x\r\n\
              content-type: application/json\r\ncontent-length: 50\r\n\
              expect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
        let mut b = [0u8; 64];
        let n = s.read(&mut b).await.unwrap();
        assert!(
            b[..n].starts_with(b"HTTP/1.1 100"),
            "{:?}",
            String::from_utf8_lossy(&b[..n])
        );
        busy.push(s);
    }
    let (status, head, body) = exchange(
        addr,
        b"GET /api/v1/health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 503, "{head}");
    assert_eq!(json_error(&head, &body)["error"], "overloaded");
    assert!(metrics.get("avwarden_api_connections_refused_total", None) >= 1.0);
    // The busy ones were never closed: each still gets its answer.
    for mut s in busy {
        s.write_all(&[b'{'; 50]).await.unwrap();
        let (status, _, _) = read_response(&mut s).await;
        assert_eq!(status, 400, "malformed JSON, answered");
    }
    cancel.cancel();
}

/// Issue 16.2, as found: a daemon with 1,024 descriptors, 2,000 idle and half-sent
/// connections held open. Health probes kept failing and a projector that came back could
/// not reconnect for 38 s. Now the API holds at most its limit (fitted to the descriptors),
/// every probe is answered, no accept fails, and the projector reconnects.
#[test]
fn two_thousand_idle_and_slow_connections_leave_probes_answered_and_devices_reconnecting() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let rt = tokio::runtime::Runtime::new().unwrap();
    let stop_sim = CancellationToken::new();
    let sim = rt
        .block_on(avwarden::sim::pjlink::PjlinkSim::start(
            avwarden::sim::pjlink::SimConfig {
                power_on: true,
                ..Default::default()
            },
            "127.0.0.1:0".parse().unwrap(),
            stop_sim.clone(),
        ))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("site.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[site]
name = "Flood"
time_zone = "UTC"
[api]
bind = "127.0.0.1:0"
[links]
backoff_min_ms = 200
backoff_max_ms = 1000
[[rooms]]
id = "r1"
capacity = 10
[[devices]]
id = "proj"
room = "r1"
profile = "generic-pjlink"
link = {{ host = "127.0.0.1", port = {port} }}
"#,
            port = sim.addr().port()
        ),
    )
    .unwrap();
    // `ulimit -n` in sh sets the soft and the hard limit: the daemon cannot raise it.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n 1024 && exec '{}' run --config '{}'",
            env!("CARGO_BIN_EXE_avwarden"),
            cfg.display()
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = crate::daemon::hang_guard(&child, Duration::from_secs(180));
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let status_url = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("status: ").map(str::to_owned))
        .expect("the daemon prints its status URL");
    let addr: SocketAddr = status_url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();

    rt.block_on(async {
        sim.wait_connections(1).await;
        // The projector goes away while the flood comes in.
        sim.stop().await;
        let mut flood = Vec::new();
        for i in 0..2000 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            if i % 2 == 1 {
                let _ = s
                    .write_all(b"GET /api/v1/health HTTP/1.1\r\nhost: x\r\n")
                    .await;
            }
            flood.push(s);
        }
        let probe = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        for _ in 0..7 {
            let r = probe.get(&status_url).send().await.expect("probe answered");
            assert_eq!(r.status().as_u16(), 200);
        }
        // The projector comes back and the daemon reconnects to it, the flood still open.
        let before = sim.connections();
        let back = tokio::time::Instant::now();
        sim.restart().await.unwrap();
        sim.wait_connections(before + 1).await;
        eprintln!(
            "reconnected {:?} after the projector came back",
            back.elapsed()
        );

        let metrics = probe
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let value = |name: &str| -> f64 {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or(0.0)
        };
        assert!(value("avwarden_api_connections") <= 512.0, "{metrics}");
        assert!(
            value("avwarden_api_connections_evicted_total") >= 1488.0,
            "{metrics}"
        );
        assert_eq!(value("avwarden_api_accept_errors_total"), 0.0, "{metrics}");
        drop(flood);
    });

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    stop_sim.cancel();
}
