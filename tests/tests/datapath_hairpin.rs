//! Hairpin (`hairpin.rs`): a pod that reaches a Service of its own and is chosen as the
//! backend gets its packets with the source SNATed to 169.254.42.1 (its own address as the
//! source would be a martian to it), sent straight back to its interface; its replies are
//! translated back to VIP → pod and sent back the same way. Other pods' flows are untouched.
//!
//! The packet tables run through `BPF_PROG_TEST_RUN`; the last tests send real TCP and UDP
//! from a backend pod of `Topology` to its own Service (needs root and `python3`).

use std::net::{Ipv4Addr, SocketAddrV4};

use lb_common::{
    config::{
        DatapathConfig, EVENTS_PER_SEC, HAIRPIN_ADDR, HAIRPIN_OCTETS, SNAT_PORT_MAX, SNAT_PORT_MIN,
    },
    conntrack::{CT_F_FROM_NETDEV, CT_F_SNAT, CT_REPLY, CtKey4, CtReply},
    drop::{DropReason, Hook},
    event::tcp_flags::{ACK, PSH, SYN},
    proto,
};
use lb_lab::probe::{EchoSession, udp_echo};
use lb_testkit::packet::*;
use lb_testkit::patience::ANSWER_WITHIN;
use lb_tests::fixture::{Datapath, TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC, service};
use lb_tests::topology::{BACKEND_IPS, ECHO_PORT, Topology};

const VIP: &str = "10.96.0.10:80";
const FRONTEND: &str = "10.96.0.10:80/TCP";
/// The pod, as a client (any port) and as its service's backend (8080).
const POD: &str = "10.244.1.5:40000";
const POD_BACKEND: &str = "10.244.1.5:8080";
const OTHER_POD: &str = "10.244.1.9:40000";

fn loopback(port: u16) -> String {
    format!("{}:{port}", Ipv4Addr::from(HAIRPIN_OCTETS))
}

fn datapath(
    port_min: u16,
    port_max: u16,
    services: &[lb_agent::model::DesiredService],
) -> Datapath {
    let mut datapath = Datapath::load();
    datapath.set_config(DatapathConfig {
        snat_port_min: port_min,
        snat_port_max: port_max,
        events_per_sec: EVENTS_PER_SEC,
        ..DatapathConfig::default()
    });
    datapath.sync(services);
    datapath
}

/// The pod's service with the pod as its only backend.
fn own_service() -> Datapath {
    datapath(
        SNAT_PORT_MIN,
        SNAT_PORT_MAX,
        &[service(FRONTEND, &[POD_BACKEND])],
    )
}

/// The reply entries of hairpinned flows (keyed backend → 169.254.42.1).
fn hairpin_mappings(datapath: &Datapath) -> Vec<(CtKey4, CtReply)> {
    datapath
        .conntrack()
        .into_iter()
        .filter(|(key, entry)| entry.kind() == CT_REPLY && key.daddr == HAIRPIN_ADDR)
        .map(|(key, entry)| (key, entry.reply()))
        .collect()
}

/// `frame` as it leaves by the way it came: MAC addresses swapped.
fn bounced(frame: Frame) -> Vec<u8> {
    frame.with_macs(DST_MAC, SRC_MAC).bytes()
}

#[test]
fn a_pod_reaching_itself_is_snated_to_the_loopback_address_and_sent_back_to_it() {
    let datapath = own_service();
    let run = datapath.run(Hook::FromPod, &tcp_syn(POD, VIP));

    assert_eq!(
        run.verdict, TC_ACT_REDIRECT,
        "back out of the pod's interface"
    );
    read_checked(&run.frame);
    assert_eq!(
        run.frame,
        bounced(Frame::tcp(&loopback(40000), POD_BACKEND, SYN)),
        "source 169.254.42.1 with the client's port kept, destination the backend"
    );
    let mappings = hairpin_mappings(&datapath);
    assert_eq!(mappings.len(), 1, "one reply entry: {mappings:?}");
    let (key, reply) = mappings[0];
    assert_eq!(
        (key.saddr, key.sport, key.dport, key.proto),
        (
            ip_be(ip("10.244.1.5")),
            port_be(8080),
            port_be(40000),
            proto::TCP
        )
    );
    assert_eq!(
        (reply.client_addr, reply.client_port),
        (ip_be(ip("10.244.1.5")), port_be(40000))
    );
    assert_eq!(reply.flags & (CT_F_SNAT | CT_F_FROM_NETDEV), CT_F_SNAT);
}

#[test]
fn the_reply_of_a_hairpinned_flow_is_translated_back_to_vip_and_pod_and_sent_back_to_it() {
    let datapath = own_service();
    datapath.run(Hook::FromPod, &tcp_syn(POD, VIP));

    let reply = tcp_syn_ack(POD_BACKEND, &loopback(40000));
    let run = datapath.run(Hook::FromPod, &reply);

    assert_eq!(run.verdict, TC_ACT_REDIRECT);
    read_checked(&run.frame);
    assert_eq!(run.frame, bounced(Frame::tcp(VIP, POD, SYN | ACK)));
}

