//! IPv6 frames for packet tests, beside `packet.rs`'s IPv4 ones: the fixed header and the
//! extension headers are written out here byte by byte, the TCP and UDP checksums computed
//! over the IPv6 pseudo-header with [`internet_checksum`] (independent of the datapath, which
//! updates checksums incrementally). Addresses are `"[v6]:port"` strings:
//! `tcp6_syn("[fd00:56::10]:33802", "[fd00:96::10]:80")`. Builders are deterministic, so the
//! frame the datapath should produce is built by the same function with the translated
//! addresses and compared byte for byte.

use std::net::{Ipv6Addr, SocketAddrV6};

use lb_common::{Addr6, addr6_from_octets, event::tcp_flags};

use crate::packet::{DST_MAC, SRC_MAC, internet_checksum};

const PAYLOAD: &[u8] = b"GET / HTTP/1.1\r\n\r\n";
const ETH_LEN: usize = 14;
const IP6_LEN: usize = 40;
/// Next-header numbers of the extension headers the builders write.
pub mod nexthdr {
    /// Hop-by-hop options.
    pub const HOP: u8 = 0;
    /// Routing.
    pub const ROUTING: u8 = 43;
    /// Fragment.
    pub const FRAGMENT: u8 = 44;
    /// Destination options.
    pub const DEST: u8 = 60;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
}

/// Parses `"[v6]:port"`.
pub fn addr6(text: &str) -> SocketAddrV6 {
    text.parse()
        .unwrap_or_else(|err| panic!("bad IPv6 socket address {text:?}: {err}"))
}

/// Parses an IPv6 address.
pub fn ip6(text: &str) -> Ipv6Addr {
    text.parse()
        .unwrap_or_else(|err| panic!("bad IPv6 address {text:?}: {err}"))
}

/// An IPv6 address as the datapath's maps hold it.
pub fn ip6_words(addr: Ipv6Addr) -> Addr6 {
    addr6_from_octets(addr.octets())
}

/// The upper layer of a built frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4v6 {
    /// TCP with these flags.
    Tcp(u8),
    /// UDP; `false` writes checksum 0 (invalid in IPv6).
    Udp {
        /// Whether the UDP checksum is computed.
        checksum: bool,
    },
}

/// An extension header to put before the upper layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ext {
    /// Hop-by-hop options (8 bytes of padding).
    HopByHop,
    /// Destination options, `len8` × 8 bytes (padding).
    DestOptions {
        /// Length in 8-byte units (at least 1).
        len8: u8,
    },
    /// A routing header (type 4, no segments left: nothing to route).
    Routing,
    /// A fragment header: `offset` in 8-byte units, `more` the M flag.
    Fragment {
        /// Fragment offset.
        offset: u16,
        /// More fragments follow.
        more: bool,
    },
}

impl Ext {
    fn kind(self) -> u8 {
        match self {
            Self::HopByHop => nexthdr::HOP,
            Self::DestOptions { .. } => nexthdr::DEST,
            Self::Routing => nexthdr::ROUTING,
            Self::Fragment { .. } => nexthdr::FRAGMENT,
        }
    }

    fn write(self, next: u8, out: &mut Vec<u8>) {
        match self {
            Self::HopByHop | Self::Routing => {
                let rest: [u8; 6] = if self == Self::Routing {
                    [4, 0, 0, 0, 0, 0]
                } else {
                    // PadN with 4 bytes of padding.
                    [1, 4, 0, 0, 0, 0]
                };
                out.extend_from_slice(&[next, 0]);
                out.extend_from_slice(&rest);
            }
            Self::DestOptions { len8 } => {
                let len = usize::from(len8.max(1)) * 8;
                out.extend_from_slice(&[next, len8.max(1) - 1]);
                // One PadN option filling the rest.
                out.extend_from_slice(&[1, (len - 4) as u8]);
                out.extend(std::iter::repeat_n(0, len - 4));
            }
            Self::Fragment { offset, more } => {
                let word = (offset << 3) | u16::from(more);
                out.extend_from_slice(&[next, 0]);
                out.extend_from_slice(&word.to_be_bytes());
                out.extend_from_slice(&0x1234_5678u32.to_be_bytes());
            }
        }
    }
}

/// An IPv6 frame to build.
#[derive(Clone, Debug)]
pub struct Frame6 {
    /// Source address and port.
    pub src: SocketAddrV6,
    /// Destination address and port.
    pub dst: SocketAddrV6,
    /// TCP or UDP.
    pub l4: L4v6,
    /// Extension headers, in order.
    pub ext: Vec<Ext>,
    /// Source MAC.
    pub src_mac: [u8; 6],
    /// Destination MAC.
    pub dst_mac: [u8; 6],
    /// The L4 payload.
    pub payload: Vec<u8>,
}

