//! The IPv6 packet path (`lb-ebpf/src/ipv6.rs` and its `*6.rs` modules) with
//! `BPF_PROG_TEST_RUN` on crafted IPv6 frames: the pass-through filters (`LB6_VIP_FILTER`,
//! `LB6_REPLY_SRCS`), DNAT of TCP and UDP to a backend, reverse NAT of
//! the reply, an established flow keeping its backend, the external-ClusterIP policy (174 and a
//! `DropEvent6`) and source ranges (177), what passes untouched (no frontend, neighbour
//! discovery and other ICMPv6), extension headers, and SNAT to a remote backend with its
//! reply, ICMPv6 errors about translated flows and "packet too big" on the SNAT path (tables,
//! and real traffic: ECONNREFUSED through a ClusterIP, path-MTU discovery), hairpin, and the
//! IPv6 flows in the rows `lbctl bpf ct list` shows. Every rewritten frame's L4 or ICMPv6
//! checksum is verified over the IPv6 pseudo-header.
//!
//! Frontends are provisioned as the IPv4 datapath tests provision theirs: `DesiredService`s
//! from `lb_tests::fixture::service` synced by the agent's `Syncer` into the `LB6_*` maps.

use aya::maps::{Array, Map, MapData};
use lb_agent::model::{DesiredService, FrontendKind};
use lb_common::{
    config::{CONFIG_F_EXTERNAL_CLUSTER_IP, DatapathConfig, EVENTS_PER_SEC},
    conntrack::{CT_F_SNAT, CT_REPLY, CT_SERVICE},
    drop::{DropReason, Hook, SourceFile},
    event::{EVENT_DROP6, tcp_flags},
    filter::{FilterWord, reply_slot6, vip_slot6, word_and_flag},
    maps, proto,
    service::{ServiceEntry, ServiceKey6},
};
use lb_testkit::{packet::arp_request, packet6::*};
use lb_tests::{
    fixture::{Datapath, ServiceExt as _, TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC, service},
    ipv6::{CLIENT_MAC, FibNetns6, NODE_MAC, PEER_NODE_MAC, conntrack6, drain_events6},
};

const POD: &str = "[fd00:244:1::7]:40000";
const CLIENT: &str = "[fd00:56::10]:33802";
const VIP: &str = "[fd00:96::10]:80";
const BACKEND: &str = "[fd00:244:1::5]:8080";
const BACKEND2: &str = "[fd00:244:1::6]:8080";

/// A ClusterIP on `frontend` (`"[vip]:port"`) of `proto` (`proto::TCP` or `proto::UDP`)
/// with active, local `backends` (`"[addr]:port"`), as the model would yield it.
fn service6(frontend: &str, proto: u8, backends: &[&str]) -> DesiredService {
    let protocol = match proto {
        proto::TCP => "TCP",
        proto::UDP => "UDP",
        other => panic!("no frontend of protocol {other}"),
    };
    service(&format!("{frontend}/{protocol}"), backends)
}

/// A freshly loaded datapath with `flags`, `services` synced into it by the agent's syncer.
fn load(flags: u32, services: &[DesiredService]) -> Datapath {
    let mut datapath = Datapath::load();
    datapath.set_config(DatapathConfig {
        flags,
        events_per_sec: EVENTS_PER_SEC,
        ..DatapathConfig::default()
    });
    datapath.sync(services);
    datapath
}

/// Runs `input` and asserts that it comes out as exactly `want`, with a valid checksum.
fn assert_rewritten(datapath: &Datapath, hook: Hook, input: &[u8], want: &[u8], what: &str) {
    let run = datapath.run(hook, input);
    assert_eq!(run.verdict, TC_ACT_UNSPEC, "{what}: verdict");
    read_checked6(&run.frame);
    assert_eq!(run.frame, want, "{what}: rewritten frame");
    assert_eq!(datapath.all_drops(), vec![], "{what}: no drop");
}

/// Runs `input` and asserts that it passes byte for byte.
fn assert_unchanged(datapath: &Datapath, hook: Hook, input: &[u8], what: &str) {
    let run = datapath.run(hook, input);
    assert_eq!(run.verdict, TC_ACT_UNSPEC, "{what}: verdict");
    assert_eq!(run.frame, input, "{what}: must pass byte for byte");
    assert_eq!(datapath.all_drops(), vec![], "{what}: no drop");
}

/// Runs `input` and asserts that it is dropped for `reason`, counted once, with one
/// `DropEvent6`, which is returned.
fn assert_dropped(
    datapath: &Datapath,
    hook: Hook,
    input: &[u8],
    reason: DropReason,
    what: &str,
) -> lb_common::event::DropEvent6 {
    let run = datapath.run(hook, input);
    assert_eq!(run.verdict, TC_ACT_SHOT, "{what}: verdict");
    assert_eq!(
        datapath.all_drops(),
        vec![(reason as u8, hook as u8, 1)],
        "{what}: one drop for {reason:?}"
    );
    let events = drain_events6(datapath);
    assert_eq!(events.len(), 1, "{what}: one event");
    assert_eq!(events[0].kind, EVENT_DROP6, "{what}: an IPv6 event");
    assert_eq!(events[0].reason, reason as u8, "{what}: event reason");
    assert_eq!(events[0].len as usize, input.len(), "{what}: event length");
    events[0]
}

#[test]
fn tcp_and_udp_to_a_cluster_ip_are_dnated_and_replies_reverse_nated() {
    for (proto, name) in [(proto::TCP, "TCP"), (proto::UDP, "UDP")] {
        let datapath = load(0, &[service6(VIP, proto, &[BACKEND])]);
        let (request, translated, reply, restored) = if proto == proto::TCP {
            (
                tcp6_syn(POD, VIP),
                tcp6_syn(POD, BACKEND),
                tcp6_syn_ack(BACKEND, POD),
                tcp6_syn_ack(VIP, POD),
            )
        } else {
            (
                udp6(POD, VIP),
                udp6(POD, BACKEND),
                udp6(BACKEND, POD),
                udp6(VIP, POD),
            )
        };
        assert_rewritten(&datapath, Hook::FromPod, &request, &translated, name);
        let ct = if proto == proto::TCP {
            maps::LB6_CT_TCP
        } else {
            maps::LB6_CT_ANY
        };
        let entries = conntrack6(&datapath, ct);
        let mut kinds: Vec<u8> = entries.iter().map(|(_, e)| e.kind()).collect();
        kinds.sort_unstable();
        assert_eq!(kinds, vec![CT_SERVICE, CT_REPLY], "{name}: both entries");
        assert_rewritten(&datapath, Hook::FromPod, &reply, &restored, name);
    }
}

#[test]
fn an_established_flow_keeps_its_backend() {
    let datapath = load(0, &[service6(VIP, proto::TCP, &[BACKEND, BACKEND2])]);
    let first = datapath.run(Hook::FromPod, &tcp6_syn(POD, VIP));
    let chosen = read_checked6(&first.frame).dst;
    assert!(
        [addr6(BACKEND), addr6(BACKEND2)].contains(&chosen),
        "translated to a backend: {chosen}"
    );
    let chosen = format!("{chosen}");
    for _ in 0..16 {
        assert_rewritten(
            &datapath,
            Hook::FromPod,
            &tcp6_ack(POD, VIP),
            &tcp6_ack(POD, &chosen),
            "established",
        );
    }
}

#[test]
fn external_cluster_ip_is_dropped_with_174_then_allowed_by_the_flag() {
    let services = [service6(VIP, proto::TCP, &[BACKEND])];
    let mut datapath = load(0, &services);
    let input = tcp6_syn(CLIENT, VIP);
    let event = assert_dropped(
        &datapath,
        Hook::FromNetdev,
        &input,
        DropReason::IsClusterIp,
        "external ClusterIP",
    );
    assert_eq!(event.file, SourceFile::Policy6 as u8);
    assert!(event.line > 0);
    assert_eq!(event.hook, Hook::FromNetdev as u8);
    assert_eq!(event.proto, proto::TCP);
    assert_eq!(event.tcp_flags, tcp_flags::SYN);
    assert_eq!(event.saddr, ip6_words(*addr6(CLIENT).ip()));
    assert_eq!(event.daddr, ip6_words(*addr6(VIP).ip()));
    assert_eq!(event.sport, 33802u16.to_be());
    assert_eq!(event.dport, 80u16.to_be());
    assert_eq!(
        conntrack6(&datapath, maps::LB6_CT_TCP),
        vec![],
        "no entry for a refused flow"
    );

    datapath.set_config(DatapathConfig {
        flags: CONFIG_F_EXTERNAL_CLUSTER_IP,
        events_per_sec: EVENTS_PER_SEC,
        ..DatapathConfig::default()
    });
    let run = datapath.run(Hook::FromNetdev, &input);
    assert_eq!(run.verdict, TC_ACT_UNSPEC);
    read_checked6(&run.frame);
    assert_eq!(
        run.frame,
        tcp6_syn(CLIENT, BACKEND),
        "DNATed with the flag on"
    );
}

#[test]
fn a_load_balancer_admits_only_its_source_ranges() {
    let service = service6(VIP, proto::TCP, &[BACKEND])
        .kind(FrontendKind::LoadBalancer)
        .source_ranges(&["fd00:56::/64"]);
    let datapath = load(0, &[service]);
    assert_rewritten(
        &datapath,
        Hook::FromNetdev,
        &tcp6_syn(CLIENT, VIP),
        &tcp6_syn(CLIENT, BACKEND),
        "inside the range",
    );
    let outsider = "[fd00:57::10]:33802";
    let event = assert_dropped(
        &datapath,
        Hook::FromNetdev,
        &tcp6_syn(outsider, VIP),
        DropReason::NotInSrcRange,
        "outside the range",
    );
    assert_eq!(event.file, SourceFile::Policy6 as u8);
}

