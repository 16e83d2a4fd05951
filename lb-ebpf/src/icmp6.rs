//! ICMPv6 of the IPv6 path (RFC 4443), as `icmp.rs` is for IPv4:
//!
//! - **Errors about translated flows** (destination unreachable, packet too big, time
//!   exceeded, parameter problem) quote the packet that caused them as its sender's peer saw
//!   it, after DNAT (and SNAT). They are translated back like the flow's own packets: the outer
//!   addresses and the quoted header's addresses and ports, its TCP/UDP checksum when the quote
//!   reaches it (a UDP checksum of 0 stays 0), and the ICMPv6 checksum, which covers the outer
//!   pseudo-header, the quote and that checksum. The flow is found with the quoted tuple
//!   reversed (`conntrack6::peek`, which leaves the entry as it is): an error about a client's
//!   packet by the reply entry, an error about a backend's reply by the service entry. An error
//!   from the quoted packet's destination itself comes from the address that packet was meant
//!   for (the VIP, or the SNAT address); a router keeps its own. A translated error of an
//!   SNATed flow leaves by redirect along its route (`fib6.rs`, 136 if it is too big for it).
//!   The quote must be a TCP or UDP header right behind the quoted IPv6 header (no extension
//!   headers); anything else, and an error whose quote matches no flow, passes untouched.
//! - **Packet too big** for the route of an SNATed flow ([`answer_too_big`]): an ICMPv6
//!   "packet too big" (type 2) carrying the egress device's MTU, from the node address the
//!   packet was sent to, back to its sender out of the interface it arrived on, quoting as
//!   much of the packet as fits in 1280 bytes (RFC 4443 §2.4); counted as 136 like the drop it
//!   replaces. The packet itself becomes the answer: trimmed to the quote, then 48 bytes of
//!   room opened after the Ethernet header (`bpf_skb_adjust_room`) for the new IPv6 and ICMPv6
//!   headers. The quote's sum is taken before, 256 bytes at a time through `LB6_SCRATCH` and
//!   `bpf_csum_diff`. A CHECKSUM_PARTIAL packet keeps that state, as in `icmp.rs`.
//! - **Echo requests to a VIP** are answered by the VIP itself, in place (from outside only
//!   when the VIP is reachable from there, 174 otherwise).
//! - **REJECT** of a new flow to a frontend without endpoints, as `icmp::refuse` does for IPv4
//!   (kube-proxy's behaviour, k8s-semantics.md §2.6): destination unreachable, port
//!   unreachable (type 1 code 4), from the VIP back to the sender, out of the interface the
//!   packet arrived on; counted as 158 like the silent drop it replaces. The answer is built in
//!   `LB6_SCRATCH` (its `answer`), then written over the packet with `bpf_skb_change_tail` and
//!   `bpf_skb_store_bytes`. It quotes the packet's IPv6 header, its extension headers and the
//!   first 8 bytes of its TCP/UDP header (enough for the sender's stack to find the socket); a
//!   packet whose headers make that longer than 112 bytes is dropped without an answer.
//!
//! No packet pointer is used after a helper that resizes the packet: what is written after
//! one goes through `bpf_skb_store_bytes`.

use core::ptr::null_mut;

use aya_ebpf::{
    bindings::{BPF_F_RECOMPUTE_CSUM, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC},
    helpers::{
        bpf_csum_diff, bpf_redirect, bpf_skb_adjust_room, bpf_skb_change_tail, bpf_skb_load_bytes,
        bpf_skb_store_bytes,
    },
    programs::TcContext,
};
use lb_common::{
    Addr6,
    conntrack::{CT_F_SNAT, CT_REPLY, CT_SERVICE, CtKey6},
    drop::{DropReason, Hook, SourceFile},
    proto,
};

use crate::{
    conntrack6,
    drop::{Dropped, Verdict, dropped},
    fib6, lb6,
    maps::{self, Ct6Scratch, QuoteChunk},
    nat6::{Diff, Target},
    parse::{ETH_LEN, load_u16, ptr_at, split, store_u16, store_u32},
    parse6::{IP6_DADDR_OFF, IP6_OFF, IP6_SADDR_OFF, Tuple6, load_addr6},
    policy6,
};

