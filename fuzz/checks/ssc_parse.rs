//! Sennheiser SSC: arbitrary bytes as one UDP datagram through `ssc::parse`.
//!
//! Checks, beyond "no panic": a datagram nested deeper than the limit is refused, every
//! address is absolute, and the values of a parsed datagram survive `Builder` → encode → parse
//! unchanged (the simulator and the driver agree on what a datagram says).

use std::collections::HashSet;

use avwarden::codec::ssc::{parse, Builder, MAX_DATAGRAM, MAX_DEPTH};
use serde_json::Value;

/// One input: panics when a check fails.
pub fn check(data: &[u8]) {
    let Ok(msg) = parse(data) else {
        return;
    };
    if let Ok(Value::Object(root)) = serde_json::from_slice::<Value>(data) {
        let deepest = root
            .iter()
            .filter(|(k, _)| k.as_str() != "osc")
            .map(|(_, v)| depth(v, 1))
            .max()
            .unwrap_or(0);
        assert!(deepest <= MAX_DEPTH, "accepted nesting {deepest}");
    }
    for (address, _) in &msg.values {
        assert!(address.starts_with('/'), "address {address:?}");
    }
    for e in &msg.errors {
        assert!(msg.answers(&e.address));
    }
    if !rebuildable(&msg.values) {
        return;
    }
    let mut b = Builder::new();
    for (a, v) in &msg.values {
        b = b.value(a, v.clone());
    }
    let wire = b.encode();
    if wire.len() > MAX_DATAGRAM {
        // Re-encoding can grow a datagram (`1e1` becomes `10.0`); the limit then applies.
        return;
    }
    let again = parse(&wire).expect("a built datagram parses");
    let mut want = msg.values.clone();
    let mut got = again.values;
    want.sort_by(|x, y| x.0.cmp(&y.0));
    got.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(got.len(), want.len());
    for ((ga, gv), (wa, wv)) in got.iter().zip(&want) {
        assert_eq!(ga, wa);
        assert!(same(gv, wv), "{wa}: {gv} != {wv}");
    }
}

/// Equal, except that a float may come back one rounding step off: serde_json's default float
/// parser is fast, not exact (its `float_roundtrip` feature is off), which no SSC value feels.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            match (x.as_f64(), y.as_f64()) {
                (Some(x), Some(y)) => x == y || (x - y).abs() <= 1e-12 * x.abs().max(y.abs()),
                _ => false,
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, a)| y.get(k).is_some_and(|b| same(a, b)))
        }
        _ => a == b,
    }
}

/// How deep `flatten` walks: non-empty objects are levels, anything else is a leaf.
fn depth(v: &Value, at: usize) -> usize {
    match v {
        Value::Object(o) if !o.is_empty() => {
            o.values().map(|c| depth(c, at + 1)).max().unwrap_or(at)
        }
        _ => at,
    }
}

/// Whether these address/value pairs can be written back as addresses. A JSON key may hold a
/// `/` (then `{"a/b":1}` and `{"a":{"b":1}}` read alike, and a shallow key can stand for a
/// deep address) or be empty; such datagrams, and leaves that are empty objects, have no
/// unambiguous address form.
fn rebuildable(values: &[(String, Value)]) -> bool {
    let all: HashSet<&str> = values.iter().map(|(a, _)| a.as_str()).collect();
    all.len() == values.len()
        && values.iter().all(|(a, v)| {
            !matches!(v, Value::Object(_))
                && a.len() > 1
                && a.matches('/').count() <= MAX_DEPTH
                && a[1..].split('/').all(|s| !s.is_empty())
                && !a
                    .match_indices('/')
                    .skip(1)
                    .any(|(i, _)| all.contains(&a[..i]))
        })
}
