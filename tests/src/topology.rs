//! A node with real traffic for namespace tests: [`Topology`], a guard named after its test
//! that builds one node, a client pod, two backend pods and an external client, each in its own
//! network namespace, and removes all of them (and the servers inside) on drop, even when the
//! test panics.
//!
//! ```text
//!   external 192.168.56.10/24 (eth0) ─── eth0 192.168.56.4/24  node
//!                                          ├ lxc-client → client    10.244.1.10
//!                                          ├ lxc-be0    → backend 0 10.244.1.20 (HTTP :8080, echo :7007)
//!                                          └ lxc-be1    → backend 1 10.244.1.21 (HTTP :8080, echo :7007)
//! ```
//!
//! Pods are wired by `lb_testkit::pod` (a /32 on `eth0`, a default route via 169.254.1.1,
//! proxy ARP on the host side, which needs the node to route 169.254.1.1 elsewhere: to `gw0`);
//! the node forwards and routes each pod's /32 to its veth; the external client routes the
//! service CIDR to the node. Nothing routes anywhere else, so every
//! packet stays inside the test's namespaces. Which programs run on the node is the test's
//! business (the fixture attaches them, or an agent does).
//!
//! Names start with [`PREFIX`], never with the lab's `lblab-`, and carry the test's name and the
//! process id, so tests running at once (and a lab) never clash.
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};

use lb_testkit::pod::{self, POD_GATEWAY};
use lb_testkit::{Netns, Process, ok, servers, veth};

/// Prefix of every namespace a `Topology` creates.
pub const PREFIX: &str = "lbtr-";
/// The node's external interface (from-netdev).
pub const NODE_DEV: &str = "eth0";
/// The node's address on the external segment.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 56, 4);
/// The external client's address.
pub const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 56, 10);
/// The client pod's address.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);
/// The backend pods' addresses.
pub const BACKEND_IPS: [Ipv4Addr; 2] =
    [Ipv4Addr::new(10, 244, 1, 20), Ipv4Addr::new(10, 244, 1, 21)];
/// Port of every backend's HTTP server.
pub const HTTP_PORT: u16 = 8080;
/// Port of every backend's echo server (TCP and UDP).
pub const ECHO_PORT: u16 = 7007;
/// The service CIDR the external client routes to the node.
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
/// Host side of the client pod's veth.
pub const CLIENT_DEV: &str = "lxc-client";
/// Host sides of the backend pods' veths.
pub const BACKEND_DEVS: [&str; 2] = ["lxc-be0", "lxc-be1"];
/// A glob matching every pod's host side (the agent's `--pod-devices`).
pub const POD_DEVICES: &str = "lxc-*";

/// A pod: its address, the host side of its veth and its namespace.
#[derive(Debug)]
pub struct Pod {
    /// Its address (a /32 on its `eth0`).
    pub ip: Ipv4Addr,
    /// Host side of its veth, in the node's namespace.
    pub host_dev: &'static str,
    /// Its namespace.
    pub ns: Netns,
}

/// The topology of one test; see the module docs. Dropping it stops the servers and deletes
/// every namespace.
#[derive(Debug)]
pub struct Topology {
    // Field order is drop order: servers before the namespaces they run in. Held only to be
    // stopped on drop.
    _servers: Vec<Process>,
    /// The client pod.
    pub client: Pod,
    /// The two backend pods, in `BACKEND_IPS` order.
    pub backends: [Pod; 2],
    /// The external client.
    pub external: Netns,
    /// The node.
    pub node: Netns,
    // Last: scripts and the servers' logs.
    dir: tempfile::TempDir,
}

