//! Conntrack: two LRU maps, `LB4_CT_TCP` for TCP and `LB4_CT_ANY` for everything else (UDP),
//! so that connectionless churn (DNS) cannot evict long-lived TCP flows. Each translated flow
//! has two entries in its map, each of its own type; the value's `kind` says which.
//!
//! - A [`CtService`] entry is keyed by the tuple as the client sent it (client → VIP) and
//!   records the backend, so every later packet of the flow goes to the same backend.
//! - A [`CtReply`] entry is keyed by the tuple of the backend's replies as they arrive at this
//!   node (backend → client, or backend → node address when SNATed) and records what to
//!   restore: the VIP and port (the reply's new source) and the client's address and port
//!   (restored after SNAT).
//!
//! The key has no direction byte: a request has a VIP as its destination, a reply a backend
//! (or the node's SNAT address) as its source, so the two kinds never share a key, and one
//! lookup finds either. The map's value is [`CtEntry`], a union of the two with the same
//! 32 bytes either way and the same header (expiry, kind, flags). The reply entries of SNATed
//! flows double as the NAT table: a source port is allocated by inserting a reply entry with
//! `BPF_NOEXIST`, so two flows can never share a mapping.
//!
//! Expiry: `expires` is in the datapath's clock (seconds, see `config::DatapathConfig`); an
//! entry whose `expires` is not after now is treated as absent by the datapath and deleted by
//! the agent's GC.

use core::{fmt, mem::offset_of};

/// Key of `LB4_CT_TCP` and `LB4_CT_ANY`; addresses and ports in network byte order.
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
    /// Zero.
    pub _pad: u8,
    /// Zero (one word, so that a key is built without byte stores).
    pub _pad2: u16,
}
const _: () = assert!(core::mem::size_of::<CtKey4>() == 16);

/// `kind` of a service entry (client → VIP), whose value is a [`CtService`].
pub const CT_SERVICE: u8 = 1;
/// `kind` of a reply entry (backend → client or node), whose value is a [`CtReply`].
pub const CT_REPLY: u8 = 2;

/// The service entry of a flow: which backend the client's packets go to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtService {
    /// When the entry expires, in the datapath's clock (seconds).
    pub expires: u32,
    /// [`CT_SERVICE`].
    pub kind: u8,
    /// Zero.
    pub _pad: u8,
    /// `CT_F_*` bits.
    pub flags: u16,
    /// The backend the flow is pinned to.
    pub backend_id: u32,
    /// The service id (key of `LB4_REVNAT`).
    pub rev_nat: u32,
    /// With `CT_F_SNAT`: the allocated source port (network byte order); zero otherwise.
    pub snat_port: u16,
    /// The backend's port (network byte order).
    pub backend_port: u16,
    /// With `CT_F_SNAT`: the node address the source is rewritten to (network byte order);
    /// zero otherwise.
    pub snat_addr: u32,
    /// The backend's address (network byte order): the destination the flow is rewritten to,
    /// and the proof that `LB4_BACKENDS[backend_id]` is still this flow's backend (ids are
    /// reused).
    pub backend_addr: u32,
    /// The `LB_GENERATION` at which the flow's frontend and backend were last found in place
    /// (0: never): while it is the current one, nothing was removed since, and the flow's
    /// packets need not look them up again. Zero in entries of older datapaths (where this was
    /// padding), which therefore look them up once more.
    pub generation: u32,
}
const _: () = assert!(core::mem::size_of::<CtService>() == 32);

/// The reply entry of a flow: what to restore in the backend's replies.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtReply {
    /// When the entry expires, in the datapath's clock (seconds).
    pub expires: u32,
    /// [`CT_REPLY`].
    pub kind: u8,
    /// Zero.
    pub _pad: u8,
    /// `CT_F_*` bits.
    pub flags: u16,
    /// The backend the flow is pinned to.
    pub backend_id: u32,
    /// The service id the flow was translated for.
    pub rev_nat: u32,
    /// The frontend's port (network byte order): the reply's new source port.
    pub vip_port: u16,
    /// The client's port as it sent the flow (network byte order); with `CT_F_SNAT` restored
    /// as the reply's destination port.
    pub client_port: u16,
    /// The frontend's address (network byte order): the reply's new source. Recorded here so
    /// that replies need no `LB4_REVNAT` lookup, and a service id reused by another frontend
    /// cannot redirect them.
    pub vip: u32,
    /// The client's address as it sent the flow (network byte order); with `CT_F_SNAT`
    /// restored as the reply's destination.
    pub client_addr: u32,
    /// Zero.
    pub _pad3: u32,
}
const _: () = assert!(core::mem::size_of::<CtReply>() == 32);

