//! What the API sees of the running agent: readiness, the maps as service rows, the live
//! configuration (and changing it), drop events and metrics.
use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use futures::{FutureExt as _, future::BoxFuture};
use tokio::sync::broadcast;

use crate::{
    api::proto::ConfigEntry,
    api::{
        proto::{
            AttachedProgram, CtRow, DropCount, DropEventRecord, Histogram, LbRow, MapFill,
            MetricsSnapshot, ServiceRow, StatusReply,
        },
        rows,
        server::{ApiBackend, BoxError},
    },
    config::{self, AgentConfig, LiveChange, OptionKey, Source, Sources},
    datapath::{
        LbMaps as _,
        conntrack::{Clock, Conntrack},
        maps::AyaMaps,
    },
    k8s::SourceSpec,
    model::DesiredService,
    monitor::DropFanout,
    sync::{SyncStats, lock},
    telemetry::error_chain,
};

#[derive(Default)]
struct Progress {
    datapath_loaded: bool,
    synced: bool,
    services: u64,
    backends: u64,
    devices: Vec<String>,
    pod_devices: Vec<String>,
    last_sync_error: Option<String>,
    not_programmed: Vec<String>,
    syncs: u64,
    sync_errors: u64,
    last_sync_seconds: f64,
    /// When the last successful pass ended.
    last_sync_at: Option<std::time::Instant>,
    /// Entries of the services, backends and rev-NAT maps after it.
    map_entries: [usize; 3],
    sync_seconds_sum: f64,
    ct_gc_deleted: u64,
    ct_entries_tcp: u64,
    ct_entries_any: u64,
    /// Why the drop event reader stopped, once it has.
    event_reader_error: Option<String>,
    sync_duration: Histogram,
    network_programming_duration: Histogram,
    sync_repairs: u64,
}

/// The upper bounds of `lb_sync_duration_seconds`: 100 µs to about 26 s, doubling (an
/// incremental pass takes tens of µs, a full one of 100k services about a second).
const SYNC_DURATION_BOUNDS: [f64; 19] = [
    0.0001, 0.0002, 0.0004, 0.0008, 0.0016, 0.0032, 0.0064, 0.0128, 0.0256, 0.0512, 0.1024, 0.2048,
    0.4096, 0.8192, 1.6384, 3.2768, 6.5536, 13.1072, 26.2144,
];

/// The upper bounds of `lb_network_programming_duration_seconds`: kube-proxy's from 0.25 s up
/// (it programs in seconds), below them finer ones for lb's sub-millisecond changes.
const NETWORK_PROGRAMMING_BOUNDS: [f64; 20] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0,
    30.0, 60.0, 120.0, 300.0, 600.0,
];

/// The running agent's shared state.
pub struct AgentState {
    conntrack: Mutex<Option<(Clock, std::path::PathBuf)>>,
    config: Mutex<AgentConfig>,
    /// Where each value of `config` comes from; locked after `config` when both are.
    sources: Mutex<Sources>,
    node_ip: super::NodeAddrs,
    maps: Arc<Mutex<AyaMaps>>,
    fanout: DropFanout,
    progress: Mutex<Progress>,
    /// `namespace/name` of each frontend (`VIP:port/PROTO`) of the latest desired state: the
    /// maps hold only addresses.
    names: Mutex<BTreeMap<String, String>>,
    /// Pins the running datapath cannot lose: the maps and the from-netdev links.
    pins: Mutex<Vec<PathBuf>>,
    /// The config directory's value of an option at the time `config set` patched the
    /// ConfigMap, until the mounted directory shows something else.
    stale_in_dir: Mutex<BTreeMap<OptionKey, Option<String>>>,
}

impl AgentState {
    /// State for a freshly loaded datapath.
    pub fn new(
        config: AgentConfig,
        sources: Sources,
        node_ip: super::NodeAddrs,
        maps: Arc<Mutex<AyaMaps>>,
        fanout: DropFanout,
    ) -> Self {
        Self {
            conntrack: Mutex::new(None),
            config: Mutex::new(config),
            sources: Mutex::new(sources),
            node_ip,
            maps,
            fanout,
            progress: Mutex::new(Progress {
                sync_duration: Histogram::with_bounds(&SYNC_DURATION_BOUNDS),
                network_programming_duration: Histogram::with_bounds(&NETWORK_PROGRAMMING_BOUNDS),
                ..Progress::default()
            }),
            names: Mutex::new(BTreeMap::new()),
            pins: Mutex::new(Vec::new()),
            stale_in_dir: Mutex::new(BTreeMap::new()),
        }
    }

