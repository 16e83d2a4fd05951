//! Conntrack of IPv6 flows: `conntrack.rs` for `LB6_CT_TCP` and `LB6_CT_ANY` (the only module
//! that touches them), with the same entries (a service entry keyed by the client's tuple, a
//! reply entry keyed by the backend's), the same clock, lifetimes, TCP state flags and
//! creation rules (`BPF_NOEXIST`; another CPU's live entry is followed; 155 when the flow's
//! replies could not be translated back). SNAT ports are claimed by inserting the reply entry
//! with `BPF_NOEXIST` ([`reserve_reply`]), as for IPv4.
//!
//! Stack: the IPv6 path shares its frame with the IPv4 path's, so entries are not copied out
//! of the maps (hits are pointers to the map values) and a new flow's keys and entries are
//! built in the per-CPU `LB6_SCRATCH` ([`scratch`]) rather than on the stack.

// Keys and values are passed to the map helpers by reference on purpose: by value they would
// be copied out of `LB6_SCRATCH` onto the stack, which is what the scratch space avoids.
#![expect(
    clippy::needless_borrows_for_generic_args,
    reason = "keys and values stay in LB6_SCRATCH"
)]

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    maps::LruHashMap,
};
use lb_common::{
    Addr6,
    config::DatapathConfig,
    conntrack::{
        CT_F_CLOSING, CT_F_ESTABLISHED, CT_F_FROM_NETDEV, CT_F_NODE_PORT, CT_F_SEEN_REPLY,
        CT_F_SNAT, CT_REPLY, CT_SERVICE, CtEntry6, CtKey6, CtReply6, CtService6,
    },
    drop::{DropReason, Hook, SourceFile},
    event::tcp_flags,
    proto,
    service::SERVICE_F_NODE_PORT,
};

use crate::{
    conntrack::now,
    drop::{Dropped, dropped},
    filter,
    lb6::{Chosen6, Frontend6},
    maps::{Ct6Scratch, LB6_CT_ANY, LB6_CT_TCP, LB6_SCRATCH},
    parse6::Tuple6,
};

const FILE: SourceFile = SourceFile::Conntrack6;

/// What the one conntrack lookup of an IPv6 packet found.
pub enum Hit6 {
    /// A backend's reply to a tracked flow (already refreshed): its entry, in the map.
    Reply(*const CtReply6),
    /// A client's packet of a tracked flow; [`refresh`] it once it is used.
    Service(Tracked6),
}

/// A live service entry, in its map.
pub struct Tracked6 {
    entry: *mut CtEntry6,
    now: u32,
}

impl Tracked6 {
    /// The entry (in the map).
    #[inline(always)]
    pub fn flow(&self) -> &CtService6 {
        // SAFETY: a valid map value pointer; every bit pattern is a valid `CtService6`.
        unsafe { &(*self.entry).service }
    }

    /// Whether the flow's frontend and backend were found in place at `generation` (see
    /// `conntrack::Tracked::checked_at`). Never at generation 0.
    #[inline(always)]
    pub fn checked_at(&self, generation: u32) -> bool {
        generation != 0 && self.flow().generation == generation
    }

    /// Records that the flow's frontend and backend were found in place at `generation`;
    /// written only when it changes (races as in `conntrack::Tracked::mark_checked`).
    #[inline(always)]
    pub fn mark_checked(&self, generation: u32) {
        if generation != self.flow().generation {
            // SAFETY: a valid map value pointer to a service entry.
            unsafe { (*self.entry).service.generation = generation };
        }
    }
}

/// The scratch space of a new flow (see the module's doc).
#[inline(always)]
pub fn scratch() -> Option<&'static mut Ct6Scratch> {
    // SAFETY: a per-CPU value, used by one program run at a time on this CPU.
    LB6_SCRATCH.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

#[inline(always)]
fn map(proto: u8) -> &'static LruHashMap<CtKey6, CtEntry6> {
    if proto == proto::TCP {
        &LB6_CT_TCP
    } else {
        &LB6_CT_ANY
    }
}

