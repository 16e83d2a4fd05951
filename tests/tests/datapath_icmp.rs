//! ICMP and other protocols (`icmp.rs`): errors about translated flows are translated back
//! (DNAT and SNAT flows, both directions), echo requests to a VIP are answered by the VIP,
//! anything else to a VIP is dropped with a reason, and a packet too big for the route of an
//! SNATed flow is answered with "fragmentation needed". Every translated or built error is
//! compared byte for byte with one etherparse built, and its checksums (outer IP, ICMP over the
//! whole message, quoted IP header) are checked with a plain RFC 1071 sum.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use lb_common::{
    config::{
        CONFIG_F_EXTERNAL_CLUSTER_IP, DatapathConfig, EVENTS_PER_SEC, SNAT_PORT_MAX, SNAT_PORT_MIN,
    },
    conntrack::{CT_F_SNAT, CT_REPLY},
    drop::{DropReason, Hook, SourceFile},
    event::tcp_flags::{ACK, PSH},
};
use lb_testkit::ok;
use lb_testkit::packet::*;
use lb_testkit::patience::{ANSWER_WITHIN, ANSWER_WITHIN_SECS, SETTLE_WITHIN};
use lb_tests::fixture::{
    CLIENT_MAC, Case, Datapath, Expect, FibNetns, NODE_MAC, PEER_NODE_MAC, ServiceExt as _,
    TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC, check, service,
};
use lb_tests::topology::{BACKEND_IPS, CLIENT_IP as TOPO_CLIENT_IP, HTTP_PORT, Topology};

const POD: &str = "10.244.0.7:40000";
const POD_IP: &str = "10.244.0.7";
const DNS: &str = "10.96.0.10:53/UDP";
const DNS_VIP: &str = "10.96.0.10:53";
const WEB: &str = "10.96.0.10:80/TCP";
const WEB_VIP: &str = "10.96.0.10:80";
const VIP_IP: &str = "10.96.0.10";
const BACKEND_DNS: &str = "10.244.1.5:53";
const BACKEND_WEB: &str = "10.244.1.5:8080";
const BACKEND_IP: &str = "10.244.1.5";
/// A router between the client and the backend.
const ROUTER_IP: &str = "10.244.0.1";

/// "Destination unreachable": port unreachable, fragmentation needed.
const PORT_UNREACHABLE: (u8, u8) = (3, 3);
const FRAG_NEEDED: (u8, u8) = (3, 4);
/// "Time exceeded in transit".
const TTL_EXCEEDED: (u8, u8) = (11, 0);
/// The whole packet quoted (Linux quotes up to 576 bytes).
const WHOLE: usize = 1500;

fn mtu(mtu: u16) -> [u8; 4] {
    let [hi, lo] = mtu.to_be_bytes();
    [0, 0, hi, lo]
}

/// A datapath with `services` and a first packet of the flow `first` already through from-pod.
fn with_flow(services: &[lb_agent::model::DesiredService], first: &[u8]) -> Datapath {
    let mut datapath = Datapath::load();
    datapath.sync(services);
    let run = datapath.run(Hook::FromPod, first);
    assert_eq!(run.verdict, TC_ACT_UNSPEC, "the flow's first packet passes");
    datapath
}

/// Runs the ICMP error `input` through `hook` and asserts that it passes translated into
/// exactly `want`, with every checksum right.
fn assert_translated(datapath: &Datapath, hook: Hook, input: &[u8], want: &[u8]) {
    let run = datapath.run(hook, input);
    assert_eq!(run.verdict, TC_ACT_UNSPEC, "verdict");
    read_icmp_error_checked(&run.frame);
    assert_eq!(run.frame, want, "translated error");
    assert_eq!(datapath.all_drops(), vec![], "no drop counted");
}

#[test]
fn a_backends_port_unreachable_reaches_the_client_from_the_vip() {
    let datapath = with_flow(&[service(DNS, &[BACKEND_DNS])], &udp(POD, DNS_VIP));
    let input = icmp_error(
        BACKEND_IP,
        POD_IP,
        PORT_UNREACHABLE,
        [0; 4],
        &udp(POD, BACKEND_DNS),
        WHOLE,
    );
    let want = icmp_error(
        VIP_IP,
        POD_IP,
        PORT_UNREACHABLE,
        [0; 4],
        &udp(POD, DNS_VIP),
        WHOLE,
    );
    assert_translated(&datapath, Hook::FromPod, &input, &want);
}

