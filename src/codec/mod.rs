//! Sans-io framing and parsing, one module per wire protocol.
//!
//! Codecs are `tokio_util` `Decoder`/`Encoder`s and plain parse functions over bytes: no I/O, no
//! clocks, and no panics on any input (each decoder has a fuzz target). Vendor vocabulary lives
//! here and in the drivers; nothing above the driver layer sees it.

pub mod climate_json;
pub mod escvp21;
pub mod ha_discovery;
pub mod modbus;
pub mod modbus_map;
pub mod pjlink;
pub mod qrc;
pub mod shure;
pub mod ssc;
pub mod telnet;
pub mod tesira;

/// Input that does not follow the protocol. Counted and logged once per burst; never a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("frame of {got} bytes exceeds the {limit}-byte limit")]
    Oversized { limit: usize, got: usize },
    #[error("malformed frame: {detail}")]
    Malformed { detail: String },
    #[error("unexpected reply: expected {expected}, got {got}")]
    Unexpected { expected: String, got: String },
    #[error("skipped {skipped} bytes of garbage before a frame")]
    Garbage { skipped: usize },
    /// Only to satisfy `tokio_util`'s `Decoder` bound: codecs themselves do no I/O.
    #[error("i/o error: {detail}")]
    Io { detail: String },
}

impl From<std::io::Error> for ProtocolError {
    fn from(e: std::io::Error) -> Self {
        ProtocolError::Io {
            detail: e.to_string(),
        }
    }
}

impl ProtocolError {
    pub fn malformed(detail: impl Into<String>) -> Self {
        ProtocolError::Malformed {
            detail: detail.into(),
        }
    }
}

/// `tokio_util`'s `Decoder` requires it; a sans-io decoder never performs I/O, so this only
/// exists to satisfy the trait bound.
/// Render bytes for a log line or error: printable ASCII as is, the rest escaped, truncated.
pub fn printable(bytes: &[u8], max: usize) -> String {
    let mut s = String::new();
    for &b in bytes.iter().take(max) {
        match b {
            b'\r' => s.push_str("\\r"),
            b'\n' => s.push_str("\\n"),
            0x20..=0x7e => s.push(b as char),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    if bytes.len() > max {
        s.push('…');
    }
    s
}
