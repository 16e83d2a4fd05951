//! Every option of lb-agent, defined once, in the [`options!`] table below: its key (the
//! `--config-dir` file name, the ConfigMap key and the `lbctl config` key), its flag (`--KEY`),
//! its environment variable (`LB_` + the key in SCREAMING_SNAKE), its default, whether it can
//! change at runtime, what values it accepts, its `--help` line, its README row, and the
//! [`AgentConfig`] field it becomes.
//!
//! The table generates [`OptionKey`] (one variant per option; [`OptionKey::spec`] is an
//! exhaustive match, so naming an option cannot miss), [`AgentConfig`], the typing of resolved
//! values and their rendering for `lbctl config view`. Resolution and precedence live in
//! `config/mod.rs`; reading and writing the directory in `config/dir.rs`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use crate::{k8s::SourceSpec, model::LbAlgorithm, sync::maglev};

/// What values an option accepts; each kind validates a raw string and names what it accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `kube` or `file:DIR`.
    Source,
    /// A comma-separated list of interface names (may be empty).
    Interfaces,
    /// A comma-separated list of interface-name globs (`*` and `?`; may be empty).
    Globs,
    /// A non-empty name without whitespace.
    Name,
    /// A name without whitespace, or empty for "none".
    OptionalName,
    /// An IPv4 address, or empty for "derive it".
    OptionalIpv4,
    /// An IPv6 address, or empty for "derive it".
    OptionalIpv6,
    /// An absolute path.
    Path,
    /// An absolute path, or empty for "none".
    OptionalPath,
    /// `IP:PORT`, or empty to disable.
    OptionalListen,
    /// `true` or `false`.
    Bool,
    /// An integer in `min..=max`.
    Count {
        /// Smallest accepted value.
        min: u32,
        /// Largest accepted value.
        max: u32,
    },
    /// A `tracing` level.
    LogLevel,
    /// `reject` or `drop`.
    NoBackendResponse,
    /// `MIN-MAX`, two ports with MIN ≤ MAX, MIN at least 1024.
    PortRange,
    /// `MIN-MAX` (or Cilium's `MIN,MAX`), two ports with 1 ≤ MIN ≤ MAX.
    NodePortRange,
    /// `random` or `maglev`.
    LbAlgorithm,
    /// One of Cilium's Maglev table sizes (primes).
    MaglevTableSize,
    /// 12 bytes in base64.
    MaglevSeed,
}

impl Kind {
    /// A human description of the accepted values, used in error messages.
    pub fn accepted(self) -> String {
        match self {
            Self::Source => "`kube` or `file:DIR`".into(),
            Self::Interfaces => "interface names separated by commas".into(),
            Self::Globs => "interface-name globs separated by commas".into(),
            Self::Name => "a non-empty name without whitespace".into(),
            Self::OptionalName => "a name without whitespace, or empty".into(),
            Self::OptionalIpv4 => "an IPv4 address, or empty".into(),
            Self::OptionalIpv6 => "an IPv6 address, or empty".into(),
            Self::Path => "an absolute path".into(),
            Self::OptionalPath => "an absolute path, or empty".into(),
            Self::OptionalListen => "IP:PORT, or empty to disable".into(),
            Self::Bool => "`true` or `false`".into(),
            Self::Count { min, max } => format!("an integer from {min} to {max}"),
            Self::LogLevel => "one of `error`, `warn`, `info`, `debug`, `trace`".into(),
            Self::NoBackendResponse => "`reject` or `drop`".into(),
            Self::PortRange => "MIN-MAX, ports from 1024 to 65535 with MIN <= MAX".into(),
            Self::NodePortRange => {
                "MIN-MAX (or MIN,MAX), ports from 1 to 65535 with MIN <= MAX".into()
            }
            Self::LbAlgorithm => "`random` or `maglev`".into(),
            Self::MaglevTableSize => format!("one of {:?}", maglev::TABLE_SIZES),
            Self::MaglevSeed => "12 bytes in base64 (16 characters)".into(),
        }
    }

    /// Whether `value` (already trimmed) is acceptable.
    pub fn is_valid(self, value: &str) -> bool {
        match self {
            Self::Source => value.parse::<SourceSpec>().is_ok(),
            Self::Interfaces | Self::Globs => split_list(value).into_iter().all(|name| {
                !name.is_empty()
                    && name.len() < 16 // IFNAMSIZ includes the NUL
                    && !name.contains(['/', ' ', '\t'])
                    && (self == Self::Globs || !name.contains(['*', '?']))
            }),
            Self::Name => !value.is_empty() && !value.contains(char::is_whitespace),
            Self::OptionalName => !value.contains(char::is_whitespace),
            Self::OptionalIpv4 => value.is_empty() || value.parse::<Ipv4Addr>().is_ok(),
            Self::OptionalIpv6 => value.is_empty() || value.parse::<Ipv6Addr>().is_ok(),
            Self::Path => value.starts_with('/'),
            Self::OptionalPath => value.is_empty() || value.starts_with('/'),
            Self::OptionalListen => value.is_empty() || value.parse::<SocketAddr>().is_ok(),
            Self::Bool => parse_bool(value).is_some(),
            Self::Count { min, max } => {
                value.parse::<u32>().is_ok_and(|n| (min..=max).contains(&n))
            }
            Self::LogLevel => matches!(value, "error" | "warn" | "info" | "debug" | "trace"),
            Self::NoBackendResponse => NoBackendResponse::from_raw(value).is_some(),
            Self::PortRange => PortRange::from_raw(value).is_some(),
            Self::NodePortRange => NodePortRange::from_raw(value).is_some(),
            Self::LbAlgorithm => LbAlgorithm::from_raw(value).is_some(),
            Self::MaglevTableSize => value
                .parse::<u32>()
                .is_ok_and(|m| maglev::table_size(m).is_ok()),
            Self::MaglevSeed => value.parse::<maglev::Seed>().is_ok(),
        }
    }
}

