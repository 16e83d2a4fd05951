//! Conntrack lifetimes (`conntrack.rs`): each entry's expiry by TCP state and protocol, an
//! expired entry treated as absent, TCP kept apart from UDP churn, the reply key that two VIPs
//! sharing a backend would both need, and the agent's GC on the real maps.
//!
//! The datapath's clock is driven from the test: `clock_mult` 0 stops it at `clock_offset`, so
//! a test sets the time with the configuration instead of sleeping.

use lb_common::{
    config::{DatapathConfig, EVENTS_PER_SEC},
    conntrack::{
        CT_F_CLOSING, CT_F_ESTABLISHED, CT_F_SEEN_REPLY, CT_REPLY, CT_SERVICE, CtEntry,
        CtLifetimes, CtService,
    },
    drop::{DropReason, Hook},
    event::tcp_flags,
    maps::{LB4_CT_ANY, LB4_CT_TCP},
};
use lb_testkit::packet::*;
use lb_tests::fixture::{Datapath, LoadOptions, TC_ACT_SHOT, TC_ACT_UNSPEC, service};

const VIP: &str = "10.96.0.10:80";
const FRONTEND: &str = "10.96.0.10:80/TCP";
const POD: &str = "10.244.0.7:40000";
const A: &str = "10.244.1.5:8080";
const DNS: &str = "10.96.0.10:53/UDP";
const DNS_VIP: &str = "10.96.0.10:53";
const DNS_A: &str = "10.244.1.5:53";
const L: CtLifetimes = CtLifetimes::DEFAULT;
/// The time the flows of a test start at.
const T0: u32 = 1_000;

/// Stops the datapath's clock at `now` (seconds).
fn set_time(datapath: &mut Datapath, now: u32) {
    datapath.set_config(DatapathConfig {
        events_per_sec: EVENTS_PER_SEC,
        clock_offset: now,
        ..DatapathConfig::default()
    });
    assert_eq!(datapath.now(), now, "the agent reads the datapath's clock");
}

/// A datapath with `services`, its clock at `T0`.
fn datapath_with(services: &[lb_agent::model::DesiredService]) -> Datapath {
    let mut datapath = Datapath::load();
    set_time(&mut datapath, T0);
    datapath.sync(services);
    datapath
}

/// Sends `frame` through from-pod and returns what left.
fn send(datapath: &Datapath, frame: &[u8]) -> Vec<u8> {
    let run = datapath.run(Hook::FromPod, frame);
    assert_eq!(run.verdict, TC_ACT_UNSPEC, "passed on");
    run.frame
}

/// The (expires, flags) of the flow's service entry and of its reply entry.
fn entries(datapath: &Datapath) -> ((u32, u16), (u32, u16)) {
    let all = datapath.conntrack();
    let find = |kind| {
        let found: Vec<_> = all.iter().filter(|(_, e)| e.kind() == kind).collect();
        assert_eq!(found.len(), 1, "one entry of kind {kind}: {all:?}");
        (found[0].1.expires(), found[0].1.flags())
    };
    (find(CT_SERVICE), find(CT_REPLY))
}

fn fin(from: &str, to: &str) -> Vec<u8> {
    Frame::tcp(from, to, tcp_flags::FIN | tcp_flags::ACK).bytes()
}

/// Opens a TCP flow through the handshake at `T0`: SYN, SYN-ACK, ACK.
fn established(datapath: &Datapath) {
    send(datapath, &tcp_syn(POD, VIP));
    assert_eq!(send(datapath, &tcp_syn_ack(A, POD)), tcp_syn_ack(VIP, POD));
    send(datapath, &tcp_ack(POD, VIP));
}

#[test]
fn a_syn_only_flow_takes_the_syn_lifetime_in_both_entries() {
    let datapath = datapath_with(&[service(FRONTEND, &[A])]);
    send(&datapath, &tcp_syn(POD, VIP));
    let ((service, service_flags), (reply, reply_flags)) = entries(&datapath);
    assert_eq!((service, reply), (T0 + L.tcp_syn, T0 + L.tcp_syn));
    assert_eq!((service_flags & CT_F_ESTABLISHED, reply_flags), (0, 0));
    assert_eq!(
        datapath.conntrack_of(LB4_CT_TCP).len(),
        2,
        "TCP flows live in LB4_CT_TCP"
    );
}

