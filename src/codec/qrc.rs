//! QSC Q-SYS Remote Control (QRC): JSON-RPC 2.0 messages, each ended by a NUL byte, over TCP
//! 1710 (protocols.md §4.2).
//!
//! This module owns NUL framing (bounded, resynchronising after an over-long frame), typed
//! parsing of what a Core sends (responses, `EngineStatus`, `ChangeGroup.Poll` pushes) with
//! every type checked, and encoding of requests with the key order QSC's examples use. It also
//! encodes the Core's side and parses requests, for the simulator. It must not do I/O or keep
//! session state (ids, change groups); the driver does that.

use bytes::{Buf, BytesMut};
use serde::Serialize;
use serde_json::Value as Json;
use tokio_util::codec::Decoder;

use super::ProtocolError;

/// Default TCP port (protocols.md §4.2).
pub const PORT: u16 = 1710;

/// A Core closes a session that sends nothing for this long (protocols.md §4.2).
pub const IDLE_LIMIT_SECS: u64 = 60;

/// Longest message we accept. A `Control.Get` of a hundred controls is about 10 KiB.
pub const MAX_FRAME: usize = 15 * 1024;

/// Splits the byte stream at NUL bytes. Frames longer than [`MAX_FRAME`] are dropped (once
/// reported) up to the next NUL, so one bad message cannot wedge the session.
#[derive(Debug, Clone, Default)]
pub struct NulFramer {
    /// Bytes dropped from the current over-long frame.
    discarding: usize,
}

impl NulFramer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn reset(&mut self) {
        self.discarding = 0;
    }
}

impl Decoder for NulFramer {
    type Item = String;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<String>, ProtocolError> {
        loop {
            match src.iter().position(|&b| b == 0) {
                Some(end) => {
                    let frame = src.split_to(end);
                    src.advance(1);
                    if self.discarding > 0 {
                        let got = self.discarding + frame.len();
                        self.discarding = 0;
                        return Err(ProtocolError::Oversized {
                            limit: MAX_FRAME,
                            got,
                        });
                    }
                    if frame.len() > MAX_FRAME {
                        return Err(ProtocolError::Oversized {
                            limit: MAX_FRAME,
                            got: frame.len(),
                        });
                    }
                    let text = String::from_utf8_lossy(&frame);
                    let text = text.trim();
                    if text.is_empty() {
                        continue;
                    }
                    return Ok(Some(text.to_owned()));
                }
                None => {
                    if src.len() > MAX_FRAME {
                        self.discarding = self.discarding.saturating_add(src.len());
                        src.clear();
                    }
                    return Ok(None);
                }
            }
        }
    }
}

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "error {}: {}", self.code, self.message)
    }
}

/// Standard JSON-RPC codes (protocols.md §4.2). QRC's own small codes are UNCONFIRMED; the
/// simulator uses the ones below and the driver does not depend on their numbers except
/// [`LOGON_REQUIRED`], which it treats as an authentication failure either way.
pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
pub const SERVER_ERROR: i64 = -32603;
/// UNCONFIRMED QRC codes (widely quoted from QSC's QRC page; not verified, §7).
pub const UNKNOWN_CHANGE_GROUP: i64 = 6;
pub const UNKNOWN_CONTROL: i64 = 8;
pub const LOGON_REQUIRED: i64 = 10;

/// A control's value: gains and meters are numbers, mutes numbers (0/1) or booleans,
/// combo boxes strings.
#[derive(Debug, Clone, PartialEq)]
pub enum QValue {
    Number(f64),
    Bool(bool),
    Text(String),
}

impl QValue {
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            QValue::Number(n) => Some(*n),
            _ => None,
        }
    }
    /// Booleans as Q-SYS reports them: `true`/`false` or a number (non-zero = on).
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            QValue::Bool(b) => Some(*b),
            QValue::Number(n) => Some(*n != 0.0),
            QValue::Text(_) => None,
        }
    }
    fn to_json(&self) -> Json {
        match self {
            QValue::Number(n) => serde_json::Number::from_f64(*n).map_or(Json::Null, Json::Number),
            QValue::Bool(b) => Json::Bool(*b),
            QValue::Text(s) => Json::String(s.clone()),
        }
    }
}

