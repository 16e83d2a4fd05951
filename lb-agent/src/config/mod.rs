//! lb-agent's configuration: every option resolved from its sources into one typed
//! [`AgentConfig`], and the runtime changes `lbctl config set` may make.
//!
//! # Precedence
//!
//! For each option the first of these that sets it wins:
//!
//! 1. the flag, `--KEY VALUE`;
//! 2. the environment variable, `LB_KEY` (and, for `node-name`, `NODE_NAME`);
//! 3. the file `KEY` in `--config-dir DIR` (which itself comes only from 1 or 2);
//! 4. the default in the table of `options.rs`.
//!
//! Whichever source a value comes from, it is validated the same way, and a bad value is an
//! error naming the key, the source and the accepted values. An unknown file in the config
//! directory is a warning (an agent rolled back to an older version must survive a key the
//! newer one added), and so is a flag or variable that overrides a different value there.
//!
//! [`Sources`] records where each value came from, for `lbctl config view` and for the agent's
//! watch of the config directory (`agent/config_watch.rs`), which applies live options from it
//! unless a flag or variable pins them.

pub mod dir;
pub mod options;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

use clap::{Arg, ArgAction, Command};

pub use options::{AgentConfig, NoBackendResponse, OptionKey, OptionValue, PortRange};
use options::{OptionSpec, RawValues};

/// Errors resolving or changing the configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line does not parse (or asks for `--help`).
    #[error(transparent)]
    Args(#[from] clap::Error),
    /// No option has this key.
    #[error("unknown option `{key}`{origin}; known options: {known}")]
    UnknownKey {
        /// The key as given.
        key: String,
        /// Where it was given, as ` (in …)`, or empty.
        origin: String,
        /// Every key.
        known: String,
    },
    /// A value the option does not accept.
    #[error("invalid value `{value}` for `{key}`{origin}: expected {accepted}")]
    InvalidValue {
        /// The option.
        key: &'static str,
        /// The value as given.
        value: String,
        /// Where it was given, as ` (from …)`, or empty.
        origin: String,
        /// What the option accepts.
        accepted: String,
    },
    /// The option cannot change while the agent runs.
    #[error("option `{key}` cannot change at runtime; restart lb-agent with --{key}")]
    NotLive {
        /// The option.
        key: &'static str,
    },
    /// No node name was given and the host name cannot be read.
    #[error("cannot determine the node name; set --node-name or NODE_NAME")]
    NodeName {
        /// Why the host name is unavailable.
        #[source]
        source: std::io::Error,
    },
    /// The config directory cannot be read.
    #[error(transparent)]
    Dir(#[from] dir::Error),
}

/// A validated runtime change, from `lbctl config set`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LiveChange {
    /// `bpf-lb-external-clusterip`.
    ExternalClusterIp(bool),
    /// `service-no-backend-response`.
    NoBackendResponse(NoBackendResponse),
}

impl LiveChange {
    /// The option's key.
    pub fn key(self) -> &'static str {
        match self {
            Self::ExternalClusterIp(_) => OptionKey::ExternalClusterIp.key(),
            Self::NoBackendResponse(_) => OptionKey::NoBackendResponse.key(),
        }
    }

    /// The value as `config view` prints it and the config directory stores it.
    pub fn value(self) -> String {
        match self {
            Self::ExternalClusterIp(on) => on.to_string(),
            Self::NoBackendResponse(response) => response.to_raw(),
        }
    }

    /// Applies the change to a configuration.
    pub fn apply(self, config: &mut AgentConfig) {
        match self {
            Self::ExternalClusterIp(on) => config.external_cluster_ip = on,
            Self::NoBackendResponse(response) => config.no_backend_response = response,
        }
    }
}

