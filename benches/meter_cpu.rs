//! The meter-CPU floor (issue 15.2): what a bare tokio program pays on this machine to receive
//! the same meter frames the daemon receives, so the daemon's CPU per meter sample reads as
//! "floor + daemon overhead". N metering devices (Shure ULX-D quad receivers, 4 channels with a
//! transmitter each, `SAMPLE`s every 100 ms; or Biamp Tesira over Telnet, a zone and a mic
//! meter subscribed at 100 ms) are simulated in their own process (`avwarden simulate` on a
//! site generated under `target/meter_cpu/`), then received, alone and for the same window, by
//!
//! * the daemon: the real `avwarden run` on the same devices; samples from its
//!   `avwarden_meter_samples_total` on `/metrics` before and after the window;
//! * `floor`: this bench binary re-run as a child: a multi-thread tokio runtime with the
//!   default worker count (the daemon's), one task per device on a kept TCP session that sends
//!   exactly the metering subscription the daemon's driver sends (Shure: `< SET 0 METER_RATE
//!   00100 >`; the simulator needs no heartbeat to keep streaming, and the daemon's 30 s
//!   heartbeat `GET` is left out. Tesira: the Telnet refusals, the banner wait, `SESSION set
//!   verbose true` and one `subscribe` per meter, as the driver words them), then reads into a
//!   reused buffer and counts `SAMPLE` frames (Tesira: `! "publishToken"` lines), nothing else.
//!   It prints its count on SIGUSR1.
//!
//! Each poller's CPU is its run time over the window, summed over `/proc/<pid>/task/*/schedstat`
//! (first field, ns; not clock ticks), divided by the samples it received. The floor and the
//! daemon run `AVWARDEN_BENCH_METER_ROUNDS` times each, alternated, every row printed (the
//! machine is noisy). Prints a Markdown table for `docs/benchmarks.md`.
//!
//! This is a benchmark, not a test: it never fails on a figure. Under `cargo test
//! --all-targets` (`--bench` absent) it does nothing. Smoke (finishes in about 20 s once
//! built): `AVWARDEN_BENCH_METER_DEVICES=5 AVWARDEN_BENCH_METER_SECS=2
//! AVWARDEN_BENCH_METER_WARMUP_SECS=2 AVWARDEN_BENCH_METER_ROUNDS=1 cargo bench --bench
//! meter_cpu`.
//!
//! Environment (all optional): `AVWARDEN_BENCH_METER_KIND` (`shure` or `tesira`, default
//! `shure`), `AVWARDEN_BENCH_METER_DEVICES` (200), `AVWARDEN_BENCH_METER_SECS` (window, 20),
//! `AVWARDEN_BENCH_METER_WARMUP_SECS` (8), `AVWARDEN_BENCH_METER_ROUNDS` (2),
//! `AVWARDEN_BENCH_METER_PERF` (a directory: after the rounds, each poller once more with
//! `perf record -F 2999 -g -p <pid>` over `AVWARDEN_BENCH_METER_PERF_SECS` (10) into
//! `<dir>/floor.data` and `<dir>/daemon.data`; those rows are printed apart),
//! `AVWARDEN_BENCH_METER_SYSCALLS` (1: the window is waited out under `perf stat` counting the
//! poller's `recvfrom` and `epoll_wait` calls, for the samples a read carries; 0: not counted;
//! a failed `perf stat` only leaves the columns empty).

#[path = "common/proc.rs"]
mod proc;
use proc::{loadavg, pid_status_kib, print_machine};
#[path = "common/site.rs"]
mod site;
use site::{env_or, pause, Guard, Sims};

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

/// Every meter's period, for the daemon's drivers and the simulators.
const METER_MS: u32 = 100;
/// Channels of a Shure receiver, each with a transmitter (the fleet bench's `shure-ulxd`).
const SHURE_CHANNELS: u8 = 4;

/// Set (to `<kind> <ports file>`) in the child that runs the floor.
const FLOOR_VAR: &str = "AVWARDEN_BENCH_METER_FLOOR";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Shure,
    Tesira,
}

