//! Modbus RTU room controllers over RS-485 (protocols.md 5.1), through tokio-modbus's RTU
//! client, with the register map from the profile ([`RegisterMap`]).
//!
//! Every exchange is one request and one reply within the profile's reply timeout, preceded by
//! the t3.5 line silence. The driver sorts what went wrong: an exception reply is the device
//! talking (a read exception becomes a fault on that point, a write exception a refusal); a
//! CRC error, a truncated or foreign frame is counted as bad input; silence is counted as a
//! timeout. A run of `unreachable_after_errors` failed exchanges makes the device unreachable,
//! and the runtime reopens the port with backoff. It must not know which port or baud rate it
//! is on beyond the inter-frame gap.

use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_modbus::client::Client as _;
use tokio_modbus::{Request, Response, Slave};

use super::{check_mode, merged_options, option_error};
use crate::codec::modbus::{
    diagnose_reply, silent_interval, ExceptionCode, ReplyDiagnosis, MAX_ADU,
};
use crate::codec::modbus_map::{MapError, Point, RegisterMap, Table, WriteFunction};
use crate::codec::ProtocolError;
use crate::driver::link::ByteStream;
use crate::driver::{DriverError, Link, LinkError, Observer};
use crate::model::{self, DeviceCommand, Fault, Quantity, Severity, Value};
use crate::profile::{Profile, ProfileError};

/// How one exchange ended, when it did not bring a usable reply.
#[derive(Debug)]
enum Failure {
    /// The device answered with an exception.
    Exception(ExceptionCode),
    /// Nothing arrived.
    Silence,
    /// Something arrived that is not a reply to our request.
    Bad(ProtocolError),
    /// The port itself failed.
    Link(DriverError),
}

/// The outcome of reading one point.
#[derive(Debug)]
enum PointRead {
    Value(u16),
    /// The unit answered with an exception (a fault on that point).
    Exception,
    /// No usable reply (counted).
    Missed,
}

/// What the last successful reads said, raw.
#[derive(Debug, Default, Clone)]
struct Known {
    temperature: Option<Option<f64>>,
    setpoint: Option<Option<f64>>,
    mode: Option<Option<String>>,
    fan: Option<Option<String>>,
    power: Option<Option<bool>>,
    running: Option<Option<String>>,
    alarms: Option<Vec<String>>,
    last_active_mode: Option<String>,
}

#[derive(Clone)]
pub struct ModbusDriver {
    map: RegisterMap,
    vendor: String,
    model: Option<String>,
    reply_timeout: Duration,
    frame_gap: Duration,
    last_frame: Option<Instant>,
    /// Failed exchanges in a row, and what they were.
    run: u32,
    run_timeouts: u32,
    run_bad: u32,
    known: Known,
    /// Exception replies to reads, by point.
    exceptions: BTreeMap<&'static str, Fault>,
}

impl ModbusDriver {
    pub fn new(profile: &Profile, settings: &toml::Table) -> Result<Self, ProfileError> {
        let map = RegisterMap::from_table(&merged_options(profile, settings))
            .map_err(|m| option_error(profile, m))?;
        Ok(Self {
            map,
            vendor: profile.vendor.clone(),
            model: profile.models.first().cloned(),
            reply_timeout: profile.timing.reply_timeout,
            frame_gap: silent_interval(profile.link.baud.unwrap_or(9600)),
            last_frame: None,
            run: 0,
            run_timeouts: 0,
            run_bad: 0,
            known: Known::default(),
            exceptions: BTreeMap::new(),
        })
    }