/// lb-agent's command line, built from the option table. Flags only: environment variables
/// and the config directory are read by [`AgentConfig::from_args`], so that precedence is
/// decided in one place.
pub fn command() -> Command {
    let mut cmd = Command::new("lb-agent")
        .version(env!("CARGO_PKG_VERSION"))
        .about("lb's node agent: programs the eBPF load balancer from Services and EndpointSlices")
        .after_help(
            "Each option is also read from its environment variable and from the file KEY in \
             --config-dir; precedence: flag > environment > config-dir file > default.",
        );
    for spec in options::specs() {
        let mut help = format!("{} [env: {}", spec.help, spec.env);
        if let Some(alias) = spec.env_alias {
            help.push_str(&format!(", {alias}"));
        }
        help.push(']');
        if !spec.default.is_empty() {
            help.push_str(&format!(" [default: {}]", spec.default));
        }
        if spec.live {
            help.push_str(" [live]");
        }
        cmd = cmd.arg(
            Arg::new(spec.key)
                .long(spec.key)
                .value_name(spec.value_name)
                .action(ArgAction::Set)
                .help(help),
        );
    }
    // An action, not an option: it has no environment variable or config-dir file, so it is
    // not in the option table (`lbctl config` must never see it).
    cmd.arg(
        Arg::new(UNINSTALL)
            .long(UNINSTALL)
            .action(ArgAction::SetTrue)
            .help(
                "remove every link, program and pin lb created under --bpf-root, then exit \
                 (stop the agent first)",
            ),
    )
}

/// The `--uninstall` flag.
pub const UNINSTALL: &str = "uninstall";

/// What lb-agent was asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Run the agent until SIGTERM.
    Run,
    /// `--uninstall`: remove what lb installed, then exit.
    Uninstall,
}

/// Where an option's value in effect comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// `--KEY`.
    Flag,
    /// An environment variable.
    Env(&'static str),
    /// The config directory (in a cluster: the ConfigMap).
    ConfigDir,
    /// The table's default (or derived at start).
    Default,
    /// `lbctl config set` without a config directory to persist to.
    SetNotPersisted,
}

impl Source {
    /// Whether the value was fixed at start by a flag or variable, which beat the config dir.
    pub fn pins(&self) -> bool {
        matches!(self, Self::Flag | Self::Env(_))
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Flag => f.write_str("flag"),
            Self::Env(var) => write!(f, "env {var}"),
            Self::ConfigDir => f.write_str("config-dir"),
            Self::Default => f.write_str("default"),
            Self::SetNotPersisted => f.write_str("config set (not persisted)"),
        }
    }
}

/// Where each option's value comes from, and what the config directory says of options a
/// flag or variable overrides.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sources {
    /// By option; an option missing here is shown as `default`.
    pub by_key: BTreeMap<OptionKey, Source>,
    /// The config directory's value of an option that a flag or variable overrides with
    /// another value.
    pub overridden: BTreeMap<OptionKey, String>,
}

impl Sources {
    /// Where `key`'s value comes from.
    pub fn source(&self, key: OptionKey) -> Source {
        self.by_key.get(&key).cloned().unwrap_or(Source::Default)
    }
}

/// A resolved configuration, with where each value came from and what to warn about once
/// logging is set up.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The configuration.
    pub config: AgentConfig,
    /// What the command line asks for.
    pub action: Action,
    /// Where each value came from.
    pub sources: Sources,
    /// Warnings (unknown keys in the config dir, flags overriding it) to log at start.
    pub warnings: Vec<String>,
}

/// Where a raw value came from, for error messages.
enum Origin {
    Flag,
    Env(&'static str),
    ConfigDir(PathBuf),
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Flag => f.write_str("flag"),
            Self::Env(var) => write!(f, "environment variable {var}"),
            Self::ConfigDir(path) => write!(f, "config file {}", path.display()),
            Self::Default => f.write_str("default"),
        }
    }
}

impl AgentConfig {
    /// Parses the process's arguments and environment; `--help`, `--version` and usage
    /// errors print and exit as clap does.
    pub fn parse() -> Result<Resolved, Error> {
        match Self::resolve(std::env::args_os(), |var| std::env::var(var).ok()) {
            Err(Error::Args(err)) => err.exit(),
            other => other,
        }
    }