const FILE: SourceFile = SourceFile::Icmp6;

/// Destination unreachable (RFC 4443).
const DEST_UNREACH: u8 = 1;
/// Packet too big.
const PACKET_TOO_BIG: u8 = 2;
/// Time exceeded.
const TIME_EXCEEDED: u8 = 3;
/// Parameter problem.
const PARAM_PROBLEM: u8 = 4;
/// The longest "packet too big" quote: the answer's IPv6 packet stays within the minimum
/// MTU, 1280 bytes.
const MAX_TOO_BIG_QUOTE: u32 = 1280 - (IP6_LEN + ICMP6_LEN) as u32;
/// Port unreachable, under `DEST_UNREACH`.
const PORT_UNREACH: u8 = 4;
/// The ICMPv6 header: type, code, checksum, four unused bytes.
const ICMP6_LEN: usize = 8;
const IP6_LEN: usize = 40;
/// What is quoted beyond the headers: the ports.
const QUOTED_L4: usize = 8;
/// The longest quote.
const MAX_QUOTE: usize = 112;
const HOP_LIMIT: u8 = 64;
const ETH_P_IPV6: u16 = 0x86dd;
/// Word offsets in the answer.
const W_IP: usize = ETH_LEN / 2;
const W_ICMP: usize = W_IP + IP6_LEN / 2;
const W_QUOTE: usize = W_ICMP + ICMP6_LEN / 2;
const ANSWER_WORDS: usize = W_QUOTE + MAX_QUOTE / 2;
const _: () = assert!(ANSWER_WORDS <= 88);

/// Echo request and reply (RFC 4443).
pub const ECHO_REQUEST: u8 = 128;
const ECHO_REPLY: u8 = 129;

/// Whether ICMPv6 type `kind` is an error that quotes a packet lb may have translated.
#[inline(always)]
pub fn is_error(kind: u8) -> bool {
    matches!(
        kind,
        DEST_UNREACH | PACKET_TOO_BIG | TIME_EXCEEDED | PARAM_PROBLEM
    )
}

/// What a translated error becomes: the quoted packet's new addresses and ports, and the
/// error's own new addresses. References into the conntrack entry, `LB6_SCRATCH` or the
/// tuple: nothing is copied onto the stack.
struct Translation<'a> {
    saddr: &'a Addr6,
    daddr: &'a Addr6,
    sport: u16,
    dport: u16,
    out_saddr: &'a Addr6,
    out_daddr: &'a Addr6,
}

/// Reads the quote of the ICMPv6 error whose quoted IPv6 header is at `ip_off` into `key`,
/// reversed (the key of the packets going the other way); `None` unless it is a TCP or UDP
/// header right behind that IPv6 header.
#[inline(always)]
fn read_quote_reversed(ctx: &TcContext, ip_off: usize, key: &mut CtKey6) -> Option<()> {
    let [ver_tc, _] = load_u16(ctx, ip_off)?.to_ne_bytes();
    if ver_tc >> 4 != 6 {
        return None;
    }
    let [next, _hop_limit] = load_u16(ctx, ip_off + 6)?.to_ne_bytes();
    if next != proto::TCP && next != proto::UDP {
        return None;
    }
    let l4 = ip_off + IP6_LEN;
    key.saddr = load_addr6(ctx, ip_off + 24)?;
    key.daddr = load_addr6(ctx, ip_off + 8)?;
    key.sport = load_u16(ctx, l4 + 2)?;
    key.dport = load_u16(ctx, l4)?;
    key.proto = next;
    key._pad = 0;
    key._pad2 = 0;
    Some(())
}

