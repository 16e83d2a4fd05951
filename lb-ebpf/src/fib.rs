//! Forwarding from the program itself: a FIB lookup, the new MAC addresses, a redirect.
//!
//! Used for packets the node's own stack must not see: an SNATed request carries the node's
//! own address as its source, which the stack would drop as a martian, and a reverse-SNATed
//! reply carries the VIP as its source, which reverse-path filtering may drop. Touches no map;
//! returns a redirect verdict, or drops with 169 when the FIB has no usable route and with 136
//! when the packet is too big for the egress device and cannot be segmented.
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
use lb_common::drop::{DropReason, SourceFile};

use crate::{
    drop::{Dropped, Verdict, dropped},
    parse::{Tuple4, ptr_at},
};

const FILE: SourceFile = SourceFile::Fib;
const AF_INET: u8 = 2;

/// `bpf_fib_lookup` on an 8-byte boundary, so that it can be zeroed a word at a time.
#[repr(C, align(8))]
struct FibParams(bpf_fib_lookup);

/// Sends the (already rewritten) packet `to` out of the interface the FIB picks, towards its
/// next hop.
#[inline(always)]
pub fn redirect(ctx: &TcContext, to: &Tuple4) -> Result<Verdict, Dropped> {
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
        // SAFETY: ipv4_dst is the member this lookup (AF_INET) wrote.
        let next_hop = unsafe { params.__bindgen_anon_4.ipv4_dst };
        let mut nh = bpf_redir_neigh {
            nh_family: u32::from(AF_INET),
            __bindgen_anon_1: bpf_redir_neigh__bindgen_ty_1 { ipv4_nh: next_hop },
        };
        // SAFETY: `nh` is a valid bpf_redir_neigh of the size passed.
        let code = unsafe {
            bpf_redirect_neigh(
                params.ifindex,
                &mut nh,
                size_of::<bpf_redir_neigh>() as i32,
                0,
            )
        };
        return Ok(Verdict::Redirect(code as i32));
    }
    if ret == i64::from(BPF_FIB_LKUP_RET_FRAG_NEEDED) {
        // Only a packet larger than the egress device's MTU that is no GSO packet: GSO packets
        // pass the kernel's check and are segmented on the way out.
        // TODO(#10): answer the sender with ICMP "fragmentation needed" carrying the MTU the
        // lookup returned (`mtu_result`), so that path-MTU discovery works through this path.
        return Err(dropped!(DropReason::FragNeeded));
    }
    if ret != i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        return Err(dropped!(DropReason::NoFib));
    }
    let Some(eth) = ptr_at::<[u16; 6]>(ctx, 0) else {
        return Err(dropped!(DropReason::NoFib));
    };
    let (dmac, smac) = (params.dmac, params.smac);
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
    let code = unsafe { bpf_redirect(params.ifindex, 0) };
    Ok(Verdict::Redirect(code as i32))
}
