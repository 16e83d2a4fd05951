//! The reconcile loop's core: model → desired map content → plan → apply. The only writer of
//! the load balancer's maps.
//!
//! `Syncer::sync` is one pass. It remembers what it wrote, so a pass with nothing to change
//! costs no syscalls; after any failure it re-reads the maps, and the next pass (the caller
//! retries with backoff) plans from the truth. The maps are never left half-programmed: each
//! prefix of a plan is safe (see `plan`).
pub mod ids;
pub mod plan;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::{
    datapath::{self, LbMaps, MapsContent},
    model::DesiredService,
};

/// Errors of a sync pass.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Ids ran out.
    #[error(transparent)]
    Ids(#[from] ids::Exhausted),
    /// Reading the maps failed.
    #[error("cannot read the maps")]
    Read(#[source] datapath::Error),
    /// A write failed; the writes before it were applied.
    #[error("write {index} of {total} failed")]
    Write {
        /// Index of the failed write.
        index: usize,
        /// Writes planned.
        total: usize,
        /// The cause.
        #[source]
        source: datapath::Error,
    },
}

/// What a pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Frontends programmed.
    pub services: usize,
    /// Backends programmed.
    pub backends: usize,
    /// Map writes made.
    pub writes: usize,
    /// How long the pass took.
    pub duration: Duration,
}

/// Keeps the maps in step with the desired services.
pub struct Syncer<M: LbMaps> {
    maps: Arc<Mutex<M>>,
    ids: ids::Ids,
    /// What the maps hold, when known without reading them.
    written: Option<MapsContent>,
}

impl<M: LbMaps> Syncer<M> {
    /// Restores ids from the maps, so that a restarted agent rewrites nothing that is right.
    pub fn new(maps: Arc<Mutex<M>>) -> Result<Self, Error> {
        let content = lock(&maps).read().map_err(Error::Read)?;
        Ok(Self {
            ids: ids::Ids::restore(&content),
            written: Some(content),
            maps,
        })
    }

    /// One pass: program exactly `services`.
    pub fn sync(&mut self, services: &[DesiredService]) -> Result<SyncStats, Error> {
        let started = Instant::now();
        let mut maps = lock(&self.maps);
        let current = match self.written.take() {
            Some(content) => content,
            None => maps.read().map_err(Error::Read)?,
        };
        let desired = plan::desired_content(services, &mut self.ids)?;
        let ops = plan::plan(&current, &desired);
        tracing::debug!(writes = ops.len(), "sync plan");
        match plan::apply(&mut *maps, &ops) {
            Ok(writes) => {
                let stats = SyncStats {
                    services: desired.revnat.len(),
                    backends: desired.backends.len(),
                    writes,
                    duration: started.elapsed(),
                };
                self.written = Some(desired);
                Ok(stats)
            }
            Err((index, source)) => {
                // Ids stay as allocated: the next pass re-reads the maps and reuses them.
                self.written = None;
                Err(Error::Write {
                    index,
                    total: ops.len(),
                    source,
                })
            }
        }
    }
}

/// Locks the maps; a panic elsewhere while holding the lock does not poison our view of them,
/// because every pass re-plans from their content.
pub fn lock<M>(maps: &Mutex<M>) -> std::sync::MutexGuard<'_, M> {
    maps.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
