//! Records benchmarks: append throughput through the writer (acknowledged, with group commit,
//! at several levels of concurrency; and unacknowledged, as bus events arrive), export rows per
//! second on a million entries, and the peak memory an export of a million entries adds.
//!
//! `cargo bench --bench records`. Figures and the machine they came from: docs/benchmarks.md.

use std::path::Path;
use std::time::Duration;

use avwarden::clock::Clock;
use avwarden::events::{EventBus, EventKind};
use avwarden::metrics::Metrics;
use avwarden::model::{DeviceId, Health, RoomId};
use avwarden::records::export::{self, Filter, Format};
use avwarden::records::store::{self, Op};
use avwarden::records::writer::writer;
use avwarden::records::{Actor, NewEntry, Store, StoreOptions, WriterConfig};
use chrono::TimeZone;
use criterion::{BenchmarkId, Criterion, Throughput};
use tokio_util::sync::CancellationToken;

/// A million entries under `cargo bench`; a few thousand when `cargo test --benches` runs each
/// benchmark once to see that it works (criterion's test mode: no `--bench` argument).
fn export_rows() -> u64 {
    if std::env::args().any(|a| a == "--bench") {
        1_000_000
    } else {
        5_000
    }
}

fn entry(i: u64) -> NewEntry {
    NewEntry::new(
        chrono::Utc.with_ymd_and_hms(2026, 11, 2, 8, 0, 0).unwrap()
            + chrono::Duration::seconds(i as i64),
        "health_changed",
        Actor::System,
        format!("proj-{}: ok -> degraded, 会议室 {}", i % 50, i % 20),
    )
    .room(format!("r-{}", i % 20))
    .device(format!("proj-{}", i % 50))
    .data(serde_json::json!({ "from": "ok", "to": "degraded", "i": i }))
}

fn bench_append(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("append");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    const PER_ITER: u64 = 2_000;
    group.throughput(Throughput::Elements(PER_ITER));
    for appenders in [1u64, 16, 64] {
        let db = dir.path().join(format!("acked-{appenders}.db"));
        let bus = EventBus::new(Metrics::new());
        let rx = bus.sink("logbook", avwarden::events::EventFilter::logbook(), 4096);
        let (handle, task) = writer(WriterConfig::new(&db), rx, bus.clone(), Clock::system());
        let cancel = CancellationToken::new();
        let join = rt.spawn(task.run(cancel.clone()));
        group.bench_function(
            BenchmarkId::new("acknowledged", format!("{appenders} appenders")),
            |b| {
                b.iter(|| {
                    let handle = handle.clone();
                    rt.block_on(async move {
                        let mut tasks = Vec::new();
                        for a in 0..appenders {
                            let handle = handle.clone();
                            tasks.push(tokio_util::task::TaskTracker::new().spawn(async move {
                                for i in 0..PER_ITER / appenders {
                                    handle.append(entry(a * PER_ITER + i)).await.unwrap();
                                }
                            }));
                        }
                        for t in tasks {
                            t.await.unwrap();
                        }
                    })
                })
            },
        );
        let commits = bus.metrics().get("avwarden_logbook_commits_total", None);
        let entries = bus.metrics().get("avwarden_logbook_entries_total", None);
        eprintln!(
            "append/acknowledged/{appenders}: {:.1} entries per commit",
            entries / commits.max(1.0)
        );
        cancel.cancel();
        rt.block_on(join).unwrap();
    }
    // Events from the bus: no acknowledgement, batches fill up to max_batch.
    let db = dir.path().join("events.db");
    let bus = EventBus::new(Metrics::new());
    let rx = bus.sink("logbook", avwarden::events::EventFilter::logbook(), 8192);
    let (handle, task) = writer(WriterConfig::new(&db), rx, bus.clone(), Clock::system());
    let cancel = CancellationToken::new();
    let join = rt.spawn(task.run(cancel.clone()));
    // 2000 events per iteration stay under the channel's capacity: nothing is dropped
    // (asserted below), so this measures writing, not dropping.
    group.bench_function(BenchmarkId::new("bus events", "2000 then flush"), |b| {
        b.iter(|| {
            let (bus, handle) = (bus.clone(), handle.clone());
            rt.block_on(async move {
                for i in 0..PER_ITER {
                    let kind = EventKind::HealthChanged {
                        device: DeviceId::new(format!("proj-{}", i % 50)),
                        room: RoomId::new(format!("r-{}", i % 20)),
                        from: Health::Ok,
                        to: Health::Degraded,
                    };
                    bus.emit(
                        chrono::Utc.with_ymd_and_hms(2026, 11, 2, 8, 0, 0).unwrap(),
                        kind,
                    );
                }
                handle.flush().await.unwrap();
            })
        })
    });
    assert_eq!(
        bus.metrics().get("avwarden_logbook_dropped_total", None),
        0.0
    );
    cancel.cancel();
    rt.block_on(join).unwrap();
    group.finish();
}

fn fill(db: &Path) {
    let mut store = Store::open(db, &StoreOptions::default()).unwrap();
    let batch = 5_000;
    for chunk in 0..export_rows() / batch {
        let ops: Vec<Op> = (chunk * batch..(chunk + 1) * batch)
            .map(|i| Op::Append(entry(i)))
            .collect();
        store.apply(&ops).unwrap();
    }
}

fn bench_export(c: &mut Criterion, db: &Path) {
    let mut group = c.benchmark_group("export");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(30));
    group.throughput(Throughput::Elements(export_rows()));
    for (name, format) in [("csv", Format::Csv), ("jsonl", Format::Jsonl)] {
        group.bench_function(
            BenchmarkId::new(name, format!("{} entries", export_rows())),
            |b| {
                b.iter(|| {
                    let conn = store::open_reader(db).unwrap();
                    let mut sink = std::io::sink();
                    let n = export::export(&conn, &Filter::default(), format, false, &mut sink)
                        .unwrap();
                    assert_eq!(n, export_rows());
                })
            },
        );
    }
    group.finish();
}

fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Peak resident memory added by one export of all entries: reset the high-water mark
/// (Linux: `5` to /proc/self/clear_refs), export, read it again.
fn export_peak_memory(db: &Path) {
    for (name, format) in [("csv", Format::Csv), ("jsonl", Format::Jsonl)] {
        if std::fs::write("/proc/self/clear_refs", "5").is_err() {
            eprintln!("export peak memory: cannot reset VmHWM on this system");
            return;
        }
        let before = status_kib("VmRSS:");
        let conn = store::open_reader(db).unwrap();
        let out = std::fs::File::create("/dev/null").unwrap();
        let mut out = std::io::BufWriter::new(out);
        export::export(&conn, &Filter::default(), format, false, &mut out).unwrap();
        drop(conn);
        let peak = status_kib("VmHWM:");
        eprintln!(
            "export/{name}/{} entries: peak RSS {peak} KiB, {} KiB above the {before} KiB before it",
            export_rows(),
            peak.saturating_sub(before)
        );
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench_append(&mut c);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("export.db");
    fill(&db);
    bench_export(&mut c, &db);
    export_peak_memory(&db);
    c.final_summary();
}