    /// Resolves every option as [`AgentConfig::from_args_with_action`] does, keeping where
    /// each value came from and the warnings to log.
    pub fn resolve<I, T>(args: I, env: impl Fn(&str) -> Option<String>) -> Result<Resolved, Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let matches = command().try_get_matches_from(args)?;
        let action = if matches.get_flag(UNINSTALL) {
            Action::Uninstall
        } else {
            Action::Run
        };
        let (config, sources, warnings) = Self::from_matches(&matches, env)?;
        Ok(Resolved {
            config,
            action,
            sources,
            warnings,
        })
    }

    /// Resolves every option from `args` (including the program name), `env` and the config
    /// directory, in the precedence documented on this module, and the action the command
    /// line asks for.
    pub fn from_args_with_action<I, T>(
        args: I,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(Self, Action), Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        Self::resolve(args, env).map(|resolved| (resolved.config, resolved.action))
    }

    /// [`AgentConfig::from_args_with_action`] for callers that only run the agent.
    pub fn from_args<I, T>(args: I, env: impl Fn(&str) -> Option<String>) -> Result<Self, Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        Self::from_args_with_action(args, env).map(|(config, _action)| config)
    }

    fn from_matches(
        matches: &clap::ArgMatches,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(Self, Sources, Vec<String>), Error> {
        let mut sources = Sources::default();
        let mut warnings = Vec::new();
        let from_flag_or_env = |spec: &OptionSpec| -> Option<(String, Origin)> {
            if let Some(value) = matches.get_one::<String>(spec.key) {
                return Some((value.trim().to_owned(), Origin::Flag));
            }
            [Some(spec.env), spec.env_alias]
                .into_iter()
                .flatten()
                .find_map(|var| env(var).map(|value| (value.trim().to_owned(), Origin::Env(var))))
        };

        let config_dir_spec = OptionKey::ConfigDir.spec();
        let dir_values = match from_flag_or_env(config_dir_spec) {
            Some((dir, origin)) if !dir.is_empty() => {
                check(config_dir_spec, &dir, &origin)?;
                let dir = PathBuf::from(dir);
                let values = dir::read(&dir)?;
                for key in values.keys() {
                    if OptionKey::lookup(key).is_none() {
                        warnings.push(unknown_key_warning(key, &dir));
                    }
                }
                Some((dir, values))
            }
            _ => None,
        };

        let mut raw = RawValues::new();
        for &id in OptionKey::ALL {
            let spec = id.spec();
            let (value, origin) = from_flag_or_env(spec)
                .or_else(|| {
                    let (dir, values) = dir_values.as_ref()?;
                    // The directory cannot point at another directory.
                    if id == OptionKey::ConfigDir {
                        return None;
                    }
                    let value = values.get(spec.key)?;
                    Some((value.clone(), Origin::ConfigDir(dir.join(spec.key))))
                })
                .unwrap_or_else(|| (spec.default.to_owned(), Origin::Default));
            // An empty value means "derive it" for options whose default is empty.
            if !(value.is_empty() && spec.default.is_empty()) {
                check(spec, &value, &origin)?;
            }
            let source = match origin {
                Origin::Flag => Source::Flag,
                Origin::Env(var) => Source::Env(var),
                Origin::ConfigDir(_) => Source::ConfigDir,
                Origin::Default => Source::Default,
            };
            if source.pins()
                && let Some((dir, values)) = &dir_values
                && let Some(in_dir) = values.get(spec.key)
                && *in_dir != value
                && id != OptionKey::ConfigDir
            {
                warnings.push(format!(
                    "`{}` is `{value}` from the {source}, which overrides `{in_dir}` in config \
                     directory {}; drop the {source} to follow the config directory",
                    spec.key,
                    dir.display()
                ));
                sources.overridden.insert(id, in_dir.clone());
            }
            sources.by_key.insert(id, source);
            raw.insert(id, value);
        }
        Ok((Self::from_raw(&raw)?, sources, warnings))
    }
}

/// The warning for a file in the config directory that names no option.
pub fn unknown_key_warning(key: &str, dir: &std::path::Path) -> String {
    format!(
        "ignoring unknown option `{key}` in config directory {} (from a newer lb, or a typo); \
         known options: {}",
        dir.display(),
        options::known_keys()
    )
}

fn check(spec: &'static OptionSpec, value: &str, origin: &Origin) -> Result<(), Error> {
    if spec.kind.is_valid(value) {
        Ok(())
    } else {
        Err(Error::InvalidValue {
            key: spec.key,
            value: value.to_owned(),
            origin: format!(" (from {origin})"),
            accepted: spec.kind.accepted(),
        })
    }
}

