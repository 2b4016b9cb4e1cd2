//! The API load benchmark (issue 12, issue 15 point 3): one process runs the daemon with N
//! simulated rooms (one PJLink projector each, its simulator inside the same process, the
//! real device runtime polling it over loopback) and a booking per room, then points `wrk`
//! at the list routes and one device, at 2 and 50 connections, and at a trivial static server
//! that serves the very same bytes from a file on the same machine: the baseline.
//!
//! Two baselines (`AVWARDEN_BENCH_API_BASELINE`, `nginx,hyper`): nginx when installed (the
//! issue's baseline), and a minimal hyper server in this process answering the files' bytes.
//! `cargo bench --bench api_load` installs `wrk` and `nginx-light` with apt when run as root
//! and they are missing. This is a benchmark, not a test: it never fails on a figure. Under
//! `cargo test --all-targets` it starts a four-room daemon and checks each route answers.
//! Results and how to read them: `docs/benchmarks.md`.
//!
//! Environment (all optional): `AVWARDEN_BENCH_API_ROOMS` (500), `AVWARDEN_BENCH_API_SECS`
//! (wrk's `-d`, 10), `AVWARDEN_BENCH_API_CONNS` (`2,50`), `AVWARDEN_BENCH_API_THREADS`
//! (the daemon's runtime workers, the number of cores).

#[path = "common/proc.rs"]
mod proc;
use proc::{loadavg, print_machine};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

use avwarden::app::{Daemon, StartOptions};
use avwarden::clock::Clock;
use avwarden::config::{parse_site, Env};

/// The routes measured: (label, path). The board's default shows 50 bookings; `limit=500`
/// shows every room's.
const ROUTES: &[(&str, &str)] = &[
    ("devices", "/api/v1/devices"),
    ("rooms", "/api/v1/rooms"),
    ("board", "/api/v1/board"),
    ("board?limit=500", "/api/v1/board?limit=500"),
    ("one device", "/api/v1/devices/p0001"),
];

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| {
            eprintln!("api_load: ignoring {name}={v:?} (not a valid value)");
            default
        }),
        Err(_) => default,
    }
}

fn site(dir: &Path, rooms: usize) -> String {
    let mut s = format!(
        "[site]\nname = \"API load\"\ntime_zone = \"UTC\"\n[storage]\npath = \"{}\"\n[api]\nbind = \"127.0.0.1:0\"\n",
        dir.join("records.db").display()
    );
    for i in 1..=rooms {
        s.push_str(&format!(
            "[[rooms]]\nid = \"r{i:04}\"\nname = \"Room {i}\"\nbuilding = \"Main\"\nfloor = {}\ncapacity = 12\n\
             [[devices]]\nid = \"p{i:04}\"\nroom = \"r{i:04}\"\nprofile = \"generic-pjlink\"\nsimulated = true\n\
             [devices.simulator]\npower_on = true\n",
            i / 50
        ));
    }
    s
}

async fn start(dir: &Path, rooms: usize) -> Result<Daemon, String> {
    let text = site(dir, rooms);
    let cfg = parse_site(&text, "site.toml", dir, &Env::fixed(&[])).map_err(|e| e.to_string())?;
    Daemon::start(
        cfg,
        StartOptions {
            with_simulators: true,
            api_bind: None,
            demo_bookings: false,
        },
        Clock::system(),
    )
    .await
    .map_err(|e| format!("daemon: {e:#}"))
}

