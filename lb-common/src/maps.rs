//! Map names, default sizes and the pin-directory version: one constant each.
//!
//! Names are at most 15 bytes (the kernel's `BPF_OBJ_NAME_LEN` less the NUL).

/// Frontends and their slots: `ServiceKey4` -> `ServiceEntry`.
pub const LB4_SERVICES: &str = "LB4_SERVICES";
/// Backends by id: `u32` -> `Backend4`.
pub const LB4_BACKENDS: &str = "LB4_BACKENDS";
/// Reverse NAT by service id: `u32` -> `RevNat4`.
pub const LB4_REVNAT: &str = "LB4_REVNAT";
/// Maglev tables, in chunks: `MaglevKey` (service id, chunk) -> `MaglevChunk`.
pub const LB4_MAGLEV: &str = "LB4_MAGLEV";
/// ClientIP session affinity: (client, service) → backend.
pub const LB4_AFFINITY: &str = "LB4_AFFINITY";
/// `loadBalancerSourceRanges` (LPM trie): `Key<SourceRangeKey4>` (service id, client prefix)
/// -> `u8` (1).
pub const LB4_SRC_RANGE: &str = "LB4_SRC_RANGE";
/// Fragmented datagrams being translated (LRU): `FragKey4` -> `FragPorts`.
pub const LB4_FRAGS: &str = "LB4_FRAGS";
/// Conntrack of TCP flows (LRU): `CtKey4` -> `CtEntry`.
pub const LB4_CT_TCP: &str = "LB4_CT_TCP";
/// Conntrack of every other protocol (UDP; LRU): `CtKey4` -> `CtEntry`. Kept apart from TCP so
/// that connectionless churn cannot evict long-lived TCP flows.
pub const LB4_CT_ANY: &str = "LB4_CT_ANY";
/// Flags of the addresses that have a frontend (agent-written): `u32` -> `FilterWord` (see
/// `lb_common::filter`).
pub const LB4_VIP_FILTER: &str = "LB4_VIP_FILTER";
/// Flags of the sources of conntrack reply entries (datapath-written): `u32` -> `FilterWord`.
pub const LB4_REPLY_SRCS: &str = "LB4_REPLY_SRCS";
/// `LB4_VIP_FILTER` for IPv6 addresses (agent-written): `u32` -> `FilterWord`.
pub const LB6_VIP_FILTER: &str = "LB6_VIP_FILTER";
/// `LB4_REPLY_SRCS` for IPv6 reply entries (datapath-written): `u32` -> `FilterWord`.
pub const LB6_REPLY_SRCS: &str = "LB6_REPLY_SRCS";
/// IPv6 frontends and their slots: `ServiceKey6` -> `ServiceEntry`. The IPv6 maps mirror the
/// IPv4 ones (Cilium's `lb6_*`); service and backend ids are one space for both families, and
/// Maglev tables of both live in `LB4_MAGLEV` (they hold only backend ids).
pub const LB6_SERVICES: &str = "LB6_SERVICES";
/// IPv6 backends by id: `u32` -> `Backend6`.
pub const LB6_BACKENDS: &str = "LB6_BACKENDS";
/// IPv6 reverse NAT by service id: `u32` -> `RevNat6`.
pub const LB6_REVNAT: &str = "LB6_REVNAT";
/// IPv6 ClientIP session affinity: `AffinityKey6` -> `AffinityValue`.
pub const LB6_AFFINITY: &str = "LB6_AFFINITY";
/// IPv6 `loadBalancerSourceRanges` (LPM trie): `Key<SourceRangeKey6>` -> `u8` (1).
pub const LB6_SRC_RANGE: &str = "LB6_SRC_RANGE";
/// IPv6 fragments being translated (LRU): `FragKey6` -> `FragPorts`.
pub const LB6_FRAGS: &str = "LB6_FRAGS";
/// Conntrack of IPv6 TCP flows (LRU): `CtKey6` -> `CtEntry6`.
pub const LB6_CT_TCP: &str = "LB6_CT_TCP";
/// Conntrack of other IPv6 flows (LRU): `CtKey6` -> `CtEntry6`.
pub const LB6_CT_ANY: &str = "LB6_CT_ANY";
/// The datapath's configuration: array of one `DatapathConfig`.
pub const LB_CONFIG: &str = "LB_CONFIG";
/// Per-CPU drop counters: `MetricKey` -> `MetricValue`.
pub const LB_METRICS: &str = "LB_METRICS";
/// Ring buffer of `DropEvent`s.
pub const LB_EVENTS: &str = "LB_EVENTS";
/// Per-CPU token bucket that rate-limits `LB_EVENTS`.
pub const LB_EVENT_LIMIT: &str = "LB_EVENT_LIMIT";
/// Socket-level load balancing: (socket cookie, backend) -> the VIP:port it stands for
/// (LRU): `SockRevKey4` -> `SockRevValue4`.
pub const LB4_REVERSE_SK: &str = "LB4_REVERSE_SK";
/// The same for sockets sent to an IPv6 backend (LRU): `SockRevKey6` -> `SockRevValue6`.
/// IPv4-mapped destinations of dual-stack sockets are IPv4 frontends: their entries are in
/// `LB4_REVERSE_SK`.
pub const LB6_REVERSE_SK: &str = "LB6_REVERSE_SK";
/// The network namespace whose sockets socket-level load balancing translates (the host's):
/// array of one `u64` netns cookie; 0 (not written) translates none.
pub const LB_HOST_NETNS: &str = "LB_HOST_NETNS";
/// The generation of the service and backend maps (both families): array of one `u32`,
/// bumped by the agent after every write that may take a flow's frontend or backend away
/// (deleted frontends and backends, rewritten backends). A conntrack service entry records the
/// generation at which its frontend and backend were last found in place
/// (`CtService::generation`); while it is current, the flow's packets skip both lookups. 0
/// (not written yet) is no generation: every packet looks both up.
pub const LB_GENERATION: &str = "LB_GENERATION";

