//! The systemd watchdog, fed only while the daemon does its work: every period each probe
//! (the logbook writer's loop answers, the API answers its own health route) must pass, or the
//! feed is withheld and systemd restarts a daemon that hangs. A free-running timer would keep
//! feeding a daemon whose writer is wedged in SQLite or whose API no longer accepts.
//!
//! Owns the probing loop and the decision to feed; must not decide what a probe checks (the
//! daemon builds its probes) nor talk to systemd itself (the caller's `feed` does).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

type Check =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// One thing that must be working for the daemon to count as alive.
#[derive(Clone)]
pub struct Probe {
    pub name: &'static str,
    check: Check,
}

impl Probe {
    pub fn new<F, Fut>(name: &'static str, check: F) -> Probe
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        Probe {
            name,
            check: Arc::new(move || Box::pin(check())),
        }
    }
}

/// Run every probe at once, each within `limit`; the names of those that failed, with why.
pub async fn failing(probes: &[Probe], limit: Duration) -> Vec<(&'static str, String)> {
    let runs = probes.iter().map(|p| async move {
        match tokio::time::timeout(limit, (p.check)()).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some((p.name, e)),
            Err(_) => Some((p.name, format!("no answer within {limit:?}"))),
        }
    });
    futures::future::join_all(runs)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Probe every `period` and call `feed` when all probes pass. A probe gets half a period, so
/// a feed is never later than the period itself. The first failure of a run of failures is
/// logged as an error, the recovery once.
pub fn spawn(
    tracker: &TaskTracker,
    cancel: CancellationToken,
    period: Duration,
    probes: Vec<Probe>,
    feed: impl Fn() + Send + 'static,
) {
    tracker.spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut withheld = false;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            let failed = failing(&probes, period / 2).await;
            if failed.is_empty() {
                if withheld {
                    tracing::info!("watchdog: every probe passes again; feeding it");
                    withheld = false;
                }
                feed();
            } else if !withheld {
                withheld = true;
                for (name, why) in &failed {
                    tracing::error!(probe = name, error = %why, "watchdog not fed: the daemon is not doing its work");
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    fn counter() -> (Arc<AtomicUsize>, impl Fn() + Send + 'static) {
        let n = Arc::new(AtomicUsize::new(0));
        let m = n.clone();
        (n, move || {
            m.fetch_add(1, Ordering::SeqCst);
        })
    }

    #[tokio::test(start_paused = true)]
    async fn fed_every_period_while_every_probe_passes_and_not_while_one_fails() {
        let healthy = Arc::new(AtomicBool::new(true));
        let h = healthy.clone();
        let probes = vec![
            Probe::new("always", || async { Ok(()) }),
            Probe::new("switchable", move || {
                let ok = h.load(Ordering::SeqCst);
                async move { ok.then_some(()).ok_or_else(|| "broken".to_owned()) }
            }),
        ];
        let (fed, feed) = counter();
        let (tracker, cancel) = (TaskTracker::new(), CancellationToken::new());
        spawn(
            &tracker,
            cancel.clone(),
            Duration::from_secs(10),
            probes,
            feed,
        );
        // Ticks at 0, 10, 20 s.
        tokio::time::sleep(Duration::from_secs(25)).await;
        assert_eq!(fed.load(Ordering::SeqCst), 3);
        healthy.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(fed.load(Ordering::SeqCst), 3, "not fed while a probe fails");
        healthy.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(fed.load(Ordering::SeqCst), 4, "fed again once it passes");
        cancel.cancel();
        tracker.close();
        tracker.wait().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_hangs_counts_as_failed_within_half_a_period() {
        let probes = vec![Probe::new("hangs", std::future::pending)];
        let failed = failing(&probes, Duration::from_secs(5)).await;
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].0, "hangs");
        assert!(failed[0].1.contains("no answer"), "{failed:?}");
    }
}
