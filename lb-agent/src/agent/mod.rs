//! The agent's lifecycle: load and attach the datapath, start the source, the API and the
//! event reader, then run the reconcile loop until shutdown.
//!
//! The reconcile loop is `sync::reconcile`, on a thread of its own: the source's changes go
//! through the incremental model (`feed.rs`) into `sync::Syncer` passes, incremental where
//! they can be, full at start, after a failure and every `--full-sync-interval` (which also
//! repairs drift in the maps); outcomes land in `AgentState`. Nothing is programmed before the
//! source has synced, so a restart never scales services down.
//!
//! On shutdown the programs, links and maps stay pinned: traffic keeps flowing, and the next
//! agent adopts them (`datapath::devices::attach` swaps its program into the pinned links).
mod config_watch;
mod feed;
mod pods;
mod preflight;
mod state;

use std::{
    net::Ipv4Addr,
    sync::{Arc, Mutex},
};

use lb_common::{config as dp, drop::Hook};
use tokio_util::sync::CancellationToken;

pub use state::AgentState;

use crate::{
    api,
    config::{AgentConfig, NoBackendResponse, Sources},
    datapath::{self, BackendId, Datapath, LoadOptions, ServiceId, devices, events},
    health_check::HealthCheckServer,
    k8s,
    lock::BpfRootLock,
    model,
    monitor::DropFanout,
    sync::{self, Syncer},
    telemetry::error_chain,
};

