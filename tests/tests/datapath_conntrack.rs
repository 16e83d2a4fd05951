//! Conntrack (`conntrack.rs`): established flows keep their backend while it is there, a
//! terminating one included (drain); a SYN re-selects when its backend can no longer take
//! flows, any packet re-selects when its backend is gone, a flow whose service was deleted is
//! no longer translated, and replies are reverse-NATed back to VIP:port. A flow records the
//! generation of the service maps its frontend and backend were found in place at, and skips
//! both lookups until a removal moves the generation on.

use lb_agent::datapath::{BackendId, LbMaps as _};
use lb_common::{
    conntrack::{CT_F_CLOSING, CT_REPLY, CT_SERVICE},
    drop::Hook,
    event::tcp_flags,
};
use lb_testkit::packet::*;
use lb_tests::fixture::{Datapath, ServiceExt as _, TC_ACT_UNSPEC, service};

const VIP: &str = "10.96.0.10:80";
const FRONTEND: &str = "10.96.0.10:80/TCP";
const POD: &str = "10.244.0.7:40000";
const A: &str = "10.244.1.5:8080";
const B: &str = "10.244.2.6:8080";
const DNS: &str = "10.96.0.10:53/UDP";
const DNS_VIP: &str = "10.96.0.10:53";
const DNS_A: &str = "10.244.1.5:53";
const DNS_B: &str = "10.244.2.6:53";

/// Sends `frame` through from-pod and returns the destination it left with.
fn destination(datapath: &Datapath, frame: &[u8]) -> String {
    let run = datapath.run(Hook::FromPod, frame);
    assert_eq!(run.verdict, TC_ACT_UNSPEC);
    read_checked(&run.frame).dst.to_string()
}

/// The backend id the flow's service entry records.
fn service_entry_backend(datapath: &Datapath) -> Option<u32> {
    datapath
        .conntrack()
        .into_iter()
        .find(|(_, entry)| entry.kind() == CT_SERVICE)
        .map(|(_, entry)| entry.service().backend_id)
}

#[test]
fn an_established_flow_keeps_its_backend() {
    let mut datapath = Datapath::load();
    datapath.sync(&[service(FRONTEND, &[A, B])]);
    let first = destination(&datapath, &tcp_syn(POD, VIP));
    for _ in 0..32 {
        assert_eq!(destination(&datapath, &tcp_ack(POD, VIP)), first);
    }
}

/// The generation the flow's service entry records its frontend and backend were checked at.
fn service_entry_generation(datapath: &Datapath) -> Option<u32> {
    datapath
        .conntrack()
        .into_iter()
        .find(|(_, entry)| entry.kind() == CT_SERVICE)
        .map(|(_, entry)| entry.service().generation)
}

#[test]
fn a_flow_records_the_generation_it_was_checked_at_and_checks_again_after_a_removal() {
    let mut datapath = Datapath::load();
    datapath.sync(&[service(FRONTEND, &[A]), service(DNS, &[DNS_A])]);
    let first = datapath.behind_sync(|maps| maps.generation());
    assert_ne!(first, 0, "the agent writes a generation");
    assert_eq!(destination(&datapath, &tcp_syn(POD, VIP)), A);
    assert_eq!(service_entry_generation(&datapath), Some(first));
    // Adding nothing and removing nothing leaves the generation alone.
    datapath.sync(&[service(FRONTEND, &[A]), service(DNS, &[DNS_A])]);
    assert_eq!(datapath.behind_sync(|maps| maps.generation()), first);
    // Another service's removal moves it on: the next packet looks its frontend and backend
    // up again (still there) and records the new generation.
    datapath.sync(&[service(FRONTEND, &[A])]);
    let second = datapath.behind_sync(|maps| maps.generation());
    assert_ne!(second, first);
    assert_eq!(destination(&datapath, &tcp_ack(POD, VIP)), A);
    assert_eq!(service_entry_generation(&datapath), Some(second));
}