/// Wait until every device is `ok` (or `limit` passed), then book each room once over the
/// next hours so the rooms list and the board carry bookings.
async fn prepare(d: &Daemon, rooms: usize, limit: Duration) -> Result<usize, String> {
    let http = reqwest::Client::new();
    let base = format!("http://{}", d.api_addr);
    let deadline = tokio::time::Instant::now() + limit;
    let mut ok = 0;
    while tokio::time::Instant::now() < deadline {
        let list: Vec<serde_json::Value> = http
            .get(format!("{base}/api/v1/devices"))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        ok = list.iter().filter(|d| d["health"] == "ok").count();
        if ok == rooms {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let now = d.clock.now();
    for i in 1..=rooms {
        let start = now + chrono::Duration::hours(3) + chrono::Duration::minutes(i as i64);
        let body = serde_json::json!({
            "room": format!("r{i:04}"), "title": format!("Meeting {i}"), "start": start,
            "end": start + chrono::Duration::minutes(60), "attendees": 6,
            "organiser": "Front desk", "department": "Bench",
        });
        let r = http
            .post(format!("{base}/api/v1/bookings"))
            .json(&body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !r.status().is_success() {
            return Err(format!("booking {i}: {}", r.status()));
        }
    }
    Ok(ok)
}

/// One wrk run's figures.
#[derive(Debug, Clone, Copy)]
struct Load {
    rps: f64,
    p99_ms: f64,
}

/// wrk's duration text (`812.00us`, `3.21ms`, `1.02s`) in milliseconds.
fn millis(text: &str) -> Option<f64> {
    let (num, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (text, 1.0)
    };
    num.parse::<f64>().ok().map(|v| v * scale)
}

fn wrk(url: &str, conns: usize, secs: u64, header: Option<&str>) -> Result<Load, String> {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t2",
        &format!("-c{conns}"),
        &format!("-d{secs}s"),
        "--latency",
    ]);
    if let Some(h) = header {
        cmd.args(["-H", h]);
    }
    let out = cmd.arg(url).output().map_err(|e| format!("wrk: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok());
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .and_then(|v| millis(v.trim()));
    if text.contains("Non-2xx") {
        eprintln!("api_load: {url}: wrk saw answers that are not 2xx/3xx:\n{text}");
    }
    match (rps, p99) {
        (Some(rps), Some(p99_ms)) => Ok(Load { rps, p99_ms }),
        _ => Err(format!("wrk {url}: no figures in\n{text}")),
    }
}

/// `wrk` and nginx, installed with apt when missing and this runs as root.
fn ensure_tools() {
    let have = |bin: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {bin}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let missing: Vec<&str> = [("wrk", "wrk"), ("nginx", "nginx-light")]
        .into_iter()
        .filter(|(bin, _)| !have(bin))
        .map(|(_, pkg)| pkg)
        .collect();
    if missing.is_empty() || !nix::unistd::Uid::effective().is_root() {
        return;
    }
    println!("api_load: installing {missing:?} with apt-get");
    let _ = Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status();
}

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// The static baseline: nginx serving `root`, or the in-process hyper server.
enum Baseline {
    Nginx { child: Child, port: u16 },
    Hyper { addr: SocketAddr },
}

impl Baseline {
    fn name(&self) -> &'static str {
        match self {
            Baseline::Nginx { .. } => "nginx",
            Baseline::Hyper { .. } => "hyper static",
        }
    }

    fn url(&self, file: &str) -> String {
        match self {
            Baseline::Nginx { port, .. } => format!("http://127.0.0.1:{port}/{file}"),
            Baseline::Hyper { addr } => format!("http://{addr}/{file}"),
        }
    }

    /// nginx is told to stop (SIGTERM: its master ends its workers, then itself). A SIGKILL
    /// ended the master alone and left its workers running, listening and polling, through
    /// every later run of the bench and whatever was measured after it.
    fn stop(self) {
        if let Baseline::Nginx { mut child, .. } = self {
            use nix::sys::signal::{kill, Signal};
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            if kill(pid, Signal::SIGTERM).is_err() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

fn start_nginx(rt: &tokio::runtime::Runtime, dir: &Path, root: &Path) -> Result<Baseline, String> {
    let port = free_port()?;
    let user = if nix::unistd::Uid::effective().is_root() {
        "user root;"
    } else {
        ""
    };
    let conf = format!(
        "{user}\nworker_processes auto;\nerror_log {dir}/nginx-error.log;\npid {dir}/nginx.pid;\n\
         events {{ worker_connections 1024; }}\n\
         http {{ access_log off; sendfile on; tcp_nopush on; keepalive_requests 1000000;\n\
           client_body_temp_path {dir}/t1; proxy_temp_path {dir}/t2; fastcgi_temp_path {dir}/t3;\n\
           uwsgi_temp_path {dir}/t4; scgi_temp_path {dir}/t5;\n\
           types {{ application/json json; }}\n\
           server {{ listen 127.0.0.1:{port}; root {root}; }} }}\n",
        dir = dir.display(),
        root = root.display()
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).map_err(|e| e.to_string())?;
    let child = Command::new("nginx")
        .args(["-p", &dir.display().to_string(), "-c"])
        .arg(&path)
        .args(["-g", "daemon off;"])
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("nginx: {e}"))?;
    // nginx has no readiness signal: wait for its port to accept.
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(Baseline::Nginx { child, port });
        }
        rt.block_on(async { tokio::time::sleep(Duration::from_millis(50)).await });
    }
    Err("nginx did not start".into())
}

/// A minimal hyper server answering each file of `root` (read once) by name.
async fn start_hyper(root: PathBuf) -> Result<Baseline, String> {
    use http_body_util::Full;
    use hyper::service::service_fn;
    let mut files = std::collections::HashMap::new();
    for e in std::fs::read_dir(&root).map_err(|e| e.to_string())? {
        let e = e.map_err(|e| e.to_string())?;
        let bytes = std::fs::read(e.path()).map_err(|e| e.to_string())?;
        files.insert(
            format!("/{}", e.file_name().to_string_lossy()),
            bytes::Bytes::from(bytes),
        );
    }
    let files = std::sync::Arc::new(files);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let tasks = tokio_util::task::TaskTracker::new();
    let inner = tasks.clone();
    tasks.spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let files = files.clone();
            inner.spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let body = files.get(req.uri().path()).cloned().unwrap_or_default();
                    async move {
                        hyper::Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(body))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(sock), svc)
                    .await;
            });
        }
    });
    Ok(Baseline::Hyper { addr })
}

