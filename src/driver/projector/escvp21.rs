//! Epson projectors over RS-232 with ESC/VP21 (protocols.md §8): frames from
//! [`crate::codec::escvp21`] become readings (`power`, `lamp.1.hours`, `input`, `av_mute`),
//! faults (the `ERR?` code table, lamp life, failed ignition, abnormal state) and identity;
//! capability commands become `PWR ON/OFF`, `SOURCE xx`, `MUTE ON/OFF`.
//!
//! Every exchange is one command, at most one reply line, then the `:` prompt. `PWR ON` is the
//! exception that shapes this driver: its prompt arrives only once the lamp lit, up to 40, 70
//! or 100 s later over three ignition attempts, so the driver reports `busy` for the whole
//! wait and raises `lamp_ignition_failed` when no prompt came within the last window.
//!
//! # Silence, and what it means
//!
//! RS-232 has no carrier: a projector that stops answering looks the same as a cable pulled at
//! the projector's end. ESC/VP21 projectors in an *abnormal* state (lamp failure, abnormal
//! temperature) deliberately execute nothing and send no prompt while our port stays open
//! (protocols.md §8). The rule:
//!
//! * **Silence before the projector answered in this session** (no prompt to the null command
//!   in [`Driver::open`]) is a `Timeout`: nothing shows that anything is at the other end, so
//!   the runtime keeps the device `unreachable` and retries.
//! * **Silence after the projector answered in this session** (any reply timeout after the
//!   first prompt since `open`) is the fault `abnormal_state`. The device stays reachable and
//!   shows `faulted`; polls probe with the null command and clear the fault when the prompt
//!   comes back; commands are refused meanwhile. The fault message tells the technician to
//!   check the projector's indicators, because a cable pulled at the far end looks the same.
//! * **An I/O error or hang-up of the port** (USB adapter unplugged, the simulator's
//!   pseudo-terminal closed) is a link failure: `unreachable`, reconnect, `open`, full re-read.
//!
//! This driver must not know which transport carries it, and must not let a fault become an
//! `Err` where the projector merely reported something.

use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::codec::escvp21::{
    error_code_info, parse_error_code, parse_lamp_hours, parse_mute, parse_power, parse_serial,
    parse_source, reply_value, Escvp21Codec, Frame, PowerCode, Request,
};
use crate::codec::{printable, ProtocolError};
use crate::driver::{Driver, DriverError, Link, Observer, Step};
use crate::model::{DeviceCommand, Fault, Point, PowerState, Quantity, Severity, Value};
use crate::profile::{LampSpec, Profile, ProfileError};

/// What the technician reads when the projector falls silent.
pub const ABNORMAL_MESSAGE: &str = "projector silent: abnormal state (lamp failure or \
     over-temperature) or cable disconnected — check the projector's indicators";

/// How long `listen` waits in one read; it loops, so this only bounds one `read_frame` call.
const LISTEN_SLICE: Duration = Duration::from_secs(3600);

/// How a command or query ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    /// Prompt only (sets, the null command), or a reply that did not fit the request.
    Done,
    /// The reply line carrying the request's key (`PWR=01`), as received.
    Line(String),
    /// `ERR` then the prompt.
    Refused,
}

#[derive(Clone)]
pub struct Escvp21Driver {
    codec: Escvp21Codec,
    reply_timeout: Duration,
    ignition_timeout: Duration,
    ignition_retry: Duration,
    ignition_attempts: u32,
    open_probes: u32,
    source_settle: Duration,
    lamp: Option<LampSpec>,
    manufacturer: String,
    model: String,
    /// The projector sent a prompt since this session's `open`.
    answered: bool,
    /// `abnormal_state` is raised: the projector fell silent after answering.
    silent: bool,
    /// The last power code the projector reported.
    power: Option<PowerCode>,
    /// When we last changed the input (an `ERR` shortly after means the signal is changing).
    source_changed: Option<Instant>,
}

impl std::fmt::Debug for Escvp21Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Escvp21Driver")
            .field("answered", &self.answered)
            .field("silent", &self.silent)
            .field("power", &self.power)
            .finish()
    }
}

fn positive_secs(profile: &Profile, key: &str, default: f64) -> Result<Duration, ProfileError> {
    let v: f64 = profile.option(key, default)?;
    if !(v.is_finite() && v > 0.0 && v <= 3600.0) {
        return Err(ProfileError::Option {
            profile: profile.id.to_string(),
            key: key.to_owned(),
            message: format!("must be more than 0 and at most 3600 seconds, not {v}"),
        });
    }
    Ok(Duration::from_secs_f64(v))
}

fn count(profile: &Profile, key: &str, default: u32) -> Result<u32, ProfileError> {
    let v: u32 = profile.option(key, default)?;
    if !(1..=10).contains(&v) {
        return Err(ProfileError::Option {
            profile: profile.id.to_string(),
            key: key.to_owned(),
            message: format!("must be from 1 to 10, not {v}"),
        });
    }
    Ok(v)
}

