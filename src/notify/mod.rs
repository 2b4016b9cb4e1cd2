//! Alert notifications that are never lost: the webhook and e-mail sinks of issue 11.6.
//!
//! The logbook is the outbox. Every `alert_changed` and `alert_notified` event is a logbook
//! entry with a sequence number; each sink keeps a cursor (the last entry it is done with) in
//! the records file and delivers the entries after it, one at a time and in order, moving the
//! cursor through the records writer only once the receiver took the entry (or refused it
//! for good). A receiver down for an hour, or a daemon restart, loses nothing and keeps the
//! order; each sink is its own task, so one failing never slows another.
//!
//! Owns the sinks' configuration types, the payload ([`Notification`]), the delivery loop
//! ([`outbox`]) and the two channels ([`webhook`], [`mail`]). Must not decide who is told
//! (the playbook does, in `alert_notified`), write the records file except through the
//! writer, or put a secret (webhook key, SMTP password) in a log line, a delivery row or an
//! answer.

pub mod mail;
pub mod outbox;
pub mod webhook;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::Clock;
use crate::config::Secret;
use crate::events::EventBus;
use crate::records::logbook::Entry;
use crate::records::notify::{AlertAt, Outcome};
use crate::records::{format_time, LogbookHandle};

/// `[notify]`, validated. Empty (no sink) when the site has no such section.
#[derive(Debug, Clone, Default)]
pub struct NotifyConfig {
    /// Where a technician opens an alert (`<public_url>/api/v1/alerts/<id>`), for mail bodies
    /// and payloads.
    pub public_url: Option<String>,
    pub webhooks: Vec<WebhookConfig>,
    pub mail: Option<MailConfig>,
}

impl NotifyConfig {
    pub fn is_empty(&self) -> bool {
        self.webhooks.is_empty() && self.mail.is_none()
    }
}

/// `[[notify.webhook]]`.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub name: String,
    pub url: reqwest::Url,
    /// The HMAC-SHA256 key of the signature header.
    pub secret: Secret,
    /// Only alerts of these classes (`major`, `important`, `general`); all when empty.
    pub classes: Vec<String>,
    pub timeout: Duration,
}

/// How the SMTP connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailTls {
    /// Plain SMTP (a relay on the same host or a test receiver).
    None,
    /// Plain connection upgraded with STARTTLS, required (port 587).
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
}

impl MailTls {
    pub const NAMES: [&'static str; 3] = ["none", "starttls", "tls"];

    pub fn parse(s: &str) -> Option<MailTls> {
        match s {
            "none" => Some(MailTls::None),
            "starttls" => Some(MailTls::Starttls),
            "tls" => Some(MailTls::Tls),
            _ => None,
        }
    }
}

/// `[notify.mail]`.
#[derive(Debug, Clone)]
pub struct MailConfig {
    pub smtp_host: String,
    pub smtp_port: u16,
    pub tls: MailTls,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub from: String,
    pub timeout: Duration,
}

/// The stable JSON shape a webhook receives, and what a mail is written from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Notification {
    /// Unique per site and entry: the idempotency id (a retried delivery carries the same).
    pub id: String,
    /// The logbook entry's sequence number.
    pub seq: u64,
    /// `alert_changed` or `alert_notified`.
    pub kind: String,
    pub alert: u64,
    pub site: String,
    pub room: Option<String>,
    /// The device, room, feed or store the alert is about.
    pub subject: Option<String>,
    pub fault: Option<String>,
    pub class: Option<String>,
    /// The alert's state as of this entry: `raised`, `acknowledged`, `resolved`.
    pub state: Option<String>,
    /// For `alert_changed`: what changed (`raised`, `acknowledged`, `escalated`, …).
    pub change: Option<String>,
    /// For `alert_notified`: why people are told (`raised`, `escalated`, `renotified`, …).
    pub notice: Option<String>,
    /// Who did it, when a person did.
    pub by: Option<String>,
    /// The entry's instant, RFC 3339 UTC.
    pub at: String,
    /// The logbook's one-line description.
    pub text: String,
    /// The alert's own message.
    pub message: Option<String>,
    /// Who the playbook tells (roster names); empty for `alert_changed`.
    pub recipients: Vec<String>,
    pub respond_by: Option<String>,
    pub resolve_by: Option<String>,
    /// The alert in the API, when `[notify] public_url` is set.
    pub link: Option<String>,
}

