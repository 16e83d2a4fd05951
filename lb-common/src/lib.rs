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

/// IANA protocol numbers lb translates.
pub mod proto {
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// ICMP (never translated; recorded in events).
    pub const ICMP: u8 = 1;

    /// The protocol's name as Kubernetes and `lbctl service list` write it (`TCP`, `UDP`,
    /// `ICMP`), or `None` for a number lb has no name for. The one table of names: `lbctl
    /// monitor` lowercases it, as Cilium's line does.
    pub const fn name(proto: u8) -> Option<&'static str> {
        match proto {
            TCP => Some("TCP"),
            UDP => Some("UDP"),
            ICMP => Some("ICMP"),
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
