//! Frontends: which Services lb serves and on which VIP:port/protocol.
//!
//! Owns kube-proxy's Service-side rules (k8s-semantics.md §1 "Service"): opt-out labels,
//! headless and ExternalName Services, the IPv4 VIP out of `clusterIPs`, the external
//! destinations (node ports, `externalIPs`, load-balancer ingress IPs), port protocols, the
//! traffic policies, ClientIP affinity and `healthCheckNodePort`. Endpoints are left to `endpoints.rs`.

use std::fmt;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Service;
use lb_common::proto;
use tracing::{debug, warn};

/// Label that hands a Service (and its slices) to another proxy; any value opts out.
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// Label the EndpointSlice controller puts on headless Services' slices.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// Annotation that picks a Service's backend selection (`random` or `maglev`), Cilium's; the
/// agent honours it with `bpf-lb-algorithm-annotation`, as Cilium does.
pub const LB_ALGORITHM_ANNOTATION: &str = "service.cilium.io/lb-algorithm";

/// How new flows choose a backend (`bpf-lb-algorithm`, or the annotation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LbAlgorithm {
    /// Uniformly at random among the active backends.
    Random,
    /// Maglev consistent hashing of the 5-tuple: the same backend on every node.
    Maglev,
}

impl LbAlgorithm {
    /// `random` or `maglev`, as the option and the annotation spell it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Random => "random",
            Self::Maglev => "maglev",
        }
    }

    /// The algorithm `text` names, if any.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "random" => Some(Self::Random),
            "maglev" => Some(Self::Maglev),
            _ => None,
        }
    }
}

/// Affinity timeout the apiserver defaults to for `sessionAffinity: ClientIP`.
pub const DEFAULT_AFFINITY_TIMEOUT_SECS: u32 = 10_800;

/// L4 protocol of a frontend. SCTP is not served: the datapath has no SCTP parser.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP (the Kubernetes default when `protocol` is unset).
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// The IANA protocol number, as the maps carry it.
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => proto::TCP,
            Self::Udp => proto::UDP,
        }
    }

    /// The name Kubernetes and `lbctl` use: `TCP` or `UDP` (`lb_common::proto::name`).
    pub const fn as_str(self) -> &'static str {
        match proto::name(self.number()) {
            Some(name) => name,
            // Unreachable: the assertion below proves both protocols have a name.
            None => "",
        }
    }
}

const _: () = assert!(proto::name(proto::TCP).is_some() && proto::name(proto::UDP).is_some());

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a `protocol` field names, before deciding whether lb serves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ProtocolField {
    Served(Protocol),
    Sctp,
    Unknown(String),
}

/// Reads a Service or EndpointSlice port `protocol`; unset means TCP.
pub(crate) fn protocol_field(protocol: Option<&str>) -> ProtocolField {
    match protocol.unwrap_or("TCP") {
        "TCP" => ProtocolField::Served(Protocol::Tcp),
        "UDP" => ProtocolField::Served(Protocol::Udp),
        "SCTP" => ProtocolField::Sctp,
        other => ProtocolField::Unknown(other.to_owned()),
    }
}

/// A VIP, port and protocol: what a client addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    /// The Service's IPv4 ClusterIP.
    pub vip: Ipv4Addr,
    /// The Service port (`spec.ports[].port`).
    pub port: u16,
    /// The port's protocol.
    pub protocol: Protocol,
}

impl fmt::Display for Frontend {
    /// `10.96.0.10:53/UDP`, as `lbctl service list` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.vip, self.port, self.protocol)
    }
}

/// What kind of destination a frontend is, in the words `cilium service list` uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FrontendKind {
    /// The Service's ClusterIP: reachable from pods (and from outside only with
    /// `bpf-lb-external-clusterip`).
    ClusterIp,
    /// `nodePort` on one of this node's addresses.
    NodePort,
    /// One of `spec.externalIPs`.
    ExternalIp,
    /// One of `status.loadBalancer.ingress[].ip`.
    LoadBalancer,
}

impl FrontendKind {
    /// `ClusterIP`, `NodePort`, `ExternalIPs` or `LoadBalancer`, as `lbctl service list`
    /// prints it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIp => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::ExternalIp => "ExternalIPs",
            Self::LoadBalancer => "LoadBalancer",
        }
    }

    /// True for the destinations clients outside the cluster use (k8s-semantics.md §2:
    /// `external`), which follow externalTrafficPolicy.
    pub const fn is_external(self) -> bool {
        !matches!(self, Self::ClusterIp)
    }
}

