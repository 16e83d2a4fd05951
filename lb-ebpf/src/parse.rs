//! Reads the headers lb needs, with direct, bounds-checked packet access (no helper calls):
//! Ethernet, IPv4 (options skipped via IHL), and the TCP or UDP ports and flags; and the
//! aligned loads and stores `nat.rs` and `fib.rs` write the packet with.
//!
//! Alignment: every access is a 16-bit word at an even offset from `skb->data` (the Ethernet
//! header), and `skb->data` is even on every path into TC: drivers receive at `NET_SKB_PAD +
//! NET_IP_ALIGN` (both even), locally built packets reserve aligned headroom, and the verifier
//! itself models packet data as `NET_IP_ALIGN`-aligned. 32-bit fields (addresses) go as two
//! halves: with `NET_IP_ALIGN` 0 (x86) the IP header is only 2-aligned. Byte-wide fields are
//! taken from the word that holds them. Word accesses keep LLVM from splitting each unaligned
//! read or write into single bytes.
//!
//! Touches no map and never drops: whether a malformed packet matters depends on its
//! destination being a VIP, which `lb.rs` knows. Returns `None` for non-IPv4 frames and bad
//! IPv4 headers, which the caller hands on unchanged; other protocols than TCP and UDP come back
//! as `Shape::Other` (addresses only) for `icmp.rs`.

use core::mem::size_of;

use aya_ebpf::{bindings::__sk_buff, programs::TcContext};
use lb_common::proto;

/// Length of an Ethernet header without VLAN tags.
pub const ETH_LEN: usize = 14;
/// Offset of the EtherType.
const ETH_PROTO_OFF: usize = 12;
/// Offset of the IPv4 header.
pub const IP_OFF: usize = ETH_LEN;
/// Offset of the IPv4 identification.
const IP_ID_OFF: usize = IP_OFF + 4;
/// Offset of the IPv4 header checksum.
pub const IP_CSUM_OFF: usize = IP_OFF + 10;
/// Offset of the IPv4 source address.
pub const IP_SADDR_OFF: usize = IP_OFF + 12;
/// Offset of the IPv4 destination address.
pub const IP_DADDR_OFF: usize = IP_OFF + 16;

const ETH_P_IP: u16 = 0x0800;
const IP_MF: u16 = 0x2000;
const IP_OFFSET_MASK: u16 = 0x1fff;
/// TCP and UDP headers in 16-bit words.
const TCP_WORDS: usize = 10;
const UDP_WORDS: usize = 4;

/// Whether the L4 header can be trusted.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// The whole TCP or UDP header is present and the packet is not a fragment.
    Complete,
    /// The first fragment of a datagram (MF set, offset 0) with its whole TCP or UDP header:
    /// the ports are valid, and they hold for the datagram's later fragments too.
    FirstFragment,
    /// A later fragment (non-zero offset): no L4 header here, so no ports (`frag.rs` looks
    /// them up from the first fragment).
    Fragment,
    /// The TCP or UDP header is cut short.
    Truncated,
    /// Another protocol (ICMP, SCTP, ...), not a fragment: no ports; `icmp.rs` decides.
    Other,
}

/// Covers every L4 offset `tuple4` stores (14 + at most 60, even).
const L4_OFF_MASK: usize = 0x7e;
const _: () = assert!(IP_OFF + 60 <= L4_OFF_MASK && (IP_OFF + 60) & L4_OFF_MASK == IP_OFF + 60);

/// The packet's flow as it arrived; addresses and ports in network byte order.
#[derive(Clone, Copy)]
pub struct Tuple4 {
    /// Source address.
    pub saddr: u32,
    /// Destination address.
    pub daddr: u32,
    /// Source port (0 for a later fragment until `frag.rs` fills it in).
    pub sport: u16,
    /// Destination port (as `sport`).
    pub dport: u16,
    /// The IP protocol: `proto::TCP` or `proto::UDP` unless `shape` is `Other` (or a fragment
    /// of another protocol).
    pub proto: u8,
    /// TCP flags (byte 13 of the header), 0 for UDP.
    pub tcp_flags: u8,
    /// Offset of the L4 header (Ethernet + IHL × 4).
    pub l4_off: u16,
    /// Whether the ports are valid.
    pub shape: Shape,
}

