//! Stable ids: a `ServiceId` per frontend and a `BackendId` per backend address, restored from
//! the maps at start so that a restarted agent rewrites nothing that is right.
//!
//! An id is *live* while its frontend or backend is programmed. When that goes, the id is
//! *retired*, not freed: conntrack entries may still name it (a reply to rev-NAT by service id,
//! a flow pinned to a backend id), and a reused id would send their packets to another
//! frontend's VIP or another backend. A retired id is freed only when the conntrack GC reports
//! that no entry names it (`release`), or after `Limits::quarantine` as a fallback, or, when
//! the id space is exhausted, the oldest retired id is taken over (logged). A frontend or
//! backend that comes back while its id is retired gets that id again (same VIP:port, same
//! address: what the conntrack entries expect).
//!
//! Allocation is monotonic with wrap, as Cilium's: a cursor moves up from the last id handed
//! out, skipping live and retired ids, and starts over at 1 after the last id (for service ids
//! the capacity of the rev-NAT maps, which keep an entry per live and retired id, so that they
//! never fill: `bpf-lb-map-max`; 0 is invalid for both). The keys the
//! ids are allocated for live here too, so that `desired` and this allocator share them
//! without importing each other. Time is the caller's (`now` arguments), so tests drive it.
use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    net::IpAddr,
    time::{Duration, Instant},
};

pub use crate::datapath::{BackendId, ServiceId};
use crate::datapath::{MapsContent, maps};

/// A frontend in host byte order, the key of service ids (one space over both families).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrontendKey {
    /// VIP, of either family.
    pub vip: IpAddr,
    /// Port.
    pub port: u16,
    /// IP protocol number.
    pub proto: u8,
}

/// A backend address in host byte order, the key of backend ids (one space over both
/// families).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    /// Address, of either family.
    pub addr: IpAddr,
    /// Port.
    pub port: u16,
    /// IP protocol number.
    pub proto: u8,
}

/// No id is left: every one is live.
#[derive(Debug, thiserror::Error)]
#[error("no free {kind} id left ({in_use} in use)")]
pub struct Exhausted {
    /// service or backend.
    pub kind: &'static str,
    /// How many are in use.
    pub in_use: usize,
}

/// The longest a retired id waits for the conntrack GC to say it is unreferenced: the
/// longest conntrack lifetime (an idle established TCP flow, 21600 s). A flow still sending
/// after that towards a frontend that is gone is no longer translated anyway.
pub const DEFAULT_QUARANTINE: Duration = Duration::from_secs(21_600);

/// The id space and the quarantine of retired ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The highest service id handed out (at most the rev-NAT maps' capacity).
    pub last_service: ServiceId,
    /// The highest backend id handed out.
    pub last_backend: BackendId,
    /// How long a retired id stays reserved at most, referenced or not.
    pub quarantine: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            last_service: ServiceId(u32::MAX),
            last_backend: BackendId(u32::MAX),
            quarantine: DEFAULT_QUARANTINE,
        }
    }
}

/// What the allocator needs of an id type.
trait Id: Copy + Ord + std::hash::Hash + std::fmt::Display {
    /// `service` or `backend`, for messages.
    const KIND: &'static str;
    /// The lowest valid id.
    const FIRST: Self;
    /// The id after this one, if there is one below or at `last`.
    fn next_up_to(self, last: Self) -> Option<Self>;
    /// How many ids `FIRST..=last` holds.
    fn count_up_to(last: Self) -> usize;
}

impl Id for ServiceId {
    const KIND: &'static str = "service";
    const FIRST: Self = Self(1);
    fn next_up_to(self, last: Self) -> Option<Self> {
        self.0.checked_add(1).map(Self).filter(|id| *id <= last)
    }
    fn count_up_to(last: Self) -> usize {
        usize::try_from(last.0).unwrap_or(usize::MAX)
    }
}

impl Id for BackendId {
    const KIND: &'static str = "backend";
    const FIRST: Self = Self(1);
    fn next_up_to(self, last: Self) -> Option<Self> {
        self.0.checked_add(1).map(Self).filter(|id| *id <= last)
    }
    fn count_up_to(last: Self) -> usize {
        usize::try_from(last.0).unwrap_or(usize::MAX)
    }
}

/// A retired id: the key it last served (unknown when found in the maps at start) and since
/// when. `since` is `None` until the pass that retired it has finished writing the maps: a
/// conntrack scan that started before then may have missed entries naming it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Retired<K> {
    key: Option<K>,
    since: Option<Instant>,
}

