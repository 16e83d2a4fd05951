//! Stable ids: a `ServiceId` per frontend and a `BackendId` per backend address, restored from
//! the maps at start so that a restarted agent rewrites nothing that is right.
//!
//! Ids are reused only after they are released; allocation takes the lowest free id, and ids
//! never exceed the widths the datapath holds (`ServiceId` is the u16 rev-NAT index; 0 is
//! invalid for both). The keys the ids are allocated for live here too, so that `desired` and
//! this allocator share them without importing each other.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

pub use crate::datapath::{BackendId, ServiceId};
use crate::datapath::{MapsContent, maps};

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

/// No id is left.
#[derive(Debug, thiserror::Error)]
#[error("no free {kind} id left ({in_use} in use)")]
pub struct Exhausted {
    /// service or backend.
    pub kind: &'static str,
    /// How many are in use.
    pub in_use: usize,
}

/// What the allocator needs of an id type.
trait Id: Copy + Ord {
    /// `service` or `backend`, for `Exhausted`.
    const KIND: &'static str;
    /// The lowest valid id.
    const FIRST: Self;
    /// The next id, if the width allows one.
    fn next(self) -> Option<Self>;
}

impl Id for ServiceId {
    const KIND: &'static str = "service";
    const FIRST: Self = Self(1);
    fn next(self) -> Option<Self> {
        self.0.checked_add(1).map(Self)
    }
}

impl Id for BackendId {
    const KIND: &'static str = "backend";
    const FIRST: Self = Self(1);
    fn next(self) -> Option<Self> {
        self.0.checked_add(1).map(Self)
    }
}

/// One kind of id: who holds which, and where the search for a free one starts.
#[derive(Clone, Debug)]
struct Table<K, I> {
    held: BTreeMap<K, I>,
    used: BTreeSet<I>,
    /// Every id below this is in use: allocation starts here, so a full sync stays linear.
    next: I,
}

impl<K: Ord, I: Id> Default for Table<K, I> {
    fn default() -> Self {
        Self {
            held: BTreeMap::new(),
            used: BTreeSet::new(),
            next: I::FIRST,
        }
    }
}

impl<K: Ord, I: Id> Table<K, I> {
    /// Records an id found in the maps.
    fn restore(&mut self, key: K, id: I) {
        self.held.insert(key, id);
        self.used.insert(id);
    }

    /// The id of `key`, allocating the lowest free one if it has none.
    fn get(&mut self, key: K) -> Result<I, Exhausted> {
        if let Some(id) = self.held.get(&key) {
            return Ok(*id);
        }
        let mut id = self.next;
        while self.used.contains(&id) {
            id = id.next().ok_or(Exhausted {
                kind: I::KIND,
                in_use: self.used.len(),
            })?;
        }
        self.held.insert(key, id);
        self.used.insert(id);
        // At the top of the range the search starts over from the top, finds it used and
        // reports exhaustion, unless a release reset `next`.
        self.next = id.next().unwrap_or(id);
        Ok(id)
    }

    /// Releases the ids of every key not in `live`.
    fn retain(&mut self, live: &BTreeSet<K>) {
        self.held.retain(|key, _| live.contains(key));
        self.used = self.held.values().copied().collect();
        self.next = I::FIRST;
    }
}

/// The id tables.
#[derive(Clone, Debug, Default)]
pub struct Ids {
    services: Table<FrontendKey, ServiceId>,
    backends: Table<BackendKey, BackendId>,
}

impl Ids {
    /// Restores the ids the maps already use.
    pub fn restore(content: &MapsContent) -> Self {
        let mut ids = Self::default();
        for (key, entry) in &content.services {
            let id = maps::service_id_of(entry);
            if key.slot == 0 && key.proto != 0 && id != ServiceId(0) {
                let (vip, port, proto) = maps::frontend_of(key);
                ids.services.restore(FrontendKey { vip, port, proto }, id);
            }
        }
        for (id, backend) in &content.backends {
            let (addr, port) = maps::backend_addr_of(backend);
            let key = BackendKey {
                addr,
                port,
                proto: backend.proto,
            };
            ids.backends.restore(key, *id);
        }
        ids
    }

    /// The id of a frontend, allocating the lowest free one if it has none.
    pub fn service(&mut self, key: FrontendKey) -> Result<ServiceId, Exhausted> {
        self.services.get(key)
    }

    /// The id of a backend, allocating the lowest free one if it has none.
    pub fn backend(&mut self, key: BackendKey) -> Result<BackendId, Exhausted> {
        self.backends.get(key)
    }

    /// Releases every id not in the given sets, so that they can be reused.
    pub fn retain(&mut self, services: &BTreeSet<FrontendKey>, backends: &BTreeSet<BackendKey>) {
        self.services.retain(services);
        self.backends.retain(backends);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frontend(last: u8) -> FrontendKey {
        FrontendKey {
            vip: Ipv4Addr::new(10, 96, 0, last),
            port: 80,
            proto: lb_common::proto::TCP,
        }
    }

    #[test]
    fn ids_are_stable_and_the_lowest_free_one_is_reused_after_release() {
        let mut ids = Ids::restore(&MapsContent::default());
        assert_eq!(ids.service(frontend(1)).ok(), Some(ServiceId(1)));
        assert_eq!(ids.service(frontend(2)).ok(), Some(ServiceId(2)));
        assert_eq!(ids.service(frontend(1)).ok(), Some(ServiceId(1)));
        ids.retain(&[frontend(2)].into_iter().collect(), &BTreeSet::new());
        assert_eq!(ids.service(frontend(3)).ok(), Some(ServiceId(1)));
        assert_eq!(ids.service(frontend(4)).ok(), Some(ServiceId(3)));
    }

    #[test]
    fn the_last_service_id_is_used_then_allocation_reports_exhaustion() {
        let mut table = Table::<u32, ServiceId>::default();
        for key in 1..=u32::from(u16::MAX) {
            table.get(key).expect("an id is left");
        }
        assert_eq!(
            table.held.get(&u32::from(u16::MAX)),
            Some(&ServiceId(u16::MAX))
        );
        let err = table.get(0).expect_err("every service id is in use");
        assert_eq!(err.kind, "service");
        assert_eq!(err.in_use, usize::from(u16::MAX));
    }
}
