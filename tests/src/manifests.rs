//! The YAML the file-source tests write for the agent, in the layout `kubectl get -o yaml`
//! prints: a Service and its one EndpointSlice from [`Manifest`], and an EndpointSlice's
//! `endpoints` entries from [`endpoint`].
//!
//! ```
//! # use std::net::Ipv4Addr;
//! use lb_tests::manifests::{Manifest, Port, endpoint};
//! let ip = Ipv4Addr::new(10, 244, 1, 20);
//! let yaml = Manifest::new("web", Ipv4Addr::new(10, 96, 0, 1))
//!     .port(Port::tcp("http", 80, 8080).node_port(30080))
//!     .kind("NodePort")
//!     .endpoints([endpoint(ip, "node", true)])
//!     .to_yaml();
//! assert!(yaml.contains("kubernetes.io/service-name: web"));
//! ```
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An EndpointSlice `endpoints` entry for `ip` (either family) on node `node`: ready, or
/// (`ready` false) serving but terminating, as a pod being deleted is.
pub fn endpoint(ip: impl Into<IpAddr>, node: &str, ready: bool) -> String {
    let ip = ip.into();
    format!(
        "- addresses:\n  - {ip}\n  conditions:\n    ready: {ready}\n    serving: true\n    \
         terminating: {}\n  nodeName: {node}\n",
        !ready
    )
}

/// One port of a Service and the EndpointSlice port it maps to.
#[derive(Debug, Clone)]
pub struct Port {
    name: String,
    port: u16,
    protocol: &'static str,
    target_port: u16,
    node_port: Option<u16>,
}

impl Port {
    /// Port `port`/TCP named `name` (`""` for a Service's only, unnamed port), served by the
    /// endpoints on `target_port`.
    pub fn tcp(name: &str, port: u16, target_port: u16) -> Self {
        Self::new(name, port, "TCP", target_port)
    }

    /// Port `port`/UDP named `name`, served by the endpoints on `target_port`.
    pub fn udp(name: &str, port: u16, target_port: u16) -> Self {
        Self::new(name, port, "UDP", target_port)
    }

    fn new(name: &str, port: u16, protocol: &'static str, target_port: u16) -> Self {
        Self {
            name: name.to_owned(),
            port,
            protocol,
            target_port,
            node_port: None,
        }
    }

    /// The same port with node port `node_port`.
    pub fn node_port(mut self, node_port: u16) -> Self {
        self.node_port = Some(node_port);
        self
    }

    /// The `name:` value: an empty name is quoted, as kubectl prints it.
    fn yaml_name(&self) -> String {
        if self.name.is_empty() {
            "\"\"".to_owned()
        } else {
            self.name.clone()
        }
    }
}

/// A Service (`default` namespace) and its EndpointSlice (`NAME-abcde`, IPv4); made dual stack
/// by [`Manifest::ipv6`], a second slice (`NAME-v6abc`, IPv6).
#[derive(Debug, Clone)]
pub struct Manifest {
    name: String,
    cluster_ip: Ipv4Addr,
    cluster_ip6: Option<Ipv6Addr>,
    endpoints6: Vec<String>,
    kind: &'static str,
    ports: Vec<Port>,
    spec: String,
    status: String,
    endpoints: Vec<String>,
}

impl Manifest {
    /// A ClusterIP Service `name` on `cluster_ip`, with no ports and no endpoints yet.
    pub fn new(name: &str, cluster_ip: Ipv4Addr) -> Self {
        Self {
            name: name.to_owned(),
            cluster_ip,
            cluster_ip6: None,
            endpoints6: Vec::new(),
            kind: "ClusterIP",
            ports: Vec::new(),
            spec: String::new(),
            status: String::new(),
            endpoints: Vec::new(),
        }
    }

    /// Adds a port (to the Service and to the slice).
    pub fn port(mut self, port: Port) -> Self {
        self.ports.push(port);
        self
    }

    /// The Service's `type`: `ClusterIP` (the default), `NodePort` or `LoadBalancer`.
    pub fn kind(mut self, kind: &'static str) -> Self {
        self.kind = kind;
        self
    }

