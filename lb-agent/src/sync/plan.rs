//! The pure diff: `plan` turns what the maps hold into what they must hold as a list of writes,
//! ordered so that no prefix of the plan can make a packet select a slot that points nowhere:
//!
//! 1. new and changed backends (a slot may name them from now on);
//! 2. new and changed reverse-NAT entries (replies of flows created from now on need them);
//! 3. new and changed backend slots (beyond the old count they are not selectable yet);
//! 4. new and changed master entries: the commit point that makes the new count visible;
//! 5. masters of frontends that are gone (their slots become unreachable);
//! 6. slots beyond the new counts;
//! 7. orphaned reverse-NAT entries, then 8. orphaned backends (no slot names them any more).
//!
//! Every write is idempotent, so a failed apply is retried by planning again. `check_consistent`
//! states the invariant the order keeps. Pure: no aya, kube or tokio.
use std::collections::BTreeMap;

use lb_common::service::{Backend4, RevNat4, ServiceEntry, ServiceKey4};

use crate::datapath::{BackendId, MapsContent, ServiceId, maps};

/// One map write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Insert or replace a backend.
    UpsertBackend(BackendId, Backend4),
    /// Insert or replace a reverse-NAT entry.
    UpsertRevNat(ServiceId, RevNat4),
    /// Insert or replace a service slot (master or backend slot).
    UpsertService(ServiceKey4, ServiceEntry),
    /// Remove a service slot.
    DeleteService(ServiceKey4),
    /// Remove a reverse-NAT entry.
    DeleteRevNat(ServiceId),
    /// Remove a backend.
    DeleteBackend(BackendId),
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

/// How many keys hold different values (or are present in one only) in `a` and `b`, over
/// the three maps: the drift between what the syncer believes it wrote and what is there.
pub fn differences(a: &MapsContent, b: &MapsContent) -> usize {
    fn count<K: Ord, V: PartialEq>(a: &BTreeMap<K, V>, b: &BTreeMap<K, V>) -> usize {
        let differ = a.iter().filter(|(k, v)| b.get(k) != Some(v)).count();
        differ + b.keys().filter(|k| !a.contains_key(k)).count()
    }
    count(&a.services, &b.services) + count(&a.backends, &b.backends) + count(&a.revnat, &b.revnat)
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
        .filter(|(key, _)| key.slot == 0 && key.proto != 0)
    {
        for slot in 1..=master.count.saturating_add(master.qcount) {
            let slot_key = ServiceKey4 { slot, ..*key };
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
                Op::UpsertService(key, _) if key.slot == 0 => "master",
                Op::UpsertService(..) => "slot",
                Op::DeleteService(..) => "delete slot",
                Op::DeleteRevNat(..) => "delete rev-nat",
                Op::DeleteBackend(..) => "delete backend",
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
    fn a_plan_to_nothing_removes_masters_before_slots_and_slots_before_backends() {
        let mut ids = Ids::restore(&MapsContent::default());
        let before = desired_content(&scenarios::all().remove(0), &mut ids).expect("ids");
        let ops = plan(&before, &MapsContent::default());
        let position =
            |wanted: &dyn Fn(&Op) -> bool| ops.iter().position(wanted).expect("such a write");
        let master =
            position(&|op| matches!(op, Op::DeleteService(key) if key.slot == 0 && key.proto != 0));
        let slot = position(&|op| matches!(op, Op::DeleteService(key) if key.slot != 0));
        let backend = position(&|op| matches!(op, Op::DeleteBackend(..)));
        assert!(master < slot && slot < backend, "{ops:?}");
        assert_eq!(ops.len(), before.services.len() + before.backends.len() + 1);
    }
}
