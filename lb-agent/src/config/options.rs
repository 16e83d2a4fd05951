//! Every option of lb-agent, defined once: its key (the `--config-dir` file name and the
//! `lbctl config` key), its flag (`--KEY`), its environment variable (`LB_` + the key in
//! SCREAMING_SNAKE), its default, whether it can change at runtime, and what values it accepts.
//!
//! Resolution and typing live in `config/mod.rs`; reading and writing the directory in
//! `config/dir.rs`.

use std::net::{Ipv4Addr, SocketAddr};

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
    /// An IPv4 address, or empty for "derive it".
    OptionalIpv4,
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
}

impl Kind {
    /// A human description of the accepted values, used in error messages.
    pub fn accepted(self) -> String {
        match self {
            Self::Source => "`kube` or `file:DIR`".into(),
            Self::Interfaces => "interface names separated by commas".into(),
            Self::Globs => "interface-name globs separated by commas".into(),
            Self::Name => "a non-empty name without whitespace".into(),
            Self::OptionalIpv4 => "an IPv4 address, or empty".into(),
            Self::Path => "an absolute path".into(),
            Self::OptionalPath => "an absolute path, or empty".into(),
            Self::OptionalListen => "IP:PORT, or empty to disable".into(),
            Self::Bool => "`true` or `false`".into(),
            Self::Count { min, max } => format!("an integer from {min} to {max}"),
            Self::LogLevel => "one of `error`, `warn`, `info`, `debug`, `trace`".into(),
        }
    }

