//! Pseudo-terminals for serial-device simulators: the simulator holds the master side, the
//! driver opens the slave path exactly as it would open `/dev/ttyUSB0`. Every serial
//! simulator (ESC/VP21, Tesira on RS-232, Modbus RTU) and the Modbus interop relay use it.
//!
//! This module owns opening the pair (slave in raw mode, so CR is not turned into LF), the
//! optional stable symlink to the slave (pointed atomically, so it follows a re-open, and
//! removed with the master that made it), and non-blocking async I/O on the master as a
//! `tokio` `AsyncRead + AsyncWrite` without unsafe code. Pulling the cable is dropping the
//! master; plugging it back in is opening a new one on the same link. It must not know any
//! protocol. A real UART keeps transmitting whether anyone listens or not, so writes while no
//! one has the slave open are dropped, never queued without bound.

use std::fs::File;
use std::future::Future;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Sleep;

use super::SimError;

/// How long [`PtyMaster::send`] may wait for room before the bytes are dropped (nobody is
/// reading).
const WRITE_PATIENCE: Duration = Duration::from_millis(500);

/// How often a master with no one on the other side looks again.
const IDLE_RETRY: Duration = Duration::from_millis(20);

/// The master side of a pseudo-terminal.
pub struct PtyMaster {
    /// Always `Some` between calls; taken only to re-register (see [`PtyMaster::reset`]).
    fd: Option<AsyncFd<File>>,
    slave: PathBuf,
    link: Option<PathBuf>,
    /// Set while no one has the slave open: when a read looks again.
    retry: Option<Pin<Box<Sleep>>>,
}

impl std::fmt::Debug for PtyMaster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PtyMaster")
            .field("slave", &self.slave)
            .field("link", &self.link)
            .finish()
    }
}

fn pty_err(what: &str, e: impl std::fmt::Display) -> SimError {
    SimError::Pty(format!("{what}: {e}"))
}

fn register(file: File) -> io::Result<AsyncFd<File>> {
    // `AsyncFd::new` is deprecated because an arbitrary `T: AsRawFd` may close or swap its
    // descriptor while registered; its replacement `register` is `unsafe`, which this crate
    // forbids. A `File` owns its descriptor for its whole life and the `AsyncFd` owns the
    // `File` until both are dropped, which is exactly the contract `register` asks for.
    #[allow(deprecated)]
    AsyncFd::new(file)
}

fn is_eio(e: &io::Error) -> bool {
    e.raw_os_error() == Some(nix::errno::Errno::EIO as i32)
}

impl PtyMaster {
    /// Open a new pair. With `link`, a symlink of that name is pointed at the slave (replacing
    /// an older symlink of that name, so a re-open on the same link moves it).
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
        if let Some(l) = link {
            point_link(l, &slave)?;
        }
        Ok(PtyMaster {
            fd: Some(fd),
            slave,
            link: link.map(Path::to_path_buf),
            retry: None,
        })
    }

    /// The path a driver opens (the symlink when one was asked for).
    pub fn path(&self) -> &Path {
        self.link.as_deref().unwrap_or(&self.slave)
    }

    /// The slave device itself (`/dev/pts/N`), whatever the link.
    pub fn slave_path(&self) -> &Path {
        &self.slave
    }

    fn fd(&self) -> io::Result<&AsyncFd<File>> {
        self.fd
            .as_ref()
            .ok_or_else(|| io::Error::other("pty master lost its registration"))
    }

    /// While no one has the slave open the master reports hang-up, and tokio keeps a hang-up
    /// as permanent readiness (a `clear_ready` does not clear it, so a read would spin on
    /// would-block); registering the descriptor afresh forgets it, so that a driver opening
    /// the port later is heard.
    fn reset(&mut self) -> io::Result<()> {
        if let Some(fd) = self.fd.take() {
            self.fd = Some(register(fd.into_inner())?);
        }
        Ok(())
    }

    /// Write everything, waiting a little for room; drops the rest when no one reads.
    pub async fn send(&mut self, data: &[u8]) -> io::Result<()> {
        match tokio::time::timeout(WRITE_PATIENCE, self.write_all(data)).await {
            Ok(r) => r,
            Err(_) => Ok(()),
        }
    }
}

/// Reads are cancel-safe. While no one has the slave open the kernel reports EIO (or end of
/// file); that is "nothing yet", not an error: the read waits and looks again.
impl AsyncRead for PtyMaster {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if let Some(retry) = this.retry.as_mut() {
                ready!(retry.as_mut().poll(cx));
                this.retry = None;
            }
            let idle = {
                let mut guard = ready!(this.fd()?.poll_read_ready(cx))?;
                let hung_up = guard.ready().is_read_closed();
                let unfilled = buf.initialize_unfilled();
                match guard.try_io(|inner| inner.get_ref().read(unfilled)) {
                    Ok(Ok(n)) if n > 0 => {
                        buf.advance(n);
                        return Poll::Ready(Ok(()));
                    }
                    Ok(Ok(_)) => true,
                    Ok(Err(e)) if is_eio(&e) => true,
                    Ok(Err(e)) => return Poll::Ready(Err(e)),
                    Err(_would_block) => hung_up,
                }
            };
            if idle {
                this.reset()?;
                this.retry = Some(Box::pin(tokio::time::sleep(IDLE_RETRY)));
            }
        }
    }
}