    /// One request, one reply. The link's stream is lent to tokio-modbus for the exchange.
    async fn exchange(
        &mut self,
        link: &mut Link,
        req: Request<'static>,
    ) -> Result<Response, Failure> {
        if let Some(t) = self.last_frame {
            // t3.5 of silence separates frames on the line (protocols.md 5.1).
            tokio::time::sleep_until(t + self.frame_gap).await;
        }
        let Some(stream) = link.take_stream() else {
            return Err(Failure::Link(LinkError::Closed.into()));
        };
        let tap = Tap::new(stream);
        let stale = tap.discard_pending();
        if stale > 0 {
            tracing::debug!(
                bytes = stale,
                "discarded late bytes before a modbus request"
            );
        }
        let mut ctx = tokio_modbus::client::rtu::attach_slave(tap.clone(), Slave(self.map.slave));
        let res = tokio::time::timeout(self.reply_timeout, ctx.call(req)).await;
        drop(ctx);
        self.last_frame = Some(Instant::now());
        let Some((stream, captured, n_in, n_out)) = tap.into_parts() else {
            link.disconnect();
            return Err(Failure::Link(LinkError::Closed.into()));
        };
        link.restore_stream(stream, n_in, n_out);
        match res {
            Ok(Ok(Ok(response))) => Ok(response),
            Ok(Ok(Err(code))) => Err(Failure::Exception(ExceptionCode::from_u8(u8::from(code)))),
            Ok(Err(tokio_modbus::Error::Protocol(p))) => {
                Err(Failure::Bad(ProtocolError::Unexpected {
                    expected: "a reply to our request".to_owned(),
                    got: p.to_string(),
                }))
            }
            Ok(Err(tokio_modbus::Error::Transport(e)))
                if e.kind() == io::ErrorKind::InvalidData =>
            {
                Err(Failure::Bad(
                    diagnose_reply(&captured)
                        .to_error(&captured)
                        .unwrap_or_else(|| ProtocolError::malformed(e.to_string())),
                ))
            }
            Ok(Err(tokio_modbus::Error::Transport(e))) => {
                link.disconnect();
                Err(Failure::Link(LinkError::Io(e).into()))
            }
            Err(_elapsed) => match diagnose_reply(&captured) {
                ReplyDiagnosis::Silence => Err(Failure::Silence),
                ReplyDiagnosis::Valid(frame) => Err(Failure::Bad(ProtocolError::Unexpected {
                    expected: format!("a reply from unit {}", self.map.slave),
                    got: format!("{frame:?}"),
                })),
                d => {
                    Err(Failure::Bad(d.to_error(&captured).unwrap_or_else(|| {
                        ProtocolError::malformed("unreadable reply")
                    })))
                }
            },
        }
    }

