//! Modbus RTU framing (protocols.md 5.1): CRC-16/MODBUS, request and response ADUs, and
//! sans-io decoders for both directions.
//!
//! The HVAC driver's exchanges and our simulator both frame with this module: the driver
//! encodes requests, decodes replies, checks each reply against its request ([`match_reply`])
//! and says *why* an exchange failed (CRC error, truncated frame, garbage) from the bytes left
//! at its deadline; the simulator parses requests; the test vectors run through it.
//! It must not do I/O, and it never panics on any input: a frame is at most 256 bytes
//! ([`MAX_ADU`]), and anything that is not a frame is a [`ProtocolError`].

use bytes::{Buf, BytesMut};
use tokio_util::codec::Decoder;

use super::{printable, ProtocolError};

/// The largest RTU ADU: address, PDU (≤ 253) and CRC (protocols.md 5.1).
pub const MAX_ADU: usize = 256;

/// Exception responses set the top bit of the function code (protocols.md 5.1).
pub const EXCEPTION_BIT: u8 = 0x80;

/// CRC-16/MODBUS: reflected polynomial 0xA001, initial value 0xFFFF, no final XOR
/// (protocols.md 5.1). Check value of ASCII `123456789` is 0x4B37.
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &b in data {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// Append the CRC, low byte first (protocols.md 5.1).
pub fn append_crc(frame: &mut Vec<u8>) {
    let crc = crc16(frame);
    frame.extend_from_slice(&crc.to_le_bytes());
}

/// Whether a complete ADU (address … CRC) carries a correct CRC.
pub fn crc_ok(adu: &[u8]) -> bool {
    adu.len() >= 4 && {
        let (body, tail) = adu.split_at(adu.len() - 2);
        crc16(body).to_le_bytes() == [tail[0], tail[1]]
    }
}

/// Modbus exception codes (protocols.md 5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExceptionCode {
    IllegalFunction,
    IllegalDataAddress,
    IllegalDataValue,
    ServerDeviceFailure,
    Other(u8),
}

impl ExceptionCode {
    pub fn from_u8(code: u8) -> Self {
        match code {
            1 => ExceptionCode::IllegalFunction,
            2 => ExceptionCode::IllegalDataAddress,
            3 => ExceptionCode::IllegalDataValue,
            4 => ExceptionCode::ServerDeviceFailure,
            n => ExceptionCode::Other(n),
        }
    }

    pub fn as_u8(self) -> u8 {
        match self {
            ExceptionCode::IllegalFunction => 1,
            ExceptionCode::IllegalDataAddress => 2,
            ExceptionCode::IllegalDataValue => 3,
            ExceptionCode::ServerDeviceFailure => 4,
            ExceptionCode::Other(n) => n,
        }
    }

    pub fn describe(self) -> String {
        match self {
            ExceptionCode::IllegalFunction => "01 illegal function".to_owned(),
            ExceptionCode::IllegalDataAddress => "02 illegal data address".to_owned(),
            ExceptionCode::IllegalDataValue => "03 illegal data value".to_owned(),
            ExceptionCode::ServerDeviceFailure => "04 server device failure".to_owned(),
            ExceptionCode::Other(5) => "05 acknowledge (still processing)".to_owned(),
            ExceptionCode::Other(6) => "06 server device busy".to_owned(),
            ExceptionCode::Other(n) => format!("{n:02X} (vendor-specific)"),
        }
    }
}

/// A request PDU. Addresses are 0-based PDU addresses (protocols.md 5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestPdu {
    ReadCoils { address: u16, count: u16 },
    ReadDiscreteInputs { address: u16, count: u16 },
    ReadHoldingRegisters { address: u16, count: u16 },
    ReadInputRegisters { address: u16, count: u16 },
    WriteSingleCoil { address: u16, on: bool },
    WriteSingleRegister { address: u16, value: u16 },
    WriteMultipleCoils { address: u16, values: Vec<bool> },
    WriteMultipleRegisters { address: u16, values: Vec<u16> },
}

impl RequestPdu {
    pub fn function_code(&self) -> u8 {
        match self {
            RequestPdu::ReadCoils { .. } => 0x01,
            RequestPdu::ReadDiscreteInputs { .. } => 0x02,
            RequestPdu::ReadHoldingRegisters { .. } => 0x03,
            RequestPdu::ReadInputRegisters { .. } => 0x04,
            RequestPdu::WriteSingleCoil { .. } => 0x05,
            RequestPdu::WriteSingleRegister { .. } => 0x06,
            RequestPdu::WriteMultipleCoils { .. } => 0x0F,
            RequestPdu::WriteMultipleRegisters { .. } => 0x10,
        }
    }
}

