//! Biamp Tesira Text Protocol (TTP) framing, reply parsing and command encoding
//! (protocols.md §4.1).
//!
//! This module owns the wire grammar: line framing (CR LF, CR NUL, bare LF; "read one byte after
//! every CR"), Telnet negotiation separated from data when the session runs over Telnet, the
//! `+OK` / `-ERR` / `! "publishToken"` line shapes, TTP's JSON-like value syntax (space
//! separated, bare words allowed), and quoting of instance tags in commands. It must not do I/O,
//! keep session state (echo, subscriptions) or know what a zone is; the driver does that.

use bytes::{Buf, BytesMut};
use tokio_util::codec::Decoder;

use super::telnet::{TelnetCommand, TelnetOutput, TelnetParser};
use super::ProtocolError;

/// The server's greeting; everything sent before it is lost (protocols.md §4.1).
pub const BANNER: &str = "Welcome to the Tesira Text Protocol Server";

/// Longest line we accept. Verbose replies are short; a 32-channel `levels` subscription is
/// about 400 bytes. Anything past this without a line end is garbage.
pub const MAX_LINE: usize = 8 * 1024;

/// How deep lists/objects may nest in a value before we call the line malformed.
const MAX_DEPTH: usize = 16;

/// One unit of input: a Telnet command to answer, or a complete text line (terminator removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TtpFrame {
    Telnet(TelnetCommand),
    Line(String),
}

/// Frames TTP input. Holds the partial line itself (so the link's buffer drains as bytes arrive)
/// and enforces [`MAX_LINE`].
#[derive(Debug, Clone)]
pub struct TtpDecoder {
    telnet: Option<TelnetParser>,
    line: Vec<u8>,
    /// The previous data byte was CR: the next byte is LF or NUL and belongs to it.
    after_cr: bool,
    /// Bytes dropped from the current over-long line (0 when not discarding).
    overflow: usize,
    max_line: usize,
}

impl TtpDecoder {
    /// `telnet`: the session runs over Telnet (TCP 23), so IAC sequences are negotiation.
    pub fn new(telnet: bool) -> Self {
        Self {
            telnet: telnet.then(TelnetParser::new),
            line: Vec::new(),
            after_cr: false,
            overflow: 0,
            max_line: MAX_LINE,
        }
    }

    /// Forget partial input (a new connection starts clean).
    pub fn reset(&mut self) {
        if let Some(t) = &mut self.telnet {
            t.reset();
        }
        self.line.clear();
        self.after_cr = false;
        self.overflow = 0;
    }

    fn end_line(&mut self) -> Result<Option<TtpFrame>, ProtocolError> {
        if self.overflow > 0 {
            let got = self.line.len() + self.overflow;
            self.line.clear();
            self.overflow = 0;
            return Err(ProtocolError::Oversized {
                limit: self.max_line,
                got,
            });
        }
        if self.line.is_empty() {
            return Ok(None);
        }
        let text = String::from_utf8_lossy(&self.line).into_owned();
        self.line.clear();
        Ok(Some(TtpFrame::Line(text)))
    }
}

