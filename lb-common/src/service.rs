//! Frontends, backends and reverse NAT: the load balancer's maps, modelled on Cilium's
//! `lb4_key` / `lb4_service` / `lb4_backend` / `lb4_reverse_nat`.
//!
//! A frontend with n backends occupies slots 0..=n+q of `LB4_SERVICES`: slot 0 is the master
//! entry (counts, service id, flags), slots `1..=count` name the backends that can be selected,
//! slots `count+1..=count+qcount` the terminating ones that only existing flows may still use.

/// Key of `LB4_SERVICES`; `vip` and `port` in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey4 {
    /// The frontend address (network byte order).
    pub vip: u32,
    /// The frontend port (network byte order).
    pub port: u16,
    /// 0 for the master entry, 1.. for the backend slots.
    pub slot: u16,
    /// IP protocol (`proto::TCP`, `proto::UDP`).
    pub proto: u8,
    /// Zero. Padding as a byte and a word rather than `[u8; 3]`, which the datapath would
    /// zero with a `memset` call each time it builds a key.
    pub _pad: u8,
    /// Zero.
    pub _pad2: u16,
}
const _: () = assert!(core::mem::size_of::<ServiceKey4>() == 12);

impl ServiceKey4 {
    /// The key of `slot` for a frontend; `vip` and `port` in network byte order.
    pub const fn new(vip: u32, port: u16, proto: u8, slot: u16) -> Self {
        Self {
            vip,
            port,
            slot,
            proto,
            _pad: 0,
            _pad2: 0,
        }
    }
}

/// Value of `LB4_SERVICES`. In the master entry (slot 0) `backend_id` holds the ClientIP
/// affinity timeout (with `SERVICE_F_AFFINITY`; 0 otherwise) and the other fields describe the
/// frontend; in a backend slot only `backend_id` is meaningful.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceEntry {
    /// The backend this slot names (slots ≥ 1). In the master entry: the ClientIP affinity
    /// timeout in seconds when `SERVICE_F_AFFINITY` is set, else 0.
    pub backend_id: u32,
    /// Master: number of selectable (active) backends, in slots `1..=count`.
    pub count: u16,
    /// Master: number of terminating backends, in slots `count+1..=count+qcount`.
    pub qcount: u16,
    /// Master: the service id, also the key of `LB4_REVNAT`.
    pub rev_nat: u32,
    /// Master: `SERVICE_F_*` bits.
    pub flags: u8,
    /// Master: `SERVICE_F2_*` bits.
    pub flags2: u8,
    /// Zero.
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<ServiceEntry>() == 16);

/// Second service flag byte: new flows pick their backend from the frontend's Maglev table in
/// `LB4_MAGLEV` (keyed by its service id) instead of at random. ClientIP affinity, when on,
/// still comes first.
pub const SERVICE_F2_MAGLEV: u8 = 1 << 1;

/// Backend ids per `LB4_MAGLEV` value: a frontend's table of M entries is stored as
/// `ceil(M / MAGLEV_CHUNK)` values, entry `i` in value `i / MAGLEV_CHUNK` at `i % MAGLEV_CHUNK`.
/// A power of two, so that the datapath splits an index with a shift and a mask.
pub const MAGLEV_CHUNK: usize = 256;

/// The 5-tuple hash that indexes a Maglev table (index = hash % M): Linux's `jhash_3words` of
/// the source address, the destination address and both ports, all as the packet carries them
/// (network byte order), with `seed` as its initial value. A pure function of the tuple and
/// the seed, so every node with the same seed sends a flow to the same entry. With ClientIP
/// affinity the datapath passes source port 0, so that a client's connections share an entry.
#[inline(always)]
pub const fn maglev_hash(saddr: u32, daddr: u32, sport: u16, dport: u16, seed: u32) -> u32 {
    const JHASH_INITVAL: u32 = 0xdead_beef;
    let init = seed.wrapping_add(JHASH_INITVAL).wrapping_add(3 << 2);
    let mut a = saddr.wrapping_add(init);
    let mut b = daddr.wrapping_add(init);
    let mut c = (((dport as u32) << 16) | sport as u32).wrapping_add(init);
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(14));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(11));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(25));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(16));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(4));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(14));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(24));
    c
}

/// Key of `LB4_MAGLEV`: one chunk of a frontend's Maglev table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MaglevKey {
    /// The frontend's service id.
    pub rev_nat: u32,
    /// Which chunk: entries `chunk * MAGLEV_CHUNK ..`.
    pub chunk: u32,
}
const _: () = assert!(core::mem::size_of::<MaglevKey>() == 8);

