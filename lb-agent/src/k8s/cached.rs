//! How a source keeps an object between events ([`Cached`]): stripped of what lb never reads
//! (`strip_service`, `strip_slice`) and held as its JSON, with the few facts the index needs
//! (namespace, name, resourceVersion, owning Service, trigger time) beside it.
//!
//! The typed structs are mostly empty `Option`s: a k8s-openapi `Endpoint` is about 400 bytes
//! before its first address, its JSON about 90. Objects are decoded again only when the
//! model reads them (a changed Service's objects, a full pass), which costs microseconds per
//! Service. Stripping only removes fields known to be unread, so a field the model starts
//! reading tomorrow is already kept.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tracing::warn;

use crate::model::{
    HEADLESS_LABEL, LB_ALGORITHM_ANNOTATION, SERVICE_NAME_LABEL, SERVICE_PROXY_NAME_LABEL,
};

/// The annotation the EndpointSlice controller stamps with the time of the change that caused
/// the slice's last update; kube-proxy's network programming latency starts there.
pub const LAST_CHANGE_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// A kind of object the sources cache.
pub trait CachedKind:
    serde::Serialize + serde::de::DeserializeOwned + k8s_openapi::Metadata<Ty = ObjectMeta>
{
    /// Drops what the model never reads.
    fn strip(&mut self);

    /// The Service this object belongs to, when it is not the object itself.
    fn owner(&self) -> Option<&str> {
        None
    }
}

impl CachedKind for Service {
    fn strip(&mut self) {
        strip_service(self);
    }
}

impl CachedKind for EndpointSlice {
    fn strip(&mut self) {
        strip_slice(self);
    }

    fn owner(&self) -> Option<&str> {
        self.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .map(String::as_str)
    }
}

/// One stripped object as a source keeps it; see the module docs.
pub struct Cached<K> {
    namespace: Box<str>,
    name: Box<str>,
    resource_version: Option<Box<str>>,
    owner: Option<Box<str>>,
    trigger: Option<SystemTime>,
    json: Box<[u8]>,
    kind: PhantomData<fn() -> K>,
}

impl<K: CachedKind> Cached<K> {
    /// Strips `object` and keeps it.
    pub fn new(mut object: K) -> Self {
        object.strip();
        let meta = object.metadata();
        let namespace = meta
            .namespace
            .as_deref()
            .filter(|ns| !ns.is_empty())
            .unwrap_or("default")
            .into();
        let name = meta.name.as_deref().unwrap_or_default().into();
        let resource_version = meta.resource_version.as_deref().map(Into::into);
        let trigger = trigger_time(meta);
        let owner = object.owner().map(Into::into);
        let json = match serde_json::to_vec(&object) {
            Ok(json) => json.into_boxed_slice(),
            Err(err) => {
                // Not seen with k8s-openapi's types; the object then reads as gone.
                warn!(kind = <K as k8s_openapi::Resource>::KIND, namespace = %namespace, name = %name, error = %err, "cannot encode object; ignoring it");
                Box::default()
            }
        };
        Self {
            namespace,
            name,
            resource_version,
            owner,
            trigger,
            json,
            kind: PhantomData,
        }
    }

    /// The object as stripped; `None` (with a warning) if it cannot be decoded, which only an
    /// object that could not be encoded gives.
    pub fn object(&self) -> Option<K> {
        match serde_json::from_slice(&self.json) {
            Ok(object) => Some(object),
            Err(err) => {
                warn!(kind = <K as k8s_openapi::Resource>::KIND, namespace = %self.namespace, name = %self.name, error = %err, "cannot decode cached object; ignoring it");
                None
            }
        }
    }
}

impl<K> Cached<K> {
    /// Namespace (`default` when unset).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The Service it belongs to by label (slices); `None` for a Service itself.
    pub fn owner(&self) -> Option<&str> {
        self.owner.as_deref()
    }

    /// The slice's well-formed `last-change-trigger-time`, if any.
    pub fn trigger(&self) -> Option<SystemTime> {
        self.trigger
    }

    /// Equal for the model's purposes: the same resourceVersion when both have one, else the
    /// same stripped content.
    pub fn same(&self, other: &Self) -> bool {
        match (&self.resource_version, &other.resource_version) {
            (Some(a), Some(b)) => a == b,
            _ => self.json == other.json,
        }
    }

    /// Heap and inline bytes it takes (for tests and benchmarks).
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.namespace.len()
            + self.name.len()
            + self.resource_version.as_ref().map_or(0, |s| s.len())
            + self.owner.as_ref().map_or(0, |s| s.len())
            + self.json.len()
    }
}