impl Decoder for TtpDecoder {
    type Item = TtpFrame;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<TtpFrame>, ProtocolError> {
        let mut used = 0;
        let mut out = Ok(None);
        while used < src.len() {
            let raw = src[used];
            used += 1;
            let b = match &mut self.telnet {
                Some(t) => match t.feed(raw) {
                    None => continue,
                    Some(TelnetOutput::Command(c)) => {
                        out = Ok(Some(TtpFrame::Telnet(c)));
                        break;
                    }
                    Some(TelnetOutput::Data(b)) => b,
                },
                None => raw,
            };
            if std::mem::take(&mut self.after_cr) && (b == b'\n' || b == 0) {
                continue;
            }
            match b {
                b'\r' | b'\n' => {
                    self.after_cr = b == b'\r';
                    match self.end_line() {
                        Ok(None) => continue,
                        other => {
                            out = other;
                            break;
                        }
                    }
                }
                _ => {
                    if self.line.len() < self.max_line {
                        self.line.push(b);
                    } else {
                        self.overflow = self.overflow.saturating_add(1);
                    }
                }
            }
        }
        src.advance(used);
        out
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<TtpFrame>, ProtocolError> {
        if let Some(f) = self.decode(src)? {
            return Ok(Some(f));
        }
        // A last line without terminator is still a line.
        self.end_line()
    }
}

/// A TTP value: numbers, booleans, quoted strings, bare words, `[…]` lists and `{…}` objects
/// (TTP separates items with spaces, not commas; both are accepted).
#[derive(Debug, Clone, PartialEq)]
pub enum TtpValue {
    Number(f64),
    Bool(bool),
    Text(String),
    /// An unquoted token that is not a number or boolean (concise replies, enum names).
    Word(String),
    List(Vec<TtpValue>),
    Map(Vec<(String, TtpValue)>),
}

impl TtpValue {
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            TtpValue::Number(n) => Some(*n),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            TtpValue::Bool(b) => Some(*b),
            _ => None,
        }
    }
    pub fn as_text(&self) -> Option<&str> {
        match self {
            TtpValue::Text(s) | TtpValue::Word(s) => Some(s),
            _ => None,
        }
    }
    /// A short description of the value's type, for "wrong type" errors.
    pub fn type_name(&self) -> &'static str {
        match self {
            TtpValue::Number(_) => "number",
            TtpValue::Bool(_) => "boolean",
            TtpValue::Text(_) => "string",
            TtpValue::Word(_) => "word",
            TtpValue::List(_) => "list",
            TtpValue::Map(_) => "object",
        }
    }
}

/// What a TTP line means.
#[derive(Debug, Clone, PartialEq)]
pub enum TtpLine {
    /// `Welcome to the Tesira Text Protocol Server...`: a new session; subscriptions are gone.
    Banner,
    /// `+OK`, `+OK "value":X`, `+OK "list":[…]`, or concise `+OK X`.
    Ok(Option<TtpValue>),
    /// `-ERR …`, `-CANNOT_DELIVER`, `-GENERAL_FAILURE`: the text after the dash.
    Err(String),
    /// `! "publishToken":"label" "value":X`.
    Publish { token: String, value: TtpValue },
    /// Anything else: the echo of our command, a Telnet preamble.
    Text(String),
}

/// Classify one line. Fails only on a line that claims a shape (`+OK`, `!`) and breaks it.
pub fn parse_line(line: &str) -> Result<TtpLine, ProtocolError> {
    let line = line.trim_end_matches([' ', '\t']);
    if line.starts_with(BANNER) {
        return Ok(TtpLine::Banner);
    }
    if let Some(rest) = line.strip_prefix("+OK") {
        let rest = rest.trim();
        if rest.is_empty() {
            return Ok(TtpLine::Ok(None));
        }
        if !line[3..].starts_with(' ') {
            return Err(ProtocolError::malformed(format!(
                "reply {:?} does not follow +OK with a space",
                short(line)
            )));
        }
        return parse_reply_body(rest).map(|v| TtpLine::Ok(Some(v)));
    }
    if let Some(rest) = line.strip_prefix('-') {
        return Ok(TtpLine::Err(rest.trim().to_owned()));
    }
    if let Some(rest) = line.strip_prefix('!') {
        let pairs = parse_pairs(rest.trim())
            .map_err(|e| ProtocolError::malformed(format!("publish {:?}: {e}", short(line))))?;
        let mut token = None;
        let mut value = None;
        for (k, v) in pairs {
            match k.as_str() {
                "publishToken" => token = Some(v),
                "value" => value = Some(v),
                _ => {}
            }
        }
        return match (token, value) {
            (Some(TtpValue::Text(token)), Some(value)) => Ok(TtpLine::Publish { token, value }),
            (Some(_), Some(_)) => Err(ProtocolError::malformed(format!(
                "publish {:?}: publishToken is not a string",
                short(line)
            ))),
            _ => Err(ProtocolError::malformed(format!(
                "publish {:?} lacks publishToken or value",
                short(line)
            ))),
        };
    }
    Ok(TtpLine::Text(line.to_owned()))
}