/// The entry under `key`, each map looked up at a call site of its own (see `conntrack.rs`).
#[inline(always)]
fn entry_ptr(proto: u8, key: &CtKey6) -> Option<*mut CtEntry6> {
    if proto == proto::TCP {
        LB6_CT_TCP.get_ptr_mut(key)
    } else {
        LB6_CT_ANY.get_ptr_mut(key)
    }
}

/// The key of packets from `saddr:sport` to `daddr:dport`.
#[inline(always)]
pub fn reply_key(saddr: &Addr6, daddr: &Addr6, sport: u16, dport: u16, proto: u8) -> CtKey6 {
    CtKey6 {
        saddr: *saddr,
        daddr: *daddr,
        sport,
        dport,
        proto,
        _pad: 0,
        _pad2: 0,
    }
}

#[inline(always)]
fn key(tuple: &Tuple6) -> CtKey6 {
    reply_key(
        &tuple.saddr,
        &tuple.daddr,
        tuple.sport,
        tuple.dport,
        tuple.proto,
    )
}

/// Looks the packet's tuple up once: a live reply entry (refreshed now) or a live service
/// entry; `None` when the flow is not tracked or its entry expired.
#[inline(always)]
pub fn lookup(tuple: &Tuple6, config: &DatapathConfig, scratch: &mut Ct6Scratch) -> Option<Hit6> {
    scratch.key = key(tuple);
    let entry = entry_ptr(tuple.proto, &scratch.key)?;
    let now = now(config);
    // SAFETY: a valid map value pointer; both members share the header.
    let (expires, kind, flags) = unsafe {
        let header = &(*entry).service;
        (header.expires, header.kind, header.flags)
    };
    if expires <= now {
        return None;
    }
    match kind {
        CT_REPLY => {
            let mut new_flags = flags | CT_F_SEEN_REPLY;
            if tuple.is_closing() {
                new_flags |= CT_F_CLOSING;
            }
            update(
                entry, CT_REPLY, expires, flags, new_flags, tuple, config, now,
            );
            // SAFETY: a valid map value pointer.
            let reply = unsafe { &(*entry).reply };
            if new_flags != flags {
                scratch.key = reply_key(
                    &reply.client_addr,
                    &reply.vip,
                    reply.client_port,
                    reply.vip_port,
                    tuple.proto,
                );
                mark_other(&scratch.key, new_flags, tuple.proto, config, now);
            }
            Some(Hit6::Reply(reply))
        }
        CT_SERVICE => Some(Hit6::Service(Tracked6 { entry, now })),
        _ => None,
    }
}

/// The live entry under `key`, left as it is: how an ICMPv6 error finds the flow it is about
/// (an error is no packet of the flow, so it neither refreshes it nor changes its state).
#[inline(always)]
pub fn peek(key: &CtKey6, config: &DatapathConfig) -> Option<*const CtEntry6> {
    let entry = entry_ptr(key.proto, key)?;
    // SAFETY: a valid map value pointer; both members share the header.
    let expires = unsafe { (*entry).service.expires };
    if expires <= now(config) {
        return None;
    }
    Some(entry)
}

