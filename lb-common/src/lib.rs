//! Types that both sides of lb read: the eBPF datapath (`lb-ebpf`, `no_std`) and the agent
//! (`lb-agent`, with the `user` feature, which adds the `aya::Pod` impls).
//!
//! Every struct here is `repr(C)` with explicit padding, so the kernel and the agent agree on
//! every byte. Addresses and ports are in network byte order wherever a field's doc says so;
//! the agent's `datapath/maps.rs` is the only place that converts.
#![no_std]

pub mod config;
pub mod conntrack;
pub mod drop;
pub mod event;
pub mod filter;
pub mod frag;
pub mod maps;
pub mod metrics;
pub mod service;
pub mod sock;

/// An IPv6 address as the datapath keeps it: its 16 bytes in wire order, held as four words in
/// memory order (so `words[0]` holds bytes 0..4 as they sit in the packet; not a host-order
/// number). Word-sized, so the datapath copies an address with four aligned loads and stores
/// rather than sixteen byte accesses. [`addr6_from_octets`] and [`addr6_octets`] convert.
pub type Addr6 = [u32; 4];

/// The [`Addr6`] of an address's 16 bytes (`Ipv6Addr::octets()`).
pub const fn addr6_from_octets(octets: [u8; 16]) -> Addr6 {
    let mut words = [0u32; 4];
    let mut i = 0;
    while i < 4 {
        words[i] = u32::from_ne_bytes([
            octets[4 * i],
            octets[4 * i + 1],
            octets[4 * i + 2],
            octets[4 * i + 3],
        ]);
        i += 1;
    }
    words
}

/// The 16 bytes of an [`Addr6`] (for `Ipv6Addr::from`).
pub const fn addr6_octets(addr: Addr6) -> [u8; 16] {
    let mut octets = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let bytes = addr[i].to_ne_bytes();
        octets[4 * i] = bytes[0];
        octets[4 * i + 1] = bytes[1];
        octets[4 * i + 2] = bytes[2];
        octets[4 * i + 3] = bytes[3];
        i += 1;
    }
    octets
}

/// IANA protocol numbers lb translates.
pub mod proto {
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// ICMP (never translated; recorded in events).
    pub const ICMP: u8 = 1;
    /// ICMPv6 (neighbour discovery passes untouched; errors about a flow are translated).
    pub const ICMPV6: u8 = 58;

    /// The protocol's name as Kubernetes and `lbctl service list` write it (`TCP`, `UDP`,
    /// `ICMP`), or `None` for a number lb has no name for. The one table of names: `lbctl
    /// monitor` lowercases it, as Cilium's line does.
    pub const fn name(proto: u8) -> Option<&'static str> {
        match proto {
            TCP => Some("TCP"),
            UDP => Some("UDP"),
            ICMP => Some("ICMP"),
            ICMPV6 => Some("ICMPv6"),
            _ => None,
        }
    }
}

/// Implements `aya::Pod` for plain-old-data types on the agent side.
macro_rules! pod {
    ($($ty:ty),* $(,)?) => {
        $(
            // SAFETY: repr(C), explicit padding, every bit pattern is valid.
            #[cfg(feature = "user")]
            unsafe impl aya::Pod for $ty {}
        )*
    };
}
pub(crate) use pod;
