//! Conntrack: lookup, create, refresh and lifetimes of the entries in `LB4_CT_TCP` and
//! `LB4_CT_ANY` (the only module that touches them; TCP flows live in the first, everything
//! else in the second). Imports nothing from `nat.rs`: NAT uses conntrack, never the reverse.
//!
//! Each translated flow has a *service* entry (`CtService`), keyed by the tuple the client
//! sent, that pins its backend (and, after SNAT, its source mapping), and a *reply* entry
//! (`CtReply`), keyed by the tuple of the backend's replies as they arrive here, that says what
//! to restore. The key carries no direction: one lookup finds either, and the value's `kind`
//! says which it is.
//!
//! Lifetimes: every entry carries `expires` in a coarse clock (seconds from `bpf_jiffies64`,
//! see [`now`]); an entry that has expired is treated as absent, and the agent's GC deletes
//! it. A packet moves `expires` forward by its state's lifetime (`DatapathConfig::lifetimes`),
//! and the entry is written only when that changes something (once a second at most for a
//! busy flow). TCP state: both entries take the SYN lifetime until the handshake is done (a
//! reply was seen, then a client packet other than a SYN), then the long ones; a FIN or RST
//! shortens both to the closing lifetimes; a new SYN on a closing flow reopens it. A state
//! change is written to the flow's other entry too (one more lookup, once per change).
//!
//! Creation fails closed with 155: a flow whose replies could not be translated back must not
//! start. New entries are inserted with `BPF_NOEXIST`; when another CPU created the same flow
//! first, the packet follows its choice.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::bpf_jiffies64,
    maps::LruHashMap,
};
use lb_common::{
    config::DatapathConfig,
    conntrack::{
        CT_F_CLOSING, CT_F_ESTABLISHED, CT_F_FROM_NETDEV, CT_F_NODE_PORT, CT_F_SEEN_REPLY,
        CT_F_SNAT, CT_REPLY, CT_SERVICE, CtEntry, CtKey4, CtReply, CtService,
    },
    drop::{DropReason, Hook, SourceFile},
    event::tcp_flags,
    proto,
    service::SERVICE_F_NODE_PORT,
};

use crate::{
    drop::{Dropped, dropped},
    filter,
    lb::{Chosen, Frontend},
    maps::{LB4_CT_ANY, LB4_CT_TCP},
    parse::Tuple4,
};

const FILE: SourceFile = SourceFile::Conntrack;

/// The source an SNATed flow is rewritten to: the node's address and a port claimed with
/// [`reserve_reply`]; both in network byte order.
#[derive(Clone, Copy)]
pub struct SnatSource {
    /// The node address.
    pub addr: u32,
    /// The allocated port.
    pub port: u16,
}

/// What the one conntrack lookup of a packet found.
pub enum Hit {
    /// A backend's reply to a tracked flow (already refreshed).
    Reply(CtReply),
    /// A client's packet of a tracked flow; [`refresh`] it once it is used.
    Service(Tracked),
}

/// A live service entry, and where it is in its map.
pub struct Tracked {
    entry: *mut CtEntry,
    /// Its content when it was looked up.
    pub flow: CtService,
    /// The clock when it was looked up.
    now: u32,
}

impl Tracked {
    /// Whether the flow's frontend and backend were found in place at `generation` (the
    /// current one, `lb::generation`): nothing that could take them away was written since, so
    /// they need not be looked up again. Never at generation 0 (none written yet).
    #[inline(always)]
    pub fn checked_at(&self, generation: u32) -> bool {
        generation != 0 && self.flow.generation == generation
    }

    /// Records that the flow's frontend and backend were found in place at `generation`,
    /// read before they were looked up. Written only when it changes: once per flow and
    /// generation. Two CPUs racing write generations that were both current when read; a
    /// stale one only costs a later packet the lookups again.
    #[inline(always)]
    pub fn mark_checked(&self, generation: u32) {
        if generation != self.flow.generation {
            // SAFETY: a valid map value pointer to a service entry.
            unsafe { (*self.entry).service.generation = generation };
        }
    }
}

/// The map that tracks flows of protocol `proto`.
#[inline(always)]
fn map(proto: u8) -> &'static LruHashMap<CtKey4, CtEntry> {
    if proto == proto::TCP {
        &LB4_CT_TCP
    } else {
        &LB4_CT_ANY
    }
}