impl fmt::Display for FrontendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A client prefix of `loadBalancerSourceRanges`, host bits cleared: `10.0.0.0/8`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourceRange {
    /// The first address of the range.
    pub addr: Ipv4Addr,
    /// The prefix length, 0-32.
    pub prefix_len: u8,
}

impl SourceRange {
    /// The range of `addr/prefix_len` (host bits cleared), or `None` past /32.
    pub fn new(addr: Ipv4Addr, prefix_len: u8) -> Option<Self> {
        let host_bits = 32u32.checked_sub(u32::from(prefix_len))?;
        // A /0 shifts by 32, which `checked_shl` refuses: no network bits at all.
        let mask = u32::MAX.checked_shl(host_bits).unwrap_or(0);
        Some(Self {
            addr: Ipv4Addr::from(u32::from(addr) & mask),
            prefix_len,
        })
    }
}

impl fmt::Display for SourceRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// What one `loadBalancerSourceRanges` entry is, before deciding whether this family uses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SourceRangeField {
    V4(SourceRange),
    V6,
    Invalid,
}

/// Reads one `loadBalancerSourceRanges` entry as kube-proxy does: surrounding blanks trimmed,
/// then an `address/length` CIDR (a bare address is no CIDR).
pub(crate) fn source_range_field(text: &str) -> SourceRangeField {
    let Some((addr, len)) = text.trim().split_once('/') else {
        return SourceRangeField::Invalid;
    };
    let Ok(len) = len.parse::<u8>() else {
        return SourceRangeField::Invalid;
    };
    match addr.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(v4)) => {
            SourceRange::new(v4, len).map_or(SourceRangeField::Invalid, SourceRangeField::V4)
        }
        Ok(std::net::IpAddr::V6(_)) if len <= 128 => SourceRangeField::V6,
        _ => SourceRangeField::Invalid,
    }
}

/// `spec.trafficDistribution`: what the EndpointSlice controller turns into hints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TrafficDistribution {
    /// Unset, or a value lb does not know: no hints derived.
    Any,
    /// `PreferClose` (the deprecated alias) or `PreferSameZone`: zone hints.
    PreferSameZone,
    /// `PreferSameNode`: node hints, and zone hints for proxies that read only those.
    PreferSameNode,
}

/// One served port of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ServicePortSpec {
    pub name: String,
    pub frontend: Frontend,
    /// `nodePort`, for NodePort and LoadBalancer Services that have one.
    pub node_port: Option<u16>,
}

/// The parts of a Service the datapath needs; `None` from [`service_spec`] means "not served".
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ServiceSpec {
    pub namespace: String,
    pub name: String,
    pub ports: Vec<ServicePortSpec>,
    /// internalTrafficPolicy Local: ClusterIP traffic only to this node's endpoints.
    pub local_only: bool,
    /// externalTrafficPolicy Local: traffic to the external destinations only to this node's
    /// endpoints, with the client's address kept.
    pub external_local: bool,
    /// `spec.externalIPs` of this family.
    pub external_ips: Vec<Ipv4Addr>,
    /// Load-balancer ingress IPs of this family, those with `ipMode: Proxy` left out.
    pub load_balancer_ips: Vec<Ipv4Addr>,
    /// ClientIP affinity timeout in seconds, when affinity is on.
    pub affinity_timeout_secs: Option<u32>,
    /// `healthCheckNodePort`, for LoadBalancer Services with externalTrafficPolicy Local (the
    /// only ones kube-proxy serves it for).
    pub health_check_node_port: Option<u16>,
    /// `loadBalancerSourceRanges` of this family, for LoadBalancer Services that list any:
    /// the only clients outside the cluster their load-balancer IPs admit. `Some(empty)` when
    /// the Service lists ranges but none is a valid IPv4 one: no outside client is admitted
    /// (fail closed, rather than open to all). `None`: no ranges, every client admitted.
    pub source_ranges: Option<Vec<SourceRange>>,
    /// `trafficDistribution`, for endpoints that carry no hints (see `desired.rs`).
    pub traffic_distribution: TrafficDistribution,
    /// The `service.cilium.io/lb-algorithm` annotation, when it names an algorithm.
    pub algorithm: Option<LbAlgorithm>,
}

