//! The Service kinds besides ClusterIP, through lb-agent with the file source on a node in
//! namespaces (`Topology`), judged by real traffic: a node port from outside and from a pod,
//! an external IP and a load-balancer IP from outside with `bpf-lb-external-clusterip` off,
//! externalTrafficPolicy Local keeping the client's address and answering only from this
//! node's endpoints, ClientIP session affinity and its timeout, a Service without endpoints
//! refusing connections (and dropping them with `service-no-backend-response=drop`),
//! `lbctl service list` naming each frontend's kind, Service and flags, and the
//! `healthCheckNodePort` of Local load balancers answering 200 or 503 as endpoints come and go,
//! `loadBalancerSourceRanges` admitting listed clients and dropping others with 177, and
//! node ports outside `node-port-range` left to the node's own servers, and zone hints
//! (explicit, or derived from `trafficDistribution: PreferClose`) keeping traffic in the
//! node's zone.
//!
//! Needs root, `python3` and `curl`; runs `lb-agent` and `lbctl` from `LB_BIN_DIR`, or builds
//! them first (see `lb_tests::agent::binaries`).

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use lb_lab::probe::HttpReply;
use lb_testkit::patience::{ANSWER_WITHIN, ANSWER_WITHIN_SECS, SETTLE_WITHIN, SILENCE};
use lb_testkit::{Netns, ok, wait_until};
use lb_tests::manifests::{Manifest, Port, endpoint, stream};
use lb_tests::probe::{http_get, http_get_unanswered};
use lb_tests::topology::{BACKEND_IPS, CLIENT_IP, EXTERNAL_IP, HTTP_PORT, NODE_IP, Topology};

const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 40, 1);
const NODE_PORT: u16 = 30080;
const EXTERNAL_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const LOAD_BALANCER_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// A load-balancer IP the load balancer proxies itself (`ipMode: Proxy`): not lb's.
const PROXIED_LOAD_BALANCER_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);

const LOCAL_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 40, 2);
const LOCAL_NODE_PORT: u16 = 30081;
/// `web-local`'s healthCheckNodePort.
const LOCAL_HEALTH_PORT: u16 = 30281;
/// An endpoint of the Local Service on another node (unreachable here: never chosen for
/// external traffic, which is the point).
const REMOTE_ENDPOINT: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 9);

const STICKY_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 40, 3);
/// The sticky Service's affinity timeout: short, so that the test sees it expire, yet longer
/// than a loaded machine may take between two of the test's requests (each a curl process),
/// which must stay on one backend.
const STICKY_TIMEOUT_SECS: u64 = 3;

const EMPTY_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 40, 4);

/// `guarded`: a load balancer whose source ranges list the external client.
const GUARDED_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 40, 6);
const GUARDED_LOAD_BALANCER_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);
/// `walled`: a load balancer whose source ranges leave the external client out.
const WALLED_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 40, 7);
const WALLED_LOAD_BALANCER_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 21);
const WALLED_NODE_PORT: u16 = 30083;

/// `ranged`: a NodePort Service with one node port inside the default `node-port-range` and
/// one outside it, on a port where the node runs a server of its own.
const RANGED_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 40, 8);
const RANGED_NODE_PORT: u16 = 30086;
const OUTSIDE_NODE_PORT: u16 = 2222;

/// `hinted`: zone hints send this node (zone-a) to backend 0 only.
const HINTED_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 40, 9);
/// `close`: `trafficDistribution: PreferClose` with backend 1 in zone-a.
const CLOSE_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 40, 10);

const DRAIN_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 40, 5);
const DRAIN_NODE_PORT: u16 = 30082;
/// `web-drain`'s healthCheckNodePort.
const DRAIN_HEALTH_PORT: u16 = 30282;

/// Every local backend, ready, on this node.
fn local_endpoints() -> Vec<String> {
    BACKEND_IPS
        .iter()
        .map(|ip| endpoint(*ip, "node", true))
        .collect()
}

/// `empty`: a ClusterIP Service on TCP and UDP whose slice has no endpoint (every pod evicted).
fn empty_manifest() -> String {
    Manifest::new("empty", EMPTY_CLUSTER_IP)
        .port(Port::tcp("http", 80, 8080))
        .port(Port::udp("dns", 53, 53))
        .to_yaml()
}