#[test]
fn a_flow_records_a_service_entry_and_a_reply_entry() {
    let mut datapath = Datapath::load();
    datapath.sync(&[service(FRONTEND, &[A])]);
    destination(&datapath, &tcp_syn(POD, VIP));
    let mut entries = datapath.conntrack();
    entries.sort_by_key(|(_, entry)| entry.kind());
    assert_eq!(entries.len(), 2);
    let (service_key, service_entry) = (entries[0].0, entries[0].1.service());
    assert_eq!(service_entry.kind, CT_SERVICE);
    assert_eq!(
        (service_key.saddr, service_key.sport),
        (ip_be(ip("10.244.0.7")), port_be(40000))
    );
    assert_eq!(
        (service_key.daddr, service_key.dport),
        (ip_be(ip("10.96.0.10")), port_be(80))
    );
    assert_eq!(Some(service_entry.backend_id), datapath.backend_id(A));
    assert_eq!(service_entry.rev_nat, 1);
    assert_eq!(
        (service_entry.backend_addr, service_entry.backend_port),
        (ip_be(ip("10.244.1.5")), port_be(8080))
    );
    let (reply_key, reply_entry) = (entries[1].0, entries[1].1.reply());
    assert_eq!(reply_entry.kind, CT_REPLY);
    assert_eq!(
        (reply_key.saddr, reply_key.sport),
        (ip_be(ip("10.244.1.5")), port_be(8080))
    );
    assert_eq!(
        (reply_key.daddr, reply_key.dport),
        (ip_be(ip("10.244.0.7")), port_be(40000))
    );
    assert_eq!(reply_entry.rev_nat, 1);
    assert_eq!(
        (reply_entry.vip, reply_entry.vip_port),
        (ip_be(ip("10.96.0.10")), port_be(80)),
        "the reply entry carries the VIP:port its replies are restored to"
    );
}

#[test]
fn a_syn_to_a_deleted_backend_selects_again() {
    let mut datapath = Datapath::load();
    datapath.sync(&[service(FRONTEND, &[A])]);
    assert_eq!(destination(&datapath, &tcp_syn(POD, VIP)), A);
    // The agent replaces A by B: new backend and slot, master rewritten, then A deleted.
    datapath.sync(&[service(FRONTEND, &[B])]);
    assert_eq!(datapath.backend_id(A), None, "A is deleted");
    assert_eq!(destination(&datapath, &tcp_syn(POD, VIP)), B);
    assert_eq!(
        destination(&datapath, &tcp_ack(POD, VIP)),
        B,
        "the new choice sticks"
    );
}

#[test]
fn a_syn_to_a_terminating_backend_selects_an_active_one() {
    let mut datapath = Datapath::load();
    datapath.sync(&[service(FRONTEND, &[A])]);
    assert_eq!(destination(&datapath, &tcp_syn(POD, VIP)), A);
    datapath.sync(&[service(FRONTEND, &[B]).terminating(&[A])]);
    assert_eq!(destination(&datapath, &tcp_syn(POD, VIP)), B);
}

#[test]
fn non_syn_packets_keep_draining_to_a_terminating_backend() {
    let mut datapath = Datapath::load();
    datapath.sync(&[service(FRONTEND, &[A])]);
    assert_eq!(destination(&datapath, &tcp_syn(POD, VIP)), A);
    datapath.sync(&[service(FRONTEND, &[B]).terminating(&[A])]);
    assert_eq!(destination(&datapath, &tcp_ack(POD, VIP)), A);
}

#[test]
fn a_udp_flow_keeps_draining_to_a_terminating_backend() {
    let mut datapath = Datapath::load();
    datapath.sync(&[service(DNS, &[DNS_A])]);
    assert_eq!(destination(&datapath, &udp(POD, DNS_VIP)), DNS_A);
    datapath.sync(&[service(DNS, &[DNS_B]).terminating(&[DNS_A])]);
    assert_eq!(destination(&datapath, &udp(POD, DNS_VIP)), DNS_A);
}

#[test]
fn a_tcp_flow_whose_backend_was_removed_moves_to_a_remaining_one() {
    let mut datapath = Datapath::load();
    datapath.sync(&[service(FRONTEND, &[A])]);
    assert_eq!(destination(&datapath, &tcp_syn(POD, VIP)), A);
    datapath.sync(&[service(FRONTEND, &[B])]);
    assert_eq!(datapath.backend_id(A), None, "A is deleted");
    // B's stack answers this ACK of a connection it never saw with a RST: the client learns
    // at once instead of retransmitting into a backend that is gone.
    assert_eq!(destination(&datapath, &tcp_ack(POD, VIP)), B);
    assert_eq!(service_entry_backend(&datapath), datapath.backend_id(B));
    let rst = |src| Frame::tcp(src, POD, tcp_flags::RST).bytes();
    let run = datapath.run(Hook::FromPod, &rst(B));
    assert_eq!(run.verdict, TC_ACT_UNSPEC);
    assert_eq!(run.frame, rst(VIP), "B's reply is reverse-NATed");
}

#[test]
fn a_udp_flow_whose_backend_was_removed_moves_to_a_remaining_one() {
    let mut datapath = Datapath::load();
    datapath.sync(&[service(DNS, &[DNS_A])]);
    assert_eq!(destination(&datapath, &udp(POD, DNS_VIP)), DNS_A);
    datapath.sync(&[service(DNS, &[DNS_B])]);
    for _ in 0..4 {
        assert_eq!(destination(&datapath, &udp(POD, DNS_VIP)), DNS_B);
    }
    assert_eq!(service_entry_backend(&datapath), datapath.backend_id(DNS_B));
    let run = datapath.run(Hook::FromPod, &udp(DNS_B, POD));
    assert_eq!(run.verdict, TC_ACT_UNSPEC);
    assert_eq!(run.frame, udp(DNS_VIP, POD), "B's reply is reverse-NATed");
}

