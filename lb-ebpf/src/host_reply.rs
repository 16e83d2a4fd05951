//! Replies of host-network backends: a backend whose address is the node's own (the
//! `kubernetes` Service on a control-plane node, a hostNetwork pod) answers from the host's
//! stack, and its replies leave by an interface's egress — a pod's veth, an external
//! interface — without ever passing the ingress hooks where every other reply is reverse-NATed.
//! `from_host`, on the egress of every interface lb serves, gives them that same translation.
//!
//! Only packets the host itself sends are looked at (`ingress_ifindex` 0): a forwarded packet
//! entered through an ingress hook, which translated it already. Of those, the ones the
//! pass-through filters show to be none of lb's business pass at once, as in the ingress
//! hooks; the rest take one conntrack lookup, and a reply entry reverse-NATs them (source ←
//! VIP:port, as `main.rs`'s `reverse`, which the stack has already routed, so no redirect).
//! Anything else passes untouched.
//!
//! Maps: through `filter.rs` (`LB4_VIP_FILTER`, `LB4_REPLY_SRCS`), `conntrack.rs`
//! (`LB4_CT_TCP`, `LB4_CT_ANY`) and `frag.rs`. Drops only when the packet cannot be rewritten
//! (141, 153, 154).

use aya_ebpf::programs::TcContext;
use lb_common::proto;

use crate::{
    conntrack::{self, Hit},
    drop::{Dropped, Verdict},
    filter, frag, maps, nat,
    parse::{Shape, Tuple4},
};

/// The entry point, which only exists for the BPF target.
#[cfg(target_arch = "bpf")]
mod hooks {
    use aya_ebpf::{macros::classifier, programs::TcContext};
    use lb_common::drop::Hook;

    use crate::{drop, parse};

    /// Egress of the node's external interfaces and of the host side of pod interfaces.
    #[classifier]
    pub fn from_host(ctx: TcContext) -> i32 {
        if !super::sent_by_host(&ctx) {
            return aya_ebpf::bindings::TC_ACT_UNSPEC;
        }
        let tuple = parse::tuple4(&ctx);
        drop::settle(
            &ctx,
            Hook::FromHost,
            tuple.as_ref(),
            super::handle(&ctx, tuple.as_ref()),
        )
    }
}

/// Whether the packet was sent by the host's own stack rather than forwarded.
#[inline(always)]
fn sent_by_host(ctx: &TcContext) -> bool {
    // SAFETY: `ctx.skb.skb` is the program's context pointer, valid for the whole run.
    unsafe { (*ctx.skb.skb).ingress_ifindex == 0 }
}

#[inline(always)]
fn handle(ctx: &TcContext, tuple: Option<&Tuple4>) -> Result<Verdict, Dropped> {
    let Some(tuple) = tuple else {
        return Ok(Verdict::Pass);
    };
    // A host's reply is fragmented after this hook, by the stack's output path, if at all.
    if !matches!(tuple.shape, Shape::Complete | Shape::FirstFragment)
        || (tuple.proto != proto::TCP && tuple.proto != proto::UDP)
    {
        return Ok(Verdict::Pass);
    }
    // Most of what the host sends is no flow's reply: two array lookups tell, before the hash
    // lookup, that no reply entry has this source (nor a frontend this destination).
    if !filter::maybe_lbs(tuple) {
        return Ok(Verdict::Pass);
    }
    let Some(Hit::Reply(reply)) = conntrack::lookup(tuple, maps::config()) else {
        return Ok(Verdict::Pass);
    };
    frag::record(ctx, tuple);
    nat::rev_nat(ctx, tuple, &reply)?;
    Ok(Verdict::Pass)
}
