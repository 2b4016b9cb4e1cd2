//! Builds the daemon from a validated config and runs it: simulators (for simulated devices),
//! device actors under the supervisor, the API server, signals, sd_notify, and one shutdown
//! tree with a deadline.
//!
//! This is the only layer that may use `anyhow`: it reports, it does not decide.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, ApiState};
use crate::clock::Clock;
use crate::config::{DeviceConfig, SiteConfig};
use crate::events::{EventBus, EventKind};
use crate::metrics::Metrics;
use crate::model::DeviceId;
use crate::profile::{LinkKind, Profile};
use crate::records::{EquipmentSeed, LogbookHandle, WriterConfig};
use crate::runtime::{DeviceSpec, Fleet};
use crate::sim::{SimBind, SimEndpoint};
use crate::transport::serial::{Parity, SerialSpec};
use crate::transport::tcp::TcpSpec;
use crate::transport::LinkSpec;
use crate::watchdog::Probe;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The commit the binary was built from (`build.rs`), `unknown` outside a checkout.
pub const COMMIT: &str = env!("AVWARDEN_COMMIT");
/// What `avwarden --version` prints after the name: the version and the commit.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("AVWARDEN_COMMIT"),
    ")"
);

/// How to start.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// Run the simulator of every `simulated = true` device inside this process.
    pub with_simulators: bool,
    /// Override the API bind address (tests use port 0).
    pub api_bind: Option<SocketAddr>,
    /// Make the demo's bookings over the next hours at start.
    pub demo_bookings: bool,
}

/// One part of the daemon: the tasks it runs and the token that stops them. The daemon is a
/// list of these, started in order (the store, MQTT, simulators, devices, archive, API); a
/// subsystem plugs in as one more. At shutdown every service is told at once and each is
/// waited for, newest first, within the deadline; the store's writer comes after them (it
/// commits what the others said on their way out), and the simulators last of all.
pub struct Service {
    pub name: &'static str,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl Service {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }
    }

    /// The token the service's tasks stop on.
    pub fn cancel(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// The tracker its tasks run on.
    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    fn stop(&self) {
        self.cancel.cancel();
        self.tasks.close();
    }

    /// Whether its tasks ended by `until`.
    async fn stopped_by(&self, until: tokio::time::Instant) -> bool {
        tokio::time::timeout_at(until, self.tasks.wait())
            .await
            .is_ok()
    }
}

/// A running daemon.
pub struct Daemon {
    pub api_addr: SocketAddr,
    pub fleet: Arc<Fleet>,
    pub events: EventBus,
    pub clock: Clock,
    pub simulators: Vec<(DeviceId, SimEndpoint)>,
    /// The control handles of the in-process simulators that have one, for the demo's
    /// scenario, which injects its faults through them.
    pub sim_controls: Vec<(DeviceId, crate::sim::SimControl)>,
    /// The daemon's one MQTT client, when the site has `[mqtt]`.
    pub mqtt: Option<crate::transport::mqtt::MqttHandle>,
    /// The equipment archive and maintenance logbook.
    pub logbook: LogbookHandle,
    /// Bookings, self-tests and verdicts.
    pub schedule: crate::schedule::ScheduleHandle,
    /// Each protected zone's state, as the level watch publishes it.
    pub protection: crate::levelwatch::ProtectionBoard,
    /// Alerts, maintenance windows and the roster.
    pub playbook: crate::playbook::PlaybookHandle,
    /// The webhook and mail sinks' progress (none without `[notify]`).
    pub notify: crate::notify::NotifyHandle,
    /// Re-reads the site config and applies it (SIGHUP, `POST /api/v1/reload`).
    pub reload: crate::reload::ReloadHandle,
    /// Everything but the store and the simulators, in start order.
    services: Vec<Service>,
    store: Service,
    simulation: Service,
    /// Kept for the daemon's lifetime (rumqttd runs until the process exits).
    _broker: Option<crate::transport::mqtt::EmbeddedBroker>,
    site: String,
    deadline: Duration,
}

/// How the shutdown went.
#[derive(Debug, Clone)]
pub struct ShutdownReport {
    /// Every service stopped within the deadline. The logbook writer is not one of them: when
    /// the store holds it past the deadline, it is abandoned and `writer_done` is false.
    pub within_deadline: bool,
    /// The services still running at the deadline.
    pub late: Vec<&'static str>,
    pub elapsed: Duration,
    /// The logbook writer committed everything before the deadline.
    pub writer_done: bool,
    /// Entries the writer still held when abandoned, when the store had said it was failing.
    pub entries_lost: Option<u64>,
}

