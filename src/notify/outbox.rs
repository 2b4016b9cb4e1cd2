//! The delivery loop of one sink: read the alert entries after its cursor from the logbook,
//! deliver them one at a time in order, log every attempt, and move the cursor through the
//! records writer only once an entry is settled.
//!
//! It wakes on the bus (an alert event was emitted) and on a timer (a missed wake-up, a
//! restart, another process's entry). Delivery is at least once: an entry the receiver took
//! is delivered again only if the daemon stops between the receiver's answer and the commit
//! of the delivery row, and then with the same idempotency id. Must not deliver an entry
//! before the one ahead of it is settled, nor hold up another sink (each runs as its own
//! task), nor read the wall clock except through [`Clock`].

use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Channel, Context, Notification, SinkProgress};
use crate::events::{EventBus, EventFilter, EventKind, EventSink};
use crate::records::notify::{self as rec, Delivery, Outcome};
use crate::records::StoreError;
use crate::transport::backoff::Backoff;

/// How a sink waits between attempts at the same entry, and how often it looks without a
/// wake-up.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// The first retry's delay; it doubles (with jitter) up to `max`.
    pub min: Duration,
    pub max: Duration,
    /// The timer that finds entries no bus event announced.
    pub poll: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            min: Duration::from_secs(1),
            max: Duration::from_secs(300),
            poll: Duration::from_secs(30),
        }
    }
}

/// Entries read per look at the logbook.
const BATCH: usize = 64;
/// Wake-ups buffered: a burst of alerts (a room's rack losing power) is emitted in one go,
/// before the sink runs. The sink drains them while it waits (between retries too), so the
/// bus does not find it full and report a consumer that fell behind.
const WAKE_CAPACITY: usize = crate::events::SUBSCRIBER_CAPACITY;

/// The bus sink that wakes a sink when an alert event is emitted.
pub fn wake_sink(bus: &EventBus, name: &str) -> EventSink {
    bus.sink(
        &format!("notify:{name}"),
        EventFilter::matching(|k| {
            matches!(
                k,
                EventKind::AlertChanged { .. } | EventKind::AlertNotified { .. }
            )
        }),
        WAKE_CAPACITY,
    )
}

pub struct Outbox {
    channel: Arc<dyn Channel>,
    ctx: Context,
    progress: watch::Sender<SinkProgress>,
    /// Set when `run` starts.
    wake: Option<EventSink>,
    /// The read-only connection between reads (a mutex only so the task's future is `Send`;
    /// it is never contended).
    conn: std::sync::Mutex<Option<Connection>>,
}

/// The task was cancelled while waiting.
struct Cancelled;

impl Outbox {
    pub fn new(
        channel: Arc<dyn Channel>,
        ctx: Context,
        progress: watch::Sender<SinkProgress>,
    ) -> Self {
        Self {
            channel,
            ctx,
            progress,
            wake: None,
            conn: std::sync::Mutex::new(None),
        }
    }

    pub fn name(&self) -> &str {
        self.channel.name()
    }

