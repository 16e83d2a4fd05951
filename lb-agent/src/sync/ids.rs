//! Stable ids: a service id per frontend and a backend id per backend address, restored from
//! the maps at start so that a restarted agent rewrites nothing that is right.
//!
//! Ids are reused only after they are released; allocation takes the lowest free id, and ids
//! never exceed the limits the datapath can hold (service ids are the u16 rev-NAT index;
//! 0 is invalid for both).
use std::collections::{BTreeMap, BTreeSet};

use super::plan::{BackendKey, FrontendKey};
use crate::datapath::{MapsContent, maps};

/// The id tables.
#[derive(Clone, Debug, Default)]
pub struct Ids {
    services: BTreeMap<FrontendKey, u16>,
    backends: BTreeMap<BackendKey, u32>,
    used_services: BTreeSet<u16>,
    used_backends: BTreeSet<u32>,
    /// Every id below these is in use: allocation starts here, so a full sync stays linear.
    next_service: u16,
    next_backend: u32,
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

impl Ids {
    /// Restores the ids the maps already use.
    pub fn restore(content: &MapsContent) -> Self {
        let mut ids = Self {
            next_service: 1,
            next_backend: 1,
            ..Self::default()
        };
        for (key, entry) in &content.services {
            if key.slot == 0 && key.proto != 0 && entry.rev_nat != 0 {
                let (vip, port, proto) = maps::frontend_of(key);
                ids.services
                    .insert(FrontendKey { vip, port, proto }, entry.rev_nat);
                ids.used_services.insert(entry.rev_nat);
            }
        }
        for (id, backend) in &content.backends {
            let (addr, port) = maps::backend_addr_of(backend);
            ids.backends.insert(
                BackendKey {
                    addr,
                    port,
                    proto: backend.proto,
                },
                *id,
            );
            ids.used_backends.insert(*id);
        }
        ids
    }

    /// The id of a frontend, allocating the lowest free one if it has none.
    pub fn service(&mut self, key: FrontendKey) -> Result<u16, Exhausted> {
        if let Some(id) = self.services.get(&key) {
            return Ok(*id);
        }
        let mut id = self.next_service.max(1);
        while self.used_services.contains(&id) {
            id = id.checked_add(1).ok_or(Exhausted {
                kind: "service",
                in_use: self.used_services.len(),
            })?;
        }
        self.services.insert(key, id);
        self.used_services.insert(id);
        self.next_service = id.saturating_add(1);
        Ok(id)
    }

    /// The id of a backend, allocating the lowest free one if it has none.
    pub fn backend(&mut self, key: BackendKey) -> Result<u32, Exhausted> {
        if let Some(id) = self.backends.get(&key) {
            return Ok(*id);
        }
        let mut id = self.next_backend.max(1);
        while self.used_backends.contains(&id) {
            id = id.checked_add(1).ok_or(Exhausted {
                kind: "backend",
                in_use: self.used_backends.len(),
            })?;
        }
        self.backends.insert(key, id);
        self.used_backends.insert(id);
        self.next_backend = id.saturating_add(1);
        Ok(id)
    }

    /// Releases every id not in the given sets, so that they can be reused.
    pub fn retain(&mut self, services: &BTreeSet<FrontendKey>, backends: &BTreeSet<BackendKey>) {
        self.services.retain(|key, _| services.contains(key));
        self.backends.retain(|key, _| backends.contains(key));
        self.used_services = self.services.values().copied().collect();
        self.used_backends = self.backends.values().copied().collect();
        self.next_service = 1;
        self.next_backend = 1;
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

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
        assert_eq!(ids.service(frontend(1)).ok(), Some(1));
        assert_eq!(ids.service(frontend(2)).ok(), Some(2));
        assert_eq!(ids.service(frontend(1)).ok(), Some(1));
        ids.retain(&[frontend(2)].into_iter().collect(), &BTreeSet::new());
        assert_eq!(ids.service(frontend(3)).ok(), Some(1));
        assert_eq!(ids.service(frontend(4)).ok(), Some(3));
    }
}