impl<K> PartialEq for Cached<K> {
    fn eq(&self, other: &Self) -> bool {
        self.namespace == other.namespace
            && self.name == other.name
            && self.resource_version == other.resource_version
            && self.owner == other.owner
            && self.trigger == other.trigger
            && self.json == other.json
    }
}

impl<K> fmt::Debug for Cached<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cached")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("resource_version", &self.resource_version)
            .field("json", &String::from_utf8_lossy(&self.json))
            .finish_non_exhaustive()
    }
}

/// What the cache's `apply_*` and `replace_*` take: a typed object (stripped and encoded on
/// the way in) or one already cached (shared with the source that read it).
pub trait IntoCached<K> {
    /// The shared cached object.
    fn into_cached(self) -> Arc<Cached<K>>;
}

impl IntoCached<Service> for Service {
    fn into_cached(self) -> Arc<Cached<Service>> {
        Arc::new(Cached::new(self))
    }
}

impl IntoCached<EndpointSlice> for EndpointSlice {
    fn into_cached(self) -> Arc<Cached<EndpointSlice>> {
        Arc::new(Cached::new(self))
    }
}

impl<K> IntoCached<K> for Arc<Cached<K>> {
    fn into_cached(self) -> Arc<Cached<K>> {
        self
    }
}

impl<K> IntoCached<K> for Cached<K> {
    fn into_cached(self) -> Arc<Cached<K>> {
        Arc::new(self)
    }
}

/// The trigger time a slice carries, if well-formed (RFC 3339).
fn trigger_time(meta: &ObjectMeta) -> Option<SystemTime> {
    let text = meta.annotations.as_ref()?.get(LAST_CHANGE_TRIGGER_TIME)?;
    // Parsed as the API's own Time type (RFC 3339), so that no date crate is needed here.
    let time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time =
        serde_json::from_value(serde_json::Value::String(text.clone())).ok()?;
    Some(SystemTime::from(time.0))
}

/// Drops what the model never reads from a Service: managed fields, owner references,
/// finalizers, uid, timestamps, the selector (endpoints come from slices), the status's
/// conditions (the load-balancer ingress stays), every annotation but the
/// `service.cilium.io/lb-algorithm` the model reads, and every label but the opt-out ones.
pub fn strip_service(service: &mut Service) {
    strip_meta(&mut service.metadata);
    keep_only(
        &mut service.metadata.annotations,
        &[LB_ALGORITHM_ANNOTATION],
    );
    keep_only(
        &mut service.metadata.labels,
        &[SERVICE_PROXY_NAME_LABEL, HEADLESS_LABEL],
    );
    if let Some(spec) = &mut service.spec {
        spec.selector = None;
    }
    if let Some(status) = &mut service.status {
        status.conditions = None;
    }
}

/// Drops what the model never reads from an EndpointSlice: managed fields, owner references,
/// finalizers, every annotation but the trigger time, every label but the owning Service's
/// and the opt-out ones, and per endpoint the target reference, hostname and deprecated
/// topology. Addresses, conditions, hints, zone, node name, ports and the address type stay.
pub fn strip_slice(slice: &mut EndpointSlice) {
    strip_meta(&mut slice.metadata);
    keep_only(&mut slice.metadata.annotations, &[LAST_CHANGE_TRIGGER_TIME]);
    keep_only(
        &mut slice.metadata.labels,
        &[SERVICE_NAME_LABEL, SERVICE_PROXY_NAME_LABEL, HEADLESS_LABEL],
    );
    for endpoint in &mut slice.endpoints {
        endpoint.target_ref = None;
        endpoint.hostname = None;
        endpoint.deprecated_topology = None;
    }
}

/// Keeps only the `keys` of a label or annotation map (`None` when none is left).
fn keep_only(map: &mut Option<BTreeMap<String, String>>, keys: &[&str]) {
    if let Some(entries) = map {
        entries.retain(|k, _| keys.contains(&k.as_str()));
        if entries.is_empty() {
            *map = None;
        }
    }
}