    /// Notes which Service each frontend of `desired` belongs to, for `service list`.
    pub fn record_names(&self, desired: &[DesiredService]) {
        *lock(&self.names) = desired
            .iter()
            .map(|service| {
                (
                    service.frontend.to_string(),
                    format!("{}/{}", service.namespace, service.name),
                )
            })
            .collect();
    }

    /// `record_names` for the frontends that changed (`upserts`) or went (`removals`).
    pub fn update_names(&self, upserts: &[DesiredService], removals: &[crate::model::Frontend]) {
        let mut names = lock(&self.names);
        for frontend in removals {
            names.remove(&frontend.to_string());
        }
        for service in upserts {
            names.insert(
                service.frontend.to_string(),
                format!("{}/{}", service.namespace, service.name),
            );
        }
    }

    /// Records the network programming latency of one change: from its trigger time to now,
    /// its map write (`lb_network_programming_duration_seconds`).
    pub fn record_programming(&self, seconds: f64) {
        lock(&self.progress)
            .network_programming_duration
            .observe(seconds);
    }

    /// Pins whose removal (`rm`, another tool, an uninstall that bypassed the lock) means the
    /// datapath is broken: liveness fails and status says which is gone.
    pub fn set_watched_pins(&self, pins: Vec<PathBuf>) {
        *lock(&self.pins) = pins;
    }

    /// The drop event reader stopped: `monitor` and the drop metrics' events are dead until
    /// a restart, so liveness fails (the kubelet restarts the agent; the datapath stays).
    pub fn set_event_reader_failed(&self, error: String) {
        lock(&self.progress).event_reader_error = Some(error);
    }

    /// Why the running datapath is unhealthy, or `None`.
    fn datapath_error(&self, progress: &Progress) -> Option<String> {
        if let Some(err) = &progress.event_reader_error {
            return Some(format!("drop event reader stopped: {err}"));
        }
        lock(&self.pins)
            .iter()
            .find(|pin| !pin.exists())
            .map(|pin| {
                format!(
                    "pin `{}` is gone; restart lb-agent to repair",
                    pin.display()
                )
            })
    }

    /// The programs are loaded and attached.
    pub fn set_datapath_loaded(&self) {
        lock(&self.progress).datapath_loaded = true;
    }

    /// Interfaces with from-netdev.
    pub fn set_devices(&self, devices: Vec<String>) {
        lock(&self.progress).devices = devices;
    }

    /// Interfaces with from-pod.
    pub fn set_pod_devices(&self, devices: Vec<String>) {
        lock(&self.progress).pod_devices = devices;
    }

    /// Interfaces with from-pod.
    pub fn pod_devices(&self) -> Vec<String> {
        lock(&self.progress).pod_devices.clone()
    }

    /// Records the outcome of a sync pass.
    pub fn record_sync(&self, outcome: Result<SyncStats, String>) {
        let mut progress = lock(&self.progress);
        match outcome {
            Ok(stats) => {
                progress.synced = true;
                progress.services = stats.services as u64;
                progress.backends = stats.backends as u64;
                progress.last_sync_error = None;
                progress.not_programmed = stats.not_programmed;
                progress.syncs += 1;
                progress.last_sync_seconds = stats.duration.as_secs_f64();
                progress.last_sync_at = Some(std::time::Instant::now());
                progress.map_entries = stats.map_entries;
                progress.sync_seconds_sum += stats.duration.as_secs_f64();
                progress.sync_duration.observe(stats.duration.as_secs_f64());
                progress.sync_repairs += stats.repairs as u64;
            }
            Err(message) => {
                progress.last_sync_error = Some(message);
                progress.sync_errors += 1;
            }
        }
    }
}

impl AgentState {
    /// Where `lbctl bpf ct list` reads conntrack: the datapath's clock and its pin directory.
    pub fn set_conntrack(&self, clock: Clock, pin_dir: std::path::PathBuf) {
        *lock(&self.conntrack) = Some((clock, pin_dir));
    }