#[test]
fn an_error_quoting_8_bytes_of_a_udp_datagram_is_translated() {
    let datapath = with_flow(&[service(DNS, &[BACKEND_DNS])], &udp(POD, DNS_VIP));
    let input = icmp_error(
        BACKEND_IP,
        POD_IP,
        PORT_UNREACHABLE,
        [0; 4],
        &udp(POD, BACKEND_DNS),
        8,
    );
    let want = icmp_error(
        VIP_IP,
        POD_IP,
        PORT_UNREACHABLE,
        [0; 4],
        &udp(POD, DNS_VIP),
        8,
    );
    assert_translated(&datapath, Hook::FromPod, &input, &want);
}

#[test]
fn an_error_about_a_udp_datagram_without_checksum_keeps_it_0() {
    let datapath = with_flow(
        &[service(DNS, &[BACKEND_DNS])],
        &udp_without_checksum(POD, DNS_VIP),
    );
    let about = udp_without_checksum(POD, BACKEND_DNS);
    let input = icmp_error(BACKEND_IP, POD_IP, PORT_UNREACHABLE, [0; 4], &about, WHOLE);
    let want = icmp_error(
        VIP_IP,
        POD_IP,
        PORT_UNREACHABLE,
        [0; 4],
        &udp_without_checksum(POD, DNS_VIP),
        WHOLE,
    );
    assert_translated(&datapath, Hook::FromPod, &input, &want);
}

#[test]
fn a_routers_time_exceeded_keeps_the_routers_address() {
    let datapath = with_flow(&[service(WEB, &[BACKEND_WEB])], &tcp_syn(POD, WEB_VIP));
    let input = icmp_error(
        ROUTER_IP,
        POD_IP,
        TTL_EXCEEDED,
        [0; 4],
        &tcp_syn(POD, BACKEND_WEB),
        8,
    );
    let want = icmp_error(
        ROUTER_IP,
        POD_IP,
        TTL_EXCEEDED,
        [0; 4],
        &tcp_syn(POD, WEB_VIP),
        8,
    );
    assert_translated(&datapath, Hook::FromNetdev, &input, &want);
}

#[test]
fn fragmentation_needed_from_a_remote_backends_path_reaches_the_pod_with_its_mtu() {
    let services = [service(WEB, &[BACKEND_WEB]).remote()];
    let datapath = with_flow(&services, &tcp_ack(POD, WEB_VIP));
    let input = icmp_error(
        ROUTER_IP,
        POD_IP,
        FRAG_NEEDED,
        mtu(1400),
        &tcp_ack(POD, BACKEND_WEB),
        WHOLE,
    );
    let want = icmp_error(
        ROUTER_IP,
        POD_IP,
        FRAG_NEEDED,
        mtu(1400),
        &tcp_ack(POD, WEB_VIP),
        WHOLE,
    );
    assert_translated(&datapath, Hook::FromNetdev, &input, &want);
    let seen = read_icmp_error_checked(&want);
    assert_eq!(seen.rest, mtu(1400));
}

#[test]
fn a_clients_port_unreachable_about_a_reply_reaches_the_backend() {
    let datapath = with_flow(&[service(DNS, &[BACKEND_DNS])], &udp(POD, DNS_VIP));
    // The client's socket is gone; its stack answers the reply it got from the VIP.
    let input = icmp_error(
        POD_IP,
        VIP_IP,
        PORT_UNREACHABLE,
        [0; 4],
        &udp(DNS_VIP, POD),
        WHOLE,
    );
    let want = icmp_error(
        POD_IP,
        BACKEND_IP,
        PORT_UNREACHABLE,
        [0; 4],
        &udp(BACKEND_DNS, POD),
        WHOLE,
    );
    assert_translated(&datapath, Hook::FromPod, &input, &want);
}

