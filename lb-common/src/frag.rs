//! IPv4 fragments: `LB4_FRAGS`, an LRU map from a datagram's identity to the ports its first
//! fragment carried, so that its later fragments (which carry no L4 header) are translated
//! like the first. Written and read by the datapath only.

/// Key of `LB4_FRAGS`: a datagram as it arrived (addresses in network byte order, the IP
/// identification as stored in the header, the protocol).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FragKey4 {
    /// Source address.
    pub saddr: u32,
    /// Destination address.
    pub daddr: u32,
    /// IP identification (network byte order).
    pub id: u16,
    /// IP protocol.
    pub proto: u8,
    /// Zero.
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<FragKey4>() == 12);

/// Value of `LB4_FRAGS`: the first fragment's ports (network byte order).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FragPorts {
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
}
const _: () = assert!(core::mem::size_of::<FragPorts>() == 4);

/// Key of `LB6_FRAGS`: an IPv6 datagram as it arrived (its Fragment header's identification,
/// as stored, and the upper-layer protocol); the value is [`FragPorts`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FragKey6 {
    /// Source address.
    pub saddr: crate::Addr6,
    /// Destination address.
    pub daddr: crate::Addr6,
    /// Fragment identification (network byte order).
    pub id: u32,
    /// Upper-layer protocol.
    pub proto: u8,
    /// Zero.
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<FragKey6>() == 40);

crate::pod!(FragKey4, FragPorts, FragKey6);
