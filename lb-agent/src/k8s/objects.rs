//! The objects a source knows, indexed by the Service they belong to, and which Services'
//! objects changed since the reconciler last looked ([`View`]).
//!
//! A source applies each event as it comes (`Objects::apply_*`, `delete_*`) or replaces a
//! whole relisted kind at once (`replace_*`, which marks only what differs: a resourceVersion
//! compare where both copies have one, else the objects'). An EndpointSlice belongs to the
//! Service its `kubernetes.io/service-name` label names; a slice that moves marks both. Objects
//! are kept stripped and encoded ([`Cached`]): the cache holds no `managedFields`, annotations
//! or status the model would never look at, nor a typed struct's empty fields.
//!
//! The reconciler takes the changed Services' objects ([`View::take_changes`]); changes that
//! arrive while it works accumulate and are taken together by its next pass, so coalescing
//! happens only while it is busy. Interpreting objects is left to `model/`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio::sync::watch;

use super::Snapshot;
use super::cached::{Cached, IntoCached};

/// A Service by namespace and name (slices without an owner label go under an empty name).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceName {
    /// Namespace (`default` when unset).
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// When a Service's objects first changed since the reconciler last took them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dirty {
    /// The first event's arrival.
    pub since: Instant,
    /// The earliest `last-change-trigger-time` of the slices that changed, when they had one.
    pub trigger: Option<SystemTime>,
}

/// One Service's objects, shared with the source that read them (the file source keeps its
/// files' objects too): one copy in memory.
#[derive(Clone, Debug, Default)]
struct Owned {
    service: Option<Arc<Cached<Service>>>,
    /// Sorted by name; most Services have one slice per address family, so a Vec.
    slices: Vec<Arc<Cached<EndpointSlice>>>,
}

impl Owned {
    fn is_empty(&self) -> bool {
        self.service.is_none() && self.slices.is_empty()
    }

    fn slice(&self, name: &str) -> Result<usize, usize> {
        self.slices.binary_search_by(|s| s.name().cmp(name))
    }

    fn remove_slice(&mut self, name: &str) {
        if let Ok(at) = self.slice(name) {
            self.slices.remove(at);
        }
    }

    fn insert_slice(&mut self, slice: Arc<Cached<EndpointSlice>>) {
        match self.slice(slice.name()) {
            Ok(at) => self.slices[at] = slice,
            Err(at) => self.slices.insert(at, slice),
        }
    }

    fn snapshot(&self, node_zone: &Option<String>) -> Snapshot {
        Snapshot {
            services: self.service.iter().filter_map(|s| s.object()).collect(),
            slices: self.slices.iter().filter_map(|s| s.object()).collect(),
            node_zone: node_zone.clone(),
        }
    }
}

/// Every object a source knows, by Service, with the Services changed since the last take.
#[derive(Debug, Default)]
pub struct Objects {
    by_service: BTreeMap<ServiceName, Owned>,
    /// The Service each slice (namespace, name) is filed under.
    slice_owner: HashMap<(String, String), ServiceName>,
    dirty: BTreeMap<ServiceName, Dirty>,
    synced: bool,
    /// This node's zone label, from its Node object (the kube source).
    node_zone: Option<String>,
}

fn owner_of(slice: &Cached<EndpointSlice>) -> ServiceName {
    ServiceName {
        namespace: slice.namespace().to_owned(),
        name: slice.owner().unwrap_or_default().to_owned(),
    }
}

