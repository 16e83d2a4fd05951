//! The reconcile loop and its passes: model → `desired` map content (with ids from `ids`) →
//! `plan` → `apply`. The only writer of the load balancer's maps, and the one place that decides
//! retries.
//!
//! `Syncer::sync` is one pass. It remembers what it wrote, so a pass with nothing to change
//! costs no syscalls; after any failure it re-reads the maps, and the next pass plans from the
//! truth. The maps are never left half-programmed: each prefix of a plan is safe (see `plan`).
//! `reconcile` runs a pass per new snapshot and retries failed ones with backoff; it is generic
//! over `LbMaps`, so its timing is tested against in-memory maps on a paused clock.
//!
//! Ids of frontends and backends that are gone are retired, not reused (see `ids`): the
//! conntrack GC tells the syncer which ids its live entries still name, through
//! `Syncer::release_unreferenced` (or a `ReferencedSender` while `reconcile` runs), and the
//! others are freed and their rev-NAT entries deleted.
pub mod apply;
pub mod desired;
#[cfg(test)]
mod equivalence;
#[cfg(test)]
mod id_lifetime;
pub mod ids;
pub mod maglev;
pub mod plan;
#[cfg(test)]
mod scenarios;

use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::{
    datapath::{
        self, BackendId, LbMaps, MapsContent, ServiceId,
        maps::{MaglevSpec, RevNat},
    },
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
    /// An incremental pass was asked for before a full pass (or after a failed one).
    #[error("no full pass has programmed the maps yet")]
    NotProgrammed,
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
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Frontends programmed.
    pub services: usize,
    /// Backends programmed.
    pub backends: usize,
    /// Map writes made.
    pub writes: usize,
    /// Entries found to differ from what the syncer believed it wrote (a full pass that read
    /// the maps back), each repaired by the pass.
    pub repairs: usize,
    /// True for a full pass, false for an incremental one.
    pub full: bool,
    /// How long the pass took.
    pub duration: Duration,
    /// Frontends that did not fit in a full map, as `namespace/name:port (vip:port/proto)`:
    /// they keep what they had (or are absent, if new), everything else is programmed, and
    /// `reconcile` retries the pass.
    pub not_programmed: Vec<String>,
    /// The map that was full and the option that sizes it, when `not_programmed` is not empty.
    pub full_map: Option<(&'static str, &'static str)>,
    /// Entries the services, backends and rev-NAT maps hold after the pass.
    pub map_entries: [usize; 3],
}

/// The entries of the services, backends and rev-NAT maps in `content`.
fn map_entries(content: &MapsContent) -> [usize; 3] {
    [
        content.services.len(),
        content.backends.len(),
        content.revnat.len(),
    ]
}

/// How many frontends in a row may fail to fit before the rest of a pass is taken as not
/// fitting either without trying: past that, the map is simply full.
const FULL_AFTER_FAILURES: usize = 8;

/// A full map (E2BIG): the pass programs what fits and leaves the rest.
fn full_map(err: &datapath::Error) -> Option<(&'static str, &'static str)> {
    match err {
        datapath::Error::MapFull { map, flag } => Some((map, flag)),
        _ => None,
    }
}

/// What a conntrack GC scan found: the ids its live entries name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Referenced {
    /// When the scan started: an id retired after that is kept whatever the scan says, as
    /// the scan may have passed an entry naming it before the entry was written.
    pub scan_started: Instant,
    /// Service ids (`rev_nat`) of live conntrack entries.
    pub services: HashSet<ServiceId>,
    /// Backend ids of live conntrack entries.
    pub backends: HashSet<BackendId>,
}

/// Hands GC reports to the syncer while `reconcile` runs it; cheap to clone.
#[derive(Clone, Debug)]
pub struct ReferencedSender(mpsc::UnboundedSender<Referenced>);

impl ReferencedSender {
    /// Queues a report; the reconcile loop applies the latest one between passes. Reports
    /// after the loop has ended are dropped.
    pub fn report(&self, referenced: Referenced) {
        let _ = self.0.send(referenced);
    }
}

/// The syncer's clock: tokio's, so that tests on a paused clock drive quarantines (outside a
/// runtime, or not paused, it is the system's monotonic clock).
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// What the syncer believes the maps hold.
///
/// After a successful pass that is its index and the rev-NAT entries retired service ids
/// keep, not a mirror of every entry: each entry derives from the index, and one structure
/// per Service is half the memory of two.
enum Belief {
    /// Exactly `index.content()` plus `retired_revnat`: incremental passes can run.
    Indexed {
        /// What is programmed, by frontend.
        index: desired::Programmed,
        /// The rev-NAT entries of retired service ids (no frontend in `index` has them).
        retired_revnat: BTreeMap<ServiceId, RevNat>,
    },
    /// Entries as read at start or left by a pass that did not program the index (a full
    /// map): the next pass is full.
    Content(MapsContent),
}

impl Belief {
    /// Every entry.
    fn content(&self) -> MapsContent {
        match self {
            Self::Indexed {
                index,
                retired_revnat,
            } => {
                let mut content = index.content();
                content.revnat.extend(retired_revnat);
                content
            }
            Self::Content(content) => content.clone(),
        }
    }

    /// Every entry, without a copy for the one that holds them.
    fn into_content(self) -> MapsContent {
        match self {
            Self::Content(content) => content,
            indexed => indexed.content(),
        }
    }

    /// `Indexed` after a full pass that wrote `written` from `index`: the rev-NAT entries
    /// beyond the index's are those retired ids keep.
    fn indexed(index: desired::Programmed, written: MapsContent) -> Self {
        let mut retired_revnat = written.revnat;
        for id in index.service_ids() {
            retired_revnat.remove(&id);
        }
        Self::Indexed {
            index,
            retired_revnat,
        }
    }
}

/// Keeps the maps in step with the desired services.
pub struct Syncer<M: LbMaps> {
    maps: Arc<Mutex<M>>,
    ids: ids::Ids,
    /// What the maps hold, when known without reading them; `None` after any failure.
    written: Option<Belief>,
    /// GC reports for `reconcile`, once `referenced_sender` made the channel.
    reports: Option<mpsc::UnboundedReceiver<Referenced>>,
    /// Backend selection: random or Maglev, and Maglev's table size and seed.
    selection: maglev::Settings,
}