impl Notification {
    /// Build the payload of an alert entry. Pure.
    pub fn from_entry(
        site: &str,
        public_url: Option<&str>,
        entry: &Entry,
        alert_at: &AlertAt,
    ) -> Notification {
        let data = entry.data_json();
        let text = |k: &str| data.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        let alert = data.get("alert").and_then(|v| v.as_u64()).unwrap_or(0);
        let body: serde_json::Value = alert_at
            .body
            .as_deref()
            .and_then(|b| serde_json::from_str(b).ok())
            .unwrap_or(serde_json::Value::Null);
        let from_body = |k: &str| body.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        let changed = entry.kind == "alert_changed";
        Notification {
            id: format!("{}:{}", crate::app::site_slug(site), entry.seq),
            seq: entry.seq,
            kind: entry.kind.clone(),
            alert,
            site: site.to_owned(),
            room: entry.room.clone(),
            subject: alert_at.subject.clone().or_else(|| entry.device.clone()),
            fault: text("fault").or_else(|| alert_at.fault.clone()),
            class: text("class"),
            state: alert_at.state.clone(),
            change: if changed { text("what") } else { None },
            notice: text("notice"),
            by: text("by"),
            at: format_time(entry.at()),
            text: entry.message.clone(),
            message: text("message")
                .or_else(|| text("detail"))
                .filter(|m| !m.is_empty()),
            recipients: data
                .get("recipients")
                .and_then(|v| v.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|r| r.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
            respond_by: from_body("respond_by"),
            resolve_by: from_body("resolve_by"),
            link: public_url.map(|u| format!("{}/api/v1/alerts/{alert}", u.trim_end_matches('/'))),
        }
    }
}

/// How one attempt of a channel ended, as the delivery log keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub outcome: Outcome,
    pub status: Option<u16>,
    pub reply: Option<String>,
    /// Never a secret.
    pub error: Option<String>,
}

impl Attempt {
    pub fn new(outcome: Outcome) -> Self {
        Self {
            outcome,
            status: None,
            reply: None,
            error: None,
        }
    }
}

/// One way out: a webhook or the mail. Implementations do I/O only; the outbox decides when.
#[async_trait::async_trait]
pub trait Channel: Send + Sync {
    /// The sink's name in cursors, the delivery log and metrics (`webhook:<name>`, `mail`).
    fn name(&self) -> &str;
    /// Whether this entry is for this sink at all (the rest move the cursor silently).
    fn wants(&self, n: &Notification) -> bool;
    async fn deliver(&self, n: &Notification) -> Attempt;
}

/// Where one sink stands, published after every settled or failed attempt.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkProgress {
    /// The last logbook entry the sink is done with (0 before it started).
    pub cursor: u64,
    pub delivered: u64,
    pub failures: u64,
}

/// The running sinks' progress, for tests and health checks. Cheap to clone.
#[derive(Clone, Default)]
pub struct NotifyHandle {
    sinks: BTreeMap<String, watch::Receiver<SinkProgress>>,
}

impl NotifyHandle {
    pub fn sinks(&self) -> impl Iterator<Item = &str> {
        self.sinks.keys().map(String::as_str)
    }

    pub fn progress(&self, sink: &str) -> Option<SinkProgress> {
        self.sinks.get(sink).map(|rx| *rx.borrow())
    }

    /// Wait until `sink`'s progress satisfies `pred`; `None` when there is no such sink or it
    /// stopped first.
    pub async fn wait_for(
        &self,
        sink: &str,
        pred: impl FnMut(&SinkProgress) -> bool,
    ) -> Option<SinkProgress> {
        let mut rx = self.sinks.get(sink)?.clone();
        rx.wait_for(pred).await.ok().map(|p| *p)
    }
}

/// What every sink shares.
#[derive(Clone)]
pub struct Context {
    pub site: String,
    pub public_url: Option<String>,
    /// The records file (read-only connections).
    pub path: PathBuf,
    pub logbook: LogbookHandle,
    pub bus: EventBus,
    pub clock: Clock,
    pub retry: outbox::RetryPolicy,
}