/// `guarded` and `walled`: two LoadBalancer Services on both backends, each with
/// `loadBalancerSourceRanges` given as YAML list items.
fn source_ranges_manifest() -> String {
    let one =
        |name: &str, cluster_ip: Ipv4Addr, ingress: Ipv4Addr, node_port: u16, ranges: &str| {
            Manifest::new(name, cluster_ip)
                .spec("loadBalancerSourceRanges", ranges)
                .port(Port::tcp("http", 80, HTTP_PORT).node_port(node_port))
                .kind("LoadBalancer")
                .ingress(&[(ingress, false)])
                .endpoints(local_endpoints())
        };
    // `walled` also carries an entry that is no CIDR: skipped with a warning, not fatal.
    stream(&[
        one(
            "guarded",
            GUARDED_CLUSTER_IP,
            GUARDED_LOAD_BALANCER_IP,
            30084,
            &format!("- 10.0.0.0/8\n- {EXTERNAL_IP}/32\n"),
        ),
        one(
            "walled",
            WALLED_CLUSTER_IP,
            WALLED_LOAD_BALANCER_IP,
            WALLED_NODE_PORT,
            "- 10.0.0.0/8\n- not-a-cidr\n",
        ),
    ])
}

/// `ranged`: node ports `RANGED_NODE_PORT` (inside the range) and `OUTSIDE_NODE_PORT`.
fn ranged_manifest() -> String {
    Manifest::new("ranged", RANGED_CLUSTER_IP)
        .port(Port::tcp("inside", 80, HTTP_PORT).node_port(RANGED_NODE_PORT))
        .port(Port::tcp("outside", 81, HTTP_PORT).node_port(OUTSIDE_NODE_PORT))
        .kind("NodePort")
        .endpoints(local_endpoints())
        .to_yaml()
}

/// `hinted`: backend 0 hinted for zone-a, backend 1 for zone-b; `close`:
/// `trafficDistribution: PreferClose`, no hints, backend 0 in zone-b and backend 1 in zone-a.
fn zones_manifest() -> String {
    let zoned = |ip: Ipv4Addr, zone: &str, hint: bool| {
        let hints = if hint {
            format!("  hints:\n    forZones:\n    - name: {zone}\n")
        } else {
            String::new()
        };
        format!(
            "- addresses:\n  - {ip}\n  conditions:\n    ready: true\n{hints}  nodeName: node\n  \
             zone: {zone}\n"
        )
    };
    let one = |name: &str, cluster_ip: Ipv4Addr, endpoints: [String; 2]| {
        Manifest::new(name, cluster_ip)
            .port(Port::tcp("", 80, HTTP_PORT))
            .endpoints(endpoints)
    };
    stream(&[
        one(
            "hinted",
            HINTED_CLUSTER_IP,
            [
                zoned(BACKEND_IPS[0], "zone-a", true),
                zoned(BACKEND_IPS[1], "zone-b", true),
            ],
        ),
        one(
            "close",
            CLOSE_CLUSTER_IP,
            [
                zoned(BACKEND_IPS[0], "zone-b", false),
                zoned(BACKEND_IPS[1], "zone-a", false),
            ],
        )
        .spec("trafficDistribution", "PreferClose"),
    ])
}

/// Requests per check: enough that a wrong backend among two shows up.
const TRIES: usize = 12;

/// `sticky`: a ClusterIP Service with ClientIP affinity for `STICKY_TIMEOUT_SECS`, on both
/// backends.
fn sticky_manifest() -> String {
    Manifest::new("sticky", STICKY_CLUSTER_IP)
        .spec("sessionAffinity", "ClientIP")
        .spec(
            "sessionAffinityConfig",
            &format!("clientIP:\n  timeoutSeconds: {STICKY_TIMEOUT_SECS}\n"),
        )
        .port(Port::tcp("", 80, HTTP_PORT))
        .endpoints(local_endpoints())
        .to_yaml()
}

/// `web`: a LoadBalancer Service with a node port, an external IP and two ingress IPs (one in
/// Proxy mode), on both local backends; `web-local`: a LoadBalancer Service (no ingress yet)
/// with externalTrafficPolicy Local and a healthCheckNodePort, on backend 1 (here) and an
/// endpoint on another node.
fn manifests() -> String {
    manifests_with(true)
}