impl<M: LbMaps> Syncer<M> {
    /// Restores ids from the maps, so that a restarted agent rewrites nothing that is right.
    pub fn new(maps: Arc<Mutex<M>>) -> Result<Self, Error> {
        let limits = ids::Limits {
            last_service: ids::ServiceId(lock(&maps).revnat_capacity()),
            ..ids::Limits::default()
        };
        Self::with_limits(maps, limits)
    }

    /// `new` over the id space and quarantine `limits` give.
    pub fn with_limits(maps: Arc<Mutex<M>>, limits: ids::Limits) -> Result<Self, Error> {
        let content = lock(&maps).read().map_err(Error::Read)?;
        Ok(Self {
            ids: ids::Ids::restore_with(&content, limits, now()),
            written: Some(Belief::Content(content)),
            maps,
            reports: None,
            selection: maglev::Settings::default(),
        })
    }

    /// Selects backends as `settings` say from the next pass on (random for every Service
    /// until called).
    pub fn with_selection(mut self, settings: maglev::Settings) -> Self {
        self.selection = settings;
        self
    }

    /// One full pass: program exactly `services`, diffing everything against what the syncer
    /// wrote (or, after a failure, against the maps read back). Retired service ids keep their
    /// rev-NAT entries; retired ids past their quarantine are freed first.
    pub fn sync(&mut self, services: &[DesiredService]) -> Result<SyncStats, Error> {
        self.full_pass(services, false)
    }

    /// A full pass that reads the maps back instead of trusting what the syncer believes it
    /// wrote, and so repairs any drift (an entry deleted or changed behind the agent's back).
    /// `SyncStats::repairs` counts the entries that differed from the syncer's belief.
    pub fn resync(&mut self, services: &[DesiredService]) -> Result<SyncStats, Error> {
        self.full_pass(services, true)
    }

    /// Whether `sync_changes` can run: a full pass succeeded and nothing failed since.
    pub fn can_sync_changes(&self) -> bool {
        matches!(self.written, Some(Belief::Indexed { .. }))
    }

