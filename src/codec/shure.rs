//! Shure wireless receiver "command strings" (protocols.md §2): framing of `< … >` messages on
//! TCP 2202, parsing of `GET`/`SET`/`REP`/`SAMPLE`/`REP ERR`, and the value encodings with their
//! sentinels (255, 65535, 65534, 65533, `UNKN`).
//!
//! Sans-io: no sockets, no clocks, no panics on any input, and never more than
//! [`MAX_FRAME`] bytes of one frame held. Which parameter names a receiver family uses and how its
//! `SAMPLE` fields are laid out is profile data read by the driver; this module only knows the
//! wire grammar and the encodings the families share.

use std::fmt;

use bytes::{Buf, BytesMut};
use tokio_util::codec::Decoder;

use super::{printable, ProtocolError};

/// The longest frame we accept. Real frames are short: the longest documented field is a
/// 32-character MODEL in braces (protocols.md §2.2), so a frame over 512 bytes is garbage.
pub const MAX_FRAME: usize = 512;

/// `METER_RATE` limits (protocols.md §2.2): `00000` = off, otherwise 100–65535 ms.
pub const METER_RATE_MIN_MS: u32 = 100;
pub const METER_RATE_MAX_MS: u32 = 65_535;

/// Battery bars and percentages use 255 for "unknown / no transmitter" (protocols.md §2.3).
pub const UNKNOWN_U8: u32 = 255;
/// Runtime and cycle counts use 65535 for "unknown" (protocols.md §2.3).
pub const UNKNOWN_U16: u32 = 65_535;
/// `TX_BATT_MINS` 65534 = still calculating (protocols.md §2.3).
pub const RUNTIME_CALCULATING: u32 = 65_534;
/// `TX_BATT_MINS` 65533 = battery communication warning (protocols.md §2.3).
pub const RUNTIME_COMM_WARNING: u32 = 65_533;

/// One command-string message, either direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// `< GET [x] PARAM >`
    Get { channel: Option<u8>, param: String },
    /// `< SET [x] PARAM value >`; `value` is the raw rest (`030`, `INC 3`, `{Name}`).
    Set {
        channel: Option<u8>,
        param: String,
        value: String,
    },
    /// `< REP [x] PARAM value >`; `value` is the raw rest, braces kept (see [`text`]).
    Rep {
        channel: Option<u8>,
        param: String,
        value: String,
    },
    /// `< REP ERR >`: bad format or out-of-range value (protocols.md §2.2).
    Err,
    /// `< SAMPLE x ALL f1 f2 … >`: metering; the fields after `ALL`, laid out per family.
    Sample { channel: u8, fields: SampleFields },
}

/// The fields of a `SAMPLE` after `ALL`, kept as received and split when read: a sample costs
/// one allocation, not one per field (issue 15.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SampleFields(String);

impl SampleFields {
    /// Fields from words (a simulator's sample); whitespace inside a word would split it.
    pub fn new<S: AsRef<str>>(words: impl IntoIterator<Item = S>) -> Self {
        let mut text = String::new();
        for w in words {
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str(w.as_ref());
        }
        Self(text)
    }

    pub fn iter(&self) -> std::str::SplitAsciiWhitespace<'_> {
        self.0.split_ascii_whitespace()
    }

    pub fn len(&self) -> usize {
        self.iter().count()
    }

    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }
}

impl Message {
    pub fn get(channel: Option<u8>, param: &str) -> Self {
        Message::Get {
            channel,
            param: param.to_owned(),
        }
    }

    pub fn set(channel: Option<u8>, param: &str, value: impl Into<String>) -> Self {
        Message::Set {
            channel,
            param: param.to_owned(),
            value: value.into(),
        }
    }

    pub fn rep(channel: Option<u8>, param: &str, value: impl Into<String>) -> Self {
        Message::Rep {
            channel,
            param: param.to_owned(),
            value: value.into(),
        }
    }

