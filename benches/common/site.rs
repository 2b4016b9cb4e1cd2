//! What the CPU benches that run the daemon against simulators in another process share:
//! free ports, the two site files, waiting for the simulators, children stopped on every path.
//! Included with `#[path]`; each bench uses part of it, hence `dead_code` allowed.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
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

/// The bench's own directory (`target/<name>`, made) and free loopback ports: the daemon's
/// API's, then one for each of `devices` simulators.
pub fn prepare(name: &str, devices: usize) -> Result<(PathBuf, u16, Vec<u16>), String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join(name);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut ports = free_ports(devices + 1)?;
    let api_port = ports.remove(0);
    Ok((dir, api_port, ports))
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

/// The simulators' ports from the `ports` file [`write_sites`] wrote, for a child poller.
pub fn read_ports(path: &Path) -> Option<Vec<u16>> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(
        text.split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect(),
    )
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

/// The simulators' process, restartable: every session the poller holds ends, and the poller
/// reconnects on its own schedule.
pub struct Sims {
    pub guard: Guard,
    exe: String,
    config: PathBuf,
    ports: Vec<u16>,
}

impl Sims {
    pub fn start(exe: &str, config: PathBuf, ports: Vec<u16>) -> Result<Self, String> {
        let guard = Self::spawn(exe, &config, &ports)?;
        Ok(Self {
            guard,
            exe: exe.to_owned(),
            config,
            ports,
        })
    }

    fn spawn(exe: &str, config: &Path, ports: &[u16]) -> Result<Guard, String> {
        let mut sim = Guard(
            Command::new(exe)
                .args(["simulate", "--config"])
                .arg(config)
                .stdout(Stdio::null())
                .spawn()
                .map_err(|e| format!("avwarden simulate: {e}"))?,
        );
        wait_listening(ports, &mut sim.0)?;
        Ok(sim)
    }

    pub fn restart(&mut self) -> Result<(), String> {
        self.guard.stop();
        self.guard = Self::spawn(&self.exe, &self.config, &self.ports)?;
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.guard.0.id()
    }

    pub fn stop(&mut self) {
        self.guard.stop();
    }
}

/// A poller started as a child that speaks the counts protocol ([`report_counts`]): started,
/// "ready" read, given `warmup`; its counts asked for with SIGUSR1.
pub struct Peer {
    child: Guard,
    out: std::io::BufReader<std::process::ChildStdout>,
    name: String,
}

impl Peer {
    pub fn start(cmd: &mut Command, name: &str, warmup: Duration) -> Result<Self, String> {
        use std::io::BufRead;
        let mut child = Guard(
            cmd.stdout(Stdio::piped())
                .spawn()
                .map_err(|e| format!("{name}: {e}"))?,
        );
        let mut out = std::io::BufReader::new(child.0.stdout.take().ok_or("no stdout")?);
        let mut line = String::new();
        out.read_line(&mut line).map_err(|e| e.to_string())?;
        if line.trim() != "ready" {
            return Err(format!("{name}: {line:?}"));
        }
        pause(warmup);
        Ok(Self {
            child,
            out,
            name: name.to_owned(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// Its `what` count and its errors so far (`<what> <n> errors <m>`).
    pub fn counts(&mut self, what: &str) -> Result<(f64, u64), String> {
        use std::io::BufRead;
        let _ = Command::new("kill")
            .args(["-USR1", &self.pid().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let mut line = String::new();
        self.out.read_line(&mut line).map_err(|e| e.to_string())?;
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next(), words.next()) {
            (Some(w), Some(n), Some("errors"), Some(e)) if w == what => Ok((
                n.parse::<f64>().map_err(|e| e.to_string())?,
                e.parse::<u64>().map_err(|e| e.to_string())?,
            )),
            _ => Err(format!("{}: no {what} count: {line:?}", self.name)),
        }
    }

    pub fn stop(&mut self) {
        self.child.stop();
    }
}

/// A bench's exit: success, or its error on stderr under its name.
pub fn exit_code(bench: &str, res: Result<(), String>) -> std::process::ExitCode {
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{bench}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `perf record <options> -p <pid> -o <out>`, running until [`perf_stop`].
pub fn perf_record(pid: u32, out: &Path, options: &[&str]) -> Result<Guard, String> {
    Ok(Guard(
        Command::new("perf")
            .arg("record")
            .args(options)
            .arg("-p")
            .arg(pid.to_string())
            .arg("-o")
            .arg(out)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("perf: {e}"))?,
    ))
}

/// End a [`perf_record`] the way perf writes its file whole: SIGINT, then wait.
pub fn perf_stop(perf: Option<Guard>) {
    if let Some(mut perf) = perf {
        let _ = Command::new("kill")
            .args(["-INT", &perf.0.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = perf.0.wait();
    }
}
