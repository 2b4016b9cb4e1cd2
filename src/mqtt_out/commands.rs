//! Device commands over MQTT: `…/device/<device>/set` carries the same command JSON as
//! `POST /api/v1/devices/{id}/commands` plus the caller's API `token` (and an optional `id`);
//! the outcome goes to `…/set/result`, never retained.
//!
//! MQTT has no per-message identity, so the token travels in the payload and is checked like
//! a bearer token (technician or above, as the REST route). Commands are refused unless
//! `[mqtt] commands = true` and the API has tokens: an open local demo must not take orders
//! from anyone on the broker. Every executed command is written to the logbook with the
//! token's name, every refusal without the token. This module must never publish, log or
//! store a token.

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::MqttOut;
use crate::api::auth::{Caller, Refusal};
use crate::config::Role;
use crate::model::DeviceCommand;
use crate::records::{Actor, NewEntry};
use crate::runtime::CommandOutcome;

/// The `…/set/result` payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandResult {
    /// The request's `id`, when it gave one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<serde_json::Value>,
    pub device: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// `done`, `refused` (not allowed or not understood: nothing was sent) or `failed` (sent,
    /// and the device did not do it).
    pub result: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Why a request is refused before anything reaches the device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("commands over mqtt are disabled ([mqtt] commands = false)")]
    Disabled,
    #[error("commands over mqtt need api tokens ([[api.tokens]])")]
    NoTokens,
    #[error("payload is not a json object: {0}")]
    NotJson(String),
    #[error("no token in the payload")]
    MissingToken,
    #[error("token refused")]
    WrongToken,
    #[error("too many wrong tokens; retry in {0} s")]
    Blocked(u64),
    #[error("role {0} may not send commands (technician or admin)")]
    Role(String),
    #[error("no device {0:?}")]
    UnknownDevice(String),
    #[error("not a command: {0}")]
    BadCommand(String),
}

/// A parsed request: its id, token and the command JSON without them.
struct Request {
    id: Option<serde_json::Value>,
    token: Option<String>,
    command: serde_json::Map<String, serde_json::Value>,
}

fn parse(payload: &[u8]) -> Result<Request, Refused> {
    let v: serde_json::Value = serde_json::from_slice(payload)
        .map_err(|e| Refused::NotJson(format!("line {} column {}", e.line(), e.column())))?;
    let serde_json::Value::Object(mut command) = v else {
        return Err(Refused::NotJson("not an object".to_owned()));
    };
    let id = command.remove("id");
    let token = match command.remove("token") {
        Some(serde_json::Value::String(t)) => Some(t),
        _ => None,
    };
    Ok(Request { id, token, command })
}

/// Who sends it, or why not: the gate before the command is even parsed.
fn authorise(out: &MqttOut, token: Option<&str>) -> Result<Caller, Refused> {
    if !out.commands {
        return Err(Refused::Disabled);
    }
    if !out.api.auth.is_enforced() {
        return Err(Refused::NoTokens);
    }
    let token = token.ok_or(Refused::MissingToken)?;
    let caller = out.api.auth.check(None, token).map_err(|r| match r {
        Refusal::Wrong => Refused::WrongToken,
        Refusal::Blocked(d) => Refused::Blocked(d.as_secs().max(1)),
    })?;
    if caller.role < Role::Technician {
        return Err(Refused::Role(
            serde_json::to_value(caller.role)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
        ));
    }
    Ok(caller)
}

/// Handle one `…/set` message: the result to publish.
pub async fn handle(out: &MqttOut, device: &str, payload: &[u8]) -> CommandResult {
    let mut result = CommandResult {
        id: None,
        device: device.to_owned(),
        command: None,
        result: "refused".to_owned(),
        reason: None,
    };
    let req = match parse(payload) {
        Ok(r) => r,
        Err(e) => {
            refuse(out, device, None, None, &e);
            result.reason = Some(e.to_string());
            return result;
        }
    };
    result.id = req.id.clone();
    let name = req
        .command
        .get("command")
        .and_then(|c| c.as_str())
        .map(str::to_owned);
    result.command = name.clone();
    let caller = match authorise(out, req.token.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            refuse(out, device, name.as_deref(), None, &e);
            result.reason = Some(e.to_string());
            return result;
        }
    };
    let Some(h) = out.api.fleet.get(device) else {
        let e = Refused::UnknownDevice(device.to_owned());
        refuse(out, device, name.as_deref(), Some(&caller), &e);
        result.reason = Some(e.to_string());
        return result;
    };
    let cmd: DeviceCommand =
        match serde_json::from_value(serde_json::Value::Object(req.command.clone())) {
            Ok(c) => c,
            Err(e) => {
                let e = Refused::BadCommand(e.to_string());
                refuse(out, device, name.as_deref(), Some(&caller), &e);
                result.reason = Some(e.to_string());
                return result;
            }
        };
    let cmd_name = cmd.name();
    result.command = Some(cmd_name.to_owned());
    let detail = serde_json::to_value(&cmd).unwrap_or_default();
    let room = h.state().room.to_string();
    let outcome = h.try_command(cmd).await;
    crate::api::record_command(&out.api, &caller, device, &room, cmd_name, detail, &outcome);
    match outcome {
        CommandOutcome::Done { .. } => {
            result.result = "done".to_owned();
        }
        other => {
            result.result = "failed".to_owned();
            result.reason = Some(other.to_string());
        }
    }
    result
}