#[test]
fn icmp_without_a_translation() {
    let unrelated = udp("10.244.0.9:1234", "10.244.3.3:99");
    let cases = [
        Case {
            name: "an error about a flow lb never translated passes untouched",
            services: vec![service(DNS, &[BACKEND_DNS])],
            config_flags: 0,
            hook: Hook::FromPod,
            input: icmp_error(
                "10.244.3.3",
                "10.244.0.9",
                PORT_UNREACHABLE,
                [0; 4],
                &unrelated,
                WHOLE,
            ),
            expect: Expect::Unchanged,
        },
        Case {
            name: "an error to a VIP about no flow is dropped with 158",
            services: vec![service(DNS, &[BACKEND_DNS])],
            config_flags: 0,
            hook: Hook::FromPod,
            input: icmp_error(
                POD_IP,
                VIP_IP,
                PORT_UNREACHABLE,
                [0; 4],
                &udp(DNS_VIP, POD),
                WHOLE,
            ),
            expect: Expect::Dropped(DropReason::NoService),
        },
        Case {
            name: "an echo request to an address that is no VIP passes",
            services: vec![service(DNS, &[BACKEND_DNS])],
            config_flags: 0,
            hook: Hook::FromPod,
            input: icmp_echo(POD_IP, BACKEND_IP),
            expect: Expect::Unchanged,
        },
        Case {
            name: "an echo request from outside to a ClusterIP is dropped with 174",
            services: vec![service(DNS, &[BACKEND_DNS])],
            config_flags: 0,
            hook: Hook::FromNetdev,
            input: icmp_echo("192.168.56.10", VIP_IP),
            expect: Expect::Dropped(DropReason::IsClusterIp),
        },
        Case {
            name: "an ICMP timestamp request to a VIP is dropped with 144",
            services: vec![service(DNS, &[BACKEND_DNS])],
            config_flags: 0,
            hook: Hook::FromPod,
            input: icmp_other(POD_IP, VIP_IP, 13),
            expect: Expect::Dropped(DropReason::UnknownIcmp4Type),
        },
        Case {
            name: "a timestamp request elsewhere passes",
            services: vec![service(DNS, &[BACKEND_DNS])],
            config_flags: 0,
            hook: Hook::FromPod,
            input: icmp_other(POD_IP, BACKEND_IP, 13),
            expect: Expect::Unchanged,
        },
        Case {
            name: "SCTP to a VIP is dropped with 142",
            services: vec![service(DNS, &[BACKEND_DNS])],
            config_flags: 0,
            hook: Hook::FromPod,
            input: ip_proto(POD_IP, VIP_IP, 132),
            expect: Expect::Dropped(DropReason::UnknownL4),
        },
        Case {
            name: "GRE from outside to a VIP is dropped with 142",
            services: vec![service(DNS, &[BACKEND_DNS])],
            config_flags: CONFIG_F_EXTERNAL_CLUSTER_IP,
            hook: Hook::FromNetdev,
            input: ip_proto("192.168.56.10", VIP_IP, 47),
            expect: Expect::Dropped(DropReason::UnknownL4),
        },
        Case {
            name: "SCTP elsewhere passes",
            services: vec![service(DNS, &[BACKEND_DNS])],
            config_flags: 0,
            hook: Hook::FromPod,
            input: ip_proto(POD_IP, BACKEND_IP, 132),
            expect: Expect::Unchanged,
        },
    ];
    for case in &cases {
        check(case);
    }
}

#[test]
fn a_ping_to_a_vip_from_a_pod_is_answered_by_the_vip() {
    let mut datapath = Datapath::load();
    datapath.sync(&[service(DNS, &[BACKEND_DNS])]);
    let run = datapath.run(Hook::FromPod, &icmp_echo(POD_IP, VIP_IP));
    assert_eq!(run.verdict, TC_ACT_REDIRECT, "sent back to the pod");
    assert_eq!(run.frame, icmp_echo_reply(POD_IP, VIP_IP));
    let packet = &run.frame[14..];
    assert_eq!(internet_checksum(&packet[..20]), 0, "IPv4 header checksum");
    assert_eq!(internet_checksum(&packet[20..]), 0, "ICMP checksum");
    assert_eq!(datapath.all_drops(), vec![]);
}

