//! Epson ESC/VP21 framing and parsing (protocols.md §8), sans-io.
//!
//! Owns the byte-level view of the projector's serial output: reply lines ended by CR and the
//! `:` ready prompt that follows every answer, the typed parsers for the replies avwarden uses
//! (`PWR`, `LAMP`, `ERR`, `SNO`, `SOURCE`, `MUTE`), the `ERR?` code table, and the encoders for
//! the commands the driver sends. It must not do I/O, keep time, or panic on any input: the
//! decoder bounds every line, skips and counts garbage, and resynchronises after an oversized
//! line.

use bytes::{Buf, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::{printable, ProtocolError};

/// Ends every command and every reply line (protocols.md §8: "ASCII ended by CR (0x0D)").
pub const CR: u8 = b'\r';
/// Not sent by Epson, but sent by some serial bridges and test tools; accepted as a line end.
pub const LF: u8 = b'\n';
/// The ready prompt the projector sends when it can take the next command (protocols.md §8).
pub const PROMPT: u8 = b':';
/// Longest reply line we keep. The replies we use are under 40 bytes (`SNO=` carries the
/// longest value); anything past this without a CR is garbage.
pub const DEFAULT_MAX_LINE: usize = 128;

/// One unit of the projector's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// `:` — the projector is ready; ends every answer.
    Colon,
    /// A reply line without its CR, e.g. `PWR=01`, `LAMP=1234`, `ERR=00`.
    Reply(String),
    /// The line `ERR`: the last command was illegal or cannot run now.
    Err,
}

/// Decoder for the projector's output and encoder for [`Request`]s.
///
/// Framing rules (protocols.md §8, plus what a real serial line adds):
/// * `:` is always the ready prompt. No reply we parse contains a colon, so a colon inside a
///   partial line means the partial line was noise; it is skipped and the colon kept.
/// * A line is printable ASCII ended by CR (or LF); empty lines are ignored.
/// * Any other byte (NUL, 0xFF, control characters — line noise, a wrong baud rate) is
///   skipped together with the partial line it interrupts; skipped bytes are counted and can
///   be collected with [`Escvp21Codec::take_skipped`].
/// * A line longer than the limit yields [`ProtocolError::Oversized`] once; the rest of that
///   line is dropped up to its CR (or the next prompt) and decoding carries on.
#[derive(Debug, Clone)]
pub struct Escvp21Codec {
    max_line: usize,
    /// Dropping the tail of an oversized line until its end.
    discarding: bool,
    /// Garbage bytes skipped since the last [`Escvp21Codec::take_skipped`].
    skipped: usize,
}

impl Default for Escvp21Codec {
    fn default() -> Self {
        Self::new()
    }
}

impl Escvp21Codec {
    pub fn new() -> Self {
        Self::with_max_line(DEFAULT_MAX_LINE)
    }

    pub fn with_max_line(max_line: usize) -> Self {
        Self {
            max_line: max_line.max(8),
            discarding: false,
            skipped: 0,
        }
    }

    pub fn max_line(&self) -> usize {
        self.max_line
    }

    /// Garbage bytes skipped since the last call.
    pub fn take_skipped(&mut self) -> usize {
        std::mem::take(&mut self.skipped)
    }

    /// Forget any partial state (after the caller discarded its buffer).
    pub fn reset(&mut self) {
        self.discarding = false;
    }
}

/// Bytes that may appear inside a reply line: printable ASCII except the prompt.
fn is_line_byte(b: u8) -> bool {
    (0x20..=0x7e).contains(&b) && b != PROMPT
}

