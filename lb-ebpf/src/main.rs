//! lb's datapath: the two TC programs and the packet path they share.
//!
//! - `from_netdev`: ingress of the node's external interfaces.
//! - `from_pod`: ingress of the host side of pod interfaces.
//!
//! Two modules declare programs of their own beside these: `host_reply.rs` (`from_host`, egress:
//! replies of host-network backends) and `sock.rs` (cgroup socket programs: socket-level load
//! balancing for the host's network namespace).
//!
//! Both run `handle`, which reads top to bottom like the packet path; the modules do the work
//! (one concern, and at most one map, each) and `drop::settle` turns the result into a TC
//! verdict. Replies are reverse-NATed at the ingress hook where they enter the node: from-pod
//! for local backends, from-netdev for remote ones. That is the one place every reply passes
//! before the stack routes it, so the stack sees (and routes, filters, delivers) the packet with
//! the VIP as its source, and lb needs no egress hook on every interface. See docs/datapath.md.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]
// `parse::opaque`'s register barrier (BPF inline assembly is still unstable; the BPF build
// uses nightly).
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]
// Built for the host (so that host clippy lints every module) only the hooks are missing, and
// without them nothing is called.
#![cfg_attr(
    not(target_arch = "bpf"),
    expect(
        dead_code,
        reason = "on the host the modules are only type-checked and linted; the hooks that call them are BPF-only"
    )
)]

mod affinity;
mod conntrack;
mod csum;
mod drop;
mod events;
mod fib;
mod filter;
mod frag;
mod hairpin;
// Replies of host-network backends: an egress program of its own, declared in the module.
mod host_reply;
mod icmp;
mod icmp6;
// The IPv6 path, one module per concern as for IPv4: ipv6 (the path), parse6, lb6, policy6,
// conntrack6, nat6, fib6, icmp6, frag6, affinity6, hairpin6.
mod affinity6;
mod conntrack6;
mod fib6;
mod frag6;
mod hairpin6;
mod ipv6;
mod lb;
mod lb6;
mod maglev;
mod maps;
mod metrics;
mod nat;
mod nat6;
mod parse;
mod parse6;
mod policy;
mod policy6;
// Socket-level load balancing: four cgroup programs of their own, declared in the module.
mod sock;

use aya_ebpf::programs::TcContext;
use lb_common::{
    config::{CONFIG_F_NO_BACKEND_DROP, DatapathConfig},
    conntrack::{CT_F_NODE_PORT, CT_F_SNAT, CtReply, CtService},
    drop::Hook,
    proto,
    service::{BACKEND_F_REMOTE, SERVICE_F_NO_ENDPOINTS},
};

use crate::{
    conntrack::Hit,
    drop::{Dropped, Verdict},
    parse::{Shape, Tuple4},
};

/// The entry points, the panic handler and the licence: what only exists for the BPF target.
#[cfg(target_arch = "bpf")]
mod hooks {
    use aya_ebpf::{macros::classifier, programs::TcContext};
    use lb_common::drop::Hook;

    use crate::{drop, handle, parse, parse6};

    /// Ingress of the node's external interfaces.
    ///
    /// Inlined into the entry point the macro wraps it in: a BPF-to-BPF call and its return
    /// (a return thunk under this kernel's speculation mitigations) cost every packet.
    #[classifier]
    #[inline(always)]
    pub fn from_netdev(ctx: TcContext) -> i32 {
        if parse6::is_ipv6(&ctx) {
            return netdev6(ctx);
        }
        netdev4(ctx)
    }

    /// Ingress of the host side of pod interfaces (inlined into its entry point as
    /// `from_netdev` is).
    #[classifier]
    #[inline(always)]
    pub fn from_pod(ctx: TcContext) -> i32 {
        if parse6::is_ipv6(&ctx) {
            return pod6(ctx);
        }
        pod4(ctx)
    }

    // Each family's path is a BPF subprogram of its own: its frame then has the 512-byte
    // stack to itself, where one function holding both paths would need room for the two
    // (LLVM does not overlap their spill slots well enough). So an IPv4 packet pays one
    // BPF-to-BPF call; inlining the IPv4 path into the entry instead would put its frame and
    // the IPv6 subprogram's on one call chain, over 512 bytes.

    /// The IPv4 path of from-netdev.
    #[inline(never)]
    fn netdev4(ctx: TcContext) -> i32 {
        let tuple = parse::tuple4(&ctx);
        drop::settle(
            &ctx,
            Hook::FromNetdev,
            tuple.as_ref(),
            handle(&ctx, Hook::FromNetdev, tuple.as_ref()),
        )
    }

    /// The IPv4 path of from-pod.
    #[inline(never)]
    fn pod4(ctx: TcContext) -> i32 {
        let tuple = parse::tuple4(&ctx);
        drop::settle(
            &ctx,
            Hook::FromPod,
            tuple.as_ref(),
            handle(&ctx, Hook::FromPod, tuple.as_ref()),
        )
    }

