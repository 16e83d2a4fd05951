//! `--source kube`: watchers on Services and EndpointSlices, applied to the source's
//! [`View`](super::View) event by event, and on this node's own Node object (field selector
//! `metadata.name`, as kube-proxy does) for its zone.
//!
//! Each watcher lists, then watches from the list's resourceVersion with bookmarks; kube-rs
//! relists after a 410 Gone. A list (the first or a relist) is buffered until `InitDone` and
//! then replaces that kind's objects at once, marking only the Services whose objects differ
//! by resourceVersion, so a deletion missed while disconnected is applied then and a relist of
//! unchanged objects reprograms nothing. Errors back off (`default_backoff`) and never end the
//! loop. The view counts as synced once both kinds have been listed. The Node is not waited
//! for (until it is known, zone hints are ignored: every endpoint serves), so a missing Node or
//! RBAC rule degrades topology only, with warnings; a zone change marks every Service.

use std::pin::pin;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::cached::Cached;
use super::filter::LABEL_SELECTOR;
use super::objects::Objects;
use super::{Error, View, ZONE_LABEL};

/// Watches until `shutdown`; see the module docs. `node_name`: the Node whose zone to watch.
pub(super) async fn run(
    client: Client,
    node_name: Option<&str>,
    view: &View,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    // Bookmarks are on by default; MostRecent list semantics so a relist is never served a
    // stale cache that would resurrect deleted objects.
    let config = watcher::Config::default().labels(LABEL_SELECTOR);
    let mut service_events = pin!(
        watcher::watcher(Api::<Service>::all(client.clone()), config.clone()).default_backoff()
    );
    let mut slice_events =
        pin!(watcher::watcher(Api::<EndpointSlice>::all(client.clone()), config).default_backoff());
    let mut node_events = match node_name {
        Some(name) => {
            let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
            watcher::watcher(Api::<Node>::all(client), config)
                .default_backoff()
                .boxed()
        }
        None => futures::stream::pending().boxed(),
    };

    let mut services = Watched::<Service>::default();
    let mut slices = Watched::<EndpointSlice>::default();
    let mut node = NodeZone::default();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            event = service_events.next() => services.on_event(event, view)?,
            event = slice_events.next() => slices.on_event(event, view)?,
            event = node_events.next() => node.on_event(event, view)?,
        }
        // Both kinds must have been listed: programming with one empty would prune live
        // services.
        if services.synced && slices.synced {
            view.set_synced();
        }
    }
}

/// What the view does with one kind of object.
trait Kind: k8s_openapi::Resource + Resource<DynamicType = ()> + Clone + 'static {
    fn apply(self, objects: &mut Objects) -> bool;
    fn delete(&self, objects: &mut Objects) -> bool;
    fn replace(all: Vec<Cached<Self>>, objects: &mut Objects) -> bool;
    fn cached(self) -> Cached<Self>;
}

impl Kind for Service {
    fn apply(self, objects: &mut Objects) -> bool {
        objects.apply_service(self)
    }
    fn delete(&self, objects: &mut Objects) -> bool {
        let (namespace, name) = names(self);
        objects.delete_service(namespace, name)
    }
    fn replace(all: Vec<Cached<Self>>, objects: &mut Objects) -> bool {
        objects.replace_services(all)
    }
    fn cached(self) -> Cached<Self> {
        Cached::new(self)
    }
}

impl Kind for EndpointSlice {
    fn apply(self, objects: &mut Objects) -> bool {
        objects.apply_slice(self)
    }
    fn delete(&self, objects: &mut Objects) -> bool {
        let (namespace, name) = names(self);
        objects.delete_slice(namespace, name)
    }
    fn replace(all: Vec<Cached<Self>>, objects: &mut Objects) -> bool {
        objects.replace_slices(all)
    }
    fn cached(self) -> Cached<Self> {
        Cached::new(self)
    }
}

