//! The agent's sync against the kernel's maps: `sync::Syncer` over `datapath::maps::AyaMaps`
//! (batch writes), loaded exactly as lb-agent loads them. What the maps hold is compared whole,
//! as `datapath::dump::render` prints it; a full map is a clear error that loses nothing.
use std::{
    collections::HashSet,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Instant,
};

use lb_agent::{
    datapath::{self, BackendId, Datapath, LbMaps as _, LoadOptions, ServiceId, dump},
    sync::{Syncer, plan},
};
use lb_common::{config::DatapathConfig, conntrack::CT_REPLY, drop::Hook};
use lb_testkit::packet::{read_checked, tcp_ack, tcp_syn, tcp_syn_ack};
use lb_tests::fixture::{self, ServiceExt as _, TC_ACT_UNSPEC, service};

/// A bpf root removed (maps unpinned) on drop.
struct BpfRoot(PathBuf);

impl BpfRoot {
    fn new(test: &str) -> Self {
        lb_testkit::ensure_bpffs().expect("mount bpffs");
        Self(PathBuf::from(format!(
            "/sys/fs/bpf/lb-sync-{test}-{}",
            std::process::id()
        )))
    }
}

impl Drop for BpfRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn load(root: &BpfRoot, lb_map_max: u32) -> Arc<Mutex<datapath::maps::AyaMaps>> {
    let options = LoadOptions {
        bpf_root: root.0.clone(),
        ct_max_entries: 1024,
        ct_any_max_entries: 1024,
        lb_map_max,
        config: DatapathConfig::default(),
    };
    let Datapath { maps, .. } = Datapath::load(&options).expect("load lb-ebpf");
    Arc::new(Mutex::new(maps))
}

fn rendered(maps: &Mutex<datapath::maps::AyaMaps>) -> String {
    dump::render(&maps.lock().expect("maps lock").read().expect("read maps"))
}

#[test]
fn sync_programs_scales_and_empties_the_kernel_maps_exactly() {
    let root = BpfRoot::new("exact");
    let maps = load(&root, 1024);
    let mut syncer = Syncer::new(maps.clone()).expect("restore ids");

    syncer
        .sync(&[service(
            "10.96.0.10:80/TCP",
            &["10.244.1.5:8080", "10.244.1.6:8080"],
        )])
        .expect("first sync");
    assert_eq!(
        rendered(&maps),
        "BE 1 10.244.1.5:8080/TCP state=active flags=0x0\n\
         BE 2 10.244.1.6:8080/TCP state=active flags=0x0\n\
         REV 1 10.96.0.10:80\n\
         SVC 10.96.0.10:80/TCP slot=0 id=1 count=2 qcount=0 flags=0x1\n\
         SVC 10.96.0.10:80/TCP slot=1 backend=1\n\
         SVC 10.96.0.10:80/TCP slot=2 backend=2\n\
         VIP 10.96.0.10\n"
    );

    // .5 terminates, .7 arrives: the active ones take the first slots, .5 drains in qcount.
    syncer
        .sync(&[
            service("10.96.0.10:80/TCP", &["10.244.1.6:8080", "10.244.1.7:8080"])
                .terminating(&["10.244.1.5:8080"]),
        ])
        .expect("second sync");
    assert_eq!(
        rendered(&maps),
        "BE 1 10.244.1.5:8080/TCP state=terminating flags=0x0\n\
         BE 2 10.244.1.6:8080/TCP state=active flags=0x0\n\
         BE 3 10.244.1.7:8080/TCP state=active flags=0x0\n\
         REV 1 10.96.0.10:80\n\
         SVC 10.96.0.10:80/TCP slot=0 id=1 count=2 qcount=1 flags=0x1\n\
         SVC 10.96.0.10:80/TCP slot=1 backend=2\n\
         SVC 10.96.0.10:80/TCP slot=2 backend=3\n\
         SVC 10.96.0.10:80/TCP slot=3 backend=1\n\
         VIP 10.96.0.10\n"
    );

    // Someone else deleted an entry the syncer believes is there: the next pass still
    // converges (a batch delete that meets a missing key finishes one by one).
    {
        let mut guard = maps.lock().expect("maps lock");
        guard
            .delete_backend(BackendId(1))
            .expect("delete behind the syncer's back");
    }
    syncer.sync(&[]).expect("empty sync");
    assert_eq!(
        rendered(&maps),
        "REV 1 10.96.0.10:80\n",
        "every entry is gone once every service is, but the rev-NAT entry of its flows"
    );
    // The conntrack GC finds no entry naming the service: its rev-NAT entry goes too.
    syncer
        .release_unreferenced(Instant::now(), &HashSet::new(), &HashSet::new())
        .expect("release");
    assert_eq!(rendered(&maps), "", "nothing is left");
}

