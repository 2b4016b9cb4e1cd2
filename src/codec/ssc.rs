//! Sennheiser Sound Control Protocol, SSC v1 (protocols.md §3): one JSON object per UDP
//! datagram, addresses as nested objects (`/mates/tx1/battery/gauge` ↔
//! `{"mates":{"tx1":{"battery":{"gauge":…}}}}`), `null` = get, a value = set, errors under
//! `osc/error`, subscriptions under `osc/state/subscribe`.
//!
//! Sans-io and string-free: messages are parsed into address/value pairs with `serde_json` and
//! built from them, never compared or assembled as text (key order of real devices is
//! unconfirmed, §3.5). Bounded: a datagram over [`MAX_DATAGRAM`] bytes or nested deeper than
//! [`MAX_DEPTH`] is rejected, and no input panics.

use serde_json::{Map, Value};

use super::{printable, ProtocolError};

/// Largest datagram we accept. SSC replies for a few addresses are a few hundred bytes; SL DW
/// defines error 450 "answer too long" rather than sending huge datagrams.
pub const MAX_DATAGRAM: usize = 8 * 1024;
/// Deepest address we accept (EW-DX addresses are 4 levels deep).
pub const MAX_DEPTH: usize = 12;

/// Error codes the driver acts on (protocols.md §3.3).
pub const ERR_SUBSCRIPTION_TERMINATED: u16 = 310;
pub const ERR_NOT_FOUND: u16 = 404;
/// EW-DX: transmitter not present (§3.3, EW-DX §8.106).
pub const ERR_FAILED_DEPENDENCY: u16 = 424;
pub const ERR_ADDRESS_NOT_FOUND: u16 = 454;

/// Subscription parameters (`"#"` object, protocols.md §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscribeParams {
    /// Minimum period between notifications in ms (0 = none).
    pub min_ms: u32,
    /// Maximum period in ms: notify at least this often even without change (0 = none).
    pub max_ms: u32,
    /// Maximum number of notifications.
    pub count: u32,
    /// Seconds until the subscription expires unless renewed (device default 10).
    pub lifetime_secs: u32,
}

impl Default for SubscribeParams {
    fn default() -> Self {
        Self {
            min_ms: 0,
            max_ms: 0,
            count: 1000,
            lifetime_secs: 10,
        }
    }
}

/// One subscription entry: parameters and the addresses they apply to.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    pub params: SubscribeParams,
    pub addresses: Vec<String>,
}

/// An SSC error for one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressError {
    pub address: String,
    pub code: u16,
    pub desc: Option<String>,
}

/// One datagram, parsed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Message {
    /// Address/value pairs outside `osc` (a `null` value is a get when a client sends it).
    pub values: Vec<(String, Value)>,
    pub errors: Vec<AddressError>,
    pub xid: Option<Value>,
    /// `osc/ping` present.
    pub ping: bool,
    /// Entries of `osc/state/subscribe` (a request, or the server's echo of one).
    pub subscribe: Vec<Subscription>,
}

impl Message {
    pub fn value(&self, address: &str) -> Option<&Value> {
        self.values
            .iter()
            .find(|(a, _)| a == address)
            .map(|(_, v)| v)
    }

    pub fn error(&self, address: &str) -> Option<&AddressError> {
        self.errors.iter().find(|e| e.address == address)
    }

    /// Whether this datagram answers `address` (with a value or an error).
    pub fn answers(&self, address: &str) -> bool {
        self.value(address).is_some() || self.error(address).is_some()
    }
}

/// One message per datagram, for a link that hands its decoder one whole datagram at a time:
/// the buffer is parsed whole and consumed, so nothing of one datagram is taken for the next.
#[derive(Debug, Default)]
pub struct DatagramCodec;

impl tokio_util::codec::Decoder for DatagramCodec {
    type Item = Message;
    type Error = ProtocolError;

    fn decode(&mut self, buf: &mut bytes::BytesMut) -> Result<Option<Message>, ProtocolError> {
        if buf.is_empty() {
            return Ok(None);
        }
        let msg = parse(buf);
        buf.clear();
        msg.map(Some)
    }
}

/// Parse one datagram.
pub fn parse(datagram: &[u8]) -> Result<Message, ProtocolError> {
    if datagram.len() > MAX_DATAGRAM {
        return Err(ProtocolError::Oversized {
            limit: MAX_DATAGRAM,
            got: datagram.len(),
        });
    }
    let root: Value = serde_json::from_slice(datagram).map_err(|e| {
        ProtocolError::malformed(format!("not JSON ({e}): {}", printable(datagram, 60)))
    })?;
    let Value::Object(root) = root else {
        return Err(ProtocolError::malformed("SSC message is not a JSON object"));
    };
    let mut msg = Message::default();
    for (key, v) in root {
        if key == "osc" {
            parse_osc(v, &mut msg)?;
        } else {
            flatten(&format!("/{key}"), v, 1, &mut msg.values)?;
        }
    }
    Ok(msg)
}