/// [`manifests`], with `web-local`'s endpoint on this node left out unless `local_endpoint`.
fn manifests_with(local_endpoint: bool) -> String {
    let mut web_local_endpoints = vec![endpoint(REMOTE_ENDPOINT, "other", true)];
    if local_endpoint {
        web_local_endpoints.insert(0, endpoint(BACKEND_IPS[1], "node", true));
    }
    stream(&[
        Manifest::new("web", CLUSTER_IP)
            .spec("externalIPs", &format!("- {EXTERNAL_SERVICE_IP}\n"))
            .spec("externalTrafficPolicy", "Cluster")
            .port(Port::tcp("http", 80, HTTP_PORT).node_port(NODE_PORT))
            .kind("LoadBalancer")
            .ingress(&[(LOAD_BALANCER_IP, false), (PROXIED_LOAD_BALANCER_IP, true)])
            .endpoints(local_endpoints()),
        local_load_balancer(
            "web-local",
            LOCAL_CLUSTER_IP,
            LOCAL_HEALTH_PORT,
            LOCAL_NODE_PORT,
        )
        .endpoints(web_local_endpoints),
    ])
}

/// A LoadBalancer Service with externalTrafficPolicy Local and a healthCheckNodePort, no
/// ingress yet and no endpoints.
fn local_load_balancer(
    name: &str,
    cluster_ip: Ipv4Addr,
    health_port: u16,
    node_port: u16,
) -> Manifest {
    Manifest::new(name, cluster_ip)
        .spec("externalTrafficPolicy", "Local")
        .spec("healthCheckNodePort", &health_port.to_string())
        .port(Port::tcp("http", 80, HTTP_PORT).node_port(node_port))
        .kind("LoadBalancer")
}

/// `web-drain`: a LoadBalancer Service with externalTrafficPolicy Local whose endpoint on this
/// node (backend 0) is terminating but still serving, and whose ready endpoint is elsewhere.
fn drain_manifest() -> String {
    local_load_balancer(
        "web-drain",
        DRAIN_CLUSTER_IP,
        DRAIN_HEALTH_PORT,
        DRAIN_NODE_PORT,
    )
    .endpoints([
        endpoint(BACKEND_IPS[0], "node", false),
        endpoint(REMOTE_ENDPOINT, "other", true),
    ])
    .to_yaml()
}

/// `TRIES` requests from `ns` to `target`, each of which must get HTTP 200; returns the pods
/// that answered and the client addresses they saw.
fn answers(ns: &Netns, target: SocketAddrV4) -> (BTreeSet<Ipv4Addr>, BTreeSet<Ipv4Addr>) {
    let mut pods = BTreeSet::new();
    let mut clients = BTreeSet::new();
    for _ in 0..TRIES {
        let (outcome, reply) = ok(http_get(ns, target), "run curl");
        let HttpReply {
            status,
            pod_ip,
            client_ip,
        } = reply;
        assert_eq!(status, Some(200), "{target}: {outcome:?}");
        pods.insert(pod_ip.expect("X-Pod-IP"));
        clients.insert(client_ip.expect("X-Client-IP"));
    }
    (pods, clients)
}