/// The items of a comma-separated list, trimmed; an empty string is an empty list, and an empty
/// item (`a,,b`) stays so that validation can reject it.
pub fn split_list(value: &str) -> Vec<&str> {
    if value.trim().is_empty() {
        Vec::new()
    } else {
        value.split(',').map(str::trim).collect()
    }
}

/// `true`/`false`, the only spellings accepted (as Cilium's ConfigMap values).
pub fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

/// An inclusive range of ports, `MIN-MAX` (host byte order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    /// First port.
    pub min: u16,
    /// Last port.
    pub max: u16,
}

impl PortRange {
    /// Whether the two ranges share a port.
    pub fn overlaps(self, other: PortRange) -> bool {
        self.min <= other.max && other.min <= self.max
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.min, self.max)
    }
}

/// Ports below 1024 are privileged services' (and 0 is no port).
impl OptionValue for PortRange {
    fn from_raw(raw: &str) -> Option<Self> {
        let (min, max) = raw.split_once('-')?;
        let min: u16 = min.trim().parse().ok()?;
        let max: u16 = max.trim().parse().ok()?;
        (1024 <= min && min <= max).then_some(Self { min, max })
    }
    fn to_raw(&self) -> String {
        self.to_string()
    }
}

/// The cluster's node-port range, `MIN-MAX` inclusive (host byte order): the apiserver's
/// `--service-node-port-range`, Cilium's `node-port-range`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodePortRange {
    /// First port.
    pub min: u16,
    /// Last port.
    pub max: u16,
}

impl fmt::Display for NodePortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.min, self.max)
    }
}

/// `MIN-MAX` as kube-apiserver writes it, or `MIN,MAX` as Cilium's ConfigMap does.
impl OptionValue for NodePortRange {
    fn from_raw(raw: &str) -> Option<Self> {
        let (min, max) = raw.split_once('-').or_else(|| raw.split_once(','))?;
        let min: u16 = min.trim().parse().ok()?;
        let max: u16 = max.trim().parse().ok()?;
        (1 <= min && min <= max).then_some(Self { min, max })
    }
    fn to_raw(&self) -> String {
        self.to_string()
    }
}

/// One option of lb-agent, as the table declares it.
#[derive(Clone, Copy, Debug)]
pub struct OptionSpec {
    /// The key: flag `--KEY`, config-dir file and ConfigMap key `KEY`, `lbctl config set KEY`.
    pub key: &'static str,
    /// The environment variable, `LB_` + the key in SCREAMING_SNAKE.
    pub env: &'static str,
    /// A further environment variable read after `env` (Kubernetes' downward API convention).
    pub env_alias: Option<&'static str>,
    /// The value used when no source sets one; empty when the agent derives it or has none.
    pub default: &'static str,
    /// What an empty default stands for, in the README (`host name`); `None` when nothing.
    pub derived: Option<&'static str>,
    /// Whether `lbctl config set` may change it while the agent runs.
    pub live: bool,
    /// Placeholder in `--help`.
    pub value_name: &'static str,
    /// One line of `--help`.
    pub help: &'static str,
    /// The README's "meaning" cell (Markdown).
    pub doc: &'static str,
    /// What it accepts.
    pub kind: Kind,
}

/// A resolved, validated raw value turned into its [`AgentConfig`] field, and back into the text
/// `lbctl config view` prints and the config directory stores.
pub trait OptionValue: Sized {
    /// The typed value; `None` if `raw` does not parse (validation has already run, so this
    /// means the option's [`Kind`] and its field's type disagree).
    fn from_raw(raw: &str) -> Option<Self>;
    /// The value as text; `from_raw(&v.to_raw())` gives `v` back.
    fn to_raw(&self) -> String;
}

impl OptionValue for SourceSpec {
    fn from_raw(raw: &str) -> Option<Self> {
        raw.parse().ok()
    }
    fn to_raw(&self) -> String {
        self.to_string()
    }
}

impl OptionValue for Vec<String> {
    fn from_raw(raw: &str) -> Option<Self> {
        Some(split_list(raw).into_iter().map(str::to_owned).collect())
    }
    fn to_raw(&self) -> String {
        self.join(",")
    }
}

impl OptionValue for String {
    fn from_raw(raw: &str) -> Option<Self> {
        Some(raw.to_owned())
    }
    fn to_raw(&self) -> String {
        self.clone()
    }
}

impl OptionValue for PathBuf {
    fn from_raw(raw: &str) -> Option<Self> {
        Some(PathBuf::from(raw))
    }
    fn to_raw(&self) -> String {
        self.display().to_string()
    }
}

impl OptionValue for Ipv4Addr {
    fn from_raw(raw: &str) -> Option<Self> {
        raw.parse().ok()
    }
    fn to_raw(&self) -> String {
        self.to_string()
    }
}

