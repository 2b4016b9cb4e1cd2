//! The runtime's open connection as a driver sees it: a byte stream with a bounded receive
//! buffer, frame reads with a deadline, and the one request/answer loop every driver goes
//! through ([`Link::converse`], and [`Link::exchange`] for the common case); for devices
//! that close the socket after every reply, a fresh connection per exchange. UDP devices
//! (Sennheiser SSC) get a connected datagram socket instead of a stream:
//! [`Link::send_datagram`], and frames are whole datagrams.
//!
//! This module owns the connection abstraction the driver layer sees ([`Connection`],
//! [`LinkFacts`], [`LinkError`]). It must not name the transport: the runtime builds a `Link`
//! from an [`Opener`] (its way to `transport::open`) and the facts it knows of the link, so a
//! driver cannot tell RS-232 from TCP.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::time::Duration;

use bytes::BytesMut;
use futures::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::Decoder;

use super::{DriverError, Observer};
use crate::codec::ProtocolError;

/// Bytes we keep at most while waiting for a frame end; a device that streams more without a
/// terminator is sending garbage, and the decoder is told to resynchronise.
pub const DEFAULT_MAX_BUFFER: usize = 16 * 1024;

/// Garbage read without one complete frame, in multiples of the frame limit, after which a
/// stream is taken for a flood and its session ends like an oversized frame.
const UNFRAMED_FACTOR: usize = 4;

/// Reads [`Link::try_frame`] makes at most for one frame before saying nothing is ready.
const TRY_READS: usize = 4;

/// Frames a driver's `listen` applies at most after the one it waited for, before it hands
/// the turn back to the runtime (a command may be waiting).
pub const DRAIN_FRAMES: usize = 64;

/// Any byte stream a driver can talk over: serial port, TCP socket, or an in-memory duplex in
/// unit tests.
pub trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> ByteStream for T {}

/// An open connection to a device, as the driver layer sees it.
pub enum Connection {
    /// A byte stream (whatever carries it).
    Stream(Box<dyn ByteStream>),
    /// A datagram socket connected to its one peer.
    Datagram(tokio::net::UdpSocket),
    /// The device is a topic on the daemon's message bus, reached through `bus`.
    Topic {
        topic: String,
        bus: std::sync::Arc<dyn Topics>,
    },
}

/// One message from a subscribed topic.
#[derive(Debug, Clone)]
pub struct TopicMessage {
    pub topic: String,
    pub payload: bytes::Bytes,
}

/// Why the bus did not take a subscription or a publish.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TopicError {
    #[error("not connected to the broker")]
    NotConnected,
    #[error("request queue is full")]
    QueueFull,
    #[error("client stopped")]
    Stopped,
    /// A topic or filter the bus refuses, in its words.
    #[error("{0}")]
    Refused(String),
}

/// The daemon's message bus as a topic device's driver sees it: the runtime hands it over in
/// [`Connection::Topic`], so the driver never names the client that carries it.
#[async_trait::async_trait]
pub trait Topics: Send + Sync {
    /// The broker, for messages.
    fn broker(&self) -> String;
    fn is_connected(&self) -> bool;
    /// Wait at most `within` for the bus to connect; whether it did.
    async fn wait_connected(&self, within: Duration) -> bool;
    /// Messages on any of `filters`, at most `capacity` queued.
    fn subscribe(
        &self,
        filters: &[&str],
        capacity: usize,
    ) -> Result<Box<dyn TopicFeed>, TopicError>;
    fn publish(&self, topic: &str, payload: Vec<u8>, retain: bool) -> Result<(), TopicError>;
}

/// The messages of one subscription; dropping it unsubscribes.
#[async_trait::async_trait]
pub trait TopicFeed: Send {
    /// The next message; `None` once the bus has stopped. Cancel-safe.
    async fn recv(&mut self) -> Option<TopicMessage>;
}

/// Why bytes could not be moved. The runtime treats every one of these as "link down".
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The runtime could not open the connection; its reason, as the transport worded it.
    #[error("{0}")]
    Open(String),
    /// The comms monitor's verdict: nothing heard from the device for this long.
    #[error("device silent for {secs} s")]
    Silent { secs: u64 },
    #[error("link closed by peer")]
    Closed,
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

/// What the runtime knows of a link that the driver must honour without knowing the medium.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkFacts {
    /// Silence that separates two frames on the line (Modbus RTU's t3.5 at the port's baud
    /// rate); zero where the medium frames by itself.
    pub frame_gap: Duration,
    /// A fresh connection per exchange (PJLink projectors that hang up after each reply).
    pub per_exchange: bool,
}