/// What happened to retired ids in one call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Released {
    /// Retired service ids freed.
    pub services: usize,
    /// Retired backend ids freed.
    pub backends: usize,
}

/// One kind of id: which key holds which id, which ids are retired, where allocation goes on.
#[derive(Clone, Debug)]
struct Table<K, I> {
    live: BTreeMap<K, I>,
    /// The ids of `live`, for `holds` (a set: the key would double what an id costs).
    live_ids: BTreeSet<I>,
    retired: BTreeMap<I, Retired<K>>,
    /// The retired ids by the key they last served, to give one back when its key returns.
    retired_keys: BTreeMap<K, I>,
    /// Where the search for a free id starts: just above the last one handed out.
    cursor: I,
    /// The highest valid id.
    last: I,
}

impl<K: Ord + Copy + std::fmt::Debug, I: Id> Table<K, I> {
    fn new(last: I) -> Self {
        Self {
            live: BTreeMap::new(),
            live_ids: BTreeSet::new(),
            retired: BTreeMap::new(),
            retired_keys: BTreeMap::new(),
            cursor: I::FIRST,
            last,
        }
    }

    fn holds(&self, id: I) -> bool {
        self.live_ids.contains(&id) || self.retired.contains_key(&id)
    }

    fn insert_live(&mut self, key: K, id: I) {
        self.live.insert(key, id);
        self.live_ids.insert(id);
    }

    /// Records an id found in the maps; allocation goes on above the highest one. A second
    /// id for the same key (left by an interrupted pass) is retired: entries may name it.
    fn restore_live(&mut self, key: K, id: I, now: Instant) {
        if self.live.contains_key(&key) {
            self.restore_retired(id, now);
        } else if id <= self.last && !self.holds(id) {
            self.insert_live(key, id);
            self.move_cursor_past(id);
        }
    }

    /// Records a retired id found in the maps, retired as of `now`.
    fn restore_retired(&mut self, id: I, now: Instant) {
        if id <= self.last && !self.holds(id) {
            let since = Some(now);
            self.retired.insert(id, Retired { key: None, since });
            self.move_cursor_past(id);
        }
    }

    fn move_cursor_past(&mut self, id: I) {
        if id >= self.cursor {
            self.cursor = id.next_up_to(self.last).unwrap_or(I::FIRST);
        }
    }

    /// The id of `key`: its live id, its retired id taken back, or a new one.
    fn get(&mut self, key: K) -> Result<I, Exhausted> {
        if let Some(id) = self.live.get(&key) {
            return Ok(*id);
        }
        if let Some(id) = self.retired_keys.get(&key).copied() {
            self.remove_retired(id);
            self.insert_live(key, id);
            return Ok(id);
        }
        let id = match self.free_id() {
            Some(id) => id,
            None => self.take_oldest_retired(key)?,
        };
        self.insert_live(key, id);
        self.cursor = id.next_up_to(self.last).unwrap_or(I::FIRST);
        Ok(id)
    }

    /// The first id at or after the cursor (wrapping) that is neither live nor retired.
    fn free_id(&self) -> Option<I> {
        let capacity = I::count_up_to(self.last);
        if self.live_ids.len() + self.retired.len() >= capacity {
            return None;
        }
        // Fewer ids are held than exist, so a free one is at most `held` steps away.
        let mut id = self.cursor;
        loop {
            if !self.holds(id) {
                return Some(id);
            }
            id = id.next_up_to(self.last).unwrap_or(I::FIRST);
        }
    }

    /// Every id is live or retired: the retired one retired longest ago is taken over.
    fn take_oldest_retired(&mut self, key: K) -> Result<I, Exhausted> {
        // Settled ones first, by age; ones of the current pass (since None) last.
        let oldest = self
            .retired
            .iter()
            .min_by_key(|(id, retired)| (retired.since.is_none(), retired.since, **id))
            .map(|(id, _)| *id);
        let Some(id) = oldest else {
            return Err(Exhausted {
                kind: I::KIND,
                in_use: self.live.len(),
            });
        };
        let retired = self.remove_retired(id);
        tracing::warn!(
            kind = I::KIND,
            id = %id,
            new = ?key,
            old = ?retired.and_then(|r| r.key),
            "id space exhausted; reusing the oldest retired id, which conntrack entries may still name"
        );
        Ok(id)
    }