impl Decoder for Escvp21Codec {
    type Item = Frame;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        'frame: loop {
            if self.discarding {
                match src.iter().position(|&b| b == CR || b == LF || b == PROMPT) {
                    None => {
                        src.clear();
                        return Ok(None);
                    }
                    Some(i) => {
                        // Keep a prompt: it is the next frame. Drop a line end with the line.
                        let end = if src[i] == PROMPT { i } else { i + 1 };
                        src.advance(end);
                        self.discarding = false;
                    }
                }
            }
            let Some(&first) = src.first() else {
                return Ok(None);
            };
            match first {
                PROMPT => {
                    src.advance(1);
                    return Ok(Some(Frame::Colon));
                }
                CR | LF => {
                    src.advance(1);
                    continue;
                }
                b if is_line_byte(b) => {
                    let scan = src.len().min(self.max_line + 1);
                    for i in 0..scan {
                        let c = src[i];
                        if c == CR || c == LF {
                            let line = String::from_utf8_lossy(&src[..i]).trim().to_owned();
                            src.advance(i + 1);
                            if line.is_empty() {
                                self.skipped += i;
                                continue 'frame;
                            }
                            if line == "ERR" {
                                return Ok(Some(Frame::Err));
                            }
                            return Ok(Some(Frame::Reply(line)));
                        }
                        if !is_line_byte(c) {
                            // The partial line was noise. A prompt survives; other bytes go too.
                            let drop = if c == PROMPT { i } else { i + 1 };
                            self.skipped += drop;
                            src.advance(drop);
                            continue 'frame;
                        }
                    }
                    if src.len() > self.max_line {
                        let got = scan;
                        src.advance(scan);
                        self.discarding = true;
                        return Err(ProtocolError::Oversized {
                            limit: self.max_line,
                            got,
                        });
                    }
                    return Ok(None);
                }
                _ => {
                    self.skipped += 1;
                    src.advance(1);
                }
            }
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        match self.decode(src)? {
            Some(f) => Ok(Some(f)),
            None => {
                // A partial line at end of stream is noise, not an error worth failing on.
                self.skipped += src.len();
                src.clear();
                Ok(None)
            }
        }
    }
}

/// A command the controller sends (protocols.md §8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// A bare CR: answered by `:` — the liveness probe.
    Null,
    PowerQuery,
    PowerOn,
    PowerOff,
    LampQuery,
    ErrorQuery,
    SerialQuery,
    SourceQuery,
    /// `SOURCE xx`; built through [`Request::source`], which checks the code.
    SourceSet(String),
    MuteSet(bool),
    MuteQuery,
}

impl Request {
    /// `SOURCE xx` for a two-digit hex input code (`30` is HDMI on many models).
    pub fn source(code: &str) -> Result<Request, ProtocolError> {
        let code = code.trim();
        if code.len() == 2 && code.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Request::SourceSet(code.to_ascii_uppercase()))
        } else {
            Err(ProtocolError::malformed(format!(
                "input code {:?} is not two hex digits",
                printable(code.as_bytes(), 16)
            )))
        }
    }

    /// The command text without its CR, for logs and errors.
    pub fn text(&self) -> String {
        match self {
            Request::Null => String::new(),
            Request::PowerQuery => "PWR?".into(),
            Request::PowerOn => "PWR ON".into(),
            Request::PowerOff => "PWR OFF".into(),
            Request::LampQuery => "LAMP?".into(),
            Request::ErrorQuery => "ERR?".into(),
            Request::SerialQuery => "SNO?".into(),
            Request::SourceQuery => "SOURCE?".into(),
            Request::SourceSet(code) => format!("SOURCE {code}"),
            Request::MuteSet(on) => format!("MUTE {}", if *on { "ON" } else { "OFF" }),
            Request::MuteQuery => "MUTE?".into(),
        }
    }

    /// The bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = self.text().into_bytes();
        v.push(CR);
        v
    }

    /// The key a query's reply line carries (`PWR` for `PWR?`); `None` for sets and the null
    /// command, which answer with the prompt alone.
    pub fn reply_key(&self) -> Option<&'static str> {
        match self {
            Request::PowerQuery => Some("PWR"),
            Request::LampQuery => Some("LAMP"),
            Request::ErrorQuery => Some("ERR"),
            Request::SerialQuery => Some("SNO"),
            Request::SourceQuery => Some("SOURCE"),
            Request::MuteQuery => Some("MUTE"),
            _ => None,
        }
    }
}

impl Encoder<&Request> for Escvp21Codec {
    type Error = ProtocolError;

    fn encode(&mut self, item: &Request, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        dst.extend_from_slice(&item.encode());
        Ok(())
    }
}