/// A request addressed to one slave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub slave: u8,
    pub pdu: RequestPdu,
}

impl Request {
    /// The complete ADU with CRC.
    pub fn encode(&self) -> Vec<u8> {
        let mut f = vec![self.slave, self.pdu.function_code()];
        match &self.pdu {
            RequestPdu::ReadCoils { address, count }
            | RequestPdu::ReadDiscreteInputs { address, count }
            | RequestPdu::ReadHoldingRegisters { address, count }
            | RequestPdu::ReadInputRegisters { address, count } => {
                f.extend_from_slice(&address.to_be_bytes());
                f.extend_from_slice(&count.to_be_bytes());
            }
            RequestPdu::WriteSingleCoil { address, on } => {
                f.extend_from_slice(&address.to_be_bytes());
                f.extend_from_slice(if *on { &[0xFF, 0x00] } else { &[0x00, 0x00] });
            }
            RequestPdu::WriteSingleRegister { address, value } => {
                f.extend_from_slice(&address.to_be_bytes());
                f.extend_from_slice(&value.to_be_bytes());
            }
            RequestPdu::WriteMultipleCoils { address, values } => {
                f.extend_from_slice(&address.to_be_bytes());
                f.extend_from_slice(&(values.len() as u16).to_be_bytes());
                let bytes = pack_bits(values);
                f.push(bytes.len() as u8);
                f.extend_from_slice(&bytes);
            }
            RequestPdu::WriteMultipleRegisters { address, values } => {
                f.extend_from_slice(&address.to_be_bytes());
                f.extend_from_slice(&(values.len() as u16).to_be_bytes());
                f.push((values.len() * 2) as u8);
                for v in values {
                    f.extend_from_slice(&v.to_be_bytes());
                }
            }
        }
        append_crc(&mut f);
        f
    }
}

/// A response PDU as a server sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponsePdu {
    /// FC01/FC02: bits, padded to whole bytes (the requester knows how many it asked for).
    Bits {
        function: u8,
        bits: Vec<bool>,
    },
    /// FC03/FC04.
    Registers {
        function: u8,
        values: Vec<u16>,
    },
    /// FC05 echo.
    WriteSingleCoil {
        address: u16,
        on: bool,
    },
    /// FC06 echo.
    WriteSingleRegister {
        address: u16,
        value: u16,
    },
    /// FC0F/FC10: address and quantity written.
    WriteMultiple {
        function: u8,
        address: u16,
        count: u16,
    },
    Exception {
        function: u8,
        code: ExceptionCode,
    },
}