/// How the runtime opens (and reopens) the connection behind a [`Link`].
pub type Opener =
    Box<dyn FnMut() -> Pin<Box<dyn Future<Output = Result<Connection, LinkError>> + Send>> + Send>;

/// What a frame read during [`Link::exchange`] is to the request.
#[derive(Debug)]
pub enum Reply {
    /// The answer: the exchange ends with it.
    Answer,
    /// Not ours (a late answer to an earlier request, an unsolicited push): skipped.
    Skip,
    /// A frame that cannot be a reply: counted as bad input, and the exchange reads on.
    Bad(ProtocolError),
}

/// What the caller of [`Link::converse`] makes of one read: a frame, or the decoder's
/// complaint about the bytes it dropped.
#[derive(Debug)]
pub enum Step<T> {
    /// The exchange ends with this.
    Done(T),
    /// Not the answer, or a part of it the caller keeps (ESC/VP21's lines before the prompt):
    /// the exchange reads on.
    Skip,
    /// Bad input: counted on the observer, and the exchange reads on.
    Bad(ProtocolError),
    /// Bytes the peer must get before it answers (Telnet negotiation in the middle of a
    /// reply): written, and the exchange reads on.
    Write(Vec<u8>),
    /// The exchange ends with this error, not counted: the caller decides what it is worth
    /// (PJLink counts a garbled reply and asks once more).
    End(DriverError),
}

/// Told each write's bytes once the write has completed (written and flushed to the
/// transport): a benchmark's stamp of "last byte written". Unset, a write pays one branch.
#[derive(Clone)]
pub struct WriteHook(pub std::sync::Arc<WriteFn>);

/// What a [`WriteHook`] calls: the bytes just written.
pub type WriteFn = dyn Fn(&[u8]) + Send + Sync;

impl std::fmt::Debug for WriteHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WriteHook")
    }
}

pub struct Link {
    opener: Opener,
    facts: LinkFacts,
    stream: Option<Box<dyn ByteStream>>,
    rx: BytesMut,
    /// True right after a new connection was made, until the driver calls [`Link::take_fresh`].
    fresh: bool,
    max_buffer: usize,
    /// Bytes read since the last complete frame: a peer that sends garbage without end (the
    /// decoder discarding it as it goes) is as costly as an endless line.
    unframed: usize,
    bytes_in: u64,
    bytes_out: u64,
    /// The connected datagram socket of a datagram link.
    udp: Option<tokio::net::UdpSocket>,
    /// A topic device's session is up (it has no stream): its topic and bus.
    topic: Option<(String, std::sync::Arc<dyn Topics>)>,
    on_write: Option<WriteHook>,
}

impl Link {
    /// A link the runtime opens with `opener`, honouring `facts`.
    pub fn new(facts: LinkFacts, opener: Opener) -> Self {
        Self {
            opener,
            facts,
            stream: None,
            rx: BytesMut::with_capacity(512),
            fresh: false,
            max_buffer: DEFAULT_MAX_BUFFER,
            unframed: 0,
            bytes_in: 0,
            bytes_out: 0,
            udp: None,
            topic: None,
            on_write: None,
        }
    }

    /// Call `hook` after every completed write from now on (`None`: stop).
    pub fn set_write_hook(&mut self, hook: Option<WriteHook>) {
        self.on_write = hook;
    }

    /// A link over an already connected stream (unit tests with `tokio::io::duplex`); once
    /// closed it cannot be reopened.
    pub fn over(stream: impl ByteStream + 'static) -> Self {
        let mut link = Self::new(
            LinkFacts::default(),
            Box::new(|| Box::pin(async { Err(LinkError::Closed) })),
        );
        link.stream = Some(Box::new(stream));
        link.fresh = true;
        link
    }

    pub fn facts(&self) -> LinkFacts {
        self.facts
    }

    pub fn is_per_exchange(&self) -> bool {
        self.facts.per_exchange
    }

    pub fn is_open(&self) -> bool {
        self.stream.is_some() || self.udp.is_some() || self.topic.is_some()
    }

    /// The topic of a topic device's open session, and the bus it is on.
    pub fn topic(&self) -> Option<(&str, &std::sync::Arc<dyn Topics>)> {
        self.topic.as_ref().map(|(t, bus)| (t.as_str(), bus))
    }

    /// Open the link (no-op when open). In per-exchange mode this connects lazily.
    pub async fn connect(&mut self) -> Result<(), LinkError> {
        if self.is_open() {
            return Ok(());
        }
        match (self.opener)().await? {
            Connection::Stream(s) => {
                self.stream = Some(s);
                self.rx.clear();
            }
            Connection::Datagram(sock) => self.udp = Some(sock),
            Connection::Topic { topic, bus } => self.topic = Some((topic, bus)),
        }
        self.fresh = true;
        Ok(())
    }

