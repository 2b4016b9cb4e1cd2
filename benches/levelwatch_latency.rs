//! The level watch's end-to-end latency: from the instant a driver read a meter frame to the
//! instant the gain cut it caused arrived at the DSP, through the real simulators, drivers,
//! runtime (`runtime::Fleet`, the priority lane) and level watch (`levelwatch::start`).
//!
//! - `tcp`: 50 Tesira simulators over loopback Telnet, 20 protected zones each, meters every
//!   50 ms: 1,000 metered channels at 20 frames/s (the load). Zones are pushed into
//!   breach one after another, round-robin over the DSPs, while all the others stay
//!   speech-like.
//! - `serial`: one Tesira on a real pseudo-terminal opened at 115200 baud, 8 zones at the
//!   serial profile's 100 ms meter rate.
//!
//! The frame's instant is its `MeterSample.at`, stamped by the driver's observer as it decodes
//! the line whose last byte it has just read. A cut has two end points, both on the same
//! clock: **written**, stamped by the link's write hook (`DeviceSpec::on_write`) the moment
//! the daemon's write of the command has completed, and **received**, stamped by the
//! simulator's receive hook as it reads the command's line end (on the simulators' runtime,
//! so it adds their scheduling delay). A cut is a `set level` lower than the level before
//! that the daemon wrote; it is charged to the frame that decided it (the level watch's
//! probe, `levelwatch::start_probed`, names it), or, for a cut the probe did not see (sent
//! after waiting behind its zone's previous command), to the newest frame of its zone read
//! before it was written. The probe also stamps the stages in between: the level watch's tap got
//! the frame's level, decided, handed the command to the priority lane. Simulators run on
//! their own runtime (threads `avw-sim`) in this process, the daemon side on another
//! (`avw-daemon`, one worker per core like `main`), so the daemon's CPU is read per thread
//! from `/proc/self/task`.
//!
//! Real time; a benchmark, not a test: it never fails on a figure, and each part stops by
//! itself once it has its cuts or its time is up. `cargo bench --bench levelwatch_latency`
//! runs both parts (`-- tcp` or `-- serial` for one); under `cargo test --all-targets` a tiny
//! TCP run checks only that cuts arrive. Environment (optional): `AVWARDEN_BENCH_LW_CUTS`
//! (3000), `AVWARDEN_BENCH_LW_SECS` (longest measuring window of the TCP part, 60).
//! Results and how to read them: `docs/benchmarks.md`.

#[path = "common/proc.rs"]
mod proc;
use proc::{cpu_snapshot, loadavg, percentile, print_machine};

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use avwarden::clock::Clock;
use avwarden::driver::WriteHook;
use avwarden::events::EventBus;
use avwarden::levelwatch::{CutProbe, CutStamp, WatchedDevice};
use avwarden::meter::stream::MeterReceiver;
use avwarden::metrics::Metrics;
use avwarden::model::{DeviceId, Health, Subject};
use avwarden::profile::{Profile, ProfileSet};
use avwarden::runtime::{DeviceSpec, Fleet};
use avwarden::sim::meter_script::MeterScript;
use avwarden::sim::tesira::{self, BlockKind, BlockSpec, ReceiveHook, TesiraSim, TesiraSimConfig};
use avwarden::sim::SimBind;
use avwarden::transport::serial::SerialSpec;
use avwarden::transport::tcp::TcpSpec;
use avwarden::transport::LinkSpec;
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const SIM_THREADS: &str = "avw-sim";
const DAEMON_THREADS: &str = "avw-daemon";
/// Every frame's read instant per zone, oldest first.
type Frames = HashMap<(DeviceId, Subject), Vec<DateTime<Utc>>>;

/// Every zone's level before any cut (the level block's initial level).
const SET_LEVEL_DB: f64 = -10.0;

