//! Socket-level load balancing for the host's network namespace, as Cilium's `bpf_sock` does:
//! a host process (kubelet, a hostNetwork pod, the agent itself) that connects or sends to a
//! frontend has its socket's destination rewritten to a backend before any packet exists, so
//! its traffic needs no per-packet NAT (there is no hook on its way out to do that).
//!
//! - `connect4`/`connect6` and `sendmsg4`/`sendmsg6` (unconnected UDP): the frontend
//!   `user_ip:user_port/protocol` (`lb.rs`, `lb6.rs`), a backend (`affinity.rs`, `affinity6.rs`,
//!   with this node's address of that family as the client), the socket's destination
//!   rewritten, and a reverse entry recorded: (socket cookie, backend) → VIP:port.
//! - `recvmsg4`/`recvmsg6` (UDP) and `getpeername4`/`getpeername6`: the peer the kernel
//!   reports, a backend, is turned back into the VIP:port the socket asked for, so that a UDP
//!   client that checks where its answer came from (a resolver does) sees the address it sent
//!   to.
//! - IPv4-mapped addresses (`::ffff:a.b.c.d`), which a dual-stack IPv6 socket uses for IPv4
//!   peers, are IPv4 frontends and backends: the IPv6 hooks look them up in the IPv4 maps and
//!   write the backend back mapped. (A mapped `sendto` never reaches `sendmsg6`: the kernel
//!   hands it to the IPv4 path, whose `sendmsg4` translates it.)
//!
//! Only sockets of the host's network namespace (`LB_HOST_NETNS`, written by the agent) are
//! translated: pods' traffic goes through `from_pod`, whose conntrack, hairpin SNAT and
//! per-client affinity a socket-level rewrite would bypass. A frontend without backends
//! refuses the connect (ECONNREFUSED, as the REJECT of `icmp::refuse`; EHOSTUNREACH when the
//! Service has endpoints but none usable here, or in `drop` mode, as Cilium's socket LB does).
//!
//! Maps: `LB4_REVERSE_SK` and `LB6_REVERSE_SK` (LRU: entries of closed sockets age out; Cilium
//! deletes them from a `sock_release` hook), `LB_HOST_NETNS` (read). No drop reasons: a refused
//! connect is the syscall's error, not a packet.

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_ANY, bpf_sock_addr},
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    programs::SockAddrContext,
};
use lb_common::{
    Addr6,
    config::CONFIG_F_NO_BACKEND_DROP,
    proto,
    service::SERVICE_F_NO_ENDPOINTS,
    sock::{SockRevKey4, SockRevKey6, SockRevValue4, SockRevValue6},
};

use crate::{
    affinity, affinity6, lb, lb6,
    maps::{self, LB_HOST_NETNS, LB4_REVERSE_SK, LB6_REVERSE_SK},
    parse::{Shape, Tuple4},
    parse6::Tuple6,
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
        super::forward4(&ctx)
    }

    /// `sendto()`/`sendmsg()` with an address, on UDP sockets that are not connected.
    #[cgroup_sock_addr(sendmsg4)]
    pub fn sock4_sendmsg(ctx: SockAddrContext) -> i32 {
        super::forward4(&ctx)
    }

    /// `recvfrom()`/`recvmsg()` on UDP sockets: the source the caller sees.
    #[cgroup_sock_addr(recvmsg4)]
    pub fn sock4_recvmsg(ctx: SockAddrContext) -> i32 {
        super::reverse4(&ctx)
    }

    /// `getpeername()`.
    #[cgroup_sock_addr(getpeername4)]
    pub fn sock4_getpeername(ctx: SockAddrContext) -> i32 {
        super::reverse4(&ctx)
    }

    /// `connect()` of IPv6 TCP and UDP sockets.
    #[cgroup_sock_addr(connect6)]
    pub fn sock6_connect(ctx: SockAddrContext) -> i32 {
        super::forward6(&ctx)
    }

    /// `sendto()`/`sendmsg()` with an IPv6 address, on UDP sockets that are not connected.
    #[cgroup_sock_addr(sendmsg6)]
    pub fn sock6_sendmsg(ctx: SockAddrContext) -> i32 {
        super::forward6(&ctx)
    }

    /// `recvfrom()`/`recvmsg()` on IPv6 UDP sockets.
    #[cgroup_sock_addr(recvmsg6)]
    pub fn sock6_recvmsg(ctx: SockAddrContext) -> i32 {
        super::reverse6(&ctx)
    }

    /// `getpeername()` of IPv6 sockets.
    #[cgroup_sock_addr(getpeername6)]
    pub fn sock6_getpeername(ctx: SockAddrContext) -> i32 {
        super::reverse6(&ctx)
    }
}

