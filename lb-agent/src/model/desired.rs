//! The desired state: one [`DesiredService`] per frontend of a served Service port (its
//! ClusterIP of each family, a node port on each of this node's addresses of those families,
//! each external and load-balancer IP), with the backends of the frontend's family.
//!
//! Owns endpoint selection (k8s-semantics.md §2): ready endpoints (narrowed by node hints, else
//! zone hints, when every ready endpoint has them and some name this node or its zone), else the serving+terminating fallback (KEP-1669), the local
//! set of internalTrafficPolicy Local (ClusterIP) and externalTrafficPolicy Local (the external
//! destinations), and the terminating backends kept only to drain established flows.
//! Frontends come from `frontend.rs`, endpoints from `endpoints.rs`.
//!
//! Also owns the health checks of externalTrafficPolicy Local load balancers ([`HealthCheck`]):
//! which port each is served on, and its count of ready local endpoints (§2.11).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::ops::RangeInclusive;

use tracing::warn;

use super::endpoints::{Endpoint, SliceIndex};
use super::frontend::{
    Frontend, FrontendKind, IpFamily, LbAlgorithm, ServicePortSpec, ServiceSpec, SourceRange,
    TrafficDistribution, service_spec,
};
use crate::k8s::Snapshot;

/// Whether new flows may pick a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BackendState {
    /// Selected for new flows.
    Active,
    /// Kept only so established flows drain; never selected for new ones.
    Terminating,
}

impl BackendState {
    /// `active` or `terminating`, as `lbctl service list` prints it (`lb-api`'s words).
    pub fn as_str(self) -> &'static str {
        lb_api::proto::BackendState::from(self).as_str()
    }
}

/// The API's copy of the state (it carries serde and lives in `lb-api`, which lbctl builds
/// without the agent).
impl From<BackendState> for lb_api::proto::BackendState {
    fn from(state: BackendState) -> Self {
        match state {
            BackendState::Active => Self::Active,
            BackendState::Terminating => Self::Terminating,
        }
    }
}

/// One backend of a frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DesiredBackend {
    /// The endpoint's address (`addresses[0]`), of its frontend's family.
    pub addr: IpAddr,
    /// The port from the slice (the resolved targetPort).
    pub port: u16,
    /// Active or terminating.
    pub state: BackendState,
    /// True when the endpoint's `nodeName` is set and is not this node.
    pub remote: bool,
}

/// The cluster's node-port range by default (kube-apiserver's `--service-node-port-range`).
pub const DEFAULT_NODE_PORTS: RangeInclusive<u16> = 30_000..=32_767;

/// The node the model computes for: its name decides which endpoints are local, its addresses
/// where node ports are served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThisNode {
    /// The Node's name, as EndpointSlices' `nodeName` carries it.
    pub name: String,
    /// The addresses node ports are served on, of either family (a Service's node port is
    /// served on the addresses of the families it has a ClusterIP of).
    pub addresses: Vec<IpAddr>,
    /// The cluster's node-port range (`node-port-range`): a `nodePort` or
    /// `healthCheckNodePort` outside it is not served.
    pub node_ports: RangeInclusive<u16>,
    /// The node's `topology.kubernetes.io/zone` as configured (`node-zone`): zone hints name
    /// it. `None`: the snapshot's (the Node object's label), if any.
    pub zone: Option<String>,
}

impl Default for ThisNode {
    fn default() -> Self {
        Self::named("")
    }
}

impl ThisNode {
    /// A node without addresses: ClusterIPs, external and load-balancer IPs only.
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            addresses: Vec::new(),
            node_ports: DEFAULT_NODE_PORTS,
            zone: None,
        }
    }
}

