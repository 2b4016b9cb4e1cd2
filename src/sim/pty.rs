//! Pseudo-terminals for serial-device simulators: the simulator holds the master side, the
//! driver opens the slave path exactly as it would open `/dev/ttyUSB0`.
//!
//! This module owns opening the pair (slave in raw mode, so CR is not turned into LF), the
//! optional stable symlink to the slave, and non-blocking async I/O on the master. It must not
//! know any protocol. A real UART keeps transmitting whether anyone listens or not, so writes
//! while no one has the slave open are dropped, never queued without bound.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
use tokio::io::unix::AsyncFd;

use super::SimError;

/// How long a write may wait for room before the bytes are dropped (nobody is reading).
const WRITE_PATIENCE: Duration = Duration::from_millis(500);

/// The master side of a pseudo-terminal.
pub struct PtyMaster {
    /// Always `Some` between calls; taken only to re-register (see [`PtyMaster::reset`]).
    fd: Option<AsyncFd<File>>,
    slave: PathBuf,
    link: Option<PathBuf>,
}

impl std::fmt::Debug for PtyMaster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PtyMaster")
            .field("slave", &self.slave)
            .finish()
    }
}

fn pty_err(what: &str, e: impl std::fmt::Display) -> SimError {
    SimError::Pty(format!("{what}: {e}"))
}

fn register(file: File) -> io::Result<AsyncFd<File>> {
    // `AsyncFd::new` is deprecated because an arbitrary `T: AsRawFd` may close or swap its
    // descriptor; a `File` owns its descriptor for its whole life, which is exactly the
    // contract the unsafe `register` asks for, and unsafe code is forbidden here.
    #[allow(deprecated)]
    AsyncFd::new(file)
}

fn is_eio(e: &io::Error) -> bool {
    e.raw_os_error() == Some(nix::errno::Errno::EIO as i32)
}

impl PtyMaster {
    /// Open a new pair. With `link`, a symlink of that name is made to point at the slave.
    pub fn open(link: Option<&Path>) -> Result<PtyMaster, SimError> {
        let pair = nix::pty::openpty(None, None).map_err(|e| pty_err("openpty", e))?;
        let slave = nix::unistd::ttyname(&pair.slave).map_err(|e| pty_err("ttyname", e))?;
        // Raw: no CR→LF translation, no echo, no line buffering; bytes pass as the device
        // sends them.
        let mut t = tcgetattr(&pair.slave).map_err(|e| pty_err("tcgetattr", e))?;
        cfmakeraw(&mut t);
        tcsetattr(&pair.slave, SetArg::TCSANOW, &t).map_err(|e| pty_err("tcsetattr", e))?;
        // Our slave handle is closed here: the driver must be the one that opens it (the
        // transport opens ports exclusively, and an exclusive tty stays exclusive while any
        // other handle keeps it open).
        drop(pair.slave);
        let raw = pair.master.as_raw_fd();
        let flags = fcntl(raw, FcntlArg::F_GETFL).map_err(|e| pty_err("fcntl", e))?;
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        fcntl(raw, FcntlArg::F_SETFL(flags)).map_err(|e| pty_err("fcntl", e))?;
        let fd = register(File::from(pair.master))?;
        let link = match link {
            Some(l) => {
                let _ = std::fs::remove_file(l);
                std::os::unix::fs::symlink(&slave, l)?;
                Some(l.to_path_buf())
            }
            None => None,
        };
        Ok(PtyMaster {
            fd: Some(fd),
            slave,
            link,
        })
    }

    /// The path a driver opens (the symlink when one was asked for).
    pub fn path(&self) -> &Path {
        self.link.as_deref().unwrap_or(&self.slave)
    }

    fn fd(&self) -> io::Result<&AsyncFd<File>> {
        self.fd
            .as_ref()
            .ok_or_else(|| io::Error::other("pty master lost its registration"))
    }

    /// While no one has the slave open the master reports hang-up, and tokio keeps a hang-up
    /// as permanent readiness; registering the descriptor afresh forgets it, so that a driver
    /// opening the port later is heard.
    fn reset(&mut self) -> io::Result<()> {
        if let Some(fd) = self.fd.take() {
            self.fd = Some(register(fd.into_inner())?);
        }
        Ok(())
    }

    /// Read what the driver wrote. Cancel-safe. While no one has the slave open the kernel
    /// reports EIO; that is "nothing yet", not an error.
    pub async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let idle = {
                let mut guard = self.fd()?.readable().await?;
                let hung_up = guard.ready().is_read_closed();
                match guard.try_io(|inner| {
                    let mut f: &File = inner.get_ref();
                    f.read(buf)
                }) {
                    Ok(Ok(n)) if n > 0 => return Ok(n),
                    Ok(Ok(_)) => true,
                    Ok(Err(e)) if is_eio(&e) => true,
                    Ok(Err(e)) => return Err(e),
                    Err(_would_block) => hung_up,
                }
            };
            if idle {
                self.reset()?;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// Write everything, waiting a little for room; drops the rest when no one reads.
    pub async fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        let fd = self.fd()?;
        let res = tokio::time::timeout(WRITE_PATIENCE, async {
            while !data.is_empty() {
                let mut guard = fd.writable().await?;
                let hung_up = guard.ready().is_write_closed();
                match guard.try_io(|inner| {
                    let mut f: &File = inner.get_ref();
                    f.write(data)
                }) {
                    Ok(Ok(n)) => data = &data[n..],
                    Ok(Err(e)) if is_eio(&e) => return Ok(()),
                    Ok(Err(e)) => return Err(e),
                    // Full and no one reading: like a UART, the bytes are gone.
                    Err(_would_block) if hung_up => return Ok(()),
                    Err(_would_block) => tokio::task::yield_now().await,
                }
            }
            Ok(())
        })
        .await;
        match res {
            Ok(r) => r,
            Err(_) => Ok(()),
        }
    }
}

impl Drop for PtyMaster {
    fn drop(&mut self) {
        if let Some(l) = &self.link {
            let _ = std::fs::remove_file(l);
        }
    }
}