    /// Records a conntrack GC pass.
    pub fn record_gc(&self, report: &crate::datapath::conntrack::GcReport) {
        let mut progress = lock(&self.progress);
        progress.ct_gc_deleted += report.deleted;
        progress.ct_entries_tcp = report.entries_tcp;
        progress.ct_entries_any = report.entries_any;
    }
}

/// The fill level of each map an option or a constant sizes: the sync's maps as of the last
/// pass, conntrack as of the last GC pass.
fn map_fill(config: &AgentConfig, progress: &Progress) -> Vec<MapFill> {
    use lb_common::maps as names;
    let [services, backends, revnat] = progress.map_entries;
    [
        (names::LB4_SERVICES, services as u64, config.lb_map_max),
        (names::LB4_BACKENDS, backends as u64, config.lb_map_max),
        (names::LB4_REVNAT, revnat as u64, config.lb_map_max),
        (
            names::LB4_CT_TCP,
            progress.ct_entries_tcp,
            config.ct_max_entries,
        ),
        (
            names::LB4_CT_ANY,
            progress.ct_entries_any,
            config.ct_any_max_entries,
        ),
    ]
    .into_iter()
    .map(|(name, entries, max_entries)| MapFill {
        name: name.to_owned(),
        entries,
        max_entries: u64::from(max_entries),
    })
    .collect()
}

impl ApiBackend for AgentState {
    fn status(&self) -> StatusReply {
        let config = lock(&self.config);
        let progress = lock(&self.progress);
        StatusReply {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            source: config.source.to_string(),
            node_name: config.node_name.clone(),
            datapath_loaded: progress.datapath_loaded,
            synced: progress.synced,
            services: progress.services,
            backends: progress.backends,
            devices: progress.devices.clone(),
            pod_devices: progress.pod_devices.clone(),
            last_sync_error: progress.last_sync_error.clone(),
            not_programmed: progress.not_programmed.clone(),
            source_state: crate::k8s::source_connectivity(&config.source),
            last_sync_age_seconds: progress.last_sync_at.map(|at| at.elapsed().as_secs_f64()),
            malformed_objects: crate::k8s::malformed_objects_total(),
            maps: map_fill(&config, &progress),
            programs: lock(&self.conntrack)
                .as_ref()
                .map(|(_, pin_dir)| crate::datapath::devices::pinned_links(pin_dir))
                .unwrap_or_default()
                .into_iter()
                .map(|(hook, iface)| AttachedProgram {
                    iface,
                    hook: hook.to_owned(),
                })
                .collect(),
            datapath_error: if progress.datapath_loaded {
                self.datapath_error(&progress)
            } else {
                None
            },
        }
    }

    fn services(&self) -> Vec<ServiceRow> {
        let content = match lock(&self.maps).read() {
            Ok(content) => content,
            Err(err) => {
                tracing::warn!(error = %error_chain(&err), "cannot read the maps for service list");
                return Vec::new();
            }
        };
        let names = lock(&self.names);
        rows::service_rows(&content, |frontend| names.get(frontend).cloned())
    }

    fn lb_entries(&self) -> Result<Vec<LbRow>, String> {
        let content = lock(&self.maps).read().map_err(|err| error_chain(&err))?;
        Ok(rows::lb_rows(&content))
    }

    fn config_view(&self) -> Vec<ConfigEntry> {
        let config = lock(&self.config);
        config::entries(&config, &lock(&self.sources))
    }