#[test]
fn a_reply_alone_does_not_establish_the_flow() {
    let datapath = datapath_with(&[service(FRONTEND, &[A])]);
    send(&datapath, &tcp_syn(POD, VIP));
    send(&datapath, &tcp_syn_ack(A, POD));
    let ((service, service_flags), (reply, reply_flags)) = entries(&datapath);
    assert_eq!((service, reply), (T0 + L.tcp_syn, T0 + L.tcp_syn));
    assert_eq!(
        (service_flags, reply_flags),
        (CT_F_SEEN_REPLY, CT_F_SEEN_REPLY)
    );
}

#[test]
fn an_established_flow_takes_the_long_lifetimes_in_both_entries() {
    let datapath = datapath_with(&[service(FRONTEND, &[A])]);
    established(&datapath);
    let ((service, service_flags), (reply, reply_flags)) = entries(&datapath);
    assert_eq!((service, reply), (T0 + L.service_tcp, T0 + L.tcp));
    let both = CT_F_SEEN_REPLY | CT_F_ESTABLISHED;
    assert_eq!((service_flags, reply_flags), (both, both));
}

#[test]
fn a_packet_moves_the_expiry_forward() {
    let mut datapath = datapath_with(&[service(FRONTEND, &[A])]);
    established(&datapath);
    set_time(&mut datapath, T0 + 500);
    send(&datapath, &tcp_ack(POD, VIP));
    let ((service, _), (reply, _)) = entries(&datapath);
    assert_eq!(service, T0 + 500 + L.service_tcp, "the client's packet");
    assert_eq!(reply, T0 + L.tcp, "the reply entry waits for a reply");
    send(&datapath, &tcp_ack(A, POD));
    assert_eq!(entries(&datapath).1.0, T0 + 500 + L.tcp);
}

#[test]
fn a_fin_shortens_both_entries_to_the_closing_lifetimes() {
    let datapath = datapath_with(&[service(FRONTEND, &[A])]);
    established(&datapath);
    send(&datapath, &fin(POD, VIP));
    let ((service, service_flags), (reply, reply_flags)) = entries(&datapath);
    assert_eq!((service, reply), (T0 + L.service_tcp_grace, T0 + L.tcp_fin));
    assert_ne!(service_flags & CT_F_CLOSING, 0);
    assert_ne!(reply_flags & CT_F_CLOSING, 0);
}

#[test]
fn a_rst_from_the_backend_closes_the_flow_too() {
    let datapath = datapath_with(&[service(FRONTEND, &[A])]);
    established(&datapath);
    send(&datapath, &Frame::tcp(A, POD, tcp_flags::RST).bytes());
    let ((service, _), (reply, _)) = entries(&datapath);
    assert_eq!((service, reply), (T0 + L.service_tcp_grace, T0 + L.tcp_fin));
}

#[test]
fn a_udp_flow_takes_the_any_lifetimes_in_the_any_map() {
    let datapath = datapath_with(&[service(DNS, &[DNS_A])]);
    send(&datapath, &udp(POD, DNS_VIP));
    send(&datapath, &udp(DNS_A, POD));
    let ((service, _), (reply, _)) = entries(&datapath);
    assert_eq!((service, reply), (T0 + L.service_any, T0 + L.any));
    assert_eq!(datapath.conntrack_of(LB4_CT_ANY).len(), 2);
    assert_eq!(datapath.conntrack_of(LB4_CT_TCP).len(), 0);
}

#[test]
fn the_lifetimes_come_from_the_configuration() {
    let mut datapath = Datapath::load();
    datapath.set_config(DatapathConfig {
        clock_offset: T0,
        lifetimes: CtLifetimes {
            service_any: 7,
            any: 9,
            ..L
        },
        ..DatapathConfig::default()
    });
    datapath.sync(&[service(DNS, &[DNS_A])]);
    send(&datapath, &udp(POD, DNS_VIP));
    let ((service, _), (reply, _)) = entries(&datapath);
    assert_eq!((service, reply), (T0 + 7, T0 + 9));
}

#[test]
fn a_reply_after_its_entry_expired_is_not_translated() {
    let mut datapath = datapath_with(&[service(FRONTEND, &[A])]);
    send(&datapath, &tcp_syn(POD, VIP));
    set_time(&mut datapath, T0 + L.tcp_syn);
    let late = tcp_syn_ack(A, POD);
    assert_eq!(send(&datapath, &late), late, "passed on untranslated");
}