impl Daemon {
    pub async fn start(
        cfg: SiteConfig,
        opts: StartOptions,
        clock: Clock,
    ) -> anyhow::Result<Daemon> {
        let metrics = Metrics::new();
        let events = EventBus::new(metrics.clone());
        let (store, logbook) = start_store(&cfg, &events, clock);
        // Taken before anything can raise an alert, so the MQTT sink misses none.
        let alert_sink = cfg.mqtt.as_ref().map(|m| {
            events.sink(
                "mqtt-alerts",
                crate::mqtt_out::alerts::filter(),
                m.settings.alert_queue.clamp(64, 4096),
            )
        });
        let mut services = Vec::new();
        let mqtt_service = Service::new("mqtt");
        let (mqtt, broker) = start_mqtt(&cfg, &mqtt_service).await?;
        if mqtt.is_some() {
            services.push(mqtt_service);
        }
        let simulation = Service::new("simulators");
        let (devices, simulators, sim_tokens, sim_controls) =
            start_simulators(&cfg, &opts, clock, &simulation).await?;
        let devices_service = Service::new("devices");
        let fleet = start_devices(
            &cfg,
            &devices,
            &events,
            clock,
            mqtt.as_ref(),
            &devices_service,
        )?;
        // The devices are most of the heap: their service gives its free pages back too.
        crate::heap::spawn_trimmer(devices_service.tasks(), devices_service.cancel());
        services.push(devices_service);
        let archive = Service::new("archive");
        start_archive(&devices, &fleet, &logbook, clock, &archive);
        services.push(archive);
        let schedule_service = Service::new("schedule");
        let schedule = start_schedule(
            &cfg,
            &opts,
            &fleet,
            &logbook,
            &events,
            clock,
            &schedule_service,
        );
        services.push(schedule_service);
        let levelwatch = Service::new("levelwatch");
        let protection = start_levelwatch(&devices, &fleet, &events, &logbook, clock, &levelwatch);
        services.push(levelwatch);
        let playbook_service = Service::new("playbook");
        let playbook = start_playbook(
            &cfg,
            &fleet,
            &events,
            clock,
            &schedule,
            &logbook,
            &playbook_service,
        );
        services.push(playbook_service);
        // Only a site with a sink in `[notify]` runs the service: without one there is
        // nothing to deliver, and the service list says what the daemon does.
        let notify = if cfg.notify.is_empty() {
            crate::notify::NotifyHandle::default()
        } else {
            let notify_service = Service::new("notify");
            let handle = start_notify(&cfg, &events, &logbook, clock, &notify_service);
            services.push(notify_service);
            handle
        };
        let layout = api::rooms::LiveLayout::new(api::rooms::Layout {
            time_zone: cfg.site.time_zone.to_string(),
            rooms: cfg.rooms.clone(),
        });
        let reload_service = Service::new("reload");
        let reload = start_reload(
            &cfg,
            &opts,
            &fleet,
            &events,
            clock,
            (&layout, &logbook, mqtt.as_ref()),
            (sim_tokens, &simulation),
            &services,
            &reload_service,
        );
        services.push(reload_service);
        // A central daemon (`[aggregate]`) follows the buildings before its API serves them.
        let aggregate = match &cfg.aggregate {
            Some(a) => {
                let svc = Service::new("aggregate");
                let handle = crate::aggregate::start(a, clock, svc.tasks(), svc.cancel())
                    .context("follow the buildings on the central broker")?;
                services.push(svc);
                Some(handle)
            }
            None => None,
        };
        let api_service = Service::new("api");
        let (api_addr, api_state) = start_api(
            &cfg,
            &opts,
            &fleet,
            &metrics,
            &logbook,
            clock,
            devices.len(),
            schedule.clone(),
            protection.clone(),
            playbook.clone(),
            &events,
            (layout, reload.clone(), aggregate),
            &api_service,
        )
        .await?;
        services.push(api_service);
        if let (Some(handle), Some(m), Some(sink)) = (&mqtt, &cfg.mqtt, alert_sink) {
            let mqtt_out = Service::new("mqtt-out");
            crate::mqtt_out::start(
                crate::mqtt_out::MqttOut::new(
                    handle.clone(),
                    api_state,
                    &site_slug(&cfg.site.name),
                    &m.settings,
                ),
                sink,
                mqtt_out.tasks(),
                mqtt_out.cancel(),
            );
            services.push(mqtt_out);
        }

        events.emit(
            clock.now(),
            EventKind::DaemonStarted {
                version: VERSION.to_owned(),
                site: cfg.site.name.clone(),
            },
        );
        Ok(Daemon {
            api_addr,
            fleet,
            events,
            clock,
            simulators,
            sim_controls,
            logbook,
            schedule,
            protection,
            playbook,
            notify,
            reload,
            services,
            store,
            simulation,
            mqtt,
            _broker: broker,
            site: cfg.site.name.clone(),
            deadline: cfg.shutdown_deadline,
        })
    }