    /// Rebuilds the live tables with full nodes (see `Ids::compact`).
    fn compact(&mut self) {
        self.live = std::mem::take(&mut self.live).into_iter().collect();
        self.live_ids = std::mem::take(&mut self.live_ids).into_iter().collect();
    }

    /// Retires the id of `key`, if it is live.
    fn retire(&mut self, key: &K) {
        if let Some(id) = self.live.remove(key) {
            self.live_ids.remove(&id);
            self.retired_keys.insert(*key, id);
            self.retired.insert(
                id,
                Retired {
                    key: Some(*key),
                    since: None,
                },
            );
        }
    }

    /// Retires the id of every key not in `live`.
    fn retire_absent(&mut self, live: &std::collections::BTreeSet<K>) {
        let gone: Vec<K> = self
            .live
            .keys()
            .filter(|key| !live.contains(*key))
            .copied()
            .collect();
        for key in gone {
            self.retire(&key);
        }
    }

    /// Forgets retired `id` (freed, taken back or taken over).
    fn remove_retired(&mut self, id: I) -> Option<Retired<K>> {
        let retired = self.retired.remove(&id)?;
        if let Some(key) = retired.key {
            self.retired_keys.remove(&key);
        }
        Some(retired)
    }

    /// Frees every retired id `free` says yes to; returns how many.
    fn free_where(&mut self, free: impl Fn(I, &Retired<K>) -> bool) -> usize {
        let freed: Vec<I> = self
            .retired
            .iter()
            .filter(|(id, retired)| free(**id, retired))
            .map(|(id, _)| *id)
            .collect();
        for id in &freed {
            self.remove_retired(*id);
        }
        freed.len()
    }

    /// Stamps the ids retired by the pass that just wrote the maps.
    fn settle(&mut self, now: Instant) {
        for retired in self.retired.values_mut() {
            retired.since.get_or_insert(now);
        }
    }

    /// Frees the retired ids that were retired before `scan_started` and are not in
    /// `referenced`; reserves referenced ids this table does not know (a restart lost them).
    fn release(&mut self, scan_started: Instant, referenced: &HashSet<I>) -> usize {
        let released = self.free_where(|id, retired| {
            !referenced.contains(&id) && retired.since.is_some_and(|since| since <= scan_started)
        });
        let unknown: Vec<I> = referenced
            .iter()
            .copied()
            .filter(|id| *id >= I::FIRST && *id <= self.last && !self.holds(*id))
            .collect();
        for id in unknown {
            let since = Some(scan_started);
            self.retired.insert(id, Retired { key: None, since });
        }
        released
    }

    /// Frees the retired ids retired `quarantine` or longer before `now`.
    fn expire(&mut self, now: Instant, quarantine: Duration) -> usize {
        self.free_where(|_, retired| {
            retired
                .since
                .is_some_and(|since| now.saturating_duration_since(since) >= quarantine)
        })
    }
}

/// The id tables.
#[derive(Clone, Debug)]
pub struct Ids {
    services: Table<FrontendKey, ServiceId>,
    backends: Table<BackendKey, BackendId>,
    quarantine: Duration,
}

impl Default for Ids {
    fn default() -> Self {
        Self::with_limits(Limits::default())
    }
}

impl Ids {
    /// Empty tables over the id space `limits` gives.
    pub fn with_limits(limits: Limits) -> Self {
        Self {
            services: Table::new(limits.last_service),
            backends: Table::new(limits.last_backend),
            quarantine: limits.quarantine,
        }
    }

    /// Restores the ids the maps already use. A rev-NAT entry no master entry names belongs
    /// to a retired service id: it stays retired (and its entry kept) as of `now`.
    pub fn restore(content: &MapsContent) -> Self {
        Self::restore_with(content, Limits::default(), Instant::now())
    }

    /// `restore` with the given limits and time.
    pub fn restore_with(content: &MapsContent, limits: Limits, now: Instant) -> Self {
        let mut ids = Self::with_limits(limits);
        for (key, entry) in &content.services {
            let id = maps::service_id_of(entry);
            if key.slot() == 0 && key.proto() != 0 && id != ServiceId(0) {
                let (vip, port, proto) = maps::frontend_of(key);
                ids.services
                    .restore_live(FrontendKey { vip, port, proto }, id, now);
            }
        }
        for id in content.revnat.keys() {
            if *id != ServiceId(0) {
                ids.services.restore_retired(*id, now);
            }
        }
        for (id, backend) in &content.backends {
            let (addr, port) = maps::backend_addr_of(backend);
            let key = BackendKey {
                addr,
                port,
                proto: backend.proto(),
            };
            if *id != BackendId(0) {
                ids.backends.restore_live(key, *id, now);
            }
        }
        ids
    }

