//! A freshly loaded datapath for packet tests, programmed the way production programs it: the
//! embedded object loaded by the agent's own loader (`lb_agent::datapath::Datapath`) with its
//! maps pinned under a unique directory in /sys/fs/bpf (removed on drop), and services written
//! by the agent's `sync::Syncer` from [`DesiredService`] values, as Katran's tests provision
//! through `addVip`/`addReal`. Frames go through `BPF_PROG_TEST_RUN`; metrics, events and
//! conntrack are read back.
//!
//! A state that sync never writes (a routable frontend, which nothing in the agent sets yet)
//! goes through the one low-level door, [`Datapath::behind_sync`], which says so in its name.
//! Each test loads its own `Datapath`, so every case starts from empty maps.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use aya::{
    Ebpf, TestRun as _, TestRunOptions,
    maps::{HashMap, MapData, RingBuf},
    programs::{LinkOrder, SchedClassifier, TcAttachType, tc::TcAttachOptions},
};
use lb_agent::{
    datapath::{
        Datapath as Loaded, LbMaps as _, LoadOptions as AgentLoadOptions,
        conntrack::{Clock, Conntrack, GcReport},
        maps::AyaMaps,
    },
    model::{
        BackendState, DesiredBackend, DesiredService, Frontend, FrontendKind, Protocol, SourceRange,
    },
    sync::{Syncer, maglev},
};
use lb_common::{
    config::{DatapathConfig, EVENTS_PER_SEC},
    conntrack::{CtEntry, CtKey4},
    drop::{DropReason, Hook},
    event::DropEvent,
    maps,
    service::{AffinityKey4, AffinityValue},
};
use lb_testkit::packet::addr;
use lb_testkit::{BPF_ROOT, Netns, ok};

use crate::topology::{BACKEND_DEVS, CLIENT_DEV, NODE_DEV, Topology};

/// Linux's `TC_ACT_UNSPEC`: hand the packet on.
pub const TC_ACT_UNSPEC: i32 = -1;
/// Linux's `TC_ACT_SHOT`: drop.
pub const TC_ACT_SHOT: i32 = 2;
/// Linux's `TC_ACT_REDIRECT`.
pub const TC_ACT_REDIRECT: i32 = 7;

/// An `a.b.c.d:port` or `[v6]:port` address.
fn socket_addr(text: &str) -> std::net::SocketAddr {
    text.parse()
        .unwrap_or_else(|err| panic!("{text:?} is not address:port: {err}"))
}

/// Parses a frontend, `"a.b.c.d:port/TCP"` (or `"[v6]:port/TCP"`) or `/UDP`.
pub fn frontend(text: &str) -> Frontend {
    let (socket, protocol) = text
        .split_once('/')
        .unwrap_or_else(|| panic!("frontend {text:?} is not a.b.c.d:port/PROTO"));
    let socket = socket_addr(socket);
    let protocol = match protocol {
        "TCP" => Protocol::Tcp,
        "UDP" => Protocol::Udp,
        other => panic!("unknown protocol {other} in {text:?}"),
    };
    Frontend {
        vip: socket.ip(),
        port: socket.port(),
        protocol,
    }
}

fn backend(text: &str, state: BackendState) -> DesiredBackend {
    let socket = socket_addr(text);
    DesiredBackend {
        addr: socket.ip(),
        port: socket.port(),
        state,
        remote: false,
    }
}

/// Now on the clock the datapath stamps entries with (`bpf_ktime_get_ns` is CLOCK_MONOTONIC).
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer for the call's duration.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC)");
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// A ClusterIP service on `frontend` (`"a.b.c.d:port/TCP"`) with active, local backends
/// (`"a.b.c.d:port"`), as the model would yield it.
pub fn service(frontend_text: &str, backends: &[&str]) -> DesiredService {
    let frontend = frontend(frontend_text);
    DesiredService {
        namespace: "test".into(),
        name: format!("svc-{}-{}", frontend.vip, frontend.port),
        port_name: String::new(),
        frontend,
        kind: FrontendKind::ClusterIp,
        local_only: false,
        backends: backends
            .iter()
            .map(|text| backend(text, BackendState::Active))
            .collect(),
        has_any_endpoints: !backends.is_empty(),
        affinity_timeout_secs: None,
        source_ranges: None,
        algorithm: None,
    }
}

