//! The meter stream: every aligned level a driver measures, from the drivers to the consumers
//! that act on levels (the level watch, live views), apart from the state `watch` and the
//! event sinks.
//!
//! Meters arrive thousands of times a second and only the newest one of a subject matters to
//! a consumer that fell behind, so each consumer's queue coalesces: it holds the latest sample
//! per `(device, subject)`, never a backlog, and a consumer that sleeps for ten seconds wakes
//! to one sample per subject. A publish with no consumer costs a read lock; faults never wait
//! behind meters because they travel elsewhere (the [`crate::events`] sinks).
//!
//! Each device also keeps its latest level per subject on a [`MeterBoard`], which the API
//! reads (value and age) without the state `watch` being woken on every frame.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::Notify;

use crate::model::{DeviceId, Subject};

/// One level measurement, aligned to dBFS. The device's id is shared with its observer, so a
/// sample is copied to every consumer without allocating.
#[derive(Debug, Clone, PartialEq)]
pub struct MeterSample {
    pub device: Arc<DeviceId>,
    pub subject: Subject,
    pub dbfs: f64,
    pub at: DateTime<Utc>,
}

/// One consumer's coalescing queue: the newest sample per `(device, subject)` not yet taken,
/// in the order each subject first became pending.
///
/// The position of every subject ever seen is kept across takes, so a publish after the first
/// one of a subject allocates nothing: it overwrites the slot and, when the slot was already
/// pending, that is all (the consumer has not been woken for it yet).
#[derive(Default)]
struct Pending {
    /// Where each subject's slot is, per device (looked up by reference, no key built).
    index: HashMap<Arc<DeviceId>, HashMap<Subject, usize>>,
    slots: Vec<(MeterSample, bool)>,
    /// Slots holding a sample not yet taken.
    fresh: Vec<usize>,
}

impl Pending {
    /// Store the sample; true when the queue was empty before (the consumer needs a wake-up).
    fn put(
        &mut self,
        device: &Arc<DeviceId>,
        subject: &Subject,
        dbfs: f64,
        at: DateTime<Utc>,
    ) -> bool {
        let was_empty = self.fresh.is_empty();
        let at_slot = self
            .index
            .get(device.as_ref())
            .and_then(|m| m.get(subject))
            .copied();
        let i = match at_slot {
            Some(i) => {
                let (s, _) = &mut self.slots[i];
                s.dbfs = dbfs;
                s.at = at;
                i
            }
            None => {
                let i = self.slots.len();
                self.slots.push((
                    MeterSample {
                        device: device.clone(),
                        subject: subject.clone(),
                        dbfs,
                        at,
                    },
                    false,
                ));
                self.index
                    .entry(device.clone())
                    .or_default()
                    .insert(subject.clone(), i);
                i
            }
        };
        let pending = &mut self.slots[i].1;
        if !*pending {
            *pending = true;
            self.fresh.push(i);
        }
        was_empty
    }

    fn take_into(&mut self, out: &mut Vec<MeterSample>) {
        for i in self.fresh.drain(..) {
            let (s, pending) = &mut self.slots[i];
            *pending = false;
            out.push(s.clone());
        }
    }
}

/// One consumer's coalescing queue and its wake-up.
struct Slot {
    name: String,
    pending: Mutex<Pending>,
    ready: Notify,
    gone: AtomicBool,
}

/// Fan-out of meter samples to every consumer. Cheap to clone.
#[derive(Clone, Default)]
pub struct MeterHub {
    slots: Arc<RwLock<Vec<Arc<Slot>>>>,
}

impl MeterHub {
    /// A new consumer named `name` (for diagnostics): it receives the samples published from
    /// now on, coalesced per subject.
    pub fn subscribe(&self, name: &str) -> MeterReceiver {
        let slot = Arc::new(Slot {
            name: name.to_owned(),
            pending: Mutex::default(),
            ready: Notify::new(),
            gone: AtomicBool::new(false),
        });
        self.slots
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(slot.clone());
        MeterReceiver { slot }
    }

