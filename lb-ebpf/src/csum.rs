//! Incremental L3 and L4 checksum updates after addresses and ports were rewritten.
//!
//! The changes of one rewrite are summed first ([`Diff`], RFC 1624's one's-complement
//! difference, over 16-bit words as stored: the sum is byte-order independent), then applied
//! at once, as Cilium's `lb4_xlate` does:
//!
//! - the IP header checksum by direct packet access ([`ip_header_after`]): the header is always
//!   checksummed in full and `skb->csum` covers it with its checksum, so nothing else changes
//!   (this is all `bpf_l3_csum_replace` would do);
//! - the TCP/UDP checksum with at most two `bpf_l4_csum_replace` calls by difference, one for
//!   the addresses (pseudo-header) and one for the ports: the kernel's helper also keeps
//!   `skb->csum` right for CHECKSUM_COMPLETE packets and leaves CHECKSUM_PARTIAL ones (veth
//!   traffic from pods) to the device, which plain arithmetic would break. Pseudo-header and
//!   header changes need separate calls for that reason.
//!
//! The helpers invalidate direct packet pointers, so callers write the packet (IP checksum
//! included) first and call them last. Touches no map; fails with 141 when a helper refuses.

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
    parse::{Tuple4, split},
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

/// The one's-complement difference of a set of 16-bit word replacements, not yet folded.
#[derive(Clone, Copy, Default)]
pub struct Diff(u64);

impl Diff {
    /// Adds the replacement of the word `from` by `to` (as stored), if they differ.
    #[inline(always)]
    pub fn word(&mut self, from: u16, to: u16) {
        if from != to {
            self.0 += u64::from(!from) + u64::from(to);
        }
    }

    /// Adds the replacement of the 32-bit field `from` by `to` (as stored), if they differ.
    #[inline(always)]
    pub fn addr(&mut self, from: u32, to: u32) {
        let [f0, f1] = split(from);
        let [t0, t1] = split(to);
        self.word(f0, t0);
        self.word(f1, t1);
    }

    /// Whether nothing changed.
    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }

    /// The difference folded to 16 bits (a valid unfolded checksum too).
    #[inline(always)]
    fn folded(&self) -> u16 {
        fold(self.0)
    }
}

/// `sum` folded to 16 bits with end-around carry (a sum of at most 2^32 words fits in three
/// folds).
#[inline(always)]
fn fold(sum: u64) -> u16 {
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The IP header checksum `old` (as stored) after the changes `diff` (RFC 1624, eq. 3).
#[inline(always)]
pub fn ip_header_after(old: u16, diff: &Diff) -> u16 {
    !fold(u64::from(!old) + diff.0)
}

/// Applies address changes `addrs` (through the pseudo-header) and port changes `ports` to the
/// TCP/UDP checksum: one helper call for each that is not empty.
#[inline(always)]
pub fn update_l4(
    ctx: &TcContext,
    tuple: &Tuple4,
    addrs: &Diff,
    ports: &Diff,
) -> Result<(), Dropped> {
    let off = tuple.l4_csum_off();
    if !addrs.is_empty() {
        let flags = l4_flags(tuple) | u64::from(BPF_F_PSEUDO_HDR);
        ctx.l4_csum_replace(off, 0, u64::from(addrs.folded()), flags)
            .map_err(|_| dropped!(DropReason::WriteError))?;
    }
    if !ports.is_empty() {
        ctx.l4_csum_replace(off, 0, u64::from(ports.folded()), l4_flags(tuple))
            .map_err(|_| dropped!(DropReason::WriteError))?;
    }
    Ok(())
}
