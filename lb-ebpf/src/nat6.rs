//! IPv6 address translation: DNAT, SNAT of flows from outside to remote backends (source →
//! `DatapathConfig::node_addr6` and a port claimed by reserving the reply entry, as `nat.rs`
//! does), and their reversal on replies.
//!
//! IPv6 has no header checksum: only the TCP/UDP checksum changes, and it covers the
//! addresses through the pseudo-header. Addresses and ports are written by direct packet
//! access first; then the checksum is updated by difference with at most two
//! `bpf_l4_csum_replace` calls (`BPF_F_PSEUDO_HDR` for the addresses, without it for the
//! ports), which keeps CHECKSUM_COMPLETE and CHECKSUM_PARTIAL packets right (see `csum.rs`).
//! UDP's checksum is mandatory in IPv6: `BPF_F_MARK_MANGLED_0` writes a computed 0 as 0xffff,
//! and leaves a received 0 (an invalid datagram, which the receiver drops as it would have
//! without lb) as it is. Maps: none of its own. Drops with 165 when SNAT is needed but the
//! node has no IPv6 address, 167 when no SNAT port is free, 141 when the packet cannot be
//! written.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::bpf_get_prandom_u32,
    programs::TcContext,
};
use lb_common::{
    Addr6,
    config::{DatapathConfig, HAIRPIN_ADDR6},
    conntrack::{CT_F_FROM_NETDEV, CT_F_SNAT, CtReply6, CtService6},
    drop::{DropReason, SourceFile},
    proto,
};

use crate::{
    conntrack6,
    drop::{Dropped, dropped},
    lb6::{Chosen6, Frontend6},
    maps::Ct6Scratch,
    parse::{split, store_u16, store_u32},
    parse6::{IP6_DADDR_OFF, IP6_SADDR_OFF, Tuple6},
};

const FILE: SourceFile = SourceFile::Nat6;

/// Ports of the SNAT range tried before 167 (see `nat.rs`).
const SNAT_TRIES: u32 = 8;

/// Claims a source port of the SNAT range for a flow from outside to a remote backend, by
/// reserving its reply entry (built in `scratch`, see `conntrack6.rs`): the node's IPv6
/// address and the port (network byte order). 165 when the node has no IPv6 address, 167
/// when no port is free.
#[inline(always)]
pub fn select_snat_port(
    scratch: &mut Ct6Scratch,
    tuple: &Tuple6,
    frontend: &Frontend6,
    chosen: &Chosen6,
    config: &'static DatapathConfig,
    now: u32,
) -> Result<(&'static Addr6, u16), Dropped> {
    let addr = &config.node_addr6;
    if *addr == [0; 4] {
        // As for IPv4: the flow must not go out with the client's address, whose replies
        // would bypass this node.
        return Err(dropped!(DropReason::NoConfig));
    }
    conntrack6::snat_reply(scratch, tuple, frontend, chosen, config, now);
    claim_port(scratch, tuple, chosen, config, addr, None)
}

/// Claims the source of a hairpinned flow (a pod reaching itself, `hairpin6.rs`):
/// `HAIRPIN_ADDR6` with the client's own port when free, else a port of the SNAT range; 167
/// when none is. Its reply entry is an SNATed flow's, but from a pod.
#[inline(always)]
pub fn select_hairpin_port(
    scratch: &mut Ct6Scratch,
    tuple: &Tuple6,
    frontend: &Frontend6,
    chosen: &Chosen6,
    config: &DatapathConfig,
    now: u32,
) -> Result<(&'static Addr6, u16), Dropped> {
    conntrack6::snat_reply(scratch, tuple, frontend, chosen, config, now);
    // SAFETY: just written as a reply entry.
    unsafe { scratch.reply.reply.flags &= !CT_F_FROM_NETDEV };
    claim_port(
        scratch,
        tuple,
        chosen,
        config,
        &HAIRPIN_ADDR6,
        Some(tuple.sport),
    )
}

/// Claims `addr` and a port for the flow `tuple` to `chosen` by inserting `scratch.reply`
/// under the key backend → addr:port, if that key is free: `preferred` first (network byte
/// order), then up to `SNAT_TRIES` ports of the SNAT range (see `nat.rs`).
#[inline(always)]
fn claim_port(
    scratch: &mut Ct6Scratch,
    tuple: &Tuple6,
    chosen: &Chosen6,
    config: &DatapathConfig,
    addr: &'static Addr6,
    preferred: Option<u16>,
) -> Result<(&'static Addr6, u16), Dropped> {
    if let Some(port) = preferred {
        scratch.reply_key = conntrack6::reply_key(
            &chosen.backend.addr,
            addr,
            chosen.backend.port,
            port,
            tuple.proto,
        );
        if conntrack6::reserve_reply(scratch) {
            return Ok((addr, port));
        }
    }
    let min = u32::from(config.snat_port_min);
    let Some(span) = u32::from(config.snat_port_max)
        .checked_sub(min)
        .map(|s| s + 1)
    else {
        return Err(dropped!(DropReason::NatNoMapping));
    };
    for i in 0..SNAT_TRIES {
        let offset = if span <= SNAT_TRIES {
            i
        } else {
            // SAFETY: a helper without arguments.
            unsafe { bpf_get_prandom_u32() }
                .checked_rem(span)
                .unwrap_or(0)
        };
        if offset >= span {
            break;
        }
        let port = ((min + offset) as u16).to_be();
        scratch.reply_key = conntrack6::reply_key(
            &chosen.backend.addr,
            addr,
            chosen.backend.port,
            port,
            tuple.proto,
        );
        if conntrack6::reserve_reply(scratch) {
            return Ok((addr, port));
        }
    }
    Err(dropped!(DropReason::NatNoMapping))
}

