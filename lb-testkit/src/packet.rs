//! Frames for packet tests, built with etherparse (an implementation independent of the
//! datapath), and a reader that checks their checksums the same way.
//!
//! Every builder takes addresses as `"a.b.c.d:port"` strings so that a test reads like the
//! flow it sends: `tcp_syn("192.168.56.10:33802", "10.96.0.10:80")`. Builders are
//! deterministic (fixed MACs, TTL, sequence numbers and payloads), so the frame the datapath
//! should produce is built by the same function with the translated addresses, and compared
//! byte for byte.

use std::net::{Ipv4Addr, SocketAddrV4};

use etherparse::{
    EtherType, Ethernet2Header, IcmpEchoHeader, Icmpv4Header, Icmpv4Type, IpFragOffset, IpNumber,
    Ipv4Header, Ipv4Options, SlicedPacket, TcpHeader, TransportSlice, UdpHeader,
};
use lb_common::event::tcp_flags;

/// Source MAC of built frames.
pub const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// Destination MAC of built frames.
pub const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const PAYLOAD: &[u8] = b"GET / HTTP/1.1\r\n\r\n";

/// Parses `"a.b.c.d:port"`.
pub fn addr(text: &str) -> SocketAddrV4 {
    text.parse()
        .unwrap_or_else(|err| panic!("bad socket address {text:?}: {err}"))
}

/// Parses `"a.b.c.d"`.
pub fn ip(text: &str) -> Ipv4Addr {
    text.parse()
        .unwrap_or_else(|err| panic!("bad address {text:?}: {err}"))
}

/// An IPv4 address as the datapath's maps hold it (network byte order in a native u32).
pub fn ip_be(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

/// A port as the datapath's maps hold it.
pub fn port_be(port: u16) -> u16 {
    port.to_be()
}

/// Transport of a built frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    /// TCP with these flags.
    Tcp(u8),
    /// UDP; `false` sends checksum 0 ("none").
    Udp {
        /// Whether the UDP checksum is computed.
        checksum: bool,
    },
}

/// A frame to build: the knobs the test cases need.
#[derive(Clone, Debug)]
pub struct Frame {
    /// Source address and port.
    pub src: SocketAddrV4,
    /// Destination address and port.
    pub dst: SocketAddrV4,
    /// TCP (with flags) or UDP.
    pub l4: L4,
    /// IPv4 options (a multiple of 4 bytes, at most 40).
    pub ip_options: Vec<u8>,
    /// The MF bit.
    pub more_fragments: bool,
    /// Fragment offset in 8-byte units.
    pub fragment_offset: u16,
    /// Source MAC.
    pub src_mac: [u8; 6],
    /// Destination MAC.
    pub dst_mac: [u8; 6],
    /// The DF bit.
    pub dont_fragment: bool,
    /// The L4 payload.
    pub payload: Vec<u8>,
}

impl Frame {
    /// A TCP frame with `flags` from `src` to `dst`.
    pub fn tcp(src: &str, dst: &str, flags: u8) -> Self {
        Self {
            src: addr(src),
            dst: addr(dst),
            l4: L4::Tcp(flags),
            ip_options: Vec::new(),
            more_fragments: false,
            fragment_offset: 0,
            src_mac: SRC_MAC,
            dst_mac: DST_MAC,
            dont_fragment: false,
            payload: PAYLOAD.to_vec(),
        }
    }

    /// A UDP frame (with checksum) from `src` to `dst`.
    pub fn udp(src: &str, dst: &str) -> Self {
        Self {
            l4: L4::Udp { checksum: true },
            ..Self::tcp(src, dst, 0)
        }
    }

    /// The same frame between other endpoints.
    pub fn between(&self, src: &str, dst: &str) -> Self {
        Self {
            src: addr(src),
            dst: addr(dst),
            ..self.clone()
        }
    }

    /// The same frame with other MAC addresses.
    pub fn with_macs(&self, src_mac: [u8; 6], dst_mac: [u8; 6]) -> Self {
        Self {
            src_mac,
            dst_mac,
            ..self.clone()
        }
    }

    /// The same frame with DF set and `len` bytes of payload.
    pub fn sized(&self, len: usize) -> Self {
        Self {
            dont_fragment: true,
            payload: (0..len).map(|i| (i % 251) as u8).collect(),
            ..self.clone()
        }
    }