#[test]
fn what_lb_does_not_translate_passes_untouched() {
    let datapath = load(0, &[service6(VIP, proto::TCP, &[BACKEND])]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("no frontend", tcp6_syn(POD, "[fd00:96::99]:80")),
        ("UDP to a TCP-only address", udp6(POD, "[fd00:96::99]:53")),
        ("router solicitation", icmp6("fe80::7", "ff02::2", 133)),
        ("router advertisement", icmp6("fe80::1", "ff02::1", 134)),
        (
            "neighbour solicitation for the VIP",
            icmp6("fd00:244:1::7", "fd00:96::10", 135),
        ),
        (
            "neighbour advertisement",
            icmp6("fd00:244:1::5", "fd00:244:1::7", 136),
        ),
        ("redirect", icmp6("fe80::1", "fd00:244:1::7", 137)),
        (
            "echo request elsewhere",
            icmp6("fd00:244:1::7", "fd00:244:1::5", 128),
        ),
        ("not IP", arp_request()),
    ];
    for hook in [Hook::FromPod, Hook::FromNetdev] {
        for (what, frame) in &cases {
            assert_unchanged(&datapath, hook, frame, what);
        }
    }
}

#[test]
fn a_vip_refuses_unknown_ports_and_protocols() {
    let cases = [
        (
            "unknown port",
            tcp6_syn(POD, "[fd00:96::10]:81"),
            DropReason::NoService,
        ),
        (
            "SCTP",
            ip6_proto("fd00:244:1::7", "fd00:96::10", 132),
            DropReason::UnknownL4,
        ),
    ];
    for (what, frame, reason) in cases {
        let datapath = load(0, &[service6(VIP, proto::TCP, &[BACKEND])]);
        assert_dropped(&datapath, Hook::FromPod, &frame, reason, what);
    }
}

#[test]
fn extension_headers_are_walked() {
    let chains: [&[Ext]; 4] = [
        &[Ext::HopByHop],
        &[Ext::HopByHop, Ext::DestOptions { len8: 2 }],
        &[Ext::HopByHop, Ext::Routing, Ext::DestOptions { len8: 1 }],
        &[Ext::Fragment {
            offset: 0,
            more: true,
        }],
    ];
    for chain in chains {
        let datapath = load(0, &[service6(VIP, proto::UDP, &[BACKEND])]);
        let frame = Frame6::udp(POD, VIP).with_ext(chain);
        assert_rewritten(
            &datapath,
            Hook::FromPod,
            &frame.bytes(),
            &frame.between(POD, BACKEND).bytes(),
            &format!("{chain:?}"),
        );
    }
    let too_many = [
        Ext::HopByHop,
        Ext::DestOptions { len8: 1 },
        Ext::Routing,
        Ext::DestOptions { len8: 1 },
        Ext::DestOptions { len8: 1 },
    ];
    let datapath = load(0, &[service6(VIP, proto::UDP, &[BACKEND])]);
    let event = assert_dropped(
        &datapath,
        Hook::FromPod,
        &Frame6::udp(POD, VIP).with_ext(&too_many).bytes(),
        DropReason::Invalid,
        "five extension headers to a VIP",
    );
    assert_eq!(event.file, SourceFile::Lb6 as u8);
    let datapath = load(0, &[service6(VIP, proto::UDP, &[BACKEND])]);
    assert_unchanged(
        &datapath,
        Hook::FromPod,
        &Frame6::udp(POD, "[fd00:96::99]:53")
            .with_ext(&too_many)
            .bytes(),
        "five extension headers elsewhere",
    );
    assert_dropped(
        &datapath,
        Hook::FromPod,
        &ip6_proto_later_fragment("fd00:244:1::7", "fd00:96::10", 132),
        DropReason::FragNoSupport,
        "a later fragment of another protocol to a VIP",
    );
}

/// A later fragment (offset 185 × 8) of a datagram of protocol `proto`.
fn ip6_proto_later_fragment(src: &str, dst: &str, proto: u8) -> Vec<u8> {
    let mut frame = Frame6::udp(&format!("[{src}]:1"), &format!("[{dst}]:1"))
        .with_ext(&[Ext::Fragment {
            offset: 185,
            more: false,
        }])
        .bytes();
    // The fragment header's next header.
    frame[14 + 40] = proto;
    frame
}

/// `frame` with its IPv6 addresses replaced (nothing else: a later fragment has no L4 header
/// for the datapath to rewrite).
fn with_addrs6(frame: &[u8], src: &str, dst: &str) -> Vec<u8> {
    let mut out = frame.to_vec();
    out[22..38].copy_from_slice(&addr6(src).ip().octets());
    out[38..54].copy_from_slice(&addr6(dst).ip().octets());
    out
}

#[test]
fn later_fragments_follow_their_first_fragment() {
    let datapath = load(0, &[service6(VIP, proto::UDP, &[BACKEND])]);
    let first = Frame6::udp(POD, VIP).with_ext(&[Ext::Fragment {
        offset: 0,
        more: true,
    }]);
    assert_rewritten(
        &datapath,
        Hook::FromPod,
        &first.bytes(),
        &first.between(POD, BACKEND).bytes(),
        "first fragment",
    );
    let later = Frame6::udp(POD, VIP)
        .with_ext(&[Ext::Fragment {
            offset: 185,
            more: false,
        }])
        .bytes();
    let run = datapath.run(Hook::FromPod, &later);
    assert_eq!(run.verdict, TC_ACT_UNSPEC, "later fragment: verdict");
    assert_eq!(
        run.frame,
        with_addrs6(&later, POD, BACKEND),
        "later fragment: addresses translated, nothing else"
    );
    // The backend's fragmented reply, first fragment then a later one.
    let reply_first = Frame6::udp(BACKEND, POD).with_ext(&[Ext::Fragment {
        offset: 0,
        more: true,
    }]);
    assert_rewritten(
        &datapath,
        Hook::FromPod,
        &reply_first.bytes(),
        &reply_first.between(VIP, POD).bytes(),
        "first fragment of the reply",
    );
    let reply_later = Frame6::udp(BACKEND, POD)
        .with_ext(&[Ext::Fragment {
            offset: 185,
            more: false,
        }])
        .bytes();
    let run = datapath.run(Hook::FromPod, &reply_later);
    assert_eq!(
        run.frame,
        with_addrs6(&reply_later, VIP, POD),
        "later reply fragment"
    );
    assert_eq!(datapath.all_drops(), vec![]);

    let datapath = load(0, &[service6(VIP, proto::UDP, &[BACKEND])]);
    let event = assert_dropped(
        &datapath,
        Hook::FromPod,
        &later,
        DropReason::FragNotFound,
        "a later fragment to a VIP without its first",
    );
    assert_eq!(event.file, SourceFile::Frag6 as u8);
    let elsewhere = Frame6::udp(POD, "[fd00:96::99]:53")
        .with_ext(&[Ext::Fragment {
            offset: 185,
            more: false,
        }])
        .bytes();
    let datapath = load(0, &[service6(VIP, proto::UDP, &[BACKEND])]);
    assert_unchanged(
        &datapath,
        Hook::FromPod,
        &elsewhere,
        "a later fragment elsewhere",
    );
}

#[test]
fn external_flows_to_a_remote_backend_are_snated_and_their_replies_restored() {
    let fib = FibNetns6::new("v6snat");
    let remote = "[fd00:244:2::5]:8080";
    let service = service6(VIP, proto::TCP, &[remote])
        .kind(FrontendKind::ExternalIp)
        .remote();
    let mut datapath = load(0, &[service]);
    let node = ip6_words(ip6("fd00:56::4"));
    datapath.set_config(DatapathConfig {
        events_per_sec: EVENTS_PER_SEC,
        node_addr6: node,
        snat_port_min: 40000,
        snat_port_max: 40000,
        ..DatapathConfig::default()
    });
    let snat = "[fd00:56::4]:40000";
    let (request, reply) = fib.enter(|| {
        let request = datapath.run_on(Hook::FromNetdev, &tcp6_syn(CLIENT, VIP), fib.ifindex);
        let reply = datapath.run_on(Hook::FromNetdev, &tcp6_syn_ack(remote, snat), fib.ifindex);
        (request, reply)
    });
    assert_eq!(request.verdict, TC_ACT_REDIRECT, "request redirected");
    read_checked6(&request.frame);
    assert_eq!(
        request.frame,
        Frame6::tcp(snat, remote, tcp_flags::SYN)
            .with_macs(NODE_MAC, PEER_NODE_MAC)
            .bytes(),
        "request SNATed and DNATed, to the other node"
    );
    let service_entry = conntrack6(&datapath, maps::LB6_CT_TCP)
        .into_iter()
        .find(|(_, e)| e.kind() == CT_SERVICE)
        .expect("a service entry")
        .1
        .service();
    assert_ne!(service_entry.flags & CT_F_SNAT, 0, "flagged SNAT");
    assert_eq!(service_entry.snat_addr, node);
    assert_eq!(reply.verdict, TC_ACT_REDIRECT, "reply redirected");
    read_checked6(&reply.frame);
    assert_eq!(
        reply.frame,
        Frame6::tcp(VIP, CLIENT, tcp_flags::SYN | tcp_flags::ACK)
            .with_macs(NODE_MAC, CLIENT_MAC)
            .bytes(),
        "reply restored to VIP → client, back to the client"
    );
    assert_eq!(datapath.all_drops(), vec![]);
}

#[test]
fn snat_without_a_node_ipv6_address_is_dropped_with_165() {
    let remote = "[fd00:244:2::5]:8080";
    let service = service6(VIP, proto::TCP, &[remote])
        .kind(FrontendKind::ExternalIp)
        .remote();
    let datapath = load(0, &[service]);
    let event = assert_dropped(
        &datapath,
        Hook::FromNetdev,
        &tcp6_syn(CLIENT, VIP),
        DropReason::NoConfig,
        "no node address",
    );
    assert_eq!(event.file, SourceFile::Nat6 as u8);
    assert_eq!(conntrack6(&datapath, maps::LB6_CT_TCP), vec![]);
}

