//! ICMP, and every protocol lb does not balance.
//!
//! - **Errors about translated flows** (destination unreachable, fragmentation needed
//!   included; time exceeded; parameter problem) quote the packet that caused them, as its
//!   sender's peer saw it: after DNAT (and SNAT). Before they reach that sender they are
//!   translated back like the flow's own packets: the outer addresses and the quoted header
//!   (addresses, ports, its IP checksum and, when quoted, its TCP/UDP checksum), with the ICMP
//!   and outer IP checksums updated to match. The flow is found through conntrack: an error
//!   about a client's packet by the reply entry of the quoted tuple reversed, an error about a
//!   reply by the service entry likewise. An error whose quote matches no flow passes untouched
//!   (158 if it is addressed to a VIP).
//! - **Echo requests to a VIP** are answered by the VIP itself, as a VIP on kube-proxy's IPVS
//!   dummy interface is; from outside only when the VIP is reachable from there (174
//!   otherwise, as for TCP and UDP).
//! - **Anything else to a VIP** is dropped: other ICMP types with 144, other protocols (SCTP,
//!   GRE, ...) with 142. Elsewhere lb hands them on.
//! - **The error builder** ([`send_error`]) turns the packet in hand into an ICMP error about
//!   itself, back to its sender: "fragmentation needed" for a packet too big for the route of
//!   an SNATed flow ([`answer_frag_needed`]), and any other error a caller needs.
//!
//! Rewrites use direct packet access and RFC 1624 incremental checksums computed here: each
//! changed word is compensated in the checksum that covers it, so the sum over the whole
//! packet, and with it a CHECKSUM_COMPLETE `skb->csum`, is unchanged. Maps: none of its own
//! (conntrack through `conntrack.rs`, rev-NAT through `nat.rs`, VIPs through `lb.rs`).

use core::mem::size_of;

use aya_ebpf::{
    helpers::{
        bpf_get_prandom_u32, bpf_redirect, bpf_skb_change_tail, bpf_skb_load_bytes,
        bpf_skb_store_bytes,
    },
    programs::TcContext,
};
use lb_common::{
    conntrack::CT_F_SNAT,
    drop::{DropReason, Hook, SourceFile},
    proto,
};

use crate::{
    conntrack::{self, Hit},
    drop::{Dropped, Verdict, dropped},
    fib, lb,
    maps::{self, IcmpAnswer, LB_SCRATCH},
    parse::{
        ETH_LEN, IP_CSUM_OFF, IP_DADDR_OFF, IP_OFF, IP_SADDR_OFF, Shape, Tuple4, load_u16,
        load_u32, split, store_u16, store_u32,
    },
    policy,
};

const FILE: SourceFile = SourceFile::Icmp;

/// ICMP types (RFC 792).
const ECHO_REPLY: u8 = 0;
/// Destination unreachable.
pub const DEST_UNREACH: u8 = 3;
const ECHO_REQUEST: u8 = 8;
const TIME_EXCEEDED: u8 = 11;
const PARAM_PROBLEM: u8 = 12;
/// Code of "fragmentation needed and DF set" under [`DEST_UNREACH`].
pub const FRAG_NEEDED: u8 = 4;
/// Destination unreachable: port unreachable (RFC 792), how a refused flow is answered.
const PORT_UNREACH: u8 = 3;

/// The ICMP header: type, code, checksum and four bytes that depend on the type.
const ICMP_LEN: usize = 8;
/// What an error quotes beyond the IP header: enough for the ports (RFC 792).
const QUOTED_L4: usize = 8;
const IP_DF: u16 = 0x4000;
/// TTL of the packets lb builds, the kernel's default.
const TTL: u8 = 64;
/// TOS of an ICMP error: the offending packet's TOS bits with "internetwork control"
/// precedence, as the kernel sets it.
const TOS_MASK: u8 = 0x1e;
const PREC_INTERNETCONTROL: u8 = 0xc0;
const ETH_P_IP: u16 = 0x0800;

