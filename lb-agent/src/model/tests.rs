//! The model's cases, through [`desired_services`]: each test cites its k8s-semantics.md §3
//! case (or §5 fixture). They span `frontend.rs`, `endpoints.rs` and `desired.rs`, so they
//! live beside the three rather than at the bottom of one.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::{Value, json};

use super::*;
use crate::k8s::Snapshot;

const NODE: &str = "host1";

fn service(ns: &str, name: &str, spec: Value) -> Service {
    serde_json::from_value(json!({"metadata": {"namespace": ns, "name": name}, "spec": spec}))
        .expect("service")
}

/// A ClusterIP Service with ports given as (name, port, protocol).
fn cluster_ip(ns: &str, name: &str, vip: &str, ports: &[(&str, u16, &str)]) -> Service {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, p, proto)| json!({"name": n, "port": p, "protocol": proto}))
        .collect();
    service(
        ns,
        name,
        json!({"type": "ClusterIP", "clusterIP": vip, "clusterIPs": [vip], "ports": ports}),
    )
}

fn slice(ns: &str, name: &str, svc: &str, ports: Value, endpoints: Vec<Value>) -> EndpointSlice {
    serde_json::from_value(json!({
        "addressType": "IPv4",
        "metadata": {"namespace": ns, "name": name, "labels": {"kubernetes.io/service-name": svc}},
        "ports": ports,
        "endpoints": endpoints,
    }))
    .expect("slice")
}

/// A ready endpoint on `node`.
fn ready(ip: &str, node: &str) -> Value {
    json!({"addresses": [ip], "conditions": {"ready": true, "serving": true, "terminating": false}, "nodeName": node})
}

/// An endpoint with explicit (ready, serving, terminating).
fn cond(ip: &str, node: &str, (r, s, t): (bool, bool, bool)) -> Value {
    json!({"addresses": [ip], "conditions": {"ready": r, "serving": s, "terminating": t}, "nodeName": node})
}

fn tcp(name: &str, port: u16) -> Value {
    json!({"name": name, "port": port, "protocol": "TCP"})
}

fn run(services: Vec<Service>, slices: Vec<EndpointSlice>) -> Vec<DesiredService> {
    desired_services(
        &Snapshot {
            services,
            slices,
            node_zone: None,
        },
        &ThisNode::named(NODE),
    )
}

/// Frontends and backends as text: `10.96.0.1:80/TCP ns/svc:port` then one line per backend.
fn render(desired: &[DesiredService]) -> String {
    let mut out = String::new();
    for d in desired {
        out += &format!(
            "{} {}/{}:{}\n",
            d.frontend, d.namespace, d.name, d.port_name
        );
        for b in &d.backends {
            let place = if b.remote { "remote" } else { "local" };
            let addr = std::net::SocketAddr::new(b.addr, b.port);
            out += &format!("  {addr} {} {}\n", b.state.as_str(), place);
        }
    }
    out
}

/// Backends of one frontend as `addr:port state`.
fn backends(desired: &[DesiredService], frontend: &str) -> Vec<String> {
    let d = desired
        .iter()
        .find(|d| d.frontend.to_string() == frontend)
        .unwrap_or_else(|| panic!("no frontend {frontend}"));
    d.backends
        .iter()
        .map(|b| format!("{}:{} {}", b.addr, b.port, b.state.as_str()))
        .collect()
}

fn frontends(desired: &[DesiredService]) -> Vec<String> {
    desired.iter().map(|d| d.frontend.to_string()).collect()
}

fn yaml_docs<T: serde::de::DeserializeOwned>(text: &str) -> Vec<T> {
    crate::k8s::yaml_documents::<T>(text).expect("fixture parses")
}

