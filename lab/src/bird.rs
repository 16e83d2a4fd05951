//! BIRD 1.6 in kube-router's place on the nodes and as the story's external router.
//!
//! The router (AS 65000) peers with both nodes, imports everything, exports nothing back, and
//! writes what it learned into its kernel table. Each node (AS 65001) announces its pod CIDR and
//! every ClusterIP as host routes from a static protocol, to the router and over iBGP to the
//! other node; its kernel protocol installs only routes learned over BGP, and the iBGP session
//! imports only pod CIDRs: a node's own announcements (blackholes in BIRD) never reach its
//! kernel, and the other node's ClusterIP announcements never reach BIRD's table.
//!
//! The router prefers k8smaster0 for the ClusterIPs, as in the story: both nodes announce them
//! with equal attributes, and the session to k8smaster0 raises their local preference so the
//! choice does not rest on a tie-break. Each BIRD runs in the foreground (`-f`) as a
//! [`Process`] with its config, control socket and pidfile under the lab's run directory;
//! `birdc` reaches it through the socket from the host.
//!
//! A dual-stack lab runs the same sessions again over IPv6 in a second daemon per namespace:
//! BIRD 1.6 (the story's version, the one Debian's `bird` package installs) speaks IPv6 only as
//! `bird6`/`birdc6`, with the same configuration language, so one writer per config serves
//! both, parameterised by the [`Daemon`]; router ids stay the IPv4 addresses.
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::Result;
use crate::netns::{Netns, Process, run_host};
use crate::story::v6::{self, NodeSpec6};
use crate::story::{CLUSTER_ASN, CLUSTER_POD_CIDR, NodeSpec, ROUTER_ASN, ROUTER_IP};

/// Local preference the router gives routes from k8smaster0 (the default is 100).
pub const MASTER_LOCAL_PREF: u32 = 110;

/// Timers shared by every session: short, so the lab converges in seconds.
const SESSION_TIMERS: &str = "\
    hold time 9;
    keepalive time 3;
    connect retry time 2;
    connect delay time 1;
    error wait time 1, 10;";

/// A node as one family's BGP sessions see it: [`NodeSpec`] or [`NodeSpec6`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BgpNode {
    /// Node name (`k8smaster0`), the session's name on the router.
    pub name: &'static str,
    /// Node IP on the segment, in the family.
    pub ip: IpAddr,
    /// The node's pod CIDR in the family.
    pub pod_cidr: &'static str,
}

impl From<NodeSpec> for BgpNode {
    fn from(node: NodeSpec) -> Self {
        Self {
            name: node.name,
            ip: node.ip.into(),
            pod_cidr: node.pod_cidr,
        }
    }
}

impl From<NodeSpec6> for BgpNode {
    fn from(node: NodeSpec6) -> Self {
        Self {
            name: node.name,
            ip: node.ip.into(),
            pod_cidr: node.pod_cidr,
        }
    }
}

/// The router's configuration for `daemon`: one eBGP session per node.
pub fn router_config(daemon: Daemon, nodes: &[BgpNode]) -> String {
    let mut conf = format!(
        "# The story's external router{family}: import all, export learned routes to the kernel.
log stderr all;
router id {ROUTER_IP};

protocol device {{
    scan time 2;
}}

protocol kernel {{
    scan time 2;
    import none;
    export all;
}}
",
        family = daemon.title(),
    );
    for (i, node) in nodes.iter().enumerate() {
        // The first node is k8smaster0, the story's preferred next hop.
        let pref = if i == 0 {
            format!("    default bgp_local_pref {MASTER_LOCAL_PREF};\n")
        } else {
            String::new()
        };
        conf.push_str(&format!(
            "
protocol bgp {name} {{
    local {local} as {ROUTER_ASN};
    neighbor {ip} as {CLUSTER_ASN};
    import all;
    export none;
{pref}{SESSION_TIMERS}
}}
",
            name = node.name,
            local = daemon.router_ip(),
            ip = node.ip,
        ));
    }
    conf
}