impl Kind {
    fn parse(s: &str) -> Option<Kind> {
        match s {
            "shure" => Some(Kind::Shure),
            "tesira" => Some(Kind::Tesira),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Shure => "shure",
            Kind::Tesira => "tesira",
        }
    }

    /// Meter samples a device sends a second.
    fn samples_per_sec(self) -> f64 {
        let meters = match self {
            Kind::Shure => f64::from(SHURE_CHANNELS),
            Kind::Tesira => 2.0,
        };
        meters * 1000.0 / f64::from(METER_MS)
    }

    fn describe(self) -> String {
        match self {
            Kind::Shure => format!(
                "Shure ULX-D receivers (`shure-ulxd`), {SHURE_CHANNELS} channels with a transmitter each, SAMPLE every {METER_MS} ms"
            ),
            Kind::Tesira => format!(
                "Biamp Tesira over Telnet (`biamp-tesira-telnet`), a zone and a mic meter subscribed at {METER_MS} ms"
            ),
        }
    }

    /// One device's entry; `SIMULATED` stands where `simulated = true` goes in the simulators'
    /// site.
    fn device(self, i: usize, port: u16) -> String {
        let head = |profile: &str| {
            format!(
                "\n[[devices]]\nid = \"d{i}\"\nroom = \"r{}\"\nprofile = \"{profile}\"\n\
                 link = {{ host = \"127.0.0.1\", port = {port} }}\nSIMULATED\n",
                i / 4
            )
        };
        match self {
            Kind::Shure => {
                let tx: Vec<String> = (1..=SHURE_CHANNELS)
                    .map(|c| format!("{{ channel = {c} }}"))
                    .collect();
                format!(
                    "{}[devices.settings]\nchannels = {SHURE_CHANNELS}\nmeter_rate_ms = {METER_MS}\n\
                     [devices.simulator]\nchannels = {SHURE_CHANNELS}\ntransmitters = [{}]\n",
                    head("shure-ulxd"),
                    tx.join(", ")
                )
            }
            // The fleet bench's Tesira room: the simulator's default design.
            Kind::Tesira => format!(
                "{}[devices.settings]\nmeter_rate_ms = {METER_MS}\n\
                 [[devices.settings.zones]]\nid = \"main\"\nlevel_tag = \"Level1\"\nmeter_tag = \"OutMeter\"\nmax_db = 0\n\
                 [[devices.settings.mics]]\nid = \"lectern\"\nchannel = 1\nlevel_tag = \"MicGain\"\nmeter_tag = \"MicMeter\"\n",
                head("biamp-tesira-telnet")
            ),
        }
    }
}

struct Params {
    kind: Kind,
    devices: usize,
    window: Duration,
    warmup: Duration,
    rounds: usize,
    perf: Option<PathBuf>,
    perf_window: Duration,
    /// Count the poller's `recvfrom` and `epoll_wait` calls over the window (`perf stat`).
    syscalls: bool,
}

/// One poller's figures over one window.
struct Row {
    poller: String,
    secs: f64,
    cpu_ns: u64,
    samples: f64,
    /// `recvfrom` and `epoll_wait` calls over the window, when counted.
    syscalls: Option<(u64, u64)>,
    rss_mib: f64,
    errors: u64,
    load: String,
}

fn main() -> ExitCode {
    if let Ok(spec) = std::env::var(FLOOR_VAR) {
        let mut words = spec.splitn(2, ' ');
        return match (words.next().and_then(Kind::parse), words.next()) {
            (Some(kind), Some(ports)) => floor::run(kind, Path::new(ports)),
            _ => ExitCode::FAILURE,
        };
    }
    if !std::env::args().any(|a| a == "--bench") {
        return ExitCode::SUCCESS;
    }
    let kind = std::env::var("AVWARDEN_BENCH_METER_KIND").unwrap_or_else(|_| "shure".into());
    let Some(kind) = Kind::parse(kind.trim()) else {
        eprintln!("meter_cpu: AVWARDEN_BENCH_METER_KIND is shure or tesira, not {kind:?}");
        return ExitCode::FAILURE;
    };
    let p = Params {
        kind,
        devices: env_or("AVWARDEN_BENCH_METER_DEVICES", 200usize).max(1),
        window: Duration::from_secs_f64(env_or("AVWARDEN_BENCH_METER_SECS", 20.0)),
        warmup: Duration::from_secs_f64(env_or("AVWARDEN_BENCH_METER_WARMUP_SECS", 8.0)),
        rounds: env_or("AVWARDEN_BENCH_METER_ROUNDS", 2usize),
        perf: std::env::var_os("AVWARDEN_BENCH_METER_PERF").map(PathBuf::from),
        perf_window: Duration::from_secs_f64(env_or("AVWARDEN_BENCH_METER_PERF_SECS", 10.0)),
        syscalls: env_or("AVWARDEN_BENCH_METER_SYSCALLS", 1u8) != 0,
    };
    site::exit_code("meter_cpu", run(&p))
}

