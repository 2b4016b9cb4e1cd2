//! The fleet benchmark: one process runs N simulated devices and the real device runtime
//! (`Fleet::spawn_device` per device) polling them over loopback, and measures what a building
//! costs: CPU time per device per minute, resident memory per device, poll exchange latency,
//! meter events per second delivered on the event bus, and whether every device reached `ok`.
//!
//! Real time, real sockets on 127.0.0.1, the shipped profiles and simulators. This is a
//! benchmark, not a test: it never fails on a figure. `cargo bench --bench fleet` runs each
//! fleet size in a fresh child process (so peak memory is per size) and prints a table; under
//! `cargo test --all-targets` it runs one tiny fleet as a smoke check that fails only if the
//! devices never come up. Results and how to read them: `docs/benchmarks.md`.
//!
//! Simulators run on their own runtime (threads `avw-sim`), the daemon side on another
//! (`avw-daemon`, one worker per core like `main`), and the measuring code on the main thread,
//! so per-thread CPU time from `/proc/self/task` separates the daemon's cost from the
//! simulators' and the benchmark's own.
//!
//! Environment (all optional):
//! `AVWARDEN_BENCH_FLEET_SIZES` (`10,50,200,500`), `AVWARDEN_BENCH_FLEET_SECS` (measuring
//! window, 30), `AVWARDEN_BENCH_FLEET_WARMUP_SECS` (longest wait for every device to reach
//! `ok`, 90), `AVWARDEN_BENCH_FLEET_MIX` (profile ids, devices assigned round-robin,
//! `generic-pjlink,shure-ulxd`), `AVWARDEN_BENCH_FLEET_MIC_CHANNELS` (4),
//! `AVWARDEN_BENCH_FLEET_METER_MS` (100), `AVWARDEN_BENCH_FLEET_SIM_THREADS` (2).

#[path = "common/proc.rs"]
mod proc;
use proc::{cpu_snapshot, percentile, print_machine, proc_status_kib};

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use avwarden::clock::Clock;
use avwarden::events::EventBus;
use avwarden::metrics::Metrics;
use avwarden::model::{DeviceState, Health, Point, Quantity};
use avwarden::profile::{LinkKind, Profile, ProfileSet};
use avwarden::runtime::{DeviceSpec, Fleet};
use avwarden::sim::{self, SimBind, SimEndpoint};
use avwarden::transport::serial::SerialSpec;
use avwarden::transport::tcp::TcpSpec;
use avwarden::transport::LinkSpec;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const CHILD_VAR: &str = "AVWARDEN_BENCH_FLEET_CHILD";
const RESULT_PREFIX: &str = "RESULT ";
const DAEMON_THREADS: &str = "avw-daemon";
const SIM_THREADS: &str = "avw-sim";

/// One kind of device in the simulated building: its shipped profile, the options its
/// simulator gets (`[devices.simulator]`), the driver settings (`[devices.settings]`) and how
/// many meter channels it streams. `{channels}`, `{transmitters}`, `{meter_ms}` and
/// `{meter_secs}` are filled in from the environment.
///
/// A driver whose simulator is reachable through `sim::spawn` joins the benchmark with one
/// entry here and its profile id in `AVWARDEN_BENCH_FLEET_MIX`.
struct Kind {
    profile: &'static str,
    simulator: &'static str,
    settings: &'static str,
    meters: Meters,
}

/// Meter channels a device of a kind streams at `AVWARDEN_BENCH_FLEET_METER_MS`, for the
/// expected meter rate.
#[derive(Debug, Clone, Copy)]
enum Meters {
    None,
    /// One per mic channel (`AVWARDEN_BENCH_FLEET_MIC_CHANNELS`).
    PerMicChannel,
    /// A fixed number (a DSP's mapped meters).
    Fixed(usize),
}

/// The zone and mic of a room on a Tesira design: level, mute and a meter subscription each,
/// on blocks of the simulator's default design.
const TESIRA_ROOM: &str = r#"
meter_rate_ms = {meter_ms}
[[zones]]
id = "main"
level_tag = "Level1"
meter_tag = "OutMeter"
max_db = 0
[[mics]]
id = "lectern"
channel = 1
level_tag = "MicGain"
meter_tag = "MicMeter"
"#;

