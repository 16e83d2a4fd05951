//! SNAT for remote backends (`nat.rs`, `fib.rs`): a flow from outside to a backend on another
//! node is DNATed and SNATed to the node's address with a claimed source port, then forwarded by
//! FIB lookup and redirect; its replies are translated back and forwarded to the client.
//! FIB lookups run in a `FibNetns` that answers like a node.

use lb_common::{
    config::{
        CONFIG_F_EXTERNAL_CLUSTER_IP, DatapathConfig, EVENTS_PER_SEC, SNAT_PORT_MAX, SNAT_PORT_MIN,
    },
    conntrack::{CT_F_SNAT, CT_REPLY, CtKey4, CtReply},
    drop::{DropReason, Hook, SourceFile},
};
use lb_testkit::packet::*;
use lb_tests::fixture::{
    CLIENT_MAC, Datapath, FibNetns, NODE_MAC, PEER_NODE_MAC, ServiceExt as _, TC_ACT_REDIRECT,
    TC_ACT_SHOT, TC_ACT_UNSPEC, service,
};

const CLIENT: &str = "192.168.56.10:33802";
const VIP: &str = "10.96.229.67:80";
const FRONTEND: &str = "10.96.229.67:80/TCP";
const REMOTE: &str = "10.244.2.7:8080";
const NODE: &str = "192.168.56.4";

fn snat_datapath(port_min: u16, port_max: u16) -> Datapath {
    let mut datapath = Datapath::load();
    datapath.set_config(DatapathConfig {
        flags: CONFIG_F_EXTERNAL_CLUSTER_IP,
        node_addr: ip_be(ip(NODE)),
        snat_port_min: port_min,
        snat_port_max: port_max,
        events_per_sec: EVENTS_PER_SEC,
        ..DatapathConfig::default()
    });
    datapath.sync(&[service(FRONTEND, &[REMOTE]).remote()]);
    datapath
}

/// The reply entry the SNAT of the flow claimed (the NAT mapping).
fn nat_mapping(datapath: &Datapath) -> (CtKey4, CtReply) {
    let mappings: Vec<_> = datapath
        .conntrack()
        .into_iter()
        .filter(|(_, entry)| entry.kind() == CT_REPLY)
        .map(|(key, entry)| (key, entry.reply()))
        .filter(|(_, reply)| reply.flags & CT_F_SNAT != 0)
        .collect();
    assert_eq!(mappings.len(), 1, "one NAT mapping: {mappings:?}");
    mappings[0]
}

#[test]
fn an_external_flow_to_a_remote_backend_is_snated_to_the_node_and_redirected() {
    let netns = FibNetns::new("snat", true);
    let datapath = snat_datapath(SNAT_PORT_MIN, SNAT_PORT_MAX);
    let run =
        netns.enter(|| datapath.run_on(Hook::FromNetdev, &tcp_syn(CLIENT, VIP), netns.ifindex));

    assert_eq!(run.verdict, TC_ACT_REDIRECT);
    let (key, entry) = nat_mapping(&datapath);
    let port = u16::from_be(key.dport);
    assert!(
        (SNAT_PORT_MIN..=SNAT_PORT_MAX).contains(&port),
        "port {port} in range"
    );
    assert_eq!(
        (key.saddr, key.sport),
        (ip_be(ip("10.244.2.7")), port_be(8080))
    );
    assert_eq!(key.daddr, ip_be(ip(NODE)));
    assert_eq!(
        (entry.client_addr, entry.client_port),
        (ip_be(ip("192.168.56.10")), port_be(33802))
    );
    let want = Frame::tcp(
        &format!("{NODE}:{port}"),
        REMOTE,
        lb_common::event::tcp_flags::SYN,
    )
    .with_macs(NODE_MAC, PEER_NODE_MAC)
    .bytes();
    read_checked(&run.frame);
    assert_eq!(run.frame, want);
}

#[test]
fn the_reply_of_an_snated_flow_is_translated_back_and_redirected_to_the_client() {
    let netns = FibNetns::new("revsnat", true);
    let datapath = snat_datapath(SNAT_PORT_MIN, SNAT_PORT_MAX);
    netns.enter(|| datapath.run_on(Hook::FromNetdev, &tcp_syn(CLIENT, VIP), netns.ifindex));
    let port = u16::from_be(nat_mapping(&datapath).0.dport);

    let reply = tcp_syn_ack(REMOTE, &format!("{NODE}:{port}"));
    let run = netns.enter(|| datapath.run_on(Hook::FromNetdev, &reply, netns.ifindex));

    assert_eq!(run.verdict, TC_ACT_REDIRECT);
    read_checked(&run.frame);
    let want = Frame::tcp(
        VIP,
        CLIENT,
        lb_common::event::tcp_flags::SYN | lb_common::event::tcp_flags::ACK,
    )
    .with_macs(NODE_MAC, CLIENT_MAC)
    .bytes();
    assert_eq!(run.frame, want);
}

#[test]
fn an_established_snated_flow_keeps_its_source_port() {
    let netns = FibNetns::new("snatkeep", true);
    let datapath = snat_datapath(SNAT_PORT_MIN, SNAT_PORT_MAX);
    let first =
        netns.enter(|| datapath.run_on(Hook::FromNetdev, &tcp_syn(CLIENT, VIP), netns.ifindex));
    for _ in 0..8 {
        let next =
            netns.enter(|| datapath.run_on(Hook::FromNetdev, &tcp_ack(CLIENT, VIP), netns.ifindex));
        assert_eq!(next.verdict, TC_ACT_REDIRECT);
        assert_eq!(
            read_checked(&next.frame).src,
            read_checked(&first.frame).src
        );
    }
    nat_mapping(&datapath);
}

