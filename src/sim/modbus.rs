//! A Modbus RTU room controller: answers on a pseudo-terminal (or a TCP socket, as behind a
//! serial-to-Ethernet gateway) with the register map of any HVAC profile, over the shared room
//! thermal model, with scriptable faults (silence, CRC errors, truncated replies, garbage,
//! exception replies, alarm bits).
//!
//! It parses requests with our sans-io RTU decoder and behaves like a device on an RS-485 bus:
//! frames for other unit addresses, frames with a bad CRC and frames cut short by a silence are
//! dropped without a word (and counted); broadcasts are executed without a reply. It must not
//! depend on the driver: interop with a third-party master (pymodbus) is part of its tests.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::pty::PtyMaster;
use super::thermal::{Controls, Mode, RoomStart, Running, SimRoom, ThermalParams};
use super::{option_error, parse_options, SimBind, SimEndpoint, SimError};
use crate::clock::Clock;
use crate::codec::modbus::{
    scan_request, ExceptionCode, Request, RequestPdu, Response, ResponsePdu, Scan,
};
use crate::codec::modbus_map::{Point, RegisterMap, Table};
use crate::profile::Profile;

/// `[devices.simulator]` options of a Modbus room controller.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusSimOptions {
    /// Unit address it answers to (default: the map's).
    #[serde(default)]
    pub slave: Option<u8>,
    #[serde(default = "default_temp")]
    pub temperature_c: f64,
    #[serde(default = "default_setpoint")]
    pub setpoint_c: f64,
    #[serde(default = "default_mode")]
    pub mode: String,
    #[serde(default)]
    pub power: bool,
    #[serde(default = "default_fan")]
    pub fan: String,
    #[serde(default)]
    pub ambient_c: Option<f64>,
    #[serde(default)]
    pub rate_c_per_min: Option<f64>,
    /// Silence that ends a partial frame (ms); a real line's t1.5 is far shorter, but a
    /// pseudo-terminal has no timing of its own.
    #[serde(default = "default_gap_ms")]
    pub frame_gap_ms: u64,
}

fn default_temp() -> f64 {
    28.0
}
fn default_setpoint() -> f64 {
    22.0
}
fn default_mode() -> String {
    "cool".to_owned()
}
fn default_fan() -> String {
    "auto".to_owned()
}
fn default_gap_ms() -> u64 {
    50
}

impl Default for ModbusSimOptions {
    fn default() -> Self {
        Self {
            slave: None,
            temperature_c: default_temp(),
            setpoint_c: default_setpoint(),
            mode: default_mode(),
            power: false,
            fan: default_fan(),
            ambient_c: None,
            rate_c_per_min: None,
            frame_gap_ms: default_gap_ms(),
        }
    }
}

/// Faults a test or the demo can switch on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SimFaults {
    /// Answer nothing (unit unpowered, cable cut).
    pub silent: bool,
    /// Corrupt the CRC of the next N replies.
    pub bad_crc: u32,
    /// Send only the first half of the next N replies.
    pub truncate: u32,
    /// Answer the next N requests with bytes that are not Modbus.
    pub garbage: u32,
    /// Answer reads of this PDU address with this exception code.
    pub exception_at: Option<(u16, u8)>,
    /// Alarm names (from the map's alarm bits) the unit reports.
    pub alarms: Vec<String>,
}

/// What the simulator has seen, for tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimCounters {
    pub requests: u64,
    pub replies: u64,
    pub exceptions: u64,
    /// Frames dropped: bad CRC, unknown function, malformed.
    pub rejected: u64,
    /// Partial frames ended by silence.
    pub truncated: u64,
    /// Requests addressed to another unit.
    pub other_unit: u64,
}

struct State {
    map: RegisterMap,
    slave: u8,
    room: SimRoom,
    fan: String,
    faults: SimFaults,
    counters: SimCounters,
    /// The last [`RECEIVED_KEPT`] request frames as they arrived, CRC included.
    received: VecDeque<Vec<u8>>,
}

/// How many raw request frames the simulator keeps for [`RoomController::received`].
pub const RECEIVED_KEPT: usize = 256;

/// The simulated controller: its room and its faults, shared with whoever serves it.
#[derive(Clone)]
pub struct RoomController {
    inner: Arc<Mutex<State>>,
    frame_gap: Duration,
}

impl std::fmt::Debug for RoomController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomController").finish_non_exhaustive()
    }
}

