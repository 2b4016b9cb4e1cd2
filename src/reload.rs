//! Reload without a restart (SIGHUP, `systemctl reload`, `POST /api/v1/reload`): re-read the
//! site config the daemon was started with, refuse it whole when it has errors, else start,
//! stop or restart just the devices that changed and swap the API's room layout.
//!
//! Owns the diff of two validated configs ([`diff`], pure) and the one task that applies
//! reloads in turn ([`Reloader`]). Must not restart an untouched device (its actor, link and
//! session stay), must not apply part of a config that has errors, and must not pass over in
//! silence a change that only a restart can apply: such a change is named in the answer and in
//! the logbook entry (`restart_needed`).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::rooms::{Layout, LiveLayout};
use crate::clock::Clock;
use crate::config::{ConfigError, DeviceConfig, SiteConfig};
use crate::events::{EventBus, EventKind};
use crate::model::{DeviceId, RoomId};
use crate::records::{EquipmentSeed, LogbookHandle};
use crate::runtime::Fleet;
use crate::transport::mqtt::MqttHandle;

/// What differs between the running config and the new one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigDiff {
    pub devices_added: Vec<DeviceId>,
    pub devices_removed: Vec<DeviceId>,
    /// Devices whose link, profile, settings, secret, simulator or room changed: restarted.
    pub devices_changed: Vec<DeviceId>,
    pub rooms_added: Vec<RoomId>,
    pub rooms_removed: Vec<RoomId>,
    pub rooms_changed: Vec<RoomId>,
    /// Settings read only at start that changed, by key (`api.bind`, `storage`, `mqtt`…).
    pub restart_needed: Vec<String>,
}

impl ConfigDiff {
    pub fn is_empty(&self) -> bool {
        *self == ConfigDiff::default()
    }
}

/// Same `Debug` text: for validated config types that carry no `PartialEq` (they hold only
/// plain values; secrets print as redacted and are compared apart where they matter).
fn same<T: std::fmt::Debug>(a: &T, b: &T) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

/// Whether the device's actor must be restarted to take the new config. The name, the archive
/// fields and the parent are read by others (the archive, the playbook), not by the actor.
fn device_changed(old: &DeviceConfig, new: &DeviceConfig) -> bool {
    old.room != new.room
        || old.profile != new.profile
        || old.link != new.link
        || old.secret != new.secret
        || old.simulated != new.simulated
        || old.simulator != new.simulator
        || old.settings != new.settings
}

/// The ids added, changed (by `changed`) and removed between two lists, each in id order.
fn by_id<T, K: Ord + Clone>(
    old: &[T],
    new: &[T],
    id: impl Fn(&T) -> &K,
    changed: impl Fn(&T, &T) -> bool,
) -> (Vec<K>, Vec<K>, Vec<K>) {
    let old: BTreeMap<&K, &T> = old.iter().map(|x| (id(x), x)).collect();
    let new: BTreeMap<&K, &T> = new.iter().map(|x| (id(x), x)).collect();
    let (mut added, mut differ) = (Vec::new(), Vec::new());
    for (k, n) in &new {
        match old.get(k) {
            None => added.push((*k).clone()),
            Some(o) if changed(o, n) => differ.push((*k).clone()),
            Some(_) => {}
        }
    }
    let removed = old
        .keys()
        .filter(|k| !new.contains_key(*k))
        .map(|k| (*k).clone())
        .collect();
    (added, differ, removed)
}

