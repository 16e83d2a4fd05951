//! Pods wired to their node the one way lb's tests, lab and benchmarks do it, Calico style:
//! the pod's `eth0` holds a /32 and a default route via the link-local gateway
//! [`POD_GATEWAY`], which the node answers by proxy ARP on the host side of the pod's veth;
//! the node routes the pod's /32 to that veth.
//!
//! Proxy ARP answers for an address only when the node routes it out of another interface:
//! the topology gives the node such a route (a default route, or a route to the gateway via a
//! spare interface) before pods send anything.
use std::net::Ipv4Addr;

use crate::Result;
use crate::netns::{Netns, veth};

/// The link-local gateway every pod routes through, answered by proxy ARP on its node.
pub const POD_GATEWAY: &str = "169.254.1.1";
/// The pod's side of its veth.
pub const POD_DEV: &str = "eth0";

/// Makes `node` a router for pods: IPv4 forwarding on, and the strict reverse-path check off.
/// Call it before the node has any veth: forwarded pod traffic and SNATed flows arrive on
/// interfaces that check would reject, and `default` covers the interfaces made afterwards.
pub fn prepare_node(node: &Netns) -> Result<()> {
    for key in ["all", "default"] {
        node.sysctl(&format!("net.ipv4.conf.{key}.rp_filter"), "0")?;
    }
    node.sysctl("net.ipv4.ip_forward", "1")
}

/// Wires the pod namespace `pod` with address `ip` to `node` through a veth whose node side is
/// `host_dev` (the agent's `--pod-devices` glob must match it).
pub fn wire(node: &Netns, host_dev: &str, pod: &Netns, ip: Ipv4Addr) -> Result<()> {
    veth(node, host_dev, pod, POD_DEV)?;
    node.sysctl(&format!("net.ipv4.conf.{host_dev}.proxy_arp"), "1")?;
    // Proxy ARP answers after a random delay of up to `proxy_delay` (0.8 s by default), which
    // would hold a pod's first packet that long.
    node.sysctl(&format!("net.ipv4.neigh.{host_dev}.proxy_delay"), "0")?;
    pod.addr(POD_DEV, &format!("{ip}/32"))?;
    pod.route(&[POD_GATEWAY, "dev", POD_DEV, "scope", "link"])?;
    pod.route(&["default", "via", POD_GATEWAY, "dev", POD_DEV])?;
    node.route(&[&format!("{ip}/32"), "dev", host_dev, "scope", "link"])
}
