//! [`Lab`], which builds the story's cluster (its names and addresses are in [`crate::story`]).
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
//!
//! [`Lab::up_dual_stack`] adds the IPv6 half ([`crate::story::v6`]) to the same namespaces and
//! links: ULA addresses added `nodad` (and duplicate address detection off in every lab
//! namespace, so no address waits out its tentative second), a pod's /128 with a default route
//! via the link-local `fe80::1` on the node's side of its veth, the nodes' default routes via
//! the router, `bird6` beside each `bird`, and an IPv6 HTTP server beside the IPv4 one in each
//! nginx pod. [`Lab::up`] builds exactly the IPv4 lab of the story.
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use lb_testkit::{create_dir, pod, servers};

use crate::agent::{Agent, Binaries};
use crate::bird::{self, BgpNode, Bird, Daemon};
use crate::netns::{self, Netns, Process, veth};
use crate::{Error, RUN_DIR, Result, manifests, wait_until};

pub use crate::story::*;

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
    /// The nginx pods' IPv6 servers, in a dual-stack lab.
    servers6: Vec<(PodSpec, Process)>,
    pods: Vec<Pod>,
    nodes: Vec<Node>,
    router: Netns,
    run_dir: PathBuf,
    /// Dual-stack ([`Lab::up_dual_stack`]).
    ipv6: bool,
    // Last: held until everything above is gone, so that no other lab starts meanwhile.
    _lock: std::fs::File,
}

impl Lab {
    /// Builds the topology and starts the pods' servers, after removing what a previous lab
    /// left. BGP and the agents come later ([`Lab::start_bgp`], [`Lab::start_agents`]), so the
    /// story can show the cluster before and after each of them.
    pub fn up() -> Result<Self> {
        Self::build(false)
    }

    /// [`Lab::up`] with the IPv6 half as well (see the module's doc): every namespace of the
    /// IPv4 lab, dual-stack.
    pub fn up_dual_stack() -> Result<Self> {
        Self::build(true)
    }

    fn build(ipv6: bool) -> Result<Self> {
        let lock = lock()?;
        netns::down()?;
        let run_dir = PathBuf::from(RUN_DIR);
        create_dir(&run_dir)?;

        let router = netns::create("router")?;
        if ipv6 {
            prepare_ipv6(&router, true)?;
        }
        router.ip(&["link", "add", LAN_DEV, "type", "bridge"])?;
        router.addr(LAN_DEV, &format!("{ROUTER_IP}/{LAN_PREFIX_LEN}"))?;
        router.sysctl("net.ipv4.ip_forward", "1")?;
        if ipv6 {
            add_addr6(&router, LAN_DEV, v6::ROUTER_IP, v6::LAN_PREFIX_LEN)?;
        }

        let mut nodes = Vec::new();
        for spec in NODES {
            let ns = netns::create(spec.name)?;
            pod::prepare_node(&ns)?;
            if ipv6 {
                prepare_ipv6(&ns, true)?;
            }
            // The bridge port on the router side is named after the node.
            veth(&router, spec.name, &ns, NODE_DEV)?;
            router.ip(&["link", "set", spec.name, "master", LAN_DEV])?;
            ns.addr(NODE_DEV, &format!("{}/{LAN_PREFIX_LEN}", spec.ip))?;
            ns.route(&["default", "via", &ROUTER_IP.to_string(), "dev", NODE_DEV])?;
            if ipv6 {
                let spec6 = node6(spec.name)?;
                add_addr6(&ns, NODE_DEV, spec6.ip, v6::LAN_PREFIX_LEN)?;
                let router6 = v6::ROUTER_IP.to_string();
                ns.ip(&[
                    "-6", "route", "add", "default", "via", &router6, "dev", NODE_DEV,
                ])?;
            }
            nodes.push(Node { spec, ns });
        }

        let mut pods = Vec::new();
        for spec in PODS {
            let node = find_node(&nodes, spec.node)?;
            let ns = netns::create(&format!("pod-{}", spec.name))?;
            if ipv6 {
                prepare_ipv6(&ns, false)?;
            }
            // The node answers the pod's ARP for the gateway by proxy ARP: it routes that
            // address (by its default route) out of another interface.
            pod::wire(&node.ns, spec.host_dev, &ns, spec.ip)?;
            if ipv6 {
                wire6(&node.ns, spec.host_dev, &ns, pod6(spec.name)?.ip)?;
            }
            pods.push(Pod { spec, ns });
        }

        let mut lab = Self {
            agents: Vec::new(),
            birds: Vec::new(),
            servers: Vec::new(),
            servers6: Vec::new(),
            pods,
            nodes,
            router,
            run_dir,
            ipv6,
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
            if self.ipv6 {
                let ip = pod6(pod.spec.name)?.ip;
                let process = servers::http(&pod.ns, ip, HTTP_PORT, &self.run_dir)?;
                self.servers6.push((pod.spec, process));
            }
        }
        Ok(())
    }