impl Topology {
    /// Builds the topology for test `test` and starts every backend's servers.
    pub fn new(test: &str) -> Self {
        let short: String = test.chars().take(40).collect();
        let name = |role: &str| format!("{PREFIX}{short}-{}-{role}", std::process::id());
        let create = |role: &str| ok(Netns::create(&name(role)), &format!("{test}: namespace"));

        let node = create("node");
        ok(
            pod::prepare_node(&node),
            &format!("{test}: node forwarding"),
        );
        // Proxy ARP answers for an address only when the node routes it out of another
        // interface: the pods' gateway is routed to `gw0`, one end of a veth whose other end
        // stays in the node (this kernel has no dummy driver), which nothing ever sends to.
        ok(
            node.ip(&["link", "add", "gw0", "type", "veth", "peer", "name", "gw1"]),
            "gateway veth",
        );
        for dev in ["gw0", "gw1"] {
            ok(node.ip(&["link", "set", dev, "up"]), "gateway veth up");
        }
        ok(
            node.route(&[POD_GATEWAY, "dev", "gw0"]),
            "route to the pods' gateway",
        );

        let external = create("ext");
        ok(veth(&node, NODE_DEV, &external, "eth0"), "external veth");
        ok(
            node.addr(NODE_DEV, &format!("{NODE_IP}/24")),
            "node address",
        );
        ok(
            external.addr("eth0", &format!("{EXTERNAL_IP}/24")),
            "external address",
        );
        ok(
            external.route(&[SERVICE_CIDR, "via", &NODE_IP.to_string()]),
            "external route to the service CIDR",
        );

        let pod = |role: &str, ip: Ipv4Addr, host_dev: &'static str| {
            let ns = create(role);
            ok(
                pod::wire(&node, host_dev, &ns, ip),
                &format!("{test}: pod {role}"),
            );
            Pod { ip, host_dev, ns }
        };
        let client = pod("client", CLIENT_IP, CLIENT_DEV);
        let backends = [
            pod("be0", BACKEND_IPS[0], BACKEND_DEVS[0]),
            pod("be1", BACKEND_IPS[1], BACKEND_DEVS[1]),
        ];

        let dir = tempfile::Builder::new()
            .prefix(&format!("{PREFIX}{short}-"))
            .tempdir()
            .expect("create a temporary directory");
        let mut servers = Vec::new();
        for backend in &backends {
            let http = servers::http(&backend.ns, backend.ip, HTTP_PORT, dir.path());
            servers.push(ok(http, &format!("HTTP server on {}", backend.ip)));
            let echo = servers::echo(&backend.ns, backend.ip, ECHO_PORT, dir.path());
            servers.push(ok(echo, &format!("echo server on {}", backend.ip)));
        }
        Self {
            _servers: servers,
            client,
            backends,
            external,
            node,
            dir,
        }
    }

    /// A directory for the test's files (scripts, logs, manifests), removed with the topology.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The directory an agent's file source reads: `manifests/` in [`Topology::dir`], created
    /// on first use.
    pub fn manifests(&self) -> PathBuf {
        let dir = self.dir().join("manifests");
        std::fs::create_dir_all(&dir).expect("create the manifests directory");
        dir
    }

    /// Writes `yaml` as `name` in [`Topology::manifests`] in one step (aside, then renamed), so
    /// that a file source never reads half a file; returns the directory.
    pub fn write_manifest(&self, name: &str, yaml: &str) -> PathBuf {
        let dir = self.manifests();
        let aside = self.dir().join(format!("{name}.new"));
        std::fs::write(&aside, yaml).expect("write a manifest aside");
        std::fs::rename(&aside, dir.join(name)).expect("rename a manifest into place");
        dir
    }

    /// Every backend's HTTP server address.
    pub fn http_backends() -> [SocketAddrV4; 2] {
        BACKEND_IPS.map(|ip| SocketAddrV4::new(ip, HTTP_PORT))
    }

    /// Every backend's echo server address.
    pub fn echo_backends() -> [SocketAddrV4; 2] {
        BACKEND_IPS.map(|ip| SocketAddrV4::new(ip, ECHO_PORT))
    }

    /// The index of interface `dev` in the node's namespace.
    pub fn node_ifindex(&self, dev: &str) -> u32 {
        ok(self.node.ifindex(dev), &format!("ifindex of {dev}"))
    }
}