    /// Adds `key: value` to the Service's spec; `value` is a scalar, or YAML lines (each
    /// ending in a newline) indented as under a top-level key (`"- 10.0.0.0/8\n"`,
    /// `"clientIP:\n  timeoutSeconds: 3\n"`).
    pub fn spec(mut self, key: &str, value: &str) -> Self {
        self.spec.push_str(&entry(key, value));
        self
    }

    /// The Service's `status.loadBalancer.ingress`: one entry per IP, `ipMode: Proxy` for those
    /// marked `true`.
    pub fn ingress(mut self, ips: &[(Ipv4Addr, bool)]) -> Self {
        self.status = "status:\n  loadBalancer:\n    ingress:\n".to_owned();
        for (ip, proxied) in ips {
            self.status.push_str(&format!("    - ip: {ip}\n"));
            if *proxied {
                self.status.push_str("      ipMode: Proxy\n");
            }
        }
        self
    }

    /// The slice's `endpoints` entries ([`endpoint`]'s, or hand-written ones).
    pub fn endpoints(mut self, endpoints: impl IntoIterator<Item = String>) -> Self {
        self.endpoints = endpoints.into_iter().collect();
        self
    }

    /// Makes the Service dual stack (`RequireDualStack`, IPv4 first): its IPv6 ClusterIP
    /// `cluster_ip6`, and an IPv6 slice with these `endpoints` ([`endpoint`]'s) on the same
    /// ports.
    pub fn ipv6(
        mut self,
        cluster_ip6: Ipv6Addr,
        endpoints: impl IntoIterator<Item = String>,
    ) -> Self {
        self.cluster_ip6 = Some(cluster_ip6);
        self.endpoints6 = endpoints.into_iter().collect();
        self
    }

    /// The objects (Service, slices) as one YAML stream.
    pub fn to_yaml(&self) -> String {
        let Self {
            name,
            cluster_ip,
            kind,
            ..
        } = self;
        let mut service_ports = String::new();
        let mut slice_ports = String::new();
        for port in &self.ports {
            service_ports.push_str(&format!("  - name: {}\n", port.yaml_name()));
            if let Some(node_port) = port.node_port {
                service_ports.push_str(&format!("    nodePort: {node_port}\n"));
            }
            service_ports.push_str(&format!(
                "    port: {}\n    protocol: {}\n    targetPort: {}\n",
                port.port, port.protocol, port.target_port
            ));
            slice_ports.push_str(&format!(
                "- name: {}\n  port: {}\n  protocol: {}\n",
                port.yaml_name(),
                port.target_port,
                port.protocol
            ));
        }
        let endpoints_of = |endpoints: &[String]| {
            if endpoints.is_empty() {
                "endpoints: []\n".to_owned()
            } else {
                format!("endpoints:\n{}", endpoints.concat())
            }
        };
        let endpoints = endpoints_of(&self.endpoints);
        let (cluster_ip6, slice6) = match self.cluster_ip6 {
            None => (String::new(), String::new()),
            Some(ip6) => (
                format!(
                    "  - {ip6}\n  ipFamilies:\n  - IPv4\n  - IPv6\n  ipFamilyPolicy: RequireDualStack\n"
                ),
                format!(
                    "---
addressType: IPv6
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  labels:
    kubernetes.io/service-name: {name}
  name: {name}-v6abc
  namespace: default
{}ports:
{slice_ports}",
                    endpoints_of(&self.endpoints6)
                ),
            ),
        };
        format!(
            "apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: default
spec:
  clusterIP: {cluster_ip}
  clusterIPs:
  - {cluster_ip}
{cluster_ip6}{spec}  ports:
{service_ports}  type: {kind}
{status}---
addressType: IPv4
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  labels:
    kubernetes.io/service-name: {name}
  name: {name}-abcde
  namespace: default
{endpoints}ports:
{slice_ports}{slice6}",
            spec = self.spec,
            status = self.status,
        )
    }
}

/// Several manifests as one YAML stream.
pub fn stream(manifests: &[Manifest]) -> String {
    manifests
        .iter()
        .map(Manifest::to_yaml)
        .collect::<Vec<_>>()
        .join("---\n")
}

