//! Hairpin of IPv6 flows (`hairpin.rs` for IPv6): a pod that reaches a Service of its own and
//! is chosen as the backend has its source SNATed to `HAIRPIN_ADDR6` (100::a9fe:2a01, see
//! `lb_common::config`), its client port kept when free (`nat6::select_hairpin_port`), and
//! both directions go straight back to the pod by `hairpin::redirect`.
//!
//! Touches no map; never drops.

use lb_common::{
    config::HAIRPIN_ADDR6,
    conntrack::{CT_F_SNAT, CtService6},
    drop::Hook,
};

use crate::{lb6::Chosen6, parse6::Tuple6};

/// Whether a new flow from `hook` is a pod reaching itself.
#[inline(always)]
pub fn is_hairpin(hook: Hook, tuple: &Tuple6, chosen: &Chosen6) -> bool {
    hook == Hook::FromPod && chosen.backend.addr == tuple.saddr
}

/// Whether an established flow was hairpinned.
#[inline(always)]
pub fn is_hairpin_flow(flow: &CtService6) -> bool {
    flow.flags & CT_F_SNAT != 0 && flow.snat_addr == HAIRPIN_ADDR6
}

/// Whether a backend's reply (as it arrived) belongs to a hairpinned flow.
#[inline(always)]
pub fn is_hairpin_reply(tuple: &Tuple6) -> bool {
    tuple.daddr == HAIRPIN_ADDR6
}
