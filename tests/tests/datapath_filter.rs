//! The pass-through filters (`filter.rs`, `lb_common::filter`): a packet whose destination is
//! no frontend's address and whose source is no reply entry's passes before any conntrack or
//! frontend lookup. The agent flags every frontend address while it has one; the datapath flags
//! a reply source when it creates the reply entry, and neither it nor the agent's GC clears it,
//! so that replies are still found after their service is gone.

use std::net::Ipv4Addr;

use aya::maps::{Array, Map, MapData};
use lb_common::{
    config::{DatapathConfig, EVENTS_PER_SEC},
    drop::{DropReason, Hook},
    filter::{FilterWord, reply_slot, vip_slot, word_and_flag},
    maps, proto,
};
use lb_testkit::packet::*;
use lb_tests::fixture::{Datapath, ServiceExt as _, TC_ACT_UNSPEC, service};

const VIP: &str = "10.96.0.10:80";
const FRONTEND: &str = "10.96.0.10:80/TCP";
const POD: &str = "10.244.0.7:40000";
const A: &str = "10.244.1.5:8080";

fn filter(datapath: &Datapath, name: &str) -> Array<MapData, FilterWord> {
    let data = MapData::from_pin(datapath.pin_dir().join(name)).expect("open the pinned filter");
    Array::try_from(Map::Array(data)).expect("an array of filter words")
}

fn flag(datapath: &Datapath, name: &str, slot: u32) -> u8 {
    let (word, flag) = word_and_flag(slot);
    filter(datapath, name).get(&word, 0).expect("read a word")[flag]
}

fn be_addr(text: &str) -> u32 {
    u32::from(text.parse::<Ipv4Addr>().expect("an address")).to_be()
}

fn vip_flag(datapath: &Datapath, addr: &str) -> u8 {
    flag(datapath, maps::LB4_VIP_FILTER, vip_slot(be_addr(addr)))
}

fn reply_flag(datapath: &Datapath, addr: &str, port: u16) -> u8 {
    flag(
        datapath,
        maps::LB4_REPLY_SRCS,
        reply_slot(be_addr(addr), port.to_be(), proto::TCP),
    )
}

#[test]
fn a_frontend_address_is_flagged_while_it_has_a_frontend() {
    let mut datapath = Datapath::load();
    assert_eq!(vip_flag(&datapath, "10.96.0.10"), 0);
    datapath.sync(&[service(FRONTEND, &[A]), service("10.96.0.10:53/UDP", &[A])]);
    assert_eq!(vip_flag(&datapath, "10.96.0.10"), 1);
    // One of the address's frontends goes: the other still needs the flag.
    datapath.sync(&[service("10.96.0.10:53/UDP", &[A])]);
    assert_eq!(vip_flag(&datapath, "10.96.0.10"), 1);
    // An unknown port of the ClusterIP is still refused (158), which the flag makes possible.
    let run = datapath.run(Hook::FromPod, &tcp_syn(POD, "10.96.0.10:81"));
    assert_ne!(run.verdict, TC_ACT_UNSPEC);
    assert_eq!(datapath.drop_count(DropReason::NoService, Hook::FromPod), 1);
    datapath.sync(&[]);
    assert_eq!(vip_flag(&datapath, "10.96.0.10"), 0);
}

#[test]
fn a_restarted_agent_keeps_the_flags_of_the_frontends_it_finds() {
    let mut datapath = Datapath::load();
    datapath.sync(&[service(FRONTEND, &[A])]);
    // A new syncer over the same maps (as after a restart) counts what is there: removing the
    // frontend then clears its flag.
    datapath.behind_sync(|_| ());
    assert_eq!(vip_flag(&datapath, "10.96.0.10"), 1);
    datapath.sync(&[]);
    assert_eq!(vip_flag(&datapath, "10.96.0.10"), 0);
}

#[test]
fn the_reply_filter_decides_whether_a_reply_is_looked_up() {
    let mut datapath = Datapath::load();
    datapath.sync(&[service(FRONTEND, &[A])]);
    assert_eq!(reply_flag(&datapath, "10.244.1.5", 8080), 0);
    let run = datapath.run(Hook::FromPod, &tcp_syn(POD, VIP));
    assert_eq!(run.frame, tcp_syn(POD, A));
    assert_eq!(
        reply_flag(&datapath, "10.244.1.5", 8080),
        1,
        "flagged with the reply entry"
    );
    let reply = tcp_syn_ack(A, POD);
    assert_eq!(
        datapath.run(Hook::FromPod, &reply).frame,
        tcp_syn_ack(VIP, POD)
    );
    // Clear the flag behind the datapath's back: the reply is no longer looked up.
    let (word, _) = word_and_flag(reply_slot(
        be_addr("10.244.1.5"),
        8080u16.to_be(),
        proto::TCP,
    ));
    filter(&datapath, maps::LB4_REPLY_SRCS)
        .set(word, FilterWord::default(), 0)
        .expect("clear the word");
    let run = datapath.run(Hook::FromPod, &reply);
    assert_eq!(run.verdict, TC_ACT_UNSPEC);
    assert_eq!(run.frame, reply, "passed untouched");
}

