//! A small metrics registry rendered in the Prometheus text exposition format.
//!
//! Owns three things: counters and gauges keyed by name and an optional single label (events
//! counted as they happen), the poll-duration histograms the device actors observe into, and
//! [`Exposition`], the writer `/metrics` uses for gauges computed at scrape time (HELP and
//! TYPE once per family, label values escaped). Enough for `/metrics` without pulling in a
//! metrics framework. Must not read device state itself: the API computes scrape-time gauges.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

#[derive(Clone, Default)]
pub struct Metrics {
    inner: Arc<Mutex<BTreeMap<Key, Entry>>>,
}

/// Names and labels borrow when they are `'static` (see [`Metrics::inc_labeled_static`]); a
/// borrowed and an owned key with the same text are the same key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    name: Cow<'static, str>,
    label: Option<(Cow<'static, str>, Cow<'static, str>)>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    value: f64,
    gauge: bool,
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn inc(&self, name: &str) {
        self.add(name, None, 1.0, false);
    }

    pub fn inc_labeled(&self, name: &str, label: &str, value: &str) {
        self.add(name, Some((label, value)), 1.0, false);
    }

    /// [`Metrics::inc_labeled`] for text known at compile time (event names): the key borrows,
    /// so counting allocates nothing once the counter exists. Hot paths count with this.
    pub fn inc_labeled_static(&self, name: &'static str, label: &'static str, value: &'static str) {
        let key = Key {
            name: Cow::Borrowed(name),
            label: Some((Cow::Borrowed(label), Cow::Borrowed(value))),
        };
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(key)
            .or_insert(Entry {
                value: 0.0,
                gauge: false,
            })
            .value += 1.0;
    }

    /// Add `by` to a labelled counter (seconds spent, bytes moved).
    pub fn add_labeled(&self, name: &str, label: &str, value: &str, by: f64) {
        self.add(name, Some((label, value)), by, false);
    }

    pub fn set_gauge(&self, name: &str, label: Option<(&str, &str)>, value: f64) {
        let key = make_key(name, label);
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(key, Entry { value, gauge: true });
    }

    fn add(&self, name: &str, label: Option<(&str, &str)>, by: f64, gauge: bool) {
        let key = make_key(name, label);
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(key).or_insert(Entry { value: 0.0, gauge }).value += by;
    }

    pub fn get(&self, name: &str, label: Option<(&str, &str)>) -> f64 {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&make_key(name, label)).map_or(0.0, |e| e.value)
    }

    /// Prometheus text format, one `# TYPE` line per metric name.
    pub fn render(&self) -> String {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        let mut last: Option<&str> = None;
        for (k, e) in map.iter() {
            if last != Some(&*k.name) {
                let kind = if e.gauge { "gauge" } else { "counter" };
                let _ = writeln!(out, "# TYPE {} {}", k.name, kind);
                last = Some(&*k.name);
            }
            match &k.label {
                Some((l, v)) => {
                    let _ = writeln!(out, "{}{{{}=\"{}\"}} {}", k.name, l, escape(v), e.value);
                }
                None => {
                    let _ = writeln!(out, "{} {}", k.name, e.value);
                }
            }
        }
        out
    }
}

fn make_key(name: &str, label: Option<(&str, &str)>) -> Key {
    Key {
        name: Cow::Owned(name.to_owned()),
        label: label.map(|(l, v)| (Cow::Owned(l.to_owned()), Cow::Owned(v.to_owned()))),
    }
}

/// Upper bounds (seconds) of the poll-duration buckets: a PJLink poll is a few exchanges of
/// tens of milliseconds, a Tesira refresh of 16 zones takes a second or more, and a silent
/// device's poll ends at its timeout (seconds), so the buckets span 5 ms to 30 s.
pub const POLL_BUCKETS: [f64; BUCKETS] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0,
];

/// Upper bounds (seconds) of the poll-lag buckets: on an idle runtime a poll starts within a
/// millisecond of its schedule; the fleet's goal is a p99 under 50 ms, and a lag of seconds
/// means an actor stuck behind a slow command or a starved runtime.
pub const LAG_BUCKETS: [f64; BUCKETS] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Finite buckets of every histogram here; one size keeps [`Histogram`] a plain array.
pub const BUCKETS: usize = 13;

