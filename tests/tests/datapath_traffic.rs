//! The datapath alone with real traffic: `Topology` builds a node with a client pod, two backend
//! pods (HTTP, TCP and UDP echo servers) and an external client in namespaces; the fixture
//! loads lb-ebpf with fresh pinned maps, attaches from-netdev to the node's `eth0` and from-pod
//! to the host side of every pod's veth with TCX, and programs the maps through the agent's
//! sync, as the agent does. Packets are real: curl, UDP datagrams and a held TCP connection,
//! through the kernel.
//!
//! Needs root, `python3`, `curl` and `ss`.
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::Duration;

use lb_agent::model::DesiredService;
use lb_common::config::{CONFIG_F_EXTERNAL_CLUSTER_IP, DatapathConfig, EVENTS_PER_SEC};
use lb_common::drop::{DropReason, Hook};
use lb_common::event::{DropEvent, tcp_flags};
use lb_common::proto;
use lb_lab::probe::{EchoReply, EchoSession, HttpReply, udp_echo};
use lb_testkit::packet::{ip_be, port_be};
use lb_testkit::patience::{ANSWER_WITHIN, SETTLE_WITHIN, SILENCE, SILENCE_SECS};
use lb_testkit::{Netns, wait_until};
use lb_tests::fixture::{Datapath, LoadOptions, service};
use lb_tests::probe::{http_get, http_get_unanswered};
use lb_tests::topology::{BACKEND_IPS, CLIENT_DEV, CLIENT_IP, EXTERNAL_IP, NODE_DEV, Topology};

/// The ClusterIP of every service here.
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// HTTP frontend → the backends' HTTP servers.
const HTTP_FRONTEND: &str = "10.96.0.10:80/TCP";
/// UDP frontend → the backends' echo servers.
const UDP_FRONTEND: &str = "10.96.0.10:53/UDP";
/// TCP frontend → the backends' echo servers.
const ECHO_FRONTEND: &str = "10.96.0.10:7/TCP";
/// Tries to see both backends: with a uniform choice, all 40 landing on one backend has
/// probability 2 * 2^-40.
const TRIES: usize = 40;

/// A node with the datapath attached. Field order is drop order: the programs are detached (and
/// their pins removed) before the namespaces go.
struct Node {
    datapath: Datapath,
    topology: Topology,
}

impl Node {
    /// Builds the topology for `test` and attaches a freshly loaded datapath to it.
    fn up(test: &str) -> Self {
        Self::up_with(test, LoadOptions::default())
    }

    /// [`Node::up`] with the datapath loaded with `options` (map sizes).
    fn up_with(test: &str, options: LoadOptions) -> Self {
        let topology = Topology::new(test);
        let mut datapath = Datapath::load_with(options);
        datapath.attach_to(&topology);
        Self { datapath, topology }
    }

    fn set_flags(&mut self, flags: u32) {
        self.datapath.set_config(DatapathConfig {
            flags,
            events_per_sec: EVENTS_PER_SEC,
            ..DatapathConfig::default()
        });
    }
}

/// A service on `frontend` with both backends on `port`.
fn to_backends(frontend: &str, port: u16) -> DesiredService {
    let backends = BACKEND_IPS.map(|ip| format!("{ip}:{port}"));
    let backends: Vec<&str> = backends.iter().map(String::as_str).collect();
    service(frontend, &backends)
}

fn vip(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(VIP, port)
}

fn any_port(ip: Ipv4Addr) -> SocketAddrV4 {
    SocketAddrV4::new(ip, 0)
}

/// `curl http://TARGET/` from `ns` until every backend has answered or `TRIES` ran out; every
/// answer must be 200 and name `client_ip` as the client the backend saw. Returns the backends
/// that answered.
fn http_backends_seen(ns: &Netns, target: SocketAddrV4, client_ip: Ipv4Addr) -> BTreeSet<Ipv4Addr> {
    let mut seen = BTreeSet::new();
    for _ in 0..TRIES {
        let (outcome, reply) = http_get(ns, target).expect("run curl");
        let HttpReply {
            status,
            pod_ip,
            client_ip: seen_client,
        } = reply;
        assert_eq!(status, Some(200), "{}: {outcome:?}", outcome.cmdline);
        assert_eq!(seen_client, Some(client_ip), "no SNAT: {outcome:?}");
        seen.insert(pod_ip.expect("X-Pod-IP"));
        if seen.len() == BACKEND_IPS.len() {
            break;
        }
    }
    seen
}

