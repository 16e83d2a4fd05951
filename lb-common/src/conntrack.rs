//! Conntrack: one LRU map, `LB4_CT`, holding two entries per translated flow, each of its own
//! type; the key's `kind` says which.
//!
//! - A [`CtService`] entry is keyed by the tuple as the client sent it (client → VIP) and
//!   records the backend, so every later packet of the flow goes to the same backend.
//! - A [`CtReply`] entry is keyed by the tuple of the backend's replies as they arrive at this
//!   node (backend → client, or backend → node address when SNATed) and records what to
//!   restore: the service id for reverse NAT and the client's address and port (restored
//!   after SNAT).
//!
//! The map's value is [`CtEntry`], a union of the two with the same 32 bytes either way. The
//! reply entries of SNATed flows double as the NAT table: a source port is allocated by
//! inserting a reply entry with `BPF_NOEXIST`, so two flows can never share a mapping.

use core::{fmt, mem::offset_of};

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
    /// `CT_SERVICE` or `CT_REPLY`: which member of [`CtEntry`] the value holds.
    pub kind: u8,
    /// Zero (one word, so that a key is built without byte stores).
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<CtKey4>() == 16);

/// `CtKey4::kind` of a service entry (client → VIP), whose value is a [`CtService`].
pub const CT_SERVICE: u8 = 0;
/// `CtKey4::kind` of a reply entry (backend → client or node), whose value is a [`CtReply`].
pub const CT_REPLY: u8 = 1;

/// The service entry of a flow: which backend the client's packets go to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtService {
    /// `bpf_ktime_get_ns()` of the last packet seen from the client.
    pub last_seen_ns: u64,
    /// The backend the flow is pinned to.
    pub backend_id: u32,
    /// The service id (key of `LB4_REVNAT`).
    pub rev_nat: u16,
    /// `CT_F_*` bits.
    pub flags: u16,
    /// With `CT_F_SNAT`: the node address the source is rewritten to (network byte order);
    /// zero otherwise.
    pub snat_addr: u32,
    /// With `CT_F_SNAT`: the allocated source port (network byte order); zero otherwise.
    pub snat_port: u16,
    /// Zero.
    pub _pad: u16,
    /// The backend's address (network byte order): the destination the flow is rewritten to,
    /// and the proof that `LB4_BACKENDS[backend_id]` is still this flow's backend (ids are
    /// reused).
    pub backend_addr: u32,
    /// The backend's port (network byte order).
    pub backend_port: u16,
    /// Zero.
    pub _pad2: u16,
}
const _: () = assert!(core::mem::size_of::<CtService>() == 32);

/// The reply entry of a flow: what to restore in the backend's replies.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtReply {
    /// `bpf_ktime_get_ns()` of the last reply seen.
    pub last_seen_ns: u64,
    /// The backend the flow is pinned to.
    pub backend_id: u32,
    /// The service id (key of `LB4_REVNAT`): its VIP:port becomes the reply's source.
    pub rev_nat: u16,
    /// `CT_F_*` bits.
    pub flags: u16,
    /// The client's address as it sent the flow (network byte order); with `CT_F_SNAT`
    /// restored as the reply's destination.
    pub client_addr: u32,
    /// The client's port as it sent the flow (network byte order); with `CT_F_SNAT` restored
    /// as the reply's destination port.
    pub client_port: u16,
    /// Zero.
    pub _pad: u16,
    /// Zero: a reply entry is as large as a service entry.
    pub _pad2: u64,
}
const _: () = assert!(core::mem::size_of::<CtReply>() == 32);

// The two kinds share the first 16 bytes, so an entry read without its key still shows its age
// and flags in the same place (what `bpftool map dump` prints).
const _: () = assert!(offset_of!(CtService, last_seen_ns) == offset_of!(CtReply, last_seen_ns));
const _: () = assert!(offset_of!(CtService, flags) == offset_of!(CtReply, flags));

/// Value of `LB4_CT`: a [`CtService`] or a [`CtReply`], as the key's `kind` says.
#[repr(C)]
#[derive(Clone, Copy)]
pub union CtEntry {
    /// The value of a `CT_SERVICE` key.
    pub service: CtService,
    /// The value of a `CT_REPLY` key.
    pub reply: CtReply,
}
const _: () = assert!(core::mem::size_of::<CtEntry>() == 32);

impl CtEntry {
    /// The entry read as a service entry (meaningful under a `CT_SERVICE` key).
    pub const fn service(self) -> CtService {
        // SAFETY: both members are 32 bytes of plain integers without implicit padding: every
        // bit pattern is a valid `CtService`.
        unsafe { self.service }
    }

    /// The entry read as a reply entry (meaningful under a `CT_REPLY` key).
    pub const fn reply(self) -> CtReply {
        // SAFETY: as in `service`: every bit pattern is a valid `CtReply`.
        unsafe { self.reply }
    }
}

impl From<CtService> for CtEntry {
    fn from(service: CtService) -> Self {
        Self { service }
    }
}

impl From<CtReply> for CtEntry {
    fn from(reply: CtReply) -> Self {
        Self { reply }
    }
}

// Both members cover all 32 bytes without padding: comparing one view compares every byte.
impl PartialEq for CtEntry {
    fn eq(&self, other: &Self) -> bool {
        self.service() == other.service()
    }
}

impl Eq for CtEntry {}

// Without its key an entry's kind is unknown: Debug shows the fields both kinds share.
impl fmt::Debug for CtEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let common = self.reply();
        f.debug_struct("CtEntry")
            .field("last_seen_ns", &common.last_seen_ns)
            .field("backend_id", &common.backend_id)
            .field("rev_nat", &common.rev_nat)
            .field("flags", &common.flags)
            .finish_non_exhaustive()
    }
}

/// The flow's source was rewritten to the node's address (remote backend, external client).
pub const CT_F_SNAT: u16 = 1 << 0;
/// The flow arrived on an external interface (from-netdev).
pub const CT_F_FROM_NETDEV: u16 = 1 << 1;
/// A FIN or RST was seen: the flow is closing.
pub const CT_F_CLOSING: u16 = 1 << 2;
/// The flow's frontend is a node port on one of this node's own addresses, so its replies
/// carry a local source address once reverse-NATed, which the stack drops as a martian: they
/// leave by redirect.
pub const CT_F_NODE_PORT: u16 = 1 << 3;

crate::pod!(CtKey4, CtService, CtReply, CtEntry);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_entry_keeps_its_bytes_through_the_map_value() {
        let service = CtService {
            last_seen_ns: 7,
            backend_id: 3,
            rev_nat: 2,
            flags: CT_F_SNAT,
            snat_addr: 0x0a00_0001,
            snat_port: 4242,
            backend_addr: 0x0a00_0002,
            backend_port: 8080,
            ..CtService::default()
        };
        assert_eq!(CtEntry::from(service).service(), service);
    }

    #[test]
    fn a_reply_entry_shares_age_and_flags_with_the_service_layout() {
        let reply = CtReply {
            last_seen_ns: 9,
            flags: CT_F_CLOSING,
            client_addr: 1,
            client_port: 2,
            ..CtReply::default()
        };
        let entry = CtEntry::from(reply);
        assert_eq!(entry.reply(), reply);
        assert_eq!(entry.service().last_seen_ns, 9);
        assert_eq!(entry.service().flags, CT_F_CLOSING);
    }
}
