//! The story's names and addresses: the router, the two nodes, their pods, the ClusterIPs and
//! the ASes, as `../shared/docs/seed-story.md` gives them. Plain data, imported by everything
//! else in the lab (and re-exported by [`crate::topology`], which builds them).
use std::net::Ipv4Addr;

use lb_testkit::pod;

/// The router's address on the L2 segment.
pub const ROUTER_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 56, 10);
/// Prefix length of the L2 segment 192.168.56.0/24.
pub const LAN_PREFIX_LEN: u8 = 24;
/// The router's interface on the segment (a bridge), named as in the story's `birdc` output.
pub const LAN_DEV: &str = "enp0s8";
/// Each node's external interface (the agent's `--devices`).
pub const NODE_DEV: &str = "eth0";
/// The link-local gateway every pod routes through (answered by proxy ARP on the node).
pub const POD_GATEWAY: &str = pod::POD_GATEWAY;
/// The cluster's pod CIDR; each node's /24 is carved from it.
pub const CLUSTER_POD_CIDR: &str = "10.112.0.0/16";
/// The router's AS.
pub const ROUTER_ASN: u32 = 65000;
/// The cluster's AS (kube-router's `--cluster-asn`).
pub const CLUSTER_ASN: u32 = 65001;

/// A Kubernetes node of the story.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeSpec {
    /// Node name (`k8smaster0`).
    pub name: &'static str,
    /// Node IP on the segment.
    pub ip: Ipv4Addr,
    /// The node's pod CIDR.
    pub pod_cidr: &'static str,
}

/// k8smaster0: the router's preferred next hop for ClusterIPs, with no nginx backend.
pub const MASTER: NodeSpec = NodeSpec {
    name: "k8smaster0",
    ip: Ipv4Addr::new(192, 168, 56, 4),
    pod_cidr: "10.112.0.0/24",
};
/// k8sslave0: runs both nginx pods.
pub const SLAVE: NodeSpec = NodeSpec {
    name: "k8sslave0",
    ip: Ipv4Addr::new(192, 168, 56, 5),
    pod_cidr: "10.112.1.0/24",
};
/// Both nodes.
pub const NODES: [NodeSpec; 2] = [MASTER, SLAVE];

/// What a pod runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodRole {
    /// An nginx-like HTTP server on port 80 that names itself and the client it saw.
    HttpServer,
    /// Runs nothing; commands (curl, ping) are run in it.
    Client,
}

/// A pod of the story.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodSpec {
    /// Pod name; its namespace is `lblab-pod-<name>`.
    pub name: &'static str,
    /// The node it runs on.
    pub node: &'static str,
    /// Its IP (a /32 on its `eth0`).
    pub ip: Ipv4Addr,
    /// Host side of its veth, in the node's namespace.
    pub host_dev: &'static str,
    /// What it runs.
    pub role: PodRole,
}

/// The first nginx pod.
pub const NGINX_1: PodSpec = PodSpec {
    name: "nginx-1",
    node: "k8sslave0",
    ip: Ipv4Addr::new(10, 112, 1, 194),
    host_dev: "lxcnginx1",
    role: PodRole::HttpServer,
};
/// The second nginx pod.
pub const NGINX_2: PodSpec = PodSpec {
    name: "nginx-2",
    node: "k8sslave0",
    ip: Ipv4Addr::new(10, 112, 1, 90),
    host_dev: "lxcnginx2",
    role: PodRole::HttpServer,
};
/// The busybox pod of step 5 (ping the router).
pub const BUSYBOX: PodSpec = PodSpec {
    name: "busybox",
    node: "k8smaster0",
    ip: Ipv4Addr::new(10, 112, 0, 10),
    host_dev: "lxcbusybox",
    role: PodRole::Client,
};
/// The client pod of step 6 (pod → ClusterIP → remote backend, no SNAT).
pub const CLIENT: PodSpec = PodSpec {
    name: "client",
    node: "k8smaster0",
    ip: Ipv4Addr::new(10, 112, 0, 11),
    host_dev: "lxcclient",
    role: PodRole::Client,
};
/// Every pod.
pub const PODS: [PodSpec; 4] = [NGINX_1, NGINX_2, BUSYBOX, CLIENT];
/// Port the HTTP servers listen on.
pub const HTTP_PORT: u16 = 80;

/// The nginx ClusterIP.
pub const NGINX_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 229, 67);
/// The kube-dns ClusterIP.
pub const KUBE_DNS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// The kubernetes ClusterIP.
pub const KUBERNETES_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
/// Every ClusterIP of `lab/manifests`, announced by both nodes.
pub const CLUSTER_IPS: [Ipv4Addr; 3] = [KUBERNETES_VIP, KUBE_DNS_VIP, NGINX_VIP];