impl ResponsePdu {
    pub fn function_code(&self) -> u8 {
        match self {
            ResponsePdu::Bits { function, .. }
            | ResponsePdu::Registers { function, .. }
            | ResponsePdu::WriteMultiple { function, .. } => *function,
            ResponsePdu::WriteSingleCoil { .. } => 0x05,
            ResponsePdu::WriteSingleRegister { .. } => 0x06,
            ResponsePdu::Exception { function, .. } => function | EXCEPTION_BIT,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub slave: u8,
    pub pdu: ResponsePdu,
}

impl Response {
    /// The complete ADU with CRC.
    pub fn encode(&self) -> Vec<u8> {
        let mut f = vec![self.slave, self.pdu.function_code()];
        match &self.pdu {
            ResponsePdu::Bits { bits, .. } => {
                let bytes = pack_bits(bits);
                f.push(bytes.len() as u8);
                f.extend_from_slice(&bytes);
            }
            ResponsePdu::Registers { values, .. } => {
                f.push((values.len() * 2) as u8);
                for v in values {
                    f.extend_from_slice(&v.to_be_bytes());
                }
            }
            ResponsePdu::WriteSingleCoil { address, on } => {
                f.extend_from_slice(&address.to_be_bytes());
                f.extend_from_slice(if *on { &[0xFF, 0x00] } else { &[0x00, 0x00] });
            }
            ResponsePdu::WriteSingleRegister { address, value } => {
                f.extend_from_slice(&address.to_be_bytes());
                f.extend_from_slice(&value.to_be_bytes());
            }
            ResponsePdu::WriteMultiple { address, count, .. } => {
                f.extend_from_slice(&address.to_be_bytes());
                f.extend_from_slice(&count.to_be_bytes());
            }
            ResponsePdu::Exception { code, .. } => f.push(code.as_u8()),
        }
        append_crc(&mut f);
        f
    }
}

fn pack_bits(bits: &[bool]) -> Vec<u8> {
    let mut out = vec![0u8; bits.len().div_ceil(8)];
    for (i, &b) in bits.iter().enumerate() {
        if b {
            out[i / 8] |= 1 << (i % 8);
        }
    }
    out
}

fn unpack_bits(bytes: &[u8]) -> Vec<bool> {
    bytes
        .iter()
        .flat_map(|b| (0..8).map(move |i| b & (1 << i) != 0))
        .collect()
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// What a buffer holds at its start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scan<T> {
    /// Not enough bytes yet; `need` is the total ADU length once known.
    Incomplete { have: usize, need: Option<usize> },
    /// A valid frame of `len` bytes.
    Frame { len: usize, frame: T },
    /// Not a frame: the function code is unknown, a length is impossible, or the CRC is wrong.
    Invalid(FrameError),
}

/// Why the bytes at the start of a buffer are not a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    UnknownFunction(u8),
    BadLength { detail: String },
    BadCrc { len: usize },
}

impl FrameError {
    pub fn to_protocol(&self, bytes: &[u8]) -> ProtocolError {
        match self {
            FrameError::UnknownFunction(fc) => ProtocolError::malformed(format!(
                "unknown function code 0x{fc:02X} in {}",
                hex_preview(bytes)
            )),
            FrameError::BadLength { detail } => ProtocolError::malformed(detail.clone()),
            FrameError::BadCrc { len } => ProtocolError::malformed(format!(
                "crc mismatch in {len}-byte frame {}",
                hex_preview(&bytes[..(*len).min(bytes.len())])
            )),
        }
    }
}

/// Hex for a log line, bounded.
pub fn hex_preview(bytes: &[u8]) -> String {
    let shown: Vec<String> = bytes.iter().take(32).map(|b| format!("{b:02X}")).collect();
    let mut s = shown.join(" ");
    if bytes.len() > 32 {
        s.push_str(" …");
    }
    s
}

/// Total ADU length of the request starting the buffer, if it can be known yet.
fn request_len(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    let Some(&fc) = buf.get(1) else {
        return Ok(None);
    };
    Ok(Some(match fc {
        0x01..=0x06 => 8,
        0x0F | 0x10 => match buf.get(6) {
            Some(&n) => 9 + usize::from(n),
            None => return Ok(None),
        },
        other => return Err(FrameError::UnknownFunction(other)),
    }))
}

/// Total ADU length of the response starting the buffer, if it can be known yet.
fn response_len(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    let Some(&fc) = buf.get(1) else {
        return Ok(None);
    };
    Ok(Some(match fc {
        0x01..=0x04 => match buf.get(2) {
            Some(&n) => 5 + usize::from(n),
            None => return Ok(None),
        },
        0x05 | 0x06 | 0x0F | 0x10 => 8,
        0x81..=0x84 | 0x85 | 0x86 | 0x8F | 0x90 => 5,
        other => return Err(FrameError::UnknownFunction(other)),
    }))
}

fn parse_request(adu: &[u8]) -> Result<Request, FrameError> {
    let slave = adu[0];
    let fc = adu[1];
    let address = be16(adu, 2);
    let pdu = match fc {
        0x01..=0x04 => {
            let count = be16(adu, 4);
            let limit = if fc <= 2 { 2000 } else { 125 };
            if count == 0 || count > limit {
                return Err(FrameError::BadLength {
                    detail: format!("read of {count} items (function 0x{fc:02X}, limit {limit})"),
                });
            }
            match fc {
                0x01 => RequestPdu::ReadCoils { address, count },
                0x02 => RequestPdu::ReadDiscreteInputs { address, count },
                0x03 => RequestPdu::ReadHoldingRegisters { address, count },
                _ => RequestPdu::ReadInputRegisters { address, count },
            }
        }
        0x05 => {
            let on = match be16(adu, 4) {
                0xFF00 => true,
                0x0000 => false,
                v => {
                    return Err(FrameError::BadLength {
                        detail: format!("coil value 0x{v:04X} is neither FF00 nor 0000"),
                    })
                }
            };
            RequestPdu::WriteSingleCoil { address, on }
        }
        0x06 => RequestPdu::WriteSingleRegister {
            address,
            value: be16(adu, 4),
        },
        0x0F => {
            let count = usize::from(be16(adu, 4));
            let n = usize::from(adu[6]);
            if count == 0 || count.div_ceil(8) != n {
                return Err(FrameError::BadLength {
                    detail: format!("write of {count} coils with {n} data bytes"),
                });
            }
            let mut values = unpack_bits(&adu[7..7 + n]);
            values.truncate(count);
            RequestPdu::WriteMultipleCoils { address, values }
        }
        0x10 => {
            let count = usize::from(be16(adu, 4));
            let n = usize::from(adu[6]);
            if count == 0 || count > 123 || count * 2 != n {
                return Err(FrameError::BadLength {
                    detail: format!("write of {count} registers with {n} data bytes"),
                });
            }
            let values = (0..count).map(|i| be16(adu, 7 + 2 * i)).collect();
            RequestPdu::WriteMultipleRegisters { address, values }
        }
        other => return Err(FrameError::UnknownFunction(other)),
    };
    Ok(Request { slave, pdu })
}

fn parse_response(adu: &[u8]) -> Result<Response, FrameError> {
    let slave = adu[0];
    let fc = adu[1];
    let pdu = match fc {
        0x01 | 0x02 => ResponsePdu::Bits {
            function: fc,
            bits: unpack_bits(&adu[3..adu.len() - 2]),
        },
        0x03 | 0x04 => {
            let n = usize::from(adu[2]);
            if n % 2 != 0 {
                return Err(FrameError::BadLength {
                    detail: format!("register reply with odd byte count {n}"),
                });
            }
            ResponsePdu::Registers {
                function: fc,
                values: (0..n / 2).map(|i| be16(adu, 3 + 2 * i)).collect(),
            }
        }
        0x05 => ResponsePdu::WriteSingleCoil {
            address: be16(adu, 2),
            on: be16(adu, 4) == 0xFF00,
        },
        0x06 => ResponsePdu::WriteSingleRegister {
            address: be16(adu, 2),
            value: be16(adu, 4),
        },
        0x0F | 0x10 => ResponsePdu::WriteMultiple {
            function: fc,
            address: be16(adu, 2),
            count: be16(adu, 4),
        },
        f if f & EXCEPTION_BIT != 0 => ResponsePdu::Exception {
            function: f & !EXCEPTION_BIT,
            code: ExceptionCode::from_u8(adu[2]),
        },
        other => return Err(FrameError::UnknownFunction(other)),
    };
    Ok(Response { slave, pdu })
}

fn scan<T>(
    buf: &[u8],
    len_of: fn(&[u8]) -> Result<Option<usize>, FrameError>,
    parse: fn(&[u8]) -> Result<T, FrameError>,
) -> Scan<T> {
    let need = match len_of(buf) {
        Err(e) => return Scan::Invalid(e),
        Ok(n) => n,
    };
    match need {
        Some(n) if n > MAX_ADU => Scan::Invalid(FrameError::BadLength {
            detail: format!("declared frame length {n} exceeds {MAX_ADU}"),
        }),
        Some(n) if buf.len() >= n => {
            let adu = &buf[..n];
            if !crc_ok(adu) {
                return Scan::Invalid(FrameError::BadCrc { len: n });
            }
            match parse(adu) {
                Ok(frame) => Scan::Frame { len: n, frame },
                Err(e) => Scan::Invalid(e),
            }
        }
        need => Scan::Incomplete {
            have: buf.len(),
            need,
        },
    }
}

/// Look at the request at the start of `buf` (server side).
pub fn scan_request(buf: &[u8]) -> Scan<Request> {
    scan(buf, request_len, parse_request)
}

/// Look at the response at the start of `buf` (client side).
pub fn scan_response(buf: &[u8]) -> Scan<Response> {
    scan(buf, response_len, parse_response)
}

/// Why the bytes a client received for one request were not a usable reply. Used to name the
/// failure of an exchange that timed out or did not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyDiagnosis {
    /// Nothing arrived: a timeout in the plain sense.
    Silence,
    /// Part of a frame arrived and then nothing more.
    Truncated { have: usize, need: Option<usize> },
    /// A frame of the right length arrived with a wrong CRC (line noise, wrong parity).
    BadCrc { len: usize },
    /// Bytes that are not a Modbus response at all (wrong baud rate, another protocol).
    Garbage { detail: String },
    /// A complete, valid response (possibly for another slave or function).
    Valid(Response),
}

