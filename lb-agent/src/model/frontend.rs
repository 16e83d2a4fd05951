//! Frontends: which Services lb serves and on which VIP:port/protocol.
//!
//! Owns kube-proxy's Service-side rules (k8s-semantics.md §1 "Service"): opt-out labels,
//! headless and ExternalName Services, the VIP of each family out of `clusterIPs` (dual-stack:
//! `ipFamilies`, `ipFamilyPolicy`), the external destinations (node ports, `externalIPs`,
//! load-balancer ingress IPs) and source ranges of the families served, port protocols, the
//! traffic policies, ClientIP affinity and `healthCheckNodePort`. Endpoints are left to `endpoints.rs`.

use std::fmt;
use std::net::IpAddr;

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

/// An address family. A dual-stack Service is served in both, each family from its own
/// ClusterIP, addresses and EndpointSlices (k8s-semantics.md §1: one proxier per family).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpFamily {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl IpFamily {
    /// The family of `addr`.
    pub const fn of(addr: &IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Self::V4,
            IpAddr::V6(_) => Self::V6,
        }
    }

    /// `IPv4` or `IPv6`, as `spec.ipFamilies` and an EndpointSlice's `addressType` spell it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        }
    }

    /// The family `text` names in `ipFamilies` or `addressType`, if any.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "IPv4" => Some(Self::V4),
            "IPv6" => Some(Self::V6),
            _ => None,
        }
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A VIP, port and protocol: what a client addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Frontend {
    /// The destination address: a ClusterIP, node address, external or load-balancer IP, of
    /// either family.
    pub vip: IpAddr,
    /// The Service port (`spec.ports[].port`).
    pub port: u16,
    /// The port's protocol.
    pub protocol: Protocol,
}

impl fmt::Display for Frontend {
    /// `10.96.0.10:53/UDP` or `[fd00::a]:53/UDP`, as `lbctl service list` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addr = std::net::SocketAddr::new(self.vip, self.port);
        write!(f, "{addr}/{}", self.protocol)
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
    /// The first address of the range (either family).
    pub addr: IpAddr,
    /// The prefix length, 0-32 (IPv4) or 0-128 (IPv6).
    pub prefix_len: u8,
}

impl SourceRange {
    /// The range of `addr/prefix_len` (host bits cleared), or `None` past the family's width.
    pub fn new(addr: IpAddr, prefix_len: u8) -> Option<Self> {
        let addr = match addr {
            IpAddr::V4(v4) => {
                let host_bits = 32u32.checked_sub(u32::from(prefix_len))?;
                // A /0 shifts by 32, which `checked_shl` refuses: no network bits at all.
                let mask = u32::MAX.checked_shl(host_bits).unwrap_or(0);
                IpAddr::from(std::net::Ipv4Addr::from(u32::from(v4) & mask))
            }
            IpAddr::V6(v6) => {
                let host_bits = 128u32.checked_sub(u32::from(prefix_len))?;
                let mask = u128::MAX.checked_shl(host_bits).unwrap_or(0);
                IpAddr::from(std::net::Ipv6Addr::from(u128::from(v6) & mask))
            }
        };
        Some(Self { addr, prefix_len })
    }

    /// The family of the range.
    pub const fn family(&self) -> IpFamily {
        IpFamily::of(&self.addr)
    }
}

impl fmt::Display for SourceRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// Reads one `loadBalancerSourceRanges` entry as kube-proxy does: surrounding blanks trimmed,
/// then an `address/length` CIDR of either family (a bare address is no CIDR); `None` when it
/// is none.
pub(crate) fn source_range_field(text: &str) -> Option<SourceRange> {
    let (addr, len) = text.trim().split_once('/')?;
    let len = len.parse::<u8>().ok()?;
    SourceRange::new(addr.parse::<IpAddr>().ok()?, len)
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

/// One served port of a Service (on each of its VIPs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ServicePortSpec {
    pub name: String,
    /// The Service port (`spec.ports[].port`).
    pub port: u16,
    pub protocol: Protocol,
    /// `nodePort`, for NodePort and LoadBalancer Services that have one.
    pub node_port: Option<u16>,
}