    fn full_pass(&mut self, services: &[DesiredService], reread: bool) -> Result<SyncStats, Error> {
        let started = Instant::now();
        let expired = self.ids.expire(now());
        log_released("quarantine over", expired);
        let (current, repairs) = match self.written.take() {
            Some(belief) if !reread => (belief.into_content(), 0),
            belief => {
                let belief = belief.map(Belief::into_content);
                let mut truth = lock(&self.maps).read().map_err(Error::Read)?;
                if let Some(belief) = &belief {
                    // A Maglev table reads back as its size alone: one of the size the syncer
                    // wrote is taken as written (its entries are not compared), so that a
                    // resync does not rewrite every table.
                    for (id, spec) in &mut truth.maglev {
                        if let Some(wrote) = belief.maglev.get(id)
                            && wrote.chunks() == spec.chunks()
                        {
                            spec.clone_from(wrote);
                        }
                    }
                }
                let repairs = belief.map_or(0, |belief| plan::differences(&belief, &truth));
                (truth, repairs)
            }
        };
        let index = desired::desired_index(services, &mut self.ids, &self.selection)?;
        let mut desired = index.content();
        desired::keep_retired_revnat(&mut desired, &current, &self.ids);
        // Deletions first: near capacity, what is gone makes room for what comes.
        let shrunk = plan::without_stale(&current, &desired);
        let mut ops = plan::plan(&current, &shrunk);
        ops.extend(plan::plan(&shrunk, &desired));
        tracing::debug!(writes = ops.len(), repairs, "sync plan");
        // The maps are locked for the writes alone: readers (`lbctl service list`) wait for
        // the writes, never for the planning.
        let mut maps = lock(&self.maps);
        let mut applied = apply::apply(&mut *maps, &ops);
        let mut partial = None;
        if let Err((_, err)) = &applied
            && let Some(full) = full_map(err)
        {
            // One frontend that does not fit must not hold back the others.
            let fitted = program_fitting(&mut *maps, &current, &desired);
            match fitted {
                Ok((writes, unfit, effective)) => {
                    applied = Ok(writes);
                    partial = Some((unfit, effective, full));
                }
                Err(err) => {
                    self.written = None;
                    self.ids.settle(now());
                    return Err(err);
                }
            }
        }
        drop(maps);
        // From here on no packet can read a master entry naming an id this pass retired.
        self.ids.settle(now());
        match applied {
            Ok(writes) => {
                let mut stats = SyncStats {
                    services: index.frontends(),
                    backends: index.backends(),
                    writes,
                    repairs,
                    full: true,
                    duration: started.elapsed(),
                    not_programmed: Vec::new(),
                    full_map: None,
                    map_entries: map_entries(&desired),
                };
                match partial {
                    None => {
                        self.written = Some(Belief::indexed(index, desired));
                    }
                    Some((unfit, effective, full)) => {
                        // What is programmed is not the index: the next pass is full.
                        stats.not_programmed = labels(&unfit, services);
                        stats.full_map = Some(full);
                        stats.services = effective
                            .services
                            .keys()
                            .filter(|k| k.slot() == 0 && k.proto() != 0)
                            .count();
                        stats.backends = effective.backends.len();
                        stats.map_entries = map_entries(&effective);
                        self.written = Some(Belief::Content(effective));
                    }
                }
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

    /// An incremental pass: `upserts` replace (or add) their frontends, the frontends in
    /// `removals` go; every other frontend stays as programmed. Plans and writes only the keys
    /// these frontends touch, in the same safe order as a full pass, and keeps the id lifetime
    /// rules of a full pass (a frontend or a backend no frontend names any more is retired; a
    /// retired service id keeps its rev-NAT entry). Needs [`Syncer::can_sync_changes`];
    /// otherwise, and after any failure, run a full pass.
    pub fn sync_changes(
        &mut self,
        upserts: &[DesiredService],
        removals: &[crate::model::Frontend],
    ) -> Result<SyncStats, Error> {
        let started = Instant::now();
        let Some(Belief::Indexed {
            mut index,
            mut retired_revnat,
        }) = self.written.take()
        else {
            self.written = None;
            return Err(Error::NotProgrammed);
        };
        let expired = self.ids.expire(now());
        log_released("quarantine over", expired);

        // What changes, noted before the index does: the entries the maps hold now derive
        // from the index as it is.
        let mut touched = Touched::default();
        let mut removed = Vec::new();
        // The rev-NAT entries and extras of the frontends replaced or removed, by service id.
        let mut old_frontends = BTreeMap::new();
        for frontend in removals {
            let key = ids::FrontendKey {
                vip: frontend.vip,
                port: frontend.port,
                proto: desired::proto_number(frontend.protocol),
            };
            if let Some(old) = index.get(&key) {
                touched.frontend(&key, old, false);
                old_frontends.insert(old.revnat().0, old);
                removed.push(key);
            }
        }
        let mut added = Vec::with_capacity(upserts.len());
        for service in upserts {
            let key = desired::frontend_key(service);
            if let Some(old) = index.get(&key) {
                touched.frontend(&key, old, false);
                old_frontends.insert(old.revnat().0, old);
            }
            // On exhaustion the index is dropped with the belief: the next pass is full.
            let content = desired::frontend_content(service, &mut self.ids, &self.selection)?;
            touched.frontend(&key, &content, true);
            added.push((key, content));
        }
        if expired.services > 0 {
            // Freed ids lose the rev-NAT entries they kept, as a full pass would delete them
            // (a live id is always held).
            for id in retired_revnat.keys() {
                if !self.ids.holds_service(*id) {
                    touched.revnat.entry(*id).or_insert(None);
                }
            }
        }

        let mut current = MapsContent::default();
        for key in &touched.services {
            if let Some(entry) = index.service_entry(key) {
                current.services.insert(*key, entry);
            }
        }
        for id in touched.backends.keys() {
            if let Some(backend) = index.backend(*id) {
                current.backends.insert(*id, backend);
            }
        }
        for id in touched.revnat.keys() {
            let held = match old_frontends.get(id) {
                Some(old) => Some(old.revnat().1),
                None => retired_revnat.get(id).copied(),
            };
            if let Some(revnat) = held {
                current.revnat.insert(*id, revnat);
            }
        }
        for id in touched.extras.keys() {
            if let Some(old) = old_frontends.get(id) {
                let (ranges, maglev) = old.extras_ref();
                current.source_ranges.extend(ranges.iter().copied());
                if let Some(spec) = maglev {
                    current.maglev.insert(*id, MaglevSpec::clone(spec));
                }
            }
        }
        drop(old_frontends);

        for key in &removed {
            index.remove(key);
        }
        for (key, content) in added {
            index.remove(&key);
            index.add(key, content);
        }
        for key in removed.iter().filter(|key| !index.contains(key)) {
            self.ids.retire_service(key);
        }
        for (id, key) in &touched.backends {
            if index.backend(*id).is_none() {
                self.ids.retire_backend(key);
            }
        }

        let mut desired = MapsContent::default();
        for key in &touched.services {
            if let Some(entry) = index.service_entry(key) {
                desired.services.insert(*key, entry);
            }
        }
        for id in touched.backends.keys() {
            if let Some(backend) = index.backend(*id) {
                desired.backends.insert(*id, backend);
            }
        }
        for (id, wanted) in &touched.revnat {
            // A frontend that went keeps its entry while its id is retired (held).
            let held = current.revnat.get(id).copied();
            let wanted = wanted.or(held.filter(|_| self.ids.holds_service(*id)));
            if let Some(revnat) = wanted {
                desired.revnat.insert(*id, revnat);
            }
        }
        // Source ranges and Maglev tables go with their frontend's master entry: those of
        // the touched service ids, as written and as wanted now.
        for (id, wanted) in &touched.extras {
            if let Some((ranges, maglev)) = wanted {
                desired.source_ranges.extend(ranges.iter().copied());
                if let Some(spec) = maglev {
                    desired.maglev.insert(*id, MaglevSpec::clone(spec));
                }
            }
        }
        // As a full pass: deletions first, then a plan whose every prefix is safe.
        let shrunk = plan::without_stale(&current, &desired);
        let mut ops = plan::plan(&current, &shrunk);
        ops.extend(plan::plan(&shrunk, &desired));
        tracing::debug!(writes = ops.len(), "incremental sync plan");
        let applied = apply::apply(&mut *lock(&self.maps), &ops);
        self.ids.settle(now());
        match applied {
            Ok(writes) => {
                // The entries the index does not derive: those retired ids keep.
                for (id, wanted) in &touched.revnat {
                    match (wanted, desired.revnat.get(id)) {
                        (None, Some(revnat)) => retired_revnat.insert(*id, *revnat),
                        _ => retired_revnat.remove(id),
                    };
                }
                let stats = SyncStats {
                    services: index.frontends(),
                    backends: index.backends(),
                    writes,
                    repairs: 0,
                    full: false,
                    duration: started.elapsed(),
                    not_programmed: Vec::new(),
                    full_map: None,
                    map_entries: [
                        index.service_entries(),
                        index.backends(),
                        index.frontends() + retired_revnat.len(),
                    ],
                };
                self.written = Some(Belief::Indexed {
                    index,
                    retired_revnat,
                });
                Ok(stats)
            }
            Err((index, source)) => Err(Error::Write {
                index,
                total: ops.len(),
                source,
            }),
        }
    }

    /// The GC's side: frees every retired id that was retired before `scan_started` and is
    /// in neither set (the ids the scan's live conntrack entries name), and deletes the
    /// rev-NAT entries of the service ids freed. Ids in the sets that the syncer does not hold
    /// (lost by a restart) are reserved until a later scan no longer names them. Retired ids
    /// past their quarantine are freed too. On a failed write the ids stay freed; the next
    /// pass deletes what is left.
    pub fn release_unreferenced(
        &mut self,
        scan_started: Instant,
        services: &HashSet<ServiceId>,
        backends: &HashSet<BackendId>,
    ) -> Result<ids::Released, Error> {
        let mut released = self.ids.release(scan_started, services, backends);
        let expired = self.ids.expire(now());
        log_released("unreferenced", released);
        log_released("quarantine over", expired);
        released.services += expired.services;
        released.backends += expired.backends;
        let mut maps = lock(&self.maps);
        // Only rev-NAT entries go: with the index, only those retired ids keep can.
        let (current, index) = match self.written.take() {
            Some(Belief::Indexed {
                index,
                retired_revnat,
            }) => (
                MapsContent {
                    revnat: retired_revnat,
                    ..MapsContent::default()
                },
                Some(index),
            ),
            Some(Belief::Content(content)) => (content, None),
            None => (maps.read().map_err(Error::Read)?, None),
        };
        let mut desired = current.clone();
        desired.revnat.retain(|id, _| self.ids.holds_service(*id));
        let ops = plan::plan(&current, &desired);
        match apply::apply(&mut *maps, &ops) {
            Ok(_) => {
                self.written = Some(match index {
                    Some(index) => Belief::Indexed {
                        index,
                        retired_revnat: desired.revnat,
                    },
                    None => Belief::Content(desired),
                });
                Ok(released)
            }
            Err((index, source)) => {
                self.written = None;
                Err(Error::Write {
                    index,
                    total: ops.len(),
                    source,
                })
            }
        }
    }

    /// A sender for GC reports that `reconcile` applies between passes (each one as
    /// `release_unreferenced`). A second call replaces the first channel.
    pub fn referenced_sender(&mut self) -> ReferencedSender {
        let (sender, receiver) = mpsc::unbounded_channel();
        self.reports = Some(receiver);
        ReferencedSender(sender)
    }

    /// The id tables (tests).
    #[cfg(test)]
    fn ids(&self) -> &ids::Ids {
        &self.ids
    }
}

/// After a whole plan hit a full map: programs the frontends one by one, in key order, skipping
/// those that do not fit, then reverts what the skipped ones wrote (back to `before`, what
/// they had when the pass began) and deletes what is gone. When those deletions made room,
/// the skipped frontends get a second try. Returns the writes made, the frontends skipped and
/// what the maps hold now.
fn program_fitting<M: LbMaps + ?Sized>(
    maps: &mut M,
    before: &MapsContent,
    desired: &MapsContent,
) -> Result<(usize, Vec<plan::FrontendOf>, MapsContent), Error> {
    let write_err = |total: usize| {
        move |(index, source)| Error::Write {
            index,
            total,
            source,
        }
    };
    let mut by_frontend: std::collections::BTreeMap<plan::FrontendOf, Vec<_>> =
        std::collections::BTreeMap::new();
    for (key, entry) in &desired.services {
        by_frontend
            .entry(plan::frontend_of(key))
            .or_default()
            .push((*key, *entry));
    }
    let mut current = maps.read().map_err(Error::Read)?;
    let mut candidates: Vec<plan::FrontendOf> = by_frontend.keys().copied().collect();
    let mut writes = 0;
    for _round in 0..2 {
        let (mut unfit, mut failures_in_a_row) = (Vec::new(), 0);
        for frontend in &candidates {
            let entries = &by_frontend[frontend];
            if failures_in_a_row >= FULL_AFTER_FAILURES {
                if entries
                    .iter()
                    .any(|(key, _)| !current.services.contains_key(key))
                {
                    unfit.push(*frontend);
                }
                continue;
            }
            let ops = plan::upserts_of(entries, &current, desired);
            match apply::apply(maps, &ops) {
                Ok(n) => {
                    plan::applied(&mut current, &ops);
                    writes += n;
                    failures_in_a_row = 0;
                }
                Err((_, err)) if full_map(&err).is_some() => {
                    unfit.push(*frontend);
                    failures_in_a_row += 1;
                    current = maps.read().map_err(Error::Read)?;
                }
                Err(err) => return Err(write_err(ops.len())(err)),
            }
        }
        let effective = without_unfit(desired, before, &unfit);
        let ops = plan::plan(&current, &effective);
        writes += apply::apply(maps, &ops).map_err(write_err(ops.len()))?;
        current = effective;
        let made_room = ops
            .iter()
            .any(|op| matches!(op, plan::Op::DeleteService(..)));
        if unfit.is_empty() || !made_room {
            return Ok((writes, unfit, current));
        }
        candidates = unfit;
    }
    let unfit = candidates;
    Ok((writes, unfit, current))
}

/// `desired` with the frontends `unfit` as they were in `before` (absent if new), with the
/// backends and rev-NAT entries that names, and without the backends and rev-NAT entries only
/// their new content needed.
fn without_unfit(
    desired: &MapsContent,
    before: &MapsContent,
    unfit: &[plan::FrontendOf],
) -> MapsContent {
    let mut effective = desired.clone();
    for frontend in unfit {
        // A new frontend's rev-NAT entry is not written either (a retired id's is in `before`).
        for (_, entry) in desired.services.iter().filter(|(key, _)| {
            key.slot() == 0 && key.proto() != 0 && plan::frontend_of(key) == *frontend
        }) {
            let id = datapath::maps::service_id_of(entry);
            if !before.revnat.contains_key(&id) {
                effective.revnat.remove(&id);
            }
        }
        effective
            .services
            .retain(|key, _| plan::frontend_of(key) != *frontend);
        for (key, entry) in before
            .services
            .iter()
            .filter(|(key, _)| plan::frontend_of(key) == *frontend)
        {
            effective.services.insert(*key, *entry);
            if key.slot() != 0 {
                let id = datapath::maps::backend_id_of(entry);
                if let Some(backend) = before.backends.get(&id) {
                    effective.backends.entry(id).or_insert(*backend);
                }
            } else if key.proto() != 0 {
                let id = datapath::maps::service_id_of(entry);
                if let Some(revnat) = before.revnat.get(&id) {
                    effective.revnat.entry(id).or_insert(*revnat);
                }
            }
        }
    }
    // Backends only the skipped frontends would have used are not written.
    let named: std::collections::BTreeSet<BackendId> = effective
        .services
        .iter()
        .filter(|(key, _)| key.slot() != 0)
        .map(|(_, entry)| datapath::maps::backend_id_of(entry))
        .collect();
    effective
        .backends
        .retain(|id, _| named.contains(id) || before.backends.contains_key(id));
    effective
}

/// The frontends `unfit` as `namespace/name:port (vip:port/proto)`, from the desired services
/// that define them.
/// A VIP's wildcard entry is left out: its frontends are what an operator looks for.
fn labels(unfit: &[plan::FrontendOf], services: &[DesiredService]) -> Vec<String> {
    unfit
        .iter()
        .filter(|(_, _, proto)| *proto != 0)
        .map(|(vip, port, proto)| {
            let (addr, port) = (*vip, *port);
            let service = services.iter().find(|service| {
                service.frontend.vip == addr
                    && service.frontend.port == port
                    && desired::proto_number(service.frontend.protocol) == *proto
            });
            match service {
                Some(service) => format!(
                    "{}/{}:{} ({})",
                    service.namespace,
                    service.name,
                    if service.port_name.is_empty() {
                        port.to_string()
                    } else {
                        service.port_name.clone()
                    },
                    service.frontend
                ),
                None => format!("{} (proto {proto})", std::net::SocketAddr::new(addr, port)),
            }
        })
        .collect()
}

/// The keys an incremental pass touches; a rev-NAT id maps to the entry its new frontend
/// wants, or `None` for one whose frontend went.
#[derive(Default)]
struct Touched {
    services: std::collections::BTreeSet<crate::datapath::maps::ServiceKey>,
    backends: std::collections::BTreeMap<BackendId, ids::BackendKey>,
    revnat: std::collections::BTreeMap<ServiceId, Option<crate::datapath::maps::RevNat>>,
    /// By service id: the source ranges and Maglev table its new frontend wants, or `None`
    /// for one whose frontend went.
    extras: std::collections::BTreeMap<ServiceId, Option<desired::Extras>>,
}

impl Touched {
    /// Notes every key of `content`, the frontend's old content or (`added`) its new one.
    fn frontend(
        &mut self,
        key: &ids::FrontendKey,
        content: &desired::FrontendContent,
        added: bool,
    ) {
        self.services.extend(content.service_keys(key));
        self.backends.extend(content.backend_ids());
        let (id, revnat) = content.revnat();
        if added {
            self.revnat.insert(id, Some(revnat));
            self.extras.insert(id, Some(content.extras()));
        } else {
            self.revnat.entry(id).or_insert(None);
            self.extras.entry(id).or_insert(None);
        }
    }
}

fn log_released(why: &'static str, released: ids::Released) {
    if released != ids::Released::default() {
        tracing::debug!(
            why,
            services = released.services,
            backends = released.backends,
            "retired ids freed"
        );
    }
}

/// The next GC report, the latest of those queued; never, without a channel or once every
/// sender is gone.
async fn next_report(reports: &mut Option<mpsc::UnboundedReceiver<Referenced>>) -> Referenced {
    let Some(receiver) = reports else {
        return std::future::pending().await;
    };
    let Some(mut latest) = receiver.recv().await else {
        *reports = None;
        return std::future::pending().await;
    };
    while let Ok(newer) = receiver.try_recv() {
        latest = newer;
    }
    latest
}

/// Locks the maps; a panic elsewhere while holding the lock does not poison our view of them,
/// because every pass re-plans from their content.
pub fn lock<M>(maps: &Mutex<M>) -> std::sync::MutexGuard<'_, M> {
    maps.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The wait after a failed pass; each further failure doubles it, up to `MAX_RETRY`.
pub const FIRST_RETRY: Duration = Duration::from_millis(200);

/// The longest wait between retries of a failed pass.
pub const MAX_RETRY: Duration = Duration::from_secs(30);

/// When to retry: not at all after a success; `FIRST_RETRY` after a failure, doubling with every
/// further failure in a row, up to `MAX_RETRY`.
#[derive(Debug, Default)]
struct Backoff(Option<Duration>);

impl Backoff {
    /// Records a failure; returns the wait before the retry.
    fn failed(&mut self) -> Duration {
        let delay = self
            .0
            .map_or(FIRST_RETRY, |delay| (delay * 2).min(MAX_RETRY));
        self.0 = Some(delay);
        delay
    }

    fn succeeded(&mut self) {
        self.0 = None;
    }

    /// Completes when a retry is due; never, if none is.
    async fn due(&self) {
        match self.0 {
            Some(delay) => tokio::time::sleep(delay).await,
            None => std::future::pending().await,
        }
    }
}

/// What one pass programs: everything, or the frontends that changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Update {
    /// Every frontend to program, as `Syncer::sync` takes them.
    Full(Vec<DesiredService>),
    /// Frontends added or changed, and frontends gone (`Syncer::sync_changes`).
    Changes {
        /// Added or changed.
        upserts: Vec<DesiredService>,
        /// Gone.
        removals: Vec<crate::model::Frontend>,
    },
}

/// Where the reconcile loop gets what to program.
pub trait Feed {
    /// Completes when something may have changed; false once nothing more can come.
    fn changed(&mut self) -> impl Future<Output = bool>;
    /// What changed since the last call (`full`: everything instead); `None` while the source
    /// has not synced, so that nothing is programmed from a partial view.
    fn next(&mut self, full: bool) -> Option<Update>;
    /// Hears the outcome of every pass.
    fn record(&mut self, outcome: Result<&SyncStats, &Error>);
}

/// A feed of whole desired lists on a `watch` channel (`None` until synced): every pass full.
pub struct WatchFeed(pub watch::Receiver<Option<Vec<DesiredService>>>);

impl Feed for WatchFeed {
    async fn changed(&mut self) -> bool {
        self.0.changed().await.is_ok()
    }

    fn next(&mut self, _full: bool) -> Option<Update> {
        self.0.borrow_and_update().clone().map(Update::Full)
    }

    fn record(&mut self, _outcome: Result<&SyncStats, &Error>) {}
}

/// The reconcile loop's options.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReconcileOptions {
    /// How often a full pass reads the maps back and repairs drift; `None`: never.
    pub resync_interval: Option<Duration>,
}

/// The reconcile loop: a pass whenever the feed has changes (all those that arrived while the
/// previous pass ran, together: there is no other debounce), and after a failed pass a retry
/// with backoff, until `shutdown`. A pass is incremental (`Syncer::sync_changes`) when it can
/// be; the first pass, a retry and the periodic resync are full. A change does not wait for a
/// pending retry.
///
/// Nothing is programmed before the feed's source has synced: a restarted agent never scales
/// services down to a partial view.
pub async fn reconcile<M: LbMaps, F: Feed>(
    syncer: &mut Syncer<M>,
    mut feed: F,
    options: ReconcileOptions,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::default();
    let resync_due = |from: tokio::time::Instant| options.resync_interval.map(|every| from + every);
    let mut next_resync = resync_due(tokio::time::Instant::now());
    loop {
        let mut resync = false;
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = feed.changed() => {
                if !changed {
                    // The source ended: nothing new will come (its owner reports why).
                    shutdown.cancelled().await;
                    return;
                }
            }
            () = backoff.due() => {}
            () = sleep_until(next_resync) => {
                // Re-armed here too: before the source syncs no pass runs to re-arm it.
                next_resync = resync_due(tokio::time::Instant::now());
                resync = true;
            }
            report = next_report(&mut syncer.reports) => {
                let outcome = syncer.release_unreferenced(
                    report.scan_started,
                    &report.services,
                    &report.backends,
                );
                if let Err(err) = outcome {
                    // A pass re-plans from the maps and deletes what is left.
                    let delay = backoff.failed();
                    tracing::warn!(
                        error = %crate::telemetry::error_chain(&err),
                        retry_in_ms = delay.as_millis() as u64,
                        "deleting rev-NAT entries of freed ids failed; retrying"
                    );
                }
                continue;
            }
        }
        let full = resync || !syncer.can_sync_changes();
        let Some(update) = feed.next(full) else {
            continue;
        };
        let span = tracing::info_span!("sync", full);
        let _enter = span.enter();
        let outcome = match &update {
            Update::Full(services) if resync => syncer.resync(services),
            Update::Full(services) => syncer.sync(services),
            Update::Changes { upserts, removals } => syncer.sync_changes(upserts, removals),
        };
        if matches!(update, Update::Full(_)) {
            next_resync = resync_due(tokio::time::Instant::now());
        }
        match &outcome {
            Ok(stats) if !stats.not_programmed.is_empty() => {
                // Everything else is programmed; the rest is tried again, as room may come.
                let delay = backoff.failed();
                let (map, flag) = stats.full_map.unwrap_or(("?", "?"));
                tracing::warn!(
                    map,
                    services = ?stats.not_programmed,
                    retry_in_ms = delay.as_millis() as u64,
                    "map `{map}` is full: {} frontend(s) not programmed (they keep what they \
                     had); raise --{flag}",
                    stats.not_programmed.len()
                );
            }
            Ok(stats) => {
                backoff.succeeded();
                if stats.repairs > 0 {
                    tracing::warn!(
                        repairs = stats.repairs,
                        "map entries differed from what the agent wrote; repaired"
                    );
                }
                // One line per pass that changed the maps (a state change).
                if stats.writes > 0 {
                    tracing::info!(
                        full = stats.full,
                        services = stats.services,
                        backends = stats.backends,
                        writes = stats.writes,
                        micros = stats.duration.as_micros() as u64,
                        "maps synced"
                    );
                }
            }
            Err(err) => {
                let delay = backoff.failed();
                tracing::warn!(
                    error = %crate::telemetry::error_chain(err),
                    retry_in_ms = delay.as_millis() as u64,
                    "sync failed; retrying"
                );
            }
        }
        feed.record(outcome.as_ref());
    }
}