    /// The wire bytes: `< GET 1 BATT_BARS >`, no terminator (protocols.md §2.1).
    pub fn encode(&self) -> Vec<u8> {
        self.to_string().into_bytes()
    }
}

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn head(f: &mut fmt::Formatter<'_>, verb: &str, ch: &Option<u8>, p: &str) -> fmt::Result {
            match ch {
                Some(c) => write!(f, "< {verb} {c} {p}"),
                None => write!(f, "< {verb} {p}"),
            }
        }
        match self {
            Message::Get { channel, param } => {
                head(f, "GET", channel, param)?;
                f.write_str(" >")
            }
            Message::Set {
                channel,
                param,
                value,
            } => {
                head(f, "SET", channel, param)?;
                write!(f, " {value} >")
            }
            Message::Rep {
                channel,
                param,
                value,
            } => {
                head(f, "REP", channel, param)?;
                if value.is_empty() {
                    f.write_str(" >")
                } else {
                    write!(f, " {value} >")
                }
            }
            Message::Err => f.write_str("< REP ERR >"),
            Message::Sample { channel, fields } => {
                write!(f, "< SAMPLE {channel} ALL")?;
                for x in fields.iter() {
                    write!(f, " {x}")?;
                }
                f.write_str(" >")
            }
        }
    }
}

/// Splits the byte stream into messages.
///
/// The stream is split on `>` (protocols.md §2.1), except inside a `{…}` string: SLX-D+ allows
/// `<` and `>` in channel and device names (Companion `docs/SLXDplus-protocol.md`, CHAN_NAME
/// allowed characters), so a naive split would cut such a name in two. Bytes before a `<` are
/// skipped and reported as garbage; a frame longer than [`MAX_FRAME`] is dropped up to its `>`
/// and reported once as oversized. Whitespace between frames (PSM1000 sends CRLF) is ignored.
#[derive(Debug, Clone, Default)]
pub struct ShureCodec {
    /// After an oversized frame: drop bytes up to and including the next `>`.
    discarding: bool,
}

impl ShureCodec {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Decoder for ShureCodec {
    type Item = Message;
    type Error = ProtocolError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, ProtocolError> {
        if self.discarding {
            match buf.iter().position(|&b| b == b'>') {
                Some(i) => {
                    buf.advance(i + 1);
                    self.discarding = false;
                }
                None => {
                    buf.clear();
                    return Ok(None);
                }
            }
        }
        // Inter-frame whitespace is not garbage.
        let ws = buf
            .iter()
            .take_while(|b| matches!(b, b' ' | b'\r' | b'\n' | b'\t'))
            .count();
        buf.advance(ws);
        if buf.is_empty() {
            return Ok(None);
        }
        if buf[0] != b'<' {
            let skip = buf.iter().position(|&b| b == b'<').unwrap_or(buf.len());
            buf.advance(skip);
            return Err(ProtocolError::Garbage { skipped: skip });
        }
        let mut in_brace = false;
        for i in 1..buf.len() {
            if i >= MAX_FRAME {
                break;
            }
            match buf[i] {
                b'{' => in_brace = true,
                b'}' => in_brace = false,
                b'<' if !in_brace => {
                    // A new frame starts before this one ended: the start was a fragment.
                    buf.advance(i);
                    return Err(ProtocolError::Garbage { skipped: i });
                }
                b'>' if !in_brace => {
                    let frame = buf.split_to(i + 1);
                    return parse_frame(&frame[1..i]).map(Some);
                }
                _ => {}
            }
        }
        if buf.len() >= MAX_FRAME {
            let got = buf.len();
            buf.clear();
            self.discarding = true;
            return Err(ProtocolError::Oversized {
                limit: MAX_FRAME,
                got,
            });
        }
        Ok(None)
    }
}

/// Parse the inside of one frame (between `<` and `>`).
pub fn parse_frame(inner: &[u8]) -> Result<Message, ProtocolError> {
    let bad = |why: &str| ProtocolError::malformed(format!("{why}: <{}>", printable(inner, 80)));
    let text = std::str::from_utf8(inner).map_err(|_| bad("not text"))?;
    if text.chars().any(|c| c.is_control() && c != '\t') {
        return Err(bad("control character in frame"));
    }
    let text = text.trim();
    let (verb, rest) = split_word(text);
    let (first, after_first) = split_word(rest);
    let (channel, param, value) = match first.parse::<u16>() {
        Ok(c) if first.bytes().all(|b| b.is_ascii_digit()) => {
            let c = u8::try_from(c).map_err(|_| bad("channel index out of range"))?;
            let (p, v) = split_word(after_first);
            (Some(c), p, v)
        }
        _ => (None, first, after_first),
    };
    if param.is_empty()
        || !param
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(bad("missing or invalid parameter name"));
    }
    let value = value.trim();
    // A sample is the stream's common case: its parameter is checked, not kept.
    if verb == "SAMPLE" {
        let channel = channel.ok_or_else(|| bad("SAMPLE without channel"))?;
        if param != "ALL" {
            return Err(bad("SAMPLE is not ALL"));
        }
        return Ok(Message::Sample {
            channel,
            fields: SampleFields(value.to_owned()),
        });
    }
    let value = value.to_owned();
    let param = param.to_owned();
    match verb {
        "REP" if channel.is_none() && param == "ERR" && value.is_empty() => Ok(Message::Err),
        "REP" | "REPLY" | "REPORT" => Ok(Message::Rep {
            channel,
            param,
            value,
        }),
        "GET" if value.is_empty() => Ok(Message::Get { channel, param }),
        "SET" => Ok(Message::Set {
            channel,
            param,
            value,
        }),
        _ => Err(bad("unknown message type")),
    }
}

fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(|c: char| c.is_ascii_whitespace()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    }
}

/// A braced, padded string (`{Lead Vox      }`) or a bare word, trimmed.
pub fn text(value: &str) -> String {
    let v = value.trim();
    let v = v
        .strip_prefix('{')
        .and_then(|x| x.strip_suffix('}'))
        .unwrap_or(v);
    v.trim().to_owned()
}

/// A word that may be a "don't know" marker: `UNKN`, `UNKNOWN` or a blank padded string become
/// `None` (protocols.md §2.3; SLX-D+ blank `SLOT_TX_MODEL`).
pub fn known_word(value: &str) -> Option<String> {
    let t = text(value);
    if t.is_empty() || t.eq_ignore_ascii_case("UNKN") || t.eq_ignore_ascii_case("UNKNOWN") {
        None
    } else {
        Some(t)
    }
}

/// A fixed-width decimal field (`004`, `00125`).
pub fn number(value: &str) -> Result<u32, ProtocolError> {
    let v = text(value);
    if v.is_empty() || v.len() > 9 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ProtocolError::malformed(format!(
            "expected digits, got {:?}",
            printable(value.as_bytes(), 40)
        )));
    }
    v.parse::<u32>()
        .map_err(|_| ProtocolError::malformed(format!("number out of range: {v}")))
}

/// `BATT_BARS` / `TX_BATT_BARS`: 0–5, `None` for 255 (unknown / no transmitter).
pub fn battery_bars(value: &str) -> Result<Option<u8>, ProtocolError> {
    match number(value)? {
        UNKNOWN_U8 => Ok(None),
        n @ 0..=5 => Ok(Some(n as u8)),
        n => Err(ProtocolError::malformed(format!(
            "battery bars {n} not 0-5"
        ))),
    }
}

/// `BATT_CHARGE` / `TX_BATT_CHARGE_PERCENT`: 0–100, `None` for 255.
pub fn percent(value: &str) -> Result<Option<u8>, ProtocolError> {
    match number(value)? {
        UNKNOWN_U8 => Ok(None),
        n @ 0..=100 => Ok(Some(n as u8)),
        n => Err(ProtocolError::malformed(format!("percent {n} not 0-100"))),
    }
}

/// `BATT_CYCLE` / `TX_BATT_CYCLE_COUNT`: a count, `None` for 65535.
pub fn count16(value: &str) -> Result<Option<u16>, ProtocolError> {
    match number(value)? {
        UNKNOWN_U16 => Ok(None),
        n => u16::try_from(n)
            .map(Some)
            .map_err(|_| ProtocolError::malformed(format!("count {n} out of range"))),
    }
}

/// A battery runtime as the receiver reports it (`BATT_RUN_TIME` / `TX_BATT_MINS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    Minutes(u16),
    /// 65535.
    Unknown,
    /// 65534: the transmitter is still working it out.
    Calculating,
    /// 65533: the receiver cannot talk to the battery; a warning, not a value.
    CommWarning,
}

impl Runtime {
    pub fn minutes(self) -> Option<u16> {
        match self {
            Runtime::Minutes(m) => Some(m),
            _ => None,
        }
    }

