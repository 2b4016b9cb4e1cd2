//! The debounce of retained topics: at most one publish per topic per period, the latest
//! payload wins, and nothing goes out when a topic's payload has not changed.
//!
//! Pure: it is told payloads and instants and answers what to publish when. It must not
//! publish, sleep or read a clock; the state task does that around it.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Default)]
struct Slot {
    /// What the broker holds from us, as far as we know.
    published: Option<Vec<u8>>,
    /// The newest payload not yet published.
    pending: Option<Vec<u8>>,
    last_at: Option<Instant>,
}

/// Retained topics and what each last carried.
#[derive(Debug)]
pub struct Debouncer {
    period: Duration,
    slots: BTreeMap<String, Slot>,
}

impl Debouncer {
    pub fn new(period: Duration) -> Self {
        Self {
            period,
            slots: BTreeMap::new(),
        }
    }

    /// The topic's payload now. A payload equal to the published one cancels a pending change
    /// (the topic went back to what the broker already holds).
    pub fn offer(&mut self, topic: &str, payload: Vec<u8>) {
        let slot = self.slots.entry(topic.to_owned()).or_default();
        if slot.published.as_ref() == Some(&payload) {
            slot.pending = None;
        } else {
            slot.pending = Some(payload);
        }
    }

    /// The topics whose newest payload may go out at `now`, oldest publish first.
    pub fn due(&self, now: Instant) -> Vec<(String, Vec<u8>)> {
        self.slots
            .iter()
            .filter(|(_, s)| s.pending.is_some() && self.open_at(s).is_none_or(|at| at <= now))
            .filter_map(|(t, s)| s.pending.clone().map(|p| (t.clone(), p)))
            .collect()
    }

    /// The broker took `payload` on `topic` at `now`.
    pub fn published(&mut self, topic: &str, payload: &[u8], now: Instant) {
        let slot = self.slots.entry(topic.to_owned()).or_default();
        if slot.pending.as_deref() == Some(payload) {
            slot.pending = None;
        }
        slot.published = Some(payload.to_vec());
        slot.last_at = Some(now);
    }

    /// When the next pending topic may go out: `Some(None)` at once, `None` when nothing is
    /// pending.
    pub fn next_due(&self) -> Option<Option<Instant>> {
        self.slots
            .values()
            .filter(|s| s.pending.is_some())
            .map(|s| self.open_at(s))
            .min()
    }

    /// Forget what the broker holds for the topics `pred` selects, so their payloads go out
    /// again at once (after a reconnect, or when Home Assistant asks).
    pub fn republish(&mut self, pred: impl Fn(&str) -> bool) {
        for (_, s) in self.slots.iter_mut().filter(|(t, _)| pred(t)) {
            if let Some(p) = s.published.take() {
                s.pending.get_or_insert(p);
            }
            s.last_at = None;
        }
    }

    /// The topics we have a payload for (published or pending).
    pub fn topics(&self) -> impl Iterator<Item = &str> {
        self.slots.keys().map(String::as_str)
    }

    /// When the slot may publish again; `None`: now (never published since the last
    /// reconnect).
    fn open_at(&self, s: &Slot) -> Option<Instant> {
        s.last_at.map(|at| at + self.period)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_goes_out_once_per_period_latest_wins() {
        let t0 = Instant::now();
        let period = Duration::from_secs(1);
        let mut d = Debouncer::new(period);
        d.offer("a", b"1".to_vec());
        assert_eq!(d.due(t0), vec![("a".to_owned(), b"1".to_vec())]);
        d.published("a", b"1", t0);
        assert_eq!(d.next_due(), None);
        // A burst within the period: nothing now, the newest at the period's end.
        for p in ["2", "3", "4"] {
            d.offer("a", p.as_bytes().to_vec());
        }
        assert!(d.due(t0 + Duration::from_millis(500)).is_empty());
        assert_eq!(d.next_due(), Some(Some(t0 + period)));
        assert_eq!(d.due(t0 + period), vec![("a".to_owned(), b"4".to_vec())]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unchanged_payload_is_not_published_and_a_reconnect_republishes() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(Duration::from_secs(1));
        d.offer("a", b"x".to_vec());
        d.published("a", b"x", t0);
        d.offer("a", b"x".to_vec());
        assert!(d.due(t0 + Duration::from_secs(5)).is_empty());
        // Changed and changed back before it went out: nothing to say.
        d.offer("a", b"y".to_vec());
        d.offer("a", b"x".to_vec());
        assert!(d.due(t0 + Duration::from_secs(5)).is_empty());
        d.offer("b", b"z".to_vec());
        d.published("b", b"z", t0);
        d.republish(|t| t == "a");
        assert_eq!(d.due(t0), vec![("a".to_owned(), b"x".to_vec())]);
        assert_eq!(d.topics().collect::<Vec<_>>(), ["a", "b"]);
    }
}
