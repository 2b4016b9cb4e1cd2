//! PJLink Class 1 and Class 2 wire format (protocols.md §1): CR-terminated line framing, the
//! session greeting and MD5 authentication, request encoding, response parsing into typed
//! values, and the Class 2 UDP search/notification datagrams.
//!
//! Sans-io: no sockets, no clocks, no panics on any input, bounded buffers. Used by both the
//! driver (replies) and the simulator (requests). It must not decide what a reply *means* for
//! the room (faults, health); that is the driver's job.

use std::fmt;

use bytes::{Buf, Bytes, BytesMut};
use md5::{Digest, Md5};
use tokio_util::codec::Decoder;

use super::{printable, ProtocolError};

/// TCP control port and UDP search/notification port (protocols.md §1.1).
pub const PORT: u16 = 4352;
/// Longest packet the spec allows, header to CR (protocols.md §1.1).
pub const MAX_PACKET: usize = 136;
/// Longest parameter the spec allows (protocols.md §1.1).
pub const MAX_PARAM: usize = 128;
/// Hex characters of the MD5 digest prefixed to a session's first command (protocols.md §1.3).
pub const DIGEST_LEN: usize = 32;
/// Hex characters of the projector's random number in `PJLINK 1 <random>` (protocols.md §1.3).
pub const RANDOM_LEN: usize = 8;
/// Tolerance beyond the spec's packet size for sloppy firmware (trailing blanks, long names).
pub const LINE_SLACK: usize = 32;
/// Longest reply line we accept before resynchronising.
pub const MAX_REPLY_LINE: usize = MAX_PACKET + LINE_SLACK;
/// Longest request line a projector (our simulator) accepts: digest prefix plus a packet.
pub const MAX_REQUEST_LINE: usize = DIGEST_LEN + MAX_PACKET + LINE_SLACK;
/// Most lamps a `LAMP` reply may list (protocols.md §1.4).
pub const MAX_LAMPS: usize = 8;

/// Splits a byte stream into lines. The spec terminates with CR (protocols.md §1.1); LF and
/// CRLF are accepted too, and blank lines (the LF of a CRLF) are skipped.
///
/// A line longer than `max` yields one [`ProtocolError::Oversized`]; the decoder then drops
/// everything up to the next terminator (resynchronisation) without ever holding more than
/// `max` bytes of an unterminated line.
#[derive(Debug, Clone)]
pub struct LineDecoder {
    max: usize,
    /// Inside an oversized line: drop bytes until the next terminator.
    discarding: bool,
    /// Bytes at the buffer's start already searched for a terminator.
    scanned: usize,
}

impl LineDecoder {
    pub fn new(max: usize) -> Self {
        Self {
            max: max.max(16),
            discarding: false,
            scanned: 0,
        }
    }

    /// Decoder for a controller reading replies.
    pub fn replies() -> Self {
        Self::new(MAX_REPLY_LINE)
    }

    /// Decoder for a projector reading requests (digest prefix included).
    pub fn requests() -> Self {
        Self::new(MAX_REQUEST_LINE)
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Whether the decoder is skipping the rest of an oversized line.
    pub fn is_discarding(&self) -> bool {
        self.discarding
    }
}

impl Default for LineDecoder {
    fn default() -> Self {
        Self::replies()
    }
}

fn is_terminator(b: u8) -> bool {
    b == b'\r' || b == b'\n'
}

impl Decoder for LineDecoder {
    type Item = Bytes;
    type Error = ProtocolError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, ProtocolError> {
        loop {
            let start = self.scanned.min(buf.len());
            let found = buf[start..]
                .iter()
                .position(|&b| is_terminator(b))
                .map(|p| p + start);
            let Some(end) = found else {
                if self.discarding {
                    buf.clear();
                    self.scanned = 0;
                    return Ok(None);
                }
                if buf.len() > self.max {
                    let got = buf.len();
                    buf.clear();
                    self.scanned = 0;
                    self.discarding = true;
                    return Err(ProtocolError::Oversized {
                        limit: self.max,
                        got,
                    });
                }
                self.scanned = buf.len();
                return Ok(None);
            };
            let line = buf.split_to(end);
            buf.advance(1);
            self.scanned = 0;
            if self.discarding {
                // The tail of an oversized line, already reported.
                self.discarding = false;
                continue;
            }
            if line.is_empty() {
                continue;
            }
            if line.len() > self.max {
                return Err(ProtocolError::Oversized {
                    limit: self.max,
                    got: line.len(),
                });
            }
            return Ok(Some(line.freeze()));
        }
    }

    /// At end of stream an unterminated last line is still a line: some projectors close the
    /// socket right after the reply and drop the CR.
    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, ProtocolError> {
        if let Some(line) = self.decode(buf)? {
            return Ok(Some(line));
        }
        let discarding = std::mem::take(&mut self.discarding);
        self.scanned = 0;
        if buf.is_empty() || discarding {
            buf.clear();
            return Ok(None);
        }
        let line = buf.split();
        Ok(Some(line.freeze()))
    }
}

/// Protocol class of a command (`%1` or `%2`, protocols.md §1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    One,
    Two,
}

impl Class {
    pub fn digit(self) -> u8 {
        match self {
            Class::One => b'1',
            Class::Two => b'2',
        }
    }

    pub fn from_digit(d: u8) -> Option<Class> {
        match d {
            b'1' => Some(Class::One),
            b'2' => Some(Class::Two),
            _ => None,
        }
    }

    pub fn number(self) -> u8 {
        self.digit() - b'0'
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.number())
    }
}

/// A four-letter command name, stored upper-case (replies may come in lower case,
/// protocols.md §1.4 quirks).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Command([u8; 4]);

impl Command {
    pub const POWR: Command = Command(*b"POWR");
    pub const INPT: Command = Command(*b"INPT");
    pub const AVMT: Command = Command(*b"AVMT");
    pub const ERST: Command = Command(*b"ERST");
    pub const LAMP: Command = Command(*b"LAMP");
    pub const INST: Command = Command(*b"INST");
    pub const NAME: Command = Command(*b"NAME");
    pub const INF1: Command = Command(*b"INF1");
    pub const INF2: Command = Command(*b"INF2");
    pub const INFO: Command = Command(*b"INFO");
    pub const CLSS: Command = Command(*b"CLSS");
    pub const SNUM: Command = Command(*b"SNUM");
    pub const SVER: Command = Command(*b"SVER");
    pub const INNM: Command = Command(*b"INNM");
    pub const IRES: Command = Command(*b"IRES");
    pub const RRES: Command = Command(*b"RRES");
    pub const FILT: Command = Command(*b"FILT");
    pub const RLMP: Command = Command(*b"RLMP");
    pub const RFIL: Command = Command(*b"RFIL");
    pub const SVOL: Command = Command(*b"SVOL");
    pub const MVOL: Command = Command(*b"MVOL");
    pub const FREZ: Command = Command(*b"FREZ");
    pub const SRCH: Command = Command(*b"SRCH");
    pub const ACKN: Command = Command(*b"ACKN");
    pub const LKUP: Command = Command(*b"LKUP");

