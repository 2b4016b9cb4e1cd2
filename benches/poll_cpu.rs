//! CPU per poll against Python pollers (issue 15.1): 200 PJLink projector simulators in one
//! process (`avwarden simulate`), polled in turn, for the same window, by (a) the real
//! `avwarden run` daemon, (b) a persistent Python asyncio poller and (c) an aiopjlink2 poller
//! (`benches/peers/`). Each poller's CPU is its threads' run time over the window, from
//! `/proc/<pid>/task/*/schedstat` (nanoseconds), divided by the polls it made: the daemon's from
//! its `avwarden_poll_duration_seconds_count{family="pjlink"}` on `/metrics`, the peers' from
//! the count they print on SIGUSR1. Prints a Markdown table for `docs/benchmarks.md`.
//!
//! What is polled: a Class 1 projector in standby. The daemon's poll of it is POWR, ERST and
//! LAMP (INPT and AVMT answer ERR3 in standby, protocols.md §1.6, so the driver does not ask
//! them until POWR says on), plus its identity (NAME, INF1-2, INFO) every 30th poll; the
//! Python pollers ask exactly POWR, ERST and LAMP.
//!
//! This is a benchmark, not a test: it never fails on a figure. Under `cargo test
//! --all-targets` (`--bench` absent) it does nothing. It creates its venv under
//! `target/poll_cpu/venv` when missing. Environment (all optional):
//! `AVWARDEN_BENCH_POLL_DEVICES` (200), `AVWARDEN_BENCH_POLL_SECS` (window, 30),
//! `AVWARDEN_BENCH_POLL_WARMUP_SECS` (10), `AVWARDEN_BENCH_POLL_PEERS`
//! (`floor,asyncio,aiopjlink`; empty for the daemon alone; `floor` is a bare tokio loop doing
//! the same three exchanges, this binary re-run as a child: the cost of the work itself;
//! `floor-ct` is the same loop on one current-thread runtime per core, each on its own thread,
//! the sessions spread round-robin: the cost of the work without a wake crossing threads;
//! `floor-spread` and `floor-ct-spread` are the same two with the projectors' polls spread
//! evenly over the second instead of all in the same instant, so a wake-up serves one
//! exchange, not dozens),
//! `AVWARDEN_BENCH_POLL_PERF` (a file: `perf record -g` of the
//! daemon over the window into it), `AVWARDEN_BENCH_POLL_BASELINE_EXE` (another `avwarden`
//! binary, e.g. a build of the code before a change, measured first in the same run),
//! `AVWARDEN_BENCH_POLL_RECONNECT` (set: each daemon measured a second time after the
//! simulators restarted under it, every session dropped and reconnected after its own
//! backoff — the phases a long-running daemon's polls have, not the start's).

#[path = "common/proc.rs"]
mod proc;
use proc::{loadavg, print_machine};
#[path = "common/site.rs"]
mod site;
use site::{env_or, pause, Sims};

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

/// Seconds between two polls of one projector, for every poller.
const POLL_SECS: u64 = 1;

/// The daemon's identity read (NAME, INF1, INF2, INFO) every 30th poll, per poll.
const IDENTITY: f64 = 4.0 / 30.0;

struct Params {
    devices: usize,
    window: Duration,
    warmup: Duration,
    peers: Vec<String>,
    perf: Option<PathBuf>,
    /// Another `avwarden` binary (a build of the code before a change) measured first.
    baseline_exe: Option<PathBuf>,
    /// Measure each daemon a second time after every session dropped and reconnected (the
    /// simulators restarted under it), as a long-running daemon's sessions do.
    reconnect: bool,
}

/// One poller's figures over the window.
struct Row {
    poller: String,
    cpu_secs: f64,
    polls: f64,
    /// Exchanges per poll: the Python pollers' three; the daemon's three (a baseline before
    /// 26d4dbb: five, `AVWARDEN_BENCH_POLL_BASELINE_QUERIES=5`,
    /// INPT and AVMT refused in standby every time) plus identity's four every 30th poll.
    queries_per_poll: f64,
    rss_mib: f64,
    errors: u64,
    load: String,
}