/// Namespace of an object; objects written without one live in `default`, as with kubectl.
pub(crate) fn namespace_of(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> &str {
    meta.namespace
        .as_deref()
        .filter(|ns| !ns.is_empty())
        .unwrap_or("default")
}

/// True when the object carries a label that tells kube-proxy (and lb) to leave it alone.
pub(crate) fn is_opted_out(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> bool {
    meta.labels
        .as_ref()
        .is_some_and(|l| l.contains_key(SERVICE_PROXY_NAME_LABEL) || l.contains_key(HEADLESS_LABEL))
}

/// Reads a Service into the frontends lb programs, or `None` when lb does not serve it.
///
/// Intentional skips (opt-out label, headless, ExternalName, IPv6-only) log at debug;
/// malformed fields log a warning naming the Service.
pub(crate) fn service_spec(svc: &Service) -> Option<ServiceSpec> {
    let namespace = namespace_of(&svc.metadata);
    let Some(name) = svc.metadata.name.as_deref().filter(|n| !n.is_empty()) else {
        warn!(namespace = %namespace, "skipping Service without metadata.name");
        return None;
    };
    if is_opted_out(&svc.metadata) {
        debug!(namespace = %namespace, name = %name, "skipping Service: opt-out label");
        return None;
    }
    let Some(spec) = svc.spec.as_ref() else {
        warn!(namespace = %namespace, name = %name, "skipping Service without spec");
        return None;
    };
    // §1: ExternalName is skipped even when a clusterIP is set (case 2).
    if spec.type_.as_deref() == Some("ExternalName") {
        debug!(namespace = %namespace, name = %name, "skipping ExternalName Service");
        return None;
    }
    let vip = vip4(spec.cluster_ips.as_deref(), spec.cluster_ip.as_deref());
    let vip = match vip {
        Vip::Headless => {
            debug!(namespace = %namespace, name = %name, "skipping headless Service");
            return None;
        }
        Vip::OtherFamily => {
            debug!(namespace = %namespace, name = %name, "skipping Service without an IPv4 ClusterIP");
            return None;
        }
        Vip::Invalid(ip) => {
            warn!(namespace = %namespace, name = %name, cluster_ip = %ip, "skipping Service with an unparseable ClusterIP");
            return None;
        }
        Vip::V4(vip) => vip,
    };

    let mut ports = Vec::new();
    for port in spec.ports.iter().flatten() {
        let port_name = port.name.clone().unwrap_or_default();
        let protocol = match protocol_field(port.protocol.as_deref()) {
            ProtocolField::Served(p) => p,
            ProtocolField::Sctp => {
                debug!(namespace = %namespace, name = %name, port = %port_name, "skipping SCTP port");
                continue;
            }
            ProtocolField::Unknown(p) => {
                warn!(namespace = %namespace, name = %name, port = %port_name, protocol = %p, "skipping Service port with an unknown protocol");
                continue;
            }
        };
        let Some(number) = u16::try_from(port.port).ok().filter(|p| *p != 0) else {
            warn!(namespace = %namespace, name = %name, port = %port_name, value = port.port, "skipping Service port out of range 1-65535");
            continue;
        };
        let node_port = match port.node_port {
            None | Some(0) => None,
            Some(value) => match u16::try_from(value) {
                Ok(node_port) => Some(node_port),
                Err(_) => {
                    warn!(namespace = %namespace, name = %name, port = %port_name, value, "ignoring nodePort out of range 1-65535");
                    None
                }
            },
        };
        ports.push(ServicePortSpec {
            name: port_name,
            frontend: Frontend {
                vip,
                port: number,
                protocol,
            },
            // Only these two types have node ports; a leftover field on a ClusterIP Service
            // (a type change the apiserver has not cleaned up) is not served.
            node_port: node_port.filter(|_| has_node_ports(spec.type_.as_deref())),
        });
    }

    let affinity_timeout_secs = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .filter(|t| *t > 0)
            .unwrap_or(DEFAULT_AFFINITY_TIMEOUT_SECS)
    });

    let external_ips = addresses4(
        spec.external_ips.iter().flatten().map(String::as_str),
        namespace,
        name,
        "externalIPs",
    );
    let load_balancer_ips = if spec.type_.as_deref() == Some("LoadBalancer") {
        let ingress = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref());
        // §1: `ipMode: Proxy` means the load balancer proxies to node ports itself, so its IP
        // must not be captured here; hostname-only entries have nothing to program.
        let ips = ingress
            .into_iter()
            .flatten()
            .filter(|i| i.ip_mode.as_deref() != Some("Proxy"))
            .filter_map(|i| i.ip.as_deref());
        addresses4(ips, namespace, name, "status.loadBalancer.ingress")
    } else {
        Vec::new()
    };

    let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
    // A cloud load balancer probes this port on every node to skip those without a local
    // endpoint; other types have no load balancer to ask, and the apiserver refuses the field
    // on them, so a leftover value is not served.
    let health_check_node_port = if external_local && spec.type_.as_deref() == Some("LoadBalancer")
    {
        match spec.health_check_node_port {
            None | Some(0) => {
                warn!(namespace = %namespace, name = %name, "LoadBalancer Service with externalTrafficPolicy Local has no healthCheckNodePort; no health check is served");
                None
            }
            Some(value) => match u16::try_from(value) {
                Ok(port) => Some(port),
                Err(_) => {
                    warn!(namespace = %namespace, name = %name, value, "ignoring healthCheckNodePort out of range 1-65535");
                    None
                }
            },
        }
    } else {
        None
    };

    let source_ranges = if spec.type_.as_deref() == Some("LoadBalancer") {
        source_ranges(
            spec.load_balancer_source_ranges.as_deref().unwrap_or(&[]),
            namespace,
            name,
        )
    } else {
        None
    };
    let algorithm = svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(LB_ALGORITHM_ANNOTATION))
        .and_then(|value| {
            let parsed = LbAlgorithm::parse(value.trim());
            if parsed.is_none() {
                warn!(namespace = %namespace, name = %name, value = %value, "ignoring {LB_ALGORITHM_ANNOTATION}: expected `random` or `maglev`");
            }
            parsed
        });

    Some(ServiceSpec {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        ports,
        local_only: spec.internal_traffic_policy.as_deref() == Some("Local"),
        external_local,
        external_ips,
        load_balancer_ips,
        affinity_timeout_secs,
        health_check_node_port,
        source_ranges,
        traffic_distribution: match spec.traffic_distribution.as_deref() {
            Some("PreferClose" | "PreferSameZone") => TrafficDistribution::PreferSameZone,
            Some("PreferSameNode") => TrafficDistribution::PreferSameNode,
            _ => TrafficDistribution::Any,
        },
        algorithm,
    })
}