/// Real traffic: the `Topology` node made dual stack (`lb_tests::ipv6::wire_ipv6`), the
/// programs attached with TCX as the agent attaches them, an IPv6 ClusterIP synced into the
/// maps. A client pod's curl to `[fd00:96::10]:80` gets 200 from a backend pod that sees the
/// pod's own address; the same request from the external client is dropped with 174 at
/// from-netdev (a `DropEvent6` per SYN) and never answered.
#[test]
fn an_ipv6_pod_reaches_a_cluster_ip_and_an_external_client_does_not() {
    use lb_tests::{
        ipv6::{addrs, wire_ipv6},
        topology::{BACKEND_DEVS, CLIENT_DEV, NODE_DEV, Topology},
    };
    let topology = Topology::new("ipv6_cluster_ip");
    wire_ipv6(&topology);
    let _servers: Vec<_> = topology
        .backends
        .iter()
        .zip(addrs::BACKENDS)
        .map(|(pod, ip)| {
            let ip: std::net::Ipv6Addr = ip.parse().expect("an IPv6 backend address");
            lb_testkit::ok(
                lb_testkit::servers::http(&pod.ns, ip, 8080, topology.dir()),
                "IPv6 HTTP server",
            )
        })
        .collect();
    let backends = addrs::BACKENDS.map(|ip| format!("[{ip}]:8080"));
    let mut datapath = load(
        0,
        &[service6(VIP, proto::TCP, &[&backends[0], &backends[1]])],
    );
    topology
        .node
        .within(|| {
            datapath.attach(Hook::FromNetdev, NODE_DEV);
            for dev in [CLIENT_DEV, BACKEND_DEVS[0], BACKEND_DEVS[1]] {
                datapath.attach(Hook::FromPod, dev);
            }
        })
        .expect("enter the node");
    let url = "http://[fd00:96::10]:80/";
    let curl = |ns: &lb_testkit::Netns, timeout: &str| {
        ns.exec("curl", &["-sSi", "-g", "--max-time", timeout, url])
            .expect("run curl")
    };

    let outcome = curl(&topology.client.ns, "5");
    assert!(outcome.success, "the pod's request: {outcome:?}");
    assert!(
        outcome.stdout.starts_with("HTTP/1.0 200") || outcome.stdout.starts_with("HTTP/1.1 200"),
        "200: {outcome:?}"
    );
    assert!(
        outcome
            .stdout
            .contains(&format!("X-Client-IP: {}", addrs::CLIENT)),
        "the backend sees the pod's own address: {outcome:?}"
    );
    assert!(
        addrs::BACKENDS
            .iter()
            .any(|ip| outcome.stdout.contains(&format!("X-Pod-IP: {ip}"))),
        "a backend answered: {outcome:?}"
    );
    assert_eq!(datapath.all_drops(), vec![], "nothing dropped");

    let outcome = curl(&topology.external, "2");
    assert!(
        !outcome.success,
        "the external client must not reach the ClusterIP: {outcome:?}"
    );
    let drops = lb_testkit::wait_until(
        "a drop counted with 174",
        std::time::Duration::from_secs(5),
        || {
            let count = datapath.drop_count(DropReason::IsClusterIp, Hook::FromNetdev);
            if count >= 1 {
                Ok(Some(count))
            } else {
                Err(format!("{count}"))
            }
        },
    )
    .unwrap_or_else(|err| panic!("{err}"));
    let events = drain_events6(&datapath);
    assert_eq!(events.len() as u64, drops, "one event per drop: {events:?}");
    for event in &events {
        assert_eq!(event.reason, DropReason::IsClusterIp as u8);
        assert_eq!(event.hook, Hook::FromNetdev as u8);
        assert_eq!(event.saddr, ip6_words(ip6(addrs::EXTERNAL)));
        assert_eq!(event.daddr, ip6_words(ip6("fd00:96::10")));
        assert_eq!(event.tcp_flags, tcp_flags::SYN);
    }
    assert_eq!(
        datapath.all_drops(),
        vec![(DropReason::IsClusterIp as u8, Hook::FromNetdev as u8, drops)],
        "only 174 at from-netdev"
    );
}

#[test]
fn a_node_port_on_the_node_ipv6_address_is_dnated_and_its_reply_redirected() {
    use lb_common::conntrack::CT_F_NODE_PORT;
    let fib = FibNetns6::new("v6nodeport");
    let node_port = "[fd00:56::4]:30080";
    let service = service6(node_port, proto::TCP, &[BACKEND]).kind(FrontendKind::NodePort);
    let datapath = load(0, &[service]);
    let (request, reply) = fib.enter(|| {
        let request = datapath.run_on(Hook::FromNetdev, &tcp6_syn(CLIENT, node_port), fib.ifindex);
        let reply = datapath.run_on(Hook::FromPod, &tcp6_syn_ack(BACKEND, CLIENT), fib.ifindex);
        (request, reply)
    });
    assert_eq!(
        request.verdict, TC_ACT_UNSPEC,
        "a local backend: to the stack"
    );
    read_checked6(&request.frame);
    assert_eq!(request.frame, tcp6_syn(CLIENT, BACKEND), "DNATed");
    assert!(
        conntrack6(&datapath, maps::LB6_CT_TCP)
            .iter()
            .all(|(_, e)| e.flags() & CT_F_NODE_PORT != 0),
        "both entries flagged node port"
    );
    assert_eq!(
        reply.verdict, TC_ACT_REDIRECT,
        "the reply leaves by redirect"
    );
    read_checked6(&reply.frame);
    assert_eq!(
        reply.frame,
        Frame6::tcp(node_port, CLIENT, tcp_flags::SYN | tcp_flags::ACK)
            .with_macs(NODE_MAC, CLIENT_MAC)
            .bytes(),
        "from the node port, to the client"
    );
    assert_eq!(datapath.all_drops(), vec![]);
}

#[test]
fn a_udp_datagram_without_checksum_keeps_it_zero() {
    let datapath = load(0, &[service6(VIP, proto::UDP, &[BACKEND])]);
    let frame = Frame6 {
        l4: L4v6::Udp { checksum: false },
        ..Frame6::udp(POD, VIP)
    };
    let run = datapath.run(Hook::FromPod, &frame.bytes());
    assert_eq!(run.verdict, TC_ACT_UNSPEC);
    assert_eq!(
        run.frame,
        frame.between(POD, BACKEND).bytes(),
        "DNATed, checksum still 0 (its receiver drops it, as without lb)"
    );
}

#[test]
fn a_frontend_without_endpoints_answers_icmpv6_port_unreachable() {
    for (what, input) in [
        ("TCP", tcp6_syn(POD, VIP)),
        (
            "UDP behind extension headers",
            Frame6::udp(POD, VIP)
                .with_ext(&[Ext::HopByHop, Ext::DestOptions { len8: 1 }])
                .bytes(),
        ),
    ] {
        let proto = if what == "TCP" {
            proto::TCP
        } else {
            proto::UDP
        };
        // No endpoints at all: the model yields the frontend without backends.
        let datapath = load(0, &[service6(VIP, proto, &[])]);
        let run = datapath.run(Hook::FromPod, &input);
        assert_eq!(run.verdict, TC_ACT_REDIRECT, "{what}: answered");
        let out = &run.frame;
        assert_eq!(&out[..6], &input[6..12], "{what}: back to the sender's MAC");
        assert_eq!(
            &out[6..12],
            &input[..6],
            "{what}: from the MAC it was sent to"
        );
        assert_eq!(&out[12..14], &[0x86, 0xdd], "{what}: IPv6");
        let ip = &out[14..];
        assert_eq!(ip[6], 58, "{what}: ICMPv6");
        assert_eq!(&ip[8..24], &input[14 + 24..14 + 40], "{what}: from the VIP");
        assert_eq!(
            &ip[24..40],
            &input[14 + 8..14 + 24],
            "{what}: to the sender"
        );
        let icmp = &ip[40..];
        assert_eq!(
            usize::from(u16::from_be_bytes([ip[4], ip[5]])),
            icmp.len(),
            "{what}: payload length"
        );
        assert_eq!((icmp[0], icmp[1]), (1, 4), "{what}: port unreachable");
        let mut zeroed = icmp.to_vec();
        zeroed[2..4].copy_from_slice(&[0, 0]);
        let src = std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).unwrap());
        let dst = std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).unwrap());
        assert_eq!(
            u16::from_be_bytes([icmp[2], icmp[3]]),
            l4_checksum(&src, &dst, 58, &zeroed),
            "{what}: ICMPv6 checksum"
        );
        let quote = &icmp[8..];
        let headers = input.len() - 14 - 18 - if proto == proto::TCP { 20 } else { 8 };
        assert_eq!(
            quote,
            &input[14..14 + headers + 8],
            "{what}: quotes the headers and the ports"
        );
        assert_eq!(
            datapath.all_drops(),
            vec![(DropReason::NoService as u8, Hook::FromPod as u8, 1)],
            "{what}: counted as 158"
        );
        let events = drain_events6(&datapath);
        assert_eq!(events.len(), 1, "{what}: one event");
        assert_eq!(events[0].file, SourceFile::Icmp6 as u8);
        assert_eq!(conntrack6(&datapath, maps::LB6_CT_TCP), vec![]);
    }
}