/// Variations of a test's [`service`].
pub trait ServiceExt {
    /// The same service with every backend on another node.
    fn remote(self) -> Self;
    /// The same service with `backends` added as terminating: kept so that their established
    /// flows drain, never chosen for new ones.
    fn terminating(self, backends: &[&str]) -> Self;
    /// The same service with ClientIP session affinity for `timeout_secs`.
    fn affinity(self, timeout_secs: u32) -> Self;
    /// The same service as a frontend of another kind (a node port, an external or a
    /// load-balancer IP), as the model yields one.
    fn kind(self, kind: FrontendKind) -> Self;
    /// The same service admitting outside clients only from `ranges` (`"a.b.c.d/n"` or
    /// `"v6::/n"`), as the model yields a load-balancer frontend with
    /// `loadBalancerSourceRanges`.
    fn source_ranges(self, ranges: &[&str]) -> Self;
}

impl ServiceExt for DesiredService {
    fn remote(mut self) -> Self {
        for backend in &mut self.backends {
            backend.remote = true;
        }
        self
    }

    fn affinity(mut self, timeout_secs: u32) -> Self {
        self.affinity_timeout_secs = Some(timeout_secs);
        self
    }

    fn kind(mut self, kind: FrontendKind) -> Self {
        self.kind = kind;
        self
    }

    fn source_ranges(mut self, ranges: &[&str]) -> Self {
        let parse = |text: &&str| {
            let (addr, len) = text.split_once('/').expect("address/n");
            SourceRange::new(
                addr.parse().expect("an IP address"),
                len.parse().expect("a prefix length"),
            )
            .expect("a prefix length within the address")
        };
        self.source_ranges = Some(ranges.iter().map(parse).collect());
        self
    }

    fn terminating(mut self, backends: &[&str]) -> Self {
        self.backends.extend(
            backends
                .iter()
                .map(|text| backend(text, BackendState::Terminating)),
        );
        self
    }
}

/// What a run returned.
#[derive(Debug)]
pub struct Run {
    /// The program's return code (`TC_ACT_*`).
    pub verdict: i32,
    /// The packet as the program left it.
    pub frame: Vec<u8>,
    /// Kernel-measured time per run.
    pub duration: Duration,
}

/// A loaded datapath with its own pinned maps, programmed through the agent's syncer.
pub struct Datapath {
    /// The programs, and the maps sync does not own (conntrack, events).
    ebpf: Ebpf,
    /// The maps sync owns, shared with `syncer` as in the agent.
    maps: Arc<Mutex<AyaMaps>>,
    syncer: Syncer<AyaMaps>,
    selection: maglev::Settings,
    clock: Clock,
    bpf_root: PathBuf,
    pin_dir: PathBuf,
}

/// Options for loading.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadOptions {
    /// Overrides `LB4_CT_TCP`'s capacity.
    pub ct_max_entries: Option<u32>,
    /// Overrides `LB4_CT_ANY`'s capacity.
    pub ct_any_max_entries: Option<u32>,
    /// Overrides `bpf-lb-map-max` (services, backends and rev-NAT maps).
    pub lb_map_max: Option<u32>,
    /// Backend selection (the agent's `bpf-lb-algorithm` and Maglev options): random unless
    /// given.
    pub selection: Option<maglev::Settings>,
}

static INSTANCE: AtomicU32 = AtomicU32::new(0);

impl Datapath {
    /// Loads both programs with default map sizes and a config that sends events.
    pub fn load() -> Self {
        Self::load_with(LoadOptions::default())
    }

    /// Loads both programs with `options`, as the agent loads them.
    pub fn load_with(options: LoadOptions) -> Self {
        let bpf_root = PathBuf::from(format!(
            "{BPF_ROOT}/lb-test-{}-{}",
            std::process::id(),
            INSTANCE.fetch_add(1, Ordering::Relaxed)
        ));
        ok(lb_testkit::ensure_bpffs(), "mount bpffs");
        let selection = options.selection.unwrap_or_default();
        let loaded = Loaded::load(&AgentLoadOptions {
            bpf_root: bpf_root.clone(),
            ct_max_entries: options.ct_max_entries.unwrap_or(maps::CT_MAX_ENTRIES),
            ct_any_max_entries: options
                .ct_any_max_entries
                .unwrap_or(maps::CT_ANY_MAX_ENTRIES),
            lb_map_max: options.lb_map_max.unwrap_or(maps::SERVICES_MAX_ENTRIES),
            config: DatapathConfig {
                events_per_sec: EVENTS_PER_SEC,
                maglev_seed: selection.seed.tuple(),
                maglev_table_size: selection.table_size,
                ..DatapathConfig::default()
            },
        })
        .unwrap_or_else(|err| panic!("load lb-ebpf: {:#}", anyhow::Error::new(err)));
        let Loaded {
            ebpf,
            maps,
            pin_dir,
            clock,
            ..
        } = loaded;
        let maps = Arc::new(Mutex::new(maps));
        let syncer = Syncer::new(maps.clone())
            .expect("read the fresh maps")
            .with_selection(selection);
        Self {
            ebpf,
            maps,
            syncer,
            selection,
            clock,
            bpf_root,
            pin_dir,
        }
    }