/// Compare two validated configs.
pub fn diff(old: &SiteConfig, new: &SiteConfig) -> ConfigDiff {
    let mut d = ConfigDiff::default();
    // The reconnect policy is every actor's: a change restarts them all.
    let links_changed = !same(&old.links, &new.links);
    (d.devices_added, d.devices_changed, d.devices_removed) = by_id(
        &old.devices,
        &new.devices,
        |x| &x.id,
        |o, n| links_changed || device_changed(o, n),
    );
    (d.rooms_added, d.rooms_changed, d.rooms_removed) =
        by_id(&old.rooms, &new.rooms, |r| &r.id, |o, n| !same(o, n));

    let mut restart = |key: &str, changed: bool| {
        if changed {
            d.restart_needed.push(key.to_owned());
        }
    };
    restart("site", !same(&old.site, &new.site));
    restart("api.bind", old.api.bind != new.api.bind);
    restart(
        "api",
        old.api.max_connections != new.api.max_connections
            || old.api.header_timeout != new.api.header_timeout
            || old.api.body_timeout != new.api.body_timeout
            || !same(&old.api.tokens, &new.api.tokens),
    );
    restart("storage", !same(&old.storage, &new.storage));
    restart(
        "mqtt",
        !same(&old.mqtt, &new.mqtt)
            || old.mqtt.as_ref().and_then(|m| m.password.as_ref())
                != new.mqtt.as_ref().and_then(|m| m.password.as_ref()),
    );
    // The aggregate's client and subscriptions are made once, at start.
    restart(
        "aggregate",
        !same(&old.aggregate, &new.aggregate)
            || old.aggregate.as_ref().and_then(|a| a.password.as_ref())
                != new.aggregate.as_ref().and_then(|a| a.password.as_ref()),
    );
    restart(
        "shutdown_deadline_secs",
        old.shutdown_deadline != new.shutdown_deadline,
    );
    restart("selftest", !same(&old.selftest, &new.selftest));
    restart("bookings", !same(&old.bookings, &new.bookings));
    restart("roster", !same(&old.roster, &new.roster));
    restart("playbook", !same(&old.playbook, &new.playbook));
    // The schedule's book and scheduler hold the rooms they were started with.
    restart(
        "schedule (rooms)",
        !(d.rooms_added.is_empty() && d.rooms_removed.is_empty() && d.rooms_changed.is_empty()),
    );
    // The playbook's alert book holds the device tree it was started with.
    let parents = |c: &SiteConfig| -> BTreeMap<DeviceId, Option<DeviceId>> {
        c.devices
            .iter()
            .map(|x| (x.id.clone(), x.parent.clone()))
            .collect()
    };
    let old_parents = parents(old);
    let new_parents = parents(new);
    let parents_changed = new_parents
        .iter()
        .any(|(id, p)| p.is_some() && old_parents.get(id) != Some(p))
        || old_parents
            .iter()
            .any(|(id, p)| p.is_some() && new_parents.get(id) != Some(p));
    restart("playbook (device parents)", parents_changed);
    d
}

/// What a reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReloadReport {
    /// `device x` / `room y`, as in the logbook entry.
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    /// Changes the running daemon did not apply: they take effect at the next restart.
    pub restart_needed: Vec<String>,
    /// Devices the new config names that could not be started (a simulator's port taken…).
    pub failed: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReloadError {
    /// The new config has errors (each located); nothing changed.
    #[error("the site config has {} error(s); the running config stays", errors.len())]
    Refused { errors: Vec<String> },
    #[error("the daemon is stopping; no reload")]
    Stopped,
}

type Reply = oneshot::Sender<Result<ReloadReport, ReloadError>>;

/// Asks the daemon's reload task for a reload; cheap to clone (the API and the signal
/// handler each hold one). Reloads run one at a time, in the order asked.
#[derive(Debug, Clone)]
pub struct ReloadHandle {
    tx: mpsc::Sender<Reply>,
}

impl ReloadHandle {
    pub async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(reply)
            .await
            .map_err(|_| ReloadError::Stopped)?;
        answer.await.map_err(|_| ReloadError::Stopped)?
    }
}

/// Starts one device from its validated config (the daemon's own way: simulator, link, spec).
pub type DeviceStarter = Arc<
    dyn Fn(
            DeviceConfig,
            CancellationToken,
        ) -> futures::future::BoxFuture<'static, anyhow::Result<DeviceConfig>>
        + Send
        + Sync,
>;

/// The reload task's state: the running config and what a reload touches.
pub struct Reloader {
    /// The config as loaded (simulated devices without the addresses their simulators got).
    pub config: SiteConfig,
    pub fleet: Arc<Fleet>,
    pub events: EventBus,
    pub clock: Clock,
    pub layout: LiveLayout,
    pub logbook: LogbookHandle,
    pub mqtt: Option<MqttHandle>,
    /// Spawns a device's simulator (when the daemon runs them) and fills in its link, on the
    /// token given; then the reloader starts its actor.
    pub start_simulator: Option<DeviceStarter>,
    /// The token each running simulator stops on, by device.
    pub simulators: BTreeMap<DeviceId, CancellationToken>,
    /// Parent of new simulators' tokens (the simulators service's).
    pub simulation: CancellationToken,
    /// Where an added device's counters feed runs (the archive service's).
    pub archive: (TaskTracker, CancellationToken),
}