/// Cost per packet of the IPv6 paths under `BPF_PROG_TEST_RUN`, set up as
/// `datapath_bench.rs` sets up IPv4's (pass-through to no VIP; an established flow whose DNAT
/// turns the packet into the next packet of a second flow leading back; a reply's rev-NAT;
/// new flows, one run each). Run with `cargo test -p lb-tests --test datapath_ipv6 --
/// --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a check; run it explicitly"]
fn cost_per_packet_of_the_ipv6_paths() {
    const REPEAT: u32 = 100_000;
    let a_vip = "[fd00:96::10]:80";
    let b_vip = "[fd00:96::11]:81";
    let datapath = load(
        0,
        &[
            service6(a_vip, proto::TCP, &[b_vip]),
            service6(b_vip, proto::TCP, &[a_vip]),
        ],
    );
    let pass = datapath.run_repeat(Hook::FromPod, &tcp6_ack(POD, "[fd00:96::99]:80"), REPEAT);
    assert_eq!(pass.verdict, TC_ACT_UNSPEC);
    let a = tcp6_ack(POD, a_vip);
    let b = datapath.run(Hook::FromPod, &a).frame;
    assert_eq!(b, tcp6_ack(POD, b_vip));
    assert_eq!(
        datapath.run(Hook::FromPod, &b).frame,
        a,
        "B leads back to A"
    );
    let established = datapath.run_repeat(Hook::FromPod, &a, REPEAT);
    assert_eq!(established.verdict, TC_ACT_UNSPEC);
    assert_eq!(
        conntrack6(&datapath, maps::LB6_CT_TCP).len(),
        4,
        "only hits"
    );

    let other = load(0, &[service6(VIP, proto::TCP, &[BACKEND])]);
    other.run(Hook::FromPod, &tcp6_syn(POD, VIP));
    // Each run is a fresh copy of the backend's reply: a reply-entry hit and its rev-NAT.
    let replies = (0..20_000)
        .map(|_| other.run(Hook::FromPod, &tcp6_ack(BACKEND, POD)).duration)
        .sum::<std::time::Duration>()
        / 20_000;
    let flows = 20_000u16;
    let mut total = std::time::Duration::ZERO;
    for port in 0..flows {
        // Clients on another prefix than the backend's: none of them is the backend itself,
        // whose flow would be hairpinned.
        let syn = tcp6_syn(
            &format!("[fd00:244:2::{:x}]:{}", 1 + port / 250, 30_000 + port),
            VIP,
        );
        let run = other.run(Hook::FromPod, &syn);
        assert_eq!(run.verdict, TC_ACT_UNSPEC);
        total += run.duration;
    }
    println!(
        "IPv6 pass-through:     {:>5} ns/packet (repeat {REPEAT})",
        pass.duration.as_nanos()
    );
    println!(
        "IPv6 established flow: {:>5} ns/packet (repeat {REPEAT})",
        established.duration.as_nanos()
    );
    println!(
        "IPv6 reply (rev-NAT):  {:>5} ns/packet (mean of 20000 single runs)",
        replies.as_nanos()
    );
    println!(
        "IPv6 new flow:         {:>5} ns/packet (mean of {flows} single runs)",
        (total / u32::from(flows)).as_nanos()
    );
}

#[test]
fn client_ip_affinity_sends_a_client_s_new_flows_to_one_backend() {
    let service = service6(VIP, proto::TCP, &[BACKEND, BACKEND2]).affinity(10_800);
    let datapath = load(0, &[service]);
    let seen: std::collections::BTreeSet<_> = (0..20u16)
        .map(|i| {
            let client = format!("[fd00:244:1::7]:{}", 40_000 + i);
            let run = datapath.run(Hook::FromPod, &tcp6_syn(&client, VIP));
            assert_eq!(run.verdict, TC_ACT_UNSPEC);
            read_checked6(&run.frame).dst
        })
        .collect();
    // Without affinity all 20 would land on one backend with probability 2^-19.
    assert_eq!(
        seen.len(),
        1,
        "one backend for all of the client's flows: {seen:?}"
    );
}

/// The echo reply the VIP sends for the echo request `request`: MACs and addresses swapped,
/// type 129, the checksum computed afresh.
fn echo_reply_to(request: &[u8]) -> Vec<u8> {
    let mut out = request.to_vec();
    out[..6].copy_from_slice(&request[6..12]);
    out[6..12].copy_from_slice(&request[..6]);
    out[22..38].copy_from_slice(&request[38..54]);
    out[38..54].copy_from_slice(&request[22..38]);
    out[54] = 129;
    out[56..58].copy_from_slice(&[0, 0]);
    let src = std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&out[22..38]).unwrap());
    let dst = std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&out[38..54]).unwrap());
    let sum = l4_checksum(&src, &dst, 58, &out[54..]);
    out[56..58].copy_from_slice(&sum.to_be_bytes());
    out
}

#[test]
fn an_echo_request_to_a_vip_is_answered_by_the_vip() {
    let datapath = load(0, &[service6(VIP, proto::TCP, &[BACKEND])]);
    let request = icmp6("fd00:244:1::7", "fd00:96::10", 128);
    let run = datapath.run(Hook::FromPod, &request);
    assert_eq!(run.verdict, TC_ACT_REDIRECT, "answered");
    assert_eq!(run.frame, echo_reply_to(&request), "the echo reply");
    assert_eq!(datapath.all_drops(), vec![]);

    let from_outside = icmp6("fd00:56::10", "fd00:96::10", 128);
    let event = assert_dropped(
        &datapath,
        Hook::FromNetdev,
        &from_outside,
        DropReason::IsClusterIp,
        "a ClusterIP pinged from outside",
    );
    assert_eq!(event.proto, 58);
}

/// `lbctl bpf ct list` lists IPv6 flows beside IPv4 ones: flows created by the programs
/// (`BPF_PROG_TEST_RUN`) in `LB6_CT_TCP`, `LB6_CT_ANY` and `LB4_CT_ANY` are read back by the
/// agent's `Conntrack` and made into the rows the API serves (`tcp6`/`any6` with bracketed
/// addresses, after the IPv4 maps' rows), each direction with its own addresses.
#[test]
fn the_conntrack_list_shows_ipv6_flows_beside_ipv4_ones() {
    use lb_testkit::packet::{read_checked, udp};
    let datapath = load(
        0,
        &[
            service6(VIP, proto::TCP, &[BACKEND]),
            service6("[fd00:96::10]:53", proto::UDP, &[BACKEND2]),
            service("10.96.0.10:53/UDP", &["10.244.1.42:53"]),
        ],
    );
    assert_rewritten(
        &datapath,
        Hook::FromPod,
        &tcp6_syn(POD, VIP),
        &tcp6_syn(POD, BACKEND),
        "TCP request",
    );
    assert_rewritten(
        &datapath,
        Hook::FromPod,
        &tcp6_syn_ack(BACKEND, POD),
        &tcp6_syn_ack(VIP, POD),
        "TCP reply",
    );
    assert_rewritten(
        &datapath,
        Hook::FromPod,
        &udp6(POD, "[fd00:96::10]:53"),
        &udp6(POD, BACKEND2),
        "UDP request",
    );
    let run = datapath.run(Hook::FromPod, &udp("10.244.0.7:40000", "10.96.0.10:53"));
    assert_eq!(run.verdict, TC_ACT_UNSPEC, "IPv4 UDP request");
    read_checked(&run.frame);
    assert_eq!(
        run.frame,
        udp("10.244.0.7:40000", "10.244.1.42:53"),
        "IPv4 UDP request DNATed"
    );

    let rows = datapath.ct_rows();
    // Every entry here lives 60 s (the defaults) from its last packet: a TCP flow's before its
    // handshake completes (`bpf-ct-timeout-regular-tcp-syn`) and a UDP flow's
    // (`bpf-ct-timeout-regular-any`, `bpf-ct-timeout-service-any`).
    for row in &rows {
        assert!(
            (50..=60).contains(&row.expires_in),
            "a live entry with its lifetime left: {row:?}"
        );
    }
    let mut lines: Vec<String> = rows
        .iter()
        .map(|row| {
            let mut line = format!(
                "{} {} {} {} -> {} flags=[{}]",
                row.map,
                row.proto,
                row.direction.to_uppercase(),
                row.source,
                row.destination,
                row.flags.join(" "),
            );
            for (name, value) in [
                ("backend", &row.backend),
                ("vip", &row.vip),
                ("client", &row.client),
            ] {
                if let Some(value) = value {
                    line.push_str(&format!(" {name}={value}"));
                }
            }
            line
        })
        .collect();
    // Rows come per map in the maps' order (IPv4's, then IPv6's); within a map, in hash order.
    let map_order = |line: &String| {
        ["any ", "tcp6 ", "any6 "]
            .iter()
            .position(|map| line.starts_with(map))
    };
    assert!(
        lines.is_sorted_by_key(map_order),
        "IPv4 maps first: {lines:#?}"
    );
    lines.sort();
    assert_eq!(
        lines,
        [
            "any UDP REPLY 10.244.1.42:53 -> 10.244.0.7:40000 flags=[] \
             vip=10.96.0.10:53 client=10.244.0.7:40000",
            "any UDP SERVICE 10.244.0.7:40000 -> 10.96.0.10:53 flags=[] backend=10.244.1.42:53",
            "any6 UDP REPLY [fd00:244:1::6]:8080 -> [fd00:244:1::7]:40000 flags=[] \
             vip=[fd00:96::10]:53 client=[fd00:244:1::7]:40000",
            "any6 UDP SERVICE [fd00:244:1::7]:40000 -> [fd00:96::10]:53 flags=[] \
             backend=[fd00:244:1::6]:8080",
            "tcp6 TCP REPLY [fd00:244:1::5]:8080 -> [fd00:244:1::7]:40000 flags=[seen-reply] \
             vip=[fd00:96::10]:80 client=[fd00:244:1::7]:40000",
            "tcp6 TCP SERVICE [fd00:244:1::7]:40000 -> [fd00:96::10]:80 flags=[seen-reply] \
             backend=[fd00:244:1::5]:8080",
        ],
        "{rows:#?}"
    );
    let ids: std::collections::BTreeSet<_> = rows.iter().map(|row| row.rev_nat).collect();
    assert_eq!(ids.len(), 3, "one service id per frontend: {rows:#?}");
}

/// The pinned IPv6 filter `name` (`LB6_VIP_FILTER` or `LB6_REPLY_SRCS`).
fn filter6(datapath: &Datapath, name: &str) -> Array<MapData, FilterWord> {
    let data = MapData::from_pin(datapath.pin_dir().join(name)).expect("open the pinned filter");
    Array::try_from(Map::Array(data)).expect("an array of filter words")
}

fn flag6(datapath: &Datapath, name: &str, slot: u32) -> u8 {
    let (word, flag) = word_and_flag(slot);
    filter6(datapath, name).get(&word, 0).expect("read a word")[flag]
}