/// Start one task per configured sink on `tasks`. A sink whose channel cannot be built
/// (an SMTP host lettre refuses) is reported and left out; the others run.
pub fn start(
    cfg: &NotifyConfig,
    roster: &crate::playbook::roster::Roster,
    ctx: Context,
    tasks: &TaskTracker,
    cancel: CancellationToken,
) -> NotifyHandle {
    let mut channels: Vec<Arc<dyn Channel>> = Vec::new();
    for w in &cfg.webhooks {
        match webhook::Webhook::new(w, &ctx.site) {
            Ok(c) => channels.push(Arc::new(c)),
            Err(e) => tracing::error!(sink = %w.name, error = %e, "webhook sink not started"),
        }
    }
    if let Some(m) = &cfg.mail {
        match mail::Mail::new(m, roster) {
            Ok(c) => channels.push(Arc::new(c)),
            Err(e) => tracing::error!(error = %e, "mail sink not started"),
        }
    }
    let mut handle = NotifyHandle::default();
    for channel in channels {
        let (tx, rx) = watch::channel(SinkProgress::default());
        handle.sinks.insert(channel.name().to_owned(), rx);
        let task = outbox::Outbox::new(channel, ctx.clone(), tx);
        // Subscribed now, before any task runs: no alert emitted from here on is missed as a
        // wake-up (the logbook would still hold it; the poll would find it later).
        let wake = outbox::wake_sink(&ctx.bus, task.name());
        tasks.spawn(task.run(wake, cancel.clone()));
    }
    handle
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A payload for channel tests.
    pub(crate) fn sample() -> Notification {
        Notification::from_entry(
            "s",
            None,
            &entry(
                "alert_notified",
                serde_json::json!({"alert": 7, "class": "major", "notice": "raised",
                    "recipients": ["li"], "message": "lamp failed"}),
            ),
            &AlertAt::default(),
        )
    }

    fn entry(kind: &str, data: serde_json::Value) -> Entry {
        Entry {
            seq: 42,
            at_us: 1_795_770_000_000_000,
            kind: kind.into(),
            room: Some("r101".into()),
            device: Some("r101-mics".into()),
            booking: None,
            actor: "system".into(),
            message: "alert 7 (major battery_critical) raised".into(),
            data: crate::records::logbook::canonical_json(&data),
            prev_hash: vec![],
            hash: vec![],
        }
    }

    #[test]
    fn the_payload_has_its_stable_shape() {
        let at = AlertAt {
            subject: Some("r101-mics".into()),
            fault: Some("battery_critical".into()),
            state: Some("raised".into()),
            body: Some(
                r#"{"respond_by":"2026-11-27T09:15:00Z","resolve_by":"2026-11-27T10:00:00Z"}"#
                    .into(),
            ),
        };
        let n = Notification::from_entry(
            "Building A",
            Some("https://av.example/"),
            &entry(
                "alert_notified",
                serde_json::json!({"alert": 7, "class": "major", "notice": "raised",
                    "recipients": ["li"], "message": "battery critical (channel 2)"}),
            ),
            &at,
        );
        let v = serde_json::to_value(&n).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "alert",
                "at",
                "by",
                "change",
                "class",
                "fault",
                "id",
                "kind",
                "link",
                "message",
                "notice",
                "recipients",
                "resolve_by",
                "respond_by",
                "room",
                "seq",
                "site",
                "state",
                "subject",
                "text"
            ]
        );
        assert_eq!(n.id, "building-a:42");
        assert_eq!(
            n.fault.as_deref(),
            Some("battery_critical"),
            "from the alert row"
        );
        assert_eq!(n.recipients, ["li"]);
        assert_eq!(n.change, None);
        assert_eq!(
            n.link.as_deref(),
            Some("https://av.example/api/v1/alerts/7")
        );
        assert_eq!(n.respond_by.as_deref(), Some("2026-11-27T09:15:00Z"));
        assert_eq!(n.at, "2026-11-27T09:00:00.000000Z");
    }

    #[test]
    fn a_change_says_what_changed() {
        let n = Notification::from_entry(
            "s",
            None,
            &entry(
                "alert_changed",
                serde_json::json!({"alert": 7, "class": "major", "fault": "lamp",
                    "what": "acknowledged", "by": "li", "detail": ""}),
            ),
            &AlertAt::default(),
        );
        assert_eq!(n.change.as_deref(), Some("acknowledged"));
        assert_eq!(n.by.as_deref(), Some("li"));
        assert_eq!(n.fault.as_deref(), Some("lamp"));
        assert_eq!(n.message, None, "an empty detail is no message");
        assert_eq!(
            n.subject.as_deref(),
            Some("r101-mics"),
            "the entry's device"
        );
        assert!(n.recipients.is_empty());
    }
}