#[test]
fn no_free_snat_port_drops_with_167() {
    let netns = FibNetns::new("snat167", true);
    let mut datapath = snat_datapath(40_000, 40_000);
    let first =
        netns.enter(|| datapath.run_on(Hook::FromNetdev, &tcp_syn(CLIENT, VIP), netns.ifindex));
    assert_eq!(first.verdict, TC_ACT_REDIRECT);
    let other = tcp_syn("192.168.56.11:5555", VIP);
    let second = netns.enter(|| datapath.run_on(Hook::FromNetdev, &other, netns.ifindex));

    assert_eq!(second.verdict, TC_ACT_SHOT);
    assert_eq!(
        datapath.drop_count(DropReason::NatNoMapping, Hook::FromNetdev),
        1
    );
    let events = datapath.drain_events();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].reason, events[0].file),
        (167, SourceFile::Nat as u8)
    );
    assert_eq!(
        events[0].ifindex, netns.ifindex,
        "the interface the packet arrived on"
    );
    assert_eq!(
        datapath.conntrack().len(),
        2,
        "the refused flow left no entry"
    );
}

#[test]
fn a_tiny_snat_range_serves_one_flow_per_port_then_drops_with_167() {
    let netns = FibNetns::new("snatfull", true);
    let mut datapath = snat_datapath(40_000, 40_003);
    let mut ports = std::collections::BTreeSet::new();
    for i in 0..4 {
        let client = format!("192.168.56.{}:5555", 20 + i);
        let run = netns
            .enter(|| datapath.run_on(Hook::FromNetdev, &tcp_syn(&client, VIP), netns.ifindex));
        assert_eq!(run.verdict, TC_ACT_REDIRECT, "flow {i} gets a port");
        ports.insert(read_checked(&run.frame).src.port());
    }
    assert_eq!(
        ports,
        (40_000..=40_003).collect(),
        "every port of the range is used once"
    );

    let fifth = tcp_syn("192.168.56.30:5555", VIP);
    let run = netns.enter(|| datapath.run_on(Hook::FromNetdev, &fifth, netns.ifindex));
    assert_eq!(run.verdict, TC_ACT_SHOT);
    assert_eq!(
        datapath.all_drops(),
        vec![(DropReason::NatNoMapping as u8, Hook::FromNetdev as u8, 1)]
    );
    assert_eq!(datapath.drain_events().len(), 1);
    assert_eq!(
        datapath.conntrack().len(),
        8,
        "the refused flow left no entry"
    );

    // An established flow still passes with its port.
    let again = netns.enter(|| {
        datapath.run_on(
            Hook::FromNetdev,
            &tcp_ack("192.168.56.20:5555", VIP),
            netns.ifindex,
        )
    });
    assert_eq!(again.verdict, TC_ACT_REDIRECT);
}

#[test]
fn no_route_for_an_snated_flow_drops_with_169_reporting_the_packet_as_it_arrived() {
    // Forwarding off: the FIB refuses to forward (BPF_FIB_LKUP_RET_FWD_DISABLED).
    let netns = FibNetns::new("snat169", false);
    let mut datapath = snat_datapath(SNAT_PORT_MIN, SNAT_PORT_MAX);
    let run =
        netns.enter(|| datapath.run_on(Hook::FromNetdev, &tcp_syn(CLIENT, VIP), netns.ifindex));

    assert_eq!(run.verdict, TC_ACT_SHOT);
    assert_eq!(datapath.drop_count(DropReason::NoFib, Hook::FromNetdev), 1);
    let events = datapath.drain_events();
    assert_eq!(events.len(), 1);
    let event = events[0];
    assert_eq!((event.reason, event.file), (169, SourceFile::Fib as u8));
    assert_eq!(
        (event.saddr, event.sport),
        (ip_be(ip("192.168.56.10")), port_be(33802))
    );
    assert_eq!(
        (event.daddr, event.dport),
        (ip_be(ip("10.96.229.67")), port_be(80))
    );
}

#[test]
fn a_remote_backend_without_a_node_address_to_snat_to_drops_with_165() {
    // Forwarded with the client's address, the flow's replies would go from the backend's
    // node straight to the client, untranslated.
    let mut datapath = Datapath::load();
    datapath.set_config(DatapathConfig {
        flags: CONFIG_F_EXTERNAL_CLUSTER_IP,
        snat_port_min: SNAT_PORT_MIN,
        snat_port_max: SNAT_PORT_MAX,
        events_per_sec: EVENTS_PER_SEC,
        ..DatapathConfig::default()
    });
    datapath.sync(&[service(FRONTEND, &[REMOTE]).remote()]);
    let run = datapath.run(Hook::FromNetdev, &tcp_syn(CLIENT, VIP));
    assert_eq!(run.verdict, TC_ACT_SHOT);
    assert_eq!(
        datapath.all_drops(),
        vec![(DropReason::NoConfig as u8, Hook::FromNetdev as u8, 1)]
    );
    let events = datapath.drain_events();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].reason, events[0].file),
        (165, SourceFile::Nat as u8)
    );
    assert_eq!(datapath.conntrack().len(), 0, "no conntrack entry");
}

#[test]
fn a_pod_flow_to_a_remote_backend_is_never_snated() {
    let datapath = snat_datapath(SNAT_PORT_MIN, SNAT_PORT_MAX);
    let run = datapath.run(Hook::FromPod, &tcp_syn("10.244.0.7:40000", VIP));
    assert_eq!(run.verdict, TC_ACT_UNSPEC);
    assert_eq!(run.frame, tcp_syn("10.244.0.7:40000", REMOTE));
}