/// The value of a `KEY=value` reply line for `key`.
///
/// Returns the value and the number of noise bytes before the key: printable line noise is
/// not caught by the framing, so `x#PWR=01` still yields `01` (with 2 bytes of noise) rather
/// than losing the answer.
pub fn reply_value<'a>(line: &'a str, key: &str) -> Result<(&'a str, usize), ProtocolError> {
    let tag = format!("{key}=");
    if let Some(v) = line.strip_prefix(&tag) {
        return Ok((v.trim(), 0));
    }
    match line.rfind(&tag) {
        Some(at) => Ok((line[at + tag.len()..].trim(), at)),
        None => Err(ProtocolError::Unexpected {
            expected: format!("{key}=…"),
            got: printable(line.as_bytes(), 40),
        }),
    }
}

/// `PWR?` answer codes (protocols.md §8, "as commonly documented"; 05 and 09 need
/// confirmation per model; 07 is implementation-derived from openHAB's Epson binding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerCode {
    /// `00` standby, network off.
    StandbyNetworkOff,
    /// `01` lamp on.
    LampOn,
    /// `02` warm-up.
    WarmUp,
    /// `03` cool-down.
    CoolDown,
    /// `04` standby, network on.
    StandbyNetworkOn,
    /// `05` abnormal standby.
    AbnormalStandby,
    /// `07` wireless HD standby (implementation-derived).
    WirelessHdStandby,
    /// `09` A/V standby.
    AvStandby,
}

impl PowerCode {
    pub fn from_code(code: &str) -> Option<PowerCode> {
        Some(match code {
            "00" => PowerCode::StandbyNetworkOff,
            "01" => PowerCode::LampOn,
            "02" => PowerCode::WarmUp,
            "03" => PowerCode::CoolDown,
            "04" => PowerCode::StandbyNetworkOn,
            "05" => PowerCode::AbnormalStandby,
            "07" => PowerCode::WirelessHdStandby,
            "09" => PowerCode::AvStandby,
            _ => return None,
        })
    }

    pub fn code(self) -> &'static str {
        match self {
            PowerCode::StandbyNetworkOff => "00",
            PowerCode::LampOn => "01",
            PowerCode::WarmUp => "02",
            PowerCode::CoolDown => "03",
            PowerCode::StandbyNetworkOn => "04",
            PowerCode::AbnormalStandby => "05",
            PowerCode::WirelessHdStandby => "07",
            PowerCode::AvStandby => "09",
        }
    }

    /// Warming up or cooling down: answering, but not taking every command.
    pub fn is_transitional(self) -> bool {
        matches!(self, PowerCode::WarmUp | PowerCode::CoolDown)
    }

    pub fn describe(self) -> &'static str {
        match self {
            PowerCode::StandbyNetworkOff => "standby (network off)",
            PowerCode::LampOn => "lamp on",
            PowerCode::WarmUp => "warm-up",
            PowerCode::CoolDown => "cool-down",
            PowerCode::StandbyNetworkOn => "standby (network on)",
            PowerCode::AbnormalStandby => "abnormal standby",
            PowerCode::WirelessHdStandby => "wireless HD standby",
            PowerCode::AvStandby => "A/V standby",
        }
    }
}

/// `PWR=01` → [`PowerCode::LampOn`].
pub fn parse_power(line: &str) -> Result<PowerCode, ProtocolError> {
    let (v, _) = reply_value(line, "PWR")?;
    PowerCode::from_code(v).ok_or_else(|| {
        ProtocolError::malformed(format!(
            "unknown power code {:?}",
            printable(v.as_bytes(), 16)
        ))
    })
}

/// `LAMP=1234` → 1234 hours.
pub fn parse_lamp_hours(line: &str) -> Result<u32, ProtocolError> {
    let (v, _) = reply_value(line, "LAMP")?;
    parse_decimal(v, "lamp hours")
}

/// `ERR=0A` → 0x0A.
pub fn parse_error_code(line: &str) -> Result<u8, ProtocolError> {
    let (v, _) = reply_value(line, "ERR")?;
    parse_hex_byte(v, "error code")
}

/// `SNO=X4Y5Z6` → `X4Y5Z6`.
pub fn parse_serial(line: &str) -> Result<String, ProtocolError> {
    let (v, _) = reply_value(line, "SNO")?;
    if v.is_empty() || v.len() > 32 {
        return Err(ProtocolError::malformed(format!(
            "serial number {:?} is empty or too long",
            printable(v.as_bytes(), 40)
        )));
    }
    Ok(v.to_owned())
}