fn run(p: &Params) -> Result<(), String> {
    let (dir, api_port, sim_ports) = site::prepare("meter_cpu", p.devices)?;
    write_sites(p.kind, &dir, api_port, &sim_ports)?;
    let exe = env!("CARGO_BIN_EXE_avwarden");

    print_machine();
    println!(
        "{} {}; {:.0} samples/s expected; window {:.0} s after {:.0} s warm-up; {} round(s)",
        p.devices,
        p.kind.describe(),
        p.kind.samples_per_sec() * p.devices as f64,
        p.window.as_secs_f64(),
        p.warmup.as_secs_f64(),
        p.rounds
    );
    let mut sim = Sims::start(exe, dir.join("sim.toml"), sim_ports)?;
    let sim_pid = sim.pid();

    let floor = |window: Duration, perf: Option<PathBuf>| -> Result<Row, String> {
        let me = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut c = Command::new(me);
        c.env(
            FLOOR_VAR,
            format!("{} {}", p.kind.name(), dir.join("ports").display()),
        );
        measure_floor(p, window, perf, &mut c)
    };
    let daemon = |window: Duration, perf: Option<PathBuf>| {
        measure_daemon(p, window, perf, &dir, exe, api_port)
    };

    let mut rows = Vec::new();
    let mut sim_cpu = Vec::new();
    for round in 1..=p.rounds {
        for which in ["floor", "daemon"] {
            let sim0 = task_run_ns(sim_pid)?;
            let mut row = if which == "floor" {
                floor(p.window, None)?
            } else {
                daemon(p.window, None)?
            };
            sim_cpu.push(task_run_ns(sim_pid)? - sim0);
            row.poller = format!("{}, round {round}", row.poller);
            print_row_progress(&row);
            rows.push(row);
        }
    }
    let mut perf_rows = Vec::new();
    if let Some(out) = &p.perf {
        std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
        perf_rows.push(floor(p.perf_window, Some(out.join("floor.data")))?);
        perf_rows.push(daemon(p.perf_window, Some(out.join("daemon.data")))?);
    }
    sim.stop();
    println!();
    print_table(&rows);
    if !perf_rows.is_empty() {
        println!("\nUnder `perf record -F 2999 -g` (not comparable with the rows above):\n");
        print_table(&perf_rows);
    }
    if !sim_cpu.is_empty() {
        let each: Vec<String> = sim_cpu
            .iter()
            .map(|ns| format!("{:.2}", *ns as f64 / 1e9))
            .collect();
        println!(
            "\nthe simulators' own CPU over each row's warm-up and window, in order (s): {}",
            each.join(", ")
        );
    }
    Ok(())
}

/// `sim.toml` (every device simulated), `daemon.toml` (the same devices, received) and `ports`
/// for the floor.
fn write_sites(kind: Kind, dir: &Path, api_port: u16, sim_ports: &[u16]) -> Result<(), String> {
    let mut devices = String::new();
    for (i, port) in sim_ports.iter().enumerate() {
        devices.push_str(&kind.device(i, *port));
    }
    site::write_sites(dir, "meter_cpu", api_port, sim_ports, &devices)
}

/// The window's real length (a `perf stat` around it starts and ends a little late).
#[allow(clippy::disallowed_methods)]
fn now() -> tokio::time::Instant {
    tokio::time::Instant::now()
}