/// The entry under `key` in the map of protocol `proto`. Each map is looked up at a call site
/// of its own: with the map a constant there, the verifier inlines the lookup (one helper
/// call through the map's ops less per packet).
#[inline(always)]
fn entry_ptr(proto: u8, key: &CtKey4) -> Option<*mut CtEntry> {
    if proto == proto::TCP {
        LB4_CT_TCP.get_ptr_mut(key)
    } else {
        LB4_CT_ANY.get_ptr_mut(key)
    }
}

/// The datapath's clock in seconds: `bpf_jiffies64` scaled by `clock_mult` (2^32 / HZ), plus
/// `clock_offset`. Jiffies are the cheapest clock a program can read, and seconds are as fine
/// as lifetimes need.
#[inline(always)]
pub fn now(config: &DatapathConfig) -> u32 {
    // SAFETY: a helper without arguments.
    let jiffies = unsafe { bpf_jiffies64() };
    let seconds = (jiffies.wrapping_mul(u64::from(config.clock_mult)) >> 32) as u32;
    seconds.wrapping_add(config.clock_offset)
}

/// The conntrack key of the packet's own tuple.
#[inline(always)]
fn key(tuple: &Tuple4) -> CtKey4 {
    reply_key(
        tuple.saddr,
        tuple.daddr,
        tuple.sport,
        tuple.dport,
        tuple.proto,
    )
}

/// The key of packets from `saddr:sport` to `daddr:dport`.
#[inline(always)]
pub fn reply_key(saddr: u32, daddr: u32, sport: u16, dport: u16, proto: u8) -> CtKey4 {
    CtKey4 {
        saddr,
        daddr,
        sport,
        dport,
        proto,
        _pad: 0,
        _pad2: 0,
    }
}

/// Looks the packet's tuple up once: a live reply entry (refreshed now) or a live service
/// entry; `None` when the flow is not tracked or its entry has expired (a new flow then). The
/// clock is read only on a hit: traffic that is no flow of lb's does not pay for it.
#[inline(always)]
pub fn lookup(tuple: &Tuple4, config: &DatapathConfig) -> Option<Hit> {
    let entry = entry_ptr(tuple.proto, &key(tuple))?;
    let now = now(config);
    // SAFETY: a valid map value pointer; every bit pattern is a valid `CtEntry`.
    let value = unsafe { *entry };
    if value.expires() <= now {
        return None;
    }
    match value.kind() {
        CT_REPLY => {
            let reply = value.reply();
            let flags = reply_flags(reply.flags, tuple);
            update(
                entry,
                CT_REPLY,
                reply.expires,
                reply.flags,
                flags,
                tuple,
                config,
                now,
            );
            if flags != reply.flags {
                let service = reply_key(
                    reply.client_addr,
                    reply.vip,
                    reply.client_port,
                    reply.vip_port,
                    tuple.proto,
                );
                mark_other(&service, flags, tuple.proto, config, now);
            }
            Some(Hit::Reply(reply))
        }
        CT_SERVICE => Some(Hit::Service(Tracked {
            entry,
            flow: value.service(),
            now,
        })),
        _ => None,
    }
}

/// A reply entry's flags after the backend's packet `tuple`.
#[inline(always)]
fn reply_flags(flags: u16, tuple: &Tuple4) -> u16 {
    let mut flags = flags | CT_F_SEEN_REPLY;
    if tuple.is_closing() {
        flags |= CT_F_CLOSING;
    }
    flags
}

/// A service entry's flags after the client's packet `tuple`.
#[inline(always)]
fn service_flags(flags: u16, tuple: &Tuple4) -> u16 {
    if tuple.is_syn() && flags & CT_F_CLOSING != 0 {
        // The client reuses its source port for a new connection: start over.
        return flags & !(CT_F_CLOSING | CT_F_ESTABLISHED | CT_F_SEEN_REPLY);
    }
    let mut flags = flags;
    if tuple.is_closing() {
        flags |= CT_F_CLOSING;
    }
    if flags & CT_F_SEEN_REPLY != 0 && tuple.tcp_flags & tcp_flags::SYN == 0 {
        flags |= CT_F_ESTABLISHED;
    }
    flags
}

/// Moves a service entry's expiry forward for the client's packet `tuple` (and its state, for
/// TCP), now that the flow goes on with it.
#[inline(always)]
pub fn refresh(tracked: &Tracked, tuple: &Tuple4, config: &DatapathConfig) {
    let flow = &tracked.flow;
    let now = tracked.now;
    let flags = service_flags(flow.flags, tuple);
    update(
        tracked.entry,
        CT_SERVICE,
        flow.expires,
        flow.flags,
        flags,
        tuple,
        config,
        now,
    );
    if flags != flow.flags {
        mark_other(&reply_key_of(flow, tuple), flags, tuple.proto, config, now);
    }
}