/// Writes never fail for want of a listener: with no one on the slave the bytes are gone, as
/// on a UART. With someone on it, a full buffer waits (see [`PtyMaster::send`] for a bound).
impl AsyncWrite for PtyMaster {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        loop {
            let mut guard = ready!(this.fd()?.poll_write_ready(cx))?;
            let hung_up = guard.ready().is_write_closed();
            match guard.try_io(|inner| inner.get_ref().write(data)) {
                Ok(Err(e)) if is_eio(&e) => return Poll::Ready(Ok(data.len())),
                Ok(r) => return Poll::Ready(r),
                // Full and no one reading: like a UART, the bytes are gone.
                Err(_would_block) if hung_up => return Poll::Ready(Ok(data.len())),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Drop for PtyMaster {
    fn drop(&mut self) {
        // Only a link that still names our slave: after a re-open on the same link it already
        // points at the next pair, which must keep it.
        if let Some(l) = &self.link {
            if std::fs::read_link(l).is_ok_and(|t| t == self.slave) {
                let _ = std::fs::remove_file(l);
            }
        }
    }
}

/// Point `link` at `target`, replacing an older symlink atomically. Refuses to replace
/// anything that is not a symlink (a site config typo must not clobber a file).
fn point_link(link: &Path, target: &Path) -> Result<(), SimError> {
    if let Ok(meta) = std::fs::symlink_metadata(link) {
        if !meta.file_type().is_symlink() {
            return Err(SimError::Pty(format!(
                "{} exists and is not a symlink; refusing to replace it",
                link.display()
            )));
        }
    }
    let name = link
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pty".to_owned());
    let tmp = link.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    std::fs::rename(&tmp, link)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::serial::{open, SerialSpec};
    use crate::transport::Stream;
    use tokio::io::AsyncReadExt;

    /// Real pty I/O: bounds only a hang.
    const LIMIT: Duration = Duration::from_secs(10);

    /// The slave as a driver opens it: through the serial transport, exclusively.
    fn port(m: &PtyMaster) -> Stream {
        open(&SerialSpec::new(m.path().display().to_string(), 9600)).expect("open slave")
    }

    async fn read_some(m: &mut PtyMaster) -> Vec<u8> {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(LIMIT, m.read(&mut buf))
            .await
            .expect("master hears the slave")
            .unwrap();
        buf[..n].to_vec()
    }

    #[tokio::test]
    async fn bytes_pass_raw_both_ways_and_nobody_listening_drops_writes() {
        let mut m = PtyMaster::open(None).unwrap();
        // Nobody on the line: writes are dropped, not an error, and do not block.
        m.write_all(b"lost\r").await.unwrap();
        m.send(b"lost too\r").await.unwrap();
        let mut p = port(&m);
        p.write_all(b"PWR?\r").await.unwrap();
        let mut got = Vec::new();
        while got.len() < 5 {
            got.extend(read_some(&mut m).await);
        }
        // Raw mode: the CR arrives as CR.
        assert_eq!(got, b"PWR?\r");
        m.send(b"ok\r").await.unwrap();
        let mut back = [0u8; 3];
        tokio::time::timeout(LIMIT, p.read_exact(&mut back))
            .await
            .expect("slave hears the master")
            .unwrap();
        // Only what was sent while someone listened.
        assert_eq!(&back, b"ok\r");
    }

    /// A driver that closes its port and opens it again (a reconnect) is heard, and a read
    /// waiting on a silent open port sleeps instead of spinning: tokio keeps a hang-up as
    /// permanent readiness until the descriptor is registered afresh, and without that the
    /// read polls would-block in a loop, yielding only when tokio's cooperative budget runs
    /// out (hundreds of polls of the read in the 50 ms wait here, against four).
    #[tokio::test]
    async fn a_reopened_port_is_heard_and_a_silent_one_is_waited_for() {
        let mut m = PtyMaster::open(None).unwrap();
        for round in 0..3u8 {
            // Nobody on the line for a moment: the reactor sees the master hang up.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut p = port(&m);
            let byte = b'a' + round;
            let polls = std::cell::Cell::new(0u32);
            let mut read = std::pin::pin!(read_some(&mut m));
            let counted = std::future::poll_fn(|cx| {
                polls.set(polls.get() + 1);
                read.as_mut().poll(cx)
            });
            let (got, ()) = tokio::join!(counted, async {
                // The read is already waiting on an open, silent port.
                tokio::time::sleep(Duration::from_millis(50)).await;
                p.write_all(&[byte]).await.unwrap();
            });
            assert_eq!(got, [byte], "round {round}");
            assert!(polls.get() < 100, "round {round}: {} polls", polls.get());
            drop(p);
        }
    }

    #[tokio::test]
    async fn link_follows_a_reopen_and_goes_with_its_master() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("ttyDEV");
        let first = PtyMaster::open(Some(&link)).unwrap();
        assert_eq!(first.path(), link);
        assert_eq!(std::fs::read_link(&link).unwrap(), first.slave_path());
        let second = PtyMaster::open(Some(&link)).unwrap();
        assert_eq!(std::fs::read_link(&link).unwrap(), second.slave_path());
        // The old master goes: the link is the new one's and stays.
        drop(first);
        assert_eq!(std::fs::read_link(&link).unwrap(), second.slave_path());
        drop(second);
        assert!(std::fs::symlink_metadata(&link).is_err(), "link removed");
    }

    #[tokio::test]
    async fn a_link_never_replaces_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("notes.txt");
        std::fs::write(&file, "keep me").unwrap();
        let e = PtyMaster::open(Some(&file)).expect_err("refused");
        assert!(matches!(e, SimError::Pty(_)), "{e}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    }
}
