//! Events the datapath sends to the agent through the `LB_EVENTS` ring buffer.

/// `DropEvent::kind` of a drop.
pub const EVENT_DROP: u8 = 1;

/// A dropped packet, described as it arrived (before any translation); addresses and ports in
/// network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DropEvent {
    /// `EVENT_DROP`.
    pub kind: u8,
    /// The `DropReason` number.
    pub reason: u8,
    /// The `SourceFile` of the drop site.
    pub file: u8,
    /// The `Hook` that dropped it.
    pub hook: u8,
    /// Line of the drop site.
    pub line: u16,
    /// TCP flags of the packet (0 for other protocols).
    pub tcp_flags: u8,
    /// IP protocol (0 when the packet was not IPv4).
    pub proto: u8,
    /// The interface the packet arrived on.
    pub ifindex: u32,
    /// The skb hash (`flow` in the monitor line); 0 when the kernel computed none.
    pub flow_hash: u32,
    /// Source address.
    pub saddr: u32,
    /// Destination address.
    pub daddr: u32,
    /// Source port (0 without ports).
    pub sport: u16,
    /// Destination port (0 without ports).
    pub dport: u16,
    /// Length of the packet in bytes.
    pub len: u32,
}
const _: () = assert!(core::mem::size_of::<DropEvent>() == 32);

/// TCP flag bits as they sit in byte 13 of the TCP header.
pub mod tcp_flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;
}

/// `DropEvent6::kind` of a drop of an IPv6 packet.
pub const EVENT_DROP6: u8 = 2;

/// A dropped IPv6 packet: [`DropEvent`]'s first 16 bytes (the reader tells the two apart by
/// `kind`), then IPv6 addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DropEvent6 {
    /// `EVENT_DROP6`.
    pub kind: u8,
    /// The `DropReason` number.
    pub reason: u8,
    /// The `SourceFile` of the drop site.
    pub file: u8,
    /// The `Hook` that dropped it.
    pub hook: u8,
    /// Line of the drop site.
    pub line: u16,
    /// TCP flags of the packet (0 for other protocols).
    pub tcp_flags: u8,
    /// Upper-layer protocol (0 when unknown).
    pub proto: u8,
    /// The interface the packet arrived on.
    pub ifindex: u32,
    /// The skb hash; 0 when the kernel computed none.
    pub flow_hash: u32,
    /// Source address.
    pub saddr: crate::Addr6,
    /// Destination address.
    pub daddr: crate::Addr6,
    /// Source port (0 without ports).
    pub sport: u16,
    /// Destination port (0 without ports).
    pub dport: u16,
    /// Length of the packet in bytes.
    pub len: u32,
}
const _: () = assert!(core::mem::size_of::<DropEvent6>() == 56);
const _: () = assert!(
    core::mem::offset_of!(DropEvent6, flow_hash) == core::mem::offset_of!(DropEvent, flow_hash)
);

crate::pod!(DropEvent, DropEvent6);