    /// Count a failed exchange; past the limit the device is unreachable.
    fn count_failure(&mut self, obs: &mut Observer, f: &Failure) -> Result<(), DriverError> {
        match f {
            Failure::Silence => {
                self.run += 1;
                self.run_timeouts += 1;
                obs.update(|s| s.counters.timeouts += 1);
            }
            Failure::Bad(e) => {
                self.run += 1;
                self.run_bad += 1;
                obs.bad_input(e);
            }
            Failure::Exception(_) | Failure::Link(_) => {}
        }
        if self.run >= self.map.unreachable_after_errors {
            let msg = format!(
                "{} modbus exchanges in a row failed ({} without reply, {} with bad frames); {}",
                self.run,
                self.run_timeouts,
                self.run_bad,
                failure_hint(self.map.slave, self.run_timeouts, self.run_bad)
            );
            self.reset_run();
            return Err(DriverError::Link(LinkError::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                msg,
            ))));
        }
        Ok(())
    }

    fn reset_run(&mut self) {
        self.run = 0;
        self.run_timeouts = 0;
        self.run_bad = 0;
    }

    fn read_request(&self, p: &Point) -> Request<'static> {
        let a = self.map.read_address(p);
        match p.table {
            Table::Coil => Request::ReadCoils(a, 1),
            Table::Discrete => Request::ReadDiscreteInputs(a, 1),
            Table::Input => Request::ReadInputRegisters(a, 1),
            Table::Holding => Request::ReadHoldingRegisters(a, 1),
        }
    }

    /// The raw word of a one-point read reply (bits as 0/1).
    fn raw_of(response: &Response) -> Result<u16, ProtocolError> {
        match response {
            Response::ReadCoils(bits) | Response::ReadDiscreteInputs(bits) => bits
                .first()
                .map(|b| u16::from(*b))
                .ok_or_else(|| ProtocolError::malformed("bit read returned no bits")),
            Response::ReadHoldingRegisters(w) | Response::ReadInputRegisters(w) => {
                match w.as_slice() {
                    [one] => Ok(*one),
                    other => Err(ProtocolError::Unexpected {
                        expected: "1 register".to_owned(),
                        got: format!("{} registers", other.len()),
                    }),
                }
            }
            other => Err(ProtocolError::Unexpected {
                expected: "a read reply".to_owned(),
                got: format!("{other:?}"),
            }),
        }
    }

    /// Read one point; a failed exchange is counted, and past the limit it is an error.
    async fn read_point(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
        name: &'static str,
        p: &Point,
    ) -> Result<PointRead, DriverError> {
        let req = self.read_request(p);
        let failure = match self.exchange(link, req).await {
            Ok(resp) => match Self::raw_of(&resp) {
                Ok(raw) => {
                    self.reset_run();
                    self.exceptions.remove(name);
                    obs.contact();
                    return Ok(PointRead::Value(raw));
                }
                Err(e) => Failure::Bad(e),
            },
            Err(f) => f,
        };
        match failure {
            Failure::Link(e) => Err(e),
            Failure::Exception(code) => {
                self.reset_run();
                obs.contact();
                let severity = if matches!(code, ExceptionCode::Other(5) | ExceptionCode::Other(6))
                {
                    Severity::Warning
                } else {
                    Severity::Fault
                };
                self.exceptions.insert(
                    name,
                    Fault::new(
                        "modbus_exception",
                        severity,
                        format!(
                            "reading {name} (address {}): unit answered exception {}; check the register map and the unit",
                            self.map.read_address(p),
                            code.describe()
                        ),
                    )
                    .on(name),
                );
                Ok(PointRead::Exception)
            }
            other => {
                self.count_failure(obs, &other)?;
                Ok(PointRead::Missed)
            }
        }
    }

    /// Read every point of the map and publish what they say. Returns whether any reply came.
    async fn read_points(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
    ) -> Result<bool, DriverError> {
        let points: Vec<(&'static str, Point)> = self
            .map
            .all_points()
            .into_iter()
            .map(|(n, p)| (n, p.clone()))
            .collect();
        let mut replied = false;
        for (name, p) in &points {
            match self.read_point(link, obs, name, p).await? {
                PointRead::Value(raw) => {
                    replied = true;
                    self.apply(obs, name, p, raw);
                }
                PointRead::Exception => replied = true,
                PointRead::Missed => {}
            }
        }
        self.publish(obs);
        Ok(replied)
    }

    fn apply(&mut self, obs: &mut Observer, name: &'static str, p: &Point, raw: u16) {
        let k = &mut self.known;
        let unknown_value = |obs: &mut Observer| {
            obs.bad_input(&ProtocolError::Unexpected {
                expected: format!("a {name} value in the register map"),
                got: raw.to_string(),
            })
        };
        match name {
            "temperature" => k.temperature = Some(p.decode_number(raw)),
            "setpoint" => k.setpoint = Some(p.decode_number(raw)),
            "mode" => {
                let m = p.decode_enum(raw).map(str::to_owned);
                if m.is_none() {
                    unknown_value(obs);
                }
                if let Some(active) = m.as_deref().filter(|m| *m != "off") {
                    k.last_active_mode = Some(active.to_owned());
                }
                k.mode = Some(m);
            }
            "fan" => {
                let f = p.decode_enum(raw).map(str::to_owned);
                if f.is_none() {
                    unknown_value(obs);
                }
                k.fan = Some(f);
            }
            "power" => {
                k.power = Some(if p.table.is_bit() {
                    Some(raw != 0)
                } else {
                    let v = p.decode_enum(raw).map(|v| v == "on");
                    if v.is_none() {
                        unknown_value(obs);
                    }
                    v
                });
            }
            "running" => {
                k.running = Some(if !p.bits.is_empty() {
                    Some(p.decode_bits(raw).first().map_or("idle", |s| s).to_owned())
                } else if p.table.is_bit() {
                    Some(if raw != 0 { "heat" } else { "idle" }.to_owned())
                } else {
                    let r = p.decode_enum(raw).map(str::to_owned);
                    if r.is_none() {
                        unknown_value(obs);
                    }
                    r
                });
            }
            "alarms" => {
                k.alarms = Some(p.decode_bits(raw).into_iter().map(str::to_owned).collect());
            }
            _ => {}
        }
    }

    /// Power as the room sees it.
    fn power(&self) -> Option<bool> {
        if self.map.points.power.is_some() {
            self.known.power.flatten()
        } else if self.map.power_via_mode() {
            self.known.mode.clone().flatten().map(|m| m != "off")
        } else {
            None
        }
    }

    fn publish(&mut self, obs: &mut Observer) {
        let k = self.known.clone();
        let num = |v: Option<f64>| v.map_or(Value::Unknown, Value::Float);
        let text = |v: Option<String>| v.map_or(Value::Unknown, Value::Text);
        if let Some(t) = k.temperature {
            obs.reading(model::Point::device(Quantity::Temperature), num(t));
        }
        if let Some(s) = k.setpoint {
            obs.reading(model::Point::device(Quantity::Setpoint), num(s));
        }
        let power = self.power();
        if let Some(p) = power {
            obs.reading(model::Point::device(Quantity::Power), Value::Bool(p));
        }
        if let Some(m) = k.mode {
            // A unit switched off shows mode `off`, whatever its mode register holds.
            let m = if power == Some(false) {
                Some("off".to_owned())
            } else {
                m
            };
            obs.reading(model::Point::device(Quantity::HvacMode), text(m));
        } else if power == Some(false) {
            obs.reading(
                model::Point::device(Quantity::HvacMode),
                Value::Text("off".to_owned()),
            );
        }
        if let Some(f) = k.fan {
            obs.reading(model::Point::device(Quantity::Fan), text(f));
        }
        if let Some(r) = k.running {
            let r = if power == Some(false) {
                Some("off".to_owned())
            } else {
                r
            };
            obs.reading(model::Point::device(Quantity::HvacRunning), text(r));
        }
        let alarms: Vec<Fault> = k
            .alarms
            .unwrap_or_default()
            .into_iter()
            .map(|a| {
                Fault::new(
                    "hvac_alarm",
                    Severity::Fault,
                    format!("the unit reports: {a}"),
                )
                .on(a)
            })
            .collect();
        obs.faults("hvac_alarm", alarms);
        obs.faults(
            "modbus_exception",
            self.exceptions.values().cloned().collect(),
        );
    }

    /// Write one point and read it back.
    async fn write(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
        command: &'static str,
        name: &'static str,
        raw: u16,
    ) -> Result<(), DriverError> {
        let p = self
            .map
            .point(name)
            .cloned()
            .ok_or(DriverError::Unsupported {
                driver: "modbus",
                command,
            })?;
        let a = self.map.write_address(&p);
        let req = match (p.table, self.map.write_function) {
            (Table::Coil, _) => Request::WriteSingleCoil(a, raw != 0),
            (Table::Holding, WriteFunction::Fc06) => Request::WriteSingleRegister(a, raw),
            (Table::Holding, WriteFunction::Fc16) => {
                Request::WriteMultipleRegisters(a, vec![raw].into())
            }
            _ => return Err(rejected(command, MapError::ReadOnly(name).to_string())),
        };
        let expected = req.clone();
        match self.exchange(link, req).await {
            Ok(resp) => {
                let echo_ok = match (&expected, &resp) {
                    (Request::WriteSingleCoil(a1, v1), Response::WriteSingleCoil(a2, v2)) => {
                        a1 == a2 && v1 == v2
                    }
                    (
                        Request::WriteSingleRegister(a1, v1),
                        Response::WriteSingleRegister(a2, v2),
                    ) => a1 == a2 && v1 == v2,
                    (
                        Request::WriteMultipleRegisters(a1, _),
                        Response::WriteMultipleRegisters(a2, n),
                    ) => a1 == a2 && *n == 1,
                    _ => false,
                };
                if !echo_ok {
                    let e = ProtocolError::Unexpected {
                        expected: format!("echo of {expected:?}"),
                        got: format!("{resp:?}"),
                    };
                    // Counted by the runtime, which sees the protocol error.
                    return Err(DriverError::Protocol(e));
                }
                self.reset_run();
                obs.contact();
                // Read back what the unit now holds (it may clamp, or read elsewhere).
                if let PointRead::Value(raw) = self.read_point(link, obs, name, &p).await? {
                    self.apply(obs, name, &p, raw);
                }
                self.publish(obs);
                Ok(())
            }
            Err(Failure::Exception(code)) => {
                self.reset_run();
                obs.contact();
                let reason = format!("unit answered exception {} writing {name}", code.describe());
                if matches!(code, ExceptionCode::Other(5) | ExceptionCode::Other(6)) {
                    Err(DriverError::Busy {
                        command: command.to_owned(),
                        reason,
                        ready_in: None,
                    })
                } else {
                    Err(refused(command, reason))
                }
            }
            Err(Failure::Link(e)) => Err(e),
            Err(Failure::Silence) => {
                self.run += 1;
                self.run_timeouts += 1;
                Err(DriverError::Timeout {
                    waited_ms: self.reply_timeout.as_millis() as u64,
                })
            }
            Err(Failure::Bad(e)) => {
                self.run += 1;
                self.run_bad += 1;
                Err(DriverError::Protocol(e))
            }
        }
    }

    fn encode(
        &self,
        command: &'static str,
        name: &'static str,
        value: &str,
    ) -> Result<u16, DriverError> {
        let p = self.map.point(name).ok_or(DriverError::Unsupported {
            driver: "modbus",
            command,
        })?;
        if p.table.is_bit() {
            return Ok(u16::from(value == "on"));
        }
        p.encode_enum(name, value)
            .map_err(|e| rejected(command, e.to_string()))
    }

    async fn set_power(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
        on: bool,
    ) -> Result<(), DriverError> {
        const CMD: &str = "power";
        if self.map.points.power.is_some() {
            let raw = self.encode(CMD, "power", if on { "on" } else { "off" })?;
            return self.write(link, obs, CMD, "power", raw).await;
        }
        if self.map.power_via_mode() {
            let mode = if on {
                self.restore_mode()
            } else {
                "off".to_owned()
            };
            let raw = self.encode(CMD, "mode", &mode)?;
            return self.write(link, obs, CMD, "mode", raw).await;
        }
        Err(DriverError::Unsupported {
            driver: "modbus",
            command: CMD,
        })
    }

    /// The mode `power on` restores: the last active one, else the profile's choice, else the
    /// first active mode the map knows.
    fn restore_mode(&self) -> String {
        let mode_point = self.map.points.mode.as_ref();
        let supported = |m: &str| mode_point.is_some_and(|p| p.values.values().any(|v| v == m));
        self.known
            .last_active_mode
            .clone()
            .filter(|m| supported(m))
            .or_else(|| self.map.power_on_mode.clone().filter(|m| supported(m)))
            .or_else(|| mode_point.and_then(|p| p.values.values().find(|v| *v != "off").cloned()))
            .unwrap_or_else(|| "auto".to_owned())
    }

    async fn set_mode(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
        mode: &str,
    ) -> Result<(), DriverError> {
        const CMD: &str = "set_hvac_mode";
        check_mode(mode)?;
        if mode == "off" && !self.map.power_via_mode() {
            return self.set_power(link, obs, false).await;
        }
        let raw = self.encode(CMD, "mode", mode)?;
        self.write(link, obs, CMD, "mode", raw).await?;
        // Choosing a mode on a unit that is off switches it on, as its wall controller does.
        if mode != "off" && self.map.points.power.is_some() && self.power() != Some(true) {
            self.set_power(link, obs, true).await?;
        }
        Ok(())
    }
}