#[test]
fn node_ports_external_and_load_balancer_ips_serve_outside_clients_and_pods() {
    let topology = Topology::new("service_kinds");
    let dir = topology.write_manifest("web.yaml", &manifests());
    // The outside world routes the external and load-balancer IPs to this node, as a router
    // (or the cloud's load balancer) would.
    for ip in [
        EXTERNAL_SERVICE_IP,
        LOAD_BALANCER_IP,
        PROXIED_LOAD_BALANCER_IP,
    ] {
        ok(
            topology
                .external
                .route(&[&format!("{ip}/32"), "via", &NODE_IP.to_string()]),
            "external route",
        );
    }
    let agent = lb_tests::agent::start(&topology, "service_kinds", &dir);
    let both: BTreeSet<Ipv4Addr> = BACKEND_IPS.into_iter().collect();
    let external_only: BTreeSet<Ipv4Addr> = [EXTERNAL_IP].into_iter().collect();

    // From outside, with bpf-lb-external-clusterip off (the default): the node port, the
    // external IP and the load-balancer IP all reach both backends, and local backends see
    // the client's own address (no SNAT is needed to reach them).
    for target in [
        SocketAddrV4::new(NODE_IP, NODE_PORT),
        SocketAddrV4::new(EXTERNAL_SERVICE_IP, 80),
        SocketAddrV4::new(LOAD_BALANCER_IP, 80),
    ] {
        let (pods, clients) = answers(&topology.external, target);
        assert_eq!(pods, both, "{target}: answered by");
        assert_eq!(clients, external_only, "{target}: client address kept");
    }
    // A pod reaches the node port on its node's address too.
    let (pods, _) = answers(&topology.client.ns, SocketAddrV4::new(NODE_IP, NODE_PORT));
    assert_eq!(pods, both, "node port from a pod");

    // externalTrafficPolicy Local: only this node's endpoint, with the client's address.
    let (pods, clients) = answers(
        &topology.external,
        SocketAddrV4::new(NODE_IP, LOCAL_NODE_PORT),
    );
    assert_eq!(
        pods,
        [BACKEND_IPS[1]].into_iter().collect(),
        "eTP Local answered by"
    );
    assert_eq!(clients, external_only, "eTP Local keeps the client address");

    // The Proxy-mode ingress IP is not captured: nothing on the node answers it.
    let (outcome, reply) = ok(
        http_get_unanswered(
            &topology.external,
            SocketAddrV4::new(PROXIED_LOAD_BALANCER_IP, 80),
        ),
        "run curl",
    );
    assert_eq!(
        reply.status, None,
        "ipMode Proxy is left alone: {outcome:?}"
    );

    // `service list -o json` names each frontend's kind and Service.
    let list = ok(
        agent.lbctl(&["service", "list", "-o", "json"]),
        "lbctl service list",
    );
    let rows: serde_json::Value =
        serde_json::from_str(&list.stdout).expect("service list -o json is JSON");
    let mut seen: Vec<(String, String, String)> = rows
        .as_array()
        .expect("an array")
        .iter()
        .map(|row| {
            let text = |key: &str| row[key].as_str().unwrap_or_default().to_owned();
            (text("frontend"), text("type"), text("name"))
        })
        .collect();
    seen.sort();
    let row = |frontend: String, kind: &str, name: &str| (frontend, kind.into(), name.into());
    assert_eq!(
        seen,
        [
            row(format!("{CLUSTER_IP}:80/TCP"), "ClusterIP", "default/web"),
            row(
                format!("{LOCAL_CLUSTER_IP}:80/TCP"),
                "ClusterIP",
                "default/web-local"
            ),
            row(
                format!("{NODE_IP}:{NODE_PORT}/TCP"),
                "NodePort",
                "default/web"
            ),
            row(
                format!("{NODE_IP}:{LOCAL_NODE_PORT}/TCP"),
                "NodePort",
                "default/web-local"
            ),
            row(
                format!("{EXTERNAL_SERVICE_IP}:80/TCP"),
                "ExternalIPs",
                "default/web"
            ),
            row(
                format!("{LOAD_BALANCER_IP}:80/TCP"),
                "LoadBalancer",
                "default/web"
            ),
        ]
    );
    let text = ok(agent.lbctl(&["service", "list"]), "lbctl service list").stdout;
    assert!(
        text.contains("NodePort, Local"),
        "the Local flag in the table:\n{text}"
    );
}

#[test]
fn client_ip_affinity_keeps_a_client_on_one_backend_until_its_timeout() {
    let topology = Topology::new("service_affinity");
    let dir = topology.write_manifest("sticky.yaml", &sticky_manifest());
    let agent = lb_tests::agent::start(&topology, "service_affinity", &dir);
    let target = SocketAddrV4::new(STICKY_CLUSTER_IP, 80);

    // 20 requests, each a new connection, all answered by one backend.
    let mut pods = BTreeSet::new();
    for _ in 0..20 {
        let (pod, _) = answers_once(&topology.client.ns, target);
        pods.insert(pod);
    }
    assert_eq!(pods.len(), 1, "one client, one backend: {pods:?}");

    // Once the client has been quiet for longer than the timeout, its next connection is
    // balanced afresh: across idle periods both backends answer. The wait is the timeout
    // itself elapsing, the condition under test. (Twenty periods on one backend: 2^-19.)
    let mut after_idle = BTreeSet::new();
    for _ in 0..20 {
        std::thread::sleep(std::time::Duration::from_millis(
            STICKY_TIMEOUT_SECS * 1000 + 200,
        ));
        after_idle.insert(answers_once(&topology.client.ns, target).0);
        if after_idle.len() == BACKEND_IPS.len() {
            break;
        }
    }
    assert_eq!(
        after_idle.len(),
        BACKEND_IPS.len(),
        "spread after the timeout: {after_idle:?}"
    );

    let list = ok(agent.lbctl(&["service", "list"]), "lbctl service list").stdout;
    assert!(
        list.contains("ClusterIP, sessionAffinity"),
        "the flag in the table:\n{list}"
    );
}