/// ICMP, or another protocol than TCP and UDP (`tuple.shape` is `Other`): translate an error,
/// answer a ping to a VIP, or drop what is addressed to a VIP; hand on the rest.
#[inline(always)]
pub fn handle(ctx: &TcContext, hook: Hook, tuple: &Tuple4) -> Result<Verdict, Dropped> {
    if tuple.proto != proto::ICMP {
        return check_vip(tuple.daddr, dropped!(DropReason::UnknownL4));
    }
    let l4 = tuple.l4();
    let Some(first) = load_u16(ctx, l4) else {
        return check_vip(tuple.daddr, dropped!(DropReason::Invalid));
    };
    let [kind, _code] = first.to_ne_bytes();
    match kind {
        DEST_UNREACH | TIME_EXCEEDED | PARAM_PROBLEM => translate_error(ctx, tuple),
        ECHO_REQUEST if lb::is_known_vip(tuple.daddr) => answer_echo(ctx, hook, tuple),
        _ => check_vip(tuple.daddr, dropped!(DropReason::UnknownIcmp4Type)),
    }
}

/// `dropped` if `addr` is a VIP (nothing behind a VIP answers what lb does not translate, and
/// the default route must not see it), else pass.
#[inline(always)]
fn check_vip(addr: u32, dropped: Dropped) -> Result<Verdict, Dropped> {
    if lb::is_known_vip(addr) {
        return Err(dropped);
    }
    Ok(Verdict::Pass)
}

/// The packet an ICMP error quotes: its IP header at `ip_off` and the first bytes of its
/// TCP or UDP header at `l4_off`; addresses and ports as stored (network byte order).
#[derive(Clone, Copy)]
struct Quoted {
    ip_off: usize,
    l4_off: usize,
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
    proto: u8,
}

impl Quoted {
    /// The quote of the ICMP error `outer`, if it holds a TCP or UDP header's ports.
    #[inline(always)]
    fn read(ctx: &TcContext, outer: &Tuple4) -> Option<Self> {
        let ip_off = outer.l4() + ICMP_LEN;
        let [ver_ihl, _tos] = load_u16(ctx, ip_off)?.to_ne_bytes();
        let ihl = usize::from(ver_ihl & 0x0f);
        if ver_ihl >> 4 != 4 || ihl < 5 {
            return None;
        }
        let [_ttl, proto] = load_u16(ctx, ip_off + 8)?.to_ne_bytes();
        if proto != proto::TCP && proto != proto::UDP {
            return None;
        }
        // Both offsets are bounded (outer IHL and inner IHL are 4 bits each) and even.
        let l4_off = ip_off + ihl * 4;
        Some(Self {
            ip_off,
            l4_off,
            saddr: load_u32(ctx, ip_off + 12)?,
            daddr: load_u32(ctx, ip_off + 16)?,
            sport: load_u16(ctx, l4_off)?,
            dport: load_u16(ctx, l4_off + 2)?,
            proto,
        })
    }

    /// Offset of the quoted TCP or UDP checksum.
    #[inline(always)]
    fn l4_csum_off(&self) -> usize {
        let field = if self.proto == proto::TCP { 16 } else { 6 };
        self.l4_off + field
    }
}

/// The tuple of packets from `saddr:sport` to `daddr:dport`, for a conntrack lookup.
#[inline(always)]
fn flow(saddr: u32, daddr: u32, sport: u16, dport: u16, proto: u8) -> Tuple4 {
    Tuple4 {
        saddr,
        daddr,
        sport,
        dport,
        proto,
        tcp_flags: 0,
        l4_off: 0,
        shape: Shape::Complete,
    }
}