/// Completes at `deadline`; never, without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use tokio::{sync::mpsc, task::JoinHandle, time::Instant};

    use super::*;
    use crate::{
        datapath::{dump, fake::FakeMaps},
        sync::{desired::desired_content, ids::Ids},
    };

    /// The content `services` programs into empty maps.
    fn content_of(services: &[DesiredService]) -> MapsContent {
        desired_content(services, &mut Ids::default()).expect("ids")
    }

    /// What the datapath serves: each frontend with its backends in slot order and their
    /// states; ids left out, as they depend on what was allocated before.
    fn served(content: &MapsContent) -> Vec<(String, Vec<(String, crate::model::BackendState)>)> {
        dump::services(content)
            .into_iter()
            .map(|view| {
                let backends = view.backends.into_iter().map(|b| (b.address, b.state));
                (view.frontend, backends.collect())
            })
            .collect()
    }

    /// How many writes programming `services` into empty maps takes.
    fn writes_for(services: &[DesiredService]) -> usize {
        plan::plan(&MapsContent::default(), &content_of(services)).len()
    }

    /// A `WatchFeed` that reports each pass (when, since the loop started, and whether it
    /// succeeded).
    struct Recorded {
        feed: WatchFeed,
        passed: mpsc::UnboundedSender<(Duration, bool)>,
        started: Instant,
    }

    impl Feed for Recorded {
        async fn changed(&mut self) -> bool {
            self.feed.changed().await
        }

        fn next(&mut self, full: bool) -> Option<Update> {
            self.feed.next(full)
        }

        fn record(&mut self, outcome: Result<&SyncStats, &Error>) {
            let _ = self.passed.send((self.started.elapsed(), outcome.is_ok()));
        }
    }

    /// The reconcile loop over in-memory maps, fed snapshots of desired services.
    struct Loop {
        maps: Arc<Mutex<FakeMaps>>,
        snapshots: watch::Sender<Option<Vec<DesiredService>>>,
        /// Every pass: when, since the loop started, and whether it succeeded.
        passes: mpsc::UnboundedReceiver<(Duration, bool)>,
        /// GC reports into the loop.
        referenced: ReferencedSender,
        shutdown: CancellationToken,
        task: JoinHandle<()>,
    }

    impl Loop {
        fn start(maps: FakeMaps) -> Self {
            let maps = Arc::new(Mutex::new(maps));
            let mut syncer = Syncer::new(maps.clone()).expect("restore ids");
            let referenced = syncer.referenced_sender();
            let (snapshots, receiver) = watch::channel(None);
            let (passed, passes) = mpsc::unbounded_channel();
            let shutdown = CancellationToken::new();
            let started = Instant::now();
            let task = tokio::spawn({
                let shutdown = shutdown.clone();
                async move {
                    reconcile(
                        &mut syncer,
                        Recorded {
                            feed: WatchFeed(receiver),
                            passed,
                            started,
                        },
                        ReconcileOptions::default(),
                        shutdown,
                    )
                    .await;
                }
            });
            Self {
                maps,
                snapshots,
                passes,
                referenced,
                shutdown,
                task,
            }
        }

        fn publish(&self, snapshot: Option<Vec<DesiredService>>) {
            self.snapshots.send_replace(snapshot);
        }

        /// The next pass, or `None` if there is none within an hour.
        async fn next_pass(&mut self) -> Option<(Duration, bool)> {
            tokio::time::timeout(Duration::from_secs(3600), self.passes.recv())
                .await
                .ok()
                .flatten()
        }

        async fn passes(&mut self, n: usize) -> Vec<(Duration, bool)> {
            let mut passes = Vec::new();
            for _ in 0..n {
                passes.push(self.next_pass().await.expect("a pass"));
            }
            passes
        }

        /// What the maps serve now; their invariant is checked on the way.
        fn served(&self) -> Vec<(String, Vec<(String, crate::model::BackendState)>)> {
            let maps = lock(&self.maps);
            plan::check_consistent(&maps.content).expect("no slot points nowhere");
            served(&maps.content)
        }

        fn writes(&self) -> usize {
            lock(&self.maps).writes
        }

        async fn stop(self) {
            self.shutdown.cancel();
            self.task.await.expect("the loop ends on shutdown");
        }
    }

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_failing_three_times_converges_after_200_400_and_800_ms() {
        let services = scenarios::all().remove(0);
        let mut sync = Loop::start(FakeMaps::failing([0, 1, 2]));
        sync.publish(Some(services.clone()));
        assert_eq!(
            sync.passes(4).await,
            [
                (ms(0), false),
                (ms(200), false),
                (ms(600), false),
                (ms(1400), true)
            ]
        );
        assert_eq!(sync.next_pass().await, None, "no pass after convergence");
        assert_eq!(sync.served(), served(&content_of(&services)));
        assert_eq!(
            sync.writes(),
            3 + writes_for(&services),
            "three failed attempts, then every write once"
        );
        sync.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_doubles_up_to_30_s_and_a_success_resets_it() {
        let services = scenarios::all().remove(0);
        let mut sync = Loop::start(FakeMaps::failing(0..11));
        sync.publish(Some(services));
        let times: Vec<Duration> = sync.passes(12).await.iter().map(|pass| pass.0).collect();
        let waits: Vec<u128> = times
            .windows(2)
            .map(|w| (w[1] - w[0]).as_millis())
            .collect();
        assert_eq!(
            waits,
            [
                200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000, 30000
            ]
        );
        let converged = *times.last().expect("passes");

        // The next failure starts over at 200 ms.
        let next = sync.writes();
        lock(&sync.maps).fail_writes.insert(next);
        sync.publish(Some(scenarios::all().remove(1)));
        let passes = sync.passes(2).await;
        assert_eq!(passes[0], (converged, false));
        assert_eq!(passes[1], (converged + ms(200), true));
        sync.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_programmed_until_the_source_has_synced() {
        let mut sync = Loop::start(FakeMaps::default());
        sync.publish(None);
        assert_eq!(sync.next_pass().await, None, "no pass without a snapshot");
        assert_eq!(sync.writes(), 0);

        let services = scenarios::all().remove(0);
        sync.publish(Some(services.clone()));
        assert_eq!(sync.next_pass().await, Some((ms(3600 * 1000), true)));
        assert_eq!(sync.served(), served(&content_of(&services)));
        sync.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_snapshot_during_backoff_is_programmed_at_once_and_the_old_retry_dropped() {
        let mut sync = Loop::start(FakeMaps::failing([0]));
        sync.publish(Some(scenarios::all().remove(0)));
        assert_eq!(sync.next_pass().await, Some((ms(0), false)));
        tokio::time::advance(ms(50)).await;
        let latest = scenarios::all().remove(2);
        sync.publish(Some(latest.clone()));
        assert_eq!(sync.next_pass().await, Some((ms(50), true)));
        assert_eq!(
            sync.next_pass().await,
            None,
            "no retry of the older snapshot"
        );
        assert_eq!(sync.served(), served(&content_of(&latest)));
        sync.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_latest_of_several_snapshots_is_programmed() {
        let mut sync = Loop::start(FakeMaps::default());
        for services in scenarios::all().into_iter().take(3) {
            sync.publish(Some(services));
        }
        assert_eq!(sync.next_pass().await, Some((ms(0), true)));
        assert_eq!(sync.next_pass().await, None);
        let latest = scenarios::all().remove(2);
        assert_eq!(sync.writes(), writes_for(&latest));
        assert_eq!(sync.served(), served(&content_of(&latest)));
        sync.stop().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_gc_report_to_the_running_loop_deletes_rev_nat_entries_no_flow_names() {
        let mut sync = Loop::start(FakeMaps::default());
        let scenarios = scenarios::all();
        sync.publish(Some(scenarios[2].clone()));
        assert_eq!(sync.next_pass().await, Some((ms(0), true)));
        sync.publish(Some(scenarios[3].clone()));
        assert_eq!(sync.next_pass().await, Some((ms(0), true)));
        let revnat = || lock(&sync.maps).content.revnat.len();
        assert_eq!(revnat(), 2, "10.96.0.10's entry outlives its frontend");

        tokio::time::advance(ms(1)).await;
        sync.referenced.report(Referenced {
            scan_started: tokio::time::Instant::now().into_std(),
            services: HashSet::new(),
            backends: HashSet::new(),
        });
        let deadline = Instant::now() + Duration::from_secs(1);
        while revnat() != 1 {
            assert!(Instant::now() < deadline, "the report was applied");
            tokio::time::sleep(ms(1)).await;
        }
        assert_eq!(sync.served(), served(&content_of(&scenarios[3])));
        assert_eq!(sync.next_pass().await, None, "a report is no sync pass");
        sync.stop().await;
    }

    /// A `WatchFeed` that reports each pass's success and repairs.
    struct Repairs {
        feed: WatchFeed,
        passed: mpsc::UnboundedSender<(bool, bool, usize)>,
    }

    impl Feed for Repairs {
        async fn changed(&mut self) -> bool {
            self.feed.changed().await
        }

        fn next(&mut self, full: bool) -> Option<Update> {
            self.feed.next(full)
        }

        fn record(&mut self, outcome: Result<&SyncStats, &Error>) {
            let pass = outcome.map_or((false, false, 0), |s| (true, s.full, s.repairs));
            let _ = self.passed.send(pass);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_periodic_full_sync_repairs_entries_changed_behind_the_agents_back() {
        let maps = Arc::new(Mutex::new(FakeMaps::default()));
        let mut syncer = Syncer::new(maps.clone()).expect("restore ids");
        let (snapshots, receiver) = watch::channel(None);
        let (passed, mut passes) = mpsc::unbounded_channel();
        let shutdown = CancellationToken::new();
        let options = ReconcileOptions {
            resync_interval: Some(Duration::from_secs(60)),
        };
        let task = tokio::spawn({
            let shutdown = shutdown.clone();
            let feed = Repairs {
                feed: WatchFeed(receiver),
                passed,
            };
            async move { reconcile(&mut syncer, feed, options, shutdown).await }
        });
        snapshots.send_replace(Some(scenarios::all().remove(2)));
        let started = Instant::now();
        assert_eq!(passes.recv().await, Some((true, true, 0)));
        let wanted = lock(&maps).content.clone();

        // Behind the agent's back: a backend deleted and a master entry's count corrupted.
        {
            let mut fake = lock(&maps);
            let backend = *fake.content.backends.keys().next().expect("a backend");
            fake.content.backends.remove(&backend);
            let master = fake
                .content
                .services
                .iter_mut()
                .find(|(key, _)| key.slot() == 0 && key.proto() != 0)
                .expect("a master entry");
            master.1.count = 7;
        }
        // Nothing changed in the source: only the periodic full sync notices, and repairs both.
        assert_eq!(passes.recv().await, Some((true, true, 2)));
        assert_eq!(Instant::now() - started, Duration::from_secs(60));
        assert_eq!(lock(&maps).content, wanted);
        assert_eq!(
            passes.recv().await,
            Some((true, true, 0)),
            "nothing left to repair"
        );
        shutdown.cancel();
        task.await.expect("loop ends");
    }

    #[test]
    fn a_resync_takes_maglev_tables_of_the_size_written_as_written_and_rewrites_missing_ones() {
        let maps = Arc::new(Mutex::new(FakeMaps::default()));
        let mut syncer = Syncer::new(maps.clone())
            .expect("restore ids")
            .with_selection(maglev::Settings {
                default: crate::model::LbAlgorithm::Maglev,
                table_size: 251,
                ..maglev::Settings::default()
            });
        let services = scenarios::all().remove(2);
        syncer.sync(&services).expect("full pass");
        let wanted = lock(&maps).content.clone();
        assert!(!wanted.maglev.is_empty());
        // What the real maps give back: a table's size alone.
        let read_back = |fake: &mut FakeMaps| {
            for spec in fake.content.maglev.values_mut() {
                *spec = datapath::maps::MaglevSpec::read_back(spec.chunks());
            }
        };
        read_back(&mut lock(&maps));
        let stats = syncer.resync(&services).expect("resync");
        assert_eq!((stats.repairs, stats.writes), (0, 0), "no table rewritten");

        // A table gone behind the agent's back is a repair.
        {
            let mut fake = lock(&maps);
            read_back(&mut fake);
            let id = *fake.content.maglev.keys().next().expect("a table");
            fake.content.maglev.remove(&id);
        }
        let stats = syncer.resync(&services).expect("resync");
        assert_eq!((stats.repairs, stats.writes), (1, 1));
        assert_eq!(lock(&maps).content.maglev.len(), wanted.maglev.len());
    }

    /// A feed whose source never syncs, counting how often it is asked.
    struct NeverSynced(Arc<std::sync::atomic::AtomicUsize>);

    impl Feed for NeverSynced {
        async fn changed(&mut self) -> bool {
            std::future::pending().await
        }

        fn next(&mut self, _full: bool) -> Option<Update> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            None
        }

        fn record(&mut self, _outcome: Result<&SyncStats, &Error>) {}
    }

    #[tokio::test(start_paused = true)]
    async fn the_resync_timer_before_the_source_syncs_asks_once_per_interval() {
        let maps = Arc::new(Mutex::new(FakeMaps::default()));
        let mut syncer = Syncer::new(maps).expect("restore ids");
        let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let shutdown = CancellationToken::new();
        let options = ReconcileOptions {
            resync_interval: Some(Duration::from_secs(1)),
        };
        let task = tokio::spawn({
            let (shutdown, feed) = (shutdown.clone(), NeverSynced(asked.clone()));
            async move { reconcile(&mut syncer, feed, options, shutdown).await }
        });
        tokio::time::sleep(Duration::from_millis(10_500)).await;
        assert_eq!(asked.load(std::sync::atomic::Ordering::Relaxed), 10);
        shutdown.cancel();
        task.await.expect("loop ends");
    }

    #[test]
    fn a_restarted_syncer_rewrites_nothing_that_is_right() {
        let services = scenarios::all().remove(2);
        let maps = Arc::new(Mutex::new(FakeMaps::default()));
        let first = Syncer::new(maps.clone())
            .expect("restore ids")
            .sync(&services)
            .expect("first pass");
        assert_eq!(first.writes, writes_for(&services));
        let restarted = Syncer::new(maps.clone())
            .expect("restore ids")
            .sync(&services)
            .expect("pass after the restart");
        assert_eq!(restarted.writes, 0);
        assert_eq!(lock(&maps).writes, first.writes);
    }
}
