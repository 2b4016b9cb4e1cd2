//! The webhook channel: each alert entry as a JSON POST, signed with HMAC-SHA256.
//!
//! Headers: `X-Avwarden-Signature: sha256=<hex HMAC-SHA256 of the body with the shared
//! secret>`, `X-Avwarden-Delivery: <logbook seq>`, `Idempotency-Key: <site>:<seq>` (the same
//! on every retry). 2xx is delivered; 408, 429, 5xx, other non-2xx answers and connection
//! errors are retried; any other 4xx is recorded and skipped, so a receiver that rejects one
//! payload does not block the queue forever. Must not put the secret, or a URL that may carry
//! credentials, in an error text.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{Attempt, Channel, Notification, WebhookConfig};
use crate::config::Secret;
use crate::records::notify::Outcome;

pub const SIGNATURE_HEADER: &str = "X-Avwarden-Signature";
pub const DELIVERY_HEADER: &str = "X-Avwarden-Delivery";
pub const IDEMPOTENCY_HEADER: &str = "Idempotency-Key";

/// Longest receiver answer kept in the delivery log.
const MAX_REPLY: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

pub struct Webhook {
    name: String,
    url: reqwest::Url,
    secret: Secret,
    classes: Vec<String>,
    client: reqwest::Client,
}

/// `sha256=<hex>` of `body` under `secret`: the signature header's value.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes a key of any length; `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// How an HTTP answer settles an entry.
pub fn classify(status: u16) -> Outcome {
    match status {
        200..=299 => Outcome::Delivered,
        408 | 429 => Outcome::Retry,
        400..=499 => Outcome::Rejected,
        _ => Outcome::Retry,
    }
}

impl Webhook {
    pub fn new(cfg: &WebhookConfig, site: &str) -> Result<Webhook, WebhookError> {
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(10)))
            .user_agent(format!("avwarden/{} ({site})", env!("CARGO_PKG_VERSION")))
            // A redirect would re-send the signed body to a place the config does not name.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| WebhookError::Client(e.without_url().to_string()))?;
        Ok(Webhook {
            name: format!("webhook:{}", cfg.name),
            url: cfg.url.clone(),
            secret: cfg.secret.clone(),
            classes: cfg.classes.clone(),
            client,
        })
    }
}

#[async_trait::async_trait]
impl Channel for Webhook {
    fn name(&self) -> &str {
        &self.name
    }

    fn wants(&self, n: &Notification) -> bool {
        self.classes.is_empty()
            || n.class
                .as_ref()
                .is_some_and(|c| self.classes.iter().any(|k| k == c))
    }

    async fn deliver(&self, n: &Notification) -> Attempt {
        let body = match serde_json::to_vec(n) {
            Ok(b) => b,
            Err(e) => {
                let mut a = Attempt::new(Outcome::Rejected);
                a.error = Some(format!("cannot encode the payload: {e}"));
                return a;
            }
        };
        let sig = signature(self.secret.expose().as_bytes(), &body);
        let res = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, sig)
            .header(DELIVERY_HEADER, n.seq.to_string())
            .header(IDEMPOTENCY_HEADER, &n.id)
            .body(body)
            .send()
            .await;
        match res {
            Ok(r) => {
                let status = r.status().as_u16();
                let outcome = classify(status);
                let text = r.text().await.unwrap_or_default();
                let reply = short(&text);
                Attempt {
                    outcome,
                    status: Some(status),
                    error: (outcome != Outcome::Delivered)
                        .then(|| format!("receiver answered {status}")),
                    reply,
                }
            }
            Err(e) => {
                let mut a = Attempt::new(Outcome::Retry);
                a.error = Some(describe(&e));
                a
            }
        }
    }
}

/// A transport error in a few words, without the URL (it may hold credentials or a token).
fn describe(e: &reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_request() {
        "request failed"
    } else {
        "failed"
    };
    let mut detail = String::new();
    let mut source = std::error::Error::source(e);
    // The innermost cause says most (connection refused, certificate unknown).
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        what.to_owned()
    } else {
        format!("{what}: {detail}")
    }
}

fn short(text: &str) -> Option<String> {
    let line = text.lines().next().unwrap_or("").trim();
    if line.is_empty() {
        return None;
    }
    let mut s: String = line.chars().take(MAX_REPLY).collect();
    if s.len() < line.len() {
        s.push('…');
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231 test case 2 ("Jefe"), so the header is the standard HMAC-SHA256 any receiver
    /// computes.
    #[test]
    fn the_signature_is_standard_hmac_sha256() {
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn answers_settle_or_retry() {
        for (status, want) in [
            (200, Outcome::Delivered),
            (204, Outcome::Delivered),
            (400, Outcome::Rejected),
            (404, Outcome::Rejected),
            (422, Outcome::Rejected),
            (408, Outcome::Retry),
            (429, Outcome::Retry),
            (500, Outcome::Retry),
            (503, Outcome::Retry),
            (302, Outcome::Retry),
        ] {
            assert_eq!(classify(status), want, "{status}");
        }
    }

    #[test]
    fn a_class_filter_selects_entries() {
        let cfg = |classes: &[&str]| WebhookConfig {
            name: "ops".into(),
            url: "http://127.0.0.1:9/hook".parse().unwrap(),
            secret: Secret::new("0123456789abcdef"),
            classes: classes.iter().map(|c| c.to_string()).collect(),
            timeout: Duration::from_secs(1),
        };
        let n = |class: Option<&str>| Notification {
            class: class.map(str::to_owned),
            ..crate::notify::tests::sample()
        };
        let all = Webhook::new(&cfg(&[]), "s").unwrap();
        assert_eq!(all.name(), "webhook:ops");
        assert!(all.wants(&n(Some("general"))) && all.wants(&n(None)));
        let major = Webhook::new(&cfg(&["major"]), "s").unwrap();
        assert!(major.wants(&n(Some("major"))));
        assert!(!major.wants(&n(Some("general"))));
        assert!(!major.wants(&n(None)));
    }

    #[test]
    fn replies_are_cut_to_one_short_line() {
        assert_eq!(short(""), None);
        assert_eq!(short("bad payload\nmore").as_deref(), Some("bad payload"));
        assert_eq!(
            short(&"x".repeat(500)).unwrap().chars().count(),
            MAX_REPLY + 1
        );
    }
}