/// Translates an ICMP error about a translated flow back for the host it is travelling to.
#[inline(always)]
fn translate_error(ctx: &TcContext, outer: &Tuple4) -> Result<Verdict, Dropped> {
    let Some(quoted) = Quoted::read(ctx, outer) else {
        return check_vip(outer.daddr, dropped!(DropReason::NoService));
    };
    // About a client's packet (client → backend, or node:port → backend after SNAT), on its
    // way back to the client: the quote reversed is the tuple of the backend's replies, the
    // key of the reply entry.
    let reversed = flow(
        quoted.daddr,
        quoted.saddr,
        quoted.dport,
        quoted.sport,
        quoted.proto,
    );
    // About a backend's reply (VIP → client as the client received it), on its way to the
    // backend: the quote reversed is the client's tuple, the key of the service entry. One
    // lookup finds either.
    match conntrack::lookup(&reversed, maps::config()) {
        Some(Hit::Reply(reply)) => {
            let snat = reply.flags & CT_F_SNAT != 0;
            let mut to = quoted;
            to.daddr = reply.vip;
            to.dport = reply.vip_port;
            let mut out = *outer;
            if outer.saddr == quoted.daddr {
                // Sent by the backend itself (a router on the way keeps its own address).
                out.saddr = reply.vip;
            }
            if snat {
                to.saddr = reply.client_addr;
                to.sport = reply.client_port;
                out.daddr = reply.client_addr;
            }
            rewrite_error(ctx, outer, &out, &quoted, &to)?;
            if snat {
                fib::redirect(ctx, &out)
            } else {
                Ok(Verdict::Pass)
            }
        }
        Some(Hit::Service(tracked)) => {
            let service = tracked.flow;
            let snat = service.flags & CT_F_SNAT != 0;
            let mut to = quoted;
            to.saddr = service.backend_addr;
            to.sport = service.backend_port;
            let mut out = *outer;
            out.daddr = service.backend_addr;
            if snat {
                to.daddr = service.snat_addr;
                to.dport = service.snat_port;
                if outer.saddr == quoted.daddr {
                    out.saddr = service.snat_addr;
                }
            }
            rewrite_error(ctx, outer, &out, &quoted, &to)?;
            if snat {
                fib::redirect(ctx, &out)
            } else {
                Ok(Verdict::Pass)
            }
        }
        None => check_vip(outer.daddr, dropped!(DropReason::NoService)),
    }
}

/// RFC 1624 incremental update of an Internet checksum: `HC' = ~(~HC + ~m + m')` for each
/// changed 16-bit word, words as stored (the sum does not depend on byte order).
struct Csum(u32);

impl Csum {
    #[inline(always)]
    fn of(check: u16) -> Self {
        Self(u32::from(!check))
    }

    #[inline(always)]
    fn replace(&mut self, old: u16, new: u16) {
        self.0 += u32::from(!old) + u32::from(new);
    }

    #[inline(always)]
    fn replace32(&mut self, old: u32, new: u32) {
        let [old_hi, old_lo] = split(old);
        let [new_hi, new_lo] = split(new);
        self.replace(old_hi, new_hi);
        self.replace(old_lo, new_lo);
    }

    #[inline(always)]
    fn finish(self) -> u16 {
        let mut sum = self.0;
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        !(sum as u16)
    }
}

/// Writes the translated error: outer addresses `outer` → `out`, the quote `from` → `to`, and
/// every checksum that covers them.
#[inline(always)]
fn rewrite_error(
    ctx: &TcContext,
    outer: &Tuple4,
    out: &Tuple4,
    from: &Quoted,
    to: &Quoted,
) -> Result<(), Dropped> {
    let write_error = dropped!(DropReason::WriteError);
    let icmp_csum_off = outer.l4() + 2;
    let quoted_ip_csum_off = from.ip_off + 10;
    let old_ip = load_u16(ctx, IP_CSUM_OFF).ok_or(write_error)?;
    let old_icmp = load_u16(ctx, icmp_csum_off).ok_or(write_error)?;
    let old_quoted_ip = load_u16(ctx, quoted_ip_csum_off).ok_or(write_error)?;

    let mut quoted_ip = Csum::of(old_quoted_ip);
    quoted_ip.replace32(from.saddr, to.saddr);
    quoted_ip.replace32(from.daddr, to.daddr);
    let new_quoted_ip = quoted_ip.finish();

    let mut icmp = Csum::of(old_icmp);
    icmp.replace32(from.saddr, to.saddr);
    icmp.replace32(from.daddr, to.daddr);
    icmp.replace(from.sport, to.sport);
    icmp.replace(from.dport, to.dport);
    icmp.replace(old_quoted_ip, new_quoted_ip);

    // The quoted TCP/UDP checksum, when the quote reaches it (UDP's always does; TCP's only in
    // errors that quote more than 8 bytes, as Linux's do): the kernel does not verify it, but
    // updated, the quote is again exactly the packet its sender sent. A UDP checksum of 0
    // means "none" and stays 0.
    let l4_csum_off = from.l4_csum_off();
    if let Some(old_l4) = load_u16(ctx, l4_csum_off).filter(|&c| c != 0 || from.proto == proto::TCP)
    {
        let mut l4 = Csum::of(old_l4);
        l4.replace32(from.saddr, to.saddr);
        l4.replace32(from.daddr, to.daddr);
        l4.replace(from.sport, to.sport);
        l4.replace(from.dport, to.dport);
        let mut new_l4 = l4.finish();
        if new_l4 == 0 && from.proto == proto::UDP {
            new_l4 = 0xffff;
        }
        icmp.replace(old_l4, new_l4);
        store_u16(ctx, l4_csum_off, new_l4).ok_or(write_error)?;
    }

    let mut ip = Csum::of(old_ip);
    ip.replace32(outer.saddr, out.saddr);
    ip.replace32(outer.daddr, out.daddr);

    let written = store_u32(ctx, IP_SADDR_OFF, out.saddr)
        .and_then(|()| store_u32(ctx, IP_DADDR_OFF, out.daddr))
        .and_then(|()| store_u16(ctx, IP_CSUM_OFF, ip.finish()))
        .and_then(|()| store_u16(ctx, icmp_csum_off, icmp.finish()))
        .and_then(|()| store_u32(ctx, from.ip_off + 12, to.saddr))
        .and_then(|()| store_u32(ctx, from.ip_off + 16, to.daddr))
        .and_then(|()| store_u16(ctx, quoted_ip_csum_off, new_quoted_ip))
        .and_then(|()| store_u16(ctx, from.l4_off, to.sport))
        .and_then(|()| store_u16(ctx, from.l4_off + 2, to.dport));
    written.ok_or(write_error)
}

