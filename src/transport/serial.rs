//! Serial links (RS-232 / RS-485 adapters, and pseudo-terminals in tests) through tokio-serial.
//!
//! Opened exclusively (TIOCEXCL) so a second process cannot interleave bytes, and stale input
//! left in the kernel buffer by a previous session is discarded on open, so the first reply we
//! parse is an answer to our first request.

use std::fmt;
use std::time::Duration;

use tokio_serial::{ClearBuffer, SerialPort, SerialPortBuilderExt, SerialStream};

use super::{Stream, TransportError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parity {
    None,
    Even,
    Odd,
}

impl fmt::Display for Parity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Parity::None => "N",
            Parity::Even => "E",
            Parity::Odd => "O",
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SerialSpec {
    pub path: String,
    pub baud: u32,
    pub data_bits: u8,
    pub parity: Parity,
    pub stop_bits: u8,
}

impl SerialSpec {
    pub fn new(path: impl Into<String>, baud: u32) -> Self {
        Self {
            path: path.into(),
            baud,
            data_bits: 8,
            parity: Parity::None,
            stop_bits: 1,
        }
    }
    /// `9600 8N1` style.
    pub fn settings(&self) -> String {
        format!(
            "{} {}{}{}",
            self.baud, self.data_bits, self.parity, self.stop_bits
        )
    }
}

pub fn open(spec: &SerialSpec) -> Result<Stream, TransportError> {
    let err = |reason: String| TransportError::SerialOpen {
        path: spec.path.clone(),
        reason,
    };
    let data_bits = match spec.data_bits {
        5 => tokio_serial::DataBits::Five,
        6 => tokio_serial::DataBits::Six,
        7 => tokio_serial::DataBits::Seven,
        8 => tokio_serial::DataBits::Eight,
        n => return Err(err(format!("unsupported data bits {n}"))),
    };
    let stop_bits = match spec.stop_bits {
        1 => tokio_serial::StopBits::One,
        2 => tokio_serial::StopBits::Two,
        n => return Err(err(format!("unsupported stop bits {n}"))),
    };
    let parity = match spec.parity {
        Parity::None => tokio_serial::Parity::None,
        Parity::Even => tokio_serial::Parity::Even,
        Parity::Odd => tokio_serial::Parity::Odd,
    };
    let mut port: SerialStream = tokio_serial::new(&spec.path, spec.baud)
        .data_bits(data_bits)
        .stop_bits(stop_bits)
        .parity(parity)
        .flow_control(tokio_serial::FlowControl::None)
        .timeout(Duration::from_millis(100))
        .open_native_async()
        .map_err(|e| err(e.to_string()))?;
    port.set_exclusive(true).map_err(|e| err(e.to_string()))?;
    // Discard whatever arrived before we were listening: it answers nobody's request.
    let _ = port.clear(ClearBuffer::Input);
    Ok(Stream::new(port, spec.path.clone()))
}