/// Set (to the ports file) in the child that runs the floor poller.
const FLOOR_VAR: &str = "AVWARDEN_BENCH_POLL_FLOOR_PORTS";
/// Set (to anything) with [`FLOOR_VAR`] for the floor on current-thread runtimes, one per core.
const FLOOR_CT_VAR: &str = "AVWARDEN_BENCH_POLL_FLOOR_CT";
/// Set (to anything) with [`FLOOR_VAR`] to spread the floor's polls evenly over the period
/// instead of polling every projector in the same instant.
const FLOOR_SPREAD_VAR: &str = "AVWARDEN_BENCH_POLL_FLOOR_SPREAD";

fn main() -> ExitCode {
    if let Some(ports) = std::env::var_os(FLOOR_VAR) {
        return floor::run(
            Path::new(&ports),
            std::env::var_os(FLOOR_CT_VAR).is_some(),
            std::env::var_os(FLOOR_SPREAD_VAR).is_some(),
        );
    }
    if !std::env::args().any(|a| a == "--bench") {
        return ExitCode::SUCCESS;
    }
    let p = Params {
        devices: env_or("AVWARDEN_BENCH_POLL_DEVICES", 200),
        window: Duration::from_secs(env_or("AVWARDEN_BENCH_POLL_SECS", 30)),
        warmup: Duration::from_secs(env_or("AVWARDEN_BENCH_POLL_WARMUP_SECS", 10)),
        peers: std::env::var("AVWARDEN_BENCH_POLL_PEERS")
            .unwrap_or_else(|_| "floor,asyncio,aiopjlink".into())
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        perf: std::env::var_os("AVWARDEN_BENCH_POLL_PERF").map(PathBuf::from),
        baseline_exe: std::env::var_os("AVWARDEN_BENCH_POLL_BASELINE_EXE").map(PathBuf::from),
        reconnect: std::env::var_os("AVWARDEN_BENCH_POLL_RECONNECT").is_some(),
    };
    site::exit_code("poll_cpu", run(&p))
}

fn run(p: &Params) -> Result<(), String> {
    let (dir, api_port, sim_ports) = site::prepare("poll_cpu", p.devices)?;
    write_sites(&dir, api_port, &sim_ports)?;
    let exe = env!("CARGO_BIN_EXE_avwarden");

    print_machine();
    println!(
        "{} PJLink projectors (Class 1, standby), polled every {POLL_SECS} s, window {} s",
        p.devices,
        p.window.as_secs()
    );
    let mut sim = Sims::start(exe, dir.join("sim.toml"), sim_ports)?;

    let mut rows = Vec::new();
    if let Some(before) = &p.baseline_exe {
        let before = before.to_str().ok_or("baseline path is not UTF-8")?;
        rows.extend(measure_daemon(
            p,
            &dir,
            before,
            api_port,
            "avwarden daemon, baseline build",
            env_or("AVWARDEN_BENCH_POLL_BASELINE_QUERIES", 3.0) + IDENTITY,
            &mut sim,
        )?);
    }
    rows.extend(measure_daemon(
        p,
        &dir,
        exe,
        api_port,
        "avwarden daemon",
        3.0 + IDENTITY,
        &mut sim,
    )?);
    for peer in &p.peers {
        let (label, mut cmd) = match peer.as_str() {
            "floor" | "floor-ct" | "floor-spread" | "floor-ct-spread" => {
                let me = std::env::current_exe().map_err(|e| e.to_string())?;
                let mut c = Command::new(me);
                c.env(FLOOR_VAR, dir.join("ports"));
                let ct = peer.starts_with("floor-ct");
                let spread = peer.ends_with("-spread");
                if ct {
                    c.env(FLOOR_CT_VAR, "1");
                }
                if spread {
                    c.env(FLOOR_SPREAD_VAR, "1");
                }
                let label = match (ct, spread) {
                    (false, false) => "floor: bare tokio loop, kept sessions",
                    (true, false) => {
                        "floor-ct: bare tokio loop, one current-thread runtime per core"
                    }
                    (false, true) => "floor-spread: floor, polls spread over the second",
                    (true, true) => "floor-ct-spread: floor-ct, polls spread over the second",
                };
                (label, c)
            }
            "asyncio" | "aiopjlink" => {
                let script = Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("benches/peers")
                    .join(format!("pjlink_{peer}.py"));
                let mut c = Command::new(venv(&dir)?);
                c.arg(script)
                    .arg("127.0.0.1")
                    .arg(dir.join("ports"))
                    .arg("");
                let label = if peer == "asyncio" {
                    "Python asyncio, kept sessions"
                } else {
                    "aiopjlink2 (connection per command)"
                };
                (label, c)
            }
            other => return Err(format!("unknown peer {other:?}")),
        };
        rows.push(measure_peer(p, &mut cmd, label)?);
    }
    sim.stop();
    print_table(p, &rows);
    Ok(())
}