impl Frame6 {
    /// A TCP frame with `flags`.
    pub fn tcp(src: &str, dst: &str, flags: u8) -> Self {
        Self {
            src: addr6(src),
            dst: addr6(dst),
            l4: L4v6::Tcp(flags),
            ext: Vec::new(),
            src_mac: SRC_MAC,
            dst_mac: DST_MAC,
            payload: PAYLOAD.to_vec(),
        }
    }

    /// A UDP frame with its checksum.
    pub fn udp(src: &str, dst: &str) -> Self {
        Self {
            l4: L4v6::Udp { checksum: true },
            ..Self::tcp(src, dst, 0)
        }
    }

    /// The same frame between other endpoints.
    pub fn between(&self, src: &str, dst: &str) -> Self {
        Self {
            src: addr6(src),
            dst: addr6(dst),
            ..self.clone()
        }
    }

    /// The same frame with extension headers `ext`.
    pub fn with_ext(&self, ext: &[Ext]) -> Self {
        Self {
            ext: ext.to_vec(),
            ..self.clone()
        }
    }

    /// The same frame with other MACs.
    pub fn with_macs(&self, src_mac: [u8; 6], dst_mac: [u8; 6]) -> Self {
        Self {
            src_mac,
            dst_mac,
            ..self.clone()
        }
    }

    /// The frame's bytes.
    pub fn bytes(&self) -> Vec<u8> {
        let mut l4 = Vec::new();
        let proto = match self.l4 {
            L4v6::Tcp(flags) => {
                l4.extend_from_slice(&self.src.port().to_be_bytes());
                l4.extend_from_slice(&self.dst.port().to_be_bytes());
                l4.extend_from_slice(&1_000u32.to_be_bytes());
                let ack = if flags & tcp_flags::ACK != 0 {
                    2_000u32
                } else {
                    0
                };
                l4.extend_from_slice(&ack.to_be_bytes());
                l4.extend_from_slice(&[5 << 4, flags]);
                l4.extend_from_slice(&64_240u16.to_be_bytes());
                l4.extend_from_slice(&[0, 0, 0, 0]);
                nexthdr::TCP
            }
            L4v6::Udp { .. } => {
                l4.extend_from_slice(&self.src.port().to_be_bytes());
                l4.extend_from_slice(&self.dst.port().to_be_bytes());
                l4.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                l4.extend_from_slice(&[0, 0]);
                nexthdr::UDP
            }
        };
        l4.extend_from_slice(&self.payload);
        let csum_off = if proto == nexthdr::TCP { 16 } else { 6 };
        let with_checksum = !matches!(self.l4, L4v6::Udp { checksum: false });
        if with_checksum {
            let mut sum = l4_checksum(self.src.ip(), self.dst.ip(), proto, &l4);
            if sum == 0 {
                sum = 0xffff;
            }
            l4[csum_off..csum_off + 2].copy_from_slice(&sum.to_be_bytes());
        }
        frame(
            (self.src_mac, self.dst_mac),
            (self.src.ip(), self.dst.ip()),
            &self.ext,
            proto,
            &l4,
        )
    }
}

/// The TCP/UDP/ICMPv6 checksum of `l4` (its checksum field zero) over the IPv6 pseudo-header.
pub fn l4_checksum(src: &Ipv6Addr, dst: &Ipv6Addr, proto: u8, l4: &[u8]) -> u16 {
    let mut block = Vec::with_capacity(40 + l4.len());
    block.extend_from_slice(&src.octets());
    block.extend_from_slice(&dst.octets());
    block.extend_from_slice(&(l4.len() as u32).to_be_bytes());
    block.extend_from_slice(&[0, 0, 0, proto]);
    block.extend_from_slice(l4);
    internet_checksum(&block)
}

/// An Ethernet + IPv6 frame around `upper` (protocol `proto`), behind `ext`.
fn frame(
    (src_mac, dst_mac): ([u8; 6], [u8; 6]),
    (src, dst): (&Ipv6Addr, &Ipv6Addr),
    ext: &[Ext],
    proto: u8,
    upper: &[u8],
) -> Vec<u8> {
    let mut headers = Vec::new();
    for (i, header) in ext.iter().enumerate() {
        let next = ext.get(i + 1).map_or(proto, |h| h.kind());
        header.write(next, &mut headers);
    }
    let first = ext.first().map_or(proto, |h| h.kind());
    let mut out = Vec::new();
    out.extend_from_slice(&dst_mac);
    out.extend_from_slice(&src_mac);
    out.extend_from_slice(&0x86ddu16.to_be_bytes());
    out.extend_from_slice(&[0x60, 0, 0, 0]);
    out.extend_from_slice(&((headers.len() + upper.len()) as u16).to_be_bytes());
    out.extend_from_slice(&[first, 64]);
    out.extend_from_slice(&src.octets());
    out.extend_from_slice(&dst.octets());
    out.extend_from_slice(&headers);
    out.extend_from_slice(upper);
    out
}