/// Run time of every thread of `pid` so far ([`proc::thread_run_ns`]).
fn task_run_ns(pid: u32) -> Result<RunTimes, String> {
    proc::thread_run_ns(pid)
        .map(RunTimes)
        .ok_or_else(|| format!("/proc/{pid}/task/*/schedstat: unreadable"))
}

/// Each thread's run time at one instant; `later - earlier` is the window's, in ns, counted
/// per thread ([`proc::run_secs_between`]).
struct RunTimes(std::collections::BTreeMap<u32, u64>);

impl std::ops::Sub for RunTimes {
    type Output = u64;
    fn sub(self, earlier: RunTimes) -> u64 {
        secs_to_ns(proc::run_secs_between(&earlier.0, &self.0))
    }
}

fn secs_to_ns(secs: f64) -> u64 {
    (secs * 1e9).round() as u64
}

fn rss_mib(pid: u32) -> f64 {
    pid_status_kib(pid, "VmRSS") as f64 / 1024.0
}

/// `perf record -F 2999 -g` of `pid` into `out`, stopped by [`site::perf_stop`].
fn start_perf(pid: u32, out: &Path) -> Result<Guard, String> {
    site::perf_record(pid, out, &["-F", "2999", "-g"])
}

/// Wait out the window; with `p.syscalls`, under `perf stat` counting `pid`'s `recvfrom` and
/// `epoll_wait` calls (tracepoint counts: no sampling), returned. Without `perf`, a plain wait.
fn wait_window(p: &Params, pid: u32, window: Duration) -> Option<(u64, u64)> {
    if !p.syscalls {
        pause(window);
        return None;
    }
    const EVENTS: [&str; 2] = [
        "syscalls:sys_enter_recvfrom",
        "syscalls:sys_enter_epoll_wait",
    ];
    let out = std::env::temp_dir().join(format!("meter_cpu-stat-{pid}.csv"));
    let ran = Command::new("perf")
        .args(["stat", "-x", ",", "-e", &EVENTS.join(","), "-p"])
        .arg(pid.to_string())
        .arg("-o")
        .arg(&out)
        .arg("--")
        .arg("sleep")
        .arg(format!("{:.3}", window.as_secs_f64()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ran {
        eprintln!("meter_cpu: perf stat failed; syscalls not counted");
        pause(window);
        return None;
    }
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let _ = std::fs::remove_file(&out);
    let count = |event: &str| -> Option<u64> {
        text.lines().find_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f.get(2) == Some(&event)).then(|| f.first()?.parse().ok())?
        })
    };
    Some((count(EVENTS[0])?, count(EVENTS[1])?))
}

/// The meter samples the daemon has published so far, from its `/metrics`.
fn daemon_samples(api_port: u16) -> Result<f64, String> {
    site::metric(api_port, "avwarden_meter_samples_total")?
        .ok_or_else(|| "no avwarden_meter_samples_total on /metrics".to_owned())
}

fn measure_daemon(
    p: &Params,
    window: Duration,
    perf: Option<PathBuf>,
    dir: &Path,
    exe: &str,
    api_port: u16,
) -> Result<Row, String> {
    // Every session open, its full read done and metering on before the window starts.
    let mut daemon = site::start_daemon(exe, dir, p.warmup)?;
    let pid = daemon.0.id();
    let perf = perf.map(|out| start_perf(pid, &out)).transpose()?;
    let samples0 = daemon_samples(api_port)?;
    let cpu0 = task_run_ns(pid)?;
    let started = now();
    let syscalls = wait_window(p, pid, window);
    let cpu1 = task_run_ns(pid)?;
    let samples1 = daemon_samples(api_port)?;
    let secs = started.elapsed().as_secs_f64();
    let load = loadavg();
    let rss = rss_mib(pid);
    site::perf_stop(perf);
    daemon.stop();
    Ok(Row {
        poller: "avwarden daemon".into(),
        secs,
        cpu_ns: cpu1 - cpu0,
        samples: samples1 - samples0,
        syscalls,
        rss_mib: rss,
        errors: 0,
        load,
    })
}