/// `sim.toml` (every projector simulated) and `daemon.toml` (the same projectors, polled), and
/// `ports` for the Python pollers.
fn write_sites(dir: &Path, api_port: u16, sim_ports: &[u16]) -> Result<(), String> {
    let mut devices = String::new();
    for (i, port) in sim_ports.iter().enumerate() {
        devices.push_str(&format!(
            "\n[[devices]]\nid = \"pj{i}\"\nroom = \"r{}\"\nprofile = \"generic-pjlink\"\n\
             poll_interval_secs = {POLL_SECS}\nlink = {{ host = \"127.0.0.1\", port = {port} }}\n\
             SIMULATED\n[devices.simulator]\nclass = 1\nlamp_hours = [1200]\n",
            i / 4
        ));
    }
    site::write_sites(dir, "poll_cpu", api_port, sim_ports, &devices)
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Where a process's CPU time stood at one instant: each thread's run time in ns from
/// `/proc/<pid>/task/*/schedstat` (the scheduler's own account), or, where that is missing,
/// utime + stime from `/proc/<pid>/stat` in clock ticks (10 ms each: ±1 tick is ±9 % of a 20 s
/// window at 1 % of a core, the noise that hid the differences measured before).
enum CpuMark {
    Threads(std::collections::BTreeMap<u32, u64>),
    Ticks(f64),
}

fn cpu_mark(pid: u32) -> Result<CpuMark, String> {
    match proc::thread_run_ns(pid) {
        Some(t) => Ok(CpuMark::Threads(t)),
        None => stat_cpu_secs(pid).map(CpuMark::Ticks),
    }
}

/// CPU seconds `pid` ran since `mark`, counted per thread ([`proc::run_secs_between`]).
fn cpu_since(pid: u32, mark: &CpuMark) -> Result<f64, String> {
    Ok(match mark {
        CpuMark::Threads(before) => {
            let after = proc::thread_run_ns(pid).ok_or("schedstat gone")?;
            proc::run_secs_between(before, &after)
        }
        CpuMark::Ticks(before) => stat_cpu_secs(pid)? - before,
    })
}

/// utime + stime of a whole process, in seconds (threads included).
fn stat_cpu_secs(pid: u32) -> Result<f64, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    let rest = text
        .rfind(')')
        .and_then(|i| text.get(i + 2..))
        .ok_or("bad stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> Result<f64, String> {
        f.get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| "bad stat field".to_owned())
    };
    Ok((field(11)? + field(12)?) / clock_ticks())
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// The daemon's completed PJLink polls so far, from its `/metrics`.
fn daemon_polls(api_port: u16) -> Result<f64, String> {
    site::metric(
        api_port,
        "avwarden_poll_duration_seconds_count{family=\"pjlink\"}",
    )?
    .ok_or_else(|| "no pjlink poll count on /metrics yet".to_owned())
}