/// One named control as the Core reports it (`Control.Get` results, `ChangeGroup.Poll` changes).
#[derive(Debug, Clone, PartialEq)]
pub struct ControlState {
    pub name: String,
    pub value: QValue,
    pub string: Option<String>,
    pub position: Option<f64>,
}

/// `EngineStatus` `State` values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineState {
    /// No design running.
    Idle,
    Active,
    /// The backup Core of a redundant pair.
    Standby,
    /// A value this driver does not know; the driver counts it as bad input.
    Unrecognised(String),
}

impl EngineState {
    pub fn parse(s: &str) -> EngineState {
        match s {
            "Idle" => EngineState::Idle,
            "Active" => EngineState::Active,
            "Standby" => EngineState::Standby,
            other => EngineState::Unrecognised(other.to_owned()),
        }
    }
    pub fn as_str(&self) -> &str {
        match self {
            EngineState::Idle => "Idle",
            EngineState::Active => "Active",
            EngineState::Standby => "Standby",
            EngineState::Unrecognised(s) => s,
        }
    }
}

/// `EngineStatus` notification params, or the `StatusGet` result.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineStatus {
    pub platform: Option<String>,
    pub state: EngineState,
    pub design_name: String,
    pub design_code: String,
    pub is_redundant: bool,
    pub is_emulator: bool,
}

/// Everything a Core sends.
#[derive(Debug, Clone, PartialEq)]
pub enum QrcMessage {
    Response {
        id: u64,
        result: Result<Json, RpcError>,
    },
    EngineStatus(EngineStatus),
    /// An `AutoPoll` push. Entries that break the types are kept as errors so the driver can
    /// count them and still apply the good ones.
    ChangeGroupPoll {
        id: String,
        changes: Vec<Result<ControlState, ProtocolError>>,
    },
    /// Some other notification (ignored by the driver, but not an error).
    Notification {
        method: String,
    },
}

/// Frames and parses what a Core sends.
#[derive(Debug, Clone, Default)]
pub struct QrcDecoder {
    framer: NulFramer,
}

impl QrcDecoder {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn reset(&mut self) {
        self.framer.reset();
    }
}

