//! Socket-level load balancing for the host's network namespace, as Cilium's `bpf_sock` does:
//! a host process (kubelet, a hostNetwork pod, the agent itself) that connects or sends to a
//! frontend has its socket's destination rewritten to a backend before any packet exists, so
//! its traffic needs no per-packet NAT (there is no hook on its way out to do that).
//!
//! - `connect4` and `sendmsg4` (unconnected UDP): the frontend `user_ip4:user_port/protocol`
//!   (`lb.rs`), a backend (`affinity.rs`, with this node's address as the client), the socket's
//!   destination rewritten, and a reverse entry recorded: (socket cookie, backend) → VIP:port.
//! - `recvmsg4` (UDP) and `getpeername4`: the peer the kernel reports, a backend, is turned
//!   back into the VIP:port the socket asked for, so that a UDP client that checks where its
//!   answer came from (a resolver does) sees the address it sent to.
//!
//! Only sockets of the host's network namespace (`LB_HOST_NETNS`, written by the agent) are
//! translated: pods' traffic goes through `from_pod`, whose conntrack, hairpin SNAT and
//! per-client affinity a socket-level rewrite would bypass. A frontend without backends
//! refuses the connect (ECONNREFUSED, as the REJECT of `icmp::refuse`; EHOSTUNREACH when the
//! Service has endpoints but none usable here, or in `drop` mode, as Cilium's socket LB does).
//!
//! Maps: `LB4_REVERSE_SK` (LRU: entries of closed sockets age out; Cilium deletes them from a
//! `sock_release` hook), `LB_HOST_NETNS` (read). No drop reasons: a refused connect is the
//! syscall's error, not a packet.

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_ANY, bpf_sock_addr},
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    programs::SockAddrContext,
};
use lb_common::{
    config::CONFIG_F_NO_BACKEND_DROP,
    proto,
    service::SERVICE_F_NO_ENDPOINTS,
    sock::{SockRevKey4, SockRevValue4},
};

use crate::{
    affinity, lb,
    maps::{self, LB_HOST_NETNS, LB4_REVERSE_SK},
    parse::{Shape, Tuple4},
};

/// The verdict that lets the syscall go on (with the rewritten address, if any).
const ALLOW: i32 = 1;
/// The verdict that fails the syscall, with the error set by `bpf_set_retval`.
const REJECT: i32 = 0;

const ECONNREFUSED: i32 = 111;
const EHOSTUNREACH: i32 = 113;

/// The entry points. Their names are what the agent attaches (`datapath/sock.rs`).
#[cfg(target_arch = "bpf")]
mod hooks {
    use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};

    /// `connect()` of TCP and UDP sockets.
    #[cgroup_sock_addr(connect4)]
    pub fn sock4_connect(ctx: SockAddrContext) -> i32 {
        super::translate_forward(&ctx)
    }

    /// `sendto()`/`sendmsg()` with an address, on UDP sockets that are not connected.
    #[cgroup_sock_addr(sendmsg4)]
    pub fn sock4_sendmsg(ctx: SockAddrContext) -> i32 {
        super::translate_forward(&ctx)
    }

    /// `recvfrom()`/`recvmsg()` on UDP sockets: the source the caller sees.
    #[cgroup_sock_addr(recvmsg4)]
    pub fn sock4_recvmsg(ctx: SockAddrContext) -> i32 {
        super::translate_reverse(&ctx)
    }

    /// `getpeername()`.
    #[cgroup_sock_addr(getpeername4)]
    pub fn sock4_getpeername(ctx: SockAddrContext) -> i32 {
        super::translate_reverse(&ctx)
    }
}

/// The address a socket program sees, read from its context (one 4-byte load per field: the
/// verifier rewrites only loads of a field's exact size).
struct Addr {
    ip: u32,
    /// Network byte order, as a `lb-common` port field holds it.
    port: u16,
    proto: u8,
}

#[inline(always)]
fn read_addr(ctx: &SockAddrContext) -> Addr {
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    // SAFETY: `sa` is the program's context; these fields are readable by every attach type
    // used here, with 4-byte loads.
    unsafe {
        Addr {
            ip: core::ptr::read_volatile(&raw const (*sa).user_ip4),
            // `user_port` holds the port's two bytes in network order at its start.
            port: core::ptr::read_volatile(&raw const (*sa).user_port) as u16,
            proto: core::ptr::read_volatile(&raw const (*sa).protocol) as u8,
        }
    }
}

