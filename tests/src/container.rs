//! The pod of `deploy/daemonset.yaml` as podman runs it on a test node: [`Deploy`] reads the
//! DaemonSet and the ConfigMap, [`run_args`] turns one of the pod's containers into `podman
//! run` arguments the way the kubelet would set the container up.
//!
//! What the kubelet takes from the manifest is taken from it here, not repeated: the security
//! context (every field it sets is translated, and a field this module does not know fails the
//! test rather than being skipped), host networking (the test node's network namespace), the
//! environment (the downward API's `spec.nodeName` and `status.hostIP` answered by the node),
//! `$(VAR)` expansion in the args, and the volume mounts with their propagation and
//! read-only flags: a hostPath is the host's own path unless the test redirects it into its
//! own directory, the ConfigMap is a directory with one file per key.
//!
//! Two things are the kubelet's defaults rather than the manifest's, and are said here: a
//! container that sets no `seccompProfile` runs Unconfined (the kubelet's default without
//! `--seccomp-default`), and podman's own extras (an init process, rlimits) stay off.
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodSpec, SecurityContext, VolumeMount};
use serde_json::Value;

/// `deploy/` of this repository.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// The manifests the agent's pod is made of.
#[derive(Debug)]
pub struct Deploy {
    /// `deploy/daemonset.yaml`.
    pub daemon_set: DaemonSet,
    /// `deploy/configmap.yaml`: the agent's `--config-dir`.
    pub config_map: ConfigMap,
}

/// Parses one manifest file holding one document.
fn parse<T: serde::de::DeserializeOwned>(file: &str) -> T {
    let path = deploy_dir().join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("read {}: {err}", path.display()));
    let mut documents: Vec<T> = lb_agent::k8s::yaml_documents(&text)
        .unwrap_or_else(|err| panic!("parse {}: {err}", path.display()));
    assert_eq!(documents.len(), 1, "{} holds one document", path.display());
    documents.remove(0)
}

impl Deploy {
    /// Reads `deploy/daemonset.yaml` and `deploy/configmap.yaml`.
    pub fn load() -> Self {
        Self {
            daemon_set: parse("daemonset.yaml"),
            config_map: parse("configmap.yaml"),
        }
    }

    /// The pod template's spec.
    pub fn pod(&self) -> &PodSpec {
        self.daemon_set
            .spec
            .as_ref()
            .and_then(|spec| spec.template.spec.as_ref())
            .expect("the DaemonSet has a pod spec")
    }

    /// The container that runs lb-agent.
    pub fn agent(&self) -> &Container {
        self.pod()
            .containers
            .iter()
            .find(|c| c.command.as_deref() == Some(&["lb-agent".to_owned()][..]))
            .expect("a container runs lb-agent")
    }

    /// How long the kubelet waits after SIGTERM before it kills the agent.
    pub fn grace_seconds(&self) -> u64 {
        let grace = self.pod().termination_grace_period_seconds.unwrap_or(30);
        u64::try_from(grace).expect("a grace period is not negative")
    }

    /// Writes the ConfigMap's keys into `dir`, one file per key, as the kubelet mounts it.
    pub fn write_config_map(&self, dir: &Path) {
        std::fs::create_dir_all(dir).expect("create the ConfigMap directory");
        for (key, value) in self.config_map.data.iter().flatten() {
            std::fs::write(dir.join(key), value).expect("write a ConfigMap key");
        }
    }
}

/// What the node under test answers where the kubelet would.
#[derive(Debug, Clone)]
pub struct Node {
    /// The network namespace that is the node's host network.
    pub netns: PathBuf,
    /// `spec.nodeName`.
    pub name: String,
    /// `status.hostIP`.
    pub host_ip: Ipv4Addr,
    /// hostPath volumes (by volume name) the test keeps in a directory of its own instead of
    /// the host's path; the others are the host's.
    pub host_paths: BTreeMap<String, PathBuf>,
    /// Where the ConfigMap's files are ([`Deploy::write_config_map`]).
    pub config_map_dir: PathBuf,
}

/// `podman run` arguments for `container` of `pod` on `node`, up to (not including) the image;
/// the container's args ([`args`]) follow the image.
pub fn run_args(pod: &PodSpec, container: &Container, node: &Node) -> Vec<String> {
    assert_eq!(
        pod.host_network,
        Some(true),
        "the pod uses host networking: the test runs it in the node's namespace"
    );
    let mut out = vec![format!("--network=ns:{}", node.netns.display())];
    out.extend(security_args(container.security_context.as_ref()));
    for (name, value) in env(container, node) {
        out.push(format!("--env={name}={value}"));
    }
    for mount in container.volume_mounts.iter().flatten() {
        out.push(volume_arg(pod, mount, node));
    }
    let command = container
        .command
        .clone()
        .expect("the container names its command");
    out.push(format!(
        "--entrypoint={}",
        serde_json::to_string(&command).expect("command as JSON")
    ));
    out
}