fn fixture(case: &str) -> Snapshot {
    let read = |file: &str| {
        let path = format!(
            "{}/../tests/testdata/{case}/{file}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
    };
    Snapshot {
        services: yaml_docs(&read("service.yaml")),
        slices: yaml_docs(&read("endpointslice.yaml")),
        node_zone: None,
    }
}

fn expected(case: &str) -> String {
    let path = format!(
        "{}/../tests/testdata/{case}/expected.desired",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// Sets the conditions of the endpoint with address `ip` in every slice.
fn set_conditions(snapshot: &mut Snapshot, ip: &str, (r, s, t): (bool, bool, bool)) {
    for ep in snapshot
        .slices
        .iter_mut()
        .flat_map(|s| s.endpoints.iter_mut())
    {
        if ep.addresses.first().map(String::as_str) == Some(ip) {
            ep.conditions =
                serde_json::from_value(json!({"ready": r, "serving": s, "terminating": t}))
                    .expect("conditions");
        }
    }
}

// ---- §5 fixtures ----

#[test]
fn fixture_a_named_target_port_mid_rollout_unions_both_slices() {
    let snapshot = fixture("a-checkout-two-slices");
    let desired = desired_services(&snapshot, &ThisNode::named("worker-a1"));
    assert_eq!(render(&desired), expected("a-checkout-two-slices"));
    // :80/UDP is not a frontend, so the datapath rejects it (nftables' unknown-port rule).
    assert!(!frontends(&desired).contains(&"10.96.41.17:80/UDP".to_owned()));
}

#[test]
fn fixture_a_deleting_one_slice_leaves_the_other_slices_endpoints() {
    let mut snapshot = fixture("a-checkout-two-slices");
    snapshot
        .slices
        .retain(|s| s.metadata.name.as_deref() != Some("checkout-7x2kq"));
    let desired = desired_services(&snapshot, &ThisNode::named("worker-a1"));
    assert_eq!(
        backends(&desired, "10.96.41.17:80/TCP"),
        ["10.244.3.9:8081 active"]
    );
    assert_eq!(
        backends(&desired, "10.96.41.17:9102/TCP"),
        ["10.244.3.9:9102 active"]
    );
}

#[test]
fn fixture_b_only_ready_endpoints_take_new_flows_with_client_ip_affinity() {
    let desired = desired_services(
        &fixture("b-ledger-terminating"),
        &ThisNode::named("worker-a1"),
    );
    assert_eq!(render(&desired), expected("b-ledger-terminating"));
    assert_eq!(desired[0].affinity_timeout_secs, Some(10_800));
}

#[test]
fn fixture_b2_with_nothing_ready_the_serving_terminating_ones_are_the_fallback() {
    let mut snapshot = fixture("b-ledger-terminating");
    set_conditions(&mut snapshot, "10.244.1.50", (false, true, true));
    let desired = desired_services(&snapshot, &ThisNode::named("worker-a1"));
    assert_eq!(
        backends(&desired, "10.96.7.200:5432/TCP"),
        ["10.244.1.50:5432 active", "10.244.2.60:5432 active"]
    );
}

#[test]
fn fixture_b3_nothing_serving_rejects() {
    let mut snapshot = fixture("b-ledger-terminating");
    set_conditions(&mut snapshot, "10.244.1.50", (false, false, true));
    set_conditions(&mut snapshot, "10.244.2.60", (false, false, true));
    let desired = desired_services(&snapshot, &ThisNode::named("worker-a1"));
    assert!(desired[0].backends.is_empty());
    assert!(!desired[0].has_any_endpoints, "no endpoint at all: reject");
}

#[test]
fn fixture_b4_local_policy_on_a_node_without_usable_endpoints_drops() {
    let mut snapshot = fixture("b-ledger-terminating");
    set_conditions(&mut snapshot, "10.244.1.50", (false, true, true));
    if let Some(spec) = snapshot.services[0].spec.as_mut() {
        spec.internal_traffic_policy = Some("Local".to_owned());
    }
    let desired = desired_services(&snapshot, &ThisNode::named("worker-c1"));
    assert!(desired[0].backends.is_empty());
    assert!(
        desired[0].has_any_endpoints,
        "endpoints exist elsewhere: drop, not reject"
    );
}

#[test]
fn fixture_c_dual_stack_serves_each_vip_from_its_own_familys_slice_with_an_unnamed_port() {
    let desired = desired_services(&fixture("c-api-dual-stack"), &ThisNode::named("worker-a1"));
    assert_eq!(render(&desired), expected("c-api-dual-stack"));
}

// ---- §3 cases ----

#[test]
fn case_1_headless_services_are_ignored_with_or_without_ports() {
    let none = service(
        "ns",
        "h1",
        json!({"clusterIP": "None", "clusterIPs": ["None"], "ports": [{"port": 80}]}),
    );
    let no_ports = service("ns", "h2", json!({"clusterIP": "None"}));
    let empty = service(
        "ns",
        "h3",
        json!({"clusterIP": "", "ports": [{"port": 80}]}),
    );
    let slice = slice(
        "ns",
        "h1-x",
        "h1",
        json!([tcp("", 80)]),
        vec![ready("10.0.0.1", NODE)],
    );
    assert!(run(vec![none, no_ports, empty], vec![slice]).is_empty());
}

#[test]
fn case_2_external_name_is_ignored_even_with_a_cluster_ip() {
    let svc = service(
        "ns",
        "ext",
        json!({"type": "ExternalName", "externalName": "db.example.org", "clusterIP": "10.96.0.9", "ports": [{"port": 80}]}),
    );
    assert!(run(vec![svc], vec![]).is_empty());
}

#[test]
fn case_3_an_ipv6_only_service_is_served_on_its_v6_vip_and_a_v6_first_dual_stack_one_on_both() {
    let v6 = service(
        "ns",
        "v6",
        json!({"clusterIP": "fd00::1", "clusterIPs": ["fd00::1"], "ipFamilies": ["IPv6"], "ports": [{"port": 80}]}),
    );
    let v6_first = service(
        "ns",
        "both",
        json!({"clusterIP": "fd00::2", "clusterIPs": ["fd00::2", "10.96.0.2"], "ports": [{"port": 80}]}),
    );
    assert_eq!(
        frontends(&run(vec![v6, v6_first], vec![])),
        ["10.96.0.2:80/TCP", "[fd00::1]:80/TCP", "[fd00::2]:80/TCP"]
    );
}

/// A dual-stack-capable Service: `clusterIPs` and `ipFamilies` as the apiserver writes them
/// for `policy`, with the extra fields in `more`.
fn dual(name: &str, policy: &str, ips: &[&str], more: Value) -> Service {
    let families: Vec<&str> = ips
        .iter()
        .map(|ip| if ip.contains(':') { "IPv6" } else { "IPv4" })
        .collect();
    let mut spec = json!({
        "type": "ClusterIP", "clusterIP": ips[0], "clusterIPs": ips, "ipFamilies": families,
        "ipFamilyPolicy": policy, "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
    });
    if let (Some(spec), Some(more)) = (spec.as_object_mut(), more.as_object()) {
        spec.extend(more.clone());
    }
    service("ns", name, spec)
}

fn slice6(ns: &str, name: &str, svc: &str, ports: Value, endpoints: Vec<Value>) -> EndpointSlice {
    let mut slice = slice(ns, name, svc, ports, endpoints);
    slice.address_type = "IPv6".to_owned();
    slice
}

#[test]
fn dual_stack_policies_serve_every_allocated_family_and_single_stack_only_the_first() {
    let cases = [
        (
            "SingleStack IPv6",
            dual("s6", "SingleStack", &["fd00::6"], json!({})),
            vec!["[fd00::6]:80/TCP"],
        ),
        (
            "PreferDualStack on a single-stack cluster: one family allocated",
            dual("p4", "PreferDualStack", &["10.96.0.4"], json!({})),
            vec!["10.96.0.4:80/TCP"],
        ),
        (
            "PreferDualStack, both allocated",
            dual(
                "p46",
                "PreferDualStack",
                &["10.96.0.5", "fd00::5"],
                json!({}),
            ),
            vec!["10.96.0.5:80/TCP", "[fd00::5]:80/TCP"],
        ),
        (
            "RequireDualStack, IPv6 primary",
            dual(
                "r64",
                "RequireDualStack",
                &["fd00::7", "10.96.0.7"],
                json!({}),
            ),
            vec!["10.96.0.7:80/TCP", "[fd00::7]:80/TCP"],
        ),
        (
            "a hand-written SingleStack Service with two ClusterIPs: only the first",
            dual("bad", "SingleStack", &["10.96.0.8", "fd00::8"], json!({})),
            vec!["10.96.0.8:80/TCP"],
        ),
        (
            "a ClusterIP of a family ipFamilies does not list is not served",
            dual(
                "fam",
                "PreferDualStack",
                &["10.96.0.9", "fd00::9"],
                json!({"ipFamilies": ["IPv4"]}),
            ),
            vec!["10.96.0.9:80/TCP"],
        ),
        (
            "two ClusterIPs of one family: the first",
            dual(
                "twice",
                "PreferDualStack",
                &["fd00::a", "fd00::b"],
                json!({"ipFamilies": []}),
            ),
            vec!["[fd00::a]:80/TCP"],
        ),
        (
            "an IPv6 headless Service",
            dual(
                "none",
                "SingleStack",
                &["None"],
                json!({"ipFamilies": ["IPv6"]}),
            ),
            vec![],
        ),
    ];
    for (what, svc, want) in cases {
        assert_eq!(frontends(&run(vec![svc], vec![])), want, "{what}");
    }
}

#[test]
fn each_family_takes_only_its_own_slices_and_an_unusable_family_is_refused_alone() {
    let svc = dual(
        "d",
        "RequireDualStack",
        &["10.96.1.1", "fd00::1:1"],
        json!({}),
    );
    let v4 = slice(
        "ns",
        "d-4",
        "d",
        json!([tcp("http", 8080)]),
        vec![ready("10.244.1.5", NODE)],
    );
    let v6 = slice6(
        "ns",
        "d-6",
        "d",
        json!([tcp("http", 8080)]),
        vec![
            ready("fd00:244::5", NODE),
            // An IPv4 address in an IPv6 slice is not an IPv6 endpoint.
            ready("10.244.1.6", NODE),
        ],
    );
    assert_eq!(
        render(&run(vec![svc.clone()], vec![v4.clone(), v6])),
        "10.96.1.1:80/TCP ns/d:http\n  10.244.1.5:8080 active local\n\
         [fd00::1:1]:80/TCP ns/d:http\n  [fd00:244::5]:8080 active local\n"
    );
    // Only the IPv4 slice: the IPv6 VIP has no endpoint at all and rejects (§2.6), the IPv4
    // one is unaffected.
    let desired = run(vec![svc], vec![v4]);
    let v6 = desired
        .iter()
        .find(|d| d.frontend.vip.is_ipv6())
        .expect("an IPv6 frontend");
    assert!(v6.backends.is_empty() && !v6.has_any_endpoints);
    assert!(
        desired
            .iter()
            .any(|d| d.frontend.vip.is_ipv4() && !d.backends.is_empty())
    );
}

#[test]
fn external_and_load_balancer_ips_of_either_family_are_served_on_a_dual_stack_service_only_for_families_it_has()
 {
    let status = |ips: &[&str]| {
        let ingress: Vec<Value> = ips.iter().map(|ip| json!({"ip": ip})).collect();
        json!({"loadBalancer": {"ingress": ingress}})
    };
    let mut both = dual(
        "both",
        "PreferDualStack",
        &["10.96.2.1", "fd00::2:1"],
        json!({"type": "LoadBalancer", "externalIPs": ["198.51.100.7", "2001:db8::7"],
               "allocateLoadBalancerNodePorts": false}),
    );
    both.status = serde_json::from_value(status(&["203.0.113.10", "2001:db8::10"])).ok();
    let mut v4_only = dual(
        "v4",
        "SingleStack",
        &["10.96.2.2"],
        json!({"type": "LoadBalancer", "externalIPs": ["2001:db8::8"],
               "allocateLoadBalancerNodePorts": false}),
    );
    v4_only.status = serde_json::from_value(status(&["2001:db8::11"])).ok();
    let desired = run(vec![both, v4_only], vec![]);
    let kinds: Vec<String> = desired
        .iter()
        .map(|d| format!("{} {}", d.frontend, d.kind))
        .collect();
    assert_eq!(
        kinds,
        [
            "10.96.2.1:80/TCP ClusterIP",
            "10.96.2.2:80/TCP ClusterIP",
            "198.51.100.7:80/TCP ExternalIPs",
            "203.0.113.10:80/TCP LoadBalancer",
            "[2001:db8::7]:80/TCP ExternalIPs",
            "[2001:db8::10]:80/TCP LoadBalancer",
            "[fd00::2:1]:80/TCP ClusterIP",
        ],
        "an IPv4-only Service's IPv6 external and LB IPs are some other proxier's (§1)"
    );
}

#[test]
fn load_balancer_source_ranges_apply_per_family_and_a_family_without_any_admits_no_one() {
    let lb = |name: &str, ranges: Value| {
        let mut svc = dual(
            name,
            "RequireDualStack",
            &["10.96.3.1", "fd00::3:1"],
            json!({"type": "LoadBalancer", "loadBalancerSourceRanges": ranges,
                   "allocateLoadBalancerNodePorts": false}),
        );
        svc.status = serde_json::from_value(
            json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.20"}, {"ip": "2001:db8::20"}]}}),
        )
        .ok();
        svc
    };
    let ranges_of = |svc: Service| -> Vec<String> {
        run(vec![svc], vec![])
            .iter()
            .filter(|d| d.kind == FrontendKind::LoadBalancer)
            .map(|d| {
                let ranges: Vec<String> = d
                    .source_ranges
                    .iter()
                    .flatten()
                    .map(ToString::to_string)
                    .collect();
                format!("{} {:?}", d.frontend.vip, ranges)
            })
            .collect()
    };
    assert_eq!(
        ranges_of(lb(
            "both",
            json!(["10.0.0.0/8", "2001:db8:1::/48", "fd00::1/128"])
        )),
        [
            r#"203.0.113.20 ["10.0.0.0/8"]"#,
            r#"2001:db8::20 ["2001:db8:1::/48", "fd00::1/128"]"#,
        ]
    );
    // Only IPv4 ranges: the IPv6 load-balancer IP admits no outside client (fail closed).
    assert_eq!(
        ranges_of(lb("v4-ranges", json!(["10.0.0.0/8"]))),
        [r#"203.0.113.20 ["10.0.0.0/8"]"#, "2001:db8::20 []"]
    );
    let open = run(vec![lb("none", json!([]))], vec![]);
    assert!(
        open.iter().all(|d| d.source_ranges.is_none()),
        "no ranges: open to all"
    );
}

#[test]
fn node_ports_are_served_on_the_node_addresses_of_each_family_the_service_has() {
    let node = ThisNode {
        addresses: vec![
            "192.168.56.10".parse().expect("ip"),
            "fd00:56::10".parse().expect("ip"),
        ],
        ..ThisNode::named(NODE)
    };
    let node_port = |name: &str, ips: &[&str]| {
        let mut svc = dual(name, "PreferDualStack", ips, json!({"type": "NodePort"}));
        if let Some(port) = svc
            .spec
            .as_mut()
            .and_then(|s| s.ports.as_mut())
            .and_then(|p| p.first_mut())
        {
            port.node_port = Some(30080 + i32::from(ips.len() as u8));
        }
        svc
    };
    let snapshot = Snapshot {
        services: vec![
            node_port("both", &["10.96.4.1", "fd00::4:1"]),
            node_port("v6", &["fd00::4:2"]),
        ],
        slices: vec![],
        node_zone: None,
    };
    let node_ports: Vec<String> = desired_services(&snapshot, &node)
        .iter()
        .filter(|d| d.kind == FrontendKind::NodePort)
        .map(|d| d.frontend.to_string())
        .collect();
    assert_eq!(
        node_ports,
        [
            "192.168.56.10:30082/TCP",
            "[fd00:56::10]:30081/TCP",
            "[fd00:56::10]:30082/TCP",
        ]
    );
}

#[test]
fn case_5_two_udp_ports_are_two_frontends_and_a_type_change_keeps_them() {
    let svc = cluster_ip(
        "ns",
        "s",
        "172.16.55.4",
        &[("p1", 1234, "UDP"), ("p2", 1235, "UDP")],
    );
    let desired = run(vec![svc.clone()], vec![]);
    assert_eq!(
        frontends(&desired),
        ["172.16.55.4:1234/UDP", "172.16.55.4:1235/UDP"]
    );
    let mut lb = svc;
    if let Some(spec) = lb.spec.as_mut() {
        spec.type_ = Some("LoadBalancer".to_owned());
    }
    assert_eq!(run(vec![lb], vec![]), desired);
}

#[test]
fn case_5_removed_ports_and_deleted_services_leave_one_frontend() {
    let all: Vec<Service> = (1..=4)
        .map(|i| {
            cluster_ip(
                "ns",
                &format!("s{i}"),
                &format!("10.96.0.{i}"),
                &[("a", 80, "TCP"), ("b", 81, "UDP")],
            )
        })
        .collect();
    assert_eq!(run(all, vec![]).len(), 8);
    let left = vec![cluster_ip("ns", "s1", "10.96.0.1", &[("a", 80, "TCP")])];
    assert_eq!(frontends(&run(left, vec![])), ["10.96.0.1:80/TCP"]);
}

#[test]
fn case_6_one_slice_gives_every_port_all_endpoints_and_marks_the_local_one() {
    let svc = cluster_ip(
        "ns1",
        "svc1",
        "10.96.1.1",
        &[("port-0", 80, "TCP"), ("port-1", 443, "TCP")],
    );
    let eps = vec![
        ready("10.0.1.1", "host2"),
        ready("10.0.1.2", NODE),
        ready("10.0.1.3", "host2"),
    ];
    let s = slice(
        "ns1",
        "svc1-1",
        "svc1",
        json!([tcp("port-0", 80), tcp("port-1", 443)]),
        eps,
    );
    let desired = run(vec![svc], vec![s]);
    assert_eq!(
        render(&desired),
        "10.96.1.1:80/TCP ns1/svc1:port-0\n  10.0.1.1:80 active remote\n  10.0.1.2:80 active local\n  10.0.1.3:80 active remote\n\
         10.96.1.1:443/TCP ns1/svc1:port-1\n  10.0.1.1:443 active remote\n  10.0.1.2:443 active local\n  10.0.1.3:443 active remote\n"
    );
}

#[test]
fn case_7_slices_of_a_service_are_unioned_and_a_resent_slice_replaces_its_endpoints() {
    let svc = cluster_ip("ns1", "svc1", "10.96.1.1", &[("port-0", 80, "TCP")]);
    let three = |prefix: &str| {
        (1..=3)
            .map(|i| ready(&format!("{prefix}.{i}"), "host2"))
            .collect::<Vec<_>>()
    };
    let s1 = slice(
        "ns1",
        "svc1-1",
        "svc1",
        json!([tcp("port-0", 80)]),
        three("10.0.1"),
    );
    let s2 = slice(
        "ns1",
        "svc1-2",
        "svc1",
        json!([tcp("port-0", 80)]),
        three("10.0.2"),
    );
    assert_eq!(
        run(vec![svc.clone()], vec![s1, s2.clone()])[0]
            .backends
            .len(),
        6
    );
    let four = (1..=4)
        .map(|i| ready(&format!("10.0.9.{i}"), "host2"))
        .collect();
    let s1_again = slice("ns1", "svc1-1", "svc1", json!([tcp("port-0", 80)]), four);
    assert_eq!(
        run(vec![svc.clone()], vec![s1_again.clone()])[0]
            .backends
            .len(),
        4
    );
    assert_eq!(run(vec![svc], vec![s1_again, s2])[0].backends.len(), 7);
}

#[test]
fn case_8_slices_never_leak_between_services_or_namespaces_and_a_nil_port_is_skipped() {
    let services = vec![
        cluster_ip("ns1", "svc1", "10.96.1.1", &[("port-0", 80, "TCP")]),
        cluster_ip("ns1", "svc2", "10.96.1.2", &[("port-0", 80, "TCP")]),
        cluster_ip("ns2", "svc1", "10.96.2.1", &[("port-0", 80, "TCP")]),
    ];
    let slices = vec![
        slice(
            "ns1",
            "svc1-1",
            "svc1",
            json!([tcp("port-0", 80)]),
            vec![ready("10.0.1.1", NODE)],
        ),
        slice(
            "ns1",
            "svc2-1",
            "svc2",
            json!([tcp("port-0", 80)]),
            vec![ready("10.0.2.1", NODE)],
        ),
        slice(
            "ns2",
            "svc1-1",
            "svc1",
            json!([{"name": "port-0", "protocol": "TCP"}]),
            vec![ready("10.0.3.1", NODE)],
        ),
    ];
    let desired = run(services, slices);
    assert_eq!(
        backends(&desired, "10.96.1.1:80/TCP"),
        ["10.0.1.1:80 active"]
    );
    assert_eq!(
        backends(&desired, "10.96.1.2:80/TCP"),
        ["10.0.2.1:80 active"]
    );
    assert!(
        backends(&desired, "10.96.2.1:80/TCP").is_empty(),
        "nil slice port is skipped"
    );
}

#[test]
fn case_9_the_same_ips_on_different_resolved_ports_are_separate_backends() {
    let svc = cluster_ip("ns1", "svc1", "10.96.1.1", &[("port-0", 80, "TCP")]);
    let eps = || vec![ready("10.0.1.1", NODE), ready("10.0.1.2", NODE)];
    let s1 = slice("ns1", "svc1-1", "svc1", json!([tcp("port-0", 80)]), eps());
    let s2 = slice("ns1", "svc1-2", "svc1", json!([tcp("port-0", 8080)]), eps());
    assert_eq!(
        backends(&run(vec![svc], vec![s1, s2]), "10.96.1.1:80/TCP"),
        [
            "10.0.1.1:80 active",
            "10.0.1.1:8080 active",
            "10.0.1.2:80 active",
            "10.0.1.2:8080 active"
        ]
    );
}

#[test]
fn case_10_fqdn_and_ipv6_slices_change_nothing() {
    let svc = cluster_ip("ns1", "svc1", "10.96.1.1", &[("port-0", 80, "TCP")]);
    let v4 = slice(
        "ns1",
        "svc1-1",
        "svc1",
        json!([tcp("port-0", 80)]),
        vec![ready("10.0.1.1", NODE)],
    );
    let before = run(vec![svc.clone()], vec![v4.clone()]);
    let mut fqdn = slice(
        "ns1",
        "svc1-f",
        "svc1",
        json!([tcp("port-0", 80)]),
        vec![ready("example.com", NODE)],
    );
    fqdn.address_type = "FQDN".to_owned();
    let mut v6 = slice(
        "ns1",
        "svc1-6",
        "svc1",
        json!([tcp("port-0", 80)]),
        vec![ready("fd00::5", NODE)],
    );
    v6.address_type = "IPv6".to_owned();
    assert_eq!(run(vec![svc], vec![v4, fqdn, v6]), before);
}

#[test]
fn case_11_the_same_objects_in_any_order_give_the_same_result() {
    let snapshot = fixture("a-checkout-two-slices");
    let mut reversed = snapshot.clone();
    reversed.slices.reverse();
    assert_eq!(
        desired_services(&snapshot, &ThisNode::named(NODE)),
        desired_services(&reversed, &ThisNode::named(NODE))
    );
}

#[test]
fn case_12_deleting_one_of_two_slices_keeps_only_the_others_endpoints() {
    let svc = cluster_ip("ns1", "svc1", "10.96.1.1", &[("port-0", 80, "TCP")]);
    let s1 = slice(
        "ns1",
        "svc1-1",
        "svc1",
        json!([tcp("port-0", 80)]),
        vec![ready("10.0.1.1", NODE)],
    );
    let s2 = slice(
        "ns1",
        "svc1-2",
        "svc1",
        json!([tcp("port-0", 80)]),
        vec![ready("10.0.2.1", NODE)],
    );
    assert_eq!(
        run(vec![svc.clone()], vec![s1, s2.clone()])[0]
            .backends
            .len(),
        2
    );
    assert_eq!(
        backends(&run(vec![svc], vec![s2]), "10.96.1.1:80/TCP"),
        ["10.0.2.1:80 active"]
    );
}

#[test]
fn case_13_an_endpoint_moving_between_slices_appears_once_and_other_ports_are_unchanged() {
    let svc = cluster_ip(
        "ns1",
        "svc1",
        "10.96.1.1",
        &[("p11", 11, "TCP"), ("p12", 12, "TCP")],
    );
    let old = slice(
        "ns1",
        "svc1-1",
        "svc1",
        json!([tcp("p11", 11), tcp("p12", 12)]),
        vec![ready("10.0.1.1", NODE)],
    );
    let new = slice(
        "ns1",
        "svc1-2",
        "svc1",
        json!([tcp("p11", 11)]),
        vec![ready("10.0.1.1", NODE), ready("10.0.1.2", NODE)],
    );
    let desired = run(vec![svc], vec![old, new]);
    assert_eq!(
        backends(&desired, "10.96.1.1:11/TCP"),
        ["10.0.1.1:11 active", "10.0.1.2:11 active"]
    );
    assert_eq!(
        backends(&desired, "10.96.1.1:12/TCP"),
        ["10.0.1.1:12 active"]
    );
}

#[test]
fn case_14_a_renamed_slice_port_empties_the_old_name_and_a_renumbered_one_moves_the_backend() {
    let svc = cluster_ip("ns1", "svc1", "10.96.1.1", &[("p11", 11, "TCP")]);
    let renamed = slice(
        "ns1",
        "svc1-1",
        "svc1",
        json!([tcp("p11-2", 11)]),
        vec![ready("10.0.1.1", NODE)],
    );
    let desired = run(vec![svc.clone()], vec![renamed]);
    assert!(desired[0].backends.is_empty());
    assert!(
        !desired[0].has_any_endpoints,
        "no endpoints for the port: reject"
    );
    let renumbered = slice(
        "ns1",
        "svc1-1",
        "svc1",
        json!([tcp("p11", 22)]),
        vec![ready("10.0.1.1", NODE)],
    );
    assert_eq!(
        backends(&run(vec![svc], vec![renumbered]), "10.96.1.1:11/TCP"),
        ["10.0.1.1:22 active"]
    );
}

#[test]
fn case_15_endpoint_lifecycle_on_an_unnamed_port() {
    let svc = cluster_ip("ns1", "svc1", "10.96.1.1", &[("", 80, "TCP")]);
    let with = |eps| vec![slice("ns1", "svc1-1", "svc1", json!([tcp("", 80)]), eps)];
    assert!(run(vec![svc.clone()], with(vec![]))[0].backends.is_empty());
    assert_eq!(
        backends(
            &run(vec![svc.clone()], with(vec![ready("10.1.1.1", NODE)])),
            "10.96.1.1:80/TCP"
        ),
        ["10.1.1.1:80 active"]
    );
    // Ready → terminating: still used (the only serving endpoint, KEP-1669 fallback).
    let terminating = with(vec![cond("10.1.1.1", NODE, (false, true, true))]);
    assert_eq!(
        backends(&run(vec![svc.clone()], terminating), "10.96.1.1:80/TCP"),
        ["10.1.1.1:80 active"]
    );
    let gone = run(vec![svc], with(vec![]));
    assert!(gone[0].backends.is_empty() && !gone[0].has_any_endpoints);
}

#[test]
fn case_17_18_node_hints_narrow_ready_endpoints_only_when_every_ready_one_has_them() {
    // §2.1 PreferSameNode; zone hints are the tests below.
    let svc = cluster_ip("ns1", "svc1", "10.96.1.1", &[("", 80, "TCP")]);
    let hinted = |ip: &str, node: &str| json!({"addresses": [ip], "conditions": {"ready": true}, "nodeName": node, "hints": {"forNodes": [{"name": node}]}});
    let eps = vec![
        hinted("10.1.1.1", NODE),
        hinted("10.1.1.2", "host2"),
        cond("10.1.1.3", NODE, (false, false, false)),
    ];
    let s = slice("ns1", "svc1-1", "svc1", json!([tcp("", 80)]), eps.clone());
    assert_eq!(
        backends(&run(vec![svc.clone()], vec![s]), "10.96.1.1:80/TCP"),
        ["10.1.1.1:80 active"]
    );

    // One ready endpoint without hints → hints ignored entirely.
    let mut missing = eps.clone();
    missing.push(ready("10.1.1.4", "host2"));
    let s = slice("ns1", "svc1-1", "svc1", json!([tcp("", 80)]), missing);
    assert_eq!(run(vec![svc.clone()], vec![s])[0].backends.len(), 3);

    // Nothing hinted for this node → hints ignored.
    let s = slice(
        "ns1",
        "svc1-1",
        "svc1",
        json!([tcp("", 80)]),
        vec![hinted("10.1.1.2", "host2"), hinted("10.1.1.5", "host3")],
    );
    assert_eq!(run(vec![svc], vec![s])[0].backends.len(), 2);
}

#[test]
fn case_19_local_policy_with_only_remote_endpoints_drops_and_with_one_local_uses_only_it() {
    let mut svc = cluster_ip("ns1", "svc1", "10.96.1.1", &[("", 80, "TCP")]);
    if let Some(spec) = svc.spec.as_mut() {
        spec.internal_traffic_policy = Some("Local".to_owned());
    }
    let remote = slice(
        "ns1",
        "svc1-1",
        "svc1",
        json!([tcp("", 80)]),
        vec![ready("10.0.0.1", "host2"), ready("10.0.0.2", "host3")],
    );
    let desired = run(vec![svc.clone()], vec![remote]);
    assert!(desired[0].backends.is_empty());
    assert!(desired[0].has_any_endpoints, "drop, not reject");
    let one_local = slice(
        "ns1",
        "svc1-1",
        "svc1",
        json!([tcp("", 80)]),
        vec![ready("10.0.0.1", "host2"), ready("10.0.0.3", NODE)],
    );
    assert_eq!(
        backends(&run(vec![svc], vec![one_local]), "10.96.1.1:80/TCP"),
        ["10.0.0.3:80 active"]
    );
}

#[test]
fn case_20_all_serving_terminating_with_cluster_policy_are_all_used() {
    let svc = cluster_ip("ns1", "svc1", "10.96.1.1", &[("", 80, "TCP")]);
    let eps = vec![
        cond("10.0.0.1", NODE, (false, true, true)),
        cond("10.0.0.2", "host2", (false, true, true)),
    ];
    let s = slice("ns1", "svc1-1", "svc1", json!([tcp("", 80)]), eps);
    assert_eq!(
        backends(&run(vec![svc], vec![s]), "10.96.1.1:80/TCP"),
        ["10.0.0.1:80 active", "10.0.0.2:80 active"]
    );
}

#[test]
fn case_21_22_cluster_policy_uses_ready_ones_and_keeps_serving_terminating_ones_to_drain() {
    // eTP Local on a ClusterIP-only Service is ignored (21); the cluster set is {.0} (22).
    let mut svc = cluster_ip("ns1", "svc1", "10.96.1.1", &[("", 80, "TCP")]);
    if let Some(spec) = svc.spec.as_mut() {
        spec.external_traffic_policy = Some("Local".to_owned());
    }
    let eps = vec![
        ready("10.0.0.0", "host2"),
        cond("10.0.0.1", NODE, (false, false, true)),
        cond("10.0.0.2", NODE, (false, true, true)),
        cond("10.0.0.3", "host2", (false, true, true)),
    ];
    let s = slice("ns1", "svc1-1", "svc1", json!([tcp("", 80)]), eps);
    assert_eq!(
        render(&run(vec![svc], vec![s])),
        "10.96.1.1:80/TCP ns1/svc1:\n  10.0.0.0:80 active remote\n  10.0.0.2:80 terminating local\n  10.0.0.3:80 terminating remote\n"
    );
}

#[test]
fn case_23_tcp_udp_and_sctp_on_one_port_number_resolve_separately_and_sctp_is_skipped() {
    let svc = cluster_ip(
        "ns1",
        "svc1",
        "172.30.0.41",
        &[
            ("dns-tcp", 53, "TCP"),
            ("dns-udp", 53, "UDP"),
            ("dns-sctp", 53, "SCTP"),
        ],
    );
    let ports = json!([tcp("dns-tcp", 5353), {"name": "dns-udp", "port": 53, "protocol": "UDP"}, {"name": "dns-sctp", "port": 53, "protocol": "SCTP"}]);
    let s = slice(
        "ns1",
        "svc1-1",
        "svc1",
        ports,
        vec![ready("10.180.0.1", NODE)],
    );
    let desired = run(vec![svc], vec![s]);
    assert_eq!(
        frontends(&desired),
        ["172.30.0.41:53/TCP", "172.30.0.41:53/UDP"]
    );
    assert_eq!(
        backends(&desired, "172.30.0.41:53/TCP"),
        ["10.180.0.1:5353 active"]
    );
    assert_eq!(
        backends(&desired, "172.30.0.41:53/UDP"),
        ["10.180.0.1:53 active"]
    );
}

#[test]
fn case_24_29_no_endpoints_is_a_frontend_without_backends_that_rejects() {
    let desired = run(
        vec![cluster_ip("ns1", "svc1", "10.96.1.1", &[("", 80, "TCP")])],
        vec![],
    );
    assert_eq!(frontends(&desired), ["10.96.1.1:80/TCP"]);
    assert!(desired[0].backends.is_empty() && !desired[0].has_any_endpoints);
}

#[test]
fn case_25_terminating_endpoints_are_drain_only_while_ready_ones_exist_and_never_non_serving() {
    let svc = cluster_ip("ns1", "svc1", "10.96.1.1", &[("", 80, "TCP")]);
    let mixed = vec![
        ready("10.0.0.1", NODE),
        cond("10.0.0.2", NODE, (false, true, true)),
        cond("10.0.0.3", NODE, (false, false, true)),
    ];
    let s = slice("ns1", "svc1-1", "svc1", json!([tcp("", 80)]), mixed);
    assert_eq!(
        backends(&run(vec![svc.clone()], vec![s]), "10.96.1.1:80/TCP"),
        ["10.0.0.1:80 active", "10.0.0.2:80 terminating"]
    );
    let only_terminating = vec![
        cond("10.0.0.2", NODE, (false, true, true)),
        cond("10.0.0.3", NODE, (false, false, true)),
    ];
    let s = slice(
        "ns1",
        "svc1-1",
        "svc1",
        json!([tcp("", 80)]),
        only_terminating,
    );
    assert_eq!(
        backends(&run(vec![svc.clone()], vec![s]), "10.96.1.1:80/TCP"),
        ["10.0.0.2:80 active"]
    );
    let unusable = vec![
        cond("10.0.0.3", NODE, (false, false, true)),
        cond("10.0.0.4", NODE, (false, false, false)),
    ];
    let s = slice("ns1", "svc1-1", "svc1", json!([tcp("", 80)]), unusable);
    let desired = run(vec![svc], vec![s]);
    assert!(desired[0].backends.is_empty() && !desired[0].has_any_endpoints);
}

#[test]
fn case_26_32_client_ip_affinity_defaults_to_10800_seconds_and_keeps_an_explicit_timeout() {
    let affinity = |config: Value| {
        let svc = service(
            "ns",
            "s",
            json!({"clusterIP": "10.96.0.5", "ports": [{"port": 80}], "sessionAffinity": "ClientIP", "sessionAffinityConfig": config}),
        );
        run(vec![svc], vec![])[0].affinity_timeout_secs
    };
    assert_eq!(affinity(Value::Null), Some(10_800));
    assert_eq!(
        affinity(json!({"clientIP": {"timeoutSeconds": 125}})),
        Some(125)
    );
    let none = service(
        "ns",
        "s",
        json!({"clusterIP": "10.96.0.5", "ports": [{"port": 80}], "sessionAffinity": "None"}),
    );
    assert_eq!(run(vec![none], vec![])[0].affinity_timeout_secs, None);
}

#[test]
fn the_lb_algorithm_annotation_names_random_or_maglev_and_anything_else_is_ignored() {
    let algorithm = |annotation: Option<&str>| {
        let mut svc = service(
            "ns",
            "s",
            json!({"clusterIP": "10.96.0.5", "ports": [{"port": 80}]}),
        );
        if let Some(value) = annotation {
            svc.metadata.annotations = Some(
                [(
                    crate::model::LB_ALGORITHM_ANNOTATION.to_owned(),
                    value.to_owned(),
                )]
                .into(),
            );
        }
        run(vec![svc], vec![])[0].algorithm
    };
    assert_eq!(algorithm(None), None);
    assert_eq!(algorithm(Some("maglev")), Some(LbAlgorithm::Maglev));
    assert_eq!(algorithm(Some("random")), Some(LbAlgorithm::Random));
    assert_eq!(algorithm(Some("round-robin")), None);
}

#[test]
fn case_27_each_named_target_port_reaches_only_its_pod() {
    let svc = cluster_ip(
        "ns",
        "multi",
        "10.96.3.3",
        &[("portname1", 80, "TCP"), ("portname2", 81, "TCP")],
    );
    let s1 = slice(
        "ns",
        "multi-a",
        "multi",
        json!([tcp("portname1", 100)]),
        vec![ready("10.244.0.11", NODE)],
    );
    let s2 = slice(
        "ns",
        "multi-b",
        "multi",
        json!([tcp("portname2", 101)]),
        vec![ready("10.244.0.12", NODE)],
    );
    let desired = run(vec![svc], vec![s1, s2]);
    assert_eq!(
        backends(&desired, "10.96.3.3:80/TCP"),
        ["10.244.0.11:100 active"]
    );
    assert_eq!(
        backends(&desired, "10.96.3.3:81/TCP"),
        ["10.244.0.12:101 active"]
    );
}

#[test]
fn case_28_removing_one_protocol_of_a_port_removes_only_that_frontend() {
    let both = cluster_ip(
        "ns",
        "s",
        "10.96.4.4",
        &[("tcp", 80, "TCP"), ("udp", 80, "UDP")],
    );
    assert_eq!(
        frontends(&run(vec![both], vec![])),
        ["10.96.4.4:80/TCP", "10.96.4.4:80/UDP"]
    );
    let tcp_only = cluster_ip("ns", "s", "10.96.4.4", &[("tcp", 80, "TCP")]);
    assert_eq!(
        frontends(&run(vec![tcp_only], vec![])),
        ["10.96.4.4:80/TCP"]
    );
}

#[test]
fn case_30_publish_not_ready_addresses_makes_the_controller_mark_unready_pods_ready() {
    // The controller writes ready = publishNotReadyAddresses || ...; lb only reads `ready`.
    let svc = cluster_ip("ns", "s", "10.96.5.5", &[("", 80, "TCP")]);
    let s = slice(
        "ns",
        "s-1",
        "s",
        json!([tcp("", 80)]),
        vec![cond("10.0.0.7", NODE, (true, false, true))],
    );
    assert_eq!(
        backends(&run(vec![svc], vec![s]), "10.96.5.5:80/TCP"),
        ["10.0.0.7:80 active"]
    );
}

#[test]
fn case_31_deleting_the_only_pod_keeps_it_reachable_from_every_node_unless_local_policy() {
    let mut svc = cluster_ip("ns", "s", "10.96.6.6", &[("", 80, "TCP")]);
    let s = slice(
        "ns",
        "s-1",
        "s",
        json!([tcp("", 80)]),
        vec![cond("10.0.0.8", "host2", (false, true, true))],
    );
    let snapshot = Snapshot {
        services: vec![svc.clone()],
        slices: vec![s.clone()],
        node_zone: None,
    };
    for node in [NODE, "host2"] {
        assert_eq!(
            backends(
                &desired_services(&snapshot, &ThisNode::named(node)),
                "10.96.6.6:80/TCP"
            ),
            ["10.0.0.8:80 active"]
        );
    }
    if let Some(spec) = svc.spec.as_mut() {
        spec.internal_traffic_policy = Some("Local".to_owned());
    }
    let snapshot = Snapshot {
        services: vec![svc],
        slices: vec![s],
        node_zone: None,
    };
    assert_eq!(
        backends(
            &desired_services(&snapshot, &ThisNode::named("host2")),
            "10.96.6.6:80/TCP"
        ),
        ["10.0.0.8:80 active"]
    );
    let elsewhere = desired_services(&snapshot, &ThisNode::named(NODE));
    assert!(elsewhere[0].backends.is_empty() && elsewhere[0].has_any_endpoints);
}

#[test]
fn case_33_opt_out_labels_remove_the_service_and_its_slices() {
    for label in [SERVICE_PROXY_NAME_LABEL, HEADLESS_LABEL] {
        let mut svc = cluster_ip("ns", "s", "10.96.7.7", &[("", 80, "TCP")]);
        svc.metadata.labels = Some([(label.to_owned(), "other-proxy".to_owned())].into());
        assert!(run(vec![svc], vec![]).is_empty(), "{label}");
        let svc = cluster_ip("ns", "s", "10.96.7.7", &[("", 80, "TCP")]);
        let mut s = slice(
            "ns",
            "s-1",
            "s",
            json!([tcp("", 80)]),
            vec![ready("10.0.0.9", NODE)],
        );
        s.metadata
            .labels
            .get_or_insert_default()
            .insert(label.to_owned(), String::new());
        assert!(
            run(vec![svc], vec![s])[0].backends.is_empty(),
            "{label} on a slice"
        );
    }
}

#[test]
fn case_34_deleting_recreating_and_external_name_round_trips() {
    let a = cluster_ip("ns", "a", "10.96.8.1", &[("", 80, "TCP")]);
    let b = cluster_ip("ns", "b", "10.96.8.2", &[("", 80, "TCP")]);
    assert_eq!(
        frontends(&run(vec![a.clone(), b], vec![])),
        ["10.96.8.1:80/TCP", "10.96.8.2:80/TCP"]
    );
    assert_eq!(
        frontends(&run(vec![a.clone()], vec![])),
        ["10.96.8.1:80/TCP"]
    );
    let recreated = cluster_ip("ns", "b", "10.96.8.3", &[("", 80, "TCP")]);
    assert_eq!(
        frontends(&run(vec![a, recreated], vec![])),
        ["10.96.8.1:80/TCP", "10.96.8.3:80/TCP"]
    );
    let external = service(
        "ns",
        "a",
        json!({"type": "ExternalName", "externalName": "x.example", "ports": [{"port": 80}]}),
    );
    assert!(run(vec![external], vec![]).is_empty());
}

#[test]
fn case_36_dual_stack_serves_two_vips_each_from_its_own_slice() {
    let svc = service(
        "ns",
        "d",
        json!({"clusterIP": "10.96.9.9", "clusterIPs": ["10.96.9.9", "fd00::9"], "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "RequireDualStack", "ports": [{"port": 80}]}),
    );
    let v4 = slice(
        "ns",
        "d-4",
        "d",
        json!([tcp("", 80)]),
        vec![ready("10.0.0.10", NODE)],
    );
    let v6 = slice6(
        "ns",
        "d-6",
        "d",
        json!([tcp("", 80)]),
        vec![ready("fd00::10", NODE)],
    );
    assert_eq!(
        render(&run(vec![svc], vec![v4, v6])),
        "10.96.9.9:80/TCP ns/d:\n  10.0.0.10:80 active local\n\
         [fd00::9]:80/TCP ns/d:\n  [fd00::10]:80 active local\n"
    );
}

// ---- §1 details ----

#[test]
fn duplicates_across_slices_keep_the_non_terminating_copy() {
    let svc = cluster_ip("ns", "s", "10.96.10.1", &[("", 80, "TCP")]);
    let old = slice(
        "ns",
        "s-a",
        "s",
        json!([tcp("", 80)]),
        vec![cond("10.0.0.1", NODE, (false, true, true))],
    );
    let new = slice(
        "ns",
        "s-b",
        "s",
        json!([tcp("", 80)]),
        vec![ready("10.0.0.1", NODE)],
    );
    assert_eq!(
        backends(&run(vec![svc], vec![old, new]), "10.96.10.1:80/TCP"),
        ["10.0.0.1:80 active"]
    );
}

#[test]
fn nil_conditions_default_to_ready_serving_not_terminating_and_only_the_first_address_counts() {
    let svc = cluster_ip("ns", "s", "10.96.10.2", &[("", 80, "TCP")]);
    let ep = json!({"addresses": ["10.0.0.2", "10.0.0.3"]});
    let s = slice("ns", "s-a", "s", json!([tcp("", 80)]), vec![ep]);
    assert_eq!(
        render(&run(vec![svc], vec![s])),
        // No nodeName and not this node's address: remote.
        "10.96.10.2:80/TCP ns/s:\n  10.0.0.2:80 active remote\n"
    );
}

#[test]
fn a_slice_arriving_before_its_service_is_used_once_the_service_exists() {
    let s = slice(
        "ns",
        "s-a",
        "s",
        json!([tcp("", 80)]),
        vec![ready("10.0.0.4", NODE)],
    );
    assert!(run(vec![], vec![s.clone()]).is_empty());
    let svc = cluster_ip("ns", "s", "10.96.10.3", &[("", 80, "TCP")]);
    assert_eq!(
        backends(&run(vec![svc], vec![s]), "10.96.10.3:80/TCP"),
        ["10.0.0.4:80 active"]
    );
}

#[test]
fn malformed_fields_are_skipped_without_panicking() {
    let bad_vip = service(
        "ns",
        "bad-vip",
        json!({"clusterIP": "10.96.300.1", "ports": [{"port": 80}]}),
    );
    let bad_port = service(
        "ns",
        "bad-port",
        json!({"clusterIP": "10.96.11.1", "ports": [{"port": 70000}, {"port": 0}, {"port": 81, "protocol": "ICMP"}]}),
    );
    let unnamed = service(
        "ns",
        "",
        json!({"clusterIP": "10.96.11.2", "ports": [{"port": 80}]}),
    );
    let good = cluster_ip("ns", "good", "10.96.11.3", &[("", 80, "TCP")]);
    let eps = vec![
        json!({"addresses": []}),
        json!({"addresses": ["not-an-ip"]}),
        json!({"addresses": ["010.0.0.1"]}),
        ready("10.0.0.5", NODE),
    ];
    let s = slice(
        "ns",
        "good-a",
        "good",
        json!([{"name": "", "port": 99999, "protocol": "TCP"}]),
        eps.clone(),
    );
    let s2 = slice("ns", "good-b", "good", json!([tcp("", 80)]), eps);
    let mut orphan = slice(
        "ns",
        "orphan",
        "x",
        json!([tcp("", 80)]),
        vec![ready("10.0.0.6", NODE)],
    );
    orphan.metadata.labels = None;
    let desired = run(vec![bad_vip, bad_port, unnamed, good], vec![s, s2, orphan]);
    assert_eq!(
        render(&desired),
        "10.96.11.3:80/TCP ns/good:\n  10.0.0.5:80 active local\n"
    );
}

#[test]
fn two_services_claiming_one_frontend_keep_the_first_by_name() {
    let a = cluster_ip("ns", "a", "10.96.12.1", &[("", 80, "TCP")]);
    let b = cluster_ip("ns", "b", "10.96.12.1", &[("", 80, "TCP")]);
    let desired = run(vec![b, a], vec![]);
    assert_eq!(desired.len(), 1);
    assert_eq!(desired[0].name, "a");
}

#[test]
fn frontend_displays_as_vip_port_protocol() {
    let f = Frontend {
        vip: std::net::Ipv4Addr::new(10, 96, 0, 10).into(),
        port: 53,
        protocol: Protocol::Udp,
    };
    assert_eq!(f.to_string(), "10.96.0.10:53/UDP");
}

// ---- External destinations: node ports, externalIPs, load-balancer IPs ----

/// This node with two addresses node ports are served on.
fn node_with_addresses() -> ThisNode {
    ThisNode {
        name: NODE.to_owned(),
        addresses: vec![
            "192.168.56.11".parse().unwrap(),
            "10.0.9.1".parse().unwrap(),
        ],
        node_ports: DEFAULT_NODE_PORTS,
        zone: None,
    }
}

/// Frontends as `VIP:port/PROTO kind [Local]`.
fn kinds(desired: &[DesiredService]) -> Vec<String> {
    desired
        .iter()
        .map(|d| {
            let local = if d.local_only { " Local" } else { "" };
            format!("{} {}{local}", d.frontend, d.kind)
        })
        .collect()
}

#[test]
fn a_node_port_service_is_served_on_every_node_address_and_its_cluster_ip() {
    let svc = service(
        "ns1",
        "web",
        json!({"type": "NodePort", "clusterIP": "10.96.1.1", "clusterIPs": ["10.96.1.1"],
               "ports": [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080},
                         {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053}]}),
    );
    let snapshot = Snapshot {
        services: vec![svc],
        slices: vec![slice(
            "ns1",
            "web-1",
            "web",
            json!([tcp("http", 8080), {"name": "dns", "port": 5353, "protocol": "UDP"}]),
            vec![ready("10.244.1.5", "host2")],
        )],
        node_zone: None,
    };
    let desired = desired_services(&snapshot, &node_with_addresses());
    assert_eq!(
        kinds(&desired),
        [
            "10.0.9.1:30053/UDP NodePort",
            "10.0.9.1:30080/TCP NodePort",
            "10.96.1.1:53/UDP ClusterIP",
            "10.96.1.1:80/TCP ClusterIP",
            "192.168.56.11:30053/UDP NodePort",
            "192.168.56.11:30080/TCP NodePort",
        ]
    );
    // Every frontend of a port reaches the same backends.
    assert_eq!(
        backends(&desired, "192.168.56.11:30080/TCP"),
        ["10.244.1.5:8080 active"]
    );
    assert_eq!(
        backends(&desired, "10.0.9.1:30053/UDP"),
        ["10.244.1.5:5353 active"]
    );
    // A node without addresses (the tests' `ThisNode::named`) serves the ClusterIPs only.
    assert_eq!(frontends(&run(snapshot.services, snapshot.slices)).len(), 2);
}

#[test]
fn a_node_port_left_on_a_cluster_ip_service_is_not_served() {
    let svc = service(
        "ns1",
        "web",
        json!({"type": "ClusterIP", "clusterIP": "10.96.1.1",
               "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}]}),
    );
    let snapshot = Snapshot {
        services: vec![svc],
        slices: vec![],
        node_zone: None,
    };
    assert_eq!(
        kinds(&desired_services(&snapshot, &node_with_addresses())),
        ["10.96.1.1:80/TCP ClusterIP"]
    );
}

#[test]
fn case_3_4_external_and_load_balancer_ips_of_this_family_are_frontends_and_proxy_mode_is_not() {
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"namespace": "ns1", "name": "lb"},
        "spec": {"type": "LoadBalancer", "clusterIP": "10.96.1.2", "clusterIPs": ["10.96.1.2"],
                 "allocateLoadBalancerNodePorts": false,
                 "externalIPs": ["198.51.100.7", "2001:db8::7", "not-an-ip"],
                 "ports": [{"port": 443, "protocol": "TCP"}]},
        "status": {"loadBalancer": {"ingress": [
            {"ip": "203.0.113.10"},
            {"ip": "203.0.113.11", "ipMode": "Proxy"},
            {"hostname": "lb.example.com"},
            {"ip": "2001:db8::10"},
        ]}},
    }))
    .expect("service");
    let desired = desired_services(
        &Snapshot {
            services: vec![svc],
            slices: vec![],
            node_zone: None,
        },
        &node_with_addresses(),
    );
    // No node ports (allocateLoadBalancerNodePorts: false), no IPv6, no Proxy-mode IP.
    assert_eq!(
        kinds(&desired),
        [
            "10.96.1.2:443/TCP ClusterIP",
            "198.51.100.7:443/TCP ExternalIPs",
            "203.0.113.10:443/TCP LoadBalancer",
        ]
    );
}

#[test]
fn load_balancer_ingress_of_a_service_that_is_no_longer_a_load_balancer_is_not_served() {
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"namespace": "ns1", "name": "lb"},
        "spec": {"type": "ClusterIP", "clusterIP": "10.96.1.2", "ports": [{"port": 443}]},
        "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}]}},
    }))
    .expect("service");
    let desired = run(vec![svc], vec![]);
    assert_eq!(kinds(&desired), ["10.96.1.2:443/TCP ClusterIP"]);
}

