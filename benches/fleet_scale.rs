//! The fleet at scale: N rooms of five devices each, the simulators in one child process
//! (`avwarden simulate`) and the daemon in another (`avwarden run`, the binary this bench is
//! built with), and what the daemon costs once every device is `ok`: CPU % of one core, RSS
//! and RSS per device, poll lag from its `/metrics`, meter samples per second, devices ok.
//!
//! A room is a PJLink projector (TCP), a 2-channel Shure ULX-D receiver with meters (TCP), a
//! Tesira DSP with two metered zones under the level watch (TCP), a Modbus RTU fan-coil
//! controller and an ESC/VP21 projector (both serial, on pseudo-terminals the simulator creates
//! and links at the configured `link.path`). Each room listens on its own loopback address
//! (127.88.x.y), so every device keeps its profile's port and no port is guessed free.
//!
//! This is a benchmark, not a test: it never fails on a figure. Under `cargo test
//! --all-targets` it returns at once. Results and how to read them: `docs/benchmarks.md`,
//! "The fleet at scale".
//!
//! Environment (all optional): `AVWARDEN_BENCH_SCALE_ROOMS` (`50,200,500,1000`),
//! `AVWARDEN_BENCH_SCALE_SECS` (measuring window, 30), `AVWARDEN_BENCH_SCALE_WARMUP_SECS`
//! (longest wait for every device to be `ok`, 60), `AVWARDEN_BENCH_SCALE_MIC_METER_MS` (1000),
//! `AVWARDEN_BENCH_SCALE_DSP_METER_MS` (100), `AVWARDEN_BENCH_SCALE_PERF_SVG` (a path: record
//! the daemon with `perf` for `AVWARDEN_BENCH_SCALE_PERF_SECS` (20) during the window of the
//! size `AVWARDEN_BENCH_SCALE_PERF_ROOMS` (500) and draw a flame graph there with inferno;
//! `scripts/flamegraph-fleet`).

#[path = "common/proc.rs"]
mod proc;
use proc::{loadavg, pid_cpu_secs, pid_status_kib, print_machine};

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Duration;

use tokio::time::Instant;

/// Devices per room.
const ROOM_DEVICES: usize = 5;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

struct Settings {
    window: Duration,
    warmup: Duration,
    mic_meter_ms: u64,
    dsp_meter_ms: u64,
    perf_svg: Option<PathBuf>,
    perf_secs: u64,
    perf_rooms: usize,
}

/// The loopback address of room `i`: one per room, so every device keeps its profile's port.
fn room_ip(i: usize) -> String {
    format!("127.88.{}.{}", i / 200, i % 200 + 1)
}

/// The site: `rooms` rooms of five devices, every device simulated, store in `dir`.
fn site_toml(rooms: usize, dir: &Path, api: SocketAddr, s: &Settings) -> String {
    let mut t = String::new();
    let _ = write!(
        t,
        r#"[site]
name = "Fleet at scale"
time_zone = "Europe/Berlin"

[api]
bind = "{api}"

[storage]
path = "{store}"
"#,
        store = dir.join("store.db").display(),
    );
    for i in 0..rooms {
        let r = format!("r{i:04}");
        let ip = room_ip(i);
        let tty = |name: &str| dir.join(format!("{r}-{name}.tty")).display().to_string();
        let _ = write!(
            t,
            r#"
[[rooms]]
id = "{r}"
name = "Room {i}"
capacity = 12

[[devices]]
id = "{r}-projector"
room = "{r}"
name = "Projector"
profile = "generic-pjlink"
simulated = true
link = {{ host = "{ip}" }}
[devices.simulator]
power_on = true

[[devices]]
id = "{r}-mics"
room = "{r}"
name = "Wireless mics"
profile = "shure-ulxd"
simulated = true
link = {{ host = "{ip}" }}
[devices.settings]
channels = 2
meter_rate_ms = {mic_ms}
[devices.simulator]
channels = 2
[[devices.simulator.transmitters]]
channel = 1
minutes = 480
[[devices.simulator.transmitters]]
channel = 2
minutes = 460

[[devices]]
id = "{r}-dsp"
room = "{r}"
name = "DSP"
profile = "biamp-tesira-telnet"
simulated = true
link = {{ host = "{ip}", port = 2323 }}
[devices.settings]
meter_rate_ms = {dsp_ms}
[[devices.settings.zones]]
id = "front"
level_tag = "Level1"
index = 1
meter_tag = "OutMeter"
meter_index = 1
max_db = 0
[[devices.settings.zones]]
id = "rear"
level_tag = "Level1"
index = 2
meter_tag = "OutMeter"
meter_index = 2
max_db = 0

[[devices]]
id = "{r}-hvac"
room = "{r}"
name = "Fan-coil controller"
profile = "avwarden-sim-modbus"
simulated = true
link = {{ path = "{hvac}" }}

[[devices]]
id = "{r}-serial-projector"
room = "{r}"
name = "Second projector"
profile = "epson-escvp21"
simulated = true
link = {{ path = "{escvp}" }}
[devices.simulator]
power_on = true
"#,
            mic_ms = s.mic_meter_ms,
            dsp_ms = s.dsp_meter_ms,
            hvac = tty("hvac"),
            escvp = tty("escvp21"),
        );
    }
    t
}