/// One request from `ns` to `target`, which must get HTTP 200: the pod that answered and the
/// client address it saw.
fn answers_once(ns: &Netns, target: SocketAddrV4) -> (Ipv4Addr, Ipv4Addr) {
    let (outcome, reply) = ok(http_get(ns, target), "run curl");
    assert_eq!(reply.status, Some(200), "{target}: {outcome:?}");
    (
        reply.pod_ip.expect("X-Pod-IP"),
        reply.client_ip.expect("X-Client-IP"),
    )
}

/// A TCP connect and a UDP exchange from the client pod to the empty Service, each given up
/// after `wait`: each error, and how long it took to come.
fn connect_and_ask(topology: &Topology, wait: Duration) -> [(std::io::ErrorKind, Duration); 2] {
    ok(
        topology.client.ns.within(|| {
            let started = Instant::now();
            let tcp =
                TcpStream::connect_timeout(&SocketAddrV4::new(EMPTY_CLUSTER_IP, 80).into(), wait)
                    .expect_err("nothing can accept");
            let tcp = (tcp.kind(), started.elapsed());
            let started = Instant::now();
            let socket = UdpSocket::bind(SocketAddrV4::new(CLIENT_IP, 0)).expect("bind");
            socket
                .connect(SocketAddrV4::new(EMPTY_CLUSTER_IP, 53))
                .expect("connect");
            socket.set_read_timeout(Some(wait)).expect("timeout");
            socket.send(b"anyone there?").expect("send");
            let udp = socket.recv(&mut [0u8; 64]).expect_err("nothing can answer");
            [tcp, (udp.kind(), started.elapsed())]
        }),
        "enter the client pod",
    )
}

#[test]
fn a_service_without_endpoints_refuses_at_once_and_drops_in_drop_mode() {
    let topology = Topology::new("service_reject");
    let dir = topology.write_manifest("empty.yaml", &empty_manifest());
    let agent = lb_tests::agent::start(&topology, "service_reject", &dir);

    // The default, `reject`: TCP connect() and a connected UDP socket both fail with
    // ECONNREFUSED, well under a second, as with kube-proxy.
    // A refusal that did not come would wait its whole `ANSWER_WITHIN` and fail on the kind.
    let attempts = connect_and_ask(&topology, ANSWER_WITHIN);
    for (protocol, (kind, took)) in ["TCP", "UDP"].into_iter().zip(attempts) {
        assert_eq!(kind, std::io::ErrorKind::ConnectionRefused, "{protocol}");
        assert!(
            took < Duration::from_secs(1),
            "{protocol}: refused in {took:?}"
        );
    }

    // `drop`, live: the same attempts now wait out their timeouts.
    ok(
        agent.lbctl(&["config", "set", "service-no-backend-response", "drop"]),
        "lbctl config set",
    );
    let attempts = connect_and_ask(&topology, SILENCE);
    for (protocol, (kind, _)) in ["TCP", "UDP"].into_iter().zip(attempts) {
        assert!(
            matches!(
                kind,
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            ),
            "{protocol}: dropped, not refused: {kind:?}"
        );
    }
}

/// What a load balancer's probe of `NODE_IP:port` from outside gets: the HTTP status and the
/// JSON body, or what curl said when nothing answered.
fn health_check(ns: &Netns, port: u16) -> Result<(u16, serde_json::Value), String> {
    let url = format!("http://{NODE_IP}:{port}/healthz");
    let outcome = ok(
        ns.exec(
            "curl",
            &[
                "-sS",
                "--max-time",
                ANSWER_WITHIN_SECS,
                "-w",
                "\n%{http_code}",
                &url,
            ],
        ),
        "run curl",
    );
    if !outcome.success {
        return Err(format!("{}: {}", outcome.status, outcome.stderr.trim()));
    }
    let (body, code) = outcome
        .stdout
        .rsplit_once('\n')
        .ok_or_else(|| format!("no status code: {outcome:?}"))?;
    let code = code.parse().map_err(|_| format!("status {code:?}"))?;
    let body = serde_json::from_str(body).map_err(|err| format!("body {body:?}: {err}"))?;
    Ok((code, body))
}