#[test]
fn case_22_25_external_traffic_policy_local_gives_external_frontends_the_local_set_only() {
    // iTP Cluster + eTP Local: ClusterIP traffic uses the cluster set {.0}, the node port the
    // local set {.2} (22); with only remote endpoints the node port has no backend but
    // endpoints exist, so it drops while the ClusterIP still works (25).
    let svc = |name: &str| {
        service(
            "ns1",
            name,
            json!({"type": "NodePort", "clusterIP": "10.96.1.1", "externalTrafficPolicy": "Local",
                   "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}]}),
        )
    };
    let eps = vec![
        ready("10.0.0.0", "host2"),
        cond("10.0.0.1", NODE, (false, false, true)),
        cond("10.0.0.2", NODE, (false, true, true)),
        cond("10.0.0.3", "host2", (false, true, true)),
    ];
    let snapshot = Snapshot {
        services: vec![svc("svc1")],
        slices: vec![slice("ns1", "svc1-1", "svc1", json!([tcp("", 80)]), eps)],
        node_zone: None,
    };
    let node = ThisNode {
        name: NODE.to_owned(),
        addresses: vec!["192.168.56.11".parse().unwrap()],
        node_ports: DEFAULT_NODE_PORTS,
        zone: None,
    };
    let desired = desired_services(&snapshot, &node);
    assert_eq!(
        kinds(&desired),
        [
            "10.96.1.1:80/TCP ClusterIP",
            "192.168.56.11:30080/TCP NodePort Local"
        ]
    );
    assert_eq!(
        backends(&desired, "10.96.1.1:80/TCP"),
        [
            "10.0.0.0:80 active",
            "10.0.0.2:80 terminating",
            "10.0.0.3:80 terminating"
        ]
    );
    assert_eq!(
        backends(&desired, "192.168.56.11:30080/TCP"),
        ["10.0.0.2:80 active"]
    );

    let remote_only = Snapshot {
        services: vec![svc("svc2")],
        slices: vec![slice(
            "ns1",
            "svc2-1",
            "svc2",
            json!([tcp("", 80)]),
            vec![ready("10.0.0.0", "host2")],
        )],
        node_zone: None,
    };
    let desired = desired_services(&remote_only, &node);
    let node_port = desired
        .iter()
        .find(|d| d.kind == FrontendKind::NodePort)
        .expect("node port");
    assert!(node_port.backends.is_empty() && node_port.has_any_endpoints);
    assert_eq!(
        backends(&desired, "10.96.1.1:80/TCP"),
        ["10.0.0.0:80 active"]
    );
}

// ---- healthCheckNodePort ----

/// A Service of `type_` with `externalTrafficPolicy: policy`, `healthCheckNodePort: 32000` and
/// two ports (http 80, https 443).
fn with_health_check(name: &str, type_: &str, policy: &str) -> Service {
    service(
        "ns1",
        name,
        json!({"type": type_, "clusterIP": "10.96.1.1", "externalTrafficPolicy": policy,
               "healthCheckNodePort": 32000,
               "ports": [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080},
                         {"name": "https", "port": 443, "protocol": "TCP", "nodePort": 30443}]}),
    )
}

/// Health checks as `ns/name:port count`.
fn health_checks(snapshot: &Snapshot) -> Vec<String> {
    desired(snapshot, &node_with_addresses())
        .health_checks
        .iter()
        .map(|h| format!("{}/{}:{} {}", h.namespace, h.name, h.port, h.local_ready))
        .collect()
}

#[test]
fn health_check_node_port_is_served_only_for_local_load_balancers() {
    // kube-proxy serves it for type LoadBalancer with eTP Local only; the apiserver refuses
    // the field elsewhere, so a value left on a NodePort or Cluster-policy Service is ignored.
    for (type_, policy, served) in [
        ("LoadBalancer", "Local", true),
        ("LoadBalancer", "Cluster", false),
        ("NodePort", "Local", false),
        ("ClusterIP", "Local", false),
    ] {
        let snapshot = Snapshot {
            services: vec![with_health_check("lb", type_, policy)],
            slices: vec![],
            node_zone: None,
        };
        let expected: Vec<String> = if served {
            vec!["ns1/lb:32000 0".to_owned()]
        } else {
            vec![]
        };
        assert_eq!(health_checks(&snapshot), expected, "{type_} eTP {policy}");
    }
}

#[test]
fn case_16_the_health_check_counts_ready_local_endpoints_by_address_only() {
    let ports = json!([tcp("http", 8080), tcp("https", 8443)]);
    let eps = vec![
        // Local and ready, behind both ports: one endpoint.
        ready("10.0.0.1", NODE),
        // Local but terminating (still serving): not counted.
        cond("10.0.0.2", NODE, (false, true, true)),
        // Local, not ready: not counted.
        cond("10.0.0.3", NODE, (false, false, false)),
        // Ready elsewhere: not counted.
        ready("10.0.0.4", "host2"),
    ];
    let snapshot = Snapshot {
        services: vec![with_health_check("lb", "LoadBalancer", "Local")],
        slices: vec![slice("ns1", "lb-1", "lb", ports.clone(), eps)],
        node_zone: None,
    };
    assert_eq!(health_checks(&snapshot), ["ns1/lb:32000 1"]);

    // All local endpoints terminating: 0 (503), although the node port still serves them.
    let terminating = Snapshot {
        services: vec![with_health_check("lb", "LoadBalancer", "Local")],
        slices: vec![slice(
            "ns1",
            "lb-1",
            "lb",
            ports,
            vec![
                cond("10.0.0.2", NODE, (false, true, true)),
                ready("10.0.0.4", "host2"),
            ],
        )],
        node_zone: None,
    };
    assert_eq!(health_checks(&terminating), ["ns1/lb:32000 0"]);
    let served = desired_services(&terminating, &node_with_addresses());
    assert_eq!(
        backends(&served, "192.168.56.11:30080/TCP"),
        ["10.0.0.2:8080 active"]
    );
}

#[test]
fn two_services_with_one_health_check_port_keep_the_first_by_name() {
    let snapshot = Snapshot {
        services: vec![
            with_health_check("b", "LoadBalancer", "Local"),
            with_health_check("a", "LoadBalancer", "Local"),
        ],
        slices: vec![slice(
            "ns1",
            "b-1",
            "b",
            json!([tcp("http", 8080)]),
            vec![ready("10.0.0.1", NODE)],
        )],
        node_zone: None,
    };
    assert_eq!(health_checks(&snapshot), ["ns1/a:32000 0"]);
}

#[test]
fn a_health_check_node_port_out_of_range_or_missing_is_not_served() {
    for port in [json!(70000), json!(0), json!(null)] {
        let svc = service(
            "ns1",
            "lb",
            json!({"type": "LoadBalancer", "clusterIP": "10.96.1.1",
                   "externalTrafficPolicy": "Local", "healthCheckNodePort": port,
                   "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}]}),
        );
        let snapshot = Snapshot {
            services: vec![svc],
            slices: vec![],
            node_zone: None,
        };
        assert_eq!(health_checks(&snapshot), Vec::<String>::new(), "{port}");
        // The Service itself is still served.
        assert_eq!(desired_services(&snapshot, &node_with_addresses()).len(), 3);
    }
}

// ---- loadBalancerSourceRanges ----

/// A LoadBalancer Service with ingress IP 203.0.113.10, an external IP, a node port and
/// `loadBalancerSourceRanges: ranges` (left out when `None`).
fn load_balancer_with_ranges(ranges: Option<Value>) -> Service {
    let mut spec = json!({"type": "LoadBalancer", "clusterIP": "10.96.1.2",
                          "externalIPs": ["198.51.100.7"],
                          "ports": [{"port": 443, "protocol": "TCP", "nodePort": 30443}]});
    if let Some(ranges) = ranges {
        spec["loadBalancerSourceRanges"] = ranges;
    }
    serde_json::from_value(json!({
        "metadata": {"namespace": "ns1", "name": "lb"},
        "spec": spec,
        "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}]}},
    }))
    .expect("service")
}

/// Each frontend's source ranges as `frontend kind ranges`, `-` for none (every client).
fn source_ranges_of(service: Service) -> Vec<String> {
    let snapshot = Snapshot {
        services: vec![service],
        slices: vec![],
        node_zone: None,
    };
    desired_services(&snapshot, &node_with_addresses())
        .iter()
        .map(|d| {
            let ranges = match &d.source_ranges {
                None => "-".to_owned(),
                Some(ranges) => {
                    let texts: Vec<String> = ranges.iter().map(ToString::to_string).collect();
                    format!("[{}]", texts.join(" "))
                }
            };
            format!("{} {} {ranges}", d.frontend, d.kind)
        })
        .collect()
}

#[test]
fn source_ranges_apply_to_load_balancer_ips_only_normalised_and_of_this_family() {
    let ranges = json!([
        " 10.0.0.0/8 ",
        "192.168.56.77/24",
        "2001:db8::/32",
        "10.0.0.0/8"
    ]);
    assert_eq!(
        source_ranges_of(load_balancer_with_ranges(Some(ranges))),
        [
            "10.0.9.1:30443/TCP NodePort -",
            "10.96.1.2:443/TCP ClusterIP -",
            "192.168.56.11:30443/TCP NodePort -",
            "198.51.100.7:443/TCP ExternalIPs -",
            // Blanks trimmed, host bits cleared, duplicates and IPv6 left out.
            "203.0.113.10:443/TCP LoadBalancer [10.0.0.0/8 192.168.56.0/24]",
        ]
    );
}

#[test]
fn without_source_ranges_every_client_is_admitted() {
    for ranges in [None, Some(json!([])), Some(json!(null))] {
        let seen = source_ranges_of(load_balancer_with_ranges(ranges.clone()));
        assert!(
            seen.contains(&"203.0.113.10:443/TCP LoadBalancer -".to_owned()),
            "{ranges:?}: {seen:?}"
        );
    }
}

#[test]
fn invalid_source_ranges_are_skipped_and_with_none_left_no_client_is_admitted() {
    let ranges = json!([
        "10.0.0.0/33",
        "10.0.0.1",
        "example.com/8",
        "172.16.0.0/12",
        "/8"
    ]);
    let seen = source_ranges_of(load_balancer_with_ranges(Some(ranges)));
    assert!(
        seen.contains(&"203.0.113.10:443/TCP LoadBalancer [172.16.0.0/12]".to_owned()),
        "{seen:?}"
    );
    // Only invalid or IPv6 entries: the Service asked for a restriction, so it fails closed.
    for ranges in [json!(["garbage"]), json!(["2001:db8::/32"])] {
        let seen = source_ranges_of(load_balancer_with_ranges(Some(ranges.clone())));
        assert!(
            seen.contains(&"203.0.113.10:443/TCP LoadBalancer []".to_owned()),
            "{ranges}: {seen:?}"
        );
    }
}

#[test]
fn source_range_text_parses_as_kube_proxy_reads_it() {
    use super::frontend::source_range_field;
    let v4 = |text: &str| match source_range_field(text) {
        Some(range) => range.to_string(),
        None => "Invalid".to_owned(),
    };
    for (text, want) in [
        ("10.1.2.3/8", "10.0.0.0/8"),
        ("0.0.0.0/0", "0.0.0.0/0"),
        ("255.255.255.255/0", "0.0.0.0/0"),
        ("192.0.2.1/32", "192.0.2.1/32"),
        ("\t192.0.2.0/24\n", "192.0.2.0/24"),
        ("192.0.2.0/33", "Invalid"),
        ("192.0.2.0/-1", "Invalid"),
        ("192.0.2.0", "Invalid"),
        ("192.0.2/24", "Invalid"),
        ("", "Invalid"),
        ("fd00::1/8", "fd00::/8"),
        ("2001:db8:1:2::5/64", "2001:db8:1:2::/64"),
        ("::/0", "::/0"),
        ("fd00::/128", "fd00::/128"),
        ("fd00::/129", "Invalid"),
    ] {
        assert_eq!(v4(text), want, "{text:?}");
    }
}

// ---- node-port-range, allocateLoadBalancerNodePorts, ipMode ----

#[test]
fn node_ports_outside_node_port_range_are_not_served() {
    let svc = |name: &str, node_port: u16| {
        service(
            "ns1",
            name,
            json!({"type": "NodePort", "clusterIP": "10.96.1.1",
                   "ports": [{"port": 80, "protocol": "TCP", "nodePort": node_port}]}),
        )
    };
    let snapshot = Snapshot {
        services: vec![
            svc("below", 22),
            svc("first", 30000),
            svc("last", 32767),
            svc("above", 32768),
        ],
        slices: vec![],
        node_zone: None,
    };
    let node = ThisNode {
        addresses: vec!["192.168.56.11".parse().unwrap()],
        ..ThisNode::named(NODE)
    };
    let desired = desired_services(&snapshot, &node);
    let node_ports: Vec<String> = kinds(&desired)
        .into_iter()
        .filter(|k| k.ends_with("NodePort"))
        .collect();
    // The default range is 30000-32767, both ends included; the ClusterIP is served anyway
    // (the four Services share one, and the first by name keeps it).
    assert_eq!(
        node_ports,
        [
            "192.168.56.11:30000/TCP NodePort",
            "192.168.56.11:32767/TCP NodePort"
        ]
    );
    assert!(kinds(&desired).contains(&"10.96.1.1:80/TCP ClusterIP".to_owned()));

    // A wider range (an apiserver started with --service-node-port-range=1-40000).
    let wide = ThisNode {
        node_ports: 1..=40_000,
        ..node
    };
    let served = kinds(&desired_services(&snapshot, &wide))
        .into_iter()
        .filter(|k| k.ends_with("NodePort"))
        .count();
    assert_eq!(served, 4);
}

#[test]
fn a_health_check_node_port_outside_node_port_range_is_not_served() {
    let snapshot = Snapshot {
        services: vec![with_health_check("lb", "LoadBalancer", "Local")],
        slices: vec![],
        node_zone: None,
    };
    let narrow = ThisNode {
        node_ports: 30_000..=31_999,
        ..node_with_addresses()
    };
    assert!(desired(&snapshot, &narrow).health_checks.is_empty());
    assert_eq!(health_checks(&snapshot), ["ns1/lb:32000 0"]);
}

#[test]
fn allocate_load_balancer_node_ports_false_serves_only_node_ports_that_exist() {
    // With allocation off the apiserver leaves nodePort unset unless the user set one: no
    // node port, no NodePort frontend; an explicit one is served like any other.
    let svc = |name: &str, vip: &str, ports: Value| -> Service {
        serde_json::from_value(json!({
            "metadata": {"namespace": "ns1", "name": name},
            "spec": {"type": "LoadBalancer", "clusterIP": vip,
                     "allocateLoadBalancerNodePorts": false, "ports": ports},
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}]}},
        }))
        .expect("service")
    };
    let snapshot = Snapshot {
        services: vec![
            svc(
                "none",
                "10.96.1.1",
                json!([{"port": 80, "protocol": "TCP"}]),
            ),
            svc(
                "explicit",
                "10.96.1.2",
                json!([{"port": 81, "protocol": "TCP", "nodePort": 30081}]),
            ),
        ],
        slices: vec![],
        node_zone: None,
    };
    let node = ThisNode {
        addresses: vec!["192.168.56.11".parse().unwrap()],
        ..ThisNode::named(NODE)
    };
    assert_eq!(
        kinds(&desired_services(&snapshot, &node)),
        [
            "10.96.1.1:80/TCP ClusterIP",
            "10.96.1.2:81/TCP ClusterIP",
            "192.168.56.11:30081/TCP NodePort",
            "203.0.113.10:80/TCP LoadBalancer",
            "203.0.113.10:81/TCP LoadBalancer",
        ]
    );
}

