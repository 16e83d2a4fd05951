//! Conntrack: lookup, create and refresh of the entries in `LB4_CT` (the only module that
//! touches it).
//!
//! Each translated flow has a *service* entry, keyed by the tuple the client sent, that pins
//! its backend (and, after SNAT, its source mapping), and a *reply* entry, keyed by the tuple
//! of the backend's replies as they arrive here, that says what to restore. Lookups refresh
//! `last_seen_ns` and note FIN/RST. Creation fails closed with 155: a flow whose replies could
//! not be translated back must not start.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::bpf_ktime_get_ns,
};
use lb_common::{
    conntrack::{CT_F_CLOSING, CT_F_FROM_NETDEV, CT_F_SNAT, CT_REPLY, CT_SERVICE, CtEntry, CtKey4},
    drop::{DropReason, Hook, SourceFile},
};

use crate::{
    drop::{Dropped, drop},
    lb::{Chosen, Frontend},
    maps::LB4_CT,
    nat::Snat,
    parse::Tuple4,
};

const FILE: SourceFile = SourceFile::Conntrack;

/// The conntrack key of `tuple` as seen in direction `kind`.
#[inline(always)]
pub fn key(tuple: &Tuple4, kind: u8) -> CtKey4 {
    CtKey4 {
        saddr: tuple.saddr,
        daddr: tuple.daddr,
        sport: tuple.sport,
        dport: tuple.dport,
        proto: tuple.proto,
        kind,
        _pad: [0; 2],
    }
}

/// A reply key: the tuple of packets from `saddr:sport` to `daddr:dport`.
#[inline(always)]
pub fn reply_key(saddr: u32, daddr: u32, sport: u16, dport: u16, proto: u8) -> CtKey4 {
    CtKey4 {
        saddr,
        daddr,
        sport,
        dport,
        proto,
        kind: CT_REPLY,
        _pad: [0; 2],
    }
}

/// The monotonic clock conntrack entries are stamped with.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// Looks up `key`, refreshing the entry on a hit.
#[inline(always)]
fn lookup(tuple: &Tuple4, kind: u8) -> Option<CtEntry> {
    let entry = LB4_CT.get_ptr_mut(key(tuple, kind))?;
    // SAFETY: a valid map value pointer. Two CPUs refreshing one flow race benignly: both
    // write a recent timestamp and the closing bit only ever gets set.
    unsafe {
        (*entry).last_seen_ns = now();
        if tuple.is_closing() {
            (*entry).flags |= CT_F_CLOSING;
        }
        Some(*entry)
    }
}

/// The reply entry of the flow `tuple` belongs to, if it is a backend's reply.
#[inline(always)]
pub fn lookup_reply(tuple: &Tuple4) -> Option<CtEntry> {
    lookup(tuple, CT_REPLY)
}

/// The service entry of the client flow `tuple`, if it is established.
#[inline(always)]
pub fn lookup_service(tuple: &Tuple4) -> Option<CtEntry> {
    lookup(tuple, CT_SERVICE)
}

/// Inserts a reply entry only if its key is free: how an SNAT source port is claimed.
#[inline(always)]
pub fn reserve_reply(key: &CtKey4, entry: &CtEntry) -> bool {
    LB4_CT.insert(key, entry, u64::from(BPF_NOEXIST)).is_ok()
}

/// The service entry of a new flow from `hook` to `chosen`, SNATed to `snat` if given.
#[inline(always)]
pub fn service_entry(
    frontend: &Frontend,
    chosen: &Chosen,
    hook: Hook,
    snat: Option<&Snat>,
) -> CtEntry {
    let mut flags = if hook == Hook::FromNetdev {
        CT_F_FROM_NETDEV
    } else {
        0
    };
    let (nat_addr, nat_port) = match snat {
        Some(snat) => {
            flags |= CT_F_SNAT;
            (snat.addr, snat.port)
        }
        None => (0, 0),
    };
    CtEntry {
        last_seen_ns: now(),
        backend_id: chosen.id,
        rev_nat: frontend.entry.rev_nat,
        flags,
        nat_addr,
        nat_port,
        _pad: 0,
        backend_addr: chosen.backend.addr,
        backend_port: chosen.backend.port,
        _pad2: 0,
    }
}

/// Records a new flow: its service entry `flow` (replacing a stale one when a SYN re-selects)
/// and its reply entry. An SNATed flow's reply entry was already claimed by
/// `reserve_reply` (`reserved`) and is released again if the service entry cannot be written;
/// otherwise the reply entry is keyed by backend → client. 155 if an insertion fails, and
/// nothing is left behind then.
#[inline(always)]
pub fn create(tuple: &Tuple4, flow: &CtEntry, reserved: Option<&CtKey4>) -> Result<(), Dropped> {
    let service_key = key(tuple, CT_SERVICE);
    if LB4_CT
        .insert(service_key, flow, u64::from(BPF_ANY))
        .is_err()
    {
        if let Some(reply_key) = reserved {
            let _ = LB4_CT.remove(reply_key);
        }
        return Err(drop!(DropReason::CtCreateFailed));
    }
    if reserved.is_some() {
        return Ok(());
    }
    let reply_key = reply_key(
        flow.backend_addr,
        tuple.saddr,
        flow.backend_port,
        tuple.sport,
        tuple.proto,
    );
    let reply = CtEntry {
        last_seen_ns: flow.last_seen_ns,
        backend_id: flow.backend_id,
        rev_nat: flow.rev_nat,
        flags: flow.flags & CT_F_FROM_NETDEV,
        ..CtEntry::default()
    };
    if LB4_CT.insert(reply_key, reply, u64::from(BPF_ANY)).is_err() {
        let _ = LB4_CT.remove(service_key);
        return Err(drop!(DropReason::CtCreateFailed));
    }
    Ok(())
}