    pub fn site(&self) -> &str {
        &self.site
    }

    /// The daemon's services, in start order (the store and the simulators apart).
    pub fn services(&self) -> impl Iterator<Item = &str> {
        self.services.iter().map(|s| s.name)
    }

    /// Stop every service and wait for its tasks to finish their step (close ports, switch off
    /// metering, flush), at most until the deadline; then the writer; simulators last.
    pub async fn shutdown(self, reason: &str) -> ShutdownReport {
        let start = tokio::time::Instant::now();
        let deadline = start + self.deadline;
        self.events.emit(
            self.clock.now(),
            EventKind::DaemonStopping {
                reason: reason.to_owned(),
            },
        );
        // All at once, as a device's command in flight ends with its device, not after it.
        for s in &self.services {
            s.stop();
        }
        let mut late = Vec::new();
        for s in self.services.iter().rev() {
            if !s.stopped_by(deadline).await {
                late.push(s.name);
            }
        }
        if !late.is_empty() {
            tracing::error!(
                deadline_ms = self.deadline.as_millis() as u64,
                ?late,
                "shutdown deadline passed; exiting with tasks still running"
            );
        }
        // The logbook writer last: it drains and commits every event the others sent,
        // `DaemonStopping` included, within what is left of the deadline.
        self.store.stop();
        let writer_done = self.store.stopped_by(deadline).await;
        // The writer does nothing but write the store: when it has not finished by the
        // deadline, the store is what holds it (locked by another process, a slow or full
        // disk; a locked store fails its first write only after SQLite's busy wait). That is
        // the store's trouble, an alert of its own, and the stop is still orderly once the
        // deadline bounds it (issue 16.1): the writer is abandoned on its attempt and what it
        // held is lost, counted when the store has already said it is failing.
        let mut entries_lost = None;
        if !writer_done {
            let store = self.logbook.watch_status().borrow().clone();
            if let crate::records::writer::StoreStatus::Failing { pending, .. } = &store {
                entries_lost = Some(*pending);
            }
            tracing::error!(
                store = ?store,
                entries_lost,
                "the store was still being written at the shutdown deadline; \
                 the entries not yet committed are lost"
            );
        }
        self.simulation.stop();
        let _ = self
            .simulation
            .stopped_by(tokio::time::Instant::now() + Duration::from_secs(2))
            .await;
        ShutdownReport {
            within_deadline: late.is_empty(),
            late,
            elapsed: start.elapsed(),
            writer_done,
            entries_lost,
        }
    }
}

/// The store: the logbook writer takes every logbook-worthy event from the bus, under its own
/// service so it stops after the others and commits everyone's final events.
fn start_store(cfg: &SiteConfig, events: &EventBus, clock: Clock) -> (Service, LogbookHandle) {
    let store = Service::new("store");
    let logbook_rx = events.sink("logbook", crate::events::EventFilter::logbook(), 4096);
    let mut writer_config = WriterConfig::new(cfg.storage.path.clone());
    writer_config.store.max_size_bytes = cfg.storage.max_size_bytes;
    let (logbook, writer_task) =
        crate::records::writer::writer(writer_config, logbook_rx, events.clone(), clock);
    store.tasks.spawn(writer_task.run(store.cancel()));
    (store, logbook)
}

/// The broker (embedded, when the site has none) and the daemon's one MQTT client, before
/// devices and simulators, which both use them.
async fn start_mqtt(
    cfg: &SiteConfig,
    svc: &Service,
) -> anyhow::Result<(
    Option<crate::transport::mqtt::MqttHandle>,
    Option<crate::transport::mqtt::EmbeddedBroker>,
)> {
    let Some(m) = &cfg.mqtt else {
        return Ok((None, None));
    };
    let mut broker = None;
    if let Some(e) = &m.settings.embedded {
        let b = crate::transport::mqtt::spawn_embedded_broker(e)
            .await
            .context("start the embedded MQTT broker")?;
        tracing::info!(addr = %b.addr, "embedded mqtt broker listening");
        broker = Some(b);
    }
    let will = crate::transport::mqtt::Will {
        topic: format!("avwarden/{}/daemon", site_slug(&cfg.site.name)),
        payload: b"offline".to_vec(),
        retain: true,
    };
    let handle = crate::transport::mqtt::start(
        &m.settings,
        m.password.as_ref().map(|p| p.expose().to_owned()),
        Some(will),
        svc.tasks(),
        svc.cancel(),
    );
    // Announce `online` (retained) on every connect; the will says `offline`.
    let online = handle.clone();
    let topic = format!("avwarden/{}/daemon", site_slug(&cfg.site.name));
    let stop = svc.cancel();
    svc.tasks.spawn(async move {
        let mut connected = online.connected();
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                r = connected.wait_for(|c| *c) => if r.is_err() { break },
            }
            if let Err(e) = online.publish(&topic, "online", true) {
                tracing::warn!(error = %e, "could not announce the daemon online");
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                r = connected.wait_for(|c| !*c) => if r.is_err() { break },
            }
        }
    });
    Ok((Some(handle), broker))
}

