//! The manifests of `deploy/` as the API server and the agent will read them: every document
//! parses into its k8s-openapi type without losing a field (k8s-openapi ignores unknown fields,
//! so a misspelt one would silently vanish: a round trip must give back every field), RBAC is
//! least privilege (issue 5), and everything the DaemonSet hands lb-agent is something lb-agent
//! accepts (flags, environment, ConfigMap keys), checked against lb-agent's own option table.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{ConfigMap, Container, Namespace, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding},
};
use lb_agent::config::{self, AgentConfig, OptionKey, options};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every document of every `deploy/*.yaml`, as (file, JSON value).
fn documents() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .expect("read deploy/")
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "deploy/ has manifests");
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read manifest");
        let name = file
            .file_name()
            .expect("file name")
            .to_string_lossy()
            .into_owned();
        let docs: Vec<Value> =
            lb_agent::k8s::yaml_documents(&text).unwrap_or_else(|err| panic!("{name}: {err}"));
        for value in docs {
            if !value.is_null() {
                out.push((name.clone(), value));
            }
        }
    }
    out
}

/// Paths present in `original` but missing or different in `back`.
fn lost(original: &Value, back: &Value, path: &str, out: &mut Vec<String>) {
    match (original, back) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                match b.get(key) {
                    Some(other) => lost(value, other, &format!("{path}.{key}"), out),
                    None => out.push(format!("{path}.{key}")),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                lost(x, y, &format!("{path}[{i}]"), out);
            }
        }
        (a, b) if a == b => {}
        _ => out.push(format!("{path} ({original} became {back})")),
    }
}

/// Deserializes into `T` and asserts that serializing back loses nothing.
fn strict<T: DeserializeOwned + Serialize>(file: &str, value: &Value) -> T {
    let typed: T = serde_json::from_value(value.clone())
        .unwrap_or_else(|err| panic!("{file}: not a valid {}: {err}", value["kind"]));
    let back = serde_json::to_value(&typed).expect("serialize back");
    let mut missing = Vec::new();
    lost(value, &back, "", &mut missing);
    assert!(
        missing.is_empty(),
        "{file}: unknown or misspelt fields in {} {}: {missing:?}",
        value["kind"],
        value["metadata"]["name"]
    );
    typed
}

/// The manifests, typed.
#[derive(Default)]
struct Manifests {
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    roles: Vec<Role>,
    role_bindings: Vec<RoleBinding>,
    config_maps: Vec<ConfigMap>,
    daemon_sets: Vec<DaemonSet>,
}

fn manifests() -> Manifests {
    let mut m = Manifests::default();
    for (file, value) in documents() {
        match value["kind"].as_str() {
            Some("Namespace") => m.namespaces.push(strict(&file, &value)),
            Some("ServiceAccount") => m.service_accounts.push(strict(&file, &value)),
            Some("ClusterRole") => m.cluster_roles.push(strict(&file, &value)),
            Some("ClusterRoleBinding") => m.cluster_role_bindings.push(strict(&file, &value)),
            Some("Role") => m.roles.push(strict(&file, &value)),
            Some("RoleBinding") => m.role_bindings.push(strict(&file, &value)),
            Some("ConfigMap") => m.config_maps.push(strict(&file, &value)),
            Some("DaemonSet") => m.daemon_sets.push(strict(&file, &value)),
            other => panic!("{file}: unexpected kind {other:?}"),
        }
    }
    m
}

fn daemon_set(m: &Manifests) -> &DaemonSet {
    assert_eq!(m.daemon_sets.len(), 1, "one DaemonSet");
    &m.daemon_sets[0]
}

fn agent_container(ds: &DaemonSet) -> &Container {
    let spec = ds.spec.as_ref().and_then(|s| s.template.spec.as_ref());
    spec.expect("pod spec")
        .containers
        .iter()
        .find(|c| c.command.as_deref() == Some(&["lb-agent".to_owned()][..]))
        .expect("a container running lb-agent")
}

