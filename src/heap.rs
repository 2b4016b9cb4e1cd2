//! Giving the heap's free pages back to the system.
//!
//! glibc's allocator returns freed memory to the kernel only from the top of a heap; the
//! pages of blocks freed below a live one stay resident. What the daemon frees at start
//! (the site config and its validation, every device's first reads, the first API
//! snapshots) and the transient buffers of steady work (a `/metrics` scrape, a list
//! rebuilt) would otherwise keep the process at its high-water mark: at 2,500 devices a
//! quarter of the resident set was such free pages (docs/benchmarks.md, "Memory per
//! device"). `malloc_trim(0)` hands every free page of every arena back with `madvise`;
//! the daemon asks for it shortly after start and then once a minute, off the runtime's
//! workers. Other C libraries (musl) and allocators give memory back by themselves: there
//! the trim does nothing.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The first trim, once the start's garbage is free.
pub const FIRST_TRIM: Duration = Duration::from_secs(10);

/// Between two trims.
pub const TRIM_PERIOD: Duration = Duration::from_secs(60);

/// Ask the allocator to give its free pages back; whether it gave any.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn trim() -> bool {
    // SAFETY: `malloc_trim` takes no pointer and has no precondition; glibc serialises it
    // with every other call into the allocator, arena by arena.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Elsewhere the allocator returns memory by itself, or offers no such call.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim() -> bool {
    false
}

/// Trim after [`FIRST_TRIM`] and then every [`TRIM_PERIOD`] until `cancel`. A trim walks
/// every arena (a few milliseconds at 100 MiB), so it runs on a blocking thread, never on a
/// worker that a meter frame or a gain cut is waiting for.
pub fn spawn_trimmer(tracker: &TaskTracker, cancel: CancellationToken) {
    let blocking = tracker.clone();
    tracker.spawn(async move {
        let start = tokio::time::Instant::now() + FIRST_TRIM;
        let mut tick = tokio::time::interval_at(start, TRIM_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {}
            }
            match blocking.spawn_blocking(trim).await {
                Ok(released) => tracing::debug!(released, "heap trimmed"),
                Err(e) => tracing::warn!(error = %e, "heap trim failed"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trim_gives_back_the_pages_of_freed_blocks_below_a_live_one() {
        // 64 MiB in 4 KiB blocks, then every block but the last freed: the free pages sit
        // below a live block, where glibc keeps them resident until asked.
        let mut blocks: Vec<Vec<u8>> = (0..16_384).map(|i| vec![i as u8; 4096]).collect();
        let last = blocks.pop();
        drop(blocks);
        let before = rss_kib();
        let released = trim();
        let after = rss_kib();
        drop(last);
        if cfg!(all(target_os = "linux", target_env = "gnu")) {
            assert!(released, "glibc kept the free pages");
            assert!(
                after + 32 * 1024 < before,
                "resident {before} KiB before the trim, {after} KiB after"
            );
        } else {
            assert!(!released);
        }
    }

    fn rss_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0)
    }
}
