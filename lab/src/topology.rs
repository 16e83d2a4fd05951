//! The story's cluster, with its names and addresses, and [`Lab`], which builds it.
//!
//! ```text
//!   router ns (192.168.56.10 on bridge enp0s8, BIRD AS 65000)
//!      │ port k8smaster0                     │ port k8sslave0
//!   eth0 192.168.56.4                     eth0 192.168.56.5
//!   k8smaster0 (10.112.0.0/24)            k8sslave0 (10.112.1.0/24)
//!    ├ lxcbusybox → busybox 10.112.0.10    ├ lxcnginx1 → nginx-1 10.112.1.194 :80
//!    └ lxcclient  → client  10.112.0.11    └ lxcnginx2 → nginx-2 10.112.1.90  :80
//! ```
//!
//! Pods are wired Calico style: the pod's `eth0` holds a /32 and a default route via the
//! link-local gateway 169.254.1.1, which the node answers by proxy ARP on the host side
//! (`lxc…`, so `--pod-devices 'lxc*'` matches); the node routes each pod's /32 to its veth. The
//! nodes' default route points at the router, which has nowhere further to send anything: lab
//! traffic never leaves the lab's namespaces. Routing between pod CIDRs comes from BGP
//! ([`crate::bird`]); services from the agents ([`crate::agent`]).
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use lb_testkit::{create_dir, pod, servers};

use crate::agent::{Agent, Binaries};
use crate::bird::{self, Bird};
use crate::netns::{self, Netns, Process, veth};
use crate::{Error, RUN_DIR, Result, manifests, wait_until};

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

/// A node: its spec and namespace.
#[derive(Debug)]
pub struct Node {
    /// Name and addresses.
    pub spec: NodeSpec,
    /// Its namespace (`lblab-k8smaster0`).
    pub ns: Netns,
}

/// A pod: its spec and namespace.
#[derive(Debug)]
pub struct Pod {
    /// Name and address.
    pub spec: PodSpec,
    /// Its namespace (`lblab-pod-nginx-1`).
    pub ns: Netns,
}

/// The whole lab. Dropping it stops every process and removes every namespace, agents first
/// and the router last; [`Lab::keep`] leaves it running for `cargo xtask demo down`.
#[derive(Debug)]
pub struct Lab {
    // Field order is drop order: processes before the namespaces they run in.
    agents: Vec<Agent>,
    birds: Vec<Bird>,
    servers: Vec<(PodSpec, Process)>,
    pods: Vec<Pod>,
    nodes: Vec<Node>,
    router: Netns,
    run_dir: PathBuf,
    // Last: held until everything above is gone, so that no other lab starts meanwhile.
    _lock: std::fs::File,
}

impl Lab {
    /// Builds the topology and starts the pods' servers, after removing what a previous lab
    /// left. BGP and the agents come later ([`Lab::start_bgp`], [`Lab::start_agents`]), so the
    /// story can show the cluster before and after each of them.
    pub fn up() -> Result<Self> {
        let lock = lock()?;
        netns::down()?;
        let run_dir = PathBuf::from(RUN_DIR);
        create_dir(&run_dir)?;

        let router = netns::create("router")?;
        router.ip(&["link", "add", LAN_DEV, "type", "bridge"])?;
        router.addr(LAN_DEV, &format!("{ROUTER_IP}/{LAN_PREFIX_LEN}"))?;
        router.sysctl("net.ipv4.ip_forward", "1")?;

        let mut nodes = Vec::new();
        for spec in NODES {
            let ns = netns::create(spec.name)?;
            pod::prepare_node(&ns)?;
            // The bridge port on the router side is named after the node.
            veth(&router, spec.name, &ns, NODE_DEV)?;
            router.ip(&["link", "set", spec.name, "master", LAN_DEV])?;
            ns.addr(NODE_DEV, &format!("{}/{LAN_PREFIX_LEN}", spec.ip))?;
            ns.route(&["default", "via", &ROUTER_IP.to_string(), "dev", NODE_DEV])?;
            nodes.push(Node { spec, ns });
        }

        let mut pods = Vec::new();
        for spec in PODS {
            let node = find_node(&nodes, spec.node)?;
            let ns = netns::create(&format!("pod-{}", spec.name))?;
            // The node answers the pod's ARP for the gateway by proxy ARP: it routes that
            // address (by its default route) out of another interface.
            pod::wire(&node.ns, spec.host_dev, &ns, spec.ip)?;
            pods.push(Pod { spec, ns });
        }

        let mut lab = Self {
            agents: Vec::new(),
            birds: Vec::new(),
            servers: Vec::new(),
            pods,
            nodes,
            router,
            run_dir,
            _lock: lock,
        };
        lab.start_servers()?;
        Ok(lab)
    }

    fn start_servers(&mut self) -> Result<()> {
        for pod in self
            .pods
            .iter()
            .filter(|p| p.spec.role == PodRole::HttpServer)
        {
            let process = servers::http(&pod.ns, pod.spec.ip, HTTP_PORT, &self.run_dir)?;
            self.servers.push((pod.spec, process));
        }
        Ok(())
    }

    /// Starts BIRD on the router and both nodes and waits until the routes are everywhere:
    /// the router's kernel routes each pod CIDR to its node and each ClusterIP to k8smaster0,
    /// BIRD on the router holds both nodes' paths to each ClusterIP, and each node's kernel
    /// routes the other's pod CIDR.
    pub fn start_bgp(&mut self) -> Result<()> {
        let router_conf = bird::router_config(&NODES);
        self.birds.push(Bird::start(
            &self.router,
            "router",
            &router_conf,
            &self.run_dir,
        )?);
        for (i, node) in self.nodes.iter().enumerate() {
            let peer = NODES[1 - i];
            let conf = bird::node_config(&node.spec, &peer, &CLUSTER_IPS);
            self.birds
                .push(Bird::start(&node.ns, node.spec.name, &conf, &self.run_dir)?);
        }
        self.wait_for_routes()
    }

