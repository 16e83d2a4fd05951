//! Forwarding from the program itself: a FIB lookup, the new MAC addresses, a redirect.
//!
//! Used for packets the node's own stack must not see: an SNATed request carries the node's
//! own address as its source, which the stack would drop as a martian, and a reverse-SNATed
//! reply carries the VIP as its source, which reverse-path filtering may drop. Touches no map.
//! `lookup` runs before the packet is rewritten and returns the route, or `TooBig` when the
//! packet (or, for a GSO packet, each of its segments) exceeds the egress device's MTU, which
//! the caller answers with ICMP "fragmentation needed" (`icmp.rs`); `send` rewrites the MACs
//! and redirects. Drops with 169 when the FIB has no usable route.
//!
//! The lookup leaves `tot_len` 0, so that the kernel checks the packet itself against the
//! egress device's MTU (`is_skb_forwardable`), which lets GSO packets through: a TSO or GRO
//! super-packet of up to 64 KiB is segmented on its way out. A `tot_len` set from the skb's
//! length would be compared with the route's MTU instead (5.12 and later), and refuse every
//! super-packet: bulk transfers would stall.

use core::{
    ffi::c_void,
    mem::{MaybeUninit, size_of},
};

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        bpf_fib_lookup, bpf_redir_neigh, bpf_redir_neigh__bindgen_ty_1,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh},
    programs::TcContext,
};
use lb_common::{
    drop::{DropReason, SourceFile},
    proto,
};

use crate::{
    drop::{Dropped, Verdict, dropped},
    parse::{IP_OFF, Tuple4, ptr_at},
};

const FILE: SourceFile = SourceFile::Fib;
const AF_INET: u8 = 2;

/// `bpf_fib_lookup` on an 8-byte boundary, so that it can be zeroed a word at a time.
#[repr(C, align(8))]
struct FibParams(bpf_fib_lookup);

/// Where [`lookup`] sends a packet.
#[derive(Clone, Copy)]
pub enum Route {
    /// Out of `ifindex` to a next hop whose MAC address is known.
    Resolved {
        /// The egress device.
        ifindex: u32,
        /// The egress device's MAC.
        smac: [u8; 6],
        /// The next hop's MAC.
        dmac: [u8; 6],
    },
    /// Out of `ifindex` to `next_hop`, whose neighbour entry the kernel must resolve first.
    Unresolved {
        /// The egress device.
        ifindex: u32,
        /// The gateway or the destination itself (network byte order).
        next_hop: u32,
    },
    /// Too big for the egress device, whose MTU is `mtu` (host byte order): the packet, or for
    /// a GSO packet each of the segments it would be cut into.
    TooBig {
        /// The egress device's MTU.
        mtu: u16,
    },
}

