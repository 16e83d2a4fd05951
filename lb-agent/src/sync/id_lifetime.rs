//! Tests of id lifetime through `Syncer` on in-memory maps (tests only): a retired service id
//! keeps its rev-NAT entry and a retired id is never handed out while the conntrack GC says an
//! entry names it; a port change, a restart with retired entries in the maps, wrap-around, and
//! random sequences against a simulated conntrack.
use std::{
    collections::{BTreeMap, HashSet},
    net::{IpAddr, Ipv4Addr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use super::{
    Syncer,
    ids::{Limits, ServiceId},
    lock, plan,
    scenarios::{Rng, service},
};
use crate::{
    datapath::{BackendId, MapsContent, dump, fake::FakeMaps, maps},
    model::{BackendState::Active, DesiredService},
};

fn syncer(limits: Limits) -> (Arc<Mutex<FakeMaps>>, Syncer<FakeMaps>) {
    let maps = Arc::new(Mutex::new(FakeMaps::default()));
    let syncer = Syncer::with_limits(maps.clone(), limits).expect("restore ids");
    (maps, syncer)
}

fn content(maps: &Mutex<FakeMaps>) -> MapsContent {
    let content = lock(maps).content.clone();
    plan::check_consistent(&content).expect("no slot points nowhere");
    content
}

/// The `REV` lines of the maps.
fn revnat(maps: &Mutex<FakeMaps>) -> Vec<String> {
    dump::render(&content(maps))
        .lines()
        .filter(|line| line.starts_with("REV "))
        .map(str::to_owned)
        .collect()
}

/// The service id the maps give `vip:port`.
fn service_id(maps: &Mutex<FakeMaps>, vip: [u8; 4], port: u16) -> Option<ServiceId> {
    let key = maps::service_key(Ipv4Addr::from(vip).into(), port, lb_common::proto::TCP, 0);
    content(maps).services.get(&key).map(maps::service_id_of)
}

fn web(port: u16) -> DesiredService {
    service([10, 96, 0, 10], port, &[([10, 244, 1, 5], 8080, Active)])
}

fn dns() -> DesiredService {
    service([10, 96, 0, 11], 53, &[([10, 244, 2, 1], 53, Active)])
}

fn none<T>() -> HashSet<T> {
    HashSet::new()
}

#[test]
fn a_deleted_service_keeps_its_rev_nat_entry_and_its_id_until_the_gc_says_unreferenced() {
    let (maps, mut syncer) = syncer(Limits::default());
    syncer.sync(&[web(80)]).expect("sync");
    assert_eq!(service_id(&maps, [10, 96, 0, 10], 80), Some(ServiceId(1)));
    syncer.sync(&[dns()]).expect("sync");
    assert_eq!(
        service_id(&maps, [10, 96, 0, 11], 53),
        Some(ServiceId(2)),
        "not the retired id 1"
    );
    assert_eq!(
        revnat(&maps),
        ["REV 1 10.96.0.10:80", "REV 2 10.96.0.11:53"]
    );

    // Still named by a conntrack entry: kept.
    let referenced = HashSet::from([ServiceId(1)]);
    let released = syncer
        .release_unreferenced(Instant::now(), &referenced, &HashSet::from([BackendId(1)]))
        .expect("release");
    assert_eq!((released.services, released.backends), (0, 0));
    assert_eq!(
        revnat(&maps),
        ["REV 1 10.96.0.10:80", "REV 2 10.96.0.11:53"]
    );

    // No longer named: its rev-NAT entry goes, and the id is free (the cursor is past it).
    let released = syncer
        .release_unreferenced(Instant::now(), &none(), &none())
        .expect("release");
    assert_eq!((released.services, released.backends), (1, 1));
    assert_eq!(revnat(&maps), ["REV 2 10.96.0.11:53"]);
    syncer
        .sync(&[dns(), service([10, 96, 0, 12], 80, &[])])
        .expect("sync");
    assert_eq!(service_id(&maps, [10, 96, 0, 12], 80), Some(ServiceId(3)));
}

#[test]
fn a_port_change_keeps_the_old_frontends_rev_nat_entry_for_the_replies_of_its_flows() {
    let (maps, mut syncer) = syncer(Limits::default());
    syncer.sync(&[web(80)]).expect("sync");
    syncer.sync(&[web(8080)]).expect("sync");
    assert_eq!(
        service_id(&maps, [10, 96, 0, 10], 80),
        None,
        "no longer served"
    );
    assert_eq!(service_id(&maps, [10, 96, 0, 10], 8080), Some(ServiceId(2)));
    assert_eq!(
        revnat(&maps),
        ["REV 1 10.96.0.10:80", "REV 2 10.96.0.10:8080"],
        "replies of :80 flows are still restored to :80"
    );
    // Back to 80 while id 1 is retired: the same id, so its flows' entries still fit.
    syncer.sync(&[web(80)]).expect("sync");
    assert_eq!(service_id(&maps, [10, 96, 0, 10], 80), Some(ServiceId(1)));
}

#[test]
fn no_id_is_reused_in_the_pass_that_retires_it_nor_in_the_next_ones() {
    let (maps, mut syncer) = syncer(Limits::default());
    syncer.sync(&[web(80)]).expect("sync");
    let before = content(&maps);
    // One frontend and its backend replaced by another in one pass.
    syncer.sync(&[dns()]).expect("sync");
    let after = content(&maps);
    assert_eq!(before.backends.keys().collect::<Vec<_>>(), [&BackendId(1)]);
    assert_eq!(after.backends.keys().collect::<Vec<_>>(), [&BackendId(2)]);
    assert_eq!(service_id(&maps, [10, 96, 0, 11], 53), Some(ServiceId(2)));
    syncer.sync(&[]).expect("sync");
    syncer
        .sync(&[service(
            [10, 96, 0, 12],
            80,
            &[([10, 244, 3, 1], 80, Active)],
        )])
        .expect("sync");
    assert_eq!(service_id(&maps, [10, 96, 0, 12], 80), Some(ServiceId(3)));
    assert_eq!(
        content(&maps).backends.keys().collect::<Vec<_>>(),
        [&BackendId(3)]
    );
}

#[test]
fn allocation_wraps_around_skipping_ids_still_referenced() {
    let limits = Limits {
        last_service: ServiceId(3),
        ..Limits::default()
    };
    let (maps, mut syncer) = syncer(limits);
    let frontend = |last: u8| service([10, 96, 0, last], 80, &[]);
    syncer.sync(&[frontend(1), frontend(2)]).expect("sync");
    syncer.sync(&[frontend(3)]).expect("sync");
    assert_eq!(service_id(&maps, [10, 96, 0, 3], 80), Some(ServiceId(3)));
    // 1 is still named by a flow, 2 is not: the cursor wraps to 1, skips it, takes 2.
    let referenced = HashSet::from([ServiceId(1)]);
    syncer
        .release_unreferenced(Instant::now(), &referenced, &none())
        .expect("release");
    syncer.sync(&[frontend(3), frontend(4)]).expect("sync");
    assert_eq!(service_id(&maps, [10, 96, 0, 4], 80), Some(ServiceId(2)));
    assert_eq!(
        revnat(&maps),
        [
            "REV 1 10.96.0.1:80",
            "REV 2 10.96.0.4:80",
            "REV 3 10.96.0.3:80"
        ]
    );
}

#[test]
fn when_the_id_space_is_exhausted_the_oldest_retired_id_is_taken_over() {
    let limits = Limits {
        last_service: ServiceId(2),
        ..Limits::default()
    };
    let (maps, mut syncer) = syncer(limits);
    let frontend = |last: u8| service([10, 96, 0, last], 80, &[]);
    syncer.sync(&[frontend(1), frontend(2)]).expect("sync");
    syncer.sync(&[frontend(2)]).expect("sync");
    syncer.sync(&[frontend(2), frontend(3)]).expect("sync");
    assert_eq!(service_id(&maps, [10, 96, 0, 3], 80), Some(ServiceId(1)));
    assert_eq!(revnat(&maps), ["REV 1 10.96.0.3:80", "REV 2 10.96.0.2:80"]);
    let err = syncer
        .sync(&[frontend(2), frontend(3), frontend(4)])
        .expect_err("two ids, three frontends");
    assert!(err.to_string().contains("no free service id"), "{err}");
}

#[test]
fn a_restarted_syncer_keeps_retired_rev_nat_entries_until_the_gc_releases_them() {
    let (maps, mut syncer) = syncer(Limits::default());
    syncer.sync(&[web(80), dns()]).expect("sync");
    syncer.sync(&[dns()]).expect("sync");
    drop(syncer);

    let mut restarted = Syncer::new(maps.clone()).expect("restore ids");
    assert!(restarted.ids().is_retired_service(ServiceId(1)));
    let stats = restarted.sync(&[dns()]).expect("sync");
    assert_eq!(stats.writes, 0, "a restart rewrites nothing that is right");
    restarted
        .sync(&[dns(), service([10, 96, 0, 12], 80, &[])])
        .expect("sync");
    assert_eq!(
        service_id(&maps, [10, 96, 0, 12], 80),
        Some(ServiceId(3)),
        "the retired id 1 is not handed out"
    );
    // A backend id named by conntrack but gone from the maps (a restart forgot it) is
    // reserved once the GC names it.
    let backends = HashSet::from([BackendId(1), BackendId(3)]);
    let referenced = HashSet::from([ServiceId(1)]);
    restarted
        .release_unreferenced(Instant::now(), &referenced, &backends)
        .expect("release");
    assert!(restarted.ids().holds_backend(BackendId(3)));
    assert!(revnat(&maps).contains(&"REV 1 10.96.0.10:80".to_owned()));
    restarted
        .release_unreferenced(Instant::now(), &none(), &none())
        .expect("release");
    assert_eq!(
        revnat(&maps),
        ["REV 2 10.96.0.11:53", "REV 3 10.96.0.12:80"]
    );
    assert!(!restarted.ids().holds_backend(BackendId(3)));
}

#[tokio::test(start_paused = true)]
async fn without_a_gc_a_retired_rev_nat_entry_goes_after_the_quarantine() {
    let limits = Limits {
        quarantine: Duration::from_secs(600),
        ..Limits::default()
    };
    let (maps, mut syncer) = syncer(limits);
    syncer.sync(&[web(80)]).expect("sync");
    syncer.sync(&[]).expect("sync");
    tokio::time::advance(Duration::from_secs(599)).await;
    syncer.sync(&[]).expect("sync");
    assert_eq!(revnat(&maps), ["REV 1 10.96.0.10:80"]);
    tokio::time::advance(Duration::from_secs(1)).await;
    syncer.sync(&[]).expect("sync");
    assert!(revnat(&maps).is_empty(), "{:?}", revnat(&maps));
    assert!(!syncer.ids().holds_service(ServiceId(1)));
}

#[test]
fn a_failed_write_while_releasing_is_finished_by_the_next_pass() {
    let (maps, mut syncer) = syncer(Limits::default());
    syncer.sync(&[web(80)]).expect("sync");
    syncer.sync(&[]).expect("sync");
    let next = lock(&maps).writes;
    lock(&maps).fail_writes.insert(next);
    syncer
        .release_unreferenced(Instant::now(), &none(), &none())
        .expect_err("the delete fails");
    assert_eq!(revnat(&maps), ["REV 1 10.96.0.10:80"]);
    syncer.sync(&[]).expect("sync");
    assert!(revnat(&maps).is_empty());
}

/// A flow as conntrack records it: the ids it names and what they meant when it was created.
#[derive(Clone, Copy, Debug)]
struct Flow {
    service: ServiceId,
    vip: IpAddr,
    port: u16,
    backend: BackendId,
    backend_addr: IpAddr,
}

#[test]
fn random_churn_never_gives_a_live_frontend_or_backend_an_id_a_live_flow_names_for_another() {
    const FRONTENDS: [(u8, u16); 4] = [(10, 80), (10, 8080), (11, 53), (12, 443)];
    const BACKENDS: [u8; 6] = [1, 2, 3, 4, 5, 6];
    // Small id spaces, so that allocation wraps many times; room for the live ids, the ids
    // retired in two passes and the ids the flows name, so that none is ever taken over.
    let limits = Limits {
        last_service: ServiceId(16),
        last_backend: BackendId(24),
        ..Limits::default()
    };
    for seed in 1..=20_u64 {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ seed);
        let (maps, mut syncer) = syncer(limits);
        let mut flows: Vec<Flow> = Vec::new();
        let mut allocated = BTreeMap::new();
        for step in 0..300 {
            let before_pass = Instant::now();
            let mut desired: Vec<DesiredService> = Vec::new();
            for (last, port) in FRONTENDS {
                if !rng.chance(60) {
                    continue;
                }
                let backends: Vec<_> = BACKENDS
                    .iter()
                    .filter(|_| rng.chance(40))
                    .map(|b| ([10, 244, 1, *b], 8080, Active))
                    .collect();
                desired.push(service([10, 96, 0, last], port, &backends));
            }
            syncer.sync(&desired).expect("sync");
            let now = content(&maps);

            // Every flow still finds its own frontend in rev-NAT, and no live frontend or
            // backend has an id a flow names for something else.
            for flow in &flows {
                let revnat = now.revnat.get(&flow.service).map(maps::revnat_addr_of);
                assert_eq!(
                    revnat,
                    Some((flow.vip, flow.port)),
                    "seed {seed} step {step}: {flow:?}"
                );
                if let Some(backend) = now.backends.get(&flow.backend) {
                    assert_eq!(
                        maps::backend_addr_of(backend).0,
                        flow.backend_addr,
                        "seed {seed} step {step}: {flow:?}"
                    );
                }
            }
            for (key, master) in now
                .services
                .iter()
                .filter(|(k, _)| k.slot() == 0 && k.proto() != 0)
            {
                let (vip, port, _) = maps::frontend_of(key);
                let id = maps::service_id_of(master);
                *allocated.entry(id).or_insert(0) += 1;
                for flow in flows.iter().filter(|f| f.service == id) {
                    assert_eq!(
                        (flow.vip, flow.port),
                        (vip, port),
                        "seed {seed} step {step}"
                    );
                }
            }

            // New flows on random frontends; old ones expire.
            for (key, master) in now
                .services
                .iter()
                .filter(|(k, _)| k.slot() == 0 && k.proto() != 0)
            {
                if master.count == 0 || !rng.chance(30) || flows.len() >= 3 {
                    continue;
                }
                let slot = 1 + rng.below(usize::from(master.count)) as u16;
                let entry = now.services[&key.with_slot(slot)];
                let backend = maps::backend_id_of(&entry);
                let (vip, port, _) = maps::frontend_of(key);
                flows.push(Flow {
                    service: maps::service_id_of(master),
                    vip,
                    port,
                    backend,
                    backend_addr: maps::backend_addr_of(&now.backends[&backend]).0,
                });
            }
            flows.retain(|_| !rng.chance(25));

            // The GC reports what the remaining flows name; some scans started before this
            // pass, so they cannot release what it retired.
            let scan_started = if rng.chance(30) {
                before_pass
            } else {
                Instant::now()
            };
            let services = flows.iter().map(|f| f.service).collect();
            let backends = flows.iter().map(|f| f.backend).collect();
            syncer
                .release_unreferenced(scan_started, &services, &backends)
                .expect("release");
        }
        assert!(
            allocated.len() >= 10,
            "seed {seed}: the ids wrapped around ({} distinct used)",
            allocated.len()
        );
    }
}