    fn config_set(&self, change: LiveChange) -> BoxFuture<'static, Result<String, BoxError>> {
        // The datapath and the config dir change now, under the config lock; only the
        // ConfigMap patch (kube mode) is left to the future.
        match self.apply_change(change) {
            Ok((Persist::Done, outcome)) => async move { Ok(outcome) }.boxed(),
            Ok((Persist::ConfigMap, outcome)) => persist_to_config_map(change, outcome).boxed(),
            Err(err) => async move { Err(err) }.boxed(),
        }
    }

    fn subscribe_drops(&self) -> broadcast::Receiver<DropEventRecord> {
        self.fanout.subscribe()
    }

    fn conntrack(&self) -> Result<Vec<CtRow>, String> {
        let guard = lock(&self.conntrack);
        let Some((clock, pin_dir)) = guard.as_ref() else {
            return Err("the datapath is not loaded yet".to_owned());
        };
        let read = || -> Result<_, crate::datapath::Error> {
            let now = clock.now()?;
            let conntrack = Conntrack::open(pin_dir)?;
            Ok((now, conntrack.entries()?, conntrack.entries6()?))
        };
        let (now, items, items6) = read().map_err(|err| error_chain(&err))?;
        Ok(crate::api::rows::ct_rows(&items, &items6, now))
    }

    fn metrics(&self) -> MetricsSnapshot {
        let drops = match lock(&self.maps).drop_counters() {
            Ok(counters) => counters
                .into_iter()
                .map(|((reason, hook), value)| DropCount {
                    reason,
                    hook,
                    packets: value.packets,
                    bytes: value.bytes,
                })
                .collect(),
            Err(err) => {
                tracing::warn!(error = %error_chain(&err), "cannot read drop counters");
                Vec::new()
            }
        };
        // The config before the progress, as `status` takes them.
        let config = lock(&self.config);
        let progress = lock(&self.progress);
        MetricsSnapshot {
            drops,
            services: progress.services,
            backends: progress.backends,
            syncs: progress.syncs,
            sync_errors: progress.sync_errors,
            last_sync_duration_seconds: progress.last_sync_seconds,
            sync_duration_seconds_sum: progress.sync_seconds_sum,
            ct_gc_deleted: progress.ct_gc_deleted,
            ct_entries_tcp: progress.ct_entries_tcp,
            ct_entries_any: progress.ct_entries_any,
            datapath_healthy: progress.datapath_loaded && self.datapath_error(&progress).is_none(),
            services_not_programmed: progress.not_programmed.len() as u64,
            malformed_objects: crate::k8s::malformed_objects_total(),
            watch_errors: crate::k8s::watch_errors_total(),
            lost_events: crate::api::server::lost_events_total(),
            skipped_events: crate::datapath::events::skipped_total(),
            maps: map_fill(&config, &progress),
            sync_duration: progress.sync_duration.clone(),
            network_programming_duration: progress.network_programming_duration.clone(),
            sync_repairs: progress.sync_repairs,
        }
    }
}

impl AgentState {
    /// Writes `change` into the datapath and the configuration, under the config lock the
    /// caller holds. The datapath reads `LB_CONFIG` on every packet, so the next packet sees
    /// it; established flows keep their conntrack entries and are not disturbed.
    fn write_change(&self, config: &mut AgentConfig, change: LiveChange) -> Result<(), BoxError> {
        let mut updated = config.clone();
        change.apply(&mut updated);
        let datapath_config = super::datapath_config(&updated, self.node_ip);
        lock(&self.maps)
            .set_config(&datapath_config)
            .map_err(|err| Box::new(err) as BoxError)?;
        *config = updated;
        Ok(())
    }

    /// The current value of a live option's key.
    pub fn live_value(&self, key: OptionKey) -> String {
        lock(&self.config).to_raw().remove(&key).unwrap_or_default()
    }

    /// Where `key`'s value comes from.
    pub fn source(&self, key: OptionKey) -> Source {
        lock(&self.sources).source(key)
    }

    /// Records what the config directory says of `key` while a flag or variable pins it
    /// (`None` once it agrees or says nothing), for `config view`.
    pub fn set_overridden(&self, key: OptionKey, in_dir: Option<String>) {
        let mut sources = lock(&self.sources);
        match in_dir {
            Some(value) => sources.overridden.insert(key, value),
            None => sources.overridden.remove(&key),
        };
    }

    /// Applies `change`, read from the config directory by the watch, if the option still has
    /// the value `seen` the watch compared against (a `config set` in between wins: the watch
    /// reads the directory again next time). Returns whether it applied.
    pub fn apply_from_config_dir(
        &self,
        change: LiveChange,
        seen: &str,
        in_dir: Option<&str>,
    ) -> Result<bool, BoxError> {
        let mut config = lock(&self.config);
        let Some(key) = OptionKey::lookup(change.key()) else {
            return Ok(false);
        };
        if config.to_raw().get(&key).map(String::as_str) != Some(seen) {
            return Ok(false);
        }
        // After a `config set` in kube mode the mounted ConfigMap still shows the old value
        // until the kubelet refreshes it: that stale value must not undo the change.
        {
            let mut stale = lock(&self.stale_in_dir);
            match stale.get(&key) {
                Some(old) if old.as_deref() == in_dir => return Ok(false),
                Some(_) => {
                    stale.remove(&key);
                }
                None => {}
            }
        }
        self.write_change(&mut config, change)?;
        lock(&self.sources).by_key.insert(key, Source::ConfigDir);
        tracing::info!(key = change.key(), value = %change.value(), "configuration changed in the config directory");
        Ok(true)
    }