fn vip_flag6(datapath: &Datapath, addr: &str) -> u8 {
    flag6(
        datapath,
        maps::LB6_VIP_FILTER,
        vip_slot6(&ip6_words(ip6(addr))),
    )
}

/// The reply-filter slot of TCP packets from `source` (`"[addr]:port"`).
fn reply_slot_of(source: &str) -> u32 {
    let source = addr6(source);
    reply_slot6(&ip6_words(*source.ip()), source.port().to_be(), proto::TCP)
}

#[test]
fn an_ipv6_frontend_address_is_flagged_while_it_has_a_frontend() {
    let mut datapath = load(0, &[]);
    assert_eq!(vip_flag6(&datapath, "fd00:96::10"), 0);
    datapath.sync(&[
        service6(VIP, proto::TCP, &[BACKEND]),
        service6("[fd00:96::10]:53", proto::UDP, &[BACKEND]),
    ]);
    assert_eq!(vip_flag6(&datapath, "fd00:96::10"), 1);
    datapath.sync(&[service6("[fd00:96::10]:53", proto::UDP, &[BACKEND])]);
    assert_eq!(vip_flag6(&datapath, "fd00:96::10"), 1, "DNS still needs it");
    // An unknown port of the address is still refused (158): the flag sends it the full way.
    let run = datapath.run(Hook::FromPod, &tcp6_syn(POD, "[fd00:96::10]:81"));
    assert_eq!(run.verdict, TC_ACT_SHOT);
    datapath.sync(&[]);
    assert_eq!(vip_flag6(&datapath, "fd00:96::10"), 0);
    // A restarted agent (a new syncer over the same maps) counts the frontends it finds.
    datapath.sync(&[service6(VIP, proto::TCP, &[BACKEND])]);
    datapath.behind_sync(|_| ());
    assert_eq!(vip_flag6(&datapath, "fd00:96::10"), 1);
    datapath.sync(&[]);
    assert_eq!(vip_flag6(&datapath, "fd00:96::10"), 0);
}

#[test]
fn ipv6_traffic_that_is_no_services_passes_untouched_and_untracked() {
    let datapath = load(0, &[service6(VIP, proto::TCP, &[BACKEND])]);
    for frame in [
        tcp6_syn(POD, "[fd00:244:9::9]:80"),
        tcp6_ack("[fd00:244:9::9]:80", POD),
        udp6(POD, "[fd00:244:9::9]:53"),
        // The backend's address from another port: no reply entry has that source.
        tcp6_ack("[fd00:244:1::5]:9090", POD),
    ] {
        for hook in [Hook::FromPod, Hook::FromNetdev] {
            assert_unchanged(&datapath, hook, &frame, "no service's");
        }
    }
    assert_eq!(conntrack6(&datapath, maps::LB6_CT_TCP), vec![]);
    assert_eq!(conntrack6(&datapath, maps::LB6_CT_ANY), vec![]);
}

#[test]
fn the_ipv6_reply_filter_decides_whether_a_reply_is_looked_up() {
    let datapath = load(0, &[service6(VIP, proto::TCP, &[BACKEND])]);
    assert_eq!(
        flag6(&datapath, maps::LB6_REPLY_SRCS, reply_slot_of(BACKEND)),
        0
    );
    assert_rewritten(
        &datapath,
        Hook::FromPod,
        &tcp6_syn(POD, VIP),
        &tcp6_syn(POD, BACKEND),
        "SYN",
    );
    assert_eq!(
        flag6(&datapath, maps::LB6_REPLY_SRCS, reply_slot_of(BACKEND)),
        1,
        "flagged with the reply entry"
    );
    let reply = tcp6_syn_ack(BACKEND, POD);
    assert_rewritten(
        &datapath,
        Hook::FromPod,
        &reply,
        &tcp6_syn_ack(VIP, POD),
        "reply",
    );
    // Clear the flag behind the datapath's back: the reply is no longer looked up.
    let (word, _) = word_and_flag(reply_slot_of(BACKEND));
    filter6(&datapath, maps::LB6_REPLY_SRCS)
        .set(word, FilterWord::default(), 0)
        .expect("clear the word");
    assert_unchanged(&datapath, Hook::FromPod, &reply, "reply without its flag");
}

#[test]
fn ipv6_replies_are_still_translated_after_their_service_is_gone() {
    let mut datapath = load(0, &[service6(VIP, proto::TCP, &[BACKEND])]);
    datapath.run(Hook::FromPod, &tcp6_syn(POD, VIP));
    datapath.sync(&[]);
    assert_eq!(vip_flag6(&datapath, "fd00:96::10"), 0);
    assert_rewritten(
        &datapath,
        Hook::FromPod,
        &tcp6_syn_ack(BACKEND, POD),
        &tcp6_syn_ack(VIP, POD),
        "reply of a tracked flow",
    );
}

#[test]
fn a_new_ipv6_reply_filter_starts_from_the_reply_entries_already_in_conntrack() {
    let datapath = load(0, &[service6(VIP, proto::TCP, &[BACKEND])]);
    datapath.run(Hook::FromPod, &tcp6_syn(POD, VIP));
    // As after an upgrade from a datapath without the IPv6 filter: conntrack is pinned, the
    // filter is not, so the next load creates it.
    std::fs::remove_file(datapath.pin_dir().join(maps::LB6_REPLY_SRCS)).expect("unpin");
    let bpf_root = datapath
        .pin_dir()
        .parent()
        .expect("the bpf root")
        .to_owned();
    let _reloaded = lb_agent::datapath::Datapath::load(&lb_agent::datapath::LoadOptions {
        bpf_root,
        ct_max_entries: maps::CT_MAX_ENTRIES,
        ct_any_max_entries: maps::CT_ANY_MAX_ENTRIES,
        lb_map_max: maps::SERVICES_MAX_ENTRIES,
        config: DatapathConfig::default(),
    })
    .expect("load again over the pinned maps");
    assert_eq!(
        flag6(&datapath, maps::LB6_REPLY_SRCS, reply_slot_of(BACKEND)),
        1,
        "the new filter has the flag of the reply entry conntrack holds"
    );
    assert_eq!(
        flag6(&datapath, maps::LB6_REPLY_SRCS, reply_slot_of(BACKEND2)),
        0
    );
}

/// The generation the IPv6 service entry of the only TCP flow records.
fn service_entry6(datapath: &Datapath) -> lb_common::conntrack::CtService6 {
    let entries = conntrack6(datapath, maps::LB6_CT_TCP);
    let services: Vec<_> = entries
        .iter()
        .filter(|(_, entry)| entry.kind() == CT_SERVICE)
        .map(|(_, entry)| entry.service())
        .collect();
    assert_eq!(services.len(), 1, "one flow: {entries:?}");
    services[0]
}

#[test]
fn an_ipv6_flow_records_the_generation_it_was_checked_at_and_checks_again_after_a_removal() {
    let dns = "[fd00:96::10]:53";
    let mut datapath = load(
        0,
        &[
            service6(VIP, proto::TCP, &[BACKEND]),
            service6(dns, proto::UDP, &[BACKEND]),
        ],
    );
    let first = datapath.behind_sync(|maps| maps.generation());
    assert_ne!(first, 0, "the agent writes a generation");
    assert_rewritten(
        &datapath,
        Hook::FromPod,
        &tcp6_syn(POD, VIP),
        &tcp6_syn(POD, BACKEND),
        "SYN",
    );
    assert_eq!(service_entry6(&datapath).generation, first);
    // Another service's removal moves it on: the next packet looks its frontend and backend
    // up again (still there) and records the new generation.
    datapath.sync(&[service6(VIP, proto::TCP, &[BACKEND])]);
    let second = datapath.behind_sync(|maps| maps.generation());
    assert_ne!(second, first);
    assert_rewritten(
        &datapath,
        Hook::FromPod,
        &tcp6_ack(POD, VIP),
        &tcp6_ack(POD, BACKEND),
        "ACK",
    );
    assert_eq!(service_entry6(&datapath).generation, second);
}

#[test]
fn an_ipv6_flow_checked_at_the_current_generation_skips_the_frontend_lookup() {
    let datapath = load(0, &[service6(VIP, proto::TCP, &[BACKEND])]);
    datapath.run(Hook::FromPod, &tcp6_syn(POD, VIP));
    // The master entry deleted behind the agent's back, without a new generation: the flow's
    // packets no longer look it up (a new flow does, and finds the VIP without the port).
    let data = MapData::from_pin(datapath.pin_dir().join(maps::LB6_SERVICES)).expect("open");
    let mut services: aya::maps::HashMap<_, ServiceKey6, ServiceEntry> =
        aya::maps::HashMap::try_from(Map::HashMap(data)).expect("the IPv6 services");
    let vip = addr6(VIP);
    let master = ServiceKey6::new(ip6_words(*vip.ip()), vip.port().to_be(), proto::TCP, 0);
    services.remove(&master).expect("delete the master entry");
    assert_rewritten(
        &datapath,
        Hook::FromPod,
        &tcp6_ack(POD, VIP),
        &tcp6_ack(POD, BACKEND),
        "established, checked",
    );
    let run = datapath.run(Hook::FromPod, &tcp6_syn("[fd00:244:1::7]:40001", VIP));
    assert_eq!(run.verdict, TC_ACT_SHOT, "a new flow finds no frontend");
}

#[test]
fn an_ipv6_flow_whose_backend_was_removed_moves_to_a_remaining_one() {
    for proto in [proto::TCP, proto::UDP] {
        let (first, next, reply) = if proto == proto::TCP {
            (
                tcp6_syn(POD, VIP),
                tcp6_ack(POD, VIP),
                tcp6_ack(BACKEND2, POD),
            )
        } else {
            (udp6(POD, VIP), udp6(POD, VIP), udp6(BACKEND2, POD))
        };
        let mut datapath = load(0, &[service6(VIP, proto, &[BACKEND])]);
        datapath.run(Hook::FromPod, &first);
        // Established and checked at this generation.
        datapath.run(Hook::FromPod, &next);
        datapath.sync(&[service6(VIP, proto, &[BACKEND2])]);
        let moved = datapath.run(Hook::FromPod, &next);
        assert_eq!(
            read_checked6(&moved.frame).dst,
            addr6(BACKEND2),
            "proto {proto}: moved"
        );
        let restored = datapath.run(Hook::FromPod, &reply);
        assert_eq!(
            read_checked6(&restored.frame).src,
            addr6(VIP),
            "proto {proto}"
        );
    }
}