// The two kinds share their first 8 bytes, so an entry read without knowing its kind shows
// its expiry, kind and flags in the same place (what the GC and `bpftool map dump` read).
const _: () = assert!(offset_of!(CtService, expires) == offset_of!(CtReply, expires));
const _: () = assert!(offset_of!(CtService, kind) == offset_of!(CtReply, kind));
const _: () = assert!(offset_of!(CtService, flags) == offset_of!(CtReply, flags));
const _: () = assert!(offset_of!(CtService, backend_id) == offset_of!(CtReply, backend_id));
const _: () = assert!(offset_of!(CtService, rev_nat) == offset_of!(CtReply, rev_nat));

/// Value of the conntrack maps: a [`CtService`] or a [`CtReply`], as its `kind` says.
#[repr(C)]
#[derive(Clone, Copy)]
pub union CtEntry {
    /// A [`CT_SERVICE`] entry.
    pub service: CtService,
    /// A [`CT_REPLY`] entry.
    pub reply: CtReply,
}
const _: () = assert!(core::mem::size_of::<CtEntry>() == 32);

/// The accessors and trait impls of a conntrack map value `$entry`, the union of `$service`
/// and `$reply`: one definition for both families' values. A macro, not a trait, so that they
/// stay inherent `const fn`s the datapath calls without a trait in scope.
macro_rules! ct_entry_impls {
    ($entry:ident, $service:ident, $reply:ident) => {
        impl $entry {
            /// The entry read as a service entry (meaningful when `kind()` is [`CT_SERVICE`]).
            pub const fn service(self) -> $service {
                // SAFETY: both members are the union's whole size in plain integers without
                // implicit padding (the size asserts beside the types): every bit pattern is a
                // valid service entry.
                unsafe { self.service }
            }

            /// The entry read as a reply entry (meaningful when `kind()` is [`CT_REPLY`]).
            pub const fn reply(self) -> $reply {
                // SAFETY: as in `service`: every bit pattern is a valid reply entry.
                unsafe { self.reply }
            }

            /// [`CT_SERVICE`] or [`CT_REPLY`] (anything else is no entry lb wrote).
            pub const fn kind(self) -> u8 {
                self.service().kind
            }

            /// When the entry expires, in the datapath's clock.
            pub const fn expires(self) -> u32 {
                self.service().expires
            }

            /// `CT_F_*` bits.
            pub const fn flags(self) -> u16 {
                self.service().flags
            }
        }

        impl From<$service> for $entry {
            fn from(service: $service) -> Self {
                Self { service }
            }
        }

        impl From<$reply> for $entry {
            fn from(reply: $reply) -> Self {
                Self { reply }
            }
        }

        // Both members cover all the union's bytes without padding: comparing one view
        // compares every byte.
        impl PartialEq for $entry {
            fn eq(&self, other: &Self) -> bool {
                self.service() == other.service()
            }
        }

        impl Eq for $entry {}

        impl fmt::Debug for $entry {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.kind() {
                    CT_SERVICE => self.service().fmt(f),
                    _ => self.reply().fmt(f),
                }
            }
        }
    };
}

ct_entry_impls!(CtEntry, CtService, CtReply);

/// The flow's source was rewritten to the node's address (remote backend, external client).
pub const CT_F_SNAT: u16 = 1 << 0;
/// The flow arrived on an external interface (from-netdev).
pub const CT_F_FROM_NETDEV: u16 = 1 << 1;
/// A FIN or RST was seen: the flow is closing (TCP).
pub const CT_F_CLOSING: u16 = 1 << 2;
/// The backend has answered.
pub const CT_F_SEEN_REPLY: u16 = 1 << 3;
/// The client sent a packet other than a SYN after the backend answered: the TCP handshake is
/// done, and the entries take the long lifetimes.
pub const CT_F_ESTABLISHED: u16 = 1 << 4;
/// The flow's frontend is a node port on one of this node's own addresses, so its replies
/// carry a local source address once reverse-NATed, which the stack drops as a martian: they
/// leave by redirect.
pub const CT_F_NODE_PORT: u16 = 1 << 5;