/// One histogram: an observation is a few relaxed atomic adds and no allocation, so the poll
/// path can afford it on every cycle.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64; BUCKETS],
    /// Per bucket, not cumulative (the `+Inf` bucket last); rendering accumulates.
    buckets: [AtomicU64; BUCKETS + 1],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::with_bounds(&POLL_BUCKETS)
    }
}

impl Histogram {
    pub fn with_bounds(bounds: &'static [f64; BUCKETS]) -> Self {
        Self {
            bounds,
            buckets: Default::default(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// The poll-duration histograms by protocol family (the driver's name: `pjlink`, `tesira`).
///
/// Process-wide rather than per daemon: the device actor has no path to the daemon's
/// [`Metrics`] without widening every actor's configuration, and a poll's duration is a fact
/// of the process, not of one API. Tests that start several daemons in one process therefore
/// see each other's polls; they check presence and growth, never exact counts.
pub fn poll_durations() -> &'static PollDurations {
    static POLLS: OnceLock<PollDurations> = OnceLock::new();
    POLLS.get_or_init(PollDurations::default)
}

/// The poll-lag histograms by protocol family: how late each poll started against its
/// schedule (the interval's tick), whether the actor was busy with a command or the runtime
/// was slow to wake it. Process-wide for the same reason as [`poll_durations`].
pub fn poll_lags() -> &'static PollDurations {
    static LAGS: OnceLock<PollDurations> = OnceLock::new();
    LAGS.get_or_init(|| PollDurations {
        name: "avwarden_poll_lag_seconds",
        help: "How late a device's poll started against its schedule, by protocol family.",
        bounds: &LAG_BUCKETS,
        by_family: RwLock::default(),
    })
}

/// Histograms of one family name, one per protocol family.
#[derive(Debug)]
pub struct PollDurations {
    name: &'static str,
    help: &'static str,
    bounds: &'static [f64; BUCKETS],
    by_family: RwLock<BTreeMap<&'static str, Arc<Histogram>>>,
}

impl Default for PollDurations {
    fn default() -> Self {
        Self {
            name: "avwarden_poll_duration_seconds",
            help: "Time a device's poll (or a session's first full read) took, by protocol family; successful ones only.",
            bounds: &POLL_BUCKETS,
            by_family: RwLock::default(),
        }
    }
}

impl PollDurations {
    /// The histogram of `family`, made on first use. An actor takes it once when it starts
    /// and observes into it without a lock.
    pub fn family(&self, family: &'static str) -> Arc<Histogram> {
        if let Some(h) = self
            .by_family
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(family)
        {
            return h.clone();
        }
        self.by_family
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(family)
            .or_insert_with(|| Arc::new(Histogram::with_bounds(self.bounds)))
            .clone()
    }

    /// The histograms in the exposition format (`_bucket`, `_sum`, `_count` per family).
    pub fn render(&self, out: &mut Exposition) {
        out.family(self.name, "histogram", self.help);
        let bucket = format!("{}_bucket", self.name);
        let sum_name = format!("{}_sum", self.name);
        let count_name = format!("{}_count", self.name);
        let map = self.by_family.read().unwrap_or_else(|p| p.into_inner());
        for (family, h) in map.iter() {
            let mut cumulative = 0;
            for (i, n) in h.buckets.iter().enumerate() {
                cumulative += n.load(Ordering::Relaxed);
                let le = self
                    .bounds
                    .get(i)
                    .map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
                out.sample(
                    &bucket,
                    &[("family", family), ("le", &le)],
                    cumulative as f64,
                );
            }
            let sum = h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
            out.sample(&sum_name, &[("family", family)], sum);
            out.sample(&count_name, &[("family", family)], cumulative as f64);
        }
    }
}

/// Meter samples published on the meter stream since the process started: the rate a fleet
/// delivers to the level watch and live views. Process-wide for the reason given at
/// [`poll_durations`]; one relaxed add per sample.
pub fn meter_samples() -> &'static AtomicU64 {
    static SAMPLES: AtomicU64 = AtomicU64::new(0);
    &SAMPLES
}

/// `avwarden_meter_samples_total` in the exposition format.
pub fn render_meter_samples(out: &mut Exposition) {
    out.family(
        "avwarden_meter_samples_total",
        "counter",
        "Meter samples the drivers published on the meter stream.",
    );
    out.sample(
        "avwarden_meter_samples_total",
        &[],
        meter_samples().load(Ordering::Relaxed) as f64,
    );
}

/// Text in the Prometheus exposition format (version 0.0.4), written family by family: a
/// family's `# HELP` and `# TYPE` lines, then its samples.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    pub fn new() -> Self {
        Self::default()
    }

    /// Start a family; its samples follow. `kind`: `gauge`, `counter` or `histogram`.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// One sample; label values are escaped, a non-finite value written as Prometheus reads it.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (l, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{l}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {}", number(value));
    }

    /// Append text already in the format (the registry's counters).
    pub fn push_rendered(&mut self, text: &str) {
        self.out.push_str(text);
    }

    pub fn finish(self) -> String {
        self.out
    }
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        v.to_string()
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_counts_into_cumulative_buckets() {
        let polls = PollDurations::default();
        let h = polls.family("pjlink");
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_millis(40));
        h.observe(Duration::from_secs(60));
        assert!(Arc::ptr_eq(&h, &polls.family("pjlink")));
        let mut out = Exposition::new();
        polls.render(&mut out);
        let text = out.finish();
        assert!(text.contains("# TYPE avwarden_poll_duration_seconds histogram"));
        let line = |le: &str| {
            format!("avwarden_poll_duration_seconds_bucket{{family=\"pjlink\",le=\"{le}\"}}")
        };
        assert!(text.contains(&format!("{} 1\n", line("0.005"))), "{text}");
        assert!(text.contains(&format!("{} 1\n", line("0.025"))), "{text}");
        assert!(text.contains(&format!("{} 2\n", line("0.05"))), "{text}");
        assert!(text.contains(&format!("{} 2\n", line("30"))), "{text}");
        assert!(text.contains(&format!("{} 3\n", line("+Inf"))), "{text}");
        assert!(text.contains("avwarden_poll_duration_seconds_count{family=\"pjlink\"} 3\n"));
        assert!(text.contains("avwarden_poll_duration_seconds_sum{family=\"pjlink\"} 60.043\n"));
    }

    #[test]
    fn the_lag_histogram_has_its_own_name_and_finer_buckets() {
        let lags = poll_lags();
        let h = lags.family("lag-test");
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(30));
        let mut out = Exposition::new();
        lags.render(&mut out);
        let text = out.finish();
        assert!(text.contains("# TYPE avwarden_poll_lag_seconds histogram"));
        let line = |le: &str| {
            format!("avwarden_poll_lag_seconds_bucket{{family=\"lag-test\",le=\"{le}\"}}")
        };
        assert!(text.contains(&format!("{} 1\n", line("0.0005"))), "{text}");
        assert!(text.contains(&format!("{} 1\n", line("0.025"))), "{text}");
        assert!(text.contains(&format!("{} 2\n", line("0.05"))), "{text}");
        assert!(!text.contains("avwarden_poll_duration_seconds"), "{text}");
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let mut out = Exposition::new();
        out.family("m", "gauge", "a \\ b\nc");
        out.sample("m", &[("room", "say \"hi\"\\\n")], f64::NAN);
        assert_eq!(
            out.finish(),
            "# HELP m a \\\\ b\\nc\n# TYPE m gauge\nm{room=\"say \\\"hi\\\"\\\\\\n\"} NaN\n"
        );
    }

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::new();
        m.inc_labeled("avwarden_events_total", "event", "link_up");
        m.inc_labeled("avwarden_events_total", "event", "link_up");
        m.set_gauge("avwarden_devices", Some(("health", "ok")), 3.0);
        let text = m.render();
        assert!(text.contains("# TYPE avwarden_events_total counter"));
        assert!(text.contains("avwarden_events_total{event=\"link_up\"} 2"));
        assert!(text.contains("avwarden_devices{health=\"ok\"} 3"));
    }

    #[test]
    fn static_and_owned_names_count_the_same_counter() {
        let m = Metrics::new();
        m.inc_labeled_static("avwarden_events_total", "event", "meter");
        m.inc_labeled("avwarden_events_total", "event", &String::from("meter"));
        m.inc_labeled_static("avwarden_events_total", "event", "meter");
        m.inc_labeled_static("avwarden_events_total", "event", "link_up");
        assert_eq!(
            m.get("avwarden_events_total", Some(("event", "meter"))),
            3.0
        );
        let text = m.render();
        assert_eq!(
            text.matches("# TYPE avwarden_events_total counter").count(),
            1
        );
        assert!(text.contains("avwarden_events_total{event=\"meter\"} 3"));
        assert!(text.contains("avwarden_events_total{event=\"link_up\"} 1"));
    }
}
