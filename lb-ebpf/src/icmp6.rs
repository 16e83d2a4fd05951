//! ICMPv6 answers of the IPv6 path: echo requests to a VIP are answered by the VIP itself, in
//! place (as `icmp.rs` does for IPv4: from outside only when the VIP is reachable from there,
//! 174 otherwise); and REJECT of a new flow to a frontend without endpoints, as
//! `icmp::refuse` does for IPv4 (kube-proxy's behaviour, k8s-semantics.md §2.6): ICMPv6
//! destination unreachable, port unreachable (RFC 4443, type 1 code 4), from the VIP back to
//! the sender, out of the interface the packet arrived on; counted as 158 like the silent drop
//! it replaces.
//!
//! The answer is built in `LB6_SCRATCH` (its `answer`), then written over the packet with
//! `bpf_skb_change_tail` and `bpf_skb_store_bytes`. It quotes the packet's IPv6 header, its
//! extension headers and the first 8 bytes of its TCP/UDP header (enough for the sender's stack
//! to find the socket); a packet whose headers make that longer than 112 bytes is dropped
//! without an answer. The ICMPv6 checksum covers the IPv6 pseudo-header.

use aya_ebpf::{
    helpers::{bpf_redirect, bpf_skb_change_tail, bpf_skb_load_bytes, bpf_skb_store_bytes},
    programs::TcContext,
};
use lb_common::{
    Addr6,
    drop::{DropReason, Hook, SourceFile},
    proto,
};

use crate::{
    drop::{Dropped, Verdict, dropped},
    lb6,
    maps::{self, Ct6Scratch},
    parse::{ETH_LEN, load_u16, ptr_at, split, store_u16, store_u32},
    parse6::{IP6_DADDR_OFF, IP6_OFF, IP6_SADDR_OFF, Tuple6},
    policy6,
};

const FILE: SourceFile = SourceFile::Icmp6;

/// Destination unreachable (RFC 4443).
const DEST_UNREACH: u8 = 1;
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