#[test]
fn an_established_hairpinned_flow_keeps_its_translation() {
    let datapath = own_service();
    datapath.run(Hook::FromPod, &tcp_syn(POD, VIP));
    for _ in 0..3 {
        let run = datapath.run(Hook::FromPod, &tcp_ack(POD, VIP));
        assert_eq!(run.verdict, TC_ACT_REDIRECT);
        assert_eq!(
            run.frame,
            bounced(Frame::tcp(&loopback(40000), POD_BACKEND, PSH | ACK))
        );
    }
    assert_eq!(hairpin_mappings(&datapath).len(), 1);
    assert_eq!(datapath.all_drops(), vec![]);
}

#[test]
fn a_udp_hairpin_is_translated_both_ways() {
    let mut datapath = datapath(
        SNAT_PORT_MIN,
        SNAT_PORT_MAX,
        &[service("10.96.0.10:53/UDP", &["10.244.1.5:53"])],
    );
    let run = datapath.run(Hook::FromPod, &udp(POD, "10.96.0.10:53"));
    assert_eq!(run.verdict, TC_ACT_REDIRECT);
    read_checked(&run.frame);
    assert_eq!(
        run.frame,
        bounced(Frame::udp(&loopback(40000), "10.244.1.5:53"))
    );

    let run = datapath.run(Hook::FromPod, &udp("10.244.1.5:53", &loopback(40000)));
    assert_eq!(run.verdict, TC_ACT_REDIRECT);
    read_checked(&run.frame);
    assert_eq!(run.frame, bounced(Frame::udp("10.96.0.10:53", POD)));
    assert_eq!(datapath.drain_events().len(), 0);
}

#[test]
fn another_pods_flow_to_the_same_backend_is_not_hairpinned() {
    let datapath = own_service();
    let run = datapath.run(Hook::FromPod, &tcp_syn(OTHER_POD, VIP));
    assert_eq!(run.verdict, TC_ACT_UNSPEC);
    assert_eq!(run.frame, tcp_syn(OTHER_POD, POD_BACKEND));
    assert_eq!(hairpin_mappings(&datapath), vec![]);
}

#[test]
fn a_second_vip_on_the_same_backend_and_client_port_gets_a_port_of_the_snat_range() {
    // Two services share the pod as backend; the pod reaches both from one source port. Kept,
    // the port would make both flows' replies the same tuple.
    let datapath = datapath(
        SNAT_PORT_MIN,
        SNAT_PORT_MAX,
        &[
            service(FRONTEND, &[POD_BACKEND]),
            service("10.96.0.11:80/TCP", &[POD_BACKEND]),
        ],
    );
    datapath.run(Hook::FromPod, &tcp_syn(POD, VIP));
    let run = datapath.run(Hook::FromPod, &tcp_syn(POD, "10.96.0.11:80"));

    assert_eq!(run.verdict, TC_ACT_REDIRECT);
    let seen = read_checked(&run.frame);
    assert_eq!(*seen.src.ip(), Ipv4Addr::from(HAIRPIN_OCTETS));
    assert!(
        (SNAT_PORT_MIN..=SNAT_PORT_MAX).contains(&seen.src.port()),
        "{seen:?}"
    );
    assert_eq!(hairpin_mappings(&datapath).len(), 2);

    // Each reply goes back to its own VIP.
    let reply = tcp_syn_ack(POD_BACKEND, &seen.src.to_string());
    let run = datapath.run(Hook::FromPod, &reply);
    assert_eq!(read_checked(&run.frame).src, addr("10.96.0.11:80"));
    let run = datapath.run(Hook::FromPod, &tcp_syn_ack(POD_BACKEND, &loopback(40000)));
    assert_eq!(read_checked(&run.frame).src, addr(VIP));
}

#[test]
fn a_hairpin_with_its_port_taken_and_the_snat_range_exhausted_drops_with_167() {
    let mut datapath = datapath(
        61_000,
        61_000,
        &[
            service(FRONTEND, &[POD_BACKEND]),
            service("10.96.0.11:80/TCP", &[POD_BACKEND]),
            service("10.96.0.12:80/TCP", &[POD_BACKEND]),
        ],
    );
    // The client's port, then the range's one port.
    for vip in [VIP, "10.96.0.11:80"] {
        let run = datapath.run(Hook::FromPod, &tcp_syn(POD, vip));
        assert_eq!(run.verdict, TC_ACT_REDIRECT, "{vip}");
    }
    let run = datapath.run(Hook::FromPod, &tcp_syn(POD, "10.96.0.12:80"));
    assert_eq!(run.verdict, TC_ACT_SHOT);
    assert_eq!(
        datapath.drop_count(DropReason::NatNoMapping, Hook::FromPod),
        1
    );
    assert_eq!(datapath.drain_events().len(), 1);
    assert_eq!(hairpin_mappings(&datapath).len(), 2, "nothing left behind");
}

