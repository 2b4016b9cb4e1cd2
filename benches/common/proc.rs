//! What the benchmarks read of `/proc` (CPU seconds per thread, memory, load) and how they
//! summarise samples. Shared by the benches that include it (`#[path]`); each uses part of
//! it, hence `dead_code` allowed.
#![allow(dead_code)]

use std::process::Command;

/// CPU seconds of the whole process and of each thread, by thread name.
pub struct CpuSnapshot {
    pub process: f64,
    pub threads: Vec<(String, f64)>,
}

impl CpuSnapshot {
    pub fn group(&self, name: &str) -> f64 {
        self.threads
            .iter()
            .filter(|(n, _)| n.starts_with(name))
            .map(|(_, s)| s)
            .sum()
    }
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime from a `stat` file, in seconds (fields 14 and 15, counted after the
/// parenthesised command name, which may itself contain spaces).
fn stat_cpu_secs(path: &std::path::Path, ticks: f64) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    let rest = text.get(text.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks)
}

pub fn cpu_snapshot() -> CpuSnapshot {
    let ticks = clock_ticks();
    let process = stat_cpu_secs("/proc/self/stat".as_ref(), ticks).unwrap_or(0.0);
    let mut threads = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for e in dir.flatten() {
            let base = e.path();
            let name = std::fs::read_to_string(base.join("comm")).unwrap_or_default();
            if let Some(secs) = stat_cpu_secs(&base.join("stat"), ticks) {
                threads.push((name.trim().to_owned(), secs));
            }
        }
    }
    CpuSnapshot { process, threads }
}

pub fn proc_status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

pub fn proc_meminfo_mib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib / 1024)
}

/// The load average over 1, 5 and 15 minutes, as `/proc/loadavg` writes it.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn print_machine() {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_owned();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = proc_meminfo_mib("MemTotal");
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!(
        "machine: {cores} cores, {model}, {mem} MiB RAM, Linux {}",
        kernel.trim()
    );
}

/// The `q` quantile by nearest rank (`1.0`: the maximum).
pub fn percentile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let i = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1;
    s[i]
}

/// utime + stime of another process (all its threads, children excluded), in seconds.
pub fn pid_cpu_secs(pid: u32) -> Option<f64> {
    stat_cpu_secs(format!("/proc/{pid}/stat").as_ref(), clock_ticks())
}

/// A field of another process's `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`), 0 if absent.
pub fn pid_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Run time of each thread of `pid` so far, in ns, by thread id: the first field of every
/// `/proc/<pid>/task/<tid>/schedstat` (the scheduler's own account, not 10 ms clock ticks).
/// `None` where the kernel keeps no schedstat.
pub fn thread_run_ns(pid: u32) -> Option<std::collections::BTreeMap<u32, u64>> {
    let mut threads = std::collections::BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        // A thread gone between the listing and the read counts as gone.
        let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        threads.insert(tid, text.split_whitespace().next()?.parse().ok()?);
    }
    Some(threads)
}

/// The run time between two [`thread_run_ns`] snapshots, in seconds: each thread's own
/// difference, a thread started in between counted whole. A thread that ended in between
/// takes its window's share with it (an idle blocking-pool thread's, about nothing); a plain
/// difference of the two sums would also take away everything it ran *before* the window,
/// which after a reconnect storm's DNS lookups made a poll look half its cost.
pub fn run_secs_between(
    before: &std::collections::BTreeMap<u32, u64>,
    after: &std::collections::BTreeMap<u32, u64>,
) -> f64 {
    let ns: u64 = after
        .iter()
        .map(|(tid, a)| a.saturating_sub(before.get(tid).copied().unwrap_or(0)))
        .sum();
    ns as f64 / 1e9
}
