//! The datapath's live configuration: `LB_CONFIG`, an array of one `DatapathConfig` that the
//! agent rewrites whenever an option changes. The programs read it on every packet, so a change
//! takes effect on the next packet, without reloading anything.

use crate::conntrack::CtLifetimes;

/// Value of `LB_CONFIG[0]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DatapathConfig {
    /// `CONFIG_F_*` bits.
    pub flags: u32,
    /// The node's address on its external interfaces, the source of SNATed packets
    /// (network byte order). 0: none, and a flow from outside to a remote backend, which
    /// needs SNAT, is dropped with 165 (the agent refuses to start without one).
    pub node_addr: u32,
    /// First port (host byte order) of the SNAT range.
    pub snat_port_min: u16,
    /// Last port (host byte order) of the SNAT range.
    pub snat_port_max: u16,
    /// Events per second and CPU that `LB_EVENTS` may carry; 0 means no events.
    pub events_per_sec: u32,
    /// The conntrack clock's rate: seconds = `bpf_jiffies64() * clock_mult >> 32`, so
    /// `2^32 / CONFIG_HZ` (the agent measures HZ). 0 stops the clock at `clock_offset`, which
    /// lets tests set the time.
    pub clock_mult: u32,
    /// Added to the conntrack clock (seconds): tests move time forward with it.
    pub clock_offset: u32,
    /// Conntrack lifetimes, in seconds.
    pub lifetimes: CtLifetimes,
    /// Seed of the 5-tuple hash that indexes Maglev tables (`bpf-lb-maglev-hash-seed`): the
    /// same on every node, so that every node sends a flow to the same table entry.
    pub maglev_seed: u32,
    /// M, the size of every Maglev table (`bpf-lb-maglev-table-size`, a prime); 0 until the
    /// agent writes it, which makes every Maglev lookup miss (and fall back to random).
    pub maglev_table_size: u32,
    /// Zero.
    pub _pad: u32,
    /// The node's IPv6 address on its external interfaces, the source of SNATed IPv6 packets;
    /// all zero: none (an IPv6 flow that needs SNAT is dropped with 165).
    pub node_addr6: crate::Addr6,
}
const _: () = assert!(core::mem::size_of::<DatapathConfig>() == 80);

impl DatapathConfig {
    /// Nothing enabled (no SNAT, no events, ClusterIPs internal), the clock stopped at 0 and
    /// Cilium's lifetimes: what the datapath assumes until the agent writes `LB_CONFIG`.
    pub const DEFAULT: Self = Self {
        flags: 0,
        node_addr: 0,
        snat_port_min: 0,
        snat_port_max: 0,
        events_per_sec: 0,
        clock_mult: 0,
        clock_offset: 0,
        lifetimes: CtLifetimes::DEFAULT,
        maglev_seed: 0,
        maglev_table_size: 0,
        _pad: 0,
        node_addr6: [0; 4],
    };
}

impl Default for DatapathConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// `bpf-lb-external-clusterip`: ClusterIP frontends are reachable from outside the cluster.
pub const CONFIG_F_EXTERNAL_CLUSTER_IP: u32 = 1 << 0;
/// `service-no-backend-response=drop`: a new flow to a Service without endpoints is dropped
/// silently instead of refused with ICMP port unreachable.
pub const CONFIG_F_NO_BACKEND_DROP: u32 = 1 << 1;

/// Default first SNAT port. The default range, 61000-65535, lies above both the kernel's
/// default ephemeral range (`net.ipv4.ip_local_port_range`, 32768-60999), from which host
/// processes take their source ports, and Kubernetes' NodePort range (30000-32767): an SNAT
/// port that a host socket also uses would hand that socket's replies from a backend to the
/// SNATed flow. (Cilium's NodePort SNAT range, 32768-65535, overlaps the ephemeral range;
/// Cilium can afford that because its own SNAT also tracks the host's connections.)
pub const SNAT_PORT_MIN: u16 = 61_000;
/// Default last SNAT port.
pub const SNAT_PORT_MAX: u16 = 65_535;

/// The source address of hairpinned flows (a pod reaching itself through a Service):
/// 169.254.42.1, Cilium's service loopback address. A packet whose source is the pod's own
/// address would be dropped by the pod's stack as a martian, so the source becomes this
/// link-local address, which no node or pod owns.
pub const HAIRPIN_OCTETS: [u8; 4] = [169, 254, 42, 1];
/// [`HAIRPIN_OCTETS`] as the datapath stores addresses (network byte order).
pub const HAIRPIN_ADDR: u32 = u32::from_ne_bytes(HAIRPIN_OCTETS);
/// The source address of hairpinned IPv6 flows: 100::a9fe:2a01, in the discard-only block
/// 100::/64 (RFC 6666), which no node or pod owns, with 169.254.42.1 in its last 32 bits.
/// Not link-local (Cilium's default, fe80::1, is a common pod gateway, and a pod would look
/// it up by neighbour discovery): the pod sends its replies through its default route, as it
/// does to 169.254.42.1.
pub const HAIRPIN_OCTETS6: [u8; 16] = [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 169, 254, 42, 1];
/// [`HAIRPIN_OCTETS6`] as the datapath stores addresses (`crate::Addr6`).
pub const HAIRPIN_ADDR6: crate::Addr6 = crate::addr6_from_octets(HAIRPIN_OCTETS6);
/// Default event rate limit.
pub const EVENTS_PER_SEC: u32 = 1_000;

crate::pod!(DatapathConfig);
