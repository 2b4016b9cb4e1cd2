//! Q-SYS QRC: arbitrary bytes, in arbitrary chunks, through `QrcDecoder` (NUL framing and
//! message parsing), and every frame through the simulator's `parse_request`.
//!
//! Checks, beyond "no panic": the buffer never holds more than `MAX_FRAME` after the decoder
//! has had its say, frames hold no NUL, every message a Core sends survives the simulator's
//! encoder → the driver's decoder unchanged (responses, errors, `EngineStatus`,
//! `ChangeGroup.Poll`), and what the driver sends with any control name, group id and value
//! reaches the simulator's `parse_request` with that method and those params.

use avwarden::codec::qrc::{
    change_group_add_control, change_group_auto_poll, change_group_destroy, change_group_poll,
    control_get, control_set, engine_status, error_response, logon, noop, parse_controls,
    parse_engine_status, parse_message, parse_request, response, ControlState, NulFramer, QValue,
    QrcDecoder, QrcMessage, MAX_FRAME,
};
use avwarden::codec::ProtocolError;
use bytes::BytesMut;
use serde_json::{json, Value as Json};
use tokio_util::codec::Decoder;

/// One input: panics when a check fails.
pub fn check(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let step = if first == 0 {
        rest.len().max(1)
    } else {
        usize::from(first)
    };
    let mut framer = NulFramer::new();
    let mut decoder = QrcDecoder::new();
    let mut frames = Vec::new();
    let mut buf = BytesMut::new();
    let mut buf2 = BytesMut::new();
    for chunk in rest.chunks(step) {
        buf.extend_from_slice(chunk);
        buf2.extend_from_slice(chunk);
        loop {
            match framer.decode(&mut buf) {
                Ok(Some(frame)) => {
                    assert!(!frame.contains('\0'));
                    assert!(!frame.is_empty() && frame == frame.trim());
                    frames.push(frame);
                }
                Ok(None) => break,
                Err(ProtocolError::Oversized { limit, got }) => {
                    assert_eq!(limit, MAX_FRAME);
                    assert!(got > MAX_FRAME);
                }
                Err(e) => panic!("nul framer returned {e}"),
            }
        }
        assert!(buf.len() <= MAX_FRAME, "framer buffer holds {}", buf.len());
        loop {
            match decoder.decode(&mut buf2) {
                Ok(Some(m)) => check_message(&m),
                Ok(None) => break,
                Err(ProtocolError::Oversized { .. } | ProtocolError::Malformed { .. }) => {}
                Err(e) => panic!("qrc decoder returned {e}"),
            }
        }
        assert!(
            buf2.len() <= MAX_FRAME,
            "decoder buffer holds {}",
            buf2.len()
        );
    }
    for frame in &frames {
        if let Ok(m) = parse_message(frame) {
            check_message(&m);
        }
        check_request(frame);
        if let Ok(v) = serde_json::from_str::<Json>(frame) {
            check_json(&v);
        }
    }
}

/// The simulator's encoding of this message decodes to the same message.
fn check_message(m: &QrcMessage) {
    let wire = match m {
        QrcMessage::Response { id, result: Ok(r) } => response(&json!(id), r),
        QrcMessage::Response { id, result: Err(e) } => error_response(Some(&json!(id)), e),
        QrcMessage::EngineStatus(s) => engine_status(s),
        QrcMessage::ChangeGroupPoll { id, changes } => {
            let Some(good) = changes.iter().cloned().collect::<Result<Vec<_>, _>>().ok() else {
                // Broken entries have no encoding; the good ones are checked below.
                for c in changes.iter().flatten() {
                    check_control(c);
                }
                return;
            };
            for c in &good {
                check_control(c);
            }
            change_group_poll(id, &good)
        }
        QrcMessage::Notification { .. } => return,
    };
    if wire.len() > MAX_FRAME {
        // Re-encoding can grow a message (`1e1` becomes `10.0`); the limit then applies.
        return;
    }
    let again = decode_one(&wire);
    assert!(same_message(&again, m), "{m:?} came back as {again:?}");
}

fn decode_one(wire: &[u8]) -> QrcMessage {
    assert_eq!(wire.last(), Some(&0), "a frame ends with NUL");
    let mut buf = BytesMut::from(wire);
    match QrcDecoder::new().decode(&mut buf) {
        Ok(Some(m)) => {
            assert!(buf.is_empty());
            m
        }
        other => panic!("{:?} decoded as {other:?}", String::from_utf8_lossy(wire)),
    }
}