/// The container's args with `$(VAR)` expanded from its environment, as the kubelet does.
pub fn args(container: &Container, node: &Node) -> Vec<String> {
    let env = env(container, node);
    container
        .args
        .iter()
        .flatten()
        .map(|arg| {
            env.iter().fold(arg.clone(), |arg, (name, value)| {
                arg.replace(&format!("$({name})"), value)
            })
        })
        .collect()
}

/// The capabilities the container adds, as the manifest spells them (`BPF`, …).
pub fn added_capabilities(container: &Container) -> Vec<String> {
    container
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref())
        .and_then(|c| c.add.clone())
        .unwrap_or_default()
}

/// Linux's capabilities by number (linux/capability.h), as Kubernetes names them.
const CAPABILITIES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// The capability set of `names` as the kernel prints it in /proc/PID/status (`CapEff`).
pub fn capability_mask(names: &[String]) -> u64 {
    names.iter().fold(0, |mask, name| {
        let bare = name.strip_prefix("CAP_").unwrap_or(name);
        let bit = CAPABILITIES
            .iter()
            .position(|cap| *cap == bare)
            .unwrap_or_else(|| panic!("unknown capability {name}"));
        mask | 1 << bit
    })
}

/// The container's environment: literal values and the downward API's fields.
fn env(container: &Container, node: &Node) -> BTreeMap<String, String> {
    container
        .env
        .iter()
        .flatten()
        .map(|var| {
            let value = match (&var.value, &var.value_from) {
                (Some(value), None) => value.clone(),
                (None, Some(from)) => {
                    let field = from.field_ref.as_ref().map(|f| f.field_path.as_str());
                    match field {
                        Some("spec.nodeName") => node.name.clone(),
                        Some("status.hostIP") => node.host_ip.to_string(),
                        other => panic!("env {}: no test value for {other:?}", var.name),
                    }
                }
                other => panic!("env {}: {other:?}", var.name),
            };
            (var.name.clone(), value)
        })
        .collect()
}

/// The security context as podman flags. Every field the manifest sets is translated; one
/// that is not known here fails, so that the test never runs with less than the manifest says.
fn security_args(context: Option<&SecurityContext>) -> Vec<String> {
    let mut out = Vec::new();
    let fields = context.map_or(Value::Null, |c| {
        serde_json::to_value(c).expect("security context as JSON")
    });
    let mut seccomp = None;
    for (field, value) in fields.as_object().into_iter().flatten() {
        match (field.as_str(), value) {
            ("privileged", Value::Bool(true)) => out.push("--privileged".to_owned()),
            ("privileged", Value::Bool(false)) => {}
            ("capabilities", caps) => {
                for (key, flag) in [("drop", "--cap-drop"), ("add", "--cap-add")] {
                    for cap in caps[key].as_array().into_iter().flatten() {
                        let cap = cap.as_str().expect("a capability is a string");
                        out.push(format!("{flag}={}", podman_capability(cap)));
                    }
                }
            }
            ("allowPrivilegeEscalation", Value::Bool(allow)) => {
                if !allow {
                    out.push("--security-opt=no-new-privileges".to_owned());
                }
            }
            ("readOnlyRootFilesystem", Value::Bool(read_only)) => {
                if *read_only {
                    out.push("--read-only".to_owned());
                }
            }
            ("seccompProfile", profile) => seccomp = profile["type"].as_str().map(str::to_owned),
            (field, value) => panic!(
                "securityContext.{field}: {value}: tests/src/container.rs does not know how \
                 to run it; teach it"
            ),
        }
    }
    match seccomp.as_deref() {
        // The kubelet's default: Unconfined unless it runs with --seccomp-default.
        None | Some("Unconfined") => out.push("--security-opt=seccomp=unconfined".to_owned()),
        // Podman's default profile is the runtime's default.
        Some("RuntimeDefault") => {}
        Some(other) => panic!("seccompProfile {other}: not known to the test"),
    }
    out
}

/// `BPF` → `CAP_BPF`; `ALL` stays `ALL`.
fn podman_capability(cap: &str) -> String {
    if cap == "ALL" || cap.starts_with("CAP_") {
        cap.to_owned()
    } else {
        format!("CAP_{cap}")
    }
}