impl Tuple4 {
    /// Offset of the L4 header, at most 14 + 60 and even. The mask changes nothing (`tuple4`
    /// never stores more) but tells the verifier so: a tuple read back through a pointer in a
    /// BPF subprogram carries only the bounds of a u16, too wide for packet access.
    #[inline(always)]
    pub fn l4(&self) -> usize {
        usize::from(self.l4_off) & L4_OFF_MASK
    }

    /// Offset of the L4 checksum field.
    #[inline(always)]
    pub fn l4_csum_off(&self) -> usize {
        let field = if self.proto == proto::TCP { 16 } else { 6 };
        self.l4() + field
    }

    /// A TCP SYN without ACK: the first packet of a new connection.
    #[inline(always)]
    pub fn is_syn(&self) -> bool {
        use lb_common::event::tcp_flags::{ACK, SYN};
        self.proto == proto::TCP && self.tcp_flags & (SYN | ACK) == SYN
    }

    /// Whether the packet holds the L4 header (ports, checksum): not a later fragment.
    #[inline(always)]
    pub fn has_l4_header(&self) -> bool {
        self.shape != Shape::Fragment
    }

    /// A TCP FIN or RST: the connection is closing.
    #[inline(always)]
    pub fn is_closing(&self) -> bool {
        use lb_common::event::tcp_flags::{FIN, RST};
        self.proto == proto::TCP && self.tcp_flags & (FIN | RST) != 0
    }
}