/// A service entry's flags after the client's packet `tuple`.
#[inline(always)]
fn service_flags(flags: u16, tuple: &Tuple6) -> u16 {
    if tuple.is_syn() && flags & CT_F_CLOSING != 0 {
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

/// Moves a service entry's expiry (and TCP state) forward for the client's packet `tuple`.
#[inline(always)]
pub fn refresh(
    tracked: &Tracked6,
    tuple: &Tuple6,
    config: &DatapathConfig,
    scratch: &mut Ct6Scratch,
) {
    let flow = tracked.flow();
    let (expires, flags) = (flow.expires, flow.flags);
    let new_flags = service_flags(flags, tuple);
    update(
        tracked.entry,
        CT_SERVICE,
        expires,
        flags,
        new_flags,
        tuple,
        config,
        tracked.now,
    );
    if new_flags != flags {
        scratch.reply_key = reply_key_of(tracked.flow(), tuple);
        mark_other(
            &scratch.reply_key,
            new_flags,
            tuple.proto,
            config,
            tracked.now,
        );
    }
}

/// The key of the reply entry of the flow `tuple` belongs to.
#[inline(always)]
fn reply_key_of(flow: &CtService6, tuple: &Tuple6) -> CtKey6 {
    let (addr, port) = if flow.flags & CT_F_SNAT != 0 {
        (&flow.snat_addr, flow.snat_port)
    } else {
        (&tuple.saddr, tuple.sport)
    };
    reply_key(
        &flow.backend_addr,
        addr,
        flow.backend_port,
        port,
        tuple.proto,
    )
}

#[expect(
    clippy::too_many_arguments,
    reason = "inlined; the values are already in registers"
)]
#[inline(always)]
fn update(
    entry: *mut CtEntry6,
    kind: u8,
    expires: u32,
    flags: u16,
    new_flags: u16,
    tuple: &Tuple6,
    config: &DatapathConfig,
    now: u32,
) {
    let new_expires = now.wrapping_add(config.lifetimes.of(kind, tuple.proto, new_flags));
    if new_expires != expires || new_flags != flags {
        // SAFETY: a valid map value pointer; both members share the header (benign races, as
        // in `conntrack.rs`).
        unsafe {
            (*entry).service.expires = new_expires;
            (*entry).service.flags = new_flags;
        }
    }
}

/// The flow's state as just changed in one entry, written to the other (`key`).
#[inline(always)]
fn mark_other(key: &CtKey6, flags: u16, proto: u8, config: &DatapathConfig, now: u32) {
    const STATE: u16 = CT_F_SEEN_REPLY | CT_F_ESTABLISHED | CT_F_CLOSING;
    let Some(entry) = entry_ptr(proto, key) else {
        return;
    };
    // SAFETY: a valid map value pointer; both members share the header.
    unsafe {
        let header = &mut (*entry).service;
        if header.expires <= now {
            return;
        }
        let new_flags = (header.flags & !STATE) | (flags & STATE);
        header.flags = new_flags;
        header.expires = now.wrapping_add(config.lifetimes.of(header.kind, proto, new_flags));
    }
}

#[inline(always)]
fn node_port_flag(frontend: &Frontend6) -> u16 {
    if frontend.entry.flags & SERVICE_F_NODE_PORT != 0 {
        CT_F_NODE_PORT
    } else {
        0
    }
}

/// Writes the reply entry of a new SNATed flow from outside (`tuple`) to `chosen` into
/// `scratch.reply`; [`reserve_reply`] then claims it under `scratch.reply_key`.
#[inline(always)]
pub fn snat_reply(
    scratch: &mut Ct6Scratch,
    tuple: &Tuple6,
    frontend: &Frontend6,
    chosen: &Chosen6,
    config: &DatapathConfig,
    now: u32,
) {
    let flags = CT_F_SNAT | CT_F_FROM_NETDEV | node_port_flag(frontend);
    scratch.reply = CtEntry6::from(CtReply6 {
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
    });
}

/// Inserts `scratch.reply` under `scratch.reply_key` only if that key is free: how an SNAT
/// source port is claimed.
#[inline(always)]
pub fn reserve_reply(scratch: &Ct6Scratch) -> bool {
    let key = &scratch.reply_key;
    filter::mark_reply_source6(&key.saddr, key.sport, key.proto);
    map(scratch.reply_key.proto)
        .insert(&scratch.reply_key, &scratch.reply, u64::from(BPF_NOEXIST))
        .is_ok()
}

