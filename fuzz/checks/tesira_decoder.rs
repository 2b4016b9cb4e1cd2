//! Biamp Tesira TTP: arbitrary bytes, in arbitrary chunks, through `TtpDecoder` (raw TCP and
//! Telnet sessions), every line through `parse_line`, and the command encoders through the
//! simulator's `split_command`.
//!
//! Checks, beyond "no panic": the decoder consumes its input (it holds the partial line
//! itself, bounded by `MAX_LINE`), a line never holds a line end, every parsed reply or publish
//! survives encode → parse (the codec has no value encoder; the target writes TTP's value
//! syntax itself, so parser and grammar agree), and what the driver sends for any valid tag,
//! attribute and label splits back into the same words on the simulator's side.

use avwarden::codec::tesira::{
    get, parse_line, set, split_command, subscribe, unsubscribe, valid_word, InstanceTag, TtpArg,
    TtpDecoder, TtpFrame, TtpLine, TtpValue, MAX_LINE,
};
use avwarden::codec::ProtocolError;
use bytes::BytesMut;
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
    for telnet in [false, true] {
        let mut decoder = TtpDecoder::new(telnet);
        let mut buf = BytesMut::new();
        for chunk in rest.chunks(step) {
            buf.extend_from_slice(chunk);
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(TtpFrame::Line(line))) => check_line(&line),
                    Ok(Some(TtpFrame::Telnet(_))) => assert!(telnet, "telnet frame on raw TCP"),
                    Ok(None) => break,
                    Err(ProtocolError::Oversized { limit, got }) => {
                        assert_eq!(limit, MAX_LINE);
                        assert!(got > MAX_LINE);
                    }
                    Err(e) => panic!("ttp decoder returned {e}"),
                }
            }
            assert!(buf.is_empty(), "decoder left {} bytes", buf.len());
        }
        loop {
            match decoder.decode_eof(&mut buf) {
                Ok(Some(TtpFrame::Line(line))) => check_line(&line),
                Ok(Some(TtpFrame::Telnet(_))) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
    if let Ok(text) = std::str::from_utf8(rest) {
        check_commands(text);
    }
}

fn check_line(line: &str) {
    // Lossy UTF-8 may triple a byte; the limit is on bytes received.
    assert!(line.len() <= 3 * MAX_LINE, "line of {}", line.len());
    assert!(!line.contains(['\r', '\n']), "line {line:?}");
    let Ok(parsed) = parse_line(line) else {
        return;
    };
    let wire = match &parsed {
        // A word at the top level may be a concise multi-word reply (`+OK a b`, `+OK "a"b`),
        // which has no `"value":` form; written bare, every top-level word reads back.
        TtpLine::Ok(Some(TtpValue::Word(w))) => format!("+OK {w}"),
        TtpLine::Ok(Some(v)) => format!("+OK \"value\":{}", encode(v)),
        TtpLine::Ok(None) => "+OK".to_owned(),
        TtpLine::Publish { token, value } => format!(
            "! \"publishToken\":{} \"value\":{}",
            quote(token),
            encode(value)
        ),
        TtpLine::Err(_) | TtpLine::Banner | TtpLine::Text(_) => return,
    };
    match parse_line(&wire) {
        Ok(again) => assert_eq!(again, parsed, "{line:?} re-encoded as {wire:?}"),
        Err(e) => panic!("{line:?} parsed as {parsed:?}, re-encoded as {wire:?}: {e}"),
    }
}

/// TTP value syntax: space-separated lists and objects, quoted strings with backslash
/// escapes, bare words.
fn encode(v: &TtpValue) -> String {
    match v {
        TtpValue::Number(n) => format!("{n}"),
        TtpValue::Bool(b) => format!("{b}"),
        TtpValue::Text(s) => quote(s),
        TtpValue::Word(w) => w.clone(),
        TtpValue::List(items) => {
            let inner: Vec<String> = items.iter().map(encode).collect();
            format!("[{}]", inner.join(" "))
        }
        TtpValue::Map(members) => {
            let inner: Vec<String> = members
                .iter()
                .map(|(k, v)| format!("{}:{}", quote(k), encode(v)))
                .collect();
            format!("{{{}}}", inner.join(" "))
        }
    }
}

fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The input as tag, attribute, label and value: whatever the validators accept must reach
/// the simulator as exactly those words.
fn check_commands(text: &str) {
    let mut parts = text.splitn(4, '\u{1}');
    let (Some(tag), Some(attr), Some(label)) = (parts.next(), parts.next(), parts.next()) else {
        return;
    };
    let Ok(tag) = InstanceTag::new(tag) else {
        return;
    };
    if valid_word(attr).is_err() || valid_word(label).is_err() {
        return;
    }
    let idx = [1u32, 12];
    let words = |line: String| {
        let line = line
            .strip_suffix('\n')
            .expect("a command ends with a line feed");
        assert!(!line.contains(['\r', '\n']), "{line:?}");
        split_command(line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    };
    let head = |verb: &str| {
        vec![
            tag.as_str().to_owned(),
            verb.into(),
            attr.into(),
            "1".into(),
            "12".into(),
        ]
    };
    assert_eq!(words(get(&tag, attr, &idx)), head("get"));
    let mut want = head("subscribe");
    want.extend([label.to_owned(), "100".to_owned()]);
    assert_eq!(words(subscribe(&tag, attr, &idx, label, 100)), want);
    let mut want = head("unsubscribe");
    want.push(label.to_owned());
    assert_eq!(words(unsubscribe(&tag, attr, &idx, label)), want);
    // A level the driver sets, read back the way a reply carries it.
    let n = parts
        .next()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|n| n.is_finite() && n.abs() <= 1e6)
        .unwrap_or(-20.5);
    let mut want = head("set");
    let arg = TtpArg::Number(n).to_string();
    want.push(arg.clone());
    assert_eq!(words(set(&tag, attr, &idx, TtpArg::Number(n))), want);
    let rounded = (n * 1000.0).round() / 1000.0;
    match parse_line(&format!("+OK \"value\":{arg}")) {
        Ok(TtpLine::Ok(Some(TtpValue::Number(back)))) => assert_eq!(back, rounded, "{arg}"),
        other => panic!("{arg} read back as {other:?}"),
    }
}
