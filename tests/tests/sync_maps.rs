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

fn options(root: &BpfRoot, lb_map_max: u32) -> LoadOptions {
    LoadOptions {
        bpf_root: root.0.clone(),
        ct_max_entries: 1024,
        ct_any_max_entries: 1024,
        lb_map_max,
        config: DatapathConfig::default(),
    }
}

fn load(root: &BpfRoot, lb_map_max: u32) -> Arc<Mutex<datapath::maps::AyaMaps>> {
    let Datapath { maps, .. } = Datapath::load(&options(root, lb_map_max)).expect("load lb-ebpf");
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
            .delete_backend(BackendId(1), lb_agent::model::IpFamily::V4)
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
fn a_service_that_does_not_fit_is_reported_and_the_last_good_state_stays_programmed() {
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
    let stats = syncer
        .sync(&[first.clone(), second])
        .expect("a full map is not a failed pass");
    assert_eq!(
        stats.not_programmed,
        ["test/svc-10.96.0.11-80:80 (10.96.0.11:80/TCP)"]
    );
    assert_eq!(stats.full_map, Some(("LB4_SERVICES", "bpf-lb-map-max")));
    assert_eq!(stats.services, 1);

    let content = maps.lock().expect("maps lock").read().expect("read maps");
    plan::check_consistent(&content).expect("no slot points nowhere");
    assert_eq!(
        rendered(&maps),
        good,
        "exactly the first service: what the second wrote before the map filled is gone"
    );
    // Once the excess goes away, the next pass converges to the same state.
    let stats = syncer
        .sync(std::slice::from_ref(&first))
        .expect("sync after the failure");
    assert!(stats.not_programmed.is_empty());
    assert_eq!(rendered(&maps), good);
}

/// Near capacity, one growing service must not block the others: deletions run first, the
/// frontend that does not fit is skipped (and named), every other change is programmed.
#[test]
fn a_full_map_programs_every_service_that_fits_and_names_the_one_that_does_not() {
    let root = BpfRoot::new("fill");
    let maps = load(&root, 10);
    let mut syncer = Syncer::new(maps.clone()).expect("restore ids");
    let a1 = service("10.96.0.10:80/TCP", &["10.244.1.1:80"]);
    let b1 = service("10.96.0.11:80/TCP", &["10.244.2.1:80"]);
    let d = service("10.96.0.13:80/TCP", &["10.244.4.1:80"]);
    syncer
        .sync(&[a1.clone(), b1, d])
        .expect("three services of 3 entries fit in 10");

    // A grows by three slots, B moves to another pod, D goes and C comes: 12 entries wanted.
    let a4 = service(
        "10.96.0.10:80/TCP",
        &[
            "10.244.1.1:80",
            "10.244.1.2:80",
            "10.244.1.3:80",
            "10.244.1.4:80",
        ],
    );
    let b2 = service("10.96.0.11:80/TCP", &["10.244.2.2:80"]);
    let c = service("10.96.0.12:80/TCP", &["10.244.3.1:80"]);
    let stats = syncer
        .sync(&[a4.clone(), b2.clone(), c.clone()])
        .expect("a full map is not a failed pass");
    assert_eq!(
        stats.not_programmed,
        ["test/svc-10.96.0.12-80:80 (10.96.0.12:80/TCP)"]
    );
    let content = maps.lock().expect("maps lock").read().expect("read maps");
    plan::check_consistent(&content).expect("no slot points nowhere");
    let served: Vec<(String, Vec<String>)> = dump::services(&content)
        .into_iter()
        .map(|view| {
            let backends = view.backends.into_iter().map(|b| b.address).collect();
            (view.frontend, backends)
        })
        .collect();
    assert_eq!(
        served,
        [
            (
                "10.96.0.10:80/TCP".to_owned(),
                [
                    "10.244.1.1:80/TCP",
                    "10.244.1.2:80/TCP",
                    "10.244.1.3:80/TCP",
                    "10.244.1.4:80/TCP"
                ]
                .map(str::to_owned)
                .to_vec()
            ),
            (
                "10.96.0.11:80/TCP".to_owned(),
                vec!["10.244.2.2:80/TCP".to_owned()]
            ),
        ],
        "A grown, B moved, D gone; C left out"
    );

    // Room comes back (A shrinks): the retry programs C.
    let stats = syncer.sync(&[a1, b2, c]).expect("sync");
    assert!(stats.not_programmed.is_empty(), "{stats:?}");
    let content = maps.lock().expect("maps lock").read().expect("read maps");
    let frontends: Vec<String> = dump::services(&content)
        .into_iter()
        .map(|view| view.frontend)
        .collect();
    assert_eq!(
        frontends,
        [
            "10.96.0.10:80/TCP",
            "10.96.0.11:80/TCP",
            "10.96.0.12:80/TCP"
        ]
    );
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

#[test]
fn more_than_65536_frontends_are_programmed_and_one_with_an_id_above_65535_is_translated() {
    const POD: &str = "10.244.0.7:40000";
    const BACKEND: &str = "10.244.1.5:8080";
    const FIRST: u32 = 65_535;
    const ALL: u32 = 70_000;
    // One VIP per frontend (three service entries each), all to one backend.
    let frontend = |i: u32| format!("{}:80/TCP", std::net::Ipv4Addr::from(0x0a60_0000 + i));
    let services = |count: u32| -> Vec<_> {
        (1..=count)
            .map(|i| service(&frontend(i), &[BACKEND]))
            .collect()
    };
    let mut datapath = fixture::Datapath::load_with(fixture::LoadOptions {
        lb_map_max: Some(262_144),
        ..fixture::LoadOptions::default()
    });
    // The first 65,535 take every id a u16 could hold; the rest can only get larger ones.
    datapath.sync(&services(FIRST));
    datapath.sync(&services(ALL));

    let last = frontend(ALL);
    let vip = last.trim_end_matches("/TCP");
    let run = datapath.run(Hook::FromPod, &tcp_syn(POD, vip));
    assert_eq!(read_checked(&run.frame).dst.to_string(), BACKEND);
    let ids = referenced_services(&datapath);
    assert_eq!(ids.len(), 1);
    let id = ids.into_iter().next().expect("one id");
    assert!(id.0 > 65_535, "the flow's service id is {}", id.0);
    let reply = datapath.run(Hook::FromPod, &tcp_syn_ack(BACKEND, POD));
    assert_eq!(
        reply.frame,
        tcp_syn_ack(vip, POD),
        "the reply comes from the VIP"
    );
    let pinned = aya::maps::MapData::from_pin(datapath.pin_dir().join(lb_common::maps::LB4_REVNAT))
        .expect("open the pinned LB4_REVNAT");
    let revnat: aya::maps::HashMap<_, u32, lb_common::service::RevNat4> =
        aya::maps::HashMap::try_from(aya::maps::Map::HashMap(pinned)).expect("a hash map");
    assert_eq!(
        revnat.keys().count(),
        ALL as usize,
        "one rev-NAT entry per frontend"
    );
    let entry = revnat.get(&id.0, 0).expect("the id's rev-NAT entry");
    assert_eq!(
        (u32::from_be(entry.vip), u16::from_be(entry.port)),
        (0x0a60_0000 + ALL, 80)
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

/// A dual-stack Service (issue 14): its IPv4 frontends go to the `LB4_*` maps and its IPv6
/// ones (ClusterIP, a load-balancer IP with source ranges) to `LB6_SERVICES`, `LB6_BACKENDS`,
/// `LB6_REVNAT` and `LB6_SRC_RANGE`, with ids from one space; an agent restarted on the pinned
/// maps reads both families back exactly and rewrites nothing; deleting the Service empties
/// both.
#[test]
fn a_dual_stack_service_round_trips_through_the_lb4_and_lb6_maps_and_survives_a_restart() {
    use lb_agent::model::FrontendKind;
    let root = BpfRoot::new("dual");
    let services = || {
        vec![
            service("10.96.0.10:80/TCP", &["10.244.1.5:8080", "10.244.2.6:8080"]),
            service(
                "[fd00:10:96::a]:80/TCP",
                &["[fd00:10:244:1::5]:8080", "[fd00:10:244:2::6]:8080"],
            ),
            service("[2001:db8::10]:80/TCP", &["[fd00:10:244:1::5]:8080"])
                .kind(FrontendKind::LoadBalancer)
                .source_ranges(&["2001:db8:1::/48", "fd00::1/128"]),
        ]
    };
    let want = "BE 1 10.244.1.5:8080/TCP state=active flags=0x0\n\
                BE 2 10.244.2.6:8080/TCP state=active flags=0x0\n\
                BE 3 [fd00:10:244:1::5]:8080/TCP state=active flags=0x0\n\
                BE 4 [fd00:10:244:2::6]:8080/TCP state=active flags=0x0\n\
                REV 1 10.96.0.10:80\n\
                REV 2 [fd00:10:96::a]:80\n\
                REV 3 [2001:db8::10]:80\n\
                SRC 3 2001:db8:1::/48\n\
                SRC 3 fd00::1/128\n\
                SVC 10.96.0.10:80/TCP slot=0 id=1 count=2 qcount=0 flags=0x1\n\
                SVC 10.96.0.10:80/TCP slot=1 backend=1\n\
                SVC 10.96.0.10:80/TCP slot=2 backend=2\n\
                SVC [2001:db8::10]:80/TCP slot=0 id=3 count=1 qcount=0 flags=0x48 flags2=0x1\n\
                SVC [2001:db8::10]:80/TCP slot=1 backend=3\n\
                SVC [fd00:10:96::a]:80/TCP slot=0 id=2 count=2 qcount=0 flags=0x1\n\
                SVC [fd00:10:96::a]:80/TCP slot=1 backend=3\n\
                SVC [fd00:10:96::a]:80/TCP slot=2 backend=4\n\
                VIP 10.96.0.10\n\
                VIP fd00:10:96::a\n";
    {
        let maps = load(&root, 1024);
        let mut syncer = Syncer::new(maps.clone()).expect("restore ids");
        syncer.sync(&services()).expect("first sync");
        assert_eq!(rendered(&maps), want);
        let content = maps.lock().expect("maps lock").read().expect("read");
        let v6 = content
            .services
            .keys()
            .filter(|key| key.family() == lb_agent::model::IpFamily::V6)
            .count();
        assert_eq!(
            v6, 6,
            "IPv6 masters, slots and wildcard are LB6_SERVICES keys"
        );
    }

    // A restarted agent: the pinned maps of both families are read back exactly.
    let maps = load(&root, 1024);
    assert_eq!(rendered(&maps), want, "the pins keep both families");
    let mut restarted = Syncer::new(maps.clone()).expect("restore ids");
    let stats = restarted.sync(&services()).expect("sync after restart");
    assert_eq!(stats.writes, 0, "nothing rewritten");

    // Drift in the IPv6 maps (a slot and a backend deleted behind the agent's back): the
    // periodic resync reads the LB6 maps back and repairs it.
    {
        let mut guard = maps.lock().expect("maps lock");
        let slot = lb_agent::datapath::maps::service_key(
            "fd00:10:96::a".parse().expect("ip"),
            80,
            lb_common::proto::TCP,
            2,
        );
        guard.delete_service(&slot).expect("delete a slot");
        guard
            .delete_backend(BackendId(4), lb_agent::model::IpFamily::V6)
            .expect("delete a backend");
    }
    assert_ne!(rendered(&maps), want);
    let stats = restarted.resync(&services()).expect("resync");
    assert_eq!(stats.repairs, 2, "the slot and the backend");
    assert_eq!(rendered(&maps), want);

    // The IPv6 ClusterIP loses a backend, then the Service goes.
    let mut fewer = services();
    fewer[1] = service("[fd00:10:96::a]:80/TCP", &["[fd00:10:244:2::6]:8080"]);
    restarted.sync(&fewer).expect("a backend goes");
    let text = rendered(&maps);
    assert!(
        text.contains("SVC [fd00:10:96::a]:80/TCP slot=1 backend=4\n")
            && !text.contains("[fd00:10:96::a]:80/TCP slot=2"),
        "{text}"
    );
    restarted.sync(&[]).expect("service deleted");
    let left = rendered(&maps);
    assert!(
        !left.contains("SVC") && !left.contains("SRC") && !left.contains("VIP"),
        "{left}"
    );
}

/// Ids are one space over both families: an id freed by an IPv4 frontend and handed to an
/// IPv6 one leaves nothing behind in `LB4_BACKENDS` or `LB4_REVNAT` (the maps are keyed by id
/// alone, so an old entry there would be invisible to a read that merges the families).
#[test]
fn an_id_handed_from_ipv4_to_ipv6_leaves_no_entry_in_the_ipv4_maps() {
    use lb_agent::sync::ids::Limits;
    use lb_common::maps::{LB4_BACKENDS, LB4_REVNAT, PIN_VERSION};
    let root = BpfRoot::new("idfamily");
    let maps = load(&root, 1024);
    let limits = Limits {
        last_service: ServiceId(1),
        last_backend: BackendId(1),
        ..Limits::default()
    };
    let mut syncer = Syncer::with_limits(maps.clone(), limits).expect("restore ids");
    let v4 = service("10.96.0.10:80/TCP", &["10.244.1.5:8080"]);
    let v6 = service("[fd00::a]:80/TCP", &["[fd00:244::5]:8080"]);
    syncer
        .sync(std::slice::from_ref(&v4))
        .expect("IPv4 service");
    syncer
        .sync_changes(&[], &[v4.frontend])
        .expect("IPv4 service gone");
    syncer
        .release_unreferenced(Instant::now(), &HashSet::new(), &HashSet::new())
        .expect("free the retired ids");
    syncer
        .sync_changes(std::slice::from_ref(&v6), &[])
        .expect("IPv6 service on the freed ids");
    assert_eq!(
        rendered(&maps),
        "BE 1 [fd00:244::5]:8080/TCP state=active flags=0x0\n\
         REV 1 [fd00::a]:80\n\
         SVC [fd00::a]:80/TCP slot=0 id=1 count=1 qcount=0 flags=0x1\n\
         SVC [fd00::a]:80/TCP slot=1 backend=1\n\
         VIP fd00::a\n"
    );
    let pin_dir = root.0.join(PIN_VERSION);
    for name in [LB4_BACKENDS, LB4_REVNAT] {
        let out = std::process::Command::new("bpftool")
            .args(["-j", "map", "dump", "pinned"])
            .arg(pin_dir.join(name))
            .output()
            .expect("run bpftool");
        assert!(out.status.success(), "bpftool: {out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "[]",
            "{name} keeps no entry of the id's IPv4 past"
        );
    }
}

/// `--bpf-lb-map-max` changed between two starts: the pinned maps are replaced by maps of the
/// new size holding the same entries; a size below what a map holds is refused and changes
/// nothing.
#[test]
fn a_new_map_size_replaces_the_pinned_maps_keeping_their_entries_and_a_shrink_below_them_is_refused()
 {
    use lb_common::maps::{LB4_BACKENDS, LB4_SERVICES, LB6_BACKENDS, LB6_SERVICES, PIN_VERSION};
    let root = BpfRoot::new("resize");
    let maps = load(&root, 8);
    let mut syncer = Syncer::new(maps.clone()).expect("restore ids");
    syncer
        .sync(&[
            service("10.96.0.10:80/TCP", &["10.244.1.5:8080", "10.244.1.6:8080"]),
            // The option sizes the LB6 twins alike, and they move with their entries.
            service("[fd00::a]:80/TCP", &["[fd00:244::5]:8080"]),
        ])
        .expect("sync");
    let before = rendered(&maps);
    drop((syncer, maps));
    let pin_dir = root.0.join(PIN_VERSION);
    let size = |map: &str| {
        aya::maps::MapInfo::from_pin(pin_dir.join(map))
            .expect("pinned map")
            .max_entries()
    };
    let pins = || {
        let mut names: Vec<String> = std::fs::read_dir(&pin_dir)
            .expect("pin dir")
            .map(|entry| {
                entry
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    };
    let pins_before = pins();

    // Master, wildcard and two slots: 4 entries do not fit in 3.
    let Err(err) = Datapath::load(&options(&root, 3)) else {
        panic!("a services map of 3 cannot take 4 entries");
    };
    let message = format!("{:#}", anyhow::Error::from(err));
    assert!(
        message.contains("map `LB4_SERVICES` holds 4 entries, more than --bpf-lb-map-max 3"),
        "{message}"
    );
    assert_eq!((size(LB4_SERVICES), size(LB4_BACKENDS)), (8, 8));
    assert_eq!(pins(), pins_before, "nothing moved");

    let datapath = Datapath::load(&options(&root, 64)).expect("load with a larger size");
    assert_eq!((size(LB4_SERVICES), size(LB4_BACKENDS)), (64, 64));
    assert_eq!((size(LB6_SERVICES), size(LB6_BACKENDS)), (64, 64));
    assert!(before.contains("SVC [fd00::a]:80/TCP slot=1"), "{before}");
    assert_eq!(
        dump::render(&datapath.maps.read().expect("read maps")),
        before,
        "the same entries"
    );
    assert!(
        pin_dir.join("resizing").join(LB4_SERVICES).exists(),
        "the old maps stay aside until the programs are swapped: {:?}",
        pins()
    );
    datapath.resize.finish().expect("finish the resize");
    assert_eq!(pins(), pins_before, "the old maps unpinned");
    drop(datapath.maps);

    // The same size again: nothing to do.
    let datapath = Datapath::load(&options(&root, 64)).expect("load with the same size");
    assert!(datapath.resize.is_empty());
    assert_eq!(
        dump::render(&datapath.maps.read().expect("read maps")),
        before
    );
}
