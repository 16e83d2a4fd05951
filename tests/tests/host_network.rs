//! The host's network namespace as a client and as a backend, through lb-agent with the file
//! source on a node in namespaces (`Topology`), judged by real traffic.
//!
//! - **Host clients** (`bpf-lb-sock`): processes of the node's namespace reach a ClusterIP and a
//!   node port through socket-level load balancing, and a UDP client sees its answers come
//!   from the VIP:port it sent to (`recvfrom`, `getpeername`); ClientIP affinity holds the node
//!   to one backend, and a Service without endpoints refuses its connections (ECONNREFUSED).
//!   The programs are attached to a
//!   cgroup of the test's own (`TestCgroup`), never the host's root, and clients run inside it.
//!   A pod's process in that same cgroup is left to from-pod: no reverse entry, a conntrack
//!   flow. The programs keep serving while the agent restarts, the next agent replaces them,
//!   and `--uninstall` detaches them. The IPv6 twin does the same over IPv6 (ClusterIP over
//!   TCP with `getpeername`, affinity, UDP `recvfrom`/`getpeername`, ECONNREFUSED) and through a
//!   dual-stack socket to an IPv4-mapped ClusterIP.
//! - **Host backends**: a server listening in the node's own namespace, the endpoint of a
//!   Service (its EndpointSlice address is the node's), serves a pod through the ClusterIP and
//!   the node port, and an outside client through the node port and (with
//!   `bpf-lb-external-clusterip`) the ClusterIP: its replies, which leave by an interface's
//!   egress, are reverse-NATed there (`from_host`).
//!
//! Needs root, `python3`, `curl` and `bpftool`; runs `lb-agent` and `lbctl` from `LB_BIN_DIR`,
//! or builds them first (see `lb_tests::agent::binaries`).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::path::Path;

use lb_lab::probe::{EchoReply, HttpReply};
use lb_testkit::patience::ANSWER_WITHIN_SECS;
use lb_testkit::{Netns, cgroup::TestCgroup, ok, servers};
use lb_tests::ipv6::{addrs, wire_ipv6};
use lb_tests::manifests::{Manifest, Port, endpoint, stream};
use lb_tests::topology::{
    BACKEND_IPS, CLIENT_IP, ECHO_PORT, EXTERNAL_IP, HTTP_PORT, NODE_IP, Topology,
};

const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 50, 1);
const NODE_PORT: u16 = 30090;
const DNS_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 50, 2);
const DNS_PORT: u16 = 53;
/// A Service with ClientIP affinity: the node is one client.
const STICKY_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 50, 4);
/// A Service without endpoints: its connections are refused.
const EMPTY_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 50, 5);

/// Requests per check: enough that a backend left out shows up.
const TRIES: usize = 12;

/// `web`: a NodePort Service on both backends' HTTP servers; `dns`: a ClusterIP Service on
/// UDP 53, to both backends' echo servers; `sticky`: ClientIP affinity on both; `empty`: no
/// endpoints.
fn manifests() -> String {
    let endpoints: Vec<String> = BACKEND_IPS
        .iter()
        .map(|ip| endpoint(*ip, "node", true))
        .collect();
    stream(&[
        Manifest::new("web", CLUSTER_IP)
            .port(Port::tcp("http", 80, HTTP_PORT).node_port(NODE_PORT))
            .kind("NodePort")
            .endpoints(endpoints.clone()),
        Manifest::new("dns", DNS_CLUSTER_IP)
            .port(Port::udp("dns", DNS_PORT, ECHO_PORT))
            .endpoints(endpoints.clone()),
        Manifest::new("sticky", STICKY_CLUSTER_IP)
            .spec("sessionAffinity", "ClientIP")
            .port(Port::tcp("", 80, HTTP_PORT))
            .endpoints(endpoints),
        Manifest::new("empty", EMPTY_CLUSTER_IP).port(Port::tcp("", 80, HTTP_PORT)),
    ])
}