/// Default capacity of `LB4_SERVICES` (frontends × (slots + 1), plus one wildcard entry per
/// VIP): 10k services of 5 backends take 70k entries; 100k services of 10 backends take 1.2M
/// (`--bpf-lb-map-max=1310720`).
pub const SERVICES_MAX_ENTRIES: u32 = 131_072;
/// Default capacity of `LB4_BACKENDS` (`--bpf-lb-map-max` sizes both).
pub const BACKENDS_MAX_ENTRIES: u32 = 131_072;
/// Default capacity of `LB4_REVNAT`, one entry per frontend (`--bpf-lb-map-max` sizes it too:
/// every frontend has a master entry in `LB4_SERVICES`, so the services map fills first).
/// Service ids are u32, so the number of frontends is bounded by the maps' sizes only.
pub const REVNAT_MAX_ENTRIES: u32 = 131_072;
/// Default capacity of `LB4_CT_TCP` (`bpf-ct-max-entries`). Each flow takes two entries
/// (service and reply).
pub const CT_MAX_ENTRIES: u32 = 262_144;
/// Default capacity of `LB4_SRC_RANGE` (Cilium's `lb4_source_range` default): client prefixes
/// summed over every load-balancer frontend.
pub const SOURCE_RANGE_MAX_ENTRIES: u32 = 65_536;
/// Capacity of `LB4_MAGLEV` in chunks: 16 384 frontends with the default table size (64
/// chunks each). Entries are allocated as they are written (`BPF_F_NO_PREALLOC`), so an unused
/// capacity costs nothing.
pub const MAGLEV_MAX_ENTRIES: u32 = 1 << 20;
/// Default size of `LB4_AFFINITY` (an LRU map: the least recently used client goes first).
pub const AFFINITY_MAX_ENTRIES: u32 = 65_536;
/// Capacity of `LB4_FRAGS`: datagrams whose fragments are in flight at once (Cilium's
/// default for its fragment map). An entry is needed only until the datagram's last fragment
/// has passed, a few milliseconds.
pub const FRAGS_MAX_ENTRIES: u32 = 8_192;
/// Default capacity of `LB4_CT_ANY` (`bpf-ct-global-any-max`), Cilium's default.
pub const CT_ANY_MAX_ENTRIES: u32 = 262_144;
/// Capacity of `LB4_REVERSE_SK` and `LB6_REVERSE_SK` (LRU maps: entries of closed sockets age
/// out). Cilium's default for its `lb4_reverse_sk` and `lb6_reverse_sk`.
pub const REVERSE_SK_MAX_ENTRIES: u32 = 262_144;
/// Default capacity of `LB_METRICS`.
pub const METRICS_MAX_ENTRIES: u32 = 1_024;
/// Size of `LB_EVENTS` in bytes (a power of two, a multiple of the page size).
pub const EVENTS_BYTE_SIZE: u32 = 256 * 1024;

/// Version of the map layouts, the last component of the pin directory
/// (`<bpf-root>/<PIN_VERSION>/`). Bump it whenever a key or value layout changes: reusing a
/// pinned map does not check its key or value size.
pub const PIN_VERSION: &str = "v5";