/// Each simulated device's simulator, stopped on its own token (a reload stops one alone).
type SimTokens = std::collections::BTreeMap<DeviceId, CancellationToken>;

/// What [`start_simulators`] returns: the devices with their links filled in, where each
/// simulator listens, their tokens and the control handles the demo scripts.
type Simulated = (
    Vec<DeviceConfig>,
    Vec<(DeviceId, SimEndpoint)>,
    SimTokens,
    Vec<(DeviceId, crate::sim::SimControl)>,
);

/// The simulators of simulated devices, first, so the devices can connect to them; returns
/// the devices with their links filled in.
async fn start_simulators(
    cfg: &SiteConfig,
    opts: &StartOptions,
    clock: Clock,
    svc: &Service,
) -> anyhow::Result<Simulated> {
    let broker_addr = cfg.mqtt.as_ref().map(|m| m.settings.broker_address());
    let mut simulators = Vec::new();
    let mut controls = Vec::new();
    let mut tokens = SimTokens::new();
    let mut devices: Vec<DeviceConfig> = Vec::new();
    for d in &cfg.devices {
        if d.simulated && opts.with_simulators {
            let token = svc.cancel().child_token();
            let (d, endpoint, control) =
                start_simulator(d, broker_addr.as_ref(), clock, token.clone()).await?;
            tokens.insert(d.id.clone(), token);
            if let Some(c) = control {
                controls.push((d.id.clone(), c));
            }
            simulators.push((d.id.clone(), endpoint));
            devices.push(d);
        } else {
            devices.push(d.clone());
        }
    }
    Ok((devices, simulators, tokens, controls))
}

/// One device's simulator, running until `cancel`; the device with its link to it, and the
/// simulator's control handle where it has one.
async fn start_simulator(
    d: &DeviceConfig,
    broker: Option<&(String, u16)>,
    clock: Clock,
    cancel: CancellationToken,
) -> anyhow::Result<(DeviceConfig, SimEndpoint, Option<crate::sim::SimControl>)> {
    let mut d = d.clone();
    let bind = sim_bind_for(&d, broker)?;
    let (endpoint, control) =
        crate::sim::spawn_controlled(&d.profile, &d.simulator, bind, clock, cancel)
            .await
            .with_context(|| format!("start simulator for device {}", d.id))?;
    d.link = Some(link_for_endpoint(&d.profile, &endpoint, d.link.as_ref()));
    Ok((d, endpoint, control))
}

/// The reload task, which holds the running config and applies a new one (see `reload`).
#[allow(clippy::too_many_arguments)]
fn start_reload(
    cfg: &SiteConfig,
    opts: &StartOptions,
    fleet: &Arc<Fleet>,
    events: &EventBus,
    clock: Clock,
    (layout, logbook, mqtt): (
        &api::rooms::LiveLayout,
        &LogbookHandle,
        Option<&crate::transport::mqtt::MqttHandle>,
    ),
    (simulators, simulation): (SimTokens, &Service),
    services: &[Service],
    svc: &Service,
) -> crate::reload::ReloadHandle {
    let broker = cfg.mqtt.as_ref().map(|m| m.settings.broker_address());
    let start_simulator: Option<crate::reload::DeviceStarter> = opts.with_simulators.then(|| {
        let f: crate::reload::DeviceStarter = Arc::new(move |d: DeviceConfig, cancel| {
            let broker = broker.clone();
            Box::pin(async move {
                start_simulator(&d, broker.as_ref(), clock, cancel)
                    .await
                    .map(|(d, _, _)| d)
            })
        });
        f
    });
    let archive = services.iter().find(|s| s.name == "archive").map_or_else(
        || (svc.tasks().clone(), svc.cancel()),
        |s| (s.tasks().clone(), s.cancel()),
    );
    crate::reload::Reloader {
        config: cfg.clone(),
        fleet: fleet.clone(),
        events: events.clone(),
        clock,
        layout: layout.clone(),
        logbook: logbook.clone(),
        mqtt: mqtt.cloned(),
        start_simulator,
        simulators,
        simulation: simulation.cancel(),
        archive,
    }
    .start(svc.tasks(), svc.cancel())
}

/// One supervised actor per device.
fn start_devices(
    cfg: &SiteConfig,
    devices: &[DeviceConfig],
    events: &EventBus,
    clock: Clock,
    mqtt: Option<&crate::transport::mqtt::MqttHandle>,
    svc: &Service,
) -> anyhow::Result<Arc<Fleet>> {
    let mut fleet = Fleet::new(events.clone(), clock, svc.tasks().clone(), svc.cancel());
    for d in devices {
        fleet
            .spawn_device(device_spec(cfg, d, mqtt)?)
            .with_context(|| format!("start device {}", d.id))?;
    }
    Ok(Arc::new(fleet))
}

