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
    /// (network byte order); 0 disables SNAT, and flows to remote backends are then forwarded
    /// with their client's address.
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

/// Default first SNAT port, as Cilium's.
pub const SNAT_PORT_MIN: u16 = 32_768;
/// Default last SNAT port.
pub const SNAT_PORT_MAX: u16 = 60_999;
/// Default event rate limit.
pub const EVENTS_PER_SEC: u32 = 1_000;

crate::pod!(DatapathConfig);