    /// Whether the current connection is new since the last call (a greeting is due).
    pub fn take_fresh(&mut self) -> bool {
        std::mem::take(&mut self.fresh)
    }

    /// Drop the connection. Per-exchange drivers call this after every reply.
    pub fn disconnect(&mut self) {
        self.topic = None;
        self.stream = None;
        self.udp = None;
        self.rx.clear();
        self.unframed = 0;
        self.fresh = false;
    }

    pub fn set_max_buffer(&mut self, max: usize) {
        self.max_buffer = max.max(64);
    }

    pub fn bytes_in(&self) -> u64 {
        self.bytes_in
    }
    pub fn bytes_out(&self) -> u64 {
        self.bytes_out
    }

    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), DriverError> {
        self.connect().await?;
        let stream = self.stream.as_mut().ok_or(LinkError::Closed)?;
        let res = async {
            stream.write_all(bytes).await?;
            stream.flush().await
        }
        .await;
        if let Err(e) = res {
            self.disconnect();
            return Err(LinkError::Io(e).into());
        }
        self.bytes_out += bytes.len() as u64;
        if let Some(hook) = &self.on_write {
            (hook.0)(bytes);
        }
        Ok(())
    }

    /// Read one frame, waiting at most `timeout` in total. Cancel-safe: bytes already read stay
    /// in the link's buffer for the next call.
    ///
    /// When the buffer exceeds the limit without a complete frame, the buffer is discarded,
    /// the link is disconnected and [`ProtocolError::Oversized`] is returned: the runtime
    /// reopens it after its backoff.
    pub async fn read_frame<D>(
        &mut self,
        decoder: &mut D,
        timeout: Duration,
    ) -> Result<D::Item, DriverError>
    where
        D: Decoder<Error = ProtocolError>,
    {
        if self.udp.is_some() {
            return self.read_datagram_frame(decoder, timeout).await;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(frame) = self.buffered_frame(decoder)? {
                return Ok(frame);
            }
            let stream = self.stream.as_mut().ok_or(LinkError::Closed)?;
            self.rx.reserve(512);
            // What the socket holds already is read without a timer: arming and cancelling
            // one per read is a timer-wheel entry per frame (issue 15.1).
            let read = match stream.read_buf(&mut self.rx).now_or_never() {
                Some(read) => read,
                None => {
                    let stream = self.stream.as_mut().ok_or(LinkError::Closed)?;
                    match tokio::time::timeout_at(deadline, stream.read_buf(&mut self.rx)).await {
                        Ok(read) => read,
                        Err(_) => {
                            return Err(DriverError::Timeout {
                                waited_ms: timeout.as_millis() as u64,
                            })
                        }
                    }
                }
            };
            if let Some(frame) = self.took(decoder, read)? {
                return Ok(frame);
            }
        }
    }

    /// A frame already buffered or completed by what the stream holds ready now, without
    /// waiting; `None` when nothing complete is there. A driver that heard one push drains the
    /// rest of the same read with it, instead of going back through the runtime's select once
    /// per frame (issue 15.2). Errors as [`Link::read_frame`]; a datagram link has no stream
    /// to drain and gives `None`.
    pub fn try_frame<D>(&mut self, decoder: &mut D) -> Result<Option<D::Item>, DriverError>
    where
        D: Decoder<Error = ProtocolError>,
    {
        // Bounded: a peer that never stops sending cannot hold the driver here.
        for _ in 0..TRY_READS {
            if let Some(frame) = self.buffered_frame(decoder)? {
                return Ok(Some(frame));
            }
            let Some(stream) = self.stream.as_mut() else {
                return Ok(None);
            };
            self.rx.reserve(512);
            let Some(read) = stream.read_buf(&mut self.rx).now_or_never() else {
                return Ok(None);
            };
            if let Some(frame) = self.took(decoder, read)? {
                return Ok(Some(frame));
            }
        }
        Ok(None)
    }

    /// The next complete frame in the buffer, or the end of a peer that floods it.
    fn buffered_frame<D>(&mut self, decoder: &mut D) -> Result<Option<D::Item>, DriverError>
    where
        D: Decoder<Error = ProtocolError>,
    {
        match decoder.decode(&mut self.rx) {
            Ok(Some(frame)) => {
                self.unframed = 0;
                return Ok(Some(frame));
            }
            Ok(None) => {}
            // The decoder's own frame limit: the same flood, the same end.
            Err(e @ ProtocolError::Oversized { .. }) => {
                self.disconnect();
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        }
        let flood = self.unframed > self.max_buffer.saturating_mul(UNFRAMED_FACTOR);
        if self.rx.len() > self.max_buffer || flood {
            let n = self.rx.len().max(self.unframed);
            self.unframed = 0;
            self.rx.clear();
            // A stream past the limit without a frame is a peer that may never stop
            // sending: reading on costs a core (issue 16.4). The session ends here, so a
            // driver that counts the error and reads on finds the link closed.
            self.disconnect();
            return Err(ProtocolError::Oversized {
                limit: self.max_buffer,
                got: n,
            }
            .into());
        }
        Ok(None)
    }

    /// Account for one read from the stream; a final frame when the peer closed after it.
    fn took<D>(
        &mut self,
        decoder: &mut D,
        read: std::io::Result<usize>,
    ) -> Result<Option<D::Item>, DriverError>
    where
        D: Decoder<Error = ProtocolError>,
    {
        match read {
            Ok(0) => {
                // Peer closed. A decoder may still hold a final frame without terminator.
                if let Some(frame) = decoder.decode_eof(&mut self.rx)? {
                    self.stream = None;
                    return Ok(Some(frame));
                }
                self.disconnect();
                Err(LinkError::Closed.into())
            }
            Ok(n) => {
                self.bytes_in += n as u64;
                self.unframed = self.unframed.saturating_add(n);
                Ok(None)
            }
            Err(e) => {
                self.disconnect();
                Err(LinkError::Io(e).into())
            }
        }
    }

    /// One request and its answer: send `request` (nothing when empty: the answer to a
    /// greeting or a command already on the line), then read frames until `is_answer` says
    /// one is the answer or `wait` has passed.
    ///
    /// Every frame read goes through `is_answer` with the observer, so a driver can apply
    /// what it skips (a meter push between request and answer). A skipped frame (a late
    /// answer to a request that timed out, an unsolicited push) keeps one slow reply from
    /// shifting every later answer by one. Bad input, from the decoder or judged by
    /// `is_answer`, is counted on `obs` and the exchange reads on until its deadline. An
    /// oversized frame or a flood ends the session ([`Link::read_frame`]) and the exchange
    /// with it. Cancel-safe like [`Link::read_frame`].
    pub async fn exchange<D>(
        &mut self,
        codec: &mut D,
        request: &[u8],
        wait: Duration,
        obs: &mut Observer,
        mut is_answer: impl FnMut(&D::Item, &mut Observer) -> Reply,
    ) -> Result<D::Item, DriverError>
    where
        D: Decoder<Error = ProtocolError>,
    {
        self.converse(codec, request, wait, obs, |read, obs| match read {
            Ok(frame) => match is_answer(&frame, obs) {
                Reply::Answer => Step::Done(frame),
                Reply::Skip => {
                    tracing::debug!("skipped a frame that is not the answer");
                    Step::Skip
                }
                Reply::Bad(p) => Step::Bad(p),
            },
            Err(p) => Step::Bad(p),
        })
        .await
    }

    /// The one request/answer loop every driver goes through: send `request` (as one datagram
    /// on a datagram link, where the codec parses one datagram a frame; nothing when empty),
    /// then hand every read (a frame, or the decoder's error) to `on_read`, which says what it
    /// is to the request ([`Step`]), until it says done or `wait` has passed
    /// ([`DriverError::Timeout`]; what is buffered then is [`Link::pending_input`]).
    ///
    /// An oversized frame or a flood ends the session ([`Link::read_frame`]): `on_read` sees
    /// the error (to count it or not) and the exchange ends with it. Cancel-safe like
    /// [`Link::read_frame`].
    pub async fn converse<D, T>(
        &mut self,
        codec: &mut D,
        request: &[u8],
        wait: Duration,
        obs: &mut Observer,
        mut on_read: impl FnMut(Result<D::Item, ProtocolError>, &mut Observer) -> Step<T>,
    ) -> Result<T, DriverError>
    where
        D: Decoder<Error = ProtocolError>,
    {
        if !request.is_empty() {
            self.connect().await?;
            if self.udp.is_some() {
                self.send_datagram(request).await?;
            } else {
                self.send(request).await?;
            }
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let read = match self.read_frame(codec, left).await {
                Ok(frame) => Ok(frame),
                Err(DriverError::Protocol(p)) => Err(p),
                Err(DriverError::Timeout { .. }) => {
                    return Err(DriverError::Timeout {
                        waited_ms: wait.as_millis() as u64,
                    })
                }
                Err(e) => return Err(e),
            };
            // The session ended under this read (an oversized frame): nothing more can come.
            let ended = match &read {
                Err(p) if !self.is_open() => Some(p.clone()),
                _ => None,
            };
            match on_read(read, obs) {
                Step::Done(t) => return Ok(t),
                Step::Skip => {}
                Step::Bad(p) => obs.bad_input(&p),
                Step::Write(bytes) => {
                    if ended.is_none() {
                        self.send(&bytes).await?;
                    }
                }
                Step::End(e) => return Err(e),
            }
            if let Some(p) = ended {
                return Err(p.into());
            }
        }
    }

    /// The bytes read and not yet framed: what an exchange that timed out did hear (a
    /// truncated Modbus frame is bad input, not silence).
    pub fn pending_input(&self) -> &[u8] {
        &self.rx
    }

    /// Discard buffered input (after a timeout, so a late reply is not taken for the next one).
    pub fn discard_input(&mut self) -> usize {
        let n = self.rx.len();
        self.rx.clear();
        n
    }

    /// Discard buffered input and whatever the stream holds ready now, without waiting: a
    /// reply that came after its exchange's deadline must not be taken for the next one's
    /// (Modbus replies carry no request id).
    pub fn drain_input(&mut self) -> usize {
        let mut n = self.discard_input();
        let Some(stream) = self.stream.as_mut() else {
            return n;
        };
        // Bounded: a port that never stops talking cannot hold the driver here.
        for _ in 0..16 {
            self.rx.reserve(512);
            match stream.read_buf(&mut self.rx).now_or_never() {
                Some(Ok(k)) if k > 0 => {
                    self.bytes_in += k as u64;
                    n += k;
                    self.rx.clear();
                }
                // Nothing ready, or an end or error the next read reports.
                _ => break,
            }
        }
        n
    }
}

