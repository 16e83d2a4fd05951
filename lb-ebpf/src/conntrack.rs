//! Conntrack: lookup, create and refresh of the entries in `LB4_CT` (the only module that
//! touches it). Imports nothing from `nat.rs`: NAT uses conntrack, never the reverse.
//!
//! Each translated flow has a *service* entry (`CtService`), keyed by the tuple the client
//! sent, that pins its backend (and, after SNAT, its source mapping), and a *reply* entry
//! (`CtReply`), keyed by the tuple of the backend's replies as they arrive here, that says what
//! to restore. Lookups refresh `last_seen_ns` and note FIN/RST. Creation fails closed with 155:
//! a flow whose replies could not be translated back must not start.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::bpf_ktime_get_ns,
};
use lb_common::{
    conntrack::{
        CT_F_CLOSING, CT_F_FROM_NETDEV, CT_F_NODE_PORT, CT_F_SNAT, CT_REPLY, CT_SERVICE, CtEntry,
        CtKey4, CtReply, CtService,
    },
    drop::{DropReason, Hook, SourceFile},
    service::SERVICE_F_NODE_PORT,
};

use crate::{
    drop::{Dropped, dropped},
    lb::{Chosen, Frontend},
    maps::LB4_CT,
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

/// The conntrack key of `tuple` as seen in direction `kind`.
#[inline(always)]
fn key(tuple: &Tuple4, kind: u8) -> CtKey4 {
    CtKey4 {
        saddr: tuple.saddr,
        daddr: tuple.daddr,
        sport: tuple.sport,
        dport: tuple.dport,
        proto: tuple.proto,
        kind,
        _pad: 0,
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
        _pad: 0,
    }
}

/// The monotonic clock conntrack entries are stamped with.
#[inline(always)]
fn now() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// The reply entry of the flow `tuple` belongs to, if it is a backend's reply; refreshed.
#[inline(always)]
pub fn lookup_reply(tuple: &Tuple4) -> Option<CtReply> {
    let entry = LB4_CT.get_ptr_mut(key(tuple, CT_REPLY))?;
    // SAFETY: a valid map value pointer, under a `CT_REPLY` key, so its `reply` member is the
    // one written. Two CPUs refreshing one flow race benignly: both write a recent timestamp
    // and the closing bit only ever gets set.
    unsafe {
        let reply = &mut (*entry).reply;
        reply.last_seen_ns = now();
        if tuple.is_closing() {
            reply.flags |= CT_F_CLOSING;
        }
        Some(*reply)
    }
}

/// The service entry of the client flow `tuple`, if it is established; refreshed.
#[inline(always)]
pub fn lookup_service(tuple: &Tuple4) -> Option<CtService> {
    let entry = LB4_CT.get_ptr_mut(key(tuple, CT_SERVICE))?;
    // SAFETY: as in `lookup_reply`, under a `CT_SERVICE` key.
    unsafe {
        let service = &mut (*entry).service;
        service.last_seen_ns = now();
        if tuple.is_closing() {
            service.flags |= CT_F_CLOSING;
        }
        Some(*service)
    }
}

/// The reply entry of a new SNATed flow from outside (`tuple`) to `chosen`: it restores the
/// client's address and port.
#[inline(always)]
pub fn snat_reply(tuple: &Tuple4, frontend: &Frontend, chosen: &Chosen) -> CtReply {
    CtReply {
        last_seen_ns: now(),
        backend_id: chosen.id,
        rev_nat: frontend.entry.rev_nat,
        flags: CT_F_SNAT | CT_F_FROM_NETDEV | node_port_flag(frontend),
        client_addr: tuple.saddr,
        client_port: tuple.sport,
        _pad: 0,
        _pad2: 0,
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
    LB4_CT
        .insert(key, CtEntry::from(reply), u64::from(BPF_NOEXIST))
        .is_ok()
}

/// The service entry of a new flow from `hook` to `chosen`, SNATed to `snat` if given.
#[inline(always)]
pub fn service_entry(
    frontend: &Frontend,
    chosen: &Chosen,
    hook: Hook,
    snat: Option<SnatSource>,
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
        last_seen_ns: now(),
        backend_id: chosen.id,
        rev_nat: frontend.entry.rev_nat,
        flags,
        snat_addr: addr,
        snat_port: port,
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
pub fn create(tuple: &Tuple4, flow: &CtService, reserved: Option<&CtKey4>) -> Result<(), Dropped> {
    let service_key = key(tuple, CT_SERVICE);
    if LB4_CT
        .insert(service_key, CtEntry::from(*flow), u64::from(BPF_ANY))
        .is_err()
    {
        if let Some(reply_key) = reserved {
            let _ = LB4_CT.remove(reply_key);
        }
        return Err(dropped!(DropReason::CtCreateFailed));
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
    let reply = CtReply {
        last_seen_ns: flow.last_seen_ns,
        backend_id: flow.backend_id,
        rev_nat: flow.rev_nat,
        flags: flow.flags & (CT_F_FROM_NETDEV | CT_F_NODE_PORT),
        // Recorded for every flow, though only an SNATed one needs it: the same fields mean the
        // same for both, and 16 zero bytes would become a `memset` call.
        client_addr: tuple.saddr,
        client_port: tuple.sport,
        _pad: 0,
        _pad2: 0,
    };
    if LB4_CT
        .insert(reply_key, CtEntry::from(reply), u64::from(BPF_ANY))
        .is_err()
    {
        let _ = LB4_CT.remove(service_key);
        return Err(dropped!(DropReason::CtCreateFailed));
    }
    Ok(())
}