/// A node's configuration for `daemon` (router id `router_id`, the node's IPv4 address):
/// announce `node`'s pod CIDR and `cluster_ips` as host routes to the router and to `peer`,
/// and learn `peer`'s pod CIDR.
pub fn node_config(
    daemon: Daemon,
    node: BgpNode,
    router_id: Ipv4Addr,
    peer: BgpNode,
    cluster_ips: &[IpAddr],
) -> String {
    let statics: String = std::iter::once(format!("    route {} blackhole;\n", node.pod_cidr))
        .chain(cluster_ips.iter().map(|vip| {
            let host = if vip.is_ipv4() { 32 } else { 128 };
            format!("    route {vip}/{host} blackhole;\n")
        }))
        .collect();
    // The IPv4 configuration explains itself; the IPv6 one has always been written without
    // these comments, and stays so (the files a lab writes are unchanged).
    let note = |comment: &'static str| if daemon == Daemon::V4 { comment } else { "" };
    format!(
        "# kube-router's part on {name}{family}: announce the pod CIDR and the ClusterIPs.
log stderr all;
router id {router_id};

protocol device {{
    scan time 2;
}}

{kernel_note}protocol kernel {{
    scan time 2;
    import none;
    export where source = RTS_BGP;
}}

protocol static announced {{
{statics}}}

{uplink_note}protocol bgp uplink {{
    local {ip} as {CLUSTER_ASN};
    neighbor {router} as {ROUTER_ASN};
    import none;
    export where source = RTS_STATIC;
{SESSION_TIMERS}
}}

{peer_note}protocol bgp {peer_name} {{
    local {ip} as {CLUSTER_ASN};
    neighbor {peer_ip} as {CLUSTER_ASN};
    import where net ~ [ {pods}+ ];
    export where source = RTS_STATIC;
{direct_note}    direct;
{SESSION_TIMERS}
}}
",
        name = node.name,
        family = daemon.title(),
        ip = node.ip,
        router = daemon.router_ip(),
        peer_name = peer.name,
        peer_ip = peer.ip,
        pods = daemon.cluster_pod_cidr(),
        kernel_note = note(
            "# Only routes learned over BGP reach the kernel: the announced blackholes stay in BIRD.\n"
        ),
        uplink_note = note("# `router` is a BIRD keyword, hence the name.\n"),
        peer_note = note(
            "# iBGP: learn the other node's pod CIDR (the router cannot hand it back into our AS).\n"
        ),
        direct_note = note(
            "    # iBGP is multihop with recursive next hops by default, through an IGP the lab does not
    # run; the nodes share a segment.\n"
        ),
    )
}

/// Which BIRD 1.6 daemon, and so which address family: `bird` (IPv4) or `bird6` (IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Daemon {
    /// `bird`, `birdc`.
    V4,
    /// `bird6`, `birdc6`.
    V6,
}

impl Daemon {
    /// The daemon's program.
    pub fn program(self) -> &'static str {
        match self {
            Self::V4 => "bird",
            Self::V6 => "bird6",
        }
    }

    /// Its control client.
    pub fn client(self) -> &'static str {
        match self {
            Self::V4 => "birdc",
            Self::V6 => "birdc6",
        }
    }

    /// The router's address on the segment in the family.
    pub fn router_ip(self) -> IpAddr {
        match self {
            Self::V4 => ROUTER_IP.into(),
            Self::V6 => v6::ROUTER_IP.into(),
        }
    }

    /// The cluster's pod CIDR in the family.
    pub fn cluster_pod_cidr(self) -> &'static str {
        match self {
            Self::V4 => CLUSTER_POD_CIDR,
            Self::V6 => v6::CLUSTER_POD_CIDR,
        }
    }

    /// What the configs' title comments add for the family.
    fn title(self) -> &'static str {
        match self {
            Self::V4 => "",
            Self::V6 => ", IPv6",
        }
    }
}

/// A running BIRD and its control socket.
#[derive(Debug)]
pub struct Bird {
    name: String,
    daemon: Daemon,
    socket: PathBuf,
    process: Process,
}

impl Bird {
    /// Starts `daemon` inside `ns` with `config`, files under `run_dir/<program>-<name>.*`
    /// (`bird-router.conf`, `bird6-router.conf`), and waits until its control socket answers.
    pub fn start(
        daemon: Daemon,
        ns: &Netns,
        name: &str,
        config: &str,
        run_dir: &Path,
    ) -> Result<Self> {
        let program = daemon.program();
        let conf = run_dir.join(format!("{program}-{name}.conf"));
        let socket = run_dir.join(format!("{program}-{name}.ctl"));
        let pidfile = run_dir.join(format!("{program}-{name}.pid"));
        let log = run_dir.join(format!("{program}-{name}.log"));
        lb_testkit::write_file(&conf, config)?;
        // Parse first: a config error then reads as one, not as a daemon that exited.
        run_host(program, &["-p", "-c", &conf.to_string_lossy()])?;
        let process = ns.spawn(
            program,
            &[
                "-f",
                "-c",
                &conf.to_string_lossy(),
                "-s",
                &socket.to_string_lossy(),
                "-P",
                &pidfile.to_string_lossy(),
            ],
            &log,
        )?;
        let mut bird = Self {
            name: name.to_owned(),
            daemon,
            socket,
            process,
        };
        let Self {
            process, socket, ..
        } = &mut bird;
        let socket = socket.to_string_lossy().into_owned();
        process.wait_until(
            &format!("BIRD in {} to answer on {socket}", ns.name()),
            Duration::from_secs(10),
            || match run_host(daemon.client(), &["-s", &socket, "show", "status"]) {
                Ok(out) => Ok(Some(out)),
                Err(err) => Err(err.to_string()),
            },
        )?;
        Ok(bird)
    }

