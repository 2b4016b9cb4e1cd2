//! A minimal HTTP/1.1 client for the daemon's own API on this machine: the CLI commands that
//! ask the running daemon (`avwarden selftest`) go through it, because the daemon owns the
//! device links (a serial port opens once). Not a general-purpose client.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

pub use hyper::Method;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the daemon's API at {addr}: {source} (is the daemon running?)")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the daemon's API at {addr}: {message}")]
    Http { addr: SocketAddr, message: String },
    #[error("no answer from the daemon's API at {addr} within {secs} s")]
    TimedOut { addr: SocketAddr, secs: u64 },
}

/// One request without a token (the daemon's API is open on loopback when it has none);
/// answers the status code and the body.
pub async fn request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), ClientError> {
    request_as(addr, None, method, path, body, timeout).await
}

/// One request with `Authorization: Bearer <token>` when a token is given.
pub async fn request_as(
    addr: SocketAddr,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), ClientError> {
    let secs = timeout.as_secs();
    tokio::time::timeout(timeout, send(addr, token, method, path, body))
        .await
        .map_err(|_| ClientError::TimedOut { addr, secs })?
}

async fn send(
    addr: SocketAddr,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<(u16, Vec<u8>), ClientError> {
    let http = |e: &dyn std::fmt::Display| ClientError::Http {
        addr,
        message: e.to_string(),
    };
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|source| ClientError::Connect { addr, source })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| http(&e))?;
    // The connection is driven beside the request and ends with it.
    let drive = async move {
        let _ = conn.await;
    };
    let bytes = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        let mut v = hyper::header::HeaderValue::from_str(&format!("Bearer {t}"))
            // The error would quote the token: name only what is wrong with it.
            .map_err(|_| http(&"the token holds characters a header cannot carry"))?;
        v.set_sensitive(true);
        req = req.header(hyper::header::AUTHORIZATION, v);
    }
    let req = req
        .body(Full::new(Bytes::from(bytes)))
        .map_err(|e| http(&e))?;
    let exchange = async {
        let res = sender.send_request(req).await.map_err(|e| http(&e))?;
        let status = res.status().as_u16();
        let body = res
            .into_body()
            .collect()
            .await
            .map_err(|e| http(&e))?
            .to_bytes();
        Ok::<_, ClientError>((status, body.to_vec()))
    };
    tokio::select! {
        r = exchange => r,
        _ = drive => Err(http(&"the connection closed before the answer")),
    }
}
