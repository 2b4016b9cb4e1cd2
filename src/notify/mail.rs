//! The e-mail channel: each `alert_notified` entry as one plain-text mail to the roster
//! contacts the playbook told, over SMTP (lettre, rustls).
//!
//! The subject reads like `[MAJOR] r101: battery critical (channel 2)`; the body is what a
//! technician reads on a phone. SMTP 5xx refuses the mail for good (recorded and skipped);
//! 4xx and connection failures are retried. Must not put the SMTP password in an error text,
//! and must not choose recipients (the playbook did; this only looks up their addresses).

use std::collections::BTreeMap;
use std::fmt::Write;

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::{Attempt, Channel, MailConfig, MailTls, Notification};
use crate::records::notify::Outcome;

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("cannot use SMTP host {host}: {reason}")]
    Host { host: String, reason: String },
    #[error("bad sender address {from:?}: {reason}")]
    From { from: String, reason: String },
}

pub struct Mail {
    from: Mailbox,
    transport: AsyncSmtpTransport<Tokio1Executor>,
    /// Roster name → address.
    addresses: BTreeMap<String, Mailbox>,
}

impl Mail {
    pub fn new(
        cfg: &MailConfig,
        roster: &crate::playbook::roster::Roster,
    ) -> Result<Mail, MailError> {
        let host_error = |e: lettre::transport::smtp::Error| MailError::Host {
            host: cfg.smtp_host.clone(),
            reason: e.to_string(),
        };
        let builder = match cfg.tls {
            MailTls::None => {
                AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(cfg.smtp_host.as_str())
            }
            MailTls::Starttls => {
                AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&cfg.smtp_host)
                    .map_err(host_error)?
            }
            MailTls::Tls => {
                AsyncSmtpTransport::<Tokio1Executor>::relay(&cfg.smtp_host).map_err(host_error)?
            }
        };
        let mut builder = builder.port(cfg.smtp_port).timeout(Some(cfg.timeout));
        if let Some(user) = &cfg.username {
            let password = cfg
                .password
                .as_ref()
                .map(|p| p.expose().to_owned())
                .unwrap_or_default();
            builder = builder.credentials(Credentials::new(user.clone(), password));
        }
        let from: Mailbox = cfg
            .from
            .parse()
            .map_err(|e: lettre::address::AddressError| MailError::From {
                from: cfg.from.clone(),
                reason: e.to_string(),
            })?;
        let addresses = roster
            .contacts
            .iter()
            .filter_map(|(name, c)| {
                let email = c.email.as_ref()?;
                let addr = email.parse().ok()?;
                Some((name.clone(), Mailbox::new(Some(name.clone()), addr)))
            })
            .collect();
        Ok(Mail {
            from,
            transport: builder.build(),
            addresses,
        })
    }
}

/// `[MAJOR] r101: battery critical (channel 2)`. Pure.
pub fn subject(n: &Notification) -> String {
    let class = n.class.as_deref().unwrap_or("alert").to_uppercase();
    let place = n
        .room
        .as_deref()
        .or(n.subject.as_deref())
        .unwrap_or(n.site.as_str());
    let what = n
        .message
        .clone()
        .or_else(|| n.fault.clone())
        .unwrap_or_else(|| format!("alert {}", n.alert));
    let mut s = format!("[{class}] {place}: {what}");
    if matches!(n.notice.as_deref(), Some(notice) if notice != "raised") {
        let _ = write!(s, " ({})", n.notice.as_deref().unwrap_or_default());
    }
    s
}

/// The plain-text body: short lines, the facts first. Pure.
pub fn body(n: &Notification) -> String {
    let mut b = String::new();
    let line = |b: &mut String, label: &str, v: Option<&str>| {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            let _ = writeln!(b, "{label:<12}{v}");
        }
    };
    if let Some(m) = &n.message {
        let _ = writeln!(b, "{m}\n");
    }
    line(&mut b, "Room:", n.room.as_deref());
    line(&mut b, "Device:", n.subject.as_deref());
    line(&mut b, "Fault:", n.fault.as_deref());
    line(&mut b, "Class:", n.class.as_deref());
    line(&mut b, "State:", n.state.as_deref());
    line(&mut b, "Why:", n.notice.as_deref());
    line(&mut b, "Respond by:", n.respond_by.as_deref());
    line(&mut b, "Resolve by:", n.resolve_by.as_deref());
    let told = n.recipients.join(", ");
    line(&mut b, "Told:", Some(told.as_str()));
    line(&mut b, "At:", Some(n.at.as_str()));
    let _ = writeln!(b, "\n{}", n.text);
    if let Some(link) = &n.link {
        let _ = writeln!(b, "\nOpen: {link}");
    }
    let _ = writeln!(
        b,
        "\n-- \navwarden, site {}, alert {}, logbook entry {}",
        n.site, n.alert, n.seq
    );
    b
}