#[test]
fn case_4_every_ingress_ip_in_proxy_mode_leaves_only_the_cluster_ip_and_node_ports() {
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"namespace": "ns1", "name": "lb"},
        "spec": {"type": "LoadBalancer", "clusterIP": "10.96.1.2",
                 "ports": [{"port": 443, "protocol": "TCP", "nodePort": 30443}]},
        "status": {"loadBalancer": {"ingress": [
            {"ip": "203.0.113.10", "ipMode": "Proxy"},
            {"ip": "203.0.113.11", "ipMode": "Proxy"},
        ]}},
    }))
    .expect("service");
    let snapshot = Snapshot {
        services: vec![svc],
        slices: vec![],
        node_zone: None,
    };
    let node = ThisNode {
        addresses: vec!["192.168.56.11".parse().unwrap()],
        ..ThisNode::named(NODE)
    };
    // The load balancer proxies to the node ports itself, which stay served; `ipMode: VIP`
    // (or none) is what makes an ingress IP a frontend.
    assert_eq!(
        kinds(&desired_services(&snapshot, &node)),
        [
            "10.96.1.2:443/TCP ClusterIP",
            "192.168.56.11:30443/TCP NodePort"
        ]
    );
}

// ---- topology: zone hints and trafficDistribution ----

/// This node in `zone` (no node-port addresses).
fn node_in(zone: Option<&str>) -> ThisNode {
    ThisNode {
        zone: zone.map(str::to_owned),
        ..ThisNode::named(NODE)
    }
}