/// Validates `lbctl config set KEY VALUE`: the key must exist and be live, the value valid.
pub fn parse_live(key: &str, value: &str) -> Result<LiveChange, Error> {
    let Some(id) = OptionKey::lookup(key) else {
        return Err(Error::UnknownKey {
            key: key.to_owned(),
            origin: String::new(),
            known: options::known_keys(),
        });
    };
    let spec = id.spec();
    if !spec.live {
        return Err(Error::NotLive { key: spec.key });
    }
    let value = value.trim();
    let invalid = || Error::InvalidValue {
        key: spec.key,
        value: value.to_owned(),
        origin: String::new(),
        accepted: spec.kind.accepted(),
    };
    if !spec.kind.is_valid(value) {
        return Err(invalid());
    }
    match id {
        OptionKey::ExternalClusterIp => options::parse_bool(value)
            .map(LiveChange::ExternalClusterIp)
            .ok_or_else(invalid),
        OptionKey::NoBackendResponse => NoBackendResponse::from_raw(value)
            .map(LiveChange::NoBackendResponse)
            .ok_or_else(invalid),
        // Every live option has a `LiveChange` (unit-tested); the others were refused above.
        _ => Err(Error::NotLive { key: spec.key }),
    }
}

/// Every option as `key -> value`, rendered as the config directory would store it.
pub fn view(config: &AgentConfig) -> BTreeMap<String, String> {
    config
        .to_raw()
        .into_iter()
        .map(|(id, value)| (id.key().to_owned(), value))
        .collect()
}