    /// The directory the maps are pinned in.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Programs exactly `services`, as one pass of the agent's reconcile loop would: frontends
    /// and backends not listed are removed.
    pub fn sync(&mut self, services: &[DesiredService]) {
        self.syncer
            .sync(services)
            .unwrap_or_else(|err| panic!("sync: {:#}", anyhow::Error::new(err)));
    }

    /// The syncer that programs the maps, for what the agent's other tasks ask of it (the
    /// conntrack GC's `release_unreferenced`).
    pub fn syncer(&mut self) -> &mut Syncer<AyaMaps> {
        &mut self.syncer
    }

    /// Writes the maps sync owns directly, for a state sync itself would never produce. The
    /// syncer is started afresh afterwards (as a restarted agent would), so that the next
    /// [`Datapath::sync`] plans from what the maps now hold.
    pub fn behind_sync<R>(&mut self, write: impl FnOnce(&mut AyaMaps) -> R) -> R {
        let result = write(&mut lock(&self.maps));
        self.syncer = Syncer::new(self.maps.clone())
            .expect("re-read the maps")
            .with_selection(self.selection);
        result
    }

    /// The id sync gave backend `"a.b.c.d:port"`, as the raw number conntrack entries record.
    pub fn backend_id(&self, backend: &str) -> Option<u32> {
        let socket = addr(backend);
        let content = lock(&self.maps).read().expect("read the maps");
        content.backends.iter().find_map(|(id, value)| {
            let (ip, port) = lb_agent::datapath::maps::backend_addr_of(value);
            (ip == std::net::IpAddr::V4(*socket.ip()) && port == socket.port()).then_some(id.0)
        })
    }

    fn program(&self, hook: Hook) -> &SchedClassifier {
        let name = program_name(hook);
        self.ebpf
            .program(name)
            .and_then(|p| <&SchedClassifier>::try_from(p).ok())
            .unwrap_or_else(|| panic!("program {name}"))
    }

    /// Runs `frame` through `hook` once.
    pub fn run(&self, hook: Hook, frame: &[u8]) -> Run {
        self.run_repeat(hook, frame, 1)
    }

    /// Runs `frame` through `hook` `repeat` times (on the same, possibly rewritten, buffer).
    pub fn run_repeat(&self, hook: Hook, frame: &[u8], repeat: u32) -> Run {
        self.run_with(hook, frame, repeat, None)
    }

    /// Runs `frame` through `hook` as if it had arrived on interface `ifindex` of the calling
    /// thread's network namespace (see `FibNetns::enter`).
    pub fn run_on(&self, hook: Hook, frame: &[u8], ifindex: u32) -> Run {
        self.run_with(hook, frame, 1, Some(ifindex))
    }