/// How long an idle entry lives, per state, in seconds: Cilium's `bpf-ct-timeout-*` options.
/// Reply entries take the `regular` lifetimes, service entries the `service` ones.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtLifetimes {
    /// `bpf-ct-timeout-regular-tcp`: an established TCP flow's reply entry.
    pub tcp: u32,
    /// `bpf-ct-timeout-regular-tcp-syn`: both entries of a TCP flow until its handshake is done.
    pub tcp_syn: u32,
    /// `bpf-ct-timeout-regular-tcp-fin`: a closing TCP flow's reply entry.
    pub tcp_fin: u32,
    /// `bpf-ct-timeout-regular-any`: a non-TCP flow's reply entry.
    pub any: u32,
    /// `bpf-ct-timeout-service-tcp`: an established TCP flow's service entry.
    pub service_tcp: u32,
    /// `bpf-ct-timeout-service-tcp-grace`: a closing TCP flow's service entry (a new
    /// connection from the same source port after it chooses its backend afresh).
    pub service_tcp_grace: u32,
    /// `bpf-ct-timeout-service-any`: a non-TCP flow's service entry.
    pub service_any: u32,
}
const _: () = assert!(core::mem::size_of::<CtLifetimes>() == 28);

impl CtLifetimes {
    /// Cilium's defaults (its BPF fallbacks and documented option defaults).
    pub const DEFAULT: Self = Self {
        tcp: 21_600,
        tcp_syn: 60,
        tcp_fin: 10,
        any: 60,
        service_tcp: 21_600,
        service_tcp_grace: 60,
        service_any: 60,
    };

    /// The lifetime of an entry of `kind` (and protocol `proto`) with `flags`.
    pub const fn of(&self, kind: u8, proto: u8, flags: u16) -> u32 {
        let service = kind == CT_SERVICE;
        if proto != crate::proto::TCP {
            return if service { self.service_any } else { self.any };
        }
        if flags & CT_F_CLOSING != 0 {
            if service {
                self.service_tcp_grace
            } else {
                self.tcp_fin
            }
        } else if flags & CT_F_ESTABLISHED == 0 {
            self.tcp_syn
        } else if service {
            self.service_tcp
        } else {
            self.tcp
        }
    }
}

impl Default for CtLifetimes {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Key of `LB6_CT_TCP` and `LB6_CT_ANY`: [`CtKey4`] with IPv6 addresses; ports in network
/// byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CtKey6 {
    /// Source address.
    pub saddr: crate::Addr6,
    /// Destination address.
    pub daddr: crate::Addr6,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// Zero.
    pub _pad: u8,
    /// Zero.
    pub _pad2: u16,
}
const _: () = assert!(core::mem::size_of::<CtKey6>() == 40);

/// [`CtService`] of an IPv6 flow: the same header and meaning, IPv6 addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtService6 {
    /// When the entry expires, in the datapath's clock (seconds).
    pub expires: u32,
    /// [`CT_SERVICE`].
    pub kind: u8,
    /// Zero.
    pub _pad: u8,
    /// `CT_F_*` bits.
    pub flags: u16,
    /// The backend the flow is pinned to.
    pub backend_id: u32,
    /// The service id (key of `LB6_REVNAT`).
    pub rev_nat: u32,
    /// With `CT_F_SNAT`: the allocated source port (network byte order); zero otherwise.
    pub snat_port: u16,
    /// The backend's port (network byte order).
    pub backend_port: u16,
    /// With `CT_F_SNAT`: the node address the source is rewritten to; zero otherwise.
    pub snat_addr: crate::Addr6,
    /// The backend's address: the destination the flow is rewritten to, and the proof that
    /// `LB6_BACKENDS[backend_id]` is still this flow's backend.
    pub backend_addr: crate::Addr6,
    /// As [`CtService::generation`]: the `LB_GENERATION` at which the flow's frontend and
    /// backend were last found in place (0: never).
    pub generation: u32,
}
const _: () = assert!(core::mem::size_of::<CtService6>() == 56);

/// [`CtReply`] of an IPv6 flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtReply6 {
    /// When the entry expires, in the datapath's clock (seconds).
    pub expires: u32,
    /// [`CT_REPLY`].
    pub kind: u8,
    /// Zero.
    pub _pad: u8,
    /// `CT_F_*` bits.
    pub flags: u16,
    /// The backend the flow is pinned to.
    pub backend_id: u32,
    /// The service id the flow was translated for.
    pub rev_nat: u32,
    /// The frontend's port (network byte order): the reply's new source port.
    pub vip_port: u16,
    /// The client's port as it sent the flow (network byte order).
    pub client_port: u16,
    /// The frontend's address: the reply's new source.
    pub vip: crate::Addr6,
    /// The client's address as it sent the flow; with `CT_F_SNAT` restored as the reply's
    /// destination.
    pub client_addr: crate::Addr6,
    /// Zero.
    pub _pad3: u32,
}
const _: () = assert!(core::mem::size_of::<CtReply6>() == 56);

