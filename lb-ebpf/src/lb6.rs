//! IPv6 frontend lookup and backend selection: `lb.rs` for `LB6_SERVICES` and `LB6_BACKENDS`
//! (the only module that touches them). The master entry and its slots mean what they mean
//! for IPv4; backend ids are one space with IPv4's, so a Maglev table (`LB4_MAGLEV`, keyed by
//! service id) serves both families. Drops with 158 when a frontend has no backend to offer or
//! a VIP is addressed on a port that is no frontend.

use aya_ebpf::helpers::bpf_get_prandom_u32;
use lb_common::{
    Addr6,
    config::DatapathConfig,
    drop::{DropReason, SourceFile},
    service::{
        BACKEND_STATE_ACTIVE, Backend6, SERVICE_F_AFFINITY, SERVICE_F2_MAGLEV, ServiceEntry,
        ServiceKey6, maglev_hash,
    },
};

use crate::{
    drop::{Dropped, dropped},
    maglev,
    maps::{LB6_BACKENDS, LB6_SERVICES},
    parse::Shape,
    parse6::Tuple6,
};

const FILE: SourceFile = SourceFile::Lb6;

/// An IPv6 frontend's master entry.
#[derive(Clone, Copy)]
pub struct Frontend6 {
    /// VIP.
    pub vip: Addr6,
    /// Port (network byte order).
    pub port: u16,
    /// IP protocol.
    pub proto: u8,
    /// Slot 0 of `LB6_SERVICES`.
    pub entry: ServiceEntry,
}

/// An IPv6 backend chosen for a flow.
#[derive(Clone, Copy)]
pub struct Chosen6 {
    /// Its id (key of `LB6_BACKENDS`).
    pub id: u32,
    /// Its entry.
    pub backend: Backend6,
}

/// The frontend the packet is addressed to, if any.
#[inline(always)]
pub fn lookup_frontend(tuple: &Tuple6) -> Option<Frontend6> {
    lookup_frontend_at(tuple.daddr, tuple.dport, tuple.proto)
}

/// The frontend `vip:port/proto` (network byte order), if any: for callers without a packet
/// (socket-level load balancing, `sock.rs`).
#[inline(always)]
pub fn lookup_frontend_at(vip: Addr6, port: u16, proto: u8) -> Option<Frontend6> {
    let key = ServiceKey6::new(vip, port, proto, 0);
    // SAFETY: copied out at once (a torn entry is bounds-checked by selection).
    let entry = unsafe { LB6_SERVICES.get(key) }.copied()?;
    Some(Frontend6 {
        vip,
        port,
        proto,
        entry,
    })
}

/// Whether `addr` is a VIP (the agent's wildcard entry: port 0, protocol 0, slot 0).
#[inline(always)]
pub fn is_known_vip(addr: Addr6) -> bool {
    LB6_SERVICES
        .get_ptr(ServiceKey6::new(addr, 0, 0, 0))
        .is_some()
}

/// The wildcard entry of `addr` as a frontend (port 0, protocol 0), if `addr` is a VIP: what
/// a packet to the VIP itself (an echo request) is checked against.
#[inline(always)]
pub fn lookup_vip(addr: Addr6) -> Option<Frontend6> {
    // SAFETY: copied out at once.
    let entry = unsafe { LB6_SERVICES.get(ServiceKey6::new(addr, 0, 0, 0)) }.copied()?;
    Some(Frontend6 {
        vip: addr,
        port: 0,
        proto: 0,
        entry,
    })
}

/// Fails with 158 when `daddr` is a VIP: a packet to a VIP on a port that is no frontend.
#[inline(always)]
pub fn check_unknown_port(tuple: &Tuple6) -> Result<(), Dropped> {
    if is_known_vip(tuple.daddr) {
        return Err(dropped!(DropReason::NoService));
    }
    Ok(())
}