/// Every option with its value and source, sorted by key, as `lbctl config view` shows them.
pub fn entries(config: &AgentConfig, sources: &Sources) -> Vec<lb_api::proto::ConfigEntry> {
    let mut entries: Vec<_> = config
        .to_raw()
        .into_iter()
        .map(|(id, value)| lb_api::proto::ConfigEntry {
            key: id.key().to_owned(),
            value,
            source: sources.source(id).to_string(),
            overridden_config_dir_value: sources.overridden.get(&id).cloned(),
        })
        .collect();
    entries.sort_by(|a, b| a.key.cmp(&b.key));
    entries
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::SourceSpec;
    use std::collections::HashMap;

    fn resolve(args: &[&str], env: &[(&str, &str)]) -> Result<AgentConfig, Error> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let argv = std::iter::once("lb-agent").chain(args.iter().copied());
        AgentConfig::from_args(argv, |var| env.get(var).cloned())
    }

    fn temp_dir(name: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("lb-config-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        path
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let config = resolve(&["--node-name", "n1"], &[]).expect("resolve");
        assert_eq!(
            config,
            AgentConfig {
                source: SourceSpec::Kube,
                devices: vec![],
                pod_devices: vec![],
                node_name: "n1".into(),
                node_ip: None,
                node_ipv6: None,
                bpf_root: "/sys/fs/bpf/lb".into(),
                socket: "/var/run/lb/lb.sock".into(),
                config_dir: None,
                metrics_address: Some("127.0.0.1:9963".parse().expect("addr")),
                external_cluster_ip: false,
                no_backend_response: NoBackendResponse::Reject,
                bpf_lb_sock: false,
                cgroup_root: "/sys/fs/cgroup".into(),
                ct_max_entries: 262_144,
                ct_any_max_entries: 262_144,
                ct_timeout_regular_tcp: 21_600,
                ct_timeout_regular_tcp_syn: 60,
                ct_timeout_regular_tcp_fin: 10,
                ct_timeout_regular_any: 60,
                ct_timeout_service_tcp: 21_600,
                ct_timeout_service_tcp_grace: 60,
                ct_timeout_service_any: 60,
                conntrack_gc_interval: 300,
                full_sync_interval: 60,
                lb_algorithm: crate::model::LbAlgorithm::Random,
                lb_algorithm_annotation: false,
                maglev_table_size: 16_381,
                maglev_hash_seed: crate::sync::maglev::Seed::default(),
                lb_map_max: 131_072,
                snat_port_range: PortRange {
                    min: 61_000,
                    max: 65_535,
                },
                node_zone: None,
                node_port_range: options::NodePortRange {
                    min: 30_000,
                    max: 32_767,
                },
                log_level: tracing::Level::INFO,
            }
        );
    }

    #[test]
    fn flag_beats_env_beats_config_dir_beats_default() {
        let dir = temp_dir("precedence");
        std::fs::write(dir.join("bpf-lb-external-clusterip"), "true\n").expect("write");
        std::fs::write(dir.join("log-level"), "debug").expect("write");
        std::fs::write(dir.join("devices"), "eth9").expect("write");
        let dir_str = dir.display().to_string();
        let env = [
            ("LB_CONFIG_DIR", dir_str.as_str()),
            ("LB_LOG_LEVEL", "trace"),
            ("LB_DEVICES", "eth1,eth2"),
            ("NODE_NAME", "from-downward-api"),
        ];

        let config = resolve(&["--devices", "eth0"], &env).expect("resolve");
        assert_eq!(config.devices, ["eth0"], "flag beats env and dir");
        assert_eq!(config.log_level, tracing::Level::TRACE, "env beats dir");
        assert!(config.external_cluster_ip, "dir beats default");
        assert_eq!(config.bpf_root, PathBuf::from("/sys/fs/bpf/lb"), "default");
        assert_eq!(config.node_name, "from-downward-api", "NODE_NAME alias");
        assert_eq!(config.config_dir, Some(dir.clone()));

        let config = resolve(&[], &[("LB_NODE_NAME", "a"), ("NODE_NAME", "b")]).expect("resolve");
        assert_eq!(config.node_name, "a", "LB_NODE_NAME beats NODE_NAME");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_bad_value_names_the_key_the_source_and_the_accepted_values() {
        let err = resolve(&["--bpf-lb-external-clusterip", "maybe"], &[]).expect_err("bad");
        assert_eq!(
            err.to_string(),
            "invalid value `maybe` for `bpf-lb-external-clusterip` (from flag): expected `true` or `false`"
        );
        let err = resolve(&[], &[("LB_BPF_CT_MAX_ENTRIES", "12")]).expect_err("bad");
        assert_eq!(
            err.to_string(),
            "invalid value `12` for `bpf-ct-max-entries` (from environment variable LB_BPF_CT_MAX_ENTRIES): expected an integer from 1024 to 16777216"
        );
    }

    #[test]
    fn an_unknown_file_in_the_config_dir_is_a_warning_and_the_rest_applies() {
        let dir = temp_dir("unknown");
        std::fs::write(dir.join("bpf-lb-external-clusterIP"), "true").expect("write");
        std::fs::write(dir.join("log-level"), "debug").expect("write");
        let argv = [
            "lb-agent",
            "--node-name=n1",
            "--config-dir",
            &dir.display().to_string(),
        ];
        let resolved = AgentConfig::resolve(argv, |_| None).expect("resolves");
        assert_eq!(resolved.config.log_level, tracing::Level::DEBUG);
        assert_eq!(
            resolved.sources.source(OptionKey::LogLevel),
            Source::ConfigDir
        );
        assert_eq!(resolved.warnings.len(), 1, "{:?}", resolved.warnings);
        assert!(
            resolved.warnings[0].starts_with(&format!(
                "ignoring unknown option `bpf-lb-external-clusterIP` in config directory {} (from a newer lb, or a typo); known options: source, devices,",
                dir.display()
            )),
            "{:?}",
            resolved.warnings
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sources_name_flag_env_dir_default_and_a_flag_overriding_the_dir_is_a_warning() {
        let dir = temp_dir("sources");
        std::fs::write(dir.join("bpf-lb-external-clusterip"), "true").expect("write");
        std::fs::write(dir.join("log-level"), "debug").expect("write");
        let argv = [
            "lb-agent",
            "--node-name=n1",
            "--bpf-lb-external-clusterip=false",
            "--config-dir",
            &dir.display().to_string(),
        ];
        let resolved =
            AgentConfig::resolve(argv, |var| (var == "LB_DEVICES").then(|| "eth0".to_owned()))
                .expect("resolves");
        let sources = &resolved.sources;
        assert_eq!(sources.source(OptionKey::ExternalClusterIp), Source::Flag);
        assert_eq!(
            sources.source(OptionKey::Devices),
            Source::Env("LB_DEVICES")
        );
        assert_eq!(sources.source(OptionKey::LogLevel), Source::ConfigDir);
        assert_eq!(sources.source(OptionKey::BpfRoot), Source::Default);
        assert_eq!(
            sources
                .overridden
                .get(&OptionKey::ExternalClusterIp)
                .map(String::as_str),
            Some("true")
        );
        assert_eq!(
            resolved.warnings,
            [format!(
                "`bpf-lb-external-clusterip` is `false` from the flag, which overrides `true` in \
                 config directory {}; drop the flag to follow the config directory",
                dir.display()
            )]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_bad_value_in_the_config_dir_names_the_file() {
        let dir = temp_dir("bad-value");
        std::fs::write(dir.join("bpf-lb-external-clusterip"), "yes\n").expect("write");
        let err = resolve(&["--config-dir", &dir.display().to_string()], &[]).expect_err("bad");
        assert_eq!(
            err.to_string(),
            format!(
                "invalid value `yes` for `bpf-lb-external-clusterip` (from config file {}/bpf-lb-external-clusterip): expected `true` or `false`",
                dir.display()
            )
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn version_prints_the_crate_version() {
        let err = command()
            .try_get_matches_from(["lb-agent", "--version"])
            .expect_err("--version exits");
        assert_eq!(err.kind(), clap::error::ErrorKind::DisplayVersion);
        assert_eq!(
            err.to_string(),
            format!("lb-agent {}\n", env!("CARGO_PKG_VERSION"))
        );
    }

    /// The README's `lb-agent` synopsis names every flag (the table below it is generated).
    #[test]
    fn readme_synopsis_names_every_flag() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
        let readme = std::fs::read_to_string(&path).expect("read README.md");
        let synopsis = readme
            .split("```\nlb-agent ")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("README.md has a ```lb-agent … ``` synopsis");
        let flags = options::specs()
            .map(|spec| format!("--{}", spec.key))
            .chain(["--uninstall", "--version", "--help"].map(str::to_owned));
        for flag in flags {
            assert!(
                synopsis
                    .split(|c: char| c.is_whitespace() || c == '[' || c == ']' || c == '|')
                    .any(|word| word == flag),
                "README.md's lb-agent synopsis lacks {flag}:\n{synopsis}"
            );
        }
    }

    #[test]
    fn an_unknown_flag_is_a_usage_error() {
        assert!(matches!(
            resolve(&["--bpf-lb-external-cluster-ip", "true"], &[]),
            Err(Error::Args(_))
        ));
    }

    #[test]
    fn parse_live_accepts_only_live_keys_and_valid_values() {
        assert_eq!(
            parse_live("bpf-lb-external-clusterip", "true").expect("valid"),
            LiveChange::ExternalClusterIp(true)
        );
        assert_eq!(
            parse_live("bpf-lb-external-clusterip", "maybe")
                .expect_err("bad")
                .to_string(),
            "invalid value `maybe` for `bpf-lb-external-clusterip`: expected `true` or `false`"
        );
        assert_eq!(
            parse_live("log-level", "debug")
                .expect_err("not live")
                .to_string(),
            "option `log-level` cannot change at runtime; restart lb-agent with --log-level"
        );
        assert!(
            parse_live("no-such-key", "1")
                .expect_err("unknown")
                .to_string()
                .starts_with("unknown option `no-such-key`; known options: source, devices, ")
        );
    }

    #[test]
    fn view_renders_every_option_and_round_trips_through_the_flags() {
        let config = resolve(
            &[
                "--source=file:/srv/lb",
                "--devices=eth0,eth1",
                "--pod-devices=lxc*",
                "--node-name=n1",
                "--node-ip=192.168.56.2",
                "--metrics-address=",
                "--bpf-lb-external-clusterip=true",
            ],
            &[],
        )
        .expect("resolve");
        let view = view(&config);
        assert_eq!(view.len(), OptionKey::ALL.len());
        assert_eq!(view["source"], "file:/srv/lb");
        assert_eq!(view["metrics-address"], "");
        assert_eq!(config.metrics_address, None);
        let args: Vec<String> = view.iter().map(|(k, v)| format!("--{k}={v}")).collect();
        let again = resolve(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[])
            .expect("resolve view");
        assert_eq!(again, config);
    }

    #[test]
    fn every_live_option_has_a_live_change_and_no_other_does() {
        for &id in OptionKey::ALL {
            let spec = id.spec();
            let change = parse_live(spec.key, spec.default);
            if spec.live {
                let change = change.expect("a live option's default is a valid change");
                assert_eq!(change.key(), spec.key);
                assert_eq!(change.value(), spec.default);
            } else {
                assert!(matches!(change, Err(Error::NotLive { .. })), "{id}");
            }
        }
    }
}