/// Kills the child when dropped, so a failed size leaves nothing running.
struct Proc {
    child: Child,
    name: &'static str,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM (the daemon's clean shutdown), then wait.
    fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            eprintln!("stopping {} (pid {})", self.name, self.child.id());
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `GET path` over HTTP/1.0 (no chunking, no compression), the body as text.
fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200")
        .then(|| body.to_owned())
        .or_else(|| head.starts_with("HTTP/1.0 200").then(|| body.to_owned()))
}

/// One sample's value from Prometheus text: `name{labels} value`, `labels` as written.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The poll-lag histogram summed over families: cumulative count per bucket bound.
fn lag_buckets(text: &str) -> Vec<(f64, f64)> {
    let mut by_le: Vec<(f64, f64)> = Vec::new();
    for l in text.lines() {
        let Some(rest) = l.strip_prefix("avwarden_poll_lag_seconds_bucket{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let Some(le) = labels
            .split("le=\"")
            .nth(1)
            .and_then(|v| v.split('"').next())
        else {
            continue;
        };
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            match le.parse() {
                Ok(v) => v,
                Err(_) => continue,
            }
        };
        let Ok(n) = value.trim().parse::<f64>() else {
            continue;
        };
        match by_le.iter_mut().find(|(b, _)| *b == le) {
            Some((_, c)) => *c += n,
            None => by_le.push((le, n)),
        }
    }
    by_le.sort_by(|a, b| a.0.total_cmp(&b.0));
    by_le
}

/// The `q` quantile of the observations between two scrapes, interpolated linearly within
/// its bucket as Prometheus' `histogram_quantile` does; `None` without observations.
fn quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<f64> {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, n)| {
            let was = before
                .iter()
                .find(|(b, _)| b == le)
                .map_or(0.0, |(_, c)| *c);
            (*le, n - was)
        })
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, n) in &delta {
        if n >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let within = if n > lower.1 {
                (rank - lower.1) / (n - lower.1)
            } else {
                1.0
            };
            return Some(lower.0 + (le - lower.0) * within);
        }
        lower = (le, n);
    }
    None
}

fn free_port() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

struct Row {
    rooms: usize,
    devices: usize,
    all_ok_after: Option<Duration>,
    ok_start: f64,
    ok_end: f64,
    cpu_pct: f64,
    sim_cpu_pct: f64,
    rss_kib: u64,
    hwm_kib: u64,
    lag_p50: Option<f64>,
    lag_p99: Option<f64>,
    meters_per_sec: f64,
    expected_meters: f64,
    zones_guarded: f64,
    load: String,
}