/// A ready endpoint on `node` in `zone`, with zone hints `for_zones` (`None`: no hints).
fn zoned(ip: &str, node: &str, zone: &str, for_zones: Option<&[&str]>) -> Value {
    let mut ep = json!({"addresses": [ip], "conditions": {"ready": true, "serving": true,
                        "terminating": false}, "nodeName": node, "zone": zone});
    if let Some(zones) = for_zones {
        let zones: Vec<Value> = zones.iter().map(|z| json!({"name": z})).collect();
        ep["hints"] = json!({"forZones": zones});
    }
    ep
}

/// Active backends' addresses of `svc1`'s ClusterIP, on `node`.
fn active_on(services: Vec<Service>, eps: Vec<Value>, node: &ThisNode) -> Vec<String> {
    let snapshot = Snapshot {
        services,
        slices: vec![slice("ns1", "svc1-1", "svc1", json!([tcp("", 80)]), eps)],
        node_zone: None,
    };
    let desired = desired_services(&snapshot, node);
    desired
        .iter()
        .find(|d| d.kind == FrontendKind::ClusterIp)
        .expect("the ClusterIP")
        .backends
        .iter()
        .filter(|b| b.state == BackendState::Active)
        .map(|b| b.addr.to_string())
        .collect()
}

#[test]
fn case_17_zone_hints_keep_the_endpoints_hinted_for_this_nodes_zone() {
    // topology_test "normal endpoint filtering": node in zone-a; hints a, b, c, a → .3 and .6.
    let svc = cluster_ip("ns1", "svc1", "10.96.1.1", &[("", 80, "TCP")]);
    let eps = vec![
        zoned("10.1.2.3", "host1", "zone-a", Some(&["zone-a"])),
        zoned("10.1.2.4", "host2", "zone-b", Some(&["zone-b"])),
        zoned("10.1.2.5", "host3", "zone-c", Some(&["zone-c"])),
        zoned("10.1.2.6", "host4", "zone-a", Some(&["zone-a"])),
    ];
    assert_eq!(
        active_on(vec![svc.clone()], eps.clone(), &node_in(Some("zone-a"))),
        ["10.1.2.3", "10.1.2.6"]
    );
    // A hint may name several zones (the controller's proportional allocation).
    let shared = vec![
        zoned("10.1.2.3", "host1", "zone-a", Some(&["zone-b"])),
        zoned("10.1.2.4", "host2", "zone-b", Some(&["zone-a", "zone-b"])),
    ];
    assert_eq!(
        active_on(vec![svc], shared, &node_in(Some("zone-a"))),
        ["10.1.2.4"]
    );
}

