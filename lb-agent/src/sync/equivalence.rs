//! Incremental passes against full ones (tests only): for seeded random sequences of changes
//! (frontends added, changed and removed, backends shared between frontends, ports and kinds
//! changing, source ranges and Maglev selection coming and going, writes failing, the GC
//! releasing ids, frontends and backends of both families, ids moving between families), the
//! maps after `Syncer::sync_changes` hold exactly what a full pass over the
//! same desired services would write with the same ids (source ranges and Maglev tables
//! included), and serve what a syncer that only ever runs full passes serves.
use std::{
    collections::{BTreeMap, HashSet},
    net::Ipv4Addr,
    sync::{Arc, Mutex},
};

use super::{
    Syncer, desired, lock, maglev, plan,
    scenarios::{Rng, in_v6, service},
};
use crate::{
    datapath::{MapsContent, dump, fake::FakeMaps},
    model::{
        BackendState, DesiredService, Frontend, FrontendKind, IpFamily, LbAlgorithm, Protocol,
        SourceRange,
    },
};

/// Maglev where a Service's annotation asks for it, with the smallest table (fast to build).
fn selection() -> maglev::Settings {
    maglev::Settings {
        annotation: true,
        table_size: 251,
        ..maglev::Settings::default()
    }
}

/// What the datapath serves, ids left out: frontend, kind, flags, backends in slot order.
fn served(content: &MapsContent) -> Vec<String> {
    let mut served: Vec<String> = dump::services(content)
        .into_iter()
        .map(|view| {
            let backends: Vec<String> = view
                .backends
                .iter()
                .map(|b| format!("{} {:?}", b.address, b.state))
                .collect();
            format!(
                "{} {} {:?} {}",
                view.frontend,
                view.kind,
                view.flags,
                backends.join(",")
            )
        })
        .collect();
    // By frontend: `dump` orders by id, which differs between the two syncers.
    served.sort();
    served
}

/// A random desired service on one of a few VIPs and ports, with backends from a small pool
/// (so that frontends share them).
fn random_service(rng: &mut Rng) -> DesiredService {
    let vip = [10, 96, 0, 1 + rng.below(5) as u8];
    let port = [53, 80, 443][rng.below(3)];
    let backends: Vec<([u8; 4], u16, BackendState)> = (0..rng.below(5))
        .map(|_| {
            let state = if rng.chance(20) {
                BackendState::Terminating
            } else {
                BackendState::Active
            };
            ([10, 244, 1, 1 + rng.below(8) as u8], 8080, state)
        })
        .collect();
    let mut service = service(vip, port, &backends);
    // The model yields each backend once per frontend.
    service
        .backends
        .sort_by_key(|b| (b.addr, b.port, b.state == BackendState::Terminating));
    service.backends.dedup_by_key(|b| (b.addr, b.port));
    for backend in &mut service.backends {
        backend.remote = rng.chance(30);
    }
    if rng.chance(30) {
        service.frontend.protocol = Protocol::Udp;
    }
    if rng.chance(25) {
        service.kind = FrontendKind::NodePort;
        service.frontend.vip = Ipv4Addr::new(192, 168, 0, 1 + rng.below(2) as u8).into();
    } else if rng.chance(25) {
        // A load-balancer IP, with loadBalancerSourceRanges (possibly none admitted) or not.
        service.kind = FrontendKind::LoadBalancer;
        service.frontend.vip = Ipv4Addr::new(172, 16, 0, 1 + rng.below(2) as u8).into();
        if rng.chance(60) {
            service.source_ranges = Some(
                (0..rng.below(3))
                    .map(|_| SourceRange {
                        addr: Ipv4Addr::new(192, 0, 2 + rng.below(2) as u8, 0).into(),
                        prefix_len: [24, 25, 32][rng.below(3)],
                    })
                    .collect(),
            );
        }
    }
    service.algorithm = match rng.below(4) {
        0 => Some(LbAlgorithm::Maglev),
        1 => Some(LbAlgorithm::Random),
        _ => None,
    };
    service.local_only = rng.chance(15);
    service.affinity_timeout_secs = rng.chance(15).then_some(300);
    // A dual-stack Service's IPv6 frontends: the same shapes in the other family, so that
    // both families share one id space (and retired ids move between them).
    if rng.chance(40) {
        in_v6(service)
    } else {
        service
    }
}

