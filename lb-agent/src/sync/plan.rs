//! The pure diff: `plan` turns what the maps hold into what they must hold as a list of writes,
//! ordered so that no prefix of the plan can make a packet select a slot that points nowhere:
//!
//! 1. new and changed backends (a slot may name them from now on);
//! 2. new and changed reverse-NAT entries (replies of flows created from now on need them);
//! 3. new source ranges (a master that starts checking them must find them all, or it would
//!    drop clients it admits);
//! 4. new and changed backend slots (beyond the old count they are not selectable yet), then
//!    new and changed Maglev tables (they name only backends written in 1);
//! 5. new and changed master entries: the commit point that makes the new count visible (and
//!    a frontend's Maglev flag);
//! 6. masters of frontends that are gone (their slots become unreachable);
//! 7. slots beyond the new counts, then the Maglev tables of frontends that no longer use one;
//! 8. orphaned source ranges (after the masters: a frontend that stops checking them, or is
//!    gone, no longer reads them), 9. orphaned reverse-NAT entries, then 10. orphaned backends
//!    (no slot names them any more).
//!
//! Every write is idempotent, so a failed apply is retried by planning again. `check_consistent`
//! states the invariant the order keeps. Pure: no aya, kube or tokio.
//!
//! Near capacity, two more functions keep one service from blocking the others: `without_stale`
//! is what the maps hold once what is gone is deleted (planned first, so a full map has room
//! before anything is added), and `upserts_of` the writes of one frontend alone, for
//! programming frontends one by one when the whole plan does not fit.
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use lb_common::service::ServiceEntry;

use crate::{
    datapath::{
        BackendId, MapsContent, ServiceId, SourceRangeEntry, maps,
        maps::{Backend, MaglevSpec, RevNat, ServiceKey},
    },
    model::IpFamily,
};

/// One map write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Insert or replace a backend.
    UpsertBackend(BackendId, Backend),
    /// Insert or replace a reverse-NAT entry.
    UpsertRevNat(ServiceId, RevNat),
    /// Insert a source range.
    UpsertSourceRange(SourceRangeEntry),
    /// Insert or replace a service slot (master or backend slot).
    UpsertService(ServiceKey, ServiceEntry),
    /// Write a frontend's whole Maglev table (built from the spec when applied), removing the
    /// chunks of the table it replaces beyond its own (the old table's chunk count).
    WriteMaglev(ServiceId, Arc<MaglevSpec>, u32),
    /// Remove a service slot.
    DeleteService(ServiceKey),
    /// Remove a source range.
    DeleteSourceRange(SourceRangeEntry),
    /// Remove a frontend's Maglev table of this many chunks.
    DeleteMaglev(ServiceId, u32),
    /// Remove a reverse-NAT entry from its family's map.
    DeleteRevNat(ServiceId, IpFamily),
    /// Remove a backend from its family's map.
    DeleteBackend(BackendId, IpFamily),
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
    ops.extend(
        desired
            .source_ranges
            .difference(&current.source_ranges)
            .map(|range| Op::UpsertSourceRange(*range)),
    );
    let (desired_masters, desired_slots): (BTreeMap<_, _>, BTreeMap<_, _>) = desired
        .services
        .iter()
        .partition(|(key, _)| key.slot() == 0);
    for (key, entry) in &desired_slots {
        if changed(current.services.get(*key), *entry) {
            ops.push(Op::UpsertService(**key, **entry));
        }
    }
    for (id, spec) in &desired.maglev {
        let current = current.maglev.get(id);
        if changed(current, spec) {
            let old_chunks = current.map_or(0, MaglevSpec::chunks);
            ops.push(Op::WriteMaglev(*id, Arc::new(spec.clone()), old_chunks));
        }
    }
    for (key, entry) in &desired_masters {
        if changed(current.services.get(*key), *entry) {
            ops.push(Op::UpsertService(**key, **entry));
        }
    }
    let stale = |key: &ServiceKey| !desired.services.contains_key(key);
    ops.extend(
        current
            .services
            .keys()
            .filter(|key| key.slot() == 0 && stale(key))
            .map(|key| Op::DeleteService(*key)),
    );
    ops.extend(
        current
            .services
            .keys()
            .filter(|key| key.slot() != 0 && stale(key))
            .map(|key| Op::DeleteService(*key)),
    );
    ops.extend(
        current
            .maglev
            .iter()
            .filter(|(id, _)| !desired.maglev.contains_key(id))
            .map(|(id, spec)| Op::DeleteMaglev(*id, spec.chunks())),
    );
    ops.extend(
        current
            .source_ranges
            .difference(&desired.source_ranges)
            .map(|range| Op::DeleteSourceRange(*range)),
    );
    // An id is one space over both families: an id now of the other family leaves its old
    // entry in the old family's map, deleted like an orphan.
    ops.extend(
        current
            .revnat
            .iter()
            .filter(|(id, old)| desired.revnat.get(id).map(RevNat::family) != Some(old.family()))
            .map(|(id, old)| Op::DeleteRevNat(*id, old.family())),
    );
    ops.extend(
        current
            .backends
            .iter()
            .filter(|(id, old)| desired.backends.get(id).map(Backend::family) != Some(old.family()))
            .map(|(id, old)| Op::DeleteBackend(*id, old.family())),
    );
    ops
}