impl RoomController {
    pub fn new(map: RegisterMap, options: &ModbusSimOptions) -> Result<Self, SimError> {
        let room = RoomStart {
            temperature_c: options.temperature_c,
            setpoint_c: options.setpoint_c,
            mode: &options.mode,
            power: options.power,
            ambient_c: options.ambient_c,
            rate_c_per_min: options.rate_c_per_min,
        }
        .room()?;
        let slave = options.slave.unwrap_or(map.slave);
        if !(1..=247).contains(&slave) {
            return Err(option_error(
                "slave",
                format!("{slave} is not a unit address 1–247"),
            ));
        }
        Ok(Self {
            inner: Arc::new(Mutex::new(State {
                map,
                slave,
                room,
                fan: options.fan.clone(),
                faults: SimFaults::default(),
                counters: SimCounters::default(),
                received: VecDeque::new(),
            })),
            frame_gap: Duration::from_millis(options.frame_gap_ms.max(1)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn temperature(&self) -> f64 {
        self.lock().room.room().temp_c
    }
    pub fn running(&self) -> Running {
        self.lock().room.room().running
    }
    pub fn controls(&self) -> Controls {
        self.lock().room.controls()
    }
    pub fn params(&self) -> ThermalParams {
        self.lock().room.params
    }
    pub fn fan(&self) -> String {
        self.lock().fan.clone()
    }
    pub fn set_temperature(&self, c: f64) {
        self.lock().room.set_temperature(c);
    }
    pub fn set_controls(&self, f: impl FnOnce(&mut Controls)) {
        self.lock().room.set_controls(f);
    }
    pub fn faults(&self, f: impl FnOnce(&mut SimFaults)) {
        f(&mut self.lock().faults);
    }
    pub fn counters(&self) -> SimCounters {
        self.lock().counters
    }
    /// Every well-formed request frame received (any unit address), byte for byte with its
    /// CRC, oldest first; at most the last [`RECEIVED_KEPT`]. Tests compare them with the
    /// frames a vendor manual prescribes.
    pub fn received(&self) -> Vec<Vec<u8>> {
        self.lock().received.iter().cloned().collect()
    }

    /// Serve one byte stream until it closes or `cancel` fires.
    pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut io: S,
        cancel: CancellationToken,
    ) -> io::Result<()> {
        let mut buf = BytesMut::with_capacity(512);
        loop {
            let read = if buf.is_empty() {
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    r = io.read_buf(&mut buf) => Some(r),
                }
            } else {
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    r = tokio::time::timeout(self.frame_gap, io.read_buf(&mut buf)) => r.ok(),
                }
            };
            match read {
                // A partial frame followed by silence is void (protocols.md 5.1).
                None => {
                    self.lock().counters.truncated += 1;
                    buf.clear();
                    continue;
                }
                Some(Ok(0)) => return Ok(()),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
            }
            loop {
                match scan_request(&buf) {
                    Scan::Incomplete { .. } => break,
                    Scan::Invalid(_) => {
                        // A corrupt frame is dropped whole; the next one starts after silence.
                        self.lock().counters.rejected += 1;
                        buf.clear();
                        break;
                    }
                    Scan::Frame { len, frame } => {
                        {
                            let mut st = self.lock();
                            if st.received.len() >= RECEIVED_KEPT {
                                st.received.pop_front();
                            }
                            st.received.push_back(buf[..len].to_vec());
                        }
                        buf.advance(len);
                        if let Some(reply) = self.handle(&frame) {
                            io.write_all(&reply).await?;
                            io.flush().await?;
                        }
                    }
                }
            }
            if buf.len() > 2 * crate::codec::modbus::MAX_ADU {
                self.lock().counters.rejected += 1;
                buf.clear();
            }
        }
    }

    /// The bytes to send for one request, if any.
    fn handle(&self, req: &Request) -> Option<Vec<u8>> {
        let mut st = self.lock();
        st.counters.requests += 1;
        if req.slave != st.slave && req.slave != 0 {
            st.counters.other_unit += 1;
            return None;
        }
        let pdu = st.answer(&req.pdu);
        if req.slave == 0 || st.faults.silent {
            return None;
        }
        if matches!(pdu, ResponsePdu::Exception { .. }) {
            st.counters.exceptions += 1;
        }
        st.counters.replies += 1;
        let mut bytes = Response {
            slave: st.slave,
            pdu,
        }
        .encode();
        let f = &mut st.faults;
        if f.garbage > 0 {
            f.garbage -= 1;
            return Some(b"\x7f\xfe garbage \xff".to_vec());
        }
        if f.bad_crc > 0 {
            f.bad_crc -= 1;
            if let Some(last) = bytes.last_mut() {
                *last ^= 0x5A;
            }
        }
        if f.truncate > 0 {
            f.truncate -= 1;
            bytes.truncate(bytes.len() / 2);
        }
        Some(bytes)
    }
}

fn exception(function: u8, code: ExceptionCode) -> ResponsePdu {
    ResponsePdu::Exception { function, code }
}

impl State {
    fn answer(&mut self, pdu: &RequestPdu) -> ResponsePdu {
        let fc = pdu.function_code();
        let read = |st: &mut State,
                    table: Table,
                    address: u16,
                    count: u16|
         -> Result<Vec<u16>, ExceptionCode> {
            (0..count)
                .map(|i| {
                    let a = address
                        .checked_add(i)
                        .ok_or(ExceptionCode::IllegalDataAddress)?;
                    if let Some((at, code)) = st.faults.exception_at {
                        if at == a {
                            return Err(ExceptionCode::from_u8(code));
                        }
                    }
                    st.read_word(table, a)
                        .ok_or(ExceptionCode::IllegalDataAddress)
                })
                .collect()
        };
        let result = match pdu {
            RequestPdu::ReadCoils { address, count } => read(self, Table::Coil, *address, *count)
                .map(|w| ResponsePdu::Bits {
                    function: fc,
                    bits: w.into_iter().map(|x| x != 0).collect(),
                }),
            RequestPdu::ReadDiscreteInputs { address, count } => {
                read(self, Table::Discrete, *address, *count).map(|w| ResponsePdu::Bits {
                    function: fc,
                    bits: w.into_iter().map(|x| x != 0).collect(),
                })
            }
            RequestPdu::ReadHoldingRegisters { address, count } => {
                read(self, Table::Holding, *address, *count).map(|values| ResponsePdu::Registers {
                    function: fc,
                    values,
                })
            }
            RequestPdu::ReadInputRegisters { address, count } => {
                read(self, Table::Input, *address, *count).map(|values| ResponsePdu::Registers {
                    function: fc,
                    values,
                })
            }
            RequestPdu::WriteSingleCoil { address, on } => self
                .write_word(Table::Coil, *address, u16::from(*on))
                .map(|()| ResponsePdu::WriteSingleCoil {
                    address: *address,
                    on: *on,
                }),
            RequestPdu::WriteSingleRegister { address, value } => self
                .write_word(Table::Holding, *address, *value)
                .map(|()| ResponsePdu::WriteSingleRegister {
                    address: *address,
                    value: *value,
                }),
            RequestPdu::WriteMultipleCoils { address, values } => values
                .iter()
                .enumerate()
                .try_for_each(|(i, v)| {
                    self.write_word(Table::Coil, address.wrapping_add(i as u16), u16::from(*v))
                })
                .map(|()| ResponsePdu::WriteMultiple {
                    function: fc,
                    address: *address,
                    count: values.len() as u16,
                }),
            RequestPdu::WriteMultipleRegisters { address, values } => values
                .iter()
                .enumerate()
                .try_for_each(|(i, v)| {
                    self.write_word(Table::Holding, address.wrapping_add(i as u16), *v)
                })
                .map(|()| ResponsePdu::WriteMultiple {
                    function: fc,
                    address: *address,
                    count: values.len() as u16,
                }),
        };
        result.unwrap_or_else(|code| exception(fc, code))
    }