/// `curl` to `target` from `ns`, run inside `cgroup`, for a request that should be answered: the
/// HTTP answer (`None` status when nothing answered) and what curl said.
fn curl_in(cgroup: &TestCgroup, ns: &Netns, target: SocketAddrV4) -> (HttpReply, String) {
    let url = format!("http://{target}/");
    let outcome = ok(
        cgroup.exec(
            ns,
            "curl",
            &["-sSi", "--max-time", ANSWER_WITHIN_SECS, &url],
        ),
        "run curl in the test cgroup",
    );
    (HttpReply::parse(&outcome.stdout), format!("{outcome:?}"))
}

/// `TRIES` requests to `target` from `ns` in `cgroup`, each of which must get 200: the pods
/// that answered.
fn answered_by(cgroup: &TestCgroup, ns: &Netns, target: SocketAddrV4) -> BTreeSet<Ipv4Addr> {
    (0..TRIES)
        .map(|_| {
            let (reply, outcome) = curl_in(cgroup, ns, target);
            assert_eq!(reply.status, Some(200), "{target}: {outcome}");
            reply.pod_ip.expect("X-Pod-IP")
        })
        .collect()
}

/// A UDP client that tells where its answers came from: one datagram with `sendto` on an
/// unconnected socket, answered through `recvfrom`; one on a socket connected to the VIP,
/// whose `getpeername` it prints. Each line: `how SOURCE-IP SOURCE-PORT ECHO-ANSWER`. Each
/// answer is awaited `argv[3]` seconds.
const UDP_CLIENT: &str = r#"
import socket, sys
vip, port, wait = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
family = socket.AF_INET6 if ":" in vip else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM)
s.settimeout(wait)
s.sendto(b"unconnected", (vip, port))
data, source = s.recvfrom(2048)
print("recvfrom", source[0], source[1], data.decode().strip())
c = socket.socket(family, socket.SOCK_DGRAM)
c.settimeout(wait)
c.connect((vip, port))
c.send(b"connected")
data = c.recv(2048)
peer = c.getpeername()
print("getpeername", peer[0], peer[1], data.decode().strip())
"#;

/// Prints the errno name `connect()` to `argv[1]:argv[2]` (IPv4 or IPv6) fails with
/// (`connected` if it does not), given up after `argv[3]` seconds. The errors the tests expect
/// come at once; a timeout prints `timed out`.
const CONNECT_ERRNO: &str = r#"
import errno, socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, socket.SOCK_STREAM)
s.settimeout(float(sys.argv[3]))
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    print("connected")
except OSError as err:
    print(errno.errorcode.get(err.errno, str(err)))
"#;

/// [`CONNECT_ERRNO`] to `target` from `ns`, run inside `cgroup`.
fn connect_errno(
    cgroup: &TestCgroup,
    ns: &Netns,
    target: impl Into<SocketAddr>,
) -> lb_testkit::Outcome {
    let target = target.into();
    let (ip, port) = (target.ip().to_string(), target.port().to_string());
    ok(
        cgroup.exec(
            ns,
            "python3",
            &["-c", CONNECT_ERRNO, &ip, &port, ANSWER_WITHIN_SECS],
        ),
        "run the connect probe in the test cgroup",
    )
}

/// [`UDP_CLIENT`] to `vip:port` from `ns`, run inside `cgroup`.
fn udp_client(cgroup: &TestCgroup, ns: &Netns, vip: IpAddr, port: u16) -> lb_testkit::Outcome {
    ok(
        cgroup.exec(
            ns,
            "python3",
            &[
                "-c",
                UDP_CLIENT,
                &vip.to_string(),
                &port.to_string(),
                ANSWER_WITHIN_SECS,
            ],
        ),
        "run the UDP client in the test cgroup",
    )
}

/// Entries in the pinned map `name` of the agent of test `test`, as bpftool dumps them.
fn pinned_entries(test: &str, name: &str) -> usize {
    let dump = lb_tests::agent::pinned_map_dump(&lb_tests::agent::bpf_root(test), name);
    let entries: serde_json::Value = serde_json::from_str(&dump).expect("bpftool prints JSON");
    entries.as_array().map_or(0, Vec::len)
}