fn all(state: &BTreeMap<Frontend, DesiredService>) -> Vec<DesiredService> {
    state.values().cloned().collect()
}

#[test]
fn incremental_passes_give_the_maps_a_full_pass_gives_for_random_changes() {
    // Incremental passes that left Maglev tables, and source ranges, in the maps.
    let (mut with_maglev, mut with_ranges, mut with_v6) = (0, 0, 0);
    for seed in 0..40u64 {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ (seed + 1));
        let incremental_maps = Arc::new(Mutex::new(FakeMaps::default()));
        let mut incremental = Syncer::new(incremental_maps.clone())
            .expect("restore")
            .with_selection(selection());
        let full_maps = Arc::new(Mutex::new(FakeMaps::default()));
        let mut full = Syncer::new(full_maps.clone())
            .expect("restore")
            .with_selection(selection());

        let mut state: BTreeMap<Frontend, DesiredService> = BTreeMap::new();
        for _ in 0..rng.below(6) {
            let s = random_service(&mut rng);
            state.insert(s.frontend, s);
        }
        incremental.sync(&all(&state)).expect("first full pass");
        full.sync(&all(&state)).expect("first full pass");

        for step in 0..60 {
            let mut upserts = Vec::new();
            let mut removals = Vec::new();
            for _ in 0..1 + rng.below(3) {
                if rng.chance(30) && !state.is_empty() {
                    let victim = *state.keys().nth(rng.below(state.len())).expect("some");
                    state.remove(&victim);
                    upserts.retain(|s: &DesiredService| s.frontend != victim);
                    removals.push(victim);
                } else {
                    let s = random_service(&mut rng);
                    removals.retain(|f| *f != s.frontend);
                    upserts.retain(|u: &DesiredService| u.frontend != s.frontend);
                    state.insert(s.frontend, s.clone());
                    upserts.push(s);
                }
            }
            let fail = rng.chance(10);
            if fail {
                let mut fake = lock(&incremental_maps);
                fake.fail_writes = [fake.writes + rng.below(3)].into();
            }
            let outcome = if incremental.can_sync_changes() {
                let outcome = incremental.sync_changes(&upserts, &removals);
                let content = &lock(&incremental_maps).content;
                with_maglev += usize::from(outcome.is_ok() && !content.maglev.is_empty());
                with_ranges += usize::from(outcome.is_ok() && !content.source_ranges.is_empty());
                with_v6 += usize::from(
                    outcome.is_ok()
                        && content.services.keys().any(|k| k.family() == IpFamily::V6)
                        && content.services.keys().any(|k| k.family() == IpFamily::V4),
                );
                outcome
            } else {
                incremental.sync(&all(&state))
            };
            if outcome.is_err() {
                assert!(fail, "seed {seed} step {step}: only injected failures fail");
                // The writes before the failure are a prefix of a plan: consistent maps.
                plan::check_consistent(&lock(&incremental_maps).content)
                    .unwrap_or_else(|err| panic!("seed {seed} step {step}, failed pass: {err}"));
                lock(&incremental_maps).fail_writes.clear();
                incremental
                    .sync(&all(&state))
                    .expect("a full pass after a failure");
            }
            lock(&incremental_maps).fail_writes.clear();
            full.sync(&all(&state)).expect("full pass");
            if rng.chance(15) {
                let started = super::now();
                incremental
                    .release_unreferenced(started, &HashSet::new(), &HashSet::new())
                    .expect("release");
            }

            let content = lock(&incremental_maps).content.clone();
            plan::check_consistent(&content)
                .unwrap_or_else(|err| panic!("seed {seed} step {step}: {err}"));
            // The maps hold exactly what a full pass with these ids would write: its plan is
            // empty.
            let mut ids = incremental.ids().clone();
            let mut wanted =
                desired::desired_content_with(&all(&state), &mut ids, &selection()).expect("ids");
            desired::keep_retired_revnat(&mut wanted, &content, &ids);
            assert_eq!(
                dump::render(&content),
                dump::render(&wanted),
                "seed {seed} step {step}: incremental maps differ from a full pass's"
            );
            assert_eq!(
                content.maglev, wanted.maglev,
                "seed {seed} step {step}: incremental Maglev tables differ from a full pass's"
            );
            assert_eq!(
                served(&content),
                served(&lock(&full_maps).content),
                "seed {seed} step {step}: serves differently from a full-pass-only syncer"
            );
        }
    }
    assert!(
        with_maglev > 100 && with_ranges > 100 && with_v6 > 100,
        "the changes exercise Maglev ({with_maglev}), source ranges ({with_ranges}) and both \
         families at once ({with_v6})"
    );
}

