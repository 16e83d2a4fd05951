//! Replies of host-network backends (`host_reply.rs`, `from_host` on egress): a reply the
//! host's own stack sends for a flow the ingress hooks DNATed to the node's address is
//! reverse-NATed to the VIP; a forwarded packet, and a host packet of no flow, pass untouched.

use aya::maps::{Array, Map, MapData};
use lb_common::drop::Hook;
use lb_common::filter::{FilterWord, reply_slot, word_and_flag};
use lb_common::{maps, proto};
use lb_testkit::packet::*;
use lb_tests::fixture::{Datapath, TC_ACT_UNSPEC, service};

const FRONTEND: &str = "10.96.0.1:443/TCP";
const VIP: &str = "10.96.0.1:443";
const DNS: &str = "10.96.0.10:53/UDP";
const DNS_VIP: &str = "10.96.0.10:53";
/// The node's own address: the backend is a server in the host's network namespace.
const HOST_BACKEND: &str = "192.168.56.4:6443";
const HOST_DNS: &str = "192.168.56.4:5353";
const POD: &str = "10.244.0.7:40000";

/// A datapath with both Services on the host backend, and a pod's first packet to each
/// through from-pod.
fn with_flows() -> Datapath {
    let mut datapath = Datapath::load();
    datapath.sync(&[
        service(FRONTEND, &[HOST_BACKEND]),
        service(DNS, &[HOST_DNS]),
    ]);
    for (frame, backend) in [
        (tcp_syn(POD, VIP), HOST_BACKEND),
        (udp(POD, DNS_VIP), HOST_DNS),
    ] {
        let run = datapath.run(Hook::FromPod, &frame);
        assert_eq!(run.verdict, TC_ACT_UNSPEC);
        assert_eq!(read_checked(&run.frame).dst.to_string(), backend);
    }
    datapath
}

#[test]
fn a_host_backends_tcp_reply_is_reverse_nated_to_the_vip() {
    let datapath = with_flows();
    let run = datapath.run(Hook::FromHost, &tcp_syn_ack(HOST_BACKEND, POD));
    assert_eq!(run.verdict, TC_ACT_UNSPEC);
    read_checked(&run.frame);
    assert_eq!(run.frame, tcp_syn_ack(VIP, POD));
}

#[test]
fn a_host_backends_udp_reply_is_reverse_nated_to_the_vip() {
    let datapath = with_flows();
    let run = datapath.run(Hook::FromHost, &udp(HOST_DNS, POD));
    assert_eq!(run.verdict, TC_ACT_UNSPEC);
    read_checked(&run.frame);
    assert_eq!(run.frame, udp(DNS_VIP, POD));
}

#[test]
fn a_forwarded_packet_is_left_to_the_ingress_hooks() {
    let datapath = with_flows();
    // Arrived on an interface (lo stands for any): it passed an ingress hook already.
    let frame = tcp_syn_ack(HOST_BACKEND, POD);
    let run = datapath.run_on(Hook::FromHost, &frame, 1);
    assert_eq!(run.verdict, TC_ACT_UNSPEC);
    assert_eq!(run.frame, frame);
}

#[test]
fn a_host_packet_of_no_flow_passes_untouched() {
    let datapath = with_flows();
    for frame in [
        tcp_ack("192.168.56.4:22", POD),
        tcp_syn("192.168.56.4:40001", VIP),
        udp("192.168.56.4:5353", "10.244.0.8:53"),
    ] {
        let run = datapath.run(Hook::FromHost, &frame);
        assert_eq!(run.verdict, TC_ACT_UNSPEC);
        assert_eq!(run.frame, frame);
    }
}

#[test]
fn a_host_reply_whose_source_the_reply_filter_does_not_flag_passes_before_any_lookup() {
    let datapath = with_flows();
    // Clear the flag of the host backend's replies behind the datapath's back: the filter then
    // says "no reply entry has this source", and from-host believes it, as the ingress hooks do.
    let (word, _) = word_and_flag(reply_slot(
        u32::from(std::net::Ipv4Addr::new(192, 168, 56, 4)).to_be(),
        6443u16.to_be(),
        proto::TCP,
    ));
    let data = MapData::from_pin(datapath.pin_dir().join(maps::LB4_REPLY_SRCS))
        .expect("open the pinned reply filter");
    Array::<_, FilterWord>::try_from(Map::Array(data))
        .expect("an array of filter words")
        .set(word, FilterWord::default(), 0)
        .expect("clear the word");
    let frame = tcp_syn_ack(HOST_BACKEND, POD);
    let run = datapath.run(Hook::FromHost, &frame);
    assert_eq!(run.verdict, TC_ACT_UNSPEC);
    assert_eq!(run.frame, frame, "passed untouched");
    // The UDP flow's flag is another word's: its reply is still translated.
    assert_eq!(
        datapath.run(Hook::FromHost, &udp(HOST_DNS, POD)).frame,
        udp(DNS_VIP, POD)
    );
}

/// Cost per packet of `from_host` under `BPF_PROG_TEST_RUN` (kernel-measured, single runs
/// averaged, so each includes the same per-run overhead): a forwarded packet (the early return
/// every packet to a pod pays), a host packet of no flow (the filters' two array lookups) and a host
/// backend's reply (lookup and rewrite). Run with
/// `cargo test -p lb-tests --test datapath_host_reply -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a check; run it explicitly"]
fn cost_per_packet_of_from_host() {
    let datapath = with_flows();
    let average = |run: &dyn Fn() -> std::time::Duration| {
        (0..20_000u32).map(|_| run()).sum::<std::time::Duration>() / 20_000
    };
    let reply = tcp_ack(HOST_BACKEND, POD);
    let unrelated = tcp_ack("192.168.56.4:22", POD);
    let forwarded = average(&|| datapath.run_on(Hook::FromHost, &reply, 1).duration);
    let no_flow = average(&|| datapath.run(Hook::FromHost, &unrelated).duration);
    let translated = average(&|| datapath.run(Hook::FromHost, &reply).duration);
    println!(
        "from_host: forwarded {forwarded:?}, host packet of no flow {no_flow:?}, \
         host backend's reply {translated:?}"
    );
}
