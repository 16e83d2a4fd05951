//! The IPv6 packet path: what `handle` in `main.rs` is for IPv4, for frames with EtherType
//! 0x86dd. Both hooks call [`run`] for those, each in a BPF subprogram of its own (`main.rs`).
//!
//! Order: parse (`parse6.rs`), the pass-through filters (`filter.rs`, `LB6_VIP_FILTER` and
//! `LB6_REPLY_SRCS`), conntrack (`conntrack6.rs`: a reply is reverse-NATed at once; a flow
//! checked at the current `LB_GENERATION` skips the next two lookups), frontend (`lb6.rs`),
//! the external-access policy (`policy6.rs`, from-netdev only), REJECT of a frontend without
//! endpoints (`icmp6.rs`), backend selection (`affinity6.rs`, `lb6.rs`), hairpin SNAT of a pod
//! reaching itself (`hairpin6.rs`) or SNAT to a remote backend (`nat6.rs`), the conntrack
//! entries, the rewrite, and for SNATed flows the route (`fib6.rs`; a hairpinned packet goes
//! straight back to the pod). Later fragments of TCP and UDP datagrams follow their first
//! fragment (`frag6.rs`). ICMPv6 errors about translated flows are translated back, an echo
//! request to a VIP is answered, and a packet too big for the route of an SNATed flow is
//! answered with "packet too big" (`icmp6.rs`); other ICMPv6 (neighbour discovery, router
//! advertisements, errors about no tracked flow) is handed on untouched; other protocols to a
//! VIP are dropped with 142, as for IPv4.

use aya_ebpf::programs::TcContext;
use lb_common::{
    config::CONFIG_F_NO_BACKEND_DROP,
    conntrack::{CT_F_NODE_PORT, CT_F_SNAT, CtReply6, CtService6},
    drop::{DropReason, Hook, SourceFile},
    proto,
    service::{BACKEND_F_REMOTE, SERVICE_F_NO_ENDPOINTS},
};

use crate::{
    affinity6,
    conntrack::now,
    conntrack6::{self, Hit6},
    drop::{self, Dropped, Verdict, dropped},
    fib6::{self, Route6},
    filter, frag6, hairpin, hairpin6, icmp6, lb, lb6,
    lb6::{Chosen6, Frontend6},
    maps::{self, Ct6Scratch},
    nat6,
    parse::{self, Shape},
    parse6::{self, Tuple6},
    policy6,
};

const FILE: SourceFile = SourceFile::Lb6;

/// The IPv6 path of `hook` for an IPv6 frame: the TC verdict. Each hook runs it in a BPF
/// subprogram of its own, beside its IPv4 path's (see `main.rs`); what does not fit on the
/// stack lives in `LB6_SCRATCH` (see `conntrack6.rs`).
#[inline(always)]
pub fn run(ctx: &TcContext, hook: Hook) -> i32 {
    let tuple = parse6::tuple6(ctx);
    drop::settle6(
        ctx,
        hook,
        tuple.as_ref(),
        handle6(ctx, hook, tuple.as_ref()),
    )
}

