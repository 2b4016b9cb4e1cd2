//! The cost of one `EventBus::emit`, the call every typed event goes through:
//! a meter event (TRACE, filtered out at the daemon's INFO level, thousands a second in a
//! metering building) and a link-down event (WARN, written). The subscriber is the daemon's:
//! `fmt` with an `info` filter, here writing to a sink. No bus subscriber, so the figure is the
//! log line, the metric and the event allocation, not the wake-up of a receiver.
//! Results and how to run: `docs/benchmarks.md`.

use std::time::Duration;

use avwarden::events::{EventBus, EventKind};
use avwarden::metrics::Metrics;
use avwarden::model::{DeviceId, RoomId};
use chrono::{TimeZone, Utc};
use criterion::{black_box, criterion_group, criterion_main, Criterion};

fn emit(c: &mut Criterion) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_writer(std::io::sink)
        .try_init();
    let metrics = Metrics::new();
    let bus = EventBus::new(metrics.clone());
    let at = Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0).unwrap();
    let device = DeviceId::new("dev-0001");
    let room = RoomId::new("room-0001");
    let mut g = c.benchmark_group("emit");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    let meters = std::cell::Cell::new(0u64);
    g.bench_function("meter_filtered", |b| {
        b.iter(|| {
            meters.set(meters.get() + 1);
            bus.emit(
                at,
                EventKind::Meter {
                    device: device.clone(),
                    room: room.clone(),
                    channel: "ch.1.audio".to_owned(),
                    dbfs: black_box(-23.4),
                },
            )
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
            )
        })
    });
    g.finish();
    // Each emit counted its event (as many as ran: a name filter may skip a bench).
    assert_eq!(
        metrics.get("avwarden_events_total", Some(("event", "meter"))),
        meters.get() as f64
    );
}

criterion_group!(benches, emit);
criterion_main!(benches);