#[test]
fn host_processes_reach_cluster_ips_and_node_ports_through_their_sockets() {
    const TEST: &str = "host_sock_lb";
    let topology = Topology::new(TEST);
    let dir = topology.write_manifest("web.yaml", &manifests());
    let cgroup = ok(TestCgroup::create(TEST), "create the test cgroup");
    let cgroup_root = cgroup.path().display().to_string();
    let mut agent = lb_tests::agent::start_with_config(
        &topology,
        TEST,
        &dir,
        &[("bpf-lb-sock", "true"), ("cgroup-root", &cgroup_root)],
    );
    let both: BTreeSet<Ipv4Addr> = BACKEND_IPS.into_iter().collect();

    // The node itself, which has no route to the service CIDR and nothing on the node port:
    // only its sockets being rewritten lets it through, to both backends.
    for target in [
        SocketAddrV4::new(CLUSTER_IP, 80),
        SocketAddrV4::new(NODE_IP, NODE_PORT),
    ] {
        assert_eq!(
            answered_by(&cgroup, &topology.node, target),
            both,
            "{target} from the node"
        );
    }

    // ClientIP affinity: the node is one client, kept on one backend.
    let sticky = answered_by(
        &cgroup,
        &topology.node,
        SocketAddrV4::new(STICKY_CLUSTER_IP, 80),
    );
    assert_eq!(sticky.len(), 1, "one client, one backend: {sticky:?}");

    // No endpoints: connect() is refused at once, as kube-proxy's REJECT.
    let outcome = connect_errno(
        &cgroup,
        &topology.node,
        SocketAddrV4::new(EMPTY_CLUSTER_IP, 80),
    );
    assert_eq!(outcome.stdout.trim(), "ECONNREFUSED", "{outcome:?}");

    // UDP: the answer reads as coming from the VIP:port, connected or not.
    let outcome = udp_client(&cgroup, &topology.node, DNS_CLUSTER_IP.into(), DNS_PORT);
    let lines: Vec<&str> = outcome.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{outcome:?}");
    for (line, how) in lines.iter().zip(["recvfrom", "getpeername"]) {
        let mut words = line.splitn(4, ' ');
        assert_eq!(words.next(), Some(how), "{line}");
        let source = format!(
            "{}:{}",
            words.next().unwrap_or(""),
            words.next().unwrap_or("")
        );
        assert_eq!(
            source,
            format!("{DNS_CLUSTER_IP}:{DNS_PORT}"),
            "{how}: {line}"
        );
        let echo = EchoReply::parse(words.next().unwrap_or("")).expect("an echo answer");
        assert!(
            BACKEND_IPS.contains(&echo.pod_ip),
            "{how}: answered by {}",
            echo.pod_ip
        );
        assert_eq!(
            *echo.client.ip(),
            NODE_IP,
            "{how}: the backend sees the node"
        );
    }

    // Translated sockets leave reverse entries and no conntrack: no packet was NATed.
    let reverse = pinned_entries(TEST, lb_common::maps::LB4_REVERSE_SK);
    assert!(reverse >= 3 * TRIES + 2, "reverse entries: {reverse}");
    let ct = ok(agent.lbctl(&["bpf", "ct", "list"]), "lbctl bpf ct list").stdout;
    assert!(
        !ct.contains(&NODE_IP.to_string()),
        "no conntrack for the node's flows:\n{ct}"
    );

    // A pod's process in the same cgroup is not the host's: its socket is left alone and
    // from-pod translates its packets (a conntrack flow from the pod, no reverse entry).
    let (reply, outcome) = curl_in(
        &cgroup,
        &topology.client.ns,
        SocketAddrV4::new(CLUSTER_IP, 80),
    );
    assert_eq!(reply.status, Some(200), "from the pod: {outcome}");
    assert_eq!(
        pinned_entries(TEST, lb_common::maps::LB4_REVERSE_SK),
        reverse,
        "no reverse entry for the pod's socket"
    );
    let ct = ok(agent.lbctl(&["bpf", "ct", "list"]), "lbctl bpf ct list").stdout;
    assert!(
        ct.contains(&CLIENT_IP.to_string()),
        "the pod's flow in conntrack:\n{ct}"
    );
    // A restart: while no agent runs the programs stay attached and serve; the next agent
    // replaces them (no more than one of each is left).
    agent.stop();
    assert_eq!(
        answered_by(&cgroup, &topology.node, SocketAddrV4::new(CLUSTER_IP, 80)),
        both,
        "from the node while no agent runs"
    );
    lb_tests::agent::start_again(&mut agent, &topology, TEST, &dir);
    assert_eq!(
        answered_by(
            &cgroup,
            &topology.node,
            SocketAddrV4::new(NODE_IP, NODE_PORT)
        ),
        both,
        "from the node after the restart"
    );

    // One program per hook (the restart left no second set), until `--uninstall` detaches
    // them with the other links.
    assert_eq!(
        cgroup_programs(cgroup.path()),
        [
            "cgroup_inet4_connect",
            "cgroup_inet4_getpeername",
            "cgroup_inet6_connect",
            "cgroup_inet6_getpeername",
            "cgroup_udp4_recvmsg",
            "cgroup_udp4_sendmsg",
            "cgroup_udp6_recvmsg",
            "cgroup_udp6_sendmsg"
        ],
        "attached to the test cgroup"
    );
    agent.stop();
    let bpf_root = lb_tests::agent::bpf_root(TEST);
    let uninstall = ok(
        topology.node.exec(
            &lb_tests::agent::binaries().agent.to_string_lossy(),
            &[
                "--uninstall",
                "--bpf-root",
                &bpf_root.to_string_lossy(),
                "--socket",
                &agent.socket().to_string_lossy(),
            ],
        ),
        "run lb-agent --uninstall",
    );
    assert!(uninstall.success, "lb-agent --uninstall: {uninstall:?}");
    assert_eq!(
        cgroup_programs(cgroup.path()),
        Vec::<String>::new(),
        "nothing left on the cgroup"
    );
    let outcome = connect_errno(&cgroup, &topology.node, SocketAddrV4::new(CLUSTER_IP, 80));
    assert_eq!(
        outcome.stdout.trim(),
        "ENETUNREACH",
        "the node no longer reaches the ClusterIP: {outcome:?}"
    );
}

