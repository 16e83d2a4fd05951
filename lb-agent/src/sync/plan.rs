//! Plan, then apply. `desired_content` turns the model into the exact content of the maps;
//! `plan` diffs that against what the maps hold and orders the writes so that no prefix of
//! the plan can make a packet select a slot that points nowhere:
//!
//! 1. new and changed backends (a slot may name them from now on);
//! 2. new and changed reverse-NAT entries (replies of flows created from now on need them);
//! 3. new and changed backend slots (beyond the old count they are not selectable yet);
//! 4. new and changed master entries: the commit point that makes the new count visible;
//! 5. masters of frontends that are gone (their slots become unreachable);
//! 6. slots beyond the new counts;
//! 7. orphaned reverse-NAT entries, then 8. orphaned backends (no slot names them any more).
//!
//! Every write is idempotent, so a failed apply is retried by planning again.
//! Pure: no aya, kube or tokio.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use lb_common::{
    proto,
    service::{
        BACKEND_F_REMOTE, BACKEND_STATE_ACTIVE, BACKEND_STATE_TERMINATING, Backend4, RevNat4,
        SERVICE_F_CLUSTER_IP, ServiceEntry, ServiceKey4,
    },
};

use super::ids::{Exhausted, Ids};
use crate::{
    datapath::{Error as DatapathError, LbMaps, MapsContent, maps},
    model::{BackendState, DesiredService, Protocol},
};

/// A frontend in host byte order, the key of service ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrontendKey {
    /// VIP.
    pub vip: Ipv4Addr,
    /// Port.
    pub port: u16,
    /// IP protocol number.
    pub proto: u8,
}

/// A backend address in host byte order, the key of backend ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    /// Address.
    pub addr: Ipv4Addr,
    /// Port.
    pub port: u16,
    /// IP protocol number.
    pub proto: u8,
}

/// One map write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Insert or replace a backend.
    UpsertBackend(u32, Backend4),
    /// Insert or replace a reverse-NAT entry.
    UpsertRevNat(u16, RevNat4),
    /// Insert or replace a service slot (master or backend slot).
    UpsertService(ServiceKey4, ServiceEntry),
    /// Remove a service slot.
    DeleteService(ServiceKey4),
    /// Remove a reverse-NAT entry.
    DeleteRevNat(u16),
    /// Remove a backend.
    DeleteBackend(u32),
}

fn proto_number(protocol: Protocol) -> u8 {
    match protocol {
        Protocol::Tcp => proto::TCP,
        Protocol::Udp => proto::UDP,
    }
}

/// The content the maps must hold for `services`, allocating ids as needed and releasing the
/// ids of frontends and backends that are gone.
pub fn desired_content(
    services: &[DesiredService],
    ids: &mut Ids,
) -> Result<MapsContent, Exhausted> {
    let mut content = MapsContent::default();
    let mut live_frontends = BTreeSet::new();
    let mut live_backends = BTreeSet::new();
    for service in services {
        let frontend = service.frontend;
        let proto = proto_number(frontend.protocol);
        let key = FrontendKey {
            vip: frontend.vip,
            port: frontend.port,
            proto,
        };
        if !live_frontends.insert(key) {
            // The model never yields a frontend twice; if it did, the first one wins.
            continue;
        }
        let service_id = ids.service(key)?;
        // Selectable backends first (slots 1..=count), then the draining ones.
        let ordered = service
            .backends
            .iter()
            .filter(|b| b.state == BackendState::Active)
            .chain(
                service
                    .backends
                    .iter()
                    .filter(|b| b.state == BackendState::Terminating),
            );
        let mut count: u16 = 0;
        let mut qcount: u16 = 0;
        let mut slot: u16 = 0;
        for backend in ordered {
            let Some(next) = slot.checked_add(1) else {
                break;
            };
            slot = next;
            let backend_key = BackendKey {
                addr: backend.addr,
                port: backend.port,
                proto,
            };
            live_backends.insert(backend_key);
            let backend_id = ids.backend(backend_key)?;
            let (state, counter) = match backend.state {
                BackendState::Active => (BACKEND_STATE_ACTIVE, &mut count),
                BackendState::Terminating => (BACKEND_STATE_TERMINATING, &mut qcount),
            };
            *counter += 1;
            let flags = if backend.remote { BACKEND_F_REMOTE } else { 0 };
            let value = maps::backend_value(backend.addr, backend.port, proto, state, flags);
            // A backend shared by several frontends is active if any of them selects it.
            content
                .backends
                .entry(backend_id)
                .and_modify(|existing| existing.state = existing.state.min(state))
                .or_insert(value);
            content.services.insert(
                maps::service_key(frontend.vip, frontend.port, proto, slot),
                ServiceEntry {
                    backend_id,
                    ..ServiceEntry::default()
                },
            );
        }
        content.services.insert(
            maps::service_key(frontend.vip, frontend.port, proto, 0),
            ServiceEntry {
                backend_id: 0,
                count,
                qcount,
                rev_nat: service_id,
                flags: SERVICE_F_CLUSTER_IP,
                _pad: 0,
            },
        );
        content
            .services
            .insert(maps::wildcard_key(frontend.vip), ServiceEntry::default());
        content
            .revnat
            .insert(service_id, maps::revnat_value(frontend.vip, frontend.port));
    }
    ids.retain(&live_frontends, &live_backends);
    Ok(content)
}