#[test]
fn one_endpoint_change_among_many_services_writes_only_that_frontends_keys() {
    let maps = Arc::new(Mutex::new(FakeMaps::default()));
    let mut syncer = Syncer::new(maps.clone()).expect("restore");
    let services: Vec<DesiredService> = (0..500u16)
        .map(|i| {
            let [hi, lo] = i.to_be_bytes();
            service(
                [10, 96, hi, lo],
                80,
                &[
                    ([10, 244, hi, lo], 8080, BackendState::Active),
                    ([10, 245, hi, lo], 8080, BackendState::Active),
                ],
            )
        })
        .collect();
    syncer.sync(&services).expect("full pass");
    let mut changed = services[7].clone();
    changed.backends[0].addr = Ipv4Addr::new(10, 246, 0, 7).into();
    let before = lock(&maps).writes;
    let stats = syncer
        .sync_changes(&[changed.clone()], &[])
        .expect("change");
    // The new backend, its slot; the old backend goes. The master entry is unchanged.
    assert_eq!(stats.writes, 3);
    assert_eq!(lock(&maps).writes - before, 3);
    assert!(!stats.full);
    let mut all = services.clone();
    all[7] = changed;
    assert_eq!(
        syncer.sync(&all).expect("full").writes,
        0,
        "nothing left to do"
    );
}

/// Every master entry that checks source ranges finds all of `ranges` for its id, and every
/// Maglev master its table: what a packet could meet after any prefix of a pass.
fn check_extras(content: &MapsContent, ranges: &[SourceRange]) -> Result<(), String> {
    use lb_common::service::SERVICE_F2_SOURCE_RANGE;
    plan::check_consistent(content)?;
    for (key, master) in content
        .services
        .iter()
        .filter(|(key, _)| key.slot() == 0 && key.proto() != 0)
    {
        let id = crate::datapath::maps::service_id_of(master);
        if master.flags2 & SERVICE_F2_SOURCE_RANGE != 0 {
            for range in ranges {
                let entry = crate::datapath::SourceRangeEntry {
                    service: id,
                    addr: range.addr,
                    prefix_len: range.prefix_len,
                };
                if !content.source_ranges.contains(&entry) {
                    return Err(format!("{key:?} checks source ranges, {entry:?} missing"));
                }
            }
        }
    }
    Ok(())
}