impl Objects {
    fn mark(&mut self, name: ServiceName, trigger: Option<SystemTime>) {
        let now = Instant::now();
        let dirty = self.dirty.entry(name).or_insert(Dirty {
            since: now,
            trigger: None,
        });
        dirty.trigger = match (dirty.trigger, trigger) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    fn prune(&mut self, name: &ServiceName) {
        if self.by_service.get(name).is_some_and(Owned::is_empty) {
            self.by_service.remove(name);
        }
    }

    /// Sets this node's zone (its Node's `topology.kubernetes.io/zone`); a change marks every
    /// Service, since zone hints select each one's endpoints. True when it changed.
    pub fn set_node_zone(&mut self, zone: Option<String>) -> bool {
        if self.node_zone == zone {
            return false;
        }
        self.node_zone = zone;
        let names: Vec<ServiceName> = self.by_service.keys().cloned().collect();
        for name in names {
            self.mark(name, None);
        }
        true
    }

    /// Adds or replaces a Service (a typed one is stripped and encoded here); true when it
    /// changed.
    pub fn apply_service(&mut self, service: impl IntoCached<Service>) -> bool {
        let service = service.into_cached();
        let name = ServiceName {
            namespace: service.namespace().to_owned(),
            name: service.name().to_owned(),
        };
        let owned = self.by_service.entry(name.clone()).or_default();
        if owned
            .service
            .as_ref()
            .is_some_and(|old| Arc::ptr_eq(old, &service) || old.same(&service))
        {
            return false;
        }
        owned.service = Some(service);
        self.mark(name, None);
        true
    }

    /// Removes a Service; true when it was there.
    pub fn delete_service(&mut self, namespace: &str, name: &str) -> bool {
        let name = ServiceName {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        let Some(owned) = self.by_service.get_mut(&name) else {
            return false;
        };
        if owned.service.take().is_none() {
            return false;
        }
        self.prune(&name);
        self.mark(name, None);
        true
    }

    /// Adds or replaces an EndpointSlice (as `apply_service`); true when it changed.
    pub fn apply_slice(&mut self, slice: impl IntoCached<EndpointSlice>) -> bool {
        let slice = slice.into_cached();
        let key = (slice.namespace().to_owned(), slice.name().to_owned());
        let owner = owner_of(&slice);
        let trigger = slice.trigger();
        if let Some(previous) = self.slice_owner.get(&key).cloned() {
            if previous == owner {
                let unchanged = self.by_service.get(&owner).is_some_and(|o| {
                    o.slice(&key.1).is_ok_and(|at| {
                        let old = &o.slices[at];
                        Arc::ptr_eq(old, &slice) || old.same(&slice)
                    })
                });
                if unchanged {
                    return false;
                }
            } else {
                // The slice moved to another Service: the old one loses its endpoints.
                if let Some(owned) = self.by_service.get_mut(&previous) {
                    owned.remove_slice(&key.1);
                }
                self.prune(&previous);
                self.mark(previous, trigger);
            }
        }
        self.by_service
            .entry(owner.clone())
            .or_default()
            .insert_slice(slice);
        self.slice_owner.insert(key, owner.clone());
        self.mark(owner, trigger);
        true
    }

    /// Removes an EndpointSlice; true when it was there.
    pub fn delete_slice(&mut self, namespace: &str, name: &str) -> bool {
        let Some(owner) = self
            .slice_owner
            .remove(&(namespace.to_owned(), name.to_owned()))
        else {
            return false;
        };
        if let Some(owned) = self.by_service.get_mut(&owner) {
            owned.remove_slice(name);
        }
        self.prune(&owner);
        self.mark(owner, None);
        true
    }

    /// Replaces every Service with `services` (a relist): marks only the Services added,
    /// changed or gone; true when any was.
    pub fn replace_services<S: IntoCached<Service>>(
        &mut self,
        services: impl IntoIterator<Item = S>,
    ) -> bool {
        let mut listed = std::collections::HashSet::new();
        let mut changed = false;
        for service in services {
            let service = service.into_cached();
            listed.insert((service.namespace().to_owned(), service.name().to_owned()));
            changed |= self.apply_service(service);
        }
        let gone: Vec<ServiceName> = self
            .by_service
            .iter()
            .filter(|(name, owned)| {
                owned.service.is_some()
                    && !listed.contains(&(name.namespace.clone(), name.name.clone()))
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            changed |= self.delete_service(&name.namespace, &name.name);
        }
        changed
    }

    /// Replaces every EndpointSlice with `slices` (a relist), as `replace_services` does.
    pub fn replace_slices<S: IntoCached<EndpointSlice>>(
        &mut self,
        slices: impl IntoIterator<Item = S>,
    ) -> bool {
        let mut listed = std::collections::HashSet::new();
        let mut changed = false;
        for slice in slices {
            let slice = slice.into_cached();
            listed.insert((slice.namespace().to_owned(), slice.name().to_owned()));
            changed |= self.apply_slice(slice);
        }
        let gone: Vec<(String, String)> = self
            .slice_owner
            .keys()
            .filter(|key| !listed.contains(*key))
            .cloned()
            .collect();
        for (namespace, name) in gone {
            changed |= self.delete_slice(&namespace, &name);
        }
        changed
    }

    /// Every object, sorted by namespace/name.
    pub fn snapshot(&self) -> Snapshot {
        let mut snapshot = Snapshot {
            node_zone: self.node_zone.clone(),
            ..Snapshot::default()
        };
        for owned in self.by_service.values() {
            let Snapshot {
                services, slices, ..
            } = owned.snapshot(&self.node_zone);
            snapshot.services.extend(services);
            snapshot.slices.extend(slices);
        }
        super::sort_snapshot(&mut snapshot);
        snapshot
    }

    /// Objects known, Services and EndpointSlices.
    pub fn len(&self) -> (usize, usize) {
        let services = self
            .by_service
            .values()
            .filter(|o| o.service.is_some())
            .count();
        (services, self.slice_owner.len())
    }
}

/// The changed Services' objects, as [`View::take_changes`] hands them out.
#[derive(Debug, Default)]
pub struct Changes {
    /// Each changed Service with its objects now (none when all of them are gone).
    pub services: Vec<(ServiceName, Dirty, ServiceObjects)>,
}

/// One Service's objects as taken: shared with the cache, decoded only by
/// [`ServiceObjects::snapshot`], so that a full pass need not hold every Service's decoded
/// objects at once.
#[derive(Clone, Debug, Default)]
pub struct ServiceObjects {
    owned: Owned,
    /// This node's zone label when they were taken.
    pub node_zone: Option<String>,
}

impl ServiceObjects {
    /// The objects, decoded.
    pub fn snapshot(&self) -> Snapshot {
        self.owned.snapshot(&self.node_zone)
    }
}

/// A source's objects shared with the reconciler; cheap to clone.
#[derive(Clone, Debug)]
pub struct View {
    objects: Arc<Mutex<Objects>>,
    /// Bumped after every change (and when the source has synced).
    version: Arc<watch::Sender<u64>>,
}

impl Default for View {
    fn default() -> Self {
        Self {
            objects: Arc::default(),
            version: Arc::new(watch::channel(0).0),
        }
    }
}

impl View {
    /// Runs `update` on the objects; wakes the reconciler when it says something changed.
    pub fn update(&self, update: impl FnOnce(&mut Objects) -> bool) -> bool {
        let changed = update(&mut crate::sync::lock(&self.objects));
        if changed {
            self.version.send_modify(|v| *v += 1);
        }
        changed
    }

    /// Marks the source synced: from now on the reconciler programs what it holds.
    pub fn set_synced(&self) {
        let first = {
            let mut objects = crate::sync::lock(&self.objects);
            !std::mem::replace(&mut objects.synced, true)
        };
        if first {
            self.version.send_modify(|v| *v += 1);
        }
    }

    /// Whether the source has synced.
    pub fn is_synced(&self) -> bool {
        crate::sync::lock(&self.objects).synced
    }

    /// A receiver that sees every change (its value is a change counter).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// The Services changed since the last take, with their objects; `None` before the source
    /// has synced (nothing is taken then).
    pub fn take_changes(&self) -> Option<Changes> {
        let mut objects = crate::sync::lock(&self.objects);
        if !objects.synced {
            return None;
        }
        let dirty = std::mem::take(&mut objects.dirty);
        let services = dirty
            .into_iter()
            .map(|(name, dirty)| {
                let taken = ServiceObjects {
                    owned: objects.by_service.get(&name).cloned().unwrap_or_default(),
                    node_zone: objects.node_zone.clone(),
                };
                (name, dirty, taken)
            })
            .collect();
        Some(Changes { services })
    }

    /// Every object, sorted by namespace/name (tests and full passes).
    pub fn snapshot(&self) -> Snapshot {
        crate::sync::lock(&self.objects).snapshot()
    }

    /// Objects known: (Services, EndpointSlices).
    pub fn len(&self) -> (usize, usize) {
        crate::sync::lock(&self.objects).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::LAST_CHANGE_TRIGGER_TIME;
    use serde_json::json;

    fn service(name: &str, rv: &str) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "resourceVersion": rv,
                         "managedFields": [{"manager": "kubectl"}],
                         "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
            "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 80}]}
        }))
        .expect("service")
    }

