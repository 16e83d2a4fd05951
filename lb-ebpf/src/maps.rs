//! Every map of the datapath, in one place. Each map is owned by one module, which is the only
//! one that reads or writes it:
//!
//! | map | owner |
//! |---|---|
//! | `LB4_SERVICES`, `LB4_BACKENDS`, `LB_GENERATION` | `lb.rs` |
//! | `LB4_AFFINITY` | `affinity.rs` |
//! | `LB4_SRC_RANGE` | `policy.rs` |
//! | `LB4_MAGLEV` | `maglev.rs` |
//! | `LB4_FRAGS` | `frag.rs` |
//! | `LB4_REVNAT` | none: written by the agent, not read on the packet path (reply entries carry VIP:port) |
//! | `LB4_CT_TCP`, `LB4_CT_ANY` | `conntrack.rs` |
//! | `LB4_VIP_FILTER`, `LB4_REPLY_SRCS`, `LB6_VIP_FILTER`, `LB6_REPLY_SRCS` | `filter.rs` |
//! | `LB_CONFIG` | `config()` below (read-only, by everyone) |
//! | `LB_METRICS` | `metrics.rs` |
//! | `LB_EVENTS`, `LB_EVENT_LIMIT` | `events.rs` |
//! | `LB_SCRATCH` | `icmp.rs` (unpinned scratch space) |
//! | `LB6_SCRATCH` | `conntrack6.rs`, `nat6.rs` and `icmp6.rs` (unpinned scratch space) |
//! | `LB4_REVERSE_SK`, `LB6_REVERSE_SK`, `LB_HOST_NETNS` | `sock.rs` |
//! | `LB6_*` | the IPv6 counterparts of the `LB4_*` maps' owners (`lb6.rs`, `policy6.rs`, `conntrack6.rs`, `frag6.rs`) |
//!
//! All maps are pinned by name (`PinningType::ByName`): the agent loads the object with
//! `EbpfLoader::map_pin_path(<bpf-root>/<PIN_VERSION>)`, so a restarted agent (and the CLI) find
//! the same maps. Sizes are the `lb_common::maps` defaults; the agent overrides them with
//! `EbpfLoader::map_max_entries`. The statics are named exactly like the `lb_common::maps`
//! constants (a map's name is its symbol), which the assertions below keep true.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use lb_common::{
    config::DatapathConfig,
    conntrack::{CtEntry, CtEntry6, CtKey4, CtKey6},
    filter::{FILTER_WORDS, FilterWord},
    frag::{FragKey4, FragKey6, FragPorts},
    maps,
    metrics::{MetricKey, MetricValue},
    service::{
        AffinityKey4, AffinityKey6, AffinityValue, Backend4, Backend6, MaglevChunk, MaglevKey,
        RevNat4, RevNat6, ServiceEntry, ServiceKey4, ServiceKey6, SourceRangeKey4, SourceRangeKey6,
    },
    sock::{SockRevKey4, SockRevKey6, SockRevValue4, SockRevValue6},
};

/// The token bucket of `LB_EVENT_LIMIT`, private to the datapath (the agent never reads it).
/// Defined here, beside its map, so that this module imports nothing from the others.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EventLimit {
    /// Events that may still be sent.
    pub tokens: u64,
    /// When the bucket was last refilled.
    pub last_ns: u64,
}

/// An ICMP answer being built (`icmp.rs`): Ethernet, IP and ICMP headers and the quote, in
/// 16-bit words, 8-aligned so that it is zeroed a word at a time. Private to the datapath.
#[repr(C, align(8))]
pub struct IcmpAnswer(pub [u16; 56]);

/// Per-CPU scratch space for what does not fit on the 512-byte stack beside the packet path:
/// the ICMP answer. Not pinned: it holds nothing between packets.
#[map]
pub static LB_SCRATCH: PerCpuArray<IcmpAnswer> = PerCpuArray::with_max_entries(1, 0);

