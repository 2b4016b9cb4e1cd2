//! The single writer task: everything the records store writes goes through here.
//!
//! It owns the [`Store`] and reads two bounded channels: typed events from the bus
//! ([`crate::events::EventBus::sink`]) and requests from [`LogbookHandle`]s (API,
//! maintenance, archive fields, counter feeds, future self-test and playbook entries). It takes
//! what is waiting — up to `max_batch` — and commits it in one transaction (group commit: no
//! timer, the batch is whatever arrived during the previous commit). A caller that needs to
//! know its entry is durable gets its acknowledgement only after that commit, with
//! `synchronous=FULL`.
//!
//! When the store cannot write (disk full, read-only, I/O error, missing directory) the batch
//! is rolled back whole and kept; requests wait in a bounded buffer; the task emits
//! `StoreFailed` once, retries every `retry_interval` (reopening the file when that can help)
//! and emits `StoreRecovered` when it writes again. Beyond the buffer, unacknowledged entries
//! are dropped and counted, and acknowledged requests are refused at once with a clear error.
//! The daemon keeps running throughout.
//!
//! The SQLite work runs in `spawn_blocking`, one batch at a time, so it neither blocks a
//! runtime thread nor lets paused test time run ahead while a commit is in progress.
//! Must not be spawned twice for one file, and must not read the wall clock except through
//! [`Clock`].

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::archive::{ArchiveFields, CounterUpdate, EquipmentSeed};
use super::bookings::{BookingChange, DoneJob};
use super::logbook::NewEntry;
use super::maintenance::Maintenance;
use super::store::{Applied, Op, Store, StoreOptions};
use super::{Actor, StoreError};
use crate::clock::Clock;
use crate::events::{EventBus, EventKind};
use crate::model::{Booking, DeviceId, Verdict};

#[derive(Debug, Clone)]
pub struct WriterConfig {
    pub path: PathBuf,
    pub store: StoreOptions,
    /// Capacity of the request channel.
    pub channel_capacity: usize,
    /// Most requests committed in one transaction.
    pub max_batch: usize,
    /// Requests kept in memory while the store cannot write.
    pub pending_limit: usize,
    /// Pause between attempts while the store cannot write.
    pub retry_interval: Duration,
}

impl WriterConfig {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            store: StoreOptions::default(),
            channel_capacity: 1024,
            max_batch: 512,
            pending_limit: 10_000,
            retry_interval: Duration::from_secs(5),
        }
    }
}

/// The store's condition, for the API and health checks.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreStatus {
    Starting,
    Ok,
    Failing {
        error: String,
        since: DateTime<Utc>,
        pending: u64,
        dropped: u64,
    },
    Stopped,
}

type Ack = oneshot::Sender<Result<Applied, StoreError>>;

enum Request {
    Write {
        op: Op,
        ack: Option<Ack>,
    },
    /// Applied at once, not queued: a limit raised to end a "full" condition must not wait
    /// behind the batch that is full.
    SetMaxSize {
        bytes: Option<u64>,
        ack: oneshot::Sender<()>,
    },
    /// Answered at once by the writer's loop: proof that it still turns (the watchdog).
    Ping {
        ack: oneshot::Sender<()>,
    },
}

struct Pending {
    op: Op,
    ack: Option<Ack>,
}

/// How the rest of the daemon writes records. Cheap to clone.
#[derive(Clone)]
pub struct LogbookHandle {
    tx: mpsc::Sender<Request>,
    status: watch::Receiver<StoreStatus>,
}