    /// Four ASCII letters or digits, any case.
    pub fn parse(b: &[u8]) -> Result<Command, ProtocolError> {
        let arr: [u8; 4] = b
            .try_into()
            .map_err(|_| ProtocolError::malformed("command name is not 4 characters"))?;
        if !arr.iter().all(u8::is_ascii_alphanumeric) {
            return Err(ProtocolError::malformed(format!(
                "command name {:?} is not alphanumeric",
                printable(&arr, 8)
            )));
        }
        Ok(Command(arr.map(|c| c.to_ascii_uppercase())))
    }

    pub fn as_bytes(&self) -> &[u8; 4] {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        // Only ever built from ASCII alphanumerics.
        std::str::from_utf8(&self.0).unwrap_or("????")
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the projector says first on every TCP connection (protocols.md §1.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Greeting {
    /// `PJLINK 0`: no authentication.
    NoAuth,
    /// `PJLINK 1 <random>`: prefix the first command with `md5(random + password)`.
    Md5 { random: String },
}

/// Error codes a projector puts in place of a value (protocols.md §1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// `ERR1`: undefined command (for LAMP/FILT: no lamp / no filter).
    Undefined,
    /// `ERR2`: out of parameter.
    OutOfParameter,
    /// `ERR3`: unavailable time (standby, warm-up, cooling).
    UnavailableTime,
    /// `ERR4`: projector/display failure.
    ProjectorFailure,
}

impl ErrorCode {
    pub fn parse(s: &str) -> Option<ErrorCode> {
        // Bytes, not str slices: a reply may hold multi-byte UTF-8 anywhere.
        match s.trim_end().as_bytes() {
            [e, r1, r2, d] if [*e, *r1, *r2].eq_ignore_ascii_case(b"ERR") => match d {
                b'1' => Some(ErrorCode::Undefined),
                b'2' => Some(ErrorCode::OutOfParameter),
                b'3' => Some(ErrorCode::UnavailableTime),
                b'4' => Some(ErrorCode::ProjectorFailure),
                _ => None,
            },
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Undefined => "ERR1",
            ErrorCode::OutOfParameter => "ERR2",
            ErrorCode::UnavailableTime => "ERR3",
            ErrorCode::ProjectorFailure => "ERR4",
        }
    }

    pub fn meaning(self) -> &'static str {
        match self {
            ErrorCode::Undefined => "undefined command",
            ErrorCode::OutOfParameter => "out of parameter",
            ErrorCode::UnavailableTime => "unavailable at this time",
            ErrorCode::ProjectorFailure => "projector failure",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.as_str(), self.meaning())
    }
}

/// `%<class><CMND>=<param>`: one reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub class: Class,
    pub command: Command,
    /// The parameter as sent (text fields such as NAME keep their case).
    pub param: String,
}

/// How a reply's parameter reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome<'a> {
    Ok,
    Error(ErrorCode),
    Value(&'a str),
}

impl Response {
    pub fn outcome(&self) -> Outcome<'_> {
        if self.param.trim_end().eq_ignore_ascii_case("OK") {
            Outcome::Ok
        } else if let Some(e) = ErrorCode::parse(&self.param) {
            Outcome::Error(e)
        } else {
            Outcome::Value(&self.param)
        }
    }

    pub fn error(&self) -> Option<ErrorCode> {
        match self.outcome() {
            Outcome::Error(e) => Some(e),
            _ => None,
        }
    }
}

/// Any line a projector sends on the TCP control channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Greeting(Greeting),
    /// `PJLINK ERRA`: authentication failed; the session is unusable (protocols.md §1.3).
    AuthFailed,
    Response(Response),
}

const PJLINK: &[u8] = b"PJLINK";

fn is_hex(s: &[u8]) -> bool {
    s.iter().all(u8::is_ascii_hexdigit)
}

fn check_text(param: &[u8]) -> Result<String, ProtocolError> {
    if let Some(b) = param.iter().find(|&&b| b < 0x20 || b == 0x7f) {
        return Err(ProtocolError::malformed(format!(
            "control byte 0x{b:02x} in parameter"
        )));
    }
    // NAME and friends may carry UTF-8; anything else is shown, not rejected.
    Ok(String::from_utf8_lossy(param).into_owned())
}

/// Parse one reply line (terminator already removed). Case-insensitive in the header, command
/// and keywords, because some projectors answer in lower case (protocols.md §1.4).
pub fn parse_reply(line: &[u8]) -> Result<Reply, ProtocolError> {
    if line.len() >= PJLINK.len() && line[..PJLINK.len()].eq_ignore_ascii_case(PJLINK) {
        return parse_greeting(&line[PJLINK.len()..]).map_err(|e| match e {
            ProtocolError::Malformed { detail } => {
                ProtocolError::malformed(format!("{detail} in greeting {:?}", printable(line, 48)))
            }
            other => other,
        });
    }
    match line.first() {
        Some(b'%') => parse_response(line).map(Reply::Response),
        _ => Err(ProtocolError::Garbage {
            skipped: line.len(),
        }),
    }
}

fn parse_greeting(rest: &[u8]) -> Result<Reply, ProtocolError> {
    let rest = trim_end(rest);
    let Some(rest) = rest.strip_prefix(b" ") else {
        return Err(ProtocolError::malformed("no space after PJLINK"));
    };
    if rest.eq_ignore_ascii_case(b"ERRA") {
        return Ok(Reply::AuthFailed);
    }
    if rest == b"0" {
        return Ok(Reply::Greeting(Greeting::NoAuth));
    }
    if let Some(random) = rest.strip_prefix(b"1 ") {
        if random.len() == RANDOM_LEN && is_hex(random) {
            return Ok(Reply::Greeting(Greeting::Md5 {
                // Hex digits only, so this is ASCII.
                random: String::from_utf8_lossy(random).into_owned(),
            }));
        }
        return Err(ProtocolError::malformed(format!(
            "auth random is not {RANDOM_LEN} hex characters"
        )));
    }
    Err(ProtocolError::malformed("unknown authentication scheme"))
}