/// What `conntrack6.rs` builds for a new IPv6 flow: its two keys and entries (192 bytes,
/// more than the stack has left beside the IPv4 path's frame, which the IPv6 path shares).
/// Private to the datapath.
#[repr(C)]
pub struct Ct6Scratch {
    /// The service entry's key (the client's tuple).
    pub key: CtKey6,
    /// The reply entry's key.
    pub reply_key: CtKey6,
    /// The service entry.
    pub service: CtEntry6,
    /// The reply entry.
    pub reply: CtEntry6,
    /// An ICMPv6 answer being built (`icmp6.rs`), instead of the entries.
    pub answer: Icmp6Answer,
    /// A piece of the packet a "packet too big" answer quotes, loaded to be summed
    /// (`icmp6.rs`).
    pub chunk: QuoteChunk,
}

/// Room for one piece of a quote being summed: 256 bytes, whole 32-bit words (what
/// `bpf_csum_diff` takes).
#[repr(C, align(8))]
pub struct QuoteChunk(pub [u32; 64]);

/// An ICMPv6 answer being built: Ethernet, IPv6 and ICMPv6 headers and the quote (at most 112
/// bytes), in 16-bit words, 8-aligned so that it is zeroed a word at a time.
#[repr(C, align(8))]
pub struct Icmp6Answer(pub [u16; 88]);

/// Per-CPU scratch space for `Ct6Scratch`. Not pinned: it holds nothing between packets.
#[map]
pub static LB6_SCRATCH: PerCpuArray<Ct6Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Frontends (slot 0) and their backend slots.
#[map]
pub static LB4_SERVICES: HashMap<ServiceKey4, ServiceEntry> =
    HashMap::pinned(maps::SERVICES_MAX_ENTRIES, 0);

/// Backends by id.
#[map]
pub static LB4_BACKENDS: HashMap<u32, Backend4> = HashMap::pinned(maps::BACKENDS_MAX_ENTRIES, 0);