#[test]
fn an_ipv6_flow_whose_service_was_deleted_is_no_longer_translated() {
    // Another frontend on the VIP's address keeps its filter flag set: the flow's packets
    // reach conntrack, and the generation alone must stop them being translated.
    let dns = "[fd00:96::10]:53";
    let mut datapath = load(
        0,
        &[
            service6(VIP, proto::TCP, &[BACKEND]),
            service6(dns, proto::UDP, &[BACKEND]),
        ],
    );
    datapath.run(Hook::FromPod, &tcp6_syn(POD, VIP));
    datapath.run(Hook::FromPod, &tcp6_ack(POD, VIP));
    datapath.sync(&[service6(dns, proto::UDP, &[BACKEND])]);
    assert_eq!(vip_flag6(&datapath, "fd00:96::10"), 1);
    // The address still has a frontend, on another port: the packet is refused as one to an
    // unknown port of a VIP (158), untranslated.
    let ack = tcp6_ack(POD, VIP);
    let run = datapath.run(Hook::FromPod, &ack);
    assert_eq!(run.verdict, TC_ACT_SHOT);
    assert_eq!(run.frame, ack, "not translated");
    assert_eq!(
        datapath.all_drops(),
        vec![(DropReason::NoService as u8, Hook::FromPod as u8, 1)]
    );
}

/// The hairpin source (`HAIRPIN_ADDR6`) with `port`, as `"[addr]:port"`.
fn hairpin6(port: u16) -> String {
    let addr = std::net::Ipv6Addr::from(lb_common::config::HAIRPIN_OCTETS6);
    format!("[{addr}]:{port}")
}

/// `frame` as it leaves by the way it came: MAC addresses swapped.
fn bounced6(frame: Frame6) -> Vec<u8> {
    use lb_testkit::packet::{DST_MAC, SRC_MAC};
    frame.with_macs(DST_MAC, SRC_MAC).bytes()
}

#[test]
fn an_ipv6_pod_reaching_itself_is_snated_to_the_hairpin_address_and_sent_back_both_ways() {
    use lb_common::conntrack::CT_F_FROM_NETDEV;
    // POD is the service's only backend, on port 8080.
    let own = "[fd00:244:1::7]:8080";
    for (proto, name) in [(proto::TCP, "TCP"), (proto::UDP, "UDP")] {
        let datapath = load(0, &[service6(VIP, proto, &[own])]);
        let (request, translated, reply, restored) = if proto == proto::TCP {
            (
                tcp6_syn(POD, VIP),
                Frame6::tcp(&hairpin6(40000), own, tcp_flags::SYN),
                tcp6_syn_ack(own, &hairpin6(40000)),
                Frame6::tcp(VIP, POD, tcp_flags::SYN | tcp_flags::ACK),
            )
        } else {
            (
                udp6(POD, VIP),
                Frame6::udp(&hairpin6(40000), own),
                udp6(own, &hairpin6(40000)),
                Frame6::udp(VIP, POD),
            )
        };
        let run = datapath.run(Hook::FromPod, &request);
        assert_eq!(run.verdict, TC_ACT_REDIRECT, "{name}: back to the pod");
        read_checked6(&run.frame);
        assert_eq!(
            run.frame,
            bounced6(translated),
            "{name}: source the hairpin address with the pod's port, destination the pod"
        );
        let ct = if proto == proto::TCP {
            maps::LB6_CT_TCP
        } else {
            maps::LB6_CT_ANY
        };
        let hairpin_addr = lb_common::config::HAIRPIN_ADDR6;
        let replies: Vec<_> = conntrack6(&datapath, ct)
            .into_iter()
            .filter(|(key, entry)| entry.kind() == CT_REPLY && key.daddr == hairpin_addr)
            .collect();
        assert_eq!(replies.len(), 1, "{name}: one hairpin reply entry");
        assert_eq!(
            replies[0].1.reply().flags & (CT_F_SNAT | CT_F_FROM_NETDEV),
            CT_F_SNAT,
            "{name}"
        );
        let run = datapath.run(Hook::FromPod, &reply);
        assert_eq!(
            run.verdict, TC_ACT_REDIRECT,
            "{name}: reply back to the pod"
        );
        read_checked6(&run.frame);
        assert_eq!(run.frame, bounced6(restored), "{name}: from the VIP");
        // The flow's next packet keeps its translation.
        if proto == proto::TCP {
            let run = datapath.run(Hook::FromPod, &tcp6_ack(POD, VIP));
            assert_eq!(run.verdict, TC_ACT_REDIRECT, "{name}: established");
            assert_eq!(
                run.frame,
                bounced6(Frame6::tcp(
                    &hairpin6(40000),
                    own,
                    tcp_flags::ACK | tcp_flags::PSH
                ))
            );
        }
        assert_eq!(datapath.all_drops(), vec![], "{name}: nothing dropped");
    }
}

#[test]
fn another_pods_ipv6_flow_to_the_same_backend_is_not_hairpinned() {
    let own = "[fd00:244:1::7]:8080";
    let datapath = load(0, &[service6(VIP, proto::TCP, &[own])]);
    assert_rewritten(
        &datapath,
        Hook::FromPod,
        &tcp6_syn("[fd00:244:1::8]:40000", VIP),
        &tcp6_syn("[fd00:244:1::8]:40000", own),
        "another pod",
    );
}

/// A pod curls an IPv6 ClusterIP whose only backend is itself, through the programs attached
/// as the agent attaches them, and gets 200, seeing the hairpin address as the client.
#[test]
fn an_ipv6_pod_reaches_itself_through_its_cluster_ip() {
    use lb_tests::{
        ipv6::{addrs, wire_ipv6},
        topology::{BACKEND_DEVS, CLIENT_DEV, NODE_DEV, Topology},
    };
    let topology = Topology::new("ipv6_hairpin");
    wire_ipv6(&topology);
    let pod = &topology.backends[0];
    let ip: std::net::Ipv6Addr = addrs::BACKENDS[0].parse().expect("an IPv6 address");
    let _server = lb_testkit::ok(
        lb_testkit::servers::http(&pod.ns, ip, 8080, topology.dir()),
        "IPv6 HTTP server",
    );
    let mut datapath = load(
        0,
        &[service6(
            VIP,
            proto::TCP,
            &[&format!("[{}]:8080", addrs::BACKENDS[0])],
        )],
    );
    topology
        .node
        .within(|| {
            datapath.attach(Hook::FromNetdev, NODE_DEV);
            for dev in [CLIENT_DEV, BACKEND_DEVS[0], BACKEND_DEVS[1]] {
                datapath.attach(Hook::FromPod, dev);
            }
        })
        .expect("enter the node");
    for i in 0..3 {
        let outcome = pod
            .ns
            .exec(
                "curl",
                &["-sSi", "-g", "--max-time", "5", "http://[fd00:96::10]:80/"],
            )
            .expect("run curl");
        assert!(outcome.success, "request {i}: {outcome:?}");
        assert!(
            outcome.stdout.starts_with("HTTP/1.0 200")
                || outcome.stdout.starts_with("HTTP/1.1 200"),
            "request {i}: 200: {outcome:?}"
        );
        let loopback = std::net::Ipv6Addr::from(lb_common::config::HAIRPIN_OCTETS6);
        assert!(
            outcome.stdout.contains(&format!("X-Client-IP: {loopback}")),
            "request {i}: the pod sees the hairpin address as the client: {outcome:?}"
        );
        assert!(
            outcome
                .stdout
                .contains(&format!("X-Pod-IP: {}", addrs::BACKENDS[0])),
            "request {i}: answered by itself: {outcome:?}"
        );
    }
    assert_eq!(datapath.all_drops(), vec![], "nothing dropped");
}

/// The longest quote of an ICMPv6 error: its IPv6 packet stays within 1280 bytes.
const MAX_QUOTE6: usize = 1280 - 48;

/// An ICMPv6 error `(kind, code)` with `rest` (the header's last four bytes), from address
/// `src` to address `dst`, quoting as much of the IPv6 packet of `about` as fits, its
/// checksum computed over the whole message.
fn icmp6_error(
    src: &str,
    dst: &str,
    (kind, code): (u8, u8),
    rest: [u8; 4],
    about: &[u8],
) -> Vec<u8> {
    let (src, dst) = (ip6(src), ip6(dst));
    let quote = &about[14..about.len().min(14 + MAX_QUOTE6)];
    let mut body = vec![kind, code, 0, 0];
    body.extend_from_slice(&rest);
    body.extend_from_slice(quote);
    let sum = l4_checksum(&src, &dst, proto::ICMPV6, &body);
    body[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut frame = Vec::new();
    frame.extend_from_slice(&lb_testkit::packet::DST_MAC);
    frame.extend_from_slice(&lb_testkit::packet::SRC_MAC);
    frame.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
    frame.extend_from_slice(&(body.len() as u16).to_be_bytes());
    frame.extend_from_slice(&[proto::ICMPV6, 64]);
    frame.extend_from_slice(&src.octets());
    frame.extend_from_slice(&dst.octets());
    frame.extend_from_slice(&body);
    frame
}

/// Asserts that the ICMPv6 message in `frame` has a right checksum and payload length.
fn assert_icmp6_checksum(frame: &[u8], what: &str) {
    let ip = &frame[14..];
    let icmp = &ip[40..];
    assert_eq!(
        usize::from(u16::from_be_bytes([ip[4], ip[5]])),
        icmp.len(),
        "{what}: payload length"
    );
    let mut zeroed = icmp.to_vec();
    zeroed[2..4].copy_from_slice(&[0, 0]);
    let src = std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&ip[8..24]).unwrap());
    let dst = std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&ip[24..40]).unwrap());
    assert_eq!(
        u16::from_be_bytes([icmp[2], icmp[3]]),
        l4_checksum(&src, &dst, proto::ICMPV6, &zeroed),
        "{what}: ICMPv6 checksum"
    );
}

