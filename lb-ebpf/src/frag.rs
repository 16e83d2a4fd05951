//! IPv4 fragments of translated flows. Only a datagram's first fragment carries the TCP or UDP
//! header; its later fragments carry none, so lb could not tell their flow. The first fragment
//! of a datagram lb translates (a request to a frontend, or a backend's reply) records the
//! datagram — source, destination, IP identification and protocol, as it arrived — with its
//! ports in `LB4_FRAGS`; a later fragment takes its ports from there and is then translated
//! like the first (addresses only: it has no L4 header, see `nat.rs`).
//!
//! Map: `LB4_FRAGS` (LRU: an entry is needed only while the datagram's fragments pass, and is
//! never deleted, since fragments may arrive out of order). Drops with 175 a later fragment to
//! a VIP whose first fragment was not seen (lost, reordered after it, or evicted); a later
//! fragment to anything else is none of lb's business, or a reply whose first fragment was not
//! seen, and passes untouched.

use aya_ebpf::programs::TcContext;
use lb_common::{
    drop::{DropReason, SourceFile},
    frag::{FragKey4, FragPorts},
};

use crate::{
    drop::{Dropped, dropped},
    lb,
    maps::LB4_FRAGS,
    parse::{self, Shape, Tuple4},
};

const FILE: SourceFile = SourceFile::Frag;

/// The datagram `tuple`'s packet belongs to, if the IP header can be read.
#[inline(always)]
fn key(ctx: &TcContext, tuple: &Tuple4) -> Option<FragKey4> {
    Some(FragKey4 {
        saddr: tuple.saddr,
        daddr: tuple.daddr,
        id: parse::ip_id(ctx)?,
        proto: tuple.proto,
        _pad: 0,
    })
}

/// Records the ports of a first fragment that lb is about to translate (a no-op for any other
/// packet), so that the datagram's later fragments follow it. Call before the packet is
/// rewritten: the key is the datagram as it arrived.
#[inline(always)]
pub fn record(ctx: &TcContext, tuple: &Tuple4) {
    if tuple.shape != Shape::FirstFragment {
        return;
    }
    let Some(key) = key(ctx, tuple) else {
        return;
    };
    let ports = FragPorts {
        sport: tuple.sport,
        dport: tuple.dport,
    };
    // An LRU insert only fails on allocation failure; the later fragments then miss and are
    // dropped with 175 (to a VIP), as when the first fragment was lost.
    let _ = LB4_FRAGS.insert(key, ports, 0);
}

/// A later fragment's tuple with its datagram's ports, from its first fragment. `None` (hand
/// it on untouched) when that was not seen and the packet is not addressed to a VIP; 175 when
/// it is.
#[inline(always)]
pub fn lookup_ports(ctx: &TcContext, tuple: &Tuple4) -> Result<Option<Tuple4>, Dropped> {
    // SAFETY: copied out at once.
    let ports = key(ctx, tuple).and_then(|key| unsafe { LB4_FRAGS.get(key) }.copied());
    let Some(ports) = ports else {
        if lb::is_known_vip(tuple.daddr) {
            return Err(dropped!(DropReason::FragNotFound));
        }
        return Ok(None);
    };
    let mut found = *tuple;
    found.sport = ports.sport;
    found.dport = ports.dport;
    Ok(Some(found))
}