/// Value of `LB4_MAGLEV`: `MAGLEV_CHUNK` consecutive entries of a Maglev table, each a backend
/// id (a key of `LB4_BACKENDS`); entries past the table's end are 0 (no backend).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaglevChunk {
    /// Backend ids.
    pub backend_ids: [u32; MAGLEV_CHUNK],
}
const _: () = assert!(core::mem::size_of::<MaglevChunk>() == 4 * MAGLEV_CHUNK);

impl Default for MaglevChunk {
    fn default() -> Self {
        Self {
            backend_ids: [0; MAGLEV_CHUNK],
        }
    }
}

/// Service flag: the frontend is reachable from outside the cluster (set for every type but
/// ClusterIP, whose frontends become reachable through `CONFIG_F_EXTERNAL_CLUSTER_IP`).
pub const SERVICE_F_ROUTABLE: u8 = 1 << 6;
/// Service flag: the frontend is a ClusterIP.
pub const SERVICE_F_CLUSTER_IP: u8 = 1 << 0;
/// Service flag: the frontend is a node port on one of this node's addresses.
pub const SERVICE_F_NODE_PORT: u8 = 1 << 1;
/// Service flag: the frontend is one of the Service's `externalIPs`.
pub const SERVICE_F_EXTERNAL_IP: u8 = 1 << 2;
/// Service flag: the frontend is a load-balancer ingress IP.
pub const SERVICE_F_LOAD_BALANCER: u8 = 1 << 3;
/// Service flag: only this node's endpoints serve the frontend (a traffic policy `Local`), so
/// none of its backends is remote and the client's address is kept.
pub const SERVICE_F_LOCAL: u8 = 1 << 4;
/// Service flag: sessionAffinity ClientIP; the master entry's `backend_id` is the timeout in
/// seconds.
pub const SERVICE_F_AFFINITY: u8 = 1 << 5;
/// Service flag: the Service has no endpoints at all (neither ready nor serving), so a new flow
/// is refused (ICMP port unreachable) unless the configuration says drop. A frontend whose
/// traffic policy leaves it without backends while endpoints exist elsewhere is dropped.
pub const SERVICE_F_NO_ENDPOINTS: u8 = 1 << 7;
/// Second service flag (`flags2`): the frontend admits new flows from outside the cluster only
/// from the client prefixes `LB4_SRC_RANGE` lists under its service id
/// (`loadBalancerSourceRanges`); any other client is dropped with 177. Set on load-balancer
/// frontends of Services with source ranges, even when none of them is IPv4 (then no outside
/// client is admitted).
pub const SERVICE_F2_SOURCE_RANGE: u8 = 1 << 0;
/// The flags that name a frontend's kind; exactly one is set in a master entry.
pub const SERVICE_F_KIND_MASK: u8 =
    SERVICE_F_CLUSTER_IP | SERVICE_F_NODE_PORT | SERVICE_F_EXTERNAL_IP | SERVICE_F_LOAD_BALANCER;

/// Value of `LB4_BACKENDS`; `addr` and `port` in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Backend4 {
    /// The backend address (network byte order).
    pub addr: u32,
    /// The backend port (network byte order).
    pub port: u16,
    /// IP protocol.
    pub proto: u8,
    /// `BACKEND_STATE_*`.
    pub state: u8,
    /// `BACKEND_F_*` bits.
    pub flags: u8,
    /// Zero.
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<Backend4>() == 12);

/// Backend state: may be selected for new flows.
pub const BACKEND_STATE_ACTIVE: u8 = 0;
/// Backend state: serves existing flows only (draining).
pub const BACKEND_STATE_TERMINATING: u8 = 1;

/// Backend flag: the backend lives on another node, so traffic that arrived from outside the
/// cluster is SNATed to this node before it is forwarded (replies must come back through us).
pub const BACKEND_F_REMOTE: u8 = 1 << 0;

/// Value of `LB4_REVNAT`, keyed by service id: the frontend to restore as the source of
/// replies; both fields in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RevNat4 {
    /// The frontend address (network byte order).
    pub vip: u32,
    /// The frontend port (network byte order).
    pub port: u16,
    /// Zero.
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<RevNat4>() == 8);

/// Key of `LB4_AFFINITY`: a client of a service (ClientIP session affinity is per service
/// port, and a service id names one).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityKey4 {
    /// The client's address (network byte order).
    pub client: u32,
    /// The service id.
    pub rev_nat: u32,
}
const _: () = assert!(core::mem::size_of::<AffinityKey4>() == 8);