    /// Applies a live change (`lbctl config set`) at once, then persists it; returns what is
    /// left to persist and what was done, in words.
    fn apply_change(&self, change: LiveChange) -> Result<(Persist, String), BoxError> {
        let mut config = lock(&self.config);
        self.write_change(&mut config, change)?;
        tracing::info!(key = change.key(), value = %change.value(), "configuration changed");
        let key = OptionKey::lookup(change.key());
        let pinned_by = key
            .map(|key| lock(&self.sources).source(key))
            .filter(Source::pins);
        let applied = format!(
            "{} = {}: applied live on this node",
            change.key(),
            change.value()
        );
        let (persist, source, mut outcome) = match (&config.source, &config.config_dir) {
            // In a cluster the config dir is the mounted ConfigMap (read-only): patch the
            // ConfigMap instead; the kubelet refreshes the mount on every node, whose agents
            // apply it from there.
            (SourceSpec::Kube, dir) => {
                if let (Some(dir), Some(key)) = (dir, key) {
                    let before = config::dir::read(dir)
                        .ok()
                        .and_then(|mut values| values.remove(change.key()));
                    lock(&self.stale_in_dir).insert(key, before);
                }
                (Persist::ConfigMap, Source::ConfigDir, applied)
            }
            (SourceSpec::File(_), Some(dir)) => {
                config::dir::write(dir, change.key(), &change.value())
                    .map_err(|err| Box::new(err) as BoxError)?;
                let outcome = format!(
                    "{applied}; persisted to {} (agents sharing that directory follow)",
                    dir.join(change.key()).display()
                );
                (Persist::Done, Source::ConfigDir, outcome)
            }
            (SourceSpec::File(_), None) => {
                tracing::warn!(
                    key = change.key(),
                    "no --config-dir: the change is live but not persisted"
                );
                let outcome = format!(
                    "{applied}; NOT persisted: lb-agent runs without --config-dir, so a restart \
                     loses it"
                );
                (Persist::Done, Source::SetNotPersisted, outcome)
            }
        };
        // Persisted under a flag or variable that pins the option: the pin still wins at the
        // next start, so say so, and keep showing the pin with the persisted value beside it.
        let pinned_by = pinned_by.filter(|_| source == Source::ConfigDir);
        if let Some(key) = key {
            let mut sources = lock(&self.sources);
            if pinned_by.is_some() {
                sources.overridden.insert(key, change.value());
            } else {
                sources.by_key.insert(key, source);
            }
        }
        if let Some(pin) = pinned_by {
            outcome.push_str(&format!(
                "\nwarning: the {pin} sets `{}` on this agent: at its next start the {pin} wins \
                 over the persisted value",
                change.key()
            ));
        }
        Ok((persist, outcome))
    }
}

/// What is left to persist a change.
enum Persist {
    /// Nothing.
    Done,
    /// Patch the `lb-config` ConfigMap.
    ConfigMap,
}

/// The ConfigMap `lbctl config set` patches, in the agent's namespace (`POD_NAMESPACE`, else `lb`).
pub const CONFIG_MAP: &str = "lb-config";

async fn persist_to_config_map(change: LiveChange, applied: String) -> Result<String, BoxError> {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Api, Patch, PatchParams};

    let namespace = std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "lb".to_owned());
    let client = kube::Client::try_default().await?;
    let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
    let patch = serde_json::json!({ "data": { change.key(): change.value() } });
    api.patch(CONFIG_MAP, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|err| {
            format!(
                "the change is live, but patching ConfigMap {namespace}/{CONFIG_MAP} failed: {err}"
            )
        })?;
    Ok(format!(
        "{applied}; persisted to ConfigMap {namespace}/{CONFIG_MAP} (every node applies it once \
         the kubelet refreshes its mount)"
    ))
}