    /// The wire field (5 digits).
    pub fn encode(self) -> String {
        let n = match self {
            Runtime::Minutes(m) => u32::from(m).min(RUNTIME_COMM_WARNING - 1),
            Runtime::Unknown => UNKNOWN_U16,
            Runtime::Calculating => RUNTIME_CALCULATING,
            Runtime::CommWarning => RUNTIME_COMM_WARNING,
        };
        format!("{n:05}")
    }
}

pub fn runtime(value: &str) -> Result<Runtime, ProtocolError> {
    match number(value)? {
        UNKNOWN_U16 => Ok(Runtime::Unknown),
        RUNTIME_CALCULATING => Ok(Runtime::Calculating),
        RUNTIME_COMM_WARNING => Ok(Runtime::CommWarning),
        n => u16::try_from(n)
            .map(Runtime::Minutes)
            .map_err(|_| ProtocolError::malformed(format!("runtime {n} out of range"))),
    }
}

/// Format a `METER_RATE` value: five digits of milliseconds, `00000` = off.
pub fn meter_rate(ms: u32) -> String {
    format!("{:05}", ms.min(METER_RATE_MAX_MS))
}

/// What one field of a `SAMPLE` means; a family's layout is a list of these (profile data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleField {
    /// ULX-D/QLX-D antenna LEDs (`AX`, `XB`, `XX`).
    Antenna,
    /// RF level, offset by the family's RF offset (ULX-D 0–115, −128).
    Rf,
    /// Per-antenna RSSI (Axient Digital): the strongest becomes the channel's RF level.
    Rssi,
    /// ULX-D/QLX-D audio level (0–50, −50).
    Audio,
    AudioPeak,
    AudioRms,
    /// A field we do not interpret (quality, bitmaps, antenna status).
    Skip,
}

impl SampleField {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "antenna" => SampleField::Antenna,
            "rf" => SampleField::Rf,
            "rssi" => SampleField::Rssi,
            "audio" => SampleField::Audio,
            "audio_peak" => SampleField::AudioPeak,
            "audio_rms" => SampleField::AudioRms,
            "quality" | "audio_bitmap" | "antenna_status" | "rf_bitmap" | "skip" => {
                SampleField::Skip
            }
            _ => return None,
        })
    }
}

/// Meter values of one sample, converted to dBm / dBFS.
#[derive(Debug, Clone, PartialEq)]
pub struct Meters<'a> {
    pub rf_dbm: Option<f64>,
    /// Peak where the family reports one, else its only audio level: what clips.
    pub audio_dbfs: Option<f64>,
    pub audio_rms_dbfs: Option<f64>,
    pub antenna: Option<&'a str>,
}