impl Reloader {
    /// Serve reload requests until `cancel`.
    pub fn start(self, tasks: &TaskTracker, cancel: CancellationToken) -> ReloadHandle {
        let (tx, mut rx) = mpsc::channel::<Reply>(4);
        let mut me = self;
        tasks.spawn(async move {
            loop {
                let reply = tokio::select! {
                    _ = cancel.cancelled() => break,
                    r = rx.recv() => match r { Some(r) => r, None => break },
                };
                let outcome = me.reload().await;
                let _ = reply.send(outcome);
            }
        });
        ReloadHandle { tx }
    }

    /// Re-read the config file, and apply it when it is valid.
    pub async fn reload(&mut self) -> Result<ReloadReport, ReloadError> {
        let path = self.config.file.clone();
        let loaded = tokio::task::spawn_blocking(move || SiteConfig::load(&path))
            .await
            .unwrap_or_else(|e| {
                Err(ConfigError {
                    problems: vec![crate::config::ConfigProblem {
                        file: self.config.file.display().to_string(),
                        at: None,
                        path: String::new(),
                        message: format!("the config could not be read: {e}"),
                    }],
                })
            });
        match loaded {
            Ok(new) => Ok(self.apply(new).await),
            Err(e) => {
                let errors: Vec<String> = e.problems.iter().map(|p| p.to_string()).collect();
                for p in &errors {
                    tracing::error!(problem = %p, "config reload refused");
                }
                self.events.emit(
                    self.clock.now(),
                    EventKind::ConfigReloadRefused {
                        errors: errors.clone(),
                    },
                );
                Err(ReloadError::Refused { errors })
            }
        }
    }

    /// Apply a validated config: stop removed and changed devices, start added and changed
    /// ones, swap the layout; untouched devices are not called at all.
    pub async fn apply(&mut self, new: SiteConfig) -> ReloadReport {
        let d = diff(&self.config, &new);
        let mut report = ReloadReport {
            restart_needed: d.restart_needed.clone(),
            ..Default::default()
        };
        let old_devices: BTreeMap<DeviceId, DeviceConfig> = self
            .config
            .devices
            .iter()
            .map(|x| (x.id.clone(), x.clone()))
            .collect();
        let mut watched = Vec::new();
        for id in d.devices_removed.iter().chain(&d.devices_changed) {
            if let Some(old) = old_devices.get(id) {
                if self.protected(old) {
                    watched.push(id.clone());
                }
            }
            self.fleet.remove_device(id).await;
            if let Some(sim) = self.simulators.remove(id) {
                sim.cancel();
            }
        }
        for id in d.devices_added.iter().chain(&d.devices_changed) {
            let Some(cfg) = new.devices.iter().find(|x| &x.id == id) else {
                continue;
            };
            match self.start_device(&new, cfg).await {
                Ok(()) => {
                    if self.protected(cfg) && !watched.contains(id) {
                        watched.push(id.clone());
                    }
                }
                Err(e) => {
                    tracing::error!(device = %id, error = %format!("{e:#}"), "device not started after the reload");
                    report.failed.push(format!("device {id}: {e:#}"));
                }
            }
        }
        if !watched.is_empty() {
            // The level watch holds the DSP handles it was started with.
            let ids: Vec<String> = watched.iter().map(|i| i.to_string()).collect();
            report
                .restart_needed
                .push(format!("levelwatch ({})", ids.join(", ")));
        }
        self.layout.set(Layout {
            time_zone: new.site.time_zone.to_string(),
            rooms: new.rooms.clone(),
        });

        let dev = |v: &[DeviceId]| v.iter().map(|i| format!("device {i}")).collect::<Vec<_>>();
        let room = |v: &[RoomId]| v.iter().map(|i| format!("room {i}")).collect::<Vec<_>>();
        report.added = [dev(&d.devices_added), room(&d.rooms_added)].concat();
        report.removed = [dev(&d.devices_removed), room(&d.rooms_removed)].concat();
        report.changed = [dev(&d.devices_changed), room(&d.rooms_changed)].concat();
        self.config = new;
        self.events.emit(
            self.clock.now(),
            EventKind::ConfigReloaded {
                added: report.added.clone(),
                removed: report.removed.clone(),
                changed: report.changed.clone(),
                restart_needed: report.restart_needed.clone(),
            },
        );
        report
    }