/// Translates the ICMPv6 error `outer` about a translated flow back for the host it is
/// travelling to (see the module's doc); passes it untouched when it is about no tracked flow.
#[inline(always)]
pub fn translate_error(
    ctx: &TcContext,
    outer: &Tuple6,
    scratch: &mut Ct6Scratch,
) -> Result<Verdict, Dropped> {
    let ip_off = outer.l4() + ICMP6_LEN;
    if read_quote_reversed(ctx, ip_off, &mut scratch.key).is_none() {
        return Ok(Verdict::Pass);
    }
    let key = &scratch.key;
    let Some(entry) = conntrack6::peek(key, maps::config()) else {
        return Ok(Verdict::Pass);
    };
    // SAFETY: a valid map value pointer; both members share the header, and every bit pattern
    // is a valid entry of either kind.
    let (kind, snat) = unsafe {
        let header = &(*entry).service;
        (header.kind, header.flags & CT_F_SNAT != 0)
    };
    // The quote is `key` reversed: its source is `key.daddr:key.dport`.
    let to = match kind {
        // About a client's packet (client, or node:port after SNAT, → backend), on its way
        // back to the client: the quote's destination becomes the VIP again.
        CT_REPLY => {
            // SAFETY: as above.
            let reply = unsafe { &(*entry).reply };
            let from_backend = outer.saddr == key.saddr;
            Translation {
                saddr: if snat { &reply.client_addr } else { &key.daddr },
                daddr: &reply.vip,
                sport: if snat { reply.client_port } else { key.dport },
                dport: reply.vip_port,
                out_saddr: if from_backend {
                    &reply.vip
                } else {
                    &outer.saddr
                },
                out_daddr: if snat {
                    &reply.client_addr
                } else {
                    &outer.daddr
                },
            }
        }
        // About a backend's reply (VIP → client as the client received it), on its way to
        // the backend: the quote's source becomes the backend again.
        CT_SERVICE => {
            // SAFETY: as above.
            let flow = unsafe { &(*entry).service };
            let from_client = outer.saddr == key.saddr;
            Translation {
                saddr: &flow.backend_addr,
                daddr: if snat { &flow.snat_addr } else { &key.saddr },
                sport: flow.backend_port,
                dport: if snat { flow.snat_port } else { key.sport },
                out_saddr: if snat && from_client {
                    &flow.snat_addr
                } else {
                    &outer.saddr
                },
                out_daddr: &flow.backend_addr,
            }
        }
        _ => return Ok(Verdict::Pass),
    };
    rewrite_error(ctx, outer, key, &to)?;
    if !snat {
        return Ok(Verdict::Pass);
    }
    let target = Target {
        saddr: to.out_saddr,
        daddr: to.out_daddr,
        sport: 0,
        dport: 0,
    };
    let route = fib6::lookup(ctx, proto::ICMPV6, outer.l4(), &target)?;
    fib6::send(ctx, &route)
}

/// Writes the translation `to` of the error `outer` whose quote is `from` reversed, and the
/// checksums that cover what changed (direct packet access; no helper resizes the packet).
#[inline(always)]
fn rewrite_error(
    ctx: &TcContext,
    outer: &Tuple6,
    from: &CtKey6,
    to: &Translation,
) -> Result<(), Dropped> {
    let write_error = dropped!(DropReason::WriteError);
    let ip_off = outer.l4() + ICMP6_LEN;
    let l4_off = ip_off + IP6_LEN;
    let mut quote = Diff::default();
    quote.addr(&from.daddr, to.saddr);
    quote.addr(&from.saddr, to.daddr);
    quote.word(from.dport, to.sport);
    quote.word(from.sport, to.dport);
    // The ICMPv6 checksum covers the quote and the outer pseudo-header.
    let mut icmp = quote;
    icmp.addr(&outer.saddr, to.out_saddr);
    icmp.addr(&outer.daddr, to.out_daddr);
    let is_tcp = from.proto == proto::TCP;
    let l4_csum_off = l4_off + if is_tcp { 16 } else { 6 };
    // The quoted TCP/UDP checksum, when the quote reaches it (Linux quotes up to 1280 bytes):
    // updated, the quote is again exactly the packet its sender sent.
    if let Some(old) = load_u16(ctx, l4_csum_off).filter(|&sum| sum != 0 || is_tcp) {
        let mut new = quote.apply(old);
        if new == 0 && !is_tcp {
            new = 0xffff;
        }
        icmp.word(old, new);
        store_u16(ctx, l4_csum_off, new).ok_or(write_error)?;
    }
    let icmp_csum_off = outer.l4() + 2;
    let old_icmp = load_u16(ctx, icmp_csum_off).ok_or(write_error)?;
    let mut written = store_u16(ctx, icmp_csum_off, icmp.apply(old_icmp));
    for i in 0..4 {
        written = written
            .and_then(|()| store_u32(ctx, IP6_SADDR_OFF + 4 * i, to.out_saddr[i]))
            .and_then(|()| store_u32(ctx, IP6_DADDR_OFF + 4 * i, to.out_daddr[i]))
            .and_then(|()| store_u32(ctx, ip_off + 8 + 4 * i, to.saddr[i]))
            .and_then(|()| store_u32(ctx, ip_off + 24 + 4 * i, to.daddr[i]));
    }
    written
        .and_then(|()| store_u16(ctx, l4_off, to.sport))
        .and_then(|()| store_u16(ctx, l4_off + 2, to.dport))
        .ok_or(write_error)
}