fn trim_end(b: &[u8]) -> &[u8] {
    let n = b.iter().rposition(|&c| c != b' ').map_or(0, |p| p + 1);
    &b[..n]
}

fn parse_response(line: &[u8]) -> Result<Response, ProtocolError> {
    // `%` class CMND `=` : 7 bytes before the parameter (protocols.md §1.1).
    if line.len() < 7 {
        return Err(ProtocolError::malformed(format!(
            "reply {:?} too short",
            printable(line, 16)
        )));
    }
    let class = Class::from_digit(line[1]).ok_or_else(|| {
        ProtocolError::malformed(format!("unknown class in {:?}", printable(line, 16)))
    })?;
    let command = Command::parse(&line[2..6])?;
    if line[6] != b'=' {
        return Err(ProtocolError::malformed(format!(
            "no '=' after the command in {:?}",
            printable(line, 16)
        )));
    }
    let param = check_text(trim_end(&line[7..]))?;
    Ok(Response {
        class,
        command,
        param,
    })
}

/// One request as a projector receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The 32-hex MD5 digest prefix, on an authenticated session's first command.
    pub digest: Option<String>,
    pub class: Class,
    pub command: Command,
    pub param: String,
}

impl Request {
    pub fn is_query(&self) -> bool {
        self.param.starts_with('?')
    }
}

/// Parse one request line (terminator removed), as a projector does.
pub fn parse_request(line: &[u8]) -> Result<Request, ProtocolError> {
    let (digest, body) =
        if line.len() > DIGEST_LEN && line[DIGEST_LEN] == b'%' && is_hex(&line[..DIGEST_LEN]) {
            (
                Some(String::from_utf8_lossy(&line[..DIGEST_LEN]).to_ascii_lowercase()),
                &line[DIGEST_LEN..],
            )
        } else {
            (None, line)
        };
    if body.first() != Some(&b'%') {
        return Err(ProtocolError::Garbage {
            skipped: line.len(),
        });
    }
    // `%` class CMND ` ` : 7 bytes before the parameter (protocols.md §1.1).
    if body.len() < 7 {
        return Err(ProtocolError::malformed(format!(
            "request {:?} too short",
            printable(body, 16)
        )));
    }
    let class = Class::from_digit(body[1])
        .ok_or_else(|| ProtocolError::malformed("unknown class in request"))?;
    let command = Command::parse(&body[2..6])?;
    if body[6] != b' ' {
        return Err(ProtocolError::malformed("no space after the command"));
    }
    let param = &body[7..];
    if param.len() > MAX_PARAM {
        return Err(ProtocolError::malformed(format!(
            "parameter of {} bytes exceeds {MAX_PARAM}",
            param.len()
        )));
    }
    Ok(Request {
        digest,
        class,
        command,
        param: check_text(param)?,
    })
}

/// Encode a request: `[digest]%<class><CMND> <param>\r` (protocols.md §1.2, §1.3).
pub fn encode_request(
    digest: Option<&str>,
    class: Class,
    command: Command,
    param: &str,
) -> Result<Vec<u8>, ProtocolError> {
    if param.len() > MAX_PARAM {
        return Err(ProtocolError::malformed(format!(
            "parameter of {} bytes exceeds {MAX_PARAM}",
            param.len()
        )));
    }
    if param.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err(ProtocolError::malformed("control byte in parameter"));
    }
    let mut out = Vec::with_capacity(DIGEST_LEN + 8 + param.len());
    if let Some(d) = digest {
        if d.len() != DIGEST_LEN || !is_hex(d.as_bytes()) {
            return Err(ProtocolError::malformed("digest is not 32 hex characters"));
        }
        out.extend_from_slice(d.as_bytes());
    }
    out.push(b'%');
    out.push(class.digit());
    out.extend_from_slice(command.as_bytes());
    out.push(b' ');
    out.extend_from_slice(param.as_bytes());
    out.push(b'\r');
    Ok(out)
}

/// Encode a reply `%<class><CMND>=<param>\r` (simulator side).
pub fn encode_response(class: Class, command: Command, param: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + param.len());
    out.push(b'%');
    out.push(class.digit());
    out.extend_from_slice(command.as_bytes());
    out.push(b'=');
    // A reply parameter never carries a terminator: that would split the frame.
    out.extend(param.bytes().filter(|&b| !is_terminator(b)));
    out.push(b'\r');
    out
}

/// Encode the greeting line (simulator side).
pub fn encode_greeting(g: &Greeting) -> Vec<u8> {
    match g {
        Greeting::NoAuth => b"PJLINK 0\r".to_vec(),
        Greeting::Md5 { random } => format!("PJLINK 1 {random}\r").into_bytes(),
    }
}

/// The whole line a projector sends when authentication fails (protocols.md §1.2).
pub const AUTH_FAILED_LINE: &[u8] = b"PJLINK ERRA\r";

/// Lower-case hex MD5 of the projector's random string followed by the password
/// (protocols.md §1.3).
pub fn md5_digest(random: &str, password: &str) -> String {
    let mut h = Md5::new();
    h.update(random.as_bytes());
    h.update(password.as_bytes());
    hex::encode(h.finalize())
}

fn malformed_value(what: &str, p: &str) -> ProtocolError {
    ProtocolError::malformed(format!("{what}: {:?}", printable(p.as_bytes(), 40)))
}

/// `POWR` status (protocols.md §1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerStatus {
    Standby,
    On,
    Cooling,
    WarmUp,
}

impl PowerStatus {
    pub fn parse(p: &str) -> Result<PowerStatus, ProtocolError> {
        match p.trim() {
            "0" => Ok(PowerStatus::Standby),
            "1" => Ok(PowerStatus::On),
            "2" => Ok(PowerStatus::Cooling),
            "3" => Ok(PowerStatus::WarmUp),
            _ => Err(malformed_value("power status", p)),
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            PowerStatus::Standby => "0",
            PowerStatus::On => "1",
            PowerStatus::Cooling => "2",
            PowerStatus::WarmUp => "3",
        }
    }
}

/// One `ERST` digit (protocols.md §1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ErrorLevel {
    #[default]
    Ok,
    Warning,
    Error,
}