/// The value of a `+OK` reply: the `"value"` or `"list"` member of a verbose reply, all members
/// when there are others, or the bare value of a concise one.
fn parse_reply_body(body: &str) -> Result<TtpValue, ProtocolError> {
    let bad = |e: String| ProtocolError::malformed(format!("reply body {:?}: {e}", short(body)));
    if looks_like_pairs(body) {
        let mut pairs = parse_pairs(body).map_err(bad)?;
        if let Some(i) = pairs.iter().position(|(k, _)| k == "value" || k == "list") {
            return Ok(pairs.swap_remove(i).1);
        }
        return Ok(TtpValue::Map(pairs));
    }
    let mut p = Parser::new(body);
    let v = p.value(0).map_err(bad)?;
    p.skip_ws();
    if !p.done() {
        // Concise replies may be several words; keep them as one.
        return Ok(TtpValue::Word(body.to_owned()));
    }
    Ok(v)
}

fn looks_like_pairs(s: &str) -> bool {
    let mut p = Parser::new(s);
    p.string().is_ok() && p.peek() == Some(b':')
}

/// `"key":value "key":value …`
fn parse_pairs(s: &str) -> Result<Vec<(String, TtpValue)>, String> {
    let mut p = Parser::new(s);
    let mut out = Vec::new();
    loop {
        p.skip_sep();
        if p.done() {
            return Ok(out);
        }
        let k = p.string()?;
        p.expect(b':')?;
        let v = p.value(0)?;
        out.push((k, v));
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Parser<'a> {
    fn new(s: &'a str) -> Self {
        Self {
            s: s.as_bytes(),
            i: 0,
        }
    }
    fn done(&self) -> bool {
        self.i >= self.s.len()
    }
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }
    fn skip_sep(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b',')) {
            self.i += 1;
        }
    }
    fn expect(&mut self, c: u8) -> Result<(), String> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(format!("expected '{}' at {}", c as char, self.i))
        }
    }
    fn string(&mut self) -> Result<String, String> {
        self.expect(b'"')?;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => return Err("unterminated string".to_owned()),
                Some(b'"') => {
                    self.i += 1;
                    return Ok(String::from_utf8_lossy(&out).into_owned());
                }
                Some(b'\\') => {
                    self.i += 1;
                    match self.peek() {
                        None => return Err("unterminated string".to_owned()),
                        Some(b'n') => out.push(b'\n'),
                        Some(b't') => out.push(b'\t'),
                        Some(c) => out.push(c),
                    }
                    self.i += 1;
                }
                Some(c) => {
                    out.push(c);
                    self.i += 1;
                }
            }
        }
    }
    fn value(&mut self, depth: usize) -> Result<TtpValue, String> {
        if depth > MAX_DEPTH {
            return Err("values nested too deeply".to_owned());
        }
        self.skip_ws();
        match self.peek() {
            None => Err("missing value".to_owned()),
            Some(b'"') => self.string().map(TtpValue::Text),
            Some(b'[') => {
                self.i += 1;
                let mut items = Vec::new();
                loop {
                    self.skip_sep();
                    match self.peek() {
                        None => return Err("unterminated list".to_owned()),
                        Some(b']') => {
                            self.i += 1;
                            return Ok(TtpValue::List(items));
                        }
                        Some(_) => items.push(self.value(depth + 1)?),
                    }
                }
            }
            Some(b'{') => {
                self.i += 1;
                let mut members = Vec::new();
                loop {
                    self.skip_sep();
                    match self.peek() {
                        None => return Err("unterminated object".to_owned()),
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(TtpValue::Map(members));
                        }
                        Some(_) => {
                            let k = self.string()?;
                            self.expect(b':')?;
                            members.push((k, self.value(depth + 1)?));
                        }
                    }
                }
            }
            Some(b']' | b'}' | b':' | b',') => Err(format!("unexpected character at {}", self.i)),
            Some(_) => {
                let start = self.i;
                while let Some(c) = self.peek() {
                    if matches!(c, b' ' | b'\t' | b',' | b']' | b'}') {
                        break;
                    }
                    self.i += 1;
                }
                let tok = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
                Ok(word_value(tok))
            }
        }
    }
}