/// The ifindex the packet arrived on.
#[inline(always)]
fn ingress_ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer is valid for the whole run.
    unsafe { (*ctx.skb.skb).ifindex }
}

/// Swaps the Ethernet source and destination: the frame goes back where it came from.
#[inline(always)]
fn swap_macs(ctx: &TcContext) -> Option<()> {
    let eth = crate::parse::ptr_at::<[u16; 6]>(ctx, 0)?;
    // SAFETY: `ptr_at` checked the 12 bytes; they start the packet, so the words are aligned.
    unsafe {
        let [d0, d1, d2, s0, s1, s2] = eth.read();
        eth.write([s0, s1, s2, d0, d1, d2]);
    }
    Some(())
}

/// Answers an echo request to a VIP in place: an echo reply from the VIP, back out of the
/// interface the request came in on.
#[inline(always)]
fn answer_echo(ctx: &TcContext, hook: Hook, tuple: &Tuple4) -> Result<Verdict, Dropped> {
    if hook == Hook::FromNetdev {
        // From outside only what TCP and UDP to this VIP may reach (174 otherwise).
        if let Some(vip) = lb::lookup_vip(tuple.daddr) {
            policy::check_external_access(&vip, maps::config())?;
        }
    }
    let write_error = dropped!(DropReason::WriteError);
    let l4 = tuple.l4();
    let ttl_proto = load_u16(ctx, IP_OFF + 8).ok_or(write_error)?;
    let old_ip = load_u16(ctx, IP_CSUM_OFF).ok_or(write_error)?;
    let type_code = load_u16(ctx, l4).ok_or(write_error)?;
    let old_icmp = load_u16(ctx, l4 + 2).ok_or(write_error)?;
    let [_ttl, protocol] = ttl_proto.to_ne_bytes();
    let [_type, code] = type_code.to_ne_bytes();
    let new_ttl_proto = u16::from_ne_bytes([TTL, protocol]);
    let reply_type_code = u16::from_ne_bytes([ECHO_REPLY, code]);
    // Swapping the addresses leaves the IP checksum as it was; the TTL changes it.
    let mut ip = Csum::of(old_ip);
    ip.replace(ttl_proto, new_ttl_proto);
    let mut icmp = Csum::of(old_icmp);
    icmp.replace(type_code, reply_type_code);
    let written = swap_macs(ctx)
        .and_then(|()| store_u32(ctx, IP_SADDR_OFF, tuple.daddr))
        .and_then(|()| store_u32(ctx, IP_DADDR_OFF, tuple.saddr))
        .and_then(|()| store_u16(ctx, IP_OFF + 8, new_ttl_proto))
        .and_then(|()| store_u16(ctx, IP_CSUM_OFF, ip.finish()))
        .and_then(|()| store_u16(ctx, l4, reply_type_code))
        .and_then(|()| store_u16(ctx, l4 + 2, icmp.finish()));
    written.ok_or(write_error)?;
    // SAFETY: a helper taking plain integers.
    let code = unsafe { bpf_redirect(ingress_ifindex(ctx), 0) };
    Ok(Verdict::Redirect(code as i32))
}