/// Write a refusal to the logbook: who it was when the token was good, never the token.
fn refuse(
    out: &MqttOut,
    device: &str,
    command: Option<&str>,
    caller: Option<&Caller>,
    why: &Refused,
) {
    tracing::warn!(device, command, reason = %why, "mqtt command refused");
    let Some(records) = &out.api.records else {
        return;
    };
    let actor = caller.map_or(Actor::System, Caller::actor);
    let mut entry = NewEntry::new(
        out.api.clock.now(),
        "device_command_refused",
        actor,
        format!("{} over mqtt refused: {why}", command.unwrap_or("command")),
    )
    .data(serde_json::json!({ "command": command, "via": "mqtt", "reason": why.to_string() }));
    if out.api.fleet.get(device).is_some() {
        entry = entry.device(device);
    }
    if let Err(e) = records.logbook.record(entry) {
        tracing::warn!(device, error = %e, "refused mqtt command not written to the logbook");
    }
}

/// Serve `…/device/+/set` until `cancel`. Commands run one after the other, as a technician's
/// would: a device's own queue paces them anyway.
pub async fn run(out: MqttOut, cancel: CancellationToken) {
    let mut sub = match out.mqtt.subscribe(&out.topics.set_filter(), 64) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot subscribe to mqtt command topics");
            return;
        }
    };
    loop {
        let msg = tokio::select! {
            _ = cancel.cancelled() => break,
            m = sub.recv() => match m {
                Some(m) => m,
                None => break,
            },
        };
        // A retained command would fire again at every reconnect: ignore it.
        if msg.retain {
            tracing::warn!(topic = %msg.topic, "retained mqtt command ignored");
            continue;
        }
        let Some(device) = out.topics.device_of_set(&msg.topic) else {
            continue;
        };
        let result = handle(&out, device, &msg.payload).await;
        let payload = serde_json::to_vec(&result).unwrap_or_default();
        if let Err(e) = out
            .mqtt
            .publish(&out.topics.set_result(device), payload, false)
        {
            tracing::warn!(device, error = %e, "mqtt command result not published");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::{ApiToken, TokenHash};

    const TECH: &str = "techn-token-0123456789";
    const VIEWER: &str = "viewer-token-0123456789";

    /// An MQTT-out without a broker (nothing is published in these tests) over an empty fleet.
    fn out(commands: bool, tokens: bool) -> (MqttOut, CancellationToken) {
        let cancel = CancellationToken::new();
        let tracker = tokio_util::task::TaskTracker::new();
        let settings = crate::transport::mqtt::MqttSettings {
            host: Some("127.0.0.1".into()),
            port: Some(9),
            ..Default::default()
        };
        let mqtt = crate::transport::mqtt::start(&settings, None, None, &tracker, cancel.clone());
        let metrics = crate::metrics::Metrics::new();
        let clock = crate::clock::Clock::system();
        let bus = crate::events::EventBus::new(metrics.clone());
        let fleet = crate::runtime::Fleet::new(bus, clock, tracker, cancel.clone());
        let tokens = if tokens {
            vec![
                ApiToken {
                    name: "li-wei".into(),
                    role: Role::Technician,
                    hash: TokenHash::of(TECH),
                },
                ApiToken {
                    name: "wall".into(),
                    role: Role::Viewer,
                    hash: TokenHash::of(VIEWER),
                },
            ]
        } else {
            Vec::new()
        };
        let api = crate::api::ApiState {
            site: "t".into(),
            version: "test",
            clock,
            started: clock.now(),
            fleet: Arc::new(fleet),
            metrics,
            store: None,
            schedule: None,
            auth: Arc::new(crate::api::auth::Auth::new(tokens)),
            records: None,
            layout: Default::default(),
            protection: None,
            playbook: None,
            events: None,
            history: None,
            reload: None,
            aggregate: None,
        };
        let s = crate::transport::mqtt::MqttSettings {
            commands,
            ..Default::default()
        };
        (MqttOut::new(mqtt, api, "t", &s), cancel)
    }

    async fn result(out: &MqttOut, payload: &str) -> CommandResult {
        handle(out, "p1", payload.as_bytes()).await
    }

    #[tokio::test]
    async fn commands_need_the_switch_tokens_and_a_technician() {
        let set = r#"{"id":1,"token":"techn-token-0123456789","command":"refresh"}"#;
        let (off, c1) = out(false, true);
        let r = result(&off, set).await;
        assert_eq!(
            (r.result.as_str(), r.id.clone()),
            ("refused", Some(1.into()))
        );
        assert!(r.reason.unwrap().contains("disabled"));
        let (open, c2) = out(true, false);
        assert!(result(&open, set).await.reason.unwrap().contains("tokens"));
        let (on, c3) = out(true, true);
        for (payload, why) in [
            (r#"{"command":"refresh"}"#, "no token"),
            (
                r#"{"token":"nope-nope-nope-nope","command":"refresh"}"#,
                "refused",
            ),
            (
                r#"{"token":"viewer-token-0123456789","command":"refresh"}"#,
                "role viewer",
            ),
            ("not json", "not a json object"),
        ] {
            let r = result(&on, payload).await;
            assert_eq!(r.result, "refused", "{payload}");
            assert!(r.reason.as_deref().unwrap_or("").contains(why), "{r:?}");
        }
        // The technician passes the gate; the fleet has no such device.
        let r = result(&on, set).await;
        assert_eq!(r.result, "refused");
        assert!(r.reason.as_deref().unwrap_or("").contains("no device"));
        // The token is never in a result.
        let text = serde_json::to_string(&r).unwrap();
        assert!(!text.contains(TECH) && !text.contains(VIEWER));
        for c in [c1, c2, c3] {
            c.cancel();
        }
    }
}