/// One `--volume` for `mount`: its volume's source, the mount path and its options.
fn volume_arg(pod: &PodSpec, mount: &VolumeMount, node: &Node) -> String {
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .unwrap_or_else(|| panic!("no volume {} for the mount", mount.name));
    let source = if let Some(host) = &volume.host_path {
        let path = node
            .host_paths
            .get(&volume.name)
            .cloned()
            .unwrap_or_else(|| PathBuf::from(&host.path));
        if host.type_.as_deref() == Some("DirectoryOrCreate") {
            std::fs::create_dir_all(&path)
                .unwrap_or_else(|err| panic!("create hostPath {}: {err}", path.display()));
        }
        path
    } else if volume.config_map.is_some() {
        node.config_map_dir.clone()
    } else {
        panic!(
            "volume {}: only hostPath and configMap are known",
            volume.name
        )
    };
    assert!(
        mount.sub_path.is_none() && mount.sub_path_expr.is_none(),
        "subPath is not known"
    );
    let mut options = Vec::new();
    if mount.read_only == Some(true) {
        options.push("ro");
    }
    options.push(match mount.mount_propagation.as_deref() {
        None | Some("None") => "rprivate",
        Some("HostToContainer") => "rslave",
        Some("Bidirectional") => "rshared",
        Some(other) => panic!("mountPropagation {other}: not known"),
    });
    format!(
        "--volume={}:{}:{}",
        source.display(),
        mount.mount_path,
        options.join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(run: &Path) -> Node {
        Node {
            netns: PathBuf::from("/run/netns/n"),
            name: "node-1".to_owned(),
            host_ip: Ipv4Addr::new(192, 0, 2, 4),
            host_paths: BTreeMap::from([("run".to_owned(), run.to_owned())]),
            config_map_dir: PathBuf::from("/config"),
        }
    }

    #[test]
    fn the_agent_container_becomes_capabilities_host_network_and_its_mounts() {
        let deploy = Deploy::load();
        let dir = tempfile::tempdir().expect("tempdir");
        let run = dir.path().join("run");
        let node = node(&run);
        let args = run_args(deploy.pod(), deploy.agent(), &node);
        assert!(
            args.contains(&"--network=ns:/run/netns/n".to_owned()),
            "{args:?}"
        );
        assert!(!args.contains(&"--privileged".to_owned()), "{args:?}");
        assert!(args.contains(&"--cap-drop=ALL".to_owned()), "{args:?}");
        assert!(args.contains(&"--cap-add=CAP_BPF".to_owned()), "{args:?}");
        assert!(
            args.contains(&"--env=NODE_NAME=node-1".to_owned()),
            "{args:?}"
        );
        assert!(
            args.contains(&"--volume=/sys/fs/bpf:/sys/fs/bpf:rslave".to_owned()),
            "{args:?}"
        );
        let run_volume = format!("--volume={}:/var/run/lb:rprivate", run.display());
        assert!(args.contains(&run_volume), "{args:?}");
        assert!(run.is_dir(), "a DirectoryOrCreate hostPath is created");
        assert!(
            args.contains(&"--volume=/config:/etc/lb/config:ro,rprivate".to_owned()),
            "{args:?}"
        );
        assert_eq!(args.last(), Some(&"--entrypoint=[\"lb-agent\"]".to_owned()));
        let expanded = super::args(deploy.agent(), &node);
        assert!(
            expanded.contains(&"--metrics-address=192.0.2.4:9963".to_owned()),
            "{expanded:?}"
        );
    }

    #[test]
    fn capability_masks_use_the_kernels_numbers() {
        let names = ["NET_ADMIN".to_owned(), "CAP_BPF".to_owned()];
        assert_eq!(capability_mask(&names), 1 << 12 | 1 << 39);
        // What the kernel printed as CapEff in a container with podman's built-in defaults.
        let podman_default = [
            "AUDIT_WRITE",
            "CHOWN",
            "DAC_OVERRIDE",
            "FOWNER",
            "FSETID",
            "KILL",
            "MKNOD",
            "NET_BIND_SERVICE",
            "NET_RAW",
            "SETFCAP",
            "SETGID",
            "SETPCAP",
            "SETUID",
            "SYS_CHROOT",
        ]
        .map(str::to_owned);
        assert_eq!(capability_mask(&podman_default), 0xa80425fb);
    }

    #[test]
    fn an_unknown_security_context_field_fails_instead_of_being_skipped() {
        let context: SecurityContext =
            serde_json::from_value(serde_json::json!({"runAsUser": 1000})).expect("context");
        let result = std::panic::catch_unwind(|| security_args(Some(&context)));
        assert!(result.is_err(), "runAsUser is not translated: it must fail");
    }
}