impl Decoder for QrcDecoder {
    type Item = QrcMessage;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<QrcMessage>, ProtocolError> {
        match self.framer.decode(src)? {
            Some(frame) => parse_message(&frame).map(Some),
            None => Ok(None),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<QrcMessage>, ProtocolError> {
        self.decode(src)
    }
}

fn malformed(what: impl std::fmt::Display) -> ProtocolError {
    ProtocolError::malformed(what.to_string())
}

fn short(s: &str) -> String {
    super::printable(s.as_bytes(), 80)
}

/// Parse one message from a Core.
pub fn parse_message(frame: &str) -> Result<QrcMessage, ProtocolError> {
    let v: Json = serde_json::from_str(frame)
        .map_err(|e| malformed(format!("not JSON ({e}): {}", short(frame))))?;
    let obj = v
        .as_object()
        .ok_or_else(|| malformed(format!("not a JSON object: {}", short(frame))))?;
    if obj.get("jsonrpc").and_then(Json::as_str) != Some("2.0") {
        return Err(malformed(format!(
            "missing \"jsonrpc\":\"2.0\": {}",
            short(frame)
        )));
    }
    if let Some(method) = obj.get("method") {
        let method = method
            .as_str()
            .ok_or_else(|| malformed("method is not a string"))?;
        let params = obj.get("params").unwrap_or(&Json::Null);
        return match method {
            "EngineStatus" => parse_engine_status(params).map(QrcMessage::EngineStatus),
            "ChangeGroup.Poll" => {
                let p = params
                    .as_object()
                    .ok_or_else(|| malformed("ChangeGroup.Poll params is not an object"))?;
                let id = p
                    .get("Id")
                    .and_then(Json::as_str)
                    .ok_or_else(|| malformed("ChangeGroup.Poll Id is not a string"))?
                    .to_owned();
                let changes = p
                    .get("Changes")
                    .ok_or_else(|| malformed("ChangeGroup.Poll has no Changes"))?;
                Ok(QrcMessage::ChangeGroupPoll {
                    id,
                    changes: parse_controls(changes)?,
                })
            }
            other => Ok(QrcMessage::Notification {
                method: other.to_owned(),
            }),
        };
    }
    let id = obj
        .get("id")
        .ok_or_else(|| malformed(format!("neither method nor id: {}", short(frame))))?;
    let id = id
        .as_u64()
        .ok_or_else(|| malformed(format!("id {id} is not a non-negative integer")))?;
    if let Some(err) = obj.get("error") {
        let code = err
            .get("code")
            .and_then(Json::as_i64)
            .unwrap_or(SERVER_ERROR);
        let message = err
            .get("message")
            .and_then(Json::as_str)
            .unwrap_or("")
            .to_owned();
        return Ok(QrcMessage::Response {
            id,
            result: Err(RpcError { code, message }),
        });
    }
    match obj.get("result") {
        Some(r) => Ok(QrcMessage::Response {
            id,
            result: Ok(r.clone()),
        }),
        None => Err(malformed(format!(
            "response {id} has neither result nor error"
        ))),
    }
}

/// `EngineStatus` params / `StatusGet` result, every field type-checked.
pub fn parse_engine_status(v: &Json) -> Result<EngineStatus, ProtocolError> {
    let o = v
        .as_object()
        .ok_or_else(|| malformed("engine status is not an object"))?;
    let s = |k: &str| -> Result<String, ProtocolError> {
        match o.get(k) {
            Some(Json::String(s)) => Ok(s.clone()),
            Some(other) => Err(malformed(format!(
                "engine status {k} is {other}, not a string"
            ))),
            None => Err(malformed(format!("engine status has no {k}"))),
        }
    };
    let b = |k: &str| -> Result<bool, ProtocolError> {
        match o.get(k) {
            Some(Json::Bool(b)) => Ok(*b),
            None => Ok(false),
            Some(other) => Err(malformed(format!(
                "engine status {k} is {other}, not a boolean"
            ))),
        }
    };
    let platform = match o.get("Platform") {
        None => None,
        Some(Json::String(p)) => Some(p.clone()),
        Some(other) => {
            return Err(malformed(format!(
                "engine status Platform is {other}, not a string"
            )))
        }
    };
    Ok(EngineStatus {
        platform,
        state: EngineState::parse(&s("State")?),
        design_name: s("DesignName")?,
        design_code: s("DesignCode").unwrap_or_default(),
        is_redundant: b("IsRedundant")?,
        is_emulator: b("IsEmulator")?,
    })
}

/// An array of `{Name, Value, String, Position}`: the `Control.Get` result and the `Changes` of
/// a `ChangeGroup.Poll`. A non-array is an error; a bad entry is an error in its slot.
pub fn parse_controls(v: &Json) -> Result<Vec<Result<ControlState, ProtocolError>>, ProtocolError> {
    let arr = v
        .as_array()
        .ok_or_else(|| malformed(format!("control list is {}, not an array", type_of(v))))?;
    Ok(arr.iter().map(parse_control).collect())
}

fn parse_control(v: &Json) -> Result<ControlState, ProtocolError> {
    let o = v
        .as_object()
        .ok_or_else(|| malformed(format!("control entry is {}, not an object", type_of(v))))?;
    let name = o
        .get("Name")
        .and_then(Json::as_str)
        .ok_or_else(|| malformed("control entry has no string Name"))?
        .to_owned();
    let value = match o.get("Value") {
        Some(Json::Number(n)) => QValue::Number(
            n.as_f64()
                .ok_or_else(|| malformed(format!("control {name}: value out of range")))?,
        ),
        Some(Json::Bool(b)) => QValue::Bool(*b),
        Some(Json::String(s)) => QValue::Text(s.clone()),
        Some(other) => {
            return Err(malformed(format!(
                "control {name}: Value is {}, not a number, boolean or string",
                type_of(other)
            )))
        }
        None => return Err(malformed(format!("control {name} has no Value"))),
    };
    let string = match o.get("String") {
        None | Some(Json::Null) => None,
        Some(Json::String(s)) => Some(s.clone()),
        Some(other) => {
            return Err(malformed(format!(
                "control {name}: String is {}, not a string",
                type_of(other)
            )))
        }
    };
    let position = match o.get("Position") {
        None | Some(Json::Null) => None,
        Some(Json::Number(n)) => n.as_f64(),
        Some(other) => {
            return Err(malformed(format!(
                "control {name}: Position is {}, not a number",
                type_of(other)
            )))
        }
    };
    Ok(ControlState {
        name,
        value,
        string,
        position,
    })
}

fn type_of(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

// ---- encoding: controller → Core -----------------------------------------------------------

/// The request envelope, fields in the order QSC's examples show them.
#[derive(Serialize)]
struct Request<'a, P: Serialize> {
    jsonrpc: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    method: &'a str,
    params: P,
}

fn frame<T: Serialize>(msg: &T) -> Vec<u8> {
    // Serialising these plain structs cannot fail (string keys, finite numbers checked by
    // callers); an empty frame would only be ignored by the Core.
    let mut out = serde_json::to_vec(msg).unwrap_or_default();
    out.push(0);
    out
}

fn request<P: Serialize>(id: Option<u64>, method: &str, params: P) -> Vec<u8> {
    frame(&Request {
        jsonrpc: "2.0",
        id,
        method,
        params,
    })
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct LogonParams<'a> {
    user: &'a str,
    password: &'a str,
}

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct SetParams<'a> {
    name: &'a str,
    value: Json,
    #[serde(skip_serializing_if = "Option::is_none")]
    ramp: Option<f64>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct GroupControls<'a> {
    id: &'a str,
    controls: &'a [&'a str],
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct GroupRate<'a> {
    id: &'a str,
    rate: f64,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct GroupId<'a> {
    id: &'a str,
}

