//! Reads an IPv6 packet's headers: the fixed header, then the extension headers lb can walk
//! (hop-by-hop options, routing, destination options, fragment), at most [`MAX_EXT_HEADERS`]
//! of them, then the TCP or UDP ports and flags. The mirror of `parse.rs` (whose aligned
//! loads it uses: every offset here is even, the fixed header being 40 bytes and every
//! extension header a multiple of 8).
//!
//! Touches no map and never drops; returns `None` for frames that are not IPv6 or whose fixed
//! header is cut short (handed on unchanged). A packet whose chain of extension headers is
//! longer than lb walks, runs past [`MAX_L4_OFF`] or is cut short comes back `Truncated`: its
//! flow cannot be told, so `ipv6.rs` drops it with 134 when it is addressed to a VIP and hands
//! it on otherwise (Cilium drops such packets too, "invalid extension header"). Other
//! protocols (ICMPv6, ESP, AH, "no next header", ...) come back as `Shape::Other`.

use aya_ebpf::programs::TcContext;
use lb_common::{Addr6, proto};

use crate::parse::{ETH_LEN, Shape, load_u16, load_u32, ptr_at};

/// Offset of the IPv6 header.
pub const IP6_OFF: usize = ETH_LEN;
/// Offset of the IPv6 source address.
pub const IP6_SADDR_OFF: usize = IP6_OFF + 8;
/// Offset of the IPv6 destination address.
pub const IP6_DADDR_OFF: usize = IP6_OFF + 24;
/// Length of the fixed IPv6 header.
const IP6_LEN: usize = 40;
const ETH_PROTO_OFF: usize = 12;
const ETH_P_IPV6: u16 = 0x86dd;

/// Extension headers walked before giving up (Cilium walks as many).
pub const MAX_EXT_HEADERS: usize = 4;
/// The furthest L4 header offset lb reads at: a mask the verifier can see (even, and every
/// offset the walk produces is even).
pub const MAX_L4_OFF: usize = 0x3fe;

const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_DEST: u8 = 60;
/// Fragment header: offset (13 bits, in 8-byte units) and M flag in its second word.
const IP6_OFFSET_MASK: u16 = 0xfff8;
const IP6_MF: u16 = 0x0001;

const TCP_WORDS: usize = 10;
const UDP_WORDS: usize = 4;

/// An IPv6 packet's flow as it arrived; addresses and ports as stored (network byte order).
#[derive(Clone, Copy)]
pub struct Tuple6 {
    /// Source address.
    pub saddr: Addr6,
    /// Destination address.
    pub daddr: Addr6,
    /// Source port (0 without an L4 header).
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// The upper-layer protocol (after the extension headers).
    pub proto: u8,
    /// TCP flags (byte 13 of the header), 0 for UDP.
    pub tcp_flags: u8,
    /// Offset of the upper-layer header.
    pub l4_off: u16,
    /// The fragment header's identification (as stored), 0 without one.
    pub frag_id: u32,
    /// Whether the ports are valid (as for `Tuple4`).
    pub shape: Shape,
}

impl Tuple6 {
    /// Offset of the L4 header, masked so that the verifier sees it bounded (see
    /// `Tuple4::l4`).
    #[inline(always)]
    pub fn l4(&self) -> usize {
        usize::from(self.l4_off) & MAX_L4_OFF
    }

    /// Offset of the L4 checksum field.
    #[inline(always)]
    pub fn l4_csum_off(&self) -> usize {
        let field = if self.proto == proto::TCP { 16 } else { 6 };
        self.l4() + field
    }

    /// A TCP SYN without ACK.
    #[inline(always)]
    pub fn is_syn(&self) -> bool {
        use lb_common::event::tcp_flags::{ACK, SYN};
        self.proto == proto::TCP && self.tcp_flags & (SYN | ACK) == SYN
    }

    /// A TCP FIN or RST.
    #[inline(always)]
    pub fn is_closing(&self) -> bool {
        use lb_common::event::tcp_flags::{FIN, RST};
        self.proto == proto::TCP && self.tcp_flags & (FIN | RST) != 0
    }

    /// Whether the packet holds the L4 header: not a later fragment.
    #[inline(always)]
    pub fn has_l4_header(&self) -> bool {
        self.shape != Shape::Fragment
    }
}

/// An IPv6 address at the even `offset`, as four words in memory order.
#[inline(always)]
pub fn load_addr6(ctx: &TcContext, offset: usize) -> Option<Addr6> {
    Some([
        load_u32(ctx, offset)?,
        load_u32(ctx, offset + 4)?,
        load_u32(ctx, offset + 8)?,
        load_u32(ctx, offset + 12)?,
    ])
}