impl ErrorLevel {
    fn from_digit(d: u8) -> Option<ErrorLevel> {
        match d {
            b'0' => Some(ErrorLevel::Ok),
            b'1' => Some(ErrorLevel::Warning),
            b'2' => Some(ErrorLevel::Error),
            _ => None,
        }
    }
    fn digit(self) -> char {
        match self {
            ErrorLevel::Ok => '0',
            ErrorLevel::Warning => '1',
            ErrorLevel::Error => '2',
        }
    }
}

/// `ERST`: six digits, fan, lamp, temperature, cover open, filter, other (protocols.md §1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ErrorStatus {
    pub fan: ErrorLevel,
    pub lamp: ErrorLevel,
    pub temperature: ErrorLevel,
    pub cover_open: ErrorLevel,
    pub filter: ErrorLevel,
    pub other: ErrorLevel,
}

impl ErrorStatus {
    pub fn parse(p: &str) -> Result<ErrorStatus, ProtocolError> {
        let b = p.trim().as_bytes();
        let d: Option<Vec<ErrorLevel>> = if b.len() == 6 {
            b.iter().map(|&c| ErrorLevel::from_digit(c)).collect()
        } else {
            None
        };
        match d.as_deref() {
            Some(&[fan, lamp, temperature, cover_open, filter, other]) => Ok(ErrorStatus {
                fan,
                lamp,
                temperature,
                cover_open,
                filter,
                other,
            }),
            _ => Err(malformed_value("error status is not 6 digits 0-2", p)),
        }
    }

    pub fn encode(&self) -> String {
        self.components().iter().map(|(_, l)| l.digit()).collect()
    }

    /// Each component with its snake_case name, in wire order.
    pub fn components(&self) -> [(&'static str, ErrorLevel); 6] {
        [
            ("fan", self.fan),
            ("lamp", self.lamp),
            ("temperature", self.temperature),
            ("cover_open", self.cover_open),
            ("filter", self.filter),
            ("other", self.other),
        ]
    }
}

/// One lamp of a `LAMP` reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LampStatus {
    /// Cumulative hours; 0 when the projector does not count them (protocols.md §1.4).
    pub hours: u32,
    pub on: bool,
}

/// `LAMP`: `<hours> <0|1>` pairs, one per lamp, 1 to 8 lamps (protocols.md §1.4).
pub fn parse_lamps(p: &str) -> Result<Vec<LampStatus>, ProtocolError> {
    let fields: Vec<&str> = p.split_ascii_whitespace().collect();
    if fields.is_empty() || fields.len() % 2 != 0 || fields.len() / 2 > MAX_LAMPS {
        return Err(malformed_value(
            "lamp status is not 1-8 hour/state pairs",
            p,
        ));
    }
    fields
        .chunks(2)
        .map(|pair| {
            let (h, s) = (pair[0], pair[1]);
            // The spec says 1-5 digits; longer counters are accepted while they fit a u32.
            if h.is_empty() || h.len() > 9 || !h.bytes().all(|b| b.is_ascii_digit()) {
                return Err(malformed_value("lamp hours", p));
            }
            let hours = h.parse().map_err(|_| malformed_value("lamp hours", p))?;
            let on = match s {
                "0" => false,
                "1" => true,
                _ => return Err(malformed_value("lamp state", p)),
            };
            Ok(LampStatus { hours, on })
        })
        .collect()
}

pub fn encode_lamps(lamps: &[LampStatus]) -> String {
    lamps
        .iter()
        .map(|l| format!("{} {}", l.hours, u8::from(l.on)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// An input terminal: type digit (1 RGB, 2 video, 3 digital, 4 storage, 5 network, 6 internal)
/// and index (1-9, Class 2 also A-Z) (protocols.md §1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InputCode {
    kind: u8,
    index: u8,
}

impl InputCode {
    pub fn parse(s: &str) -> Result<InputCode, ProtocolError> {
        let b = s.trim().as_bytes();
        let bad = || malformed_value("input code", s);
        let &[kind, index] = b else {
            return Err(bad());
        };
        let index = index.to_ascii_uppercase();
        let kind_ok = (b'1'..=b'6').contains(&kind);
        let index_ok = (b'1'..=b'9').contains(&index) || index.is_ascii_uppercase();
        if !kind_ok || !index_ok {
            return Err(bad());
        }
        Ok(InputCode { kind, index })
    }

    /// Type 6 and letter indices exist only in Class 2 (protocols.md §1.4).
    pub fn needs_class2(&self) -> bool {
        self.kind == b'6' || self.index.is_ascii_uppercase()
    }

    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            b'1' => "rgb",
            b'2' => "video",
            b'3' => "digital",
            b'4' => "storage",
            b'5' => "network",
            _ => "internal",
        }
    }
}

impl fmt::Display for InputCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.kind as char, self.index as char)
    }
}

/// `INST`: space-separated input codes (protocols.md §1.4). An empty list is allowed.
pub fn parse_input_list(p: &str) -> Result<Vec<InputCode>, ProtocolError> {
    p.split_ascii_whitespace().map(InputCode::parse).collect()
}

/// `AVMT` mute state (protocols.md §1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AvMute {
    pub video: bool,
    pub audio: bool,
}

/// What an `AVMT` set parameter addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MuteTarget {
    Video,
    Audio,
    Both,
}

/// `AVMT` parameter: `1x` video, `2x` audio, `3x` both; `x` 1 = mute, 0 = unmute.
pub fn parse_mute_param(p: &str) -> Result<(MuteTarget, bool), ProtocolError> {
    let target = match p.trim().as_bytes() {
        [b'1', _] => MuteTarget::Video,
        [b'2', _] => MuteTarget::Audio,
        [b'3', _] => MuteTarget::Both,
        _ => return Err(malformed_value("av mute", p)),
    };
    match p.trim().as_bytes()[1] {
        b'0' => Ok((target, false)),
        b'1' => Ok((target, true)),
        _ => Err(malformed_value("av mute", p)),
    }
}

impl AvMute {
    /// Status reply: `11` video muted, `21` audio muted, `31` both, `30` none. Some projectors
    /// also report `10`/`20` (OpenLP, protocols.md §1.4): read as "nothing muted".
    pub fn parse(p: &str) -> Result<AvMute, ProtocolError> {
        let (target, on) = parse_mute_param(p)?;
        Ok(match (target, on) {
            (_, false) => AvMute::default(),
            (MuteTarget::Video, true) => AvMute {
                video: true,
                audio: false,
            },
            (MuteTarget::Audio, true) => AvMute {
                video: false,
                audio: true,
            },
            (MuteTarget::Both, true) => AvMute {
                video: true,
                audio: true,
            },
        })
    }