    /// `router`, or the node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `bird` or `bird6`.
    pub fn daemon(&self) -> Daemon {
        self.daemon
    }

    /// Runs `birdc -s SOCKET args` (`birdc6` for `bird6`) and returns its answer without the
    /// `BIRD … ready.` banner.
    pub fn birdc(&self, args: &[&str]) -> Result<String> {
        let socket = self.socket.to_string_lossy();
        let mut full = vec!["-s", socket.as_ref()];
        full.extend_from_slice(args);
        let out = run_host(self.daemon.client(), &full)?;
        Ok(out
            .lines()
            .filter(|line| !(line.starts_with("BIRD ") && line.ends_with(" ready.")))
            .map(|line| format!("{line}\n"))
            .collect())
    }

    /// `birdc show route`: the table the story prints.
    pub fn show_route(&self) -> Result<String> {
        self.birdc(&["show", "route"])
    }

    /// The BIRD process (its log explains a session that does not come up).
    pub fn process(&self) -> &Process {
        &self.process
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::story::{CLUSTER_IPS, MASTER, NODES, SLAVE};

    fn parses(config: &str) {
        parses_with(Daemon::V4, config);
    }

    fn parses_with(daemon: Daemon, config: &str) {
        let path = std::env::temp_dir().join(format!(
            "lb-lab-{}-{}-{}.conf",
            daemon.program(),
            std::process::id(),
            config.len()
        ));
        std::fs::write(&path, config).expect("write config");
        let parsed = run_host(daemon.program(), &["-p", "-c", &path.to_string_lossy()]);
        std::fs::remove_file(&path).expect("remove config");
        parsed.unwrap_or_else(|err| panic!("bird rejects the config: {err}\n{config}"));
    }

    #[test]
    fn router_config_is_valid_bird_and_prefers_the_master() {
        let conf = router_config(Daemon::V4, &NODES.map(BgpNode::from));
        parses(&conf);
        let master = conf
            .find("protocol bgp k8smaster0")
            .expect("master session");
        let slave = conf.find("protocol bgp k8sslave0").expect("slave session");
        let pref = conf.find("default bgp_local_pref 110").expect("local pref");
        assert!(master < pref && pref < slave, "{conf}");
    }

    #[test]
    fn node_config_is_valid_bird_and_announces_cidr_and_cluster_ips() {
        let conf = node_config(
            Daemon::V4,
            MASTER.into(),
            MASTER.ip,
            SLAVE.into(),
            &CLUSTER_IPS.map(IpAddr::from),
        );
        parses(&conf);
        for route in [
            "10.112.0.0/24",
            "10.96.0.1/32",
            "10.96.0.10/32",
            "10.96.229.67/32",
        ] {
            assert!(
                conf.contains(&format!("route {route} blackhole;")),
                "{conf}"
            );
        }
        assert!(conf.contains("neighbor 192.168.56.5 as 65001;"), "{conf}");
        assert!(conf.contains("neighbor 192.168.56.10 as 65000;"), "{conf}");
    }

    #[test]
    fn ipv6_configs_are_valid_bird6_and_mirror_the_ipv4_sessions() {
        let router = router_config(Daemon::V6, &v6::NODES.map(BgpNode::from));
        parses_with(Daemon::V6, &router);
        for line in [
            "router id 192.168.56.10;",
            "local fd00:56::10 as 65000;",
            "neighbor fd00:56::4 as 65001;",
            "neighbor fd00:56::5 as 65001;",
        ] {
            assert!(router.contains(line), "{line} in\n{router}");
        }
        let master = router.find("protocol bgp k8smaster0").expect("master");
        let pref = router.find("default bgp_local_pref 110").expect("pref");
        let slave = router.find("protocol bgp k8sslave0").expect("slave");
        assert!(master < pref && pref < slave, "{router}");

        let node = node_config(
            Daemon::V6,
            v6::MASTER.into(),
            MASTER.ip,
            v6::SLAVE.into(),
            &v6::CLUSTER_IPS.map(IpAddr::from),
        );
        parses_with(Daemon::V6, &node);
        for line in [
            "router id 192.168.56.4;",
            "route fd00:10:112::/64 blackhole;",
            "route fd00:10:96::e5:43/128 blackhole;",
            "neighbor fd00:56::10 as 65000;",
            "neighbor fd00:56::5 as 65001;",
            "import where net ~ [ fd00:10:112::/56+ ];",
        ] {
            assert!(node.contains(line), "{line} in\n{node}");
        }
    }
}