/// The addresses and ports a packet is rewritten to, by reference (into the conntrack entry
/// or the packet's tuple: nothing is copied onto the stack).
pub struct Target<'a> {
    /// New source address.
    pub saddr: &'a Addr6,
    /// New destination address.
    pub daddr: &'a Addr6,
    /// New source port.
    pub sport: u16,
    /// New destination port.
    pub dport: u16,
}

/// What the client flow `tuple` is rewritten to: destination → backend, and source →
/// node:port when SNATed.
#[inline(always)]
pub fn dnat_target<'a>(tuple: &'a Tuple6, flow: &'a CtService6) -> Target<'a> {
    if flow.flags & CT_F_SNAT != 0 {
        return Target {
            saddr: &flow.snat_addr,
            daddr: &flow.backend_addr,
            sport: flow.snat_port,
            dport: flow.backend_port,
        };
    }
    Target {
        saddr: &tuple.saddr,
        daddr: &flow.backend_addr,
        sport: tuple.sport,
        dport: flow.backend_port,
    }
}

/// What a backend's reply is rewritten to: source → VIP:port, and destination → the client
/// when SNATed.
#[inline(always)]
pub fn rev_nat_target<'a>(tuple: &'a Tuple6, reply: &'a CtReply6) -> Target<'a> {
    if reply.flags & CT_F_SNAT != 0 {
        return Target {
            saddr: &reply.vip,
            daddr: &reply.client_addr,
            sport: reply.vip_port,
            dport: reply.client_port,
        };
    }
    Target {
        saddr: &reply.vip,
        daddr: &tuple.daddr,
        sport: reply.vip_port,
        dport: tuple.dport,
    }
}

/// One's-complement sum of 16-bit word replacements (RFC 1624), not yet folded.
#[derive(Clone, Copy, Default)]
pub struct Diff(u64);

impl Diff {
    /// `from` replaced by `to`.
    #[inline(always)]
    pub fn word(&mut self, from: u16, to: u16) {
        if from != to {
            self.0 += u64::from(!from) + u64::from(to);
        }
    }

    /// The address `from` replaced by `to`.
    #[inline(always)]
    pub fn addr(&mut self, from: &Addr6, to: &Addr6) {
        for i in 0..4 {
            let [f0, f1] = split(from[i]);
            let [t0, t1] = split(to[i]);
            self.word(f0, t0);
            self.word(f1, t1);
        }
    }

    #[inline(always)]
    fn folded(self) -> u64 {
        let sum = (self.0 & 0xffff) + (self.0 >> 16);
        let sum = (sum & 0xffff) + (sum >> 16);
        (sum & 0xffff) + (sum >> 16)
    }

    /// The checksum `check` (as stored) updated for these replacements:
    /// `HC' = ~(~HC + diff)`.
    #[inline(always)]
    pub fn apply(self, check: u16) -> u16 {
        let sum = Self(self.0 + u64::from(!check)).folded();
        !(sum as u16)
    }
}

/// Writes `to`'s addresses and ports over `from`'s, and the L4 checksum.
#[inline(always)]
pub fn rewrite(ctx: &TcContext, from: &Tuple6, to: &Target) -> Result<(), Dropped> {
    let mut addrs = Diff::default();
    addrs.addr(&from.saddr, to.saddr);
    addrs.addr(&from.daddr, to.daddr);
    let mut written = Some(());
    for i in 0..4 {
        written = written
            .and_then(|()| store_u32(ctx, IP6_SADDR_OFF + 4 * i, to.saddr[i]))
            .and_then(|()| store_u32(ctx, IP6_DADDR_OFF + 4 * i, to.daddr[i]));
    }
    if written.is_none() {
        return Err(dropped!(DropReason::WriteError));
    }
    if !from.has_l4_header() {
        return Ok(());
    }
    let l4 = from.l4();
    let written = store_u16(ctx, l4, to.sport).and_then(|()| store_u16(ctx, l4 + 2, to.dport));
    if written.is_none() {
        return Err(dropped!(DropReason::WriteError));
    }
    let mut ports = Diff::default();
    ports.word(from.sport, to.sport);
    ports.word(from.dport, to.dport);
    let flags = if from.proto == proto::UDP {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    };
    let off = from.l4_csum_off();
    if addrs.0 != 0 {
        ctx.l4_csum_replace(off, 0, addrs.folded(), flags | u64::from(BPF_F_PSEUDO_HDR))
            .map_err(|_| dropped!(DropReason::WriteError))?;
    }
    if ports.0 != 0 {
        ctx.l4_csum_replace(off, 0, ports.folded(), flags)
            .map_err(|_| dropped!(DropReason::WriteError))?;
    }
    Ok(())
}