    /// Whether the level watch protects this DSP (it then holds its handle).
    fn protected(&self, d: &DeviceConfig) -> bool {
        self.fleet.get(d.id.as_str()).is_some_and(|h| {
            crate::levelwatch::WatchedDevice::from_settings(h, &d.profile, &d.settings).is_some()
        })
    }

    async fn start_device(&mut self, site: &SiteConfig, d: &DeviceConfig) -> anyhow::Result<()> {
        let mut d = d.clone();
        if let (true, Some(start)) = (d.simulated, &self.start_simulator) {
            let token = self.simulation.child_token();
            d = start(d, token.clone()).await?;
            self.simulators.insert(d.id.clone(), token);
        }
        let spec = crate::app::device_spec(site, &d, self.mqtt.as_ref())?;
        let handle = self.fleet.add_device(spec)?;
        let seed = EquipmentSeed::from_profile(
            d.id.clone(),
            d.room.clone(),
            &d.profile,
            d.archive.clone(),
            self.clock.now(),
        );
        let (tasks, cancel) = &self.archive;
        let logbook = self.logbook.clone();
        let (clock, rx, cancel) = (self.clock, handle.watch(), cancel.clone());
        // Its record first, then its counters, as at start.
        tasks.spawn(async move {
            let id = seed.device.clone();
            if let Err(e) = logbook.register_queued(seed).await {
                tracing::warn!(device = %id, error = %e, "equipment not registered");
            }
            crate::records::archive::feed_counters(logbook, rx, clock, cancel).await;
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_site, Env};

    fn site(extra_room: &str, devices: &str, bind: &str) -> SiteConfig {
        let text = format!(
            r#"
[site]
name = "Test"
time_zone = "Europe/Berlin"

[api]
bind = "{bind}"

[storage]
path = "records.db"

[[rooms]]
id = "r1"
name = "Room 1"
capacity = 8
{extra_room}
{devices}
"#
        );
        parse_site(
            &text,
            "site.toml",
            std::path::Path::new("."),
            &Env::fixed(&[]),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    const P1: &str = r#"
[[devices]]
id = "p1"
room = "r1"
profile = "generic-pjlink"
link = { host = "127.0.0.1", port = 4352 }
"#;
    const P2: &str = r#"
[[devices]]
id = "p2"
room = "r1"
profile = "generic-pjlink"
link = { host = "127.0.0.1", port = 4353 }
"#;

    #[test]
    fn an_identical_config_changes_nothing() {
        let a = site("", &format!("{P1}{P2}"), "127.0.0.1:8080");
        assert!(diff(&a, &a.clone()).is_empty());
    }

    #[test]
    fn devices_and_rooms_are_sorted_into_added_removed_and_changed() {
        let old = site("", &format!("{P1}{P2}"), "127.0.0.1:8080");
        let p2_moved = P2.replace("4353", "4354");
        let p3 = P1.replace("\"p1\"", "\"p3\"");
        let r2 = "[[rooms]]\nid = \"r2\"\nname = \"Room 2\"\ncapacity = 4\n";
        let new = site(r2, &format!("{p2_moved}{p3}"), "127.0.0.1:8080");
        let d = diff(&old, &new);
        assert_eq!(d.devices_added, [DeviceId::new("p3")]);
        assert_eq!(d.devices_removed, [DeviceId::new("p1")]);
        assert_eq!(d.devices_changed, [DeviceId::new("p2")]);
        assert_eq!(d.rooms_added, [RoomId::new("r2")]);
        assert_eq!(d.restart_needed, ["schedule (rooms)"]);
    }

    #[test]
    fn settings_read_only_at_start_are_named_not_ignored() {
        let old = site("", P1, "127.0.0.1:8080");
        let new = site("", P1, "127.0.0.1:9090");
        let d = diff(&old, &new);
        assert_eq!(d.restart_needed, ["api.bind"]);
        assert!(d.devices_changed.is_empty());
    }
}