/// The same room on a Q-SYS design: named controls in one change group with AutoPoll.
const QSYS_ROOM: &str = r#"
meter_rate_secs = {meter_secs}
[[zones]]
id = "main"
level_control = "MainGain"
mute_control = "MainMute"
meter_control = "MainMeter"
max_db = 0
[[mics]]
id = "lectern"
channel = 1
level_control = "MicGain"
mute_control = "MicMute"
meter_control = "MicMeter"
"#;

const KINDS: &[Kind] = &[
    // Projector switched on, so every poll asks all seven Class 2 questions; the session stays
    // open between polls (persistent session, generic profile).
    Kind {
        profile: "generic-pjlink",
        simulator: "power_on = true",
        settings: "",
        meters: Meters::None,
    },
    // Quad receiver metering every channel: the heaviest realistic stream per device.
    Kind {
        profile: "shure-ulxd",
        // A transmitter on every channel: a channel without one meters no level.
        simulator: "channels = {channels}\ntransmitters = {transmitters}",
        settings: "channels = {channels}\nmeter_rate_ms = {meter_ms}",
        meters: Meters::PerMicChannel,
    },
    Kind {
        profile: "shure-axient",
        simulator: "channels = {channels}\ntransmitters = {transmitters}",
        settings: "channels = {channels}\nmeter_rate_ms = {meter_ms}",
        meters: Meters::PerMicChannel,
    },
    // RS-232 projector on a pseudo-terminal, lamp on: PWR, ERR, LAMP, SOURCE, MUTE each poll.
    Kind {
        profile: "epson-escvp21",
        simulator: "power_on = true",
        settings: "",
        meters: Meters::None,
    },
    // EW-DX receiver over UDP with a transmitter on every channel, meters subscribed.
    Kind {
        profile: "sennheiser-ewdx",
        simulator: "channels = {channels}\ntransmitters = {transmitters}",
        settings: "channels = {channels}\nmeter_rate_ms = {meter_ms}",
        meters: Meters::PerMicChannel,
    },
    // Tesira over Telnet: a zone and a mic, two meter subscriptions.
    Kind {
        profile: "biamp-tesira-telnet",
        simulator: "",
        settings: TESIRA_ROOM,
        meters: Meters::Fixed(2),
    },
    // Q-SYS Core: a zone and a mic; the change group reports a meter only when it changed.
    Kind {
        profile: "qsys-core",
        simulator: "",
        settings: QSYS_ROOM,
        meters: Meters::Fixed(2),
    },
    // Modbus RTU room controller on a pseudo-terminal (the simulator's default map).
    Kind {
        profile: "avwarden-sim-modbus",
        simulator: "",
        settings: "",
        meters: Meters::None,
    },
];

#[derive(Debug, Clone)]
struct Params {
    devices: usize,
    window: Duration,
    warmup: Duration,
    mix: Vec<String>,
    mic_channels: u8,
    meter_ms: u32,
    sim_threads: usize,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| {
            eprintln!("fleet: ignoring {name}={v:?} (not a valid value)");
            default
        }),
        Err(_) => default,
    }
}

impl Params {
    fn from_env(devices: usize) -> Params {
        let mix = std::env::var("AVWARDEN_BENCH_FLEET_MIX")
            .unwrap_or_else(|_| "generic-pjlink,shure-ulxd".to_owned());
        Params {
            devices,
            window: Duration::from_secs_f64(env_or("AVWARDEN_BENCH_FLEET_SECS", 30.0)),
            warmup: Duration::from_secs_f64(env_or("AVWARDEN_BENCH_FLEET_WARMUP_SECS", 90.0)),
            mix: mix
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
            mic_channels: env_or("AVWARDEN_BENCH_FLEET_MIC_CHANNELS", 4),
            meter_ms: env_or("AVWARDEN_BENCH_FLEET_METER_MS", 100),
            sim_threads: env_or("AVWARDEN_BENCH_FLEET_SIM_THREADS", 2usize).max(1),
        }
    }

