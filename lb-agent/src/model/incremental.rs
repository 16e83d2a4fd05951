//! The model kept per Service ([`Incremental`]), so that a change to one Service's objects
//! recomputes that Service alone, with the same result as [`desired`] over everything.
//!
//! Each Service's frontends and health check are [`desired`] of its own objects; across
//! Services the rules `desired` applies over the whole snapshot are applied here: a frontend
//! (or a `healthCheckNodePort`) two Services claim goes to the first by namespace/name, and
//! the other takes it over when the first lets go.

use std::collections::BTreeMap;

use tracing::warn;

use super::desired::{Desired, DesiredService, HealthCheck, ThisNode, desired};
use super::frontend::Frontend;
use crate::k8s::Snapshot;

/// A Service by namespace and name.
type Name = (String, String);

/// What changed in the model's output after an update.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelChanges {
    /// Frontends added or changed, with what to program now.
    pub upserts: Vec<DesiredService>,
    /// Frontends no Service serves any more.
    pub removals: Vec<Frontend>,
    /// True when the health checks changed.
    pub health_checks: bool,
}

/// The model's output, kept per Service.
#[derive(Debug, Default)]
pub struct Incremental {
    /// Each Service's own output, as if it were alone.
    by_service: BTreeMap<Name, Desired>,
    /// Which Services claim each frontend; the first one's wins.
    frontends: BTreeMap<Frontend, Claims>,
    /// Which Services claim each health-check port; the first one's wins.
    health_checks: BTreeMap<u16, Claims>,
}

impl Incremental {
    /// Recomputes each of `services` from its objects now (an empty snapshot for a Service
    /// whose objects are all gone) and returns what changed in the combined output.
    ///
    /// `services` may decode each Service's objects as it is reached (owned snapshots): only
    /// one Service's are alive at a time then.
    pub fn update<S: std::borrow::Borrow<Snapshot>>(
        &mut self,
        services: impl IntoIterator<Item = (Name, S)>,
        node: &ThisNode,
    ) -> ModelChanges {
        let mut touched: BTreeMap<Frontend, Option<DesiredService>> = BTreeMap::new();
        let mut ports: BTreeMap<u16, Option<HealthCheck>> = BTreeMap::new();
        let mut recomputed = Vec::new();
        for (name, objects) in services {
            let new = desired(objects.borrow(), node);
            if let Some(old) = self.by_service.get(&name) {
                if *old == new {
                    continue;
                }
                for service in &old.services {
                    touched
                        .entry(service.frontend)
                        .or_insert_with(|| self.served(&service.frontend).cloned());
                }
                for check in &old.health_checks {
                    ports
                        .entry(check.port)
                        .or_insert_with(|| self.health_check(check.port).cloned());
                }
            }
            for service in &new.services {
                touched
                    .entry(service.frontend)
                    .or_insert_with(|| self.served(&service.frontend).cloned());
            }
            for check in &new.health_checks {
                ports
                    .entry(check.port)
                    .or_insert_with(|| self.health_check(check.port).cloned());
            }
            recomputed.push((name, new));
        }
        for (name, new) in recomputed {
            if let Some(old) = self.by_service.remove(&name) {
                for service in &old.services {
                    release(&mut self.frontends, &service.frontend, &name);
                }
                for check in &old.health_checks {
                    release(&mut self.health_checks, &check.port, &name);
                }
            }
            for service in &new.services {
                claim(&mut self.frontends, service.frontend, &name, "frontend");
            }
            for check in &new.health_checks {
                claim(
                    &mut self.health_checks,
                    check.port,
                    &name,
                    "healthCheckNodePort",
                );
            }
            if !new.services.is_empty() || !new.health_checks.is_empty() {
                self.by_service.insert(name, new);
            }
        }

        let mut changes = ModelChanges::default();
        for (frontend, before) in touched {
            match (before, self.served(&frontend)) {
                (before, Some(now)) if before.as_ref() != Some(now) => {
                    changes.upserts.push(now.clone());
                }
                (Some(_), None) => changes.removals.push(frontend),
                _ => {}
            }
        }
        changes.health_checks = ports
            .into_iter()
            .any(|(port, before)| before.as_ref() != self.health_check(port));
        changes
    }

    /// What is programmed for `frontend`: the first claiming Service's.
    fn served(&self, frontend: &Frontend) -> Option<&DesiredService> {
        let owner = self.frontends.get(frontend)?.first()?;
        let services = &self.by_service.get(owner)?.services;
        // Sorted by frontend (`desired`).
        let at = services
            .binary_search_by(|s| s.frontend.cmp(frontend))
            .ok()?;
        services.get(at)
    }

    fn health_check(&self, port: u16) -> Option<&HealthCheck> {
        let owner = self.health_checks.get(&port)?.first()?;
        self.by_service
            .get(owner)?
            .health_checks
            .iter()
            .find(|c| c.port == port)
    }

    /// Everything to program, sorted by frontend (what [`desired`] gives for all objects).
    pub fn services(&self) -> Vec<DesiredService> {
        self.frontends
            .keys()
            .filter_map(|frontend| self.served(frontend).cloned())
            .collect()
    }

    /// The health checks to serve, sorted by port.
    pub fn health_checks(&self) -> Vec<HealthCheck> {
        self.health_checks
            .keys()
            .filter_map(|port| self.health_check(*port).cloned())
            .collect()
    }
}

/// The Services claiming one frontend or port, sorted: almost always one, so a Vec (a
/// one-entry BTreeSet allocates a node of eleven).
type Claims = Vec<Name>;

fn claim<K: Ord + Copy + std::fmt::Display>(
    claims: &mut BTreeMap<K, Claims>,
    key: K,
    name: &Name,
    what: &'static str,
) {
    let owners = claims.entry(key).or_default();
    if let Some(first) = owners.first().filter(|first| *first != name) {
        let (owner, other) = if first < name {
            (first, name)
        } else {
            (name, first)
        };
        warn!(
            namespace = %other.0, name = %other.1, key = %key, what,
            owner = %format_args!("{}/{}", owner.0, owner.1),
            "skipping Service port whose frontend or health-check port another Service already has"
        );
    }
    if let Err(at) = owners.binary_search(name) {
        owners.insert(at, name.clone());
    }
}

fn release<K: Ord>(claims: &mut BTreeMap<K, Claims>, key: &K, name: &Name) {
    if let Some(owners) = claims.get_mut(key) {
        if let Ok(at) = owners.binary_search(name) {
            owners.remove(at);
        }
        if owners.is_empty() {
            claims.remove(key);
        }
    }
}