pub fn logon(id: Option<u64>, user: &str, password: &str) -> Vec<u8> {
    request(id, "Logon", LogonParams { user, password })
}

pub fn noop(id: Option<u64>) -> Vec<u8> {
    request(id, "NoOp", Empty {})
}

pub fn status_get(id: u64) -> Vec<u8> {
    request(Some(id), "StatusGet", 0)
}

pub fn control_get(id: u64, names: &[&str]) -> Vec<u8> {
    request(Some(id), "Control.Get", names)
}

pub fn control_set(id: u64, name: &str, value: &QValue, ramp: Option<f64>) -> Vec<u8> {
    request(
        Some(id),
        "Control.Set",
        SetParams {
            name,
            value: value.to_json(),
            ramp,
        },
    )
}

pub fn change_group_add_control(id: u64, group: &str, controls: &[&str]) -> Vec<u8> {
    request(
        Some(id),
        "ChangeGroup.AddControl",
        GroupControls {
            id: group,
            controls,
        },
    )
}

/// `Rate` in seconds, fractions allowed (protocols.md §4.2).
pub fn change_group_auto_poll(id: u64, group: &str, rate_secs: f64) -> Vec<u8> {
    request(
        Some(id),
        "ChangeGroup.AutoPoll",
        GroupRate {
            id: group,
            rate: rate_secs,
        },
    )
}

pub fn change_group_destroy(id: u64, group: &str) -> Vec<u8> {
    request(Some(id), "ChangeGroup.Destroy", GroupId { id: group })
}

// ---- the Core's side (simulator) -----------------------------------------------------------

/// A request as a Core receives it. `id` is kept as JSON to be echoed verbatim.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcRequest {
    pub id: Option<Json>,
    pub method: String,
    pub params: Json,
}

/// Parse a request; on failure, the id (when one could be read) and the JSON-RPC error to send.
pub fn parse_request(frame: &str) -> Result<RpcRequest, (Option<Json>, RpcError)> {
    let v: Json = serde_json::from_str(frame).map_err(|e| {
        (
            None,
            RpcError {
                code: PARSE_ERROR,
                message: format!("Parse error: {e}"),
            },
        )
    })?;
    let id = v.get("id").cloned();
    let invalid = |m: &str| {
        (
            id.clone(),
            RpcError {
                code: INVALID_REQUEST,
                message: m.to_owned(),
            },
        )
    };
    if v.get("jsonrpc").and_then(Json::as_str) != Some("2.0") {
        return Err(invalid("Invalid Request: jsonrpc must be \"2.0\""));
    }
    let method = v
        .get("method")
        .and_then(Json::as_str)
        .ok_or_else(|| invalid("Invalid Request: method must be a string"))?
        .to_owned();
    Ok(RpcRequest {
        id,
        method,
        params: v.get("params").cloned().unwrap_or(Json::Null),
    })
}