/// Answers a packet too big for the route of its (SNATed) flow, whose egress MTU is `mtu`
/// (host byte order), with ICMPv6 "packet too big" from `from` (the node address the packet
/// was sent to) to its sender (see the module's doc); the drop (136) is counted either way.
#[inline(always)]
pub fn answer_too_big(ctx: &TcContext, mtu: u16, from: Addr6) -> Result<Verdict, Dropped> {
    let dropped = dropped!(DropReason::FragNeeded);
    let len = ctx.len();
    let scratch = conntrack6::scratch().ok_or(dropped)?;
    let code = send_too_big(ctx, mtu, &from, scratch).ok_or(dropped)?;
    Ok(Verdict::Answered { code, dropped, len })
}

/// Turns the packet into the "packet too big" answer and sends it; `None` when it cannot be.
#[inline(always)]
fn send_too_big(ctx: &TcContext, mtu: u16, from: &Addr6, scratch: &mut Ct6Scratch) -> Option<i32> {
    let eth = ptr_at::<[u16; 6]>(ctx, 0)?;
    // SAFETY: `ptr_at` checked the 12 bytes; they start the packet, so the words are aligned.
    let [d0, d1, d2, s0, s1, s2] = unsafe { eth.read() };
    let quote_len = ctx
        .len()
        .checked_sub(IP6_OFF as u32)?
        .min(MAX_TOO_BIG_QUOTE);
    let icmp_len = ICMP6_LEN as u32 + quote_len;
    let buf = &mut scratch.answer.0;
    let head = [
        // Ethernet: back to where the packet came from.
        s0,
        s1,
        s2,
        d0,
        d1,
        d2,
        ETH_P_IPV6.to_be(),
        // IPv6: version 6, no traffic class or flow label.
        u16::from_ne_bytes([0x60, 0]),
        0,
        (icmp_len as u16).to_be(),
        u16::from_ne_bytes([proto::ICMPV6, HOP_LIMIT]),
    ];
    for (slot, word) in buf.iter_mut().zip(head) {
        *slot = word;
    }
    put_addr(buf, W_IP + 4, from);
    put_addr(buf, W_IP + 12, &load_addr6(ctx, IP6_SADDR_OFF)?);
    let [mtu_hi, mtu_lo] = split(u32::from(mtu).to_be());
    buf[W_ICMP] = u16::from_ne_bytes([PACKET_TOO_BIG, 0]);
    buf[W_ICMP + 1] = 0;
    buf[W_ICMP + 2] = mtu_hi;
    buf[W_ICMP + 3] = mtu_lo;
    // The checksum: the pseudo-header (both addresses, the length, the next header), the
    // ICMPv6 header with its checksum field 0, and the quote.
    let mut sum = u64::from(quote_sum(ctx, quote_len, &mut scratch.chunk)?);
    for word in buf.iter().skip(W_IP + 4).take(16) {
        sum += u64::from(*word);
    }
    sum += u64::from((icmp_len as u16).to_be());
    sum += u64::from(u16::from_ne_bytes([0, proto::ICMPV6]));
    for word in buf.iter().skip(W_ICMP).take(ICMP6_LEN / 2) {
        sum += u64::from(*word);
    }
    buf[W_ICMP + 1] = !(fold(sum) as u16);

    let head_len = (W_QUOTE * 2) as u32;
    // SAFETY: helpers on the program's own skb; the buffer holds `head_len` (62) initialised
    // bytes. No packet pointer is used afterwards.
    unsafe {
        let skb = ctx.skb.skb;
        if ctx.len() > ETH_LEN as u32 + quote_len
            && bpf_skb_change_tail(skb, ETH_LEN as u32 + quote_len, 0) != 0
        {
            return None;
        }
        // Room for the new IPv6 and ICMPv6 headers between the Ethernet header and the quote.
        let room = (IP6_LEN + ICMP6_LEN) as i32;
        if bpf_skb_adjust_room(skb, room, BPF_ADJ_ROOM_MAC, 0) != 0 {
            return None;
        }
        // `BPF_F_RECOMPUTE_CSUM` keeps a CHECKSUM_COMPLETE `skb->csum` right.
        let flags = u64::from(BPF_F_RECOMPUTE_CSUM);
        if bpf_skb_store_bytes(skb, 0, buf.as_ptr().cast(), head_len, flags) != 0 {
            return None;
        }
        // The interface the packet arrived on.
        Some(bpf_redirect((*skb).ifindex, 0) as i32)
    }
}