fn word_value(tok: String) -> TtpValue {
    match tok.as_str() {
        "true" => return TtpValue::Bool(true),
        "false" => return TtpValue::Bool(false),
        _ => {}
    }
    // Rust also parses "inf" and "NaN"; a meter never reads those, so they stay words.
    let numeric_start = tok
        .bytes()
        .next()
        .is_some_and(|c| c.is_ascii_digit() || matches!(c, b'-' | b'+' | b'.'));
    if numeric_start {
        if let Ok(n) = tok.parse::<f64>() {
            if n.is_finite() {
                return TtpValue::Number(n);
            }
        }
    }
    TtpValue::Word(tok)
}

fn short(s: &str) -> String {
    super::printable(s.as_bytes(), 80)
}

/// An instance tag as configured in the DSP design: case-sensitive, quoted on the wire when it
/// contains spaces. Only constructed through [`InstanceTag::new`], so a tag can never inject a
/// second command or break the quoting.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceTag(String);

impl InstanceTag {
    pub fn new(tag: &str) -> Result<Self, String> {
        if tag.is_empty() || tag.len() > 128 {
            return Err("must be 1 to 128 characters".to_owned());
        }
        if tag.trim() != tag {
            return Err("must not start or end with a space".to_owned());
        }
        if let Some(c) = tag
            .chars()
            .find(|c| c.is_control() || *c == '"' || *c == '\\')
        {
            return Err(format!("must not contain {c:?}"));
        }
        Ok(Self(tag.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    fn wire(&self) -> String {
        if self.0.contains(' ') {
            format!("\"{}\"", self.0)
        } else {
            self.0.clone()
        }
    }
}

impl std::fmt::Display for InstanceTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An attribute name or subscription label: one word of letters, digits, `_`, `-`, `.`.
pub fn valid_word(w: &str) -> Result<(), String> {
    if w.is_empty() || w.len() > 64 {
        return Err("must be 1 to 64 characters".to_owned());
    }
    if let Some(c) = w
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(format!("must not contain {c:?}"));
    }
    Ok(())
}

/// A value we set: numbers are written the shortest way (`-20`, `-20.5`), rounded to 1/1000 dB
/// so floating-point noise never reaches the wire.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TtpArg {
    Number(f64),
    Bool(bool),
}

impl std::fmt::Display for TtpArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TtpArg::Number(n) => {
                let r = (n * 1000.0).round() / 1000.0;
                // -0 prints as "-0"; the device wants 0.
                write!(f, "{}", if r == 0.0 { 0.0 } else { r })
            }
            TtpArg::Bool(b) => write!(f, "{b}"),
        }
    }
}

fn indexes(idx: &[u32]) -> String {
    idx.iter().map(|i| format!(" {i}")).collect()
}

/// `Tag get attr idx…\n`
pub fn get(tag: &InstanceTag, attr: &str, idx: &[u32]) -> String {
    format!("{} get {attr}{}\n", tag.wire(), indexes(idx))
}

/// `Tag set attr idx… value\n`
pub fn set(tag: &InstanceTag, attr: &str, idx: &[u32], value: TtpArg) -> String {
    format!("{} set {attr}{} {value}\n", tag.wire(), indexes(idx))
}