impl LogbookHandle {
    async fn acked(&self, op: Op) -> Result<Applied, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Request::Write { op, ack: Some(tx) })
            .await
            .map_err(|_| StoreError::Stopped)?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    async fn queued(&self, op: Op) -> Result<(), StoreError> {
        self.tx
            .send(Request::Write { op, ack: None })
            .await
            .map_err(|_| StoreError::Stopped)
    }

    /// Append an entry and wait until it is committed to disk; returns its sequence number.
    /// While the store is failing this waits until it recovers (apply your own timeout and
    /// show [`LogbookHandle::status`]); it fails at once when the buffer is full.
    pub async fn append(&self, entry: NewEntry) -> Result<u64, StoreError> {
        let a = self.acked(Op::Append(entry)).await?;
        a.seqs.first().copied().ok_or(StoreError::Stopped)
    }

    /// Queue an entry without waiting for the commit. Fails at once when the queue is full.
    pub fn record(&self, entry: NewEntry) -> Result<(), StoreError> {
        self.tx
            .try_send(Request::Write {
                op: Op::Append(entry),
                ack: None,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => StoreError::Unavailable {
                    reason: "writer queue full".into(),
                    pending: self.tx.max_capacity() as u64,
                },
                mpsc::error::TrySendError::Closed(_) => StoreError::Stopped,
            })
    }

    /// Queue an alert's current state without waiting for the commit (the playbook decides
    /// under a lock and must not wait). Fails at once when the queue is full.
    pub fn alert(&self, record: super::alerts::AlertRecord) -> Result<(), StoreError> {
        self.try_queue(Op::Alert(Box::new(record)))
    }

    /// Queue a maintenance window added or removed, without waiting for the commit.
    pub fn window(&self, record: super::alerts::WindowRecord) -> Result<(), StoreError> {
        self.try_queue(Op::Window(Box::new(record)))
    }

    fn try_queue(&self, op: Op) -> Result<(), StoreError> {
        self.tx
            .try_send(Request::Write { op, ack: None })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => StoreError::Unavailable {
                    reason: "writer queue full".into(),
                    pending: self.tx.max_capacity() as u64,
                },
                mpsc::error::TrySendError::Closed(_) => StoreError::Stopped,
            })
    }

    /// Record a maintenance entry (and its counter changes); returns its sequence number once
    /// committed. Emits `MaintenanceRecorded` after the commit.
    pub async fn maintenance(&self, m: Maintenance) -> Result<u64, StoreError> {
        let a = self.acked(Op::Maintenance(m)).await?;
        a.seqs.first().copied().ok_or(StoreError::Stopped)
    }

    /// Register a device from the site config; returns the entry written, if anything changed.
    pub async fn register(&self, seed: EquipmentSeed) -> Result<Option<u64>, StoreError> {
        Ok(self
            .acked(Op::Register(Box::new(seed)))
            .await?
            .seqs
            .first()
            .copied())
    }

    /// Register a device without waiting for the commit (start-up: the daemon must not wait
    /// for a store that is missing or locked). Waits only for room in the queue.
    pub async fn register_queued(&self, seed: EquipmentSeed) -> Result<(), StoreError> {
        self.queued(Op::Register(Box::new(seed))).await
    }

    /// Set fields a technician keeps; returns the entry written, if anything changed.
    pub async fn set_fields(
        &self,
        device: DeviceId,
        fields: ArchiveFields,
        actor: Actor,
        at: DateTime<Utc>,
    ) -> Result<Option<u64>, StoreError> {
        let op = Op::SetFields {
            device,
            fields: Box::new(fields),
            actor,
            at,
        };
        Ok(self.acked(op).await?.seqs.first().copied())
    }

    /// Counter changes (waits for room in the queue, not for the commit).
    pub async fn counters(
        &self,
        device: DeviceId,
        at: DateTime<Utc>,
        updates: Vec<CounterUpdate>,
    ) -> Result<(), StoreError> {
        self.queued(Op::Counters {
            device,
            at,
            updates,
        })
        .await
    }

    /// Store a booking made, changed or cancelled, and log it; returns once committed.
    pub async fn booking(
        &self,
        booking: Booking,
        change: BookingChange,
        actor: Actor,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let op = Op::Booking {
            booking: Box::new(booking),
            change,
            actor,
            at,
        };
        self.acked(op).await.map(drop)
    }

    /// Store what a feed lists now; returns once committed.
    pub async fn feed_bookings(
        &self,
        feed: String,
        bookings: Vec<Booking>,
        window: (DateTime<Utc>, DateTime<Utc>),
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.acked(Op::FeedBookings {
            feed,
            bookings,
            window,
            at,
        })
        .await
        .map(drop)
    }

    /// Store a verdict and its logbook entry; returns once committed.
    pub async fn verdict(
        &self,
        verdict: Verdict,
        extra: serde_json::Value,
    ) -> Result<(), StoreError> {
        self.acked(Op::Verdict {
            verdict: Box::new(verdict),
            extra,
        })
        .await
        .map(drop)
    }

    /// Remember that a job ran; returns once committed, so a restart never runs it again.
    pub async fn job_done(
        &self,
        job: DoneJob,
        ran: DateTime<Utc>,
        outcome: &'static str,
    ) -> Result<(), StoreError> {
        self.acked(Op::JobDone { job, ran, outcome })
            .await
            .map(drop)
    }

    /// Log an alert sink's attempt (and move its cursor when the attempt settles the entry);
    /// returns once committed, so a delivered entry is never delivered again after a restart.
    pub async fn delivery(&self, d: super::notify::Delivery) -> Result<(), StoreError> {
        self.acked(Op::Delivery(Box::new(d))).await.map(drop)
    }

    /// Move an alert sink's cursor past entries that were not for it (never backwards);
    /// returns once committed.
    pub async fn sink_cursor(
        &self,
        sink: &str,
        seq: u64,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.acked(Op::SinkCursor {
            sink: sink.to_owned(),
            seq,
            at,
        })
        .await
        .map(drop)
    }

    /// Change the size limit (config reload). Takes effect at the next commit; a store that
    /// was failing for lack of room is retried at once.
    pub async fn set_max_size(&self, bytes: Option<u64>) -> Result<(), StoreError> {
        let (ack, rx) = oneshot::channel();
        self.tx
            .send(Request::SetMaxSize { bytes, ack })
            .await
            .map_err(|_| StoreError::Stopped)?;
        rx.await.map_err(|_| StoreError::Stopped)
    }

    /// Whether the writer's loop still turns: answered between two commits, never queued
    /// behind the entries waiting for one. A writer stuck in SQLite does not answer.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let (ack, rx) = oneshot::channel();
        self.tx
            .send(Request::Ping { ack })
            .await
            .map_err(|_| StoreError::Stopped)?;
        rx.await.map_err(|_| StoreError::Stopped)
    }

    /// Wait until every event emitted on the bus before this call, and every request queued
    /// before it, is committed (tests, "show me the entry I just caused").
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.acked(Op::Flush).await.map(|_| ())
    }

    pub fn status(&self) -> StoreStatus {
        self.status.borrow().clone()
    }

    pub fn watch_status(&self) -> watch::Receiver<StoreStatus> {
        self.status.clone()
    }
}