/// Waits until `count` says at least `at_least`, and returns what it says.
fn await_count(what: &str, at_least: u64, count: impl Fn() -> u64) -> u64 {
    wait_until(what, SETTLE_WITHIN, || {
        let now = count();
        if now >= at_least {
            Ok(Some(now))
        } else {
            Err(format!("{now}"))
        }
    })
    .unwrap_or_else(|err| panic!("{err}"))
}

/// Asserts that `event` describes the packet `from → to` as it arrived on `ifindex`.
fn assert_event(
    event: &DropEvent,
    reason: DropReason,
    hook: Hook,
    ifindex: u32,
    protocol: u8,
    from: SocketAddrV4,
    to: SocketAddrV4,
) {
    assert_eq!(event.reason, reason as u8, "reason of {event:?}");
    assert_eq!(event.hook, hook as u8, "hook of {event:?}");
    assert_eq!(event.ifindex, ifindex, "interface of {event:?}");
    assert_eq!(event.proto, protocol, "protocol of {event:?}");
    assert_eq!(
        event.saddr,
        ip_be(*from.ip()),
        "source address of {event:?}"
    );
    assert_eq!(
        event.sport,
        port_be(from.port()),
        "source port of {event:?}"
    );
    assert_eq!(
        event.daddr,
        ip_be(*to.ip()),
        "destination address of {event:?}"
    );
    assert_eq!(
        event.dport,
        port_be(to.port()),
        "destination port of {event:?}"
    );
}

#[test]
fn pod_to_cluster_ip_over_tcp_and_udp_reaches_both_backends() {
    let mut node = Node::up("pod_to_cluster_ip_over_tcp_and_udp");
    node.datapath.sync(&[
        to_backends(HTTP_FRONTEND, 8080),
        to_backends(UDP_FRONTEND, 7007),
    ]);
    let client = &node.topology.client.ns;
    let all: BTreeSet<Ipv4Addr> = BACKEND_IPS.into();

    assert_eq!(
        http_backends_seen(client, vip(80), CLIENT_IP),
        all,
        "TCP: both backends answer within {TRIES} requests"
    );

    let mut seen = BTreeSet::new();
    for i in 0..TRIES {
        let payload = format!("datagram {i}");
        let reply = udp_echo(
            client,
            any_port(CLIENT_IP),
            vip(53),
            &payload,
            ANSWER_WITHIN,
        )
        .expect("UDP probe")
        .unwrap_or_else(|why| panic!("UDP to {}: {why}", vip(53)));
        // The socket is connected to the VIP: this answer came back reverse-NATed to VIP:53.
        assert_eq!(reply.payload, payload, "{reply:?}");
        assert_eq!(*reply.client.ip(), CLIENT_IP, "no SNAT: {reply:?}");
        seen.insert(reply.pod_ip);
        if seen.len() == BACKEND_IPS.len() {
            break;
        }
    }
    assert_eq!(
        seen, all,
        "UDP: both backends answer within {TRIES} datagrams"
    );
    assert_eq!(node.datapath.all_drops(), vec![], "nothing was dropped");
}

#[test]
fn external_client_to_cluster_ip_is_dropped_with_174_when_flag_is_off_and_served_when_on() {
    let mut node = Node::up("external_client_to_cluster_ip");
    node.datapath.sync(&[to_backends(HTTP_FRONTEND, 8080)]);
    let eth0 = node.topology.node_ifindex(NODE_DEV);
    let from = SocketAddrV4::new(EXTERNAL_IP, 40174);
    let url = format!("http://{}/", vip(80));

    let outcome = node
        .topology
        .external
        .exec(
            "curl",
            &[
                "-sS",
                "--connect-timeout",
                SILENCE_SECS,
                "--local-port",
                "40174",
                &url,
            ],
        )
        .expect("run curl");
    assert!(
        !outcome.success,
        "flag off: the ClusterIP must not answer: {outcome:?}"
    );
    let drops = await_count("a drop counted with 174", 1, || {
        node.datapath
            .drop_count(DropReason::IsClusterIp, Hook::FromNetdev)
    });
    let events = node.datapath.drain_events();
    // One per SYN curl sent (it retransmits within its timeout); nothing else was dropped.
    assert_eq!(events.len() as u64, drops, "one event per drop: {events:?}");
    for event in &events {
        assert_event(
            event,
            DropReason::IsClusterIp,
            Hook::FromNetdev,
            eth0,
            proto::TCP,
            from,
            vip(80),
        );
        assert_eq!(event.tcp_flags, tcp_flags::SYN, "a SYN: {event:?}");
    }
    assert_eq!(
        node.datapath.all_drops(),
        vec![(DropReason::IsClusterIp as u8, Hook::FromNetdev as u8, drops)],
        "only 174 at from-netdev"
    );

    node.set_flags(CONFIG_F_EXTERNAL_CLUSTER_IP);
    assert_eq!(
        http_backends_seen(&node.topology.external, vip(80), EXTERNAL_IP),
        BACKEND_IPS.into(),
        "flag on: both backends answer the external client, which they see unchanged"
    );
    assert_eq!(
        node.datapath
            .drop_count(DropReason::IsClusterIp, Hook::FromNetdev),
        drops,
        "flag on: nothing more dropped"
    );
}