#[test]
fn a_ping_to_a_vip_from_outside_is_answered_when_clusterips_are_external() {
    let mut datapath = Datapath::load();
    datapath.set_config(DatapathConfig {
        flags: CONFIG_F_EXTERNAL_CLUSTER_IP,
        events_per_sec: EVENTS_PER_SEC,
        ..DatapathConfig::default()
    });
    datapath.sync(&[service(DNS, &[BACKEND_DNS])]);
    let run = datapath.run(Hook::FromNetdev, &icmp_echo("192.168.56.10", VIP_IP));
    assert_eq!(run.verdict, TC_ACT_REDIRECT);
    assert_eq!(run.frame, icmp_echo_reply("192.168.56.10", VIP_IP));
}

// SNAT: an external client, a remote backend, FIB lookups in a namespace that answers like a
// node (see datapath_nat.rs).

const CLIENT: &str = "192.168.56.10:33802";
const CLIENT_IP: &str = "192.168.56.10";
const VIP: &str = "10.96.229.67:80";
const SNAT_VIP_IP: &str = "10.96.229.67";
const FRONTEND: &str = "10.96.229.67:80/TCP";
const REMOTE: &str = "10.244.2.7:8080";
const REMOTE_IP: &str = "10.244.2.7";
const NODE: &str = "192.168.56.4";
/// The other node, the router towards the remote backend.
const PEER_NODE: &str = "192.168.56.5";

/// A datapath that SNATs flows from outside to `REMOTE`, with the flow from `CLIENT` open;
/// returns it with the flow's SNAT port.
fn snat_flow(netns: &FibNetns) -> (Datapath, u16) {
    let mut datapath = Datapath::load();
    datapath.set_config(DatapathConfig {
        flags: CONFIG_F_EXTERNAL_CLUSTER_IP,
        node_addr: ip_be(ip(NODE)),
        snat_port_min: SNAT_PORT_MIN,
        snat_port_max: SNAT_PORT_MAX,
        events_per_sec: EVENTS_PER_SEC,
        ..DatapathConfig::default()
    });
    datapath.sync(&[service(FRONTEND, &[REMOTE]).remote()]);
    let run =
        netns.enter(|| datapath.run_on(Hook::FromNetdev, &tcp_syn(CLIENT, VIP), netns.ifindex));
    assert_eq!(run.verdict, TC_ACT_REDIRECT);
    let port = datapath
        .conntrack()
        .into_iter()
        .find(|(_, entry)| entry.kind() == CT_REPLY && entry.reply().flags & CT_F_SNAT != 0)
        .map(|(key, _)| u16::from_be(key.dport))
        .expect("the flow's NAT mapping");
    (datapath, port)
}

#[test]
fn an_error_about_an_snated_flow_is_sent_on_to_the_external_client() {
    let netns = FibNetns::new("icmpsnat", true);
    let (datapath, port) = snat_flow(&netns);
    let snated = Frame::tcp(&format!("{NODE}:{port}"), REMOTE, ACK | PSH).bytes();
    for (from, to) in [(REMOTE_IP, SNAT_VIP_IP), (PEER_NODE, PEER_NODE)] {
        let input = icmp_error(from, NODE, FRAG_NEEDED, mtu(1400), &snated, WHOLE);
        let run = netns.enter(|| datapath.run_on(Hook::FromNetdev, &input, netns.ifindex));
        assert_eq!(run.verdict, TC_ACT_REDIRECT, "redirected to the client");
        let seen = read_icmp_error_checked(&run.frame);
        assert_eq!(seen.quoted_src, addr(CLIENT));
        let want = with_macs(
            icmp_error(
                to,
                CLIENT_IP,
                FRAG_NEEDED,
                mtu(1400),
                &tcp_ack(CLIENT, VIP),
                WHOLE,
            ),
            NODE_MAC,
            CLIENT_MAC,
        );
        assert_eq!(run.frame, want, "error from {from}");
    }
}

#[test]
fn an_external_clients_error_about_a_reply_is_sent_on_to_the_remote_backend() {
    let netns = FibNetns::new("icmpsnatrev", true);
    let (datapath, port) = snat_flow(&netns);
    let input = icmp_error(
        CLIENT_IP,
        SNAT_VIP_IP,
        PORT_UNREACHABLE,
        [0; 4],
        &tcp_ack(VIP, CLIENT),
        8,
    );
    let run = netns.enter(|| datapath.run_on(Hook::FromNetdev, &input, netns.ifindex));
    assert_eq!(run.verdict, TC_ACT_REDIRECT);
    let reply = Frame::tcp(REMOTE, &format!("{NODE}:{port}"), ACK | PSH).bytes();
    let want = with_macs(
        icmp_error(NODE, REMOTE_IP, PORT_UNREACHABLE, [0; 4], &reply, 8),
        NODE_MAC,
        PEER_NODE_MAC,
    );
    read_icmp_error_checked(&run.frame);
    assert_eq!(run.frame, want);
}

