//! The runtime's open connection as a driver sees it: a byte stream with a bounded receive
//! buffer, frame reads with a deadline, and (for devices that close the socket after every
//! reply) a fresh connection per exchange.
//! UDP devices (Sennheiser SSC) get a connected datagram socket instead of a stream:
//! [`Link::send_datagram`] / [`Link::recv_datagram`].

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::Decoder;

use super::DriverError;
use crate::codec::ProtocolError;
use crate::transport::{Connection, LinkSpec, Stream, TransportError};

/// Bytes we keep at most while waiting for a frame end; a device that streams more without a
/// terminator is sending garbage, and the decoder is told to resynchronise.
pub const DEFAULT_MAX_BUFFER: usize = 16 * 1024;

/// Garbage read without one complete frame, in multiples of the frame limit, after which a
/// stream is taken for a flood and its session ends like an oversized frame.
const UNFRAMED_FACTOR: usize = 4;

pub struct Link {
    spec: LinkSpec,
    stream: Option<Stream>,
    rx: BytesMut,
    /// A fresh connection per exchange (PJLink projectors that hang up after each reply).
    per_exchange: bool,
    /// True right after a new connection was made, until the driver calls [`Link::take_fresh`].
    fresh: bool,
    max_buffer: usize,
    /// Bytes read since the last complete frame: a peer that sends garbage without end (the
    /// decoder discarding it as it goes) is as costly as an endless line.
    unframed: usize,
    bytes_in: u64,
    bytes_out: u64,
    /// The connected datagram socket of a [`LinkSpec::Udp`] link.
    udp: Option<tokio::net::UdpSocket>,
    /// An MQTT device's session is up (it has no stream; see [`Link::connect_mqtt`]).
    mqtt_session: bool,
}

impl Link {
    pub fn new(spec: LinkSpec) -> Self {
        let per_exchange = matches!(&spec, LinkSpec::Tcp(t) if t.connect_per_command);
        Self {
            spec,
            stream: None,
            rx: BytesMut::with_capacity(512),
            per_exchange,
            fresh: false,
            max_buffer: DEFAULT_MAX_BUFFER,
            unframed: 0,
            bytes_in: 0,
            bytes_out: 0,
            udp: None,
            mqtt_session: false,
        }
    }

    /// A link over an already connected stream (unit tests with `tokio::io::duplex`).
    pub fn from_stream(stream: Stream) -> Self {
        let mut link = Self::new(LinkSpec::Tcp(crate::transport::tcp::TcpSpec::new(
            stream.peer().to_owned(),
            0,
        )));
        link.stream = Some(stream);
        link.fresh = true;
        link
    }

    pub fn spec(&self) -> &LinkSpec {
        &self.spec
    }

    pub fn is_per_exchange(&self) -> bool {
        self.per_exchange
    }

    pub fn is_open(&self) -> bool {
        self.stream.is_some() || self.udp.is_some() || self.mqtt_session
    }

