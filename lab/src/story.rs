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

/// The IPv6 half of a dual-stack lab (`Lab::up_dual_stack`, `cargo xtask demo --ipv6`): the
/// story has no IPv6, so these addresses are the lab's own, unique local (fd00::/8) and
/// mirroring the IPv4 ones (the LAN's fd00:56::/64 for 192.168.56.0/24, pod /64s in
/// fd00:10:112::/56 for 10.112.0.0/16, the nginx ClusterIP fd00:10:96::e5:43 for
/// 10.96.229.67: 0xe5 = 229, 0x43 = 67).
pub mod v6 {
    use std::net::Ipv6Addr;

    /// The router's address on the L2 segment.
    pub const ROUTER_IP: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x56, 0, 0, 0, 0, 0, 0x10);
    /// Prefix length of the L2 segment fd00:56::/64.
    pub const LAN_PREFIX_LEN: u8 = 64;
    /// The link-local gateway every pod routes through: an address of the node's side of
    /// each pod's veth.
    pub const POD_GATEWAY: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
    /// The cluster's IPv6 pod CIDR; each node's /64 is carved from it.
    pub const CLUSTER_POD_CIDR: &str = "fd00:10:112::/56";

    /// A node's IPv6 side.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct NodeSpec6 {
        /// Node name, as in [`super::NodeSpec`].
        pub name: &'static str,
        /// Node IP on the segment.
        pub ip: Ipv6Addr,
        /// The node's IPv6 pod CIDR.
        pub pod_cidr: &'static str,
    }

    /// k8smaster0.
    pub const MASTER: NodeSpec6 = NodeSpec6 {
        name: "k8smaster0",
        ip: Ipv6Addr::new(0xfd00, 0x56, 0, 0, 0, 0, 0, 0x4),
        pod_cidr: "fd00:10:112::/64",
    };
    /// k8sslave0.
    pub const SLAVE: NodeSpec6 = NodeSpec6 {
        name: "k8sslave0",
        ip: Ipv6Addr::new(0xfd00, 0x56, 0, 0, 0, 0, 0, 0x5),
        pod_cidr: "fd00:10:112:1::/64",
    };
    /// Both nodes, in [`super::NODES`]' order.
    pub const NODES: [NodeSpec6; 2] = [MASTER, SLAVE];

    /// A pod's IPv6 address (a /128 on its `eth0`), by pod name.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct PodSpec6 {
        /// Pod name, as in [`super::PodSpec`].
        pub name: &'static str,
        /// Its IPv6 address.
        pub ip: Ipv6Addr,
    }

    /// nginx-1 (10.112.1.194: 0xc2 = 194).
    pub const NGINX_1: PodSpec6 = PodSpec6 {
        name: "nginx-1",
        ip: Ipv6Addr::new(0xfd00, 0x10, 0x112, 1, 0, 0, 0, 0xc2),
    };
    /// nginx-2 (10.112.1.90: 0x5a = 90).
    pub const NGINX_2: PodSpec6 = PodSpec6 {
        name: "nginx-2",
        ip: Ipv6Addr::new(0xfd00, 0x10, 0x112, 1, 0, 0, 0, 0x5a),
    };
    /// busybox.
    pub const BUSYBOX: PodSpec6 = PodSpec6 {
        name: "busybox",
        ip: Ipv6Addr::new(0xfd00, 0x10, 0x112, 0, 0, 0, 0, 0xa),
    };
    /// client.
    pub const CLIENT: PodSpec6 = PodSpec6 {
        name: "client",
        ip: Ipv6Addr::new(0xfd00, 0x10, 0x112, 0, 0, 0, 0, 0xb),
    };
    /// Every pod, in [`super::PODS`]' order.
    pub const PODS: [PodSpec6; 4] = [NGINX_1, NGINX_2, BUSYBOX, CLIENT];

    /// The nginx Service's IPv6 ClusterIP (`lab/manifests/ipv6/nginx.yaml`).
    pub const NGINX_VIP: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0xe5, 0x43);
    /// Every IPv6 ClusterIP of the dual-stack manifests, announced by both nodes.
    pub const CLUSTER_IPS: [Ipv6Addr; 1] = [NGINX_VIP];

    /// The IPv6 side of the node `name`.
    pub fn node(name: &str) -> Option<NodeSpec6> {
        NODES.into_iter().find(|node| node.name == name)
    }

    /// The IPv6 address of the pod `name`.
    pub fn pod(name: &str) -> Option<PodSpec6> {
        PODS.into_iter().find(|pod| pod.name == name)
    }
}