/// The writer, ready to run in the daemon's task tracker.
pub struct WriterTask {
    config: WriterConfig,
    requests: mpsc::Receiver<Request>,
    events: crate::events::EventSink,
    bus: EventBus,
    clock: Clock,
    status: watch::Sender<StoreStatus>,
}

/// Build the writer. `events` is the logbook's sink on the bus
/// ([`EventBus::sink`] with [`crate::events::EventFilter::logbook`]); `bus` is where the writer emits what it has to say
/// (`StoreFailed`, `DeviceSwapped`, …).
pub fn writer(
    config: WriterConfig,
    events: crate::events::EventSink,
    bus: EventBus,
    clock: Clock,
) -> (LogbookHandle, WriterTask) {
    let (tx, requests) = mpsc::channel(config.channel_capacity.max(1));
    let (status, status_rx) = watch::channel(StoreStatus::Starting);
    (
        LogbookHandle {
            tx,
            status: status_rx,
        },
        WriterTask {
            config,
            requests,
            events,
            bus,
            clock,
            status,
        },
    )
}

struct Failure {
    error: StoreError,
    since: DateTime<Utc>,
    dropped: u64,
    retry_at: Instant,
}

struct State {
    store: Option<Store>,
    pending: VecDeque<Pending>,
    failure: Option<Failure>,
    requests_open: bool,
    events_open: bool,
}

