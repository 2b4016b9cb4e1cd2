//! The single writer task: everything the records store writes goes through here.
//!
//! It owns the [`Store`] and reads two bounded channels: typed events from the bus
//! ([`crate::events::EventBus::with_logbook`]) and requests from [`LogbookHandle`]s (API,
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
use super::logbook::NewEntry;
use super::maintenance::Maintenance;
use super::store::{Applied, Op, Store, StoreOptions};
use super::{Actor, StoreError};
use crate::clock::Clock;
use crate::events::{Event, EventBus, EventKind};
use crate::model::{DeviceId, RoomId};

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

struct Request {
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
            .send(Request { op, ack: Some(tx) })
            .await
            .map_err(|_| StoreError::Stopped)?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    async fn queued(&self, op: Op) -> Result<(), StoreError> {
        self.tx
            .send(Request { op, ack: None })
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
            .try_send(Request {
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

    /// Record a maintenance entry (and its counter changes); returns its sequence number once
    /// committed. Emits `MaintenanceRecorded` after the commit.
    pub async fn maintenance(&self, m: Maintenance) -> Result<u64, StoreError> {
        let a = self.acked(Op::Maintenance(m)).await?;
        a.seqs.first().copied().ok_or(StoreError::Stopped)
    }

    /// Register a device from the site config; returns the entry written, if anything changed.
    pub async fn register(&self, seed: EquipmentSeed) -> Result<Option<u64>, StoreError> {
        Ok(self.acked(Op::Register(seed)).await?.seqs.first().copied())
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
            fields,
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

    /// The booking in progress in a room (None when it ended), stamped on the room's entries.
    pub async fn booking(&self, room: RoomId, booking: Option<String>) -> Result<(), StoreError> {
        self.queued(Op::Booking { room, booking }).await
    }

    /// Change the size limit (config reload); waits until the writer applied it.
    pub async fn set_max_size(&self, bytes: Option<u64>) -> Result<(), StoreError> {
        self.acked(Op::SetMaxSize(bytes)).await.map(|_| ())
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
    events: mpsc::Receiver<Arc<Event>>,
    bus: EventBus,
    clock: Clock,
    status: watch::Sender<StoreStatus>,
}

/// Build the writer. `events` is the receiving end of the channel given to
/// [`EventBus::with_logbook`]; `bus` is where the writer emits what it has to say
/// (`StoreFailed`, `DeviceSwapped`, …).
pub fn writer(
    config: WriterConfig,
    events: mpsc::Receiver<Arc<Event>>,
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
    pending: VecDeque<Request>,
    failure: Option<Failure>,
    /// Dropped since the last recovery, reported in `StoreRecovered`.
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
                        Some(req) => self.enqueue(&mut st, req),
                        None => st.requests_open = false,
                    },
                    e = self.events.recv(), if st.events_open => match e {
                        Some(ev) => self.enqueue(&mut st, Request { op: Op::Event(ev), ack: None }),
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
        if st.failure.is_some() {
            if let Some(f) = st.failure.as_mut() {
                f.retry_at = Instant::now();
            }
        }
        self.commit_waiting(&mut st).await;
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
                        self.enqueue(st, req);
                        got = true;
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => st.requests_open = false,
                    Err(mpsc::error::TryRecvError::Empty) => {}
                }
            }
            if st.events_open && st.pending.len() < cap {
                match self.events.try_recv() {
                    Ok(ev) => {
                        self.enqueue(
                            st,
                            Request {
                                op: Op::Event(ev),
                                ack: None,
                            },
                        );
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

    fn enqueue(&self, st: &mut State, req: Request) {
        if st.pending.len() < self.config.pending_limit {
            st.pending.push_back(req);
            return;
        }
        let reason = st
            .failure
            .as_ref()
            .map_or_else(|| "buffer full".to_owned(), |f| f.error.to_string());
        match req.ack {
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
            self.bus.emit(
                self.clock.now(),
                EventKind::StoreRecovered {
                    written: backlog,
                    dropped: f.dropped,
                },
            );
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
        let res = tokio::task::spawn_blocking(move || {
            let r = store.apply(&job);
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
                    if let Some(ack) = ack {
                        let _ = ack.send(r);
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
                    st.pending.push_front(Request { op, ack });
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
                st.failure = Some(Failure {
                    error: error.clone(),
                    since: self.clock.now(),
                    dropped: 0,
                    retry_at,
                });
                // Goes through the bus (alerting) and back into our own queue, so the logbook
                // records the outage once it can write again.
                self.bus.emit(
                    self.clock.now(),
                    EventKind::StoreFailed {
                        error: error.to_string(),
                        pending: st.pending.len() as u64,
                    },
                );
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

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
