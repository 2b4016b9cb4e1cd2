//! A Mosquitto of the test's own (the independent broker the MQTT tests talk to), started on
//! a free loopback port, stopped or killed on demand.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Bounds a hang only.
const LIMIT: Duration = Duration::from_secs(40);

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The Mosquitto binary: `AVWARDEN_MOSQUITTO`, `PATH`, or Debian's /usr/sbin. Missing is a
/// clear skip, and a failure under CI.
pub fn mosquitto() -> Option<PathBuf> {
    let found = std::env::var_os("AVWARDEN_MOSQUITTO")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join("mosquitto"))
                    .find(|p| p.is_file())
            })
        })
        .or_else(|| Some(PathBuf::from("/usr/sbin/mosquitto")).filter(|p| p.is_file()));
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "mosquitto must be installed under CI (apt-get install mosquitto)"
        );
        eprintln!("skipped: mosquitto not found (set AVWARDEN_MOSQUITTO)");
    }
    found
}

/// A Mosquitto of our own on a free loopback port. With persistence, a stop by SIGTERM saves
/// the persistent sessions (and their queued QoS 1 messages) and a restart restores them.
pub struct Mosquitto {
    bin: PathBuf,
    pub dir: tempfile::TempDir,
    pub port: u16,
    persistence: bool,
    child: Option<tokio::process::Child>,
}

impl Mosquitto {
    pub async fn start(bin: PathBuf, persistence: bool) -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        // Mosquitto started as root drops to its own user, which must still write its
        // persistence file here.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let mut m = Mosquitto {
            bin,
            dir,
            port: free_port(),
            persistence,
            child: None,
        };
        m.run().await;
        m
    }

    pub async fn run(&mut self) {
        let conf = self.dir.path().join("mosquitto.conf");
        let persistence = if self.persistence {
            format!(
                "persistence true\npersistence_location {}/\n",
                self.dir.path().display()
            )
        } else {
            "persistence false\n".to_owned()
        };
        std::fs::write(
            &conf,
            format!(
                "listener {} 127.0.0.1\nallow_anonymous true\nlog_dest file {}/log\n{persistence}",
                self.port,
                self.dir.path().display()
            ),
        )
        .unwrap();
        let child = tokio::process::Command::new(&self.bin)
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start mosquitto");
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        tokio::time::timeout(LIMIT, async {
            while tokio::net::TcpStream::connect(addr).await.is_err() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("mosquitto listening");
    }

    /// An orderly stop (SIGTERM): Mosquitto writes its persistence file on the way out.
    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Some(pid) = c.id() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            let _ = tokio::time::timeout(LIMIT, c.wait()).await;
        }
    }

    /// The broker dies at once (SIGKILL): nothing is saved, no client is told.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
    }
}