/// How many new connections (and datagrams, each from a new socket) a pod makes to itself.
const CONNECTIONS: usize = 20;
/// The ClusterIP of the traffic tests: TCP and UDP frontends on the backends' echo servers.
const ECHO_VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 7);

/// A node of `Topology` with the datapath attached (field order is drop order: programs
/// before namespaces).
struct Node {
    datapath: Datapath,
    topology: Topology,
}

impl Node {
    fn up(test: &str, backends: &[Ipv4Addr]) -> Self {
        let topology = Topology::new(test);
        let mut datapath = Datapath::load();
        datapath.set_config(DatapathConfig {
            snat_port_min: SNAT_PORT_MIN,
            snat_port_max: SNAT_PORT_MAX,
            events_per_sec: EVENTS_PER_SEC,
            ..DatapathConfig::default()
        });
        datapath.attach_to(&topology);
        let backends: Vec<String> = backends
            .iter()
            .map(|ip| format!("{ip}:{ECHO_PORT}"))
            .collect();
        let backends: Vec<&str> = backends.iter().map(String::as_str).collect();
        datapath.sync(&[
            service(&format!("{ECHO_VIP}/TCP"), &backends),
            service(&format!("{ECHO_VIP}/UDP"), &backends),
        ]);
        Self { datapath, topology }
    }

    /// `CONNECTIONS` TCP connections and as many UDP sockets from backend pod 0 to its own
    /// Service, each exchanging one line; every one must be answered. Returns, per answer, the
    /// pod that answered and the client address it saw.
    fn reach_own_service(&self) -> Vec<(Ipv4Addr, Ipv4Addr)> {
        let pod = &self.topology.backends[0];
        let mut seen = Vec::new();
        for i in 0..CONNECTIONS {
            let mut session = EchoSession::connect(&pod.ns, ECHO_VIP, ANSWER_WITHIN)
                .unwrap_or_else(|err| panic!("TCP connection {i} to {ECHO_VIP}: {err:#}"));
            let line = format!("tcp {i}");
            let reply = session
                .ask(&line)
                .unwrap_or_else(|err| panic!("TCP exchange {i}: {err:#}"));
            assert_eq!(reply.payload, line);
            seen.push((reply.pod_ip, *reply.client.ip()));

            let payload = format!("udp {i}");
            let reply = udp_echo(
                &pod.ns,
                SocketAddrV4::new(pod.ip, 0),
                ECHO_VIP,
                &payload,
                ANSWER_WITHIN,
            )
            .expect("UDP probe")
            .unwrap_or_else(|why| panic!("UDP datagram {i} to {ECHO_VIP}: {why}"));
            // The socket is connected to the VIP: the answer came back from VIP:7.
            assert_eq!(reply.payload, payload);
            seen.push((reply.pod_ip, *reply.client.ip()));
        }
        seen
    }
}

#[test]
fn a_pod_reaches_itself_through_its_service_every_time() {
    let node = Node::up("hairpin_one_backend", &[BACKEND_IPS[0]]);
    let seen = node.reach_own_service();
    let loopback = Ipv4Addr::from(HAIRPIN_OCTETS);
    for (pod, client) in &seen {
        assert_eq!(*pod, BACKEND_IPS[0]);
        assert_eq!(
            *client, loopback,
            "the pod saw its own flow come from 169.254.42.1"
        );
    }
    assert_eq!(seen.len(), 2 * CONNECTIONS);
    assert_eq!(node.datapath.all_drops(), vec![], "nothing was dropped");
}

#[test]
fn a_pod_reaching_its_service_of_two_backends_is_always_answered() {
    let node = Node::up("hairpin_two_backends", &BACKEND_IPS);
    let seen = node.reach_own_service();
    let loopback = Ipv4Addr::from(HAIRPIN_OCTETS);
    for (pod, client) in &seen {
        // Itself through the loopback address; the other pod sees the pod's own address.
        let want = if *pod == BACKEND_IPS[0] {
            loopback
        } else {
            BACKEND_IPS[0]
        };
        assert_eq!(*client, want, "answered by {pod}");
    }
    let answered: std::collections::BTreeSet<Ipv4Addr> = seen.iter().map(|(pod, _)| *pod).collect();
    // All 40 answers from one backend has probability 2 * 2^-40.
    assert_eq!(answered, BACKEND_IPS.into(), "both backends answered");
    assert_eq!(node.datapath.all_drops(), vec![], "nothing was dropped");
}
