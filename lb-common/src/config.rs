//! The datapath's live configuration: `LB_CONFIG`, an array of one `DatapathConfig` that the
//! agent rewrites whenever an option changes. The programs read it on every packet, so a change
//! takes effect on the next packet, without reloading anything.

/// Value of `LB_CONFIG[0]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
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
}
const _: () = assert!(core::mem::size_of::<DatapathConfig>() == 16);

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
/// Default event rate limit.
pub const EVENTS_PER_SEC: u32 = 1_000;

crate::pod!(DatapathConfig);