/// What the supervisor needs to run a configured device (its link filled in when simulated).
pub(crate) fn device_spec(
    cfg: &SiteConfig,
    d: &DeviceConfig,
    mqtt: Option<&crate::transport::mqtt::MqttHandle>,
) -> anyhow::Result<DeviceSpec> {
    let Some(link) = d.link.clone() else {
        anyhow::bail!(
            "device {} is simulated without a fixed address; run it with the demo or give it a link",
            d.id
        );
    };
    let mut spec = DeviceSpec::new(d.id.as_str(), d.room.as_str(), d.profile.clone(), link);
    spec.secret = d.secret.as_ref().map(|s| s.expose().to_owned());
    spec.settings = d.settings.clone();
    spec.backoff_min = cfg.links.backoff_min;
    spec.backoff_max = cfg.links.backoff_max;
    if matches!(spec.link, LinkSpec::Mqtt { .. }) {
        spec.mqtt = mqtt.cloned();
    }
    Ok(spec)
}

/// The equipment archive: one record per device, then counters from its state. Neither
/// devices, the API nor READY wait for the store (issue 16.1: a missing or locked store held
/// the start for 5 s per device): registrations are queued through the writer's bounded
/// buffer like every other entry, in order, so each device's counters follow its record. A
/// store in trouble is the writer's `store_failed` event and the health answer's `store`.
fn start_archive(
    devices: &[DeviceConfig],
    fleet: &Fleet,
    logbook: &LogbookHandle,
    clock: Clock,
    svc: &Service,
) {
    let seeds: Vec<EquipmentSeed> = devices
        .iter()
        .map(|d| {
            EquipmentSeed::from_profile(
                d.id.clone(),
                d.room.clone(),
                &d.profile,
                d.archive.clone(),
                clock.now(),
            )
        })
        .collect();
    let watches: Vec<_> = devices
        .iter()
        .filter_map(|d| fleet.get(d.id.as_str()).map(|h| h.watch()))
        .collect();
    let logbook = logbook.clone();
    let counters = svc.tasks().clone();
    let cancel = svc.cancel();
    svc.tasks.spawn(async move {
        for seed in seeds {
            let device = seed.device.clone();
            tokio::select! {
                _ = cancel.cancelled() => return,
                r = logbook.register_queued(seed) => if let Err(e) = r {
                    tracing::warn!(%device, error = %e, "equipment not registered");
                },
            }
        }
        for rx in watches {
            counters.spawn(crate::records::archive::feed_counters(
                logbook.clone(),
                rx,
                clock,
                cancel.clone(),
            ));
        }
    });
}

/// The level watch: loudspeaker protection on every DSP whose profile or settings ask for
/// it. A daemon without such a DSP runs no task and shows no protection.
fn start_levelwatch(
    devices: &[DeviceConfig],
    fleet: &Fleet,
    events: &EventBus,
    logbook: &LogbookHandle,
    clock: Clock,
    svc: &Service,
) -> crate::levelwatch::ProtectionBoard {
    let watched: Vec<_> = devices
        .iter()
        .filter_map(|d| {
            let h = fleet.get(d.id.as_str())?;
            crate::levelwatch::WatchedDevice::from_settings(h.clone(), &d.profile, &d.settings)
        })
        .collect();
    if watched.is_empty() {
        return crate::levelwatch::ProtectionBoard::default();
    }
    crate::levelwatch::start(
        watched,
        events.clone(),
        Some(logbook.clone()),
        clock,
        svc.tasks(),
        svc.cancel(),
    )
}