#[async_trait::async_trait]
impl Channel for Mail {
    fn name(&self) -> &str {
        "mail"
    }

    fn wants(&self, n: &Notification) -> bool {
        n.kind == "alert_notified" && !n.recipients.is_empty()
    }

    async fn deliver(&self, n: &Notification) -> Attempt {
        let (to, missing): (Vec<&String>, Vec<&String>) = n
            .recipients
            .iter()
            .partition(|r| self.addresses.contains_key(r.as_str()));
        if to.is_empty() {
            let mut a = Attempt::new(Outcome::Skipped);
            a.error = Some(format!(
                "no e-mail address for {} in [roster.contacts]",
                missing
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            return a;
        }
        let mut m = Message::builder()
            .from(self.from.clone())
            .subject(subject(n))
            .message_id(Some(format!(
                "<{}@avwarden>",
                n.id.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', ".")
            )))
            .header(ContentType::TEXT_PLAIN);
        for r in &to {
            if let Some(mb) = self.addresses.get(r.as_str()) {
                m = m.to(mb.clone());
            }
        }
        let message = match m.body(body(n)) {
            Ok(m) => m,
            Err(e) => {
                let mut a = Attempt::new(Outcome::Rejected);
                a.error = Some(format!("cannot build the mail: {e}"));
                return a;
            }
        };
        let not_told = (!missing.is_empty()).then(|| {
            format!(
                "no e-mail address for {}",
                missing
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        });
        match self.transport.send(message).await {
            Ok(r) => Attempt {
                outcome: Outcome::Delivered,
                status: r.code().to_string().parse().ok(),
                reply: r.message().next().map(|l| l.chars().take(200).collect()),
                error: not_told,
            },
            Err(e) => {
                let outcome = if e.is_permanent() {
                    Outcome::Rejected
                } else {
                    Outcome::Retry
                };
                Attempt {
                    outcome,
                    status: e.status().and_then(|c| c.to_string().parse().ok()),
                    reply: None,
                    error: Some(e.to_string()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice() -> Notification {
        Notification {
            id: "b:9".into(),
            seq: 9,
            kind: "alert_notified".into(),
            alert: 3,
            site: "B".into(),
            room: Some("r101".into()),
            subject: Some("r101-mics".into()),
            fault: Some("battery_critical".into()),
            class: Some("major".into()),
            state: Some("raised".into()),
            change: None,
            notice: Some("raised".into()),
            by: None,
            at: "2026-11-27T09:00:00.000000Z".into(),
            text: "alert 3 (major) raised: told li".into(),
            message: Some("battery critical (channel 2)".into()),
            recipients: vec!["li".into()],
            respond_by: Some("2026-11-27T09:15:00Z".into()),
            resolve_by: None,
            link: Some("https://av.example/api/v1/alerts/3".into()),
        }
    }

    #[test]
    fn the_subject_names_class_room_and_fault() {
        assert_eq!(
            subject(&notice()),
            "[MAJOR] r101: battery critical (channel 2)"
        );
        let mut n = notice();
        n.notice = Some("escalated".into());
        n.room = None;
        assert_eq!(
            subject(&n),
            "[MAJOR] r101-mics: battery critical (channel 2) (escalated)"
        );
    }

    #[test]
    fn the_body_gives_the_facts_and_the_link() {
        let b = body(&notice());
        for want in [
            "Room:       r101",
            "Device:     r101-mics",
            "Respond by: 2026-11-27T09:15:00Z",
            "Open: https://av.example/api/v1/alerts/3",
        ] {
            assert!(b.contains(want), "{want:?} in\n{b}");
        }
        assert!(!b.contains("Resolve by:"), "no empty lines\n{b}");
    }
}