#[test]
fn case_18_zone_hints_are_ignored_entirely_unless_every_ready_endpoint_has_one_and_some_name_this_zone()
 {
    let svc = cluster_ip("ns1", "svc1", "10.96.1.1", &[("", 80, "TCP")]);
    let all = ["10.1.2.3", "10.1.2.4", "10.1.2.5"];
    let hinted = vec![
        zoned("10.1.2.3", "host1", "zone-a", Some(&["zone-a"])),
        zoned("10.1.2.4", "host2", "zone-b", Some(&["zone-b"])),
        zoned("10.1.2.5", "host3", "zone-c", Some(&["zone-c"])),
    ];
    // "missing hints": one ready endpoint without a hint.
    let mut missing = hinted.clone();
    missing[2] = zoned("10.1.2.5", "host3", "zone-c", None);
    assert_eq!(
        active_on(vec![svc.clone()], missing, &node_in(Some("zone-a"))),
        all
    );
    // "empty node labels": this node's zone is unknown.
    assert_eq!(
        active_on(vec![svc.clone()], hinted.clone(), &node_in(None)),
        all
    );
    // "node in different zone": nothing hinted for zone-d.
    assert_eq!(
        active_on(vec![svc.clone()], hinted.clone(), &node_in(Some("zone-d"))),
        all
    );
    // "only unready endpoints in same zone (should not filter)": unready ones do not count,
    // neither to name the zone nor as endpoints without hints.
    let unready = |ip: &str, zone: &str| {
        let mut ep = zoned(ip, "host1", zone, Some(&[zone]));
        ep["conditions"] = json!({"ready": false, "serving": false, "terminating": false});
        ep
    };
    let eps = vec![
        unready("10.1.2.1", "zone-a"),
        zoned("10.1.2.4", "host2", "zone-b", Some(&["zone-b"])),
        zoned("10.1.2.5", "host3", "zone-c", Some(&["zone-c"])),
    ];
    assert_eq!(
        active_on(vec![svc.clone()], eps, &node_in(Some("zone-a"))),
        ["10.1.2.4", "10.1.2.5"]
    );
    let mut eps = hinted;
    eps.push(json!({"addresses": ["10.1.2.9"], "conditions": {"ready": false}}));
    assert_eq!(
        active_on(vec![svc], eps, &node_in(Some("zone-a"))),
        ["10.1.2.3"],
        "an unready endpoint without hints does not stop the filtering"
    );
}