#[test]
fn a_full_map_is_a_clear_error_and_the_last_good_state_stays_programmed() {
    let root = BpfRoot::new("full");
    // Room for one frontend with two backends (master, wildcard, 2 slots), not for a second.
    let maps = load(&root, 4);
    let mut syncer = Syncer::new(maps.clone()).expect("restore ids");
    let first = service("10.96.0.10:80/TCP", &["10.244.1.5:8080", "10.244.1.6:8080"]);
    syncer
        .sync(std::slice::from_ref(&first))
        .expect("first sync fits");
    let good = rendered(&maps);

    let second = service("10.96.0.11:80/TCP", &["10.244.2.5:8080"]);
    let err = syncer
        .sync(&[first.clone(), second])
        .expect_err("the services map is full");
    let message = format!("{:#}", anyhow::Error::from(err));
    assert!(
        message.contains("LB4_SERVICES") && message.contains("bpf-lb-map-max"),
        "{message}"
    );

    let content = maps.lock().expect("maps lock").read().expect("read maps");
    plan::check_consistent(&content).expect("no slot points nowhere after the failure");
    for line in good.lines() {
        assert!(
            rendered(&maps).contains(line),
            "the first service is still programmed: {line}"
        );
    }
    // Once the excess goes away, the next pass converges back to exactly the good state.
    syncer
        .sync(std::slice::from_ref(&first))
        .expect("sync after the failure");
    // The second frontend's rev-NAT entry was written before the failure: its id is retired
    // and the entry kept until the conntrack GC finds no flow naming it.
    assert_eq!(
        rendered(&maps),
        good.replace(
            "REV 1 10.96.0.10:80\n",
            "REV 1 10.96.0.10:80\nREV 2 10.96.0.11:80\n"
        ),
        "the good state, and the retired rev-NAT entry"
    );
    syncer
        .release_unreferenced(Instant::now(), &HashSet::new(), &HashSet::new())
        .expect("release");
    assert_eq!(rendered(&maps), good);
}

/// The datapath's side of a retired service id: after a port change (80 → 8080) a reply of
/// an established :80 flow is still reverse-NATed to :80 while the flow's conntrack entries
/// live, the :80 frontend no longer translates, and the new frontend has a new id; once the
/// GC finds no flow naming the old id, its rev-NAT entry is gone.
#[test]
fn after_a_port_change_replies_of_the_old_ports_flows_are_still_reverse_nated() {
    const POD: &str = "10.244.0.7:40000";
    const BACKEND: &str = "10.244.1.5:8080";
    let mut datapath = fixture::Datapath::load();
    datapath.sync(&[service("10.96.0.10:80/TCP", &[BACKEND])]);
    let run = datapath.run(Hook::FromPod, &tcp_syn(POD, "10.96.0.10:80"));
    assert_eq!(read_checked(&run.frame).dst.to_string(), BACKEND);
    let old_id = referenced_services(&datapath);
    assert_eq!(old_id.len(), 1);

    datapath.sync(&[service("10.96.0.10:8080/TCP", &[BACKEND])]);
    let run = datapath.run(
        Hook::FromPod,
        &tcp_syn("10.244.0.7:40001", "10.96.0.10:8080"),
    );
    assert_eq!(read_checked(&run.frame).dst.to_string(), BACKEND);
    assert_eq!(
        referenced_services(&datapath).len(),
        2,
        "the new frontend does not reuse the retired id"
    );
    let run = datapath.run(Hook::FromPod, &tcp_syn_ack(BACKEND, POD));
    assert_eq!(run.verdict, TC_ACT_UNSPEC);
    read_checked(&run.frame);
    assert_eq!(
        run.frame,
        tcp_syn_ack("10.96.0.10:80", POD),
        "the reply still comes from VIP:80"
    );
    let ack = datapath.run(Hook::FromPod, &tcp_ack(POD, "10.96.0.10:80"));
    assert_eq!(
        read_checked(&ack.frame).dst.to_string(),
        "10.96.0.10:80",
        ":80 itself is no longer translated"
    );

    datapath
        .syncer()
        .release_unreferenced(Instant::now(), &old_id, &HashSet::new())
        .expect("release");
    assert_eq!(
        datapath
            .run(Hook::FromPod, &tcp_syn_ack(BACKEND, POD))
            .frame,
        tcp_syn_ack("10.96.0.10:80", POD),
        "kept while a conntrack entry names it"
    );
    datapath
        .syncer()
        .release_unreferenced(Instant::now(), &HashSet::new(), &HashSet::new())
        .expect("release");
    let old = *old_id.iter().next().expect("one id");
    let kept = datapath.behind_sync(|maps| {
        maps.read()
            .expect("read the maps")
            .revnat
            .contains_key(&old)
    });
    assert!(!kept, "no rev-NAT entry once no flow names the id");
    // The flow's reply entry records VIP:80 itself, so its replies stay translated until it
    // expires.
    assert_eq!(
        datapath
            .run(Hook::FromPod, &tcp_syn_ack(BACKEND, POD))
            .frame,
        tcp_syn_ack("10.96.0.10:80", POD),
    );
}