impl Escvp21Driver {
    /// Options (profile `[options]`): `ignition_timeout_secs` (40), `ignition_retry_secs`
    /// (30), `ignition_attempts` (3) — the 40/70/100 s windows of protocols.md §8;
    /// `open_probes` (3) null commands before the port counts as dead; `source_settle_secs`
    /// (5) during which an `ERR` to `SOURCE` means the signal is still changing.
    pub fn new(profile: &Profile) -> Result<Self, ProfileError> {
        let model = match profile.models.as_slice() {
            [only] => only.clone(),
            _ => profile.family.clone(),
        };
        Ok(Self {
            codec: Escvp21Codec::new(),
            reply_timeout: profile.timing.reply_timeout,
            ignition_timeout: positive_secs(profile, "ignition_timeout_secs", 40.0)?,
            ignition_retry: positive_secs(profile, "ignition_retry_secs", 30.0)?,
            ignition_attempts: count(profile, "ignition_attempts", 3)?,
            open_probes: count(profile, "open_probes", 3)?,
            source_settle: {
                let v: f64 = profile.option("source_settle_secs", 5.0)?;
                if !(v.is_finite() && (0.0..=600.0).contains(&v)) {
                    return Err(ProfileError::Option {
                        profile: profile.id.to_string(),
                        key: "source_settle_secs".into(),
                        message: format!("must be from 0 to 600 seconds, not {v}"),
                    });
                }
                Duration::from_secs_f64(v)
            },
            lamp: profile.lamp.clone(),
            manufacturer: profile.vendor.clone(),
            model,
            answered: false,
            silent: false,
            power: None,
            source_changed: None,
        })
    }

    /// The total time `PWR ON` may take before the lamp counts as failed (100 s by default).
    pub fn ignition_limit(&self) -> Duration {
        self.ignition_timeout + self.ignition_retry * self.ignition_attempts.saturating_sub(1)
    }

    fn report_skipped(&mut self, obs: &mut Observer) {
        let skipped = self.codec.take_skipped();
        if skipped > 0 {
            obs.bad_input(&ProtocolError::Garbage { skipped });
        }
    }

    /// A prompt arrived: the projector is talking.
    fn heard(&mut self, obs: &mut Observer) {
        self.answered = true;
        obs.contact();
        if self.silent {
            self.silent = false;
            tracing::info!(device = %obs.device(), "escvp21: projector answers again");
            obs.faults("abnormal", Vec::new());
        }
    }

    fn enter_silence(&mut self, obs: &mut Observer) {
        if !self.silent {
            self.silent = true;
            tracing::warn!(device = %obs.device(), "escvp21: {ABNORMAL_MESSAGE}");
            obs.busy(false);
            obs.faults(
                "abnormal",
                vec![Fault::new(
                    "abnormal_state",
                    Severity::Fault,
                    ABNORMAL_MESSAGE,
                )],
            );
        }
    }

    /// Apply the silence rule to the outcome of a read: a timeout after the projector answered
    /// in this session is the abnormal state, reported as a fault, not as an error.
    fn absorb_silence(
        &mut self,
        obs: &mut Observer,
        res: Result<(), DriverError>,
    ) -> Result<(), DriverError> {
        match res {
            Err(DriverError::Timeout { .. }) if self.answered => {
                self.enter_silence(obs);
                // In the abnormal state silence is the projector's answer (the protocol's,
                // not a lost link): the comms monitor hears it as contact.
                obs.contact();
                Ok(())
            }
            other => other,
        }
    }

    /// Send one request and collect its answer up to the prompt.
    async fn exchange(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
        req: &Request,
    ) -> Result<Answer, DriverError> {
        // Whatever is buffered now answers nobody's request (ESC/VP21 has no request ids).
        let stale = link.discard_input();
        self.codec.reset();
        if stale > 0 {
            tracing::debug!(device = %obs.device(), bytes = stale, "escvp21: dropped stale input");
        }
        // The answer is the reply line before the prompt, kept as the codec framed it.
        let mut line: Option<String> = None;
        let mut refused = false;
        let read = link
            .converse(
                &mut self.codec,
                &req.encode(),
                self.reply_timeout,
                obs,
                |read, _| match read {
                    Ok(Frame::Colon) => Step::Done(()),
                    Ok(Frame::Err) => {
                        refused = true;
                        Step::Skip
                    }
                    Ok(Frame::Reply(l)) => match line.replace(l) {
                        Some(prev) => Step::Bad(ProtocolError::Unexpected {
                            expected: "one reply line".into(),
                            got: printable(prev.as_bytes(), 40),
                        }),
                        None => Step::Skip,
                    },
                    Err(p) => Step::Bad(p),
                },
            )
            .await;
        self.report_skipped(obs);
        read?;
        self.heard(obs);
        if refused {
            return Ok(Answer::Refused);
        }
        Ok(match (req.reply_key(), line) {
            (Some(key), Some(l)) => match reply_value(&l, key) {
                Ok((_, noise)) => {
                    if noise > 0 {
                        obs.bad_input(&ProtocolError::Garbage { skipped: noise });
                    }
                    Answer::Line(l)
                }
                Err(e) => {
                    obs.bad_input(&e);
                    Answer::Done
                }
            },
            (Some(key), None) => {
                obs.bad_input(&ProtocolError::Unexpected {
                    expected: format!("{key}=… before the prompt"),
                    got: "the prompt alone".into(),
                });
                Answer::Done
            }
            (None, Some(l)) => {
                obs.bad_input(&ProtocolError::Unexpected {
                    expected: format!("the prompt after {}", req.text()),
                    got: printable(l.as_bytes(), 40),
                });
                Answer::Done
            }
            (None, None) => Answer::Done,
        })
    }