/// Value of `LB4_AFFINITY`: the backend the client's last new connection went to, and when.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AffinityValue {
    /// `bpf_ktime_get_ns()` of the client's last new connection to the service.
    pub last_used_ns: u64,
    /// The backend chosen then.
    pub backend_id: u32,
    /// Zero.
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<AffinityValue>() == 16);

/// The data of an `LB4_SRC_RANGE` key (the LPM trie's key is this after a `u32` prefix
/// length): a service id and a client address. The prefix length counts from `rev_nat`, so a
/// range `a.b.c.d/n` of service `id` is `SOURCE_RANGE_PREFIX_BITS + n` bits of
/// `{id, a.b.c.d}`, and a lookup uses the full 64 bits. Cilium's `lb4_src_range_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceRangeKey4 {
    /// The service id (master entry's `rev_nat`).
    pub rev_nat: u32,
    /// The client address or range start (network byte order).
    pub addr: u32,
}
const _: () = assert!(core::mem::size_of::<SourceRangeKey4>() == 8);

/// Bits of a `SourceRangeKey4` before its address: every entry matches them in full.
pub const SOURCE_RANGE_PREFIX_BITS: u32 = 32;

/// Key of `LB6_SERVICES`: [`ServiceKey4`] for an IPv6 frontend (Cilium's `lb6_key`); the
/// value is the same [`ServiceEntry`], the slots work the same way.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey6 {
    /// The frontend address.
    pub vip: crate::Addr6,
    /// The frontend port (network byte order).
    pub port: u16,
    /// 0 for the master entry, 1.. for the backend slots.
    pub slot: u16,
    /// IP protocol (`proto::TCP`, `proto::UDP`).
    pub proto: u8,
    /// Zero.
    pub _pad: u8,
    /// Zero.
    pub _pad2: u16,
}
const _: () = assert!(core::mem::size_of::<ServiceKey6>() == 24);

impl ServiceKey6 {
    /// The key of `slot` for a frontend; `port` in network byte order.
    pub const fn new(vip: crate::Addr6, port: u16, proto: u8, slot: u16) -> Self {
        Self {
            vip,
            port,
            slot,
            proto,
            _pad: 0,
            _pad2: 0,
        }
    }
}

/// Value of `LB6_BACKENDS`: [`Backend4`] with an IPv6 address. Backend ids are one space for
/// both families: an id names an entry of `LB4_BACKENDS` or of `LB6_BACKENDS`, never both.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Backend6 {
    /// The backend address.
    pub addr: crate::Addr6,
    /// The backend port (network byte order).
    pub port: u16,
    /// IP protocol.
    pub proto: u8,
    /// `BACKEND_STATE_*`.
    pub state: u8,
    /// `BACKEND_F_*` bits.
    pub flags: u8,
    /// Zero.
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<Backend6>() == 24);

/// Value of `LB6_REVNAT`, keyed by service id (one id space for both families).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RevNat6 {
    /// The frontend address.
    pub vip: crate::Addr6,
    /// The frontend port (network byte order).
    pub port: u16,
    /// Zero.
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<RevNat6>() == 20);

/// Key of `LB6_AFFINITY`: [`AffinityKey4`] for an IPv6 client; the value is [`AffinityValue`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AffinityKey6 {
    /// The client's address.
    pub client: crate::Addr6,
    /// The service id.
    pub rev_nat: u32,
}
const _: () = assert!(core::mem::size_of::<AffinityKey6>() == 20);

/// The data of an `LB6_SRC_RANGE` key: [`SourceRangeKey4`] with an IPv6 client prefix (the
/// prefix length counts from `rev_nat`: `SOURCE_RANGE_PREFIX_BITS + n`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceRangeKey6 {
    /// The service id (master entry's `rev_nat`).
    pub rev_nat: u32,
    /// The client address or range start.
    pub addr: crate::Addr6,
}
const _: () = assert!(core::mem::size_of::<SourceRangeKey6>() == 20);

crate::pod!(
    SourceRangeKey4,
    ServiceKey4,
    ServiceEntry,
    Backend4,
    RevNat4,
    AffinityKey4,
    AffinityValue,
    MaglevKey,
    MaglevChunk,
    ServiceKey6,
    Backend6,
    RevNat6,
    AffinityKey6,
    SourceRangeKey6
);