    /// The frame's bytes, every checksum computed by etherparse.
    pub fn bytes(&self) -> Vec<u8> {
        let (proto, l4_len) = match self.l4 {
            L4::Tcp(_) => (IpNumber::TCP, TcpHeader::MIN_LEN),
            L4::Udp { .. } => (IpNumber::UDP, UdpHeader::LEN),
        };
        let mut ip = Ipv4Header::new(0, 64, proto, self.src.ip().octets(), self.dst.ip().octets())
            .expect("ipv4 header");
        ip.identification = 0x1234;
        ip.options = Ipv4Options::try_from(self.ip_options.as_slice()).expect("ipv4 options");
        ip.more_fragments = self.more_fragments;
        ip.dont_fragment = self.dont_fragment;
        ip.fragment_offset = IpFragOffset::try_new(self.fragment_offset).expect("fragment offset");
        ip.set_payload_len(l4_len + self.payload.len())
            .expect("payload length");
        ip.header_checksum = ip.calc_header_checksum();
        let mut out = Vec::new();
        Ethernet2Header {
            destination: self.dst_mac,
            source: self.src_mac,
            ether_type: EtherType::IPV4,
        }
        .write(&mut out)
        .expect("write ethernet");
        ip.write(&mut out).expect("write ipv4");
        match self.l4 {
            L4::Tcp(flags) => {
                tcp_header(self.src.port(), self.dst.port(), flags, &ip, &self.payload)
                    .write(&mut out)
                    .expect("write tcp")
            }
            L4::Udp { checksum } => {
                let mut udp = UdpHeader::with_ipv4_checksum(
                    self.src.port(),
                    self.dst.port(),
                    &ip,
                    &self.payload,
                )
                .expect("udp header");
                if !checksum {
                    udp.checksum = 0;
                }
                udp.write(&mut out).expect("write udp");
            }
        }
        out.extend_from_slice(&self.payload);
        out
    }
}

fn tcp_header(sport: u16, dport: u16, flags: u8, ip: &Ipv4Header, payload: &[u8]) -> TcpHeader {
    let mut tcp = TcpHeader::new(sport, dport, 1_000, 64_240);
    tcp.fin = flags & tcp_flags::FIN != 0;
    tcp.syn = flags & tcp_flags::SYN != 0;
    tcp.rst = flags & tcp_flags::RST != 0;
    tcp.psh = flags & tcp_flags::PSH != 0;
    tcp.ack = flags & tcp_flags::ACK != 0;
    if tcp.ack {
        tcp.acknowledgment_number = 2_000;
    }
    tcp.checksum = tcp.calc_checksum_ipv4(ip, payload).expect("tcp checksum");
    tcp
}

/// A TCP SYN.
pub fn tcp_syn(src: &str, dst: &str) -> Vec<u8> {
    Frame::tcp(src, dst, tcp_flags::SYN).bytes()
}

/// A TCP segment with ACK|PSH and data, as in an established connection.
pub fn tcp_ack(src: &str, dst: &str) -> Vec<u8> {
    Frame::tcp(src, dst, tcp_flags::ACK | tcp_flags::PSH).bytes()
}

/// A TCP SYN|ACK, a server's answer to a SYN.
pub fn tcp_syn_ack(src: &str, dst: &str) -> Vec<u8> {
    Frame::tcp(src, dst, tcp_flags::SYN | tcp_flags::ACK).bytes()
}

/// A UDP datagram with a checksum.
pub fn udp(src: &str, dst: &str) -> Vec<u8> {
    Frame::udp(src, dst).bytes()
}

/// A UDP datagram with checksum 0 (none).
pub fn udp_without_checksum(src: &str, dst: &str) -> Vec<u8> {
    Frame {
        l4: L4::Udp { checksum: false },
        ..Frame::udp(src, dst)
    }
    .bytes()
}

/// A TCP SYN with 8 bytes of IPv4 options (NOP padding and a timestamp-free record route).
pub fn tcp_syn_with_ip_options(src: &str, dst: &str) -> Vec<u8> {
    Frame {
        ip_options: ip_options(),
        ..Frame::tcp(src, dst, tcp_flags::SYN)
    }
    .bytes()
}

/// The IPv4 options `tcp_syn_with_ip_options` carries.
pub fn ip_options() -> Vec<u8> {
    // Record route with room for one address (7 bytes: type, length, pointer, 4 bytes), then
    // end of options.
    vec![7, 7, 4, 0, 0, 0, 0, 0]
}

/// A UDP first fragment (MF set, offset 0).
pub fn udp_first_fragment(src: &str, dst: &str) -> Vec<u8> {
    Frame {
        more_fragments: true,
        ..Frame::udp(src, dst)
    }
    .bytes()
}

/// A non-first fragment (offset 185 × 8 bytes) of a UDP datagram.
pub fn udp_later_fragment(src: &str, dst: &str) -> Vec<u8> {
    Frame {
        fragment_offset: 185,
        ..Frame::udp(src, dst)
    }
    .bytes()
}

/// `frame` cut to `len` bytes.
pub fn truncated(mut frame: Vec<u8>, len: usize) -> Vec<u8> {
    frame.truncate(len);
    frame
}