    pub fn encode(&self) -> &'static str {
        match (self.video, self.audio) {
            (true, true) => "31",
            (true, false) => "11",
            (false, true) => "21",
            (false, false) => "30",
        }
    }
}

/// `CLSS`: the first digit, tolerating `Class 1` (Optoma) and `Version1` (BenQ)
/// (protocols.md §1.4 quirks).
pub fn parse_class(p: &str) -> Result<Class, ProtocolError> {
    p.bytes()
        .find(u8::is_ascii_digit)
        .and_then(Class::from_digit)
        .ok_or_else(|| malformed_value("class", p))
}

/// `IRES` input resolution (protocols.md §1.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    Signal {
        horizontal: u32,
        vertical: u32,
    },
    /// `-`
    NoSignal,
    /// `*`
    Unknown,
}

impl Resolution {
    pub fn parse(p: &str) -> Result<Resolution, ProtocolError> {
        let p = p.trim();
        match p {
            "-" => return Ok(Resolution::NoSignal),
            "*" => return Ok(Resolution::Unknown),
            _ => {}
        }
        let bad = || malformed_value("resolution", p);
        let (h, v) = p.split_once(['x', 'X']).ok_or_else(bad)?;
        let num = |s: &str| -> Result<u32, ProtocolError> {
            if s.is_empty() || s.len() > 6 || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            s.parse().map_err(|_| bad())
        };
        Ok(Resolution::Signal {
            horizontal: num(h)?,
            vertical: num(v)?,
        })
    }

    pub fn encode(&self) -> String {
        match self {
            Resolution::Signal {
                horizontal,
                vertical,
            } => format!("{horizontal}x{vertical}"),
            Resolution::NoSignal => "-".to_owned(),
            Resolution::Unknown => "*".to_owned(),
        }
    }
}

/// `FILT` hours (protocols.md §1.5).
pub fn parse_hours(p: &str) -> Result<u32, ProtocolError> {
    let p = p.trim();
    if p.is_empty() || p.len() > 9 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed_value("hours", p));
    }
    p.parse().map_err(|_| malformed_value("hours", p))
}

/// `RLMP` / `RFIL`: space-separated model numbers (protocols.md §1.5).
pub fn parse_models(p: &str) -> Vec<String> {
    p.split_ascii_whitespace().map(str::to_owned).collect()
}

/// `NAME`, `INF1`, `INF2`, `INFO`, `SNUM`, `SVER`: free text, possibly empty.
pub fn parse_text(p: &str) -> String {
    p.trim().to_owned()
}

/// A Class 2 UDP datagram on port 4352 (protocols.md §1.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    /// `%2SRCH\r` broadcast by a controller.
    Search,
    /// `%2ACKN=<mac>\r`: a projector answering a search.
    Ack { mac: [u8; 6] },
    /// `%2LKUP=<mac>\r`: the projector's LAN became available.
    LinkUp { mac: [u8; 6] },
    /// `%2ERST=xxxxxx\r`
    ErrorStatus(ErrorStatus),
    /// `%2POWR=0|1\r`. Whether 1 means on or warming is unconfirmed: re-query over TCP.
    Power { on: bool },
    /// `%2INPT=xy\r`
    Input(InputCode),
}