    /// The IPv6 path of from-netdev (`ipv6.rs`).
    #[inline(never)]
    fn netdev6(ctx: TcContext) -> i32 {
        crate::ipv6::run(&ctx, Hook::FromNetdev)
    }

    /// The IPv6 path of from-pod (`ipv6.rs`).
    #[inline(never)]
    fn pod6(ctx: TcContext) -> i32 {
        crate::ipv6::run(&ctx, Hook::FromPod)
    }

    /// The conntrack clock, for the agent: never attached, run with `BPF_PROG_TEST_RUN`, it
    /// returns the datapath's now (seconds, `conntrack::now`), which entries' expiries count in.
    #[classifier]
    pub fn ct_clock(_ctx: TcContext) -> i32 {
        crate::conntrack::now(crate::maps::config()) as i32
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }

    // GPL-compatible, as the kernel requires for GPL-only helpers (bpf_ktime_get_ns,
    // bpf_fib_lookup, bpf_redirect_neigh, ...); the crate's licence is `MIT OR GPL-2.0` to
    // match (see README, "Licence").
    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
}

#[inline(always)]
fn handle(ctx: &TcContext, hook: Hook, tuple: Option<&Tuple4>) -> Result<Verdict, Dropped> {
    let Some(tuple) = tuple else {
        return Ok(Verdict::Pass);
    };
    // A later fragment has no ports of its own: its datagram's first fragment recorded them.
    // Another protocol is `icmp.rs`'s.
    let tuple = &match tuple.shape {
        Shape::Complete | Shape::FirstFragment => *tuple,
        // Fragments lb tracks are TCP's and UDP's; others to a VIP are dropped with 157.
        Shape::Fragment if tuple.proto != proto::TCP && tuple.proto != proto::UDP => {
            lb::check_malformed(tuple)?;
            return Ok(Verdict::Pass);
        }
        Shape::Fragment => match frag::lookup_ports(ctx, tuple)? {
            Some(with_ports) => with_ports,
            None => return Ok(Verdict::Pass),
        },
        Shape::Truncated => {
            lb::check_malformed(tuple)?;
            return Ok(Verdict::Pass);
        }
        Shape::Other => return icmp::handle(ctx, hook, tuple),
    };
    // Most packets on a node are no service's: two array lookups tell, before any hash
    // lookup, that no frontend has this destination and no reply entry this source.
    if !filter::maybe_lbs(tuple) {
        return Ok(Verdict::Pass);
    }
    let config = maps::config();
    // One conntrack lookup finds either direction. A backend's reply is translated back even
    // after its service is gone (its entry records the VIP:port it was sent to).
    let tracked = match conntrack::lookup(tuple, config) {
        Some(Hit::Reply(reply)) => return reverse(ctx, tuple, &reply),
        Some(Hit::Service(tracked)) => Some(tracked),
        None => None,
    };
    // A tracked flow whose frontend and backend were found in place at the current generation
    // of the service maps goes on without looking them up: the agent bumps the generation
    // after every removal, so nothing has gone since. A SYN takes the full path (it may not
    // reuse a terminating backend).
    let generation = lb::generation();
    let checked = tracked
        .as_ref()
        .is_some_and(|tracked| tracked.checked_at(generation))
        && !tuple.is_syn();
    // Otherwise the frontend: a flow whose service was deleted is no longer translated (its
    // conntrack entries are ignored until they expire), and traffic to no VIP passes.
    let frontend = if checked {
        None
    } else {
        let Some(frontend) = lb::lookup_frontend(tuple) else {
            lb::check_unknown_port(tuple)?;
            return Ok(Verdict::Pass);
        };
        Some(frontend)
    };
    if let Some(tracked) = tracked
        && (checked || keeps_backend(tuple, &tracked.flow))
    {
        tracked.mark_checked(generation);
        conntrack::refresh(&tracked, tuple, config);
        return forward(ctx, tuple, &tracked.flow);
    }
    // Not `checked`, so `frontend` was looked up.
    let Some(frontend) = frontend else {
        return Ok(Verdict::Pass);
    };
    // A new flow, or one whose backend is gone: its new entries replace the stale ones (TCP
    // then gets a RST from the new backend, UDP just moves).
    new_flow(ctx, hook, tuple, &frontend, config, generation)
}