/// The key of the reply entry of the flow `tuple` belongs to: backend → client, or backend →
/// the address and port the flow was SNATed to.
#[inline(always)]
fn reply_key_of(flow: &CtService, tuple: &Tuple4) -> CtKey4 {
    let (addr, port) = if flow.flags & CT_F_SNAT != 0 {
        (flow.snat_addr, flow.snat_port)
    } else {
        (tuple.saddr, tuple.sport)
    };
    reply_key(
        flow.backend_addr,
        addr,
        flow.backend_port,
        port,
        tuple.proto,
    )
}

/// Writes an entry's new flags and expiry, if either changed.
#[expect(
    clippy::too_many_arguments,
    reason = "inlined; the values are already in registers"
)]
#[inline(always)]
fn update(
    entry: *mut CtEntry,
    kind: u8,
    expires: u32,
    flags: u16,
    new_flags: u16,
    tuple: &Tuple4,
    config: &DatapathConfig,
    now: u32,
) {
    let new_expires = now.wrapping_add(config.lifetimes.of(kind, tuple.proto, new_flags));
    if new_expires != expires || new_flags != flags {
        // SAFETY: a valid map value pointer; both members share the header. Two CPUs
        // refreshing one flow race benignly: both write a recent expiry and the flags of a
        // packet of this flow.
        unsafe {
            (*entry).service.expires = new_expires;
            (*entry).service.flags = new_flags;
        }
    }
}

/// The flow's state (`CT_F_SEEN_REPLY`, `CT_F_ESTABLISHED`, `CT_F_CLOSING`) as just changed in
/// one of its entries, written to the other one (`key`), with its expiry to match.
#[inline(always)]
fn mark_other(key: &CtKey4, flags: u16, proto: u8, config: &DatapathConfig, now: u32) {
    const STATE: u16 = CT_F_SEEN_REPLY | CT_F_ESTABLISHED | CT_F_CLOSING;
    let Some(entry) = entry_ptr(proto, key) else {
        return;
    };
    // SAFETY: a valid map value pointer; both members share the header.
    unsafe {
        let value = *entry;
        if value.expires() <= now {
            return;
        }
        let new_flags = (value.flags() & !STATE) | (flags & STATE);
        (*entry).service.flags = new_flags;
        (*entry).service.expires =
            now.wrapping_add(config.lifetimes.of(value.kind(), proto, new_flags));
    }
}

/// The reply entry of a new SNATed flow from outside (`tuple`) to `chosen`: it restores the
/// VIP as the source and the client as the destination.
#[inline(always)]
pub fn snat_reply(
    tuple: &Tuple4,
    frontend: &Frontend,
    chosen: &Chosen,
    config: &DatapathConfig,
    now: u32,
) -> CtReply {
    let flags = CT_F_SNAT | CT_F_FROM_NETDEV | node_port_flag(frontend);
    CtReply {
        expires: now.wrapping_add(config.lifetimes.of(CT_REPLY, tuple.proto, flags)),
        kind: CT_REPLY,
        _pad: 0,
        flags,
        backend_id: chosen.id,
        rev_nat: frontend.entry.rev_nat,
        vip_port: frontend.port,
        vip: frontend.vip,
        client_addr: tuple.saddr,
        client_port: tuple.sport,
        _pad3: 0,
    }
}

/// `CT_F_NODE_PORT` when `frontend` is a node port, else 0.
#[inline(always)]
fn node_port_flag(frontend: &Frontend) -> u16 {
    if frontend.entry.flags & SERVICE_F_NODE_PORT != 0 {
        CT_F_NODE_PORT
    } else {
        0
    }
}

/// Inserts a reply entry only if its key is free: how an SNAT source port is claimed.
#[inline(always)]
pub fn reserve_reply(key: &CtKey4, reply: CtReply) -> bool {
    filter::mark_reply_source(key.saddr, key.sport, key.proto);
    map(key.proto)
        .insert(key, CtEntry::from(reply), u64::from(BPF_NOEXIST))
        .is_ok()
}