/// `frame` with byte `offset` set to `value` (checksums left as they were).
pub fn with_byte(mut frame: Vec<u8>, offset: usize, value: u8) -> Vec<u8> {
    if let Some(byte) = frame.get_mut(offset) {
        *byte = value;
    }
    frame
}

/// An ICMP echo request from `src` to `dst`.
pub fn icmp_echo(src: &str, dst: &str) -> Vec<u8> {
    let request = Icmpv4Type::EchoRequest(IcmpEchoHeader { id: 7, seq: 1 });
    icmp_frame(src, dst, (SRC_MAC, DST_MAC), request, b"ping")
}

/// The echo reply `dst` sends back for [`icmp_echo`]`(src, dst)`, MACs swapped.
pub fn icmp_echo_reply(src: &str, dst: &str) -> Vec<u8> {
    let reply = Icmpv4Type::EchoReply(IcmpEchoHeader { id: 7, seq: 1 });
    icmp_frame(dst, src, (DST_MAC, SRC_MAC), reply, b"ping")
}

/// An ICMP message of another type (`kind`) with an empty body, e.g. a timestamp request.
pub fn icmp_other(src: &str, dst: &str, kind: u8) -> Vec<u8> {
    let other = Icmpv4Type::Unknown {
        type_u8: kind,
        code_u8: 0,
        bytes5to8: [0; 4],
    };
    icmp_frame(src, dst, (SRC_MAC, DST_MAC), other, &[0; 12])
}

/// An ICMP error from `src` to `dst` (addresses) of `kind`/`code`, with `rest` as the
/// header's last four bytes (the next-hop MTU of "fragmentation needed" in its last two),
/// quoting the IP header of `about` (a frame) and `quoted_l4` bytes of what follows (8 as
/// RFC 792 asks; Linux quotes up to 576 bytes in all).
pub fn icmp_error(
    src: &str,
    dst: &str,
    (kind, code): (u8, u8),
    rest: [u8; 4],
    about: &[u8],
    quoted_l4: usize,
) -> Vec<u8> {
    let packet = about.get(ETH_LEN..).expect("a frame to quote");
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    let quote = &packet[..(ihl + quoted_l4).min(packet.len())];
    let error = Icmpv4Type::Unknown {
        type_u8: kind,
        code_u8: code,
        bytes5to8: rest,
    };
    icmp_frame(src, dst, (SRC_MAC, DST_MAC), error, quote)
}

/// `frame` with other MAC addresses.
pub fn with_macs(mut frame: Vec<u8>, src_mac: [u8; 6], dst_mac: [u8; 6]) -> Vec<u8> {
    frame[..6].copy_from_slice(&dst_mac);
    frame[6..12].copy_from_slice(&src_mac);
    frame
}

const ETH_LEN: usize = 14;

fn icmp_frame(
    src: &str,
    dst: &str,
    (src_mac, dst_mac): ([u8; 6], [u8; 6]),
    kind: Icmpv4Type,
    payload: &[u8],
) -> Vec<u8> {
    let icmp = Icmpv4Header::with_checksum(kind, payload);
    let mut ip = Ipv4Header::new(0, 64, IpNumber::ICMP, ip(src).octets(), ip(dst).octets())
        .expect("ipv4 header");
    ip.set_payload_len(icmp.header_len() + payload.len())
        .expect("payload length");
    ip.header_checksum = ip.calc_header_checksum();
    let mut out = Vec::new();
    Ethernet2Header {
        destination: dst_mac,
        source: src_mac,
        ether_type: EtherType::IPV4,
    }
    .write(&mut out)
    .expect("write ethernet");
    ip.write(&mut out).expect("write ipv4");
    icmp.write(&mut out).expect("write icmp");
    out.extend_from_slice(payload);
    out
}

/// A frame of another IP protocol (`proto`, e.g. 132 for SCTP) with 16 bytes of payload.
pub fn ip_proto(src: &str, dst: &str, proto: u8) -> Vec<u8> {
    let payload = [0u8; 16];
    let mut ip = Ipv4Header::new(0, 64, IpNumber(proto), ip(src).octets(), ip(dst).octets())
        .expect("ipv4 header");
    ip.set_payload_len(payload.len()).expect("payload length");
    ip.header_checksum = ip.calc_header_checksum();
    let mut out = Vec::new();
    Ethernet2Header {
        destination: DST_MAC,
        source: SRC_MAC,
        ether_type: EtherType::IPV4,
    }
    .write(&mut out)
    .expect("write ethernet");
    ip.write(&mut out).expect("write ipv4");
    out.extend_from_slice(&payload);
    out
}