/// `key: value` under `spec:`, `value` a scalar or a block: a list stands at the key's own
/// indentation (as kubectl prints it), a map one level deeper.
fn entry(key: &str, value: &str) -> String {
    if value.ends_with('\n') {
        let indent = if value.starts_with("- ") {
            "  "
        } else {
            "    "
        };
        let block: String = value
            .lines()
            .map(|line| format!("{indent}{line}\n"))
            .collect();
        format!("  {key}:\n{block}")
    } else {
        format!("  {key}: {value}\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_port_service_with_a_list_in_its_spec_and_an_ingress() {
        let yaml = Manifest::new("web", Ipv4Addr::new(10, 96, 0, 1))
            .spec("externalIPs", "- 198.51.100.7\n")
            .spec("externalTrafficPolicy", "Local")
            .port(Port::tcp("http", 80, 8080).node_port(30080))
            .kind("LoadBalancer")
            .ingress(&[
                (Ipv4Addr::new(203, 0, 113, 10), false),
                (Ipv4Addr::new(203, 0, 113, 11), true),
            ])
            .endpoints([endpoint(Ipv4Addr::new(10, 244, 1, 20), "node", true)])
            .to_yaml();
        assert_eq!(
            yaml,
            "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
spec:
  clusterIP: 10.96.0.1
  clusterIPs:
  - 10.96.0.1
  externalIPs:
  - 198.51.100.7
  externalTrafficPolicy: Local
  ports:
  - name: http
    nodePort: 30080
    port: 80
    protocol: TCP
    targetPort: 8080
  type: LoadBalancer
status:
  loadBalancer:
    ingress:
    - ip: 203.0.113.10
    - ip: 203.0.113.11
      ipMode: Proxy
---
addressType: IPv4
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  labels:
    kubernetes.io/service-name: web
  name: web-abcde
  namespace: default
endpoints:
- addresses:
  - 10.244.1.20
  conditions:
    ready: true
    serving: true
    terminating: false
  nodeName: node
ports:
- name: http
  port: 8080
  protocol: TCP
"
        );
    }

    #[test]
    fn a_map_in_the_spec_is_nested_under_its_key() {
        let yaml = Manifest::new("sticky", Ipv4Addr::new(10, 96, 0, 4))
            .spec("sessionAffinityConfig", "clientIP:\n  timeoutSeconds: 3\n")
            .to_yaml();
        assert!(
            yaml.contains(
                "  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: 3\n  ports:\n"
            ),
            "{yaml}"
        );
    }

    #[test]
    fn no_endpoints_is_an_empty_list_and_an_unnamed_port_is_quoted() {
        let yaml = stream(&[
            Manifest::new("empty", Ipv4Addr::new(10, 96, 0, 2)).port(Port::udp("", 53, 5353)),
            Manifest::new("other", Ipv4Addr::new(10, 96, 0, 3)),
        ]);
        assert!(
            yaml.contains(
                "endpoints: []\nports:\n- name: \"\"\n  port: 5353\n  protocol: UDP\n---\n\
                 apiVersion: v1\n"
            ),
            "{yaml}"
        );
        assert!(yaml.contains("  - name: \"\"\n    port: 53\n"), "{yaml}");
    }

    #[test]
    fn a_dual_stack_service_has_both_cluster_ips_and_an_ipv6_slice() {
        let ip6: Ipv6Addr = "fd00:96::51".parse().expect("an IPv6 address");
        let backend6: Ipv6Addr = "fd00:244:1::20".parse().expect("an IPv6 address");
        let yaml = Manifest::new("web", Ipv4Addr::new(10, 96, 0, 1))
            .port(Port::tcp("http", 80, 8080))
            .ipv6(ip6, [endpoint(backend6, "node", true)])
            .to_yaml();
        assert!(
            yaml.contains(
                "  clusterIPs:\n  - 10.96.0.1\n  - fd00:96::51\n  ipFamilies:\n  - IPv4\n  - IPv6\n  \
                 ipFamilyPolicy: RequireDualStack\n  ports:\n"
            ),
            "{yaml}"
        );
        assert!(yaml.contains("---\naddressType: IPv6\n"), "{yaml}");
        assert!(yaml.contains("  name: web-v6abc\n"), "{yaml}");
        assert!(
            yaml.ends_with(
                "  - fd00:244:1::20\n  conditions:\n    ready: true\n    serving: true\n    \
                 terminating: false\n  nodeName: node\nports:\n- name: http\n  port: 8080\n  \
                 protocol: TCP\n"
            ),
            "{yaml}"
        );
    }
}