#[test]
fn removing_a_backend_keeps_an_established_connection_to_the_other_intact() {
    let mut node = Node::up("removing_a_backend_keeps_connection");
    node.datapath.sync(&[to_backends(ECHO_FRONTEND, 7007)]);
    let client = &node.topology.client.ns;

    // One held connection to each backend (the choice is random: open until both are held).
    let mut sessions: Vec<(EchoSession, Ipv4Addr)> = Vec::new();
    for i in 0..TRIES {
        let mut session = EchoSession::connect(client, vip(7), ANSWER_WITHIN)
            .unwrap_or_else(|err| panic!("connect to {}: {err}", vip(7)));
        let EchoReply {
            pod_ip, payload, ..
        } = session.ask(&format!("hello {i}")).expect("echo");
        assert_eq!(payload, format!("hello {i}"));
        if sessions.iter().all(|(_, ip)| *ip != pod_ip) {
            sessions.push((session, pod_ip));
        }
        if sessions.len() == BACKEND_IPS.len() {
            break;
        }
    }
    assert_eq!(
        sessions.len(),
        2,
        "connections to both backends within {TRIES} tries"
    );

    // Remove backend 0 as the agent does (the survivor into slot 1, the master entry's count
    // down, the freed slot, then the backend): sync without it.
    let (gone, kept) = (BACKEND_IPS[0], BACKEND_IPS[1]);
    node.datapath
        .sync(&[service(ECHO_FRONTEND, &[&format!("{kept}:7007")])]);
    assert_eq!(
        node.datapath.backend_id(&format!("{gone}:7007")),
        None,
        "backend {gone} removed"
    );

    let (to_kept, _) = sessions
        .iter_mut()
        .find(|(_, ip)| *ip == kept)
        .expect("a session to the kept backend");
    let local = to_kept.local();
    for i in 0..5 {
        let reply = to_kept
            .ask(&format!("after {i}"))
            .unwrap_or_else(|err| panic!("the connection {local} -> {kept} broke: {err}"));
        assert_eq!(reply.pod_ip, kept, "same backend: {reply:?}");
        assert_eq!(reply.client, local, "same connection: {reply:?}");
    }
    for i in 0..10 {
        let mut fresh = EchoSession::connect(client, vip(7), ANSWER_WITHIN)
            .unwrap_or_else(|err| panic!("connect to {}: {err}", vip(7)));
        let reply = fresh.ask(&format!("new {i}")).expect("echo");
        assert_eq!(
            reply.pod_ip, kept,
            "new connections go to the remaining backend"
        );
    }
    assert_eq!(node.datapath.all_drops(), vec![], "nothing was dropped");
}

#[test]
fn frontend_without_backends_drops_with_158() {
    let mut node = Node::up("frontend_without_backends");
    node.datapath
        .sync(&[service(UDP_FRONTEND, &[]), service(HTTP_FRONTEND, &[])]);
    let lxc = node.topology.node_ifindex(CLIENT_DEV);
    let client = &node.topology.client.ns;
    let from = SocketAddrV4::new(CLIENT_IP, 40158);

    let answer = udp_echo(client, from, vip(53), "anyone?", SILENCE).expect("UDP probe");
    assert!(answer.is_err(), "no backend, no answer: {answer:?}");
    await_count("a drop counted with 158", 1, || {
        node.datapath
            .drop_count(DropReason::NoService, Hook::FromPod)
    });
    assert_eq!(
        node.datapath.all_drops(),
        vec![(DropReason::NoService as u8, Hook::FromPod as u8, 1)],
        "exactly the one datagram dropped, with 158 at from-pod"
    );
    let events = node.datapath.drain_events();
    assert_eq!(events.len(), 1, "one event: {events:?}");
    assert_event(
        &events[0],
        DropReason::NoService,
        Hook::FromPod,
        lxc,
        proto::UDP,
        from,
        vip(53),
    );

    let (outcome, reply) = http_get_unanswered(client, vip(80)).expect("run curl");
    assert_eq!(
        reply.status, None,
        "no backend, no HTTP answer: {outcome:?}"
    );
    let drops = await_count("the SYN counted with 158", 2, || {
        node.datapath
            .drop_count(DropReason::NoService, Hook::FromPod)
    });
    let events = node.datapath.drain_events();
    assert_eq!(
        events.len() as u64,
        drops - 1,
        "one event per SYN: {events:?}"
    );
    for event in &events {
        assert_eq!(event.reason, DropReason::NoService as u8, "{event:?}");
        assert_eq!(event.proto, proto::TCP, "{event:?}");
        assert_eq!(event.tcp_flags, tcp_flags::SYN, "{event:?}");
    }
}

