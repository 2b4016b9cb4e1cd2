//! A minimal HTTP/1.1 client for the daemon's own API on this machine: the CLI commands that
//! ask the running daemon (`avwarden selftest`, `avwarden maintenance`) go through it, because
//! the daemon owns the device links (a serial port opens once) and the alert book. Not a
//! general-purpose client.

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
    /// The daemon said no: its status and its `detail`.
    #[error("the daemon answered {status}: {detail}")]
    Refused { status: u16, detail: String },
    #[error("the daemon's answer is not what was asked for: {0}")]
    Answer(String),
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

/// The status and body of an answer, or the daemon's refusal when the status is not `want`.
fn expect(answer: (u16, Vec<u8>), want: u16) -> Result<Vec<u8>, ClientError> {
    let (status, bytes) = answer;
    if status == want {
        return Ok(bytes);
    }
    let detail = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("detail").and_then(|d| d.as_str()).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
    Err(ClientError::Refused { status, detail })
}

fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(bytes).map_err(|e| ClientError::Answer(e.to_string()))
}

/// `POST /api/v1/maintenance-windows`: silence `target`'s alerts from now until `until`.
pub async fn add_window(
    addr: SocketAddr,
    token: Option<&str>,
    target: &crate::playbook::alerts::Target,
    until: chrono::DateTime<chrono::Utc>,
    reason: &str,
    timeout: Duration,
) -> Result<crate::playbook::alerts::MaintenanceWindow, ClientError> {
    use crate::playbook::alerts::Target;
    let mut body = serde_json::json!({ "until": until, "reason": reason });
    match target {
        Target::Room(r) => body["room"] = serde_json::json!(r),
        Target::Device(d) => body["device"] = serde_json::json!(d),
    }
    let path = "/api/v1/maintenance-windows";
    let answer = request_as(addr, token, Method::POST, path, Some(body), timeout).await?;
    parse(&expect(answer, 201)?)
}

/// `GET /api/v1/maintenance-windows`: the windows the daemon holds.
pub async fn list_windows(
    addr: SocketAddr,
    token: Option<&str>,
    timeout: Duration,
) -> Result<Vec<crate::playbook::alerts::MaintenanceWindow>, ClientError> {
    let path = "/api/v1/maintenance-windows";
    let answer = request_as(addr, token, Method::GET, path, None, timeout).await?;
    parse(&expect(answer, 200)?)
}

/// `DELETE /api/v1/maintenance-windows/{id}`: end a window now.
pub async fn remove_window(
    addr: SocketAddr,
    token: Option<&str>,
    id: u64,
    timeout: Duration,
) -> Result<(), ClientError> {
    let path = format!("/api/v1/maintenance-windows/{id}");
    let answer = request_as(addr, token, Method::DELETE, &path, None, timeout).await?;
    expect(answer, 204).map(|_| ())
}

/// Windows as `avwarden maintenance list` prints them, times in the site's zone.
pub fn render_windows(
    windows: &[crate::playbook::alerts::MaintenanceWindow],
    tz: chrono_tz::Tz,
) -> String {
    use crate::playbook::alerts::Target;
    use std::fmt::Write as _;
    if windows.is_empty() {
        return "no maintenance windows\n".to_owned();
    }
    let local = |t: chrono::DateTime<chrono::Utc>| {
        t.with_timezone(&tz).format("%Y-%m-%d %H:%M").to_string()
    };
    let mut out = String::new();
    for w in windows {
        let target = match &w.target {
            Target::Room(r) => format!("room {r}"),
            Target::Device(d) => format!("device {d}"),
        };
        let _ = writeln!(
            out,
            "{:>4}  {target}  {} to {}  by {}{}",
            w.id,
            local(w.from),
            local(w.until),
            w.by,
            if w.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", w.reason)
            }
        );
    }
    out
}
