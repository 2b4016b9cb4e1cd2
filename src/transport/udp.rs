//! UDP: a socket connected to one peer (Sennheiser SSC over UDP 45).

use super::TransportError;

/// A UDP socket bound to an ephemeral port and connected to the peer, so that only the peer's
/// datagrams are received and ICMP errors are reported.
pub async fn connect(host: &str, port: u16) -> Result<tokio::net::UdpSocket, TransportError> {
    let target = format!("{host}:{port}");
    let connect_err = |source: std::io::Error| TransportError::Connect {
        target: target.clone(),
        source,
    };
    let peer = tokio::net::lookup_host((host, port))
        .await
        .map_err(connect_err)?
        .next()
        .ok_or_else(|| {
            connect_err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "host has no address",
            ))
        })?;
    let local: std::net::SocketAddr = if peer.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = tokio::net::UdpSocket::bind(local)
        .await
        .map_err(connect_err)?;
    sock.connect(peer).await.map_err(connect_err)?;
    Ok(sock)
}