#[test]
fn zone_hints_shape_only_the_cluster_set_and_the_terminating_fallback_ignores_them() {
    // §2.2 and §2.3: with nothing ready the serving+terminating fallback takes every such
    // endpoint whatever its hints; the local set (iTP Local) never looks at hints.
    let svc = cluster_ip("ns1", "svc1", "10.96.1.1", &[("", 80, "TCP")]);
    let terminating = |ip: &str, node: &str, zone: &str| {
        let mut ep = zoned(ip, node, zone, Some(&[zone]));
        ep["conditions"] = json!({"ready": false, "serving": true, "terminating": true});
        ep
    };
    let eps = vec![
        terminating("10.1.2.3", "host1", "zone-a"),
        terminating("10.1.2.4", "host2", "zone-b"),
    ];
    assert_eq!(
        active_on(vec![svc], eps, &node_in(Some("zone-a"))),
        ["10.1.2.3", "10.1.2.4"]
    );

    let mut local = cluster_ip("ns1", "svc1", "10.96.1.1", &[("", 80, "TCP")]);
    local.spec.as_mut().expect("spec").internal_traffic_policy = Some("Local".into());
    let eps = vec![
        zoned("10.1.2.3", NODE, "zone-b", Some(&["zone-b"])),
        zoned("10.1.2.4", "host2", "zone-a", Some(&["zone-a"])),
    ];
    assert_eq!(
        active_on(vec![local], eps, &node_in(Some("zone-a"))),
        ["10.1.2.3"]
    );
}

