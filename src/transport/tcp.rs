//! TCP client links: connect with a timeout, keepalive, no Nagle (command/response traffic).

use std::time::Duration;

use tokio::net::TcpStream;

use super::{Stream, TransportError};

#[derive(Debug, Clone, PartialEq)]
pub struct TcpSpec {
    pub host: String,
    pub port: u16,
    pub connect_timeout: Duration,
    /// Projectors that close the socket after every reply: open a fresh connection per command.
    pub connect_per_command: bool,
    pub keepalive: Option<Duration>,
}

impl TcpSpec {
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
            connect_timeout: Duration::from_secs(5),
            connect_per_command: false,
            keepalive: Some(Duration::from_secs(30)),
        }
    }
}

pub async fn connect(spec: &TcpSpec) -> Result<Stream, TransportError> {
    let target = format!("{}:{}", spec.host, spec.port);
    let stream = match tokio::time::timeout(
        spec.connect_timeout,
        TcpStream::connect((spec.host.as_str(), spec.port)),
    )
    .await
    {
        Err(_) => {
            return Err(TransportError::ConnectTimeout {
                target,
                after_ms: spec.connect_timeout.as_millis() as u64,
            })
        }
        Ok(Err(source)) => return Err(TransportError::Connect { target, source }),
        Ok(Ok(s)) => s,
    };
    stream.set_nodelay(true)?;
    if let Some(idle) = spec.keepalive {
        let sock = socket2_ref(&stream);
        let ka = socket2::TcpKeepalive::new().with_time(idle);
        // Keepalive is best effort: a platform that refuses it still gets a working link.
        let _ = sock.set_tcp_keepalive(&ka);
    }
    Ok(Stream::new(stream, target))
}

fn socket2_ref(stream: &TcpStream) -> socket2::SockRef<'_> {
    socket2::SockRef::from(stream)
}