#[inline(always)]
fn handle6(ctx: &TcContext, hook: Hook, tuple: Option<&Tuple6>) -> Result<Verdict, Dropped> {
    let Some(tuple) = tuple else {
        return Ok(Verdict::Pass);
    };
    // A later fragment has no ports of its own: its datagram's first fragment recorded them.
    let with_ports;
    let tuple = match tuple.shape {
        Shape::Complete | Shape::FirstFragment => tuple,
        Shape::Fragment if tuple.proto == proto::TCP || tuple.proto == proto::UDP => {
            match frag6::lookup_ports(tuple)? {
                Some(found) => {
                    with_ports = found;
                    &with_ports
                }
                None => return Ok(Verdict::Pass),
            }
        }
        Shape::Fragment | Shape::Truncated => {
            lb6::check_malformed(tuple)?;
            return Ok(Verdict::Pass);
        }
        Shape::Other => return other(ctx, hook, tuple),
    };
    // Most IPv6 packets are no service's either: two array lookups tell (`filter.rs`).
    if !filter::maybe_lbs6(tuple) {
        return Ok(Verdict::Pass);
    }
    let config = maps::config();
    let Some(scratch) = conntrack6::scratch() else {
        return Ok(Verdict::Pass);
    };
    let tracked = match conntrack6::lookup(tuple, config, scratch) {
        // SAFETY: a valid map value pointer.
        Some(Hit6::Reply(reply)) => return reverse(ctx, tuple, unsafe { &*reply }),
        Some(Hit6::Service(tracked)) => Some(tracked),
        None => None,
    };
    // As for IPv4 (`main.rs`): a tracked flow whose frontend and backend were found in place
    // at the current generation skips both lookups; a SYN takes the full path.
    let generation = lb::generation();
    let checked = tracked
        .as_ref()
        .is_some_and(|tracked| tracked.checked_at(generation))
        && !tuple.is_syn();
    let frontend = if checked {
        None
    } else {
        let Some(frontend) = lb6::lookup_frontend(tuple) else {
            lb6::check_unknown_port(tuple)?;
            return Ok(Verdict::Pass);
        };
        Some(frontend)
    };
    if let Some(tracked) = tracked
        && (checked || keeps_backend(tuple, tracked.flow()))
    {
        tracked.mark_checked(generation);
        conntrack6::refresh(&tracked, tuple, config, scratch);
        return forward(ctx, tuple, tracked.flow());
    }
    // Not `checked`, so `frontend` was looked up.
    let Some(frontend) = frontend else {
        return Ok(Verdict::Pass);
    };
    new_flow(ctx, hook, tuple, &frontend, scratch, generation)
}

/// An ICMPv6 error about a translated flow is translated back and an echo request to a VIP
/// is answered by the VIP (`icmp6.rs`); other ICMPv6 passes untouched (neighbour discovery
/// and router advertisements must); another protocol to a VIP is dropped with 142.
#[inline(always)]
fn other(ctx: &TcContext, hook: Hook, tuple: &Tuple6) -> Result<Verdict, Dropped> {
    if tuple.proto == proto::ICMPV6 {
        let Some(word) = parse::load_u16(ctx, tuple.l4()) else {
            return Ok(Verdict::Pass);
        };
        let [kind, _code] = word.to_ne_bytes();
        if icmp6::is_error(kind) {
            let Some(scratch) = conntrack6::scratch() else {
                return Ok(Verdict::Pass);
            };
            return icmp6::translate_error(ctx, tuple, scratch);
        }
        if kind == icmp6::ECHO_REQUEST && lb6::is_known_vip(tuple.daddr) {
            return icmp6::answer_echo(ctx, hook, tuple);
        }
        return Ok(Verdict::Pass);
    }
    if lb6::is_known_vip(tuple.daddr) {
        return Err(dropped!(DropReason::UnknownL4));
    }
    Ok(Verdict::Pass)
}

/// A new flow to `frontend`: the policy, a backend, SNAT where needed, the conntrack entries,
/// and the first packet forwarded. `generation` was read before `frontend` was looked up.
#[inline(always)]
fn new_flow(
    ctx: &TcContext,
    hook: Hook,
    tuple: &Tuple6,
    frontend: &Frontend6,
    scratch: &mut Ct6Scratch,
    generation: u32,
) -> Result<Verdict, Dropped> {
    let config = maps::config();
    if hook == Hook::FromNetdev {
        policy6::check_external_access(frontend, config)?;
        policy6::check_source_range(frontend, &tuple.saddr)?;
    }
    if frontend.entry.count == 0
        && frontend.entry.flags & SERVICE_F_NO_ENDPOINTS != 0
        && config.flags & CONFIG_F_NO_BACKEND_DROP == 0
    {
        return icmp6::refuse(ctx, tuple, scratch);
    }
    let chosen = affinity6::select_backend(frontend, tuple, config)?;
    let now = now(config);
    let snat = if hairpin6::is_hairpin(hook, tuple, &chosen) {
        Some(nat6::select_hairpin_port(
            scratch, tuple, frontend, &chosen, config, now,
        )?)
    } else if needs_snat(hook, &chosen) {
        Some(nat6::select_snat_port(
            scratch, tuple, frontend, &chosen, config, now,
        )?)
    } else {
        None
    };
    conntrack6::service_entry(
        scratch, tuple, frontend, &chosen, hook, snat, config, now, generation,
    );
    let flow = conntrack6::create(
        tuple,
        scratch,
        snat.is_some(),
        now,
        |winner| keeps_backend(tuple, winner),
        config,
    )?;
    forward(ctx, tuple, flow)
}