/// The schedule: the booking book restored from the records file, the battery and
/// temperature history, the scheduler task that runs each booking's jobs, and (for the demo)
/// the demo's bookings.
fn start_schedule(
    cfg: &SiteConfig,
    opts: &StartOptions,
    fleet: &Arc<Fleet>,
    logbook: &LogbookHandle,
    events: &EventBus,
    clock: Clock,
    svc: &Service,
) -> crate::schedule::ScheduleHandle {
    use crate::schedule::{book::Book, history, scheduler::Scheduler, ScheduleHandle};
    let book = Book::new(&cfg.rooms, logbook.clone());
    let (tx, requests) = tokio::sync::mpsc::channel(16);
    let (started_tx, started) = tokio::sync::watch::channel(false);
    let handle = ScheduleHandle::new(book.clone(), tx, started);
    let history = Arc::new(std::sync::Mutex::new(history::History::new()));
    svc.tasks.spawn(history::track(
        fleet.handles().collect(),
        history.clone(),
        svc.cancel(),
    ));
    let mut scheduler = Scheduler {
        book: book.clone(),
        fleet: fleet.clone(),
        logbook: logbook.clone(),
        events: events.clone(),
        clock,
        tz: cfg.site.time_zone,
        plan: crate::schedule::plan::PlanSettings::default(),
        selftest: cfg.selftest.clone(),
        rooms: cfg.rooms.clone(),
        history,
        requests,
        done: Default::default(),
    };
    // The feeds start once the book is restored, so a poll is never overwritten by older rows.
    let rooms: Vec<crate::schedule::feed::RoomRef> = cfg.rooms.iter().map(Into::into).collect();
    let feeds = cfg.bookings.feeds.clone();
    let (tz, tasks, feed_events) = (cfg.site.time_zone, svc.tasks().clone(), events.clone());
    let path = cfg.storage.path.clone();
    let logbook = logbook.clone();
    let demo = opts.demo_bookings;
    let cancel = svc.cancel();
    svc.tasks.spawn(async move {
        // What the records file holds: bookings, verdicts, the jobs that ran. The writer has
        // opened and migrated the file once it acknowledges a flush; a store in trouble must
        // not hold the schedule, which then starts from what the API and feeds tell it.
        let ready = tokio::select! {
            _ = cancel.cancelled() => return,
            r = tokio::time::timeout(Duration::from_secs(10), logbook.flush()) => matches!(r, Ok(Ok(()))),
        };
        if ready {
            match restore(&path, clock.now()) {
                Ok((bookings, verdicts, done)) => {
                    tracing::info!(bookings = bookings.len(), jobs_done = done.len(), "schedule restored from the records");
                    book.restore(bookings, verdicts);
                    scheduler.done = done;
                }
                Err(e) => tracing::warn!(error = %e, "schedule not restored from the records; starting empty"),
            }
        } else {
            tracing::warn!("the records store is not available; the schedule starts empty");
        }
        for feed in feeds {
            tasks.spawn(crate::schedule::feed::watch(
                feed,
                book.clone(),
                rooms.clone(),
                tz,
                feed_events.clone(),
                clock,
                cancel.clone(),
            ));
        }
        if demo {
            crate::schedule::demo::seed(&book, clock.now()).await;
        }
        let _ = started_tx.send(true);
        scheduler.run(cancel).await;
    });
    handle
}

/// The contingency playbook: alerts from every fault source, graded by the rooms' bookings.
fn start_playbook(
    cfg: &SiteConfig,
    fleet: &Arc<Fleet>,
    events: &EventBus,
    clock: Clock,
    schedule: &crate::schedule::ScheduleHandle,
    logbook: &LogbookHandle,
    svc: &Service,
) -> crate::playbook::PlaybookHandle {
    let parents = cfg
        .devices
        .iter()
        .filter_map(|d| d.parent.clone().map(|p| (d.id.clone(), p)))
        .collect();
    crate::playbook::start(
        cfg.playbook.clone(),
        cfg.roster.clone(),
        parents,
        cfg.site.time_zone,
        cfg.playbook_settings.clone(),
        events,
        clock,
        fleet.clone(),
        schedule.book.clone(),
        Some(crate::playbook::service::Records {
            logbook: logbook.clone(),
            path: cfg.storage.path.clone(),
        }),
        svc.tasks(),
        svc.cancel(),
    )
}

/// The alert sinks of `[notify]`: one task per webhook and one for mail, each reading the
/// logbook after its own cursor.
fn start_notify(
    cfg: &SiteConfig,
    events: &EventBus,
    logbook: &LogbookHandle,
    clock: Clock,
    svc: &Service,
) -> crate::notify::NotifyHandle {
    let ctx = crate::notify::Context {
        site: cfg.site.name.clone(),
        public_url: cfg.notify.public_url.clone(),
        path: cfg.storage.path.clone(),
        logbook: logbook.clone(),
        bus: events.clone(),
        clock,
        retry: crate::notify::outbox::RetryPolicy::default(),
    };
    crate::notify::start(&cfg.notify, &cfg.roster, ctx, svc.tasks(), svc.cancel())
}

type Restored = (
    Vec<crate::model::Booking>,
    Vec<crate::model::Verdict>,
    std::collections::HashSet<crate::records::bookings::DoneJob>,
);