#[test]
fn replies_are_still_found_after_their_service_and_backend_are_gone() {
    let mut datapath = Datapath::load();
    datapath.sync(&[service(FRONTEND, &[A]).remote()]);
    datapath.run(Hook::FromPod, &tcp_syn(POD, VIP));
    datapath.sync(&[]);
    assert_eq!(vip_flag(&datapath, "10.96.0.10"), 0);
    let run = datapath.run(Hook::FromNetdev, &tcp_syn_ack(A, POD));
    assert_eq!(run.verdict, TC_ACT_UNSPEC);
    assert_eq!(run.frame, tcp_syn_ack(VIP, POD));
}

#[test]
fn traffic_that_is_no_services_passes_untouched_from_both_hooks() {
    let mut datapath = Datapath::load();
    datapath.sync(&[service(FRONTEND, &[A])]);
    for frame in [
        tcp_syn(POD, "10.244.9.9:80"),
        tcp_ack("10.244.9.9:80", POD),
        udp(POD, "10.244.9.9:53"),
        // The backend's address, from another port: no reply entry has that source.
        tcp_ack("10.244.1.5:9090", POD),
    ] {
        for hook in [Hook::FromPod, Hook::FromNetdev] {
            let run = datapath.run(hook, &frame);
            assert_eq!(run.verdict, TC_ACT_UNSPEC);
            assert_eq!(run.frame, frame);
        }
    }
    assert!(datapath.conntrack().is_empty());
}

#[test]
fn a_new_reply_filter_starts_from_the_reply_entries_already_in_conntrack() {
    let mut datapath = Datapath::load();
    datapath.sync(&[service(FRONTEND, &[A])]);
    datapath.run(Hook::FromPod, &tcp_syn(POD, VIP));
    // As after an upgrade from a datapath without the filter: conntrack is pinned, the filter
    // is not, so the next load creates it.
    std::fs::remove_file(datapath.pin_dir().join(maps::LB4_REPLY_SRCS)).expect("unpin");
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
        config: lb_common::config::DatapathConfig::default(),
    })
    .expect("load again over the pinned maps");
    assert_eq!(
        reply_flag(&datapath, "10.244.1.5", 8080),
        1,
        "the new filter has the flag of the reply entry conntrack holds"
    );
    assert_eq!(reply_flag(&datapath, "10.244.2.6", 8080), 0);
}

#[test]
fn gc_deletes_an_expired_reply_entry_but_leaves_its_flag_set() {
    // The flag cannot be proven unused while the datapath may set it for a new flow (see
    // lb-agent's datapath/conntrack.rs), so the GC never clears it.
    let mut datapath = Datapath::load();
    let at = |datapath: &mut Datapath, now: u32| {
        datapath.set_config(DatapathConfig {
            events_per_sec: EVENTS_PER_SEC,
            clock_offset: now,
            ..DatapathConfig::default()
        });
    };
    at(&mut datapath, 1_000);
    datapath.sync(&[service(FRONTEND, &[A])]);
    datapath.run(Hook::FromPod, &tcp_syn(POD, VIP));
    assert_eq!(datapath.conntrack().len(), 2, "the flow's two entries");
    at(&mut datapath, 1_000 + 24 * 3600);
    let report = datapath.gc();
    assert_eq!(report.deleted, 2, "both entries expired");
    assert!(datapath.conntrack().is_empty());
    assert_eq!(
        reply_flag(&datapath, "10.244.1.5", 8080),
        1,
        "the reply source keeps its flag"
    );
    // A new flow to the same backend is translated both ways, as it must be whether or not
    // the flag was cleared in between.
    at(&mut datapath, 1_000 + 24 * 3600 + 1);
    let run = datapath.run(Hook::FromPod, &tcp_syn(POD, VIP));
    assert_eq!(run.frame, tcp_syn(POD, A));
    assert_eq!(
        datapath.run(Hook::FromPod, &tcp_syn_ack(A, POD)).frame,
        tcp_syn_ack(VIP, POD)
    );
}