/// kube-proxy's body for `default/name` with `count` ready local endpoints.
fn health_body(name: &str, count: u64) -> serde_json::Value {
    serde_json::json!({
        "service": {"namespace": "default", "name": name},
        "localEndpoints": count,
        "serviceProxyHealthy": true,
    })
}

#[test]
fn health_check_node_port_answers_200_with_a_ready_local_endpoint_and_503_without() {
    let topology = Topology::new("service_health");
    let dir = topology.write_manifest("web.yaml", &manifests());
    topology.write_manifest("drain.yaml", &drain_manifest());
    let _agent = lb_tests::agent::start(&topology, "service_health", &dir);

    // One ready endpoint here: 200, with kube-proxy's body.
    assert_eq!(
        health_check(&topology.external, LOCAL_HEALTH_PORT),
        Ok((200, health_body("web-local", 1))),
        "web-local"
    );
    // Only a terminating endpoint here: 503, while the node port still serves it (the
    // serving+terminating fallback), so that the load balancer drains this node.
    assert_eq!(
        health_check(&topology.external, DRAIN_HEALTH_PORT),
        Ok((503, health_body("web-drain", 0))),
        "web-drain"
    );
    let (pods, _) = answers(
        &topology.external,
        SocketAddrV4::new(NODE_IP, DRAIN_NODE_PORT),
    );
    assert_eq!(
        pods,
        [BACKEND_IPS[0]].into_iter().collect(),
        "the terminating endpoint still serves"
    );

    // web-local's pod on this node goes away: 503.
    topology.write_manifest("web.yaml", &manifests_with(false));
    let answer = wait_until(
        "web-local's health check at 503",
        SETTLE_WITHIN,
        || match health_check(&topology.external, LOCAL_HEALTH_PORT) {
            Ok((503, body)) => Ok(Some(body)),
            seen => Err(format!("{seen:?}")),
        },
    )
    .unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(answer, health_body("web-local", 0));

    // web-drain deleted: its port closes (curl: connection refused, exit 7).
    std::fs::remove_file(dir.join("drain.yaml")).expect("delete drain.yaml");
    wait_until(
        "web-drain's health check closed",
        SETTLE_WITHIN,
        || match health_check(&topology.external, DRAIN_HEALTH_PORT) {
            Err(seen) if seen.contains("exit status: 7") => Ok(Some(())),
            seen => Err(format!("{seen:?}")),
        },
    )
    .unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(
        health_check(&topology.external, LOCAL_HEALTH_PORT).map(|(code, _)| code),
        Ok(503),
        "web-local still served"
    );
}