/// What to program for one frontend of a Service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredService {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// The Service port's name (`""` when unnamed).
    pub port_name: String,
    /// VIP:port/protocol.
    pub frontend: Frontend,
    /// ClusterIP, NodePort, ExternalIPs or LoadBalancer.
    pub kind: FrontendKind,
    /// True when only this node's endpoints serve the frontend (internalTrafficPolicy Local
    /// for a ClusterIP, externalTrafficPolicy Local for the others).
    pub local_only: bool,
    /// Active backends first, then terminating ones, each group by addr:port.
    pub backends: Vec<DesiredBackend>,
    /// True when some ready or serving+terminating endpoint exists anywhere. With no active
    /// backend this tells the datapath to drop (`true`, iTP Local with only remote endpoints)
    /// rather than reject (`false`, §2.6).
    pub has_any_endpoints: bool,
    /// ClientIP affinity timeout in seconds; `None` when affinity is off.
    pub affinity_timeout_secs: Option<u32>,
    /// For a LoadBalancer frontend of a Service with `loadBalancerSourceRanges`: the client
    /// prefixes admitted from outside the cluster (empty: none). `None`: every client.
    pub source_ranges: Option<Vec<SourceRange>>,
    /// The algorithm the Service's annotation asks for; `None`: the node's default.
    pub algorithm: Option<LbAlgorithm>,
}

/// The health check of one externalTrafficPolicy Local LoadBalancer Service: what its
/// `healthCheckNodePort` answers on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// `spec.healthCheckNodePort` (TCP, on the node-port addresses).
    pub port: u16,
    /// This node's ready endpoints, counted by address over all the Service's ports; terminating
    /// ones do not count, even while they still serve (§2.11).
    pub local_ready: usize,
}

/// Everything the model derives from one snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// What to program, sorted by frontend ([`desired_services`]).
    pub services: Vec<DesiredService>,
    /// The health checks to serve, sorted by port.
    pub health_checks: Vec<HealthCheck>,
}

/// Turns a snapshot into what this node must program, sorted by frontend.
///
/// Services and slices lb does not serve are skipped; malformed ones are logged with a warning
/// naming them. Two Services claiming one frontend: the first by namespace/name wins.
pub fn desired_services(snapshot: &Snapshot, node: &ThisNode) -> Vec<DesiredService> {
    desired(snapshot, node).services
}

/// [`desired_services`] and the health checks, from one reading of the snapshot (so that each
/// malformed object is logged once). Two Services with one `healthCheckNodePort`: the first by
/// namespace/name wins, as with frontends.
pub fn desired(snapshot: &Snapshot, node: &ThisNode) -> Desired {
    // The configured zone wins; else the Node object's label (kube source).
    let with_zone;
    let node = if node.zone.is_none() && snapshot.node_zone.is_some() {
        with_zone = ThisNode {
            zone: snapshot.node_zone.clone(),
            ..node.clone()
        };
        &with_zone
    } else {
        node
    };
    let slices = SliceIndex::new(&snapshot.slices);
    let mut specs: Vec<_> = snapshot.services.iter().filter_map(service_spec).collect();
    specs.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));

    let mut out: BTreeMap<Frontend, DesiredService> = BTreeMap::new();
    let mut health_checks: BTreeMap<u16, HealthCheck> = BTreeMap::new();
    for spec in specs {
        if let Some(port) = spec.health_check_node_port {
            if node.node_ports.contains(&port) {
                health_check(&mut health_checks, &spec, port, &slices, &node.name);
            } else {
                warn!(
                    namespace = %spec.namespace, name = %spec.name, port,
                    range = %format_args!("{}-{}", node.node_ports.start(), node.node_ports.end()),
                    "not serving a healthCheckNodePort outside node-port-range"
                );
            }
        }
        for (port, vip) in spec
            .ports
            .iter()
            .flat_map(|port| spec.vips.iter().map(move |vip| (port, *vip)))
        {
            // §1: each family's frontends take that family's slices only.
            let family = IpFamily::of(&vip);
            let mut endpoints = slices.endpoints(
                &spec.namespace,
                &spec.name,
                &port.name,
                port.protocol,
                family,
            );
            derive_hints(&mut endpoints, spec.traffic_distribution);
            for (kind, frontend) in frontends_of(&spec, port, vip, node) {
                // §2.5: ClusterIP traffic follows iTP, the external destinations eTP.
                let local_only = if kind.is_external() {
                    spec.external_local
                } else {
                    spec.local_only
                };
                if let Some(first) = out.get(&frontend) {
                    warn!(
                        namespace = %spec.namespace, name = %spec.name, frontend = %frontend,
                        owner = %format_args!("{}/{}", first.namespace, first.name),
                        "skipping Service port whose frontend another Service already serves"
                    );
                    continue;
                }
                let (backends, has_any_endpoints) = select_backends(&endpoints, node, local_only);
                out.insert(
                    frontend,
                    DesiredService {
                        namespace: spec.namespace.clone(),
                        name: spec.name.clone(),
                        port_name: port.name.clone(),
                        frontend,
                        kind,
                        local_only,
                        backends,
                        has_any_endpoints,
                        affinity_timeout_secs: spec.affinity_timeout_secs,
                        // §1: source ranges are the load balancer's, its IPs only, each
                        // family checked against its own.
                        source_ranges: if kind == FrontendKind::LoadBalancer {
                            spec.source_ranges_for(family)
                        } else {
                            None
                        },
                        algorithm: spec.algorithm,
                    },
                );
            }
        }
    }
    Desired {
        services: out.into_values().collect(),
        health_checks: health_checks.into_values().collect(),
    }
}