/// A 16-bit one's-complement sum folded from a wider one (not complemented).
#[inline(always)]
fn fold(sum: u64) -> u64 {
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    (sum & 0xffff) + (sum >> 16)
}

/// Where [`quote_sum`] is.
struct Summing {
    off: u32,
    left: u32,
    sum: u32,
}

impl Summing {
    /// Adds the next `N` bytes (a multiple of 4, at most 256) if that many are left.
    #[inline(always)]
    fn take<const N: u32>(&mut self, ctx: &TcContext, chunk: &mut QuoteChunk) -> Option<()> {
        if self.left < N {
            return Some(());
        }
        let buf = chunk.0.as_mut_ptr();
        // SAFETY: the buffer holds 256 bytes; the helpers check the packet's bounds.
        unsafe {
            if bpf_skb_load_bytes(ctx.skb.skb.cast(), self.off, buf.cast(), N) != 0 {
                return None;
            }
            let sum = bpf_csum_diff(null_mut(), 0, buf, N, self.sum);
            if sum < 0 {
                return None;
            }
            self.sum = sum as u32;
        }
        self.off += N;
        self.left -= N;
        Some(())
    }

    /// Adds the last 1 to 3 bytes, padded with zeros (RFC 1071).
    #[inline(always)]
    fn take_tail(&mut self, ctx: &TcContext, chunk: &mut QuoteChunk) -> Option<()> {
        if self.left == 0 {
            return Some(());
        }
        chunk.0[0] = 0;
        let buf = chunk.0.as_mut_ptr();
        // SAFETY: as in `take`, with a constant length of 1 to 3 bytes.
        unsafe {
            let skb = ctx.skb.skb.cast();
            let loaded = match self.left {
                1 => bpf_skb_load_bytes(skb, self.off, buf.cast(), 1),
                2 => bpf_skb_load_bytes(skb, self.off, buf.cast(), 2),
                _ => bpf_skb_load_bytes(skb, self.off, buf.cast(), 3),
            };
            if loaded != 0 {
                return None;
            }
            let sum = bpf_csum_diff(null_mut(), 0, buf, 4, self.sum);
            if sum < 0 {
                return None;
            }
            self.sum = sum as u32;
        }
        self.left = 0;
        Some(())
    }
}