#[test]
fn a_packet_of_an_expired_flow_starts_a_new_one() {
    let mut datapath = datapath_with(&[service(DNS, &[DNS_A])]);
    send(&datapath, &udp(POD, DNS_VIP));
    send(&datapath, &udp(DNS_A, POD));
    let later = T0 + L.service_any + 1;
    set_time(&mut datapath, later);
    assert_eq!(
        read_checked(&send(&datapath, &udp(POD, DNS_VIP)))
            .dst
            .to_string(),
        DNS_A
    );
    let ((service, service_flags), (reply, reply_flags)) = entries(&datapath);
    assert_eq!((service, reply), (later + L.service_any, later + L.any));
    assert_eq!(
        (service_flags, reply_flags),
        (0, 0),
        "a new flow: no reply seen"
    );
}

#[test]
fn a_new_syn_on_a_closing_flow_reopens_it() {
    let datapath = datapath_with(&[service(FRONTEND, &[A])]);
    established(&datapath);
    send(&datapath, &fin(POD, VIP));
    send(&datapath, &tcp_syn(POD, VIP));
    let ((service, service_flags), (reply, reply_flags)) = entries(&datapath);
    assert_eq!((service_flags, reply_flags), (0, 0));
    assert_eq!((service, reply), (T0 + L.tcp_syn, T0 + L.tcp_syn));
}

#[test]
fn a_new_flow_follows_an_entry_another_cpu_created_first() {
    // The entry another CPU just wrote for this very flow: to B, although only A is left to
    // choose from now; B is still programmed (terminating), so the flow keeps it.
    const B: &str = "10.244.2.6:8080";
    use lb_tests::fixture::ServiceExt as _;
    let mut datapath = datapath_with(&[service(FRONTEND, &[A]).terminating(&[B])]);
    let b = datapath.backend_id(B).expect("B is programmed");
    let winner = CtService {
        expires: T0 + L.tcp_syn,
        kind: CT_SERVICE,
        backend_id: b,
        rev_nat: 1,
        backend_addr: ip_be(ip("10.244.2.6")),
        backend_port: port_be(8080),
        ..CtService::default()
    };
    let key = lb_common::conntrack::CtKey4 {
        saddr: ip_be(ip("10.244.0.7")),
        daddr: ip_be(ip("10.96.0.10")),
        sport: port_be(40000),
        dport: port_be(80),
        proto: lb_common::proto::TCP,
        _pad: 0,
        _pad2: 0,
    };
    datapath.insert_conntrack(LB4_CT_TCP, key, CtEntry::from(winner));
    let out = send(&datapath, &tcp_ack(POD, VIP));
    assert_eq!(read_checked(&out).dst.to_string(), B);
}

#[test]
fn udp_churn_that_overflows_the_any_map_leaves_tcp_flows_alone() {
    let mut datapath = Datapath::load_with(LoadOptions {
        ct_any_max_entries: Some(64),
        ..LoadOptions::default()
    });
    set_time(&mut datapath, T0);
    datapath.sync(&[service(FRONTEND, &[A]), service(DNS, &[DNS_A])]);
    established(&datapath);
    for port in 20_000..20_500u16 {
        send(&datapath, &udp(&format!("10.244.0.7:{port}"), DNS_VIP));
    }
    assert!(
        datapath.conntrack_of(LB4_CT_ANY).len() <= 64,
        "the any map is full"
    );
    assert_eq!(
        datapath.conntrack_of(LB4_CT_TCP).len(),
        2,
        "the TCP flow's entries"
    );
    assert_eq!(
        send(&datapath, &tcp_ack(A, POD)),
        tcp_ack(VIP, POD),
        "its replies are still translated"
    );
}

#[test]
fn a_second_vip_sharing_the_backend_from_the_same_client_port_is_refused_with_155() {
    // Both flows would reach A as 10.244.0.7:40000 → A: one connection to A, whose replies
    // could only be translated back to one VIP.
    const OTHER: &str = "10.96.0.11:80";
    let datapath = datapath_with(&[service(FRONTEND, &[A]), service("10.96.0.11:80/TCP", &[A])]);
    send(&datapath, &tcp_syn(POD, VIP));
    let run = datapath.run(Hook::FromPod, &tcp_syn(POD, OTHER));
    assert_eq!(run.verdict, TC_ACT_SHOT);
    assert_eq!(
        datapath.drop_count(DropReason::CtCreateFailed, Hook::FromPod),
        1
    );
    assert_eq!(
        send(&datapath, &tcp_syn_ack(A, POD)),
        tcp_syn_ack(VIP, POD),
        "the first flow's replies still go back to its own VIP"
    );
    assert_eq!(
        datapath.conntrack().len(),
        2,
        "the refused flow left nothing"
    );
}