fn measure_floor(
    p: &Params,
    window: Duration,
    perf: Option<PathBuf>,
    cmd: &mut Command,
) -> Result<Row, String> {
    let mut floor = site::Peer::start(cmd, "floor", p.warmup)?;
    let pid = floor.pid();
    let perf = perf.map(|out| start_perf(pid, &out)).transpose()?;
    let (samples0, _) = floor.counts("samples")?;
    let cpu0 = task_run_ns(pid)?;
    let started = now();
    let syscalls = wait_window(p, pid, window);
    let cpu1 = task_run_ns(pid)?;
    let (samples1, errors) = floor.counts("samples")?;
    let secs = started.elapsed().as_secs_f64();
    let load = loadavg();
    let rss = rss_mib(pid);
    site::perf_stop(perf);
    floor.stop();
    Ok(Row {
        poller: "floor: bare tokio reader".into(),
        secs,
        cpu_ns: cpu1 - cpu0,
        samples: samples1 - samples0,
        syscalls,
        rss_mib: rss,
        errors,
        load,
    })
}

/// The floor's sample and error counts since it started (it prints them on SIGUSR1).
fn print_row_progress(r: &Row) {
    eprintln!(
        "{}: {:.0} samples/s, {:.2} µs a sample, load {}",
        r.poller,
        r.samples / r.secs,
        r.cpu_ns as f64 / 1e3 / r.samples.max(1.0),
        r.load
    );
}

fn print_table(rows: &[Row]) {
    println!("| poller | samples/s | CPU (% of a core) | µs per sample | reads/s | samples per read | µs per read | epoll_wait/s | RSS (MiB) | errors | load avg (1/5/15 min) |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in rows {
        let (reads, polls, per_read, us_per_read) = match r.syscalls {
            Some((reads, polls)) => {
                let reads_f = (reads as f64).max(1.0);
                (
                    format!("{:.0}", reads as f64 / r.secs),
                    format!("{:.0}", polls as f64 / r.secs),
                    format!("{:.2}", r.samples / reads_f),
                    format!("{:.1}", r.cpu_ns as f64 / 1e3 / reads_f),
                )
            }
            None => Default::default(),
        };
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {reads} | {per_read} | {us_per_read} | {polls} | {:.1} | {} | {} |",
            r.poller,
            r.samples / r.secs,
            r.cpu_ns as f64 / 1e7 / r.secs,
            r.cpu_ns as f64 / 1e3 / r.samples.max(1.0),
            r.rss_mib,
            r.errors,
            r.load
        );
    }
}

/// The floor: one task per device on the default multi-thread runtime (the daemon's worker
/// count), each on a kept session that subscribes as the daemon's driver does and then only
/// reads into a reused buffer and counts the meter frames. Counts on SIGUSR1.
mod floor {
    use std::path::Path;
    use std::process::ExitCode;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio_util::task::TaskTracker;

    use super::{Kind, METER_MS};

    pub fn run(kind: Kind, ports: &Path) -> ExitCode {
        let Some(ports) = crate::site::read_ports(ports) else {
            return ExitCode::FAILURE;
        };
        let samples = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let Ok(rt) = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        else {
            return ExitCode::FAILURE;
        };
        rt.block_on(async {
            let tasks = TaskTracker::new();
            for port in ports {
                tasks.spawn(keep_reading(kind, port, samples.clone(), errors.clone()));
            }
            super::site::report_counts("samples", &samples, &errors).await
        })
    }