/// The IPv4 `loadBalancerSourceRanges` (§1: each family keeps its own), duplicates removed;
/// `None` when the list is empty. An entry that is no CIDR is logged and skipped; if nothing
/// IPv4 is left, the empty list admits no client.
fn source_ranges(ranges: &[String], namespace: &str, name: &str) -> Option<Vec<SourceRange>> {
    if ranges.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    for text in ranges {
        match source_range_field(text) {
            SourceRangeField::V4(range) if !out.contains(&range) => out.push(range),
            SourceRangeField::V4(_) | SourceRangeField::V6 => {}
            SourceRangeField::Invalid => {
                warn!(namespace = %namespace, name = %name, value = %text, "skipping a loadBalancerSourceRanges entry that is not a CIDR");
            }
        }
    }
    if out.is_empty() {
        warn!(namespace = %namespace, name = %name, "no IPv4 loadBalancerSourceRanges entry is valid: the load-balancer IPs admit no client from outside");
    }
    out.sort();
    Some(out)
}

/// NodePort and LoadBalancer Services get node ports; the others never do.
fn has_node_ports(service_type: Option<&str>) -> bool {
    matches!(service_type, Some("NodePort" | "LoadBalancer"))
}

/// The IPv4 addresses of a list of IPs (§1: each family's proxier keeps its own); an entry
/// that is no IP at all is logged and skipped.
fn addresses4<'a>(
    ips: impl Iterator<Item = &'a str>,
    namespace: &str,
    name: &str,
    field: &str,
) -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    for ip in ips {
        match ip.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(v4)) if !out.contains(&v4) => out.push(v4),
            Ok(_) => {}
            Err(_) => {
                warn!(namespace = %namespace, name = %name, field, value = %ip, "skipping an address that is not an IP");
            }
        }
    }
    out
}

/// The outcome of looking for this datapath's VIP.
enum Vip {
    Headless,
    OtherFamily,
    Invalid(String),
    V4(Ipv4Addr),
}

/// Picks the IPv4 VIP; `clusterIPs[0]` equals `clusterIP`, so `clusterIP` is only a fallback
/// for objects written without `clusterIPs`.
fn vip4(cluster_ips: Option<&[String]>, cluster_ip: Option<&str>) -> Vip {
    let ips: Vec<&str> = match cluster_ips {
        Some(ips) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        _ => cluster_ip.into_iter().collect(),
    };
    match ips.first() {
        None | Some(&"") | Some(&"None") => return Vip::Headless,
        Some(_) => {}
    }
    let mut invalid = None;
    for ip in ips {
        match ip.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(v4)) => return Vip::V4(v4),
            Ok(std::net::IpAddr::V6(_)) => {}
            Err(_) => invalid = invalid.or(Some(ip.to_owned())),
        }
    }
    invalid.map_or(Vip::OtherFamily, Vip::Invalid)
}