    /// Run until `cancel`. A store that cannot be read is retried at the poll interval.
    pub async fn run(mut self, wake: EventSink, cancel: CancellationToken) {
        self.wake = Some(wake);
        let name = self.name().to_owned();
        let started = self.ctx.clock.now();
        let mut reported = false;
        // The writer has opened and migrated the file once this returns.
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = self.ctx.logbook.flush() => {}
        }
        let mut cursor = loop {
            match self.start_cursor(started).await {
                Ok(c) => break c,
                Err(e) => {
                    if !reported {
                        tracing::warn!(sink = %name, error = %e, "alert sink cannot read the records yet");
                        reported = true;
                    }
                    if self.pause(self.ctx.retry.poll, &cancel).await.is_err() {
                        return;
                    }
                }
            }
        };
        self.progress.send_modify(|p| p.cursor = cursor);
        tracing::info!(sink = %name, cursor, "alert sink started");
        loop {
            match self.pass(&mut cursor, &cancel).await {
                Ok(more) if more => continue,
                Ok(_) => {}
                Err(Cancelled) => return,
            }
            if self.idle(&cancel).await.is_err() {
                return;
            }
        }
    }

    /// Where this sink stands: its stored cursor, or for a sink new to this file the last
    /// entry logged before the daemon started (a new sink does not replay old alerts).
    async fn start_cursor(
        &mut self,
        started: chrono::DateTime<chrono::Utc>,
    ) -> Result<u64, StoreError> {
        let name = self.name().to_owned();
        let started_us = crate::records::to_micros(started);
        let stored = self
            .read(move |c| {
                Ok(match rec::cursor(c, &name)? {
                    Some(s) => (s, true),
                    None => (
                        c.query_row(
                            "SELECT coalesce(max(seq), 0) FROM logbook WHERE at_us < ?1",
                            [started_us],
                            |r| r.get::<_, i64>(0),
                        )
                        .map(|s| u64::try_from(s).unwrap_or(0))?,
                        false,
                    ),
                })
            })
            .await?;
        if !stored.1 {
            self.ctx
                .logbook
                .sink_cursor(self.name(), stored.0, self.ctx.clock.now())
                .await?;
        }
        Ok(stored.0)
    }

    /// One look at the logbook: deliver what is after the cursor. `Ok(true)` when a full
    /// batch was read (look again at once).
    async fn pass(
        &mut self,
        cursor: &mut u64,
        cancel: &CancellationToken,
    ) -> Result<bool, Cancelled> {
        // What was emitted before now is committed before it is read.
        tokio::select! {
            _ = cancel.cancelled() => return Err(Cancelled),
            _ = self.ctx.logbook.flush() => {}
        }
        let after = *cursor;
        let read = self
            .read(move |c| {
                let entries = rec::alert_entries_after(c, after, BATCH)?;
                let mut out = Vec::with_capacity(entries.len());
                for e in entries {
                    let alert = e
                        .data_json()
                        .get("alert")
                        .and_then(|v| v.as_u64())
                        .unwrap_or(0);
                    let at = rec::alert_at(c, alert, e.seq)?;
                    out.push((e, at));
                }
                Ok(out)
            })
            .await;
        let batch = match read {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(sink = %self.name(), error = %e, "alert sink cannot read the logbook");
                self.set_conn(None);
                return Ok(false);
            }
        };
        let full = batch.len() == BATCH;
        let mut skipped_to = None;
        for (entry, at) in batch {
            let n = Notification::from_entry(
                &self.ctx.site,
                self.ctx.public_url.as_deref(),
                &entry,
                &at,
            );
            if !self.channel.wants(&n) {
                skipped_to = Some(n.seq);
                continue;
            }
            if let Some(seq) = skipped_to.take() {
                self.move_cursor(cursor, seq).await;
            }
            self.deliver(&n, cursor, cancel).await?;
        }
        if let Some(seq) = skipped_to {
            self.move_cursor(cursor, seq).await;
        }
        self.publish_backlog(*cursor).await;
        Ok(full)
    }

    /// Deliver one entry until it is settled, backing off between attempts.
    async fn deliver(
        &mut self,
        n: &Notification,
        cursor: &mut u64,
        cancel: &CancellationToken,
    ) -> Result<(), Cancelled> {
        let name = self.name().to_owned();
        let metrics = self.ctx.bus.metrics().clone();
        let (sink, seq) = (name.clone(), n.seq);
        let mut attempt = self
            .read(move |c| rec::attempts(c, &sink, seq))
            .await
            .unwrap_or(0);
        let mut backoff = Backoff::new(self.ctx.retry.min, self.ctx.retry.max);
        loop {
            attempt = attempt.saturating_add(1);
            let result = tokio::select! {
                _ = cancel.cancelled() => return Err(Cancelled),
                r = self.channel.deliver(n) => r,
            };
            let row = Delivery {
                sink: name.clone(),
                seq: n.seq,
                attempt,
                at: self.ctx.clock.now(),
                outcome: result.outcome,
                status: result.status,
                reply: result.reply.clone(),
                error: result.error.clone(),
            };
            match result.outcome {
                Outcome::Delivered => {
                    metrics.inc_labeled("avwarden_notify_delivered_total", "sink", &name);
                    tracing::debug!(sink = %name, seq = n.seq, attempt, "alert delivered");
                }
                Outcome::Skipped => {
                    tracing::info!(sink = %name, seq = n.seq, error = ?result.error, "alert not sent");
                }
                Outcome::Rejected | Outcome::Retry => {
                    metrics.inc_labeled("avwarden_notify_failures_total", "sink", &name);
                    // Once per entry at WARN; the retries of the same entry at DEBUG.
                    if attempt == 1 || result.outcome == Outcome::Rejected {
                        tracing::warn!(
                            sink = %name,
                            seq = n.seq,
                            attempt,
                            status = ?result.status,
                            error = ?result.error,
                            outcome = result.outcome.as_str(),
                            "alert delivery failed"
                        );
                    } else {
                        tracing::debug!(sink = %name, seq = n.seq, attempt, status = ?result.status, error = ?result.error, "alert delivery failed again");
                    }
                    self.progress.send_modify(|p| p.failures += 1);
                }
            }
            // The row (and the cursor with it) must be committed before the next entry: a
            // restart then resumes exactly after what was settled.
            loop {
                match self.ctx.logbook.delivery(row.clone()).await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(sink = %name, seq = n.seq, error = %e, "delivery not recorded; trying again");
                        self.pause(self.ctx.retry.poll, cancel).await?;
                    }
                }
            }
            if result.outcome.settles() {
                *cursor = n.seq;
                let delivered = result.outcome == Outcome::Delivered;
                self.progress.send_modify(|p| {
                    p.cursor = n.seq;
                    if delivered {
                        p.delivered += 1;
                    }
                });
                return Ok(());
            }
            let delay = backoff.next_delay();
            self.pause(delay, cancel).await?;
        }
    }

    async fn move_cursor(&mut self, cursor: &mut u64, seq: u64) {
        match self
            .ctx
            .logbook
            .sink_cursor(self.name(), seq, self.ctx.clock.now())
            .await
        {
            Ok(()) => {
                *cursor = seq;
                self.progress.send_modify(|p| p.cursor = seq);
            }
            // Not fatal: the entries are looked at again and skipped again.
            Err(e) => tracing::warn!(sink = %self.name(), error = %e, "sink cursor not moved"),
        }
    }

    async fn publish_backlog(&mut self, cursor: u64) {
        if let Ok(n) = self.read(move |c| rec::backlog(c, cursor)).await {
            self.ctx.bus.metrics().set_gauge(
                "avwarden_notify_backlog",
                Some(("sink", self.name())),
                n as f64,
            );
        }
    }

    /// Wait for a wake-up or the poll timer, then take every other wake-up queued.
    async fn idle(&mut self, cancel: &CancellationToken) -> Result<(), Cancelled> {
        let poll = self.ctx.retry.poll;
        let Some(wake) = self.wake.as_mut() else {
            return self.pause(poll, cancel).await;
        };
        let woken = tokio::select! {
            _ = cancel.cancelled() => return Err(Cancelled),
            e = wake.recv() => e.is_some(),
            _ = tokio::time::sleep(poll) => true,
        };
        if !woken {
            // The bus is gone (shutdown): the poll alone carries on until cancelled.
            self.wake = None;
            return self.pause(poll, cancel).await;
        }
        while wake.try_recv().is_ok() {}
        Ok(())
    }

    /// Wait `d` (a backoff, a store that cannot be read), taking wake-ups meanwhile: the
    /// entries they announce are in the logbook and are read after the wait.
    async fn pause(&mut self, d: Duration, cancel: &CancellationToken) -> Result<(), Cancelled> {
        let until = tokio::time::Instant::now() + d;
        loop {
            let wake = async {
                match self.wake.as_mut() {
                    Some(w) => w.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return Err(Cancelled),
                _ = tokio::time::sleep_until(until) => return Ok(()),
                e = wake => if e.is_none() {
                    self.wake = None;
                },
            }
        }
    }

    fn set_conn(&self, conn: Option<Connection>) {
        *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = conn;
    }

    /// Run `f` on this sink's read-only connection, off the runtime's threads.
    async fn read<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner()).take();
        let path = self.ctx.path.clone();
        let res = tokio::task::spawn_blocking(move || {
            let conn = match conn {
                Some(c) => c,
                None => match crate::records::store::open_reader(&path) {
                    Ok(c) => c,
                    Err(e) => return (None, Err(e)),
                },
            };
            let r = f(&conn);
            (Some(conn), r)
        })
        .await;
        match res {
            Ok((conn, r)) => {
                self.set_conn(conn);
                r
            }
            Err(e) => Err(StoreError::Io(format!("reading the logbook panicked: {e}"))),
        }
    }
}