    fn slice(name: &str, owner: &str, rv: &str) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "resourceVersion": rv,
                         "labels": {"kubernetes.io/service-name": owner},
                         "annotations": {LAST_CHANGE_TRIGGER_TIME: "2026-01-02T03:04:05Z",
                                         "other": "x"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.0.1"], "targetRef": {"kind": "Pod", "name": "p"}}]
        }))
        .expect("slice")
    }

    fn taken(view: &View) -> Vec<String> {
        view.take_changes()
            .expect("synced")
            .services
            .into_iter()
            .map(|(name, _, objects)| {
                let snapshot = objects.snapshot();
                format!(
                    "{}/{} {}+{}",
                    name.namespace,
                    name.name,
                    snapshot.services.len(),
                    snapshot.slices.len()
                )
            })
            .collect()
    }

    #[test]
    fn only_services_whose_objects_changed_are_taken_and_slices_are_filed_by_owner() {
        let view = View::default();
        view.update(|o| o.replace_services([service("a", "1"), service("b", "1")]));
        view.update(|o| o.replace_slices([slice("a-1", "a", "1")]));
        assert!(
            view.take_changes().is_none(),
            "nothing before the source syncs"
        );
        view.set_synced();
        assert_eq!(taken(&view), ["ns/a 1+1", "ns/b 1+0"]);
        assert!(taken(&view).is_empty());

        // A relist with one slice changed and one Service gone marks just those two.
        view.update(|o| o.replace_services([service("a", "1")]));
        view.update(|o| o.replace_slices([slice("a-1", "a", "2")]));
        assert_eq!(taken(&view), ["ns/a 1+1", "ns/b 0+0"]);

        // The same resourceVersion again is no change; a slice moving marks both Services.
        assert!(!view.update(|o| o.apply_slice(slice("a-1", "a", "2"))));
        view.update(|o| o.apply_slice(slice("a-1", "b", "3")));
        assert_eq!(taken(&view), ["ns/a 1+0", "ns/b 0+1"]);
        view.update(|o| o.delete_slice("ns", "a-1"));
        assert_eq!(taken(&view), ["ns/b 0+0"]);
        assert_eq!(view.len(), (1, 0));
    }

    #[test]
    fn cached_objects_keep_only_what_the_model_reads_and_the_trigger_time() {
        let view = View::default();
        view.update(|o| o.apply_service(service("a", "1")));
        view.update(|o| o.apply_slice(slice("a-1", "a", "1")));
        view.set_synced();
        let changes = view.take_changes().expect("synced");
        let (_, dirty, objects) = &changes.services[0];
        let snapshot = objects.snapshot();
        assert_eq!(
            dirty.trigger,
            Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_767_323_045))
        );
        let svc = &snapshot.services[0];
        assert!(svc.metadata.managed_fields.is_none() && svc.metadata.annotations.is_none());
        let slice = &snapshot.slices[0];
        assert_eq!(
            slice.metadata.annotations.as_ref().map(|a| a.len()),
            Some(1),
            "only the trigger time is kept"
        );
        assert!(slice.endpoints[0].target_ref.is_none());
    }
}