#[derive(Serialize)]
struct Notification<'a, P: Serialize> {
    jsonrpc: &'static str,
    method: &'a str,
    params: P,
}

#[derive(Serialize)]
struct ResultResponse<'a, R: Serialize> {
    jsonrpc: &'static str,
    id: &'a Json,
    result: &'a R,
}

#[derive(Serialize)]
struct ErrorResponse<'a> {
    jsonrpc: &'static str,
    id: &'a Json,
    error: ErrorBody<'a>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: i64,
    message: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct StatusBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    platform: Option<&'a str>,
    state: &'a str,
    design_name: &'a str,
    design_code: &'a str,
    is_redundant: bool,
    is_emulator: bool,
}

fn status_body(s: &EngineStatus) -> StatusBody<'_> {
    StatusBody {
        platform: s.platform.as_deref(),
        state: s.state.as_str(),
        design_name: &s.design_name,
        design_code: &s.design_code,
        is_redundant: s.is_redundant,
        is_emulator: s.is_emulator,
    }
}

/// The status object (the `StatusGet` result), fields in QSC's order.
pub fn engine_status_result(s: &EngineStatus) -> impl Serialize + '_ {
    status_body(s)
}

/// The unsolicited `EngineStatus` notification.
pub fn engine_status(s: &EngineStatus) -> Vec<u8> {
    frame(&Notification {
        jsonrpc: "2.0",
        method: "EngineStatus",
        params: status_body(s),
    })
}

pub fn response<R: Serialize>(id: &Json, result: &R) -> Vec<u8> {
    frame(&ResultResponse {
        jsonrpc: "2.0",
        id,
        result,
    })
}

pub fn error_response(id: Option<&Json>, err: &RpcError) -> Vec<u8> {
    frame(&ErrorResponse {
        jsonrpc: "2.0",
        id: id.unwrap_or(&Json::Null),
        error: ErrorBody {
            code: err.code,
            message: &err.message,
        },
    })
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ControlBody<'a> {
    name: &'a str,
    value: Json,
    #[serde(skip_serializing_if = "Option::is_none")]
    string: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    position: Option<f64>,
}

fn control_body(c: &ControlState) -> ControlBody<'_> {
    ControlBody {
        name: &c.name,
        value: c.value.to_json(),
        string: c.string.as_deref(),
        position: c.position,
    }
}

/// A `Control.Get` result array.
pub fn controls_json(controls: &[ControlState]) -> Json {
    serde_json::to_value(controls.iter().map(control_body).collect::<Vec<_>>())
        .unwrap_or(Json::Null)
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct PollBody<'a> {
    id: &'a str,
    changes: Vec<ControlBody<'a>>,
}