    fn fill(&self, template: &str) -> String {
        let transmitters: Vec<String> = (1..=self.mic_channels)
            .map(|c| format!("{{ channel = {c} }}"))
            .collect();
        template
            .replace("{channels}", &self.mic_channels.to_string())
            .replace("{transmitters}", &format!("[{}]", transmitters.join(", ")))
            .replace("{meter_ms}", &self.meter_ms.to_string())
            .replace(
                "{meter_secs}",
                &(f64::from(self.meter_ms) / 1000.0).to_string(),
            )
    }

    /// Meter events per second a device of `kind` streams.
    fn meters_per_sec(&self, kind: &Kind) -> f64 {
        let channels = match kind.meters {
            Meters::None => 0,
            Meters::PerMicChannel => usize::from(self.mic_channels),
            Meters::Fixed(n) => n,
        };
        channels as f64 * 1000.0 / f64::from(self.meter_ms.max(1))
    }
}

/// What one fleet size measured; passed from the child process to the parent as JSON.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct RunResult {
    devices: usize,
    by_profile: BTreeMap<String, usize>,
    window_secs: f64,
    /// Devices `ok` when the measuring window opened, and when it closed.
    ok_at_start: usize,
    ok_at_end: usize,
    /// From spawning the fleet until the last device reached `ok` (None: some never did).
    secs_to_all_ok: Option<f64>,
    cpu_daemon_secs: f64,
    cpu_sim_secs: f64,
    cpu_process_secs: f64,
    rss_sims_kib: u64,
    rss_end_kib: u64,
    hwm_kib: u64,
    exchange_ms: Vec<f64>,
    cycle_ms: Vec<f64>,
    meter_events: u64,
    /// Meter events per profile id during the window.
    meters_by_profile: BTreeMap<String, u64>,
    meter_expected_per_sec: f64,
    timeouts: u64,
    reconnects: u64,
    bad_frames: u64,
    /// Devices not `ok` when the window closed, per profile id.
    not_ok_by_profile: BTreeMap<String, usize>,
    loadavg_before: String,
}