    /// Whether the lab is dual-stack.
    pub fn is_dual_stack(&self) -> bool {
        self.ipv6
    }

    /// Starts BIRD on the router and both nodes and waits until the routes are everywhere:
    /// the router's kernel routes each pod CIDR to its node and each ClusterIP to k8smaster0,
    /// BIRD on the router holds both nodes' paths to each ClusterIP, and each node's kernel
    /// routes the other's pod CIDR.
    pub fn start_bgp(&mut self) -> Result<()> {
        let router_conf = bird::router_config(Daemon::V4, &NODES.map(BgpNode::from));
        self.birds.push(Bird::start(
            Daemon::V4,
            &self.router,
            "router",
            &router_conf,
            &self.run_dir,
        )?);
        for (i, node) in self.nodes.iter().enumerate() {
            let peer = NODES[1 - i];
            let conf = bird::node_config(
                Daemon::V4,
                node.spec.into(),
                node.spec.ip,
                peer.into(),
                &CLUSTER_IPS.map(IpAddr::from),
            );
            self.birds.push(Bird::start(
                Daemon::V4,
                &node.ns,
                node.spec.name,
                &conf,
                &self.run_dir,
            )?);
        }
        self.wait_for_routes()?;
        if self.ipv6 {
            self.start_bgp6()?;
        }
        Ok(())
    }