const _: () = assert!(offset_of!(CtService6, expires) == offset_of!(CtReply6, expires));
const _: () = assert!(offset_of!(CtService6, kind) == offset_of!(CtReply6, kind));
const _: () = assert!(offset_of!(CtService6, flags) == offset_of!(CtReply6, flags));
const _: () = assert!(offset_of!(CtService6, backend_id) == offset_of!(CtReply6, backend_id));
const _: () = assert!(offset_of!(CtService6, rev_nat) == offset_of!(CtReply6, rev_nat));
// The header is where an IPv4 entry has it: one GC reads both families' entries the same way.
const _: () = assert!(offset_of!(CtService6, flags) == offset_of!(CtService, flags));
const _: () = assert!(offset_of!(CtService6, rev_nat) == offset_of!(CtService, rev_nat));

/// Value of the IPv6 conntrack maps: [`CtEntry`] for IPv6 flows.
#[repr(C)]
#[derive(Clone, Copy)]
pub union CtEntry6 {
    /// A [`CT_SERVICE`] entry.
    pub service: CtService6,
    /// A [`CT_REPLY`] entry.
    pub reply: CtReply6,
}
const _: () = assert!(core::mem::size_of::<CtEntry6>() == 56);

ct_entry_impls!(CtEntry6, CtService6, CtReply6);

crate::pod!(
    CtKey4,
    CtService,
    CtReply,
    CtEntry,
    CtLifetimes,
    CtKey6,
    CtService6,
    CtReply6,
    CtEntry6
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{TCP, UDP};

    #[test]
    fn a_service_entry_keeps_its_bytes_through_the_map_value() {
        let service = CtService {
            expires: 7,
            kind: CT_SERVICE,
            backend_id: 3,
            rev_nat: 2,
            flags: CT_F_SNAT,
            snat_addr: 0x0a00_0001,
            snat_port: 4242,
            backend_addr: 0x0a00_0002,
            backend_port: 8080,
            ..CtService::default()
        };
        let entry = CtEntry::from(service);
        assert_eq!(entry.service(), service);
        assert_eq!(entry.kind(), CT_SERVICE);
    }

    #[test]
    fn a_reply_entry_shares_expiry_kind_and_flags_with_the_service_layout() {
        let reply = CtReply {
            expires: 9,
            kind: CT_REPLY,
            flags: CT_F_CLOSING,
            vip: 5,
            vip_port: 6,
            client_addr: 1,
            client_port: 2,
            ..CtReply::default()
        };
        let entry = CtEntry::from(reply);
        assert_eq!(entry.reply(), reply);
        assert_eq!(
            (entry.expires(), entry.kind(), entry.flags()),
            (9, CT_REPLY, CT_F_CLOSING)
        );
    }

    #[test]
    fn an_ipv6_entry_reads_as_an_ipv4_one_does() {
        let reply = CtReply6 {
            expires: 9,
            kind: CT_REPLY,
            flags: CT_F_CLOSING,
            vip: [0xfd00_0000, 0, 0, 1],
            vip_port: 6,
            ..CtReply6::default()
        };
        let entry = CtEntry6::from(reply);
        assert_eq!(entry.reply(), reply);
        assert_eq!(entry, CtEntry6::from(reply));
        assert_eq!(
            (entry.expires(), entry.kind(), entry.flags()),
            (9, CT_REPLY, CT_F_CLOSING)
        );
    }

    #[test]
    fn lifetimes_follow_the_tcp_state_and_the_entry_kind() {
        let l = CtLifetimes::DEFAULT;
        let est = CT_F_SEEN_REPLY | CT_F_ESTABLISHED;
        assert_eq!(l.of(CT_SERVICE, TCP, 0), 60, "SYN only");
        assert_eq!(l.of(CT_REPLY, TCP, CT_F_SEEN_REPLY), 60, "SYN-ACK only");
        assert_eq!(l.of(CT_SERVICE, TCP, est), 21_600);
        assert_eq!(l.of(CT_REPLY, TCP, est), 21_600);
        assert_eq!(l.of(CT_SERVICE, TCP, est | CT_F_CLOSING), 60, "grace");
        assert_eq!(l.of(CT_REPLY, TCP, est | CT_F_CLOSING), 10, "fin");
        assert_eq!(l.of(CT_SERVICE, UDP, 0), 60);
        assert_eq!(l.of(CT_REPLY, UDP, CT_F_SEEN_REPLY), 60);
    }
}