fn parse_mac(s: &[u8]) -> Option<[u8; 6]> {
    if s.len() != 17 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (i, part) in s.split(|&b| b == b':').enumerate() {
        if i >= 6 || part.len() != 2 || !is_hex(part) {
            return None;
        }
        let text = std::str::from_utf8(part).ok()?;
        mac[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(mac)
}

fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parse one UDP datagram. Each kind has one exact length, CR included (protocols.md §1.5:
/// SRCH 7, ACKN/LKUP 25, ERST 14, POWR 9, INPT 10 bytes).
pub fn parse_datagram(d: &[u8]) -> Result<Notification, ProtocolError> {
    let bad =
        |why: &str| ProtocolError::malformed(format!("{why} in datagram {:?}", printable(d, 40)));
    if d.len() < 7 || d[0] != b'%' || d[1] != b'2' || d.last() != Some(&b'\r') {
        return Err(bad("not a class 2 datagram"));
    }
    let command = Command::parse(&d[2..6]).map_err(|_| bad("bad command"))?;
    let want = match command {
        Command::SRCH => 7,
        Command::ACKN | Command::LKUP => 25,
        Command::ERST => 14,
        Command::POWR => 9,
        Command::INPT => 10,
        _ => return Err(bad("unknown command")),
    };
    if d.len() != want {
        return Err(bad(&format!("length {} instead of {want}", d.len())));
    }
    if command == Command::SRCH {
        return if d[6] == b'\r' {
            Ok(Notification::Search)
        } else {
            Err(bad("bad search"))
        };
    }
    if d[6] != b'=' {
        return Err(bad("no '='"));
    }
    let body = &d[7..d.len() - 1];
    let text = std::str::from_utf8(body).map_err(|_| bad("not ASCII"))?;
    Ok(match command {
        Command::ACKN => Notification::Ack {
            mac: parse_mac(body).ok_or_else(|| bad("bad MAC address"))?,
        },
        Command::LKUP => Notification::LinkUp {
            mac: parse_mac(body).ok_or_else(|| bad("bad MAC address"))?,
        },
        Command::ERST => Notification::ErrorStatus(ErrorStatus::parse(text)?),
        Command::POWR => match body {
            b"0" => Notification::Power { on: false },
            b"1" => Notification::Power { on: true },
            _ => return Err(bad("bad power state")),
        },
        _ => Notification::Input(InputCode::parse(text)?),
    })
}

/// Encode one UDP datagram (simulator side).
pub fn encode_datagram(n: &Notification) -> Vec<u8> {
    let (cmd, param) = match n {
        Notification::Search => return b"%2SRCH\r".to_vec(),
        Notification::Ack { mac } => (Command::ACKN, format_mac(mac)),
        Notification::LinkUp { mac } => (Command::LKUP, format_mac(mac)),
        Notification::ErrorStatus(e) => (Command::ERST, e.encode()),
        Notification::Power { on } => (Command::POWR, if *on { "1" } else { "0" }.to_owned()),
        Notification::Input(i) => (Command::INPT, i.to_string()),
    };
    encode_response(Class::Two, cmd, &param)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lines(input: &[u8]) -> Vec<Result<Bytes, ProtocolError>> {
        let mut d = LineDecoder::replies();
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        loop {
            match d.decode(&mut buf) {
                Ok(Some(l)) => out.push(Ok(l)),
                Ok(None) => break,
                Err(e) => out.push(Err(e)),
            }
        }
        out
    }

    fn reply(line: &[u8]) -> Response {
        match parse_reply(line) {
            Ok(Reply::Response(r)) => r,
            other => panic!("{:?}: {other:?}", printable(line, 80)),
        }
    }

    fn value(line: &[u8]) -> String {
        let r = reply(line);
        match r.outcome() {
            Outcome::Value(v) => v.to_owned(),
            other => panic!("{other:?}"),
        }
    }

    fn req(digest: Option<&str>, class: Class, cmd: Command, p: &str) -> Vec<u8> {
        encode_request(digest, class, cmd, p).expect("valid request")
    }

    // ---- protocols.md §1.7 vectors, each one in full ----

    #[test]
    fn vector_01_no_auth_greeting_and_power_standby() {
        assert_eq!(
            parse_reply(b"PJLINK 0").unwrap(),
            Reply::Greeting(Greeting::NoAuth)
        );
        assert_eq!(req(None, Class::One, Command::POWR, "?"), b"%1POWR ?\r");
        assert_eq!(
            PowerStatus::parse(&value(b"%1POWR=0")).unwrap(),
            PowerStatus::Standby
        );
    }

    #[test]
    fn vector_02_power_on_then_warm_up() {
        assert_eq!(req(None, Class::One, Command::POWR, "1"), b"%1POWR 1\r");
        assert_eq!(reply(b"%1POWR=OK").outcome(), Outcome::Ok);
        assert_eq!(req(None, Class::One, Command::POWR, "?"), b"%1POWR ?\r");
        assert_eq!(
            PowerStatus::parse(&value(b"%1POWR=3")).unwrap(),
            PowerStatus::WarmUp
        );
    }

    #[test]
    fn vector_03_power_on_refused_while_cooling() {
        assert_eq!(req(None, Class::One, Command::POWR, "1"), b"%1POWR 1\r");
        assert_eq!(
            reply(b"%1POWR=ERR3").error(),
            Some(ErrorCode::UnavailableTime)
        );
    }

    #[test]
    fn vector_04_md5_authentication() {
        assert_eq!(
            parse_reply(b"PJLINK 1 498e4a67").unwrap(),
            Reply::Greeting(Greeting::Md5 {
                random: "498e4a67".into()
            })
        );
        let digest = md5_digest("498e4a67", "JBMIAProjectorLink");
        assert_eq!(digest, "5d8409bc1c3fa39749434aa3a5c38682");
        assert_eq!(
            req(Some(&digest), Class::One, Command::POWR, "?"),
            b"5d8409bc1c3fa39749434aa3a5c38682%1POWR ?\r"
        );
        assert_eq!(
            PowerStatus::parse(&value(b"%1POWR=1")).unwrap(),
            PowerStatus::On
        );
        // No digest on later commands of the same session.
        assert_eq!(req(None, Class::One, Command::INPT, "?"), b"%1INPT ?\r");
        assert_eq!(
            InputCode::parse(&value(b"%1INPT=31")).unwrap().to_string(),
            "31"
        );
        // The projector side reads the digest back off the request.
        let r = parse_request(b"5d8409bc1c3fa39749434aa3a5c38682%1POWR ?").unwrap();
        assert_eq!(
            r.digest.as_deref(),
            Some("5d8409bc1c3fa39749434aa3a5c38682")
        );
        assert_eq!(
            (r.class, r.command, r.param.as_str()),
            (Class::One, Command::POWR, "?")
        );
    }

    #[test]
    fn vector_05_authentication_failure() {
        assert_eq!(
            req(
                Some("00000000000000000000000000000000"),
                Class::One,
                Command::POWR,
                "?"
            ),
            b"00000000000000000000000000000000%1POWR ?\r"
        );
        assert_eq!(parse_reply(b"PJLINK ERRA").unwrap(), Reply::AuthFailed);
        assert_eq!(AUTH_FAILED_LINE, b"PJLINK ERRA\r");
    }

    #[test]
    fn vector_06_error_status_filter_error() {
        assert_eq!(req(None, Class::One, Command::ERST, "?"), b"%1ERST ?\r");
        let e = ErrorStatus::parse(&value(b"%1ERST=000020")).unwrap();
        assert_eq!(
            e,
            ErrorStatus {
                filter: ErrorLevel::Error,
                ..ErrorStatus::default()
            }
        );
        assert_eq!(e.encode(), "000020");
    }

    #[test]
    fn vector_07_two_lamps_and_lampless() {
        assert_eq!(req(None, Class::One, Command::LAMP, "?"), b"%1LAMP ?\r");
        assert_eq!(
            parse_lamps(&value(b"%1LAMP=12345 1 678 0")).unwrap(),
            vec![
                LampStatus {
                    hours: 12345,
                    on: true
                },
                LampStatus {
                    hours: 678,
                    on: false
                }
            ]
        );
        assert_eq!(reply(b"%1LAMP=ERR1").error(), Some(ErrorCode::Undefined));
    }

    #[test]
    fn vector_08_inputs_bad_input_av_mute() {
        assert_eq!(req(None, Class::One, Command::INST, "?"), b"%1INST ?\r");
        let list = parse_input_list(&value(b"%1INST=11 12 31 32")).unwrap();
        let shown: Vec<String> = list.iter().map(|i| i.to_string()).collect();
        assert_eq!(shown, ["11", "12", "31", "32"]);
        assert_eq!(req(None, Class::One, Command::INPT, "59"), b"%1INPT 59\r");
        assert_eq!(
            reply(b"%1INPT=ERR2").error(),
            Some(ErrorCode::OutOfParameter)
        );
        assert_eq!(req(None, Class::One, Command::AVMT, "31"), b"%1AVMT 31\r");
        assert_eq!(reply(b"%1AVMT=OK").outcome(), Outcome::Ok);
        assert_eq!(req(None, Class::One, Command::AVMT, "?"), b"%1AVMT ?\r");
        assert_eq!(
            AvMute::parse(&value(b"%1AVMT=31")).unwrap(),
            AvMute {
                video: true,
                audio: true
            }
        );
    }

    #[test]
    fn vector_09_identity() {
        assert_eq!(req(None, Class::One, Command::INF1, "?"), b"%1INF1 ?\r");
        assert_eq!(parse_text(&value(b"%1INF1=Panasonic")), "Panasonic");
        assert_eq!(req(None, Class::One, Command::INFO, "?"), b"%1INFO ?\r");
        assert_eq!(parse_text(&value(b"%1INFO=")), "");
        assert_eq!(req(None, Class::One, Command::CLSS, "?"), b"%1CLSS ?\r");
        assert_eq!(parse_class(&value(b"%1CLSS=2")).unwrap(), Class::Two);
        let abcd = Command::parse(b"ABCD").unwrap();
        assert_eq!(req(None, Class::One, abcd, "?"), b"%1ABCD ?\r");
        let r = reply(b"%1ABCD=ERR1");
        assert_eq!((r.command, r.error()), (abcd, Some(ErrorCode::Undefined)));
    }

    #[test]
    fn vector_10_class2_queries() {
        assert_eq!(req(None, Class::Two, Command::IRES, "?"), b"%2IRES ?\r");
        let r = reply(b"%2IRES=1920x1080");
        assert_eq!(r.class, Class::Two);
        assert_eq!(
            Resolution::parse(&r.param).unwrap(),
            Resolution::Signal {
                horizontal: 1920,
                vertical: 1080
            }
        );
        assert_eq!(
            Resolution::parse(&value(b"%2IRES=-")).unwrap(),
            Resolution::NoSignal
        );
        assert_eq!(req(None, Class::Two, Command::INNM, "?31"), b"%2INNM ?31\r");
        assert_eq!(parse_text(&value(b"%2INNM=HDMI 1")), "HDMI 1");
        assert_eq!(req(None, Class::Two, Command::FILT, "?"), b"%2FILT ?\r");
        assert_eq!(parse_hours(&value(b"%2FILT=1200")).unwrap(), 1200);
        let code = InputCode::parse("3A").unwrap();
        assert!(code.needs_class2());
        assert_eq!(
            req(None, Class::Two, Command::INPT, &code.to_string()),
            b"%2INPT 3A\r"
        );
        assert_eq!(reply(b"%2INPT=OK").outcome(), Outcome::Ok);
    }

    #[test]
    fn vector_11_udp_search_and_notifications() {
        let mac = [0x00, 0x11, 0x22, 0x33, 0x44, 0x55];
        let cases: [(&[u8], Notification); 6] = [
            (b"%2SRCH\r", Notification::Search),
            (b"%2ACKN=00:11:22:33:44:55\r", Notification::Ack { mac }),
            (b"%2LKUP=00:11:22:33:44:55\r", Notification::LinkUp { mac }),
            (
                b"%2ERST=000000\r",
                Notification::ErrorStatus(ErrorStatus::default()),
            ),
            (b"%2POWR=1\r", Notification::Power { on: true }),
            (
                b"%2INPT=31\r",
                Notification::Input(InputCode::parse("31").unwrap()),
            ),
        ];
        for (wire, want) in cases {
            assert_eq!(parse_datagram(wire).unwrap(), want, "{wire:?}");
            assert_eq!(encode_datagram(&want), wire);
        }
        assert_eq!(b"%2ACKN=00:11:22:33:44:55\r".len(), 25);
        // Exact lengths: one byte more or less is rejected.
        for bad in [
            &b"%2SRCH \r"[..],
            b"%2ACKN=00:11:22:33:44:5\r",
            b"%2ERST=0000000\r",
            b"%2POWR=10\r",
            b"%2INPT=3\r",
            b"%2POWR=1",
            b"%1POWR=1\r",
        ] {
            assert!(parse_datagram(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn vector_12_clss_quirks() {
        assert_eq!(parse_class(&value(b"%1CLSS=Class 1")).unwrap(), Class::One);
        assert_eq!(parse_class(&value(b"%1CLSS=Version1")).unwrap(), Class::One);
        assert!(parse_class("Class").is_err());
    }

    // ---- framing ----

    #[test]
    fn framing_accepts_cr_lf_and_crlf() {
        let got = lines(b"PJLINK 0\r%1POWR=1\n%1ERST=000000\r\n%1INPT=31\r");
        let got: Vec<Bytes> = got.into_iter().map(|r| r.unwrap()).collect();
        assert_eq!(
            got,
            vec![
                Bytes::from_static(b"PJLINK 0"),
                Bytes::from_static(b"%1POWR=1"),
                Bytes::from_static(b"%1ERST=000000"),
                Bytes::from_static(b"%1INPT=31"),
            ]
        );
    }

    #[test]
    fn framing_waits_for_terminator_across_chunks() {
        let mut d = LineDecoder::replies();
        let mut buf = BytesMut::from(&b"%1PO"[..]);
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"WR=1\r");
        assert_eq!(d.decode(&mut buf).unwrap().unwrap(), &b"%1POWR=1"[..]);
    }

    #[test]
    fn oversized_line_is_reported_once_and_resynchronised() {
        let mut d = LineDecoder::replies();
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[b'X'; 300]);
        assert!(matches!(
            d.decode(&mut buf),
            Err(ProtocolError::Oversized {
                limit: MAX_REPLY_LINE,
                got: 300
            })
        ));
        assert!(buf.is_empty());
        buf.extend_from_slice(&[b'X'; 1000]);
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        assert!(buf.is_empty(), "the rest of an oversized line is not kept");
        buf.extend_from_slice(b"XXX\r%1POWR=0\r");
        assert_eq!(d.decode(&mut buf).unwrap().unwrap(), &b"%1POWR=0"[..]);

        // A terminated over-long line in one piece.
        let got = lines(&[&[b'Y'; 200][..], b"\r%1POWR=2\r"].concat());
        assert!(matches!(
            got[0],
            Err(ProtocolError::Oversized { got: 200, .. })
        ));
        assert_eq!(got[1].as_ref().unwrap(), &b"%1POWR=2"[..]);
    }

    #[test]
    fn eof_yields_an_unterminated_last_line() {
        let mut d = LineDecoder::replies();
        let mut buf = BytesMut::from(&b"%1POWR=1"[..]);
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        assert_eq!(d.decode_eof(&mut buf).unwrap().unwrap(), &b"%1POWR=1"[..]);
        assert_eq!(d.decode_eof(&mut buf).unwrap(), None);
    }

    #[test]
    fn garbage_and_malformed_replies_are_errors() {
        assert!(matches!(
            parse_reply(b"\x00\xff\x13junk"),
            Err(ProtocolError::Garbage { skipped: 7 })
        ));
        for bad in [
            &b"%1POWR"[..],
            b"%3POWR=1",
            b"%1PO#R=1",
            b"%1POWR 1",
            b"%1NAME=a\x00b",
            b"PJLINK 1 498e4a6",
            b"PJLINK 1 498e4a6z",
            b"PJLINK 2 0123",
            b"PJLINKX",
        ] {
            assert!(parse_reply(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lower_case_replies_parse() {
        let r = reply(b"%1powr=err3");
        assert_eq!(r.command, Command::POWR);
        assert_eq!(r.error(), Some(ErrorCode::UnavailableTime));
        assert_eq!(reply(b"%1avmt=ok").outcome(), Outcome::Ok);
        assert_eq!(
            parse_reply(b"pjlink 0").unwrap(),
            Reply::Greeting(Greeting::NoAuth)
        );
        assert_eq!(parse_reply(b"pjlink erra").unwrap(), Reply::AuthFailed);
        assert_eq!(InputCode::parse("3a").unwrap().to_string(), "3A");
        assert_eq!(
            Resolution::parse("1280X800").unwrap(),
            Resolution::Signal {
                horizontal: 1280,
                vertical: 800
            }
        );
        // Text values keep their case.
        assert_eq!(value(b"%1name=Room 4 Left"), "Room 4 Left");
    }

    #[test]
    fn typed_parsers_reject_out_of_range() {
        assert!(PowerStatus::parse("4").is_err());
        assert!(ErrorStatus::parse("00002").is_err());
        assert!(ErrorStatus::parse("000030").is_err());
        assert!(parse_lamps("").is_err());
        assert!(parse_lamps("100").is_err());
        assert!(parse_lamps("100 2").is_err());
        assert!(parse_lamps(&"1 0 ".repeat(9)).is_err());
        assert_eq!(parse_lamps(&"1 0 ".repeat(8)).unwrap().len(), 8);
        assert!(parse_lamps("99999999999 1").is_err());
        assert!(InputCode::parse("71").is_err());
        assert!(InputCode::parse("30").is_err());
        assert!(InputCode::parse("3").is_err());
        assert!(AvMute::parse("41").is_err());
        assert!(AvMute::parse("12").is_err());
        assert_eq!(AvMute::parse("10").unwrap(), AvMute::default());
        assert_eq!(
            AvMute::parse("11").unwrap(),
            AvMute {
                video: true,
                audio: false
            }
        );
        assert_eq!(AvMute::parse("21").unwrap().encode(), "21");
        assert!(Resolution::parse("1920x").is_err());
        assert!(Resolution::parse("*x*").is_err());
        assert_eq!(Resolution::parse("*").unwrap(), Resolution::Unknown);
        assert!(parse_hours("-1").is_err());
        assert_eq!(
            parse_models("ET-LAE300  ET-LAE301"),
            vec!["ET-LAE300", "ET-LAE301"]
        );
    }

    #[test]
    fn requests_parse_on_the_projector_side() {
        let r = parse_request(b"%2INNM ?31").unwrap();
        assert_eq!(
            (r.class, r.command, r.param.as_str()),
            (Class::Two, Command::INNM, "?31")
        );
        assert!(r.is_query());
        let r = parse_request(b"%1powr 1").unwrap();
        assert_eq!(r.command, Command::POWR);
        assert!(parse_request(b"%1POWR").is_err());
        assert!(parse_request(b"hello").is_err());
        assert!(encode_request(None, Class::One, Command::NAME, &"a".repeat(129)).is_err());
        assert!(encode_request(None, Class::One, Command::NAME, "a\rb").is_err());
        assert!(encode_request(Some("abc"), Class::One, Command::POWR, "?").is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Arbitrary bytes in arbitrary chunks: never a panic, and the decoder never keeps more
        /// than its limit of an unterminated line.
        #[test]
        fn decoder_is_total_and_bounded(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..400), 0..20)
        ) {
            let mut d = LineDecoder::replies();
            let mut buf = BytesMut::new();
            for chunk in chunks {
                buf.extend_from_slice(&chunk);
                loop {
                    match d.decode(&mut buf) {
                        Ok(Some(line)) => {
                            prop_assert!(line.len() <= MAX_REPLY_LINE);
                            prop_assert!(!line.iter().any(|&b| b == b'\r' || b == b'\n'));
                            let _ = parse_reply(&line);
                            let _ = parse_request(&line);
                        }
                        Ok(None) => break,
                        Err(ProtocolError::Oversized { .. }) => {}
                        Err(e) => prop_assert!(false, "unexpected decoder error {e}"),
                    }
                }
                prop_assert!(buf.len() <= MAX_REPLY_LINE, "buffer grew to {}", buf.len());
            }
            let _ = d.decode_eof(&mut buf);
        }

        #[test]
        fn parsers_are_total(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_reply(&bytes);
            let _ = parse_request(&bytes);
            let _ = parse_datagram(&bytes);
            let s = String::from_utf8_lossy(&bytes);
            let _ = PowerStatus::parse(&s);
            let _ = ErrorStatus::parse(&s);
            let _ = parse_lamps(&s);
            let _ = parse_input_list(&s);
            let _ = AvMute::parse(&s);
            let _ = parse_class(&s);
            let _ = Resolution::parse(&s);
            let _ = parse_hours(&s);
            let _ = ErrorCode::parse(&s);
        }

        /// Well-formed replies survive a round trip through the framing and the parser.
        #[test]
        fn responses_round_trip(
            class in prop_oneof![Just(Class::One), Just(Class::Two)],
            cmd in "[A-Z0-9]{4}",
            param in "[ -~]{0,120}",
        ) {
            let command = Command::parse(cmd.as_bytes()).unwrap();
            let wire = encode_response(class, command, &param);
            let mut d = LineDecoder::replies();
            let mut buf = BytesMut::from(&wire[..]);
            let line = d.decode(&mut buf).unwrap().unwrap();
            let r = reply(&line);
            prop_assert_eq!(r.class, class);
            prop_assert_eq!(r.command, command);
            prop_assert_eq!(r.param, param.trim_end());
        }
    }
}