    fn apply_power(&mut self, obs: &mut Observer, code: PowerCode) {
        self.power = Some(code);
        let state = match code {
            PowerCode::LampOn => PowerState::On,
            PowerCode::WarmUp => PowerState::WarmingUp,
            PowerCode::CoolDown => PowerState::CoolingDown,
            PowerCode::AbnormalStandby => PowerState::Abnormal,
            PowerCode::StandbyNetworkOff
            | PowerCode::StandbyNetworkOn
            | PowerCode::WirelessHdStandby
            | PowerCode::AvStandby => PowerState::Off,
        };
        obs.reading(Point::device(Quantity::Power), Value::Power(state));
        obs.busy(code.is_transitional());
        let pwr = if code == PowerCode::AbnormalStandby {
            vec![Fault::new(
                "abnormal_standby",
                Severity::Fault,
                "projector reports abnormal standby (PWR=05): check its indicators and error code",
            )]
        } else {
            Vec::new()
        };
        obs.faults("pwr", pwr);
        if matches!(code, PowerCode::LampOn | PowerCode::WarmUp) {
            obs.faults("ignition", Vec::new());
        }
    }

    async fn read_power(&mut self, link: &mut Link, obs: &mut Observer) -> Result<(), DriverError> {
        match self.exchange(link, obs, &Request::PowerQuery).await? {
            Answer::Line(l) => match parse_power(&l) {
                Ok(code) => self.apply_power(obs, code),
                Err(e) => {
                    obs.bad_input(&e);
                    self.power = None;
                    obs.reading(Point::device(Quantity::Power), Value::Unknown);
                }
            },
            Answer::Refused => {
                self.power = None;
                obs.reading(Point::device(Quantity::Power), Value::Unknown);
            }
            Answer::Done => {}
        }
        Ok(())
    }

    fn lamp_faults(&self, hours: u32) -> Vec<Fault> {
        let Some(spec) = &self.lamp else {
            return Vec::new();
        };
        let life = spec.life_hours;
        let message = if hours >= life {
            format!("lamp at {hours} h is past its rated {life} h: replace it")
        } else if hours >= spec.warn_at() {
            format!("lamp at {hours} h of {life} h rated life: order a replacement")
        } else {
            return Vec::new();
        };
        vec![Fault::new("lamp_life", Severity::Warning, message).on("lamp 1")]
    }

    async fn read_lamp(&mut self, link: &mut Link, obs: &mut Observer) -> Result<(), DriverError> {
        match self.exchange(link, obs, &Request::LampQuery).await? {
            Answer::Line(l) => match parse_lamp_hours(&l) {
                Ok(hours) => {
                    obs.reading(
                        Point::lamp(1, Quantity::LampHours),
                        Value::Int(hours.into()),
                    );
                    let faults = self.lamp_faults(hours);
                    obs.faults("lamp", faults);
                }
                Err(e) => obs.bad_input(&e),
            },
            // Laser models without a lamp timer refuse LAMP?.
            Answer::Refused => {
                obs.remove_reading(&Point::lamp(1, Quantity::LampHours));
                obs.faults("lamp", Vec::new());
            }
            Answer::Done => {}
        }
        Ok(())
    }

    async fn read_error(&mut self, link: &mut Link, obs: &mut Observer) -> Result<(), DriverError> {
        if let Answer::Line(l) = self.exchange(link, obs, &Request::ErrorQuery).await? {
            match parse_error_code(&l) {
                Ok(0) => obs.faults("err", Vec::new()),
                Ok(code) => obs.faults("err", vec![error_fault(code)]),
                Err(e) => obs.bad_input(&e),
            }
        }
        Ok(())
    }

    async fn read_picture(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
    ) -> Result<(), DriverError> {
        if self.power != Some(PowerCode::LampOn) {
            // Input and mute mean nothing without a picture; the projector refuses the queries.
            obs.remove_reading(&Point::device(Quantity::Input));
            obs.remove_reading(&Point::device(Quantity::AvMute));
            return Ok(());
        }
        if let Answer::Line(l) = self.exchange(link, obs, &Request::SourceQuery).await? {
            match parse_source(&l) {
                Ok(code) => obs.reading(Point::device(Quantity::Input), Value::Text(code)),
                Err(e) => obs.bad_input(&e),
            }
        }
        if let Answer::Line(l) = self.exchange(link, obs, &Request::MuteQuery).await? {
            match parse_mute(&l) {
                Ok(on) => obs.reading(Point::device(Quantity::AvMute), Value::Bool(on)),
                Err(e) => obs.bad_input(&e),
            }
        }
        Ok(())
    }

    async fn read_identity(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
    ) -> Result<(), DriverError> {
        let serial = match self.exchange(link, obs, &Request::SerialQuery).await? {
            Answer::Line(l) => match parse_serial(&l) {
                Ok(s) => Some(s),
                Err(e) => {
                    obs.bad_input(&e);
                    None
                }
            },
            _ => None,
        };
        let (manufacturer, model) = (self.manufacturer.clone(), self.model.clone());
        obs.identity(|id| {
            id.manufacturer = Some(manufacturer);
            id.model = Some(model);
            if serial.is_some() {
                id.serial = serial;
            }
        });
        Ok(())
    }

    async fn read_state(&mut self, link: &mut Link, obs: &mut Observer) -> Result<(), DriverError> {
        self.read_power(link, obs).await?;
        self.read_lamp(link, obs).await?;
        self.read_error(link, obs).await?;
        self.read_picture(link, obs).await?;
        // SNO? every time: on RS-232 a projector can be swapped without the port noticing, and
        // the equipment archive should learn the new serial number.
        self.read_identity(link, obs).await
    }