#[test]
fn a_flow_whose_backend_id_now_names_another_address_moves() {
    let mut datapath = Datapath::load();
    datapath.sync(&[service(DNS, &[DNS_A])]);
    assert_eq!(destination(&datapath, &udp(POD, DNS_VIP)), DNS_A);
    // A's id given to another address, as a reused id would be (sync itself always removes
    // the old flow's backend first, so this is written behind its back).
    let id = datapath.backend_id(DNS_A).expect("A is programmed");
    datapath.behind_sync(|maps| {
        let mut content = maps.read().expect("read the maps");
        let backend = content.backends.get_mut(&BackendId(id)).expect("A's entry");
        let lb_agent::datapath::maps::Backend::V4(backend4) = backend else {
            panic!("A is an IPv4 backend");
        };
        backend4.addr = ip_be(ip("10.244.3.9"));
        maps.upsert_backend(BackendId(id), backend)
            .expect("write the backend");
    });
    assert_eq!(destination(&datapath, &udp(POD, DNS_VIP)), "10.244.3.9:53");
}

#[test]
fn a_flow_whose_service_was_deleted_is_no_longer_translated() {
    let mut datapath = Datapath::load();
    datapath.sync(&[service(FRONTEND, &[A]), service(DNS, &[DNS_A])]);
    assert_eq!(destination(&datapath, &tcp_syn(POD, VIP)), A);
    assert_eq!(destination(&datapath, &udp(POD, DNS_VIP)), DNS_A);
    datapath.sync(&[]);
    for frame in [tcp_ack(POD, VIP), udp(POD, DNS_VIP)] {
        let run = datapath.run(Hook::FromPod, &frame);
        assert_eq!(run.verdict, TC_ACT_UNSPEC);
        assert_eq!(run.frame, frame, "passed on untranslated");
    }
}

#[test]
fn an_established_udp_flow_keeps_its_backend() {
    let mut datapath = Datapath::load();
    datapath.sync(&[service(
        "10.96.0.10:53/UDP",
        &["10.244.1.5:53", "10.244.2.6:53"],
    )]);
    let first = destination(&datapath, &udp(POD, "10.96.0.10:53"));
    for _ in 0..16 {
        assert_eq!(destination(&datapath, &udp(POD, "10.96.0.10:53")), first);
    }
}

#[test]
fn a_reply_from_a_local_backend_is_reverse_nated_to_the_vip_on_from_pod() {
    let mut datapath = Datapath::load();
    datapath.sync(&[service(FRONTEND, &[A])]);
    destination(&datapath, &tcp_syn(POD, VIP));
    let run = datapath.run(Hook::FromPod, &tcp_syn_ack(A, POD));
    assert_eq!(run.verdict, TC_ACT_UNSPEC);
    read_checked(&run.frame);
    assert_eq!(run.frame, tcp_syn_ack(VIP, POD));
}

#[test]
fn a_reply_from_a_remote_backend_is_reverse_nated_on_from_netdev() {
    let mut datapath = Datapath::load();
    datapath.sync(&[service(FRONTEND, &[A]).remote()]);
    destination(&datapath, &tcp_syn(POD, VIP));
    let run = datapath.run(Hook::FromNetdev, &tcp_syn_ack(A, POD));
    assert_eq!(run.verdict, TC_ACT_UNSPEC);
    assert_eq!(run.frame, tcp_syn_ack(VIP, POD));
}

#[test]
fn a_udp_reply_is_reverse_nated_to_the_vip() {
    let mut datapath = Datapath::load();
    datapath.sync(&[service("10.96.0.10:53/UDP", &["10.244.1.5:53"])]);
    destination(&datapath, &udp(POD, "10.96.0.10:53"));
    let run = datapath.run(Hook::FromPod, &udp("10.244.1.5:53", POD));
    assert_eq!(run.frame, udp("10.96.0.10:53", POD));
}

#[test]
fn a_fin_marks_the_flow_closing() {
    let mut datapath = Datapath::load();
    datapath.sync(&[service(FRONTEND, &[A])]);
    destination(&datapath, &tcp_syn(POD, VIP));
    let fin = Frame::tcp(POD, VIP, tcp_flags::FIN | tcp_flags::ACK).bytes();
    assert_eq!(destination(&datapath, &fin), A);
    let closing = datapath
        .conntrack()
        .into_iter()
        .find(|(_, entry)| entry.kind() == CT_SERVICE)
        .map(|(_, entry)| entry.service().flags & CT_F_CLOSING != 0);
    assert_eq!(closing, Some(true));
}