/// Whether the frame is IPv6 (by its EtherType).
#[inline(always)]
pub fn is_ipv6(ctx: &TcContext) -> bool {
    load_u16(ctx, ETH_PROTO_OFF).is_some_and(|proto| u16::from_be(proto) == ETH_P_IPV6)
}

/// The flow of an IPv6 packet; `None` for other frames and a cut-short fixed header.
#[inline(always)]
pub fn tuple6(ctx: &TcContext) -> Option<Tuple6> {
    if u16::from_be(load_u16(ctx, ETH_PROTO_OFF)?) != ETH_P_IPV6 {
        return None;
    }
    let [ver_tc, _] = load_u16(ctx, IP6_OFF)?.to_ne_bytes();
    if ver_tc >> 4 != 6 {
        return None;
    }
    // Next header shares its word with the hop limit.
    let [mut next, _hop_limit] = load_u16(ctx, IP6_OFF + 6)?.to_ne_bytes();
    let mut tuple = Tuple6 {
        saddr: load_addr6(ctx, IP6_SADDR_OFF)?,
        daddr: load_addr6(ctx, IP6_DADDR_OFF)?,
        sport: 0,
        dport: 0,
        proto: next,
        tcp_flags: 0,
        l4_off: (IP6_OFF + IP6_LEN) as u16,
        frag_id: 0,
        shape: Shape::Truncated,
    };
    let mut off = IP6_OFF + IP6_LEN;
    let mut first_fragment = false;
    let mut walked = 0;
    while is_ext_header(next) {
        if walked == MAX_EXT_HEADERS {
            // Too many to walk: the flow cannot be told (see the module's doc).
            tuple.proto = next;
            return Some(tuple);
        }
        walked += 1;
        let Some(word) = load_u16(ctx, off & MAX_L4_OFF) else {
            return Some(tuple);
        };
        let [following, len] = word.to_ne_bytes();
        if next == NEXTHDR_FRAGMENT {
            let Some(frag) = load_u16(ctx, (off & MAX_L4_OFF) + 2) else {
                return Some(tuple);
            };
            let frag = u16::from_be(frag);
            let Some(id) = load_u32(ctx, (off & MAX_L4_OFF) + 4) else {
                return Some(tuple);
            };
            tuple.frag_id = id;
            if frag & IP6_OFFSET_MASK != 0 {
                tuple.proto = following;
                tuple.l4_off = (off + 8) as u16;
                tuple.shape = Shape::Fragment;
                return Some(tuple);
            }
            first_fragment = frag & IP6_MF != 0;
            off += 8;
        } else {
            off += (usize::from(len) + 1) * 8;
        }
        next = following;
        if off > MAX_L4_OFF {
            tuple.proto = next;
            return Some(tuple);
        }
    }
    let off = off & MAX_L4_OFF;
    tuple.proto = next;
    tuple.l4_off = off as u16;
    if next != proto::TCP && next != proto::UDP {
        // A first fragment of another protocol stays a fragment, as for IPv4.
        tuple.shape = if first_fragment {
            Shape::Fragment
        } else {
            Shape::Other
        };
        return Some(tuple);
    }
    if next == proto::TCP {
        let Some(tcp) = ptr_at::<[u16; TCP_WORDS]>(ctx, off) else {
            return Some(tuple);
        };
        let tcp = tcp.cast::<u16>();
        // SAFETY: `ptr_at` checked that the whole header is in the packet; `off` is even.
        unsafe {
            tuple.sport = tcp.read();
            tuple.dport = tcp.add(1).read();
            tuple.tcp_flags = tcp.add(6).read().to_ne_bytes()[1];
        }
    } else {
        let Some(udp) = ptr_at::<[u16; UDP_WORDS]>(ctx, off) else {
            return Some(tuple);
        };
        let udp = udp.cast::<u16>();
        // SAFETY: as for TCP.
        unsafe {
            tuple.sport = udp.read();
            tuple.dport = udp.add(1).read();
        }
    }
    tuple.shape = if first_fragment {
        Shape::FirstFragment
    } else {
        Shape::Complete
    };
    Some(tuple)
}

/// Whether `next` is an extension header lb walks.
#[inline(always)]
fn is_ext_header(next: u8) -> bool {
    matches!(
        next,
        NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_FRAGMENT | NEXTHDR_DEST
    )
}
