//! Endpoints: a Service port's backends out of its EndpointSlices.
//!
//! Owns kube-proxy's slice-side rules (k8s-semantics.md §0, §1 "EndpointSlice"): the owner
//! label, the address family (a family's frontends take only that family's slices), ports
//! joined by (name, protocol), `addresses[0]`, condition defaults, and the union of every
//! slice of a Service with duplicates removed. Choosing which endpoints to use is left to
//! `desired.rs`.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::net::IpAddr;

use k8s_openapi::api::discovery::v1::{Endpoint as SliceEndpoint, EndpointSlice};
use tracing::{debug, warn};

use super::frontend::{
    IpFamily, Protocol, ProtocolField, is_opted_out, namespace_of, protocol_field,
};

/// Label naming the Service that owns a slice; a slice without it belongs to nobody.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// One endpoint of one Service port, with its conditions already defaulted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Endpoint {
    /// `addresses[0]`, of the slice's `addressType`.
    pub addr: IpAddr,
    pub port: u16,
    /// `ready`, nil → true.
    pub ready: bool,
    /// `serving`, nil → true (kube-proxy's default).
    pub serving: bool,
    /// `terminating`, nil → false.
    pub terminating: bool,
    pub node_name: Option<String>,
    /// `hints.forNodes[].name`; `None` when the endpoint carries no node hints.
    pub node_hints: Option<Vec<String>>,
    /// `hints.forZones[].name`; `None` when the endpoint carries no zone hints.
    pub zone_hints: Option<Vec<String>>,
    /// `zone`: informational for kube-proxy; what the EndpointSlice controller's hints for
    /// `trafficDistribution` are made of (`desired.rs` derives them where a source has none).
    pub zone: Option<String>,
}

/// Slices grouped by the Service that owns them (namespace, `kubernetes.io/service-name`),
/// each with its address family.
pub(crate) struct SliceIndex<'a> {
    by_service: BTreeMap<(&'a str, &'a str), Vec<(IpFamily, &'a EndpointSlice)>>,
}

impl<'a> SliceIndex<'a> {
    /// Indexes the slices lb may use: IPv4 or IPv6, owned, not opted out. Within a Service,
    /// slices are ordered by name, so which copy of a duplicate wins never depends on arrival
    /// order.
    pub(crate) fn new(slices: &'a [EndpointSlice]) -> Self {
        let mut by_service: BTreeMap<(&str, &str), Vec<(IpFamily, &EndpointSlice)>> =
            BTreeMap::new();
        for slice in slices {
            let namespace = namespace_of(&slice.metadata);
            let name = slice.metadata.name.as_deref().unwrap_or("");
            if is_opted_out(&slice.metadata) {
                debug!(namespace = %namespace, name = %name, "skipping EndpointSlice: opt-out label");
                continue;
            }
            // FQDN slices name no address a datapath can use (case 10).
            let Some(family) = IpFamily::parse(&slice.address_type) else {
                debug!(namespace = %namespace, name = %name, address_type = %slice.address_type, "skipping EndpointSlice of another address type");
                continue;
            };
            let owner = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL));
            let Some(owner) = owner.filter(|o| !o.is_empty()) else {
                warn!(namespace = %namespace, name = %name, "skipping EndpointSlice without the kubernetes.io/service-name label");
                continue;
            };
            by_service
                .entry((namespace, owner.as_str()))
                .or_default()
                .push((family, slice));
        }
        for slices in by_service.values_mut() {
            slices.sort_by(|a, b| a.1.metadata.name.cmp(&b.1.metadata.name));
        }
        Self { by_service }
    }

    /// The union of a Service port's endpoints of `family` over all the Service's slices of
    /// that family, one per IP:port, keeping the non-terminating copy of a duplicate; sorted by
    /// IP:port.
    pub(crate) fn endpoints(
        &self,
        namespace: &str,
        service: &str,
        port_name: &str,
        protocol: Protocol,
        family: IpFamily,
    ) -> Vec<Endpoint> {
        let mut union: BTreeMap<(IpAddr, u16), Endpoint> = BTreeMap::new();
        let slices = self.by_service.get(&(namespace, service));
        for (_, slice) in slices.into_iter().flatten().filter(|(f, _)| *f == family) {
            let slice_name = slice.metadata.name.as_deref().unwrap_or("");
            let Some(port) = slice_port(slice, namespace, slice_name, port_name, protocol) else {
                continue;
            };
            for ep in &slice.endpoints {
                let Some(endpoint) = endpoint(ep, port, family, namespace, slice_name) else {
                    continue;
                };
                match union.entry((endpoint.addr, endpoint.port)) {
                    Entry::Vacant(v) => {
                        v.insert(endpoint);
                    }
                    Entry::Occupied(mut o) => {
                        if o.get().terminating && !endpoint.terminating {
                            o.insert(endpoint);
                        }
                    }
                }
            }
        }
        union.into_values().collect()
    }
}

/// The slice's number for the port (name, protocol), if it has a usable one.
fn slice_port(
    slice: &EndpointSlice,
    namespace: &str,
    slice_name: &str,
    port_name: &str,
    protocol: Protocol,
) -> Option<u16> {
    for port in slice.ports.iter().flatten() {
        // A nil name matches nothing; "" is the unnamed port (case 8, fixture C).
        if port.name.as_deref() != Some(port_name) {
            continue;
        }
        if protocol_field(port.protocol.as_deref()) != ProtocolField::Served(protocol) {
            continue;
        }
        return match port.port {
            None | Some(0) => None,
            Some(n) => match u16::try_from(n) {
                Ok(n) => Some(n),
                Err(_) => {
                    warn!(namespace = %namespace, name = %slice_name, port = %port_name, value = n, "skipping EndpointSlice port out of range 1-65535");
                    None
                }
            },
        };
    }
    None
}

/// Reads one slice endpoint; `None` (with a log) when its address is missing or not of the
/// slice's family.
fn endpoint(
    ep: &SliceEndpoint,
    port: u16,
    family: IpFamily,
    namespace: &str,
    slice_name: &str,
) -> Option<Endpoint> {
    // Only addresses[0] counts: the API says the others are not used.
    let Some(addr) = ep.addresses.first() else {
        warn!(namespace = %namespace, name = %slice_name, "skipping endpoint without addresses");
        return None;
    };
    let Some(addr) = addr
        .parse::<IpAddr>()
        .ok()
        .filter(|a| IpFamily::of(a) == family)
    else {
        warn!(namespace = %namespace, name = %slice_name, address = %addr, address_type = %family, "skipping endpoint with an invalid address for its slice's addressType");
        return None;
    };
    let conditions = ep.conditions.as_ref();
    let node_hints = ep
        .hints
        .as_ref()
        .and_then(|h| h.for_nodes.as_ref())
        .filter(|nodes| !nodes.is_empty())
        .map(|nodes| nodes.iter().map(|n| n.name.clone()).collect());
    let zone_hints = ep
        .hints
        .as_ref()
        .and_then(|h| h.for_zones.as_ref())
        .filter(|zones| !zones.is_empty())
        .map(|zones| zones.iter().map(|z| z.name.clone()).collect());
    Some(Endpoint {
        addr,
        port,
        ready: conditions.and_then(|c| c.ready).unwrap_or(true),
        serving: conditions.and_then(|c| c.serving).unwrap_or(true),
        terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
        node_name: ep.node_name.clone().filter(|n| !n.is_empty()),
        node_hints,
        zone_hints,
        zone: ep.zone.clone().filter(|z| !z.is_empty()),
    })
}