    fn run_with(&self, hook: Hook, frame: &[u8], repeat: u32, ifindex: Option<u32>) -> Run {
        let mut out = vec![0u8; frame.len() + 256];
        // A prefix of `struct __sk_buff`: the kernel accepts a shorter context and only lets
        // a few fields be set; `ingress_ifindex` (offset 36) and `ifindex` (40) pick the device.
        let mut skb = [0u8; 44];
        if let Some(ifindex) = ifindex {
            skb[36..40].copy_from_slice(&ifindex.to_ne_bytes());
            skb[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        }
        let result = self
            .program(hook)
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: ifindex.map(|_| &skb[..]),
                repeat,
                ..TestRunOptions::default()
            })
            .unwrap_or_else(|err| {
                panic!("BPF_PROG_TEST_RUN of a {}-byte frame: {err:?}", frame.len())
            });
        out.truncate(result.data_size_out as usize);
        Run {
            verdict: result.return_value as i32,
            frame: out,
            duration: result.duration,
        }
    }

    /// Writes `LB_CONFIG[0]`, as the agent does when its configuration changes.
    pub fn set_config(&mut self, config: DatapathConfig) {
        lock(&self.maps)
            .set_config(&config)
            .expect("write LB_CONFIG");
    }

    /// Attaches `hook`'s program to the ingress of `iface` with TCX, as the agent does. The
    /// interface is looked up in the calling thread's network namespace (run it inside
    /// `lb_testkit::Netns::within`); the link lasts as long as this datapath or the interface.
    pub fn attach(&mut self, hook: Hook, iface: &str) {
        let name = program_name(hook);
        let program: &mut SchedClassifier = self
            .ebpf
            .program_mut(name)
            .unwrap_or_else(|| panic!("program {name}"))
            .try_into()
            .expect("a classifier");
        program
            .attach_with_options(
                iface,
                TcAttachType::Ingress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .unwrap_or_else(|err| panic!("attach {name} to {iface} with TCX: {err:?}"));
    }

    /// Attaches from-netdev to `topology`'s external interface and from-pod to the host side of
    /// every pod's veth, in the node's namespace: the datapath of a node, as the agent sets it.
    pub fn attach_to(&mut self, topology: &Topology) {
        ok(
            topology.node.within(|| {
                self.attach(Hook::FromNetdev, NODE_DEV);
                for dev in std::iter::once(CLIENT_DEV).chain(BACKEND_DEVS) {
                    self.attach(Hook::FromPod, dev);
                }
            }),
            "enter the node's namespace",
        );
    }

    /// Drops counted for `reason` at `hook`, summed over CPUs.
    pub fn drop_count(&self, reason: DropReason, hook: Hook) -> u64 {
        self.all_drops()
            .into_iter()
            .find(|(r, h, _)| (*r, *h) == (reason as u8, hook as u8))
            .map_or(0, |(_, _, packets)| packets)
    }

    /// Every (reason, hook, packets) counted, summed over CPUs, sorted.
    pub fn all_drops(&self) -> Vec<(u8, u8, u64)> {
        lock(&self.maps)
            .drop_counters()
            .expect("read LB_METRICS")
            .into_iter()
            .map(|((reason, hook), value)| (reason, hook, value.packets))
            .collect()
    }

    /// Takes every event currently in `LB_EVENTS`.
    pub fn drain_events(&mut self) -> Vec<DropEvent> {
        let mut ring = RingBuf::try_from(self.map_mut(maps::LB_EVENTS)).expect("LB_EVENTS type");
        let mut events = Vec::new();
        while let Some(item) = ring.next() {
            assert_eq!(item.len(), size_of::<DropEvent>(), "event size");
            // SAFETY: DropEvent is plain old data of exactly this size; read_unaligned copes
            // with the ring buffer's 8-byte alignment.
            events.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<DropEvent>()) });
        }
        events
    }

    /// Every conntrack entry of both maps (TCP first), expired ones included.
    pub fn conntrack(&self) -> Vec<(CtKey4, CtEntry)> {
        [maps::LB4_CT_TCP, maps::LB4_CT_ANY]
            .into_iter()
            .flat_map(|name| self.conntrack_of(name))
            .collect()
    }

    /// Every entry of the conntrack map `name`.
    pub fn conntrack_of(&self, name: &str) -> Vec<(CtKey4, CtEntry)> {
        let ct: HashMap<&MapData, CtKey4, CtEntry> =
            HashMap::try_from(self.map(name)).expect("a conntrack map");
        ct.iter()
            .map(|item| item.expect("read a conntrack map"))
            .collect()
    }

    /// Writes a conntrack entry directly (a state a test sets up, e.g. another CPU's entry).
    pub fn insert_conntrack(&mut self, name: &str, key: CtKey4, entry: CtEntry) {
        let mut ct: HashMap<&mut MapData, CtKey4, CtEntry> =
            HashMap::try_from(self.map_mut(name)).expect("a conntrack map");
        ct.insert(key, entry, 0).expect("write a conntrack entry");
    }

    /// The rows `lbctl bpf ct list` shows for this datapath's conntrack (both families), made
    /// as the agent makes them: its `Conntrack` reads the pinned maps and `api::rows::ct_rows`
    /// turns the entries into rows at the datapath's now.
    pub fn ct_rows(&self) -> Vec<lb_api::proto::CtRow> {
        let conntrack = Conntrack::open(&self.pin_dir).expect("open the conntrack maps");
        let items = conntrack.entries().expect("read the IPv4 conntrack maps");
        let items6 = conntrack.entries6().expect("read the IPv6 conntrack maps");
        lb_agent::api::rows::ct_rows(&items, &items6, self.now())
    }

    /// The datapath's conntrack clock (seconds), as the agent reads it.
    pub fn now(&self) -> u32 {
        self.clock.now().expect("run ct_clock")
    }

    /// One pass of the agent's conntrack GC at the datapath's now.
    pub fn gc(&self) -> GcReport {
        let mut conntrack = Conntrack::open(&self.pin_dir).expect("open the conntrack maps");
        conntrack.gc(self.now()).expect("GC pass")
    }

    /// Every ClientIP affinity entry.
    pub fn affinity(&self) -> Vec<(AffinityKey4, AffinityValue)> {
        let map: HashMap<&MapData, AffinityKey4, AffinityValue> =
            HashMap::try_from(self.map(maps::LB4_AFFINITY)).expect("LB4_AFFINITY type");
        map.iter()
            .map(|item| item.expect("read LB4_AFFINITY"))
            .collect()
    }

    /// Writes an affinity entry, as the datapath would have for an earlier connection.
    pub fn remember_affinity(&mut self, key: AffinityKey4, value: AffinityValue) {
        let mut map: HashMap<&mut MapData, AffinityKey4, AffinityValue> =
            HashMap::try_from(self.map_mut(maps::LB4_AFFINITY)).expect("LB4_AFFINITY type");
        map.insert(key, value, 0).expect("write LB4_AFFINITY");
    }

    /// Loads the socket programs (`lb-ebpf/src/sock.rs`), which the agent loads only with
    /// `bpf-lb-sock`, so that the verifier judges them; nothing is attached.
    pub fn load_socket_programs(&mut self) {
        for name in lb_agent::datapath::sock::PROGRAMS {
            let program: &mut aya::programs::CgroupSockAddr = self
                .ebpf
                .program_mut(name)
                .unwrap_or_else(|| panic!("program {name} is in the object"))
                .try_into()
                .unwrap_or_else(|err| panic!("{name} is a cgroup/sock_addr program: {err}"));
            program
                .load()
                .unwrap_or_else(|err| panic!("load {name}: {:#}", anyhow::Error::new(err)));
        }
    }

    /// A map sync does not own, by name.
    fn map(&self, name: &str) -> &aya::maps::Map {
        self.ebpf
            .map(name)
            .unwrap_or_else(|| panic!("map {name} is in the object"))
    }

    fn map_mut(&mut self, name: &str) -> &mut aya::maps::Map {
        self.ebpf
            .map_mut(name)
            .unwrap_or_else(|| panic!("map {name} is in the object"))
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        // Pins outlive the maps' file descriptors: remove them, or they leak in bpffs.
        let _ = std::fs::remove_dir_all(&self.bpf_root);
    }
}