    /// The id of a frontend: its own, taken back from retirement, or the next free one.
    pub fn service(&mut self, key: FrontendKey) -> Result<ServiceId, Exhausted> {
        self.services.get(key)
    }

    /// The id of a backend: its own, taken back from retirement, or the next free one.
    pub fn backend(&mut self, key: BackendKey) -> Result<BackendId, Exhausted> {
        self.backends.get(key)
    }

    /// Retires the ids of every frontend and backend not in the given sets. They stay
    /// reserved until `settle` stamps them and then `release` or `expire` frees them.
    pub fn retire_absent(
        &mut self,
        services: &std::collections::BTreeSet<FrontendKey>,
        backends: &std::collections::BTreeSet<BackendKey>,
    ) {
        self.services.retire_absent(services);
        self.backends.retire_absent(backends);
    }

    /// Rebuilds the live tables with full nodes: ids are handed out in ascending order, and
    /// a BTreeMap that grows at its end splits its nodes in half and leaves them so, while
    /// one built from sorted entries fills them (about 45 % less memory).
    pub fn compact(&mut self) {
        self.services.compact();
        self.backends.compact();
    }

    /// Retires the id of one frontend, as `retire_absent` would once it is gone.
    pub fn retire_service(&mut self, key: &FrontendKey) {
        self.services.retire(key);
    }

    /// Retires the id of one backend, as `retire_absent` would once no frontend names it.
    pub fn retire_backend(&mut self, key: &BackendKey) {
        self.backends.retire(key);
    }

    /// Marks the ids retired so far as retired at `now`: call once the pass that retired them
    /// has written the maps (no new conntrack entry can name them after that).
    pub fn settle(&mut self, now: Instant) {
        self.services.settle(now);
        self.backends.settle(now);
    }

    /// Frees retired ids that no conntrack entry names, per a scan that started at
    /// `scan_started`; an id retired after the scan started is kept (the scan may have missed
    /// an entry naming it). Ids named by the scan that these tables do not hold are reserved
    /// as retired, so that they are not handed out while named.
    pub fn release(
        &mut self,
        scan_started: Instant,
        services: &HashSet<ServiceId>,
        backends: &HashSet<BackendId>,
    ) -> Released {
        Released {
            services: self.services.release(scan_started, services),
            backends: self.backends.release(scan_started, backends),
        }
    }

    /// Frees retired ids whose quarantine is over, referenced or not.
    pub fn expire(&mut self, now: Instant) -> Released {
        Released {
            services: self.services.expire(now, self.quarantine),
            backends: self.backends.expire(now, self.quarantine),
        }
    }

    /// Whether `id` is a retired service id (its rev-NAT entry is kept).
    pub fn is_retired_service(&self, id: ServiceId) -> bool {
        self.services.retired.contains_key(&id)
    }

    /// Whether `id` is held, live or retired.
    pub fn holds_service(&self, id: ServiceId) -> bool {
        self.services.holds(id)
    }

    /// Whether backend `id` is held, live or retired.
    pub fn holds_backend(&self, id: BackendId) -> bool {
        self.backends.holds(id)
    }