/// The attach types of the programs attached to `cgroup`, sorted (`bpftool cgroup show`).
fn cgroup_programs(cgroup: &Path) -> Vec<String> {
    let out = std::process::Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(cgroup)
        .output()
        .expect("run bpftool");
    assert!(out.status.success(), "bpftool cgroup show: {out:?}");
    let programs: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    let mut types: Vec<String> = programs
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|program| program["attach_type"].as_str().map(str::to_owned))
        .collect();
    types.sort();
    types
}

/// The IPv6 twin's Services, dual stack: `web6` (TCP 80 on both families' HTTP servers),
/// `dns6` (UDP 53 on their echo servers), `sticky6` (ClientIP affinity), `empty6` (no
/// endpoints).
const WEB6: (Ipv4Addr, Ipv6Addr) = (
    Ipv4Addr::new(10, 96, 50, 11),
    Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x51),
);
const DNS6: (Ipv4Addr, Ipv6Addr) = (
    Ipv4Addr::new(10, 96, 50, 12),
    Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x52),
);
const STICKY6: (Ipv4Addr, Ipv6Addr) = (
    Ipv4Addr::new(10, 96, 50, 13),
    Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x53),
);
const EMPTY6: (Ipv4Addr, Ipv6Addr) = (
    Ipv4Addr::new(10, 96, 50, 14),
    Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x54),
);