fn measure_daemon(
    p: &Params,
    dir: &Path,
    exe: &str,
    api_port: u16,
    label: &str,
    queries_per_poll: f64,
    sims: &mut Sims,
) -> Result<Vec<Row>, String> {
    // Every session open and its full read done before the window starts.
    let mut daemon = site::start_daemon(exe, dir, p.warmup)?;
    let pid = daemon.0.id();
    let perf = p
        .perf
        .as_deref()
        .map(|out| site::perf_record(pid, out, &["-F", "999", "--call-graph", "dwarf,16384"]))
        .transpose()?;
    let window = |label: String| -> Result<Row, String> {
        let polls0 = daemon_polls(api_port)?;
        let cpu0 = cpu_mark(pid)?;
        pause(p.window);
        let cpu = cpu_since(pid, &cpu0)?;
        let polls1 = daemon_polls(api_port)?;
        Ok(Row {
            poller: label,
            cpu_secs: cpu,
            polls: polls1 - polls0,
            queries_per_poll,
            rss_mib: rss_mib(pid),
            errors: 0,
            load: loadavg(),
        })
    };
    let mut rows = vec![window(label.into())?];
    site::perf_stop(perf);
    if p.reconnect {
        // Every session ends; the daemon reconnects each after its own dithered backoff, so
        // the sessions start again at instants spread over a second or two.
        sims.restart()?;
        pause(p.warmup);
        rows.push(window(format!("{label}, after every session reconnected"))?);
    }
    daemon.stop();
    Ok(rows)
}

/// The Python of the bench's own venv, made (with the peers' packages) when missing.
fn venv(dir: &Path) -> Result<PathBuf, String> {
    let venv = dir.join("venv");
    let python = venv.join("bin/python");
    let reqs = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peers/requirements.txt");
    let stamp = venv.join(".installed");
    let wanted = std::fs::read_to_string(&reqs).map_err(|e| format!("{}: {e}", reqs.display()))?;
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(python);
    }
    let ok = |c: &mut Command| c.status().is_ok_and(|s| s.success());
    if !python.exists() && !ok(Command::new("python3").args(["-m", "venv"]).arg(&venv)) {
        let _ = std::fs::remove_dir_all(&venv);
        // Debian ships venv separately; install it when we may.
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
        if !root
            || !ok(Command::new("apt-get").args(["update", "-qq"]))
            || !ok(Command::new("apt-get")
                .args(["install", "-y", "-qq", "python3-venv"])
                .env("DEBIAN_FRONTEND", "noninteractive"))
            || !ok(Command::new("python3").args(["-m", "venv"]).arg(&venv))
        {
            return Err("python3 -m venv failed; install python3-venv".into());
        }
    }
    if !ok(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "-q",
            "-r",
        ])
        .arg(&reqs))
    {
        return Err("pip install of benches/peers/requirements.txt failed".into());
    }
    std::fs::write(&stamp, wanted).map_err(|e| e.to_string())?;
    Ok(python)
}

fn measure_peer(p: &Params, cmd: &mut Command, name: &str) -> Result<Row, String> {
    let mut peer = site::Peer::start(cmd, name, p.warmup)?;
    let pid = peer.pid();
    let (polls0, _) = peer.counts("polls")?;
    let cpu0 = cpu_mark(pid)?;
    pause(p.window);
    let cpu = cpu_since(pid, &cpu0)?;
    let (polls1, errors) = peer.counts("polls")?;
    let load = loadavg();
    let rss = rss_mib(pid);
    peer.stop();
    Ok(Row {
        poller: name.into(),
        cpu_secs: cpu,
        polls: polls1 - polls0,
        queries_per_poll: 3.0,
        rss_mib: rss,
        errors,
        load,
    })
}

/// A peer's poll and error counts since it started (it prints them on SIGUSR1).
fn print_table(p: &Params, rows: &[Row]) {
    let secs = p.window.as_secs_f64();
    println!();
    println!("| poller | CPU (% of a core) | polls/s | queries/poll | µs per poll | µs per query | RSS (MiB) | errors | load avg |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in rows {
        let per_poll = r.cpu_secs * 1e6 / r.polls.max(1.0);
        println!(
            "| {} | {:.2} | {:.0} | {:.2} | {:.1} | {:.1} | {:.1} | {} | {} |",
            r.poller,
            r.cpu_secs * 100.0 / secs,
            r.polls / secs,
            r.queries_per_poll,
            per_poll,
            per_poll / r.queries_per_poll,
            r.rss_mib,
            r.errors,
            r.load
        );
    }
}

