//! Modbus RTU room controllers over RS-485 (protocols.md 5.1), through [`Link::converse`]
//! with the project's RTU codec ([`crate::codec::modbus`]), and the register map from the
//! profile ([`RegisterMap`]).
//!
//! Every exchange is one request and one reply within the profile's reply timeout, preceded by
//! the t3.5 line silence, and each reply is parsed once and checked against its request (unit,
//! function, count or echo). The driver sorts what went wrong: an exception reply is the device
//! talking (a read exception becomes a fault on that point, a write exception a refusal); a
//! CRC error, a truncated or foreign frame is one bad frame per exchange, however many bytes
//! the decoder dropped resynchronising; silence is counted as a timeout. A run of `unreachable_after_errors` failed exchanges makes the device unreachable,
//! and the runtime reopens the port with backoff. It must not know which port or baud rate it
//! is on beyond the inter-frame gap.

use std::collections::BTreeMap;
use std::io;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::{check_mode, merged_options, option_error};
use crate::codec::modbus::{
    diagnose_reply, match_reply, silent_interval, ExceptionCode, ExchangeDecoder, ReplyDiagnosis,
    ReplyMatch, Request, RequestPdu, Response, ResponsePdu,
};
use crate::codec::modbus_map::{MapError, Point, RegisterMap, Table, WriteFunction};
use crate::codec::ProtocolError;
use crate::driver::{DriverError, Link, LinkError, Observer, Step};
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

    /// One request, one reply, parsed once. The decoder keeps the first error of the exchange
    /// as its one bad frame and resynchronises quietly past the rest (a good reply may follow
    /// line noise). At the deadline the bytes left unframed say what the silence was: nothing
    /// (a timeout), or a truncated frame (a bad frame).
    async fn exchange(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
        req: &Request,
    ) -> Result<Response, Failure> {
        if let Some(t) = self.last_frame {
            // t3.5 of silence separates frames on the line (protocols.md 5.1).
            tokio::time::sleep_until(t + self.frame_gap).await;
        }
        let stale = link.drain_input();
        if stale > 0 {
            tracing::debug!(
                bytes = stale,
                "discarded late bytes before a modbus request"
            );
        }
        let mut decoder = ExchangeDecoder::default();
        let mut foreign: Option<Response> = None;
        let read = link
            .converse(
                &mut decoder,
                &req.encode(),
                self.reply_timeout,
                obs,
                |read, _| match read {
                    // The link's own limits (a flood without a frame); counted by the caller.
                    Err(p) => Step::End(p.into()),
                    Ok(resp) => match match_reply(req, &resp) {
                        ReplyMatch::Answer => Step::Done(Ok(resp)),
                        ReplyMatch::Exception(code) => Step::Done(Err(Failure::Exception(code))),
                        ReplyMatch::Mismatch(p) => Step::Done(Err(Failure::Bad(p))),
                        ReplyMatch::Foreign => {
                            foreign.get_or_insert(resp);
                            Step::Skip
                        }
                    },
                },
            )
            .await;
        self.last_frame = Some(Instant::now());
        let first_error = decoder.take_error();
        match read {
            Ok(Ok(resp)) => {
                if let Some(p) = first_error {
                    // Noise before a good reply: the line is suspect, the exchange is not.
                    obs.bad_input(&p);
                }
                Ok(resp)
            }
            Ok(Err(f)) => Err(f),
            Err(DriverError::Timeout { .. }) => Err(match first_error {
                Some(p) => Failure::Bad(p),
                None => {
                    let left = link.pending_input();
                    match (diagnose_reply(left), foreign) {
                        (ReplyDiagnosis::Silence, None) => Failure::Silence,
                        (ReplyDiagnosis::Silence, Some(frame)) => {
                            Failure::Bad(ProtocolError::Unexpected {
                                expected: format!("a reply from unit {}", self.map.slave),
                                got: format!("{frame:?}"),
                            })
                        }
                        (d, _) => Failure::Bad(
                            d.to_error(left)
                                .unwrap_or_else(|| ProtocolError::malformed("unreadable reply")),
                        ),
                    }
                }
            }),
            // A flood of bytes without a frame ended the session: one bad exchange.
            Err(DriverError::Protocol(p)) => Err(Failure::Bad(p)),
            Err(e) => Err(Failure::Link(e)),
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

    fn read_request(&self, p: &Point) -> Request {
        let address = self.map.read_address(p);
        let count = 1;
        let pdu = match p.table {
            Table::Coil => RequestPdu::ReadCoils { address, count },
            Table::Discrete => RequestPdu::ReadDiscreteInputs { address, count },
            Table::Input => RequestPdu::ReadInputRegisters { address, count },
            Table::Holding => RequestPdu::ReadHoldingRegisters { address, count },
        };
        Request {
            slave: self.map.slave,
            pdu,
        }
    }

    /// The raw word of a one-point read reply (bits as 0/1).
    fn raw_of(response: &Response) -> Result<u16, ProtocolError> {
        match &response.pdu {
            ResponsePdu::Bits { bits, .. } => bits
                .first()
                .map(|b| u16::from(*b))
                .ok_or_else(|| ProtocolError::malformed("bit read returned no bits")),
            ResponsePdu::Registers { values, .. } => match values.as_slice() {
                [one] => Ok(*one),
                other => Err(ProtocolError::Unexpected {
                    expected: "1 register".to_owned(),
                    got: format!("{} registers", other.len()),
                }),
            },
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
        let failure = match self.exchange(link, obs, &req).await {
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
        let address = self.map.write_address(&p);
        let pdu = match (p.table, self.map.write_function) {
            (Table::Coil, _) => RequestPdu::WriteSingleCoil {
                address,
                on: raw != 0,
            },
            (Table::Holding, WriteFunction::Fc06) => RequestPdu::WriteSingleRegister {
                address,
                value: raw,
            },
            (Table::Holding, WriteFunction::Fc16) => RequestPdu::WriteMultipleRegisters {
                address,
                values: vec![raw],
            },
            _ => return Err(rejected(command, MapError::ReadOnly(name).to_string())),
        };
        let req = Request {
            slave: self.map.slave,
            pdu,
        };
        // The echo is checked with the reply ([`match_reply`]): a wrong one is a bad frame.
        match self.exchange(link, obs, &req).await {
            Ok(_) => {
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