/// Convert a sample's fields with a family's layout and offsets (protocols.md §2.3 SAMPLE
/// layouts: ULX-D RF −128 / audio −50; Axient Digital and SLX-D −120 for both). Extra trailing
/// fields (Quadversity antenna groups) are ignored; missing ones are an error.
pub fn parse_sample<'a>(
    fields: &'a SampleFields,
    layout: &[SampleField],
    rf_offset_db: f64,
    audio_offset_db: f64,
) -> Result<Meters<'a>, ProtocolError> {
    if fields.len() < layout.len() {
        return Err(ProtocolError::malformed(format!(
            "sample has {} fields, layout needs {}",
            fields.len(),
            layout.len()
        )));
    }
    let mut m = Meters {
        rf_dbm: None,
        audio_dbfs: None,
        audio_rms_dbfs: None,
        antenna: None,
    };
    for (f, kind) in fields.iter().zip(layout) {
        let num = || number(f).map(f64::from);
        match kind {
            SampleField::Skip => {}
            SampleField::Antenna => m.antenna = Some(f),
            SampleField::Rf => m.rf_dbm = Some(num()? + rf_offset_db),
            SampleField::Rssi => {
                let v = num()? + rf_offset_db;
                m.rf_dbm = Some(m.rf_dbm.map_or(v, |o: f64| o.max(v)));
            }
            SampleField::Audio | SampleField::AudioPeak => {
                m.audio_dbfs = Some(num()? + audio_offset_db)
            }
            SampleField::AudioRms => m.audio_rms_dbfs = Some(num()? + audio_offset_db),
        }
    }
    if m.audio_dbfs.is_none() {
        m.audio_dbfs = m.audio_rms_dbfs;
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(bytes: &[u8]) -> Vec<Result<Message, ProtocolError>> {
        let mut codec = ShureCodec::new();
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(m)) => out.push(Ok(m)),
                Ok(None) => break,
                Err(e) => out.push(Err(e)),
            }
        }
        out
    }

    fn one(bytes: &str) -> Message {
        let mut v = decode_all(bytes.as_bytes());
        assert_eq!(v.len(), 1, "{bytes}: {v:?}");
        v.remove(0).expect("decodes")
    }

    fn rep(ch: Option<u8>, p: &str, v: &str) -> Message {
        Message::rep(ch, p, v)
    }

    // protocols.md §2.4 vector 1
    #[test]
    fn vector_1_battery_bars_present_and_absent() {
        assert_eq!(
            Message::get(Some(1), "BATT_BARS").encode(),
            b"< GET 1 BATT_BARS >"
        );
        let m = one("< REP 1 BATT_BARS 004 >");
        assert_eq!(m, rep(Some(1), "BATT_BARS", "004"));
        let Message::Rep { value, .. } = m else {
            unreachable!()
        };
        assert_eq!(battery_bars(&value), Ok(Some(4)));
        let Message::Rep { channel, value, .. } = one("< REP 2 BATT_BARS 255 >") else {
            panic!("not a REP")
        };
        assert_eq!(channel, Some(2));
        assert_eq!(
            battery_bars(&value),
            Ok(None),
            "255 is unknown, not a number"
        );
    }

    // vector 2
    #[test]
    fn vector_2_runtime_valid_and_unknown() {
        assert_eq!(
            Message::get(Some(1), "BATT_RUN_TIME").encode(),
            b"< GET 1 BATT_RUN_TIME >"
        );
        let got: Vec<Runtime> =
            decode_all(b"< REP 1 BATT_RUN_TIME 00125 >< REP 1 BATT_RUN_TIME 65535 >")
                .into_iter()
                .map(|m| match m {
                    Ok(Message::Rep { param, value, .. }) if param == "BATT_RUN_TIME" => {
                        runtime(&value).expect("runtime")
                    }
                    other => panic!("{other:?}"),
                })
                .collect();
        assert_eq!(got, vec![Runtime::Minutes(125), Runtime::Unknown]);
        // The other sentinels (AD / SLX-D, protocols.md §2.3).
        assert_eq!(runtime("65534"), Ok(Runtime::Calculating));
        assert_eq!(runtime("65533"), Ok(Runtime::CommWarning));
        assert_eq!(runtime("65532"), Ok(Runtime::Minutes(65532)));
        assert_eq!(Runtime::Minutes(125).encode(), "00125");
    }

    // vector 3
    #[test]
    fn vector_3_channel_name_padded() {
        assert_eq!(
            Message::get(Some(1), "CHAN_NAME").encode(),
            b"< GET 1 CHAN_NAME >"
        );
        let m = one("< REP 1 CHAN_NAME {Lead Vox                       } >");
        let Message::Rep { param, value, .. } = m else {
            panic!("not a REP")
        };
        assert_eq!(param, "CHAN_NAME");
        assert_eq!(value.len(), 33, "31-char field plus braces");
        assert_eq!(text(&value), "Lead Vox");
    }

    // vector 4
    #[test]
    fn vector_4_gain_absolute_and_relative() {
        assert_eq!(
            Message::set(Some(1), "AUDIO_GAIN", "030").encode(),
            b"< SET 1 AUDIO_GAIN 030 >"
        );
        let Message::Rep { value, .. } = one("< REP 1 AUDIO_GAIN 030 >") else {
            panic!()
        };
        assert_eq!(
            number(&value).map(|n| n as i32 - 18),
            Ok(12),
            "030 = +12 dB"
        );
        assert_eq!(
            Message::set(Some(1), "AUDIO_GAIN", "INC 3").encode(),
            b"< SET 1 AUDIO_GAIN INC 3 >"
        );
        assert_eq!(
            one("< SET 1 AUDIO_GAIN INC 3 >"),
            Message::set(Some(1), "AUDIO_GAIN", "INC 3")
        );
        assert_eq!(
            one("< REP 1 AUDIO_GAIN 033 >"),
            rep(Some(1), "AUDIO_GAIN", "033")
        );
    }

    // vector 5
    #[test]
    fn vector_5_receiver_mute() {
        assert_eq!(
            Message::set(Some(1), "AUDIO_MUTE", "ON").encode(),
            b"< SET 1 AUDIO_MUTE ON >"
        );
        assert_eq!(
            one("< REP 1 AUDIO_MUTE ON >"),
            rep(Some(1), "AUDIO_MUTE", "ON")
        );
    }

    const ULXD: [SampleField; 3] = [SampleField::Antenna, SampleField::Rf, SampleField::Audio];
    const SLXD: [SampleField; 3] = [
        SampleField::AudioPeak,
        SampleField::AudioRms,
        SampleField::Rf,
    ];
    const AD: [SampleField; 9] = [
        SampleField::Skip,
        SampleField::Skip,
        SampleField::AudioPeak,
        SampleField::AudioRms,
        SampleField::Skip,
        SampleField::Skip,
        SampleField::Rssi,
        SampleField::Skip,
        SampleField::Rssi,
    ];

    // vector 6
    #[test]
    fn vector_6_metering_on_ulxd_sample() {
        assert_eq!(
            Message::set(Some(0), "METER_RATE", meter_rate(1000)).encode(),
            b"< SET 0 METER_RATE 01000 >"
        );
        assert_eq!(
            one("< REP 1 METER_RATE 01000 >"),
            rep(Some(1), "METER_RATE", "01000")
        );
        let Message::Sample { channel, fields } = one("< SAMPLE 1 ALL AX 098 040 >") else {
            panic!()
        };
        assert_eq!(channel, 1);
        let m = parse_sample(&fields, &ULXD, -128.0, -50.0).expect("sample");
        assert_eq!(m.rf_dbm, Some(-30.0));
        assert_eq!(m.audio_dbfs, Some(-10.0));
        assert_eq!(m.antenna, Some("AX"));
    }

    // vector 7
    #[test]
    fn vector_7_metering_off() {
        assert_eq!(
            Message::set(Some(0), "METER_RATE", meter_rate(0)).encode(),
            b"< SET 0 METER_RATE 00000 >"
        );
        let Message::Rep { value, .. } = one("< REP 1 METER_RATE 00000 >") else {
            panic!()
        };
        assert_eq!(number(&value), Ok(0));
    }

    // vector 8
    #[test]
    fn vector_8_slxd_sample() {
        let Message::Sample { fields, .. } = one("< SAMPLE 1 ALL 102 102 086 >") else {
            panic!()
        };
        let m = parse_sample(&fields, &SLXD, -120.0, -120.0).expect("sample");
        assert_eq!(m.audio_dbfs, Some(-18.0));
        assert_eq!(m.audio_rms_dbfs, Some(-18.0));
        assert_eq!(m.rf_dbm, Some(-34.0));
    }

    // vector 9
    #[test]
    fn vector_9_axient_sample() {
        let Message::Sample { fields, .. } =
            one("< SAMPLE 1 ALL 005 031 102 102 BB 31 086 31 065 >")
        else {
            panic!()
        };
        let m = parse_sample(&fields, &AD, -120.0, -120.0).expect("sample");
        assert_eq!(m.audio_dbfs, Some(-18.0));
        assert_eq!(m.audio_rms_dbfs, Some(-18.0));
        assert_eq!(m.rf_dbm, Some(-34.0), "strongest antenna (A −34, B −55)");
    }

    // vector 10
    #[test]
    fn vector_10_bad_parameter() {
        assert_eq!(
            Message::get(Some(1), "NOSUCHPARAM").encode(),
            b"< GET 1 NOSUCHPARAM >"
        );
        assert_eq!(one("< REP ERR >"), Message::Err);
    }

    // vector 11
    #[test]
    fn vector_11_device_level_parameter() {
        assert_eq!(Message::get(None, "FW_VER").encode(), b"< GET FW_VER >");
        let Message::Rep {
            channel,
            param,
            value,
        } = one("< REP FW_VER {2.0.15.2                } >")
        else {
            panic!()
        };
        assert_eq!((channel, param.as_str()), (None, "FW_VER"));
        assert_eq!(text(&value), "2.0.15.2");
    }

    #[test]
    fn unknown_words() {
        assert_eq!(known_word("UNKN"), None);
        assert_eq!(known_word("UNKNOWN"), None);
        assert_eq!(known_word("{          }"), None);
        assert_eq!(known_word("ULXD2"), Some("ULXD2".into()));
        assert_eq!(percent("255"), Ok(None));
        assert_eq!(count16("65535"), Ok(None));
        assert!(battery_bars("006").is_err());
        assert!(number("12a").is_err());
    }

    #[test]
    fn angle_brackets_inside_names_do_not_split() {
        assert_eq!(
            one("< REP 1 CHAN_NAME {A>B<C} >"),
            rep(Some(1), "CHAN_NAME", "{A>B<C}")
        );
    }

    #[test]
    fn garbage_is_skipped_and_reported() {
        let v = decode_all(b"xx\x00\xff< REP 1 BATT_BARS 003 >");
        assert_eq!(v[0], Err(ProtocolError::Garbage { skipped: 4 }));
        assert_eq!(v[1], Ok(rep(Some(1), "BATT_BARS", "003")));
        // A fragment followed by a whole frame: the fragment is garbage, the frame survives.
        let v = decode_all(b"< REP 1 BA< REP 1 BATT_BARS 003 >");
        assert!(matches!(v[0], Err(ProtocolError::Garbage { .. })));
        assert_eq!(v[1], Ok(rep(Some(1), "BATT_BARS", "003")));
        // Whitespace between frames is fine.
        let v = decode_all(b"< REP ERR >\r\n< REP ERR >");
        assert_eq!(v, vec![Ok(Message::Err), Ok(Message::Err)]);
        assert!(matches!(
            decode_all(b"< FOO 1 X >")[0],
            Err(ProtocolError::Malformed { .. })
        ));
        assert!(matches!(
            decode_all(b"< REP 1 bad_name 1 >")[0],
            Err(ProtocolError::Malformed { .. })
        ));
        assert!(matches!(
            decode_all(b"< REP 999 X 1 >")[0],
            Err(ProtocolError::Malformed { .. })
        ));
    }

    #[test]
    fn split_frame_waits_for_the_rest() {
        let mut codec = ShureCodec::new();
        let mut buf = BytesMut::from(&b"< REP 1 BATT_"[..]);
        assert_eq!(codec.decode(&mut buf), Ok(None));
        buf.extend_from_slice(b"BARS 002 >");
        assert_eq!(
            codec.decode(&mut buf),
            Ok(Some(rep(Some(1), "BATT_BARS", "002")))
        );
    }

    #[test]
    fn oversized_frame_is_dropped_to_its_end() {
        let mut codec = ShureCodec::new();
        let mut buf = BytesMut::new();
        buf.extend_from_slice(b"< REP 1 CHAN_NAME {");
        buf.extend_from_slice(&[b'A'; 600]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(ProtocolError::Oversized { .. })
        ));
        assert!(buf.is_empty());
        // The tail of the monster arrives in later reads and is silently dropped.
        buf.extend_from_slice(&[b'A'; 300]);
        assert_eq!(codec.decode(&mut buf), Ok(None));
        buf.extend_from_slice(b"} >< REP ERR >");
        assert_eq!(codec.decode(&mut buf), Ok(Some(Message::Err)));
    }

    proptest! {
        /// Any input, fed in any chunking: no panic, and the decoder never holds more than one
        /// frame's worth of bytes plus the chunk just added.
        #[test]
        fn never_panics_and_stays_bounded(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..20)
        ) {
            let mut codec = ShureCodec::new();
            let mut buf = BytesMut::new();
            for c in chunks {
                let n = c.len();
                buf.extend_from_slice(&c);
                for _ in 0..1000 {
                    if let Ok(None) = codec.decode(&mut buf) {
                        break;
                    }
                }
                prop_assert!(buf.len() <= MAX_FRAME + n);
                prop_assert!(buf.len() < MAX_FRAME);
            }
        }

        /// Whatever we encode, we decode back.
        #[test]
        fn roundtrip(ch in proptest::option::of(0u8..5), p in "[A-Z_]{1,20}", v in "[0-9]{1,5}") {
            for m in [Message::rep(ch, &p, v.clone()), Message::set(ch, &p, v.clone()), Message::get(ch, &p)] {
                if matches!(&m, Message::Rep { channel: None, param, .. } if param == "ERR") { continue; }
                let bytes = m.encode();
                let mut buf = BytesMut::from(&bytes[..]);
                prop_assert_eq!(ShureCodec::new().decode(&mut buf), Ok(Some(m)));
            }
        }
    }
}
