//! Applying a plan: its writes in order through `LbMaps`, consecutive writes of one kind as one
//! batch. The kernel applies a batch in order and stops at the first failure, so a batch keeps
//! the plan's order and its prefix property (see `plan`).
use super::{maglev, plan::Op};
use crate::datapath::{Error as DatapathError, LbMaps};

/// Applies `ops` in order, stopping at the first failure (the prefix applied is safe).
/// Returns how many were applied, or the index and error of the one that failed.
pub fn apply<M: LbMaps + ?Sized>(
    maps: &mut M,
    ops: &[Op],
) -> Result<usize, (usize, DatapathError)> {
    let mut start = 0;
    for run in ops.chunk_by(|a, b| std::mem::discriminant(a) == std::mem::discriminant(b)) {
        apply_run(maps, run).map_err(|(applied, err)| (start + applied, err))?;
        start += run.len();
    }
    Ok(ops.len())
}

/// Applies a run of writes of one kind as one batch; on failure, says how many were applied.
fn apply_run<M: LbMaps + ?Sized>(maps: &mut M, run: &[Op]) -> Result<(), (usize, DatapathError)> {
    let result = match run.first() {
        None => Ok(()),
        Some(Op::UpsertBackend(..)) => maps.upsert_backends(&batch(run, |op| match *op {
            Op::UpsertBackend(id, backend) => Some((id, backend)),
            _ => None,
        })),
        Some(Op::UpsertRevNat(..)) => maps.upsert_revnats(&batch(run, |op| match *op {
            Op::UpsertRevNat(id, revnat) => Some((id, revnat)),
            _ => None,
        })),
        Some(Op::UpsertSourceRange(..)) => run.iter().try_for_each(|op| match op {
            Op::UpsertSourceRange(range) => maps.upsert_source_range(range),
            _ => Ok(()),
        }),
        Some(Op::DeleteSourceRange(..)) => run.iter().try_for_each(|op| match op {
            Op::DeleteSourceRange(range) => maps.delete_source_range(range),
            _ => Ok(()),
        }),
        Some(Op::UpsertService(..)) => maps.upsert_services(&batch(run, |op| match *op {
            Op::UpsertService(key, entry) => Some((key, entry)),
            _ => None,
        })),
        Some(Op::DeleteService(..)) => maps.delete_services(&batch(run, |op| match *op {
            Op::DeleteService(key) => Some(key),
            _ => None,
        })),
        Some(Op::DeleteRevNat(..)) => maps.delete_revnats(&batch(run, |op| match *op {
            Op::DeleteRevNat(id, family) => Some((id, family)),
            _ => None,
        })),
        Some(Op::DeleteBackend(..)) => maps.delete_backends(&batch(run, |op| match *op {
            Op::DeleteBackend(id, family) => Some((id, family)),
            _ => None,
        })),
        Some(Op::WriteMaglev(..) | Op::DeleteMaglev(..)) => return apply_maglev(maps, run),
    };
    result.map_err(|err| {
        let applied = match &err {
            DatapathError::Batch { applied, .. } => *applied,
            // Single writes (the default trait methods) stop at the failing one without saying
            // where; 0 undercounts, which only makes the error's index conservative.
            _ => 0,
        };
        (applied, err)
    })
}

/// A run of Maglev writes, table by table (each table is a batch of its own chunks).
fn apply_maglev<M: LbMaps + ?Sized>(
    maps: &mut M,
    run: &[Op],
) -> Result<(), (usize, DatapathError)> {
    for (applied, op) in run.iter().enumerate() {
        let result = match op {
            Op::WriteMaglev(id, spec, old_chunks) => {
                maps.write_maglev(*id, spec, &maglev::table(spec), *old_chunks)
            }
            Op::DeleteMaglev(id, chunks) => maps.delete_maglev(*id, *chunks),
            _ => Ok(()),
        };
        result.map_err(|err| (applied, err))?;
    }
    Ok(())
}