/// An `AutoPoll` push (envelope implementation-derived, protocols.md §4.2).
pub fn change_group_poll(group: &str, changes: &[ControlState]) -> Vec<u8> {
    frame(&Notification {
        jsonrpc: "2.0",
        method: "ChangeGroup.Poll",
        params: PollBody {
            id: group,
            changes: changes.iter().map(control_body).collect(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(bytes: &[u8]) -> Vec<Result<QrcMessage, ProtocolError>> {
        let mut dec = QrcDecoder::new();
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(m)) => out.push(Ok(m)),
                Ok(None) => break,
                Err(e) => out.push(Err(e)),
            }
        }
        out
    }

    fn s(b: &[u8]) -> &str {
        std::str::from_utf8(b).unwrap()
    }

    fn active(platform: Option<&str>, emulator: bool) -> EngineStatus {
        EngineStatus {
            platform: platform.map(str::to_owned),
            state: EngineState::Active,
            design_name: "MyDesign".into(),
            design_code: "qALFilm6IcCo".into(),
            is_redundant: false,
            is_emulator: emulator,
        }
    }

    // ---- protocols.md §4.2 vectors, in order -------------------------------------------

    const V_ENGINE: &str = "{\"jsonrpc\":\"2.0\",\"method\":\"EngineStatus\",\"params\":{\"State\":\"Active\",\"DesignName\":\"MyDesign\",\"DesignCode\":\"qALFilm6IcCo\",\"IsRedundant\":false,\"IsEmulator\":true}}\x00";
    const V_LOGON: &str = "{\"jsonrpc\":\"2.0\",\"method\":\"Logon\",\"params\":{\"User\":\"username\",\"Password\":\"1234\"}}\x00";
    const V_NOOP: &str = "{\"jsonrpc\":\"2.0\",\"method\":\"NoOp\",\"params\":{}}\x00";
    const V_STATUS_GET: &str =
        "{\"jsonrpc\":\"2.0\",\"id\":1234,\"method\":\"StatusGet\",\"params\":0}\x00";
    const V_STATUS_RESULT: &str = "{\"jsonrpc\":\"2.0\",\"id\":1234,\"result\":{\"Platform\":\"Core 500i\",\"State\":\"Active\",\"DesignName\":\"MyDesign\",\"DesignCode\":\"qALFilm6IcCo\",\"IsRedundant\":false,\"IsEmulator\":false}}\x00";
    const V_SET: &str = "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"Control.Set\",\"params\":{\"Name\":\"MainGain\",\"Value\":-10.0,\"Ramp\":2.0}}\x00";
    const V_ADD: &str = "{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"ChangeGroup.AddControl\",\"params\":{\"Id\":\"meters\",\"Controls\":[\"MicMeter\"]}}\x00";
    const V_AUTOPOLL: &str = "{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"ChangeGroup.AutoPoll\",\"params\":{\"Id\":\"meters\",\"Rate\":0.1}}\x00";
    const V_POLL: &str = "{\"jsonrpc\":\"2.0\",\"method\":\"ChangeGroup.Poll\",\"params\":{\"Id\":\"meters\",\"Changes\":[{\"Name\":\"MicMeter\",\"Value\":-23.5,\"String\":\"-23.5dB\"}]}}\x00";

    #[test]
    fn vector_engine_status_decodes_and_encodes() {
        assert_eq!(
            decode_all(V_ENGINE.as_bytes()),
            vec![Ok(QrcMessage::EngineStatus(active(None, true)))]
        );
        assert_eq!(s(&engine_status(&active(None, true))), V_ENGINE);
    }

    #[test]
    fn vector_logon_and_noop_encode_exactly() {
        assert_eq!(s(&logon(None, "username", "1234")), V_LOGON);
        assert_eq!(s(&noop(None)), V_NOOP);
    }

    #[test]
    fn vector_status_get_and_its_result() {
        assert_eq!(s(&status_get(1234)), V_STATUS_GET);
        let msgs = decode_all(V_STATUS_RESULT.as_bytes());
        let Ok(QrcMessage::Response {
            id: 1234,
            result: Ok(result),
        }) = &msgs[0]
        else {
            panic!("{msgs:?}")
        };
        assert_eq!(
            parse_engine_status(result).unwrap(),
            active(Some("Core 500i"), false)
        );
        // And the simulator writes the same bytes.
        assert_eq!(
            s(&response(
                &Json::from(1234),
                &engine_status_result(&active(Some("Core 500i"), false))
            )),
            V_STATUS_RESULT
        );
    }

    #[test]
    fn vector_control_set_add_control_autopoll_encode_exactly() {
        assert_eq!(
            s(&control_set(
                2,
                "MainGain",
                &QValue::Number(-10.0),
                Some(2.0)
            )),
            V_SET
        );
        assert_eq!(
            s(&change_group_add_control(3, "meters", &["MicMeter"])),
            V_ADD
        );
        assert_eq!(s(&change_group_auto_poll(4, "meters", 0.1)), V_AUTOPOLL);
    }

    #[test]
    fn vector_change_group_poll_push() {
        let expect = ControlState {
            name: "MicMeter".into(),
            value: QValue::Number(-23.5),
            string: Some("-23.5dB".into()),
            position: None,
        };
        assert_eq!(
            decode_all(V_POLL.as_bytes()),
            vec![Ok(QrcMessage::ChangeGroupPoll {
                id: "meters".into(),
                changes: vec![Ok(expect.clone())]
            })]
        );
        assert_eq!(s(&change_group_poll("meters", &[expect])), V_POLL);
    }

    #[test]
    fn simulator_side_parses_every_client_vector() {
        for v in [V_LOGON, V_NOOP, V_STATUS_GET, V_SET, V_ADD, V_AUTOPOLL] {
            let r = parse_request(v.trim_end_matches('\0')).unwrap();
            assert!(!r.method.is_empty());
        }
        let r = parse_request(V_SET.trim_end_matches('\0')).unwrap();
        assert_eq!(r.id, Some(Json::from(2)));
        assert_eq!(r.params["Value"], Json::from(-10.0));
        assert!(matches!(
            parse_request("{\"jsonrpc\":\"2.0\",\"id\":5,"),
            Err((
                None,
                RpcError {
                    code: PARSE_ERROR,
                    ..
                }
            ))
        ));
        assert!(matches!(
            parse_request("{\"jsonrpc\":\"1.0\",\"id\":5,\"method\":\"NoOp\"}"),
            Err((
                Some(_),
                RpcError {
                    code: INVALID_REQUEST,
                    ..
                }
            ))
        ));
    }

    // ---- framing and types ------------------------------------------------------------

    #[test]
    fn messages_split_across_reads_and_back_to_back() {
        let mut dec = QrcDecoder::new();
        let mut buf = BytesMut::from(&V_POLL.as_bytes()[..20]);
        assert_eq!(dec.decode(&mut buf), Ok(None));
        buf.extend_from_slice(&V_POLL.as_bytes()[20..]);
        buf.extend_from_slice(V_ENGINE.as_bytes());
        assert!(matches!(
            dec.decode(&mut buf),
            Ok(Some(QrcMessage::ChangeGroupPoll { .. }))
        ));
        assert!(matches!(
            dec.decode(&mut buf),
            Ok(Some(QrcMessage::EngineStatus(_)))
        ));
        assert_eq!(dec.decode(&mut buf), Ok(None));
    }

    #[test]
    fn malformed_json_is_an_error_and_the_next_message_still_decodes() {
        let mut input = b"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":[\x00".to_vec();
        input.extend_from_slice(V_ENGINE.as_bytes());
        let got = decode_all(&input);
        assert!(matches!(got[0], Err(ProtocolError::Malformed { .. })));
        assert!(matches!(got[1], Ok(QrcMessage::EngineStatus(_))));
    }

    #[test]
    fn wrong_types_are_errors_not_panics() {
        for bad in [
            "[1,2,3]",
            "{\"jsonrpc\":\"2.0\",\"id\":\"seven\",\"result\":true}",
            "{\"jsonrpc\":\"2.0\",\"id\":-1,\"result\":true}",
            "{\"jsonrpc\":\"2.0\",\"id\":1}",
            "{\"id\":1,\"result\":true}",
            "{\"jsonrpc\":\"2.0\",\"method\":7}",
            "{\"jsonrpc\":\"2.0\",\"method\":\"EngineStatus\",\"params\":{\"State\":1,\"DesignName\":\"x\"}}",
            "{\"jsonrpc\":\"2.0\",\"method\":\"EngineStatus\",\"params\":{\"State\":\"Active\",\"DesignName\":\"x\",\"IsEmulator\":\"yes\"}}",
            "{\"jsonrpc\":\"2.0\",\"method\":\"EngineStatus\",\"params\":[]}",
            "{\"jsonrpc\":\"2.0\",\"method\":\"ChangeGroup.Poll\",\"params\":{\"Id\":\"g\",\"Changes\":{}}}",
            "{\"jsonrpc\":\"2.0\",\"method\":\"ChangeGroup.Poll\",\"params\":{\"Id\":3,\"Changes\":[]}}",
        ] {
            assert!(
                matches!(parse_message(bad), Err(ProtocolError::Malformed { .. })),
                "{bad}"
            );
        }
        // A bad entry among good ones: the good ones survive.
        let msg = parse_message("{\"jsonrpc\":\"2.0\",\"method\":\"ChangeGroup.Poll\",\"params\":{\"Id\":\"g\",\"Changes\":[{\"Name\":\"A\",\"Value\":[1]},{\"Name\":\"B\",\"Value\":1,\"Position\":0.5},{\"Value\":1},{\"Name\":\"C\",\"Value\":2,\"String\":5}]}}").unwrap();
        let QrcMessage::ChangeGroupPoll { changes, .. } = msg else {
            panic!()
        };
        assert!(changes[0].is_err() && changes[2].is_err() && changes[3].is_err());
        assert_eq!(
            changes[1],
            Ok(ControlState {
                name: "B".into(),
                value: QValue::Number(1.0),
                string: None,
                position: Some(0.5)
            })
        );
    }

    #[test]
    fn unknown_engine_state_is_kept_for_the_driver_to_count() {
        let m = parse_message("{\"jsonrpc\":\"2.0\",\"method\":\"EngineStatus\",\"params\":{\"State\":\"Melting\",\"DesignName\":\"d\",\"DesignCode\":\"c\",\"IsRedundant\":false,\"IsEmulator\":false}}").unwrap();
        let QrcMessage::EngineStatus(s) = m else {
            panic!()
        };
        assert_eq!(s.state, EngineState::Unrecognised("Melting".into()));
    }

    #[test]
    fn errors_and_other_notifications() {
        assert_eq!(
            parse_message("{\"jsonrpc\":\"2.0\",\"id\":9,\"error\":{\"code\":8,\"message\":\"Unknown control\"}}").unwrap(),
            QrcMessage::Response {
                id: 9,
                result: Err(RpcError {
                    code: UNKNOWN_CONTROL,
                    message: "Unknown control".into()
                })
            }
        );
        assert_eq!(
            parse_message("{\"jsonrpc\":\"2.0\",\"method\":\"LoopPlayer.Status\",\"params\":{}}")
                .unwrap(),
            QrcMessage::Notification {
                method: "LoopPlayer.Status".into()
            }
        );
        assert_eq!(
            s(&error_response(
                Some(&Json::from(9)),
                &RpcError {
                    code: 8,
                    message: "Unknown control".into()
                }
            )),
            "{\"jsonrpc\":\"2.0\",\"id\":9,\"error\":{\"code\":8,\"message\":\"Unknown control\"}}\x00"
        );
    }

    #[test]
    fn over_long_frame_is_dropped_once_and_framing_recovers() {
        let mut dec = QrcDecoder::new();
        let mut buf = BytesMut::from(&vec![b'x'; MAX_FRAME + 10][..]);
        assert_eq!(dec.decode(&mut buf), Ok(None));
        assert!(buf.is_empty(), "over-long data is not kept");
        buf.extend_from_slice(b"yyy\x00");
        buf.extend_from_slice(V_NOOP.as_bytes());
        assert_eq!(
            dec.decode(&mut buf),
            Err(ProtocolError::Oversized {
                limit: MAX_FRAME,
                got: MAX_FRAME + 13
            })
        );
        assert!(matches!(
            dec.decode(&mut buf),
            Ok(Some(QrcMessage::Notification { .. }))
        ));
    }

    #[test]
    fn empty_frames_and_whitespace_are_skipped() {
        let mut input = b"\x00\x00\r\n".to_vec();
        input.extend_from_slice(V_ENGINE.as_bytes());
        let got = decode_all(&input);
        assert_eq!(got.len(), 1);
        assert!(got[0].is_ok());
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn decoder_never_panics_and_stays_bounded(
                chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..4000), 0..20),
            ) {
                let mut dec = QrcDecoder::new();
                let mut buf = BytesMut::new();
                for c in chunks {
                    buf.extend_from_slice(&c);
                    let mut guard = 0;
                    loop {
                        guard += 1;
                        prop_assert!(guard < 100_000);
                        match dec.decode(&mut buf) {
                            Ok(Some(_)) | Err(_) => {}
                            Ok(None) => break,
                        }
                    }
                    prop_assert!(buf.len() <= MAX_FRAME);
                }
            }

            #[test]
            fn json_shaped_garbage_never_panics(s in "[{}\\[\\]\":,a-zA-Z0-9. -]{0,300}") {
                let _ = parse_message(&s);
                let _ = parse_request(&s);
                let wrapped = format!("{{\"jsonrpc\":\"2.0\",\"method\":\"ChangeGroup.Poll\",\"params\":{s}}}");
                let _ = parse_message(&wrapped);
            }
        }
    }
}
