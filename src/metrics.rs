//! A small metrics registry rendered in the Prometheus text exposition format.
//!
//! Counters and gauges keyed by name and an optional single label; enough for `/metrics`
//! without pulling in a metrics framework. Cheap to clone (shared inner map).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex};

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

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

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
