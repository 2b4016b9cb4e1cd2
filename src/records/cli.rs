//! The `avwarden logbook …` and `avwarden report …` commands (clap derive types, mounted by
//! `main.rs` with the store's path).
//!
//! Owns argument parsing and what each command prints. Reading commands (verify, export,
//! equipment, report) open the store read-only and may run beside the daemon. `logbook add`
//! writes through the same transaction code as the daemon's writer and re-reads the chain head
//! under the write lock, so it is safe while the daemon runs (the API is the preferred way
//! then: it also tells the rest of the daemon). Must not hold business rules: those live in
//! the records modules.
//!
//! `run` is blocking: call it outside a tokio runtime (or inside `spawn_blocking`).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use clap::{Args, Subcommand, ValueEnum};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::export::{self, Filter};
use super::logbook::{self, NewEntry};
use super::report::{self, Month};
use super::store::{self, Op, Store, StoreOptions};
use super::writer::{writer, WriterConfig};
use super::{archive, format_time, Actor, Maintenance, MaintenanceAction, StoreError};
use crate::clock::Clock;
use crate::events::EventBus;
use crate::metrics::Metrics;
use crate::model::{DeviceId, RoomId};

/// How a command ended when it did not fail outright.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Success,
    /// The command ran and found a problem (a broken chain): exit code 1.
    Problem,
}

