//! Records: the SQLite logbook, archive, exports and monthly report, against real files.
//!
//! Tests that need a separate process (kill -9, peak memory) re-run this test binary as the
//! child ([`child`] below), which runs the same clap commands `main.rs` mounts.

mod archive;
mod chain;
mod crash;
mod events;
mod export;
mod faults;
mod report;

use std::path::{Path, PathBuf};
use std::process::Command;

use avwarden::clock::Clock;
use avwarden::events::EventBus;
use avwarden::metrics::Metrics;
use avwarden::records::cli::{LogbookCommand, ReportCommand, Status};
use avwarden::records::writer::writer;
use avwarden::records::{LogbookHandle, WriterConfig};
use chrono::{DateTime, TimeZone, Utc};
use clap::Parser;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The commands as `main.rs` mounts them: `--db PATH logbook …` / `--db PATH report …`.
#[derive(Parser)]
struct Cli {
    #[arg(long)]
    db: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Subcommand)]
enum Cmd {
    #[command(subcommand)]
    Logbook(LogbookCommand),
    #[command(subcommand)]
    Report(ReportCommand),
}

fn run_cli(args: &[&str], out: &mut dyn std::io::Write) -> anyhow::Result<Status> {
    let cli = Cli::try_parse_from(std::iter::once("avwarden").chain(args.iter().copied()))?;
    match cli.cmd {
        Cmd::Logbook(c) => c.run(&cli.db, out),
        Cmd::Report(c) => c.run(&cli.db, out),
    }
}

/// Run a command in this process; returns its status and output.
pub fn cli(db: &Path, args: &[&str]) -> (Status, String) {
    let mut full = vec!["--db", db.to_str().expect("utf-8 path")];
    full.extend_from_slice(args);
    let mut out = Vec::new();
    let status = run_cli(&full, &mut out).unwrap_or_else(|e| panic!("{args:?} failed: {e:#}"));
    (status, String::from_utf8(out).expect("utf-8 output"))
}

const CHILD_ENV: &str = "AVWARDEN_RECORDS_CHILD";

/// The test binary itself, set to run only [`child`] with `args` as its command line.
pub fn child_command(args: &[String]) -> Command {
    let exe = std::env::current_exe().expect("test binary path");
    let mut c = Command::new(exe);
    c.args([
        "records::child",
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
        "--quiet",
    ])
    .env(CHILD_ENV, serde_json::to_string(args).expect("args"));
    c
}

/// Entry point of helper processes. Runs one command from `AVWARDEN_RECORDS_CHILD` (a JSON
/// list of arguments) with real stdout, then reports its peak memory on stderr.
#[test]
#[ignore = "helper process for other tests; does nothing unless started by them"]
fn child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let args: Vec<String> = serde_json::from_str(&spec).expect("child args");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let status = run_cli(&args, &mut out).expect("child command");
    assert_eq!(status, Status::Success);
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    if let Some(line) = status.lines().find(|l| l.starts_with("VmHWM:")) {
        eprintln!("{line}");
    }
}

/// Peak resident memory in bytes from a child's stderr (`VmHWM:  1234 kB`).
pub fn peak_rss(stderr: &str) -> u64 {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .unwrap_or_else(|| panic!("child reported no VmHWM; stderr: {stderr}"));
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmHWM number");
    kb * 1024
}

pub fn t(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
}

/// A running writer fed by a bus, as the daemon wires it.
pub struct Harness {
    pub handle: LogbookHandle,
    pub bus: EventBus,
    pub cancel: CancellationToken,
    pub join: JoinHandle<()>,
}

impl Harness {
    pub fn start(config: WriterConfig, clock: Clock) -> Harness {
        let bus = EventBus::new(Metrics::new());
        let rx = bus.sink("logbook", avwarden::events::EventFilter::logbook(), 4096);
        let (handle, task) = writer(config, rx, bus.clone(), clock);
        let cancel = CancellationToken::new();
        let join = crate::support::spawn(task.run(cancel.clone()));
        Harness {
            handle,
            bus,
            cancel,
            join,
        }
    }

    pub async fn stop(self) {
        self.cancel.cancel();
        self.join.await.expect("writer task");
    }
}