fn restore(
    path: &std::path::Path,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Restored, crate::records::StoreError> {
    use crate::records::bookings;
    let conn = crate::records::store::open_reader(path)?;
    let since = now - chrono::Duration::days(2);
    Ok((
        bookings::load_bookings(&conn, since)?,
        bookings::latest_verdicts(&conn, since)?,
        bookings::jobs_done(&conn, since)?,
    ))
}

/// The status API, its connection limit fitted to the descriptors the devices leave.
#[allow(clippy::too_many_arguments)]
async fn start_api(
    cfg: &SiteConfig,
    opts: &StartOptions,
    fleet: &Arc<Fleet>,
    metrics: &Metrics,
    logbook: &LogbookHandle,
    clock: Clock,
    devices: usize,
    schedule: crate::schedule::ScheduleHandle,
    protection: crate::levelwatch::ProtectionBoard,
    playbook: crate::playbook::PlaybookHandle,
    events: &EventBus,
    (layout, reload, aggregate): (
        api::rooms::LiveLayout,
        crate::reload::ReloadHandle,
        Option<crate::aggregate::FleetHandle>,
    ),
    svc: &Service,
) -> anyhow::Result<(SocketAddr, ApiState)> {
    let bind = opts.api_bind.unwrap_or(cfg.api.bind);
    // The config refuses this too; an overridden bind must not slip past it.
    if !bind.ip().is_loopback() && cfg.api.tokens.is_empty() {
        anyhow::bail!(
            "the API would listen on {bind}, reachable from the network, without [[api.tokens]]"
        );
    }
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("bind the API to {bind}"))?;
    let api_addr = listener.local_addr()?;
    let state = ApiState {
        site: cfg.site.name.clone(),
        version: VERSION,
        clock,
        started: clock.now(),
        fleet: fleet.clone(),
        metrics: metrics.clone(),
        store: Some(logbook.watch_status()),
        schedule: Some(schedule),
        auth: Arc::new(api::auth::Auth::new(cfg.api.tokens.clone())),
        records: Some(api::records::Records {
            path: cfg.storage.path.clone(),
            logbook: logbook.clone(),
        }),
        layout,
        protection: Some(protection),
        playbook: Some(playbook),
        events: Some(api::events::EventLog::start(
            events,
            api::events::RING_CAPACITY,
            api::events::CLIENT_CAPACITY,
            svc.tasks(),
            svc.cancel(),
        )),
        history: Some(crate::dashboard::History::start(
            fleet.clone(),
            clock,
            svc.tasks(),
            svc.cancel(),
        )),
        reload: Some(reload),
        aggregate,
    };
    let app = api::router(state.clone());
    let mut limits = cfg.api.clone();
    if let Some(nofile) = api::server::descriptor_limit() {
        let fitted = api::server::fit_to_descriptors(limits.max_connections, devices, nofile);
        if fitted < limits.max_connections {
            tracing::warn!(
                configured = limits.max_connections,
                fitted,
                nofile,
                "API connection limit lowered to leave device links their descriptors"
            );
            limits.max_connections = fitted;
        }
    }
    svc.tasks.spawn(api::server::serve(
        listener,
        app,
        limits,
        metrics.clone(),
        svc.tasks().clone(),
        svc.cancel(),
    ));
    Ok((api_addr, state))
}

/// `Building A / 2nd floor` → `building-a-2nd-floor`: safe in MQTT topics and ids.
pub fn site_slug(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    let trimmed = out.trim_end_matches('-');
    if trimmed.is_empty() {
        "site".to_owned()
    } else {
        trimmed.to_owned()
    }
}

fn sim_bind_for(d: &DeviceConfig, broker: Option<&(String, u16)>) -> anyhow::Result<SimBind> {
    let loopback = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    Ok(match (&d.link, d.profile.link.kind) {
        (Some(LinkSpec::Tcp(t)), _) => SimBind::Tcp(resolve_local(&t.host, t.port)?),
        (Some(LinkSpec::Udp { host, port }), _) => SimBind::Udp(resolve_local(host, *port)?),
        (Some(LinkSpec::Serial(s)), _) => SimBind::Pty {
            link: Some(s.path.clone().into()),
        },
        (Some(LinkSpec::Mqtt { topic }), _) => {
            let (host, port) = broker
                .cloned()
                .context("a simulated MQTT device needs the site's [mqtt] broker")?;
            SimBind::Mqtt {
                host,
                port,
                topic: topic.clone(),
            }
        }
        (None, LinkKind::Tcp) => SimBind::Tcp(loopback(0)),
        (None, LinkKind::Udp) => SimBind::Udp(loopback(0)),
        (None, LinkKind::Serial) => SimBind::Pty { link: None },
        (None, LinkKind::Mqtt) => anyhow::bail!("simulated MQTT device {} needs link.topic", d.id),
    })
}

fn resolve_local(host: &str, port: u16) -> anyhow::Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    (host, port)
        .to_socket_addrs()
        .with_context(|| format!("resolve {host}"))?
        .next()
        .with_context(|| format!("no address for {host}"))
}