/// A TCP SYN.
pub fn tcp6_syn(src: &str, dst: &str) -> Vec<u8> {
    Frame6::tcp(src, dst, tcp_flags::SYN).bytes()
}

/// A TCP segment with ACK|PSH and data.
pub fn tcp6_ack(src: &str, dst: &str) -> Vec<u8> {
    Frame6::tcp(src, dst, tcp_flags::ACK | tcp_flags::PSH).bytes()
}

/// A TCP SYN|ACK.
pub fn tcp6_syn_ack(src: &str, dst: &str) -> Vec<u8> {
    Frame6::tcp(src, dst, tcp_flags::SYN | tcp_flags::ACK).bytes()
}

/// A UDP datagram with its checksum.
pub fn udp6(src: &str, dst: &str) -> Vec<u8> {
    Frame6::udp(src, dst).bytes()
}

/// An ICMPv6 message of `kind` (e.g. 135, neighbour solicitation) with a 20-byte body, from
/// address `src` to address `dst`.
pub fn icmp6(src: &str, dst: &str, kind: u8) -> Vec<u8> {
    let (src, dst) = (ip6(src), ip6(dst));
    let mut body = vec![kind, 0, 0, 0];
    body.extend_from_slice(&[0; 4]);
    body.extend_from_slice(&dst.octets());
    let sum = l4_checksum(&src, &dst, nexthdr::ICMPV6, &body);
    body[2..4].copy_from_slice(&sum.to_be_bytes());
    frame(
        (SRC_MAC, DST_MAC),
        (&src, &dst),
        &[],
        nexthdr::ICMPV6,
        &body,
    )
}

/// A packet of another upper-layer protocol (`proto`, e.g. 132 for SCTP) with 16 bytes.
pub fn ip6_proto(src: &str, dst: &str, proto: u8) -> Vec<u8> {
    frame(
        (SRC_MAC, DST_MAC),
        (&ip6(src), &ip6(dst)),
        &[],
        proto,
        &[0; 16],
    )
}

/// What an IPv6 frame says, once its L4 checksum has been verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen6 {
    /// Source address and port.
    pub src: SocketAddrV6,
    /// Destination address and port.
    pub dst: SocketAddrV6,
    /// The TCP or UDP checksum field.
    pub l4_checksum: u16,
}

/// Reads the IPv6 TCP/UDP `frame` (extension headers walked), panicking unless its payload
/// length and its L4 checksum over the pseudo-header are right (a UDP checksum of 0 too:
/// invalid in IPv6).
pub fn read_checked6(frame: &[u8]) -> Seen6 {
    assert_eq!(&frame[12..14], &[0x86, 0xdd], "an IPv6 frame");
    let ip = &frame[ETH_LEN..];
    let payload_len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    assert_eq!(payload_len + IP6_LEN, ip.len(), "IPv6 payload length");
    let octets = |b: &[u8]| -> Ipv6Addr {
        let mut a = [0u8; 16];
        a.copy_from_slice(&b[..16]);
        Ipv6Addr::from(a)
    };
    let (src, dst) = (octets(&ip[8..24]), octets(&ip[24..40]));
    let mut next = ip[6];
    let mut off = IP6_LEN;
    while matches!(
        next,
        nexthdr::HOP | nexthdr::ROUTING | nexthdr::DEST | nexthdr::FRAGMENT
    ) {
        let len = if next == nexthdr::FRAGMENT {
            8
        } else {
            (usize::from(ip[off + 1]) + 1) * 8
        };
        next = ip[off];
        off += len;
    }
    assert!(
        next == nexthdr::TCP || next == nexthdr::UDP,
        "not TCP or UDP: {next}"
    );
    let l4 = &ip[off..];
    let csum_off = if next == nexthdr::TCP { 16 } else { 6 };
    let field = u16::from_be_bytes([l4[csum_off], l4[csum_off + 1]]);
    assert_ne!(field, 0, "an IPv6 L4 checksum is never 0");
    let mut zeroed = l4.to_vec();
    zeroed[csum_off..csum_off + 2].copy_from_slice(&[0, 0]);
    let mut want = l4_checksum(&src, &dst, next, &zeroed);
    if want == 0 {
        want = 0xffff;
    }
    assert_eq!(field, want, "L4 checksum over the IPv6 pseudo-header");
    Seen6 {
        src: SocketAddrV6::new(src, u16::from_be_bytes([l4[0], l4[1]]), 0, 0),
        dst: SocketAddrV6::new(dst, u16::from_be_bytes([l4[2], l4[3]]), 0, 0),
        l4_checksum: field,
    }
}