fn strip_meta(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    meta.owner_references = None;
    meta.finalizers = None;
    meta.generate_name = None;
    meta.uid = None;
    meta.creation_timestamp = None;
    meta.generation = None;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::{Snapshot, View, yaml_documents};
    use crate::model::{ThisNode, desired_services};
    use serde_json::json;

    /// The control-plane corpus (tests/testdata), each case's objects as the API serves them.
    fn corpus() -> Vec<(String, Vec<Service>, Vec<EndpointSlice>)> {
        let root = format!("{}/../tests/testdata", env!("CARGO_MANIFEST_DIR"));
        let mut cases: Vec<_> = std::fs::read_dir(&root)
            .expect("tests/testdata")
            .map(|entry| entry.expect("entry").path())
            .filter(|path| path.is_dir())
            .collect();
        cases.sort();
        assert!(!cases.is_empty(), "no cases under {root}");
        cases
            .into_iter()
            .map(|dir| {
                let read = |file: &str| {
                    std::fs::read_to_string(dir.join(file)).expect("read a fixture file")
                };
                (
                    dir.display().to_string(),
                    yaml_documents(&read("service.yaml")).expect("services"),
                    yaml_documents(&read("endpointslice.yaml")).expect("slices"),
                )
            })
            .collect()
    }

    /// Objects that carry every field the model reads and much it does not: the algorithm
    /// annotation, opt-out labels, zone hints, dual-stack fields, load-balancer status,
    /// terminating endpoints, and managed fields, owner references, target references.
    fn everything() -> (Vec<Service>, Vec<EndpointSlice>) {
        let managed = json!([{"manager": "kube-controller-manager", "operation": "Update",
                              "apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}]);
        let service = |name: &str, extra_labels: serde_json::Value| -> Service {
            serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": "shop", "resourceVersion": "7", "uid": "u-1",
                             "creationTimestamp": "2026-01-02T03:04:05Z", "managedFields": managed,
                             "labels": extra_labels,
                             "annotations": {"service.cilium.io/lb-algorithm": "maglev",
                                             "kubectl.kubernetes.io/last-applied-configuration": "{}"}},
                "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.10",
                         "clusterIPs": ["10.96.0.10", "fd00::10"], "ipFamilies": ["IPv4", "IPv6"],
                         "ipFamilyPolicy": "PreferDualStack", "selector": {"app": name},
                         "externalIPs": ["192.0.2.10"], "externalTrafficPolicy": "Local",
                         "healthCheckNodePort": 31000, "internalTrafficPolicy": "Cluster",
                         "loadBalancerSourceRanges": ["198.51.100.0/24"],
                         "sessionAffinity": "ClientIP",
                         "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
                         "trafficDistribution": "PreferClose",
                         "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080, "nodePort": 30080},
                                   {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53, "nodePort": 30053}]},
                "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.7"}]},
                           "conditions": [{"type": "x", "status": "True", "lastTransitionTime": "2026-01-02T03:04:05Z",
                                           "reason": "r", "message": "m"}]}
            }))
            .expect("service")
        };
        let slice = |name: &str, owner: &str, family: &str, addrs: [&str; 2]| -> EndpointSlice {
            serde_json::from_value(json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": family,
                "metadata": {"name": name, "namespace": "shop", "resourceVersion": "9", "uid": "u-2",
                             "generateName": "web-", "generation": 4, "managedFields": managed,
                             "labels": {"kubernetes.io/service-name": owner,
                                        "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
                             "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": "2026-01-02T03:04:05Z"},
                             "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": owner, "uid": "u-1"}]},
                "endpoints": [
                    {"addresses": [addrs[0]], "conditions": {"ready": true, "serving": true, "terminating": false},
                     "nodeName": "worker-a1", "zone": "zone-a", "hostname": "h",
                     "hints": {"forZones": [{"name": "zone-a"}]},
                     "targetRef": {"kind": "Pod", "name": "p-1", "namespace": "shop", "uid": "u-3"}},
                    {"addresses": [addrs[1]], "conditions": {"ready": false, "serving": true, "terminating": true},
                     "nodeName": "worker-b1", "zone": "zone-b",
                     "hints": {"forZones": [{"name": "zone-b"}]},
                     "targetRef": {"kind": "Pod", "name": "p-2", "namespace": "shop", "uid": "u-4"}}
                ],
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"},
                          {"name": "dns", "port": 53, "protocol": "UDP"}]
            }))
            .expect("slice")
        };
        (
            vec![
                service("web", json!({"app": "web"})),
                service(
                    "opted-out",
                    json!({"service.kubernetes.io/service-proxy-name": "other"}),
                ),
            ],
            vec![
                slice("web-v4", "web", "IPv4", ["10.244.1.5", "10.244.2.6"]),
                slice("web-v6", "web", "IPv6", ["fd00:244::5", "fd00:244::6"]),
                slice(
                    "opted-out-v4",
                    "opted-out",
                    "IPv4",
                    ["10.244.1.7", "10.244.2.8"],
                ),
            ],
        )
    }

    fn nodes() -> Vec<ThisNode> {
        let mut nodes = Vec::new();
        for name in ["worker-a1", "worker-b1", "elsewhere"] {
            for zone in [None, Some("zone-a"), Some("zone-b")] {
                let mut node = ThisNode::named(name);
                node.addresses = vec![std::net::Ipv4Addr::new(192, 168, 0, 1).into()];
                node.zone = zone.map(str::to_owned);
                nodes.push(node);
            }
        }
        nodes
    }

    #[test]
    fn the_model_over_cached_objects_equals_the_model_over_the_objects_as_served() {
        let mut cases = corpus();
        let (services, slices) = everything();
        cases.push(("everything".to_owned(), services, slices));
        for (case, services, slices) in cases {
            let full = Snapshot {
                services: services.clone(),
                slices: slices.clone(),
                node_zone: None,
            };
            let view = View::default();
            view.update(|o| o.replace_services(services) | o.replace_slices(slices));
            view.set_synced();
            let cached = view.snapshot();
            assert_eq!(cached.services.len(), full.services.len(), "{case}");
            assert_eq!(cached.slices.len(), full.slices.len(), "{case}");
            for node in nodes() {
                let want = desired_services(&full, &node);
                assert!(
                    !want.is_empty() || case != "everything",
                    "{case}: a case that programs nothing proves nothing"
                );
                assert_eq!(desired_services(&cached, &node), want, "{case} on {node:?}");
            }
            let changes = view.take_changes().expect("synced");
            for (_, _, objects) in &changes.services {
                let snapshot = &objects.snapshot();
                for node in nodes() {
                    let mut one = full.clone();
                    one.services.retain(|s| {
                        snapshot
                            .services
                            .iter()
                            .any(|c| c.metadata.name == s.metadata.name)
                    });
                    one.slices.retain(|s| {
                        snapshot
                            .slices
                            .iter()
                            .any(|c| c.metadata.name == s.metadata.name)
                    });
                    assert_eq!(
                        desired_services(snapshot, &node),
                        desired_services(&one, &node),
                        "{case}"
                    );
                }
            }
        }
    }

    #[test]
    fn cached_objects_drop_what_the_model_does_not_read_and_are_a_fraction_of_the_typed_size() {
        let (services, slices) = everything();
        let service = Cached::new(services[0].clone());
        let decoded = service.object().expect("decodes");
        assert!(decoded.metadata.managed_fields.is_none() && decoded.metadata.uid.is_none());
        assert_eq!(
            decoded
                .metadata
                .annotations
                .as_ref()
                .map(|a| a.keys().cloned().collect::<Vec<_>>()),
            Some(vec![LB_ALGORITHM_ANNOTATION.to_owned()]),
            "the algorithm annotation stays, the rest goes"
        );
        assert_eq!(decoded.metadata.labels, None, "no label the model reads");
        let spec = decoded.spec.as_ref().expect("spec");
        assert!(spec.selector.is_none());
        assert_eq!(spec.cluster_ips.as_ref().map(Vec::len), Some(2));
        assert_eq!(spec.ip_families.as_ref().map(Vec::len), Some(2));
        assert_eq!(spec.ip_family_policy.as_deref(), Some("PreferDualStack"));
        assert!(
            decoded
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_none()
        );
        assert!(
            decoded
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .is_some()
        );

        let slice = Cached::new(slices[1].clone());
        assert_eq!(slice.owner(), Some("web"));
        assert!(slice.trigger().is_some());
        let decoded = slice.object().expect("decodes");
        assert_eq!(decoded.address_type, "IPv6");
        assert_eq!(
            decoded.metadata.labels.as_ref().map(|l| l.len()),
            Some(1),
            "only the owner label"
        );
        let endpoint = &decoded.endpoints[1];
        assert!(endpoint.target_ref.is_none() && endpoint.hostname.is_none());
        assert_eq!(endpoint.zone.as_deref(), Some("zone-b"));
        assert_eq!(endpoint.node_name.as_deref(), Some("worker-b1"));
        assert!(endpoint.hints.is_some());
        assert_eq!(
            endpoint.conditions.as_ref().and_then(|c| c.terminating),
            Some(true)
        );

        let typed = std::mem::size_of::<EndpointSlice>()
            + decoded.endpoints.len()
                * std::mem::size_of::<k8s_openapi::api::discovery::v1::Endpoint>();
        assert!(
            slice.bytes() < typed,
            "cached {} B against the typed struct's {typed} B before any string",
            slice.bytes()
        );
    }
}