impl OptionValue for Ipv6Addr {
    fn from_raw(raw: &str) -> Option<Self> {
        raw.parse().ok()
    }
    fn to_raw(&self) -> String {
        self.to_string()
    }
}

impl OptionValue for SocketAddr {
    fn from_raw(raw: &str) -> Option<Self> {
        raw.parse().ok()
    }
    fn to_raw(&self) -> String {
        self.to_string()
    }
}

impl OptionValue for bool {
    fn from_raw(raw: &str) -> Option<Self> {
        parse_bool(raw)
    }
    fn to_raw(&self) -> String {
        self.to_string()
    }
}

impl OptionValue for u32 {
    fn from_raw(raw: &str) -> Option<Self> {
        raw.parse().ok()
    }
    fn to_raw(&self) -> String {
        self.to_string()
    }
}

/// What a new flow to a Service without endpoints gets (Cilium's `service-no-backend-response`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoBackendResponse {
    /// ICMP port unreachable from the VIP: `connect()` fails at once with ECONNREFUSED, as
    /// with kube-proxy.
    Reject,
    /// Dropped (counted as 158): the client waits for its timeout.
    Drop,
}

impl OptionValue for NoBackendResponse {
    fn from_raw(raw: &str) -> Option<Self> {
        match raw {
            "reject" => Some(Self::Reject),
            "drop" => Some(Self::Drop),
            _ => None,
        }
    }
    fn to_raw(&self) -> String {
        match self {
            Self::Reject => "reject",
            Self::Drop => "drop",
        }
        .to_owned()
    }
}

impl OptionValue for LbAlgorithm {
    fn from_raw(raw: &str) -> Option<Self> {
        Self::parse(raw)
    }
    fn to_raw(&self) -> String {
        self.as_str().to_owned()
    }
}

impl OptionValue for maglev::Seed {
    fn from_raw(raw: &str) -> Option<Self> {
        raw.parse().ok()
    }
    fn to_raw(&self) -> String {
        self.to_base64()
    }
}

impl OptionValue for tracing::Level {
    fn from_raw(raw: &str) -> Option<Self> {
        raw.parse().ok()
    }
    fn to_raw(&self) -> String {
        self.to_string().to_lowercase()
    }
}

/// Empty is `None`: the option is off, or the agent derives the value later.
impl<T: OptionValue> OptionValue for Option<T> {
    fn from_raw(raw: &str) -> Option<Self> {
        if raw.is_empty() {
            Some(None)
        } else {
            T::from_raw(raw).map(Some)
        }
    }
    fn to_raw(&self) -> String {
        self.as_ref().map(T::to_raw).unwrap_or_default()
    }
}

/// Every option's resolved and validated text, by option.
pub type RawValues = BTreeMap<OptionKey, String>;

/// The table's language: one block per option; see the table below for the fields. An option
/// whose empty value the agent fills in at resolution names the function with `derive_with`.
macro_rules! options {
    (@some) => { None };
    (@some $value:literal) => { Some($value) };
    (@typed $ty:ty, $id:expr, $raw:expr) => { typed::<$ty>($id, $raw)? };
    (@typed $ty:ty, $id:expr, $raw:expr, $derive:path) => {
        if $raw.is_empty() { $derive()? } else { typed::<$ty>($id, $raw)? }
    };
    ($(
        $variant:ident => $field:ident: $ty:ty {
            key: $key:literal,
            env: $env:literal,
            $(env_alias: $alias:literal,)?
            default: $default:literal,
            $(derived: $derived:literal,)?
            $(derive_with: $derive:path,)?
            live: $live:literal,
            value_name: $value_name:literal,
            kind: $kind:expr,
            help: $help:literal,
            doc: $doc:literal,
        }
    )*) => {
        /// One option of lb-agent; [`OptionKey::spec`] is its table entry.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum OptionKey {
            $(
                #[doc = concat!("`", $key, "`.")]
                $variant,
            )*
        }

        impl OptionKey {
            /// Every option, in `--help` order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),*];

            /// The option's table entry.
            pub const fn spec(self) -> &'static OptionSpec {
                match self {
                    $(Self::$variant => &OptionSpec {
                        key: $key,
                        env: $env,
                        env_alias: options!(@some $($alias)?),
                        default: $default,
                        derived: options!(@some $($derived)?),
                        live: $live,
                        value_name: $value_name,
                        help: $help,
                        doc: $doc,
                        kind: $kind,
                    },)*
                }
            }
        }

        /// lb-agent's resolved configuration: one field per option of the table.
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub struct AgentConfig {
            $(
                #[doc = concat!("`", $key, "`: ", $help, ".")]
                pub $field: $ty,
            )*
        }

        impl AgentConfig {
            /// Types resolved and validated raw values (one per option).
            pub(super) fn from_raw(raw: &RawValues) -> Result<Self, super::Error> {
                let get = |id: OptionKey| raw.get(&id).map(String::as_str).unwrap_or_default();
                Ok(Self {
                    $($field: options!(
                        @typed $ty, OptionKey::$variant, get(OptionKey::$variant) $(, $derive)?
                    ),)*
                })
            }

            /// Every option's value as text, as the config directory would store it.
            pub fn to_raw(&self) -> RawValues {
                [$((OptionKey::$variant, OptionValue::to_raw(&self.$field))),*]
                    .into_iter()
                    .collect()
            }
        }
    };
}

