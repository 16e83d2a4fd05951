//! `--source kube`: watchers and reflector stores on Services and EndpointSlices, and on this
//! node's own Node object (field selector `metadata.name`, as kube-proxy does) for its zone.
//!
//! Each watcher lists, then watches from the list's resourceVersion with bookmarks; kube-rs
//! relists after a 410 Gone and swaps the relisted view into the store at `InitDone`, so a
//! deletion missed while disconnected is applied then. Errors back off (`default_backoff`) and
//! never end the loop. Nothing is published until Services and EndpointSlices have synced; the
//! Node is not waited for (until it is known, zone hints are ignored: every endpoint serves), so
//! a missing Node or RBAC rule degrades topology only, with warnings.

use std::pin::pin;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::filter::LABEL_SELECTOR;
use super::{DEBOUNCE, Error, Snapshot, SnapshotSender, ZONE_LABEL, publish, sort_snapshot};

/// Watches until `shutdown`; see the module docs. `node_name`: the Node whose zone to watch.
pub(super) async fn run(
    client: Client,
    node_name: Option<&str>,
    tx: &SnapshotSender,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    // Bookmarks are on by default; MostRecent list semantics so a relist is never served a
    // stale cache that would resurrect deleted objects.
    let config = watcher::Config::default().labels(LABEL_SELECTOR);
    let (services, services_writer) = reflector::store::<Service>();
    let (slices, slices_writer) = reflector::store::<EndpointSlice>();
    let mut service_events = pin!(
        watcher::watcher(Api::<Service>::all(client.clone()), config.clone())
            .default_backoff()
            .reflect(services_writer)
    );
    let mut slice_events = pin!(
        watcher::watcher(Api::<EndpointSlice>::all(client.clone()), config)
            .default_backoff()
            .reflect(slices_writer)
    );
    let (nodes, nodes_writer) = reflector::store::<Node>();
    let mut node_events = match node_name {
        Some(name) => {
            let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
            watcher::watcher(Api::<Node>::all(client), config)
                .default_backoff()
                .reflect(nodes_writer)
                .boxed()
        }
        None => futures::stream::pending().boxed(),
    };
    let mut node_synced = false;

    let mut services_synced = false;
    let mut slices_synced = false;
    let mut dirty = false;
    let mut publish_at: Option<Instant> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            event = service_events.next() => {
                dirty |= on_event(event, &mut services_synced, &services)?;
            }
            event = slice_events.next() => {
                dirty |= on_event(event, &mut slices_synced, &slices)?;
            }
            event = node_events.next() => {
                dirty |= on_event(event, &mut node_synced, &nodes)?;
            }
            () = sleep_until(publish_at.unwrap_or_else(Instant::now)), if publish_at.is_some() => {
                publish_at = None;
                let snapshot = snapshot(&services, &slices, &nodes);
                let (n_services, n_slices) = (snapshot.services.len(), snapshot.slices.len());
                if publish(tx, snapshot) {
                    debug!(services = n_services, slices = n_slices, "published snapshot");
                }
            }
        }
        // Both stores must have synced: publishing with one empty would prune live services.
        if dirty && services_synced && slices_synced && publish_at.is_none() {
            publish_at = Some(Instant::now() + DEBOUNCE);
            dirty = false;
        }
    }
}

/// Notes one watcher event (already applied to its store); true when the store changed.
fn on_event<K>(
    event: Option<Result<Event<K>, watcher::Error>>,
    synced: &mut bool,
    store: &Store<K>,
) -> Result<bool, Error>
where
    K: k8s_openapi::Resource + Resource<DynamicType = ()> + Clone + 'static,
{
    let kind = <K as k8s_openapi::Resource>::KIND;
    match event {
        None => Err(Error::WatchEnded { kind }),
        Some(Err(watcher::Error::WatchError(status))) if status.code == 410 => {
            info!(kind, "resourceVersion expired; relisting");
            Ok(false)
        }
        Some(Err(err)) => {
            warn!(kind, error = %err, "watch failed; retrying with backoff");
            super::source_error(format!("{kind} watch: {err}"));
            Ok(false)
        }
        Some(Ok(Event::Init)) => {
            debug!(kind, "listing");
            Ok(false)
        }
        // The store swaps the whole relisted view in at InitDone, not object by object.
        Some(Ok(Event::InitApply(_))) => Ok(false),
        Some(Ok(Event::InitDone)) => {
            super::source_ok();
            if !*synced {
                info!(kind, objects = store.len(), "synced");
            }
            *synced = true;
            Ok(true)
        }
        Some(Ok(Event::Apply(_) | Event::Delete(_))) => {
            super::source_ok();
            Ok(true)
        }
    }
}

/// Copies the stores into a sorted snapshot: the Services, the EndpointSlices and the zone of
/// the one Node the field selector lets in.
fn snapshot(
    services: &Store<Service>,
    slices: &Store<EndpointSlice>,
    nodes: &Store<Node>,
) -> Snapshot {
    let mut snapshot = Snapshot {
        services: services.state().iter().map(|s| Service::clone(s)).collect(),
        slices: slices
            .state()
            .iter()
            .map(|s| EndpointSlice::clone(s))
            .collect(),
        node_zone: nodes.state().iter().find_map(|node| {
            node.metadata
                .labels
                .as_ref()
                .and_then(|labels| labels.get(ZONE_LABEL))
                .filter(|zone| !zone.is_empty())
                .cloned()
        }),
    };
    sort_snapshot(&mut snapshot);
    snapshot
}