/// The arguments of a run's writes (all of one kind), as the batch call of that kind takes them.
fn batch<T>(run: &[Op], args: impl Fn(&Op) -> Option<T>) -> Vec<T> {
    run.iter().filter_map(args).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        datapath::{MapsContent, fake::FakeMaps},
        sync::{
            desired::{desired_content, desired_content_with},
            ids::Ids,
            plan::{check_consistent, plan},
            scenarios,
        },
    };

    #[test]
    fn every_prefix_of_every_plan_keeps_slots_pointing_at_backends() {
        let mut fake = FakeMaps::default();
        let mut ids = Ids::restore(&fake.content);
        for desired_services in scenarios::all() {
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
    fn every_prefix_of_every_maglev_plan_keeps_tables_naming_existing_backends() {
        let settings = maglev::Settings {
            default: crate::model::LbAlgorithm::Maglev,
            table_size: 251,
            ..maglev::Settings::default()
        };
        let mut fake = FakeMaps::default();
        let mut ids = Ids::restore(&fake.content);
        for desired_services in scenarios::all() {
            let desired =
                desired_content_with(&desired_services, &mut ids, &settings).expect("ids");
            let ops = plan(&fake.content, &desired);
            for op in &ops {
                apply(&mut fake, std::slice::from_ref(op)).expect("fake write");
                check_consistent(&fake.content).expect("consistent after every write");
            }
            assert_eq!(fake.content, desired);
            // Every written table is the spec's, entry for entry, and names only active
            // backends of its frontend.
            assert_eq!(
                fake.maglev_tables.keys().collect::<Vec<_>>(),
                desired.maglev.keys().collect::<Vec<_>>()
            );
            for (id, spec) in &desired.maglev {
                let table = &fake.maglev_tables[id];
                assert_eq!(table, &maglev::table(spec));
                assert_eq!(table.len(), 251);
                for backend in table {
                    assert!(spec.members.iter().any(|m| m.2 == *backend));
                    assert_eq!(
                        fake.content.backends[backend].state(),
                        lb_common::service::BACKEND_STATE_ACTIVE
                    );
                }
            }
        }
        assert!(fake.maglev_tables.is_empty(), "no service, no table");
    }

    #[test]
    fn switching_a_frontend_between_random_and_maglev_writes_or_removes_its_table() {
        let maglev_settings = maglev::Settings {
            default: crate::model::LbAlgorithm::Maglev,
            table_size: 251,
            ..maglev::Settings::default()
        };
        let services = scenarios::all().remove(0);
        let mut fake = FakeMaps::default();
        let mut ids = Ids::restore(&fake.content);
        let random = desired_content(&services, &mut ids).expect("ids");
        let ops = plan(&fake.content, &random);
        apply(&mut fake, &ops).expect("write");
        let with_maglev = desired_content_with(&services, &mut ids, &maglev_settings).expect("ids");
        let ops = plan(&fake.content, &with_maglev);
        // The table first, then the master entry that turns the flag on.
        assert!(
            matches!(ops[..], [Op::WriteMaglev(..), Op::UpsertService(key, entry)]
                if key.slot() == 0 && entry.flags2 != 0),
            "{ops:?}"
        );
        apply(&mut fake, &ops).expect("write");
        let ops = plan(&fake.content, &random);
        // The flag off first, then the table goes.
        assert!(
            matches!(ops[..], [Op::UpsertService(key, entry), Op::DeleteMaglev(_, 1)]
                if key.slot() == 0 && entry.flags2 == 0),
            "{ops:?}"
        );
        apply(&mut fake, &ops).expect("write");
        assert!(fake.maglev_tables.is_empty());
    }

    #[test]
    fn a_failed_write_is_retried_by_planning_again_and_converges() {
        let desired_services = scenarios::all().remove(1);
        for failing in 0..8 {
            let mut fake = FakeMaps::failing([failing]);
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
    fn a_whole_plan_writes_each_op_once_and_reaches_the_desired_content() {
        let mut ids = Ids::restore(&MapsContent::default());
        let desired = desired_content(&scenarios::all().remove(1), &mut ids).expect("ids");
        let ops = plan(&MapsContent::default(), &desired);
        let mut fake = FakeMaps::default();
        assert_eq!(apply(&mut fake, &ops).ok(), Some(ops.len()));
        assert_eq!(fake.content, desired);
        assert_eq!(fake.writes, ops.len(), "one write per op, none repeated");
    }
}