/// The writes that turn `current` into `desired`, in the safe order described above.
pub fn plan(current: &MapsContent, desired: &MapsContent) -> Vec<Op> {
    let mut ops = Vec::new();

    for (id, backend) in &desired.backends {
        if changed(current.backends.get(id), backend) {
            ops.push(Op::UpsertBackend(*id, *backend));
        }
    }
    for (id, revnat) in &desired.revnat {
        if changed(current.revnat.get(id), revnat) {
            ops.push(Op::UpsertRevNat(*id, *revnat));
        }
    }
    let (desired_masters, desired_slots): (BTreeMap<_, _>, BTreeMap<_, _>) =
        desired.services.iter().partition(|(key, _)| key.slot == 0);
    for (key, entry) in &desired_slots {
        if changed(current.services.get(*key), *entry) {
            ops.push(Op::UpsertService(**key, **entry));
        }
    }
    for (key, entry) in &desired_masters {
        if changed(current.services.get(*key), *entry) {
            ops.push(Op::UpsertService(**key, **entry));
        }
    }
    let stale = |key: &ServiceKey4| !desired.services.contains_key(key);
    ops.extend(
        current
            .services
            .keys()
            .filter(|key| key.slot == 0 && stale(key))
            .map(|key| Op::DeleteService(*key)),
    );
    ops.extend(
        current
            .services
            .keys()
            .filter(|key| key.slot != 0 && stale(key))
            .map(|key| Op::DeleteService(*key)),
    );
    ops.extend(
        current
            .revnat
            .keys()
            .filter(|id| !desired.revnat.contains_key(id))
            .map(|id| Op::DeleteRevNat(*id)),
    );
    ops.extend(
        current
            .backends
            .keys()
            .filter(|id| !desired.backends.contains_key(id))
            .map(|id| Op::DeleteBackend(*id)),
    );
    ops
}

fn changed<T: PartialEq>(current: Option<&T>, wanted: &T) -> bool {
    current != Some(wanted)
}

/// Applies `ops` in order, stopping at the first failure (the prefix applied is safe).
/// Consecutive writes of one kind go to the kernel as one batch, which the kernel applies in
/// order, so a batch preserves the plan's order and its prefix property.
/// Returns how many were applied, or the index and error of the one that failed.
pub fn apply(maps: &mut dyn LbMaps, ops: &[Op]) -> Result<usize, (usize, DatapathError)> {
    let mut start = 0;
    while start < ops.len() {
        let kind = std::mem::discriminant(&ops[start]);
        let len = ops[start..]
            .iter()
            .take_while(|op| std::mem::discriminant(*op) == kind)
            .count();
        let run = &ops[start..start + len];
        apply_run(maps, run).map_err(|(applied, err)| (start + applied, err))?;
        start += len;
    }
    Ok(ops.len())
}