/// A frontend as the services map keys it: (vip, port, proto); a VIP's wildcard entry is
/// `(vip, 0, 0)`.
pub type FrontendOf = (std::net::IpAddr, u16, u8);

/// The frontend a services-map key belongs to.
pub fn frontend_of(key: &ServiceKey) -> FrontendOf {
    maps::frontend_of(key)
}

/// `current` less what `desired` no longer has and nothing kept names: the master entries of
/// frontends that are gone with their slots, then the rev-NAT entries and backends no kept
/// entry names. Planning `current` → this → `desired` deletes before it adds, and every
/// prefix stays consistent (a frontend goes with its master; a backend only once no slot
/// names it).
pub fn without_stale(current: &MapsContent, desired: &MapsContent) -> MapsContent {
    let gone: BTreeSet<FrontendOf> = current
        .services
        .keys()
        .filter(|key| key.slot() == 0 && !desired.services.contains_key(key))
        .map(frontend_of)
        .collect();
    let mut kept = current.clone();
    kept.services
        .retain(|key, _| !gone.contains(&frontend_of(key)));
    let named_backends: BTreeSet<BackendId> = kept
        .services
        .iter()
        .filter(|(key, _)| key.slot() != 0)
        .map(|(_, entry)| maps::backend_id_of(entry))
        .collect();
    let named_services: BTreeSet<ServiceId> = kept
        .services
        .iter()
        .filter(|(key, _)| key.slot() == 0 && key.proto() != 0)
        .map(|(_, entry)| maps::service_id_of(entry))
        .collect();
    kept.backends
        .retain(|id, _| desired.backends.contains_key(id) || named_backends.contains(id));
    kept.revnat
        .retain(|id, _| desired.revnat.contains_key(id) || named_services.contains(id));
    // A gone frontend's Maglev table and source ranges go with its master.
    kept.maglev
        .retain(|id, _| desired.maglev.contains_key(id) || named_services.contains(id));
    kept.source_ranges.retain(|range| {
        desired.source_ranges.contains(range) || named_services.contains(&range.service)
    });
    kept
}