impl From<Status> for std::process::ExitCode {
    fn from(s: Status) -> Self {
        match s {
            Status::Success => std::process::ExitCode::SUCCESS,
            Status::Problem => std::process::ExitCode::from(1),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    Csv,
    Jsonl,
}

#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    /// Entries at or after this time: RFC 3339, or YYYY-MM-DD (midnight in --tz).
    #[arg(long)]
    pub from: Option<String>,
    /// Entries before this time (same forms as --from).
    #[arg(long)]
    pub to: Option<String>,
    /// Only this room (repeat for several).
    #[arg(long)]
    pub room: Vec<String>,
    /// Only this device (repeat for several).
    #[arg(long)]
    pub device: Vec<String>,
    /// Only this kind of entry, e.g. fault_raised, maintenance (repeat for several).
    #[arg(long)]
    pub kind: Vec<String>,
    #[arg(long, value_enum, default_value = "csv")]
    pub format: ExportFormat,
    /// Start a CSV file with the UTF-8 byte order mark (Excel needs it to read Chinese text).
    #[arg(long)]
    pub bom: bool,
    /// Time zone for date-only --from/--to.
    #[arg(long, default_value = "UTC")]
    pub tz: String,
    /// Write here instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ActionArg {
    LampReplaced,
    FilterCleaned,
    FilterReplaced,
    BatteriesReplaced,
    RepairDone,
    Other,
}

#[derive(Debug, Clone, Args)]
pub struct AddArgs {
    /// The device worked on (its id in the site config).
    #[arg(long)]
    pub device: String,
    #[arg(long, value_enum)]
    pub action: ActionArg,
    /// Who did the work.
    #[arg(long)]
    pub by: String,
    /// When the work was done (RFC 3339, or YYYY-MM-DD[ HH:MM] in --tz); default now.
    #[arg(long)]
    pub at: Option<String>,
    /// Lamp number (lamp-replaced).
    #[arg(long, default_value_t = 1)]
    pub lamp: u8,
    /// Receiver channel whose transmitter got batteries (batteries-replaced); all if absent.
    #[arg(long)]
    pub channel: Option<u16>,
    /// Number of batteries (batteries-replaced).
    #[arg(long, default_value_t = 1)]
    pub count: u32,
    /// Fault code the repair resolves (repair-done).
    #[arg(long)]
    pub fault: Option<String>,
    /// Component of that fault, e.g. "lamp 1" (repair-done).
    #[arg(long)]
    pub component: Option<String>,
    /// What was done (other).
    #[arg(long)]
    pub what: Option<String>,
    #[arg(long, default_value = "")]
    pub note: String,
    /// Room, when the archive does not know the device's room.
    #[arg(long)]
    pub room: Option<String>,
    #[arg(long, default_value = "UTC")]
    pub tz: String,
}

#[derive(Debug, Clone, Subcommand)]
pub enum LogbookCommand {
    /// Walk the hash chain: print the head, or name the first broken entry (exit code 1).
    Verify,
    /// Export entries as CSV or JSON Lines, streamed.
    Export(ExportArgs),
    /// Record a maintenance entry: lamp replaced, filter cleaned, batteries replaced, repair done.
    Add(AddArgs),
    /// Show the equipment archive.
    Equipment {
        /// Only this device.
        #[arg(long)]
        device: Option<String>,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Append entries as fast as possible through the writer, printing `ack <seq>` after each
    /// acknowledgement (crash-safety tests and benchmarks).
    #[command(hide = true)]
    StressAppend {
        /// Concurrent appenders.
        #[arg(long, default_value_t = 8)]
        writers: usize,
        /// Stop after this many acknowledged entries (default: until killed).
        #[arg(long)]
        count: Option<u64>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Html,
    Csv,
    /// One row per fault incident.
    IncidentsCsv,
    /// One row per playbook alert, with its class and time to acknowledge.
    AlertsCsv,
    /// Everything, as one JSON document.
    Json,
}

#[derive(Debug, Clone, Subcommand)]
pub enum ReportCommand {
    /// The monthly maintenance report (due by the 30th).
    Monthly {
        /// The month, YYYY-MM.
        #[arg(long)]
        month: String,
        #[arg(long, value_enum, default_value = "html")]
        format: ReportFormat,
        /// The site's time zone: month boundaries and the "same day" deadline.
        #[arg(long, default_value = "UTC")]
        tz: String,
        /// Write here instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn parse_tz(s: &str) -> anyhow::Result<Tz> {
    s.parse::<Tz>().map_err(|_| {
        anyhow::anyhow!("unknown time zone {s:?} (use an IANA name like Asia/Shanghai)")
    })
}

/// RFC 3339, or a local date / date and time in `tz`.
pub fn parse_time(s: &str, tz: Tz) -> anyhow::Result<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let local = if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        d.and_hms_opt(0, 0, 0)
    } else {
        [
            "%Y-%m-%d %H:%M:%S",
            "%Y-%m-%d %H:%M",
            "%Y-%m-%dT%H:%M:%S",
            "%Y-%m-%dT%H:%M",
        ]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
    };
    let local = local.ok_or_else(|| {
        anyhow::anyhow!("{s:?} is not a time (RFC 3339, YYYY-MM-DD or YYYY-MM-DD HH:MM)")
    })?;
    tz.from_local_datetime(&local)
        .earliest()
        .map(|t| t.with_timezone(&Utc))
        .ok_or_else(|| anyhow::anyhow!("{s:?} does not exist in {tz}"))
}

/// Write to `--out` when given, else to the caller's writer.
fn with_output<T>(
    path: Option<&Path>,
    out: &mut dyn Write,
    f: impl FnOnce(&mut dyn Write) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    match path {
        Some(p) => {
            let file = File::create(p).with_context(|| format!("cannot create {}", p.display()))?;
            let mut w = BufWriter::new(file);
            let r = f(&mut w)?;
            w.flush()
                .with_context(|| format!("cannot write {}", p.display()))?;
            Ok(r)
        }
        None => f(out),
    }
}

impl LogbookCommand {
    pub fn run(self, db: &Path, out: &mut dyn Write) -> anyhow::Result<Status> {
        match self {
            LogbookCommand::Verify => {
                let conn = store::open_reader(db)?;
                let r = logbook::verify(&conn)?;
                match (&r.broken, &r.head) {
                    (Some(b), _) => {
                        writeln!(out, "logbook broken: {b}")?;
                        Ok(Status::Problem)
                    }
                    (None, Some(h)) => {
                        writeln!(
                            out,
                            "logbook ok: {} entries, head {} {}",
                            r.checked,
                            h.seq,
                            hex::encode(h.hash)
                        )?;
                        Ok(Status::Success)
                    }
                    (None, None) => {
                        writeln!(out, "logbook ok: empty")?;
                        Ok(Status::Success)
                    }
                }
            }
            LogbookCommand::Export(a) => {
                let tz = parse_tz(&a.tz)?;
                let filter = Filter {
                    from: a.from.as_deref().map(|s| parse_time(s, tz)).transpose()?,
                    to: a.to.as_deref().map(|s| parse_time(s, tz)).transpose()?,
                    rooms: a.room,
                    devices: a.device,
                    kinds: a.kind,
                };
                let format = match a.format {
                    ExportFormat::Csv => export::Format::Csv,
                    ExportFormat::Jsonl => export::Format::Jsonl,
                };
                let conn = store::open_reader(db)?;
                let n = with_output(a.out.as_deref(), out, |w| {
                    Ok(export::export(&conn, &filter, format, a.bom, w)?)
                })?;
                if let Some(p) = &a.out {
                    writeln!(out, "exported {n} entries to {}", p.display())?;
                }
                Ok(Status::Success)
            }
            LogbookCommand::Add(a) => {
                let tz = parse_tz(&a.tz)?;
                let at = match &a.at {
                    Some(s) => parse_time(s, tz)?,
                    None => Clock::system().now(),
                };
                let action = match a.action {
                    ActionArg::LampReplaced => MaintenanceAction::LampReplaced { lamp: a.lamp },
                    ActionArg::FilterCleaned => MaintenanceAction::FilterCleaned,
                    ActionArg::FilterReplaced => MaintenanceAction::FilterReplaced,
                    ActionArg::BatteriesReplaced => MaintenanceAction::BatteriesReplaced {
                        channel: a.channel,
                        count: a.count,
                    },
                    ActionArg::RepairDone => MaintenanceAction::RepairDone {
                        fault: a.fault,
                        component: a.component,
                    },
                    ActionArg::Other => MaintenanceAction::Other {
                        what: a
                            .what
                            .ok_or_else(|| anyhow::anyhow!("--action other needs --what"))?,
                    },
                };
                if !db.exists() {
                    return Err(StoreError::Missing(db.display().to_string()).into());
                }
                let mut store = Store::open(db, &StoreOptions::default())?;
                let m = Maintenance {
                    device: DeviceId::new(a.device),
                    room: a.room.map(RoomId::new),
                    at,
                    by: a.by,
                    action,
                    note: a.note,
                };
                let mut res = store.apply(&[Op::Maintenance(m)])?;
                let applied = res.pop().unwrap_or(Err(StoreError::Stopped))?;
                let seq = applied.seqs.first().copied().unwrap_or_default();
                writeln!(out, "recorded entry {seq}")?;
                Ok(Status::Success)
            }
            LogbookCommand::Equipment { device, json } => {
                let conn = store::open_reader(db)?;
                let records = match &device {
                    Some(d) => archive::get(&conn, d)?
                        .map(|r| vec![r])
                        .ok_or_else(|| anyhow::anyhow!("device {d} is not in the archive"))?,
                    None => archive::list(&conn)?,
                };
                if json {
                    serde_json::to_writer_pretty(&mut *out, &records)?;
                    writeln!(out)?;
                } else {
                    for r in &records {
                        print_record(out, r)?;
                    }
                }
                Ok(Status::Success)
            }
            LogbookCommand::StressAppend { writers, count } => {
                stress_append(db, writers, count, out)
            }
        }
    }
}

fn print_record(out: &mut dyn Write, r: &archive::EquipmentRecord) -> std::io::Result<()> {
    let o = |v: Option<&str>| v.unwrap_or("-").to_owned();
    writeln!(out, "{} (room {})", r.device, o(r.room.as_deref()))?;
    writeln!(
        out,
        "  {} {} serial {} firmware {}",
        o(r.manufacturer()),
        o(r.model()),
        o(r.identity.serial.as_deref()),
        o(r.identity.firmware.as_deref())
    )?;
    writeln!(out, "  function: {}", o(r.function()))?;
    let f = &r.fields;
    for (k, v) in [
        ("location", &f.location),
        ("storage location", &f.storage_location),
        ("installed", &f.install_date),
        ("supplier", &f.supplier),
        ("warranty until", &f.warranty_end),
        ("service contract", &f.service_contract),
        ("operation", &f.operation_notes),
        ("maintenance", &f.maintenance_notes),
    ] {
        if let Some(v) = v {
            writeln!(out, "  {k}: {v}")?;
        }
    }
    for (k, v) in &r.identity.extra {
        writeln!(out, "  {k}: {v}")?;
    }
    for c in &r.counters {
        writeln!(
            out,
            "  counter {}: {} (since service {})",
            c.name,
            c.value,
            c.since_service()
        )?;
    }
    writeln!(
        out,
        "  first seen {}, updated {}",
        format_time(r.first_seen),
        format_time(r.updated)
    )
}

fn stress_append(
    db: &Path,
    writers: usize,
    count: Option<u64>,
    out: &mut dyn Write,
) -> anyhow::Result<Status> {
    // A benchmark and crash-test tool: it must never add junk to a real logbook.
    if db.exists() {
        let conn = crate::records::store::open_reader(db)?;
        let real: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM logbook WHERE kind <> 'stress'",
                [],
                |r| r.get(0),
            )
            .unwrap_or(0);
        if real > 0 {
            anyhow::bail!(
                "{} holds {real} real logbook entries; stress-append only writes to a new or stress-only store",
                db.display()
            );
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let clock = Clock::system();
        let bus = EventBus::new(Metrics::new());
        // The CLI's writer takes requests only: no device events reach this bus.
        let events = bus.sink(
            "logbook",
            crate::events::EventFilter::matching(|_| false),
            1,
        );
        let (handle, task) = writer(WriterConfig::new(db), events, bus, clock);
        let cancel = CancellationToken::new();
        let tasks = tokio_util::task::TaskTracker::new();
        let writer_done = tasks.spawn(task.run(cancel.clone()));
        let (acks_tx, mut acks) = mpsc::channel::<u64>(1024);
        for w in 0..writers.max(1) {
            let handle = handle.clone();
            let acks_tx = acks_tx.clone();
            tasks.spawn(async move {
                for i in 0u64.. {
                    let e = NewEntry::new(
                        clock.now(),
                        "stress",
                        Actor::System,
                        format!("stress {w} {i}"),
                    )
                    .data(serde_json::json!({ "writer": w, "i": i }));
                    match handle.append(e).await {
                        Ok(seq) => {
                            if acks_tx.send(seq).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::error!(%e, "stress append failed");
                            return;
                        }
                    }
                }
            });
        }
        drop(acks_tx);
        let mut n = 0u64;
        while let Some(seq) = acks.recv().await {
            // Printed strictly after the commit was acknowledged.
            writeln!(out, "ack {seq}")?;
            out.flush()?;
            n += 1;
            if count.is_some_and(|c| n >= c) {
                break;
            }
        }
        drop(acks);
        cancel.cancel();
        let _ = writer_done.await;
        anyhow::Ok(())
    })?;
    Ok(Status::Success)
}

/// `avwarden backup --to FILE`: a verified online copy of the store (see [`store::backup`]).
/// Prints one line; a copy that fails its checks is not kept and ends with exit code 1.
pub fn backup(db: &Path, to: &Path, out: &mut dyn Write) -> anyhow::Result<Status> {
    match store::backup(db, to) {
        Ok(r) => {
            let last = r
                .last_seq
                .map_or_else(|| "none".to_owned(), |s| s.to_string());
            writeln!(
                out,
                "backup ok: {} entries, last seq {last}, {} bytes, verified (integrity check and chain) -> {}",
                r.entries,
                r.bytes,
                to.display()
            )?;
            Ok(Status::Success)
        }
        Err(e @ StoreError::Corrupt(_)) => {
            writeln!(out, "backup failed verification, not kept: {e}")?;
            Ok(Status::Problem)
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("back up {}", db.display()))),
    }
}