/// A control the simulator reports is one the driver can set and the simulator parse back.
fn check_control(c: &ControlState) {
    let wire = control_set(7, &c.name, &c.value, c.position);
    let req = request_of(&wire);
    assert_eq!(req.method, "Control.Set");
    assert_eq!(req.id, Some(json!(7)));
    assert_eq!(req.params["Name"], json!(c.name));
    match &c.value {
        QValue::Number(n) => assert!(same_f64(req.params["Value"].as_f64(), Some(*n))),
        QValue::Bool(b) => assert_eq!(req.params["Value"], json!(b)),
        QValue::Text(s) => assert_eq!(req.params["Value"], json!(s)),
    }
    let names = [c.name.as_str()];
    let req = request_of(&control_get(8, &names));
    assert_eq!(
        (req.method.as_str(), req.params),
        ("Control.Get", json!(names))
    );
    let group = c.string.as_deref().unwrap_or("g");
    let req = request_of(&change_group_add_control(9, group, &names));
    assert_eq!(req.params, json!({"Id": group, "Controls": names}));
    let req = request_of(&change_group_auto_poll(10, group, 0.1));
    assert_eq!(req.params, json!({"Id": group, "Rate": 0.1}));
    let req = request_of(&change_group_destroy(11, group));
    assert_eq!(req.params, json!({"Id": group}));
    let req = request_of(&logon(None, &c.name, group));
    assert_eq!(req.id, None);
    assert_eq!(req.params, json!({"User": c.name, "Password": group}));
    assert_eq!(request_of(&noop(Some(1))).method, "NoOp");
}

fn request_of(wire: &[u8]) -> avwarden::codec::qrc::RpcRequest {
    let mut buf = BytesMut::from(wire);
    let frame = match NulFramer::new().decode(&mut buf) {
        Ok(Some(f)) => f,
        other => panic!("{:?} framed as {other:?}", String::from_utf8_lossy(wire)),
    };
    parse_request(&frame).unwrap_or_else(|(_, e)| panic!("{frame}: {e}"))
}

/// The Core's side: whatever `parse_request` accepts or refuses gets an answer the driver
/// can decode, with the id echoed.
fn check_request(frame: &str) {
    let (id, answer) = match parse_request(frame) {
        Ok(req) => {
            let id = req.id.clone().unwrap_or(Json::Null);
            let wire = response(&id, &json!({"method": req.method}));
            (id, wire)
        }
        Err((id, e)) => {
            let wire = error_response(id.as_ref(), &e);
            (id.unwrap_or(Json::Null), wire)
        }
    };
    if answer.len() > MAX_FRAME {
        return;
    }
    let mut buf = BytesMut::from(&answer[..]);
    let framed = NulFramer::new().decode(&mut buf);
    let Ok(Some(text)) = framed else {
        panic!(
            "answer {:?} framed as {framed:?}",
            String::from_utf8_lossy(&answer)
        );
    };
    // The driver only takes non-negative integer ids; others must still be valid JSON-RPC.
    match (parse_message(&text), id.as_u64()) {
        (Ok(QrcMessage::Response { id: got, .. }), Some(want)) => assert_eq!(got, want),
        (Ok(other), Some(_)) => panic!("{text} parsed as {other:?}"),
        (Err(e), Some(_)) => panic!("{text}: {e}"),
        (_, None) => {
            let v: Json = serde_json::from_str(&text).expect("an answer is JSON");
            assert_eq!(v["jsonrpc"], "2.0");
        }
    }
}

/// The typed parsers on any JSON value, not only where a message puts them.
fn check_json(v: &Json) {
    let _ = parse_engine_status(v);
    if let Ok(list) = parse_controls(v) {
        if let Json::Array(a) = v {
            assert_eq!(list.len(), a.len(), "one result per entry");
        }
    }
    if let Json::Object(o) = v {
        for x in o.values() {
            let _ = parse_engine_status(x);
            let _ = parse_controls(x);
        }
    }
}

fn same_f64(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (Some(x), Some(y)) => x == y || (x - y).abs() <= 1e-12 * x.abs().max(y.abs()),
        _ => false,
    }
}

/// Equal, except that a float may come back one rounding step off: serde_json's default float
/// parser is fast, not exact (its `float_roundtrip` feature is off).
fn same_json(a: &Json, b: &Json) -> bool {
    match (a, b) {
        (Json::Number(x), Json::Number(y)) if x.is_f64() || y.is_f64() => {
            same_f64(x.as_f64(), y.as_f64())
        }
        (Json::Array(x), Json::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_json(a, b))
        }
        (Json::Object(x), Json::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, a)| y.get(k).is_some_and(|b| same_json(a, b)))
        }
        _ => a == b,
    }
}

fn same_control(a: &ControlState, b: &ControlState) -> bool {
    let value = match (&a.value, &b.value) {
        (QValue::Number(x), QValue::Number(y)) => same_f64(Some(*x), Some(*y)),
        (x, y) => x == y,
    };
    let position = match (a.position, b.position) {
        (Some(x), Some(y)) => same_f64(Some(x), Some(y)),
        (x, y) => x == y,
    };
    a.name == b.name && a.string == b.string && value && position
}

fn same_message(a: &QrcMessage, b: &QrcMessage) -> bool {
    match (a, b) {
        (
            QrcMessage::Response {
                id: i,
                result: Ok(x),
            },
            QrcMessage::Response {
                id: j,
                result: Ok(y),
            },
        ) => i == j && same_json(x, y),
        (
            QrcMessage::ChangeGroupPoll { id: i, changes: x },
            QrcMessage::ChangeGroupPoll { id: j, changes: y },
        ) => {
            i == j
                && x.len() == y.len()
                && x.iter().zip(y).all(|(p, q)| match (p, q) {
                    (Ok(p), Ok(q)) => same_control(p, q),
                    _ => false,
                })
        }
        _ => a == b,
    }
}