/// Asserts that `run` is the "fragmentation needed" answer to `about`, from `from`, carrying
/// `mtu`, sent back where `about` came from; and that the drop was counted.
fn assert_frag_needed_answer(
    datapath: &mut Datapath,
    run: &lb_tests::fixture::Run,
    about: &[u8],
    from: &str,
    next_hop_mtu: u16,
) {
    assert_eq!(run.verdict, TC_ACT_REDIRECT, "answered");
    let seen = read_icmp_error_checked(&run.frame);
    let sender = &about[14 + 12..14 + 16];
    assert_eq!(seen.src, ip(from));
    assert_eq!(seen.dst.octets(), sender, "to the packet's sender");
    assert_eq!(seen.kind, FRAG_NEEDED);
    assert_eq!(seen.rest, mtu(next_hop_mtu), "the next-hop MTU");
    assert_eq!(
        &run.frame[..6],
        &about[6..12],
        "back to the MAC it came from"
    );
    assert_eq!(&run.frame[6..12], &about[..6]);
    // The quote: the IP header and 8 bytes, as the packet arrived.
    assert_eq!(&run.frame[14 + 28..], &about[14..14 + 28]);
    assert_eq!(run.frame.len(), 14 + 20 + 8 + 28);
    assert_eq!(run.frame[14 + 8], 64, "TTL");
    assert_eq!(run.frame[14 + 6] & 0x40, 0, "the answer itself has no DF");
    assert_eq!(
        datapath.drop_count(DropReason::FragNeeded, Hook::FromNetdev),
        1,
        "the drop is counted"
    );
    let events = datapath.drain_events();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].reason, events[0].file, events[0].len as usize),
        (136, SourceFile::Icmp as u8, about.len()),
        "reported as the packet that was dropped"
    );
}

#[test]
fn a_too_big_packet_of_an_snated_flow_is_answered_with_fragmentation_needed() {
    let netns = FibNetns::new("icmpfrag", true);
    let (mut datapath, _port) = snat_flow(&netns);
    // 1600 bytes of payload with DF: larger than lbt0's MTU of 1500.
    let big = Frame::tcp(CLIENT, VIP, ACK | PSH).sized(1600).bytes();
    let run = netns.enter(|| datapath.run_on(Hook::FromNetdev, &big, netns.ifindex));
    assert_frag_needed_answer(&mut datapath, &run, &big, NODE, 1500);
}

#[test]
fn a_too_big_reply_of_an_snated_flow_is_answered_to_the_backend() {
    let netns = FibNetns::new("icmpfragrev", true);
    let (mut datapath, port) = snat_flow(&netns);
    let big = Frame::tcp(REMOTE, &format!("{NODE}:{port}"), ACK | PSH)
        .sized(1600)
        .bytes();
    let run = netns.enter(|| datapath.run_on(Hook::FromNetdev, &big, netns.ifindex));
    assert_frag_needed_answer(&mut datapath, &run, &big, NODE, 1500);
}

#[test]
fn a_too_big_packet_without_df_is_dropped_with_136_unanswered() {
    let netns = FibNetns::new("icmpfragdf", true);
    let (datapath, _port) = snat_flow(&netns);
    let big = Frame {
        dont_fragment: false,
        ..Frame::tcp(CLIENT, VIP, ACK | PSH).sized(1600)
    }
    .bytes();
    let run = netns.enter(|| datapath.run_on(Hook::FromNetdev, &big, netns.ifindex));
    assert_eq!(run.verdict, TC_ACT_SHOT);
    assert_eq!(
        datapath.drop_count(DropReason::FragNeeded, Hook::FromNetdev),
        1
    );
}

// Real traffic: the datapath attached to `Topology`'s node (see datapath_traffic.rs), packets
// from real sockets and `ping`.

/// A node with the datapath attached. Field order is drop order: the programs are detached (and
/// their pins removed) before the namespaces go.
struct Node {
    datapath: Datapath,
    topology: Topology,
}

