//! Hairpin: a pod that reaches a Service of its own and is chosen as the backend.
//!
//! After DNAT its packet would go from the pod's address to the pod's address, and the pod's
//! stack drops a packet with its own address as source, arriving on an interface, as a martian.
//! So the source is SNATed to `HAIRPIN_ADDR` (169.254.42.1), with the client's port kept when
//! free, through the same conntrack entries as any SNATed flow: the service entry records the
//! loopback source, and the reply entry (backend → 169.254.42.1:port) restores VIP and client.
//! Both directions go straight back out of the interface they came in on, to the pod, by
//! `bpf_redirect`: the node's stack never sees a packet from 169.254.42.1 or from the VIP
//! arriving on a pod interface, so neither its martian nor its reverse-path checks apply.
//!
//! Touches no map (ports are claimed by `nat.rs`). Drops with 134 only for a frame too short
//! to hold its Ethernet header, which parsing already excludes.

use aya_ebpf::{helpers::bpf_redirect, programs::TcContext};
use lb_common::{
    config::HAIRPIN_ADDR,
    conntrack::{CT_F_SNAT, CtService},
    drop::{DropReason, Hook, SourceFile},
};

use crate::{
    drop::{Dropped, Verdict, dropped},
    lb::Chosen,
    parse::{Tuple4, ptr_at},
};

const FILE: SourceFile = SourceFile::Hairpin;

/// Whether a new flow from `hook` is a pod reaching itself: it arrived from a pod and the
/// chosen backend is that pod.
#[inline(always)]
pub fn is_hairpin(hook: Hook, tuple: &Tuple4, chosen: &Chosen) -> bool {
    hook == Hook::FromPod && chosen.backend.addr == tuple.saddr
}

/// Whether an established flow was hairpinned (its source rewritten to the loopback address).
#[inline(always)]
pub fn is_hairpin_flow(flow: &CtService) -> bool {
    flow.flags & CT_F_SNAT != 0 && flow.snat_addr == HAIRPIN_ADDR
}

/// Whether a backend's reply (as it arrived) belongs to a hairpinned flow.
#[inline(always)]
pub fn is_hairpin_reply(tuple: &Tuple4) -> bool {
    tuple.daddr == HAIRPIN_ADDR
}

/// Sends the (already rewritten) packet back out of the interface it arrived on, to the pod
/// behind it: the MAC addresses swap (the pod's becomes the destination, the node side's the
/// source), which is what the node would have written had it routed the packet.
///
/// A BPF subprogram of its own (no stack): inlined into the IPv6 path, whose frame is the
/// fuller one, it left LLVM keeping the address of `skb->data` in a spilled register, which
/// the verifier refuses (a modified context pointer). Its own frame also reads the frame
/// afresh after the rewrite's helpers.
#[inline(never)]
pub fn redirect(ctx: &TcContext) -> Result<Verdict, Dropped> {
    let Some(eth) = ptr_at::<[u16; 6]>(ctx, 0) else {
        return Err(dropped!(DropReason::Invalid));
    };
    // SAFETY: `ptr_at` checked that the 12 MAC bytes are in the packet; they start it, so the
    // words are aligned (see `parse.rs` on alignment).
    unsafe {
        let [d0, d1, d2, s0, s1, s2] = eth.read();
        eth.write([s0, s1, s2, d0, d1, d2]);
    }
    // SAFETY: the context pointer is valid for the whole run; at TC ingress `ifindex` is the
    // interface the packet arrived on.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: a helper taking plain integers; flags 0 is the egress of `ifindex`.
    let code = unsafe { bpf_redirect(ifindex, 0) };
    Ok(Verdict::Redirect(code as i32))
}