/// A pointer to a `T` at `offset`, if the packet holds all of it. The context pointer goes
/// through [`opaque`] first (see there why).
#[inline(always)]
pub fn ptr_at<T>(ctx: &TcContext, offset: usize) -> Option<*mut T> {
    let skb = opaque(ctx.skb.skb);
    // SAFETY: the program's context pointer, valid for the whole run.
    let (start, end) = unsafe { ((*skb).data as usize, (*skb).data_end as usize) };
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// The 16-bit field at the even `offset`, as stored (network byte order), if the packet holds
/// it.
#[inline(always)]
pub fn load_u16(ctx: &TcContext, offset: usize) -> Option<u16> {
    let p = ptr_at::<u16>(ctx, offset)?;
    // SAFETY: `ptr_at` checked the bounds; `offset` is even, so the word is aligned (see the
    // module's doc).
    Some(unsafe { p.read() })
}

/// The 32-bit field at the even `offset`, as stored (network byte order), read as two aligned
/// halves.
#[inline(always)]
pub fn load_u32(ctx: &TcContext, offset: usize) -> Option<u32> {
    let p = ptr_at::<[u16; 2]>(ctx, offset)?;
    // SAFETY: as in `load_u16`, for both halves.
    let [first, second] = unsafe { p.read() };
    Some(join(first, second))
}

/// Writes `value` (as stored: network byte order) over the 16-bit field at the even `offset`;
/// `None` if the packet does not hold it.
#[inline(always)]
pub fn store_u16(ctx: &TcContext, offset: usize, value: u16) -> Option<()> {
    let p = ptr_at::<u16>(ctx, offset)?;
    // SAFETY: as in `load_u16`.
    unsafe { p.write(value) };
    Some(())
}

/// Writes `value` (as stored: network byte order) over the 32-bit field at the even `offset`,
/// as two aligned halves; `None` if the packet does not hold it.
#[inline(always)]
pub fn store_u32(ctx: &TcContext, offset: usize, value: u32) -> Option<()> {
    let p = ptr_at::<[u16; 2]>(ctx, offset)?;
    // SAFETY: as in `load_u16`, for both halves.
    unsafe { p.write(split(value)) };
    Some(())
}

/// The 32-bit value whose bytes in memory are `first`'s then `second`'s.
#[inline(always)]
fn join(first: u16, second: u16) -> u32 {
    let [a, b] = first.to_ne_bytes();
    let [c, d] = second.to_ne_bytes();
    u32::from_ne_bytes([a, b, c, d])
}

/// The two 16-bit halves of `value` in memory order (the inverse of `join`).
#[inline(always)]
pub fn split(value: u32) -> [u16; 2] {
    let [a, b, c, d] = value.to_ne_bytes();
    [u16::from_ne_bytes([a, b]), u16::from_ne_bytes([c, d])]
}

/// The TCP or UDP flow of an IPv4 packet; `None` for what lb never translates.
#[inline(always)]
pub fn tuple4(ctx: &TcContext) -> Option<Tuple4> {
    if u16::from_be(load_u16(ctx, ETH_PROTO_OFF)?) != ETH_P_IP {
        return None;
    }
    // Version/IHL shares its word with the TOS, the protocol with the TTL.
    let [ver_ihl, _tos] = load_u16(ctx, IP_OFF)?.to_ne_bytes();
    let ihl = usize::from(ver_ihl & 0x0f);
    if ver_ihl >> 4 != 4 || ihl < 5 {
        return None;
    }
    let [_ttl, proto] = load_u16(ctx, IP_OFF + 8)?.to_ne_bytes();
    let frag = u16::from_be(load_u16(ctx, IP_OFF + 6)?);
    let saddr = load_u32(ctx, IP_SADDR_OFF)?;
    let daddr = load_u32(ctx, IP_DADDR_OFF)?;
    // IHL is 4 bits, so l4_off ≤ 14 + 60: a bounded offset the verifier accepts, and even.
    let l4_off = IP_OFF + ihl * 4;
    let mut tuple = Tuple4 {
        saddr,
        daddr,
        sport: 0,
        dport: 0,
        proto,
        tcp_flags: 0,
        l4_off: l4_off as u16,
        shape: Shape::Fragment,
    };
    if frag & IP_OFFSET_MASK != 0 {
        return Some(tuple);
    }
    if proto != proto::TCP && proto != proto::UDP {
        // A first fragment of another protocol stays a fragment: lb translates no part of it.
        if frag & IP_MF == 0 {
            tuple.shape = Shape::Other;
        }
        return Some(tuple);
    }
    // Each branch checks the length it reads, so the verifier sees every access bounded.
    if proto == proto::TCP {
        let Some(tcp) = ptr_at::<[u16; TCP_WORDS]>(ctx, l4_off) else {
            tuple.shape = Shape::Truncated;
            return Some(tuple);
        };
        let tcp = tcp.cast::<u16>();
        // SAFETY: `ptr_at` checked that the whole header is in the packet; `l4_off` is even,
        // so its words are aligned (see the module's doc).
        unsafe {
            tuple.sport = tcp.read();
            tuple.dport = tcp.add(1).read();
            // Byte 12 is the data offset, byte 13 the flags.
            tuple.tcp_flags = tcp.add(6).read().to_ne_bytes()[1];
        }
    } else {
        let Some(udp) = ptr_at::<[u16; UDP_WORDS]>(ctx, l4_off) else {
            tuple.shape = Shape::Truncated;
            return Some(tuple);
        };
        let udp = udp.cast::<u16>();
        // SAFETY: as for TCP, with the UDP header's length.
        unsafe {
            tuple.sport = udp.read();
            tuple.dport = udp.add(1).read();
        }
    }
    tuple.shape = if frag & IP_MF != 0 {
        Shape::FirstFragment
    } else {
        Shape::Complete
    };
    Some(tuple)
}

/// The IP identification of the packet (as stored: network byte order), which with the
/// addresses and protocol names the datagram a fragment belongs to.
#[inline(always)]
pub fn ip_id(ctx: &TcContext) -> Option<u16> {
    load_u16(ctx, IP_ID_OFF)
}

/// `skb`, through a register move LLVM cannot see through. Without it LLVM may compute the
/// addresses of `skb->data` and `skb->data_end` once, keep them in spilled registers and load
/// through those later: the verifier refuses a context pointer with an offset (it only
/// accepts `*(ctx + constant)`). Seen in the IPv6 path once hairpin made it larger.
#[inline(always)]
fn opaque(skb: *mut __sk_buff) -> *mut __sk_buff {
    #[cfg(target_arch = "bpf")]
    {
        // As an integer: the asm touches no memory, so no pointer goes into it.
        let mut addr = skb as usize;
        // SAFETY: a register copied onto itself; no memory or stack is touched. Not `pure`,
        // so that two copies are never merged.
        unsafe {
            core::arch::asm!("{0} = {0}", inout(reg) addr, options(nomem, nostack, preserves_flags));
        }
        addr as *mut __sk_buff
    }
    #[cfg(not(target_arch = "bpf"))]
    skb
}
