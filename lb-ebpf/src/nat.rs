//! Address translation: DNAT (client → VIP becomes client → backend), SNAT of flows from
//! outside to remote backends (source → node address and an allocated port), and their
//! reversal on replies.
//!
//! Maps: none of its own. Replies are restored from their conntrack entry, which records the
//! VIP and port (`LB4_REVNAT`, still written by the agent, is not read on the packet path);
//! SNAT ports are claimed through `conntrack::reserve_reply`. Addresses and ports are written with direct packet
//! access, all of them before the checksum helpers run (which invalidate packet pointers).
//! Returns the packet's new tuple; drops with 167 when no SNAT port is free and 141 when the
//! packet cannot be written.

use aya_ebpf::{helpers::bpf_get_prandom_u32, programs::TcContext};
use lb_common::{
    config::DatapathConfig,
    conntrack::{CT_F_SNAT, CtKey4, CtReply, CtService},
    drop::{DropReason, SourceFile},
};

use crate::{
    conntrack::{self, SnatSource},
    csum,
    drop::{Dropped, dropped},
    lb::{Chosen, Frontend},
    parse::{IP_DADDR_OFF, IP_SADDR_OFF, Tuple4, store_u16, store_u32},
};

const FILE: SourceFile = SourceFile::Nat;

/// How many random ports to try before giving up with 167. Each try is one hash insert; with
/// the table a quarter full, 8 tries all fail with probability (1/4)^8 ≈ 2e-5.
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
/// remote backend, by inserting its reply entry (backend → node:port) if that key is free.
#[inline(always)]
pub fn select_snat_port(
    tuple: &Tuple4,
    frontend: &Frontend,
    chosen: &Chosen,
    config: &DatapathConfig,
    now: u32,
) -> Result<Snat, Dropped> {
    let min = u32::from(config.snat_port_min);
    let Some(span) = u32::from(config.snat_port_max)
        .checked_sub(min)
        .map(|s| s + 1)
    else {
        return Err(dropped!(DropReason::NatNoMapping));
    };
    let reply = conntrack::snat_reply(tuple, frontend, chosen, config, now);
    for _ in 0..SNAT_TRIES {
        // SAFETY: a helper without arguments.
        let offset = unsafe { bpf_get_prandom_u32() }
            .checked_rem(span)
            .unwrap_or(0);
        let port = ((min + offset) as u16).to_be();
        let key = conntrack::reply_key(
            chosen.backend.addr,
            config.node_addr,
            chosen.backend.port,
            port,
            tuple.proto,
        );
        if conntrack::reserve_reply(&key, reply) {
            return Ok(Snat {
                source: SnatSource {
                    addr: config.node_addr,
                    port,
                },
                reply_key: key,
            });
        }
    }
    Err(dropped!(DropReason::NatNoMapping))
}

/// Rewrites the packet of the client flow `tuple` for its conntrack entry `flow`: destination
/// → backend, and source → node:port when the flow is SNATed. Returns the new tuple.
#[inline(always)]
pub fn dnat(ctx: &TcContext, tuple: &Tuple4, flow: &CtService) -> Result<Tuple4, Dropped> {
    let mut to = *tuple;
    to.daddr = flow.backend_addr;
    to.dport = flow.backend_port;
    if flow.flags & CT_F_SNAT != 0 {
        to.saddr = flow.snat_addr;
        to.sport = flow.snat_port;
    }
    rewrite(ctx, tuple, &to)?;
    Ok(to)
}

/// Rewrites a backend's reply `tuple` for its reply entry: source → VIP:port, and destination
/// → the original client when the flow was SNATed. Returns the new tuple.
#[inline(always)]
pub fn rev_nat(ctx: &TcContext, tuple: &Tuple4, reply: &CtReply) -> Result<Tuple4, Dropped> {
    let mut to = *tuple;
    to.saddr = reply.vip;
    to.sport = reply.vip_port;
    if reply.flags & CT_F_SNAT != 0 {
        to.daddr = reply.client_addr;
        to.dport = reply.client_port;
    }
    rewrite(ctx, tuple, &to)?;
    Ok(to)
}

/// Writes `to`'s addresses and ports over `from`'s, then fixes the checksums.
#[inline(always)]
fn rewrite(ctx: &TcContext, from: &Tuple4, to: &Tuple4) -> Result<(), Dropped> {
    let l4 = usize::from(from.l4_off);
    // Direct writes first: every pointer is derived (and bounds-checked) here, before any
    // helper call invalidates them.
    let written = store_u32(ctx, IP_SADDR_OFF, to.saddr)
        .and_then(|()| store_u32(ctx, IP_DADDR_OFF, to.daddr))
        .and_then(|()| store_u16(ctx, l4, to.sport))
        .and_then(|()| store_u16(ctx, l4 + 2, to.dport));
    if written.is_none() {
        return Err(dropped!(DropReason::WriteError));
    }
    if from.saddr != to.saddr {
        csum::update_addr(ctx, from, from.saddr, to.saddr)?;
    }
    if from.daddr != to.daddr {
        csum::update_addr(ctx, from, from.daddr, to.daddr)?;
    }
    if from.sport != to.sport {
        csum::update_port(ctx, from, from.sport, to.sport)?;
    }
    if from.dport != to.dport {
        csum::update_port(ctx, from, from.dport, to.dport)?;
    }
    Ok(())
}
