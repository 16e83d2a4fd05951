//! IPv6 helpers for packet tests: [`conntrack6`] and [`drain_events6`] read back what the
//! IPv6 path wrote (conntrack, `DropEvent6`s) from the datapath's pinned `LB6_*` maps,
//! [`FibNetns6`] answers FIB lookups like a node, and [`wire_ipv6`] makes a `Topology` dual
//! stack (`lb_testkit::servers::http` serves on its IPv6 addresses). IPv6 frontends are provisioned like IPv4 ones, through
//! [`crate::fixture::Datapath::sync`] (the agent's `Syncer` writes the `LB6_*` maps).

use aya::maps::{HashMap, MapData, RingBuf};
use lb_common::{
    conntrack::{CtEntry6, CtKey6},
    event::DropEvent6,
    maps,
};

use crate::fixture::Datapath;

/// Every entry of the IPv6 conntrack map `name` (`LB6_CT_TCP` or `LB6_CT_ANY`).
pub fn conntrack6(datapath: &Datapath, name: &str) -> Vec<(CtKey6, CtEntry6)> {
    let ct: HashMap<MapData, CtKey6, CtEntry6> =
        HashMap::try_from(open(datapath, name)).expect("an IPv6 conntrack map");
    ct.iter()
        .map(|item| item.expect("read conntrack"))
        .collect()
}

/// Takes every event in `LB_EVENTS`, all of them expected to be `DropEvent6`s.
pub fn drain_events6(datapath: &Datapath) -> Vec<DropEvent6> {
    let mut ring = RingBuf::try_from(open(datapath, maps::LB_EVENTS)).expect("LB_EVENTS type");
    let mut events = Vec::new();
    while let Some(item) = ring.next() {
        assert_eq!(item.len(), size_of::<DropEvent6>(), "a DropEvent6");
        // SAFETY: DropEvent6 is plain old data of exactly this size.
        events.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<DropEvent6>()) });
    }
    events
}

/// The datapath's pinned map `name`.
fn open(datapath: &Datapath, name: &str) -> aya::maps::Map {
    let pin = datapath.pin_dir().join(name);
    let data =
        MapData::from_pin(&pin).unwrap_or_else(|err| panic!("open {}: {err}", pin.display()));
    map_of(name, data)
}

fn map_of(name: &str, data: MapData) -> aya::maps::Map {
    use aya::maps::Map;
    match name {
        maps::LB_EVENTS => Map::RingBuf(data),
        maps::LB6_CT_TCP | maps::LB6_CT_ANY => Map::LruHashMap(data),
        _ => Map::HashMap(data),
    }
}

/// MAC of the node's interface in a [`FibNetns6`] (as `fixture::NODE_MAC`).
pub use crate::fixture::{CLIENT_MAC, NODE_MAC, PEER_NODE_MAC};

/// `fixture::FibNetns` for IPv6: `lbt0` (fd00:56::4/64, `NODE_MAC`), a route to the remote pod
/// CIDR fd00:244:2::/64 via the other node fd00:56::5, permanent neighbours for that node
/// (`PEER_NODE_MAC`) and the client fd00:56::10 (`CLIENT_MAC`), and IPv6 forwarding on (which
/// `bpf_fib_lookup` requires for AF_INET6). Deleted on drop.
pub struct FibNetns6 {
    ns: lb_testkit::Netns,
    /// Index of `lbt0` inside the namespace.
    pub ifindex: u32,
}

impl FibNetns6 {
    /// Creates the namespace for test `test`.
    pub fn new(test: &str) -> Self {
        use lb_testkit::ok;
        let name = format!(
            "lbt6-{}-{}",
            &test[..test.len().min(18)],
            std::process::id()
        );
        let ns = ok(lb_testkit::Netns::create(&name), "create the FIB namespace");
        ok(
            ns.ip(&[
                "link",
                "add",
                "lbt0",
                "address",
                "02:00:00:00:00:04",
                "type",
                "veth",
                "peer",
                "name",
                "lbt1",
            ]),
            "veth lbt0",
        );
        ok(ns.sysctl("net.ipv6.conf.all.forwarding", "1"), "forwarding");
        ok(ns.ip(&["link", "set", "lbt1", "up"]), "lbt1 up");
        ok(ns.ip(&["link", "set", "lbt0", "up"]), "lbt0 up");
        ok(
            ns.ip(&["-6", "addr", "add", "fd00:56::4/64", "dev", "lbt0", "nodad"]),
            "lbt0 address",
        );
        ok(
            ns.ip(&[
                "-6",
                "route",
                "add",
                "fd00:244:2::/64",
                "via",
                "fd00:56::5",
                "dev",
                "lbt0",
            ]),
            "route to the remote pod CIDR",
        );
        for (addr, mac) in [
            ("fd00:56::5", "02:00:00:00:00:05"),
            ("fd00:56::10", "02:00:00:00:00:10"),
        ] {
            ok(
                ns.ip(&[
                    "-6",
                    "neigh",
                    "replace",
                    addr,
                    "lladdr",
                    mac,
                    "dev",
                    "lbt0",
                    "nud",
                    "permanent",
                ]),
                "permanent neighbour",
            );
        }
        let ifindex = ok(ns.ifindex("lbt0"), "ifindex of lbt0");
        Self { ns, ifindex }
    }