/// `SOURCE=30` → `30` (upper-case hex).
pub fn parse_source(line: &str) -> Result<String, ProtocolError> {
    let (v, _) = reply_value(line, "SOURCE")?;
    parse_hex_byte(v, "input code").map(|b| format!("{b:02X}"))
}

/// `MUTE=ON` → true.
pub fn parse_mute(line: &str) -> Result<bool, ProtocolError> {
    let (v, _) = reply_value(line, "MUTE")?;
    match v {
        "ON" => Ok(true),
        "OFF" => Ok(false),
        other => Err(ProtocolError::malformed(format!(
            "mute state {:?} is neither ON nor OFF",
            printable(other.as_bytes(), 16)
        ))),
    }
}

fn parse_decimal(v: &str, what: &str) -> Result<u32, ProtocolError> {
    if v.is_empty() || v.len() > 9 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ProtocolError::malformed(format!(
            "{what} {:?} is not a decimal number",
            printable(v.as_bytes(), 16)
        )));
    }
    v.parse()
        .map_err(|_| ProtocolError::malformed(format!("{what} {v:?} out of range")))
}

fn parse_hex_byte(v: &str, what: &str) -> Result<u8, ProtocolError> {
    if v.len() != 2 || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ProtocolError::malformed(format!(
            "{what} {:?} is not two hex digits",
            printable(v.as_bytes(), 16)
        )));
    }
    u8::from_str_radix(v, 16)
        .map_err(|_| ProtocolError::malformed(format!("{what} {v:?} is not hex")))
}

/// What an `ERR?` code means, as a fault the rest of avwarden understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCodeInfo {
    pub code: u8,
    /// Stable fault code (`fan`, `lamp`, `temperature`, …).
    pub fault: &'static str,
    /// The component it concerns.
    pub component: &'static str,
    /// One line for the technician.
    pub message: &'static str,
}

/// The `ERR?` code table (Epson guide section 6, cited in protocols.md §8). The guide itself
/// could not be read; the meanings below follow openHAB's Epson binding
/// (`internal/enums/ErrorMessage.java`, implementation-derived). Where the brief's list
/// differs from that source (0E "power supply unit fan", 11 "LD error"), the sourced meaning
/// is used and the entry is marked approximate.
pub const ERROR_CODES: &[ErrorCodeInfo] = &[
    ErrorCodeInfo {
        code: 0x01,
        fault: "fan",
        component: "fan",
        message: "fan error",
    },
    ErrorCodeInfo {
        code: 0x03,
        fault: "lamp",
        component: "lamp",
        message: "lamp failure at power on",
    },
    ErrorCodeInfo {
        code: 0x04,
        fault: "temperature",
        component: "cooling",
        message: "high internal temperature",
    },
    ErrorCodeInfo {
        code: 0x06,
        fault: "lamp",
        component: "lamp",
        message: "lamp error",
    },
    ErrorCodeInfo {
        code: 0x07,
        fault: "lamp_cover",
        component: "lamp",
        message: "lamp cover open",
    },
    ErrorCodeInfo {
        code: 0x08,
        fault: "cinema_filter",
        component: "optics",
        message: "cinema filter error",
    },
    ErrorCodeInfo {
        code: 0x09,
        fault: "capacitor",
        component: "electronics",
        message: "electric dual-layered capacitor disconnected",
    },
    ErrorCodeInfo {
        code: 0x0A,
        fault: "auto_iris",
        component: "optics",
        message: "auto iris error",
    },
    ErrorCodeInfo {
        code: 0x0B,
        fault: "subsystem",
        component: "electronics",
        message: "subsystem error",
    },
    ErrorCodeInfo {
        code: 0x0C,
        fault: "air_flow",
        component: "cooling",
        message: "low air flow (check the air filter)",
    },
    ErrorCodeInfo {
        code: 0x0D,
        fault: "air_flow_sensor",
        component: "cooling",
        message: "air filter air flow sensor error",
    },
    // Approximate: the brief says "power supply unit fan"; openHAB says "power supply unit
    // error (ballast)".
    ErrorCodeInfo {
        code: 0x0E,
        fault: "power_supply",
        component: "power supply",
        message: "power supply unit error (ballast)",
    },
    ErrorCodeInfo {
        code: 0x0F,
        fault: "shutter",
        component: "optics",
        message: "shutter error",
    },
    ErrorCodeInfo {
        code: 0x10,
        fault: "cooling",
        component: "cooling",
        message: "cooling system error (peltier element)",
    },
    // Approximate: the brief says "LD (laser diode) error"; openHAB says "cooling system error
    // (pump)". Both mean the projector cannot run; the message names both readings.
    ErrorCodeInfo {
        code: 0x11,
        fault: "cooling",
        component: "cooling",
        message: "cooling system (pump) or laser diode error",
    },
    ErrorCodeInfo {
        code: 0x12,
        fault: "static_iris",
        component: "optics",
        message: "static iris error",
    },
    ErrorCodeInfo {
        code: 0x13,
        fault: "power_supply",
        component: "power supply",
        message: "power supply unit error (ballast disagreement)",
    },
    ErrorCodeInfo {
        code: 0x14,
        fault: "exhaust_shutter",
        component: "cooling",
        message: "exhaust shutter error",
    },
    ErrorCodeInfo {
        code: 0x15,
        fault: "obstacle",
        component: "optics",
        message: "obstacle detected in front of the lens",
    },
    ErrorCodeInfo {
        code: 0x16,
        fault: "board",
        component: "electronics",
        message: "interface board not recognised",
    },
    ErrorCodeInfo {
        code: 0x17,
        fault: "stacking",
        component: "electronics",
        message: "stack projection communication error",
    },
    ErrorCodeInfo {
        code: 0x18,
        fault: "subsystem",
        component: "electronics",
        message: "internal bus (I2C) error",
    },
];