    /// One kept session to `port`, reopened a second after it fails.
    async fn keep_reading(kind: Kind, port: u16, samples: Arc<AtomicU64>, errors: Arc<AtomicU64>) {
        loop {
            let r = match kind {
                Kind::Shure => shure(port, &samples).await,
                Kind::Tesira => tesira(port, &samples).await,
            };
            if r.is_err() {
                errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }

    /// Counts occurrences of a frame's opening across reads. The pattern's first byte occurs
    /// nowhere else in it, so a mismatch restarts at that byte or at nothing.
    pub(super) struct Counter {
        pat: &'static [u8],
        at: usize,
    }

    impl Counter {
        pub(super) fn new(pat: &'static [u8]) -> Self {
            Counter { pat, at: 0 }
        }

        pub(super) fn feed(&mut self, bytes: &[u8]) -> u64 {
            let mut n = 0;
            for &b in bytes {
                if self.pat.get(self.at) == Some(&b) {
                    self.at += 1;
                    if self.at == self.pat.len() {
                        n += 1;
                        self.at = 0;
                    }
                } else {
                    self.at = usize::from(self.pat.first() == Some(&b));
                }
            }
            n
        }
    }

    /// Read into `buf` until the session ends, counting `pat`.
    async fn count(
        s: &mut TcpStream,
        buf: &mut [u8],
        mut counter: Counter,
        samples: &AtomicU64,
    ) -> std::io::Result<()> {
        loop {
            let n = s.read(buf).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let seen = counter.feed(&buf[..n]);
            if seen > 0 {
                samples.fetch_add(seen, Ordering::Relaxed);
            }
        }
    }

    /// The Shure driver's metering subscription (`SET 0 METER_RATE`, every channel), then only
    /// reads. The simulator streams without the driver's 30 s heartbeat.
    async fn shure(port: u16, samples: &AtomicU64) -> std::io::Result<()> {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
        let _ = s.set_nodelay(true);
        s.write_all(format!("< SET 0 METER_RATE {METER_MS:05} >").as_bytes())
            .await?;
        let mut buf = [0u8; 4096];
        count(&mut s, &mut buf, Counter::new(b"< SAMPLE "), samples).await
    }

    /// Telnet: every option the DSP asks for refused (`DO` → `WONT`, `WILL` → `DONT`) until the
    /// TTP banner; then the driver's `SESSION set verbose true` and its two subscriptions (the
    /// fleet bench's zone and mic meters), each awaiting its `+OK`; then only
    /// reads, counting publish lines.
    async fn tesira(port: u16, samples: &AtomicU64) -> std::io::Result<()> {
        const BANNER: &[u8] = b"Welcome to the Tesira Text Protocol Server";
        let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
        let _ = s.set_nodelay(true);
        let mut buf = [0u8; 4096];
        let mut seen: Vec<u8> = Vec::new();
        let mut banner = Counter::new(BANNER);
        loop {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            seen.extend_from_slice(&buf[..n]);
            let mut refusals = Vec::new();
            let mut i = 0;
            while i < seen.len() {
                if seen[i] == 0xFF {
                    let (Some(&verb), Some(&opt)) = (seen.get(i + 1), seen.get(i + 2)) else {
                        break; // the rest of the command in the next read
                    };
                    match verb {
                        0xFD => refusals.extend_from_slice(&[0xFF, 0xFC, opt]),
                        0xFB => refusals.extend_from_slice(&[0xFF, 0xFE, opt]),
                        _ => {}
                    }
                    i += 3;
                } else {
                    i += 1;
                }
            }
            let found = banner.feed(&seen[..i]) > 0;
            seen.drain(..i);
            if !refusals.is_empty() {
                s.write_all(&refusals).await?;
            }
            if found {
                break;
            }
        }
        // One command at a time, each after the last one's answer, as the driver's exchanges
        // go. The simulator times each subscription from its arrival and merges two whose
        // publishes fall due in the same turn, for good; so how often a device's two meters
        // share a write depends on this timing (sent in one write: always; 5 ms apart: almost
        // never; like this: about as often as for the daemon). The table's samples per read
        // says what each poller got.
        for cmd in [
            "SESSION set verbose true\n".to_owned(),
            format!("OutMeter subscribe level 1 zone-main {METER_MS}\n"),
            format!("MicMeter subscribe level 1 mic-lectern {METER_MS}\n"),
        ] {
            s.write_all(cmd.as_bytes()).await?;
            let (mut ok, mut err) = (Counter::new(b"+OK"), Counter::new(b"-ERR"));
            loop {
                let n = s.read(&mut buf).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                if err.feed(&buf[..n]) > 0 {
                    return Err(std::io::Error::other(format!("refused: {cmd}")));
                }
                if ok.feed(&buf[..n]) > 0 {
                    break;
                }
            }
        }
        count(
            &mut s,
            &mut buf,
            Counter::new(b"! \"publishToken\""),
            samples,
        )
        .await
    }
}