/// Refuses a new flow to a Service without endpoints as kube-proxy does: ICMP port unreachable
/// from the VIP, so that `connect()` fails at once with ECONNREFUSED and a UDP sender learns it
/// too (k8s-semantics.md §2.6); counted as 158, like the silent drop it replaces.
#[inline(always)]
pub fn refuse(ctx: &TcContext, vip: u32) -> Result<Verdict, Dropped> {
    let dropped = dropped!(DropReason::NoService);
    let len = ctx.len();
    let code = send_error(ctx, vip, DEST_UNREACH, PORT_UNREACH, [0, 0])?;
    Ok(Verdict::Answered { code, dropped, len })
}

/// Answers a packet too big for the route of its (SNATed) flow, whose egress MTU is `mtu`
/// (host byte order): with DF set, ICMP "fragmentation needed" carrying that MTU, from `from`
/// (the node) to the sender, as a router's stack would; the drop (136) is counted either way.
/// Without DF the stack would fragment it, which lb cannot: it is only dropped.
#[inline(always)]
pub fn answer_frag_needed(ctx: &TcContext, mtu: u16, from: u32) -> Result<Verdict, Dropped> {
    let dropped = dropped!(DropReason::FragNeeded);
    let frag = load_u16(ctx, IP_OFF + 6).ok_or(dropped)?;
    if u16::from_be(frag) & IP_DF == 0 {
        return Err(dropped);
    }
    let len = ctx.len();
    // Rest of the header: 16 unused bits, then the next-hop MTU (RFC 1191).
    let code = send_error(ctx, from, DEST_UNREACH, FRAG_NEEDED, [0, mtu.to_be()])?;
    Ok(Verdict::Answered { code, dropped, len })
}

/// Room for the answer: Ethernet (14) + IP (20) + ICMP (8) + the quote (IP header of at most
/// 60 bytes + 8), in 16-bit words.
const ANSWER_WORDS: usize = 56;
/// Word offsets in the answer.
const W_IP: usize = ETH_LEN / 2;
const W_ICMP: usize = W_IP + 10;
const W_QUOTE: usize = W_ICMP + ICMP_LEN / 2;
/// The largest ICMP message (header + quote) in words.
const ICMP_MAX_WORDS: usize = ANSWER_WORDS - W_ICMP;

const _: () = assert!(size_of::<IcmpAnswer>() == ANSWER_WORDS * 2);