/// Destination unreachable, port unreachable; time exceeded in transit.
const PORT_UNREACHABLE6: (u8, u8) = (1, 4);
const HOP_LIMIT_EXCEEDED: (u8, u8) = (3, 0);
const POD_IP: &str = "fd00:244:1::7";
const VIP_IP: &str = "fd00:96::10";
const BACKEND_IP: &str = "fd00:244:1::5";

/// A datapath with `service` and the first packet `first` of a flow already through from-pod.
fn with_flow6(service: DesiredService, first: &[u8]) -> Datapath {
    let datapath = load(0, &[service]);
    let run = datapath.run(Hook::FromPod, first);
    assert_eq!(run.verdict, TC_ACT_UNSPEC, "the flow's first packet passes");
    datapath
}

#[test]
fn icmpv6_errors_about_translated_flows_are_translated_back() {
    let udp_flow = || with_flow6(service6(VIP, proto::UDP, &[BACKEND]), &udp6(POD, VIP));
    let tcp_flow = || with_flow6(service6(VIP, proto::TCP, &[BACKEND]), &tcp6_syn(POD, VIP));
    let cases = [
        (
            "the backend's port unreachable reaches the pod from the VIP",
            udp_flow(),
            icmp6_error(
                BACKEND_IP,
                POD_IP,
                PORT_UNREACHABLE6,
                [0; 4],
                &udp6(POD, BACKEND),
            ),
            icmp6_error(VIP_IP, POD_IP, PORT_UNREACHABLE6, [0; 4], &udp6(POD, VIP)),
        ),
        (
            "a router's time exceeded keeps the router's address, the whole TCP header quoted",
            tcp_flow(),
            icmp6_error(
                "fd00:244:1::1",
                POD_IP,
                HOP_LIMIT_EXCEEDED,
                [0; 4],
                &tcp6_syn(POD, BACKEND),
            ),
            icmp6_error(
                "fd00:244:1::1",
                POD_IP,
                HOP_LIMIT_EXCEEDED,
                [0; 4],
                &tcp6_syn(POD, VIP),
            ),
        ),
        (
            "a packet too big from the backend's path carries its MTU to the pod",
            tcp_flow(),
            icmp6_error(
                "fd00:244:1::1",
                POD_IP,
                (2, 0),
                1400u32.to_be_bytes(),
                &tcp6_ack(POD, BACKEND),
            ),
            icmp6_error(
                "fd00:244:1::1",
                POD_IP,
                (2, 0),
                1400u32.to_be_bytes(),
                &tcp6_ack(POD, VIP),
            ),
        ),
        (
            "the pod's port unreachable about a reply reaches the backend",
            udp_flow(),
            icmp6_error(POD_IP, VIP_IP, PORT_UNREACHABLE6, [0; 4], &udp6(VIP, POD)),
            icmp6_error(
                POD_IP,
                BACKEND_IP,
                PORT_UNREACHABLE6,
                [0; 4],
                &udp6(BACKEND, POD),
            ),
        ),
    ];
    for (what, datapath, input, want) in cases {
        let run = datapath.run(Hook::FromPod, &input);
        assert_eq!(run.verdict, TC_ACT_UNSPEC, "{what}: verdict");
        assert_icmp6_checksum(&run.frame, what);
        // The quoted TCP/UDP checksum is checked by comparing with the frame built afresh.
        assert_eq!(run.frame, want, "{what}: translated error");
        assert_eq!(datapath.all_drops(), vec![], "{what}: no drop");
    }
}

#[test]
fn an_icmpv6_error_about_no_tracked_flow_passes_untouched() {
    let datapath = with_flow6(service6(VIP, proto::UDP, &[BACKEND]), &udp6(POD, VIP));
    let other_peer = "[fd00:244:1::9]:53";
    for (what, input) in [
        (
            "about another flow",
            icmp6_error(
                "fd00:244:1::9",
                POD_IP,
                PORT_UNREACHABLE6,
                [0; 4],
                &udp6(POD, other_peer),
            ),
        ),
        (
            "about the flow as the client sent it (not translated yet)",
            icmp6_error(
                "fd00:244:1::1",
                POD_IP,
                HOP_LIMIT_EXCEEDED,
                [0; 4],
                &udp6(POD, VIP),
            ),
        ),
    ] {
        assert_unchanged(&datapath, Hook::FromPod, &input, what);
    }
}

/// A datapath that SNATs flows from outside to a remote backend, with the TCP flow from
/// `CLIENT` open (SNATed to `[fd00:56::4]:40000`); returns it with the remote backend.
fn snat_flow6(fib: &FibNetns6) -> (Datapath, &'static str) {
    let remote = "[fd00:244:2::5]:8080";
    let service = service6(VIP, proto::TCP, &[remote])
        .kind(FrontendKind::ExternalIp)
        .remote();
    let mut datapath = load(0, &[service]);
    datapath.set_config(DatapathConfig {
        events_per_sec: EVENTS_PER_SEC,
        node_addr6: ip6_words(ip6("fd00:56::4")),
        snat_port_min: 40000,
        snat_port_max: 40000,
        ..DatapathConfig::default()
    });
    let request =
        fib.enter(|| datapath.run_on(Hook::FromNetdev, &tcp6_syn(CLIENT, VIP), fib.ifindex));
    assert_eq!(request.verdict, TC_ACT_REDIRECT, "the flow's SYN is SNATed");
    (datapath, remote)
}

#[test]
fn an_icmpv6_error_about_an_snated_flow_is_sent_on_to_the_external_client() {
    let fib = FibNetns6::new("v6icmpsnat");
    let (datapath, remote) = snat_flow6(&fib);
    let snat = "[fd00:56::4]:40000";
    let input = icmp6_error(
        "fd00:244:2::5",
        "fd00:56::4",
        PORT_UNREACHABLE6,
        [0; 4],
        &tcp6_syn(snat, remote),
    );
    let run = fib.enter(|| datapath.run_on(Hook::FromNetdev, &input, fib.ifindex));
    assert_eq!(run.verdict, TC_ACT_REDIRECT, "redirected to the client");
    assert_icmp6_checksum(&run.frame, "translated");
    let mut want = icmp6_error(
        VIP_IP,
        "fd00:56::10",
        PORT_UNREACHABLE6,
        [0; 4],
        &tcp6_syn(CLIENT, VIP),
    );
    want[..6].copy_from_slice(&CLIENT_MAC);
    want[6..12].copy_from_slice(&NODE_MAC);
    assert_eq!(
        run.frame, want,
        "from the VIP, about the client's own packet, to the client"
    );
    assert_eq!(datapath.all_drops(), vec![]);
}

#[test]
fn a_too_big_packet_of_an_snated_ipv6_flow_is_answered_with_packet_too_big() {
    let fib = FibNetns6::new("v6ptb");
    let (datapath, _remote) = snat_flow6(&fib);
    // 1600 bytes of payload: larger than lbt0's MTU of 1500.
    let big = Frame6 {
        payload: vec![0x5a; 1600],
        ..Frame6::tcp(CLIENT, VIP, tcp_flags::ACK | tcp_flags::PSH)
    }
    .bytes();
    let run = fib.enter(|| datapath.run_on(Hook::FromNetdev, &big, fib.ifindex));
    assert_eq!(run.verdict, TC_ACT_REDIRECT, "answered");
    let out = &run.frame;
    assert_eq!(
        out.len(),
        14 + 1280,
        "as much of the packet as fits in 1280 bytes"
    );
    assert_eq!(&out[..6], &big[6..12], "back to the MAC it came from");
    assert_eq!(&out[6..12], &big[..6]);
    assert_eq!(&out[12..14], &[0x86, 0xdd]);
    let ip = &out[14..];
    assert_eq!((ip[6], ip[7]), (proto::ICMPV6, 64), "ICMPv6, hop limit 64");
    assert_eq!(&ip[8..24], &ip6("fd00:56::4").octets(), "from the node");
    assert_eq!(&ip[24..40], &big[14 + 8..14 + 24], "to the sender");
    let icmp = &ip[40..];
    assert_eq!((icmp[0], icmp[1]), (2, 0), "packet too big");
    assert_eq!(&icmp[4..8], &1500u32.to_be_bytes(), "the egress MTU");
    assert_eq!(
        &icmp[8..],
        &big[14..14 + MAX_QUOTE6],
        "the packet as it arrived"
    );
    assert_icmp6_checksum(out, "packet too big");
    assert_eq!(
        datapath.all_drops(),
        vec![(DropReason::FragNeeded as u8, Hook::FromNetdev as u8, 1)],
        "counted as 136"
    );
    let events = drain_events6(&datapath);
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].reason, events[0].file, events[0].len as usize),
        (136, SourceFile::Icmp6 as u8, big.len()),
        "reported as the packet that was dropped"
    );
}

