//! Address translation: DNAT (client → VIP becomes client → backend), SNAT of flows from
//! outside to remote backends (source → node address and an allocated port) and of
//! hairpinned flows (source → the loopback address, see `hairpin.rs`), and their reversal on
//! replies.
//!
//! Maps: none of its own. Replies are restored from their conntrack entry, which records the
//! VIP and port (`LB4_REVNAT`, still written by the agent, is not read on the packet path);
//! SNAT ports are claimed through `conntrack::reserve_reply`. Addresses and ports are written with direct packet
//! access, all of them before the checksum helpers run (which invalidate packet pointers).
//! Returns the packet's new tuple; drops with 165 when SNAT is needed but the node has no
//! address, 167 when no SNAT port is free and 141 when the packet cannot be written.

use aya_ebpf::{helpers::bpf_get_prandom_u32, programs::TcContext};
use lb_common::{
    config::{DatapathConfig, HAIRPIN_ADDR},
    conntrack::{CT_F_FROM_NETDEV, CT_F_SNAT, CtKey4, CtReply, CtService},
    drop::{DropReason, SourceFile},
};

use crate::{
    conntrack::{self, SnatSource},
    csum,
    drop::{Dropped, dropped},
    lb::{Chosen, Frontend},
    parse::{IP_CSUM_OFF, IP_DADDR_OFF, IP_SADDR_OFF, Tuple4, load_u16, store_u16, store_u32},
};

const FILE: SourceFile = SourceFile::Nat;

/// How many ports of the SNAT range to try before giving up with 167. Each try is one hash
/// insert; tried at random, with the range a quarter taken, 8 tries all fail with probability
/// (1/4)^8 ≈ 2e-5. A range of at most this many ports is tried port by port instead, so that a
/// tiny range is used to its last port.
const SNAT_TRIES: u32 = 8;

/// The source an SNATed flow is rewritten to, and the reply entry claimed for it.
#[derive(Clone, Copy)]
pub struct Snat {
    /// The node address and the allocated port.
    pub source: SnatSource,
    /// The key of the reply entry claimed for it.
    pub reply_key: CtKey4,
}

/// Claims a source port in `[snat_port_min, snat_port_max]` for a flow from outside to a
/// remote backend, by inserting its reply entry (backend → node:port) if that key is free. 165
/// when the node has no address to SNAT to, 167 when no port is free.
#[inline(always)]
pub fn select_snat_port(
    tuple: &Tuple4,
    frontend: &Frontend,
    chosen: &Chosen,
    config: &DatapathConfig,
    now: u32,
) -> Result<Snat, Dropped> {
    if config.node_addr == 0 {
        // The agent refuses to start without an address; a datapath configured by hand
        // must not forward the flow with the client's address, whose replies would bypass
        // this node and never be translated back.
        return Err(dropped!(DropReason::NoConfig));
    }
    let reply = conntrack::snat_reply(tuple, frontend, chosen, config, now);
    claim_port(tuple, chosen, config, config.node_addr, None, reply)
}

/// Claims the source of a hairpinned flow (a pod reaching itself): `HAIRPIN_ADDR` with the
/// client's own port if free, else a port of the SNAT range. 167 when none is free.
#[inline(always)]
pub fn select_hairpin_port(
    tuple: &Tuple4,
    frontend: &Frontend,
    chosen: &Chosen,
    config: &DatapathConfig,
    now: u32,
) -> Result<Snat, Dropped> {
    let mut reply = conntrack::snat_reply(tuple, frontend, chosen, config, now);
    reply.flags &= !CT_F_FROM_NETDEV;
    claim_port(
        tuple,
        chosen,
        config,
        HAIRPIN_ADDR,
        Some(tuple.sport),
        reply,
    )
}