/// The one's-complement sum (not folded) of the packet's first `len` bytes from the IPv6
/// header (at most `MAX_TOO_BIG_QUOTE`), in pieces of constant sizes so that every helper
/// call has a length the verifier knows.
#[inline(always)]
fn quote_sum(ctx: &TcContext, len: u32, chunk: &mut QuoteChunk) -> Option<u32> {
    let mut at = Summing {
        off: IP6_OFF as u32,
        left: len.min(MAX_TOO_BIG_QUOTE),
        sum: 0,
    };
    for _ in 0..MAX_TOO_BIG_QUOTE / 256 {
        at.take::<256>(ctx, chunk)?;
    }
    at.take::<128>(ctx, chunk)?;
    at.take::<64>(ctx, chunk)?;
    at.take::<32>(ctx, chunk)?;
    at.take::<16>(ctx, chunk)?;
    at.take::<8>(ctx, chunk)?;
    at.take::<4>(ctx, chunk)?;
    at.take_tail(ctx, chunk)?;
    Some(at.sum)
}

/// Answers an echo request to a VIP in place: an echo reply from the VIP, back out of the
/// interface the request came in on. Swapping the addresses leaves the pseudo-header's sum as
/// it was and the type change is compensated in the ICMPv6 checksum, so the sum over the
/// packet (a CHECKSUM_COMPLETE `skb->csum`) is unchanged; the hop limit is left as it came.
#[inline(always)]
pub fn answer_echo(ctx: &TcContext, hook: Hook, tuple: &Tuple6) -> Result<Verdict, Dropped> {
    if hook == Hook::FromNetdev
        && let Some(vip) = lb6::lookup_vip(tuple.daddr)
    {
        policy6::check_external_access(&vip, maps::config())?;
    }
    let write_error = dropped!(DropReason::WriteError);
    let l4 = tuple.l4();
    let type_code = load_u16(ctx, l4).ok_or(write_error)?;
    let old_sum = load_u16(ctx, l4 + 2).ok_or(write_error)?;
    let [_type, code] = type_code.to_ne_bytes();
    let reply_type_code = u16::from_ne_bytes([ECHO_REPLY, code]);
    // RFC 1624, eq. 3: HC' = ~(~HC + ~m + m').
    let mut sum = u32::from(!old_sum) + u32::from(!type_code) + u32::from(reply_type_code);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    let new_sum = !(sum as u16);
    let eth = ptr_at::<[u16; 6]>(ctx, 0).ok_or(write_error)?;
    // SAFETY: `ptr_at` checked the 12 bytes; they start the packet, so the words are aligned.
    unsafe {
        let [d0, d1, d2, s0, s1, s2] = eth.read();
        eth.write([s0, s1, s2, d0, d1, d2]);
    }
    let mut written = Some(());
    for i in 0..4 {
        written = written
            .and_then(|()| store_u32(ctx, IP6_SADDR_OFF + 4 * i, tuple.daddr[i]))
            .and_then(|()| store_u32(ctx, IP6_DADDR_OFF + 4 * i, tuple.saddr[i]));
    }
    written
        .and_then(|()| store_u16(ctx, l4, reply_type_code))
        .and_then(|()| store_u16(ctx, l4 + 2, new_sum))
        .ok_or(write_error)?;
    // SAFETY: the context pointer is valid for the whole run; a helper taking plain integers.
    let code = unsafe { bpf_redirect((*ctx.skb.skb).ifindex, 0) };
    Ok(Verdict::Redirect(code as i32))
}

/// Refuses the new flow `tuple` to a frontend without endpoints with ICMPv6 port unreachable
/// from the VIP (see the module's doc): 158, answered.
#[inline(always)]
pub fn refuse(
    ctx: &TcContext,
    tuple: &Tuple6,
    scratch: &mut Ct6Scratch,
) -> Result<Verdict, Dropped> {
    let dropped = dropped!(DropReason::NoService);
    let len = ctx.len();
    let code = send_unreach(ctx, tuple, scratch).ok_or(dropped)?;
    Ok(Verdict::Answered { code, dropped, len })
}