    /// Open the link (no-op when open). In per-exchange mode this connects lazily.
    pub async fn connect(&mut self) -> Result<(), TransportError> {
        if self.is_open() {
            return Ok(());
        }
        match crate::transport::open(&self.spec).await? {
            Connection::Stream(s) => {
                self.stream = Some(s);
                self.rx.clear();
            }
            Connection::Datagram(sock) => self.udp = Some(sock),
            Connection::Topic => self.mqtt_session = true,
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
        self.mqtt_session = false;
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
        let stream = self.stream.as_mut().ok_or(TransportError::Closed)?;
        let res = async {
            stream.write_all(bytes).await?;
            stream.flush().await
        }
        .await;
        if let Err(e) = res {
            self.disconnect();
            return Err(TransportError::Io(e).into());
        }
        self.bytes_out += bytes.len() as u64;
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
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match decoder.decode(&mut self.rx) {
                Ok(Some(frame)) => {
                    self.unframed = 0;
                    return Ok(frame);
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
            let stream = self.stream.as_mut().ok_or(TransportError::Closed)?;
            self.rx.reserve(512);
            let read = tokio::time::timeout_at(deadline, stream.read_buf(&mut self.rx)).await;
            match read {
                Err(_) => {
                    return Err(DriverError::Timeout {
                        waited_ms: timeout.as_millis() as u64,
                    })
                }
                Ok(Ok(0)) => {
                    // Peer closed. A decoder may still hold a final frame without terminator.
                    if let Some(frame) = decoder.decode_eof(&mut self.rx)? {
                        self.stream = None;
                        return Ok(frame);
                    }
                    self.disconnect();
                    return Err(TransportError::Closed.into());
                }
                Ok(Ok(n)) => {
                    self.bytes_in += n as u64;
                    self.unframed = self.unframed.saturating_add(n);
                }
                Ok(Err(e)) => {
                    self.disconnect();
                    return Err(TransportError::Io(e).into());
                }
            }
        }
    }

    /// Discard buffered input (after a timeout, so a late reply is not taken for the next one).
    pub fn discard_input(&mut self) -> usize {
        let n = self.rx.len();
        self.rx.clear();
        n
    }
}

impl Link {
    /// Send one datagram on a UDP link (connecting first if needed).
    pub async fn send_datagram(&mut self, bytes: &[u8]) -> Result<(), DriverError> {
        self.connect().await?;
        let sock = self.udp.as_ref().ok_or(TransportError::Closed)?;
        if let Err(e) = sock.send(bytes).await {
            self.disconnect();
            return Err(TransportError::Io(e).into());
        }
        self.bytes_out += bytes.len() as u64;
        Ok(())
    }

    /// Receive one datagram, waiting at most `timeout`. Cancel-safe (a datagram is either
    /// taken whole or left queued). A datagram longer than the buffer limit is reported as
    /// [`ProtocolError::Oversized`] and dropped; the link stays usable. An ICMP "port
    /// unreachable" from the peer surfaces here as an I/O error and drops the link.
    pub async fn recv_datagram(&mut self, timeout: Duration) -> Result<Vec<u8>, DriverError> {
        let sock = self.udp.as_ref().ok_or(TransportError::Closed)?;
        let mut buf = vec![0u8; self.max_buffer + 1];
        match tokio::time::timeout(timeout, sock.recv(&mut buf)).await {
            Err(_) => Err(DriverError::Timeout {
                waited_ms: timeout.as_millis() as u64,
            }),
            Ok(Err(e)) => {
                self.disconnect();
                Err(TransportError::Io(e).into())
            }
            Ok(Ok(n)) => {
                self.bytes_in += n as u64;
                if n > self.max_buffer {
                    return Err(ProtocolError::Oversized {
                        limit: self.max_buffer,
                        got: n,
                    }
                    .into());
                }
                buf.truncate(n);
                Ok(buf)
            }
        }
    }
}

/// Links whose bytes a protocol library carries itself.
impl Link {
    /// Lend the open stream to a library that must own its transport (tokio-modbus's RTU
    /// client); hand it back with [`Link::restore_stream`]. While lent, the link reads closed.
    pub fn take_stream(&mut self) -> Option<Stream> {
        self.rx.clear();
        self.stream.take()
    }

    /// Return a lent stream, counting the bytes that moved while it was away.
    pub fn restore_stream(&mut self, stream: Stream, bytes_in: u64, bytes_out: u64) {
        self.stream = Some(stream);
        self.bytes_in += bytes_in;
        self.bytes_out += bytes_out;
    }
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("spec", &self.spec.describe())
            .field("open", &self.stream.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::tcp::TcpSpec;

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
        let mut link = Link::new(LinkSpec::Tcp(TcpSpec::new("127.0.0.1", port)));
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
        let mut link = Link::new(LinkSpec::Tcp(TcpSpec::new("127.0.0.1", port)));
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
}