/// The floor: what three request/reply exchanges per projector per second cost a tokio
/// program that does nothing else (one task per kept session, a multi-thread runtime like the
/// daemon's, a buffer reused, the reply only checked for its command). Counts on SIGUSR1 like
/// the Python pollers.
mod floor {
    use std::path::Path;
    use std::process::ExitCode;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio_util::task::TaskTracker;

    const QUERIES: [&[u8]; 3] = [b"%1POWR ?\r", b"%1ERST ?\r", b"%1LAMP ?\r"];

    pub fn run(ports: &Path, per_core: bool, spread: bool) -> ExitCode {
        let Some(ports) = crate::site::read_ports(ports) else {
            return ExitCode::FAILURE;
        };
        let polls = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        // Each session's first poll: at once, or (spread) its share of the period later.
        let n = ports.len().max(1) as u32;
        let mut ports: Vec<(u16, Duration)> = ports
            .into_iter()
            .enumerate()
            .map(|(i, port)| {
                let offset = if spread {
                    Duration::from_secs(1) * i as u32 / n
                } else {
                    Duration::ZERO
                };
                (port, offset)
            })
            .collect();
        // `floor`: every session on one multi-thread runtime, like the daemon. `floor-ct`: one
        // current-thread runtime per core, each driven by a thread of its own, the sessions
        // dealt round-robin; the main thread's runtime only counts.
        let rt = if per_core {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let mut shares: Vec<Vec<(u16, Duration)>> = vec![Vec::new(); cores];
            for (i, port) in std::mem::take(&mut ports).into_iter().enumerate() {
                shares[i % cores].push(port);
            }
            for (i, share) in shares.into_iter().enumerate() {
                let (polls, errors) = (polls.clone(), errors.clone());
                let started = std::thread::Builder::new()
                    .name(format!("floor-ct-{i}"))
                    .spawn(move || {
                        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                        else {
                            return;
                        };
                        rt.block_on(async {
                            let tasks = TaskTracker::new();
                            for (port, offset) in share {
                                tasks.spawn(keep_polling(
                                    port,
                                    offset,
                                    polls.clone(),
                                    errors.clone(),
                                ));
                            }
                            // Runs until the process exits (SIGTERM on the main thread).
                            std::future::pending::<()>().await
                        })
                    });
                if started.is_err() {
                    return ExitCode::FAILURE;
                }
            }
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
        };
        let Ok(rt) = rt else {
            return ExitCode::FAILURE;
        };
        rt.block_on(async {
            let tasks = TaskTracker::new();
            if !per_core {
                for (port, offset) in ports {
                    tasks.spawn(keep_polling(port, offset, polls.clone(), errors.clone()));
                }
            }
            super::site::report_counts("polls", &polls, &errors).await
        })
    }

    /// One kept session to `port`, first polled after `offset`, reopened a second after it
    /// fails.
    async fn keep_polling(
        port: u16,
        offset: Duration,
        polls: Arc<AtomicU64>,
        errors: Arc<AtomicU64>,
    ) {
        tokio::time::sleep(offset).await;
        loop {
            if session(port, &polls).await.is_err() {
                errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }

    async fn session(port: u16, polls: &AtomicU64) -> std::io::Result<()> {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
        let mut buf = Vec::with_capacity(256);
        read_line(&mut s, &mut buf).await?;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            for q in QUERIES {
                s.write_all(q).await?;
                read_line(&mut s, &mut buf).await?;
                if buf.get(2..6) != q.get(2..6) {
                    return Err(std::io::Error::other("unexpected reply"));
                }
            }
            polls.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One `\r`-terminated line into `buf` (replies never share a read: one request is out at
    /// a time).
    async fn read_line(s: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<()> {
        buf.clear();
        while buf.last() != Some(&b'\r') {
            if s.read_buf(buf).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(())
    }
}