/// Real traffic: the `Topology` node made dual stack, the programs attached as the agent
/// attaches them, an IPv6 ClusterIP on UDP port 53 whose only backend has nothing listening
/// on its port. The backend's stack answers the client pod's datagram with ICMPv6 port
/// unreachable; translated to come from the VIP, it makes the client's connected socket fail
/// with ECONNREFUSED at once instead of waiting for an answer.
#[test]
fn a_udp_client_of_an_ipv6_cluster_ip_whose_backend_has_no_listener_gets_connection_refused() {
    use lb_tests::{
        ipv6::{addrs, wire_ipv6},
        topology::{BACKEND_DEVS, CLIENT_DEV, NODE_DEV, Topology},
    };
    use std::net::{Ipv6Addr, SocketAddrV6, UdpSocket};
    let topology = Topology::new("ipv6_icmp_refused");
    wire_ipv6(&topology);
    // Nothing listens on the backend's port 9999.
    let backend = format!("[{}]:9999", addrs::BACKENDS[0]);
    let mut datapath = load(0, &[service6("[fd00:96::10]:53", proto::UDP, &[&backend])]);
    topology
        .node
        .within(|| {
            datapath.attach(Hook::FromNetdev, NODE_DEV);
            for dev in [CLIENT_DEV, BACKEND_DEVS[0], BACKEND_DEVS[1]] {
                datapath.attach(Hook::FromPod, dev);
            }
        })
        .expect("enter the node");
    let client: Ipv6Addr = addrs::CLIENT.parse().expect("the client's address");
    let started = std::time::Instant::now();
    let outcome = lb_testkit::ok(
        topology.client.ns.within(|| -> std::io::Result<usize> {
            let socket = UdpSocket::bind(SocketAddrV6::new(client, 0, 0, 0))?;
            socket.connect(SocketAddrV6::new(ip6("fd00:96::10"), 53, 0, 0))?;
            socket.set_read_timeout(Some(lb_testkit::patience::ANSWER_WITHIN))?;
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
        started.elapsed() < std::time::Duration::from_secs(2),
        "refused at once, not after a timeout"
    );
    assert_eq!(datapath.all_drops(), vec![]);
}

/// Real traffic over the SNAT path, for path-MTU discovery: a client namespace, a node
/// namespace with the datapath at from-netdev of both its links, and another node's pod (a
/// backend namespace, fd00:244:2::5) behind a link whose node end has an MTU of 1280. Field order is drop order: the
/// programs go before the namespaces.
struct PmtuLab {
    datapath: Datapath,
    client: lb_testkit::Netns,
    backend: lb_testkit::Netns,
    _node: lb_testkit::Netns,
}

impl PmtuLab {
    /// The lab, with `service` (an external IP on `[fd00:96::10]`, remote backend
    /// `[fd00:244:2::5]`) synced; `test` names the namespaces.
    fn up(test: &str, service: DesiredService) -> Self {
        use lb_testkit::{Netns, netns::veth, ok};
        let pid = std::process::id();
        let client = ok(
            Netns::create(&format!("{test}-c-{pid}")),
            "client namespace",
        );
        let node = ok(Netns::create(&format!("{test}-n-{pid}")), "node namespace");
        let backend = ok(
            Netns::create(&format!("{test}-b-{pid}")),
            "backend namespace",
        );
        ok(veth(&node, "lbc0", &client, "lbc1"), "client link");
        ok(veth(&node, "lbn0", &backend, "lbn1"), "narrow link");
        // Narrow on the node's side only: the backend's SYN-ACK announces an MSS for 1500
        // bytes, so the client's segments must shrink on lb's answer, not on the MSS.
        ok(
            node.ip(&["link", "set", "lbn0", "mtu", "1280"]),
            "narrow MTU",
        );
        ok(
            node.sysctl("net.ipv6.conf.all.forwarding", "1"),
            "forwarding",
        );
        for (ns, dev, addr) in [
            (&node, "lbc0", "fd00:56::4/64"),
            (&client, "lbc1", "fd00:56::10/64"),
            (&node, "lbn0", "fd00:57::4/64"),
            (&backend, "lbn1", "fd00:57::5/64"),
            (&backend, "lbn1", "fd00:244:2::5/128"),
        ] {
            ok(
                ns.ip(&["-6", "addr", "add", addr, "dev", dev, "nodad"]),
                "address",
            );
        }
        for (ns, route) in [
            (&client, ["fd00:96::/112", "via", "fd00:56::4"]),
            (&node, ["fd00:244:2::/64", "via", "fd00:57::5"]),
            (&backend, ["default", "via", "fd00:57::4"]),
        ] {
            let mut args = vec!["-6", "route", "add"];
            args.extend_from_slice(&route);
            ok(ns.ip(&args), "route");
        }
        // The other node's neighbour entry resolved: `bpf_fib_lookup` checks the MTU only
        // for a route whose neighbour is known (an unresolved one goes to the kernel).
        let ping = ok(
            node.exec("ping", &["-6", "-c", "1", "-W", "5", "fd00:57::5"]),
            "ping the other node",
        );
        assert!(ping.success, "the other node answers: {ping:?}");
        let mut datapath = load(0, &[service]);
        datapath.set_config(DatapathConfig {
            events_per_sec: EVENTS_PER_SEC,
            node_addr6: ip6_words(ip6("fd00:56::4")),
            snat_port_min: 40000,
            snat_port_max: 40099,
            ..DatapathConfig::default()
        });
        ok(
            node.within(|| {
                datapath.attach(Hook::FromNetdev, "lbc0");
                datapath.attach(Hook::FromNetdev, "lbn0");
            }),
            "attach in the node",
        );
        Self {
            datapath,
            client,
            backend,
            _node: node,
        }
    }

    /// The client's route to the VIP, with the path MTU it learned, if any.
    fn route_to_vip(&self) -> String {
        lb_testkit::ok(
            self.client.ip(&["-6", "route", "get", "fd00:96::10"]),
            "route get",
        )
    }

    /// Waits until the client has learned the narrow link's MTU for the VIP.
    fn wait_for_learned_mtu(&self) {
        lb_testkit::wait_until(
            "the client learns the path MTU",
            lb_testkit::patience::ANSWER_WITHIN,
            || {
                let route = self.route_to_vip();
                if route.contains("mtu 1280") {
                    Ok(Some(()))
                } else {
                    Err(route)
                }
            },
        )
        .unwrap_or_else(|err| panic!("{err}"));
    }
}

/// A UDP external IP on port 53 whose only backend is the other node's pod.
fn remote_udp_service() -> DesiredService {
    service6("[fd00:96::10]:53", proto::UDP, &["[fd00:244:2::5]:53"])
        .kind(FrontendKind::ExternalIp)
        .remote()
}

/// The client's 1400-byte datagram is too big for the narrow link: the node answers with
/// ICMPv6 "packet too big", and the client's stack learns the path MTU to the VIP (its route
/// shows `mtu 1280`).
#[test]
fn an_ipv6_client_learns_the_path_mtu_of_the_snat_path() {
    use std::net::{SocketAddrV6, UdpSocket};
    let lab = PmtuLab::up("lb6pmtu", remote_udp_service());
    let route = lab.route_to_vip();
    assert!(!route.contains("mtu"), "no path MTU known yet: {route}");
    // The socket stays open until the end, so that the client's stack finds it by the quote.
    let _socket = lb_testkit::ok(
        lab.client.within(|| -> std::io::Result<UdpSocket> {
            let socket = UdpSocket::bind(SocketAddrV6::new(ip6("fd00:56::10"), 0, 0, 0))?;
            socket.connect(SocketAddrV6::new(ip6("fd00:96::10"), 53, 0, 0))?;
            socket.send(&[0x5a; 1400])?;
            Ok(socket)
        }),
        "enter the client",
    )
    .expect("send the datagram");
    lab.wait_for_learned_mtu();
    assert_eq!(
        lab.datapath.all_drops(),
        vec![(DropReason::FragNeeded as u8, Hook::FromNetdev as u8, 1)],
        "the datagram counted as 136"
    );
}

/// A TCP upload of 256 KiB through an external IP to the other node's pod: the client's
/// full-sized segments (TSO super-packets on the veth) are too big for the narrow link, lb
/// answers "packet too big", and the upload completes at the smaller MTU.
#[test]
fn an_ipv6_tcp_upload_over_a_narrower_snat_path_completes() {
    use std::io::{Read, Write};
    use std::net::{Shutdown, SocketAddrV6, TcpListener, TcpStream};
    const UPLOAD: usize = 256 * 1024;
    let service = service6("[fd00:96::10]:80", proto::TCP, &["[fd00:244:2::5]:8080"])
        .kind(FrontendKind::ExternalIp)
        .remote();
    let lab = PmtuLab::up("lb6pmtut", service);
    let listener = lb_testkit::ok(
        lab.backend
            .within(|| TcpListener::bind(SocketAddrV6::new(ip6("fd00:244:2::5"), 8080, 0, 0))),
        "enter the backend",
    )
    .expect("listen in the backend");
    // The backend counts what it receives until the client is done, and says how much.
    let server = std::thread::spawn(move || -> std::io::Result<usize> {
        let (mut stream, _) = listener.accept()?;
        stream.set_read_timeout(Some(lb_testkit::patience::ANSWER_WITHIN))?;
        let mut received = Vec::new();
        stream.read_to_end(&mut received)?;
        stream.write_all(received.len().to_string().as_bytes())?;
        Ok(received.len())
    });
    let answer = lb_testkit::ok(
        lab.client.within(|| -> std::io::Result<String> {
            let vip = SocketAddrV6::new(ip6("fd00:96::10"), 80, 0, 0);
            let mut stream =
                TcpStream::connect_timeout(&vip.into(), lb_testkit::patience::ANSWER_WITHIN)?;
            stream.set_read_timeout(Some(lb_testkit::patience::ANSWER_WITHIN))?;
            stream.write_all(&vec![0x5a; UPLOAD])?;
            stream.shutdown(Shutdown::Write)?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer)?;
            Ok(answer)
        }),
        "enter the client",
    )
    .expect("the upload through the VIP");
    assert_eq!(
        answer,
        UPLOAD.to_string(),
        "the backend received everything"
    );
    let received = server.join().expect("the backend thread");
    assert_eq!(received.expect("the backend's side"), UPLOAD);
    lab.wait_for_learned_mtu();
    let too_big = lab
        .datapath
        .drop_count(DropReason::FragNeeded, Hook::FromNetdev);
    assert!(
        too_big >= 1,
        "segments too big were answered (136): {too_big}"
    );
    assert_eq!(
        lab.datapath.all_drops(),
        vec![(
            DropReason::FragNeeded as u8,
            Hook::FromNetdev as u8,
            too_big
        )],
        "nothing else dropped"
    );
}