impl Link {
    /// Send one datagram on a UDP link (connecting first if needed).
    pub async fn send_datagram(&mut self, bytes: &[u8]) -> Result<(), DriverError> {
        self.connect().await?;
        let sock = self.udp.as_ref().ok_or(LinkError::Closed)?;
        if let Err(e) = sock.send(bytes).await {
            self.disconnect();
            return Err(LinkError::Io(e).into());
        }
        self.bytes_out += bytes.len() as u64;
        if let Some(hook) = &self.on_write {
            (hook.0)(bytes);
        }
        Ok(())
    }

    /// One datagram as one frame: received into the link's buffer (no copy), parsed whole
    /// by `decoder`, and dropped whatever the decoder left of it (a datagram is its own frame).
    async fn read_datagram_frame<D>(
        &mut self,
        decoder: &mut D,
        timeout: Duration,
    ) -> Result<D::Item, DriverError>
    where
        D: Decoder<Error = ProtocolError>,
    {
        let sock = self.udp.as_ref().ok_or(LinkError::Closed)?;
        self.rx.clear();
        // One byte over the limit tells an oversized datagram from one that just fits.
        self.rx.reserve(self.max_buffer + 1);
        let read = tokio::time::timeout(timeout, sock.recv_buf(&mut self.rx)).await;
        let n = match read {
            Err(_) => {
                return Err(DriverError::Timeout {
                    waited_ms: timeout.as_millis() as u64,
                })
            }
            Ok(Err(e)) => {
                self.disconnect();
                return Err(LinkError::Io(e).into());
            }
            Ok(Ok(n)) => n,
        };
        self.bytes_in += n as u64;
        let frame = if n > self.max_buffer {
            Err(ProtocolError::Oversized {
                limit: self.max_buffer,
                got: n,
            })
        } else {
            decoder.decode_eof(&mut self.rx)
        };
        self.rx.clear();
        match frame? {
            Some(frame) => Ok(frame),
            None => Err(ProtocolError::malformed("an empty datagram").into()),
        }
    }
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("facts", &self.facts)
            .field("open", &self.is_open())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A link the way the runtime builds one, opening a TCP connection to `port` on loopback.
    fn tcp_link(port: u16) -> Link {
        Link::new(
            LinkFacts::default(),
            Box::new(move || {
                Box::pin(async move {
                    let s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
                    Ok(Connection::Stream(Box::new(s)))
                })
            }),
        )
    }