fn program_name(hook: Hook) -> &'static str {
    match hook {
        Hook::FromNetdev => "from_netdev",
        Hook::FromPod => "from_pod",
        Hook::FromHost => "from_host",
    }
}

/// Locks the maps; a test that panicked while holding them leaves nothing half-done that
/// another would trip over (every write is a whole entry).
fn lock(maps: &Mutex<AyaMaps>) -> MutexGuard<'_, AyaMaps> {
    maps.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a case expects of the datapath.
#[derive(Debug)]
pub enum Expect {
    /// Handed on (`TC_ACT_UNSPEC`) byte for byte.
    Unchanged,
    /// Handed on, rewritten into exactly this frame (whose checksums etherparse computed).
    Rewritten(Vec<u8>),
    /// Dropped (`TC_ACT_SHOT`) with this reason, counted once and reported in one event.
    Dropped(DropReason),
}

/// One row of a packet table: fresh maps, one frame, one expectation.
#[derive(Debug)]
pub struct Case {
    /// What the row shows.
    pub name: &'static str,
    /// Services synced before the frame is sent.
    pub services: Vec<DesiredService>,
    /// `DatapathConfig::flags`.
    pub config_flags: u32,
    /// The program the frame enters.
    pub hook: Hook,
    /// The frame.
    pub input: Vec<u8>,
    /// The expected result.
    pub expect: Expect,
}

/// Runs `case` on a freshly loaded datapath and asserts verdict, bytes, metrics and events.
pub fn check(case: &Case) {
    check_with(case, |_| {});
}

