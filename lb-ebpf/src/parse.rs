//! Reads the headers lb needs, with direct, bounds-checked packet access (no helper calls):
//! Ethernet, IPv4 (options skipped via IHL), and the TCP or UDP ports and flags.
//!
//! Touches no map and never drops: whether a malformed packet matters depends on its
//! destination being a VIP, which `lb.rs` knows. Returns `None` for everything lb does not
//! translate (non-IPv4 frames, bad IPv4 headers, protocols other than TCP and UDP), so the
//! caller hands those on unchanged.

use core::{mem::size_of, ptr};

use aya_ebpf::programs::TcContext;
use lb_common::proto;

/// Length of an Ethernet header without VLAN tags.
pub const ETH_LEN: usize = 14;
/// Offset of the IPv4 header.
pub const IP_OFF: usize = ETH_LEN;
/// Offset of the IPv4 header checksum.
pub const IP_CSUM_OFF: usize = IP_OFF + 10;
/// Offset of the IPv4 source address.
pub const IP_SADDR_OFF: usize = IP_OFF + 12;
/// Offset of the IPv4 destination address.
pub const IP_DADDR_OFF: usize = IP_OFF + 16;

const ETH_P_IP: u16 = 0x0800;
const IP_MF: u16 = 0x2000;
const IP_OFFSET_MASK: u16 = 0x1fff;
const TCP_LEN: usize = 20;
const UDP_LEN: usize = 8;

/// Whether the L4 header can be trusted.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// The whole TCP or UDP header is present and the packet is not a fragment.
    Complete,
    /// An IP fragment (MF set or a non-zero offset): no usable ports.
    Fragment,
    /// The TCP or UDP header is cut short.
    Truncated,
}

/// The packet's flow as it arrived; addresses and ports in network byte order.
#[derive(Clone, Copy)]
pub struct Tuple4 {
    /// Source address.
    pub saddr: u32,
    /// Destination address.
    pub daddr: u32,
    /// Source port (0 unless `shape` is `Complete`).
    pub sport: u16,
    /// Destination port (0 unless `shape` is `Complete`).
    pub dport: u16,
    /// `proto::TCP` or `proto::UDP`.
    pub proto: u8,
    /// TCP flags (byte 13 of the header), 0 for UDP.
    pub tcp_flags: u8,
    /// Offset of the L4 header (Ethernet + IHL × 4).
    pub l4_off: u16,
    /// Whether the ports are valid.
    pub shape: Shape,
}

impl Tuple4 {
    /// Offset of the L4 checksum field.
    #[inline(always)]
    pub fn l4_csum_off(&self) -> usize {
        let field = if self.proto == proto::TCP { 16 } else { 6 };
        usize::from(self.l4_off) + field
    }

    /// A TCP SYN without ACK: the first packet of a new connection.
    #[inline(always)]
    pub fn is_syn(&self) -> bool {
        use lb_common::event::tcp_flags::{ACK, SYN};
        self.proto == proto::TCP && self.tcp_flags & (SYN | ACK) == SYN
    }

    /// A TCP FIN or RST: the connection is closing.
    #[inline(always)]
    pub fn is_closing(&self) -> bool {
        use lb_common::event::tcp_flags::{FIN, RST};
        self.proto == proto::TCP && self.tcp_flags & (FIN | RST) != 0
    }
}

/// A pointer to a `T` at `offset`, if the packet holds all of it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &TcContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// Reads a `T` at `offset`, if the packet holds all of it.
#[inline(always)]
fn read<T: Copy>(ctx: &TcContext, offset: usize) -> Option<T> {
    // SAFETY: `ptr_at` checked that the packet holds `size_of::<T>()` bytes at `offset`;
    // headers are not aligned in the packet, hence the unaligned read.
    ptr_at::<T>(ctx, offset).map(|p| unsafe { ptr::read_unaligned(p) })
}

/// The TCP or UDP flow of an IPv4 packet; `None` for what lb never translates.
#[inline(always)]
pub fn tuple4(ctx: &TcContext) -> Option<Tuple4> {
    if u16::from_be(read::<u16>(ctx, 12)?) != ETH_P_IP {
        return None;
    }
    let ver_ihl = read::<u8>(ctx, IP_OFF)?;
    let ihl = usize::from(ver_ihl & 0x0f);
    if ver_ihl >> 4 != 4 || ihl < 5 {
        return None;
    }
    let proto = read::<u8>(ctx, IP_OFF + 9)?;
    if proto != proto::TCP && proto != proto::UDP {
        return None;
    }
    let frag = u16::from_be(read::<u16>(ctx, IP_OFF + 6)?);
    let saddr = read::<u32>(ctx, IP_SADDR_OFF)?;
    let daddr = read::<u32>(ctx, IP_DADDR_OFF)?;
    // IHL is 4 bits, so l4_off ≤ 14 + 60: a bounded offset the verifier accepts.
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
    if frag & (IP_MF | IP_OFFSET_MASK) != 0 {
        return Some(tuple);
    }
    // Each branch checks the length it reads, so the verifier sees every access bounded.
    if proto == proto::TCP {
        let Some(tcp) = ptr_at::<[u8; TCP_LEN]>(ctx, l4_off) else {
            tuple.shape = Shape::Truncated;
            return Some(tuple);
        };
        let tcp = tcp.cast::<u8>();
        // SAFETY: `ptr_at` checked that TCP_LEN bytes are in the packet at `tcp`.
        unsafe {
            tuple.sport = ptr::read_unaligned(tcp.cast::<u16>());
            tuple.dport = ptr::read_unaligned(tcp.add(2).cast::<u16>());
            tuple.tcp_flags = ptr::read(tcp.add(13));
        }
    } else {
        let Some(udp) = ptr_at::<[u8; UDP_LEN]>(ctx, l4_off) else {
            tuple.shape = Shape::Truncated;
            return Some(tuple);
        };
        let udp = udp.cast::<u8>();
        // SAFETY: `ptr_at` checked that UDP_LEN bytes are in the packet at `udp`.
        unsafe {
            tuple.sport = ptr::read_unaligned(udp.cast::<u16>());
            tuple.dport = ptr::read_unaligned(udp.add(2).cast::<u16>());
        }
    }
    tuple.shape = Shape::Complete;
    Some(tuple)
}