/// Looks up the route of the packet `to` (its addresses after translation: the lookup reads
/// only its length and GSO state from the packet itself, so it may run before the rewrite).
/// 169 when the FIB has no usable route.
#[inline(always)]
pub fn lookup(ctx: &TcContext, to: &Tuple4) -> Result<Route, Dropped> {
    let mut zeroed = MaybeUninit::<FibParams>::uninit();
    let words = zeroed.as_mut_ptr().cast::<u64>();
    for i in 0..size_of::<FibParams>() / size_of::<u64>() {
        // SAFETY: word `i` lies within `zeroed`, which is 8-aligned. Volatile, because LLVM
        // folds plain zero stores into a `memset` call, which the BPF backend does not expand.
        unsafe { words.add(i).write_volatile(0) };
    }
    // SAFETY: all zeros is a valid (empty) bpf_fib_lookup.
    let params = unsafe { &mut (*zeroed.as_mut_ptr()).0 };
    params.family = AF_INET;
    params.l4_protocol = to.proto;
    params.sport = to.sport;
    params.dport = to.dport;
    // SAFETY: the context pointer is valid for the whole run.
    params.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    params.__bindgen_anon_3.ipv4_src = to.saddr;
    params.__bindgen_anon_4.ipv4_dst = to.daddr;
    // SAFETY: `params` is a valid, initialised bpf_fib_lookup of the size passed.
    let ret = unsafe {
        fib_lookup(
            ctx.skb.skb.cast::<c_void>(),
            params,
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if ret == i64::from(BPF_FIB_LKUP_RET_NO_NEIGH) {
        // The route is known but the neighbour is not resolved yet: let the kernel resolve it
        // (since 5.10). After the lookup `ipv4_dst` holds the next hop (gateway or
        // destination).
        return Ok(Route::Unresolved {
            ifindex: params.ifindex,
            // SAFETY: ipv4_dst is the member this lookup (AF_INET) wrote.
            next_hop: unsafe { params.__bindgen_anon_4.ipv4_dst },
        });
    }
    // With `tot_len` 0 the kernel writes the egress device's MTU here on success and on
    // FRAG_NEEDED.
    // SAFETY: mtu_result is the member the kernel wrote (a u16 either way).
    let mtu = unsafe { params.__bindgen_anon_1.mtu_result };
    if ret == i64::from(BPF_FIB_LKUP_RET_FRAG_NEEDED) {
        // Only a packet larger than the egress device's MTU that is no GSO packet: GSO packets
        // pass the kernel's check and are segmented on the way out.
        return Ok(Route::TooBig { mtu });
    }
    if ret != i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        return Err(dropped!(DropReason::NoFib));
    }
    if gso_segment_len(ctx, to).is_some_and(|len| len > u32::from(mtu)) {
        return Ok(Route::TooBig { mtu });
    }
    Ok(Route::Resolved {
        ifindex: params.ifindex,
        smac: params.smac,
        dmac: params.dmac,
    })
}

/// The IP length of each segment a TCP GSO packet will be cut into, `None` for other packets.
/// The kernel's own check lets every GSO packet through, but its segments are cut at the
/// sender's MSS: larger than a smaller egress MTU, they would be dropped silently after the
/// redirect. The forwarding path of the stack (`ip_exceeds_mtu`) checks the segments the same
/// way.
#[inline(always)]
fn gso_segment_len(ctx: &TcContext, to: &Tuple4) -> Option<u32> {
    // SAFETY: the context pointer is valid for the whole run; gso_size exists since 5.7.
    let gso_size = unsafe { (*ctx.skb.skb).gso_size };
    if gso_size == 0 || to.proto != proto::TCP {
        return None;
    }
    let l4 = to.l4();
    // Byte 12 of the TCP header holds the data offset in its upper four bits.
    let offset = ptr_at::<[u8; 2]>(ctx, l4 + 12)?;
    // SAFETY: `ptr_at` checked the bounds; a byte read needs no alignment.
    let [doff, _flags] = unsafe { offset.read() };
    let headers = (l4 - IP_OFF) as u32 + u32::from(doff >> 4) * 4;
    Some(headers + gso_size)
}

/// Sends the (already rewritten) packet out along `route` (not `TooBig`, which callers answer
/// or drop).
#[inline(always)]
pub fn send(ctx: &TcContext, route: &Route) -> Result<Verdict, Dropped> {
    let (ifindex, smac, dmac) = match *route {
        Route::Resolved {
            ifindex,
            smac,
            dmac,
        } => (ifindex, smac, dmac),
        Route::Unresolved { ifindex, next_hop } => {
            let mut nh = bpf_redir_neigh {
                nh_family: u32::from(AF_INET),
                __bindgen_anon_1: bpf_redir_neigh__bindgen_ty_1 { ipv4_nh: next_hop },
            };
            // SAFETY: `nh` is a valid bpf_redir_neigh of the size passed.
            let code = unsafe {
                bpf_redirect_neigh(ifindex, &mut nh, size_of::<bpf_redir_neigh>() as i32, 0)
            };
            return Ok(Verdict::Redirect(code as i32));
        }
        Route::TooBig { .. } => return Err(dropped!(DropReason::FragNeeded)),
    };
    let Some(eth) = ptr_at::<[u16; 6]>(ctx, 0) else {
        return Err(dropped!(DropReason::NoFib));
    };
    let macs = [
        u16::from_ne_bytes([dmac[0], dmac[1]]),
        u16::from_ne_bytes([dmac[2], dmac[3]]),
        u16::from_ne_bytes([dmac[4], dmac[5]]),
        u16::from_ne_bytes([smac[0], smac[1]]),
        u16::from_ne_bytes([smac[2], smac[3]]),
        u16::from_ne_bytes([smac[4], smac[5]]),
    ];
    // SAFETY: `ptr_at` checked that the 12 MAC bytes are in the packet; they start the packet,
    // so the words are aligned (see `parse.rs` on alignment).
    unsafe { eth.write(macs) };
    // SAFETY: a helper taking plain integers.
    let code = unsafe { bpf_redirect(ifindex, 0) };
    Ok(Verdict::Redirect(code as i32))
}

/// Looks up the route of the rewritten packet `to` and sends it there; 136 when it is too big
/// (for packets no one is to be told about).
#[inline(always)]
pub fn redirect(ctx: &TcContext, to: &Tuple4) -> Result<Verdict, Dropped> {
    let route = lookup(ctx, to)?;
    send(ctx, &route)
}