#[test]
fn an_incremental_pass_writes_source_ranges_and_maglev_tables_before_the_master_and_deletes_them_after()
 {
    let mut plain = service(
        [172, 16, 0, 1],
        80,
        &[
            ([10, 244, 1, 1], 8080, BackendState::Active),
            ([10, 244, 1, 2], 8080, BackendState::Active),
        ],
    );
    plain.kind = FrontendKind::LoadBalancer;
    let ranges = vec![
        SourceRange {
            addr: Ipv4Addr::new(192, 0, 2, 0).into(),
            prefix_len: 24,
        },
        SourceRange {
            addr: Ipv4Addr::new(198, 51, 100, 7).into(),
            prefix_len: 32,
        },
    ];
    let mut checked = plain.clone();
    checked.source_ranges = Some(ranges.clone());
    checked.algorithm = Some(LbAlgorithm::Maglev);
    checked.backends[1].addr = Ipv4Addr::new(10, 244, 1, 3).into();

    for (from, to) in [(&plain, &checked), (&checked, &plain)] {
        let writes = {
            let maps = Arc::new(Mutex::new(FakeMaps::default()));
            let mut syncer = Syncer::new(maps)
                .expect("restore")
                .with_selection(selection());
            syncer.sync(std::slice::from_ref(from)).expect("full pass");
            let stats = syncer
                .sync_changes(std::slice::from_ref(to), &[])
                .expect("incremental pass");
            assert!(!stats.full);
            stats.writes
        };
        assert!(writes >= 4, "ranges, table, slots and master: {writes}");
        // The pass stopped after each of its writes in turn: every prefix is safe.
        for failing in 0..writes {
            let maps = Arc::new(Mutex::new(FakeMaps::default()));
            let mut syncer = Syncer::new(maps.clone())
                .expect("restore")
                .with_selection(selection());
            syncer.sync(std::slice::from_ref(from)).expect("full pass");
            {
                let mut fake = lock(&maps);
                fake.fail_writes = [fake.writes + failing].into();
            }
            assert!(syncer.sync_changes(std::slice::from_ref(to), &[]).is_err());
            check_extras(&lock(&maps).content, &ranges)
                .unwrap_or_else(|err| panic!("write {failing} of {writes} failed: {err}"));
        }
    }
}

#[test]
fn an_incremental_pass_that_hands_a_freed_id_to_the_other_family_deletes_the_old_familys_entry() {
    use crate::{model::IpFamily, sync::ids};
    // Two ids of each kind: the second frontend and backend wrap onto the first ones' freed
    // ids, in the other family.
    let limits = ids::Limits {
        last_service: crate::datapath::ServiceId(1),
        last_backend: crate::datapath::BackendId(1),
        ..ids::Limits::default()
    };
    let maps = Arc::new(Mutex::new(FakeMaps::default()));
    let mut syncer = Syncer::with_limits(maps.clone(), limits)
        .expect("restore")
        .with_selection(selection());
    let v4 = service(
        [10, 96, 0, 10],
        80,
        &[([10, 244, 1, 5], 8080, BackendState::Active)],
    );
    let v6 = in_v6(service(
        [10, 96, 0, 11],
        80,
        &[([10, 244, 1, 6], 8080, BackendState::Active)],
    ));
    syncer.sync(std::slice::from_ref(&v4)).expect("full pass");
    syncer.sync_changes(&[], &[v4.frontend]).expect("v4 gone");
    // Nothing names the retired ids: they are freed.
    syncer
        .release_unreferenced(super::now(), &HashSet::new(), &HashSet::new())
        .expect("release");
    let stats = syncer
        .sync_changes(std::slice::from_ref(&v6), &[])
        .expect("v6 takes the freed ids");
    assert!(!stats.full, "an incremental pass");
    let content = lock(&maps).content.clone();
    assert_eq!(
        content
            .backends
            .values()
            .map(|b| b.family())
            .collect::<Vec<_>>(),
        [IpFamily::V6]
    );
    assert_eq!(
        content
            .revnat
            .values()
            .map(|r| r.family())
            .collect::<Vec<_>>(),
        [IpFamily::V6]
    );
    plan::check_consistent(&content).expect("consistent");
    assert_eq!(
        syncer.sync(std::slice::from_ref(&v6)).expect("full").writes,
        0,
        "the incremental pass left what a full one writes"
    );
}