/// The likely causes of a run of failed exchanges, for the technician at the unit: silence
/// points at the address or the line, garbled answers at the line's speed and framing.
fn failure_hint(slave: u8, silent: u32, bad: u32) -> String {
    let silence = format!(
        "check that the unit is powered, that its Modbus address is {slave} (the slave id \
         configured here), that baud rate and parity match the unit's, and the A/B wiring"
    );
    let garbled = "answers arrive garbled: check that baud rate, parity and stop bits match the \
                   unit's, the line's termination and that no second master is on the bus";
    match (silent, bad) {
        (_, 0) => silence,
        (0, _) => garbled.to_owned(),
        _ => format!("{silence}; some {garbled}"),
    }
}

/// We refuse a command before anything is written (outside the map's range, read-only).
fn rejected(command: &str, reason: String) -> DriverError {
    DriverError::Rejected {
        command: command.to_owned(),
        reason,
    }
}

fn refused(command: &str, reason: String) -> DriverError {
    DriverError::Refused {
        command: command.to_owned(),
        reason,
    }
}

#[async_trait]
impl crate::driver::Driver for ModbusDriver {
    fn name(&self) -> &'static str {
        "modbus"
    }

    fn fresh(&self) -> Option<Box<dyn crate::driver::Driver>> {
        Some(Box::new(self.clone()))
    }

    async fn open(&mut self, link: &mut Link, obs: &mut Observer) -> Result<(), DriverError> {
        link.take_fresh();
        let gap = link.facts().frame_gap;
        if !gap.is_zero() {
            self.frame_gap = gap;
        }
        self.reset_run();
        self.last_frame = None;
        let slave = self.map.slave;
        let vendor = self.vendor.clone();
        let model = self.model.clone();
        obs.identity(|id| {
            id.manufacturer = Some(vendor);
            if id.model.is_none() {
                id.model = model;
            }
            id.extra.insert("modbus_unit".to_owned(), slave.to_string());
        });
        Ok(())
    }

    async fn read_all(&mut self, link: &mut Link, obs: &mut Observer) -> Result<(), DriverError> {
        if self.read_points(link, obs).await? {
            Ok(())
        } else {
            // Nothing answered at all: the session did not start.
            Err(DriverError::Timeout {
                waited_ms: self.reply_timeout.as_millis() as u64,
            })
        }
    }

    async fn poll(&mut self, link: &mut Link, obs: &mut Observer) -> Result<(), DriverError> {
        // Misses are counted per exchange above; the run limit decides reachability.
        self.read_points(link, obs).await.map(|_| ())
    }

    async fn execute(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
        command: &DeviceCommand,
    ) -> Result<(), DriverError> {
        match command {
            DeviceCommand::SetSetpoint { celsius } => {
                const CMD: &str = "set_setpoint";
                let p = self
                    .map
                    .points
                    .setpoint
                    .clone()
                    .ok_or(DriverError::Unsupported {
                        driver: "modbus",
                        command: CMD,
                    })?;
                let raw = p
                    .encode_number("setpoint", *celsius)
                    .map_err(|e| rejected(CMD, e.to_string()))?;
                self.write(link, obs, CMD, "setpoint", raw).await?;
                // What the unit holds now (read back), else what we wrote: a whole-degree
                // unit applies 23 for 22.5, and the caller is told 23.
                let held = self
                    .known
                    .setpoint
                    .flatten()
                    .or_else(|| p.decode_number(raw));
                if let Some(c) = held {
                    obs.applied(model::Point::device(Quantity::Setpoint), Value::Float(c));
                }
                Ok(())
            }
            DeviceCommand::SetHvacMode { mode } => self.set_mode(link, obs, mode).await,
            DeviceCommand::Power { on } => self.set_power(link, obs, *on).await,
            DeviceCommand::Refresh => self.read_all(link, obs).await,
            other => Err(DriverError::Unsupported {
                driver: "modbus",
                command: other.name(),
            }),
        }
    }
}