/// Claims `addr` and a port for the flow `tuple` to `chosen` by inserting `reply` under the
/// key backend → addr:port, if that key is free: `preferred` first (network byte order), then
/// up to `SNAT_TRIES` ports of the SNAT range. A range no longer than `SNAT_TRIES` is tried
/// port by port, so that its last free port is always found; a longer one at random.
#[inline(always)]
fn claim_port(
    tuple: &Tuple4,
    chosen: &Chosen,
    config: &DatapathConfig,
    addr: u32,
    preferred: Option<u16>,
    reply: CtReply,
) -> Result<Snat, Dropped> {
    let claim = |port: u16| {
        let key = conntrack::reply_key(
            chosen.backend.addr,
            addr,
            chosen.backend.port,
            port,
            tuple.proto,
        );
        conntrack::reserve_reply(&key, reply).then_some(Snat {
            source: SnatSource { addr, port },
            reply_key: key,
        })
    };
    if let Some(snat) = preferred.and_then(&claim) {
        return Ok(snat);
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
        if let Some(snat) = claim(((min + offset) as u16).to_be()) {
            return Ok(snat);
        }
    }
    Err(dropped!(DropReason::NatNoMapping))
}

/// The tuple the client flow `tuple` is rewritten to for its conntrack entry `flow`:
/// destination → backend, and source → node:port when the flow is SNATed.
#[inline(always)]
pub fn dnat_target(tuple: &Tuple4, flow: &CtService) -> Tuple4 {
    let mut to = *tuple;
    to.daddr = flow.backend_addr;
    to.dport = flow.backend_port;
    if flow.flags & CT_F_SNAT != 0 {
        to.saddr = flow.snat_addr;
        to.sport = flow.snat_port;
    }
    to
}

/// Rewrites the packet of the client flow `tuple` for its conntrack entry `flow` (see
/// [`dnat_target`]). Returns the new tuple.
#[inline(always)]
pub fn dnat(ctx: &TcContext, tuple: &Tuple4, flow: &CtService) -> Result<Tuple4, Dropped> {
    let to = dnat_target(tuple, flow);
    rewrite(ctx, tuple, &to)?;
    Ok(to)
}

/// The tuple a backend's reply `tuple` is rewritten to for its reply entry: source → the
/// VIP:port the client addressed, and destination → the original client when the flow was
/// SNATed.
#[inline(always)]
pub fn rev_nat_target(tuple: &Tuple4, reply: &CtReply) -> Tuple4 {
    let mut to = *tuple;
    to.saddr = reply.vip;
    to.sport = reply.vip_port;
    if reply.flags & CT_F_SNAT != 0 {
        to.daddr = reply.client_addr;
        to.dport = reply.client_port;
    }
    to
}

/// Rewrites a backend's reply `tuple` for its reply entry (see [`rev_nat_target`]). Returns the
/// new tuple.
#[inline(always)]
pub fn rev_nat(ctx: &TcContext, tuple: &Tuple4, reply: &CtReply) -> Result<Tuple4, Dropped> {
    let to = rev_nat_target(tuple, reply);
    rewrite(ctx, tuple, &to)?;
    Ok(to)
}

/// Writes `to`'s addresses and ports over `from`'s, and the checksums (see `csum.rs`). A later
/// fragment has no L4 header: only its addresses and IP checksum change (its first fragment's
/// L4 checksum accounted for the whole datagram's pseudo-header and ports).
#[inline(always)]
pub fn rewrite(ctx: &TcContext, from: &Tuple4, to: &Tuple4) -> Result<(), Dropped> {
    let mut addrs = csum::Diff::default();
    addrs.addr(from.saddr, to.saddr);
    addrs.addr(from.daddr, to.daddr);
    let Some(ip_csum) = load_u16(ctx, IP_CSUM_OFF) else {
        return Err(dropped!(DropReason::WriteError));
    };
    // Direct writes first, the IP checksum among them: every pointer is derived (and
    // bounds-checked) here, before any helper call invalidates them.
    let written = store_u32(ctx, IP_SADDR_OFF, to.saddr)
        .and_then(|()| store_u32(ctx, IP_DADDR_OFF, to.daddr))
        .and_then(|()| store_u16(ctx, IP_CSUM_OFF, csum::ip_header_after(ip_csum, &addrs)));
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
    let mut ports = csum::Diff::default();
    ports.word(from.sport, to.sport);
    ports.word(from.dport, to.dport);
    csum::update_l4(ctx, from, &addrs, &ports)
}