    /// Offer `sample` to every consumer; replaces whatever that consumer had not yet taken
    /// for the same subject.
    pub fn publish(&self, sample: &MeterSample) {
        self.publish_level(&sample.device, &sample.subject, sample.dbfs, sample.at);
    }

    /// [`MeterHub::publish`] from its parts: nothing is allocated once each consumer has seen
    /// the subject. A consumer is woken only when its queue goes from empty to pending, so
    /// the samples a driver publishes before the consumer runs (a frame's worth, or more
    /// under load) cost it one wake-up, not one each.
    pub fn publish_level(
        &self,
        device: &Arc<DeviceId>,
        subject: &Subject,
        dbfs: f64,
        at: DateTime<Utc>,
    ) {
        crate::metrics::meter_samples().fetch_add(1, Ordering::Relaxed);
        let mut gone = false;
        {
            let slots = self.slots.read().unwrap_or_else(|p| p.into_inner());
            for slot in slots.iter() {
                if slot.gone.load(Ordering::Acquire) {
                    gone = true;
                    continue;
                }
                let wake = slot
                    .pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .put(device, subject, dbfs, at);
                if wake {
                    slot.ready.notify_one();
                }
            }
        }
        if gone {
            self.slots
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|s| !s.gone.load(Ordering::Acquire));
        }
    }

    /// Consumers subscribed now.
    pub fn consumers(&self) -> usize {
        self.slots.read().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// A consumer's end of the meter stream.
pub struct MeterReceiver {
    slot: Arc<Slot>,
}

impl MeterReceiver {
    /// Wait for samples, then take all that are pending: at most one per subject, the newest.
    pub async fn recv(&mut self) -> Vec<MeterSample> {
        let mut batch = Vec::new();
        self.recv_into(&mut batch).await;
        batch
    }

    /// [`MeterReceiver::recv`] into `batch` (cleared first), so a consumer that keeps its
    /// vector allocates nothing per batch.
    pub async fn recv_into(&mut self, batch: &mut Vec<MeterSample>) {
        loop {
            self.try_recv_into(batch);
            if !batch.is_empty() {
                return;
            }
            // A sample published between the take above and this wait left a permit (the
            // queue went from empty to pending), so it is not missed.
            self.slot.ready.notified().await;
        }
    }

    /// Take what is pending now, without waiting.
    pub fn try_recv(&mut self) -> Vec<MeterSample> {
        let mut batch = Vec::new();
        self.try_recv_into(&mut batch);
        batch
    }

    /// [`MeterReceiver::try_recv`] into `batch` (cleared first), oldest sample first.
    pub fn try_recv_into(&mut self, batch: &mut Vec<MeterSample>) {
        batch.clear();
        self.slot
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take_into(batch);
        batch.sort_by_key(|s| s.at);
    }

    pub fn name(&self) -> &str {
        &self.slot.name
    }
}

impl Drop for MeterReceiver {
    fn drop(&mut self) {
        self.slot.gone.store(true, Ordering::Release);
    }
}

/// A device's latest level per subject, as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MeterLevel {
    pub dbfs: f64,
    pub at: DateTime<Utc>,
}

/// Told each level a device's driver reads, in the driver's own call, before the sample goes
/// on the meter stream: the level watch decides a cut there, so the cut is on the device's
/// priority lane before its actor looks at the lane again (issue 10).
pub type MeterTap = Arc<dyn Fn(&Subject, f64, DateTime<Utc>) + Send + Sync>;

/// The latest level per subject of one device. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct MeterBoard {
    levels: Arc<Mutex<BTreeMap<Subject, Option<MeterLevel>>>>,
    tap: Arc<RwLock<Option<MeterTap>>>,
}

impl std::fmt::Debug for MeterBoard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeterBoard")
            .field("levels", &self.levels)
            .finish_non_exhaustive()
    }
}

impl MeterBoard {
    /// Install (or remove) the tap told every level of this device.
    pub fn set_tap(&self, tap: Option<MeterTap>) {
        *self.tap.write().unwrap_or_else(|p| p.into_inner()) = tap;
    }

