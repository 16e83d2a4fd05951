//! `fib.rs` for IPv6: the route of an SNATed request or a reverse-SNATed reply, looked up
//! with `bpf_fib_lookup` (`AF_INET6`) before the rewrite, and the redirect. A resolved route
//! goes out through `fib::send` (new MACs, `bpf_redirect`); an unresolved one through
//! `bpf_redirect_neigh` with the IPv6 next hop. A packet too big for the route (or, for a TCP
//! GSO packet, each of its segments; `tot_len` is left 0 as in `fib.rs`) yields `TooBig` with
//! the egress device's MTU, which callers answer with ICMPv6 "packet too big" (`icmp6.rs`) or
//! drop with 136. Touches no map; drops with 169 when the FIB has no usable route.

use core::{
    ffi::c_void,
    mem::{MaybeUninit, size_of},
};

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        bpf_fib_lookup, bpf_redir_neigh, bpf_redir_neigh__bindgen_ty_1,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect_neigh},
    programs::TcContext,
};
use lb_common::{
    Addr6,
    drop::{DropReason, SourceFile},
    proto,
};

use crate::{
    drop::{Dropped, Verdict, dropped},
    fib,
    nat6::Target,
    parse::ptr_at,
    parse6::IP6_OFF,
};

const FILE: SourceFile = SourceFile::Fib6;
const AF_INET6: u8 = 10;

/// `bpf_fib_lookup` on an 8-byte boundary, so that it can be zeroed a word at a time.
#[repr(C, align(8))]
struct FibParams(bpf_fib_lookup);

/// Where [`lookup`] sends a packet.
#[derive(Clone, Copy)]
pub enum Route6 {
    /// Out of `ifindex` with these MACs (see `fib::Route::Resolved`).
    Resolved(fib::Route),
    /// Out of `ifindex` to `next_hop`, whose neighbour entry the kernel resolves first.
    Unresolved {
        /// The egress device.
        ifindex: u32,
        /// The gateway or the destination itself.
        next_hop: Addr6,
    },
    /// Too big for the egress device, whose MTU is `mtu` (host byte order).
    TooBig {
        /// The egress device's MTU.
        mtu: u16,
    },
}

/// The route of the packet of protocol `proto` rewritten to `to`, whose upper-layer header
/// is at `l4` (for the GSO check). 169 without a usable route.
#[inline(always)]
pub fn lookup(ctx: &TcContext, proto: u8, l4: usize, to: &Target) -> Result<Route6, Dropped> {
    let mut zeroed = MaybeUninit::<FibParams>::uninit();
    let words = zeroed.as_mut_ptr().cast::<u64>();
    for i in 0..size_of::<FibParams>() / size_of::<u64>() {
        // SAFETY: word `i` lies within `zeroed`, which is 8-aligned (volatile: see `fib.rs`).
        unsafe { words.add(i).write_volatile(0) };
    }
    // SAFETY: all zeros is a valid (empty) bpf_fib_lookup.
    let params = unsafe { &mut (*zeroed.as_mut_ptr()).0 };
    params.family = AF_INET6;
    params.l4_protocol = proto;
    params.sport = to.sport;
    params.dport = to.dport;
    // SAFETY: the context pointer is valid for the whole run.
    params.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    params.__bindgen_anon_3.ipv6_src = *to.saddr;
    params.__bindgen_anon_4.ipv6_dst = *to.daddr;
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
        return Ok(Route6::Unresolved {
            ifindex: params.ifindex,
            // SAFETY: ipv6_dst is the member this lookup (AF_INET6) wrote.
            next_hop: unsafe { params.__bindgen_anon_4.ipv6_dst },
        });
    }
    // With `tot_len` 0 the kernel writes the egress device's MTU here on success and on
    // FRAG_NEEDED (see `fib.rs`).
    // SAFETY: mtu_result is the member the kernel wrote (a u16 either way).
    let mtu = unsafe { params.__bindgen_anon_1.mtu_result };
    if ret == i64::from(BPF_FIB_LKUP_RET_FRAG_NEEDED) {
        return Ok(Route6::TooBig { mtu });
    }
    if ret != i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        return Err(dropped!(DropReason::NoFib));
    }
    if proto == proto::TCP && gso_segment_len(ctx, l4).is_some_and(|len| len > u32::from(mtu)) {
        return Ok(Route6::TooBig { mtu });
    }
    Ok(Route6::Resolved(fib::Route::Resolved {
        ifindex: params.ifindex,
        smac: params.smac,
        dmac: params.dmac,
    }))
}

/// The IPv6 length of each segment a TCP GSO packet whose TCP header is at `l4` will be cut
/// into, `None` for a packet that is no GSO packet: the kernel's own check lets every GSO
/// packet through, so segments too big for the egress MTU are caught here (see `fib.rs`).
#[inline(always)]
fn gso_segment_len(ctx: &TcContext, l4: usize) -> Option<u32> {
    // SAFETY: the context pointer is valid for the whole run; gso_size exists since 5.7.
    let gso_size = unsafe { (*ctx.skb.skb).gso_size };
    if gso_size == 0 {
        return None;
    }
    // Byte 12 of the TCP header holds the data offset in its upper four bits.
    let offset = ptr_at::<[u8; 2]>(ctx, l4 + 12)?;
    // SAFETY: `ptr_at` checked the bounds; a byte read needs no alignment.
    let [doff, _flags] = unsafe { offset.read() };
    let headers = (l4 - IP6_OFF) as u32 + u32::from(doff >> 4) * 4;
    Some(headers + gso_size)
}

/// Sends the (already rewritten) packet out along `route`; 136 for `TooBig` (callers that
/// answer it do so before).
#[inline(always)]
pub fn send(ctx: &TcContext, route: &Route6) -> Result<Verdict, Dropped> {
    match *route {
        Route6::TooBig { .. } => Err(dropped!(DropReason::FragNeeded)),
        Route6::Resolved(route) => fib::send(ctx, &route),
        Route6::Unresolved { ifindex, next_hop } => {
            let mut nh = bpf_redir_neigh {
                nh_family: u32::from(AF_INET6),
                __bindgen_anon_1: bpf_redir_neigh__bindgen_ty_1 { ipv6_nh: next_hop },
            };
            // SAFETY: `nh` is a valid bpf_redir_neigh of the size passed.
            let code = unsafe {
                bpf_redirect_neigh(ifindex, &mut nh, size_of::<bpf_redir_neigh>() as i32, 0)
            };
            Ok(Verdict::Redirect(code as i32))
        }
    }
}