/// One part's shape.
#[derive(Debug, Clone)]
struct Params {
    name: &'static str,
    dsps: usize,
    zones: usize,
    serial: bool,
    meter_ms: u64,
    /// How often the next zone is pushed into breach, and how long it stays there.
    breach_every: Duration,
    breach_for: Duration,
    cuts: usize,
    window: Duration,
    warmup: Duration,
}

impl Params {
    fn tcp(cuts: usize, window: Duration) -> Params {
        Params {
            name: "tcp",
            dsps: 50,
            zones: 20,
            serial: false,
            meter_ms: 50,
            breach_every: Duration::from_millis(10),
            breach_for: Duration::from_millis(600),
            cuts,
            window,
            warmup: Duration::from_secs(90),
        }
    }

    fn serial() -> Params {
        Params {
            name: "serial",
            dsps: 1,
            zones: 8,
            serial: true,
            meter_ms: 100,
            breach_every: Duration::from_millis(400),
            breach_for: Duration::from_millis(800),
            cuts: 200,
            window: Duration::from_secs(60),
            warmup: Duration::from_secs(30),
        }
    }

    fn settings(&self) -> String {
        let mut s = format!("meter_rate_ms = {}\n", self.meter_ms);
        for z in 1..=self.zones {
            s.push_str(&format!(
                "[[zones]]\nid = \"z{z}\"\nlevel_tag = \"Zone\"\nindex = {z}\n\
                 meter_tag = \"ZoneMeter\"\nmeter_index = {z}\nmax_db = 0\n"
            ));
        }
        s
    }