options! {
    Source => source: SourceSpec {
        key: "source",
        env: "LB_SOURCE",
        default: "kube",
        live: false,
        value_name: "kube|file:DIR",
        kind: Kind::Source,
        help: "where Services and EndpointSlices come from",
        doc: "`kube` (in-cluster config or KUBECONFIG) or `file:DIR` (YAML/JSON as `kubectl get -o yaml` prints it; re-read within a second of a change)",
    }
    Devices => devices: Vec<String> {
        key: "devices",
        env: "LB_DEVICES",
        default: "",
        live: false,
        value_name: "IF[,IF]",
        kind: Kind::Interfaces,
        help: "external interfaces (from-netdev)",
        doc: "external interfaces: `from_netdev`",
    }
    PodDevices => pod_devices: Vec<String> {
        key: "pod-devices",
        env: "LB_POD_DEVICES",
        default: "",
        live: false,
        value_name: "GLOB[,GLOB]",
        kind: Kind::Globs,
        help: "host-side pod interfaces (from-pod), including ones created later",
        doc: "globs of host-side pod interfaces: `from_pod`, also on interfaces created later",
    }
    NodeName => node_name: String {
        key: "node-name",
        env: "LB_NODE_NAME",
        env_alias: "NODE_NAME",
        default: "",
        derived: "host name",
        derive_with: host_name,
        live: false,
        value_name: "NAME",
        kind: Kind::Name,
        help: "this node's name, for internalTrafficPolicy Local (default: the host name)",
        doc: "this node, for `internalTrafficPolicy: Local` and remote backends",
    }
    NodeIp => node_ip: Option<Ipv4Addr> {
        key: "node-ip",
        env: "LB_NODE_IP",
        default: "",
        // `None`: the datapath takes the first IPv4 address of the first device.
        derived: "first IPv4 of the first device",
        live: false,
        value_name: "IPV4",
        kind: Kind::OptionalIpv4,
        help: "source address for SNAT (default: the first IPv4 address of the first device)",
        doc: "source address of SNATed packets",
    }
    NodeIpv6 => node_ipv6: Option<Ipv6Addr> {
        key: "node-ipv6",
        env: "LB_NODE_IPV6",
        default: "",
        // `None`: the first global IPv6 address of the first device, if it has one.
        derived: "first global IPv6 of the first device",
        live: false,
        value_name: "IPV6",
        kind: Kind::OptionalIpv6,
        help: "IPv6 source address for SNAT and IPv6 node-port address (default: the first global IPv6 address of the first device; none: IPv6 node ports are not served)",
        doc: "IPv6 source address of SNATed packets and address of IPv6 node ports; without one, IPv6 node ports are not served and IPv6 flows that need SNAT are dropped (165)",
    }
    NodeZone => node_zone: Option<String> {
        key: "node-zone",
        env: "LB_NODE_ZONE",
        default: "",
        derived: "the Node's zone label (kube source)",
        live: false,
        value_name: "ZONE",
        kind: Kind::OptionalName,
        help: "this node's topology.kubernetes.io/zone, for zone hints (default: the Node object's label with --source kube, none with a file source)",
        doc: "this node's zone, which EndpointSlice zone hints (`trafficDistribution: PreferClose`) are matched against; with `--source kube` the Node's `topology.kubernetes.io/zone` label unless set (see docs/operations.md)",
    }
    BpfRoot => bpf_root: PathBuf {
        key: "bpf-root",
        env: "LB_BPF_ROOT",
        default: "/sys/fs/bpf/lb",
        live: false,
        value_name: "DIR",
        kind: Kind::Path,
        help: "bpffs directory where maps are pinned",
        doc: "must be on bpffs; maps and links are pinned under `<bpf-root>/v5/`",
    }
    Socket => socket: PathBuf {
        key: "socket",
        env: "LB_SOCKET",
        default: "/var/run/lb/lb.sock",
        live: false,
        value_name: "PATH",
        kind: Kind::Path,
        help: "unix socket lbctl talks to (mode 0660; config set needs root or the agent's uid)",
        doc: "lbctl's unix socket (mode 0660: owner and group connect; `config set` needs uid 0 or the agent's uid)",
    }
    ConfigDir => config_dir: Option<PathBuf> {
        key: "config-dir",
        env: "LB_CONFIG_DIR",
        default: "",
        live: false,
        value_name: "DIR",
        kind: Kind::OptionalPath,
        help: "directory with one file per option, as a mounted ConfigMap presents it",
        doc: "one file per key, as a mounted ConfigMap presents it",
    }
    MetricsAddress => metrics_address: Option<SocketAddr> {
        key: "metrics-address",
        env: "LB_METRICS_ADDRESS",
        default: "127.0.0.1:9963",
        live: false,
        value_name: "IP:PORT",
        kind: Kind::OptionalListen,
        help: "where /metrics and the probes (/healthz, /readyz) are served, at most 32 connections at once; empty disables",
        doc: "Prometheus `/metrics`, liveness `/healthz`, readiness `/readyz`; at most 32 connections at once; empty disables. Loopback by default; the DaemonSet binds the node's InternalIP (`$(HOST_IP):9963`), where Prometheus scrapes and the kubelet probes",
    }
    ExternalClusterIp => external_cluster_ip: bool {
        key: "bpf-lb-external-clusterip",
        env: "LB_BPF_LB_EXTERNAL_CLUSTERIP",
        default: "false",
        live: true,
        value_name: "BOOL",
        kind: Kind::Bool,
        help: "make ClusterIPs reachable from outside the cluster",
        doc: "ClusterIPs reachable from outside the cluster",
    }
    NoBackendResponse => no_backend_response: NoBackendResponse {
        key: "service-no-backend-response",
        env: "LB_SERVICE_NO_BACKEND_RESPONSE",
        default: "reject",
        live: true,
        value_name: "reject|drop",
        kind: Kind::NoBackendResponse,
        help: "what a new flow to a Service without endpoints gets: ICMP port unreachable, or a silent drop",
        doc: "a Service without endpoints: `reject` (ICMP port unreachable: connections are refused at once, as with kube-proxy) or `drop`",
    }
    BpfLbSock => bpf_lb_sock: bool {
        key: "bpf-lb-sock",
        env: "LB_BPF_LB_SOCK",
        default: "false",
        live: false,
        value_name: "BOOL",
        kind: Kind::Bool,
        help: "socket-level load balancing for the host's network namespace (cgroup connect4, sendmsg4, recvmsg4, getpeername4 on --cgroup-root)",
        doc: "socket-level load balancing: host processes and hostNetwork pods reach every frontend (their sockets are rewritten at `connect`/`sendmsg`; UDP answers read as from the VIP)",
    }
    CgroupRoot => cgroup_root: PathBuf {
        key: "cgroup-root",
        env: "LB_CGROUP_ROOT",
        default: "/sys/fs/cgroup",
        live: false,
        value_name: "DIR",
        kind: Kind::Path,
        help: "cgroup v2 directory the socket programs attach to (its `unified` directory on a v1/v2 hybrid host)",
        doc: "cgroup v2 directory for `bpf-lb-sock`; when it is not cgroup v2 itself, its `unified` directory (v1/v2 hybrid hosts)",
    }
    CtMaxEntries => ct_max_entries: u32 {
        key: "bpf-ct-max-entries",
        env: "LB_BPF_CT_MAX_ENTRIES",
        default: "262144",
        live: false,
        value_name: "N",
        kind: Kind::Count { min: 1024, max: 16_777_216 },
        help: "capacity of the TCP conntrack map",
        doc: "conntrack capacity for TCP flows (two entries per flow); a change resizes the pinned map at the next start, flows kept",
    }
    CtAnyMaxEntries => ct_any_max_entries: u32 {
        key: "bpf-ct-global-any-max",
        env: "LB_BPF_CT_GLOBAL_ANY_MAX",
        default: "262144",
        live: false,
        value_name: "N",
        kind: Kind::Count { min: 1024, max: 16_777_216 },
        help: "capacity of the conntrack map of non-TCP flows (UDP)",
        doc: "conntrack capacity for non-TCP flows (two entries per flow); `--bpf-ct-max-entries` sizes the TCP map; a change resizes the pinned map at the next start, flows kept",
    }
    CtTimeoutRegularTcp => ct_timeout_regular_tcp: u32 {
        key: "bpf-ct-timeout-regular-tcp",
        env: "LB_BPF_CT_TIMEOUT_REGULAR_TCP",
        default: "21600",
        live: false,
        value_name: "SECONDS",
        kind: Kind::Count { min: 1, max: 604_800 },
        help: "idle lifetime (s) of an established TCP flow's reply entry",
        doc: "idle lifetime in seconds of an established TCP flow's reply entry",
    }
    CtTimeoutRegularTcpSyn => ct_timeout_regular_tcp_syn: u32 {
        key: "bpf-ct-timeout-regular-tcp-syn",
        env: "LB_BPF_CT_TIMEOUT_REGULAR_TCP_SYN",
        default: "60",
        live: false,
        value_name: "SECONDS",
        kind: Kind::Count { min: 1, max: 604_800 },
        help: "idle lifetime (s) of a TCP flow's entries until its handshake is done",
        doc: "idle lifetime in seconds of a TCP flow until its handshake is done",
    }
    CtTimeoutRegularTcpFin => ct_timeout_regular_tcp_fin: u32 {
        key: "bpf-ct-timeout-regular-tcp-fin",
        env: "LB_BPF_CT_TIMEOUT_REGULAR_TCP_FIN",
        default: "10",
        live: false,
        value_name: "SECONDS",
        kind: Kind::Count { min: 1, max: 604_800 },
        help: "idle lifetime (s) of a closing TCP flow's reply entry",
        doc: "idle lifetime in seconds of a closing TCP flow's reply entry (after FIN or RST)",
    }
    CtTimeoutRegularAny => ct_timeout_regular_any: u32 {
        key: "bpf-ct-timeout-regular-any",
        env: "LB_BPF_CT_TIMEOUT_REGULAR_ANY",
        default: "60",
        live: false,
        value_name: "SECONDS",
        kind: Kind::Count { min: 1, max: 604_800 },
        help: "idle lifetime (s) of a non-TCP flow's reply entry",
        doc: "idle lifetime in seconds of a non-TCP flow's reply entry",
    }
    CtTimeoutServiceTcp => ct_timeout_service_tcp: u32 {
        key: "bpf-ct-timeout-service-tcp",
        env: "LB_BPF_CT_TIMEOUT_SERVICE_TCP",
        default: "21600",
        live: false,
        value_name: "SECONDS",
        kind: Kind::Count { min: 1, max: 604_800 },
        help: "idle lifetime (s) of an established TCP flow's service entry",
        doc: "idle lifetime in seconds of an established TCP flow's service entry",
    }
    CtTimeoutServiceTcpGrace => ct_timeout_service_tcp_grace: u32 {
        key: "bpf-ct-timeout-service-tcp-grace",
        env: "LB_BPF_CT_TIMEOUT_SERVICE_TCP_GRACE",
        default: "60",
        live: false,
        value_name: "SECONDS",
        kind: Kind::Count { min: 1, max: 604_800 },
        help: "idle lifetime (s) of a closing TCP flow's service entry",
        doc: "idle lifetime in seconds of a closing TCP flow's service entry: a new connection from the same port after it chooses a backend afresh",
    }
    CtTimeoutServiceAny => ct_timeout_service_any: u32 {
        key: "bpf-ct-timeout-service-any",
        env: "LB_BPF_CT_TIMEOUT_SERVICE_ANY",
        default: "60",
        live: false,
        value_name: "SECONDS",
        kind: Kind::Count { min: 1, max: 604_800 },
        help: "idle lifetime (s) of a non-TCP flow's service entry",
        doc: "idle lifetime in seconds of a non-TCP flow's service entry",
    }
    ConntrackGcInterval => conntrack_gc_interval: u32 {
        key: "conntrack-gc-interval",
        env: "LB_CONNTRACK_GC_INTERVAL",
        default: "300",
        live: false,
        value_name: "SECONDS",
        kind: Kind::Count { min: 1, max: 86_400 },
        help: "seconds between passes of the conntrack GC",
        doc: "seconds between conntrack GC passes (expired entries deleted)",
    }
    FullSyncInterval => full_sync_interval: u32 {
        key: "full-sync-interval",
        env: "LB_FULL_SYNC_INTERVAL",
        default: "60",
        live: false,
        value_name: "SECONDS",
        kind: Kind::Count { min: 1, max: 86_400 },
        help: "seconds between full syncs that read the maps back and repair drift",
        doc: "seconds between full syncs: the maps are read back and any entry changed behind the agent's back is repaired (`lb_sync_repairs_total`)",
    }
    LbAlgorithm => lb_algorithm: LbAlgorithm {
        key: "bpf-lb-algorithm",
        env: "LB_BPF_LB_ALGORITHM",
        default: "random",
        live: false,
        value_name: "random|maglev",
        kind: Kind::LbAlgorithm,
        help: "how new flows choose a backend: at random, or by Maglev consistent hashing (the same backend on every node)",
        doc: "backend selection for new flows: `random`, or `maglev` (consistent hashing of the 5-tuple: every node picks the same backend, and removing one of N backends moves about 1/N of new flows), see docs/datapath.md",
    }
    LbAlgorithmAnnotation => lb_algorithm_annotation: bool {
        key: "bpf-lb-algorithm-annotation",
        env: "LB_BPF_LB_ALGORITHM_ANNOTATION",
        default: "false",
        live: false,
        value_name: "BOOL",
        kind: Kind::Bool,
        help: "honour a Service's service.cilium.io/lb-algorithm annotation (random or maglev)",
        doc: "a Service's `service.cilium.io/lb-algorithm: random|maglev` annotation overrides `bpf-lb-algorithm`",
    }
    MaglevTableSize => maglev_table_size: u32 {
        key: "bpf-lb-maglev-table-size",
        env: "LB_BPF_LB_MAGLEV_TABLE_SIZE",
        default: "16381",
        live: false,
        value_name: "M",
        kind: Kind::MaglevTableSize,
        help: "entries of each Maglev table, a prime of Cilium's list; keep it above 100 x a Service's backends",
        doc: "entries per Maglev table: 251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521 or 131071 (4 bytes each per frontend); above 100 × a Service's backends",
    }
    MaglevHashSeed => maglev_hash_seed: maglev::Seed {
        key: "bpf-lb-maglev-hash-seed",
        env: "LB_BPF_LB_MAGLEV_HASH_SEED",
        default: "JLfvgnHc2kaSUFaI",
        live: false,
        value_name: "BASE64",
        kind: Kind::MaglevSeed,
        help: "seed of Maglev's hashes, 12 bytes in base64; the same on every node",
        doc: "seed of Maglev's hashes (12 bytes, base64); must be the same on every node, or their tables differ",
    }
    LbMapMax => lb_map_max: u32 {
        key: "bpf-lb-map-max",
        env: "LB_BPF_LB_MAP_MAX",
        // 10k services of 5 backends take 70k entries of the services map (a master entry,
        // 5 slots and the VIP's wildcard entry each).
        default: "131072",
        live: false,
        value_name: "N",
        kind: Kind::Count { min: 1024, max: 16_777_216 },
        help: "capacity of the services, backends and rev-NAT maps; a change resizes the pinned maps, entries kept",
        doc: "services/backends/rev-NAT map capacity (each frontend takes a master entry and one per backend, each VIP one more: 100k Services × 10 backends need 1310720); a change resizes the pinned maps at the next start, entries and connections kept",
    }
    SnatPortRange => snat_port_range: PortRange {
        key: "snat-port-range",
        env: "LB_SNAT_PORT_RANGE",
        default: "61000-65535",
        live: false,
        value_name: "MIN-MAX",
        kind: Kind::PortRange,
        help: "source ports of SNATed flows; keep them out of the host's ephemeral ports (net.ipv4.ip_local_reserved_ports)",
        doc: "source ports of SNATed flows (per remote backend); must not overlap `net.ipv4.ip_local_port_range` unless reserved in `net.ipv4.ip_local_reserved_ports`, see docs/datapath.md",
    }
    NodePortRange => node_port_range: NodePortRange {
        key: "node-port-range",
        env: "LB_NODE_PORT_RANGE",
        default: "30000-32767",
        live: false,
        value_name: "MIN-MAX",
        kind: Kind::NodePortRange,
        help: "the cluster's nodePort range (kube-apiserver --service-node-port-range); node ports outside it are not served",
        doc: "the cluster's `nodePort` range, as kube-apiserver's `--service-node-port-range` (Cilium's `MIN,MAX` is accepted too); a Service's `nodePort` or `healthCheckNodePort` outside it is not served (a warning names the Service), so lb touches no other port",
    }
    LogLevel => log_level: tracing::Level {
        key: "log-level",
        env: "LB_LOG_LEVEL",
        default: "info",
        live: false,
        value_name: "LEVEL",
        kind: Kind::LogLevel,
        help: "error, warn, info, debug or trace",
        doc: "`error`, `warn`, `info`, `debug` or `trace`",
    }
}