/// Applies a run of writes of one kind as one batch; on failure, says how many were applied.
fn apply_run(maps: &mut dyn LbMaps, run: &[Op]) -> Result<(), (usize, DatapathError)> {
    let result = match run.first() {
        None => Ok(()),
        Some(Op::UpsertBackend(..)) => maps.upsert_backends(
            &run.iter()
                .filter_map(|op| match op {
                    Op::UpsertBackend(id, b) => Some((*id, *b)),
                    _ => None,
                })
                .collect::<Vec<_>>(),
        ),
        Some(Op::UpsertRevNat(..)) => maps.upsert_revnats(
            &run.iter()
                .filter_map(|op| match op {
                    Op::UpsertRevNat(id, r) => Some((*id, *r)),
                    _ => None,
                })
                .collect::<Vec<_>>(),
        ),
        Some(Op::UpsertService(..)) => maps.upsert_services(
            &run.iter()
                .filter_map(|op| match op {
                    Op::UpsertService(k, e) => Some((*k, *e)),
                    _ => None,
                })
                .collect::<Vec<_>>(),
        ),
        Some(Op::DeleteService(..)) => maps.delete_services(
            &run.iter()
                .filter_map(|op| match op {
                    Op::DeleteService(k) => Some(*k),
                    _ => None,
                })
                .collect::<Vec<_>>(),
        ),
        Some(Op::DeleteRevNat(..)) => maps.delete_revnats(
            &run.iter()
                .filter_map(|op| match op {
                    Op::DeleteRevNat(id) => Some(*id),
                    _ => None,
                })
                .collect::<Vec<_>>(),
        ),
        Some(Op::DeleteBackend(..)) => maps.delete_backends(
            &run.iter()
                .filter_map(|op| match op {
                    Op::DeleteBackend(id) => Some(*id),
                    _ => None,
                })
                .collect::<Vec<_>>(),
        ),
    };
    result.map_err(|err| {
        let applied = match &err {
            DatapathError::Batch { applied, .. } => *applied,
            // Single writes (the default trait methods) stop at the failing one; the fake
            // reports its failing write's number, which is not an index into this run.
            _ => 0,
        };
        (applied, err)
    })
}

