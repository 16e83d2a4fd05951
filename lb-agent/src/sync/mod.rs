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
mod id_lifetime;
pub mod ids;
pub mod maglev;
pub mod plan;
#[cfg(test)]
mod scenarios;

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::{
    datapath::{self, BackendId, LbMaps, MapsContent, ServiceId},
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
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Frontends programmed.
    pub services: usize,
    /// Backends programmed.
    pub backends: usize,
    /// Map writes made.
    pub writes: usize,
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

/// Keeps the maps in step with the desired services.
pub struct Syncer<M: LbMaps> {
    maps: Arc<Mutex<M>>,
    ids: ids::Ids,
    /// What the maps hold, when known without reading them.
    written: Option<MapsContent>,
    /// GC reports for `reconcile`, once `referenced_sender` made the channel.
    reports: Option<mpsc::UnboundedReceiver<Referenced>>,
    /// Backend selection: random or Maglev, and Maglev's table size and seed.
    selection: maglev::Settings,
}

impl<M: LbMaps> Syncer<M> {
    /// Restores ids from the maps, so that a restarted agent rewrites nothing that is right.
    pub fn new(maps: Arc<Mutex<M>>) -> Result<Self, Error> {
        Self::with_limits(maps, ids::Limits::default())
    }

    /// `new` over the id space and quarantine `limits` give.
    pub fn with_limits(maps: Arc<Mutex<M>>, limits: ids::Limits) -> Result<Self, Error> {
        let content = lock(&maps).read().map_err(Error::Read)?;
        Ok(Self {
            ids: ids::Ids::restore_with(&content, limits, now()),
            written: Some(content),
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

    /// One pass: program exactly `services`. Retired service ids keep their rev-NAT entries;
    /// retired ids past their quarantine are freed first.
    pub fn sync(&mut self, services: &[DesiredService]) -> Result<SyncStats, Error> {
        let started = Instant::now();
        let expired = self.ids.expire(now());
        log_released("quarantine over", expired);
        let mut maps = lock(&self.maps);
        let current = match self.written.take() {
            Some(content) => content,
            None => maps.read().map_err(Error::Read)?,
        };
        let mut desired = desired::desired_content_with(services, &mut self.ids, &self.selection)?;
        desired::keep_retired_revnat(&mut desired, &current, &self.ids);
        // Deletions first: near capacity, what is gone makes room for what comes.
        let shrunk = plan::without_stale(&current, &desired);
        let mut ops = plan::plan(&current, &shrunk);
        ops.extend(plan::plan(&shrunk, &desired));
        tracing::debug!(writes = ops.len(), "sync plan");
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
        // From here on no packet can read a master entry naming an id this pass retired.
        self.ids.settle(now());
        match applied {
            Ok(writes) => {
                let mut stats = SyncStats {
                    services: desired
                        .services
                        .keys()
                        .filter(|k| k.slot == 0 && k.proto != 0)
                        .count(),
                    backends: desired.backends.len(),
                    writes,
                    duration: started.elapsed(),
                    not_programmed: Vec::new(),
                    full_map: None,
                    map_entries: map_entries(&desired),
                };
                match partial {
                    None => self.written = Some(desired),
                    Some((unfit, effective, full)) => {
                        stats.not_programmed = labels(&unfit, services);
                        stats.full_map = Some(full);
                        stats.services = effective
                            .services
                            .keys()
                            .filter(|k| k.slot == 0 && k.proto != 0)
                            .count();
                        stats.backends = effective.backends.len();
                        stats.map_entries = map_entries(&effective);
                        self.written = Some(effective);
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
        let current = match self.written.take() {
            Some(content) => content,
            None => maps.read().map_err(Error::Read)?,
        };
        let mut desired = current.clone();
        desired.revnat.retain(|id, _| self.ids.holds_service(*id));
        let ops = plan::plan(&current, &desired);
        match apply::apply(&mut *maps, &ops) {
            Ok(_) => {
                self.written = Some(desired);
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
            key.slot == 0 && key.proto != 0 && plan::frontend_of(key) == *frontend
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
            if key.slot != 0 {
                let id = datapath::maps::backend_id_of(entry);
                if let Some(backend) = before.backends.get(&id) {
                    effective.backends.entry(id).or_insert(*backend);
                }
            } else if key.proto != 0 {
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
        .filter(|(key, _)| key.slot != 0)
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
            let (addr, port) = (
                std::net::Ipv4Addr::from(u32::from_be(*vip)),
                u16::from_be(*port),
            );
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
                None => format!("{addr}:{port} (proto {proto})"),
            }
        })
        .collect()
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

/// The reconcile loop: one pass per new snapshot (the latest one, if several arrived), and after
/// a failed pass a retry with backoff, until `shutdown`. A new snapshot does not wait for a
/// pending retry.
///
/// A snapshot is `None` until its source has synced, and nothing is programmed from it: a
/// restarted agent never scales services down to a partial view. `desired` turns a snapshot
/// into services; `record` hears every pass's outcome.
pub async fn reconcile<M: LbMaps, S: Clone>(
    syncer: &mut Syncer<M>,
    mut snapshots: watch::Receiver<Option<S>>,
    desired: impl Fn(&S) -> Vec<DesiredService>,
    mut record: impl FnMut(Result<SyncStats, &Error>),
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::default();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = snapshots.changed() => {
                if changed.is_err() {
                    // The source ended: nothing new will come (its owner reports why).
                    shutdown.cancelled().await;
                    return;
                }
            }
            () = backoff.due() => {}
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
        // Cloned out so that the source is not blocked while the pass runs.
        let Some(snapshot) = snapshots.borrow_and_update().clone() else {
            continue;
        };
        let services = desired(&snapshot);
        let span = tracing::info_span!("sync", services = services.len());
        let _enter = span.enter();
        match syncer.sync(&services) {
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
                record(Ok(stats));
            }
            Ok(stats) => {
                backoff.succeeded();
                if stats.writes > 0 {
                    tracing::info!(
                        services = stats.services,
                        backends = stats.backends,
                        writes = stats.writes,
                        micros = stats.duration.as_micros() as u64,
                        "maps synced"
                    );
                }
                record(Ok(stats));
            }
            Err(err) => {
                let delay = backoff.failed();
                tracing::warn!(
                    error = %crate::telemetry::error_chain(&err),
                    retry_in_ms = delay.as_millis() as u64,
                    "sync failed; retrying"
                );
                record(Err(&err));
            }
        }
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
                        receiver,
                        Vec::clone,
                        |outcome| {
                            let _ = passed.send((started.elapsed(), outcome.is_ok()));
                        },
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