/// `Tag subscribe attr idx… label rate_ms\n`
pub fn subscribe(tag: &InstanceTag, attr: &str, idx: &[u32], label: &str, rate_ms: u32) -> String {
    format!(
        "{} subscribe {attr}{} {label} {rate_ms}\n",
        tag.wire(),
        indexes(idx)
    )
}

/// `Tag unsubscribe attr idx… label\n` (must repeat what was subscribed).
pub fn unsubscribe(tag: &InstanceTag, attr: &str, idx: &[u32], label: &str) -> String {
    format!(
        "{} unsubscribe {attr}{} {label}\n",
        tag.wire(),
        indexes(idx)
    )
}

/// A special-tag command (`SESSION set verbose true`, `DEVICE get version`).
pub fn special(words: &[&str]) -> String {
    let mut s = words.join(" ");
    s.push('\n');
    s
}

/// Split a command line into words, honouring double quotes (simulators parse what we send).
pub fn split_command(line: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_q = false;
    let mut has = false;
    for c in line.chars() {
        match c {
            '"' => {
                in_q = !in_q;
                has = true;
            }
            ' ' | '\t' if !in_q => {
                if has {
                    out.push(std::mem::take(&mut cur));
                    has = false;
                }
            }
            c => {
                cur.push(c);
                has = true;
            }
        }
    }
    if in_q {
        return Err("unterminated quote".to_owned());
    }
    if has {
        out.push(cur);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::telnet::refusal;

    fn decode_all(dec: &mut TtpDecoder, bytes: &[u8]) -> Vec<Result<TtpFrame, ProtocolError>> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(f)) => out.push(Ok(f)),
                Ok(None) => break,
                Err(e) => out.push(Err(e)),
            }
        }
        assert!(buf.is_empty(), "decoder consumes everything it is given");
        out
    }

    fn lines(dec: &mut TtpDecoder, bytes: &[u8]) -> Vec<TtpLine> {
        decode_all(dec, bytes)
            .into_iter()
            .filter_map(|f| match f {
                Ok(TtpFrame::Line(l)) => Some(parse_line(&l).unwrap()),
                _ => None,
            })
            .collect()
    }

    fn tag(s: &str) -> InstanceTag {
        InstanceTag::new(s).unwrap()
    }

    // ---- protocols.md §4.1 vectors, in order -------------------------------------------

    #[test]
    fn vector_0_negotiation_then_banner() {
        let mut dec = TtpDecoder::new(true);
        let frames = decode_all(
            &mut dec,
            b"\xff\xfd\x18\xff\xfd\x20\xff\xfd\x23\xff\xfd\x27Welcome to the Tesira Text Protocol Server...\r\n",
        );
        let mut reply = Vec::new();
        let mut rest = Vec::new();
        for f in frames {
            match f.unwrap() {
                TtpFrame::Telnet(c) => reply.extend(refusal(c).unwrap()),
                TtpFrame::Line(l) => rest.push(parse_line(&l).unwrap()),
            }
        }
        assert_eq!(reply, b"\xff\xfc\x18\xff\xfc\x20\xff\xfc\x23\xff\xfc\x27");
        assert_eq!(rest, vec![TtpLine::Banner]);
    }

    #[test]
    fn vector_1_get_level_with_echo() {
        assert_eq!(get(&tag("Level1"), "level", &[1]), "Level1 get level 1\n");
        let mut dec = TtpDecoder::new(true);
        assert_eq!(
            lines(
                &mut dec,
                b"Level1 get level 1\r\n+OK \"value\":-10.000000\r\n"
            ),
            vec![
                TtpLine::Text("Level1 get level 1".into()),
                TtpLine::Ok(Some(TtpValue::Number(-10.0)))
            ]
        );
    }

    #[test]
    fn vector_2_set_level_and_mute() {
        assert_eq!(
            set(&tag("Level1"), "level", &[1], TtpArg::Number(-20.0)),
            "Level1 set level 1 -20\n"
        );
        assert_eq!(
            set(&tag("Level1"), "mute", &[1], TtpArg::Bool(true)),
            "Level1 set mute 1 true\n"
        );
        assert_eq!(get(&tag("Level1"), "mute", &[1]), "Level1 get mute 1\n");
        let mut dec = TtpDecoder::new(true);
        assert_eq!(
            lines(&mut dec, b"+OK\r\n+OK\r\n+OK \"value\":true\r\n"),
            vec![
                TtpLine::Ok(None),
                TtpLine::Ok(None),
                TtpLine::Ok(Some(TtpValue::Bool(true)))
            ]
        );
    }

    #[test]
    fn vector_3_errors() {
        assert_eq!(
            split_command("Mixer1 set inputMute 1").unwrap(),
            ["Mixer1", "set", "inputMute", "1"]
        );
        assert_eq!(
            get(&tag("MyLevel1"), "level", &[10]),
            "MyLevel1 get level 10\n"
        );
        let mut dec = TtpDecoder::new(true);
        assert_eq!(
            lines(
                &mut dec,
                b"-ERR Parse error at 22: not enough parameters supplied\r\n\
                  -ERR INVALID_PARAMETER Index out of range:channelIndex min:1 max:8 received:10\r\n\
                  -ERR address not found: {\"deviceId\":0 \"classCode\":0 \"instanceNum\":0}\r\n"
            ),
            vec![
                TtpLine::Err("ERR Parse error at 22: not enough parameters supplied".into()),
                TtpLine::Err(
                    "ERR INVALID_PARAMETER Index out of range:channelIndex min:1 max:8 received:10"
                        .into()
                ),
                TtpLine::Err(
                    "ERR address not found: {\"deviceId\":0 \"classCode\":0 \"instanceNum\":0}"
                        .into()
                ),
            ]
        );
        assert_eq!(
            parse_line("-CANNOT_DELIVER").unwrap(),
            TtpLine::Err("CANNOT_DELIVER".into())
        );
        assert_eq!(
            parse_line("-GENERAL_FAILURE").unwrap(),
            TtpLine::Err("GENERAL_FAILURE".into())
        );
    }

    #[test]
    fn vector_4_meter_subscription_then_unsubscribe() {
        assert_eq!(
            subscribe(&tag("AudioMeter1"), "level", &[1], "mtr1", 100),
            "AudioMeter1 subscribe level 1 mtr1 100\n"
        );
        assert_eq!(
            unsubscribe(&tag("AudioMeter1"), "level", &[1], "mtr1"),
            "AudioMeter1 unsubscribe level 1 mtr1\n"
        );
        let mut dec = TtpDecoder::new(true);
        assert_eq!(
            lines(
                &mut dec,
                b"! \"publishToken\":\"mtr1\" \"value\":-100.000000\r\n+OK\r\n! \"publishToken\":\"mtr1\" \"value\":-35.299999\r\n+OK\r\n"
            ),
            vec![
                TtpLine::Publish {
                    token: "mtr1".into(),
                    value: TtpValue::Number(-100.0)
                },
                TtpLine::Ok(None),
                TtpLine::Publish {
                    token: "mtr1".into(),
                    value: TtpValue::Number(-35.299999)
                },
                TtpLine::Ok(None),
            ]
        );
    }

    #[test]
    fn vector_5_concise_mode() {
        assert_eq!(
            special(&["SESSION", "set", "verbose", "false"]),
            "SESSION set verbose false\n"
        );
        assert_eq!(
            get(&tag("Mute1"), "numChannels", &[]),
            "Mute1 get numChannels\n"
        );
        let mut dec = TtpDecoder::new(true);
        assert_eq!(
            lines(&mut dec, b"+OK\r\n+OK 2\r\n"),
            vec![TtpLine::Ok(None), TtpLine::Ok(Some(TtpValue::Number(2.0)))]
        );
    }

    // ---- framing -----------------------------------------------------------------------

    #[test]
    fn cr_nul_cr_lf_and_bare_lf_all_end_lines_and_the_byte_after_cr_is_eaten() {
        let mut dec = TtpDecoder::new(true);
        let got = lines(&mut dec, b"+OK\r\x00+OK \"value\":1\r\n+OK 3\n");
        assert_eq!(
            got,
            vec![
                TtpLine::Ok(None),
                TtpLine::Ok(Some(TtpValue::Number(1.0))),
                TtpLine::Ok(Some(TtpValue::Number(3.0)))
            ]
        );
        // CR at the end of one read, NUL at the start of the next: still one line, no stray NUL.
        let mut dec = TtpDecoder::new(false);
        let a = decode_all(&mut dec, b"+OK\r");
        let b = decode_all(&mut dec, b"\x00+OK 7\r\n");
        assert_eq!(a, vec![Ok(TtpFrame::Line("+OK".into()))]);
        assert_eq!(b, vec![Ok(TtpFrame::Line("+OK 7".into()))]);
    }

    #[test]
    fn telnet_commands_inside_a_line_do_not_break_it() {
        let mut dec = TtpDecoder::new(true);
        let frames = decode_all(&mut dec, b"+O\xff\xfb\x01K\r\n");
        assert_eq!(
            frames,
            vec![
                Ok(TtpFrame::Telnet(TelnetCommand::Will(1))),
                Ok(TtpFrame::Line("+OK".into()))
            ]
        );
    }

    #[test]
    fn serial_mode_passes_0xff_as_data() {
        let mut dec = TtpDecoder::new(false);
        let frames = decode_all(&mut dec, b"a\xffb\r\n");
        assert_eq!(frames, vec![Ok(TtpFrame::Line("a\u{fffd}b".into()))]);
    }

    #[test]
    fn over_long_line_is_reported_once_and_the_next_line_is_fine() {
        let mut dec = TtpDecoder::new(false);
        let mut input = vec![b'x'; MAX_LINE + 100];
        input.extend_from_slice(b"\r\n+OK\r\n");
        let frames = decode_all(&mut dec, &input);
        assert_eq!(
            frames,
            vec![
                Err(ProtocolError::Oversized {
                    limit: MAX_LINE,
                    got: MAX_LINE + 100
                }),
                Ok(TtpFrame::Line("+OK".into()))
            ]
        );
    }

    #[test]
    fn eof_flushes_a_last_unterminated_line() {
        let mut dec = TtpDecoder::new(false);
        let mut buf = BytesMut::from(&b"+OK"[..]);
        assert_eq!(dec.decode(&mut buf), Ok(None));
        assert_eq!(
            dec.decode_eof(&mut buf),
            Ok(Some(TtpFrame::Line("+OK".into())))
        );
    }

    // ---- values ------------------------------------------------------------------------

    #[test]
    fn values_lists_objects_words() {
        assert_eq!(
            parse_line("+OK \"list\":[-10.5 -20 true \"a b\"]").unwrap(),
            TtpLine::Ok(Some(TtpValue::List(vec![
                TtpValue::Number(-10.5),
                TtpValue::Number(-20.0),
                TtpValue::Bool(true),
                TtpValue::Text("a b".into())
            ])))
        );
        assert_eq!(
            parse_line("+OK \"value\":{\"deviceId\":0 \"name\":\"x\"}").unwrap(),
            TtpLine::Ok(Some(TtpValue::Map(vec![
                ("deviceId".into(), TtpValue::Number(0.0)),
                ("name".into(), TtpValue::Text("x".into()))
            ])))
        );
        assert_eq!(
            parse_line("+OK \"value\":LINE_LEVEL").unwrap(),
            TtpLine::Ok(Some(TtpValue::Word("LINE_LEVEL".into())))
        );
        assert_eq!(
            parse_line("+OK \"value\":NaN").unwrap(),
            TtpLine::Ok(Some(TtpValue::Word("NaN".into())))
        );
        assert_eq!(
            parse_line("+OK \"value\":\"4.2.0.24\"").unwrap(),
            TtpLine::Ok(Some(TtpValue::Text("4.2.0.24".into())))
        );
        assert_eq!(
            parse_line("+OK two words").unwrap(),
            TtpLine::Ok(Some(TtpValue::Word("two words".into())))
        );
    }

    #[test]
    fn broken_shapes_are_malformed() {
        for l in [
            "+OK \"value\":[1 2",
            "+OK \"value\":\"open",
            "+OK \"value\":",
            "+OKAY",
            "! \"publishToken\":\"x\"",
            "! \"value\":1",
            "! \"publishToken\":3 \"value\":1",
            "! garbage",
        ] {
            assert!(
                matches!(parse_line(l), Err(ProtocolError::Malformed { .. })),
                "{l}"
            );
        }
        let deep = format!("+OK \"value\":{}", "[".repeat(100));
        assert!(parse_line(&deep).is_err());
    }

    #[test]
    fn other_lines_are_text() {
        assert_eq!(
            parse_line("No entry for terminal type \"unknown\";").unwrap(),
            TtpLine::Text("No entry for terminal type \"unknown\";".into())
        );
    }

    // ---- encoding ----------------------------------------------------------------------

    #[test]
    fn tags_with_spaces_are_quoted_and_unsafe_tags_refused() {
        assert_eq!(
            get(&tag("Room A Level"), "level", &[2]),
            "\"Room A Level\" get level 2\n"
        );
        assert!(InstanceTag::new("a\nb").is_err());
        assert!(InstanceTag::new("a\"b").is_err());
        assert!(InstanceTag::new("").is_err());
        assert!(InstanceTag::new(" x").is_err());
        assert!(valid_word("zone-main.meter").is_ok());
        assert!(valid_word("two words").is_err());
        assert_eq!(
            split_command("\"Room A Level\" set level 2 -3.5").unwrap(),
            ["Room A Level", "set", "level", "2", "-3.5"]
        );
    }

    #[test]
    fn numbers_are_written_short_and_clean() {
        assert_eq!(TtpArg::Number(-20.0).to_string(), "-20");
        assert_eq!(TtpArg::Number(-20.5).to_string(), "-20.5");
        assert_eq!(TtpArg::Number(0.1 + 0.2).to_string(), "0.3");
        assert_eq!(TtpArg::Number(-0.0001).to_string(), "0");
        assert_eq!(TtpArg::Bool(false).to_string(), "false");
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn decoder_never_panics_and_stays_bounded(
                chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..600), 0..40),
                telnet in any::<bool>(),
            ) {
                let mut dec = TtpDecoder::new(telnet);
                for c in chunks {
                    let mut buf = BytesMut::from(&c[..]);
                    let mut guard = 0;
                    loop {
                        guard += 1;
                        prop_assert!(guard < 10_000);
                        match dec.decode(&mut buf) {
                            Ok(Some(TtpFrame::Line(l))) => {
                                prop_assert!(l.len() <= MAX_LINE * 3);
                                let _ = parse_line(&l);
                            }
                            Ok(Some(TtpFrame::Telnet(_))) => {}
                            Ok(None) => break,
                            Err(_) => {}
                        }
                    }
                    prop_assert!(buf.is_empty());
                    prop_assert!(dec.line.len() <= MAX_LINE);
                }
            }

            #[test]
            fn parse_line_never_panics(s in "\\PC{0,200}") {
                let _ = parse_line(&s);
                let _ = parse_line(&format!("+OK {s}"));
                let _ = parse_line(&format!("! {s}"));
                let _ = split_command(&s);
            }
        }
    }
}