#[test]
fn load_balancer_source_ranges_admit_listed_clients_and_drop_others_with_177() {
    let topology = Topology::new("service_src_range");
    let dir = topology.write_manifest("ranges.yaml", &source_ranges_manifest());
    for ip in [GUARDED_LOAD_BALANCER_IP, WALLED_LOAD_BALANCER_IP] {
        ok(
            topology
                .external
                .route(&[&format!("{ip}/32"), "via", &NODE_IP.to_string()]),
            "external route",
        );
    }
    let agent = lb_tests::agent::start(&topology, "service_src_range", &dir);
    let both: BTreeSet<Ipv4Addr> = BACKEND_IPS.into_iter().collect();

    // Listed: the external client reaches the load balancer, its address kept.
    let (pods, clients) = answers(
        &topology.external,
        SocketAddrV4::new(GUARDED_LOAD_BALANCER_IP, 80),
    );
    assert_eq!(pods, both, "an admitted client is balanced as usual");
    assert_eq!(clients, [EXTERNAL_IP].into_iter().collect());

    // Not listed: every SYN is dropped with 177, which `lbctl monitor` shows. The monitor may
    // subscribe after the first drop, so each try sends SYNs anew.
    let mut monitor = ok(agent.monitor_drops(), "lbctl monitor");
    let deadline = Instant::now() + SETTLE_WITHIN;
    let line = loop {
        let (outcome, reply) = ok(
            http_get_unanswered(
                &topology.external,
                SocketAddrV4::new(WALLED_LOAD_BALANCER_IP, 80),
            ),
            "run curl",
        );
        assert_eq!(
            reply.status, None,
            "a denied client gets nothing: {outcome:?}"
        );
        let found = monitor.wait_for_line("the src range drop", SILENCE, |l| {
            l.starts_with("xx drop (Denied by LB src range check) ")
                && l.contains("file policy.rs")
                && l.contains(&format!("{EXTERNAL_IP}:"))
                && l.contains(&format!("-> {WALLED_LOAD_BALANCER_IP}:80 tcp SYN"))
        });
        if found.is_ok() || Instant::now() >= deadline {
            break found.ok();
        }
    };
    assert!(
        line.is_some(),
        "no src range drop in the monitor within {SETTLE_WITHIN:?}; it printed {:?}",
        monitor.seen()
    );
    drop(monitor);

    // The ranges are the load balancer's only: the same client reaches the Service's node
    // port, and pods are never checked.
    answers_once(
        &topology.external,
        SocketAddrV4::new(NODE_IP, WALLED_NODE_PORT),
    );
    answers_once(
        &topology.client.ns,
        SocketAddrV4::new(WALLED_LOAD_BALANCER_IP, 80),
    );

    let list = ok(agent.lbctl(&["service", "list"]), "lbctl service list").stdout;
    let flagged: Vec<&str> = list
        .lines()
        .filter(|l| l.contains("check source-range"))
        .collect();
    assert_eq!(
        flagged.len(),
        2,
        "one flagged frontend per Service:\n{list}"
    );
    assert!(
        flagged.iter().all(|l| l.contains("LoadBalancer")),
        "only load-balancer frontends:\n{list}"
    );
}

#[test]
fn a_node_port_outside_node_port_range_is_left_to_the_nodes_own_server() {
    let topology = Topology::new("service_port_range");
    let dir = topology.write_manifest("ranged.yaml", &ranged_manifest());
    // The node's own service on the port the Service names outside the range (as sshd or a
    // kubelet port would be).
    let _node_server = ok(
        lb_testkit::servers::http(&topology.node, NODE_IP, OUTSIDE_NODE_PORT, topology.dir()),
        "node's own HTTP server",
    );
    let agent = lb_tests::agent::start(&topology, "service_port_range", &dir);

    // Inside the default range (30000-32767): the Service's backends answer.
    let (pods, _) = answers(
        &topology.external,
        SocketAddrV4::new(NODE_IP, RANGED_NODE_PORT),
    );
    assert_eq!(
        pods,
        BACKEND_IPS.into_iter().collect(),
        "node port in range"
    );
    // Outside it: untouched, so the node's own server answers every time.
    let (pods, _) = answers(
        &topology.external,
        SocketAddrV4::new(NODE_IP, OUTSIDE_NODE_PORT),
    );
    assert_eq!(
        pods,
        [NODE_IP].into_iter().collect(),
        "port outside the range"
    );

    let list = ok(
        agent.lbctl(&["service", "list", "-o", "json"]),
        "lbctl service list",
    );
    assert!(
        !list
            .stdout
            .contains(&format!("{NODE_IP}:{OUTSIDE_NODE_PORT}/")),
        "no frontend outside the range:\n{}",
        list.stdout
    );
    assert!(
        list.stdout
            .contains(&format!("{NODE_IP}:{RANGED_NODE_PORT}/TCP")),
        "{}",
        list.stdout
    );
}

#[test]
fn zone_hints_keep_traffic_in_this_nodes_zone() {
    let topology = Topology::new("service_zones");
    let dir = topology.write_manifest("zones.yaml", &zones_manifest());
    let _agent = lb_tests::agent::start_with_config(
        &topology,
        "service_zones",
        &dir,
        &[("node-zone", "zone-a")],
    );

    // Explicit hints: only the endpoint hinted for zone-a answers.
    let (pods, _) = answers(
        &topology.client.ns,
        SocketAddrV4::new(HINTED_CLUSTER_IP, 80),
    );
    assert_eq!(pods, [BACKEND_IPS[0]].into_iter().collect(), "zone hints");
    // PreferClose without hints (no EndpointSlice controller here): the endpoint in zone-a.
    let (pods, _) = answers(&topology.client.ns, SocketAddrV4::new(CLOSE_CLUSTER_IP, 80));
    assert_eq!(pods, [BACKEND_IPS[1]].into_iter().collect(), "PreferClose");
}
