//! A freshly loaded datapath for packet tests: the embedded object, loaded with its maps pinned
//! under a unique directory in /sys/fs/bpf (removed on drop), plus helpers that program
//! services the way the agent does, run frames through `BPF_PROG_TEST_RUN` and read back
//! metrics, events and conntrack.
//!
//! Each test loads its own `Datapath`, so every case starts from empty maps.

use std::{
    ffi::CString,
    path::PathBuf,
    sync::{
        Once,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader, TestRun as _, TestRunOptions,
    maps::{Array, HashMap, MapData, PerCpuHashMap, RingBuf},
    programs::{LinkOrder, SchedClassifier, TcAttachType, tc::TcAttachOptions},
};
use lb_common::{
    config::{DatapathConfig, EVENTS_PER_SEC},
    conntrack::{CtEntry, CtKey4},
    drop::{DropReason, Hook},
    event::DropEvent,
    maps,
    metrics::{MetricKey, MetricValue},
    proto,
    service::{
        BACKEND_F_REMOTE, BACKEND_STATE_ACTIVE, BACKEND_STATE_TERMINATING, Backend4, RevNat4,
        SERVICE_F_CLUSTER_IP, SERVICE_F_ROUTABLE, ServiceEntry, ServiceKey4,
    },
};

use crate::packet::{addr, ip_be, port_be};

/// Linux's `TC_ACT_UNSPEC`: hand the packet on.
pub const TC_ACT_UNSPEC: i32 = -1;
/// Linux's `TC_ACT_SHOT`: drop.
pub const TC_ACT_SHOT: i32 = 2;
/// Linux's `TC_ACT_REDIRECT`.
pub const TC_ACT_REDIRECT: i32 = 7;

/// A backend of a `Service` to program.
#[derive(Clone, Debug)]
pub struct BackendSpec {
    /// `"a.b.c.d:port"`.
    pub addr: String,
    /// `BACKEND_STATE_*`.
    pub state: u8,
    /// On another node (`BACKEND_F_REMOTE`).
    pub remote: bool,
}

/// A service to program: one frontend and its backends.
#[derive(Clone, Debug)]
pub struct Service {
    /// Service id (rev-NAT index).
    pub id: u16,
    /// `"a.b.c.d:port/TCP"` or `/UDP`.
    pub frontend: String,
    /// `SERVICE_F_*` flags of the master entry.
    pub flags: u8,
    /// Backends in slot order (active ones first, as the agent writes them).
    pub backends: Vec<BackendSpec>,
}

/// A ClusterIP service (not routable) with active, local backends.
pub fn service(frontend: &str, backends: &[&str]) -> Service {
    Service {
        id: 1,
        frontend: frontend.to_owned(),
        flags: SERVICE_F_CLUSTER_IP,
        backends: backends
            .iter()
            .map(|addr| BackendSpec {
                addr: (*addr).to_owned(),
                state: BACKEND_STATE_ACTIVE,
                remote: false,
            })
            .collect(),
    }
}

impl Service {
    /// The same service with another id.
    pub fn with_id(mut self, id: u16) -> Self {
        self.id = id;
        self
    }

    /// The same service, reachable from outside (`SERVICE_F_ROUTABLE`).
    pub fn routable(mut self) -> Self {
        self.flags |= SERVICE_F_ROUTABLE;
        self
    }

    /// The same service with every backend on another node.
    pub fn remote(mut self) -> Self {
        for backend in &mut self.backends {
            backend.remote = true;
        }
        self
    }

    fn key(&self, slot: u16) -> ServiceKey4 {
        let (socket, proto_name) = self.frontend.split_once('/').expect("frontend a:p/PROTO");
        let socket = addr(socket);
        let proto = match proto_name {
            "TCP" => proto::TCP,
            "UDP" => proto::UDP,
            other => panic!("unknown protocol {other}"),
        };
        ServiceKey4::new(ip_be(*socket.ip()), port_be(socket.port()), proto, slot)
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

/// A loaded datapath with its own pinned maps.
pub struct Datapath {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    next_backend_id: u32,
}

/// Options for loading.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadOptions {
    /// Overrides `LB4_CT`'s capacity.
    pub ct_max_entries: Option<u32>,
}

static INSTANCE: AtomicU32 = AtomicU32::new(0);

/// The root under which pin directories are made.
pub const BPF_ROOT: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Mounts bpffs on `BPF_ROOT` unless it already is (a fresh VM may not have it), as the agent
/// does: pinning anywhere else fails.
pub fn ensure_bpffs() {
    static MOUNT: Once = Once::new();
    MOUNT.call_once(|| {
        let root = CString::new(BPF_ROOT).expect("path");
        // SAFETY: statfs is plain old data; all zeros is a valid value.
        let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: statfs on a NUL-terminated path into a zeroed, correctly sized buffer.
        if unsafe { libc::statfs(root.as_ptr(), &mut stat) } == 0
            && stat.f_type as i64 == BPF_FS_MAGIC
        {
            return;
        }
        let fstype = CString::new("bpf").expect("fstype");
        // SAFETY: NUL-terminated strings; no data argument.
        let rc = unsafe {
            libc::mount(
                fstype.as_ptr(),
                root.as_ptr(),
                fstype.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        assert_eq!(
            rc,
            0,
            "mount bpffs on {BPF_ROOT}: {}",
            std::io::Error::last_os_error()
        );
    });
}

impl Datapath {
    /// Loads both programs with default map sizes and a config that sends events.
    pub fn load() -> Self {
        Self::load_with(LoadOptions::default())
    }

    /// Loads both programs with `options`.
    pub fn load_with(options: LoadOptions) -> Self {
        let pin_dir = PathBuf::from(format!(
            "{BPF_ROOT}/lb-test-{}-{}",
            std::process::id(),
            INSTANCE.fetch_add(1, Ordering::Relaxed)
        ));
        ensure_bpffs();
        std::fs::create_dir_all(&pin_dir).unwrap_or_else(|err| {
            panic!("create {}: {err} (is bpffs mounted?)", pin_dir.display())
        });
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(&pin_dir);
        if let Some(entries) = options.ct_max_entries {
            loader.map_max_entries(maps::LB4_CT, entries);
        }
        let mut ebpf = loader
            .load(lb_agent::datapath::loader::EBPF_OBJECT)
            .expect("load lb-ebpf");
        for name in ["from_netdev", "from_pod"] {
            let program: &mut SchedClassifier = ebpf
                .program_mut(name)
                .unwrap_or_else(|| panic!("program {name} is missing"))
                .try_into()
                .expect("a classifier");
            program
                .load()
                .unwrap_or_else(|err| panic!("verifier rejected {name}: {err:?}"));
        }
        let mut datapath = Self {
            ebpf,
            pin_dir,
            next_backend_id: 1,
        };
        datapath.set_config(DatapathConfig {
            events_per_sec: EVENTS_PER_SEC,
            ..DatapathConfig::default()
        });
        datapath
    }

    /// The directory the maps are pinned in.
    pub fn pin_dir(&self) -> &std::path::Path {
        &self.pin_dir
    }

    fn program(&self, hook: Hook) -> &SchedClassifier {
        let name = match hook {
            Hook::FromNetdev => "from_netdev",
            Hook::FromPod => "from_pod",
        };
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

    /// Writes `LB_CONFIG[0]`.
    pub fn set_config(&mut self, config: DatapathConfig) {
        let mut array: Array<&mut MapData, DatapathConfig> =
            Array::try_from(self.ebpf.map_mut(maps::LB_CONFIG).expect("LB_CONFIG"))
                .expect("LB_CONFIG type");
        array.set(0, config, 0).expect("write LB_CONFIG");
    }

    /// Programs `service` as the agent does: backends, then slots, then rev-NAT, then the
    /// master entry (the commit point), plus the wildcard entry marking its VIP. Returns the
    /// backend ids in slot order.
    pub fn add_service(&mut self, service: &Service) -> Vec<u32> {
        let mut ids = Vec::new();
        for backend in &service.backends {
            let id = self.next_backend_id;
            self.next_backend_id += 1;
            let socket = addr(&backend.addr);
            let master = service.key(0);
            self.set_backend(
                id,
                Backend4 {
                    addr: ip_be(*socket.ip()),
                    port: port_be(socket.port()),
                    proto: master.proto,
                    state: backend.state,
                    flags: if backend.remote { BACKEND_F_REMOTE } else { 0 },
                    _pad: [0; 3],
                },
            );
            ids.push(id);
        }
        let mut services: HashMap<&mut MapData, ServiceKey4, ServiceEntry> =
            HashMap::try_from(self.ebpf.map_mut(maps::LB4_SERVICES).expect("LB4_SERVICES"))
                .expect("LB4_SERVICES type");
        let count = service
            .backends
            .iter()
            .filter(|b| b.state == BACKEND_STATE_ACTIVE)
            .count();
        let qcount = service.backends.len() - count;
        for (slot, id) in (1u16..).zip(&ids) {
            let entry = ServiceEntry {
                backend_id: *id,
                ..ServiceEntry::default()
            };
            services
                .insert(service.key(slot), entry, 0)
                .expect("write slot");
        }
        let master = service.key(0);
        let mut revnat: HashMap<&mut MapData, u16, RevNat4> =
            HashMap::try_from(self.ebpf.map_mut(maps::LB4_REVNAT).expect("LB4_REVNAT"))
                .expect("LB4_REVNAT type");
        revnat
            .insert(
                service.id,
                RevNat4 {
                    vip: master.vip,
                    port: master.port,
                    _pad: 0,
                },
                0,
            )
            .expect("write rev-NAT");
        let mut services: HashMap<&mut MapData, ServiceKey4, ServiceEntry> =
            HashMap::try_from(self.ebpf.map_mut(maps::LB4_SERVICES).expect("LB4_SERVICES"))
                .expect("LB4_SERVICES type");
        let entry = ServiceEntry {
            backend_id: 0,
            count: count as u16,
            qcount: qcount as u16,
            rev_nat: service.id,
            flags: service.flags,
            _pad: 0,
        };
        services
            .insert(master, entry, 0)
            .expect("write master entry");
        services
            .insert(
                ServiceKey4::new(master.vip, 0, 0, 0),
                ServiceEntry::default(),
                0,
            )
            .expect("write wildcard entry");
        ids
    }

    /// Writes backend `id`.
    pub fn set_backend(&mut self, id: u32, backend: Backend4) {
        let mut backends: HashMap<&mut MapData, u32, Backend4> =
            HashMap::try_from(self.ebpf.map_mut(maps::LB4_BACKENDS).expect("LB4_BACKENDS"))
                .expect("LB4_BACKENDS type");
        backends.insert(id, backend, 0).expect("write backend");
    }

    /// Backend `id`, if present.
    pub fn backend(&self, id: u32) -> Option<Backend4> {
        let backends: HashMap<&MapData, u32, Backend4> =
            HashMap::try_from(self.ebpf.map(maps::LB4_BACKENDS).expect("LB4_BACKENDS"))
                .expect("LB4_BACKENDS type");
        backends.get(&id, 0).ok()
    }

    /// Marks backend `id` terminating (it keeps its slot, as a flow-draining backend does
    /// between the agent's writes).
    pub fn set_terminating(&mut self, id: u32) {
        let mut backend = self.backend(id).expect("backend exists");
        backend.state = BACKEND_STATE_TERMINATING;
        self.set_backend(id, backend);
    }

    /// Deletes backend `id` from `LB4_BACKENDS` (its slot stays).
    pub fn remove_backend(&mut self, id: u32) {
        let mut backends: HashMap<&mut MapData, u32, Backend4> =
            HashMap::try_from(self.ebpf.map_mut(maps::LB4_BACKENDS).expect("LB4_BACKENDS"))
                .expect("LB4_BACKENDS type");
        backends.remove(&id).expect("remove backend");
    }

    /// Rewrites the master entry of `service` to have `count` active slots.
    pub fn set_count(&mut self, service: &Service, count: u16) {
        let mut services: HashMap<&mut MapData, ServiceKey4, ServiceEntry> =
            HashMap::try_from(self.ebpf.map_mut(maps::LB4_SERVICES).expect("LB4_SERVICES"))
                .expect("LB4_SERVICES type");
        let key = service.key(0);
        let mut entry = services.get(&key, 0).expect("master entry");
        entry.count = count;
        services.insert(key, entry, 0).expect("write master entry");
    }

    /// Points `slot` (1..) of `service` at backend `id`.
    pub fn set_slot(&mut self, service: &Service, slot: u16, id: u32) {
        let mut services: HashMap<&mut MapData, ServiceKey4, ServiceEntry> =
            HashMap::try_from(self.ebpf.map_mut(maps::LB4_SERVICES).expect("LB4_SERVICES"))
                .expect("LB4_SERVICES type");
        let entry = ServiceEntry {
            backend_id: id,
            ..ServiceEntry::default()
        };
        services
            .insert(service.key(slot), entry, 0)
            .expect("write slot");
    }

    /// Deletes `slot` of `service`.
    pub fn remove_slot(&mut self, service: &Service, slot: u16) {
        let mut services: HashMap<&mut MapData, ServiceKey4, ServiceEntry> =
            HashMap::try_from(self.ebpf.map_mut(maps::LB4_SERVICES).expect("LB4_SERVICES"))
                .expect("LB4_SERVICES type");
        services.remove(&service.key(slot)).expect("remove slot");
    }

    /// Attaches `hook`'s program to the ingress of `iface` with TCX, as the agent does. The
    /// interface is looked up in the calling thread's network namespace (run it inside
    /// `lb_lab::Netns::within`); the link lasts as long as this datapath or the interface.
    pub fn attach(&mut self, hook: Hook, iface: &str) {
        let name = match hook {
            Hook::FromNetdev => "from_netdev",
            Hook::FromPod => "from_pod",
        };
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

    /// Drops counted for `reason` at `hook`, summed over CPUs.
    pub fn drop_count(&self, reason: DropReason, hook: Hook) -> u64 {
        let metrics: PerCpuHashMap<&MapData, MetricKey, MetricValue> =
            PerCpuHashMap::try_from(self.ebpf.map(maps::LB_METRICS).expect("LB_METRICS"))
                .expect("LB_METRICS type");
        let key = MetricKey {
            reason: reason as u8,
            hook: hook as u8,
            _pad: [0; 2],
        };
        metrics
            .get(&key, 0)
            .map(|values| values.iter().map(|v| v.packets).sum())
            .unwrap_or(0)
    }

    /// Every (reason, hook, packets) counted, summed over CPUs.
    pub fn all_drops(&self) -> Vec<(u8, u8, u64)> {
        let metrics: PerCpuHashMap<&MapData, MetricKey, MetricValue> =
            PerCpuHashMap::try_from(self.ebpf.map(maps::LB_METRICS).expect("LB_METRICS"))
                .expect("LB_METRICS type");
        let mut all: Vec<_> = metrics
            .iter()
            .map(|item| {
                let (key, values) = item.expect("read LB_METRICS");
                (key.reason, key.hook, values.iter().map(|v| v.packets).sum())
            })
            .collect();
        all.sort_unstable();
        all
    }

    /// Takes every event currently in `LB_EVENTS`.
    pub fn drain_events(&mut self) -> Vec<DropEvent> {
        let mut ring = RingBuf::try_from(self.ebpf.map_mut(maps::LB_EVENTS).expect("LB_EVENTS"))
            .expect("LB_EVENTS type");
        let mut events = Vec::new();
        while let Some(item) = ring.next() {
            assert_eq!(item.len(), size_of::<DropEvent>(), "event size");
            // SAFETY: DropEvent is plain old data of exactly this size; read_unaligned copes
            // with the ring buffer's 8-byte alignment.
            events.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<DropEvent>()) });
        }
        events
    }

    /// Every conntrack entry.
    pub fn conntrack(&self) -> Vec<(CtKey4, CtEntry)> {
        let ct: HashMap<&MapData, CtKey4, CtEntry> =
            HashMap::try_from(self.ebpf.map(maps::LB4_CT).expect("LB4_CT")).expect("LB4_CT type");
        ct.iter().map(|item| item.expect("read LB4_CT")).collect()
    }
}

impl Drop for Datapath {
    fn drop(&mut self) {
        // Pins outlive the maps' file descriptors: remove them, or they leak in bpffs.
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
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
    /// Services programmed before the frame is sent.
    pub services: Vec<Service>,
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
    let mut datapath = Datapath::load();
    datapath.set_config(DatapathConfig {
        flags: case.config_flags,
        events_per_sec: EVENTS_PER_SEC,
        ..DatapathConfig::default()
    });
    for (id, service) in (1u16..).zip(&case.services) {
        datapath.add_service(&service.clone().with_id(id));
    }
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
            crate::packet::read_checked(&run.frame);
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

/// A network namespace in which the kernel's FIB answers like a node's: `lbt0`
/// (192.168.56.4/24, `NODE_MAC`), a route to the remote pod CIDR 10.244.2.0/24 via the other
/// node 192.168.56.5, and permanent neighbours for that node and the client 192.168.56.10.
/// `BPF_PROG_TEST_RUN` does its FIB lookups in the calling thread's namespace, so tests
/// `enter` it around their runs. No packet ever leaves a test run; the namespace is deleted on
/// drop.
pub struct FibNetns {
    name: String,
    /// Index of `lbt0` inside the namespace.
    pub ifindex: u32,
}

impl FibNetns {
    /// Creates the namespace for test `test`; `forwarding` sets `net.ipv4.ip_forward`.
    pub fn new(test: &str, forwarding: bool) -> Self {
        let name = format!("lbt-{}-{}", &test[..test.len().min(20)], std::process::id());
        ip(&["netns", "add", &name]);
        let mut guard = Self { name, ifindex: 0 };
        let n = guard.name.as_str();
        ip(&[
            "-n",
            n,
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
        ]);
        ip(&["-n", n, "link", "set", "lbt0", "up"]);
        ip(&["-n", n, "link", "set", "lbt1", "up"]);
        ip(&["-n", n, "addr", "add", "192.168.56.4/24", "dev", "lbt0"]);
        ip(&[
            "-n",
            n,
            "route",
            "add",
            "10.244.2.0/24",
            "via",
            "192.168.56.5",
            "dev",
            "lbt0",
        ]);
        for (addr, mac) in [
            ("192.168.56.5", "02:00:00:00:00:05"),
            ("192.168.56.10", "02:00:00:00:00:10"),
        ] {
            ip(&[
                "-n",
                n,
                "neigh",
                "replace",
                addr,
                "lladdr",
                mac,
                "dev",
                "lbt0",
                "nud",
                "permanent",
            ]);
        }
        let value = if forwarding { "1" } else { "0" };
        ip(&[
            "netns",
            "exec",
            n,
            "sysctl",
            "-qw",
            &format!("net.ipv4.ip_forward={value}"),
        ]);
        let index = std::process::Command::new("ip")
            .args(["-n", n, "-o", "link", "show", "lbt0"])
            .output()
            .expect("run ip link show");
        let text = String::from_utf8_lossy(&index.stdout);
        let ifindex = text
            .split(':')
            .next()
            .and_then(|i| i.trim().parse().ok())
            .unwrap_or_else(|| panic!("ifindex of lbt0 in {text:?}"));
        guard.ifindex = ifindex;
        guard
    }

    /// Runs `f` with the calling thread inside the namespace, then moves it back.
    pub fn enter<R>(&self, f: impl FnOnce() -> R) -> R {
        let own = std::fs::File::open("/proc/thread-self/ns/net").expect("open own netns");
        let target = std::fs::File::open(format!("/run/netns/{}", self.name)).expect("open netns");
        setns(&target);
        let result = f();
        setns(&own);
        result
    }
}

fn setns(file: &std::fs::File) {
    use std::os::fd::AsRawFd as _;
    // SAFETY: a valid namespace fd; only this thread's network namespace changes.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

fn ip(args: &[&str]) {
    let status = std::process::Command::new("ip")
        .args(args)
        .status()
        .expect("run ip");
    assert!(status.success(), "ip {}: {status}", args.join(" "));
}

impl Drop for FibNetns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