#[test]
fn gc_deletes_expired_entries_keeps_live_ones_and_reports_what_they_name() {
    let mut datapath = datapath_with(&[service(FRONTEND, &[A]), service(DNS, &[DNS_A])]);
    established(&datapath);
    send(&datapath, &udp(POD, DNS_VIP));
    let report = datapath.gc();
    assert_eq!(
        (report.deleted, report.entries_tcp, report.entries_any),
        (0, 2, 2)
    );
    set_time(&mut datapath, T0 + L.any);
    let report = datapath.gc();
    assert_eq!(
        (report.deleted, report.entries_tcp, report.entries_any),
        (2, 2, 0),
        "the UDP flow expired, the TCP one lives"
    );
    let tcp_service = datapath.conntrack()[0].1.service().rev_nat;
    assert_eq!(
        report.referenced_services.into_iter().collect::<Vec<_>>(),
        vec![tcp_service]
    );
    assert_eq!(
        report.referenced_backends.into_iter().collect::<Vec<_>>(),
        vec![datapath.backend_id(A).expect("A")]
    );
    assert_eq!(datapath.conntrack_of(LB4_CT_ANY), vec![]);
}

/// The GC reads `LB6_CT_TCP` and `LB6_CT_ANY` too (issue 14): IPv6 entries carry the IPv4
/// entries' header, so expiry, counting and the ids they name work alike (one id space).
#[test]
fn gc_covers_the_ipv6_conntrack_maps_with_the_same_header() {
    use aya::maps::{HashMap, Map, MapData};
    use lb_common::{
        conntrack::{CtEntry6, CtKey6, CtService6},
        maps::{LB6_CT_ANY, LB6_CT_TCP},
    };
    let datapath = datapath_with(&[]);
    let entry = |expires: u32, kind: u8, rev_nat: u32, backend_id: u32| {
        CtEntry6::from(CtService6 {
            expires,
            kind,
            rev_nat,
            backend_id,
            ..CtService6::default()
        })
    };
    let key = |sport: u16, proto: u8| CtKey6 {
        saddr: lb_common::addr6_from_octets([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7]),
        daddr: lb_common::addr6_from_octets([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10]),
        sport: sport.to_be(),
        dport: 80u16.to_be(),
        proto,
        _pad: 0,
        _pad2: 0,
    };
    let open = |name: &str| -> HashMap<MapData, CtKey6, CtEntry6> {
        let data = MapData::from_pin(datapath.pin_dir().join(name)).expect("open the pin");
        HashMap::try_from(Map::LruHashMap(data)).expect("an IPv6 conntrack map")
    };
    let mut tcp = open(LB6_CT_TCP);
    tcp.insert(key(1, 6), entry(T0 + 100, CT_SERVICE, 7, 70), 0)
        .expect("live service entry");
    tcp.insert(key(2, 6), entry(T0 + 100, CT_REPLY, 8, 80), 0)
        .expect("live reply entry");
    tcp.insert(key(3, 6), entry(T0 - 1, CT_SERVICE, 9, 90), 0)
        .expect("expired entry");
    let mut any = open(LB6_CT_ANY);
    any.insert(key(4, 17), entry(T0, CT_SERVICE, 10, 100), 0)
        .expect("entry expiring now");

    let report = datapath.gc();
    assert_eq!(
        (report.deleted, report.entries_tcp, report.entries_any),
        (2, 2, 0)
    );
    let mut services: Vec<u32> = report.referenced_services.into_iter().collect();
    services.sort_unstable();
    assert_eq!(services, [7, 8]);
    let mut backends: Vec<u32> = report.referenced_backends.into_iter().collect();
    backends.sort_unstable();
    assert_eq!(backends, [70, 80]);
    assert_eq!(tcp.keys().count(), 2, "the live entries stay");
    assert_eq!(any.keys().count(), 0);
}