/// For a packet whose flow cannot be told (a cut-short or too long header chain: 134; a
/// later fragment of another protocol than TCP and UDP: 157) addressed to a VIP; `Ok` (hand it on) otherwise.
#[inline(always)]
pub fn check_malformed(tuple: &Tuple6) -> Result<(), Dropped> {
    if !is_known_vip(tuple.daddr) {
        return Ok(());
    }
    match tuple.shape {
        Shape::Fragment => Err(dropped!(DropReason::FragNoSupport)),
        Shape::Truncated => Err(dropped!(DropReason::Invalid)),
        Shape::Complete | Shape::FirstFragment | Shape::Other => Ok(()),
    }
}

/// The backend with this id, if it exists.
#[inline(always)]
pub fn lookup_backend(id: u32) -> Option<Backend6> {
    // SAFETY: copied out at once.
    unsafe { LB6_BACKENDS.get(id) }.copied()
}

/// The backend an established flow recorded, if it is still there under that id with that
/// address and port (ids are reused).
#[inline(always)]
pub fn lookup_flow_backend(id: u32, addr: &Addr6, port: u16) -> Option<Backend6> {
    lookup_backend(id).filter(|b| b.addr == *addr && b.port == port)
}

/// Whether `backend` may still receive new flows.
#[inline(always)]
pub fn is_active(backend: &Backend6) -> bool {
    backend.state == BACKEND_STATE_ACTIVE
}

/// The backend for a new flow: the frontend's Maglev entry when it has a table (and an active
/// backend there), else a random active slot. 158 when there is none. (ClientIP affinity
/// comes first: `affinity6.rs`.)
#[inline(always)]
pub fn select_backend(
    frontend: &Frontend6,
    tuple: &Tuple6,
    config: &DatapathConfig,
) -> Result<Chosen6, Dropped> {
    if frontend.entry.flags2 & SERVICE_F2_MAGLEV != 0
        && let Some(chosen) = select_maglev(frontend, tuple, config)
    {
        return Ok(chosen);
    }
    select_random(frontend)
}

/// The Maglev table's backend for the flow: the IPv4 hash over each address folded to 32
/// bits (the table is the same on every node; the hash only has to be the same on every
/// node too).
#[inline(always)]
fn select_maglev(frontend: &Frontend6, tuple: &Tuple6, config: &DatapathConfig) -> Option<Chosen6> {
    let sport = if frontend.entry.flags & SERVICE_F_AFFINITY != 0 {
        0
    } else {
        tuple.sport
    };
    let hash = maglev_hash(
        fold(&tuple.saddr),
        fold(&tuple.daddr),
        sport,
        tuple.dport,
        config.maglev_seed,
    );
    let id = maglev::lookup_id(frontend.entry.rev_nat, hash, config)?;
    let backend = lookup_backend(id)?;
    is_active(&backend).then_some(Chosen6 { id, backend })
}

/// An address folded to 32 bits.
#[inline(always)]
fn fold(addr: &Addr6) -> u32 {
    addr[0] ^ addr[1] ^ addr[2] ^ addr[3]
}

/// A random active slot `1..=count`; 158 when there is none.
#[inline(always)]
fn select_random(frontend: &Frontend6) -> Result<Chosen6, Dropped> {
    let count = u32::from(frontend.entry.count);
    // SAFETY: a helper without arguments.
    let random = unsafe { bpf_get_prandom_u32() };
    let Some(index) = random.checked_rem(count) else {
        return Err(dropped!(DropReason::NoService));
    };
    let slot = ServiceKey6::new(
        frontend.vip,
        frontend.port,
        frontend.proto,
        (index + 1) as u16,
    );
    // SAFETY: copied out at once.
    let Some(id) = unsafe { LB6_SERVICES.get(slot) }.map(|s| s.backend_id) else {
        return Err(dropped!(DropReason::NoService));
    };
    let Some(backend) = lookup_backend(id) else {
        return Err(dropped!(DropReason::NoService));
    };
    Ok(Chosen6 { id, backend })
}