    fn design(&self) -> TesiraSimConfig {
        let n = self.zones as u32;
        TesiraSimConfig {
            blocks: vec![
                BlockSpec::new("Zone", BlockKind::Level, n).level_db(SET_LEVEL_DB),
                // Read after the zone's level, as an output meter is: a cut shows in the meter.
                BlockSpec::new("ZoneMeter", BlockKind::Meter, n).follows("Zone"),
            ],
            ..TesiraSimConfig::default()
        }
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        return smoke();
    }
    let wanted = |name: &str| {
        let parts: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
        parts.is_empty() || parts.iter().any(|a| name.contains(a.as_str()))
    };
    print_machine();
    let mut failed = false;
    let cuts = env_or("AVWARDEN_BENCH_LW_CUTS", 3000);
    let window = Duration::from_secs(env_or("AVWARDEN_BENCH_LW_SECS", 60));
    for p in [Params::tcp(cuts, window), Params::serial()] {
        if !wanted(p.name) {
            continue;
        }
        match run(&p) {
            Ok(r) => r.print(&p),
            Err(e) => {
                eprintln!("levelwatch_latency {}: {e}", p.name);
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Under `cargo test --all-targets`: two DSPs of four zones must see cuts arrive. Fails only
/// if none does within the bounds (a broken path, not a slow one).
fn smoke() -> ExitCode {
    let mut p = Params::tcp(20, Duration::from_secs(30));
    p.dsps = 2;
    p.zones = 4;
    p.breach_every = Duration::from_millis(100);
    p.warmup = Duration::from_secs(60);
    match run(&p) {
        Ok(r) if !r.cuts.is_empty() => {
            println!(
                "levelwatch_latency smoke: {} cuts, max {:.0} µs (run `cargo bench --bench levelwatch_latency` for figures)",
                r.cuts.len(),
                r.cuts.iter().map(|c| c.written_us).fold(0.0, f64::max)
            );
            ExitCode::SUCCESS
        }
        Ok(_) => {
            eprintln!("levelwatch_latency smoke: no cut arrived");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("levelwatch_latency smoke: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A command the daemon wrote: which DSP, when its write completed, and for a `set level`
/// which channel and level.
#[derive(Debug, Clone, Copy)]
struct Written {
    dsp: usize,
    at: DateTime<Utc>,
    set: Option<(usize, f64)>,
    /// A `get` (a poll step, or a restore's check).
    read: bool,
}

/// A command line the simulator received: which DSP, when, and for a `set level` which
/// channel and level.
#[derive(Debug, Clone, Copy)]
struct Received {
    dsp: usize,
    at: DateTime<Utc>,
    set: Option<(usize, f64)>,
}

/// Which cuts a row of the table is about.
type Pick = fn(&Cut) -> bool;

struct RunResult {
    cuts: Vec<Cut>,
    /// Cuts whose zone had no frame before them (never expected; counted, not timed).
    unmatched: usize,
    frames_per_sec: f64,
    window_secs: f64,
    daemon_cpu_secs: f64,
    sim_cpu_secs: f64,
    process_cpu_secs: f64,
    loadavg_before: String,
    loadavg_after: String,
}

impl RunResult {
    fn print(&self, p: &Params) {
        let all: Vec<f64> = self.cuts.iter().map(|c| c.written_us).collect();
        println!(
            "{}: {} DSPs × {} zones, meters every {} ms{}",
            p.name,
            p.dsps,
            p.zones,
            p.meter_ms,
            if p.serial {
                ", pty opened at 115200 baud"
            } else {
                ", loopback Telnet"
            }
        );
        println!(
            "  {} cuts in {:.1} s ({} without a frame before them), {:.0} meter frames/s delivered",
            all.len(),
            self.window_secs,
            self.unmatched,
            self.frames_per_sec
        );
        let groups: [(&str, Pick); 4] = [
            ("all cuts", |_| true),
            ("cut alone on its link", |c| !c.shared),
            ("another command on its link meanwhile", |c| c.shared),
            ("… of which at least one read (`get`)", |c| c.behind_read),
        ];
        for (what, pick) in groups {
            let written: Vec<f64> = self
                .cuts
                .iter()
                .filter(|c| pick(c))
                .map(|c| c.written_us)
                .collect();
            let received: Vec<f64> = self
                .cuts
                .iter()
                .filter(|c| pick(c))
                .filter_map(|c| c.received_us)
                .collect();
            println!("  {what}:");
            for (end, v) in [
                ("written (daemon)", &written),
                ("received (simulator)", &received),
            ] {
                println!(
                    "    frame read → cut {end} ({}): p50 {:.0} µs, p90 {:.0} µs, p99 {:.0} µs, max {:.0} µs",
                    v.len(),
                    percentile(v, 0.50),
                    percentile(v, 0.90),
                    percentile(v, 0.99),
                    percentile(v, 1.0)
                );
            }
        }
        let staged: Vec<&[f64; 4]> = self.cuts.iter().filter_map(|c| c.stages.as_ref()).collect();
        println!(
            "  stages of the {} cuts the probe saw decided by a frame ({} not: sent after waiting behind their zone's command):",
            staged.len(),
            self.cuts.len() - staged.len()
        );
        for (i, stage) in [
            "frame read → the level watch's tap (in the driver's call)",
            "tap → cut decided (controller)",
            "decided → on the priority lane (from the tap)",
            "handed → write completed (queue, actor, driver, socket)",
        ]
        .iter()
        .enumerate()
        {
            let v: Vec<f64> = staged.iter().map(|s| s[i]).collect();
            println!(
                "    {stage}: p50 {:.0} µs, p90 {:.0} µs, p99 {:.0} µs, max {:.0} µs",
                percentile(&v, 0.50),
                percentile(&v, 0.90),
                percentile(&v, 0.99),
                percentile(&v, 1.0)
            );
        }
        let tail: Vec<f64> = self
            .cuts
            .iter()
            .filter_map(|c| c.received_us.map(|r| r - c.written_us))
            .collect();
        println!(
            "    written → received by the simulator: p50 {:.0} µs, p90 {:.0} µs, p99 {:.0} µs, max {:.0} µs",
            percentile(&tail, 0.50),
            percentile(&tail, 0.90),
            percentile(&tail, 0.99),
            percentile(&tail, 1.0)
        );
        let w = self.window_secs.max(f64::EPSILON);
        println!(
            "  CPU over the window: daemon threads {:.1} % of a core, simulators {:.1} %, process {:.1} %",
            100.0 * self.daemon_cpu_secs / w,
            100.0 * self.sim_cpu_secs / w,
            100.0 * self.process_cpu_secs / w
        );
        println!(
            "  load average before: {}; after: {}",
            self.loadavg_before, self.loadavg_after
        );
        if p.serial {
            // The pty moves bytes at memory speed; what 115200 baud (10 bits a byte) adds.
            let byte_us = 10.0 / 115_200.0 * 1e6;
            let meter_line = "! \"publishToken\":\"z1\" \"value\":-3.000000\r\n".len() as f64;
            let cut = "Zone set level 1 -13.000000\n".len() as f64;
            let ok = "+OK\r\n".len() as f64;
            println!(
                "  at 115200 baud: a meter line takes {:.1} ms, a cut {:.1} ms, its +OK {:.1} ms",
                meter_line * byte_us / 1000.0,
                cut * byte_us / 1000.0,
                ok * byte_us / 1000.0
            );
        }
    }
}

fn run(p: &Params) -> Result<RunResult, String> {
    // Quiet like a daemon at INFO with its log going nowhere.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_writer(std::io::sink)
        .try_init();
    let loadavg_before = loadavg();
    let clock = Clock::system();
    let sim_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(SIM_THREADS)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let daemon_rt = tokio::runtime::Builder::new_multi_thread()
        .thread_name(DAEMON_THREADS)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let received: Arc<Mutex<Vec<Received>>> = Arc::default();
    let sim_cancel = CancellationToken::new();
    let sims: Vec<TesiraSim> = sim_rt.block_on(async {
        let mut sims = Vec::with_capacity(p.dsps);
        for dsp in 0..p.dsps {
            let bind = if p.serial {
                SimBind::Pty { link: None }
            } else {
                SimBind::Tcp(([127, 0, 0, 1], 0).into())
            };
            let sim = tesira::spawn(p.design(), bind, sim_cancel.child_token())
                .await
                .map_err(|e| format!("start simulator {dsp}: {e}"))?;
            for z in 1..=p.zones {
                sim.set_meter_script("ZoneMeter", z, calm(dsp, z));
            }
            let sink = received.clone();
            sim.on_receive(ReceiveHook(Arc::new(move |line: &str| {
                // Stamped before anything else is done with the line.
                let at = clock.now();
                let r = Received {
                    dsp,
                    at,
                    set: parse_set_level(line),
                };
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(r);
            })));
            sims.push(sim);
        }
        Ok::<_, String>(sims)
    })?;
    let result = daemon_rt.block_on(measure(p, &sims, &sim_rt, received, clock));
    sim_cancel.cancel();
    daemon_rt.shutdown_timeout(Duration::from_secs(2));
    sim_rt.shutdown_timeout(Duration::from_secs(2));
    let mut r = result?;
    r.loadavg_before = loadavg_before;
    r.loadavg_after = loadavg();
    Ok(r)
}

/// Speech-like programme, a different phrase per zone, well inside every limit.
fn calm(dsp: usize, zone: usize) -> MeterScript {
    MeterScript::Speech {
        level_dbfs: -30.0,
        floor_dbfs: -70.0,
        seed: (dsp * 1000 + zone) as u64,
    }
}

/// `Zone set level 3 -13.000000` → (3, −13.0).
fn parse_set_level(line: &str) -> Option<(usize, f64)> {
    let mut w = line.split_whitespace();
    if (w.next()?, w.next()?, w.next()?) != ("Zone", "set", "level") {
        return None;
    }
    Some((w.next()?.parse().ok()?, w.next()?.parse().ok()?))
}

fn profile(p: &Params) -> Result<Arc<Profile>, String> {
    let id = if p.serial {
        "biamp-tesira-serial"
    } else {
        "biamp-tesira-telnet"
    };
    let set = ProfileSet::embedded().map_err(|e| format!("{e:?}"))?;
    set.get(id)
        .cloned()
        .map(Arc::new)
        .ok_or_else(|| format!("no embedded profile {id}"))
}

fn device_id(dsp: usize) -> DeviceId {
    DeviceId::new(format!("dsp{dsp:02}"))
}

async fn measure(
    p: &Params,
    sims: &[TesiraSim],
    sim_rt: &tokio::runtime::Runtime,
    received: Arc<Mutex<Vec<Received>>>,
    clock: Clock,
) -> Result<RunResult, String> {
    let profile = profile(p)?;
    let settings: toml::Table = toml::from_str(&p.settings()).map_err(|e| e.to_string())?;
    let bus = EventBus::new(Metrics::new());
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let mut fleet = Fleet::new(bus.clone(), clock, tracker.clone(), cancel.clone());
    let written: Arc<Mutex<Vec<Written>>> = Arc::default();
    let mut watched = Vec::with_capacity(sims.len());
    for (dsp, sim) in sims.iter().enumerate() {
        let link = match (sim.tcp_addr(), sim.pty_path()) {
            (Some(a), _) => LinkSpec::Tcp(TcpSpec::new(a.ip().to_string(), a.port())),
            (None, Some(path)) => {
                LinkSpec::Serial(SerialSpec::new(path.display().to_string(), 115_200))
            }
            (None, None) => return Err("simulator without an endpoint".into()),
        };
        let id = device_id(dsp);
        let mut spec = DeviceSpec::new(id.as_str(), "room", profile.clone(), link);
        spec.settings = settings.clone();
        let sink = written.clone();
        spec.on_write = Some(WriteHook(Arc::new(move |bytes: &[u8]| {
            // Stamped before anything else is done with the bytes.
            let at = clock.now();
            // A cut's write carries its read-back too: one entry a line.
            let text = String::from_utf8_lossy(bytes);
            let mut sink = sink.lock().unwrap_or_else(|e| e.into_inner());
            sink.extend(text.lines().map(|line| Written {
                dsp,
                at,
                set: parse_set_level(line),
                read: line.split_whitespace().nth(1) == Some("get"),
            }));
        })));
        let handle = fleet.spawn_device(spec).map_err(|e| e.to_string())?;
        let w = WatchedDevice::from_settings(handle, &profile, &settings)
            .ok_or("no zone protected: the profile lost its [protection]")?;
        watched.push(w);
    }
    // Subscribed before the level watch: every frame from now on is recorded.
    let frames: Arc<Mutex<Frames>> = Arc::default();
    let recorder_cancel = CancellationToken::new();
    let recorder = TaskTracker::new();
    recorder.spawn_on(
        record_frames(
            bus.meters().subscribe("bench"),
            frames.clone(),
            recorder_cancel.clone(),
        ),
        sim_rt.handle(),
    );
    let stamps: Arc<Mutex<Vec<CutStamp>>> = Arc::default();
    let sink = stamps.clone();
    let probe = CutProbe(Arc::new(move |s: CutStamp| {
        sink.lock().unwrap_or_else(|e| e.into_inner()).push(s);
    }));
    let _board = avwarden::levelwatch::start_probed(
        watched,
        bus.clone(),
        None,
        clock,
        &tracker,
        cancel.clone(),
        Some(probe),
    );

    // Warm-up: every DSP ok and every zone's meter subscribed.
    let up = tokio::time::timeout(p.warmup, async {
        loop {
            let ok = fleet
                .handles()
                .filter(|h| h.state().health == Health::Ok)
                .count();
            let subs: usize = sims.iter().map(|s| s.subscriptions()).sum();
            if ok == p.dsps && subs >= p.dsps * p.zones {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    if up.is_err() {
        cancel.cancel();
        return Err(format!("not every DSP was ok within {:?}", p.warmup));
    }
    // A few periods so every zone has history and the first frames' blindness is gone.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let start = clock.now();
    let frames_before = frame_count(&frames);
    let cpu_before = cpu_snapshot();
    let deadline = clock.instant() + p.window;
    let mut calm_again: std::collections::VecDeque<(tokio::time::Instant, usize, usize)> =
        Default::default();
    let mut next = 0usize;
    let mut tick = tokio::time::interval(p.breach_every);
    let sets_so_far = |r: &Mutex<Vec<Written>>| {
        let r = r.lock().unwrap_or_else(|e| e.into_inner());
        r.iter().filter(|r| r.set.is_some()).count()
    };
    // Restores are `set level`s too: twice the cuts wanted is a generous stop.
    while clock.instant() < deadline && sets_so_far(&written) < 2 * p.cuts {
        tick.tick().await;
        let now = clock.instant();
        while calm_again.front().is_some_and(|(at, _, _)| *at <= now) {
            if let Some((_, dsp, zone)) = calm_again.pop_front() {
                sims[dsp].set_meter_script("ZoneMeter", zone, calm(dsp, zone));
            }
        }
        // Round-robin over the DSPs first, so consecutive breaches land on different links.
        let (dsp, zone) = (next % p.dsps, (next / p.dsps) % p.zones + 1);
        next += 1;
        if calm_again.iter().any(|(_, d, z)| (*d, *z) == (dsp, zone)) {
            continue;
        }
        // Above full scale: the meter clips at 0 dBFS, and after a 3 dB cut still reads over
        // the −3 dBFS limit, so each breach costs two cuts.
        sims[dsp].set_meter_script("ZoneMeter", zone, MeterScript::Constant { dbfs: 2.0 });
        calm_again.push_back((now + p.breach_for, dsp, zone));
    }
    // The last breaches' cuts land.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let window_secs = (clock.now() - start).as_seconds_f64();
    let cpu_after = cpu_snapshot();
    let frames_in_window = frame_count(&frames) - frames_before;

    recorder_cancel.cancel();
    cancel.cancel();
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
    recorder.close();
    recorder.wait().await;

    let received = std::mem::take(&mut *received.lock().unwrap_or_else(|e| e.into_inner()));
    let written = std::mem::take(&mut *written.lock().unwrap_or_else(|e| e.into_inner()));
    let stamps = std::mem::take(&mut *stamps.lock().unwrap_or_else(|e| e.into_inner()));
    let frames = std::mem::take(&mut *frames.lock().unwrap_or_else(|e| e.into_inner()));
    let (cuts, unmatched) = cuts(p, &written, &received, &stamps, &frames, start);
    Ok(RunResult {
        cuts,
        unmatched,
        frames_per_sec: frames_in_window as f64 / window_secs.max(f64::EPSILON),
        window_secs,
        daemon_cpu_secs: cpu_after.group(DAEMON_THREADS) - cpu_before.group(DAEMON_THREADS),
        sim_cpu_secs: cpu_after.group(SIM_THREADS) - cpu_before.group(SIM_THREADS),
        process_cpu_secs: cpu_after.process - cpu_before.process,
        loadavg_before: String::new(),
        loadavg_after: String::new(),
    })
}

/// Every frame's instant, per zone. The stream coalesces per subject, so a frame is missed
/// only if this task sleeps a whole meter period.
async fn record_frames(
    mut meters: MeterReceiver,
    frames: Arc<Mutex<Frames>>,
    cancel: CancellationToken,
) {
    loop {
        let batch = tokio::select! {
            _ = cancel.cancelled() => return,
            b = meters.recv() => b,
        };
        let mut f = frames.lock().unwrap_or_else(|e| e.into_inner());
        for s in batch {
            f.entry(((*s.device).clone(), s.subject))
                .or_default()
                .push(s.at);
        }
    }
}

fn frame_count(frames: &Mutex<Frames>) -> usize {
    frames
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .map(Vec::len)
        .sum()
}

/// One cut's latency to both end points, and whether another command was written to its
/// DSP between the frame and the cut (the cut then shared the link: queued behind it on the
/// actor, or it behind the cut).
struct Cut {
    written_us: f64,
    /// `None` when the simulator's line could not be paired with the write.
    received_us: Option<f64>,
    shared: bool,
    /// Among them a read (`get`).
    behind_read: bool,
    /// Frame → tap → decided → handed to the lane → written, in µs, when the probe
    /// saw the cut decided by a frame.
    stages: Option<[f64; 4]>,
}

fn us(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).as_seconds_f64() * 1e6
}

/// Each written cut's latency from the frame that decided it.
fn cuts(
    p: &Params,
    written: &[Written],
    received: &[Received],
    stamps: &[CutStamp],
    frames: &Frames,
    start: DateTime<Utc>,
) -> (Vec<Cut>, usize) {
    // The k-th `set level` written to a DSP is the k-th it received (one session, in order).
    let mut received_sets: HashMap<usize, Vec<&Received>> = HashMap::new();
    for r in received.iter().filter(|r| r.set.is_some()) {
        received_sets.entry(r.dsp).or_default().push(r);
    }
    let mut sets_written: HashMap<usize, usize> = HashMap::new();
    // The probe's stamps per (DSP, channel), in the order they were handed to the lane.
    let mut by_zone: HashMap<(DeviceId, String), Vec<&CutStamp>> = HashMap::new();
    for s in stamps {
        by_zone
            .entry((s.device.clone(), s.zone.clone()))
            .or_default()
            .push(s);
    }
    let mut used: HashMap<(DeviceId, String), usize> = HashMap::new();
    let mut level: HashMap<(usize, usize), f64> = HashMap::new();
    let mut out = Vec::new();
    let mut unmatched = 0;
    for (n, w) in written.iter().enumerate() {
        let Some((index, db)) = w.set else { continue };
        let k = sets_written.entry(w.dsp).or_default();
        let received_at = received_sets
            .get(&w.dsp)
            .and_then(|v| v.get(*k))
            .filter(|r| r.set == w.set)
            .map(|r| r.at);
        *k += 1;
        let key = (device_id(w.dsp), format!("z{index}"));
        // The stamp of this command: the first not yet used, handed before the write, of the
        // same level (one command per zone in flight, so they come in order).
        let stamp = by_zone.get(&key).and_then(|v| {
            let from = used.get(&key).copied().unwrap_or(0);
            let i = v[from..]
                .iter()
                .position(|s| s.db == db && s.handed_at <= w.at)?;
            used.insert(key.clone(), from + i + 1);
            Some(v[from + i])
        });
        let before = level.insert((w.dsp, index), db).unwrap_or(SET_LEVEL_DB);
        if db >= before || w.at < start || index == 0 || index > p.zones {
            continue;
        }
        let decided_by_frame = stamp.filter(|s| s.taken_at.is_some());
        let frame = match decided_by_frame {
            Some(s) => Some(s.input_at),
            None => {
                let subject = (device_id(w.dsp), Subject::zone(&format!("z{index}")));
                let ats = frames.get(&subject);
                let i = ats.map_or(0, |ats| ats.partition_point(|at| *at <= w.at));
                i.checked_sub(1)
                    .and_then(|i| ats.and_then(|ats| ats.get(i)))
                    .copied()
            }
        };
        let Some(frame) = frame else {
            unmatched += 1;
            continue;
        };
        // Writes are pushed in completion order per DSP (one link each).
        let (mut shared, mut behind_read) = (false, false);
        for o in written[..n]
            .iter()
            .rev()
            .take_while(|o| o.at > frame)
            .filter(|o| o.dsp == w.dsp)
        {
            shared = true;
            behind_read |= o.read;
        }
        let stages = decided_by_frame.and_then(|s| {
            let taken = s.taken_at?;
            Some([
                us(s.input_at, taken),
                us(taken, s.decided_at),
                us(s.decided_at, s.handed_at),
                us(s.handed_at, w.at),
            ])
        });
        out.push(Cut {
            written_us: us(frame, w.at),
            received_us: received_at.map(|r| us(frame, r)),
            shared,
            behind_read,
            stages,
        });
    }
    (out, unmatched)
}