/// The link a device uses to reach its simulator.
fn link_for_endpoint(
    profile: &Profile,
    ep: &SimEndpoint,
    configured: Option<&LinkSpec>,
) -> LinkSpec {
    match ep {
        SimEndpoint::Tcp(addr) => {
            let mut t = match configured {
                Some(LinkSpec::Tcp(t)) => t.clone(),
                _ => {
                    let mut t = TcpSpec::new(addr.ip().to_string(), addr.port());
                    t.connect_per_command = profile.link.connect_per_command;
                    t
                }
            };
            t.host = addr.ip().to_string();
            t.port = addr.port();
            LinkSpec::Tcp(t)
        }
        SimEndpoint::Udp(addr) => LinkSpec::Udp {
            host: addr.ip().to_string(),
            port: addr.port(),
        },
        SimEndpoint::Pty(path) => {
            let mut s = match configured {
                Some(LinkSpec::Serial(s)) => s.clone(),
                _ => SerialSpec {
                    path: String::new(),
                    baud: profile.link.baud.unwrap_or(9600),
                    data_bits: profile.link.data_bits.unwrap_or(8),
                    // A pseudo-terminal carries no parity (protocols.md 5.1).
                    parity: Parity::None,
                    stop_bits: profile.link.stop_bits.unwrap_or(1),
                },
            };
            s.path = path.display().to_string();
            LinkSpec::Serial(s)
        }
        SimEndpoint::Mqtt { topic } => LinkSpec::Mqtt {
            topic: topic.clone(),
        },
    }
}

/// Tell systemd we are ready and, when it asks for a watchdog, feed it only while `probes`
/// pass ([`crate::watchdog`]): a hung daemon is restarted, a busy one is not.
pub fn notify_ready(tracker: &TaskTracker, cancel: CancellationToken, probes: Vec<Probe>) {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    let mut usec = 0u64;
    if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
        crate::watchdog::spawn(
            tracker,
            cancel,
            Duration::from_micros(usec / 2),
            probes,
            || {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            },
        );
    }
}

impl Daemon {
    /// Tell systemd the daemon is ready and feed its watchdog, as a service of its own.
    pub fn notify_systemd(&mut self) {
        let svc = Service::new("systemd");
        notify_ready(svc.tasks(), svc.cancel(), self.liveness_probes());
        self.services.push(svc);
    }

    /// What must work for the daemon to be alive: the logbook writer's loop turns, and the
    /// API answers its own health route over a real connection (which also proves the
    /// runtime schedules tasks). A store that is full or failing still answers: that is a
    /// degraded daemon, which a restart would not mend.
    pub fn liveness_probes(&self) -> Vec<Probe> {
        let logbook = self.logbook.clone();
        let mut api = self.api_addr;
        if api.ip().is_unspecified() {
            api.set_ip(match api {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let url = format!("http://{api}/api/v1/health");
        let client = reqwest::Client::new();
        vec![
            Probe::new("logbook writer", move || {
                let logbook = logbook.clone();
                async move { logbook.ping().await.map_err(|e| e.to_string()) }
            }),
            Probe::new("api", move || {
                let request = client.get(&url).send();
                async move {
                    let answer = request.await.map_err(|e| e.to_string())?;
                    if answer.status().is_success() {
                        Ok(())
                    } else {
                        Err(format!("health answered {}", answer.status()))
                    }
                }
            }),
        ]
    }
}

/// SIGTERM and SIGINT (stop) and SIGHUP (reload the config), installed before anything is
/// announced so a signal sent right after the status URL appears is never lost to the default
/// handler (which, for SIGHUP, would end the daemon).
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("install SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("install SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("install SIGHUP handler")?,
        })
    }
}

/// Run until SIGTERM or SIGINT, then shut down within the deadline. SIGHUP reloads the config
/// (`systemctl reload`), telling systemd while it does.
pub async fn run_until_signal(daemon: Daemon, signals: Signals) -> anyhow::Result<ShutdownReport> {
    run_until_signal_then(daemon, signals, || {}).await
}

/// As [`run_until_signal`], calling `before_shutdown` once the stop signal came and before the
/// shutdown starts (the demo's fast clock returns to real time there, so the shutdown deadline
/// means real seconds).
pub async fn run_until_signal_then(
    mut daemon: Daemon,
    mut signals: Signals,
    before_shutdown: impl FnOnce(),
) -> anyhow::Result<ShutdownReport> {
    daemon.notify_systemd();
    let reason = loop {
        tokio::select! {
            _ = signals.term.recv() => break "SIGTERM",
            _ = signals.int.recv() => break "SIGINT",
            _ = signals.hup.recv() => {
                tracing::info!("SIGHUP: reloading the site config");
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Reloading]);
                // The outcome is logged and in the logbook; the daemon runs on either way.
                let _ = daemon.reload.reload().await;
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
            }
        }
    };
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    before_shutdown();
    tracing::info!(signal = reason, "shutting down");
    Ok(daemon.shutdown(reason).await)
}