fn names<K: Resource>(object: &K) -> (&str, &str) {
    let meta = object.meta();
    (
        meta.namespace
            .as_deref()
            .filter(|ns| !ns.is_empty())
            .unwrap_or("default"),
        meta.name.as_deref().unwrap_or(""),
    )
}

/// One watcher's state: listed at least once, and the list being buffered.
struct Watched<K> {
    synced: bool,
    /// A relist in progress, kept as the cache keeps objects.
    listing: Option<Vec<Cached<K>>>,
}

impl<K> Default for Watched<K> {
    fn default() -> Self {
        Self {
            synced: false,
            listing: None,
        }
    }
}

impl<K: Kind> Watched<K> {
    /// Applies one watcher event to the view.
    fn on_event(
        &mut self,
        event: Option<Result<Event<K>, watcher::Error>>,
        view: &View,
    ) -> Result<(), Error> {
        let kind = <K as k8s_openapi::Resource>::KIND;
        match event {
            None => return Err(Error::WatchEnded { kind }),
            Some(Err(err)) => on_watch_error(kind, &err),
            Some(Ok(Event::Init)) => {
                debug!(kind, "listing");
                self.listing = Some(Vec::new());
            }
            Some(Ok(Event::InitApply(object))) => {
                self.listing
                    .get_or_insert_with(Vec::new)
                    .push(object.cached());
            }
            Some(Ok(Event::InitDone)) => {
                super::source_ok();
                let listed = self.listing.take().unwrap_or_default();
                let count = listed.len();
                view.update(|objects| K::replace(listed, objects));
                if !self.synced {
                    info!(kind, objects = count, "synced");
                }
                self.synced = true;
            }
            Some(Ok(Event::Apply(object))) => {
                super::source_ok();
                view.update(|objects| object.apply(objects));
            }
            Some(Ok(Event::Delete(object))) => {
                super::source_ok();
                view.update(|objects| object.delete(objects));
            }
        }
        Ok(())
    }
}

/// A failed watch of `kind`: the watcher relists (410 Gone) or retries with backoff itself;
/// this only says so, and marks the source unhealthy for anything but an expired version.
fn on_watch_error(kind: &str, err: &watcher::Error) {
    match err {
        watcher::Error::WatchError(status) if status.code == 410 => {
            info!(kind, "resourceVersion expired; relisting");
        }
        err => {
            warn!(kind, error = %err, "watch failed; retrying with backoff");
            super::source_error(format!("{kind} watch: {err}"));
        }
    }
}

/// The Node watcher's state: the zone of the Node a list (being buffered) found.
#[derive(Default)]
struct NodeZone {
    listing: Option<Option<String>>,
}

/// The zone label of a Node, when it has a non-empty one.
fn zone_of(node: &Node) -> Option<String> {
    node.metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get(ZONE_LABEL))
        .filter(|zone| !zone.is_empty())
        .cloned()
}

impl NodeZone {
    /// Applies one Node watcher event to the view's zone.
    fn on_event(
        &mut self,
        event: Option<Result<Event<Node>, watcher::Error>>,
        view: &View,
    ) -> Result<(), Error> {
        let kind = <Node as k8s_openapi::Resource>::KIND;
        match event {
            None => return Err(Error::WatchEnded { kind }),
            Some(Err(err)) => on_watch_error(kind, &err),
            Some(Ok(Event::Init)) => self.listing = Some(None),
            Some(Ok(Event::InitApply(node))) => self.listing = Some(zone_of(&node)),
            Some(Ok(Event::InitDone)) => {
                super::source_ok();
                let zone = self.listing.take().flatten();
                view.update(|objects| objects.set_node_zone(zone));
            }
            Some(Ok(Event::Apply(node))) => {
                super::source_ok();
                view.update(|objects| objects.set_node_zone(zone_of(&node)));
            }
            Some(Ok(Event::Delete(_))) => {
                super::source_ok();
                view.update(|objects| objects.set_node_zone(None));
            }
        }
        Ok(())
    }
}
