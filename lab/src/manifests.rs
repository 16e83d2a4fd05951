//! The story's Services and EndpointSlices: `lab/manifests/*.yaml`, in `kubectl get -o yaml`
//! shape, which the agents read through their file source.
use std::path::{Path, PathBuf};

use crate::{Error, Result};
use lb_testkit::create_dir;

/// `lab/manifests` in the source tree.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests")
}

/// `lab/manifests/ipv6`: dual-stack versions of some of [`dir`]'s files, under the same names.
pub fn dir_ipv6() -> PathBuf {
    dir().join("ipv6")
}

/// Copies every `*.yaml` of [`dir`] into `dest` (the agents watch the copy, so a test may edit
/// it without touching the repository) and returns `dest`.
pub fn install(dest: &Path) -> Result<PathBuf> {
    create_dir(dest)?;
    copy_yaml(&dir(), dest)?;
    Ok(dest.to_owned())
}

/// [`install`], then [`dir_ipv6`]'s files over their single-stack namesakes: the dual-stack
/// lab's manifests.
pub fn install_dual_stack(dest: &Path) -> Result<PathBuf> {
    install(dest)?;
    copy_yaml(&dir_ipv6(), dest)?;
    Ok(dest.to_owned())
}

fn copy_yaml(src: &Path, dest: &Path) -> Result<()> {
    let src = src.to_owned();
    let entries = std::fs::read_dir(&src).map_err(|source| Error::Io {
        action: "list",
        path: src.clone(),
        source,
    })?;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|ext| ext == "yaml") {
            let to = dest.join(entry.file_name());
            std::fs::copy(&path, &to).map_err(|source| Error::Io {
                action: "copy",
                path: path.clone(),
                source,
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;

    use super::*;
    use crate::story::{CLUSTER_IPS, NGINX_1, NGINX_2, NGINX_VIP, SLAVE};

    /// Every document of every manifest, typed.
    fn load() -> (Vec<Service>, Vec<EndpointSlice>) {
        load_from(&dir())
    }

    /// Every document of every manifest in `dir`, typed.
    fn load_from(dir: &Path) -> (Vec<Service>, Vec<EndpointSlice>) {
        let mut services = Vec::new();
        let mut slices = Vec::new();
        for entry in std::fs::read_dir(dir).expect("list the manifests") {
            let path = entry.expect("manifest entry").path();
            if path.extension().is_none_or(|ext| ext != "yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read manifest");
            let docs: Vec<serde_json::Value> =
                serde_saphyr::from_multiple(&text).expect("parse YAML");
            for value in docs {
                let kind = value["kind"].as_str().unwrap_or_default().to_owned();
                match kind.as_str() {
                    "Service" => services.push(serde_json::from_value(value).expect("Service")),
                    "EndpointSlice" => {
                        slices.push(serde_json::from_value(value).expect("EndpointSlice"))
                    }
                    other => panic!("{}: unexpected kind `{other}`", path.display()),
                }
            }
        }
        (services, slices)
    }

    #[test]
    fn manifests_hold_the_storys_cluster_ips_each_with_a_labelled_slice() {
        let (services, slices) = load();
        let vips: BTreeSet<String> = services
            .iter()
            .filter_map(|s| s.spec.as_ref()?.cluster_ip.clone())
            .collect();
        let want: BTreeSet<String> = CLUSTER_IPS.iter().map(|ip| ip.to_string()).collect();
        assert_eq!(vips, want);
        for service in &services {
            let name = service.metadata.name.as_deref().expect("service name");
            assert!(
                slices.iter().any(|slice| slice
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("kubernetes.io/service-name"))
                    .is_some_and(|n| n == name)),
                "no EndpointSlice for {name}"
            );
        }
    }

    #[test]
    fn nginx_has_the_two_lab_pods_on_the_slave_ready_on_port_80() {
        let (services, slices) = load();
        let nginx = services
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some("nginx"))
            .expect("nginx service");
        let spec = nginx.spec.as_ref().expect("spec");
        assert_eq!(
            spec.cluster_ip.as_deref(),
            Some(NGINX_VIP.to_string().as_str())
        );
        let slice = slices
            .iter()
            .find(|s| {
                s.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.starts_with("nginx-"))
            })
            .expect("nginx slice");
        let mut addresses = Vec::new();
        for endpoint in &slice.endpoints {
            assert_eq!(endpoint.node_name.as_deref(), Some(SLAVE.name));
            let conditions = endpoint.conditions.as_ref().expect("conditions");
            assert_eq!(conditions.ready, Some(true));
            addresses.extend(endpoint.addresses.iter().cloned());
        }
        assert_eq!(addresses, [NGINX_1.ip.to_string(), NGINX_2.ip.to_string()]);
        let ports = slice.ports.as_ref().expect("ports");
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].port, Some(80));
        assert_eq!(ports[0].protocol.as_deref(), Some("TCP"));
    }

    #[test]
    fn the_dual_stack_nginx_keeps_the_storys_ipv4_half_and_adds_an_ipv6_clusterip_and_slice() {
        use crate::story::v6;

        let (services, slices) = load_from(&dir_ipv6());
        assert_eq!(services.len(), 1);
        let spec = services[0].spec.as_ref().expect("spec");
        assert_eq!(services[0].metadata.name.as_deref(), Some("nginx"));
        assert_eq!(
            spec.cluster_ip.as_deref(),
            Some(NGINX_VIP.to_string().as_str())
        );
        assert_eq!(
            spec.cluster_ips.clone().unwrap_or_default(),
            [NGINX_VIP.to_string(), v6::NGINX_VIP.to_string()]
        );
        assert_eq!(
            spec.ip_families.clone().unwrap_or_default(),
            ["IPv4", "IPv6"]
        );
        assert_eq!(spec.ip_family_policy.as_deref(), Some("PreferDualStack"));
        let addresses = |family: &str| -> Vec<String> {
            slices
                .iter()
                .filter(|slice| slice.address_type == family)
                .flat_map(|slice| slice.endpoints.iter())
                .flat_map(|endpoint| endpoint.addresses.iter().cloned())
                .collect()
        };
        assert_eq!(
            addresses("IPv4"),
            [NGINX_1.ip.to_string(), NGINX_2.ip.to_string()]
        );
        assert_eq!(
            addresses("IPv6"),
            [v6::NGINX_1.ip.to_string(), v6::NGINX_2.ip.to_string()]
        );
        // Installed over the single-stack files: one nginx, dual-stack; the rest unchanged.
        let dest = std::env::temp_dir().join(format!("lb-lab-manifests-{}", std::process::id()));
        install_dual_stack(&dest).expect("install");
        let (installed, _) = load_from(&dest);
        std::fs::remove_dir_all(&dest).expect("remove the copy");
        let (single, _) = load();
        assert_eq!(installed.len(), single.len());
        let nginx = installed
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some("nginx"))
            .expect("nginx");
        assert_eq!(
            nginx
                .spec
                .as_ref()
                .and_then(|s| s.ip_family_policy.as_deref()),
            Some("PreferDualStack")
        );
    }
}