fn manifests6() -> String {
    let endpoints: Vec<String> = BACKEND_IPS
        .iter()
        .map(|ip| endpoint(*ip, "node", true))
        .collect();
    let endpoints6: Vec<String> = addrs::BACKENDS
        .iter()
        .map(|ip| endpoint(ipv6(ip), "node", true))
        .collect();
    stream(&[
        Manifest::new("web6", WEB6.0)
            .port(Port::tcp("http", 80, HTTP_PORT))
            .endpoints(endpoints.clone())
            .ipv6(WEB6.1, endpoints6.clone()),
        Manifest::new("dns6", DNS6.0)
            .port(Port::udp("dns", DNS_PORT, ECHO_PORT))
            .endpoints(endpoints.clone())
            .ipv6(DNS6.1, endpoints6.clone()),
        Manifest::new("sticky6", STICKY6.0)
            .spec("sessionAffinity", "ClientIP")
            .port(Port::tcp("", 80, HTTP_PORT))
            .endpoints(endpoints)
            .ipv6(STICKY6.1, endpoints6),
        Manifest::new("empty6", EMPTY6.0)
            .port(Port::tcp("", 80, HTTP_PORT))
            .ipv6(EMPTY6.1, []),
    ])
}

fn ipv6(text: &str) -> Ipv6Addr {
    text.parse().expect("an IPv6 address")
}

/// Connects over TCP to `argv[1]:argv[2]` (an IPv6 socket when the address has a colon, so an
/// IPv4-mapped one goes through a dual-stack socket), prints `getpeername PEER-IP PEER-PORT`,
/// then sends an HTTP GET and prints the answer. Gives up after `argv[3]` seconds.
const TCP_PEER: &str = r#"
import socket, sys
host, port, wait = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
s.settimeout(wait)
s.connect((host, port))
peer = s.getpeername()
print("getpeername", peer[0], peer[1], flush=True)
s.sendall(b"GET / HTTP/1.0\r\nHost: lb\r\n\r\n")
answer = b""
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    answer += chunk
sys.stdout.write(answer.decode())
"#;

/// `TRIES` [`TCP_PEER`] connections to `target` (`host`, port) from `ns` in `cgroup`, each of
/// which must see `target` as its peer and get 200: the pods that answered, and the client
/// addresses they saw.
fn peers_answered_by<A: std::str::FromStr + Ord>(
    cgroup: &TestCgroup,
    ns: &Netns,
    host: &str,
    port: u16,
) -> (BTreeSet<A>, BTreeSet<A>) {
    let mut pods = BTreeSet::new();
    let mut clients = BTreeSet::new();
    for _ in 0..TRIES {
        let outcome = ok(
            cgroup.exec(
                ns,
                "python3",
                &["-c", TCP_PEER, host, &port.to_string(), ANSWER_WITHIN_SECS],
            ),
            "run the TCP client in the test cgroup",
        );
        let (peer, answer) = outcome.stdout.split_once('\n').unwrap_or(("", ""));
        assert_eq!(peer, format!("getpeername {host} {port}"), "{outcome:?}");
        let reply = HttpReply::<A>::parse(answer);
        assert_eq!(reply.status, Some(200), "{outcome:?}");
        pods.insert(reply.pod_ip.expect("X-Pod-IP"));
        clients.insert(reply.client_ip.expect("X-Client-IP"));
    }
    (pods, clients)
}