/// The link's stream, shared with tokio-modbus for one exchange, recording what arrived so a
/// failed exchange can be explained.
#[derive(Debug, Clone)]
struct Tap(Arc<Mutex<TapInner>>);

/// The link's stream while it is lent to tokio-modbus.
type Lent = Box<dyn ByteStream>;

struct TapInner {
    stream: Lent,
    captured: Vec<u8>,
    bytes_in: u64,
    bytes_out: u64,
}

impl std::fmt::Debug for TapInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TapInner")
            .field("captured", &self.captured.len())
            .finish()
    }
}

impl Tap {
    fn new(stream: Box<dyn ByteStream>) -> Self {
        Tap(Arc::new(Mutex::new(TapInner {
            stream,
            captured: Vec::new(),
            bytes_in: 0,
            bytes_out: 0,
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TapInner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Throw away bytes already waiting (a reply that came after its timeout), without waiting.
    fn discard_pending(&self) -> usize {
        let mut g = self.lock();
        let mut total = 0;
        let mut buf = [0u8; 256];
        // Bounded: a port that never stops talking cannot hold the driver here.
        for _ in 0..16 {
            match g.stream.read(&mut buf).now_or_never() {
                Some(Ok(n)) if n > 0 => total += n,
                _ => break,
            }
        }
        total
    }

    fn into_parts(self) -> Option<(Lent, Vec<u8>, u64, u64)> {
        let inner = Arc::try_unwrap(self.0).ok()?;
        let t = inner.into_inner().unwrap_or_else(|e| e.into_inner());
        Some((t.stream, t.captured, t.bytes_in, t.bytes_out))
    }
}

impl AsyncRead for Tap {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut g = self.lock();
        let before = buf.filled().len();
        let res = Pin::new(&mut g.stream).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            let new = &buf.filled()[before..];
            g.bytes_in += new.len() as u64;
            let room = (2 * MAX_ADU).saturating_sub(g.captured.len());
            let keep = new.len().min(room);
            g.captured.extend_from_slice(&new[..keep]);
        }
        res
    }
}

impl AsyncWrite for Tap {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut g = self.lock();
        let res = Pin::new(&mut g.stream).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = res {
            g.bytes_out += n as u64;
        }
        res
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.lock().stream).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.lock().stream).poll_shutdown(cx)
    }
}