impl WriterTask {
    /// Run until `cancel`, then drain both channels, commit what is waiting and return. Cancel
    /// it after every other task has stopped, so their last events (and `DaemonStopping`) are
    /// written.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut st = State {
            store: None,
            pending: VecDeque::new(),
            failure: None,
            requests_open: true,
            events_open: true,
        };
        match self.open().await {
            Ok(store) => {
                st.store = Some(store);
                self.status.send_replace(StoreStatus::Ok);
            }
            Err(e) => self.failed(&mut st, e),
        }
        loop {
            let must_wait = st.pending.is_empty() || st.failure.is_some();
            if must_wait {
                if !st.requests_open && !st.events_open {
                    break;
                }
                let retry_at = st.failure.as_ref().map(|f| f.retry_at);
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => break,
                    r = self.requests.recv(), if st.requests_open => match r {
                        Some(req) => self.on_request(&mut st, req),
                        None => st.requests_open = false,
                    },
                    e = self.events.recv(), if st.events_open => match e {
                        Some(ev) => self.push(&mut st, Op::Event(ev), None),
                        None => st.events_open = false,
                    },
                    _ = sleep_until_opt(retry_at) => {}
                }
            }
            self.drain(&mut st, false);
            let retry_due = st
                .failure
                .as_ref()
                .is_none_or(|f| Instant::now() >= f.retry_at);
            if retry_due && !st.pending.is_empty() {
                self.commit_waiting(&mut st).await;
            }
        }
        // Shutdown: everything already queued gets one chance to be written.
        self.drain(&mut st, true);
        if let Some(f) = st.failure.as_mut() {
            f.retry_at = Instant::now();
        }
        let mut attempted = false;
        // Until everything is written, or one more attempt failed.
        while !(st.pending.is_empty() || attempted && st.failure.is_some()) {
            self.commit_waiting(&mut st).await;
            attempted = true;
        }
        if !st.pending.is_empty() {
            tracing::error!(
                lost = st.pending.len(),
                "logbook store still cannot write at shutdown; waiting entries are lost"
            );
        }
        self.status.send_replace(StoreStatus::Stopped);
    }

    async fn open(&self) -> Result<Store, StoreError> {
        let path = self.config.path.clone();
        let options = self.config.store.clone();
        tokio::task::spawn_blocking(move || Store::open(&path, &options))
            .await
            .unwrap_or_else(|e| Err(StoreError::Io(format!("opening the store panicked: {e}"))))
    }

    /// Take what is waiting in both channels without blocking: up to a batch while healthy,
    /// everything (within the buffer limit) while failing or shutting down.
    fn drain(&mut self, st: &mut State, all: bool) {
        let cap = if all || st.failure.is_some() {
            usize::MAX
        } else {
            self.config.max_batch
        };
        while st.pending.len() < cap {
            let mut got = false;
            if st.requests_open {
                match self.requests.try_recv() {
                    Ok(req) => {
                        self.on_request(st, req);
                        got = true;
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => st.requests_open = false,
                    Err(mpsc::error::TryRecvError::Empty) => {}
                }
            }
            if st.events_open && st.pending.len() < cap {
                match self.events.try_recv() {
                    Ok(ev) => {
                        self.push(st, Op::Event(ev), None);
                        got = true;
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => st.events_open = false,
                    Err(mpsc::error::TryRecvError::Empty) => {}
                }
            }
            if !got {
                break;
            }
        }
    }

    /// A request from a handle. Events already on the bus go first: whoever emitted an event
    /// and then sent a request finds them in that order in the logbook (the converse needs the
    /// request's acknowledgement, which comes after its commit).
    fn on_request(&mut self, st: &mut State, req: Request) {
        match req {
            Request::SetMaxSize { bytes, ack } => {
                self.config.store.max_size_bytes = bytes;
                if let Some(f) = st.failure.as_mut() {
                    f.retry_at = Instant::now();
                }
                let _ = ack.send(());
            }
            Request::Ping { ack } => {
                let _ = ack.send(());
            }
            Request::Write { op, ack } => {
                while st.events_open {
                    match self.events.try_recv() {
                        Ok(ev) => self.push(st, Op::Event(ev), None),
                        Err(mpsc::error::TryRecvError::Disconnected) => st.events_open = false,
                        Err(mpsc::error::TryRecvError::Empty) => break,
                    }
                }
                self.push(st, op, ack);
            }
        }
    }

    /// Queue an op, within the buffer limit: beyond it an acknowledged request is refused at
    /// once and an unacknowledged one is dropped and counted.
    fn push(&self, st: &mut State, op: Op, ack: Option<Ack>) {
        if st.pending.len() < self.config.pending_limit {
            st.pending.push_back(Pending { op, ack });
            return;
        }
        let reason = st
            .failure
            .as_ref()
            .map_or_else(|| "buffer full".to_owned(), |f| f.error.to_string());
        match ack {
            Some(ack) => {
                let _ = ack.send(Err(StoreError::Unavailable {
                    reason,
                    pending: st.pending.len() as u64,
                }));
            }
            None => {
                self.bus.metrics().inc("avwarden_logbook_dropped_total");
                if let Some(f) = st.failure.as_mut() {
                    f.dropped += 1;
                    if f.dropped == 1 {
                        tracing::error!(
                            pending = st.pending.len(),
                            "logbook buffer full while the store cannot write; entries are being lost"
                        );
                    }
                }
            }
        }
        self.publish_failing(st);
    }

    /// Commit everything waiting, batch by batch; stop at the first failure.
    async fn commit_waiting(&mut self, st: &mut State) {
        let recovering = st.failure.is_some();
        let backlog = st.pending.len() as u64;
        while !st.pending.is_empty() {
            if let Err(e) = self.commit_batch(st).await {
                self.failed(st, e);
                return;
            }
            if !recovering {
                // Healthy: one batch per turn, then go back for what arrived meanwhile.
                break;
            }
        }
        if let Some(f) = st.failure.take() {
            tracing::warn!(
                written = backlog,
                dropped = f.dropped,
                "logbook store writes again"
            );
            self.status.send_replace(StoreStatus::Ok);
            self.bus
                .metrics()
                .set_gauge("avwarden_logbook_pending", None, 0.0);
            let now = self.clock.now();
            let kind = EventKind::StoreRecovered {
                written: backlog,
                dropped: f.dropped,
            };
            st.pending.push_back(Pending {
                op: Op::Append(outage_entry(now, &kind)),
                ack: None,
            });
            self.bus.emit(now, kind);
        }
    }

    async fn commit_batch(&mut self, st: &mut State) -> Result<(), StoreError> {
        let mut store = match st.store.take() {
            Some(s) => s,
            None => self.open().await?,
        };
        let n = st.pending.len().min(self.config.max_batch);
        let (ops, acks): (Vec<Op>, Vec<Option<Ack>>) =
            st.pending.drain(..n).map(|r| (r.op, r.ack)).unzip();
        let ops = Arc::new(ops);
        let job = ops.clone();
        let max_size = self.config.store.max_size_bytes;
        let res = tokio::task::spawn_blocking(move || {
            let r = if store.options().max_size_bytes != max_size {
                store.set_max_size(max_size)
            } else {
                Ok(())
            };
            let r = r.and_then(|()| store.apply(&job));
            (store, r)
        })
        .await;
        let (store, res) = match res {
            Ok((store, r)) => (Some(store), r),
            // The store went down with the panic; it is reopened on the next attempt.
            Err(e) => (
                None,
                Err(StoreError::Io(format!("writing a batch panicked: {e}"))),
            ),
        };
        match res {
            Ok(results) => {
                st.store = store;
                let metrics = self.bus.metrics();
                metrics.inc("avwarden_logbook_commits_total");
                for (ack, r) in acks.into_iter().zip(results) {
                    if let Ok(a) = &r {
                        for _ in &a.seqs {
                            metrics.inc("avwarden_logbook_entries_total");
                        }
                        for kind in &a.emit {
                            self.bus.emit(self.clock.now(), kind.clone());
                        }
                    }
                    match ack {
                        Some(ack) => {
                            let _ = ack.send(r);
                        }
                        // Nobody waits for this one: say what was not written.
                        None => {
                            if let Err(e) = r {
                                tracing::warn!(error = %e, "queued record not written");
                            }
                        }
                    }
                }
                Ok(())
            }
            Err(e) => {
                if !e.needs_reopen() {
                    st.store = store;
                }
                // Nothing was written: put the batch back in front, in order.
                let ops = Arc::try_unwrap(ops).unwrap_or_else(|a| (*a).clone());
                for (op, ack) in ops.into_iter().zip(acks).rev() {
                    st.pending.push_front(Pending { op, ack });
                }
                Err(e)
            }
        }
    }

    fn failed(&self, st: &mut State, error: StoreError) {
        let retry_at = Instant::now() + self.config.retry_interval;
        self.bus
            .metrics()
            .inc("avwarden_logbook_store_failures_total");
        match st.failure.as_mut() {
            Some(f) => {
                if f.error != error {
                    tracing::error!(%error, "logbook store still cannot write");
                }
                f.error = error;
                f.retry_at = retry_at;
            }
            None => {
                let now = self.clock.now();
                st.failure = Some(Failure {
                    error: error.clone(),
                    since: now,
                    dropped: 0,
                    retry_at,
                });
                let kind = EventKind::StoreFailed {
                    error: error.to_string(),
                    pending: st.pending.len() as u64,
                };
                // The outage is recorded by the writer itself, outside the buffer limit, so it
                // cannot be the entry that gets dropped; the bus carries the alert.
                st.pending.push_back(Pending {
                    op: Op::Append(outage_entry(now, &kind)),
                    ack: None,
                });
                self.bus.emit(now, kind);
            }
        }
        self.publish_failing(st);
    }

    fn publish_failing(&self, st: &State) {
        if let Some(f) = &st.failure {
            self.bus
                .metrics()
                .set_gauge("avwarden_logbook_pending", None, st.pending.len() as f64);
            self.status.send_replace(StoreStatus::Failing {
                error: f.error.to_string(),
                since: f.since,
                pending: st.pending.len() as u64,
                dropped: f.dropped,
            });
        }
    }
}

/// The writer's own entry for a store failure or recovery.
fn outage_entry(at: DateTime<Utc>, kind: &EventKind) -> NewEntry {
    let mut data = serde_json::to_value(kind).unwrap_or(serde_json::Value::Null);
    if let serde_json::Value::Object(m) = &mut data {
        m.remove("event");
    }
    NewEntry::new(at, kind.name(), Actor::System, kind.describe()).data(data)
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
