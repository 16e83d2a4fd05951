//! Incremental L3 and L4 checksum updates after an address or port was rewritten.
//!
//! Uses the kernel's `bpf_l3_csum_replace` / `bpf_l4_csum_replace` rather than arithmetic on
//! the packet: they also keep `skb->csum` right for CHECKSUM_COMPLETE packets and leave
//! CHECKSUM_PARTIAL ones (veth traffic from pods) to the device, which plain arithmetic would
//! break. They invalidate direct packet pointers, so callers write the packet first and fix
//! the checksums last. Touches no map; fails with 141 when a helper refuses.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use lb_common::{
    drop::{DropReason, SourceFile},
    proto,
};

use crate::{
    drop::{Dropped, dropped},
    parse::{IP_CSUM_OFF, Tuple4},
};

const FILE: SourceFile = SourceFile::Csum;

/// L4 flags shared by every update: a UDP checksum of 0 means "none" and must stay 0, and a
/// computed 0 must be written as 0xffff (`BPF_F_MARK_MANGLED_0` does both).
#[inline(always)]
fn l4_flags(tuple: &Tuple4) -> u64 {
    if tuple.proto == proto::UDP {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    }
}

/// Accounts for an IPv4 address change `from` → `to` (network byte order) in the IP header
/// checksum and, through the pseudo-header, in the TCP/UDP checksum.
#[inline(always)]
pub fn update_addr(ctx: &TcContext, tuple: &Tuple4, from: u32, to: u32) -> Result<(), Dropped> {
    ctx.l3_csum_replace(IP_CSUM_OFF, u64::from(from), u64::from(to), 4)
        .map_err(|_| dropped!(DropReason::WriteError))?;
    let flags = l4_flags(tuple) | u64::from(BPF_F_PSEUDO_HDR) | 4;
    ctx.l4_csum_replace(tuple.l4_csum_off(), u64::from(from), u64::from(to), flags)
        .map_err(|_| dropped!(DropReason::WriteError))
}

/// Accounts for an IPv4 address change in the IP header checksum only: for a later fragment,
/// which carries no L4 header (the first fragment's L4 checksum covers the whole datagram).
#[inline(always)]
pub fn update_ip_addr(ctx: &TcContext, from: u32, to: u32) -> Result<(), Dropped> {
    ctx.l3_csum_replace(IP_CSUM_OFF, u64::from(from), u64::from(to), 4)
        .map_err(|_| dropped!(DropReason::WriteError))
}

/// Accounts for a port change `from` → `to` (network byte order) in the TCP/UDP checksum.
#[inline(always)]
pub fn update_port(ctx: &TcContext, tuple: &Tuple4, from: u16, to: u16) -> Result<(), Dropped> {
    let flags = l4_flags(tuple) | 2;
    ctx.l4_csum_replace(tuple.l4_csum_off(), u64::from(from), u64::from(to), flags)
        .map_err(|_| dropped!(DropReason::WriteError))
}