/// A UDP client on one connected socket, as a resolver holds one: every datagram is the same
/// flow, and only answers from VIP:53 reach it.
struct UdpClient {
    socket: UdpSocket,
    sent: u32,
}

impl UdpClient {
    fn open(ns: &Netns) -> Self {
        let socket = ns
            .within(|| -> std::io::Result<UdpSocket> {
                let socket = UdpSocket::bind(any_port(CLIENT_IP))?;
                socket.connect(vip(53))?;
                Ok(socket)
            })
            .unwrap_or_else(|err| panic!("enter the client's namespace: {err}"))
            .unwrap_or_else(|err| panic!("open a UDP socket to {}: {err}", vip(53)));
        Self { socket, sent: 0 }
    }

    /// Sends one datagram and returns the backend that echoed it within `wait`, or why none did.
    fn ask(&mut self, wait: Duration) -> Result<Ipv4Addr, String> {
        self.socket
            .set_read_timeout(Some(wait))
            .map_err(|err| format!("set the read timeout: {err}"))?;
        self.sent += 1;
        let payload = format!("query {}", self.sent);
        self.socket
            .send(payload.as_bytes())
            .map_err(|err| format!("send: {err}"))?;
        let mut buf = [0u8; 2048];
        // An answer to an earlier datagram may still arrive: only this one's counts.
        loop {
            let n = self
                .socket
                .recv(&mut buf)
                .map_err(|err| format!("no answer: {err}"))?;
            let text = String::from_utf8_lossy(&buf[..n]);
            let reply = EchoReply::parse(&text).ok_or_else(|| format!("not an echo: {text:?}"))?;
            if reply.payload == payload {
                return Ok(reply.pod_ip);
            }
        }
    }
}

#[test]
fn a_udp_flow_moves_when_its_backend_is_removed_and_stops_when_its_service_is_deleted() {
    let mut node = Node::up("udp_flow_moves");
    node.datapath.sync(&[to_backends(UDP_FRONTEND, 7007)]);
    let mut client = UdpClient::open(&node.topology.client.ns);

    let first = client
        .ask(ANSWER_WITHIN)
        .unwrap_or_else(|why| panic!("{why}"));
    for _ in 0..5 {
        assert_eq!(
            client.ask(ANSWER_WITHIN),
            Ok(first),
            "the flow keeps its backend"
        );
    }

    // Remove the flow's backend, as the EndpointSlice losing it makes the agent do.
    let other = *BACKEND_IPS
        .iter()
        .find(|ip| **ip != first)
        .expect("two backends");
    node.datapath
        .sync(&[service(UDP_FRONTEND, &[&format!("{other}:7007")])]);
    let moved = wait_until(
        "answers from the remaining backend",
        SETTLE_WITHIN,
        || match client.ask(ANSWER_WITHIN) {
            Ok(ip) if ip == other => Ok(Some(ip)),
            seen => Err(format!("{seen:?}")),
        },
    );
    assert_eq!(
        moved.ok(),
        Some(other),
        "the same socket is answered by {other}"
    );
    for _ in 0..5 {
        assert_eq!(
            client.ask(ANSWER_WITHIN),
            Ok(other),
            "the flow stays on its new backend"
        );
    }

    // Delete the Service: 10.96.0.10 is no VIP any more, so the datagram is not translated,
    // reaches no backend and nothing answers; lb passes it on (no drop).
    node.datapath.sync(&[]);
    for _ in 0..3 {
        let answer = client.ask(SILENCE);
        assert!(
            answer.is_err(),
            "no answer once the Service is gone: {answer:?}"
        );
    }
    assert_eq!(node.datapath.all_drops(), vec![], "nothing was dropped");
}