fn parse_osc(v: Value, msg: &mut Message) -> Result<(), ProtocolError> {
    let Value::Object(osc) = v else {
        return Err(ProtocolError::malformed("osc is not an object"));
    };
    for (key, v) in osc {
        match key.as_str() {
            "ping" => msg.ping = true,
            "xid" => msg.xid = Some(v),
            "error" => {
                let Value::Array(items) = v else {
                    return Err(ProtocolError::malformed("osc/error is not an array"));
                };
                for item in items {
                    let mut leaves = Vec::new();
                    if let Value::Object(o) = item {
                        for (k, v) in o {
                            flatten(&format!("/{k}"), v, 1, &mut leaves)?;
                        }
                    }
                    for (address, v) in leaves {
                        msg.errors.push(error_leaf(address, &v)?);
                    }
                }
            }
            "state" => {
                if let Value::Object(state) = v {
                    if let Some(Value::Array(entries)) = state.get("subscribe") {
                        for e in entries {
                            msg.subscribe.push(parse_subscription(e)?);
                        }
                    }
                }
            }
            // version, schema, limits, feature …: not needed.
            _ => {}
        }
    }
    Ok(())
}

fn error_leaf(address: String, v: &Value) -> Result<AddressError, ProtocolError> {
    // `[424]` or `[424, {"desc": "failed dependency"}]` (protocols.md §3.3).
    let arr = v.as_array();
    let code = arr
        .and_then(|a| a.first())
        .and_then(Value::as_u64)
        .and_then(|c| u16::try_from(c).ok())
        .ok_or_else(|| ProtocolError::malformed(format!("error for {address} has no code")))?;
    let desc = arr
        .and_then(|a| a.get(1))
        .and_then(|d| d.get("desc"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok(AddressError {
        address,
        code,
        desc,
    })
}

fn parse_subscription(e: &Value) -> Result<Subscription, ProtocolError> {
    let Value::Object(o) = e else {
        return Err(ProtocolError::malformed(
            "subscription entry is not an object",
        ));
    };
    let mut params = SubscribeParams::default();
    let mut leaves = Vec::new();
    for (k, v) in o {
        if k == "#" {
            let num = |name: &str, d: u32| -> u32 {
                v.get(name)
                    .and_then(Value::as_u64)
                    .map_or(d, |n| u32::try_from(n).unwrap_or(u32::MAX))
            };
            params = SubscribeParams {
                min_ms: num("min", 0),
                max_ms: num("max", 0),
                count: num("count", 1000),
                lifetime_secs: num("lifetime", 10),
            };
        } else {
            flatten(&format!("/{k}"), v.clone(), 1, &mut leaves)?;
        }
    }
    Ok(Subscription {
        params,
        addresses: leaves.into_iter().map(|(a, _)| a).collect(),
    })
}

/// Objects are address levels; anything else (number, string, bool, null, array) is a leaf.
fn flatten(
    prefix: &str,
    v: Value,
    depth: usize,
    out: &mut Vec<(String, Value)>,
) -> Result<(), ProtocolError> {
    if depth > MAX_DEPTH {
        return Err(ProtocolError::malformed(format!(
            "address nested deeper than {MAX_DEPTH}"
        )));
    }
    match v {
        Value::Object(o) if !o.is_empty() => {
            for (k, v) in o {
                flatten(&format!("{prefix}/{k}"), v, depth + 1, out)?;
            }
            Ok(())
        }
        other => {
            out.push((prefix.to_owned(), other));
            Ok(())
        }
    }
}

/// Insert `value` at `address` in a JSON object tree.
fn insert(root: &mut Map<String, Value>, address: &str, value: Value) {
    let parts: Vec<&str> = address.split('/').filter(|p| !p.is_empty()).collect();
    let Some((last, dirs)) = parts.split_last() else {
        return;
    };
    let mut node = root;
    for p in dirs {
        let entry = node
            .entry((*p).to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        let Value::Object(next) = entry else {
            return;
        };
        node = next;
    }
    node.insert((*last).to_owned(), value);
}

/// Builds outgoing datagrams (controller requests and, for the simulator, device replies).
#[derive(Debug, Clone, Default)]
pub struct Builder {
    root: Map<String, Value>,
    errors: Vec<Value>,
    subscribe: Vec<Value>,
}

impl Builder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Ask for the value at `address`.
    pub fn get(self, address: &str) -> Self {
        self.value(address, Value::Null)
    }

    /// Set (or, in a reply, report) the value at `address`.
    pub fn value(mut self, address: &str, v: Value) -> Self {
        insert(&mut self.root, address, v);
        self
    }

    pub fn ping(mut self) -> Self {
        insert(&mut self.root, "/osc/ping", Value::Null);
        self
    }

    pub fn xid(mut self, xid: Value) -> Self {
        insert(&mut self.root, "/osc/xid", xid);
        self
    }

    /// An error for `address` (simulator replies).
    pub fn error(mut self, address: &str, code: u16, desc: Option<&str>) -> Self {
        let mut o = Map::new();
        let mut leaf = vec![Value::from(code)];
        if let Some(d) = desc {
            leaf.push(serde_json::json!({ "desc": d }));
        }
        insert(&mut o, address, Value::Array(leaf));
        self.errors.push(Value::Object(o));
        self
    }

    /// One subscription entry for `addresses`.
    pub fn subscribe(mut self, params: SubscribeParams, addresses: &[String]) -> Self {
        let mut o = Map::new();
        o.insert(
            "#".to_owned(),
            serde_json::json!({
                "min": params.min_ms,
                "max": params.max_ms,
                "count": params.count,
                "lifetime": params.lifetime_secs,
            }),
        );
        for a in addresses {
            insert(&mut o, a, Value::Null);
        }
        self.subscribe.push(Value::Object(o));
        self
    }

    /// Echo subscription entries exactly as received (simulator).
    pub fn subscribe_echo(mut self, entries: &[Subscription]) -> Self {
        for e in entries {
            self = self.subscribe(e.params, &e.addresses);
        }
        self
    }

    pub fn is_empty(&self) -> bool {
        self.root.is_empty() && self.errors.is_empty() && self.subscribe.is_empty()
    }

    pub fn build(self) -> Value {
        let mut root = self.root;
        if !self.errors.is_empty() {
            insert(&mut root, "/osc/error", Value::Array(self.errors));
        }
        if !self.subscribe.is_empty() {
            insert(
                &mut root,
                "/osc/state/subscribe",
                Value::Array(self.subscribe),
            );
        }
        Value::Object(root)
    }

    pub fn encode(self) -> Vec<u8> {
        // Serialising a `Value` cannot fail (no non-string keys, no non-finite floats survive
        // `Value::from`).
        serde_json::to_vec(&self.build()).unwrap_or_default()
    }
}

/// Expand a profile address template (`/mates/tx{n}/battery/gauge`) for channel `n`.
pub fn address(template: &str, n: u8) -> String {
    template.replace("{n}", &n.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn same_json(bytes: &[u8], expected: &str) {
        let got: Value = serde_json::from_slice(bytes).expect("valid json");
        let want: Value = serde_json::from_str(expected).expect("vector is json");
        assert_eq!(got, want);
    }

    // protocols.md §3.5 vector 1
    #[test]
    fn vector_1_keep_alive() {
        same_json(&Builder::new().ping().encode(), r#"{"osc":{"ping":null}}"#);
        let m = parse(br#"{"osc":{"ping":null}}"#).expect("parses");
        assert!(m.ping);
        assert!(m.values.is_empty());
    }

    // vector 2
    #[test]
    fn vector_2_ewdx_battery_gauge() {
        same_json(
            &Builder::new().get("/mates/tx1/battery/gauge").encode(),
            r#"{"mates":{"tx1":{"battery":{"gauge":null}}}}"#,
        );
        let m = parse(br#"{"mates":{"tx1":{"battery":{"gauge":65}}}}"#).expect("parses");
        assert_eq!(m.value("/mates/tx1/battery/gauge"), Some(&json!(65)));
    }

    // vector 3
    #[test]
    fn vector_3_ewdx_warnings() {
        same_json(
            &Builder::new().get("/mates/tx1/warnings").encode(),
            r#"{"mates":{"tx1":{"warnings":null}}}"#,
        );
        let m = parse(br#"{"mates":{"tx1":{"warnings":["LowBattery","AfPeak"]}}}"#).unwrap();
        assert_eq!(
            m.value("/mates/tx1/warnings"),
            Some(&json!(["LowBattery", "AfPeak"]))
        );
    }

    // vector 4
    #[test]
    fn vector_4_speechline_battery() {
        same_json(
            &Builder::new().get("/mates/tx1/bat_gauge").encode(),
            r#"{"mates":{"tx1":{"bat_gauge":null}}}"#,
        );
        let m = parse(br#"{"mates":{"tx1":{"bat_gauge":67}}}"#).unwrap();
        assert_eq!(m.value("/mates/tx1/bat_gauge"), Some(&json!(67)));
        same_json(
            &Builder::new().get("/mates/tx1/bat_lifetime").encode(),
            r#"{"mates":{"tx1":{"bat_lifetime":null}}}"#,
        );
        let m = parse(br#"{"mates":{"tx1":{"bat_lifetime":36240}}}"#).unwrap();
        assert_eq!(m.value("/mates/tx1/bat_lifetime"), Some(&json!(36240)));
    }

    // vector 5
    #[test]
    fn vector_5_transaction_id_echo() {
        same_json(
            &Builder::new()
                .xid(json!(1234567890))
                .get("/device/name")
                .encode(),
            r#"{"osc":{"xid":1234567890},"device":{"name":null}}"#,
        );
        let m = parse(br#"{"device":{"name":"SLDW4CH"},"osc":{"xid":1234567890}}"#).unwrap();
        assert_eq!(m.xid, Some(json!(1234567890)));
        assert_eq!(m.value("/device/name"), Some(&json!("SLDW4CH")));
    }

    // vector 6
    #[test]
    fn vector_6_subscription_stream_and_expiry() {
        let params = SubscribeParams {
            min_ms: 0,
            max_ms: 0,
            count: 1000,
            lifetime_secs: 60,
        };
        let req = Builder::new()
            .subscribe(params, &["/mates/tx1/battery/gauge".to_owned()])
            .encode();
        let vector = r##"{"osc":{"state":{"subscribe":[{"#":{"min":0,"max":0,"count":1000,"lifetime":60},"mates":{"tx1":{"battery":{"gauge":null}}}}]}}}"##;
        same_json(&req, vector);
        // The server echoes it …
        let echo = parse(vector.as_bytes()).unwrap();
        assert_eq!(
            echo.subscribe,
            vec![Subscription {
                params,
                addresses: vec!["/mates/tx1/battery/gauge".into()]
            }]
        );
        assert!(echo.values.is_empty(), "an echo carries no values");
        // … then streams values …
        for (d, g) in [
            (&br#"{"mates":{"tx1":{"battery":{"gauge":65}}}}"#[..], 65),
            (br#"{"mates":{"tx1":{"battery":{"gauge":64}}}}"#, 64),
        ] {
            assert_eq!(
                parse(d).unwrap().value("/mates/tx1/battery/gauge"),
                Some(&json!(g))
            );
        }
        // … and ends it with 310.
        let end =
            parse(br#"{"osc":{"error":[{"mates":{"tx1":{"battery":{"gauge":[310]}}}}]}}"#).unwrap();
        assert_eq!(
            end.errors,
            vec![AddressError {
                address: "/mates/tx1/battery/gauge".into(),
                code: ERR_SUBSCRIPTION_TERMINATED,
                desc: None
            }]
        );
    }

    // vector 7
    #[test]
    fn vector_7_transmitter_absent() {
        same_json(
            &Builder::new().get("/mates/tx2/warnings").encode(),
            r#"{"mates":{"tx2":{"warnings":null}}}"#,
        );
        let m = parse(
            br#"{"osc":{"error":[{"mates":{"tx2":{"warnings":[424,{"desc":"failed dependency"}]}}}]}}"#,
        )
        .unwrap();
        let e = m.error("/mates/tx2/warnings").expect("error");
        assert_eq!(e.code, ERR_FAILED_DEPENDENCY);
        assert_eq!(e.desc.as_deref(), Some("failed dependency"));
        assert!(m.answers("/mates/tx2/warnings"));
        // The simulator's builder produces the same shape.
        same_json(
            &Builder::new()
                .error("/mates/tx2/warnings", 424, Some("failed dependency"))
                .encode(),
            r#"{"osc":{"error":[{"mates":{"tx2":{"warnings":[424,{"desc":"failed dependency"}]}}}]}}"#,
        );
    }

    #[test]
    fn key_order_does_not_matter() {
        let a = parse(br#"{"osc":{"xid":7},"device":{"name":"X"}}"#).unwrap();
        let b = parse(br#"{"device":{"name":"X"},"osc":{"xid":7}}"#).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(parse(b"not json").is_err());
        assert!(parse(b"[1,2]").is_err());
        assert!(parse(br#"{"osc":{"error":[{"a":{"b":"no code"}}]}}"#).is_err());
        let big = vec![b' '; MAX_DATAGRAM + 1];
        assert!(matches!(parse(&big), Err(ProtocolError::Oversized { .. })));
        let deep = "{\"a\":".repeat(40) + "1" + &"}".repeat(40);
        assert!(parse(deep.as_bytes()).is_err());
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn get_roundtrip(parts in proptest::collection::vec("[a-z][a-z0-9_]{0,8}", 1..5)) {
            prop_assume!(parts[0] != "osc");
            let addr = format!("/{}", parts.join("/"));
            let m = parse(&Builder::new().value(&addr, json!(3)).encode()).unwrap();
            prop_assert_eq!(m.value(&addr), Some(&json!(3)));
        }
    }
}