/// The frontend (VIP:port) of each service id. The agent still writes it; the datapath no
/// longer reads it (a reply entry records its VIP:port), but it stays in the object, pinned,
/// so that the agent's maps and tools find it. Sized by `bpf-lb-map-max` like the services
/// map; `BPF_F_NO_PREALLOC`, as no packet writes it: memory only for the ids in use.
#[map]
pub static LB4_REVNAT: HashMap<u32, RevNat4> =
    HashMap::pinned(maps::REVNAT_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// Conntrack of TCP flows: service and reply entries (see `lb_common::conntrack`).
#[map]
pub static LB4_CT_TCP: LruHashMap<CtKey4, CtEntry> = LruHashMap::pinned(maps::CT_MAX_ENTRIES, 0);

/// Conntrack of every other protocol (UDP), apart so that its churn cannot evict TCP flows.
#[map]
pub static LB4_CT_ANY: LruHashMap<CtKey4, CtEntry> =
    LruHashMap::pinned(maps::CT_ANY_MAX_ENTRIES, 0);

/// Maglev tables in chunks, by (service id, chunk). `BPF_F_NO_PREALLOC`: memory only for the
/// tables written, and an update swaps in a whole new value, so a reader sees the old chunk or
/// the new one, never a mix.
#[map]
pub static LB4_MAGLEV: HashMap<MaglevKey, MaglevChunk> =
    HashMap::pinned(maps::MAGLEV_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// ClientIP session affinity: the backend of each client's last new connection per service.
#[map]
pub static LB4_AFFINITY: LruHashMap<AffinityKey4, AffinityValue> =
    LruHashMap::pinned(maps::AFFINITY_MAX_ENTRIES, 0);
/// `loadBalancerSourceRanges`: the client prefixes each service id admits (value 1). An LPM
/// trie, so one lookup of (service id, client address) finds the longest range containing it.
#[map]
pub static LB4_SRC_RANGE: LpmTrie<SourceRangeKey4, u8> =
    LpmTrie::pinned(maps::SOURCE_RANGE_MAX_ENTRIES, 0);

/// The ports of fragmented datagrams, from their first fragment (see `lb_common::frag`).
#[map]
pub static LB4_FRAGS: LruHashMap<FragKey4, FragPorts> =
    LruHashMap::pinned(maps::FRAGS_MAX_ENTRIES, 0);

/// IPv6 frontends (slot 0) and their backend slots.
#[map]
pub static LB6_SERVICES: HashMap<ServiceKey6, ServiceEntry> =
    HashMap::pinned(maps::SERVICES_MAX_ENTRIES, 0);

/// IPv6 backends by id (ids are one space with `LB4_BACKENDS`).
#[map]
pub static LB6_BACKENDS: HashMap<u32, Backend6> = HashMap::pinned(maps::BACKENDS_MAX_ENTRIES, 0);

/// The IPv6 frontend of each service id (written by the agent, like `LB4_REVNAT`).
#[map]
pub static LB6_REVNAT: HashMap<u32, RevNat6> =
    HashMap::pinned(maps::REVNAT_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// Conntrack of IPv6 TCP flows.
#[map]
pub static LB6_CT_TCP: LruHashMap<CtKey6, CtEntry6> = LruHashMap::pinned(maps::CT_MAX_ENTRIES, 0);

/// Conntrack of other IPv6 flows.
#[map]
pub static LB6_CT_ANY: LruHashMap<CtKey6, CtEntry6> =
    LruHashMap::pinned(maps::CT_ANY_MAX_ENTRIES, 0);

/// IPv6 ClientIP session affinity.
#[map]
pub static LB6_AFFINITY: LruHashMap<AffinityKey6, AffinityValue> =
    LruHashMap::pinned(maps::AFFINITY_MAX_ENTRIES, 0);

/// IPv6 `loadBalancerSourceRanges`.
#[map]
pub static LB6_SRC_RANGE: LpmTrie<SourceRangeKey6, u8> =
    LpmTrie::pinned(maps::SOURCE_RANGE_MAX_ENTRIES, 0);

/// The ports of fragmented IPv6 datagrams, from their first fragment.
#[map]
pub static LB6_FRAGS: LruHashMap<FragKey6, FragPorts> =
    LruHashMap::pinned(maps::FRAGS_MAX_ENTRIES, 0);

/// Flags of the addresses that have a frontend, written by the agent (see
/// `lb_common::filter`).
#[map]
pub static LB4_VIP_FILTER: Array<FilterWord> = Array::pinned(FILTER_WORDS, 0);

/// Flags of the sources of conntrack reply entries, written by the datapath (`filter.rs`).
#[map]
pub static LB4_REPLY_SRCS: Array<FilterWord> = Array::pinned(FILTER_WORDS, 0);

/// `LB4_VIP_FILTER` for IPv6 addresses.
#[map]
pub static LB6_VIP_FILTER: Array<FilterWord> = Array::pinned(FILTER_WORDS, 0);

/// `LB4_REPLY_SRCS` for IPv6 reply entries.
#[map]
pub static LB6_REPLY_SRCS: Array<FilterWord> = Array::pinned(FILTER_WORDS, 0);

/// The live configuration, written by the agent.
#[map]
pub static LB_CONFIG: Array<DatapathConfig> = Array::pinned(1, 0);

/// Drop counters by reason and hook.
#[map]
pub static LB_METRICS: PerCpuHashMap<MetricKey, MetricValue> =
    PerCpuHashMap::pinned(maps::METRICS_MAX_ENTRIES, 0);

/// Drop events for `lbctl monitor`.
#[map]
pub static LB_EVENTS: RingBuf = RingBuf::pinned(maps::EVENTS_BYTE_SIZE, 0);

/// Per-CPU token bucket limiting `LB_EVENTS`.
#[map]
pub static LB_EVENT_LIMIT: PerCpuArray<EventLimit> = PerCpuArray::pinned(1, 0);

/// Socket-level load balancing: the VIP:port each translated socket asked for, by socket
/// cookie and backend, so that its peer reads as the VIP (`sock.rs`).
#[map]
pub static LB4_REVERSE_SK: LruHashMap<SockRevKey4, SockRevValue4> =
    LruHashMap::pinned(maps::REVERSE_SK_MAX_ENTRIES, 0);

/// `LB4_REVERSE_SK` for sockets sent to IPv6 backends.
#[map]
pub static LB6_REVERSE_SK: LruHashMap<SockRevKey6, SockRevValue6> =
    LruHashMap::pinned(maps::REVERSE_SK_MAX_ENTRIES, 0);

/// The netns cookie of the host's network namespace, written by the agent: the only
/// namespace whose sockets `sock.rs` translates (0: none).
#[map]
pub static LB_HOST_NETNS: Array<u64> = Array::pinned(1, 0);

/// The generation of the service and backend maps, written by the agent (see
/// `lb_common::maps::LB_GENERATION`); read by `lb.rs`.
#[map]
pub static LB_GENERATION: Array<u32> = Array::pinned(1, 0);

/// Read when `LB_CONFIG` has no element 0, which an array map of one element always has.
static DEFAULT_CONFIG: DatapathConfig = DatapathConfig::DEFAULT;

/// The configuration, in place in the map (not copied: 56 bytes of stack on every path that
/// reads it); `DatapathConfig::DEFAULT` (no SNAT, no events, ClusterIPs internal, the conntrack
/// clock stopped) until the agent writes it.
#[inline(always)]
pub fn config() -> &'static DatapathConfig {
    LB_CONFIG.get(0).unwrap_or(&DEFAULT_CONFIG)
}

const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

// A map's name is its static's symbol: keep the symbols equal to the names the agent uses.
const _: () = assert!(same(maps::LB4_SERVICES, "LB4_SERVICES"));
const _: () = assert!(same(maps::LB4_BACKENDS, "LB4_BACKENDS"));
const _: () = assert!(same(maps::LB4_REVNAT, "LB4_REVNAT"));
const _: () = assert!(same(maps::LB4_AFFINITY, "LB4_AFFINITY"));
const _: () = assert!(same(maps::LB4_SRC_RANGE, "LB4_SRC_RANGE"));
const _: () = assert!(same(maps::LB4_MAGLEV, "LB4_MAGLEV"));
const _: () = assert!(same(maps::LB4_FRAGS, "LB4_FRAGS"));
const _: () = assert!(same(maps::LB4_CT_TCP, "LB4_CT_TCP"));
const _: () = assert!(same(maps::LB4_CT_ANY, "LB4_CT_ANY"));
const _: () = assert!(same(maps::LB4_VIP_FILTER, "LB4_VIP_FILTER"));
const _: () = assert!(same(maps::LB4_REPLY_SRCS, "LB4_REPLY_SRCS"));
const _: () = assert!(same(maps::LB6_SERVICES, "LB6_SERVICES"));
const _: () = assert!(same(maps::LB6_BACKENDS, "LB6_BACKENDS"));
const _: () = assert!(same(maps::LB6_REVNAT, "LB6_REVNAT"));
const _: () = assert!(same(maps::LB6_CT_TCP, "LB6_CT_TCP"));
const _: () = assert!(same(maps::LB6_CT_ANY, "LB6_CT_ANY"));
const _: () = assert!(same(maps::LB6_AFFINITY, "LB6_AFFINITY"));
const _: () = assert!(same(maps::LB6_SRC_RANGE, "LB6_SRC_RANGE"));
const _: () = assert!(same(maps::LB6_FRAGS, "LB6_FRAGS"));
const _: () = assert!(same(maps::LB6_VIP_FILTER, "LB6_VIP_FILTER"));
const _: () = assert!(same(maps::LB6_REPLY_SRCS, "LB6_REPLY_SRCS"));
const _: () = assert!(same(maps::LB_CONFIG, "LB_CONFIG"));
const _: () = assert!(same(maps::LB_METRICS, "LB_METRICS"));
const _: () = assert!(same(maps::LB_EVENTS, "LB_EVENTS"));
const _: () = assert!(same(maps::LB_EVENT_LIMIT, "LB_EVENT_LIMIT"));
const _: () = assert!(same(maps::LB4_REVERSE_SK, "LB4_REVERSE_SK"));
const _: () = assert!(same(maps::LB6_REVERSE_SK, "LB6_REVERSE_SK"));
const _: () = assert!(same(maps::LB_HOST_NETNS, "LB_HOST_NETNS"));
const _: () = assert!(same(maps::LB_GENERATION, "LB_GENERATION"));