impl OptionKey {
    /// The option with this key (`bpf-lb-external-clusterip`), if there is one.
    pub fn lookup(key: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|id| id.key() == key)
    }

    /// The key: flag `--KEY`, config-dir file and ConfigMap key `KEY`.
    pub const fn key(self) -> &'static str {
        self.spec().key
    }
}

impl fmt::Display for OptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

/// Every option's table entry, in `--help` order.
pub fn specs() -> impl Iterator<Item = &'static OptionSpec> {
    OptionKey::ALL.iter().map(|id| id.spec())
}

/// The table entry of the option with this key, if there is one.
pub fn lookup(key: &str) -> Option<&'static OptionSpec> {
    OptionKey::lookup(key).map(OptionKey::spec)
}

/// Every key, comma-separated, for error messages.
pub fn known_keys() -> String {
    specs().map(|spec| spec.key).collect::<Vec<_>>().join(", ")
}

/// Types one validated raw value; a failure means the option's kind accepted what its field's
/// type cannot hold.
fn typed<T: OptionValue>(id: OptionKey, raw: &str) -> Result<T, super::Error> {
    T::from_raw(raw).ok_or_else(|| super::Error::InvalidValue {
        key: id.key(),
        value: raw.to_owned(),
        origin: String::new(),
        accepted: id.spec().kind.accepted(),
    })
}