/// The service entry of a new flow `tuple` from `hook` to `chosen`, SNATed to `snat` if given;
/// `frontend` and `chosen` were found in place at `generation`.
#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "inlined; the values are already in registers"
)]
pub fn service_entry(
    tuple: &Tuple4,
    frontend: &Frontend,
    chosen: &Chosen,
    hook: Hook,
    snat: Option<SnatSource>,
    config: &DatapathConfig,
    now: u32,
    generation: u32,
) -> CtService {
    let mut flags = if hook == Hook::FromNetdev {
        CT_F_FROM_NETDEV
    } else {
        0
    };
    flags |= node_port_flag(frontend);
    let SnatSource { addr, port } = match snat {
        Some(snat) => {
            flags |= CT_F_SNAT;
            snat
        }
        None => SnatSource { addr: 0, port: 0 },
    };
    CtService {
        expires: now.wrapping_add(config.lifetimes.of(CT_SERVICE, tuple.proto, flags)),
        kind: CT_SERVICE,
        _pad: 0,
        flags,
        backend_id: chosen.id,
        rev_nat: frontend.entry.rev_nat,
        snat_port: port,
        snat_addr: addr,
        backend_addr: chosen.backend.addr,
        backend_port: chosen.backend.port,
        generation,
    }
}

/// Records a new flow and returns the service entry its packets follow.
///
/// The service entry is inserted with `BPF_NOEXIST`. If its key is taken by a live entry whose
/// backend the packet may still use (`usable`), another CPU created this flow first: the
/// packet follows that entry, and what this one claimed is released. Otherwise the entry there
/// is expired or stale (its backend is gone) and `flow` replaces it.
///
/// An SNATed flow's reply entry was already claimed by `reserve_reply` (`reserved`). Otherwise
/// the reply entry, keyed by backend → client, is inserted with `BPF_NOEXIST` too; if a live
/// entry of another flow holds that key (the same client and source port talking to two VIPs
/// that share this backend: the backend would see one connection), the new flow is refused
/// rather than having its replies translated to the other VIP. 155 then, or when an insertion
/// fails, and nothing is left behind.
#[inline(always)]
pub fn create(
    tuple: &Tuple4,
    flow: &CtService,
    reserved: Option<&CtKey4>,
    config: &DatapathConfig,
    now: u32,
    usable: impl Fn(&CtService) -> bool,
) -> Result<CtService, Dropped> {
    let map = map(tuple.proto);
    let service_key = key(tuple);
    let release = || {
        if let Some(reply_key) = reserved {
            let _ = map.remove(reply_key);
        }
    };
    if map
        .insert(service_key, CtEntry::from(*flow), u64::from(BPF_NOEXIST))
        .is_err()
    {
        // SAFETY: copied out at once.
        let existing = unsafe { map.get(service_key) }.copied();
        if let Some(existing) = existing
            && existing.kind() == CT_SERVICE
            && existing.expires() > now
            && usable(&existing.service())
        {
            release();
            return Ok(existing.service());
        }
        if map
            .insert(service_key, CtEntry::from(*flow), u64::from(BPF_ANY))
            .is_err()
        {
            release();
            return Err(dropped!(DropReason::CtCreateFailed));
        }
    }
    if reserved.is_some() {
        return Ok(*flow);
    }
    // Not SNATed (an SNATed flow's reply entry is `reserved`): backend → client.
    let reply_key = reply_key_of(flow, tuple);
    let flags = flow.flags & (CT_F_FROM_NETDEV | CT_F_NODE_PORT);
    let reply = CtReply {
        expires: now.wrapping_add(config.lifetimes.of(CT_REPLY, tuple.proto, flags)),
        kind: CT_REPLY,
        _pad: 0,
        flags,
        backend_id: flow.backend_id,
        rev_nat: flow.rev_nat,
        vip_port: tuple.dport,
        vip: tuple.daddr,
        client_addr: tuple.saddr,
        client_port: tuple.sport,
        _pad3: 0,
    };
    filter::mark_reply_source(reply_key.saddr, reply_key.sport, reply_key.proto);
    if map
        .insert(reply_key, CtEntry::from(reply), u64::from(BPF_NOEXIST))
        .is_ok()
    {
        return Ok(*flow);
    }
    // SAFETY: copied out at once.
    let existing = unsafe { map.get(reply_key) }.copied();
    let replaceable = existing.is_none_or(|entry| {
        let other = entry.reply();
        entry.expires() <= now
            || (entry.kind() == CT_REPLY
                && other.client_addr == reply.client_addr
                && other.client_port == reply.client_port
                && other.vip == reply.vip
                && other.vip_port == reply.vip_port)
    });
    if !replaceable
        || map
            .insert(reply_key, CtEntry::from(reply), u64::from(BPF_ANY))
            .is_err()
    {
        let _ = map.remove(service_key);
        return Err(dropped!(DropReason::CtCreateFailed));
    }
    Ok(*flow)
}
