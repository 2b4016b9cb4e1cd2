//! The level watch's decision cost: one controller step per meter sample, the pure part of
//! the path from a meter frame to a gain command (no I/O, no tokio).
//!
//! - `decide/calm_sample`: a sample inside the limits (the common case: history kept, the
//!   sustained average and the feedback slope computed, nothing to do);
//! - `decide/breach_sample`: a sample that trims (the action built);
//! - `decide/frame_1000_channels`: one 20 fps frame of 1,000 metered zones in 50 DSPs of 20,
//!   i.e. what the level watch computes every 50 ms at the target load.
//!
//! Results and how to run: `docs/benchmarks.md`.

use std::time::Duration;

use avwarden::levelwatch::controller::{Action, Controller, Input, ZoneSpec};
use avwarden::levelwatch::policy::Protection;
use chrono::{DateTime, TimeDelta, Utc};
use criterion::{black_box, criterion_group, criterion_main, Criterion};

const PERIOD: Duration = Duration::from_millis(50);

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default()
}

fn dsp(zones: usize) -> Controller {
    let specs = (0..zones)
        .map(|i| ZoneSpec {
            id: format!("z{i}"),
            policy: Protection::default(),
            min_db: -100.0,
            meter_period: PERIOD,
        })
        .collect();
    let mut c = Controller::new(specs, Vec::new(), t0());
    let mut out = Vec::new();
    for zone in 0..zones {
        c.step(Input::ZoneLevel { zone, db: -10.0 }, t0(), &mut out);
    }
    c
}

/// Speech-like level of zone `z` at frame `f`: moves, never breaches.
fn calm(z: usize, f: u64) -> f64 {
    -30.0 + ((z as u64 * 7 + f * 13) % 17) as f64 * 0.5
}

fn decide(c: &mut Criterion) {
    let mut g = c.benchmark_group("decide");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    let step = TimeDelta::from_std(PERIOD).unwrap_or_default();

    let mut one = dsp(1);
    let mut frame = 0u64;
    let mut out: Vec<Action> = Vec::with_capacity(8);
    g.bench_function("calm_sample", |b| {
        b.iter(|| {
            frame += 1;
            out.clear();
            one.step(
                Input::ZoneMeter {
                    zone: 0,
                    dbfs: black_box(calm(0, frame)),
                },
                t0() + step * frame as i32,
                &mut out,
            );
        })
    });

    g.bench_function("breach_sample", |b| {
        b.iter_batched(
            || {
                // Two frames over the limit already: the next one is the breach.
                let mut c = dsp(1);
                let mut out = Vec::new();
                for f in 1..3 {
                    c.step(
                        Input::ZoneMeter {
                            zone: 0,
                            dbfs: -1.0,
                        },
                        t0() + step * f,
                        &mut out,
                    );
                }
                c
            },
            |mut c| {
                let mut out = Vec::with_capacity(8);
                c.step(
                    Input::ZoneMeter {
                        zone: 0,
                        dbfs: black_box(-1.0),
                    },
                    t0() + step * 3,
                    &mut out,
                );
                assert!(matches!(out[0], Action::SetLevel { .. }));
                out
            },
            criterion::BatchSize::SmallInput,
        )
    });

    let mut dsps: Vec<Controller> = (0..50).map(|_| dsp(20)).collect();
    let mut frame = 0u64;
    g.bench_function("frame_1000_channels", |b| {
        b.iter(|| {
            frame += 1;
            let now = t0() + step * frame as i32;
            for (d, c) in dsps.iter_mut().enumerate() {
                for zone in 0..20 {
                    out.clear();
                    c.step(
                        Input::ZoneMeter {
                            zone,
                            dbfs: calm(d * 20 + zone, frame),
                        },
                        now,
                        &mut out,
                    );
                }
            }
        })
    });
    g.finish();
}

criterion_group!(benches, decide);
criterion_main!(benches);