/// The Internet checksum (RFC 1071) of `bytes`: 0 over a block that holds its own correct
/// checksum. Written out here, apart from etherparse, to check what the datapath computed.
pub fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for pair in bytes.chunks(2) {
        let word = u16::from_be_bytes([pair[0], pair.get(1).copied().unwrap_or(0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// What an ICMP error says, once its checksums have been verified with [`internet_checksum`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenIcmp {
    /// Outer source.
    pub src: Ipv4Addr,
    /// Outer destination.
    pub dst: Ipv4Addr,
    /// ICMP type and code.
    pub kind: (u8, u8),
    /// The header's last four bytes.
    pub rest: [u8; 4],
    /// The quoted packet's source address and port.
    pub quoted_src: SocketAddrV4,
    /// The quoted packet's destination address and port.
    pub quoted_dst: SocketAddrV4,
}

/// Reads the ICMP error `frame`, panicking unless its IP header checksum, its ICMP checksum
/// (over the whole message) and the quoted IP header's checksum are right.
pub fn read_icmp_error_checked(frame: &[u8]) -> SeenIcmp {
    let packet = &frame[ETH_LEN..];
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
    assert_eq!(total, packet.len(), "IPv4 total length");
    assert_eq!(packet[9], 1, "an ICMP packet");
    assert_eq!(internet_checksum(&packet[..ihl]), 0, "IPv4 header checksum");
    let icmp = &packet[ihl..];
    assert_eq!(internet_checksum(icmp), 0, "ICMP checksum");
    let quoted = &icmp[8..];
    let quoted_ihl = usize::from(quoted[0] & 0x0f) * 4;
    assert_eq!(
        internet_checksum(&quoted[..quoted_ihl]),
        0,
        "quoted IPv4 header checksum"
    );
    let l4 = &quoted[quoted_ihl..];
    let v4 = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    SeenIcmp {
        src: v4(&packet[12..16]),
        dst: v4(&packet[16..20]),
        kind: (icmp[0], icmp[1]),
        rest: [icmp[4], icmp[5], icmp[6], icmp[7]],
        quoted_src: SocketAddrV4::new(v4(&quoted[12..16]), u16::from_be_bytes([l4[0], l4[1]])),
        quoted_dst: SocketAddrV4::new(v4(&quoted[16..20]), u16::from_be_bytes([l4[2], l4[3]])),
    }
}

/// An ARP request (a non-IPv4 frame).
pub fn arp_request() -> Vec<u8> {
    let mut out = Vec::new();
    Ethernet2Header {
        destination: [0xff; 6],
        source: SRC_MAC,
        ether_type: EtherType::ARP,
    }
    .write(&mut out)
    .expect("write ethernet");
    // htype 1, ptype IPv4, hlen 6, plen 4, op request, sender, target.
    out.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    out.extend_from_slice(&SRC_MAC);
    out.extend_from_slice(&[10, 96, 0, 99]);
    out.extend_from_slice(&[0; 6]);
    out.extend_from_slice(&[10, 96, 0, 10]);
    out
}

/// What a frame says, read by etherparse, once its checksums have been verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// Source address and port.
    pub src: SocketAddrV4,
    /// Destination address and port.
    pub dst: SocketAddrV4,
    /// The UDP checksum field (TCP: the TCP one).
    pub l4_checksum: u16,
}

/// Reads `frame`, panicking unless its IPv4 and TCP/UDP checksums are right (a UDP checksum of
/// 0 means none and is accepted).
pub fn read_checked(frame: &[u8]) -> Seen {
    let packet = SlicedPacket::from_ethernet(frame).expect("parse frame");
    let Some(etherparse::NetSlice::Ipv4(ipv4)) = &packet.net else {
        panic!("not an IPv4 frame: {frame:02x?}");
    };
    let ip = ipv4.header().to_header();
    assert_eq!(
        ip.header_checksum,
        ip.calc_header_checksum(),
        "IPv4 header checksum"
    );
    let src_ip = Ipv4Addr::from(ip.source);
    let dst_ip = Ipv4Addr::from(ip.destination);
    match &packet.transport {
        Some(TransportSlice::Tcp(tcp)) => {
            let header = tcp.to_header();
            let want = header
                .calc_checksum_ipv4(&ip, tcp.payload())
                .expect("tcp checksum");
            assert_eq!(header.checksum, want, "TCP checksum");
            Seen {
                src: SocketAddrV4::new(src_ip, header.source_port),
                dst: SocketAddrV4::new(dst_ip, header.destination_port),
                l4_checksum: header.checksum,
            }
        }
        Some(TransportSlice::Udp(udp)) => {
            let header = udp.to_header();
            if header.checksum != 0 {
                let want = header
                    .calc_checksum_ipv4(&ip, udp.payload())
                    .expect("udp checksum");
                assert_eq!(header.checksum, want, "UDP checksum");
            }
            Seen {
                src: SocketAddrV4::new(src_ip, header.source_port),
                dst: SocketAddrV4::new(dst_ip, header.destination_port),
                l4_checksum: header.checksum,
            }
        }
        other => panic!("not TCP or UDP: {other:?}"),
    }
}
