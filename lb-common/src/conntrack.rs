//! Conntrack: one LRU map, `LB4_CT`, holding two entries per translated flow.
//!
//! - The *service* entry is keyed by the tuple as the client sent it (client → VIP) and
//!   records the backend, so every later packet of the flow goes to the same backend.
//! - The *reply* entry is keyed by the tuple of the backend's replies as they arrive at this
//!   node (backend → client, or backend → node address when SNATed) and records what to
//!   restore: the service id for reverse NAT and, after SNAT, the client's address and port.
//!
//! The reply entries of SNATed flows double as the NAT table: a source port is allocated by
//! inserting a reply entry with `BPF_NOEXIST`, so two flows can never share a mapping.

/// Key of `LB4_CT`; addresses and ports in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtKey4 {
    /// Source address.
    pub saddr: u32,
    /// Destination address.
    pub daddr: u32,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// `CT_SERVICE` or `CT_REPLY`.
    pub kind: u8,
    /// Zero.
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<CtKey4>() == 16);

/// `CtKey4::kind` of a service entry (client → VIP).
pub const CT_SERVICE: u8 = 0;
/// `CtKey4::kind` of a reply entry (backend → client or node).
pub const CT_REPLY: u8 = 1;

/// Value of `LB4_CT`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtEntry {
    /// `bpf_ktime_get_ns()` of the last packet seen in either direction.
    pub last_seen_ns: u64,
    /// Service entries: the backend the flow is pinned to.
    pub backend_id: u32,
    /// The service id (key of `LB4_REVNAT`).
    pub rev_nat: u16,
    /// `CT_F_*` bits.
    pub flags: u16,
    /// Reply entries of SNATed flows: the client's address (network byte order).
    /// Service entries of SNATed flows: the node address the source was rewritten to.
    pub nat_addr: u32,
    /// Reply entries of SNATed flows: the client's port.
    /// Service entries of SNATed flows: the allocated source port (network byte order).
    pub nat_port: u16,
    /// Zero.
    pub _pad: u16,
    /// Backend address of service entries (network byte order), so that a drained flow keeps
    /// its destination even after its backend left `LB4_BACKENDS`.
    pub backend_addr: u32,
    /// Backend port of service entries (network byte order).
    pub backend_port: u16,
    /// Zero.
    pub _pad2: u16,
}
const _: () = assert!(core::mem::size_of::<CtEntry>() == 32);

/// The flow's source was rewritten to the node's address (remote backend, external client).
pub const CT_F_SNAT: u16 = 1 << 0;
/// The flow arrived on an external interface (from-netdev).
pub const CT_F_FROM_NETDEV: u16 = 1 << 1;
/// A FIN or RST was seen: the flow is closing.
pub const CT_F_CLOSING: u16 = 1 << 2;

crate::pod!(CtKey4, CtEntry);