/// The service ids the conntrack entries name.
fn referenced_services(datapath: &fixture::Datapath) -> HashSet<ServiceId> {
    datapath
        .conntrack()
        .iter()
        .filter(|(_, entry)| entry.kind() == CT_REPLY)
        .map(|(_, entry)| ServiceId(entry.reply().rev_nat))
        .collect()
}

#[test]
fn source_ranges_round_trip_through_the_lpm_trie_and_a_restarted_syncer_rewrites_nothing() {
    use lb_agent::model::FrontendKind;
    let root = BpfRoot::new("ranges");
    let maps = load(&root, 1024);
    let mut syncer = Syncer::new(maps.clone()).expect("restore ids");
    let lb = |ranges: &[&str]| {
        service("203.0.113.10:80/TCP", &["10.244.1.5:8080"])
            .kind(FrontendKind::LoadBalancer)
            .source_ranges(ranges)
    };
    syncer
        .sync(&[lb(&["10.0.0.0/8", "192.168.56.10/32", "0.0.0.0/0"])])
        .expect("first sync");
    assert_eq!(
        rendered(&maps),
        "BE 1 10.244.1.5:8080/TCP state=active flags=0x0\n\
         REV 1 203.0.113.10:80\n\
         SRC 1 0.0.0.0/0\n\
         SRC 1 10.0.0.0/8\n\
         SRC 1 192.168.56.10/32\n\
         SVC 203.0.113.10:80/TCP slot=0 id=1 count=1 qcount=0 flags=0x48 flags2=0x1\n\
         SVC 203.0.113.10:80/TCP slot=1 backend=1\n"
    );

    // A restarted agent reads the trie back exactly: its first pass writes nothing.
    let mut restarted = Syncer::new(maps.clone()).expect("restore ids");
    let stats = restarted
        .sync(&[lb(&["10.0.0.0/8", "192.168.56.10/32", "0.0.0.0/0"])])
        .expect("sync after restart");
    assert_eq!(stats.writes, 0);

    // Ranges dropped from the Service, then the Service gone: the trie empties with it.
    restarted
        .sync(&[
            service("203.0.113.10:80/TCP", &["10.244.1.5:8080"]).kind(FrontendKind::LoadBalancer)
        ])
        .expect("ranges removed");
    assert!(!rendered(&maps).contains("SRC"), "{}", rendered(&maps));
    restarted
        .sync(&[lb(&["172.16.0.0/12"])])
        .expect("ranges again");
    restarted.sync(&[]).expect("service deleted");
    let left = rendered(&maps);
    assert!(!left.contains("SRC") && !left.contains("SVC"), "{left}");
}