    /// Runs `f` on a thread inside the namespace.
    pub fn enter<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        lb_testkit::ok(self.ns.within(f), "enter the FIB namespace")
    }
}

/// The IPv6 addresses [`wire_ipv6`] gives a `Topology`.
pub mod addrs {
    /// The node on the external segment (`eth0`).
    pub const NODE: &str = "fd00:56::4";
    /// The external client.
    pub const EXTERNAL: &str = "fd00:56::10";
    /// The client pod.
    pub const CLIENT: &str = "fd00:244:1::10";
    /// The backend pods, in `BACKEND_IPS` order.
    pub const BACKENDS: [&str; 2] = ["fd00:244:1::20", "fd00:244:1::21"];
    /// The pods' gateway: the node's side of each pod's veth, by a permanent neighbour entry.
    pub const POD_GATEWAY: &str = "fe80::1";
    /// The service prefix the external client routes to the node.
    pub const SERVICE_PREFIX: &str = "fd00:96::/112";
}

/// Adds IPv6 to a `Topology`, dual stack beside its IPv4 (addresses in [`addrs`]): the node
/// forwards IPv6; each pod holds a /128 (`nodad`) with a default route via
/// [`addrs::POD_GATEWAY`]; the node routes each pod's /128 to its veth; the external client
/// and the node share fd00:56::/64 and the client routes the service prefix to the node. Every
/// neighbour is a permanent entry, so no packet waits for neighbour discovery or DAD.
pub fn wire_ipv6(topology: &crate::topology::Topology) {
    use lb_testkit::{Netns, ok};
    let node = &topology.node;
    ok(
        node.sysctl("net.ipv6.conf.all.forwarding", "1"),
        "IPv6 forwarding",
    );
    let mac = |ns: &Netns, dev: &str| -> String {
        let line = ok(ns.ip(&["-br", "link", "show", "dev", dev]), "read a MAC");
        line.split_whitespace()
            .nth(2)
            .unwrap_or_else(|| panic!("no MAC in {line:?}"))
            .to_owned()
    };
    let neigh = |ns: &Netns, addr: &str, lladdr: &str, dev: &str| {
        ok(
            ns.ip(&[
                "-6",
                "neigh",
                "replace",
                addr,
                "lladdr",
                lladdr,
                "dev",
                dev,
                "nud",
                "permanent",
            ]),
            "permanent neighbour",
        );
    };
    let pods = std::iter::once((&topology.client, addrs::CLIENT))
        .chain(topology.backends.iter().zip(addrs::BACKENDS));
    for (pod, addr) in pods {
        let dev = lb_testkit::pod::POD_DEV;
        ok(
            pod.ns.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{addr}/128"),
                "dev",
                dev,
                "nodad",
            ]),
            "pod IPv6 address",
        );
        neigh(&pod.ns, addrs::POD_GATEWAY, &mac(node, pod.host_dev), dev);
        ok(
            pod.ns.ip(&[
                "-6",
                "route",
                "replace",
                "default",
                "via",
                addrs::POD_GATEWAY,
                "dev",
                dev,
            ]),
            "pod default route",
        );
        ok(
            node.ip(&[
                "-6",
                "route",
                "replace",
                &format!("{addr}/128"),
                "dev",
                pod.host_dev,
            ]),
            "node route to the pod",
        );
        neigh(node, addr, &mac(&pod.ns, dev), pod.host_dev);
    }
    let node_dev = crate::topology::NODE_DEV;
    ok(
        node.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{}/64", addrs::NODE),
            "dev",
            node_dev,
            "nodad",
        ]),
        "node IPv6 address",
    );
    let external = &topology.external;
    ok(
        external.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{}/64", addrs::EXTERNAL),
            "dev",
            "eth0",
            "nodad",
        ]),
        "external IPv6 address",
    );
    neigh(node, addrs::EXTERNAL, &mac(external, "eth0"), node_dev);
    neigh(external, addrs::NODE, &mac(node, node_dev), "eth0");
    ok(
        external.ip(&[
            "-6",
            "route",
            "replace",
            addrs::SERVICE_PREFIX,
            "via",
            addrs::NODE,
        ]),
        "external route to the service prefix",
    );
}