    /// Whether `value` (already trimmed) is acceptable.
    pub fn is_valid(self, value: &str) -> bool {
        match self {
            Self::Source => {
                value == "kube"
                    || value
                        .strip_prefix("file:")
                        .is_some_and(|dir| !dir.is_empty())
            }
            Self::Interfaces | Self::Globs => split_list(value).into_iter().all(|name| {
                !name.is_empty()
                    && name.len() < 16 // IFNAMSIZ includes the NUL
                    && !name.contains(['/', ' ', '\t'])
                    && (self == Self::Globs || !name.contains(['*', '?']))
            }),
            Self::Name => !value.is_empty() && !value.contains(char::is_whitespace),
            Self::OptionalIpv4 => value.is_empty() || value.parse::<Ipv4Addr>().is_ok(),
            Self::Path => value.starts_with('/'),
            Self::OptionalPath => value.is_empty() || value.starts_with('/'),
            Self::OptionalListen => value.is_empty() || value.parse::<SocketAddr>().is_ok(),
            Self::Bool => parse_bool(value).is_some(),
            Self::Count { min, max } => {
                value.parse::<u32>().is_ok_and(|n| (min..=max).contains(&n))
            }
            Self::LogLevel => matches!(value, "error" | "warn" | "info" | "debug" | "trace"),
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

/// One option of lb-agent.
#[derive(Clone, Copy, Debug)]
pub struct OptionSpec {
    /// The key: flag `--KEY`, config-dir file `KEY`, `lbctl config set KEY`.
    pub key: &'static str,
    /// The environment variable, `LB_` + the key in SCREAMING_SNAKE.
    pub env: &'static str,
    /// A further environment variable read after `env` (Kubernetes' downward API convention).
    pub env_alias: Option<&'static str>,
    /// The value used when no source sets one; `None` when the agent derives it.
    pub default: &'static str,
    /// Whether `lbctl config set` may change it while the agent runs.
    pub live: bool,
    /// Placeholder in `--help`.
    pub value_name: &'static str,
    /// One line of `--help`.
    pub help: &'static str,
    /// What it accepts.
    pub kind: Kind,
}

/// `source`.
pub const SOURCE: &str = "source";
/// `devices`.
pub const DEVICES: &str = "devices";
/// `pod-devices`.
pub const POD_DEVICES: &str = "pod-devices";
/// `node-name`.
pub const NODE_NAME: &str = "node-name";
/// `node-ip`.
pub const NODE_IP: &str = "node-ip";
/// `bpf-root`.
pub const BPF_ROOT: &str = "bpf-root";
/// `socket`.
pub const SOCKET: &str = "socket";
/// `config-dir`.
pub const CONFIG_DIR: &str = "config-dir";
/// `metrics-address`.
pub const METRICS_ADDRESS: &str = "metrics-address";
/// `bpf-lb-external-clusterip`.
pub const EXTERNAL_CLUSTER_IP: &str = "bpf-lb-external-clusterip";
/// `bpf-ct-max-entries`.
pub const CT_MAX_ENTRIES: &str = "bpf-ct-max-entries";
/// `bpf-lb-map-max`.
pub const LB_MAP_MAX: &str = "bpf-lb-map-max";
/// `log-level`.
pub const LOG_LEVEL: &str = "log-level";

/// Every option, in `--help` order.
pub const OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        key: SOURCE,
        env: "LB_SOURCE",
        env_alias: None,
        default: "kube",
        live: false,
        value_name: "kube|file:DIR",
        help: "where Services and EndpointSlices come from",
        kind: Kind::Source,
    },
    OptionSpec {
        key: DEVICES,
        env: "LB_DEVICES",
        env_alias: None,
        default: "",
        live: false,
        value_name: "IF[,IF]",
        help: "external interfaces (from-netdev)",
        kind: Kind::Interfaces,
    },
    OptionSpec {
        key: POD_DEVICES,
        env: "LB_POD_DEVICES",
        env_alias: None,
        default: "",
        live: false,
        value_name: "GLOB[,GLOB]",
        help: "host-side pod interfaces (from-pod), including ones created later",
        kind: Kind::Globs,
    },
    OptionSpec {
        key: NODE_NAME,
        env: "LB_NODE_NAME",
        env_alias: Some("NODE_NAME"),
        // Empty means the host name, read when the configuration is resolved.
        default: "",
        live: false,
        value_name: "NAME",
        help: "this node's name, for internalTrafficPolicy Local (default: the host name)",
        kind: Kind::Name,
    },
    OptionSpec {
        key: NODE_IP,
        env: "LB_NODE_IP",
        env_alias: None,
        // Empty means the first IPv4 address of the first device, found by the datapath.
        default: "",
        live: false,
        value_name: "IPV4",
        help: "source address for SNAT (default: the first IPv4 address of the first device)",
        kind: Kind::OptionalIpv4,
    },
    OptionSpec {
        key: BPF_ROOT,
        env: "LB_BPF_ROOT",
        env_alias: None,
        default: "/sys/fs/bpf/lb",
        live: false,
        value_name: "DIR",
        help: "bpffs directory where maps are pinned",
        kind: Kind::Path,
    },
    OptionSpec {
        key: SOCKET,
        env: "LB_SOCKET",
        env_alias: None,
        default: "/var/run/lb/lb.sock",
        live: false,
        value_name: "PATH",
        help: "unix socket lbctl talks to (mode 0600)",
        kind: Kind::Path,
    },
    OptionSpec {
        key: CONFIG_DIR,
        env: "LB_CONFIG_DIR",
        env_alias: None,
        default: "",
        live: false,
        value_name: "DIR",
        help: "directory with one file per option, as a mounted ConfigMap presents it",
        kind: Kind::OptionalPath,
    },
    OptionSpec {
        key: METRICS_ADDRESS,
        env: "LB_METRICS_ADDRESS",
        env_alias: None,
        default: "127.0.0.1:9963",
        live: false,
        value_name: "IP:PORT",
        help: "where /metrics and /healthz are served; empty disables",
        kind: Kind::OptionalListen,
    },
    OptionSpec {
        key: EXTERNAL_CLUSTER_IP,
        env: "LB_BPF_LB_EXTERNAL_CLUSTERIP",
        env_alias: None,
        default: "false",
        live: true,
        value_name: "BOOL",
        help: "make ClusterIPs reachable from outside the cluster",
        kind: Kind::Bool,
    },
    OptionSpec {
        key: CT_MAX_ENTRIES,
        env: "LB_BPF_CT_MAX_ENTRIES",
        env_alias: None,
        default: "262144",
        live: false,
        value_name: "N",
        help: "capacity of the conntrack map",
        kind: Kind::Count {
            min: 1024,
            max: 16_777_216,
        },
    },
    OptionSpec {
        key: LB_MAP_MAX,
        env: "LB_BPF_LB_MAP_MAX",
        env_alias: None,
        default: "65536",
        live: false,
        value_name: "N",
        help: "capacity of the service, backend and rev-NAT maps",
        kind: Kind::Count {
            min: 1024,
            max: 16_777_216,
        },
    },
    OptionSpec {
        key: LOG_LEVEL,
        env: "LB_LOG_LEVEL",
        env_alias: None,
        default: "info",
        live: false,
        value_name: "LEVEL",
        help: "error, warn, info, debug or trace",
        kind: Kind::LogLevel,
    },
];

/// The option with this key.
pub fn lookup(key: &str) -> Option<&'static OptionSpec> {
    OPTIONS.iter().find(|spec| spec.key == key)
}

/// Every key, comma-separated, for error messages.
pub fn known_keys() -> String {
    OPTIONS
        .iter()
        .map(|spec| spec.key)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_env_var_is_lb_and_the_key_in_screaming_snake() {
        for spec in OPTIONS {
            let expected = format!("LB_{}", spec.key.to_uppercase().replace('-', "_"));
            assert_eq!(spec.env, expected, "option {}", spec.key);
        }
    }

    #[test]
    fn every_default_is_valid_or_empty_meaning_derived() {
        for spec in OPTIONS {
            assert!(
                spec.kind.is_valid(spec.default) || spec.default.is_empty(),
                "default of {}",
                spec.key
            );
        }
    }

    #[test]
    fn map_size_defaults_are_lb_commons() {
        let default = |key| lookup(key).map(|spec| spec.default);
        assert_eq!(
            default(CT_MAX_ENTRIES),
            Some(lb_common::maps::CT_MAX_ENTRIES.to_string().as_str())
        );
        assert_eq!(
            default(LB_MAP_MAX),
            Some(lb_common::maps::SERVICES_MAX_ENTRIES.to_string().as_str())
        );
    }

    #[test]
    fn keys_are_unique() {
        let mut keys: Vec<_> = OPTIONS.iter().map(|spec| spec.key).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), OPTIONS.len());
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
}