    /// `bird6` beside each `bird`, the same sessions over IPv6; waits until the router's
    /// kernel routes each IPv6 pod CIDR to its node and each IPv6 ClusterIP to k8smaster0, and
    /// each node's kernel routes the other's IPv6 pod CIDR.
    fn start_bgp6(&mut self) -> Result<()> {
        let conf = bird::router_config(Daemon::V6, &v6::NODES.map(BgpNode::from));
        self.birds.push(Bird::start(
            Daemon::V6,
            &self.router,
            "router",
            &conf,
            &self.run_dir,
        )?);
        for (i, node) in self.nodes.iter().enumerate() {
            let (spec6, peer6) = (node6(node.spec.name)?, v6::NODES[1 - i]);
            let conf = bird::node_config(
                Daemon::V6,
                spec6.into(),
                node.spec.ip,
                peer6.into(),
                &v6::CLUSTER_IPS.map(IpAddr::from),
            );
            self.birds.push(Bird::start(
                Daemon::V6,
                &node.ns,
                node.spec.name,
                &conf,
                &self.run_dir,
            )?);
        }
        let mut expected: Vec<String> = v6::NODES
            .iter()
            .map(|node| format!("{} via {}", node.pod_cidr, node.ip))
            .collect();
        expected.extend(
            v6::CLUSTER_IPS
                .iter()
                .map(|vip| format!("{vip} via {}", v6::MASTER.ip)),
        );
        wait_for_kernel_routes6(
            &self.router,
            "the router's IPv6 kernel routes from BGP",
            &expected,
        )?;
        for (i, node) in self.nodes.iter().enumerate() {
            let peer = v6::NODES[1 - i];
            wait_for_kernel_routes6(
                &node.ns,
                &format!("{}'s route to {}", node.spec.name, peer.pod_cidr),
                &[format!("{} via {}", peer.pod_cidr, peer.ip)],
            )?;
        }
        Ok(())
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
    /// A dual-stack lab installs the dual-stack manifests (`lab/manifests/ipv6` over
    /// `lab/manifests`).
    pub fn start_agents(&mut self, bins: &Binaries) -> Result<()> {
        let dest = self.run_dir.join("manifests");
        let manifests = if self.ipv6 {
            manifests::install_dual_stack(&dest)?
        } else {
            manifests::install(&dest)?
        };
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
        self.bird_of(Daemon::V4, name)
    }

    /// `bird6` in the router (`router`) or a node (by node name), in a dual-stack lab.
    pub fn bird6(&self, name: &str) -> Result<&Bird> {
        self.bird_of(Daemon::V6, name)
    }

    fn bird_of(&self, daemon: Daemon, name: &str) -> Result<&Bird> {
        self.birds
            .iter()
            .find(|bird| bird.daemon() == daemon && bird.name() == name)
            .ok_or_else(|| {
                Error::Unexpected(format!(
                    "{} `{name}` is not running; start_bgp first (bird6 only in a dual-stack lab)",
                    daemon.program()
                ))
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

/// Readies `ns` for IPv6: duplicate address detection off for its interfaces now and to come
/// (the lab's addresses are unique by construction), and forwarding on for a router or node.
fn prepare_ipv6(ns: &Netns, forwarding: bool) -> Result<()> {
    for key in ["all", "default"] {
        ns.sysctl(&format!("net.ipv6.conf.{key}.accept_dad"), "0")?;
        ns.sysctl(&format!("net.ipv6.conf.{key}.disable_ipv6"), "0")?;
        if forwarding {
            ns.sysctl(&format!("net.ipv6.conf.{key}.forwarding"), "1")?;
        }
    }
    Ok(())
}

/// Adds `ip/prefix_len` to `dev` without duplicate address detection, and sets it up.
fn add_addr6(ns: &Netns, dev: &str, ip: impl Into<IpAddr>, prefix_len: u8) -> Result<()> {
    let addr = format!("{}/{prefix_len}", ip.into());
    ns.ip(&["-6", "addr", "add", &addr, "dev", dev, "nodad"])?;
    ns.ip(&["link", "set", dev, "up"]).map(drop)
}

/// The IPv6 half of `pod::wire`, on the veth it made: the pod's /128 and a default route via
/// the link-local [`v6::POD_GATEWAY`], which the node's side of the veth holds (neighbour
/// discovery needs no proxy); the node routes the /128 to the veth.
fn wire6(node: &Netns, host_dev: &str, pod: &Netns, ip: std::net::Ipv6Addr) -> Result<()> {
    let gateway = v6::POD_GATEWAY.to_string();
    add_addr6(node, host_dev, v6::POD_GATEWAY, 64)?;
    add_addr6(pod, pod::POD_DEV, ip, 128)?;
    pod.ip(&[
        "-6",
        "route",
        "add",
        "default",
        "via",
        &gateway,
        "dev",
        pod::POD_DEV,
    ])?;
    node.ip(&["-6", "route", "add", &format!("{ip}/128"), "dev", host_dev])
        .map(drop)
}

/// Waits until `ns`'s kernel has every `expected` line among its IPv6 routes from BIRD.
fn wait_for_kernel_routes6(ns: &Netns, what: &str, expected: &[String]) -> Result<()> {
    wait_until(what, Duration::from_secs(60), || {
        let routes = ns
            .ip(&["-6", "route", "show", "proto", "bird"])
            .map_err(|err| err.to_string())?;
        if expected.iter().all(|line| routes.contains(line.as_str())) {
            Ok(Some(()))
        } else {
            Err(routes)
        }
    })
}

fn node6(name: &str) -> Result<v6::NodeSpec6> {
    v6::node(name).ok_or_else(|| Error::Unexpected(format!("node `{name}` has no IPv6 side")))
}

fn pod6(name: &str) -> Result<v6::PodSpec6> {
    v6::pod(name).ok_or_else(|| Error::Unexpected(format!("pod `{name}` has no IPv6 address")))
}

fn find_node<'a>(nodes: &'a [Node], name: &str) -> Result<&'a Node> {
    nodes
        .iter()
        .find(|node| node.spec.name == name)
        .ok_or_else(|| Error::Unexpected(format!("the lab has no node `{name}`")))
}