/// The address a socket program sees, read from its context (one 4-byte load per field: the
/// verifier rewrites only loads of a field's exact size).
struct Addr<A> {
    ip: A,
    /// Network byte order, as a `lb-common` port field holds it.
    port: u16,
    proto: u8,
}

#[inline(always)]
fn read_addr4(ctx: &SockAddrContext) -> Addr<u32> {
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
fn read_addr6(ctx: &SockAddrContext) -> Addr<Addr6> {
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    // SAFETY: as `read_addr4`, for the IPv6 attach types; `user_ip6` is read word by word.
    unsafe {
        let ip6 = &raw const (*sa).user_ip6;
        Addr {
            ip: [
                core::ptr::read_volatile(&raw const (*ip6)[0]),
                core::ptr::read_volatile(&raw const (*ip6)[1]),
                core::ptr::read_volatile(&raw const (*ip6)[2]),
                core::ptr::read_volatile(&raw const (*ip6)[3]),
            ],
            port: core::ptr::read_volatile(&raw const (*sa).user_port) as u16,
            proto: core::ptr::read_volatile(&raw const (*sa).protocol) as u8,
        }
    }
}

#[inline(always)]
fn write_addr4(ctx: &SockAddrContext, ip: u32, port: u16) {
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    // SAFETY: `user_ip4` and `user_port` are writable by connect4, sendmsg4, recvmsg4 and
    // getpeername4, with 4-byte stores.
    unsafe {
        core::ptr::write_volatile(&raw mut (*sa).user_ip4, ip);
        core::ptr::write_volatile(&raw mut (*sa).user_port, u32::from(port));
    }
}

#[inline(always)]
fn write_addr6(ctx: &SockAddrContext, ip: &Addr6, port: u16) {
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    // SAFETY: `user_ip6` and `user_port` are writable by connect6, sendmsg6, recvmsg6 and
    // getpeername6, with 4-byte stores.
    unsafe {
        let ip6 = &raw mut (*sa).user_ip6;
        core::ptr::write_volatile(&raw mut (*ip6)[0], ip[0]);
        core::ptr::write_volatile(&raw mut (*ip6)[1], ip[1]);
        core::ptr::write_volatile(&raw mut (*ip6)[2], ip[2]);
        core::ptr::write_volatile(&raw mut (*ip6)[3], ip[3]);
        core::ptr::write_volatile(&raw mut (*sa).user_port, u32::from(port));
    }
}

/// Word 2 of an IPv4-mapped address (`::ffff:0:0/96`), as stored.
const MAPPED_PREFIX_WORD: u32 = 0x0000_ffff_u32.to_be();

/// The IPv4 address inside an IPv4-mapped IPv6 address, if `ip` is one.
#[inline(always)]
fn unmapped(ip: &Addr6) -> Option<u32> {
    (ip[0] == 0 && ip[1] == 0 && ip[2] == MAPPED_PREFIX_WORD).then_some(ip[3])
}

/// The IPv4-mapped IPv6 address of `ip`.
#[inline(always)]
fn mapped(ip: u32) -> Addr6 {
    [0, 0, MAPPED_PREFIX_WORD, ip]
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

#[inline(always)]
fn socket_cookie(ctx: &SockAddrContext) -> u64 {
    // SAFETY: the helper reads the context it is given, which is the program's.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

/// What a connect or send to an address turns into.
enum Forward<A> {
    /// Not a frontend: left as it is.
    Pass,
    /// To this backend (address, port).
    To(A, u16),
    /// Refused with this errno.
    Refuse(i32),
}

/// The errno of a frontend that has no backend to offer.
#[inline(always)]
fn refusal(flags: u8) -> i32 {
    let refused =
        flags & SERVICE_F_NO_ENDPOINTS != 0 && maps::config().flags & CONFIG_F_NO_BACKEND_DROP == 0;
    if refused { ECONNREFUSED } else { EHOSTUNREACH }
}

/// connect4 and sendmsg4: a frontend's address becomes a backend's.
#[inline(always)]
fn forward4(ctx: &SockAddrContext) -> i32 {
    if !in_host_netns(ctx) {
        return ALLOW;
    }
    match select4(ctx, &read_addr4(ctx)) {
        Forward::Pass => ALLOW,
        Forward::To(ip, port) => {
            write_addr4(ctx, ip, port);
            ALLOW
        }
        Forward::Refuse(errno) => reject(errno),
    }
}

/// connect6 and sendmsg6: an IPv6 frontend's address becomes a backend's; an IPv4-mapped one
/// an IPv4 backend's, mapped.
#[inline(always)]
fn forward6(ctx: &SockAddrContext) -> i32 {
    if !in_host_netns(ctx) {
        return ALLOW;
    }
    let addr = read_addr6(ctx);
    let forward = match unmapped(&addr.ip) {
        Some(ip) => match select4(
            ctx,
            &Addr {
                ip,
                port: addr.port,
                proto: addr.proto,
            },
        ) {
            Forward::Pass => Forward::Pass,
            Forward::To(ip, port) => Forward::To(mapped(ip), port),
            Forward::Refuse(errno) => Forward::Refuse(errno),
        },
        None => select6(ctx, &addr),
    };
    match forward {
        Forward::Pass => ALLOW,
        Forward::To(ip, port) => {
            write_addr6(ctx, &ip, port);
            ALLOW
        }
        Forward::Refuse(errno) => reject(errno),
    }
}

/// The IPv4 backend for a socket sent to `addr`, recorded in `LB4_REVERSE_SK`.
#[inline(always)]
fn select4(ctx: &SockAddrContext, addr: &Addr<u32>) -> Forward<u32> {
    if addr.proto != proto::TCP && addr.proto != proto::UDP {
        return Forward::Pass;
    }
    let Some(frontend) = lb::lookup_frontend_at(addr.ip, addr.port, addr.proto) else {
        return Forward::Pass;
    };
    let config = maps::config();
    let cookie = socket_cookie(ctx);
    // The flow as selection sees it. Affinity counts this node as one client, as kube-proxy
    // sees the node's own connections come from its address. No source port is bound yet at
    // connect: the socket's cookie stands in for it, so that Maglev spreads the node's sockets
    // like clients' flows.
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
        return Forward::Refuse(refusal(frontend.entry.flags));
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
        return Forward::Refuse(EHOSTUNREACH);
    }
    Forward::To(chosen.backend.addr, chosen.backend.port)
}

/// `select4` for an IPv6 frontend (`LB6_*` maps, `LB6_REVERSE_SK`, this node's IPv6 address
/// as the client).
#[inline(always)]
fn select6(ctx: &SockAddrContext, addr: &Addr<Addr6>) -> Forward<Addr6> {
    if addr.proto != proto::TCP && addr.proto != proto::UDP {
        return Forward::Pass;
    }
    let Some(frontend) = lb6::lookup_frontend_at(addr.ip, addr.port, addr.proto) else {
        return Forward::Pass;
    };
    let config = maps::config();
    let cookie = socket_cookie(ctx);
    let tuple = Tuple6 {
        saddr: config.node_addr6,
        daddr: addr.ip,
        sport: cookie as u16,
        dport: addr.port,
        proto: addr.proto,
        tcp_flags: 0,
        l4_off: 0,
        frag_id: 0,
        shape: Shape::Complete,
    };
    let Ok(chosen) = affinity6::select_backend(&frontend, &tuple, config) else {
        return Forward::Refuse(refusal(frontend.entry.flags));
    };
    let key = SockRevKey6 {
        cookie,
        backend_addr: chosen.backend.addr,
        backend_port: chosen.backend.port,
        _pad: [0; 3],
    };
    let value = SockRevValue6 {
        vip: frontend.vip,
        vip_port: frontend.port,
        rev_nat: frontend.entry.rev_nat,
        _pad: 0,
    };
    // As in `select4`.
    if LB6_REVERSE_SK
        .insert(key, value, u64::from(BPF_ANY))
        .is_err()
    {
        return Forward::Refuse(EHOSTUNREACH);
    }
    Forward::To(chosen.backend.addr, chosen.backend.port)
}

/// recvmsg4 and getpeername4: a backend's address reads as the VIP the socket asked for.
#[inline(always)]
fn reverse4(ctx: &SockAddrContext) -> i32 {
    if !in_host_netns(ctx) {
        return ALLOW;
    }
    if let Some((vip, port)) = frontend_of4(ctx, &read_addr4(ctx)) {
        write_addr4(ctx, vip, port);
    }
    ALLOW
}

/// recvmsg6 and getpeername6: an IPv6 backend's address, or an IPv4-mapped one, reads as the
/// VIP the socket asked for.
#[inline(always)]
fn reverse6(ctx: &SockAddrContext) -> i32 {
    if !in_host_netns(ctx) {
        return ALLOW;
    }
    let addr = read_addr6(ctx);
    let frontend = match unmapped(&addr.ip) {
        Some(ip) => frontend_of4(
            ctx,
            &Addr {
                ip,
                port: addr.port,
                proto: addr.proto,
            },
        )
        .map(|(vip, port)| (mapped(vip), port)),
        None => frontend_of6(ctx, &addr),
    };
    if let Some((vip, port)) = frontend {
        write_addr6(ctx, &vip, port);
    }
    ALLOW
}

/// The VIP:port the socket asked for when it was sent to the IPv4 backend `addr`, while that
/// frontend still belongs to the same service.
#[inline(always)]
fn frontend_of4(ctx: &SockAddrContext, addr: &Addr<u32>) -> Option<(u32, u16)> {
    let key = SockRevKey4 {
        cookie: socket_cookie(ctx),
        backend_addr: addr.ip,
        backend_port: addr.port,
        _pad: 0,
    };
    // SAFETY: copied out at once.
    let rev = (unsafe { LB4_REVERSE_SK.get(key) }).copied()?;
    match lb::lookup_frontend_at(rev.vip, rev.vip_port, addr.proto) {
        Some(frontend) if frontend.entry.rev_nat == rev.rev_nat => Some((rev.vip, rev.vip_port)),
        // The frontend is gone or now another service's: the peer is the backend again.
        _ => {
            let _ = LB4_REVERSE_SK.remove(key);
            None
        }
    }
}

/// `frontend_of4` for an IPv6 backend.
#[inline(always)]
fn frontend_of6(ctx: &SockAddrContext, addr: &Addr<Addr6>) -> Option<(Addr6, u16)> {
    let key = SockRevKey6 {
        cookie: socket_cookie(ctx),
        backend_addr: addr.ip,
        backend_port: addr.port,
        _pad: [0; 3],
    };
    // SAFETY: copied out at once.
    let rev = (unsafe { LB6_REVERSE_SK.get(key) }).copied()?;
    match lb6::lookup_frontend_at(rev.vip, rev.vip_port, addr.proto) {
        Some(frontend) if frontend.entry.rev_nat == rev.rev_nat => Some((rev.vip, rev.vip_port)),
        _ => {
            let _ = LB6_REVERSE_SK.remove(key);
            None
        }
    }
}

/// Fails the syscall with `errno`.
#[inline(always)]
fn reject(errno: i32) -> i32 {
    // SAFETY: a helper taking a plain integer; connect and sendmsg programs may set their
    // return value.
    unsafe { bpf_set_retval(-errno) };
    REJECT
}