impl ReplyDiagnosis {
    /// The protocol error to count for this diagnosis (none for silence or a valid frame).
    pub fn to_error(&self, bytes: &[u8]) -> Option<ProtocolError> {
        match self {
            ReplyDiagnosis::Silence | ReplyDiagnosis::Valid(_) => None,
            ReplyDiagnosis::Truncated { have, need } => Some(ProtocolError::malformed(format!(
                "truncated frame: {have} of {} bytes ({})",
                need.map_or_else(|| "?".to_owned(), |n| n.to_string()),
                hex_preview(bytes)
            ))),
            ReplyDiagnosis::BadCrc { len } => {
                Some(FrameError::BadCrc { len: *len }.to_protocol(bytes))
            }
            ReplyDiagnosis::Garbage { detail } => Some(ProtocolError::malformed(format!(
                "not a modbus reply ({detail}): {}",
                hex_preview(bytes)
            ))),
        }
    }
}

/// Classify the bytes received in answer to one request.
pub fn diagnose_reply(bytes: &[u8]) -> ReplyDiagnosis {
    if bytes.is_empty() {
        return ReplyDiagnosis::Silence;
    }
    match scan_response(bytes) {
        Scan::Frame { frame, .. } => ReplyDiagnosis::Valid(frame),
        Scan::Incomplete { have, need } => ReplyDiagnosis::Truncated { have, need },
        Scan::Invalid(FrameError::BadCrc { len }) => ReplyDiagnosis::BadCrc { len },
        Scan::Invalid(FrameError::UnknownFunction(fc)) => ReplyDiagnosis::Garbage {
            detail: format!("function code 0x{fc:02X}"),
        },
        Scan::Invalid(FrameError::BadLength { detail }) => ReplyDiagnosis::Garbage { detail },
    }
}