    /// Tell the tap, when there is one, a level just read.
    pub fn tap(&self, subject: &Subject, dbfs: f64, at: DateTime<Utc>) {
        if let Some(tap) = &*self.tap.read().unwrap_or_else(|p| p.into_inner()) {
            tap(subject, dbfs, at);
        }
    }

    /// Record a level.
    pub fn set(&self, subject: &Subject, level: MeterLevel) {
        let mut m = self.levels.lock().unwrap_or_else(|p| p.into_inner());
        match m.get_mut(subject) {
            Some(l) => *l = Some(level),
            None => {
                m.insert(subject.clone(), Some(level));
            }
        }
    }

    /// The subject has a meter whose level is not known now (a receiver channel without a
    /// transmitter reads its floor, which is not a level).
    pub fn unknown(&self, subject: &Subject) {
        let mut m = self.levels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = m.get_mut(subject) {
            *l = None;
        } else {
            m.insert(subject.clone(), None);
        }
    }

    /// Every metered subject with its latest level (`None`: not known now).
    pub fn levels(&self) -> Vec<(Subject, Option<MeterLevel>)> {
        self.levels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(s, l)| (s.clone(), *l))
            .collect()
    }

    pub fn get(&self, subject: &Subject) -> Option<MeterLevel> {
        self.levels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(subject)
            .copied()
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn sample(device: &str, subject: Subject, dbfs: f64, ms: i64) -> MeterSample {
        MeterSample {
            device: Arc::new(DeviceId::new(device)),
            subject,
            dbfs,
            at: Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0).unwrap()
                + chrono::Duration::milliseconds(ms),
        }
    }

    #[test]
    fn a_consumer_that_falls_behind_gets_the_newest_sample_per_subject_only() {
        let hub = MeterHub::default();
        let mut rx = hub.subscribe("test");
        for i in 0..100 {
            hub.publish(&sample(
                "dsp",
                Subject::zone("main"),
                -40.0 + i as f64 * 0.1,
                i,
            ));
            hub.publish(&sample("dsp", Subject::input("lectern"), -30.0, i));
            hub.publish(&sample("mic", Subject::Channel(1), -20.0, i));
        }
        let batch = rx.try_recv();
        assert_eq!(batch.len(), 3, "one per subject: {batch:?}");
        let main = batch
            .iter()
            .find(|s| s.subject == Subject::zone("main"))
            .unwrap();
        assert!(
            (main.dbfs - -30.1).abs() < 1e-9,
            "the newest: {}",
            main.dbfs
        );
        assert!(rx.try_recv().is_empty(), "nothing left behind");
    }

    #[tokio::test]
    async fn consumers_are_independent_and_a_gone_one_is_forgotten() {
        let hub = MeterHub::default();
        let mut a = hub.subscribe("a");
        let b = hub.subscribe("b");
        assert_eq!(hub.consumers(), 2);
        drop(b);
        hub.publish(&sample("mic", Subject::Channel(2), -12.0, 0));
        assert_eq!(hub.consumers(), 1);
        let got = a.recv().await;
        assert_eq!(got[0].subject, Subject::Channel(2));
    }

    #[tokio::test(start_paused = true)]
    async fn recv_waits_for_the_next_sample() {
        let hub = MeterHub::default();
        let mut rx = hub.subscribe("waiter");
        let h = hub.clone();
        crate::test_spawn(async move {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            h.publish(&sample("mic", Subject::Channel(1), -6.0, 0));
        });
        let got = rx.recv().await;
        assert_eq!(got.len(), 1);
    }

    #[test]
    fn the_board_keeps_the_latest_level_and_an_unknown_one() {
        let b = MeterBoard::default();
        let at = Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0).unwrap();
        b.set(&Subject::Channel(1), MeterLevel { dbfs: -20.0, at });
        b.set(&Subject::Channel(1), MeterLevel { dbfs: -18.0, at });
        b.unknown(&Subject::Channel(2));
        assert_eq!(b.get(&Subject::Channel(1)).unwrap().dbfs, -18.0);
        assert_eq!(b.get(&Subject::Channel(2)), None);
        assert_eq!(b.levels().len(), 2);
    }
}