async fn run_size(rooms: usize, s: &Settings, bin: &Path, perf: bool) -> Result<Row, String> {
    let devices = rooms * ROOM_DEVICES;
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let api = free_port().map_err(|e| format!("free port: {e}"))?;
    let config = dir.path().join("site.toml");
    std::fs::write(&config, site_toml(rooms, dir.path(), api, s))
        .map_err(|e| format!("write config: {e}"))?;

    let mut sim = Proc {
        child: Command::new(bin)
            .args(["--log", "warn", "simulate", "--config"])
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("spawn simulate: {e}"))?,
        name: "simulate",
    };
    let Some(out) = sim.child.stdout.take() else {
        return Err("simulate has no stdout".into());
    };
    let mut lines = BufReader::new(out).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.contains("simulator(s) running") => break,
            Some(Ok(_)) => {}
            _ => return Err("simulate ended before its simulators were running".into()),
        }
    }
    // Keep reading so the simulator never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines.by_ref() {});

    let started = Instant::now();
    let daemon = spawn_daemon(bin, &config, dir.path())?;
    let ok_series = "avwarden_devices{health=\"ok\"}";
    let mut all_ok_after = None;
    while started.elapsed() < s.warmup {
        if let Some(text) = http_get(api, "/metrics") {
            if sample(&text, ok_series).unwrap_or(0.0) >= devices as f64 {
                all_ok_after = Some(started.elapsed());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ok_start = http_get(api, "/metrics")
        .and_then(|t| sample(&t, ok_series))
        .unwrap_or(0.0);

    let pid = daemon.pid();
    let before = http_get(api, "/metrics").unwrap_or_default();
    let cpu0 = pid_cpu_secs(pid).unwrap_or(0.0);
    let sim0 = pid_cpu_secs(sim.pid()).unwrap_or(0.0);
    let t0 = Instant::now();
    let recorder = if perf {
        s.perf_svg
            .as_ref()
            .and_then(|svg| start_perf(pid, s.perf_secs, dir.path(), svg, rooms))
    } else {
        None
    };
    tokio::time::sleep(s.window).await;
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu1 = pid_cpu_secs(pid).unwrap_or(0.0);
    let sim1 = pid_cpu_secs(sim.pid()).unwrap_or(0.0);
    let after = http_get(api, "/metrics").unwrap_or_default();
    let load = loadavg();
    let rss_kib = pid_status_kib(pid, "VmRSS");
    let hwm_kib = pid_status_kib(pid, "VmHWM");
    if let Some(rec) = recorder {
        rec.finish();
    }

    let (lb, la) = (lag_buckets(&before), lag_buckets(&after));
    let meters = |t: &str| sample(t, "avwarden_meter_samples_total").unwrap_or(0.0);
    let zones_guarded = after
        .lines()
        .filter(|l| l.starts_with("avwarden_zone_reduction_db{") && !l.contains("state=\"blind\""))
        .count() as f64;
    let row = Row {
        rooms,
        devices,
        all_ok_after,
        ok_start,
        ok_end: sample(&after, ok_series).unwrap_or(0.0),
        cpu_pct: (cpu1 - cpu0) / elapsed * 100.0,
        sim_cpu_pct: (sim1 - sim0) / elapsed * 100.0,
        rss_kib,
        hwm_kib,
        lag_p50: quantile(&lb, &la, 0.5),
        lag_p99: quantile(&lb, &la, 0.99),
        meters_per_sec: (meters(&after) - meters(&before)) / elapsed,
        // Two mic channels at the mic rate, two zones at the DSP rate, per room.
        expected_meters: rooms as f64
            * 2.0
            * (1000.0 / s.mic_meter_ms as f64 + 1000.0 / s.dsp_meter_ms as f64),
        zones_guarded,
        load,
    };
    if row.ok_end < devices as f64 {
        report_not_ok(api);
    }
    daemon.stop();
    sim.stop();
    Ok(row)
}

/// Which devices were not `ok` at the end of the window: counts by profile and health, and
/// the faults of a few, on stderr (the table stays clean).
fn report_not_ok(api: SocketAddr) {
    let Some(list) = http_get(api, "/api/v1/devices")
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
    else {
        return;
    };
    let items = list
        .get("items")
        .or(Some(&list))
        .and_then(|v| v.as_array())
        .cloned()
        .unwrap_or_default();
    let field =
        |d: &serde_json::Value, k: &str| d.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    let not_ok: Vec<_> = items
        .iter()
        .filter(|d| field(d, "health").as_deref() != Some("ok"))
        .collect();
    let mut by: std::collections::BTreeMap<(String, String), usize> = Default::default();
    for d in &not_ok {
        let key = (
            field(d, "profile").unwrap_or_default(),
            field(d, "health").unwrap_or_default(),
        );
        *by.entry(key).or_default() += 1;
    }
    eprintln!("not ok at the end: {by:?}");
    for d in not_ok.iter().take(3) {
        let Some(id) = field(d, "id") else { continue };
        if let Some(detail) = http_get(api, &format!("/api/v1/devices/{id}")) {
            let faults = serde_json::from_str::<serde_json::Value>(&detail)
                .ok()
                .and_then(|v| v.get("faults").cloned());
            eprintln!(
                "  {id}: {}",
                faults.map(|f| f.to_string()).unwrap_or_default()
            );
        }
    }
}

/// `VmRSS` of the same daemon with no devices (no rooms, no simulator), once its API answers
/// and a few seconds more: the base the marginal figure per device is measured above.
/// `avwarden run` on `config`, its log (warnings and worse) in `dir/daemon.log`.
fn spawn_daemon(bin: &Path, config: &Path, dir: &Path) -> Result<Proc, String> {
    let log =
        std::fs::File::create(dir.join("daemon.log")).map_err(|e| format!("daemon log: {e}"))?;
    Ok(Proc {
        child: Command::new(bin)
            .args(["--log", "warn", "run", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn daemon: {e}"))?,
        name: "daemon",
    })
}

async fn baseline_rss_kib(s: &Settings, bin: &Path) -> Result<u64, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let api = free_port().map_err(|e| format!("free port: {e}"))?;
    let config = dir.path().join("site.toml");
    std::fs::write(&config, site_toml(0, dir.path(), api, s))
        .map_err(|e| format!("write config: {e}"))?;
    let started = Instant::now();
    let daemon = spawn_daemon(bin, &config, dir.path())?;
    while http_get(api, "/metrics").is_none() {
        if started.elapsed() > s.warmup {
            return Err("the empty daemon never answered".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss = pid_status_kib(daemon.pid(), "VmRSS");
    daemon.stop();
    Ok(rss)
}

/// `perf record` of the daemon in the background; [`Recording::finish`] draws the graph.
struct Recording {
    child: Child,
    data: PathBuf,
    svg: PathBuf,
    title: String,
}

fn start_perf(pid: u32, secs: u64, dir: &Path, svg: &Path, rooms: usize) -> Option<Recording> {
    let data = dir.join("perf.data");
    // DWARF unwinding: release code keeps no frame pointers, and `.eh_frame` is always there.
    let child = Command::new("perf")
        .args(["record", "-F", "499", "--call-graph", "dwarf,16384", "-o"])
        .arg(&data)
        .args(["-p", &pid.to_string(), "--", "sleep", &secs.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| eprintln!("perf: {e}"))
        .ok()?;
    Some(Recording {
        child,
        data,
        svg: svg.to_owned(),
        title: format!("avwarden run, {rooms} rooms of five devices"),
    })
}

impl Recording {
    fn finish(mut self) {
        if !matches!(self.child.wait(), Ok(st) if st.success()) {
            eprintln!("perf record failed; no flame graph");
            return;
        }
        let script = Command::new("perf")
            .args(["script", "-i"])
            .arg(&self.data)
            .stderr(Stdio::null())
            .output();
        let Ok(script) = script else {
            eprintln!("perf script failed");
            return;
        };
        let folded = pipe("inferno-collapse-perf", &[], &script.stdout);
        let Some(folded) = folded else { return };
        let svg = pipe("inferno-flamegraph", &["--title", &self.title], &folded);
        match svg.map(|svg| std::fs::write(&self.svg, svg)) {
            Some(Ok(())) => eprintln!("flame graph: {}", self.svg.display()),
            _ => eprintln!("could not draw the flame graph (is inferno installed?)"),
        }
    }
}

fn pipe(program: &str, args: &[&str], input: &[u8]) -> Option<Vec<u8>> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| eprintln!("{program}: {e}"))
        .ok()?;
    let mut stdin = child.stdin.take()?;
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().ok()?;
    let _ = writer.join();
    out.status.success().then_some(out.stdout)
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_owned(), |s| format!("{:.1}", s * 1000.0))
}

fn main() -> ExitCode {
    // `cargo test --all-targets` runs benches with `--bench` absent: nothing to smoke here
    // that the integration tests do not cover, and a fleet takes minutes.
    if !std::env::args().any(|a| a == "--bench") {
        return ExitCode::SUCCESS;
    }
    let sizes: Vec<usize> = std::env::var("AVWARDEN_BENCH_SCALE_ROOMS")
        .unwrap_or_else(|_| "50,200,500,1000".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let s = Settings {
        window: Duration::from_secs(env_or("AVWARDEN_BENCH_SCALE_SECS", 30)),
        warmup: Duration::from_secs(env_or("AVWARDEN_BENCH_SCALE_WARMUP_SECS", 60)),
        mic_meter_ms: env_or("AVWARDEN_BENCH_SCALE_MIC_METER_MS", 1000u64).max(100),
        dsp_meter_ms: env_or("AVWARDEN_BENCH_SCALE_DSP_METER_MS", 100u64).max(50),
        perf_svg: std::env::var_os("AVWARDEN_BENCH_SCALE_PERF_SVG").map(PathBuf::from),
        perf_secs: env_or("AVWARDEN_BENCH_SCALE_PERF_SECS", 20),
        perf_rooms: env_or("AVWARDEN_BENCH_SCALE_PERF_ROOMS", 500),
    };
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_avwarden"));
    print_machine();
    println!(
        "window {} s, mic meters every {} ms, DSP meters every {} ms, binary {}",
        s.window.as_secs(),
        s.mic_meter_ms,
        s.dsp_meter_ms,
        bin.file_name().map_or("?".into(), |n| n.to_string_lossy()),
    );
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let base_kib = match rt.block_on(baseline_rss_kib(&s, &bin)) {
        Ok(kib) => kib,
        Err(e) => {
            eprintln!("empty daemon: {e}");
            0
        }
    };
    println!(
        "daemon with no devices: {:.1} MiB RSS",
        base_kib as f64 / 1024.0
    );
    let mut table = String::from(
        "| rooms | devices | all ok after | ok start/end | daemon CPU (% of a core) | sim CPU | RSS (peak) | RSS per device | marginal per device | poll lag p50 / p99 | meter samples/s (expected) | zones guarded | load average |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut failed = false;
    for &rooms in &sizes {
        eprintln!("{rooms} rooms…");
        match rt.block_on(run_size(rooms, &s, &bin, rooms == s.perf_rooms)) {
            Ok(r) => {
                let _ = writeln!(
                    table,
                    "| {} | {} | {} | {}/{} | {:.1} % | {:.1} % | {:.1} MiB ({:.1}) | {:.1} KiB | {:.1} KiB | {} / {} ms | {:.0} ({:.0}) | {} | {} |",
                    r.rooms,
                    r.devices,
                    r.all_ok_after
                        .map_or_else(|| "never".to_owned(), |d| format!("{:.1} s", d.as_secs_f64())),
                    r.ok_start,
                    r.ok_end,
                    r.cpu_pct,
                    r.sim_cpu_pct,
                    r.rss_kib as f64 / 1024.0,
                    r.hwm_kib as f64 / 1024.0,
                    r.rss_kib as f64 / r.devices as f64,
                    r.rss_kib.saturating_sub(base_kib) as f64 / r.devices as f64,
                    ms(r.lag_p50),
                    ms(r.lag_p99),
                    r.meters_per_sec,
                    r.expected_meters,
                    r.zones_guarded,
                    r.load,
                );
                println!("{}", table.lines().last().unwrap_or_default());
            }
            Err(e) => {
                eprintln!("{rooms} rooms: {e}");
                failed = true;
            }
        }
    }
    println!("\n{table}");
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