/// What a response is to the request it follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyMatch {
    /// The answer: same unit, same function, the count or echo the request asks for.
    Answer,
    /// The unit refused the request with an exception.
    Exception(ExceptionCode),
    /// Another unit's frame (a bus shared with another master, or a late reply of another
    /// unit): not ours, and not an answer.
    Foreign,
    /// Our unit answered something that does not fit the request.
    Mismatch(ProtocolError),
}

/// Check a response against its request: unit id, function code, then the byte count of a
/// read or the echo of a write (protocols.md 5.1), as tokio-modbus's client does.
pub fn match_reply(req: &Request, resp: &Response) -> ReplyMatch {
    if resp.slave != req.slave {
        return ReplyMatch::Foreign;
    }
    let function = req.pdu.function_code();
    let mismatch = |what: &str| {
        ReplyMatch::Mismatch(ProtocolError::Unexpected {
            expected: format!("{what} for function 0x{function:02X}"),
            got: format!("{:?}", resp.pdu),
        })
    };
    let fits = match (&req.pdu, &resp.pdu) {
        (_, ResponsePdu::Exception { function: f, code }) if *f == function => {
            return ReplyMatch::Exception(*code)
        }
        (
            RequestPdu::ReadCoils { count, .. } | RequestPdu::ReadDiscreteInputs { count, .. },
            ResponsePdu::Bits { function: f, bits },
        ) => *f == function && bits.len() == usize::from(*count).div_ceil(8) * 8,
        (
            RequestPdu::ReadHoldingRegisters { count, .. }
            | RequestPdu::ReadInputRegisters { count, .. },
            ResponsePdu::Registers {
                function: f,
                values,
            },
        ) => *f == function && values.len() == usize::from(*count),
        (
            RequestPdu::WriteSingleCoil { address, on },
            ResponsePdu::WriteSingleCoil { address: a, on: o },
        ) => address == a && on == o,
        (
            RequestPdu::WriteSingleRegister { address, value },
            ResponsePdu::WriteSingleRegister {
                address: a,
                value: v,
            },
        ) => address == a && value == v,
        (
            RequestPdu::WriteMultipleCoils { address, values },
            ResponsePdu::WriteMultiple {
                function: f,
                address: a,
                count,
            },
        ) => *f == function && address == a && usize::from(*count) == values.len(),
        (
            RequestPdu::WriteMultipleRegisters { address, values },
            ResponsePdu::WriteMultiple {
                function: f,
                address: a,
                count,
            },
        ) => *f == function && address == a && usize::from(*count) == values.len(),
        _ => false,
    };
    if fits {
        ReplyMatch::Answer
    } else {
        mismatch("the count or echo the request asks")
    }
}

/// Sans-io request decoder (server side). On bytes that are not a frame it drops one byte and
/// returns the error, so the caller can count it and keep reading; the RTU rule (a corrupt
/// frame is discarded whole, the next starts after silence) is applied by the caller, which
/// sees the gaps.
#[derive(Debug, Default)]
pub struct RequestDecoder;

impl Decoder for RequestDecoder {
    type Item = Request;
    type Error = ProtocolError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Request>, ProtocolError> {
        decode_with(buf, scan_request)
    }
}

/// Sans-io response decoder (client side), same resynchronisation as [`RequestDecoder`].
#[derive(Debug, Default)]
pub struct ResponseDecoder;