/// A rule as (api groups, resources, resource names, verbs), sorted, for comparison.
fn rule(r: &PolicyRule) -> (Vec<String>, Vec<String>, Vec<String>, Vec<String>) {
    let sorted = |v: &Option<Vec<String>>| {
        let mut v = v.clone().unwrap_or_default();
        v.sort();
        v
    };
    (
        sorted(&r.api_groups),
        sorted(&r.resources),
        sorted(&r.resource_names),
        {
            let mut verbs = r.verbs.clone();
            verbs.sort();
            verbs
        },
    )
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn every_manifest_parses_into_its_type_without_losing_a_field() {
    let m = manifests();
    assert_eq!(m.namespaces.len(), 1);
    assert_eq!(m.config_maps.len(), 1);
    daemon_set(&m);
}

#[test]
fn rbac_is_least_privilege() {
    let m = manifests();
    let [cluster_role] = &m.cluster_roles[..] else {
        panic!("one ClusterRole")
    };
    let mut rules: Vec<_> = cluster_role.rules.iter().flatten().map(rule).collect();
    rules.sort();
    let mut expected = vec![
        (
            strings(&[""]),
            strings(&["services"]),
            vec![],
            strings(&["list", "watch"]),
        ),
        (
            strings(&["discovery.k8s.io"]),
            strings(&["endpointslices"]),
            vec![],
            strings(&["list", "watch"]),
        ),
        (
            strings(&[""]),
            strings(&["nodes"]),
            vec![],
            strings(&["get", "list", "watch"]),
        ),
    ];
    expected.sort();
    assert_eq!(
        rules, expected,
        "ClusterRole: read Services, EndpointSlices and nodes only"
    );

    let [role] = &m.roles[..] else {
        panic!("one Role")
    };
    let rules: Vec<_> = role.rules.iter().flatten().map(rule).collect();
    assert_eq!(
        rules,
        vec![(
            strings(&[""]),
            strings(&["configmaps"]),
            strings(&["lb-config"]),
            strings(&["get", "patch"])
        )],
        "Role: get and patch the lb-config ConfigMap only"
    );
    assert_eq!(role.metadata.namespace.as_deref(), Some("lb"));

    // Both bindings give exactly these roles to the agent's ServiceAccount, which the
    // DaemonSet runs as.
    let [sa] = &m.service_accounts[..] else {
        panic!("one ServiceAccount")
    };
    let sa_name = sa.metadata.name.clone().expect("ServiceAccount name");
    let ds = daemon_set(&m);
    let pod = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec");
    assert_eq!(pod.service_account_name.as_ref(), Some(&sa_name));
    let check = |kind: &str, role_ref: &k8s_openapi::api::rbac::v1::RoleRef, subjects: &[_]| {
        let subjects: &[k8s_openapi::api::rbac::v1::Subject] = subjects;
        assert_eq!(role_ref.kind, kind);
        assert!(
            subjects.len() == 1
                && subjects[0].kind == "ServiceAccount"
                && subjects[0].name == sa_name
                && subjects[0].namespace == sa.metadata.namespace,
            "{kind} bound to the agent's ServiceAccount only"
        );
    };
    let [crb] = &m.cluster_role_bindings[..] else {
        panic!("one ClusterRoleBinding")
    };
    assert_eq!(
        Some(&crb.role_ref.name),
        cluster_role.metadata.name.as_ref()
    );
    check(
        "ClusterRole",
        &crb.role_ref,
        crb.subjects.as_deref().unwrap_or_default(),
    );
    let [rb] = &m.role_bindings[..] else {
        panic!("one RoleBinding")
    };
    assert_eq!(Some(&rb.role_ref.name), role.metadata.name.as_ref());
    check(
        "Role",
        &rb.role_ref,
        rb.subjects.as_deref().unwrap_or_default(),
    );
}

/// The downward-API variable the DaemonSet's args expand (`$(HOST_IP)`), and the value the
/// tests give it.
const HOST_IP: (&str, &str) = ("HOST_IP", "192.0.2.4");

/// The agent container's args as the kubelet expands them: `$(HOST_IP)` (which must come from
/// `status.hostIP`) replaced by [`HOST_IP`]'s value.
fn expanded_args(container: &Container) -> Vec<String> {
    let args = container.args.clone().unwrap_or_default();
    if args.iter().any(|arg| arg.contains("$(")) {
        let var = container
            .env
            .iter()
            .flatten()
            .find(|var| var.name == HOST_IP.0)
            .expect("the args expand HOST_IP, which the env defines");
        let field = var
            .value_from
            .as_ref()
            .and_then(|from| from.field_ref.as_ref());
        assert_eq!(
            field.map(|f| f.field_path.as_str()),
            Some("status.hostIP"),
            "HOST_IP comes from status.hostIP"
        );
    }
    args.into_iter()
        .map(|arg| arg.replace(&format!("$({})", HOST_IP.0), HOST_IP.1))
        .collect()
}

#[test]
fn the_daemon_set_passes_only_flags_env_and_config_keys_lb_agent_accepts() {
    let m = manifests();
    let container = agent_container(daemon_set(&m));
    let args = expanded_args(container);

    // Every flag is one of lb-agent's, with a value its option accepts.
    let matches = config::command()
        .try_get_matches_from(std::iter::once("lb-agent".to_owned()).chain(args.clone()))
        .unwrap_or_else(|err| panic!("lb-agent rejects the DaemonSet's args {args:?}: {err}"));
    for arg in &args {
        let key = arg
            .strip_prefix("--")
            .and_then(|a| a.split('=').next())
            .unwrap_or_else(|| panic!("{arg}: args are --key=value"));
        let spec = options::lookup(key).unwrap_or_else(|| panic!("{arg}: not an option"));
        let value: &String = matches.get_one(key).expect("value");
        assert!(
            spec.kind.is_valid(value),
            "{arg}: expected {}",
            spec.kind.accepted()
        );
    }

    // Environment: literal values are options' variables; NODE_NAME from the downward API.
    let mut env = BTreeMap::new();
    for var in container.env.iter().flatten() {
        if var.name == HOST_IP.0 {
            continue; // only expanded in args (`expanded_args` checks its source)
        }
        let spec = options::specs()
            .find(|s| s.env == var.name || s.env_alias == Some(var.name.as_str()))
            .unwrap_or_else(|| panic!("env {} is no option's variable", var.name));
        match (&var.value, &var.value_from) {
            (Some(value), None) => {
                assert!(spec.kind.is_valid(value), "env {}={value}", var.name);
                env.insert(var.name.clone(), value.clone());
            }
            (None, Some(from)) => {
                let field = from.field_ref.as_ref().map(|f| f.field_path.as_str());
                assert_eq!(
                    (var.name.as_str(), field),
                    ("NODE_NAME", Some("spec.nodeName")),
                    "only NODE_NAME comes from the downward API, from spec.nodeName"
                );
                env.insert(var.name.clone(), "node-1".to_owned());
            }
            other => panic!("env {}: {other:?}", var.name),
        }
    }
    assert!(env.contains_key("NODE_NAME"), "NODE_NAME is set");

    // Every ConfigMap key is an option, and the whole configuration resolves: flags, env and
    // the ConfigMap as the mounted directory (config-dir pointed at a copy of it).
    let [cm] = &m.config_maps[..] else {
        panic!("one ConfigMap")
    };
    let dir = tempfile::tempdir().expect("tempdir");
    for (key, value) in cm.data.iter().flatten() {
        let spec = options::lookup(key).unwrap_or_else(|| panic!("ConfigMap key {key}: unknown"));
        assert!(spec.kind.is_valid(value), "ConfigMap {key}={value}");
        std::fs::write(dir.path().join(key), value).expect("write key");
    }
    let config_dir = format!("--{}={}", OptionKey::ConfigDir, dir.path().display());
    let resolved_args: Vec<String> = std::iter::once("lb-agent".to_owned())
        .chain(args.iter().map(|arg| {
            if arg.starts_with(&format!("--{}=", OptionKey::ConfigDir)) {
                config_dir.clone()
            } else {
                arg.clone()
            }
        }))
        .collect();
    let resolved = AgentConfig::from_args(resolved_args, |var| env.get(var).cloned())
        .unwrap_or_else(|err| panic!("lb-agent rejects the DaemonSet's configuration: {err}"));
    assert_eq!(resolved.node_name, "node-1", "node name from NODE_NAME");
}

#[test]
fn the_daemon_set_probes_liveness_and_readiness_on_the_metrics_port_and_mounts_bpffs_for_pins() {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let m = manifests();
    let ds = daemon_set(&m);
    let pod = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec");
    let container = agent_container(ds);
    let args = expanded_args(container);
    let (config, _) = AgentConfig::from_args_with_action(
        std::iter::once("lb-agent".to_owned()).chain(
            args.iter()
                .filter(|a| !a.starts_with("--config-dir"))
                .cloned(),
        ),
        |var| (var == "NODE_NAME").then(|| "node-1".to_owned()),
    )
    .expect("DaemonSet args resolve");
    let metrics = config
        .metrics_address
        .expect("metrics enabled: the probes need /healthz");
    // Kubelet probes (and Prometheus scrapes) a hostNetwork pod at the node's InternalIP, the
    // pod's status.hostIP: bound there, not on loopback, and not on every node address.
    assert_eq!(
        metrics.ip().to_string(),
        HOST_IP.1,
        "metrics on the node's InternalIP: {metrics}"
    );

    let port_number = |port: &IntOrString| match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => {
            container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name))
                .unwrap_or_else(|| panic!("no container port {name}"))
                .container_port
        }
    };
    // Liveness never depends on the source (an unreachable API server must not restart a
    // serving datapath); readiness is the first sync.
    for (what, probe, path) in [
        ("readiness", &container.readiness_probe, "/readyz"),
        ("liveness", &container.liveness_probe, "/healthz"),
        ("startup", &container.startup_probe, "/healthz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("{what} probe is an HTTP GET"));
        assert_eq!(get.path.as_deref(), Some(path), "{what} probe path");
        assert_eq!(
            port_number(&get.port),
            i32::from(metrics.port()),
            "{what} probe on the metrics port"
        );
    }

    assert_eq!(pod.host_network, Some(true), "host networking");
    assert!(
        pod.tolerations
            .iter()
            .flatten()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "tolerates every taint"
    );
    // The host's bpffs holds the pins: --bpf-root is below the mounted host path, and bpffs
    // is mounted with Bidirectional propagation (by a container that Kubernetes allows to:
    // only privileged ones may) so that a mount made in the pod is the host's.
    let bpffs_volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| {
            v.host_path
                .as_ref()
                .is_some_and(|h| h.path == "/sys/fs/bpf")
        })
        .expect("a hostPath volume for /sys/fs/bpf");
    let mounts = |c: &Container| {
        c.volume_mounts
            .iter()
            .flatten()
            .find(|vm| vm.name == bpffs_volume.name)
            .cloned()
    };
    let agent_mount = mounts(container).expect("the agent mounts bpffs");
    assert!(
        config.bpf_root.starts_with(&agent_mount.mount_path),
        "--bpf-root on bpffs"
    );
    let all = pod.init_containers.iter().flatten().chain(&pod.containers);
    let mut bidirectional = 0;
    for c in all {
        let Some(mount) = mounts(c) else { continue };
        let privileged = c.security_context.as_ref().and_then(|s| s.privileged) == Some(true);
        match mount.mount_propagation.as_deref() {
            Some("Bidirectional") => {
                assert!(privileged, "{}: Bidirectional needs privileged", c.name);
                bidirectional += 1;
            }
            Some("HostToContainer") => {}
            other => panic!("{}: bpffs mount propagation {other:?}", c.name),
        }
    }
    assert!(
        bidirectional > 0,
        "bpffs is mounted with Bidirectional propagation"
    );
    let agent_privileged = container
        .security_context
        .as_ref()
        .and_then(|s| s.privileged);
    assert_ne!(
        agent_privileged,
        Some(true),
        "the agent runs on capabilities, not privileged"
    );
}

#[test]
fn socket_load_balancing_is_on_and_its_cgroup_root_is_the_hosts_cgroup_hierarchy() {
    let m = manifests();
    assert_eq!(m.config_maps.len(), 1, "one ConfigMap");
    let data = m.config_maps[0].data.clone().unwrap_or_default();
    assert_eq!(
        data.get("bpf-lb-sock").map(String::as_str),
        Some("true"),
        "host clients reach Services on a kube-proxy-free cluster"
    );
    let cgroup_root = data.get("cgroup-root").expect("cgroup-root set");
    let ds = daemon_set(&m);
    let pod = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec");
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| {
            v.host_path
                .as_ref()
                .is_some_and(|h| h.path == "/sys/fs/cgroup")
        })
        .expect("a hostPath volume for /sys/fs/cgroup");
    let mount = agent_container(ds)
        .volume_mounts
        .iter()
        .flatten()
        .find(|vm| vm.name == volume.name)
        .expect("the agent mounts the host's cgroup hierarchy");
    assert_eq!(&mount.mount_path, cgroup_root, "cgroup-root is that mount");
}