/// Adds `spec`'s health check on `port`, unless an earlier Service has that port.
fn health_check(
    checks: &mut BTreeMap<u16, HealthCheck>,
    spec: &ServiceSpec,
    port: u16,
    slices: &SliceIndex<'_>,
    node_name: &str,
) {
    if let Some(first) = checks.get(&port) {
        warn!(
            namespace = %spec.namespace, name = %spec.name, port,
            owner = %format_args!("{}/{}", first.namespace, first.name),
            "skipping healthCheckNodePort another Service already uses"
        );
        return;
    }
    // By address, as kube-proxy counts: one pod behind two ports is one endpoint. Each family
    // counts its own (a dual-stack pod has an address in each); the larger count answers, so
    // that a Service whose slices of one family lag behind is not reported empty.
    let local_ready = spec
        .vips
        .iter()
        .map(|vip| {
            let ready: BTreeSet<IpAddr> = spec
                .ports
                .iter()
                .flat_map(|p| {
                    slices.endpoints(
                        &spec.namespace,
                        &spec.name,
                        &p.name,
                        p.protocol,
                        IpFamily::of(vip),
                    )
                })
                .filter(|ep| ep.ready && ep.node_name.as_deref() == Some(node_name))
                .map(|ep| ep.addr)
                .collect();
            ready.len()
        })
        .max()
        .unwrap_or(0);
    checks.insert(
        port,
        HealthCheck {
            namespace: spec.namespace.clone(),
            name: spec.name.clone(),
            port,
            local_ready,
        },
    );
}

/// Every frontend of one Service port in the family of its ClusterIP `vip` on this node: the
/// ClusterIP, the node port on each node address, each external IP and each load-balancer IP
/// (the last two on the Service port), all of `vip`'s family.
fn frontends_of(
    spec: &ServiceSpec,
    port: &ServicePortSpec,
    vip: IpAddr,
    node: &ThisNode,
) -> Vec<(FrontendKind, Frontend)> {
    let family = IpFamily::of(&vip);
    let on = |vip: IpAddr, port_number: u16| Frontend {
        vip,
        port: port_number,
        protocol: port.protocol,
    };
    let same_family = move |addr: &&IpAddr| IpFamily::of(addr) == family;
    let mut frontends = vec![(FrontendKind::ClusterIp, on(vip, port.port))];
    // Nothing outside the cluster's node-port range is touched: a port there belongs to the
    // node's own services (kube-proxy relies on the apiserver never allocating one).
    let node_port = port.node_port.filter(|node_port| {
        let inside = node.node_ports.contains(node_port);
        if !inside {
            warn!(
                namespace = %spec.namespace, name = %spec.name, port = %port.name,
                node_port = *node_port,
                range = %format_args!("{}-{}", node.node_ports.start(), node.node_ports.end()),
                "not serving a nodePort outside node-port-range"
            );
        }
        inside
    });
    if let Some(node_port) = node_port {
        frontends.extend(
            node.addresses
                .iter()
                .filter(same_family)
                .map(|addr| (FrontendKind::NodePort, on(*addr, node_port))),
        );
    }
    frontends.extend(
        spec.external_ips
            .iter()
            .filter(same_family)
            .map(|ip| (FrontendKind::ExternalIp, on(*ip, port.port))),
    );
    frontends.extend(
        spec.load_balancer_ips
            .iter()
            .filter(same_family)
            .map(|ip| (FrontendKind::LoadBalancer, on(*ip, port.port))),
    );
    frontends
}