    fn point_at(&self, table: Table, address: u16, write: bool) -> Option<(&'static str, Point)> {
        self.map
            .all_points()
            .into_iter()
            .find(|(_, p)| {
                p.table == table
                    && if write {
                        self.map.write_address(p) == address
                    } else {
                        self.map.read_address(p) == address
                    }
            })
            .map(|(n, p)| (n, p.clone()))
    }

    /// What the unit would show at a read address.
    fn read_word(&mut self, table: Table, address: u16) -> Option<u16> {
        let (name, p) = self.point_at(table, address, false)?;
        let room = self.room.room();
        let c = self.room.controls();
        let power_via_mode = self.map.power_via_mode();
        let on = c.power && c.mode != Mode::Off;
        let enum_or_zero =
            |p: &Point, v: &str| p.encode_enum(name, v).map(|w| w & !p.write_or).unwrap_or(0);
        Some(match name {
            "temperature" => p.encode_number(name, room.temp_c).unwrap_or(0),
            "setpoint" => p.encode_number(name, c.setpoint_c).unwrap_or(0),
            "mode" => {
                let m = if power_via_mode && !on {
                    "off"
                } else {
                    c.mode.as_str()
                };
                enum_or_zero(&p, m)
            }
            "fan" => enum_or_zero(&p, &self.fan),
            "power" if p.table.is_bit() => u16::from(c.power),
            "power" => enum_or_zero(&p, if c.power { "on" } else { "off" }),
            "running" => {
                let r = room.running.as_str();
                if !p.bits.is_empty() {
                    p.encode_bits(&[r])
                } else if p.table.is_bit() {
                    u16::from(matches!(room.running, Running::Heating | Running::Cooling))
                } else {
                    p.encode_enum(name, r)
                        .or_else(|_| p.encode_enum(name, "idle"))
                        .unwrap_or(0)
                }
            }
            "alarms" => {
                let names: Vec<&str> = self.faults.alarms.iter().map(String::as_str).collect();
                p.encode_bits(&names)
            }
            _ => return None,
        })
    }