#[inline(always)]
fn write_addr(ctx: &SockAddrContext, ip: u32, port: u16) {
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    // SAFETY: `user_ip4` and `user_port` are writable by connect4, sendmsg4, recvmsg4 and
    // getpeername4, with 4-byte stores.
    unsafe {
        core::ptr::write_volatile(&raw mut (*sa).user_ip4, ip);
        core::ptr::write_volatile(&raw mut (*sa).user_port, u32::from(port));
    }
}

/// Whether the socket belongs to the host's network namespace (the agent's).
#[inline(always)]
fn in_host_netns(ctx: &SockAddrContext) -> bool {
    let Some(host) = LB_HOST_NETNS.get(0).copied() else {
        return false;
    };
    // SAFETY: the helper reads the context it is given, which is the program's.
    host != 0 && unsafe { bpf_get_netns_cookie(ctx.as_ptr()) } == host
}

/// connect4 and sendmsg4: a frontend's address becomes a backend's.
#[inline(always)]
fn translate_forward(ctx: &SockAddrContext) -> i32 {
    if !in_host_netns(ctx) {
        return ALLOW;
    }
    let addr = read_addr(ctx);
    if addr.proto != proto::TCP && addr.proto != proto::UDP {
        return ALLOW;
    }
    let Some(frontend) = lb::lookup_frontend_at(addr.ip, addr.port, addr.proto) else {
        return ALLOW;
    };
    let config = maps::config();
    let refused = frontend.entry.flags & SERVICE_F_NO_ENDPOINTS != 0
        && config.flags & CONFIG_F_NO_BACKEND_DROP == 0;
    // Affinity counts this node as one client, as kube-proxy sees the node's own connections
    // come from its address.
    // SAFETY: the helper reads the context it is given, which is the program's.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // The flow as selection sees it. No source port is bound yet at connect: the socket's
    // cookie stands in for it, so that Maglev spreads the node's sockets like clients' flows.
    let tuple = Tuple4 {
        saddr: config.node_addr,
        daddr: addr.ip,
        sport: cookie as u16,
        dport: addr.port,
        proto: addr.proto,
        tcp_flags: 0,
        l4_off: 0,
        shape: Shape::Complete,
    };
    let Ok(chosen) = affinity::select_backend(&frontend, &tuple) else {
        return reject(if refused { ECONNREFUSED } else { EHOSTUNREACH });
    };
    let key = SockRevKey4 {
        cookie,
        backend_addr: chosen.backend.addr,
        backend_port: chosen.backend.port,
        _pad: 0,
    };
    let value = SockRevValue4 {
        vip: frontend.vip,
        rev_nat: frontend.entry.rev_nat,
        vip_port: frontend.port,
        _pad: 0,
    };
    // An LRU insert fails only when memory does: the socket's peer then reads as the backend,
    // which a UDP client that checks its answers' source would drop, so refuse it instead.
    if LB4_REVERSE_SK
        .insert(key, value, u64::from(BPF_ANY))
        .is_err()
    {
        return reject(EHOSTUNREACH);
    }
    write_addr(ctx, chosen.backend.addr, chosen.backend.port);
    ALLOW
}

/// recvmsg4 and getpeername4: a backend's address reads as the VIP the socket asked for, while
/// that frontend still belongs to the same service.
#[inline(always)]
fn translate_reverse(ctx: &SockAddrContext) -> i32 {
    if !in_host_netns(ctx) {
        return ALLOW;
    }
    let addr = read_addr(ctx);
    let key = SockRevKey4 {
        // SAFETY: the helper reads the context it is given, which is the program's.
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        backend_addr: addr.ip,
        backend_port: addr.port,
        _pad: 0,
    };
    // SAFETY: copied out at once.
    let Some(rev) = (unsafe { LB4_REVERSE_SK.get(key) }).copied() else {
        return ALLOW;
    };
    match lb::lookup_frontend_at(rev.vip, rev.vip_port, addr.proto) {
        Some(frontend) if frontend.entry.rev_nat == rev.rev_nat => {
            write_addr(ctx, rev.vip, rev.vip_port);
        }
        // The frontend is gone or now another service's: the peer is the backend again.
        _ => {
            let _ = LB4_REVERSE_SK.remove(key);
        }
    }
    ALLOW
}

/// Fails the syscall with `errno`.
#[inline(always)]
fn reject(errno: i32) -> i32 {
    // SAFETY: a helper taking a plain integer; connect4 and sendmsg4 may set their return value.
    unsafe { bpf_set_retval(-errno) };
    REJECT
}