/// Writes the service entry of a new flow `tuple` from `hook` to `chosen` (SNATed to
/// `snat`, if given) and its key into `scratch`; `frontend` and `chosen` were found in place
/// at `generation`.
#[expect(
    clippy::too_many_arguments,
    reason = "inlined; the values are already in registers"
)]
#[inline(always)]
pub fn service_entry(
    scratch: &mut Ct6Scratch,
    tuple: &Tuple6,
    frontend: &Frontend6,
    chosen: &Chosen6,
    hook: Hook,
    snat: Option<(&Addr6, u16)>,
    config: &DatapathConfig,
    now: u32,
    generation: u32,
) {
    let mut flags = if hook == Hook::FromNetdev {
        CT_F_FROM_NETDEV
    } else {
        0
    };
    flags |= node_port_flag(frontend);
    let (snat_addr, snat_port) = match snat {
        Some((addr, port)) => {
            flags |= CT_F_SNAT;
            (*addr, port)
        }
        None => ([0; 4], 0),
    };
    scratch.key = key(tuple);
    scratch.service = CtEntry6::from(CtService6 {
        expires: now.wrapping_add(config.lifetimes.of(CT_SERVICE, tuple.proto, flags)),
        kind: CT_SERVICE,
        _pad: 0,
        flags,
        backend_id: chosen.id,
        rev_nat: frontend.entry.rev_nat,
        snat_port,
        snat_addr,
        backend_addr: chosen.backend.addr,
        backend_port: chosen.backend.port,
        generation,
    });
}

/// Records the new flow in `scratch` (its reply entry already claimed when `reserved`) and
/// returns the service entry its packets follow: `scratch.service`, or another CPU's live
/// entry for the same flow. See `conntrack::create`: the same rules, 155 the same way.
#[inline(always)]
pub fn create<'a>(
    tuple: &Tuple6,
    scratch: &'a mut Ct6Scratch,
    reserved: bool,
    now: u32,
    usable: impl Fn(&CtService6) -> bool,
    config: &DatapathConfig,
) -> Result<&'a CtService6, Dropped> {
    let map = map(tuple.proto);
    if map
        .insert(&scratch.key, &scratch.service, u64::from(BPF_NOEXIST))
        .is_err()
    {
        if let Some(existing) = map.get_ptr(&scratch.key) {
            // SAFETY: a valid map value pointer; every bit pattern is a valid `CtService6`.
            let existing = unsafe { &(*existing).service };
            if existing.kind == CT_SERVICE && existing.expires > now && usable(existing) {
                if reserved {
                    let _ = map.remove(&scratch.reply_key);
                }
                return Ok(existing);
            }
        }
        if map
            .insert(&scratch.key, &scratch.service, u64::from(BPF_ANY))
            .is_err()
        {
            if reserved {
                let _ = map.remove(&scratch.reply_key);
            }
            return Err(dropped!(DropReason::CtCreateFailed));
        }
    }
    // SAFETY: written by `service_entry`.
    let flow = unsafe { &scratch.service.service };
    if reserved {
        return Ok(flow);
    }
    scratch.reply_key = reply_key_of(flow, tuple);
    let flags = flow.flags & (CT_F_FROM_NETDEV | CT_F_NODE_PORT);
    scratch.reply = CtEntry6::from(CtReply6 {
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
    });
    let key = &scratch.reply_key;
    filter::mark_reply_source6(&key.saddr, key.sport, key.proto);
    if map
        .insert(&scratch.reply_key, &scratch.reply, u64::from(BPF_NOEXIST))
        .is_ok()
    {
        // SAFETY: as above.
        return Ok(unsafe { &scratch.service.service });
    }
    let replaceable = match map.get_ptr(&scratch.reply_key) {
        None => true,
        Some(existing) => {
            // SAFETY: a valid map value pointer; every bit pattern is a valid `CtReply6`.
            let other = unsafe { &(*existing).reply };
            other.expires <= now
                || (other.kind == CT_REPLY
                    && other.client_addr == tuple.saddr
                    && other.client_port == tuple.sport
                    && other.vip == tuple.daddr
                    && other.vip_port == tuple.dport)
        }
    };
    if !replaceable
        || map
            .insert(&scratch.reply_key, &scratch.reply, u64::from(BPF_ANY))
            .is_err()
    {
        let _ = map.remove(&scratch.key);
        return Err(dropped!(DropReason::CtCreateFailed));
    }
    // SAFETY: as above.
    Ok(unsafe { &scratch.service.service })
}