/// Checks the invariant the datapath relies on: every selectable or draining slot of every
/// frontend exists and names an existing backend, and every frontend has its reverse NAT.
pub fn check_consistent(content: &MapsContent) -> Result<(), String> {
    for (key, master) in content
        .services
        .iter()
        .filter(|(key, _)| key.slot == 0 && key.proto != 0)
    {
        for slot in 1..=master.count.saturating_add(master.qcount) {
            let slot_key = ServiceKey4 { slot, ..*key };
            let entry = content
                .services
                .get(&slot_key)
                .ok_or_else(|| format!("{key:?}: slot {slot} missing"))?;
            if !content.backends.contains_key(&entry.backend_id) {
                return Err(format!(
                    "{key:?}: slot {slot} names missing backend {}",
                    entry.backend_id
                ));
            }
        }
        if !content.revnat.contains_key(&master.rev_nat) {
            return Err(format!("{key:?}: no reverse NAT for id {}", master.rev_nat));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        datapath::{dump, fake::FakeMaps},
        model::{DesiredBackend, Frontend},
    };

    fn service(
        vip: [u8; 4],
        port: u16,
        backends: &[([u8; 4], u16, BackendState)],
    ) -> DesiredService {
        DesiredService {
            namespace: "default".into(),
            name: format!("svc-{}", vip[3]),
            port_name: String::new(),
            frontend: Frontend {
                vip: Ipv4Addr::from(vip),
                port,
                protocol: Protocol::Tcp,
            },
            backends: backends
                .iter()
                .map(|(addr, port, state)| DesiredBackend {
                    addr: Ipv4Addr::from(*addr),
                    port: *port,
                    state: *state,
                    remote: false,
                })
                .collect(),
            has_any_endpoints: !backends.is_empty(),
            affinity_timeout_secs: None,
        }
    }

    use BackendState::{Active, Terminating};

    fn scenarios() -> Vec<Vec<DesiredService>> {
        vec![
            vec![service(
                [10, 96, 0, 10],
                80,
                &[
                    ([10, 244, 1, 5], 8080, Active),
                    ([10, 244, 1, 6], 8080, Active),
                ],
            )],
            vec![service(
                [10, 96, 0, 10],
                80,
                &[
                    ([10, 244, 1, 6], 8080, Active),
                    ([10, 244, 1, 7], 8080, Active),
                    ([10, 244, 1, 5], 8080, Terminating),
                ],
            )],
            vec![
                service([10, 96, 0, 10], 80, &[([10, 244, 1, 7], 8080, Active)]),
                service([10, 96, 0, 11], 53, &[([10, 244, 2, 1], 53, Active)]),
            ],
            vec![service([10, 96, 0, 11], 53, &[])],
            vec![],
        ]
    }

    #[test]
    fn every_prefix_of_every_plan_keeps_slots_pointing_at_backends() {
        let mut fake = FakeMaps::default();
        let mut ids = Ids::restore(&fake.content);
        for desired_services in scenarios() {
            let desired = desired_content(&desired_services, &mut ids).expect("ids");
            let ops = plan(&fake.content, &desired);
            for op in &ops {
                apply(&mut fake, std::slice::from_ref(op)).expect("fake write");
                check_consistent(&fake.content).expect("consistent after every write");
            }
            assert_eq!(fake.content, desired);
            assert!(
                plan(&fake.content, &desired).is_empty(),
                "a second plan is empty"
            );
        }
        assert_eq!(
            fake.content,
            MapsContent::default(),
            "maps are empty after every service is gone"
        );
    }

    #[test]
    fn a_failed_write_is_retried_by_planning_again_and_converges() {
        let desired_services = scenarios().remove(1);
        for failing in 0..8 {
            let mut fake = FakeMaps {
                fail_write: Some(failing),
                ..FakeMaps::default()
            };
            let mut ids = Ids::restore(&fake.content);
            let desired = desired_content(&desired_services, &mut ids).expect("ids");
            let ops = plan(&fake.content, &desired);
            let first = apply(&mut fake, &ops);
            assert!(first.is_err(), "write {failing} fails");
            check_consistent(&fake.content).expect("consistent after a failure");
            let ops = plan(&fake.content, &desired);
            apply(&mut fake, &ops).expect("retry succeeds");
            assert_eq!(fake.content, desired);
        }
    }

    #[test]
    fn ids_survive_a_restart_so_nothing_right_is_rewritten() {
        let desired_services = scenarios().remove(2);
        let mut fake = FakeMaps::default();
        let mut ids = Ids::restore(&fake.content);
        let desired = desired_content(&desired_services, &mut ids).expect("ids");
        let ops = plan(&fake.content, &desired);
        apply(&mut fake, &ops).expect("apply");
        let mut restored = Ids::restore(&fake.content);
        let again = desired_content(&desired_services, &mut restored).expect("ids");
        assert!(plan(&fake.content, &again).is_empty());
    }

    #[test]
    fn maps_render_as_sorted_lines() {
        let mut ids = Ids::restore(&MapsContent::default());
        let desired = desired_content(&scenarios().remove(1), &mut ids).expect("ids");
        assert_eq!(
            dump::render(&desired),
            "BE 1 10.244.1.6:8080/TCP state=active flags=0x0\n\
             BE 2 10.244.1.7:8080/TCP state=active flags=0x0\n\
             BE 3 10.244.1.5:8080/TCP state=terminating flags=0x0\n\
             REV 1 10.96.0.10:80\n\
             SVC 10.96.0.10:80/TCP slot=0 id=1 count=2 qcount=1 flags=0x1\n\
             SVC 10.96.0.10:80/TCP slot=1 backend=1\n\
             SVC 10.96.0.10:80/TCP slot=2 backend=2\n\
             SVC 10.96.0.10:80/TCP slot=3 backend=3\n\
             VIP 10.96.0.10\n"
        );
    }
}