/// A new flow to `frontend`: the external-access policy, then a backend (or a refusal), SNAT
/// where needed, the conntrack entries, and the first packet forwarded. `generation` is the
/// service maps' generation read before `frontend` was looked up.
#[inline(always)]
fn new_flow(
    ctx: &TcContext,
    hook: Hook,
    tuple: &Tuple4,
    frontend: &lb::Frontend,
    config: &DatapathConfig,
    generation: u32,
) -> Result<Verdict, Dropped> {
    if hook == Hook::FromNetdev {
        // Both before any conntrack entry.
        policy::check_external_access(frontend, config)?;
        policy::check_source_range(frontend, tuple.saddr)?;
    }
    if frontend.entry.count == 0
        && frontend.entry.flags & SERVICE_F_NO_ENDPOINTS != 0
        && config.flags & CONFIG_F_NO_BACKEND_DROP == 0
    {
        return icmp::refuse(ctx, tuple.daddr);
    }
    let chosen = affinity::select_backend(frontend, tuple)?;
    let now = conntrack::now(config);
    let snat = if hairpin::is_hairpin(hook, tuple, &chosen) {
        Some(nat::select_hairpin_port(
            tuple, frontend, &chosen, config, now,
        )?)
    } else if needs_snat(hook, &chosen) {
        Some(nat::select_snat_port(
            tuple, frontend, &chosen, config, now,
        )?)
    } else {
        None
    };
    let source = snat.map(|s| s.source);
    let flow = conntrack::service_entry(
        tuple, frontend, &chosen, hook, source, config, now, generation,
    );
    // Another CPU may have created this flow first: then its choice is followed.
    let reserved = snat.as_ref().map(|s| &s.reply_key);
    let flow = conntrack::create(tuple, &flow, reserved, config, now, |winner| {
        keeps_backend(tuple, winner)
    })?;
    forward(ctx, tuple, &flow)
}

/// Whether a tracked flow goes on to its recorded backend: while that is still there,
/// terminating included (drain), except that a new SYN to a terminating backend chooses an
/// active one.
#[inline(always)]
fn keeps_backend(tuple: &Tuple4, flow: &CtService) -> bool {
    lb::lookup_flow_backend(flow.backend_id, flow.backend_addr, flow.backend_port)
        .is_some_and(|backend| !tuple.is_syn() || lb::is_active(&backend))
}

/// A flow from outside the cluster to a backend on another node is SNATed to this node, so
/// that its replies come back here to be translated (pods' flows are not: backends see the
/// client pod's own address, unless the pod reaches itself, see `hairpin.rs`).
#[inline(always)]
fn needs_snat(hook: Hook, chosen: &lb::Chosen) -> bool {
    hook == Hook::FromNetdev && chosen.backend.flags & BACKEND_F_REMOTE != 0
}

/// DNAT (and SNAT) a client's packet for its service entry. A hairpinned packet goes straight
/// back to the pod it came from. An SNATed packet has the node's own address as its source, a
/// martian to the node's stack: it leaves by redirect, its route looked up before the rewrite,
/// so that a packet too big for it is answered as it arrived.
#[inline(always)]
fn forward(ctx: &TcContext, tuple: &Tuple4, flow: &CtService) -> Result<Verdict, Dropped> {
    frag::record(ctx, tuple);
    if hairpin::is_hairpin_flow(flow) {
        nat::dnat(ctx, tuple, flow)?;
        return hairpin::redirect(ctx);
    }
    if flow.flags & CT_F_SNAT == 0 {
        nat::dnat(ctx, tuple, flow)?;
        return Ok(Verdict::Pass);
    }
    let route = fib::lookup(ctx, &nat::dnat_target(tuple, flow))?;
    if let fib::Route::TooBig { mtu } = route {
        return icmp::answer_frag_needed(ctx, mtu, flow.snat_addr);
    }
    nat::dnat(ctx, tuple, flow)?;
    fib::send(ctx, &route)
}

/// Reverse-NAT a backend's reply. A hairpinned flow's reply goes back to the pod it came from.
/// A reverse-SNATed reply (VIP → external client) arrived on from-netdev addressed to this
/// node; it goes straight back out by redirect (a reply too big for that route is answered to
/// the backend, from the node it was sent to). So does the reply of a node-port flow, whose
/// restored source is this node's own address: the stack would drop it as a martian.
#[inline(always)]
fn reverse(ctx: &TcContext, tuple: &Tuple4, reply: &CtReply) -> Result<Verdict, Dropped> {
    frag::record(ctx, tuple);
    if reply.flags & CT_F_SNAT != 0 && hairpin::is_hairpin_reply(tuple) {
        nat::rev_nat(ctx, tuple, reply)?;
        return hairpin::redirect(ctx);
    }
    if reply.flags & (CT_F_SNAT | CT_F_NODE_PORT) == 0 {
        nat::rev_nat(ctx, tuple, reply)?;
        return Ok(Verdict::Pass);
    }
    let to = nat::rev_nat_target(tuple, reply);
    let route = fib::lookup(ctx, &to)?;
    if let fib::Route::TooBig { mtu } = route {
        // From the node address the reply reached: the SNAT address, or the node port's.
        let node = if reply.flags & CT_F_SNAT != 0 {
            tuple.daddr
        } else {
            to.saddr
        };
        return icmp::answer_frag_needed(ctx, mtu, node);
    }
    nat::rewrite(ctx, tuple, &to)?;
    fib::send(ctx, &route)
}

/// The host build of this binary does nothing: the programs only exist for the BPF target.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