/// The IPv6 twin of the test above (issue 14): the node made dual stack
/// (`lb_tests::ipv6::wire_ipv6`), IPv6 HTTP and echo servers on the backends, dual-stack
/// Services. From the node's namespace, in the test's cgroup: TCP to the IPv6 ClusterIP reaches
/// both IPv6 backends, which see the node's IPv6 address, while `getpeername` reads the VIP;
/// ClientIP affinity keeps the node on one backend; UDP `recvfrom` and `getpeername` read the
/// VIP:port; a Service without endpoints refuses (ECONNREFUSED). A dual-stack socket's
/// IPv4-mapped destination (`::ffff:10.96.50.11`) is the IPv4 frontend: IPv4 backends answer,
/// the peer reads as the mapped VIP, for TCP and UDP. Reverse entries in `LB6_REVERSE_SK`, no
/// conntrack for the node's IPv6 flows.
#[test]
fn host_processes_reach_ipv6_cluster_ips_through_their_sockets() {
    const TEST: &str = "host_sock_lb6";
    let topology = Topology::new(TEST);
    wire_ipv6(&topology);
    let _servers: Vec<_> = topology
        .backends
        .iter()
        .zip(addrs::BACKENDS)
        .flat_map(|(pod, ip)| {
            [
                ok(
                    servers::http(&pod.ns, ipv6(ip), HTTP_PORT, topology.dir()),
                    "IPv6 HTTP server",
                ),
                ok(
                    servers::echo(&pod.ns, ipv6(ip), ECHO_PORT, topology.dir()),
                    "IPv6 echo server",
                ),
            ]
        })
        .collect();
    let dir = topology.write_manifest("web6.yaml", &manifests6());
    let cgroup = ok(TestCgroup::create(TEST), "create the test cgroup");
    let cgroup_root = cgroup.path().display().to_string();
    let agent = lb_tests::agent::start_with_config(
        &topology,
        TEST,
        &dir,
        &[
            ("bpf-lb-sock", "true"),
            ("cgroup-root", &cgroup_root),
            ("node-ipv6", addrs::NODE),
        ],
    );
    let node6 = ipv6(addrs::NODE);
    let backends6: BTreeSet<Ipv6Addr> = addrs::BACKENDS.into_iter().map(ipv6).collect();

    // TCP to the IPv6 ClusterIP, which the node has no route to: both backends answer, they
    // see the node's IPv6 address, and the socket's peer is the VIP.
    let (pods, clients) =
        peers_answered_by::<Ipv6Addr>(&cgroup, &topology.node, &WEB6.1.to_string(), 80);
    assert_eq!(pods, backends6, "[{}]:80 from the node", WEB6.1);
    assert_eq!(clients, [node6].into(), "the backends see the node");

    // ClientIP affinity: the node is one IPv6 client, kept on one backend.
    let (sticky, _) =
        peers_answered_by::<Ipv6Addr>(&cgroup, &topology.node, &STICKY6.1.to_string(), 80);
    assert_eq!(sticky.len(), 1, "one client, one backend: {sticky:?}");

    // No endpoints: connect() is refused at once.
    let outcome = connect_errno(
        &cgroup,
        &topology.node,
        SocketAddr::new(EMPTY6.1.into(), 80),
    );
    assert_eq!(outcome.stdout.trim(), "ECONNREFUSED", "{outcome:?}");

    // UDP: the answer reads as coming from the IPv6 VIP:port, connected or not; from an
    // IPv4-mapped VIP, as that mapped VIP.
    let mapped_dns = DNS6.0.to_ipv6_mapped();
    for (vip, backends, client) in [
        (
            IpAddr::from(DNS6.1),
            addrs::BACKENDS.map(str::to_owned),
            format!("[{node6}]"),
        ),
        (
            IpAddr::from(mapped_dns),
            BACKEND_IPS.map(|ip| ip.to_string()),
            NODE_IP.to_string(),
        ),
    ] {
        let outcome = udp_client(&cgroup, &topology.node, vip, DNS_PORT);
        let lines: Vec<&str> = outcome.stdout.lines().collect();
        assert_eq!(lines.len(), 2, "{vip}: {outcome:?}");
        for (line, how) in lines.iter().zip(["recvfrom", "getpeername"]) {
            // `how SOURCE-IP SOURCE-PORT POD-IP CLIENT:PORT PAYLOAD`
            let words: Vec<&str> = line.split(' ').collect();
            assert_eq!(words.len(), 6, "{vip} {how}: {line}");
            assert_eq!(words[0], how, "{line}");
            assert_eq!(
                (words[1], words[2]),
                (vip.to_string().as_str(), DNS_PORT.to_string().as_str()),
                "{how}: the answer's source is the VIP: {line}"
            );
            assert!(
                backends.iter().any(|ip| ip == words[3]),
                "{vip} {how}: answered by a backend: {line}"
            );
            assert!(
                words[4].starts_with(&format!("{client}:")),
                "{vip} {how}: the backend sees the node: {line}"
            );
        }
    }

    // TCP through a dual-stack socket to the IPv4-mapped ClusterIP: the IPv4 frontend, IPv4
    // backends, the peer read as the mapped VIP.
    let (pods, clients) = peers_answered_by::<Ipv4Addr>(
        &cgroup,
        &topology.node,
        &WEB6.0.to_ipv6_mapped().to_string(),
        80,
    );
    assert_eq!(
        pods,
        BACKEND_IPS.into_iter().collect(),
        "mapped {} from the node",
        WEB6.0
    );
    assert_eq!(clients, [NODE_IP].into(), "the backends see the node");

    // Translated IPv6 sockets leave reverse entries and no conntrack: no packet was NATed.
    let reverse = pinned_entries(TEST, lb_common::maps::LB6_REVERSE_SK);
    assert!(reverse >= 2 * TRIES + 2, "IPv6 reverse entries: {reverse}");
    let ct = ok(agent.lbctl(&["bpf", "ct", "list"]), "lbctl bpf ct list").stdout;
    assert!(
        !ct.contains(addrs::NODE) && !ct.contains(&NODE_IP.to_string()),
        "no conntrack for the node's flows:\n{ct}"
    );
}