fn main() -> ExitCode {
    let bench = std::env::args().any(|a| a == "--bench");
    if let Ok(n) = std::env::var(CHILD_VAR) {
        let Ok(n) = n.parse::<usize>() else {
            eprintln!("fleet: bad {CHILD_VAR}");
            return ExitCode::FAILURE;
        };
        return match run(&Params::from_env(n)) {
            Ok(r) => match serde_json::to_string(&r) {
                Ok(json) => {
                    println!("{RESULT_PREFIX}{json}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("fleet: {e}");
                    ExitCode::FAILURE
                }
            },
            Err(e) => {
                eprintln!("fleet: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if !bench {
        return smoke();
    }
    print_machine();
    if let Ok(n) = std::env::var("AVWARDEN_BENCH_FLEET_IMPOSTORS") {
        return impostors(n.parse().unwrap_or(6), 20);
    }
    let sizes: Vec<usize> = std::env::var("AVWARDEN_BENCH_FLEET_SIZES")
        .unwrap_or_else(|_| "10,50,200,500".to_owned())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .filter(|&n| n > 0)
        .collect();
    let p = Params::from_env(0);
    println!(
        "fleet: mix {:?}, {} mic channels metering every {} ms, window {:?}, sizes {sizes:?}",
        p.mix, p.mic_channels, p.meter_ms, p.window
    );
    let mut rows = Vec::new();
    let mut failed = false;
    for n in sizes {
        match run_child(n) {
            Ok(r) => {
                print_row_header_once(rows.is_empty());
                print_row(&r);
                rows.push(r);
            }
            Err(e) => {
                eprintln!("fleet: {n} devices: {e}");
                failed = true;
            }
        }
    }
    println!();
    for r in &rows {
        print_detail(r);
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Under `cargo test --all-targets`: a tiny fleet, in process, that must come up. Fails only if
/// the devices never reach `ok` within the generous warm-up bound (a hang, not a slow run).
fn smoke() -> ExitCode {
    let mut p = Params::from_env(4);
    p.window = Duration::from_secs(2);
    p.warmup = Duration::from_secs(60);
    match run(&p) {
        Ok(r) if r.ok_at_start == r.devices => {
            println!(
                "fleet smoke: {}/{} devices ok, {} meter events in {:.0} s (run `cargo bench --bench fleet` for figures)",
                r.ok_at_start, r.devices, r.meter_events, r.window_secs
            );
            ExitCode::SUCCESS
        }
        Ok(r) => {
            eprintln!(
                "fleet smoke: only {}/{} devices reached ok within {:?}",
                r.ok_at_start, r.devices, p.warmup
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("fleet smoke: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_child(n: usize) -> Result<RunResult, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = Command::new(exe)
        .arg("--bench")
        .env(CHILD_VAR, n.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("start child: {e}"))?;
    if !out.status.success() {
        return Err(format!("child exited with {}", out.status));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(RESULT_PREFIX))
        .ok_or("child printed no result")?;
    serde_json::from_str(line).map_err(|e| format!("child result: {e}"))
}

// ---- one fleet size ----

struct Planned {
    profile: Arc<Profile>,
    link: LinkSpec,
    settings: toml::Table,
    meters_per_sec: f64,
}

fn run(p: &Params) -> Result<RunResult, String> {
    let set = ProfileSet::embedded().map_err(|e| format!("embedded profiles: {e:?}"))?;
    let mut kinds = Vec::new();
    for id in &p.mix {
        let kind = KINDS
            .iter()
            .find(|k| k.profile == id.as_str())
            .ok_or_else(|| format!("no benchmark kind for profile {id:?}"))?;
        let profile = set
            .get(id)
            .ok_or_else(|| format!("no embedded profile {id:?}"))?;
        kinds.push((kind, Arc::new(profile.clone())));
    }
    if kinds.is_empty() {
        return Err("empty AVWARDEN_BENCH_FLEET_MIX".into());
    }
    // Quiet like a daemon at INFO with its log going nowhere: meters are TRACE and filtered.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_writer(std::io::sink)
        .try_init();

    let loadavg_before = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let clock = Clock::system();
    let sim_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(p.sim_threads)
        .thread_name(SIM_THREADS)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    // Like `main`: the default worker count, one per core.
    let daemon_rt = tokio::runtime::Builder::new_multi_thread()
        .thread_name(DAEMON_THREADS)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;

    let sim_cancel = CancellationToken::new();
    let planned: Vec<Planned> = sim_rt.block_on(async {
        let mut planned = Vec::with_capacity(p.devices);
        for i in 0..p.devices {
            let (kind, profile) = &kinds[i % kinds.len()];
            let options: toml::Table = toml::from_str(&p.fill(kind.simulator))
                .map_err(|e| format!("{} simulator options: {e}", kind.profile))?;
            let settings: toml::Table = toml::from_str(&p.fill(kind.settings))
                .map_err(|e| format!("{} settings: {e}", kind.profile))?;
            let endpoint = sim::spawn(
                profile,
                &options,
                bind_for(profile)?,
                clock,
                sim_cancel.child_token(),
            )
            .await
            .map_err(|e| format!("start {} simulator: {e}", kind.profile))?;
            planned.push(Planned {
                link: link_for(profile, &endpoint),
                profile: profile.clone(),
                settings,
                meters_per_sec: p.meters_per_sec(kind),
            });
        }
        Ok::<_, String>(planned)
    })?;
    let rss_sims_kib = proc_status_kib("VmRSS");

    let mut result = daemon_rt.block_on(measure(p, planned, clock))?;
    result.rss_sims_kib = rss_sims_kib;
    result.loadavg_before = loadavg_before;

    sim_cancel.cancel();
    daemon_rt.shutdown_timeout(Duration::from_secs(2));
    sim_rt.shutdown_timeout(Duration::from_secs(2));
    Ok(result)
}

fn bind_for(profile: &Profile) -> Result<SimBind, String> {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    match profile.link.kind {
        LinkKind::Tcp => Ok(SimBind::Tcp(any)),
        LinkKind::Udp => Ok(SimBind::Udp(any)),
        LinkKind::Serial => Ok(SimBind::Pty { link: None }),
        // An MQTT device needs a broker started by the benchmark first (not done yet).
        LinkKind::Mqtt => Err(format!("{}: MQTT devices need a broker", profile.id)),
    }
}

fn link_for(profile: &Profile, endpoint: &SimEndpoint) -> LinkSpec {
    match endpoint {
        SimEndpoint::Tcp(a) => {
            let mut t = TcpSpec::new(a.ip().to_string(), a.port());
            t.connect_per_command = profile.link.connect_per_command;
            LinkSpec::Tcp(t)
        }
        SimEndpoint::Udp(a) => LinkSpec::Udp {
            host: a.ip().to_string(),
            port: a.port(),
        },
        SimEndpoint::Pty(path) => LinkSpec::Serial(SerialSpec::new(
            path.display().to_string(),
            profile.link.baud.unwrap_or(9600),
        )),
        SimEndpoint::Mqtt { topic } => LinkSpec::Mqtt {
            topic: topic.clone(),
        },
    }
}

async fn measure(p: &Params, planned: Vec<Planned>, clock: Clock) -> Result<RunResult, String> {
    let bus = EventBus::new(Metrics::new());
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let mut fleet = Fleet::new(bus.clone(), clock, tracker.clone(), cancel.clone());

    // A meter consumer stands in for the level watch / live views: it drains the meter stream
    // and counts samples while the window is open.
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = CancellationToken::new();
    let rx = bus.meters().subscribe("bench");

    let mut by_profile: BTreeMap<String, usize> = BTreeMap::new();
    let mut profile_of: HashMap<String, String> = HashMap::new();
    let mut meters_expected = 0.0;
    let mut projectors = Vec::new();
    let mut all = Vec::new();
    let mut kinds_of = Vec::new();
    let spawned = Instant::now();
    for (i, d) in planned.into_iter().enumerate() {
        let id = d.profile.id.to_string();
        *by_profile.entry(id.clone()).or_default() += 1;
        meters_expected += d.meters_per_sec;
        let device = format!("dev-{i:04}");
        profile_of.insert(device.clone(), id.clone());
        let mut spec = DeviceSpec::new(
            &device,
            &format!("room-{:04}", i / p.mix.len()),
            d.profile.clone(),
            d.link,
        );
        spec.settings = d.settings;
        let h = fleet
            .spawn_device(spec)
            .map_err(|e| format!("spawn {id}: {e}"))?;
        if d.profile.driver == avwarden::profile::DriverKind::Pjlink {
            projectors.push(Cycles::new(h.watch()));
        }
        all.push(h.watch());
        kinds_of.push(id);
    }

    let counter = count_meters(rx, measuring.clone(), &profile_of, stop.clone());
    let body = async {
        // Every device to `ok`, bounded.
        let deadline = spawned + p.warmup;
        let waits = all.iter().cloned().map(|mut rx| async move {
            let r =
                tokio::time::timeout_at(deadline, rx.wait_for(|s| s.health == Health::Ok)).await;
            matches!(r, Ok(Ok(_)))
        });
        let reached = futures::future::join_all(waits).await;
        let secs_to_all_ok = reached
            .iter()
            .all(|&ok| ok)
            .then(|| spawned.elapsed().as_secs_f64());
        // Let the first polls and the metering rate settle before measuring.
        tokio::time::sleep(Duration::from_secs(1)).await;

        let ok_at_start = count_ok(&all);
        let cpu0 = cpu_snapshot();
        let t0 = Instant::now();
        let t0_clock = clock.now();
        measuring.store(true, Ordering::SeqCst);
        let mut projectors = projectors;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        while t0.elapsed() < p.window {
            tick.tick().await;
            for c in &mut projectors {
                c.sample(t0_clock);
            }
        }
        measuring.store(false, Ordering::SeqCst);
        let window = t0.elapsed();
        let cpu1 = cpu_snapshot();
        for c in &mut projectors {
            c.sample(t0_clock);
        }
        stop.cancel();

        let mut r = RunResult {
            devices: all.len(),
            window_secs: window.as_secs_f64(),
            ok_at_start,
            ok_at_end: count_ok(&all),
            secs_to_all_ok,
            cpu_daemon_secs: cpu1.group(DAEMON_THREADS) - cpu0.group(DAEMON_THREADS),
            cpu_sim_secs: cpu1.group(SIM_THREADS) - cpu0.group(SIM_THREADS),
            cpu_process_secs: cpu1.process - cpu0.process,
            rss_end_kib: proc_status_kib("VmRSS"),
            hwm_kib: proc_status_kib("VmHWM"),
            meter_expected_per_sec: meters_expected,
            ..RunResult::default()
        };
        for c in projectors {
            r.exchange_ms.extend(c.exchange_ms);
            r.cycle_ms.extend(c.cycle_ms);
        }
        for (rx, profile) in all.iter().zip(&kinds_of) {
            let s = rx.borrow();
            if s.health != Health::Ok {
                *r.not_ok_by_profile.entry(profile.clone()).or_default() += 1;
            }
            r.timeouts += s.counters.timeouts;
            r.reconnects += s.counters.reconnects;
            r.bad_frames += s.counters.bad_frames + s.counters.oversized_frames;
        }
        r
    };
    let (mut r, counted) = tokio::join!(body, counter);
    r.by_profile = by_profile;
    r.meter_events = counted.by_profile.values().sum();
    r.meters_by_profile = counted.by_profile;
    // A mix that should meter and sent nothing measures the wrong thing (the Shure kinds
    // once ran without transmitters, and a channel without one meters no level).
    if meters_expected > 0.0 && r.meter_events == 0 {
        cancel.cancel();
        return Err(format!(
            "no meter samples arrived, {meters_expected} a second expected"
        ));
    }

    cancel.cancel();
    tracker.close();
    if tokio::time::timeout(Duration::from_secs(10), tracker.wait())
        .await
        .is_err()
    {
        eprintln!("fleet: device actors did not stop within 10 s");
    }
    drop(fleet);
    Ok(r)
}

/// What the meter consumer saw while the window was open.
#[derive(Default)]
struct MeterCount {
    by_profile: BTreeMap<String, u64>,
}

async fn count_meters(
    mut rx: avwarden::meter::stream::MeterReceiver,
    measuring: Arc<AtomicBool>,
    profile_of: &HashMap<String, String>,
    stop: CancellationToken,
) -> MeterCount {
    let mut out = MeterCount::default();
    loop {
        let batch = tokio::select! {
            _ = stop.cancelled() => return out,
            b = rx.recv() => b,
        };
        if !measuring.load(Ordering::Relaxed) {
            continue;
        }
        for sample in batch {
            let profile = profile_of
                .get(sample.device.as_str())
                .map_or("?", String::as_str);
            match out.by_profile.get_mut(profile) {
                Some(n) => *n += 1,
                None => {
                    out.by_profile.insert(profile.to_owned(), 1);
                }
            }
        }
    }
}

fn count_ok(all: &[watch::Receiver<DeviceState>]) -> usize {
    all.iter()
        .filter(|rx| rx.borrow().health == Health::Ok)
        .count()
}

/// Poll timing of one projector, read from its published state: every reading carries the
/// instant the actor processed the reply that produced it. A Class 2 poll asks POWR, ERST,
/// LAMP, INPT, AVMT, FILT, IRES back to back; ERST yields faults, not a reading.
struct Cycles {
    rx: watch::Receiver<DeviceState>,
    last_end: Option<DateTime<Utc>>,
    /// One request→reply exchange: between consecutive readings of consecutive exchanges.
    exchange_ms: Vec<f64>,
    /// POWR reply to IRES reply: six exchanges of one poll.
    cycle_ms: Vec<f64>,
}

/// Readings of consecutive exchanges (LAMP, INPT, AVMT, FILT, IRES) in poll order.
const CHAIN: [Point; 5] = [
    Point::lamp(1, Quantity::LampHours),
    Point::device(Quantity::Input),
    Point::device(Quantity::AvMute),
    Point::device(Quantity::FilterHours),
    Point::device(Quantity::Resolution),
];

impl Cycles {
    fn new(rx: watch::Receiver<DeviceState>) -> Self {
        Self {
            rx,
            last_end: None,
            exchange_ms: Vec::new(),
            cycle_ms: Vec::new(),
        }
    }

    fn sample(&mut self, since: DateTime<Utc>) {
        let s = self.rx.borrow();
        let at = |p: &Point| s.readings.get(p).map(|r| r.observed_at);
        let (Some(start), Some(end)) = (
            at(&Point::device(Quantity::Power)),
            at(&Point::device(Quantity::Resolution)),
        ) else {
            return;
        };
        // A finished poll that began inside the window and was not counted yet; mid-poll the
        // POWR reading is newer than IRES and the next sample picks the poll up.
        if start < since || end < start || Some(end) == self.last_end {
            return;
        }
        let chain: Option<Vec<DateTime<Utc>>> = CHAIN.iter().map(at).collect();
        let Some(chain) = chain else { return };
        if chain.first().is_some_and(|&t| t < start) || chain.windows(2).any(|w| w[1] < w[0]) {
            return;
        }
        self.last_end = Some(end);
        let ms = |a: DateTime<Utc>, b: DateTime<Utc>| {
            (b - a).num_microseconds().unwrap_or(0) as f64 / 1000.0
        };
        self.cycle_ms.push(ms(start, end));
        for w in chain.windows(2) {
            self.exchange_ms.push(ms(w[0], w[1]));
        }
    }
}

// ---- impostors (issue 16.4) ----

/// `n` impostors on the ports of projectors and receivers, each answering every connect with
/// an endless line and no terminator, for `secs` seconds: what the daemon's threads spend on
/// them, and how often it reconnected. The impostors run on their own runtime's threads.
fn impostors(n: usize, secs: u64) -> ExitCode {
    let runtime = |name: &str, threads: usize| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name(name)
            .enable_all()
            .build()
            .expect("runtime")
    };
    let sims = runtime(SIM_THREADS, 1);
    let daemon = runtime(DAEMON_THREADS, 2);
    let ports: Vec<u16> = sims.block_on(async {
        let mut ports = Vec::new();
        for _ in 0..n {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            ports.push(l.local_addr().expect("addr").port());
            tokio_util::task::TaskTracker::new().spawn(async move {
                while let Ok((mut s, _)) = l.accept().await {
                    tokio_util::task::TaskTracker::new().spawn(async move {
                        use tokio::io::AsyncWriteExt;
                        let chunk = vec![b'A'; 64 * 1024];
                        while s.write_all(&chunk).await.is_ok() {}
                    });
                }
            });
        }
        ports
    });
    let set = ProfileSet::embedded().expect("embedded profiles");
    let report = daemon.block_on(async {
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let mut fleet = Fleet::new(
            EventBus::new(Metrics::new()),
            Clock::system(),
            tracker.clone(),
            cancel.clone(),
        );
        let mut handles = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            let profile = if i % 2 == 0 {
                "generic-pjlink"
            } else {
                "shure-ulxd"
            };
            let spec = DeviceSpec::new(
                format!("imp-{i}").as_str(),
                "r1",
                Arc::new(set.get(profile).expect("profile").clone()),
                LinkSpec::Tcp(TcpSpec::new("127.0.0.1", *port)),
            );
            handles.push(fleet.spawn_device(spec).expect("spawn"));
        }
        let cpu0 = cpu_snapshot();
        tokio::time::sleep(Duration::from_secs(secs)).await;
        let cpu1 = cpu_snapshot();
        let (mut oversized, mut reconnects) = (0, 0);
        for h in &handles {
            let c = h.state().counters;
            oversized += c.oversized_frames;
            reconnects += c.reconnects;
        }
        cancel.cancel();
        let daemon_secs = cpu1.group(DAEMON_THREADS) - cpu0.group(DAEMON_THREADS);
        let sim_secs = cpu1.group(SIM_THREADS) - cpu0.group(SIM_THREADS);
        format!(
            "impostors: {n} endless-line peers for {secs} s: daemon threads {:.2} % of a core, \
             impostor threads {:.2} %, {oversized} oversized frames, {reconnects} reconnects",
            100.0 * daemon_secs / secs as f64,
            100.0 * sim_secs / secs as f64,
        )
    });
    println!("{report}");
    ExitCode::SUCCESS
}

// ---- report ----

fn print_row_header_once(first: bool) {
    if first {
        println!();
        println!(
            "| devices | all ok after | ok start/end | daemon CPU | CPU per device | sim CPU | RSS | RSS per device | exchange p50 / p99 | poll p50 / p99 | meter events/s (expected) | timeouts / reconnects |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    }
}

fn print_row(r: &RunResult) {
    let w = r.window_secs.max(1e-9);
    let per_dev = (r.rss_end_kib.saturating_sub(r.rss_sims_kib)) as f64 / r.devices.max(1) as f64;
    println!(
        "| {} | {} | {}/{} | {:.1} % of a core | {:.3} s/min | {:.1} % | {:.0} MiB (peak {:.0}) | {:.0} KiB | {:.2} / {:.2} ms | {:.1} / {:.1} ms | {:.0} ({:.0}) | {} / {} |",
        r.devices,
        r.secs_to_all_ok.map_or("never".to_owned(), |s| format!("{s:.2} s")),
        r.ok_at_start,
        r.ok_at_end,
        100.0 * r.cpu_daemon_secs / w,
        r.cpu_daemon_secs / r.devices.max(1) as f64 / (w / 60.0),
        100.0 * r.cpu_sim_secs / w,
        r.rss_end_kib as f64 / 1024.0,
        r.hwm_kib as f64 / 1024.0,
        per_dev,
        percentile(&r.exchange_ms, 0.5),
        percentile(&r.exchange_ms, 0.99),
        percentile(&r.cycle_ms, 0.5),
        percentile(&r.cycle_ms, 0.99),
        r.meter_events as f64 / w,
        r.meter_expected_per_sec,
        r.timeouts,
        r.reconnects,
    );
}

fn print_detail(r: &RunResult) {
    println!(
        "{} devices {:?}: window {:.1} s, CPU daemon {:.2} s / simulators {:.2} s / whole process {:.2} s; RSS {} KiB with simulators only, {} KiB at end, peak {} KiB; {} exchange and {} poll samples; {} meter samples; {} bad frames; load before: {}",
        r.devices,
        r.by_profile,
        r.window_secs,
        r.cpu_daemon_secs,
        r.cpu_sim_secs,
        r.cpu_process_secs,
        r.rss_sims_kib,
        r.rss_end_kib,
        r.hwm_kib,
        r.exchange_ms.len(),
        r.cycle_ms.len(),
        r.meter_events,
        r.bad_frames,
        r.loadavg_before,
    );
    let w = r.window_secs.max(1e-9);
    let rates: Vec<String> = r
        .meters_by_profile
        .iter()
        .map(|(id, n)| format!("{id} {:.0}", *n as f64 / w))
        .collect();
    if !rates.is_empty() {
        println!("  meter events/s by profile: {}", rates.join(", "));
    }
    if r.meter_events > 0 {
        // Everything the daemon's threads did over the window, charged to the samples: an
        // upper bound of a sample's cost (polls and the rest are in it too).
        println!(
            "  daemon CPU per meter sample: {:.2} µs",
            r.cpu_daemon_secs / r.meter_events as f64 * 1e6
        );
    }
    if !r.not_ok_by_profile.is_empty() {
        println!("  not ok at the end: {:?}", r.not_ok_by_profile);
    }
}