/// The writes that program the frontend whose desired entries are `entries` (its master and
/// slots) over `current`, in the plan's order: its backends, its rev-NAT entry, its slots, its
/// master. Only additions and changes: what it no longer needs is deleted by a whole plan.
pub fn upserts_of(
    entries: &[(ServiceKey, ServiceEntry)],
    current: &MapsContent,
    desired: &MapsContent,
) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut backends = BTreeSet::new();
    for (_, entry) in entries.iter().filter(|(key, _)| key.slot() != 0) {
        let id = maps::backend_id_of(entry);
        if let Some(backend) = desired.backends.get(&id)
            && changed(current.backends.get(&id), backend)
            && backends.insert(id)
        {
            ops.push(Op::UpsertBackend(id, *backend));
        }
    }
    for (_, entry) in entries
        .iter()
        .filter(|(key, _)| key.slot() == 0 && key.proto() != 0)
    {
        let id = maps::service_id_of(entry);
        if let Some(revnat) = desired.revnat.get(&id)
            && changed(current.revnat.get(&id), revnat)
        {
            ops.push(Op::UpsertRevNat(id, *revnat));
        }
        // A frontend's source ranges go in before the master entry that checks them.
        ops.extend(
            desired
                .source_ranges
                .iter()
                .filter(|range| range.service == id && !current.source_ranges.contains(range))
                .map(|range| Op::UpsertSourceRange(*range)),
        );
    }
    for slots_first in [true, false] {
        if !slots_first {
            // The frontend's Maglev table, after the backends it names, before its master.
            for (_, entry) in entries
                .iter()
                .filter(|(key, _)| key.slot() == 0 && key.proto() != 0)
            {
                let id = maps::service_id_of(entry);
                if let Some(spec) = desired.maglev.get(&id) {
                    let old = current.maglev.get(&id);
                    if changed(old, spec) {
                        let old_chunks = old.map_or(0, MaglevSpec::chunks);
                        ops.push(Op::WriteMaglev(id, Arc::new(spec.clone()), old_chunks));
                    }
                }
            }
        }
        for (key, entry) in entries {
            if (key.slot() != 0) == slots_first && changed(current.services.get(key), entry) {
                ops.push(Op::UpsertService(*key, *entry));
            }
        }
    }
    ops
}

/// `current` with `ops` applied (what the maps hold after a successful apply).
pub fn applied(current: &mut MapsContent, ops: &[Op]) {
    for op in ops {
        match *op {
            Op::UpsertBackend(id, backend) => {
                current.backends.insert(id, backend);
            }
            Op::UpsertRevNat(id, revnat) => {
                current.revnat.insert(id, revnat);
            }
            Op::UpsertService(key, entry) => {
                current.services.insert(key, entry);
            }
            Op::DeleteService(key) => {
                current.services.remove(&key);
            }
            Op::DeleteRevNat(id, family) => {
                if current.revnat.get(&id).map(RevNat::family) == Some(family) {
                    current.revnat.remove(&id);
                }
            }
            Op::DeleteBackend(id, family) => {
                if current.backends.get(&id).map(Backend::family) == Some(family) {
                    current.backends.remove(&id);
                }
            }
            Op::UpsertSourceRange(range) => {
                current.source_ranges.insert(range);
            }
            Op::DeleteSourceRange(range) => {
                current.source_ranges.remove(&range);
            }
            Op::WriteMaglev(id, ref spec, _) => {
                current.maglev.insert(id, (**spec).clone());
            }
            Op::DeleteMaglev(id, _) => {
                current.maglev.remove(&id);
            }
        }
    }
}

/// How many keys hold different values (or are present in one only) in `a` and `b`, over
/// the maps: the drift between what the syncer believes it wrote and what is there.
pub fn differences(a: &MapsContent, b: &MapsContent) -> usize {
    fn count<K: Ord, V: PartialEq>(a: &BTreeMap<K, V>, b: &BTreeMap<K, V>) -> usize {
        let differ = a.iter().filter(|(k, v)| b.get(k) != Some(v)).count();
        differ + b.keys().filter(|k| !a.contains_key(k)).count()
    }
    count(&a.services, &b.services)
        + count(&a.backends, &b.backends)
        + count(&a.revnat, &b.revnat)
        + a.source_ranges
            .symmetric_difference(&b.source_ranges)
            .count()
        + count(&a.maglev, &b.maglev)
}

fn changed<T: PartialEq>(current: Option<&T>, wanted: &T) -> bool {
    current != Some(wanted)
}

