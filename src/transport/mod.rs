//! Bytes in and out: serial ports, TCP sockets, UDP. Reconnect policy (jittered exponential
//! backoff) lives here too.
//!
//! This layer must not know any device or protocol: it hands `AsyncRead + AsyncWrite` streams
//! to the runtime, which hands them to drivers.

pub mod backoff;
pub mod mqtt;
pub mod serial;
pub mod tcp;
pub mod udp;

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub use backoff::Backoff;

/// Why bytes could not be moved. The runtime treats every one of these as "link down".
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("connect to {target} timed out after {after_ms} ms")]
    ConnectTimeout { target: String, after_ms: u64 },
    #[error("connect to {target} failed: {source}")]
    Connect { target: String, source: io::Error },
    #[error("open serial port {path} failed: {reason}")]
    SerialOpen { path: String, reason: String },
    #[error("no reply for {polls} polls")]
    NoReply { polls: u32 },
    /// The comms monitor's verdict: nothing heard from the device for this long.
    #[error("device silent for {secs} s")]
    Silent { secs: u64 },
    #[error("link closed by peer")]
    Closed,
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

/// Any byte stream a driver can talk over: serial port, TCP socket, or an in-memory duplex in
/// unit tests.
pub trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> ByteStream for T {}

/// A connected byte stream, boxed so the runtime need not know its concrete type.
pub struct Stream {
    inner: Box<dyn ByteStream>,
    peer: String,
}

impl Stream {
    pub fn new(inner: impl ByteStream + 'static, peer: impl Into<String>) -> Self {
        Self {
            inner: Box::new(inner),
            peer: peer.into(),
        }
    }
    pub fn peer(&self) -> &str {
        &self.peer
    }
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stream").field("peer", &self.peer).finish()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

/// Where a device's bytes go, as validated from config and profile.
#[derive(Debug, Clone, PartialEq)]
pub enum LinkSpec {
    Serial(serial::SerialSpec),
    Tcp(tcp::TcpSpec),
    /// One UDP peer (Sennheiser SSC).
    Udp {
        host: String,
        port: u16,
    },
    /// The device is reached through the daemon's MQTT client (zigbee2mqtt and the like).
    Mqtt {
        topic: String,
    },
}

impl LinkSpec {
    pub fn describe(&self) -> String {
        match self {
            LinkSpec::Serial(s) => format!("serial {} {}", s.path, s.settings()),
            LinkSpec::Tcp(t) => format!("tcp {}:{}", t.host, t.port),
            LinkSpec::Udp { host, port } => format!("udp {host}:{port}"),
            LinkSpec::Mqtt { topic } => format!("mqtt {topic}"),
        }
    }

    /// Open a stream link (serial or TCP).
    pub async fn open_stream(&self) -> Result<Stream, TransportError> {
        match self {
            LinkSpec::Serial(s) => serial::open(s),
            LinkSpec::Tcp(t) => tcp::connect(t).await,
            other => Err(TransportError::Connect {
                target: other.describe(),
                source: io::Error::new(io::ErrorKind::Unsupported, "not a stream link"),
            }),
        }
    }
}

/// An open connection to a device, whatever carries it.
pub enum Connection {
    /// A byte stream: serial port or TCP socket.
    Stream(Stream),
    /// A UDP socket connected to the device.
    Datagram(tokio::net::UdpSocket),
    /// The device is a topic on the daemon's MQTT client, which its driver holds: nothing of
    /// its own to open.
    Topic { topic: String },
}

/// Open the connection `spec` describes: the one place where a link becomes a connection.
pub async fn open(spec: &LinkSpec) -> Result<Connection, TransportError> {
    Ok(match spec {
        LinkSpec::Serial(_) | LinkSpec::Tcp(_) => Connection::Stream(spec.open_stream().await?),
        LinkSpec::Udp { host, port } => Connection::Datagram(udp::connect(host, *port).await?),
        LinkSpec::Mqtt { topic } => Connection::Topic {
            topic: topic.clone(),
        },
    })
}
