//! IPv6 fragments of translated flows: `frag.rs` for IPv6. The first fragment of a datagram lb
//! translates records the datagram (source, destination, the fragment header's identification
//! and the upper-layer protocol, as it arrived) with its ports in `LB6_FRAGS` (the only module
//! that touches it); a later fragment takes its ports from there and is then translated like
//! the first (addresses only: it has no L4 header, and IPv6 no header checksum). Drops with 175
//! a later fragment to a VIP whose first fragment was not seen; other later fragments pass.

use lb_common::{
    drop::{DropReason, SourceFile},
    frag::{FragKey6, FragPorts},
};

use crate::{
    drop::{Dropped, dropped},
    lb6,
    maps::LB6_FRAGS,
    parse::Shape,
    parse6::Tuple6,
};

const FILE: SourceFile = SourceFile::Frag6;

#[inline(always)]
fn key(tuple: &Tuple6) -> FragKey6 {
    FragKey6 {
        saddr: tuple.saddr,
        daddr: tuple.daddr,
        id: tuple.frag_id,
        proto: tuple.proto,
        _pad: [0; 3],
    }
}

/// Records the ports of a first fragment lb is about to translate (a no-op for any other
/// packet). Call before the packet is rewritten.
#[inline(always)]
pub fn record(tuple: &Tuple6) {
    if tuple.shape != Shape::FirstFragment {
        return;
    }
    let ports = FragPorts {
        sport: tuple.sport,
        dport: tuple.dport,
    };
    // A failed LRU insert only makes the later fragments miss (175 to a VIP).
    let _ = LB6_FRAGS.insert(key(tuple), ports, 0);
}

/// A later fragment's tuple with its datagram's ports. `None` (hand it on) when its first
/// fragment was not seen and it is not addressed to a VIP; 175 when it is.
#[inline(always)]
pub fn lookup_ports(tuple: &Tuple6) -> Result<Option<Tuple6>, Dropped> {
    // SAFETY: copied out at once.
    let Some(ports) = (unsafe { LB6_FRAGS.get(key(tuple)) }).copied() else {
        if lb6::is_known_vip(tuple.daddr) {
            return Err(dropped!(DropReason::FragNotFound));
        }
        return Ok(None);
    };
    let mut found = *tuple;
    found.sport = ports.sport;
    found.dport = ports.dport;
    Ok(Some(found))
}