    /// While silent, one null command decides whether the projector is back.
    async fn still_silent(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
    ) -> Result<bool, DriverError> {
        if !self.silent {
            return Ok(false);
        }
        match self.exchange(link, obs, &Request::Null).await {
            Ok(_) => Ok(false),
            Err(DriverError::Timeout { .. }) => {
                // Still the abnormal state's silence: the answer the protocol gives.
                obs.contact();
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }

    fn silent_refusal(req: &Request) -> DriverError {
        DriverError::Refused {
            command: req.text(),
            reason: ABNORMAL_MESSAGE.into(),
        }
    }

    /// The error for an `ERR` answer: busy while the projector is warming up or cooling down,
    /// or while the input signal is still changing; otherwise a refusal.
    fn refusal(&self, req: &Request) -> DriverError {
        let command = req.text();
        if let Some(p) = self.power.filter(|p| p.is_transitional()) {
            return DriverError::Busy {
                command,
                reason: format!("projector is in {}", p.describe()),
                ready_in: None,
            };
        }
        if matches!(req, Request::SourceSet(_))
            && self
                .source_changed
                .is_some_and(|t| t.elapsed() < self.source_settle)
        {
            return DriverError::Busy {
                command,
                reason: "input signal is still changing".into(),
                ready_in: None,
            };
        }
        DriverError::Refused {
            command,
            reason: match self.power {
                Some(p) => format!("projector answered ERR (power: {})", p.describe()),
                None => "projector answered ERR".into(),
            },
        }
    }

    /// A command answered by the prompt alone.
    async fn command(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
        req: &Request,
    ) -> Result<(), DriverError> {
        if self.still_silent(link, obs).await? {
            return Err(Self::silent_refusal(req));
        }
        match self.exchange(link, obs, req).await {
            Ok(Answer::Refused) => Err(self.refusal(req)),
            Ok(_) => Ok(()),
            Err(DriverError::Timeout { .. }) if self.answered => {
                self.enter_silence(obs);
                obs.contact();
                Err(Self::silent_refusal(req))
            }
            Err(e) => Err(e),
        }
    }

    /// Re-read power after a power command, under the silence rule.
    async fn refresh_power(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
    ) -> Result<(), DriverError> {
        let r = self.read_power(link, obs).await;
        self.absorb_silence(obs, r)
    }

    /// `PWR ON`: the prompt comes only once the lamp lit. Busy for the whole wait; no prompt
    /// within the last ignition window is a lamp failure (protocols.md §8).
    async fn power_on(&mut self, link: &mut Link, obs: &mut Observer) -> Result<(), DriverError> {
        let req = Request::PowerOn;
        if self.still_silent(link, obs).await? {
            return Err(Self::silent_refusal(&req));
        }
        if self.power == Some(PowerCode::LampOn) {
            // Already lit: the prompt comes at once.
            return self.command(link, obs, &req).await;
        }
        link.discard_input();
        self.codec.reset();
        obs.busy(true);
        obs.reading(
            Point::device(Quantity::Power),
            Value::Power(PowerState::WarmingUp),
        );
        if let Err(e) = link.send(&req.encode()).await {
            obs.busy(false);
            return Err(e);
        }
        let start = Instant::now();
        let mut refused = false;
        for attempt in 1..=self.ignition_attempts {
            let window_end = start + self.ignition_timeout + self.ignition_retry * (attempt - 1);
            let wait = window_end.saturating_duration_since(Instant::now());
            // The request is on the line already: each window only waits for its prompt.
            let read = link
                .converse(&mut self.codec, b"", wait, obs, |read, _| match read {
                    Ok(Frame::Colon) => Step::Done(()),
                    Ok(Frame::Err) => {
                        refused = true;
                        Step::Skip
                    }
                    Ok(Frame::Reply(l)) => Step::Bad(ProtocolError::Unexpected {
                        expected: "the prompt after PWR ON".into(),
                        got: printable(l.as_bytes(), 40),
                    }),
                    Err(p) => Step::Bad(p),
                })
                .await;
            self.report_skipped(obs);
            match read {
                Ok(()) => {
                    self.heard(obs);
                    tracing::info!(
                        device = %obs.device(),
                        attempt,
                        secs = start.elapsed().as_secs_f64(),
                        "escvp21: PWR ON answered"
                    );
                    if refused {
                        // Cooling down, typically: re-read power, then say why.
                        self.refresh_power(link, obs).await?;
                        return Err(self.refusal(&req));
                    }
                    obs.faults("ignition", Vec::new());
                    return self.refresh_power(link, obs).await;
                }
                Err(DriverError::Timeout { .. }) => {
                    if attempt < self.ignition_attempts {
                        tracing::info!(
                            device = %obs.device(),
                            attempt,
                            "escvp21: lamp not lit within ignition window {attempt}; the projector retries"
                        );
                    }
                }
                Err(e) => return Err(e),
            }
        }
        let attempts = self.ignition_attempts;
        let waited = start.elapsed().as_secs();
        tracing::error!(device = %obs.device(), attempts, waited, "escvp21: lamp ignition failed");
        self.power = None;
        obs.busy(false);
        obs.reading(Point::device(Quantity::Power), Value::Unknown);
        obs.faults(
            "ignition",
            vec![Fault::new(
                "lamp_ignition_failed",
                Severity::Fault,
                format!(
                    "lamp did not ignite after {attempts} attempts (no prompt {waited} s after \
                     PWR ON): check the lamp and lamp cover"
                ),
            )
            .on("lamp 1")],
        );
        Err(DriverError::Refused {
            command: req.text(),
            reason: format!("lamp did not ignite after {attempts} attempts"),
        })
    }
}

/// The fault for an `ERR?` code other than 00.
fn error_fault(code: u8) -> Fault {
    match error_code_info(code) {
        Some(info) => Fault::new(
            info.fault,
            Severity::Fault,
            format!("{} (ERR={code:02X})", info.message),
        )
        .on(info.component),
        None => Fault::new(
            "device_error",
            Severity::Fault,
            format!("projector reports error code {code:02X}, not in the known code table"),
        ),
    }
}

#[async_trait]
impl Driver for Escvp21Driver {
    fn name(&self) -> &'static str {
        "escvp21"
    }

    fn fresh(&self) -> Option<Box<dyn Driver>> {
        Some(Box::new(self.clone()))
    }

    /// Null commands until the `:` prompt: the projector is there and ready.
    async fn open(&mut self, link: &mut Link, obs: &mut Observer) -> Result<(), DriverError> {
        self.answered = false;
        self.codec = Escvp21Codec::new();
        link.take_fresh();
        for probe in 1..=self.open_probes {
            match self.exchange(link, obs, &Request::Null).await {
                Ok(_) => return Ok(()),
                Err(DriverError::Timeout { .. }) => {
                    tracing::debug!(device = %obs.device(), probe, "escvp21: no prompt to the null command");
                }
                Err(e) => return Err(e),
            }
        }
        Err(DriverError::Timeout {
            waited_ms: (self.reply_timeout * self.open_probes).as_millis() as u64,
        })
    }

    /// Also every poll (the trait's default): a full read is six short exchanges. While the
    /// projector is silent, one null command decides whether it is back before anything else.
    async fn read_all(&mut self, link: &mut Link, obs: &mut Observer) -> Result<(), DriverError> {
        if self.still_silent(link, obs).await? {
            return Ok(());
        }
        let r = self.read_state(link, obs).await;
        self.absorb_silence(obs, r)
    }

    async fn execute(
        &mut self,
        link: &mut Link,
        obs: &mut Observer,
        command: &DeviceCommand,
    ) -> Result<(), DriverError> {
        match command {
            DeviceCommand::Power { on: true } => self.power_on(link, obs).await,
            DeviceCommand::Power { on: false } => {
                self.command(link, obs, &Request::PowerOff).await?;
                self.refresh_power(link, obs).await
            }
            DeviceCommand::SelectInput { input } => {
                let req = Request::source(input).map_err(|e| DriverError::Rejected {
                    command: format!("SOURCE {}", printable(input.as_bytes(), 16)),
                    reason: e.to_string(),
                })?;
                self.command(link, obs, &req).await?;
                self.source_changed = Some(Instant::now());
                if let Request::SourceSet(code) = req {
                    obs.reading(Point::device(Quantity::Input), Value::Text(code));
                }
                Ok(())
            }
            DeviceCommand::AvMute { on } => {
                self.command(link, obs, &Request::MuteSet(*on)).await?;
                obs.reading(Point::device(Quantity::AvMute), Value::Bool(*on));
                Ok(())
            }
            DeviceCommand::Refresh => self.read_all(link, obs).await,
            other => Err(DriverError::Unsupported {
                driver: "escvp21",
                command: other.name(),
            }),
        }
    }

    /// ESC/VP21 never speaks unasked. Whatever arrives between exchanges (a late prompt after a
    /// timeout, line noise) is drained here so it cannot be taken for the next answer, and a
    /// hang-up of the port is noticed at once instead of at the next poll.
    async fn listen(&mut self, link: &mut Link, obs: &mut Observer) -> Result<(), DriverError> {
        loop {
            let r = link.read_frame(&mut self.codec, LISTEN_SLICE).await;
            self.report_skipped(obs);
            match r {
                Ok(frame) => {
                    tracing::debug!(device = %obs.device(), ?frame, "escvp21: unsolicited input dropped");
                }
                Err(DriverError::Protocol(p)) => obs.bad_input(&p),
                Err(DriverError::Timeout { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The driver against the simulator over an in-memory duplex, in paused time, so the
    //! protocol's real 40/70/100 s windows run in milliseconds. The pseudo-terminal path is
    //! covered by `tests/it/escvp21.rs`.

    use std::sync::Arc;

    use chrono::TimeZone;
    use tokio::sync::watch;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::clock::Clock;
    use crate::events::EventBus;
    use crate::metrics::Metrics;
    use crate::model::{DeviceId, DeviceState, Health, ProfileId, RoomId};
    use crate::profile::ProfileSet;
    use crate::sim::escvp21::{Escvp21Sim, SimConfig};

    struct Rig {
        driver: Escvp21Driver,
        link: Link,
        obs: Observer,
        state: watch::Receiver<DeviceState>,
        sim: Escvp21Sim,
        _cancel: tokio_util::sync::DropGuard,
    }

    impl Rig {
        async fn poll(&mut self) -> Result<(), DriverError> {
            self.driver.poll(&mut self.link, &mut self.obs).await
        }
        async fn read_all(&mut self) -> Result<(), DriverError> {
            self.driver.read_all(&mut self.link, &mut self.obs).await
        }
        async fn exec(&mut self, c: DeviceCommand) -> Result<(), DriverError> {
            self.driver.execute(&mut self.link, &mut self.obs, &c).await
        }
        fn state(&self) -> DeviceState {
            self.state.borrow().clone()
        }
        fn value(&self, point: &Point) -> Option<Value> {
            self.state().reading(point).map(|r| r.value.clone())
        }
        fn fault_codes(&self) -> Vec<String> {
            self.state()
                .faults
                .iter()
                .map(|f| f.fault.code.clone())
                .collect()
        }
    }

    fn profile() -> Profile {
        ProfileSet::embedded()
            .expect("profiles")
            .get("epson-escvp21")
            .expect("epson-escvp21 profile")
            .clone()
    }

    async fn rig(cfg: SimConfig) -> Rig {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let cancel = CancellationToken::new();
        let sim = Escvp21Sim::spawn_stream(cfg, theirs, cancel.clone());
        let link = Link::over(ours);
        let clock =
            Clock::starting_at(chrono::Utc.with_ymd_and_hms(2026, 11, 27, 9, 0, 0).unwrap());
        let mut initial = DeviceState::new(
            DeviceId::new("proj-1"),
            RoomId::new("room-1"),
            ProfileId::new("epson-escvp21"),
            "duplex".into(),
            clock.now(),
        );
        // As the runtime would have it once the link is up.
        initial.reachable = true;
        let (tx, rx) = watch::channel(initial);
        let obs = Observer::new(clock, Arc::new(tx), EventBus::new(Metrics::new()));
        let mut r = Rig {
            driver: Escvp21Driver::new(&profile()).expect("driver"),
            link,
            obs,
            state: rx,
            sim,
            _cancel: cancel.drop_guard(),
        };
        r.driver
            .open(&mut r.link, &mut r.obs)
            .await
            .expect("open: the null command gets its prompt");
        r
    }

    fn on() -> SimConfig {
        SimConfig {
            power_on: true,
            ..SimConfig::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn full_read_in_standby_follows_the_section_8_dialogue() {
        let mut r = rig(SimConfig::default()).await;
        r.read_all().await.unwrap();
        assert_eq!(
            r.value(&Point::device(Quantity::Power)),
            Some(Value::Power(PowerState::Off))
        );
        assert_eq!(
            r.value(&Point::lamp(1, Quantity::LampHours)),
            Some(Value::Int(1234))
        );
        assert_eq!(
            r.value(&Point::device(Quantity::Input)),
            None,
            "no input without a picture"
        );
        let s = r.state();
        assert_eq!(s.identity.serial.as_deref(), Some("X4Y5Z6000123"));
        assert_eq!(s.identity.manufacturer.as_deref(), Some("Epson"));
        assert!(s.identity.model.is_some());
        assert_eq!(s.health, Health::Ok);
        assert!(!s.busy);
        assert_eq!(s.counters.bad_frames, 0);
        // open's null command, then PWR? LAMP? ERR? SNO?.
        assert_eq!(r.sim.status().lines_received, 5);
        assert_eq!(r.sim.status().last_line.as_deref(), Some("SNO?"));
    }

    #[tokio::test(start_paused = true)]
    async fn full_read_with_the_lamp_on() {
        let mut r = rig(on()).await;
        r.read_all().await.unwrap();
        assert_eq!(
            r.value(&Point::device(Quantity::Power)),
            Some(Value::Power(PowerState::On))
        );
        assert_eq!(
            r.value(&Point::device(Quantity::Input)),
            Some(Value::Text("30".into()))
        );
        assert_eq!(
            r.value(&Point::device(Quantity::AvMute)),
            Some(Value::Bool(false))
        );
        assert_eq!(r.state().health, Health::Ok);
    }

    #[tokio::test(start_paused = true)]
    async fn ignition_on_the_second_attempt_is_busy_until_the_prompt() {
        let mut r = rig(SimConfig {
            failed_ignitions: 1,
            ignition: Duration::from_secs(8),
            warm_up: Duration::from_secs(30),
            ..SimConfig::default()
        })
        .await;
        r.read_all().await.unwrap();
        let mut watch = r.state.clone();
        let sim = r.sim.clone();
        // Sample the published state 45 s into the wait: first window over, prompt not yet.
        let probe = crate::test_spawn(async move {
            tokio::time::sleep(Duration::from_secs(45)).await;
            let s = watch.borrow_and_update().clone();
            (s, sim.status())
        });
        let t0 = Instant::now();
        r.exec(DeviceCommand::Power { on: true }).await.unwrap();
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_secs(48) && took < Duration::from_secs(49),
            "prompt after 40 s failed window + 8 s strike, took {took:?}"
        );
        let (mid, sim_mid) = probe.await.unwrap();
        assert!(mid.busy, "busy during the ignition silence");
        assert_eq!(mid.health, Health::Busy);
        assert!(sim_mid.igniting && sim_mid.ignition_attempt == 2);
        assert_eq!(
            mid.reading(&Point::device(Quantity::Power))
                .map(|r| r.value.clone()),
            Some(Value::Power(PowerState::WarmingUp))
        );
        // Lit: warming up now, still busy; on after the warm-up.
        assert_eq!(
            r.value(&Point::device(Quantity::Power)),
            Some(Value::Power(PowerState::WarmingUp))
        );
        assert!(r.state().busy);
        tokio::time::sleep(Duration::from_secs(31)).await;
        r.poll().await.unwrap();
        assert_eq!(
            r.value(&Point::device(Quantity::Power)),
            Some(Value::Power(PowerState::On))
        );
        assert!(!r.state().busy);
        assert_eq!(r.state().health, Health::Ok);
        // The projector got exactly one PWR ON.
        assert_eq!(r.sim.status().power, PowerCode::LampOn);
    }

    #[tokio::test(start_paused = true)]
    async fn three_failed_ignitions_are_a_lamp_fault_after_100_s() {
        let mut r = rig(SimConfig {
            failed_ignitions: 3,
            ..SimConfig::default()
        })
        .await;
        r.read_all().await.unwrap();
        let t0 = Instant::now();
        let err = r.exec(DeviceCommand::Power { on: true }).await.unwrap_err();
        let took = t0.elapsed();
        assert_eq!(
            took,
            r.driver.ignition_limit(),
            "gave up at the last window"
        );
        assert_eq!(took, Duration::from_secs(100));
        assert!(matches!(err, DriverError::Refused { .. }), "{err}");
        assert!(!err.is_link_failure());
        assert_eq!(r.fault_codes(), vec!["lamp_ignition_failed"]);
        let s = r.state();
        assert!(!s.busy);
        assert_eq!(s.health, Health::Faulted);
        assert_eq!(
            s.reading(&Point::device(Quantity::Power))
                .map(|r| r.value.clone()),
            Some(Value::Unknown)
        );
        // The projector is now silent (lamp failure is an abnormal state): reported, not an error.
        r.poll().await.unwrap();
        let mut codes = r.fault_codes();
        codes.sort();
        assert_eq!(codes, vec!["abnormal_state", "lamp_ignition_failed"]);
        assert!(r.state().reachable);
        // The technician power-cycles it: it answers again, reporting the lamp error.
        r.sim.set_abnormal(false).await;
        r.poll().await.unwrap();
        let mut codes = r.fault_codes();
        codes.sort();
        assert_eq!(codes, vec!["lamp", "lamp_ignition_failed"]);
    }

    #[tokio::test(start_paused = true)]
    async fn silence_before_any_prompt_is_a_timeout_not_a_fault() {
        let (ours, theirs) = tokio::io::duplex(4096);
        let cancel = CancellationToken::new();
        let sim = Escvp21Sim::spawn_stream(SimConfig::default(), theirs, cancel.clone());
        sim.set_abnormal(true).await;
        let mut link = Link::over(ours);
        let clock =
            Clock::starting_at(chrono::Utc.with_ymd_and_hms(2026, 11, 27, 9, 0, 0).unwrap());
        let (tx, rx) = watch::channel(DeviceState::new(
            DeviceId::new("p"),
            RoomId::new("r"),
            ProfileId::new("epson-escvp21"),
            "duplex".into(),
            clock.now(),
        ));
        let mut obs = Observer::new(clock, Arc::new(tx), EventBus::new(Metrics::new()));
        let mut d = Escvp21Driver::new(&profile()).unwrap();
        let err = d.open(&mut link, &mut obs).await.unwrap_err();
        assert!(matches!(err, DriverError::Timeout { .. }), "{err}");
        assert!(rx.borrow().faults.is_empty());
        assert_eq!(sim.status().lines_received, 3, "three null-command probes");
        cancel.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn silence_after_answers_is_the_abnormal_state_fault() {
        let mut r = rig(on()).await;
        r.read_all().await.unwrap();
        r.sim.set_abnormal(true).await;
        r.poll()
            .await
            .expect("silence is reported as a fault, not an error");
        assert_eq!(r.fault_codes(), vec!["abnormal_state"]);
        let s = r.state();
        assert_eq!(s.health, Health::Faulted);
        assert!(s.reachable);
        assert!(s.faults[0]
            .fault
            .message
            .contains("check the projector's indicators"));
        // Commands are refused (the device is there but executes nothing), not link failures.
        let err = r
            .exec(DeviceCommand::AvMute { on: true })
            .await
            .unwrap_err();
        assert!(matches!(err, DriverError::Refused { .. }), "{err}");
        let err = r.exec(DeviceCommand::Power { on: true }).await.unwrap_err();
        assert!(matches!(err, DriverError::Refused { .. }), "{err}");
        // Further polls keep the fault without erroring.
        r.poll().await.unwrap();
        assert_eq!(r.fault_codes(), vec!["abnormal_state"]);
        // Power-cycled: the prompt is back, the fault clears, state is re-read.
        r.sim.set_abnormal(false).await;
        r.poll().await.unwrap();
        assert!(r.fault_codes().is_empty());
        assert_eq!(
            r.value(&Point::device(Quantity::Power)),
            Some(Value::Power(PowerState::Off))
        );
        assert_eq!(r.state().health, Health::Ok);
    }

    #[tokio::test(start_paused = true)]
    async fn err_answers_become_refused_or_busy() {
        let mut r = rig(SimConfig {
            warm_up: Duration::from_secs(30),
            cool_down: Duration::from_secs(60),
            ignition: Duration::from_secs(5),
            ..SimConfig::default()
        })
        .await;
        r.read_all().await.unwrap();
        // Standby: no picture to mute.
        let err = r
            .exec(DeviceCommand::AvMute { on: true })
            .await
            .unwrap_err();
        assert!(matches!(err, DriverError::Refused { .. }), "{err}");
        // Not a valid input code: rejected before anything is sent.
        let before = r.sim.status().lines_received;
        let err = r
            .exec(DeviceCommand::SelectInput {
                input: "HDMI1".into(),
            })
            .await
            .unwrap_err();
        assert!(matches!(err, DriverError::Rejected { .. }), "{err}");
        assert_eq!(r.sim.status().lines_received, before);
        // Warming up: PWR OFF is not executed until fully started → busy, not refused.
        r.exec(DeviceCommand::Power { on: true }).await.unwrap();
        let err = r
            .exec(DeviceCommand::Power { on: false })
            .await
            .unwrap_err();
        assert!(matches!(err, DriverError::Busy { .. }), "{err}");
        tokio::time::sleep(Duration::from_secs(31)).await;
        r.poll().await.unwrap();
        // On: input changes; a second change while the signal settles is busy.
        r.exec(DeviceCommand::SelectInput { input: "a0".into() })
            .await
            .unwrap();
        assert_eq!(
            r.value(&Point::device(Quantity::Input)),
            Some(Value::Text("A0".into()))
        );
        let err = r
            .exec(DeviceCommand::SelectInput { input: "30".into() })
            .await
            .unwrap_err();
        assert!(matches!(err, DriverError::Busy { .. }), "{err}");
        tokio::time::sleep(Duration::from_secs(3)).await;
        r.exec(DeviceCommand::SelectInput { input: "30".into() })
            .await
            .unwrap();
        assert_eq!(r.sim.status().source, "30");
        r.exec(DeviceCommand::AvMute { on: true }).await.unwrap();
        assert!(r.sim.status().mute);
        assert_eq!(
            r.value(&Point::device(Quantity::AvMute)),
            Some(Value::Bool(true))
        );
        // Off: cooling down, busy; PWR ON meanwhile is busy too.
        r.exec(DeviceCommand::Power { on: false }).await.unwrap();
        assert_eq!(
            r.value(&Point::device(Quantity::Power)),
            Some(Value::Power(PowerState::CoolingDown))
        );
        assert!(r.state().busy);
        let err = r.exec(DeviceCommand::Power { on: true }).await.unwrap_err();
        assert!(matches!(err, DriverError::Busy { .. }), "{err}");
        assert!(r.state().busy, "still cooling down");
        let err = r
            .exec(DeviceCommand::SetGain {
                channel: 1,
                db: 0.0,
            })
            .await
            .unwrap_err();
        assert!(matches!(err, DriverError::Unsupported { .. }), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn error_code_is_a_fault_from_the_table() {
        let mut r = rig(SimConfig {
            error_code: 0x04,
            ..SimConfig::default()
        })
        .await;
        r.read_all().await.unwrap();
        let s = r.state();
        assert_eq!(s.faults.len(), 1);
        let f = &s.faults[0].fault;
        assert_eq!(f.code, "temperature");
        assert_eq!(f.severity, Severity::Fault);
        assert!(f.message.contains("ERR=04"), "{}", f.message);
        r.sim.set_error_code(0x42).await;
        r.poll().await.unwrap();
        assert_eq!(r.fault_codes(), vec!["device_error"]);
        r.sim.set_error_code(0).await;
        r.poll().await.unwrap();
        assert!(r.fault_codes().is_empty());
        assert_eq!(r.state().health, Health::Ok);
    }

    #[tokio::test(start_paused = true)]
    async fn lamp_hours_advance_while_lit_and_warn_near_end_of_life() {
        let mut r = rig(SimConfig {
            power_on: true,
            lamp_hours: 4498,
            ..SimConfig::default()
        })
        .await;
        r.read_all().await.unwrap();
        assert_eq!(
            r.value(&Point::lamp(1, Quantity::LampHours)),
            Some(Value::Int(4498))
        );
        assert!(r.fault_codes().is_empty());
        tokio::time::sleep(Duration::from_secs(2 * 3600)).await;
        r.poll().await.unwrap();
        assert_eq!(
            r.value(&Point::lamp(1, Quantity::LampHours)),
            Some(Value::Int(4500))
        );
        assert_eq!(r.fault_codes(), vec!["lamp_life"]);
        assert_eq!(r.state().health, Health::Degraded);
        r.sim.set_lamp_hours(5100).await;
        r.poll().await.unwrap();
        let s = r.state();
        assert!(s.faults[0].fault.message.contains("past its rated"));
        // Warnings do not stop commands.
        r.exec(DeviceCommand::AvMute { on: true }).await.unwrap();
        assert!(r.sim.status().mute);
    }

    #[tokio::test(start_paused = true)]
    async fn line_noise_in_replies_is_counted_and_the_answers_survive() {
        let mut r = rig(on()).await;
        r.sim.set_reply_noise(b"\xff\x00\x13".to_vec()).await;
        r.read_all().await.unwrap();
        assert_eq!(
            r.value(&Point::device(Quantity::Power)),
            Some(Value::Power(PowerState::On))
        );
        assert_eq!(
            r.value(&Point::lamp(1, Quantity::LampHours)),
            Some(Value::Int(1234))
        );
        assert!(r.state().counters.bad_frames >= 1);
        // Printable noise glued to the key is tolerated too.
        r.sim.set_reply_noise(b"x#".to_vec()).await;
        r.sim.set_lamp_hours(77).await;
        r.poll().await.unwrap();
        assert_eq!(
            r.value(&Point::lamp(1, Quantity::LampHours)),
            Some(Value::Int(77))
        );
        assert_eq!(r.state().health, Health::Ok);
    }

    #[tokio::test(start_paused = true)]
    async fn oversized_line_between_exchanges_is_bounded_and_counted() {
        let mut r = rig(on()).await;
        r.read_all().await.unwrap();
        let mut noise = vec![b'A'; 10_000];
        noise.push(b'\r');
        assert!(r.sim.inject(noise).await);
        // listen drains it (the runtime runs listen between polls).
        let _ = tokio::time::timeout(
            Duration::from_millis(50),
            r.driver.listen(&mut r.link, &mut r.obs),
        )
        .await;
        assert!(r.state().counters.oversized_frames >= 1);
        // The link ends the session at the oversized line (issue 16.4); the runtime reopens it
        // after its backoff (escvp21::garbage_and_oversized_lines_are_bounded_and_counted).
        assert!(!r.link.is_open());
        assert_eq!(
            r.value(&Point::device(Quantity::Power)),
            Some(Value::Power(PowerState::On))
        );
    }

    #[test]
    fn options_are_validated() {
        let mut p = profile();
        p.options
            .insert("ignition_timeout_secs".into(), toml::Value::Integer(0));
        assert!(Escvp21Driver::new(&p).is_err());
        let mut p = profile();
        p.options
            .insert("ignition_attempts".into(), toml::Value::String("3".into()));
        assert!(Escvp21Driver::new(&p).is_err());
        let d = Escvp21Driver::new(&profile()).unwrap();
        assert_eq!(d.ignition_limit(), Duration::from_secs(100));
    }
}