/// Turns the packet in hand into the ICMP error `kind`/`code` about it, with `info` (as
/// stored) as the header's last four bytes, from `from` to the packet's sender, and sends it
/// back out of the interface the packet arrived on, to the MAC it came from. The error quotes
/// the packet's IP header and the first 8 bytes of its payload (RFC 792). Returns the
/// redirect's code; 134 for a packet too short to quote, 141 when the packet cannot be
/// resized or written.
///
/// Callers answer only TCP and UDP packets that are no fragments (an error is never sent about
/// an ICMP error, RFC 1122). A CHECKSUM_PARTIAL packet (from a local socket, through a veth)
/// keeps that state: the answer only crosses a veth again, which computes nothing.
#[inline(always)]
pub fn send_error(
    ctx: &TcContext,
    from: u32,
    kind: u8,
    code: u8,
    info: [u16; 2],
) -> Result<i32, Dropped> {
    let invalid = dropped!(DropReason::Invalid);
    let write_error = dropped!(DropReason::WriteError);
    let Some(eth) = crate::parse::ptr_at::<[u16; 6]>(ctx, 0) else {
        return Err(invalid);
    };
    // SAFETY: `ptr_at` checked the 12 bytes; they start the packet, so the words are aligned.
    let [d0, d1, d2, s0, s1, s2] = unsafe { eth.read() };
    let [ver_ihl, tos] = load_u16(ctx, IP_OFF).ok_or(invalid)?.to_ne_bytes();
    let sender = load_u32(ctx, IP_SADDR_OFF).ok_or(invalid)?;
    let ihl = u32::from(ver_ihl & 0x0f);
    if ihl < 5 {
        return Err(invalid);
    }
    // 28..=68 bytes, a multiple of 4: the verifier sees the bound through the mask above.
    let quote_len = ihl * 4 + QUOTED_L4 as u32;

    // Built in the per-CPU scratch map, not on the stack: the packet path's frame has no room
    // for 112 more bytes.
    let Some(answer) = LB_SCRATCH.get_ptr_mut(0) else {
        return Err(write_error);
    };
    let words = answer.cast::<u64>();
    for i in 0..size_of::<IcmpAnswer>() / size_of::<u64>() {
        // SAFETY: word `i` lies within the map value, which is 8-aligned. Volatile, because
        // LLVM folds plain zero stores into a `memset` call, which the BPF backend does not
        // expand.
        unsafe { words.add(i).write_volatile(0) };
    }
    // SAFETY: a valid map value pointer, this CPU's own (the program is not preempted on it
    // while it runs); all zeros is a valid array of u16.
    let buf = unsafe { &mut (*answer).0 };
    // SAFETY: the quote (at most 68 bytes) fits in the buffer from `W_QUOTE` (112 - 42 bytes);
    // the helper fails if the packet is shorter than `quote_len`.
    let loaded = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            IP_OFF as u32,
            buf.as_mut_ptr().add(W_QUOTE).cast(),
            quote_len,
        )
    };
    if loaded != 0 {
        return Err(invalid);
    }

    let [from_hi, from_lo] = split(from);
    let [to_hi, to_lo] = split(sender);
    let icmp_len = ICMP_LEN as u32 + quote_len;
    let ip_len = 20 + icmp_len;
    // SAFETY: a helper without arguments.
    let id = unsafe { bpf_get_prandom_u32() } as u16;
    let header = [
        // Ethernet: back to where the packet came from.
        s0,
        s1,
        s2,
        d0,
        d1,
        d2,
        ETH_P_IP.to_be(),
        // IPv4, no options, not DF (the kernel's ICMP socket does not set it).
        u16::from_ne_bytes([0x45, (tos & TOS_MASK) | PREC_INTERNETCONTROL]),
        (ip_len as u16).to_be(),
        id,
        0,
        u16::from_ne_bytes([TTL, proto::ICMP]),
        0,
        from_hi,
        from_lo,
        to_hi,
        to_lo,
        // ICMP.
        u16::from_ne_bytes([kind, code]),
        0,
        info[0],
        info[1],
    ];
    for (slot, word) in buf.iter_mut().zip(header) {
        *slot = word;
    }
    let mut ip_sum = 0u32;
    for word in buf.iter().skip(W_IP).take(10) {
        ip_sum += u32::from(*word);
    }
    let icmp_words = (icmp_len / 2) as usize;
    let mut icmp_sum = 0u32;
    for (i, word) in buf.iter().skip(W_ICMP).take(ICMP_MAX_WORDS).enumerate() {
        if i < icmp_words {
            icmp_sum += u32::from(*word);
        }
    }
    if let Some(slot) = buf.get_mut(W_IP + 5) {
        *slot = fold(ip_sum);
    }
    if let Some(slot) = buf.get_mut(W_ICMP + 1) {
        *slot = fold(icmp_sum);
    }

    let frame_len = ETH_LEN as u32 + ip_len;
    // SAFETY: helpers on the program's own skb; the buffer holds `frame_len` (at most 110)
    // initialised bytes. Resizing invalidates packet pointers: none is used afterwards.
    unsafe {
        if bpf_skb_change_tail(ctx.skb.skb, frame_len, 0) != 0 {
            return Err(write_error);
        }
        if bpf_skb_store_bytes(ctx.skb.skb, 0, buf.as_ptr().cast(), frame_len, 0) != 0 {
            return Err(write_error);
        }
    }
    // SAFETY: a helper taking plain integers.
    let code = unsafe { bpf_redirect(ingress_ifindex(ctx), 0) };
    Ok(code as i32)
}

/// The Internet checksum of words summing to `sum`.
#[inline(always)]
fn fold(sum: u32) -> u16 {
    let mut sum = sum;
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}
