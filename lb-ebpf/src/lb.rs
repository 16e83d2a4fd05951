//! Frontend lookup and backend selection.
//!
//! Maps: `LB4_SERVICES` (master entries, wildcard "known VIP" entries and backend slots),
//! `LB4_BACKENDS` and `LB_GENERATION` (which generation of both the agent has written).
//! Returns frontends and backends; drops with 158 when a frontend has no backend to offer, and
//! for a VIP addressed on a port (or protocol) that is no frontend.

use aya_ebpf::helpers::bpf_get_prandom_u32;
use lb_common::{
    drop::{DropReason, SourceFile},
    service::{BACKEND_STATE_ACTIVE, Backend4, ServiceEntry, ServiceKey4},
};

use crate::{
    drop::{Dropped, dropped},
    maps::{LB_GENERATION, LB4_BACKENDS, LB4_SERVICES},
    parse::{Shape, Tuple4},
};

const FILE: SourceFile = SourceFile::Lb;

/// A frontend's master entry.
#[derive(Clone, Copy)]
pub struct Frontend {
    /// VIP (network byte order).
    pub vip: u32,
    /// Port (network byte order).
    pub port: u16,
    /// IP protocol.
    pub proto: u8,
    /// Slot 0 of `LB4_SERVICES`.
    pub entry: ServiceEntry,
}

/// A backend chosen for a flow.
#[derive(Clone, Copy)]
pub struct Chosen {
    /// Its id (key of `LB4_BACKENDS`).
    pub id: u32,
    /// Its entry.
    pub backend: Backend4,
}

/// The current generation of the service and backend maps (see
/// `lb_common::maps::LB_GENERATION`); 0 until the agent writes one. Read it before looking a
/// frontend or backend up, so that a removal between the two makes the generation recorded
/// with what was found already stale.
#[inline(always)]
pub fn generation() -> u32 {
    LB_GENERATION.get(0).copied().unwrap_or(0)
}

/// The frontend the packet is addressed to, if any.
#[inline(always)]
pub fn lookup_frontend(tuple: &Tuple4) -> Option<Frontend> {
    lookup_frontend_at(tuple.daddr, tuple.dport, tuple.proto)
}

/// The frontend `vip:port/proto` (network byte order), if any: for callers without a packet
/// (socket-level load balancing, `sock.rs`).
#[inline(always)]
pub fn lookup_frontend_at(vip: u32, port: u16, proto: u8) -> Option<Frontend> {
    let key = ServiceKey4::new(vip, port, proto, 0);
    // SAFETY: the value is copied out at once; a concurrent update can at worst give a torn
    // entry, which selection bounds-checks (slot ≤ count, missing slot → 158).
    let entry = unsafe { LB4_SERVICES.get(key) }.copied()?;
    Some(Frontend {
        vip,
        port,
        proto,
        entry,
    })
}

/// Whether `addr` is a VIP: the agent writes a wildcard entry (port 0, protocol 0, slot 0)
/// for each.
#[inline(always)]
pub fn is_known_vip(addr: u32) -> bool {
    LB4_SERVICES
        .get_ptr(ServiceKey4::new(addr, 0, 0, 0))
        .is_some()
}

/// The wildcard entry of `addr` as a frontend (port 0, protocol 0), if `addr` is a VIP: what
/// a packet to the VIP itself, not to one of its ports, is checked against.
#[inline(always)]
pub fn lookup_vip(addr: u32) -> Option<Frontend> {
    // SAFETY: copied out at once.
    let entry = unsafe { LB4_SERVICES.get(ServiceKey4::new(addr, 0, 0, 0)) }.copied()?;
    Some(Frontend {
        vip: addr,
        port: 0,
        proto: 0,
        entry,
    })
}

/// Fails with 158 when `daddr` is a VIP: a packet to a VIP on a port that is no frontend.
#[inline(always)]
pub fn check_unknown_port(tuple: &Tuple4) -> Result<(), Dropped> {
    if is_known_vip(tuple.daddr) {
        return Err(dropped!(DropReason::NoService));
    }
    Ok(())
}

/// The backend with this id, if it still exists.
#[inline(always)]
pub fn lookup_backend(id: u32) -> Option<Backend4> {
    // SAFETY: copied out at once.
    unsafe { LB4_BACKENDS.get(id) }.copied()
}

/// The backend an established flow recorded (`id`, and the address and port it was
/// translated to), if it is still there: present in `LB4_BACKENDS` under that id with that
/// address. A removed backend's id may be given to another address later, so the id alone
/// does not prove the flow's backend is still there.
#[inline(always)]
pub fn lookup_flow_backend(id: u32, addr: u32, port: u16) -> Option<Backend4> {
    lookup_backend(id).filter(|b| b.addr == addr && b.port == port)
}

/// Whether `backend` may still receive new flows.
#[inline(always)]
pub fn is_active(backend: &Backend4) -> bool {
    backend.state == BACKEND_STATE_ACTIVE
}

/// Picks a backend uniformly at random among the active slots `1..=count`; terminating
/// backends (slots above `count`) are never chosen. 158 when there is none.
#[inline(always)]
pub fn select_backend(frontend: &Frontend) -> Result<Chosen, Dropped> {
    let count = u32::from(frontend.entry.count);
    let index = match count {
        // No backend to offer.
        0 => return Err(dropped!(DropReason::NoService)),
        // The only one: no random number (a helper call) needed.
        1 => 0,
        // SAFETY: a helper without arguments. (checked_rem: `%` must not panic, and `count`
        // is not 0 here.)
        _ => unsafe { bpf_get_prandom_u32() }
            .checked_rem(count)
            .unwrap_or(0),
    };
    let slot = ServiceKey4::new(
        frontend.vip,
        frontend.port,
        frontend.proto,
        (index + 1) as u16,
    );
    // SAFETY: copied out at once.
    let Some(id) = unsafe { LB4_SERVICES.get(slot) }.map(|s| s.backend_id) else {
        return Err(dropped!(DropReason::NoService));
    };
    let Some(backend) = lookup_backend(id) else {
        return Err(dropped!(DropReason::NoService));
    };
    Ok(Chosen { id, backend })
}

/// For a truncated TCP/UDP header (134) or a fragment of another protocol (157) addressed to
/// a VIP: lb cannot tell which flow it belongs to. `Ok` (hand it on untouched) otherwise.
/// (TCP and UDP fragments are `frag.rs`'s.)
#[inline(always)]
pub fn check_malformed(tuple: &Tuple4) -> Result<(), Dropped> {
    if !is_known_vip(tuple.daddr) {
        return Ok(());
    }
    match tuple.shape {
        Shape::Fragment => Err(dropped!(DropReason::FragNoSupport)),
        Shape::Truncated => Err(dropped!(DropReason::Invalid)),
        Shape::Complete | Shape::FirstFragment | Shape::Other => Ok(()),
    }
}