/// Builds and sends the answer; `None` when it cannot be.
#[inline(always)]
fn send_unreach(ctx: &TcContext, tuple: &Tuple6, scratch: &mut Ct6Scratch) -> Option<i32> {
    let eth = ptr_at::<[u16; 6]>(ctx, 0)?;
    // SAFETY: `ptr_at` checked the 12 bytes; they start the packet, so the words are aligned.
    let [d0, d1, d2, s0, s1, s2] = unsafe { eth.read() };
    let quote_len = tuple.l4() - IP6_OFF + QUOTED_L4;
    if quote_len > MAX_QUOTE || tuple.l4() < IP6_OFF + IP6_LEN {
        return None;
    }
    let buf = &mut scratch.answer.0;
    let words = buf.as_mut_ptr().cast::<u64>();
    for i in 0..size_of::<[u16; 88]>() / size_of::<u64>() {
        // SAFETY: word `i` lies within the 8-aligned buffer (volatile: see `fib.rs`).
        unsafe { words.add(i).write_volatile(0) };
    }
    // SAFETY: the quote (at most `MAX_QUOTE` bytes) fits from `W_QUOTE`; the helper fails if
    // the packet is shorter.
    let loaded = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            IP6_OFF as u32,
            buf.as_mut_ptr().add(W_QUOTE).cast(),
            quote_len as u32,
        )
    };
    if loaded != 0 {
        return None;
    }
    let icmp_len = ICMP6_LEN + quote_len;
    let head = [
        // Ethernet: back to where the packet came from.
        s0,
        s1,
        s2,
        d0,
        d1,
        d2,
        ETH_P_IPV6.to_be(),
        // IPv6: version 6, no traffic class or flow label.
        u16::from_ne_bytes([0x60, 0]),
        0,
        (icmp_len as u16).to_be(),
        u16::from_ne_bytes([proto::ICMPV6, HOP_LIMIT]),
    ];
    for (slot, word) in buf.iter_mut().zip(head) {
        *slot = word;
    }
    put_addr(buf, W_IP + 4, &tuple.daddr);
    put_addr(buf, W_IP + 12, &tuple.saddr);
    buf[W_ICMP] = u16::from_ne_bytes([DEST_UNREACH, PORT_UNREACH]);
    // The checksum: the pseudo-header (both addresses, the length, the next header) and the
    // whole message, with its checksum field still 0.
    let mut sum = 0u32;
    for word in buf.iter().skip(W_IP + 4).take(16) {
        sum += u32::from(*word);
    }
    sum += u32::from((icmp_len as u16).to_be());
    sum += u32::from(u16::from_ne_bytes([0, proto::ICMPV6]));
    let icmp_words = icmp_len / 2;
    for (i, word) in buf
        .iter()
        .skip(W_ICMP)
        .take(ANSWER_WORDS - W_ICMP)
        .enumerate()
    {
        if i < icmp_words {
            sum += u32::from(*word);
        }
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    buf[W_ICMP + 1] = !(sum as u16);

    let frame_len = (ETH_LEN + IP6_LEN + icmp_len) as u32;
    // SAFETY: helpers on the program's own skb; the buffer holds `frame_len` (at most 174)
    // initialised bytes. No packet pointer is used afterwards.
    unsafe {
        if bpf_skb_change_tail(ctx.skb.skb, frame_len, 0) != 0 {
            return None;
        }
        if bpf_skb_store_bytes(ctx.skb.skb, 0, buf.as_ptr().cast(), frame_len, 0) != 0 {
            return None;
        }
        // The interface the packet arrived on.
        Some(bpf_redirect((*ctx.skb.skb).ifindex, 0) as i32)
    }
}

/// Writes `addr` as eight words from word `at`.
#[inline(always)]
fn put_addr(buf: &mut [u16; 88], at: usize, addr: &Addr6) {
    for (i, word) in addr.iter().enumerate() {
        let [hi, lo] = split(*word);
        buf[at + 2 * i] = hi;
        buf[at + 2 * i + 1] = lo;
    }
}