/// `node-name`'s default: the host name, read when the configuration is resolved.
fn host_name() -> Result<String, super::Error> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .map_err(|source| super::Error::NodeName { source })
}

/// The README's option table (Markdown), one row per option.
pub fn readme_table() -> String {
    let mut table =
        String::from("| option | env | default | live | meaning |\n|---|---|---|---|---|\n");
    for spec in specs() {
        let env = [Some(spec.env), spec.env_alias]
            .into_iter()
            .flatten()
            .map(|var| format!("`{var}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let default = match (spec.default, spec.derived) {
            ("", Some(derived)) => derived.to_owned(),
            ("", None) => String::new(),
            (default, _) => format!("`{default}`"),
        };
        let live = if spec.live { "**yes**" } else { "no" };
        let row = format!(
            "| `--{}` | {env} | {default} | {live} | {} |",
            spec.key, spec.doc
        );
        // An empty cell renders as `| |`, as a hand-written table would.
        table.push_str(&row.replace("|  |", "| |"));
        table.push('\n');
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_env_var_is_lb_and_the_key_in_screaming_snake() {
        for spec in specs() {
            let expected = format!("LB_{}", spec.key.to_uppercase().replace('-', "_"));
            assert_eq!(spec.env, expected, "option {}", spec.key);
        }
    }

    #[test]
    fn every_default_is_valid_or_empty_meaning_derived() {
        for spec in specs() {
            assert!(
                spec.kind.is_valid(spec.default) || spec.default.is_empty(),
                "default of {}",
                spec.key
            );
        }
    }

    #[test]
    fn map_size_defaults_are_lb_commons() {
        assert_eq!(
            OptionKey::CtMaxEntries.spec().default,
            lb_common::maps::CT_MAX_ENTRIES.to_string()
        );
        assert_eq!(
            OptionKey::LbMapMax.spec().default,
            lb_common::maps::SERVICES_MAX_ENTRIES.to_string()
        );
        let snat = lb_common::config::SNAT_PORT_MIN..=lb_common::config::SNAT_PORT_MAX;
        assert_eq!(
            OptionKey::SnatPortRange.spec().default,
            format!("{}-{}", snat.start(), snat.end())
        );
    }

    #[test]
    fn node_port_ranges_are_min_dash_max_or_ciliums_min_comma_max() {
        let parse = |raw: &str| NodePortRange::from_raw(raw).map(|r| r.to_raw());
        assert_eq!(parse("30000-32767").as_deref(), Some("30000-32767"));
        assert_eq!(parse("30000,32767").as_deref(), Some("30000-32767"));
        assert_eq!(parse(" 80 - 80 ").as_deref(), Some("80-80"));
        for bad in ["0-100", "32767-30000", "30000", "30000-70000", "a-b", ""] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn port_ranges_are_min_dash_max_above_1023() {
        assert_eq!(
            PortRange::from_raw("61000-65535"),
            Some(PortRange {
                min: 61_000,
                max: 65_535
            })
        );
        assert_eq!(
            PortRange::from_raw("40000-40000").map(|r| r.to_raw()),
            Some("40000-40000".into())
        );
        for bad in [
            "",
            "61000",
            "65535-61000",
            "0-100",
            "1000-2000",
            "61000-70000",
            "a-b",
        ] {
            assert!(!Kind::PortRange.is_valid(bad), "{bad:?} is refused");
        }
        let ephemeral = PortRange {
            min: 32_768,
            max: 60_999,
        };
        assert!(
            !PortRange {
                min: 61_000,
                max: 65_535
            }
            .overlaps(ephemeral)
        );
        assert!(
            PortRange {
                min: 60_999,
                max: 65_535
            }
            .overlaps(ephemeral)
        );
    }

    #[test]
    fn conntrack_defaults_are_lb_commons() {
        let lifetimes = lb_common::conntrack::CtLifetimes::DEFAULT;
        for (id, value) in [
            (
                OptionKey::CtAnyMaxEntries,
                lb_common::maps::CT_ANY_MAX_ENTRIES,
            ),
            (OptionKey::CtTimeoutRegularTcp, lifetimes.tcp),
            (OptionKey::CtTimeoutRegularTcpSyn, lifetimes.tcp_syn),
            (OptionKey::CtTimeoutRegularTcpFin, lifetimes.tcp_fin),
            (OptionKey::CtTimeoutRegularAny, lifetimes.any),
            (OptionKey::CtTimeoutServiceTcp, lifetimes.service_tcp),
            (
                OptionKey::CtTimeoutServiceTcpGrace,
                lifetimes.service_tcp_grace,
            ),
            (OptionKey::CtTimeoutServiceAny, lifetimes.service_any),
        ] {
            assert_eq!(id.spec().default, value.to_string(), "{id}");
        }
    }

    #[test]
    fn keys_are_unique_and_lookup_finds_each() {
        for &id in OptionKey::ALL {
            assert_eq!(OptionKey::lookup(id.key()), Some(id));
        }
        assert_eq!(OptionKey::lookup("bpf-lb-external-clusterIP"), None);
    }

    #[test]
    fn lists_split_on_commas_and_empty_is_empty() {
        assert!(split_list("").is_empty());
        assert_eq!(split_list("eth0, eth1"), ["eth0", "eth1"]);
        assert!(!Kind::Interfaces.is_valid("eth0,,eth1"));
        assert!(!Kind::Interfaces.is_valid("lxc*"));
        assert!(Kind::Globs.is_valid("lxc*,veth?"));
    }

    #[test]
    fn kinds_accept_and_reject() {
        assert!(Kind::Source.is_valid("file:/srv/lb"));
        assert!(!Kind::Source.is_valid("file:"));
        assert!(!Kind::Bool.is_valid("maybe"));
        assert!(!Kind::Bool.is_valid("1"));
        assert!(Kind::OptionalListen.is_valid(""));
        assert!(!Kind::OptionalListen.is_valid("localhost"));
        assert!(!Kind::Count { min: 1, max: 2 }.is_valid("3"));
    }

    #[test]
    fn every_valid_default_types_into_its_field_and_renders_back() {
        let mut raw: RawValues = OptionKey::ALL
            .iter()
            .map(|&id| (id, id.spec().default.to_owned()))
            .collect();
        raw.insert(OptionKey::NodeName, "n1".to_owned());
        let config = AgentConfig::from_raw(&raw).expect("defaults type");
        assert_eq!(config.to_raw(), raw);
    }

    const README_BEGIN: &str = "<!-- options: generated from lb-agent/src/config/options.rs -->\n";
    const README_END: &str = "<!-- end of options -->";

    /// The README's option table is this table. `LB_UPDATE_README=1 cargo test -p lb-agent
    /// readme` rewrites the README's block instead of failing.
    #[test]
    fn readme_option_table_is_generated_from_the_table() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
        let readme = std::fs::read_to_string(&path).expect("read README.md");
        let (before, rest) = readme
            .split_once(README_BEGIN)
            .unwrap_or_else(|| panic!("README.md has no line {README_BEGIN:?}"));
        let (current, after) = rest
            .split_once(README_END)
            .unwrap_or_else(|| panic!("README.md has no line {README_END:?}"));
        let expected = readme_table();
        if current == expected {
            return;
        }
        if std::env::var_os("LB_UPDATE_README").is_some() {
            let updated = format!("{before}{README_BEGIN}{expected}{README_END}{after}");
            std::fs::write(&path, updated).expect("write README.md");
            return;
        }
        let diff: Vec<String> = current
            .lines()
            .map(|line| format!("- {line}"))
            .chain(expected.lines().map(|line| format!("+ {line}")))
            .filter(|line| {
                let text = line.get(2..).unwrap_or_default();
                !(current.lines().any(|l| l == text) && expected.lines().any(|l| l == text))
            })
            .collect();
        panic!(
            "README.md's option table differs from lb-agent/src/config/options.rs \
             (- README, + table):\n{}\nregenerate it with: LB_UPDATE_README=1 cargo test -p lb-agent readme",
            diff.join("\n")
        );
    }
}