    /// The retired service ids.
    pub fn retired_services(&self) -> impl Iterator<Item = ServiceId> + '_ {
        self.services.retired.keys().copied()
    }

    /// The retired backend ids.
    pub fn retired_backends(&self) -> impl Iterator<Item = BackendId> + '_ {
        self.backends.retired.keys().copied()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use std::net::Ipv4Addr;

    use super::*;

    fn frontend(last: u8) -> FrontendKey {
        FrontendKey {
            vip: Ipv4Addr::new(10, 96, 0, last).into(),
            port: 80,
            proto: lb_common::proto::TCP,
        }
    }

    fn live(frontends: &[u8]) -> BTreeSet<FrontendKey> {
        frontends.iter().map(|last| frontend(*last)).collect()
    }

    fn small(last_service: u32) -> Ids {
        Ids::with_limits(Limits {
            last_service: ServiceId(last_service),
            ..Limits::default()
        })
    }

    #[test]
    fn ids_are_stable_and_a_released_id_is_not_reused_before_the_cursor_wraps() {
        let t0 = Instant::now();
        let mut ids = Ids::default();
        assert_eq!(ids.service(frontend(1)).ok(), Some(ServiceId(1)));
        assert_eq!(ids.service(frontend(2)).ok(), Some(ServiceId(2)));
        assert_eq!(ids.service(frontend(1)).ok(), Some(ServiceId(1)));
        ids.retire_absent(&live(&[2]), &BTreeSet::new());
        // Retired, not free: a new frontend in the same or the next pass gets a new id.
        assert_eq!(ids.service(frontend(3)).ok(), Some(ServiceId(3)));
        ids.settle(t0);
        ids.release(
            t0 + Duration::from_secs(1),
            &HashSet::new(),
            &HashSet::new(),
        );
        assert!(!ids.holds_service(ServiceId(1)), "released");
        // Released, still not reused: allocation goes on above the last id handed out.
        assert_eq!(ids.service(frontend(4)).ok(), Some(ServiceId(4)));
    }

    #[test]
    fn a_frontend_that_comes_back_gets_its_retired_id_again() {
        let mut ids = Ids::default();
        ids.service(frontend(1)).expect("id");
        ids.retire_absent(&BTreeSet::new(), &BTreeSet::new());
        ids.service(frontend(2)).expect("id");
        assert_eq!(ids.service(frontend(1)).ok(), Some(ServiceId(1)));
        assert!(!ids.is_retired_service(ServiceId(1)));
    }

    #[test]
    fn allocation_wraps_to_the_lowest_free_id_skipping_live_and_retired_ones() {
        let t0 = Instant::now();
        let mut ids = small(4);
        for last in 1..=4 {
            ids.service(frontend(last)).expect("id");
        }
        // 1 retired and referenced, 2 retired and released, 3 and 4 live.
        ids.retire_absent(&live(&[3, 4]), &BTreeSet::new());
        ids.settle(t0);
        let referenced = HashSet::from([ServiceId(1)]);
        ids.release(t0 + Duration::from_secs(1), &referenced, &HashSet::new());
        assert_eq!(ids.service(frontend(5)).ok(), Some(ServiceId(2)));
    }

    #[test]
    fn an_exhausted_id_space_takes_over_the_oldest_retired_id_and_then_fails() {
        let t0 = Instant::now();
        let mut ids = small(3);
        for last in 1..=3 {
            ids.service(frontend(last)).expect("id");
        }
        ids.retire_absent(&live(&[1, 3]), &BTreeSet::new());
        ids.settle(t0);
        ids.retire_absent(&live(&[3]), &BTreeSet::new());
        ids.settle(t0 + Duration::from_secs(1));
        // Both referenced: 2 (retired first) is taken over first, then 1.
        assert_eq!(ids.service(frontend(4)).ok(), Some(ServiceId(2)));
        assert_eq!(ids.service(frontend(5)).ok(), Some(ServiceId(1)));
        let err = ids.service(frontend(6)).expect_err("every id is live");
        assert_eq!((err.kind, err.in_use), ("service", 3));
    }

    #[test]
    fn the_last_service_id_is_used_then_allocation_reports_exhaustion() {
        // Beyond the 16 bits service ids once had: 100k Services take ids past 65535.
        const LAST: u32 = 100_000;
        let mut table = Table::<u32, ServiceId>::new(ServiceId(LAST));
        for key in 1..=LAST {
            assert_eq!(
                table.get(key).ok(),
                Some(ServiceId(key)),
                "ids are handed out in order"
            );
        }
        assert_eq!(table.live.get(&65_536), Some(&ServiceId(65_536)));
        let err = table.get(0).expect_err("every service id is in use");
        assert_eq!(err.kind, "service");
        assert_eq!(err.in_use, LAST as usize);
    }

    #[test]
    fn service_ids_above_65535_wrap_to_free_low_ids_and_survive_a_restore() {
        let t0 = Instant::now();
        const LAST: u32 = 70_000;
        let mut table = Table::<u32, ServiceId>::new(ServiceId(LAST));
        for key in 1..=LAST {
            table.get(key).expect("an id is left");
        }
        // Free two low ids: the cursor wraps past the highest id and finds them.
        for key in [5, 70] {
            table.retire(&key);
        }
        table.settle(t0);
        table.release(t0 + Duration::from_secs(1), &HashSet::new());
        assert_eq!(table.get(LAST + 1).ok(), Some(ServiceId(5)));
        assert_eq!(table.get(LAST + 2).ok(), Some(ServiceId(70)));

        // A restart finds an id above 65535 in the maps and keeps it for its frontend.
        let high = FrontendKey {
            vip: Ipv4Addr::new(10, 97, 1, 2).into(),
            port: 443,
            proto: lb_common::proto::TCP,
        };
        let content = MapsContent {
            services: [(
                maps::service_key(high.vip, high.port, high.proto, 0),
                maps::master_entry(ServiceId(66_000), 1, 0, 0, 0, None),
            )]
            .into(),
            ..MapsContent::default()
        };
        let mut ids = Ids::restore_with(
            &content,
            Limits {
                last_service: ServiceId(LAST),
                ..Limits::default()
            },
            t0,
        );
        assert_eq!(ids.service(high).ok(), Some(ServiceId(66_000)));
        assert_eq!(ids.service(frontend(1)).ok(), Some(ServiceId(66_001)));
    }

    #[test]
    fn a_retired_id_is_kept_while_referenced_and_freed_after_the_quarantine() {
        let t0 = Instant::now();
        let mut ids = small(8);
        ids.service(frontend(1)).expect("id");
        ids.retire_absent(&BTreeSet::new(), &BTreeSet::new());
        ids.settle(t0);
        let referenced = HashSet::from([ServiceId(1)]);
        let later = t0 + Duration::from_secs(60);
        assert_eq!(
            ids.release(later, &referenced, &HashSet::new()),
            Released::default()
        );
        assert_eq!(ids.expire(t0 + DEFAULT_QUARANTINE / 2), Released::default());
        assert!(ids.is_retired_service(ServiceId(1)));
        assert_eq!(ids.expire(t0 + DEFAULT_QUARANTINE).services, 1);
        assert!(!ids.holds_service(ServiceId(1)));
    }

    #[test]
    fn an_id_retired_after_the_scan_started_is_not_released_by_it() {
        let t0 = Instant::now();
        let mut ids = Ids::default();
        ids.service(frontend(1)).expect("id");
        ids.retire_absent(&BTreeSet::new(), &BTreeSet::new());
        // Not yet settled: the pass is still writing; then settled after the scan began.
        assert_eq!(
            ids.release(t0, &HashSet::new(), &HashSet::new()),
            Released::default()
        );
        ids.settle(t0 + Duration::from_secs(1));
        assert_eq!(
            ids.release(t0, &HashSet::new(), &HashSet::new()),
            Released::default()
        );
        assert!(ids.is_retired_service(ServiceId(1)));
        let released = ids.release(
            t0 + Duration::from_secs(2),
            &HashSet::new(),
            &HashSet::new(),
        );
        assert_eq!(released.services, 1);
    }

    #[test]
    fn a_second_id_for_one_backend_found_in_the_maps_is_retired_not_forgotten() {
        let mut content = MapsContent::default();
        let addr = IpAddr::from([10, 244, 1, 5]);
        let value = maps::backend_value(addr, 8080, lb_common::proto::TCP, 0, 0);
        content.backends.insert(BackendId(1), value);
        content.backends.insert(BackendId(2), value);
        let mut ids = Ids::restore(&content);
        let key = BackendKey {
            addr,
            port: 8080,
            proto: lb_common::proto::TCP,
        };
        assert_eq!(ids.backend(key).ok(), Some(BackendId(1)));
        assert_eq!(ids.retired_backends().collect::<Vec<_>>(), [BackendId(2)]);
    }

    #[test]
    fn ids_the_scan_names_that_the_tables_do_not_hold_are_reserved() {
        let t0 = Instant::now();
        let mut ids = Ids::default();
        let backends = HashSet::from([BackendId(1), BackendId(2)]);
        ids.release(t0, &HashSet::new(), &backends);
        let key = BackendKey {
            addr: Ipv4Addr::new(10, 244, 1, 5).into(),
            port: 8080,
            proto: lb_common::proto::TCP,
        };
        assert_eq!(ids.backend(key).ok(), Some(BackendId(3)));
        assert!(ids.holds_backend(BackendId(1)) && ids.holds_backend(BackendId(2)));
    }
}