const HOST_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 50, 3);
const HOST_NODE_PORT: u16 = 30091;
/// Where the host-network server listens, in the node's namespace.
const HOST_PORT: u16 = 8443;

/// `host`: a NodePort Service whose one endpoint is the node itself (as the `kubernetes`
/// Service's is on a control-plane node, or a hostNetwork pod's).
fn host_backend_manifest() -> String {
    Manifest::new("host", HOST_CLUSTER_IP)
        .port(Port::tcp("https", 443, HOST_PORT).node_port(HOST_NODE_PORT))
        .kind("NodePort")
        .endpoints([endpoint(NODE_IP, "node", true)])
        .to_yaml()
}

/// `TRIES` requests from `ns` to `target`, each answered 200 by the node's own server; the
/// client addresses it saw.
fn served_by_the_node(ns: &Netns, target: SocketAddrV4) -> BTreeSet<Ipv4Addr> {
    (0..TRIES)
        .map(|_| {
            let (outcome, reply) = ok(lb_tests::probe::http_get(ns, target), "run curl");
            assert_eq!(reply.status, Some(200), "{target}: {outcome:?}");
            assert_eq!(reply.pod_ip, Some(NODE_IP), "{target}: answered by");
            reply.client_ip.expect("X-Client-IP")
        })
        .collect()
}

#[test]
fn a_backend_in_the_host_network_serves_pods_and_outside_clients() {
    const TEST: &str = "host_backend";
    let topology = Topology::new(TEST);
    let _server = ok(
        servers::http(&topology.node, NODE_IP, HOST_PORT, topology.dir()),
        "HTTP server in the node's namespace",
    );
    let dir = topology.write_manifest("host.yaml", &host_backend_manifest());
    let agent = lb_tests::agent::start(&topology, TEST, &dir);

    // From a pod: the ClusterIP and the node port; the server sees the pod's own address.
    let pod = [CLIENT_IP].into_iter().collect::<BTreeSet<_>>();
    for target in [
        SocketAddrV4::new(HOST_CLUSTER_IP, 443),
        SocketAddrV4::new(NODE_IP, HOST_NODE_PORT),
    ] {
        assert_eq!(
            served_by_the_node(&topology.client.ns, target),
            pod,
            "{target}"
        );
    }

    // From outside: the node port, and the ClusterIP once it is reachable from there.
    let outside = [EXTERNAL_IP].into_iter().collect::<BTreeSet<_>>();
    let node_port = SocketAddrV4::new(NODE_IP, HOST_NODE_PORT);
    assert_eq!(
        served_by_the_node(&topology.external, node_port),
        outside,
        "{node_port}"
    );
    ok(
        agent.lbctl(&["config", "set", "bpf-lb-external-clusterip", "true"]),
        "lbctl config set",
    );
    let cluster_ip = SocketAddrV4::new(HOST_CLUSTER_IP, 443);
    assert_eq!(
        served_by_the_node(&topology.external, cluster_ip),
        outside,
        "{cluster_ip}"
    );
}