impl Node {
    fn up(test: &str) -> Self {
        let topology = Topology::new(test);
        let mut datapath = Datapath::load();
        datapath.attach_to(&topology);
        Self { datapath, topology }
    }
}

/// The ClusterIP of `Topology` tests.
const TOPOLOGY_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

#[test]
fn a_udp_client_of_a_clusterip_whose_backend_has_no_listener_gets_connection_refused() {
    let mut node = Node::up("icmp-refused");
    // Nothing listens on the backend's port 9999: its stack answers "port unreachable".
    let backend = format!("{}:9999", BACKEND_IPS[0]);
    node.datapath
        .sync(&[service("10.96.0.10:53/UDP", &[&backend])]);
    let started = Instant::now();
    let outcome = ok(
        node.topology
            .client
            .ns
            .within(|| -> std::io::Result<usize> {
                let socket = UdpSocket::bind(SocketAddrV4::new(TOPO_CLIENT_IP, 0))?;
                socket.connect(SocketAddrV4::new(TOPOLOGY_VIP, 53))?;
                socket.set_read_timeout(Some(ANSWER_WITHIN))?;
                socket.send(b"anyone there?")?;
                socket.recv(&mut [0u8; 64])
            }),
        "enter the client pod",
    );
    let err = outcome.expect_err("no answer can come");
    assert_eq!(
        err.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "the backend's port unreachable, translated to come from the VIP: {err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused at once, not after a timeout"
    );
    assert_eq!(node.datapath.all_drops(), vec![]);
}

#[test]
fn a_ping_to_a_clusterip_is_answered_by_the_clusterip_and_refused_from_outside() {
    let mut node = Node::up("icmp-ping");
    let backend = format!("{}:{HTTP_PORT}", BACKEND_IPS[0]);
    node.datapath
        .sync(&[service("10.96.0.10:80/TCP", &[&backend])]);
    let vip = TOPOLOGY_VIP.to_string();
    let from_pod = ok(
        node.topology
            .client
            .ns
            .exec("ping", &["-n", "-c", "1", "-W", ANSWER_WITHIN_SECS, &vip]),
        "run ping",
    );
    assert!(from_pod.success, "ping from a pod: {from_pod:?}");
    assert!(
        from_pod.stdout.contains(&format!("from {vip}")),
        "the answer comes from the ClusterIP: {from_pod:?}"
    );

    // ClusterIPs are not reachable from outside (bpf-lb-external-clusterip off): not even a
    // ping, and the drop says why.
    let from_outside = ok(
        node.topology
            .external
            .exec("ping", &["-n", "-c", "1", "-W", "1", &vip]),
        "run ping",
    );
    assert!(!from_outside.success, "ping from outside: {from_outside:?}");
    assert_eq!(
        node.datapath
            .drop_count(DropReason::IsClusterIp, Hook::FromNetdev),
        1,
        "counted as 174 Is a ClusterIP"
    );
}

#[test]
fn sctp_from_a_pod_to_a_clusterip_is_dropped_with_142_and_counted() {
    let mut node = Node::up("icmp-sctp");
    let backend = format!("{}:{HTTP_PORT}", BACKEND_IPS[0]);
    node.datapath
        .sync(&[service("10.96.0.10:80/TCP", &[&backend])]);
    // A raw SCTP datagram, as any SCTP stack would send first (the content does not matter).
    let send = format!(
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 132); \
         s.sendto(bytes(16), ('{TOPOLOGY_VIP}', 0))"
    );
    ok(
        node.topology.client.ns.run("python3", &["-c", &send]),
        "send SCTP",
    );
    let counted = lb_testkit::wait_until("the drop to be counted", SETTLE_WITHIN, || {
        let count = node
            .datapath
            .drop_count(DropReason::UnknownL4, Hook::FromPod);
        if count >= 1 {
            Ok(Some(count))
        } else {
            Err(format!("{:?}", node.datapath.all_drops()))
        }
    });
    assert_eq!(ok(counted, "drop counted"), 1, "one datagram, one drop");
    let events = node.datapath.drain_events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        (events[0].reason, events[0].proto, events[0].file),
        (142, 132, SourceFile::Icmp as u8),
        "the event names the reason and the protocol"
    );
}