/// Errors that stop the agent at start. Once running, it retries instead of failing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Another agent holds the bpf root, or it cannot be locked.
    #[error(transparent)]
    Lock(#[from] crate::lock::Error),
    /// The datapath could not be loaded or attached.
    #[error(transparent)]
    Datapath(#[from] datapath::Error),
    /// The maps could not be read to restore ids.
    #[error("cannot restore state from the pinned maps")]
    Restore(#[source] crate::sync::Error),
    /// The API socket could not be set up.
    #[error(transparent)]
    Api(#[from] api::server::Error),
    /// The metrics endpoint could not be set up.
    #[error(transparent)]
    Http(#[from] api::http::Error),
    /// The source failed to start.
    #[error(transparent)]
    Source(#[from] k8s::Error),
    /// The source stopped although nobody asked it to (a panic, or a stream that ended).
    #[error("the {kind} source stopped unexpectedly; lb-agent exits so that it is restarted")]
    SourceStopped {
        /// `kube` or `file:DIR`.
        kind: String,
        /// The panic, when it was one.
        #[source]
        source: Option<tokio::task::JoinError>,
    },
    /// A task the agent cannot run without panicked.
    #[error("the {task} task panicked; lb-agent exits so that it is restarted")]
    TaskPanicked {
        /// Which task.
        task: &'static str,
        /// The panic.
        #[source]
        source: tokio::task::JoinError,
    },
    /// The sync thread could not be started.
    #[error("cannot start the sync thread")]
    SyncThreadStart(#[source] std::io::Error),
    /// The sync thread ended without being asked to (a panic).
    #[error("the sync thread stopped unexpectedly; lb-agent exits so that it is restarted")]
    SyncThread,
    /// The pod-device watcher could not be set up.
    #[error("cannot watch network interfaces")]
    LinkWatch(#[source] std::io::Error),
    /// A `--pod-devices` pattern is not a valid glob.
    #[error("--pod-devices pattern `{pattern}` is not a valid glob: {reason}")]
    PodDevicesGlob {
        /// The pattern.
        pattern: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The process lacks capabilities the datapath needs.
    #[error(
        "lb-agent lacks {missing}; run it as root or grant CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN \
         (the DaemonSet's securityContext does)"
    )]
    Capabilities {
        /// The capabilities missing.
        missing: String,
    },
    /// No node address for SNAT.
    #[error("interface `{iface}` has no IPv4 address to SNAT to; set --node-ip")]
    NoNodeIp {
        /// The first of --devices.
        iface: String,
    },
}

/// This node's addresses: the IPv4 one (`--node-ip` or the first device's) and the IPv6 one
/// (`--node-ipv6` or the first device's global one), each the SNAT source of its family and a
/// node-port address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeAddrs {
    /// The IPv4 node address.
    pub v4: Option<Ipv4Addr>,
    /// The IPv6 node address.
    pub v6: Option<std::net::Ipv6Addr>,
}

/// The datapath configuration for an agent configuration.
pub fn datapath_config(config: &AgentConfig, node: NodeAddrs) -> dp::DatapathConfig {
    let NodeAddrs {
        v4: node_ip,
        v6: node_ip6,
    } = node;
    dp::DatapathConfig {
        flags: if config.external_cluster_ip {
            dp::CONFIG_F_EXTERNAL_CLUSTER_IP
        } else {
            0
        } | match config.no_backend_response {
            NoBackendResponse::Reject => 0,
            NoBackendResponse::Drop => dp::CONFIG_F_NO_BACKEND_DROP,
        },
        node_addr: datapath::maps::node_addr_value(node_ip),
        snat_port_min: config.snat_port_range.min,
        snat_port_max: config.snat_port_range.max,
        events_per_sec: dp::EVENTS_PER_SEC,
        // Unknown HZ (no coarse clock): the clock stands still and flows never expire, as
        // before lifetimes existed, rather than expiring at random.
        clock_mult: datapath::conntrack::kernel_hz()
            .map(datapath::conntrack::clock_mult)
            .unwrap_or(0),
        clock_offset: 0,
        lifetimes: lb_common::conntrack::CtLifetimes {
            tcp: config.ct_timeout_regular_tcp,
            tcp_syn: config.ct_timeout_regular_tcp_syn,
            tcp_fin: config.ct_timeout_regular_tcp_fin,
            any: config.ct_timeout_regular_any,
            service_tcp: config.ct_timeout_service_tcp,
            service_tcp_grace: config.ct_timeout_service_tcp_grace,
            service_any: config.ct_timeout_service_any,
        },
        maglev_seed: config.maglev_hash_seed.tuple(),
        maglev_table_size: config.maglev_table_size,
        _pad: 0,
        // All zero without one: the datapath then drops IPv6 flows that need SNAT (165).
        node_addr6: datapath::maps::node_addr6_value(node_ip6),
    }
}

/// The sync loop's backend selection for an agent configuration.
pub fn selection(config: &AgentConfig) -> crate::sync::maglev::Settings {
    crate::sync::maglev::Settings {
        default: config.lb_algorithm,
        annotation: config.lb_algorithm_annotation,
        table_size: config.maglev_table_size,
        seed: config.maglev_hash_seed,
    }
}

/// Runs the agent until `shutdown` is cancelled.
///
/// Start-up is ordered so that a failed start leaves the node as it was: first every check
/// that touches nothing (`preflight`), then the bpf root's lock (a second agent stops here,
/// having changed nothing), then the listeners, then the datapath. A failure after the lock
/// removes what this start created: the socket, and on a first install the pins, links and
/// directories (an existing datapath is adopted, never removed).
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> Result<(), Error> {
    run_with_sources(config, Sources::default(), shutdown).await
}

/// [`run`] with where each option came from (`config::Resolved`), for `lbctl config view` and
/// for the config-dir watch, which leaves options that a flag or variable pins alone.
pub async fn run_with_sources(
    config: AgentConfig,
    sources: Sources,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let node_ip = NodeAddrs {
        v4: preflight::check(&config)?,
        v6: preflight::node_ipv6(&config),
    };
    // Held until this function returns; the kernel releases it however the process ends.
    let lock = BpfRootLock::acquire(&config.bpf_root)?;
    let first_install = !config.bpf_root.join(lb_common::maps::PIN_VERSION).exists();
    let listeners = match Listeners::bind(&config).await {
        Ok(listeners) => listeners,
        Err(err) => {
            lock.remove_created_dirs();
            return Err(err);
        }
    };
    let loaded = match load(&config, node_ip) {
        Ok(loaded) => loaded,
        Err(err) => {
            undo_start(&config, &lock, first_install);
            return Err(err);
        }
    };
    let result = serve(&config, sources, node_ip, loaded, listeners, shutdown).await;
    drop(lock);
    result
}

/// The API socket and the metrics endpoint, bound before the datapath is touched (a socket
/// or port in use is a common failure); connections wait in the backlog until served.
struct Listeners {
    api: tokio::net::UnixListener,
    http: Option<tokio::net::TcpListener>,
}

impl Listeners {
    async fn bind(config: &AgentConfig) -> Result<Self, Error> {
        let api = api::server::bind(&config.socket)?;
        let http = match config.metrics_address {
            Some(addr) => match api::http::bind(addr).await {
                Ok(listener) => Some(listener),
                Err(err) => {
                    remove_socket(&config.socket);
                    return Err(err.into());
                }
            },
            None => None,
        };
        Ok(Self { api, http })
    }
}

/// The datapath, loaded and attached to `--devices`, with what the agent reads from it.
struct Loaded {
    ebpf: aya::Ebpf,
    pin_dir: std::path::PathBuf,
    ring: events::Ring,
    syncer: Syncer<datapath::maps::AyaMaps>,
    maps: Arc<Mutex<datapath::maps::AyaMaps>>,
    link_watcher: devices::LinkWatcher,
    clock: datapath::conntrack::Clock,
    /// A second handle on the clock, for `lbctl bpf ct list`.
    list_clock: datapath::conntrack::Clock,
    /// Maps whose capacity changed, finished once every link runs this agent's programs.
    resize: datapath::resize::Pending,
}

/// Loads the datapath (adopting pinned maps and links), attaches it to `--devices` and
/// restores the sync ids from the maps.
fn load(config: &AgentConfig, node_ip: NodeAddrs) -> Result<Loaded, Error> {
    let options = LoadOptions {
        bpf_root: config.bpf_root.clone(),
        ct_max_entries: config.ct_max_entries,
        ct_any_max_entries: config.ct_any_max_entries,
        lb_map_max: config.lb_map_max,
        config: datapath_config(config, node_ip),
    };
    let Datapath {
        mut ebpf,
        maps,
        pin_dir,
        clock,
        resize,
    } = Datapath::load(&options)?;
    // Pins of an lb with another map layout: this agent cannot use them (their maps, and the
    // flows in their conntrack, are not read), so say so; `--uninstall` removes them.
    let stale = crate::uninstall::other_versions(&config.bpf_root, lb_common::maps::PIN_VERSION);
    if !stale.is_empty() {
        tracing::warn!(
            dirs = ?stale,
            "found pins of another lb version, unused by this agent; remove them once no agent \
             of that version runs on this node (`lb-agent --uninstall` removes all of lb's pins)"
        );
    }
    let ring = events::take_ring(&mut ebpf)?;
    let link_watcher = devices::LinkWatcher::new().map_err(Error::LinkWatch)?;
    for iface in &config.devices {
        devices::attach(&mut ebpf, &pin_dir, Hook::FromNetdev, iface)?;
        devices::attach(&mut ebpf, &pin_dir, Hook::FromHost, iface)?;
    }
    if config.bpf_lb_sock {
        let cgroup = datapath::sock::resolve_cgroup_root(&config.cgroup_root)
            .map_err(datapath::Error::from)?;
        datapath::sock::attach(&mut ebpf, &pin_dir, &cgroup).map_err(datapath::Error::from)?;
    } else {
        datapath::sock::detach(&pin_dir);
    }
    let maps = Arc::new(Mutex::new(maps));
    let syncer = Syncer::new(maps.clone())
        .map_err(Error::Restore)?
        .with_selection(selection(config));
    let list_clock = datapath::conntrack::Clock::new(&mut ebpf, &pin_dir)?;
    Ok(Loaded {
        ebpf,
        pin_dir,
        ring,
        syncer,
        maps,
        link_watcher,
        clock,
        list_clock,
        resize,
    })
}

/// Removes what a failed start created: the socket, on a first install the version directory
/// (its links detached, its pins removed), and the directories the lock created.
fn undo_start(config: &AgentConfig, lock: &BpfRootLock, first_install: bool) {
    remove_socket(&config.socket);
    if first_install {
        let dir = config.bpf_root.join(lb_common::maps::PIN_VERSION);
        let mut report = crate::uninstall::Report::default();
        if let Err(err) = crate::uninstall::remove_version_dir(&dir, &mut report)
            && dir.exists()
        {
            tracing::warn!(dir = %dir.display(), error = %error_chain(&err), "cannot remove the pins of a failed start");
        }
    }
    lock.remove_created_dirs();
}

fn remove_socket(path: &std::path::Path) {
    if let Err(err) = std::fs::remove_file(path)
        && err.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(socket = %path.display(), error = %err, "cannot remove the socket");
    }
}

/// This node as the model sees it: its name, and as node-port addresses the node IPs and the
/// first IPv4 and first global IPv6 address of each `--devices` interface (the addresses
/// clients outside reach). An IPv6 node port is served only with an IPv6 node address (the
/// SNAT source its flows may need).
fn this_node(config: &AgentConfig, node_ip: NodeAddrs) -> model::ThisNode {
    let mut addresses: Vec<std::net::IpAddr> = node_ip.v4.into_iter().map(Into::into).collect();
    addresses.extend(node_ip.v6.map(std::net::IpAddr::from));
    for iface in &config.devices {
        let v6 = node_ip.v6.and(devices::first_ipv6(iface));
        for addr in devices::first_ipv4(iface)
            .map(std::net::IpAddr::from)
            .into_iter()
            .chain(v6.map(Into::into))
        {
            if !addresses.contains(&addr) {
                addresses.push(addr);
            }
        }
    }
    model::ThisNode {
        name: config.node_name.clone(),
        addresses,
        node_ports: config.node_port_range.min..=config.node_port_range.max,
        zone: config.node_zone.clone(),
    }
}

/// Runs the started agent: the pod-device watcher, the event reader, the API, the source and
/// the reconcile loop, until shutdown or a source failure.
async fn serve(
    config: &AgentConfig,
    sources: Sources,
    node_ip: NodeAddrs,
    loaded: Loaded,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let Loaded {
        ebpf,
        pin_dir,
        ring,
        mut syncer,
        maps,
        link_watcher,
        clock,
        list_clock,
        resize,
    } = loaded;
    devices::prune_stale_links(&pin_dir);
    tracing::info!(devices = ?config.devices, bpf_root = %config.bpf_root.display(), "datapath loaded");

    let fanout = DropFanout::default();
    let state = Arc::new(AgentState::new(
        config.clone(),
        sources,
        node_ip,
        maps,
        fanout.clone(),
    ));
    state.set_devices(config.devices.clone());

    let mut tasks = Tasks::default();
    let ebpf = Arc::new(Mutex::new(ebpf));
    pods::attach_matching(&ebpf, &pin_dir, &config.pod_devices, &state);
    // Every link now runs this agent's programs: the old maps of a resize get no more writes.
    if !resize.is_empty()
        && let Err(err) = resize.finish()
    {
        tracing::warn!(error = %error_chain(&err), "cannot finish resizing the maps; the next start resumes");
    }
    state.set_watched_pins(watched_pins(&pin_dir, &config.devices));
    tasks.spawn(
        "pod-device watcher",
        pods::watch(
            link_watcher,
            ebpf.clone(),
            pin_dir.clone(),
            config.pod_devices.clone(),
            state.clone(),
            shutdown.clone(),
        ),
    );
    tasks.spawn("drop event reader", {
        let (shutdown, state) = (shutdown.clone(), state.clone());
        async move {
            if let Err(err) =
                events::forward(ring, move |event| fanout.publish(event), shutdown).await
            {
                tracing::error!(error = %err, "drop event reader stopped; liveness now fails");
                state.set_event_reader_failed(err.to_string());
            }
        }
    });
    state.set_conntrack(list_clock, pin_dir.clone());
    tasks.spawn(
        "conntrack GC",
        datapath::conntrack::run_gc(
            clock,
            pin_dir.clone(),
            std::time::Duration::from_secs(u64::from(config.conntrack_gc_interval)),
            shutdown.clone(),
            {
                let state = state.clone();
                // The ids live conntrack entries still name: the syncer keeps their rev-NAT entries
                // and does not hand them out again until no entry names them.
                let referenced = syncer.referenced_sender();
                move |report, scan_started| {
                    state.record_gc(report);
                    referenced.report(sync::Referenced {
                        scan_started,
                        services: report
                            .referenced_services
                            .iter()
                            .map(|id| ServiceId(*id))
                            .collect(),
                        backends: report
                            .referenced_backends
                            .iter()
                            .map(|id| BackendId(*id))
                            .collect(),
                    });
                }
            },
        ),
    );
    state.set_datapath_loaded();

    if let Some(dir) = &config.config_dir {
        tasks.spawn(
            "config-dir watch",
            config_watch::watch(dir.clone(), state.clone(), shutdown.clone()),
        );
    }

    let backend: Arc<dyn api::server::ApiBackend> = state.clone();
    tasks.spawn(
        "api",
        api::server::serve_listener(listeners.api, backend.clone(), shutdown.clone()),
    );
    if let Some(listener) = listeners.http {
        tasks.spawn(
            "metrics",
            api::http::serve_listener(listener, backend, shutdown.clone()),
        );
    }

    let view = k8s::View::default();
    let source_shutdown = shutdown.child_token();
    let mut source = tokio::spawn(k8s::run_source(
        config.source.clone(),
        config.node_name.clone(),
        view.clone(),
        source_shutdown.clone(),
    ));

    let this_node = this_node(config, node_ip);
    tracing::info!(addresses = ?this_node.addresses, "node ports served on these addresses");
    let health_checks = Arc::new(HealthCheckServer::new(
        this_node.addresses.clone(),
        shutdown.clone(),
    ));
    let feed = feed::ModelFeed::new(view, this_node, state.clone(), health_checks);
    let options = sync::ReconcileOptions {
        resync_interval: Some(std::time::Duration::from_secs(u64::from(
            config.full_sync_interval,
        ))),
    };
    let reconcile = spawn_reconcile(syncer, feed, options, shutdown.clone())?;
    // Whatever ends first ends the agent. Only a cancelled `shutdown` is a clean exit: a
    // source or task that stops on its own exits non-zero, so that a supervisor restarts it.
    let result = tokio::select! {
        ended = reconcile => match ended {
            Ok(()) => Ok(()),
            Err(_) => Err(Error::SyncThread),
        },
        ended = &mut source => match ended {
            Ok(Ok(())) if shutdown.is_cancelled() => Ok(()),
            Ok(Ok(())) => Err(Error::SourceStopped { kind: config.source.to_string(), source: None }),
            Ok(Err(err)) => Err(Error::Source(err)),
            Err(join) => Err(Error::SourceStopped { kind: config.source.to_string(), source: Some(join) }),
        },
        err = tasks.first_panic() => Err(err),
    };
    source_shutdown.cancel();
    shutdown.cancel();
    tasks.join_all().await;
    remove_socket(&config.socket);
    tracing::info!("lb-agent stopped; programs, links and maps stay pinned");
    result
}

/// Runs the reconcile loop on a thread of its own (with a runtime of its own for its timers),
/// so that planning and map writes never hold up the API, the source or the event reader on
/// the agent's runtime. The receiver completes when the loop ends, or fails if it panicked.
fn spawn_reconcile(
    mut syncer: Syncer<datapath::maps::AyaMaps>,
    feed: feed::ModelFeed,
    options: sync::ReconcileOptions,
    shutdown: CancellationToken,
) -> Result<tokio::sync::oneshot::Receiver<()>, Error> {
    let (done, ended) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("lb-sync".to_owned())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
            {
                Ok(runtime) => runtime,
                Err(err) => {
                    tracing::error!(error = %err, "cannot start the sync thread's runtime");
                    return;
                }
            };
            runtime.block_on(sync::reconcile(&mut syncer, feed, options, shutdown));
            let _ = done.send(());
        })
        .map_err(Error::SyncThreadStart)?;
    Ok(ended)
}

/// The agent's background tasks, by name, so that a panic says which one died.
#[derive(Default)]
struct Tasks {
    set: tokio::task::JoinSet<()>,
    names: std::collections::HashMap<tokio::task::Id, &'static str>,
}

impl Tasks {
    fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let id = self.set.spawn(task).id();
        self.names.insert(id, name);
    }

    /// Resolves with the first task that panics; a task that returns is not a failure (it ends
    /// with shutdown, or has nothing left to do).
    async fn first_panic(&mut self) -> Error {
        loop {
            match self.set.join_next().await {
                Some(Err(source)) if source.is_panic() => {
                    let task = self.names.get(&source.id()).copied().unwrap_or("agent");
                    return Error::TaskPanicked { task, source };
                }
                Some(_) => {}
                None => std::future::pending::<()>().await,
            }
        }
    }

    async fn join_all(&mut self) {
        while self.set.join_next().await.is_some() {}
    }
}

/// The pins liveness watches: every map pinned in `pin_dir` and the from-netdev link of each
/// of `devices`. Pod links are left out: they go with their pods.
fn watched_pins(pin_dir: &std::path::Path, devices: &[String]) -> Vec<std::path::PathBuf> {
    let mut pins: Vec<_> = std::fs::read_dir(pin_dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        // Not the directory of maps an unfinished resize left aside.
        .filter(|path| path.is_file())
        .collect();
    pins.sort();
    pins.extend(
        devices
            .iter()
            .map(|iface| devices::link_pin_path(pin_dir, Hook::FromNetdev, iface)),
    );
    pins
}