/// §2: the active set, the terminating (drain-only) set, and hasAny; `local_only` selects the
/// local set (§2.3) instead of the cluster set.
fn select_backends(
    endpoints: &[Endpoint],
    node: &ThisNode,
    local_only: bool,
) -> (Vec<DesiredBackend>, bool) {
    let node_name = node.name.as_str();
    // An endpoint without `nodeName` (a hand-written slice: an address outside the cluster, or
    // a host-network process) is remote unless its address is this node's own.
    let is_local = |ep: &Endpoint| match ep.node_name.as_deref() {
        Some(name) => name == node_name,
        None => node.addresses.contains(&ep.addr),
    };
    let serving_terminating = |ep: &Endpoint| ep.serving && ep.terminating;
    let has_any = endpoints
        .iter()
        .any(|ep| ep.ready || serving_terminating(ep));

    // The local set: only this node's endpoints, and no topology (§2.3).
    let candidates: Vec<&Endpoint> = endpoints
        .iter()
        .filter(|ep| !local_only || is_local(ep))
        .collect();
    let ready: Vec<&Endpoint> = candidates.iter().copied().filter(|ep| ep.ready).collect();
    let mut active: Vec<&Endpoint> = if local_only {
        ready
    } else {
        filter_by_hints(ready, node_name, node.zone.as_deref())
    };
    if active.is_empty() {
        // KEP-1669: with nothing ready, serving+terminating endpoints take new flows.
        active = candidates
            .iter()
            .copied()
            .filter(|ep| serving_terminating(ep))
            .collect();
    }
    let draining = candidates
        .iter()
        .copied()
        .filter(|ep| serving_terminating(ep) && !active.iter().any(|a| std::ptr::eq(*a, *ep)));

    let backend = |ep: &Endpoint, state| DesiredBackend {
        addr: ep.addr,
        port: ep.port,
        state,
        remote: !is_local(ep),
    };
    let mut backends: Vec<DesiredBackend> = active
        .iter()
        .map(|ep| backend(ep, BackendState::Active))
        .collect();
    backends.extend(draining.map(|ep| backend(ep, BackendState::Terminating)));
    backends.sort_by_key(|b| (b.state, b.addr, b.port));
    (backends, has_any)
}

/// The topology mode (§2.1), decided from the ready endpoints only: PreferSameNode when every
/// one has node hints and at least one names this node; else PreferSameZone on the same rule
/// with zone hints and this node's zone (none known: never); else hints are ignored entirely,
/// with no partial filtering. The result is never empty when `ready` is not.
fn filter_by_hints<'e>(
    ready: Vec<&'e Endpoint>,
    node_name: &str,
    zone: Option<&str>,
) -> Vec<&'e Endpoint> {
    let names_node = |ep: &&Endpoint| {
        ep.node_hints
            .as_ref()
            .is_some_and(|h| h.iter().any(|n| n == node_name))
    };
    if ready.iter().all(|ep| ep.node_hints.is_some()) && ready.iter().any(names_node) {
        return ready.into_iter().filter(names_node).collect();
    }
    let Some(zone) = zone else {
        return ready;
    };
    let names_zone = |ep: &&Endpoint| {
        ep.zone_hints
            .as_ref()
            .is_some_and(|h| h.iter().any(|z| z == zone))
    };
    if ready.iter().all(|ep| ep.zone_hints.is_some()) && ready.iter().any(names_zone) {
        return ready.into_iter().filter(names_zone).collect();
    }
    ready
}

/// The EndpointSlice controller's hints for `trafficDistribution`, for endpoints that carry
/// none: a zone hint naming the endpoint's own `zone` (PreferClose, PreferSameZone), and for
/// PreferSameNode also a node hint naming its `nodeName`. On a cluster the controller has
/// written them already, so this only fills in slices it does not manage: the file source's,
/// custom ones. An endpoint without a zone gets no zone hint, which (§2.1) makes the Service
/// ignore zone hints altogether, as the controller's omission does.
fn derive_hints(endpoints: &mut [Endpoint], distribution: TrafficDistribution) {
    if distribution == TrafficDistribution::Any {
        return;
    }
    for ep in endpoints {
        if ep.node_hints.is_some() || ep.zone_hints.is_some() {
            continue;
        }
        ep.zone_hints = ep.zone.clone().map(|zone| vec![zone]);
        if distribution == TrafficDistribution::PreferSameNode {
            ep.node_hints = ep.node_name.clone().map(|node| vec![node]);
        }
    }
}
