//! The cost of the runtime's two publication paths:
//! - `EventBus::emit`, the call every typed event goes through: a link-down event (WARN,
//!   written by the daemon's `fmt` subscriber with an `info` filter, here to a sink) with the
//!   logbook's sink attached, so the figure is the log line, the metric, the event allocation
//!   and the offer to a sink;
//! - a meter sample on the meter stream (`MeterHub::publish`) with one consumer, the level
//!   watch's place: thousands a second in a metering building.
//!
//! Results and how to run: `docs/benchmarks.md`.

use std::time::Duration;

use avwarden::events::{EventBus, EventFilter, EventKind};
use avwarden::meter::stream::MeterSample;
use avwarden::metrics::Metrics;
use avwarden::model::{DeviceId, RoomId, Subject};
use chrono::{TimeZone, Utc};
use criterion::{black_box, criterion_group, criterion_main, Criterion};

fn emit(c: &mut Criterion) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_writer(std::io::sink)
        .try_init();
    let metrics = Metrics::new();
    let bus = EventBus::new(metrics.clone());
    let mut logbook = bus.sink("logbook", EventFilter::logbook(), 1 << 20);
    let at = Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0).unwrap();
    let device = DeviceId::new("dev-0001");
    let room = RoomId::new("room-0001");
    let mut g = c.benchmark_group("emit");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    let mut meter = bus.meters().subscribe("level watch");
    let published = std::cell::Cell::new(0u64);
    g.bench_function("meter_sample", |b| {
        let sample = MeterSample {
            device: std::sync::Arc::new(device.clone()),
            subject: Subject::Channel(1),
            dbfs: -23.4,
            at,
        };
        b.iter(|| {
            published.set(published.get() + 1);
            bus.meters().publish(black_box(&sample));
        })
    });
    g.bench_function("link_down_logged", |b| {
        b.iter(|| {
            bus.emit(
                at,
                EventKind::LinkDown {
                    device: device.clone(),
                    room: room.clone(),
                    reason: "connection refused".to_owned(),
                    retry_in_ms: black_box(2000),
                },
            );
            while logbook.try_recv().is_ok() {}
        })
    });
    g.finish();
    // The consumer holds the newest sample, once (as many as ran: a name filter may skip).
    let held = meter.try_recv();
    assert_eq!(held.len(), usize::from(published.get() > 0));
}

criterion_group!(benches, emit);
criterion_main!(benches);