    fn wait_for_routes(&mut self) -> Result<()> {
        let mut expected = vec![
            format!("{} via {}", MASTER.pod_cidr, MASTER.ip),
            format!("{} via {}", SLAVE.pod_cidr, SLAVE.ip),
        ];
        expected.extend(
            CLUSTER_IPS
                .iter()
                .map(|vip| format!("{vip} via {}", MASTER.ip)),
        );
        let router = &self.router;
        wait_until(
            "the router's kernel routes from BGP",
            Duration::from_secs(60),
            || {
                let routes = router
                    .ip(&["route", "show", "proto", "bird"])
                    .map_err(|err| err.to_string())?;
                let ok = expected.iter().all(|line| routes.contains(line.as_str()));
                if ok { Ok(Some(())) } else { Err(routes) }
            },
        )?;
        let paths = CLUSTER_IPS.len() + 1;
        let bird = self.bird("router")?;
        wait_until(
            "both nodes' paths in the router's BIRD",
            Duration::from_secs(30),
            || {
                let table = bird.show_route().map_err(|err| err.to_string())?;
                let via = |ip: Ipv4Addr| table.matches(&format!("via {ip} ")).count();
                if via(MASTER.ip) == paths && via(SLAVE.ip) == paths {
                    Ok(Some(()))
                } else {
                    Err(table)
                }
            },
        )?;
        for (i, node) in self.nodes.iter().enumerate() {
            let peer = NODES[1 - i];
            let line = format!("{} via {}", peer.pod_cidr, peer.ip);
            wait_until(
                &format!("{}'s route to {}", node.spec.name, peer.pod_cidr),
                Duration::from_secs(30),
                || {
                    let routes = node
                        .ns
                        .ip(&["route", "show", "proto", "bird"])
                        .map_err(|err| err.to_string())?;
                    if routes.contains(&line) {
                        Ok(Some(()))
                    } else {
                        Err(routes)
                    }
                },
            )?;
        }
        Ok(())
    }

    /// Installs `lab/manifests` into the run directory and starts one lb-agent per node with
    /// the file source on it, waiting until each reports ready (`lbctl status`).
    pub fn start_agents(&mut self, bins: &Binaries) -> Result<()> {
        let manifests = manifests::install(&self.run_dir.join("manifests"))?;
        for node in &self.nodes {
            let agent = Agent::start(&node.ns, &node.spec, bins, &manifests, &self.run_dir)?;
            self.agents.push(agent);
        }
        for agent in &mut self.agents {
            agent.wait_ready(Duration::from_secs(90))?;
        }
        Ok(())
    }

    /// The router's namespace.
    pub fn router(&self) -> &Netns {
        &self.router
    }

    /// A node's namespace, by node name.
    pub fn node(&self, name: &str) -> Result<&Netns> {
        find_node(&self.nodes, name).map(|node| &node.ns)
    }

    /// A pod's namespace, by pod name.
    pub fn pod(&self, name: &str) -> Result<&Netns> {
        self.pods
            .iter()
            .find(|pod| pod.spec.name == name)
            .map(|pod| &pod.ns)
            .ok_or_else(|| Error::Unexpected(format!("the lab has no pod `{name}`")))
    }

    /// BIRD in the router (`router`) or a node (by node name).
    pub fn bird(&self, name: &str) -> Result<&Bird> {
        self.birds
            .iter()
            .find(|bird| bird.name() == name)
            .ok_or_else(|| {
                Error::Unexpected(format!("BIRD `{name}` is not running; start_bgp first"))
            })
    }

    /// The agent of a node, by node name.
    pub fn agent(&self, name: &str) -> Result<&Agent> {
        self.agents
            .iter()
            .find(|agent| agent.node() == name)
            .ok_or_else(|| Error::Unexpected(format!("no agent on `{name}`; start_agents first")))
    }

    /// What a server pod logged: one line per request, `GET / client=IP:PORT`.
    pub fn server_log(&self, pod: &str) -> Result<String> {
        let (_, process) = self
            .servers
            .iter()
            .find(|(spec, _)| spec.name == pod)
            .ok_or_else(|| Error::Unexpected(format!("pod `{pod}` runs no server")))?;
        std::fs::read_to_string(process.log()).map_err(|source| Error::Io {
            action: "read",
            path: process.log().to_owned(),
            source,
        })
    }

    /// Leaves the lab running after this process exits; `lb_lab::down()` removes it.
    pub fn keep(self) {
        // Nothing is stopped or deleted: the guards are forgotten with their drops.
        std::mem::forget(self);
    }
}

/// Where the lab's lock lives: outside [`RUN_DIR`], which [`netns::down`] removes.
const LOCK_PATH: &str = "/run/lb-lab.lock";

/// Takes the lab's lock, waiting for another lab of this machine (another test, a demo) to end:
/// labs share names and addresses, so only one runs at a time.
fn lock() -> Result<std::fs::File> {
    let file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK_PATH)
        .map_err(|source| Error::Io {
            action: "open",
            path: LOCK_PATH.into(),
            source,
        })?;
    // SAFETY: flock(2) on a file descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX) };
    if rc != 0 {
        return Err(Error::Io {
            action: "lock",
            path: LOCK_PATH.into(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(file)
}

fn find_node<'a>(nodes: &'a [Node], name: &str) -> Result<&'a Node> {
    nodes
        .iter()
        .find(|node| node.spec.name == name)
        .ok_or_else(|| Error::Unexpected(format!("the lab has no node `{name}`")))
}