#[test]
fn node_hints_win_over_zone_hints_and_zone_hints_are_the_fallback() {
    let svc = cluster_ip("ns1", "svc1", "10.96.1.1", &[("", 80, "TCP")]);
    let both = |ip: &str, node: &str, zone: &str| {
        let mut ep = zoned(ip, node, zone, Some(&[zone]));
        ep["hints"]["forNodes"] = json!([{"name": node}]);
        ep
    };
    let eps = vec![
        both("10.1.2.3", NODE, "zone-a"),
        both("10.1.2.4", "host2", "zone-a"),
        both("10.1.2.5", "host3", "zone-b"),
    ];
    assert_eq!(
        active_on(vec![svc.clone()], eps.clone(), &node_in(Some("zone-a"))),
        ["10.1.2.3"]
    );
    // No endpoint on this node: PreferSameNode does not apply, PreferSameZone does.
    let elsewhere = ThisNode {
        zone: Some("zone-a".into()),
        ..ThisNode::named("host9")
    };
    assert_eq!(
        active_on(vec![svc], eps, &elsewhere),
        ["10.1.2.3", "10.1.2.4"]
    );
}

/// `svc1` with `trafficDistribution: value`.
fn distributed(value: &str) -> Service {
    let mut svc = cluster_ip("ns1", "svc1", "10.96.1.1", &[("", 80, "TCP")]);
    svc.spec.as_mut().expect("spec").traffic_distribution = Some(value.into());
    svc
}

#[test]
fn traffic_distribution_prefer_close_derives_zone_hints_for_endpoints_without_any() {
    // A source without the EndpointSlice controller (the file source, custom slices): the
    // controller's hints are derived from each endpoint's `zone`.
    let eps = vec![
        zoned("10.1.2.3", "host1", "zone-a", None),
        zoned("10.1.2.4", "host2", "zone-b", None),
        zoned("10.1.2.5", "host3", "zone-a", None),
    ];
    for value in ["PreferClose", "PreferSameZone"] {
        assert_eq!(
            active_on(
                vec![distributed(value)],
                eps.clone(),
                &node_in(Some("zone-a"))
            ),
            ["10.1.2.3", "10.1.2.5"],
            "{value}"
        );
    }
    // No trafficDistribution (or an unknown value): zones alone change nothing.
    let all = ["10.1.2.3", "10.1.2.4", "10.1.2.5"];
    let plain = cluster_ip("ns1", "svc1", "10.96.1.1", &[("", 80, "TCP")]);
    assert_eq!(
        active_on(vec![plain], eps.clone(), &node_in(Some("zone-a"))),
        all
    );
    assert_eq!(
        active_on(
            vec![distributed("Elsewhere")],
            eps.clone(),
            &node_in(Some("zone-a"))
        ),
        all
    );
    // An endpoint without a zone gets no hint, so hints are ignored (the controller's
    // safeguard), and so they are on a node whose zone is unknown.
    let mut unzoned = eps.clone();
    unzoned.push(
        json!({"addresses": ["10.1.2.6"], "conditions": {"ready": true}, "nodeName": "host4"}),
    );
    assert_eq!(
        active_on(
            vec![distributed("PreferClose")],
            unzoned,
            &node_in(Some("zone-a"))
        )
        .len(),
        4
    );
    assert_eq!(
        active_on(
            vec![distributed("PreferClose")],
            eps.clone(),
            &node_in(None)
        ),
        all
    );
    // Hints a slice already carries (the controller's) are kept as they are.
    let hinted = vec![
        zoned("10.1.2.3", "host1", "zone-a", Some(&["zone-b"])),
        zoned("10.1.2.4", "host2", "zone-b", Some(&["zone-a"])),
    ];
    assert_eq!(
        active_on(
            vec![distributed("PreferClose")],
            hinted,
            &node_in(Some("zone-a"))
        ),
        ["10.1.2.4"]
    );
}

#[test]
fn traffic_distribution_prefer_same_node_derives_node_hints_then_zone_hints() {
    let eps = vec![
        zoned("10.1.2.3", NODE, "zone-a", None),
        zoned("10.1.2.4", "host2", "zone-a", None),
        zoned("10.1.2.5", "host3", "zone-b", None),
    ];
    assert_eq!(
        active_on(
            vec![distributed("PreferSameNode")],
            eps.clone(),
            &node_in(Some("zone-a"))
        ),
        ["10.1.2.3"]
    );
    let elsewhere = ThisNode {
        zone: Some("zone-a".into()),
        ..ThisNode::named("host9")
    };
    assert_eq!(
        active_on(vec![distributed("PreferSameNode")], eps, &elsewhere),
        ["10.1.2.3", "10.1.2.4"]
    );
}

#[test]
fn the_node_objects_zone_serves_when_none_is_configured_and_a_configured_one_wins() {
    let svc = cluster_ip("ns1", "svc1", "10.96.1.1", &[("", 80, "TCP")]);
    let eps = vec![
        zoned("10.1.2.3", "host1", "zone-a", Some(&["zone-a"])),
        zoned("10.1.2.4", "host2", "zone-b", Some(&["zone-b"])),
    ];
    let snapshot = Snapshot {
        services: vec![svc],
        slices: vec![slice("ns1", "svc1-1", "svc1", json!([tcp("", 80)]), eps)],
        node_zone: Some("zone-b".into()),
    };
    let active = |node: &ThisNode| -> Vec<String> {
        desired_services(&snapshot, node)[0]
            .backends
            .iter()
            .map(|b| b.addr.to_string())
            .collect()
    };
    assert_eq!(active(&node_in(None)), ["10.1.2.4"], "the Node's label");
    assert_eq!(
        active(&node_in(Some("zone-a"))),
        ["10.1.2.3"],
        "node-zone wins"
    );
}

/// Issue 11: an endpoint without `nodeName` is remote (its replies need the node's SNAT from
/// outside) unless its address is one of this node's, and only then in the local set.
#[test]
fn an_endpoint_without_node_name_is_remote_unless_it_has_the_nodes_address() {
    let no_node = |ip: &str| json!({"addresses": [ip], "conditions": {"ready": true, "serving": true, "terminating": false}});
    let svc = cluster_ip("ns1", "svc1", "10.96.1.1", &[("", 80, "TCP")]);
    let endpoints = slice(
        "ns1",
        "svc1-a",
        "svc1",
        json!([tcp("", 80)]),
        vec![
            no_node("10.0.9.1"),
            no_node("172.16.5.5"),
            ready("10.0.1.2", NODE),
        ],
    );
    let desired = desired_services(
        &Snapshot {
            services: vec![svc],
            slices: vec![endpoints],
            node_zone: None,
        },
        &node_with_addresses(),
    );
    assert_eq!(
        render(&desired),
        "10.96.1.1:80/TCP ns1/svc1:\n  10.0.1.2:80 active local\n  10.0.9.1:80 active local\n  \
         172.16.5.5:80 active remote\n"
    );
}

#[test]
fn the_incremental_model_recomputes_a_dual_stack_service_per_family_as_the_full_one_does() {
    let svc = dual(
        "d",
        "RequireDualStack",
        &["10.96.5.1", "fd00::5:1"],
        json!({}),
    );
    let v4 = slice(
        "ns",
        "d-4",
        "d",
        json!([tcp("http", 8080)]),
        vec![ready("10.244.5.1", NODE)],
    );
    let v6 = slice6(
        "ns",
        "d-6",
        "d",
        json!([tcp("http", 8080)]),
        vec![ready("fd00:244::5:1", NODE)],
    );
    let name = ("ns".to_owned(), "d".to_owned());
    let node = ThisNode::named(NODE);
    let snapshot = |slices: Vec<EndpointSlice>| Snapshot {
        services: vec![svc.clone()],
        slices,
        node_zone: None,
    };
    let mut model = Incremental::default();
    let both = snapshot(vec![v4.clone(), v6]);
    let changes = model.update([(name.clone(), &both)], &node);
    assert_eq!(
        frontends(&changes.upserts),
        ["10.96.5.1:80/TCP", "[fd00::5:1]:80/TCP"]
    );
    assert_eq!(model.services(), desired_services(&both, &node));

    // The IPv6 slice goes: only the IPv6 frontend changes (it now rejects).
    let v4_only = snapshot(vec![v4]);
    let changes = model.update([(name.clone(), &v4_only)], &node);
    assert_eq!(frontends(&changes.upserts), ["[fd00::5:1]:80/TCP"]);
    assert!(changes.removals.is_empty());
    assert_eq!(model.services(), desired_services(&v4_only, &node));

    // The Service goes: both frontends are removed.
    let changes = model.update([(name, &Snapshot::default())], &node);
    assert_eq!(changes.removals.len(), 2);
    assert!(model.services().is_empty());
}
