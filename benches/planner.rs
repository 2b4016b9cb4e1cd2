//! The cost of planning a large site's day: 500 rooms × 20 bookings (10 000 bookings, 55 500
//! jobs), in the three shapes the scheduler task meets:
//! - `plan`: every job of every booking, in order (what the API's plan view would show);
//! - `due/day_ahead`: a call the day before, an hour before the first full test: nothing
//!   handled, nothing due, every job looked at;
//! - `due/midday`: a wake-up at noon with every earlier job handled (a set of keys, as the
//!   records database would answer it), the call the task makes at each `next_at`.
//!
//! Results and how to run: `docs/benchmarks.md`.

use std::collections::HashSet;
use std::time::Duration;

use avwarden::model::booking::{Booking, BookingId, BookingSource, BookingStatus, Needs};
use avwarden::model::RoomId;
use avwarden::schedule::plan::{due, plan, JobKey, PlanSettings};
use chrono::{DateTime, Duration as Span, TimeZone, Utc};
use chrono_tz::Europe::Berlin;
use criterion::{black_box, criterion_group, criterion_main, Criterion};

const ROOMS: usize = 500;
const PER_ROOM: usize = 20;

/// Back-to-back 25-minute meetings every 30 minutes from 08:00 local; every fifth important,
/// every third needing HVAC, so each kind of job is planned.
fn day(first: DateTime<Utc>) -> Vec<Booking> {
    let mut out = Vec::with_capacity(ROOMS * PER_ROOM);
    for r in 0..ROOMS {
        for n in 0..PER_ROOM {
            let start = first + Span::minutes(30 * n as i64);
            out.push(Booking {
                id: BookingId::new(format!("api-{r:03}-{n:02}")),
                room: RoomId::new(format!("room-{r:03}")),
                title: "meeting".into(),
                organiser: None,
                department: None,
                start,
                end: start + Span::minutes(25),
                attendees: 12,
                needs: Needs {
                    projection: true,
                    wireless_mics: 2,
                    hvac: n % 3 == 0,
                    ..Needs::default()
                },
                important: n % 5 == 0,
                confidential: false,
                status: BookingStatus::Confirmed,
                source: BookingSource::Api,
                source_uid: None,
            });
        }
    }
    out
}

fn planner(c: &mut Criterion) {
    let first = Berlin
        .with_ymd_and_hms(2026, 5, 4, 8, 0, 0)
        .single()
        .expect("an ordinary local time");
    let first = first.with_timezone(&Utc);
    let bookings = day(first);
    let settings = PlanSettings::default();
    let jobs = plan(&bookings, &settings, Berlin);
    let noon = first + Span::hours(4);
    let handled: HashSet<JobKey> = jobs
        .iter()
        .filter(|j| j.at <= noon)
        .map(|j| j.key())
        .collect();
    eprintln!(
        "planner bench: {} bookings, {} jobs, {} handled by noon",
        bookings.len(),
        jobs.len(),
        handled.len()
    );

    let mut g = c.benchmark_group("planner");
    g.sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    g.bench_function("plan", |b| {
        b.iter(|| plan(black_box(&bookings), &settings, Berlin))
    });
    g.bench_function("due/day_ahead", |b| {
        let ahead = first - Span::days(1) - Span::hours(1);
        b.iter(|| due(black_box(&bookings), &settings, Berlin, &|_| false, ahead))
    });
    g.bench_function("due/midday", |b| {
        b.iter(|| {
            due(
                black_box(&bookings),
                &settings,
                Berlin,
                &|k| handled.contains(k),
                noon,
            )
        })
    });
    g.finish();
}

criterion_group!(benches, planner);
criterion_main!(benches);