/// The parts of a Service the datapath needs; `None` from [`service_spec`] means "not served".
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ServiceSpec {
    pub namespace: String,
    pub name: String,
    /// The ClusterIPs served, at most one per family, in `clusterIPs` order (the first is the
    /// primary family's).
    pub vips: Vec<IpAddr>,
    pub ports: Vec<ServicePortSpec>,
    /// internalTrafficPolicy Local: ClusterIP traffic only to this node's endpoints.
    pub local_only: bool,
    /// externalTrafficPolicy Local: traffic to the external destinations only to this node's
    /// endpoints, with the client's address kept.
    pub external_local: bool,
    /// `spec.externalIPs` of the families served (those with a ClusterIP).
    pub external_ips: Vec<IpAddr>,
    /// Load-balancer ingress IPs of the families served, those with `ipMode: Proxy` left out.
    pub load_balancer_ips: Vec<IpAddr>,
    /// ClientIP affinity timeout in seconds, when affinity is on.
    pub affinity_timeout_secs: Option<u32>,
    /// `healthCheckNodePort`, for LoadBalancer Services with externalTrafficPolicy Local (the
    /// only ones kube-proxy serves it for).
    pub health_check_node_port: Option<u16>,
    /// `loadBalancerSourceRanges` of both families, for LoadBalancer Services that list any:
    /// the only clients outside the cluster their load-balancer IPs admit, each family's IPs
    /// checked against that family's ranges ([`ServiceSpec::source_ranges_for`]). `None`: no
    /// ranges, every client admitted.
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
/// Intentional skips (opt-out label, headless, ExternalName) log at debug; malformed fields
/// log a warning naming the Service.
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
    let vips = match cluster_vips(spec, namespace, name) {
        Vips::Headless => {
            debug!(namespace = %namespace, name = %name, "skipping headless Service");
            return None;
        }
        Vips::Invalid(ip) => {
            warn!(namespace = %namespace, name = %name, cluster_ip = %ip, "skipping Service with an unparseable ClusterIP");
            return None;
        }
        Vips::Served(vips) => vips,
    };
    let served = |ip: &IpAddr| vips.iter().any(|vip| IpFamily::of(vip) == IpFamily::of(ip));

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
            port: number,
            protocol,
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

    let external_ips = addresses(
        spec.external_ips.iter().flatten().map(String::as_str),
        served,
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
        addresses(ips, served, namespace, name, "status.loadBalancer.ingress")
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
            &vips,
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
        vips,
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

/// The `loadBalancerSourceRanges` of both families, duplicates removed; `None` when the list
/// is empty. An entry that is no CIDR is logged and skipped. A served family left without a
/// range of its own admits no client from outside on its load-balancer IPs: lb fails closed
/// where kube-proxy's per-family filtering would leave that family open to all.
fn source_ranges(
    ranges: &[String],
    vips: &[IpAddr],
    namespace: &str,
    name: &str,
) -> Option<Vec<SourceRange>> {
    if ranges.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    for text in ranges {
        match source_range_field(text) {
            Some(range) if !out.contains(&range) => out.push(range),
            Some(_) => {}
            None => {
                warn!(namespace = %namespace, name = %name, value = %text, "skipping a loadBalancerSourceRanges entry that is not a CIDR");
            }
        }
    }
    for family in vips.iter().map(IpFamily::of) {
        if !out.iter().any(|r| r.family() == family) {
            warn!(namespace = %namespace, name = %name, %family, "no loadBalancerSourceRanges entry of this family is valid: its load-balancer IPs admit no client from outside");
        }
    }
    out.sort();
    Some(out)
}

impl ServiceSpec {
    /// The source ranges a load-balancer IP of `family` admits: that family's ranges
    /// (`Some(empty)`: none admitted), or `None` when the Service lists none at all.
    pub(crate) fn source_ranges_for(&self, family: IpFamily) -> Option<Vec<SourceRange>> {
        self.source_ranges.as_ref().map(|ranges| {
            ranges
                .iter()
                .copied()
                .filter(|r| r.family() == family)
                .collect()
        })
    }
}

/// NodePort and LoadBalancer Services get node ports; the others never do.
fn has_node_ports(service_type: Option<&str>) -> bool {
    matches!(service_type, Some("NodePort" | "LoadBalancer"))
}

/// The addresses of a list of IPs whose family is `served` (§1: each family's proxier keeps its
/// own, and a family without a ClusterIP is not served); an entry that is no IP at all is
/// logged and skipped.
fn addresses<'a>(
    ips: impl Iterator<Item = &'a str>,
    served: impl Fn(&IpAddr) -> bool,
    namespace: &str,
    name: &str,
    field: &str,
) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for ip in ips {
        match ip.trim().parse::<IpAddr>() {
            Ok(ip) if served(&ip) && !out.contains(&ip) => out.push(ip),
            Ok(ip) => {
                debug!(namespace = %namespace, name = %name, field, value = %ip, "ignoring an address of a family the Service has no ClusterIP of");
            }
            Err(_) => {
                warn!(namespace = %namespace, name = %name, field, value = %ip, "skipping an address that is not an IP");
            }
        }
    }
    out
}