impl Decoder for ResponseDecoder {
    type Item = Response;
    type Error = ProtocolError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Response>, ProtocolError> {
        decode_with(buf, scan_response)
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Response>, ProtocolError> {
        match self.decode(buf)? {
            Some(f) => Ok(Some(f)),
            None if buf.is_empty() => Ok(None),
            None => {
                let n = buf.len();
                let err = ProtocolError::malformed(format!(
                    "truncated frame at end of input: {}",
                    printable(buf, 32)
                ));
                buf.advance(n);
                Err(err)
            }
        }
    }
}

/// The client's decoder for one exchange: resynchronises like [`ResponseDecoder`], but keeps
/// only the first error ([`ExchangeDecoder::take_error`]) and drops later bytes quietly.
/// Bytes dropped one at a time would otherwise be one error each (a formatted message per
/// byte of a garbage burst), while the exchange has one bad reply to report.
#[derive(Debug, Default)]
pub struct ExchangeDecoder {
    first_error: Option<ProtocolError>,
}

impl ExchangeDecoder {
    /// The first error since the decoder was made or last asked.
    pub fn take_error(&mut self) -> Option<ProtocolError> {
        self.first_error.take()
    }
}

impl Decoder for ExchangeDecoder {
    type Item = Response;
    type Error = ProtocolError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Response>, ProtocolError> {
        loop {
            match scan_response(buf) {
                Scan::Incomplete { .. } => return Ok(None),
                Scan::Frame { len, frame } => {
                    buf.advance(len);
                    return Ok(Some(frame));
                }
                Scan::Invalid(e) => {
                    if self.first_error.is_none() {
                        self.first_error = Some(e.to_protocol(buf));
                    }
                    buf.advance(1);
                }
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Response>, ProtocolError> {
        ResponseDecoder.decode_eof(buf)
    }
}

fn decode_with<T>(
    buf: &mut BytesMut,
    scan: fn(&[u8]) -> Scan<T>,
) -> Result<Option<T>, ProtocolError> {
    match scan(buf) {
        Scan::Incomplete { .. } => Ok(None),
        Scan::Frame { len, frame } => {
            buf.advance(len);
            Ok(Some(frame))
        }
        Scan::Invalid(e) => {
            let err = e.to_protocol(buf);
            buf.advance(1);
            Err(err)
        }
    }
}

/// Inter-frame silence (t3.5) for a baud rate: 3.5 characters of 11 bits, fixed at 1.75 ms
/// above 19200 bps (protocols.md 5.1).
pub fn silent_interval(baud: u32) -> std::time::Duration {
    if baud == 0 || baud > 19_200 {
        return std::time::Duration::from_micros(1750);
    }
    std::time::Duration::from_micros((38_500_000u64).div_ceil(u64::from(baud)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parse a protocols.md hex line.
    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    }

    #[test]
    fn crc_check_value() {
        assert_eq!(crc16(b"123456789"), 0x4B37);
    }

    fn req(slave: u8, pdu: RequestPdu) -> Request {
        Request { slave, pdu }
    }

    // Every Modbus vector of protocols.md 5.1, both ways: encode equals the bytes, and the
    // bytes decode to the same frame.
    #[test]
    fn vectors_requests() {
        let cases = [
            (
                "01 03 00 00 00 0A C5 CD",
                req(
                    1,
                    RequestPdu::ReadHoldingRegisters {
                        address: 0,
                        count: 10,
                    },
                ),
            ),
            (
                "01 03 00 00 00 01 84 0A",
                req(
                    1,
                    RequestPdu::ReadHoldingRegisters {
                        address: 0,
                        count: 1,
                    },
                ),
            ),
            (
                "01 03 00 00 00 04 44 09",
                req(
                    1,
                    RequestPdu::ReadHoldingRegisters {
                        address: 0,
                        count: 4,
                    },
                ),
            ),
            (
                "01 04 00 00 00 01 31 CA",
                req(
                    1,
                    RequestPdu::ReadInputRegisters {
                        address: 0,
                        count: 1,
                    },
                ),
            ),
            (
                "01 06 00 01 00 DC D9 93",
                req(
                    1,
                    RequestPdu::WriteSingleRegister {
                        address: 1,
                        value: 0x00DC,
                    },
                ),
            ),
            (
                "01 05 00 00 FF 00 8C 3A",
                req(
                    1,
                    RequestPdu::WriteSingleCoil {
                        address: 0,
                        on: true,
                    },
                ),
            ),
            (
                "01 05 00 00 00 00 CD CA",
                req(
                    1,
                    RequestPdu::WriteSingleCoil {
                        address: 0,
                        on: false,
                    },
                ),
            ),
        ];
        for (wire, r) in cases {
            let bytes = hex(wire);
            assert_eq!(r.encode(), bytes, "encode {wire}");
            let mut buf = BytesMut::from(&bytes[..]);
            assert_eq!(
                RequestDecoder.decode(&mut buf).unwrap(),
                Some(r),
                "decode {wire}"
            );
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn vectors_responses() {
        let resp = |pdu| Response { slave: 1, pdu };
        let cases = [
            (
                "01 03 02 00 E1 78 0C",
                resp(ResponsePdu::Registers {
                    function: 3,
                    values: vec![0x00E1],
                }),
            ),
            (
                "01 03 08 00 E1 00 D2 00 01 00 02 0C CA",
                resp(ResponsePdu::Registers {
                    function: 3,
                    values: vec![225, 210, 1, 2],
                }),
            ),
            (
                "01 04 02 00 E1 79 78",
                resp(ResponsePdu::Registers {
                    function: 4,
                    values: vec![225],
                }),
            ),
            (
                "01 06 00 01 00 DC D9 93",
                resp(ResponsePdu::WriteSingleRegister {
                    address: 1,
                    value: 0xDC,
                }),
            ),
            (
                "01 05 00 00 FF 00 8C 3A",
                resp(ResponsePdu::WriteSingleCoil {
                    address: 0,
                    on: true,
                }),
            ),
            (
                "01 05 00 00 00 00 CD CA",
                resp(ResponsePdu::WriteSingleCoil {
                    address: 0,
                    on: false,
                }),
            ),
            (
                "01 83 02 C0 F1",
                resp(ResponsePdu::Exception {
                    function: 3,
                    code: ExceptionCode::IllegalDataAddress,
                }),
            ),
        ];
        for (wire, r) in cases {
            let bytes = hex(wire);
            assert_eq!(r.encode(), bytes, "encode {wire}");
            let mut buf = BytesMut::from(&bytes[..]);
            assert_eq!(
                ResponseDecoder.decode(&mut buf).unwrap(),
                Some(r),
                "decode {wire}"
            );
            assert!(buf.is_empty());
        }
        // 0x00E1 = 225 → 22.5 °C at ×10 (protocols.md 5.1).
        assert_eq!(f64::from(0x00E1u16) * 0.1, 22.5);
    }

    #[test]
    fn diagnoses_failed_replies() {
        assert_eq!(diagnose_reply(&[]), ReplyDiagnosis::Silence);
        let good = hex("01 03 02 00 E1 78 0C");
        assert!(matches!(diagnose_reply(&good), ReplyDiagnosis::Valid(_)));
        assert_eq!(
            diagnose_reply(&good[..5]),
            ReplyDiagnosis::Truncated {
                have: 5,
                need: Some(7)
            }
        );
        assert_eq!(
            diagnose_reply(&good[..1]),
            ReplyDiagnosis::Truncated {
                have: 1,
                need: None
            }
        );
        let mut bad = good.clone();
        bad[4] ^= 0x01;
        assert_eq!(diagnose_reply(&bad), ReplyDiagnosis::BadCrc { len: 7 });
        assert!(diagnose_reply(&bad)
            .to_error(&bad)
            .unwrap()
            .to_string()
            .contains("crc mismatch"));
        assert!(matches!(
            diagnose_reply(b"\x01\x42hello"),
            ReplyDiagnosis::Garbage { .. }
        ));
    }

    #[test]
    fn decoder_resynchronises_after_garbage() {
        let mut buf = BytesMut::from(&b"\xff\x77"[..]);
        buf.extend_from_slice(&hex("01 03 00 00 00 01 84 0A"));
        let mut dec = RequestDecoder;
        let mut errors = 0;
        let frame = loop {
            match dec.decode(&mut buf) {
                Ok(Some(f)) => break f,
                Ok(None) => panic!("stalled with {buf:?}"),
                Err(_) => errors += 1,
            }
        };
        assert_eq!(errors, 2);
        assert_eq!(
            frame.pdu,
            RequestPdu::ReadHoldingRegisters {
                address: 0,
                count: 1
            }
        );
    }

    #[test]
    fn truncated_frames_wait_then_fail_at_eof() {
        let bytes = hex("01 03 08 00 E1 00 D2 00 01 00 02 0C CA");
        for cut in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..cut]);
            assert_eq!(ResponseDecoder.decode(&mut buf).unwrap(), None, "cut {cut}");
            if cut > 0 {
                assert!(ResponseDecoder.decode_eof(&mut buf).is_err());
                assert!(buf.is_empty());
            }
        }
    }

    #[test]
    fn silent_interval_per_spec() {
        assert_eq!(
            silent_interval(9600),
            std::time::Duration::from_micros(4011)
        );
        assert_eq!(
            silent_interval(115_200),
            std::time::Duration::from_micros(1750)
        );
    }

    proptest::proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let mut buf = BytesMut::from(&bytes[..]);
            let mut dec = ResponseDecoder;
            // Each step consumes at least one byte or stops: bounded.
            for _ in 0..=bytes.len() {
                if let Ok(None) = dec.decode(&mut buf) {
                    break;
                }
            }
            let mut buf = BytesMut::from(&bytes[..]);
            let mut dec = RequestDecoder;
            for _ in 0..=bytes.len() {
                if let Ok(None) = dec.decode(&mut buf) {
                    break;
                }
            }
            let _ = diagnose_reply(&bytes);
        }

        #[test]
        fn request_roundtrip(slave in 1u8..=247, address in proptest::prelude::any::<u16>(), values in proptest::collection::vec(proptest::prelude::any::<u16>(), 1..=123)) {
            let r = Request { slave, pdu: RequestPdu::WriteMultipleRegisters { address, values } };
            let mut buf = BytesMut::from(&r.encode()[..]);
            proptest::prop_assert_eq!(RequestDecoder.decode(&mut buf).unwrap(), Some(r));
        }
    }

    #[test]
    fn a_reply_is_matched_against_its_request() {
        let read = Request {
            slave: 1,
            pdu: RequestPdu::ReadHoldingRegisters {
                address: 0,
                count: 1,
            },
        };
        let regs = |slave, function, values: Vec<u16>| Response {
            slave,
            pdu: ResponsePdu::Registers { function, values },
        };
        assert_eq!(match_reply(&read, &regs(1, 3, vec![7])), ReplyMatch::Answer);
        assert_eq!(
            match_reply(&read, &regs(2, 3, vec![7])),
            ReplyMatch::Foreign
        );
        assert!(matches!(
            match_reply(&read, &regs(1, 4, vec![7])),
            ReplyMatch::Mismatch(_)
        ));
        assert!(matches!(
            match_reply(&read, &regs(1, 3, vec![7, 8])),
            ReplyMatch::Mismatch(_)
        ));
        let exception = |function| Response {
            slave: 1,
            pdu: ResponsePdu::Exception {
                function,
                code: ExceptionCode::ServerDeviceFailure,
            },
        };
        assert_eq!(
            match_reply(&read, &exception(3)),
            ReplyMatch::Exception(ExceptionCode::ServerDeviceFailure)
        );
        assert!(matches!(
            match_reply(&read, &exception(6)),
            ReplyMatch::Mismatch(_)
        ));

        let write = Request {
            slave: 1,
            pdu: RequestPdu::WriteSingleRegister {
                address: 5,
                value: 210,
            },
        };
        let echo = |value| Response {
            slave: 1,
            pdu: ResponsePdu::WriteSingleRegister { address: 5, value },
        };
        assert_eq!(match_reply(&write, &echo(210)), ReplyMatch::Answer);
        assert!(matches!(
            match_reply(&write, &echo(200)),
            ReplyMatch::Mismatch(_)
        ));
        let coils = Request {
            slave: 1,
            pdu: RequestPdu::ReadCoils {
                address: 0,
                count: 1,
            },
        };
        let bits = Response {
            slave: 1,
            pdu: ResponsePdu::Bits {
                function: 1,
                bits: vec![true, false, false, false, false, false, false, false],
            },
        };
        assert_eq!(match_reply(&coils, &bits), ReplyMatch::Answer);
    }

    #[test]
    fn an_exchange_decoder_keeps_the_first_error_and_finds_the_frame_after_noise() {
        let reply = Response {
            slave: 1,
            pdu: ResponsePdu::Registers {
                function: 3,
                values: vec![42],
            },
        }
        .encode();
        let mut d = ExchangeDecoder::default();
        let mut buf = BytesMut::from(&b"\x7f\xfe garbage \xff"[..]);
        buf.extend_from_slice(&reply);
        let frame = d
            .decode(&mut buf)
            .unwrap()
            .expect("the reply after the noise");
        assert_eq!(frame.slave, 1);
        assert!(buf.is_empty());
        assert!(d.take_error().is_some(), "the noise is one error");
        assert!(d.take_error().is_none(), "and only one");

        // A truncated frame is no error yet: it waits for more (the exchange's deadline
        // diagnoses it).
        let mut half = BytesMut::from(&reply[..reply.len() / 2]);
        assert!(d.decode(&mut half).unwrap().is_none());
        assert!(d.take_error().is_none());
        assert_eq!(half.len(), reply.len() / 2);
    }
}