/// Whether a tracked flow goes on to its recorded backend (see `main.rs`).
#[inline(always)]
fn keeps_backend(tuple: &Tuple6, flow: &CtService6) -> bool {
    lb6::lookup_flow_backend(flow.backend_id, &flow.backend_addr, flow.backend_port)
        .is_some_and(|backend| !tuple.is_syn() || lb6::is_active(&backend))
}

/// A flow from outside to a backend on another node is SNATed to this node.
#[inline(always)]
fn needs_snat(hook: Hook, chosen: &Chosen6) -> bool {
    hook == Hook::FromNetdev && chosen.backend.flags & BACKEND_F_REMOTE != 0
}

/// DNAT (and SNAT) a client's packet; a hairpinned one goes straight back to the pod it came
/// from; an SNATed one leaves by redirect along the route of its new addresses (the node's own
/// source address is a martian to the stack), its route looked up before the rewrite so that
/// a packet too big for it is answered as it arrived.
#[inline(always)]
fn forward(ctx: &TcContext, tuple: &Tuple6, flow: &CtService6) -> Result<Verdict, Dropped> {
    frag6::record(tuple);
    let to = nat6::dnat_target(tuple, flow);
    if hairpin6::is_hairpin_flow(flow) {
        nat6::rewrite(ctx, tuple, &to)?;
        // `redirect` reads the frame afresh: the rewrite's helpers invalidated packet pointers.
        return hairpin::redirect(ctx);
    }
    if flow.flags & CT_F_SNAT == 0 {
        nat6::rewrite(ctx, tuple, &to)?;
        return Ok(Verdict::Pass);
    }
    let route = fib6::lookup(ctx, tuple.proto, tuple.l4(), &to)?;
    if let Route6::TooBig { mtu } = route {
        return icmp6::answer_too_big(ctx, mtu, flow.snat_addr);
    }
    nat6::rewrite(ctx, tuple, &to)?;
    fib6::send(ctx, &route)
}

/// Reverse-NAT a backend's reply; a hairpinned flow's goes back to the pod it came from; a
/// reverse-SNATed reply or a node port's leaves by redirect (one too big for that route is
/// answered to the backend, from the node address it was sent to: the SNAT address, or the
/// node port's).
#[inline(always)]
fn reverse(ctx: &TcContext, tuple: &Tuple6, reply: &CtReply6) -> Result<Verdict, Dropped> {
    frag6::record(tuple);
    let to = nat6::rev_nat_target(tuple, reply);
    if reply.flags & CT_F_SNAT != 0 && hairpin6::is_hairpin_reply(tuple) {
        nat6::rewrite(ctx, tuple, &to)?;
        return hairpin::redirect(ctx);
    }
    if reply.flags & (CT_F_SNAT | CT_F_NODE_PORT) == 0 {
        nat6::rewrite(ctx, tuple, &to)?;
        return Ok(Verdict::Pass);
    }
    let route = fib6::lookup(ctx, tuple.proto, tuple.l4(), &to)?;
    if let Route6::TooBig { mtu } = route {
        let node = if reply.flags & CT_F_SNAT != 0 {
            tuple.daddr
        } else {
            *to.saddr
        };
        return icmp6::answer_too_big(ctx, mtu, node);
    }
    nat6::rewrite(ctx, tuple, &to)?;
    fib6::send(ctx, &route)
}