#[test]
fn a_kept_tcp_connection_survives_udp_churn_that_overflows_the_any_map() {
    const ANY_MAX: u32 = 64;
    let mut node = Node::up_with(
        "ct_udp_churn",
        LoadOptions {
            ct_any_max_entries: Some(ANY_MAX),
            ..LoadOptions::default()
        },
    );
    node.datapath.sync(&[
        to_backends(ECHO_FRONTEND, 7007),
        to_backends(UDP_FRONTEND, 7007),
    ]);
    let client = &node.topology.client.ns;
    let mut session = EchoSession::connect(client, vip(7), ANSWER_WITHIN)
        .unwrap_or_else(|err| panic!("connect to {}: {err}", vip(7)));
    let first = session.ask("before").expect("echo before the churn").pod_ip;

    // 500 UDP flows (1000 conntrack entries, each datagram answered) through a map of 64.
    let sent = client
        .within(|| {
            (0..500u16)
                .filter(|i| {
                    UdpSocket::bind(SocketAddrV4::new(CLIENT_IP, 30_000 + i))
                        .and_then(|socket| socket.send_to(b"churn", vip(53)))
                        .is_ok()
                })
                .count()
        })
        .unwrap_or_else(|err| panic!("enter the client's namespace: {err}"));
    assert_eq!(sent, 500, "every datagram sent");
    let udp_entries = node
        .datapath
        .conntrack_of(lb_common::maps::LB4_CT_ANY)
        .len();
    assert!(
        udp_entries <= ANY_MAX as usize,
        "the any map is full, not more: {udp_entries}"
    );

    for i in 0..5 {
        let reply = session
            .ask(&format!("after {i}"))
            .unwrap_or_else(|err| panic!("echo {i} after the churn: {err}"));
        assert_eq!(reply.pod_ip, first, "the same backend, the same connection");
    }
    assert_eq!(
        node.datapath
            .conntrack_of(lb_common::maps::LB4_CT_TCP)
            .len(),
        2,
        "the TCP flow's two entries"
    );
    assert_eq!(node.datapath.all_drops(), vec![], "nothing was dropped");
}

#[test]
fn with_maglev_a_flow_moved_to_another_node_reaches_the_same_backend() {
    let maglev = LoadOptions {
        selection: Some(lb_agent::sync::maglev::Settings {
            default: lb_agent::model::LbAlgorithm::Maglev,
            ..Default::default()
        }),
        ..LoadOptions::default()
    };
    let mut node = Node::up_with("maglev_moved_flow", maglev);
    node.datapath.sync(&[to_backends(UDP_FRONTEND, 7007)]);
    let client = &node.topology.client.ns;
    let ports = 40_000..40_024;
    let answer = |source_port: u16| {
        let payload = format!("from port {source_port}");
        let reply = udp_echo(
            client,
            SocketAddrV4::new(CLIENT_IP, source_port),
            vip(53),
            &payload,
            ANSWER_WITHIN,
        )
        .expect("UDP probe")
        .unwrap_or_else(|why| panic!("UDP to {}: {why}", vip(53)));
        assert_eq!(reply.payload, payload, "{reply:?}");
        reply.pod_ip
    };
    let first: Vec<Ipv4Addr> = ports.clone().map(answer).collect();
    let distinct: BTreeSet<&Ipv4Addr> = first.iter().collect();
    assert_eq!(distinct.len(), BACKEND_IPS.len(), "flows spread: {first:?}");

    // "Another node": the flows' next packets meet a datapath with empty conntrack whose agent
    // learnt the backends in the other order (after another Service, so with other ids).
    let mut other = Datapath::load_with(maglev);
    other.sync(&[to_backends(HTTP_FRONTEND, 8080)]);
    let mut reversed = to_backends(UDP_FRONTEND, 7007);
    reversed.backends.reverse();
    other.sync(&[to_backends(HTTP_FRONTEND, 8080), reversed]);
    drop(std::mem::replace(&mut node.datapath, other));
    node.datapath.attach_to(&node.topology);
    let client = &node.topology.client.ns;
    let answer = |source_port: u16| {
        udp_echo(
            client,
            SocketAddrV4::new(CLIENT_IP, source_port),
            vip(53),
            "again",
            ANSWER_WITHIN,
        )
        .expect("UDP probe")
        .unwrap_or_else(|why| panic!("UDP to {}: {why}", vip(53)))
        .pod_ip
    };
    let second: Vec<Ipv4Addr> = ports.map(answer).collect();
    // With random selection each flow would match with probability 1/2: 2^-24 for all.
    assert_eq!(second, first, "every flow reaches the backend it had");
    assert_eq!(node.datapath.all_drops(), vec![], "nothing was dropped");
}