/// The outcome of reading a Service's ClusterIPs.
enum Vips {
    Headless,
    /// Not one usable ClusterIP; the first unparseable (or ruled out) one.
    Invalid(String),
    /// At most one per family, in `clusterIPs` order.
    Served(Vec<IpAddr>),
}

/// The ClusterIPs to serve (§1). `clusterIPs[0]` equals `clusterIP`, so `clusterIP` is only a
/// fallback for objects written without `clusterIPs`. Each family takes its first ClusterIP;
/// `ipFamilyPolicy: SingleStack` serves `clusterIPs[0]` alone, and when `ipFamilies` is set a
/// ClusterIP of a family it does not list is not served (the apiserver never writes either, a
/// hand-written object may). PreferDualStack and RequireDualStack serve what `clusterIPs`
/// holds: the apiserver has already applied the policy when it allocated them.
fn cluster_vips(
    spec: &k8s_openapi::api::core::v1::ServiceSpec,
    namespace: &str,
    name: &str,
) -> Vips {
    let ips: Vec<&str> = match spec.cluster_ips.as_deref() {
        Some(ips) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        _ => spec.cluster_ip.as_deref().into_iter().collect(),
    };
    let first = match ips.first() {
        None | Some(&"") | Some(&"None") => return Vips::Headless,
        Some(first) => *first,
    };
    let families: Vec<IpFamily> = spec
        .ip_families
        .iter()
        .flatten()
        .filter_map(|f| IpFamily::parse(f))
        .collect();
    let single_stack = spec.ip_family_policy.as_deref() == Some("SingleStack");
    let mut invalid = None;
    let mut vips: Vec<IpAddr> = Vec::new();
    for ip in ips {
        let Ok(vip) = ip.trim().parse::<IpAddr>() else {
            invalid = invalid.or(Some(ip.to_owned()));
            continue;
        };
        let family = IpFamily::of(&vip);
        if vips.iter().any(|v| IpFamily::of(v) == family) {
            warn!(namespace = %namespace, name = %name, cluster_ip = %vip, "ignoring a second ClusterIP of one family");
            continue;
        }
        if !families.is_empty() && !families.contains(&family) {
            warn!(namespace = %namespace, name = %name, cluster_ip = %vip, "ignoring a ClusterIP of a family spec.ipFamilies does not list");
            continue;
        }
        if single_stack && !vips.is_empty() {
            warn!(namespace = %namespace, name = %name, cluster_ip = %vip, "ignoring a second ClusterIP of a SingleStack Service");
            continue;
        }
        vips.push(vip);
    }
    if vips.is_empty() {
        // Only unparseable ones, or ones `ipFamilies` rules out: name the first.
        return Vips::Invalid(invalid.unwrap_or_else(|| first.to_owned()));
    }
    if let Some(ip) = invalid {
        warn!(namespace = %namespace, name = %name, cluster_ip = %ip, "ignoring an unparseable ClusterIP");
    }
    Vips::Served(vips)
}