    /// A peer on loopback that writes `chunk` without end to whoever connects.
    async fn flooder(chunk: &'static [u8]) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        crate::test_spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                crate::test_spawn(async move { while s.write_all(chunk).await.is_ok() {} });
            }
        });
        port
    }

    /// Issue 16.4: an endless line was read for 2–3 s a connection (~250 MB/s). The session
    /// ends at the first oversized frame, having read about one frame limit of bytes.
    #[tokio::test]
    async fn an_endless_line_ends_the_session_after_one_frame_limit_of_bytes() {
        let port = flooder(&[b'A'; 4096]).await;
        let mut link = tcp_link(port);
        let limit = crate::codec::pjlink::LineDecoder::replies().max();
        for session in 1..=3u64 {
            // As the driver does on a fresh connection.
            let mut decoder = crate::codec::pjlink::LineDecoder::replies();
            link.connect().await.unwrap();
            let r = link.read_frame(&mut decoder, Duration::from_secs(30)).await;
            assert!(
                matches!(
                    r,
                    Err(DriverError::Protocol(ProtocolError::Oversized { .. }))
                ),
                "{r:?}"
            );
            assert!(!link.is_open(), "the session ends");
            let per_session = link.bytes_in() / session;
            assert!(
                per_session <= (limit + DEFAULT_MAX_BUFFER) as u64,
                "read {per_session} bytes a session for a {limit}-byte limit"
            );
        }
    }

    /// Issue 16.4: garbage the decoder discards as it goes (never a frame) was read at full
    /// speed. Past [`UNFRAMED_FACTOR`] frame limits without a frame, the session ends.
    #[tokio::test]
    async fn endless_garbage_without_a_frame_ends_the_session_after_a_bounded_read() {
        let port = flooder(b"no frame here\r\n").await;
        let mut link = tcp_link(port);
        let mut decoder = crate::codec::shure::ShureCodec::new();
        link.connect().await.unwrap();
        // The driver counts each garbage error and reads on, as Shure's does.
        let mut garbage = 0;
        let r = loop {
            match link.read_frame(&mut decoder, Duration::from_secs(30)).await {
                Err(DriverError::Protocol(ProtocolError::Garbage { .. })) => garbage += 1,
                r => break r,
            }
        };
        assert!(
            matches!(
                r,
                Err(DriverError::Protocol(ProtocolError::Oversized { .. }))
            ),
            "{r:?} after {garbage} garbage errors"
        );
        assert!(!link.is_open());
        let bound = (DEFAULT_MAX_BUFFER * (UNFRAMED_FACTOR + 2)) as u64;
        assert!(link.bytes_in() <= bound, "read {} bytes", link.bytes_in());
    }

    /// Lines ending in `\n`; a line starting with `!` is garbage; a line longer than 64 bytes
    /// is oversized. Enough framing to drive [`Link::exchange`] through every path.
    struct Lines;

    impl Decoder for Lines {
        type Item = String;
        type Error = ProtocolError;
        fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<String>, ProtocolError> {
            let Some(end) = buf.iter().position(|b| *b == b'\n') else {
                if buf.len() > 64 {
                    return Err(ProtocolError::Oversized {
                        limit: 64,
                        got: buf.len(),
                    });
                }
                return Ok(None);
            };
            let line = buf.split_to(end + 1);
            let text = String::from_utf8_lossy(&line[..end]).into_owned();
            if text.starts_with('!') {
                return Err(ProtocolError::Garbage { skipped: end + 1 });
            }
            Ok(Some(text))
        }
    }

    fn observer() -> (
        Observer,
        tokio::sync::watch::Receiver<crate::model::DeviceState>,
    ) {
        use crate::model::{DeviceId, DeviceState, ProfileId, RoomId};
        let clock = crate::clock::Clock::starting_at(chrono::DateTime::UNIX_EPOCH);
        let st = DeviceState::new(
            DeviceId::new("d1"),
            RoomId::new("r1"),
            ProfileId::new("test"),
            "test".into(),
            clock.now(),
        );
        let (tx, rx) = tokio::sync::watch::channel(st);
        let bus = crate::events::EventBus::new(crate::metrics::Metrics::new());
        (Observer::new(clock, std::sync::Arc::new(tx), bus), rx)
    }

    /// The answer to `GET x` is `x=…`; anything else is someone else's.
    #[allow(clippy::ptr_arg)] // it is an `is_answer` for the decoder's `String` items
    fn answer_to_x(line: &String, _: &mut Observer) -> Reply {
        if line.starts_with("x=") {
            Reply::Answer
        } else {
            Reply::Skip
        }
    }

    async fn request_seen(peer: &mut tokio::io::DuplexStream) -> String {
        let mut buf = vec![0u8; 64];
        let n = peer.read(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[tokio::test(start_paused = true)]
    async fn the_write_hook_sees_each_completed_write_and_nothing_after_it_is_unset() {
        let (ours, mut peer) = tokio::io::duplex(1024);
        let mut link = Link::over(ours);
        let seen: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>> = Default::default();
        let sink = seen.clone();
        link.set_write_hook(Some(WriteHook(std::sync::Arc::new(move |b: &[u8]| {
            sink.lock().unwrap().push(b.to_vec());
        }))));
        link.send(b"one\n").await.unwrap();
        link.send(b"two\n").await.unwrap();
        link.set_write_hook(None);
        link.send(b"three\n").await.unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            [b"one\n".to_vec(), b"two\n".to_vec()]
        );
        let mut buf = vec![0u8; 64];
        let mut got = Vec::new();
        while got.len() < 14 {
            let n = peer.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"one\ntwo\nthree\n");
    }

    #[tokio::test(start_paused = true)]
    async fn an_exchange_without_an_answer_times_out_after_its_wait() {
        let (ours, mut peer) = tokio::io::duplex(1024);
        let mut link = Link::over(ours);
        let (mut obs, _rx) = observer();
        let start = tokio::time::Instant::now();
        let r = link
            .exchange(
                &mut Lines,
                b"GET x\n",
                Duration::from_secs(2),
                &mut obs,
                answer_to_x,
            )
            .await;
        assert!(
            matches!(r, Err(DriverError::Timeout { waited_ms: 2000 })),
            "{r:?}"
        );
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        assert_eq!(request_seen(&mut peer).await, "GET x\n");
        assert!(link.is_open(), "a timeout does not end the session");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_frame_is_skipped_and_the_answer_taken() {
        let (ours, mut peer) = tokio::io::duplex(1024);
        let mut link = Link::over(ours);
        let (mut obs, rx) = observer();
        // A late answer to an earlier request, then ours.
        peer.write_all(b"y=1\nx=2\n").await.unwrap();
        let mut seen = Vec::new();
        let r = link
            .exchange(
                &mut Lines,
                b"GET x\n",
                Duration::from_secs(2),
                &mut obs,
                |l, o| {
                    seen.push(l.clone());
                    answer_to_x(l, o)
                },
            )
            .await;
        assert_eq!(r.unwrap(), "x=2");
        assert_eq!(seen, ["y=1", "x=2"], "every frame goes through is_answer");
        assert_eq!(
            rx.borrow().counters.bad_frames,
            0,
            "a stale frame is not bad input"
        );
    }

    /// Issue 15.2: frames that arrive in one read are all handed out, in order, without
    /// waiting; a partial frame at the end stays buffered until its rest comes.
    #[tokio::test(start_paused = true)]
    async fn frames_of_one_read_are_drained_in_order_and_a_partial_one_is_kept() {
        let (ours, mut peer) = tokio::io::duplex(1024);
        let mut link = Link::over(ours);
        peer.write_all(b"a=1\nb=2\nc=3\nd=").await.unwrap();
        let first = link.read_frame(&mut Lines, Duration::from_secs(1)).await;
        assert_eq!(first.unwrap(), "a=1");
        let mut rest = Vec::new();
        while let Some(frame) = link.try_frame(&mut Lines).unwrap() {
            rest.push(frame);
        }
        assert_eq!(rest, ["b=2", "c=3"]);
        assert_eq!(link.pending_input(), b"d=", "the partial frame is kept");
        peer.write_all(b"4\ne=5\n").await.unwrap();
        assert_eq!(link.try_frame(&mut Lines).unwrap().as_deref(), Some("d=4"));
        assert_eq!(link.try_frame(&mut Lines).unwrap().as_deref(), Some("e=5"));
        assert_eq!(link.try_frame(&mut Lines).unwrap(), None, "nothing ready");
        assert_eq!(link.bytes_in(), 20);
        // Nothing ready is not an error: the link stays open and waits as before.
        assert!(link.is_open());
        peer.write_all(b"f=6\n").await.unwrap();
        let next = link.read_frame(&mut Lines, Duration::from_secs(1)).await;
        assert_eq!(next.unwrap(), "f=6");
    }

    /// A peer that closes after its last frames: the frames come out, then the close.
    #[tokio::test(start_paused = true)]
    async fn a_drain_ends_at_a_closed_peer_with_the_frames_before_it() {
        let (ours, mut peer) = tokio::io::duplex(1024);
        let mut link = Link::over(ours);
        peer.write_all(b"a=1\nb=2\n").await.unwrap();
        drop(peer);
        assert_eq!(link.try_frame(&mut Lines).unwrap().as_deref(), Some("a=1"));
        assert_eq!(link.try_frame(&mut Lines).unwrap().as_deref(), Some("b=2"));
        let end = link.try_frame(&mut Lines);
        assert!(
            matches!(end, Err(DriverError::Link(LinkError::Closed))),
            "{end:?}"
        );
        assert!(!link.is_open());
    }

    /// Bad input met while draining is reported like a read's, and the frames after it
    /// still come out.
    #[tokio::test(start_paused = true)]
    async fn bad_input_in_a_drain_is_reported_and_the_drain_goes_on() {
        let (ours, mut peer) = tokio::io::duplex(1024);
        let mut link = Link::over(ours);
        peer.write_all(b"!x\nb=2\n").await.unwrap();
        let bad = link.try_frame(&mut Lines);
        assert!(matches!(bad, Err(DriverError::Protocol(_))), "{bad:?}");
        assert_eq!(link.try_frame(&mut Lines).unwrap().as_deref(), Some("b=2"));
    }

    #[tokio::test(start_paused = true)]
    async fn bad_input_is_counted_and_the_exchange_reads_on() {
        let (ours, mut peer) = tokio::io::duplex(1024);
        let mut link = Link::over(ours);
        let (mut obs, rx) = observer();
        // Garbage the decoder rejects, a frame `is_answer` rejects, then the answer.
        peer.write_all(b"!!noise\nx=?\nx=3\n").await.unwrap();
        let r = link
            .exchange(&mut Lines, b"", Duration::from_secs(2), &mut obs, |l, o| {
                if l == "x=?" {
                    Reply::Bad(ProtocolError::malformed("no value"))
                } else {
                    answer_to_x(l, o)
                }
            })
            .await;
        assert_eq!(r.unwrap(), "x=3");
        assert_eq!(rx.borrow().counters.bad_frames, 2);
        assert!(link.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn an_oversized_frame_ends_the_session_and_the_exchange() {
        let (ours, mut peer) = tokio::io::duplex(4096);
        let mut link = Link::over(ours);
        link.set_max_buffer(64);
        let (mut obs, rx) = observer();
        peer.write_all(&[b'A'; 200]).await.unwrap();
        let r = link
            .exchange(
                &mut Lines,
                b"GET x\n",
                Duration::from_secs(2),
                &mut obs,
                answer_to_x,
            )
            .await;
        assert!(
            matches!(
                r,
                Err(DriverError::Protocol(ProtocolError::Oversized { .. }))
            ),
            "{r:?}"
        );
        assert!(!link.is_open(), "the session ends");
        assert_eq!(rx.borrow().counters.oversized_frames, 1);
    }

    /// A datagram link exchanges whole datagrams: the request goes out as one, and every
    /// datagram back is one frame, a bad one counted and the exchange reading on.
    #[tokio::test]
    async fn a_datagram_exchange_reads_one_frame_a_datagram() {
        let peer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let peer_addr = peer.local_addr().unwrap();
        let mut link = Link::new(
            LinkFacts::default(),
            Box::new(move || {
                Box::pin(async move {
                    let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
                    s.connect(peer_addr).await?;
                    Ok(Connection::Datagram(s))
                })
            }),
        );
        let (mut obs, rx) = observer();
        let answer = async {
            let mut buf = [0u8; 64];
            let (n, from) = peer.recv_from(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"GET x\n");
            // A stale answer, garbage, then ours; each its own datagram, none with a newline
            // between frames of one datagram.
            for dg in [&b"y=1\n"[..], b"!junk\n", b"x=5\nx=6\n"] {
                peer.send_to(dg, from).await.unwrap();
            }
        };
        let mut codec = Lines;
        let ask = link.exchange(
            &mut codec,
            b"GET x\n",
            Duration::from_secs(5),
            &mut obs,
            answer_to_x,
        );
        let (r, ()) = tokio::join!(ask, answer);
        assert_eq!(r.unwrap(), "x=5");
        assert_eq!(rx.borrow().counters.bad_frames, 1);
        assert_eq!(
            link.pending_input(),
            b"",
            "the rest of a datagram is not kept"
        );
    }

    /// A frame that asks for a write back (Telnet negotiation in mid-reply) is answered
    /// through the link before the answer is read; a frame the caller ends on ends the
    /// exchange with its error, uncounted.
    #[tokio::test(start_paused = true)]
    async fn a_step_may_write_back_or_end_the_exchange() {
        let (ours, mut peer) = tokio::io::duplex(1024);
        let mut link = Link::over(ours);
        let (mut obs, rx) = observer();
        peer.write_all(b"ask\nx=1\n").await.unwrap();
        let r = link
            .converse(
                &mut Lines,
                b"",
                Duration::from_secs(2),
                &mut obs,
                |read, _| match read.as_deref() {
                    Ok("ask") => Step::Write(b"told\n".to_vec()),
                    Ok(l) if l.starts_with("x=") => Step::Done(l.to_owned()),
                    _ => Step::Skip,
                },
            )
            .await;
        assert_eq!(r.unwrap(), "x=1");
        assert_eq!(request_seen(&mut peer).await, "told\n");

        peer.write_all(b"x=?\nx=2\n").await.unwrap();
        let r: Result<String, _> = link
            .converse(&mut Lines, b"", Duration::from_secs(2), &mut obs, |_, _| {
                Step::End(ProtocolError::malformed("garbled").into())
            })
            .await;
        assert!(matches!(r, Err(DriverError::Protocol(_))), "{r:?}");
        assert_eq!(rx.borrow().counters.bad_frames, 0, "the caller counts");
    }
}