fn main() -> ExitCode {
    let bench = std::env::args().any(|a| a == "--bench");
    let rooms = if bench {
        env_or("AVWARDEN_BENCH_API_ROOMS", 500usize)
    } else {
        4
    };
    let threads = env_or(
        "AVWARDEN_BENCH_API_THREADS",
        std::thread::available_parallelism().map_or(2, |n| n.get()),
    );
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .thread_name("avw-daemon")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("api_load: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("api_load: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = if bench {
        run(&rt, dir.path(), rooms)
    } else {
        smoke(&rt, dir.path(), rooms)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("api_load: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Under `cargo test --all-targets`: every measured route answers 200 with JSON.
fn smoke(rt: &tokio::runtime::Runtime, dir: &Path, rooms: usize) -> Result<(), String> {
    rt.block_on(async {
        let d = start(dir, rooms).await?;
        prepare(&d, rooms, Duration::from_secs(60)).await?;
        for (label, path) in ROUTES {
            let r = reqwest::get(format!("http://{}{path}", d.api_addr))
                .await
                .map_err(|e| e.to_string())?;
            if !r.status().is_success() {
                return Err(format!("{label}: {}", r.status()));
            }
            r.json::<serde_json::Value>()
                .await
                .map_err(|e| format!("{label}: {e}"))?;
        }
        d.shutdown("smoke done").await;
        println!(
            "api_load smoke: every route answers (run `cargo bench --bench api_load` for figures)"
        );
        Ok(())
    })
}

fn run(rt: &tokio::runtime::Runtime, dir: &Path, rooms: usize) -> Result<(), String> {
    print_machine();
    ensure_tools();
    let secs = env_or("AVWARDEN_BENCH_API_SECS", 10u64);
    let conns: Vec<usize> = std::env::var("AVWARDEN_BENCH_API_CONNS")
        .unwrap_or_else(|_| "2,50".to_owned())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .filter(|&n| n > 0)
        .collect();
    let d = rt.block_on(start(dir, rooms))?;
    let ok = rt.block_on(prepare(&d, rooms, Duration::from_secs(120)))?;
    println!(
        "api_load: {rooms} rooms, {ok} devices ok, daemon {} (simulators in the same process), load {}",
        d.api_addr,
        loadavg()
    );
    let root = dir.join("static");
    std::fs::create_dir_all(&root).map_err(|e| e.to_string())?;
    // The same bytes the daemon answers, each route's into a file for the baseline, and the
    // daemon's ETag if it gives one (for the conditional rows).
    let mut files = Vec::new();
    for (i, (label, path)) in ROUTES.iter().enumerate() {
        let (bytes, etag) = rt.block_on(async {
            let r = reqwest::get(format!("http://{}{path}", d.api_addr))
                .await
                .map_err(|e| e.to_string())?;
            let etag = r
                .headers()
                .get("etag")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let b = r.bytes().await.map_err(|e| e.to_string())?;
            Ok::<_, String>((b, etag))
        })?;
        let file = format!("route{i}.json");
        std::fs::write(root.join(&file), &bytes).map_err(|e| e.to_string())?;
        files.push((*label, *path, file, bytes.len(), etag));
    }
    if let Some((_, _, file, _, _)) = files.iter().find(|f| f.0 == "rooms") {
        let body = std::fs::read(root.join(file)).unwrap_or_default();
        time_rebuild_parts(&d, &body);
    }
    let have_nginx = Command::new("nginx")
        .arg("-v")
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let wanted =
        std::env::var("AVWARDEN_BENCH_API_BASELINE").unwrap_or_else(|_| "nginx,hyper".into());
    let mut baselines = Vec::new();
    for name in wanted.split(',').map(str::trim) {
        match name {
            "nginx" if have_nginx => baselines.push(start_nginx(rt, dir, &root)?),
            "nginx" => println!("api_load: nginx is not installed; no nginx baseline"),
            "hyper" => baselines.push(rt.block_on(start_hyper(root.clone()))?),
            other => println!("api_load: ignoring unknown baseline {other:?}"),
        }
    }
    if baselines.is_empty() {
        baselines.push(rt.block_on(start_hyper(root.clone()))?);
    }
    let names: Vec<&str> = baselines.iter().map(Baseline::name).collect();
    println!(
        "api_load: baselines {names:?} serving the same bytes from files; wrk -t2 -cN -d{secs}s --latency"
    );
    print_header(&names);
    let mut work = Vec::new();
    for (label, path, file, bytes, etag) in &files {
        for &c in &conns {
            let list = list_of(label);
            let before = list.and_then(|l| rt.block_on(snapshot_counters(d.api_addr, l)));
            let daemon = wrk(&format!("http://{}{path}", d.api_addr), c, secs, None)?;
            let after = list.and_then(|l| rt.block_on(snapshot_counters(d.api_addr, l)));
            if let (Some(b), Some(a)) = (before, after) {
                work.push((label.to_string(), c, daemon, b, a));
            }
            let mut base = Vec::new();
            for b in &baselines {
                base.push(wrk(&b.url(file), c, secs, None)?);
            }
            print_row(label, c, *bytes, daemon, &base);
        }
        if let Some(etag) = etag {
            // A dashboard polling an unchanged list: 304 from the daemon, and from a baseline
            // that gives ETags too (nginx); one that does not answers the whole file.
            for &c in &conns {
                // The ETag as of now: a list's validator steps with the contact grid (see
                // docs/api.md), and a poller holds the newest one it was given.
                let etag = rt
                    .block_on(baseline_etag(&format!("http://{}{path}", d.api_addr)))
                    .unwrap_or_else(|| etag.clone());
                let header = format!("If-None-Match: {etag}");
                let daemon = wrk(
                    &format!("http://{}{path}", d.api_addr),
                    c,
                    secs,
                    Some(&header),
                )?;
                let mut base = Vec::new();
                for b in &baselines {
                    let url = b.url(file);
                    let h = rt
                        .block_on(baseline_etag(&url))
                        .map(|e| format!("If-None-Match: {e}"));
                    base.push(wrk(&url, c, secs, h.as_deref())?);
                }
                print_row(&format!("{label} (304)"), c, 0, daemon, &base);
            }
        }
    }
    for b in baselines {
        b.stop();
    }
    println!("\nWhat the snapshots did during the daemon's runs above:");
    for (label, c, load, before, after) in work {
        print_snapshot_work(&label, c, secs, load, before, after);
    }
    rt.block_on(d.shutdown("benchmark done"));
    println!("load after: {}", loadavg());
    Ok(())
}

/// The snapshot counters of `list` in the daemon's `/metrics`: (rebuilds, build seconds,
/// lock-wait seconds), to tell how often a list was rebuilt during a run and what it cost.
async fn snapshot_counters(api: SocketAddr, list: &str) -> Option<[f64; 3]> {
    let text = reqwest::get(format!("http://{api}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let value = |name: &str| {
        let key = format!("{name}{{list=\"{list}\"}}");
        text.lines()
            .find_map(|l| l.strip_prefix(key.as_str()))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Some([
        value(avwarden::api::snapshot::REBUILDS),
        value(avwarden::api::snapshot::BUILD_SECONDS),
        value(avwarden::api::snapshot::WAIT_SECONDS),
    ])
}

/// The list a route's label names, if it is answered from a snapshot.
fn list_of(label: &str) -> Option<&'static str> {
    match label.split(['?', ' ']).next() {
        Some("devices") => Some("devices"),
        Some("rooms") => Some("rooms"),
        Some("board") => Some("board"),
        _ => None,
    }
}

/// What the snapshot did during one wrk run of `load`: rebuilds per second, the mean
/// rebuild's time and the mean lock wait per request.
fn print_snapshot_work(
    label: &str,
    conns: usize,
    secs: u64,
    load: Load,
    before: [f64; 3],
    after: [f64; 3],
) {
    let rebuilds = after[0] - before[0];
    let requests = (load.rps * secs as f64).max(1.0);
    println!(
        "  snapshot {label} c{conns}: {:.1} rebuilds/s, {:.3} ms per rebuild, {:.3} ms lock wait per request ({:.1}% of the run building)",
        rebuilds / secs as f64,
        if rebuilds > 0.0 { (after[1] - before[1]) * 1000.0 / rebuilds } else { 0.0 },
        (after[2] - before[2]) * 1000.0 / requests,
        (after[1] - before[1]) * 100.0 / secs as f64,
    );
}

/// The parts of a rooms-list rebuild timed alone, at this site's size: what per-room lookups
/// cost when each scans the fleet or the book (the rebuild before issue 15 point 3 did both
/// 500 times), the one-pass grouping that replaced them, serialising the list, and gzip.
fn time_rebuild_parts(d: &Daemon, rooms_body: &[u8]) {
    let time = |what: &str, runs: u32, f: &mut dyn FnMut()| {
        let t = tokio::time::Instant::now();
        for _ in 0..runs {
            f();
        }
        println!(
            "  {what}: {:.3} ms",
            t.elapsed().as_secs_f64() * 1000.0 / f64::from(runs)
        );
    };
    let rooms: Vec<avwarden::model::RoomId> = d.fleet.handles().map(|h| h.room.clone()).collect();
    let now = d.clock.now();
    println!("\nA rooms-list rebuild's parts, each timed alone (mean of repeated runs):");
    time(
        "fleet.room() per room (every room scans the fleet)",
        5,
        &mut || {
            for r in &rooms {
                std::hint::black_box(d.fleet.room(r));
            }
        },
    );
    time(
        "book.current_and_next() per room (every room scans the book)",
        5,
        &mut || {
            for r in &rooms {
                std::hint::black_box(d.schedule.book.current_and_next(r, now));
            }
        },
    );
    time(
        "fleet and book grouped by room in one pass",
        20,
        &mut || {
            let mut by_room = std::collections::HashMap::<_, Vec<_>>::new();
            for h in d.fleet.handles() {
                by_room.entry(h.room.clone()).or_default().push(h);
            }
            std::hint::black_box((by_room, d.schedule.book.current_and_next_by_room(now)));
        },
    );
    let value: serde_json::Value = serde_json::from_slice(rooms_body).unwrap_or_default();
    time("serialising the whole rooms list", 20, &mut || {
        std::hint::black_box(serde_json::to_vec(&value).map(|v| v.len()).unwrap_or(0));
    });
    time("gzip (fast) of the rooms list", 10, &mut || {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let _ = enc.write_all(rooms_body);
        std::hint::black_box(enc.finish().map(|v| v.len()).unwrap_or(0));
    });
}

/// The baseline server's ETag for a file (nginx gives one; the hyper server does not).
async fn baseline_etag(url: &str) -> Option<String> {
    let r = reqwest::get(url).await.ok()?;
    r.headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn print_header(baselines: &[&str]) {
    print!(
        "{:<22} {:>5} {:>7} {:>8} {:>8}",
        "route", "conns", "bytes", "req/s", "p99 ms"
    );
    for b in baselines {
        print!(
            " | {:>13} {:>8} {:>6}",
            format!("{b} req/s"),
            "p99 ms",
            "ratio"
        );
    }
    println!();
}

fn print_row(route: &str, conns: usize, bytes: usize, daemon: Load, base: &[Load]) {
    print!(
        "{:<22} {:>5} {:>7} {:>8.0} {:>8.2}",
        route, conns, bytes, daemon.rps, daemon.p99_ms
    );
    for b in base {
        print!(
            " | {:>13.0} {:>8.2} {:>6.2}",
            b.rps,
            b.p99_ms,
            daemon.rps / b.rps
        );
    }
    println!();
}