/// The table entry for an `ERR?` code; `None` for `00` (no error) and codes not in the table.
pub fn error_code_info(code: u8) -> Option<&'static ErrorCodeInfo> {
    ERROR_CODES.iter().find(|e| e.code == code)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decode a byte string completely, collecting frames, errors and skipped bytes.
    fn decode_all(codec: &mut Escvp21Codec, bytes: &[u8]) -> Vec<Result<Frame, ProtocolError>> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(f)) => out.push(Ok(f)),
                Ok(None) => break,
                Err(e) => out.push(Err(e)),
            }
        }
        out
    }

    fn frames(bytes: &[u8]) -> Vec<Frame> {
        decode_all(&mut Escvp21Codec::new(), bytes)
            .into_iter()
            .map(|r| r.expect("no protocol error"))
            .collect()
    }

    fn reply(s: &str) -> Frame {
        Frame::Reply(s.to_owned())
    }

    // protocols.md §8 vector block, line by line: controller bytes from the encoder,
    // device bytes through the decoder and the typed parsers.
    #[test]
    fn section_8_vectors() {
        // C→D \r / D→C :
        assert_eq!(Request::Null.encode(), b"\r");
        assert_eq!(frames(b":"), vec![Frame::Colon]);
        // C→D PWR?\r / D→C PWR=04\r:
        assert_eq!(Request::PowerQuery.encode(), b"PWR?\r");
        let f = frames(b"PWR=04\r:");
        assert_eq!(f, vec![reply("PWR=04"), Frame::Colon]);
        assert_eq!(parse_power("PWR=04"), Ok(PowerCode::StandbyNetworkOn));
        // C→D PWR ON\r / D→C : (up to 40 s later)
        assert_eq!(Request::PowerOn.encode(), b"PWR ON\r");
        assert_eq!(frames(b":"), vec![Frame::Colon]);
        // C→D LAMP?\r / D→C LAMP=1234\r:
        assert_eq!(Request::LampQuery.encode(), b"LAMP?\r");
        let f = frames(b"LAMP=1234\r:");
        assert_eq!(f, vec![reply("LAMP=1234"), Frame::Colon]);
        assert_eq!(parse_lamp_hours("LAMP=1234"), Ok(1234));
        // C→D FOO?\r / D→C ERR\r:
        assert_eq!(frames(b"ERR\r:"), vec![Frame::Err, Frame::Colon]);
    }

    // The examples in the prose of protocols.md §8.
    #[test]
    fn section_8_prose_examples() {
        assert_eq!(Request::PowerOff.encode(), b"PWR OFF\r");
        let f = frames(b"PWR=01\r:");
        assert_eq!(f, vec![reply("PWR=01"), Frame::Colon]);
        assert_eq!(parse_power("PWR=01"), Ok(PowerCode::LampOn));
        assert_eq!(Request::ErrorQuery.encode(), b"ERR?\r");
        assert_eq!(parse_error_code("ERR=00"), Ok(0));
        assert_eq!(Request::SerialQuery.encode(), b"SNO?\r");
        assert_eq!(Request::MuteSet(true).encode(), b"MUTE ON\r");
        assert_eq!(Request::MuteSet(false).encode(), b"MUTE OFF\r");
        assert_eq!(Request::MuteQuery.encode(), b"MUTE?\r");
        assert_eq!(Request::SourceQuery.encode(), b"SOURCE?\r");
        assert_eq!(Request::source("30").unwrap().encode(), b"SOURCE 30\r");
        assert_eq!(Request::source("a0").unwrap().encode(), b"SOURCE A0\r");
    }

    #[test]
    fn power_codes() {
        let table = [
            ("00", PowerCode::StandbyNetworkOff, false),
            ("01", PowerCode::LampOn, false),
            ("02", PowerCode::WarmUp, true),
            ("03", PowerCode::CoolDown, true),
            ("04", PowerCode::StandbyNetworkOn, false),
            ("05", PowerCode::AbnormalStandby, false),
            ("07", PowerCode::WirelessHdStandby, false),
            ("09", PowerCode::AvStandby, false),
        ];
        for (code, want, transitional) in table {
            let got = parse_power(&format!("PWR={code}")).unwrap();
            assert_eq!(got, want, "PWR={code}");
            assert_eq!(got.code(), code);
            assert_eq!(got.is_transitional(), transitional, "PWR={code}");
        }
        for bad in ["PWR=06", "PWR=1", "PWR=", "PWR=0x", "LAMP=01", "PWR"] {
            assert!(parse_power(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn lamp_hours() {
        assert_eq!(parse_lamp_hours("LAMP=0"), Ok(0));
        assert_eq!(parse_lamp_hours("LAMP=65535"), Ok(65535));
        for bad in ["LAMP=", "LAMP=-1", "LAMP=12a", "LAMP=9999999999", "PWR=01"] {
            assert!(parse_lamp_hours(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn error_codes_and_table() {
        assert_eq!(parse_error_code("ERR=0A"), Ok(0x0A));
        assert_eq!(parse_error_code("ERR=0a"), Ok(0x0A));
        assert_eq!(parse_error_code("ERR=11"), Ok(0x11));
        for bad in ["ERR=", "ERR=1", "ERR=G1", "ERR=100", "ERR"] {
            assert!(parse_error_code(bad).is_err(), "{bad}");
        }
        assert!(error_code_info(0).is_none(), "00 is no error");
        let expect = [
            (0x01, "fan"),
            (0x03, "lamp"),
            (0x04, "temperature"),
            (0x06, "lamp"),
            (0x07, "lamp_cover"),
            (0x08, "cinema_filter"),
            (0x09, "capacitor"),
            (0x0A, "auto_iris"),
            (0x0B, "subsystem"),
            (0x0C, "air_flow"),
            (0x0D, "air_flow_sensor"),
            (0x0E, "power_supply"),
            (0x0F, "shutter"),
            (0x10, "cooling"),
            (0x11, "cooling"),
        ];
        for (code, fault) in expect {
            let info = error_code_info(code).unwrap_or_else(|| panic!("code {code:02X}"));
            assert_eq!(info.fault, fault, "code {code:02X}");
            assert!(!info.message.is_empty());
        }
        assert!(error_code_info(0x02).is_none());
        assert!(error_code_info(0xFF).is_none());
        // Every table entry is unique by code.
        for (i, a) in ERROR_CODES.iter().enumerate() {
            assert!(ERROR_CODES[i + 1..].iter().all(|b| b.code != a.code));
        }
    }

    #[test]
    fn serial_source_mute() {
        assert_eq!(parse_serial("SNO=X4Y5Z6000123"), Ok("X4Y5Z6000123".into()));
        assert!(parse_serial("SNO=").is_err());
        assert!(parse_serial(&format!("SNO={}", "A".repeat(33))).is_err());
        assert_eq!(parse_source("SOURCE=30"), Ok("30".into()));
        assert_eq!(parse_source("SOURCE=a0"), Ok("A0".into()));
        assert!(parse_source("SOURCE=HDMI").is_err());
        assert_eq!(parse_mute("MUTE=ON"), Ok(true));
        assert_eq!(parse_mute("MUTE=OFF"), Ok(false));
        assert!(parse_mute("MUTE=1").is_err());
        assert!(Request::source("3").is_err());
        assert!(Request::source("HDMI").is_err());
        assert!(Request::source("3\r0").is_err());
    }

    #[test]
    fn reply_keys() {
        assert_eq!(Request::PowerQuery.reply_key(), Some("PWR"));
        assert_eq!(Request::LampQuery.reply_key(), Some("LAMP"));
        assert_eq!(Request::ErrorQuery.reply_key(), Some("ERR"));
        assert_eq!(Request::SerialQuery.reply_key(), Some("SNO"));
        assert_eq!(Request::SourceQuery.reply_key(), Some("SOURCE"));
        assert_eq!(Request::MuteQuery.reply_key(), Some("MUTE"));
        assert_eq!(Request::PowerOn.reply_key(), None);
        assert_eq!(Request::Null.reply_key(), None);
    }

    #[test]
    fn printable_noise_before_a_key_is_tolerated_and_measured() {
        assert_eq!(reply_value("PWR=01", "PWR"), Ok(("01", 0)));
        assert_eq!(reply_value("x#PWR=01", "PWR"), Ok(("01", 2)));
        assert!(matches!(
            reply_value("LAMP=5", "PWR"),
            Err(ProtocolError::Unexpected { .. })
        ));
    }

    #[test]
    fn garbage_is_skipped_and_counted() {
        let mut c = Escvp21Codec::new();
        let out = decode_all(&mut c, b"\x00\xff\xfePWR=01\r\x13:");
        assert_eq!(
            out.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
            vec![reply("PWR=01"), Frame::Colon]
        );
        assert_eq!(c.take_skipped(), 4);
        assert_eq!(c.take_skipped(), 0, "taking resets the count");
        // Noise in the middle of a line drops the partial line with it.
        let out = decode_all(&mut c, b"PW\xffLAMP=7\r:");
        assert_eq!(
            out.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
            vec![reply("LAMP=7"), Frame::Colon]
        );
        assert_eq!(c.take_skipped(), 3);
        // A prompt inside a partial line is kept; the partial line is noise.
        let out = decode_all(&mut c, b"abc:");
        assert_eq!(
            out.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
            vec![Frame::Colon]
        );
        assert_eq!(c.take_skipped(), 3);
    }

    #[test]
    fn line_endings_and_empty_lines() {
        assert_eq!(
            frames(b"\r\n\rPWR=01\r\n:"),
            vec![reply("PWR=01"), Frame::Colon]
        );
        assert_eq!(
            frames(b"SNO=AB12\n:"),
            vec![reply("SNO=AB12"), Frame::Colon]
        );
        assert_eq!(frames(b"   \r:"), vec![Frame::Colon]);
    }

    #[test]
    fn partial_input_waits_for_more() {
        let mut c = Escvp21Codec::new();
        let mut buf = BytesMut::from(&b"LAMP=12"[..]);
        assert_eq!(c.decode(&mut buf), Ok(None));
        buf.extend_from_slice(b"34\r");
        assert_eq!(c.decode(&mut buf), Ok(Some(reply("LAMP=1234"))));
        assert_eq!(c.decode(&mut buf), Ok(None));
        buf.extend_from_slice(b":");
        assert_eq!(c.decode(&mut buf), Ok(Some(Frame::Colon)));
        assert!(buf.is_empty());
    }

    #[test]
    fn oversized_line_is_reported_once_and_decoding_resumes() {
        let mut c = Escvp21Codec::with_max_line(16);
        let mut bytes = vec![b'A'; 100];
        bytes.extend_from_slice(b"\rPWR=01\r:");
        let out = decode_all(&mut c, &bytes);
        assert_eq!(out.len(), 3, "{out:?}");
        assert_eq!(out[0], Err(ProtocolError::Oversized { limit: 16, got: 17 }));
        assert_eq!(out[1], Ok(reply("PWR=01")));
        assert_eq!(out[2], Ok(Frame::Colon));

        // Fed in small pieces, the tail of the long line is dropped as it arrives: the buffer
        // never holds more than the limit.
        let mut c = Escvp21Codec::with_max_line(16);
        let mut buf = BytesMut::new();
        let mut errors = 0;
        let mut got = Vec::new();
        for chunk in bytes.chunks(5) {
            buf.extend_from_slice(chunk);
            loop {
                match c.decode(&mut buf) {
                    Ok(Some(f)) => got.push(f),
                    Ok(None) => break,
                    Err(_) => errors += 1,
                }
            }
            assert!(buf.len() <= 16 + 5, "buffer grew to {}", buf.len());
        }
        assert_eq!(errors, 1);
        assert_eq!(got, vec![reply("PWR=01"), Frame::Colon]);
    }

    #[test]
    fn oversized_tail_keeps_the_prompt() {
        let mut c = Escvp21Codec::with_max_line(8);
        let out = decode_all(&mut c, b"AAAAAAAAAAAAAAAA:");
        assert!(matches!(out[0], Err(ProtocolError::Oversized { .. })));
        assert_eq!(out[1], Ok(Frame::Colon));
    }

    #[test]
    fn decode_eof_drops_a_partial_line() {
        let mut c = Escvp21Codec::new();
        let mut buf = BytesMut::from(&b"PWR=0"[..]);
        assert_eq!(c.decode_eof(&mut buf), Ok(None));
        assert!(buf.is_empty());
        assert_eq!(c.take_skipped(), 5);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Arbitrary bytes in arbitrary chunks: never a panic, the buffer stays bounded,
            /// and every reply line is printable and within the limit.
            #[test]
            fn arbitrary_bytes_never_panic(
                bytes in proptest::collection::vec(any::<u8>(), 0..2048),
                chunk in 1usize..64,
            ) {
                let mut c = Escvp21Codec::with_max_line(32);
                let mut buf = BytesMut::new();
                for piece in bytes.chunks(chunk) {
                    buf.extend_from_slice(piece);
                    for _ in 0..=piece.len() + 1 {
                        match c.decode(&mut buf) {
                            Ok(Some(Frame::Reply(line))) => {
                                prop_assert!(line.len() <= 32);
                                prop_assert!(line.bytes().all(|b| (0x20..=0x7e).contains(&b) && b != b':'));
                            }
                            Ok(Some(_)) => {}
                            Ok(None) => break,
                            Err(ProtocolError::Oversized { limit, .. }) => prop_assert_eq!(limit, 32),
                            Err(e) => prop_assert!(false, "unexpected error {e}"),
                        }
                    }
                    prop_assert!(buf.len() <= 32 + chunk, "buffer {}", buf.len());
                }
                let _ = c.decode_eof(&mut buf);
            }

            /// Noise without printable bytes or line ends never hides a reply that follows.
            #[test]
            fn reply_survives_leading_noise(
                noise in proptest::collection::vec(
                    any::<u8>().prop_filter("not printable, not a line end", |b| !(0x20..=0x7e).contains(b) && *b != b'\r' && *b != b'\n'),
                    0..64),
            ) {
                let mut bytes = noise.clone();
                bytes.extend_from_slice(b"LAMP=42\r:");
                let mut c = Escvp21Codec::new();
                let out: Vec<_> = decode_all(&mut c, &bytes);
                prop_assert_eq!(out, vec![Ok(reply("LAMP=42")), Ok(Frame::Colon)]);
                prop_assert_eq!(c.take_skipped(), noise.len());
            }

            /// The parsers never panic on any line.
            #[test]
            fn parsers_never_panic(line in "\\PC{0,64}") {
                let _ = parse_power(&line);
                let _ = parse_lamp_hours(&line);
                let _ = parse_error_code(&line);
                let _ = parse_serial(&line);
                let _ = parse_source(&line);
                let _ = parse_mute(&line);
                let _ = Request::source(&line);
            }
        }
    }
}