    /// Apply a write as the unit would; out-of-range values are refused with exception 03
    /// (as the Mundoclima manual documents, protocols.md 5.1).
    fn write_word(&mut self, table: Table, address: u16, raw: u16) -> Result<(), ExceptionCode> {
        let (name, p) = self
            .point_at(table, address, true)
            .ok_or(ExceptionCode::IllegalDataAddress)?;
        let value = raw & !p.write_or;
        match name {
            "setpoint" => {
                let c = p
                    .decode_number(value)
                    .ok_or(ExceptionCode::IllegalDataValue)?;
                if p.min.is_some_and(|m| c < m) || p.max.is_some_and(|m| c > m) {
                    return Err(ExceptionCode::IllegalDataValue);
                }
                self.room.set_controls(|x| x.setpoint_c = c);
            }
            "mode" => {
                let m = p
                    .decode_enum(value)
                    .and_then(Mode::parse)
                    .ok_or(ExceptionCode::IllegalDataValue)?;
                let via_mode = self.map.power_via_mode();
                self.room.set_controls(|x| {
                    x.mode = m;
                    if via_mode {
                        x.power = m != Mode::Off;
                    }
                });
            }
            "fan" => {
                let f = p
                    .decode_enum(value)
                    .ok_or(ExceptionCode::IllegalDataValue)?
                    .to_owned();
                self.fan = f;
            }
            "power" => {
                let on = if p.table.is_bit() {
                    value != 0
                } else {
                    p.decode_enum(value)
                        .ok_or(ExceptionCode::IllegalDataValue)?
                        == "on"
                };
                self.room.set_controls(|x| x.power = on);
            }
            _ => return Err(ExceptionCode::IllegalDataAddress),
        }
        Ok(())
    }
}

/// Build the controller [`spawn_from_config`] would serve, without serving it (`check-config`).
pub fn check_options(profile: &Profile, options: &toml::Table) -> Result<(), SimError> {
    let map = RegisterMap::from_table(&profile.options)
        .map_err(|m| option_error(format!("profile {} options", profile.id), m))?;
    let opts: ModbusSimOptions = parse_options(options)?;
    RoomController::new(map, &opts).map(drop)
}

/// Start a controller for `profile`'s register map (`[devices.simulator]` options on top).
pub async fn spawn_from_config(
    profile: &Profile,
    options: &toml::Table,
    bind: SimBind,
    clock: Clock,
    cancel: CancellationToken,
) -> Result<(SimEndpoint, RoomController), SimError> {
    let _ = clock;
    let map = RegisterMap::from_table(&profile.options)
        .map_err(|m| option_error(format!("profile {} options", profile.id), m))?;
    let opts: ModbusSimOptions = parse_options(options)?;
    let ctl = RoomController::new(map, &opts)?;
    let ep = serve_on(ctl.clone(), bind, cancel).await?;
    Ok((ep, ctl))
}

/// Serve a controller on a pseudo-terminal or TCP listener.
pub async fn serve_on(
    ctl: RoomController,
    bind: SimBind,
    cancel: CancellationToken,
) -> Result<SimEndpoint, SimError> {
    match bind {
        SimBind::Pty { link } => {
            let pty = PtyMaster::open(link.as_deref())?;
            let shown = pty.path().to_path_buf();
            // The master (and with it the symlink) goes when serving ends.
            crate::sim::detached(async move {
                if let Err(e) = ctl.serve(pty, cancel).await {
                    tracing::warn!(error = %e, "modbus simulator pty closed");
                }
            });
            Ok(SimEndpoint::Pty(shown))
        }
        SimBind::Tcp(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            let local = listener.local_addr()?;
            crate::sim::detached(async move {
                loop {
                    let accepted = tokio::select! {
                        _ = cancel.cancelled() => break,
                        a = listener.accept() => a,
                    };
                    let Ok((sock, _)) = accepted else { continue };
                    let ctl = ctl.clone();
                    let cancel = cancel.clone();
                    crate::sim::detached(async move {
                        let _ = ctl.serve(sock, cancel).await;
                    });
                }
            });
            Ok(SimEndpoint::Tcp(local))
        }
        SimBind::Udp(_) | SimBind::Mqtt { .. } => {
            Err(SimError::Unsupported("modbus over udp or mqtt"))
        }
    }
}