/// Like [`check`], with `prepare` run on the datapath after the services are synced and before
/// the frame is sent (for a state sync does not write, through [`Datapath::behind_sync`]).
pub fn check_with(case: &Case, prepare: impl FnOnce(&mut Datapath)) {
    let mut datapath = Datapath::load();
    datapath.set_config(DatapathConfig {
        flags: case.config_flags,
        events_per_sec: EVENTS_PER_SEC,
        ..DatapathConfig::default()
    });
    datapath.sync(&case.services);
    prepare(&mut datapath);
    let run = datapath.run(case.hook, &case.input);
    let name = case.name;
    match &case.expect {
        Expect::Unchanged => {
            assert_eq!(run.verdict, TC_ACT_UNSPEC, "{name}: verdict");
            assert_eq!(
                run.frame, case.input,
                "{name}: frame must pass byte for byte"
            );
            assert_eq!(datapath.all_drops(), vec![], "{name}: no drop counted");
        }
        Expect::Rewritten(want) => {
            assert_eq!(run.verdict, TC_ACT_UNSPEC, "{name}: verdict");
            lb_testkit::packet::read_checked(&run.frame);
            assert_eq!(run.frame, *want, "{name}: rewritten frame");
            assert_eq!(datapath.all_drops(), vec![], "{name}: no drop counted");
        }
        Expect::Dropped(reason) => {
            assert_eq!(run.verdict, TC_ACT_SHOT, "{name}: verdict");
            assert_eq!(
                datapath.all_drops(),
                vec![(*reason as u8, case.hook as u8, 1)],
                "{name}: one drop counted for {reason:?} at {}",
                case.hook.name()
            );
            let events = datapath.drain_events();
            assert_eq!(events.len(), 1, "{name}: one event");
            assert_eq!(events[0].reason, *reason as u8, "{name}: event reason");
            assert_eq!(events[0].hook, case.hook as u8, "{name}: event hook");
            assert_eq!(
                events[0].len as usize,
                case.input.len(),
                "{name}: event length"
            );
        }
    }
}

/// MAC of the node's interface in a `FibNetns`.
pub const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x04];
/// MAC of the other node (next hop to 10.244.2.0/24) in a `FibNetns`.
pub const PEER_NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x05];
/// MAC of the external client 192.168.56.10 in a `FibNetns`.
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];

/// A network namespace in which the kernel's FIB answers like a node: `lbt0`
/// (192.168.56.4/24, `NODE_MAC`), a route to the remote pod CIDR 10.244.2.0/24 via the other
/// node 192.168.56.5, and permanent neighbours for that node and the client 192.168.56.10.
/// `BPF_PROG_TEST_RUN` does its FIB lookups in the calling thread's namespace, so tests run
/// inside it ([`FibNetns::enter`]). No packet ever leaves a test run; the namespace is deleted
/// on drop.
pub struct FibNetns {
    ns: Netns,
    /// Index of `lbt0` inside the namespace.
    pub ifindex: u32,
}

impl FibNetns {
    /// Creates the namespace for test `test`; `forwarding` sets `net.ipv4.ip_forward`.
    pub fn new(test: &str, forwarding: bool) -> Self {
        let name = format!("lbt-{}-{}", &test[..test.len().min(20)], std::process::id());
        let ns = ok(Netns::create(&name), "create the FIB namespace");
        ok(
            ns.ip(&[
                "link",
                "add",
                "lbt0",
                "address",
                "02:00:00:00:00:04",
                "type",
                "veth",
                "peer",
                "name",
                "lbt1",
            ]),
            "veth lbt0",
        );
        ok(ns.ip(&["link", "set", "lbt1", "up"]), "lbt1 up");
        ok(ns.addr("lbt0", "192.168.56.4/24"), "lbt0 address");
        ok(
            ns.route(&["10.244.2.0/24", "via", "192.168.56.5", "dev", "lbt0"]),
            "route to the remote pod CIDR",
        );
        for (addr, mac) in [
            ("192.168.56.5", "02:00:00:00:00:05"),
            ("192.168.56.10", "02:00:00:00:00:10"),
        ] {
            ok(
                ns.ip(&[
                    "neigh",
                    "replace",
                    addr,
                    "lladdr",
                    mac,
                    "dev",
                    "lbt0",
                    "nud",
                    "permanent",
                ]),
                "permanent neighbour",
            );
        }
        let value = if forwarding { "1" } else { "0" };
        ok(ns.sysctl("net.ipv4.ip_forward", value), "ip_forward");
        let ifindex = ok(ns.ifindex("lbt0"), "ifindex of lbt0");
        Self { ns, ifindex }
    }

    /// Runs `f` on a thread inside the namespace and returns its result.
    pub fn enter<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        ok(self.ns.within(f), "enter the FIB namespace")
    }
}
