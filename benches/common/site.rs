//! What the CPU benches that run the daemon against simulators in another process share:
//! free ports, the two site files, waiting for the simulators, children stopped on every path.
//! Included with `#[path]`; each bench uses part of it, hence `dead_code` allowed.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Ports free now on 127.0.0.1 (the listeners close before the simulators bind them).
pub fn free_ports(n: usize) -> Result<Vec<u16>, String> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bind: {e}"))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("local_addr: {e}"))
}

/// `sim.toml` (every device of `devices` simulated: its `SIMULATED` line becomes
/// `simulated = true`), `daemon.toml` (the same devices, driven; the line dropped), both
/// with rooms of four devices and the API on `api_port`, and `ports` (the simulators' ports,
/// for a floor or peer poller). `devices` is `[[devices]]` tables, each with a `SIMULATED`
/// line where `simulated = true` goes.
pub fn write_sites(
    dir: &Path,
    name: &str,
    api_port: u16,
    sim_ports: &[u16],
    devices: &str,
) -> Result<(), String> {
    let mut rooms = String::new();
    for r in 0..sim_ports.len().div_ceil(4) {
        rooms.push_str(&format!(
            "\n[[rooms]]\nid = \"r{r}\"\nname = \"Room {r}\"\ncapacity = 10\n"
        ));
    }
    let head = |storage: &str| {
        format!(
            "[site]\nname = \"{name}\"\ntime_zone = \"UTC\"\n\n[api]\nbind = \"127.0.0.1:{api_port}\"\n\n\
             [storage]\npath = \"{storage}\"\n"
        )
    };
    let write = |file: &str, text: String| {
        std::fs::write(dir.join(file), text).map_err(|e| format!("{file}: {e}"))
    };
    let db = dir.join("daemon.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    write(
        "sim.toml",
        format!(
            "{}{rooms}{}",
            head(&dir.join("sim.db").display().to_string()),
            devices.replace("SIMULATED", "simulated = true")
        ),
    )?;
    write(
        "daemon.toml",
        format!(
            "{}{rooms}{}",
            head(&db.display().to_string()),
            devices.replace("SIMULATED\n", "")
        ),
    )?;
    let ports: Vec<String> = sim_ports.iter().map(u16::to_string).collect();
    write("ports", ports.join(" "))
}

pub fn wait_listening(ports: &[u16], child: &mut Child) -> Result<(), String> {
    for _ in 0..300 {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("simulators exited: {status}"));
        }
        if ports
            .iter()
            .all(|p| TcpStream::connect(("127.0.0.1", *p)).is_ok())
        {
            return Ok(());
        }
        pause(Duration::from_millis(100));
    }
    Err("simulators did not start listening within 30 s".into())
}

/// A child killed when dropped, so an error path leaves nothing running.
pub struct Guard(pub Child);

impl Guard {
    /// SIGTERM, then wait; SIGKILL if it is still there after 10 s.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            pause(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The bench's main thread waits (no async runtime here: it only starts processes and reads
/// `/proc`, and a blocked thread of its own disturbs nothing it measures).
#[allow(clippy::disallowed_methods)]
pub fn pause(d: Duration) {
    std::thread::sleep(d);
}

/// `exe run` on `dir/daemon.toml` (warnings and worse in `dir/daemon.log`), given `warmup` to
/// open its sessions; an error if it has exited by then.
pub fn start_daemon(exe: &str, dir: &Path, warmup: Duration) -> Result<Guard, String> {
    let log = std::fs::File::create(dir.join("daemon.log")).map_err(|e| e.to_string())?;
    let mut daemon = Guard(
        Command::new(exe)
            .args(["run", "--config"])
            .arg(dir.join("daemon.toml"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("avwarden run: {e}"))?,
    );
    pause(warmup);
    if let Ok(Some(status)) = daemon.0.try_wait() {
        return Err(format!(
            "daemon exited: {status}; see {}",
            dir.join("daemon.log").display()
        ));
    }
    Ok(daemon)
}

/// A floor poller's side of the counts protocol: "ready" once its sessions are started, then
/// `<what> <n> errors <m>` on every SIGUSR1, until SIGTERM.
pub async fn report_counts(
    what: &str,
    count: &std::sync::atomic::AtomicU64,
    errors: &std::sync::atomic::AtomicU64,
) -> std::process::ExitCode {
    use std::sync::atomic::Ordering;
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut usr1), Ok(mut term)) = (
        signal(SignalKind::user_defined1()),
        signal(SignalKind::terminate()),
    ) else {
        return std::process::ExitCode::FAILURE;
    };
    println!("ready");
    loop {
        tokio::select! {
            _ = usr1.recv() => println!(
                "{what} {} errors {}",
                count.load(Ordering::Relaxed),
                errors.load(Ordering::Relaxed)
            ),
            _ = term.recv() => return std::process::ExitCode::SUCCESS,
        }
    }
}

/// The value of `series` (`name{labels}` as written) on the daemon's `/metrics` now; `None`
/// when it is not there yet.
pub fn metric(api_port: u16, series: &str) -> Result<Option<f64>, String> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", api_port)).map_err(|e| format!("api: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("api: {e}"))?;
    let mut body = String::new();
    s.read_to_string(&mut body)
        .map_err(|e| format!("api: {e}"))?;
    Ok(body.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    }))
}