/// Checks the invariant the datapath relies on: every selectable or draining slot of every
/// frontend exists and names an existing backend, and every frontend has its reverse NAT.
pub fn check_consistent(content: &MapsContent) -> Result<(), String> {
    for (key, master) in content
        .services
        .iter()
        .filter(|(key, _)| key.slot() == 0 && key.proto() != 0)
    {
        for slot in 1..=master.count.saturating_add(master.qcount) {
            let slot_key = key.with_slot(slot);
            let entry = content
                .services
                .get(&slot_key)
                .ok_or_else(|| format!("{key:?}: slot {slot} missing"))?;
            let backend = maps::backend_id_of(entry);
            if !content.backends.contains_key(&backend) {
                return Err(format!(
                    "{key:?}: slot {slot} names missing backend {backend}"
                ));
            }
        }
        let service = maps::service_id_of(master);
        if !content.revnat.contains_key(&service) {
            return Err(format!("{key:?}: no reverse NAT for id {service}"));
        }
        if master.flags2 & lb_common::service::SERVICE_F2_MAGLEV != 0
            && !content.maglev.contains_key(&service)
        {
            return Err(format!(
                "{key:?}: Maglev flag without a table for id {service}"
            ));
        }
    }
    for (service, spec) in &content.maglev {
        for (name, _, backend) in &spec.members {
            if !content.backends.contains_key(backend) {
                return Err(format!(
                    "Maglev table of {service}: {name} names missing backend {backend}"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::{desired::desired_content, ids::Ids, scenarios};

    #[test]
    fn a_plan_writes_backends_then_rev_nat_then_slots_then_masters_then_removes_orphans() {
        let mut ids = Ids::restore(&MapsContent::default());
        let scenarios = scenarios::all();
        let before = desired_content(&scenarios[0], &mut ids).expect("ids");
        let after = desired_content(&scenarios[1], &mut ids).expect("ids");
        let kinds: Vec<&str> = plan(&before, &after)
            .iter()
            .map(|op| match op {
                Op::UpsertBackend(..) => "backend",
                Op::UpsertRevNat(..) => "rev-nat",
                Op::UpsertSourceRange(..) => "source range",
                Op::UpsertService(key, _) if key.slot() == 0 => "master",
                Op::UpsertService(..) => "slot",
                Op::DeleteService(..) => "delete slot",
                Op::DeleteSourceRange(..) => "delete source range",
                Op::DeleteRevNat(..) => "delete rev-nat",
                Op::DeleteBackend(..) => "delete backend",
                Op::WriteMaglev(..) => "maglev",
                Op::DeleteMaglev(..) => "delete maglev",
            })
            .collect();
        // .5 turns terminating and .7 is new; slots 1 and 2 change and 3 is new; the master
        // entry commits the new counts last. Nothing is orphaned.
        assert_eq!(
            kinds,
            ["backend", "backend", "slot", "slot", "slot", "master"]
        );
        assert!(plan(&after, &after).is_empty(), "a second plan is empty");
    }

    #[test]
    fn without_stale_deletes_only_gone_frontends_and_what_nothing_kept_names() {
        let mut ids = Ids::restore(&MapsContent::default());
        let scenarios = scenarios::all();
        // .10 (three backends) and .11:53 are programmed; then .10 goes and .11:53 loses its
        // backend.
        let current = desired_content(&scenarios[2], &mut ids).expect("ids");
        let desired = desired_content(&scenarios[3], &mut ids).expect("ids");
        let shrunk = without_stale(&current, &desired);
        check_consistent(&shrunk).expect("consistent");
        let vip_10 = std::net::IpAddr::from([10, 96, 0, 10]);
        assert!(
            shrunk
                .services
                .keys()
                .all(|key| frontend_of(key).0 != vip_10),
            "every entry of the gone frontend, wildcard included"
        );
        // .11:53 keeps its slot (and so its backend) until the full plan rewrites its master.
        assert_eq!(
            shrunk.services.len(),
            current.services.len() - 3,
            "wildcard, master and slot of .10"
        );
        assert_eq!(
            shrunk.backends.len(),
            1,
            "the backend .11's slot still names"
        );
        let ops = plan(&current, &shrunk);
        assert!(
            ops.iter().all(|op| matches!(
                op,
                Op::DeleteService(..) | Op::DeleteBackend(..) | Op::DeleteRevNat(..)
            )),
            "deletions only: {ops:?}"
        );
        let mut after = shrunk.clone();
        applied(&mut after, &plan(&shrunk, &desired));
        assert_eq!(after, desired, "the rest of the way is an ordinary plan");
    }

    #[test]
    fn a_plan_to_nothing_removes_masters_before_slots_and_slots_before_backends() {
        let mut ids = Ids::restore(&MapsContent::default());
        let before = desired_content(&scenarios::all().remove(0), &mut ids).expect("ids");
        let ops = plan(&before, &MapsContent::default());
        let position =
            |wanted: &dyn Fn(&Op) -> bool| ops.iter().position(wanted).expect("such a write");
        let master = position(
            &|op| matches!(op, Op::DeleteService(key) if key.slot() == 0 && key.proto() != 0),
        );
        let slot = position(&|op| matches!(op, Op::DeleteService(key) if key.slot() != 0));
        let backend = position(&|op| matches!(op, Op::DeleteBackend(..)));
        assert!(master < slot && slot < backend, "{ops:?}");
        assert_eq!(ops.len(), before.services.len() + before.backends.len() + 1);
    }

    #[test]
    fn source_ranges_are_written_before_the_master_that_checks_them_and_deleted_after() {
        use crate::model::{BackendState::Active, FrontendKind, SourceRange};
        let with_ranges = |ranges: &[(&str, u8)]| {
            let mut lb =
                scenarios::service([203, 0, 113, 10], 80, &[([10, 244, 1, 5], 8080, Active)]);
            lb.kind = FrontendKind::LoadBalancer;
            lb.source_ranges = Some(
                ranges
                    .iter()
                    .map(|(addr, len)| SourceRange::new(addr.parse().unwrap(), *len).unwrap())
                    .collect(),
            );
            vec![lb]
        };
        let mut ids = Ids::restore(&MapsContent::default());
        let first = desired_content(&with_ranges(&[("10.0.0.0", 8)]), &mut ids).expect("ids");
        let text = crate::datapath::dump::render(&first);
        assert!(text.contains("SRC 1 10.0.0.0/8\n"), "{text}");
        assert!(text.contains("flags=0x48 flags2=0x1"), "{text}");

        let ops = plan(&MapsContent::default(), &first);
        let range = ops
            .iter()
            .position(|op| matches!(op, Op::UpsertSourceRange(..)))
            .expect("a range written");
        let master = ops
            .iter()
            .position(|op| matches!(op, Op::UpsertService(key, _) if key.slot() == 0))
            .expect("a master written");
        assert!(range < master, "{ops:?}");

        // A range replaced: the new one before the master, the old one after it.
        let second = desired_content(&with_ranges(&[("192.168.0.0", 16)]), &mut ids).expect("ids");
        let ops = plan(&first, &second);
        assert_eq!(
            ops.iter()
                .map(|op| match op {
                    Op::UpsertSourceRange(r) => format!("+{}/{}", r.addr, r.prefix_len),
                    Op::DeleteSourceRange(r) => format!("-{}/{}", r.addr, r.prefix_len),
                    other => format!("{other:?}"),
                })
                .collect::<Vec<_>>(),
            ["+192.168.0.0/16", "-10.0.0.0/8"],
            "the master is unchanged: only the ranges move"
        );

        // The Service gone: its ranges go after its master.
        let ops = plan(&second, &MapsContent::default());
        let master = ops
            .iter()
            .position(|op| matches!(op, Op::DeleteService(key) if key.slot() == 0))
            .expect("master deleted");
        let range = ops
            .iter()
            .position(|op| matches!(op, Op::DeleteSourceRange(..)))
            .expect("range deleted");
        assert!(master < range, "{ops:?}");
    }
}