impl ReportCommand {
    pub fn run(self, db: &Path, out: &mut dyn Write) -> anyhow::Result<Status> {
        match self {
            ReportCommand::Monthly {
                month,
                format,
                tz,
                out: path,
            } => {
                let month = Month::parse(&month).map_err(anyhow::Error::msg)?;
                let tz = parse_tz(&tz)?;
                let conn = store::open_reader(db)?;
                let r = report::monthly(&conn, month, tz)?;
                with_output(path.as_deref(), out, |w| {
                    match format {
                        ReportFormat::Html => report::write_html(&r, w)?,
                        ReportFormat::Csv => report::write_csv(&r, w)?,
                        ReportFormat::IncidentsCsv => report::write_incidents_csv(&r, w)?,
                        ReportFormat::AlertsCsv => report::write_alerts_csv(&r, w)?,
                        ReportFormat::Json => report::write_json(&r, w)?,
                    }
                    Ok(())
                })?;
                Ok(Status::Success)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Top,
    }

    #[derive(Subcommand)]
    enum Top {
        #[command(subcommand)]
        Logbook(LogbookCommand),
        #[command(subcommand)]
        Report(ReportCommand),
    }

    #[test]
    fn commands_parse() {
        let c = Cli::try_parse_from([
            "avwarden",
            "logbook",
            "export",
            "--from",
            "2026-11-01",
            "--to",
            "2026-12-01",
            "--format",
            "csv",
            "--bom",
            "--room",
            "r-301",
            "--kind",
            "fault_raised",
        ])
        .unwrap();
        assert!(matches!(
            c.cmd,
            Top::Logbook(LogbookCommand::Export(ExportArgs { bom: true, .. }))
        ));
        let c = Cli::try_parse_from([
            "avwarden",
            "logbook",
            "add",
            "--device",
            "proj-1",
            "--action",
            "lamp-replaced",
            "--by",
            "李伟",
        ])
        .unwrap();
        assert!(matches!(
            c.cmd,
            Top::Logbook(LogbookCommand::Add(AddArgs { lamp: 1, .. }))
        ));
        let c =
            Cli::try_parse_from(["avwarden", "report", "monthly", "--month", "2026-11"]).unwrap();
        assert!(matches!(
            c.cmd,
            Top::Report(ReportCommand::Monthly {
                format: ReportFormat::Html,
                ..
            })
        ));
        assert!(
            Cli::try_parse_from(["avwarden", "logbook", "stress-append", "--writers", "4"]).is_ok()
        );
    }

    #[test]
    fn times_parse_in_the_zone() {
        let tz: Tz = "Asia/Shanghai".parse().unwrap();
        assert_eq!(
            parse_time("2026-11-01", tz).unwrap(),
            Utc.with_ymd_and_hms(2026, 10, 31, 16, 0, 0).unwrap()
        );
        assert_eq!(
            parse_time("2026-11-01T08:00:00+08:00", chrono_tz::UTC).unwrap(),
            Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap()
        );
        assert_eq!(
            parse_time("2026-11-01 09:30", tz).unwrap(),
            Utc.with_ymd_and_hms(2026, 11, 1, 1, 30, 0).unwrap()
        );
        let e = parse_time("yesterday", tz).unwrap_err().to_string();
        assert!(e.contains("not a time"), "{e}");
    }
}
