//! lb-agent with `--source file:DIR` on a node in namespaces (`Topology`), judged by real
//! traffic from a pod: YAML written into the directory reaches the named backends, an edit is
//! live within a second, a deletion stops the VIP answering, and a malformed file is named in
//! the agent's log while the last good state keeps serving; `lbctl bpf ct list` shows a probe's
//! flow, and an IPv6 flow on a dual-stack node. The agent never exits.
//!
//! Files are written whole and renamed into place, as an editor or a ConfigMap update does.
//! "Live within a second" is measured from the rename to the first probe that sees the new state;
//! probes are UDP datagrams, each from a source port of its own (a reused port would hit the
//! conntrack entry of an earlier probe and keep its old backend, correctly but misleadingly).
//!
//! Needs root, `python3`, `curl` and `ss`; runs `lb-agent` and `lbctl` from `LB_BIN_DIR`, or
//! builds them first (see `lb_tests::agent::binaries`).
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lb_lab::Agent;
use lb_lab::probe::{EchoReply, udp_echo};
use lb_testkit::patience::{ANSWER_WITHIN, SETTLE_WITHIN};
use lb_testkit::{Netns, wait_until};
use lb_tests::manifests::{Manifest, Port, endpoint};
use lb_tests::probe::{http_get, http_get_unanswered};
use lb_tests::topology::{BACKEND_IPS, CLIENT_IP, ECHO_PORT, HTTP_PORT, Topology};

/// The service's ClusterIP.
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
/// How soon a change must be live.
const LIVE_WITHIN: Duration = Duration::from_secs(1);
/// How long a probe loop or a wait may run before the test gives up (well beyond
/// `LIVE_WITHIN`, so that a slow change fails on the measurement, with its number, rather than
/// here).
const DEADLINE: Duration = SETTLE_WITHIN;
/// How long one UDP probe of a measurement waits: answers inside the node take well under a
/// millisecond, but a busy machine may be slow to run the echo server. A late answer counts
/// as none, which never makes a change look faster than it was (see `Probe`).
const PROBE_TIMEOUT: Duration = Duration::from_millis(150);
/// Tries to see both backends: all 40 on one backend has probability 2 * 2^-40.
const TRIES: usize = 40;
/// Consecutive answers from the one remaining backend that show a removal is live: with both
/// backends still selectable, 12 in a row on one has probability 2^-12.
const RUN: usize = 12;

/// The echo Service and its EndpointSlice, as `kubectl get -o yaml` prints them: `udp_port`/UDP
/// → the echo servers, 80/TCP → the HTTP servers, on every address of `backends`.
fn manifest(udp_port: u16, backends: &[Ipv4Addr]) -> String {
    Manifest::new("echo", VIP)
        .spec("ipFamilies", "- IPv4\n")
        .port(Port::udp("echo", udp_port, ECHO_PORT))
        .port(Port::tcp("http", 80, HTTP_PORT))
        .endpoints(backends.iter().map(|ip| endpoint(*ip, "node", true)))
        .to_yaml()
}

/// The node, its agent and the directory the agent reads. Field order is drop order: the agent
/// stops (and its pins go) before the namespaces.
struct Cluster {
    agent: Agent,
    topology: Topology,
    manifests: PathBuf,
    next_port: u16,
}

impl Cluster {
    /// A topology for `test` and an agent on its node reading an empty directory.
    fn up(test: &str) -> Self {
        let topology = Topology::new(test);
        let manifests = topology.manifests();
        let agent = lb_tests::agent::start(&topology, test, &manifests);
        Self {
            agent,
            topology,
            manifests,
            next_port: 41_000,
        }
    }

    fn client(&self) -> &Netns {
        &self.topology.client.ns
    }

    /// Writes `contents` to `name` in the manifests directory at once (write aside, rename) and
    /// returns when it was renamed into place.
    fn write(&self, name: &str, contents: &str) -> Instant {
        self.topology.write_manifest(name, contents);
        Instant::now()
    }

    /// Path of `name` in the manifests directory.
    fn path(&self, name: &str) -> PathBuf {
        self.manifests.join(name)
    }

    /// One UDP datagram from the client pod, from a source port never used before, to
    /// `VIP:port`: the backend that answered, or why none did.
    fn probe(&mut self, port: u16, timeout: Duration) -> Result<EchoReply, String> {
        self.next_port += 1;
        let from = SocketAddrV4::new(CLIENT_IP, self.next_port);
        let to = SocketAddrV4::new(VIP, port);
        let reply = udp_echo(self.client(), from, to, "probe", timeout).expect("UDP probe")?;
        assert_eq!(reply.client, from, "no SNAT: {reply:?}");
        Ok(reply)
    }

    /// Probes `VIP:port` until `done` says the probes so far show the new state, and returns
    /// how long after `since` the instant `done` names was.
    fn live_after(
        &mut self,
        what: &str,
        since: Instant,
        port: u16,
        done: impl Fn(&[Probe]) -> Option<Instant>,
    ) -> Duration {
        let mut seen = Vec::new();
        while since.elapsed() < DEADLINE {
            let sent = Instant::now();
            let answer = self
                .probe(port, PROBE_TIMEOUT)
                .ok()
                .map(|reply| reply.pod_ip);
            seen.push(Probe {
                sent,
                done: Instant::now(),
                answer,
            });
            if let Some(first) = done(&seen) {
                let took = first.duration_since(since);
                eprintln!("{what}: live after {took:?} ({} probes)", seen.len());
                return took;
            }
        }
        self.agent
            .check_running()
            .unwrap_or_else(|err| panic!("{err}"));
        let tail: Vec<_> = seen.iter().rev().take(20).map(|p| p.answer).collect();
        panic!(
            "{what}: not live after {DEADLINE:?}; last answers (newest first): {tail:?}\n{}",
            self.agent.process().log_tail(20)
        );
    }

    /// The backends that answer `VIP:port` within `TRIES` probes (stopping once all of
    /// `BACKEND_IPS` did); a probe without an answer fails the test.
    fn backends_answering(&mut self, port: u16) -> BTreeSet<Ipv4Addr> {
        let mut seen = BTreeSet::new();
        for _ in 0..TRIES {
            let reply = self
                .probe(port, ANSWER_WITHIN)
                .unwrap_or_else(|why| panic!("{VIP}:{port}/UDP: {why}"));
            seen.insert(reply.pod_ip);
            if seen.len() == BACKEND_IPS.len() {
                break;
            }
        }
        seen
    }

    /// The backends that answer HTTP on `VIP:80` within `TRIES` requests.
    fn http_backends_answering(&self) -> BTreeSet<Ipv4Addr> {
        let mut seen = BTreeSet::new();
        for _ in 0..TRIES {
            let (outcome, reply) =
                http_get(self.client(), SocketAddrV4::new(VIP, 80)).expect("run curl");
            assert_eq!(reply.status, Some(200), "{outcome:?}");
            assert_eq!(reply.client_ip, Some(CLIENT_IP), "no SNAT: {outcome:?}");
            seen.insert(reply.pod_ip.expect("X-Pod-IP"));
            if seen.len() == BACKEND_IPS.len() {
                break;
            }
        }
        seen
    }

    /// Polls `lbctl service list` (the maps as they are) until `done` holds, and returns how
    /// long after `since` that was.
    fn maps_show_after(&self, what: &str, since: Instant, done: impl Fn(&str) -> bool) -> Duration {
        loop {
            let list = self.service_list();
            if done(&list) {
                let took = since.elapsed();
                eprintln!("{what}: in the maps after {took:?}");
                return took;
            }
            assert!(
                since.elapsed() < DEADLINE,
                "{what}: not in the maps after {DEADLINE:?}:\n{list}"
            );
        }
    }

    /// `lbctl service list`, which must succeed.
    fn service_list(&self) -> String {
        self.agent
            .lbctl(&["service", "list"])
            .expect("run lbctl")
            .into_stdout()
            .unwrap_or_else(|err| panic!("{err}"))
    }

    /// Fails the test, with the end of its log, if the agent has exited.
    fn assert_agent_running(&mut self) {
        self.agent
            .check_running()
            .unwrap_or_else(|err| panic!("the agent must never exit: {err}"));
    }
}

/// One probe of a measurement.
struct Probe {
    /// When it was sent.
    sent: Instant,
    /// When its answer came, or it gave up.
    done: Instant,
    /// The backend that answered.
    answer: Option<Ipv4Addr>,
}

/// When the first answer came. Its arrival bounds the delay from above, where its sending
/// might not: a probe may wait somewhere (for a neighbour, say) while the change lands.
fn first_answer(seen: &[Probe]) -> Option<Instant> {
    seen.iter().find(|p| p.answer.is_some()).map(|p| p.done)
}

/// When the first of the last `n` answered probes was sent, if they all came from `ip`.
/// Unanswered probes say nothing about which backends are selectable, so they neither count
/// nor break the run.
fn last_answers_from(seen: &[Probe], n: usize, ip: Ipv4Addr) -> Option<Instant> {
    let answered: Vec<&Probe> = seen.iter().filter(|p| p.answer.is_some()).collect();
    let tail = answered
        .len()
        .checked_sub(n)
        .map(|start| &answered[start..])?;
    tail.iter()
        .all(|p| p.answer == Some(ip))
        .then(|| tail[0].sent)
}

/// When the first of the last `n` probes was sent, if none of them was answered.
fn last_unanswered(seen: &[Probe], n: usize) -> Option<Instant> {
    let tail = seen.len().checked_sub(n).map(|start| &seen[start..])?;
    tail.iter()
        .all(|p| p.answer.is_none())
        .then(|| tail[0].sent)
}

#[test]
fn file_source_writes_edits_and_deletes_are_live_in_traffic_within_a_second() {
    let mut cluster = Cluster::up("file_source_live_in_traffic");
    let all: BTreeSet<Ipv4Addr> = BACKEND_IPS.into();

    // Written: both named backends answer, over UDP and TCP.
    let written = cluster.write("echo.yaml", &manifest(53, &BACKEND_IPS));
    let took = cluster.live_after("the new service", written, 53, first_answer);
    assert!(
        took <= LIVE_WITHIN,
        "the new service answered after {took:?}"
    );
    assert_eq!(
        cluster.backends_answering(53),
        all,
        "UDP reaches both backends"
    );
    assert_eq!(
        cluster.http_backends_answering(),
        all,
        "TCP reaches both backends"
    );

    // Edited, one backend removed: within a second only the other one answers.
    let [gone, kept] = BACKEND_IPS;
    let edited = cluster.write("echo.yaml", &manifest(53, &[kept]));
    // The maps are the ground truth: a run of answers from `kept` alone can begin by chance
    // before the change lands, so first see the change in the maps, within the second.
    let in_maps = cluster.maps_show_after("the removal of a backend", edited, |list| {
        !list.contains(&gone.to_string())
    });
    assert!(
        in_maps <= LIVE_WITHIN,
        "{gone} was still programmed {in_maps:?} after the edit"
    );
    let took = cluster.live_after("the removal of a backend", edited, 53, |seen| {
        last_answers_from(seen, RUN, kept)
    });
    // The run of answers from `kept` may have begun by chance before the change, so this is
    // a lower bound on the delay; a change slower than a second still fails with probability
    // 1 - 2^-12.
    assert!(
        took <= LIVE_WITHIN,
        "{gone} was still chosen {took:?} after the edit"
    );
    let list = cluster.service_list();
    assert!(
        list.contains(&format!("{kept}:{ECHO_PORT}/UDP")) && !list.contains(&gone.to_string()),
        "lbctl service list shows only {kept}:\n{list}"
    );
    assert_eq!(
        cluster.http_backends_answering(),
        BTreeSet::from([kept]),
        "TCP reaches only {kept}"
    );

    // Edited, the UDP port changed: within a second the new port answers and the old one not.
    let edited = cluster.write("echo.yaml", &manifest(54, &[kept]));
    let took = cluster.live_after("the new port", edited, 54, first_answer);
    assert!(
        took <= LIVE_WITHIN,
        "{VIP}:54 answered {took:?} after the edit"
    );
    assert_eq!(cluster.backends_answering(54), BTreeSet::from([kept]));
    let old = cluster.probe(53, PROBE_TIMEOUT);
    assert!(old.is_err(), "{VIP}:53 no longer answers: {old:?}");

    // Deleted: within a second the VIP stops answering, over UDP and TCP.
    std::fs::remove_file(cluster.path("echo.yaml")).expect("delete the manifest");
    let deleted = Instant::now();
    let took = cluster.live_after("the deletion", deleted, 54, |seen| last_unanswered(seen, 3));
    assert!(
        took <= LIVE_WITHIN,
        "{VIP}:54 still answered {took:?} after the deletion"
    );
    let (outcome, reply) =
        http_get_unanswered(cluster.client(), SocketAddrV4::new(VIP, 80)).expect("curl");
    assert_eq!(
        reply.status, None,
        "{VIP}:80 no longer answers: {outcome:?}"
    );
    let list = cluster.service_list();
    assert!(!list.contains(&VIP.to_string()), "no service left:\n{list}");
    cluster.assert_agent_running();
}

#[test]
fn malformed_file_is_logged_by_name_and_the_last_good_state_keeps_serving() {
    let mut cluster = Cluster::up("malformed_file_keeps_last_good_state");
    let all: BTreeSet<Ipv4Addr> = BACKEND_IPS.into();
    cluster.write("echo.yaml", &manifest(53, &BACKEND_IPS));
    let good = wait_until("the service programmed", DEADLINE, || {
        let list = cluster.service_list();
        if list.contains(&format!("{VIP}:53/UDP")) && list.matches("(active)").count() == 4 {
            Ok(Some(list))
        } else {
            Err(list)
        }
    })
    .unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(cluster.backends_answering(53), all);

    // A file that is no YAML, and a new file with one malformed object.
    let echo = cluster.path("echo.yaml");
    let broken = cluster.path("broken.yaml");
    cluster.write("echo.yaml", "kind: Service\nmetadata: [unterminated\n");
    cluster.write(
        "broken.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: broken\n  namespace: default\n\
         spec:\n  clusterIP: 10.96.0.21\n  ports:\n  - port: not-a-number\n",
    );
    let log = cluster.agent.process().log().to_owned();
    for file in [&echo, &broken] {
        let line = await_log_line(&mut cluster, &log, file);
        assert!(
            line.contains("malformed"),
            "a line saying what is wrong: {line}"
        );
    }

    // The last good state stays programmed and serving.
    assert_eq!(cluster.service_list(), good, "lbctl service list unchanged");
    assert_eq!(
        cluster.backends_answering(53),
        all,
        "UDP still reaches both backends"
    );
    assert_eq!(
        cluster.http_backends_answering(),
        all,
        "TCP still reaches both backends"
    );

    // Fixed: the agent reads it again.
    let fixed = cluster.write("echo.yaml", &manifest(54, &BACKEND_IPS));
    let took = cluster.live_after("the fixed file", fixed, 54, first_answer);
    assert!(
        took <= LIVE_WITHIN,
        "the fixed file was live after {took:?}"
    );
    cluster.assert_agent_running();
}

/// Waits for a line of the agent's log naming `file`, failing at once if the agent exits.
fn await_log_line(cluster: &mut Cluster, log: &Path, file: &Path) -> String {
    let name = file.display().to_string();
    let agent = &mut cluster.agent;
    wait_until(&format!("a log line naming {name}"), DEADLINE, || {
        agent
            .check_running()
            .map_err(|err| format!("the agent exited: {err}"))?;
        let text = std::fs::read_to_string(log).map_err(|err| err.to_string())?;
        Ok(text
            .lines()
            .find(|line| line.contains(&name))
            .map(str::to_owned))
    })
    .unwrap_or_else(|err| panic!("{err}"))
}

#[test]
fn lbctl_bpf_ct_list_shows_a_probe_flow_through_the_real_agent() {
    let mut cluster = Cluster::up("lbctl_bpf_ct_list");
    cluster.write("echo.yaml", &manifest(53, &BACKEND_IPS));
    wait_until("the service programmed", DEADLINE, || {
        let list = cluster.service_list();
        if list.contains(&format!("{VIP}:53/UDP")) {
            Ok(Some(()))
        } else {
            Err(list)
        }
    })
    .unwrap_or_else(|err| panic!("{err}"));
    let reply = cluster
        .probe(53, ANSWER_WITHIN)
        .unwrap_or_else(|why| panic!("{why}"));
    let client = reply.client.to_string();

    let json = cluster
        .agent
        .lbctl(&["bpf", "ct", "list", "-o", "json"])
        .expect("run lbctl")
        .into_stdout()
        .unwrap_or_else(|err| panic!("{err}"));
    let rows: Vec<lb_api::proto::CtRow> = serde_json::from_str(&json).expect("json rows");
    let service = rows
        .iter()
        .find(|row| row.direction == "service" && row.source == client)
        .unwrap_or_else(|| panic!("a service entry from {client}: {json}"));
    assert_eq!(
        (service.map.as_str(), service.proto.as_str()),
        ("any", "UDP")
    );
    assert_eq!(service.destination, format!("{VIP}:53"));
    assert!(
        (1..=60).contains(&service.expires_in),
        "expires within the UDP service lifetime: {service:?}"
    );
    let backend = service.backend.clone().expect("the backend");
    assert_eq!(backend, format!("{}:{ECHO_PORT}", reply.pod_ip));
    let answer = rows
        .iter()
        .find(|row| row.direction == "reply" && row.source == backend)
        .unwrap_or_else(|| panic!("the reply entry from {backend}: {json}"));
    assert_eq!(answer.vip, Some(format!("{VIP}:53")));
    assert!(
        answer.flags.contains(&"seen-reply".to_owned()),
        "{answer:?}"
    );

    let text = cluster
        .agent
        .lbctl(&["bpf", "ct", "list"])
        .expect("run lbctl")
        .into_stdout()
        .unwrap_or_else(|err| panic!("{err}"));
    assert!(
        text.contains(&format!("UDP SERVICE {client} -> {VIP}:53 expires=")),
        "{text}"
    );
    cluster.assert_agent_running();
}

/// The IPv6 side of `lbctl bpf ct list`: the node made dual stack
/// (`lb_tests::ipv6::wire_ipv6`), a dual-stack Service with an IPv6 EndpointSlice fed to the
/// agent's file source, a pod's curl to the IPv6 ClusterIP answered; the flow's two entries
/// are listed from `LB6_CT_TCP` (`tcp6`, bracketed addresses), in JSON and in the text lines.
#[test]
fn lbctl_bpf_ct_list_shows_an_ipv6_flow_through_the_real_agent() {
    use lb_tests::ipv6::{addrs, wire_ipv6};
    let mut cluster = Cluster::up("lbctl_bpf_ct_list6");
    wire_ipv6(&cluster.topology);
    let _servers: Vec<_> = cluster
        .topology
        .backends
        .iter()
        .zip(addrs::BACKENDS)
        .map(|(pod, ip)| {
            let ip: std::net::Ipv6Addr = ip.parse().expect("an IPv6 backend address");
            lb_testkit::ok(
                lb_testkit::servers::http(&pod.ns, ip, HTTP_PORT, cluster.topology.dir()),
                "IPv6 HTTP server",
            )
        })
        .collect();
    let vip6 = "fd00:96::20";
    let endpoints: String = addrs::BACKENDS
        .iter()
        .map(|ip| {
            format!(
                "- addresses:\n  - {ip}\n  conditions:\n    ready: true\n    serving: true\n    \
                 terminating: false\n  nodeName: node\n"
            )
        })
        .collect();
    cluster.write(
        "web6.yaml",
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: web6\n  namespace: default\n\
             spec:\n  clusterIP: {VIP}\n  clusterIPs:\n  - {VIP}\n  - {vip6}\n  ipFamilies:\n  \
             - IPv4\n  - IPv6\n  ipFamilyPolicy: RequireDualStack\n  ports:\n  - name: http\n    \
             port: 80\n    protocol: TCP\n    targetPort: {HTTP_PORT}\n  type: ClusterIP\n\
             ---\naddressType: IPv6\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata:\n  labels:\n    kubernetes.io/service-name: web6\n  name: web6-v6abc\n  \
             namespace: default\nendpoints:\n{endpoints}ports:\n- name: http\n  port: \
             {HTTP_PORT}\n  protocol: TCP\n"
        ),
    );
    let frontend = format!("[{vip6}]:80");
    wait_until("the IPv6 frontend programmed", DEADLINE, || {
        let list = cluster.service_list();
        if list.contains(&format!("{frontend}/TCP")) {
            Ok(Some(()))
        } else {
            Err(list)
        }
    })
    .unwrap_or_else(|err| panic!("{err}"));
    let outcome = cluster
        .client()
        .exec(
            "curl",
            &[
                "-sSi",
                "-g",
                "--max-time",
                "5",
                &format!("http://{frontend}/"),
            ],
        )
        .expect("run curl");
    assert!(outcome.success, "the pod's request: {outcome:?}");
    assert!(
        outcome.stdout.contains(" 200 "),
        "200 from a backend: {outcome:?}"
    );

    let json = cluster
        .agent
        .lbctl(&["bpf", "ct", "list", "-o", "json"])
        .expect("run lbctl")
        .into_stdout()
        .unwrap_or_else(|err| panic!("{err}"));
    let rows: Vec<lb_api::proto::CtRow> = serde_json::from_str(&json).expect("json rows");
    let client_prefix = format!("[{}]:", addrs::CLIENT);
    let service = rows
        .iter()
        .find(|row| row.direction == "service" && row.source.starts_with(&client_prefix))
        .unwrap_or_else(|| panic!("a service entry from the client pod: {json}"));
    assert_eq!(
        (service.map.as_str(), service.proto.as_str()),
        ("tcp6", "TCP")
    );
    assert_eq!(service.destination, frontend);
    let backend = service.backend.clone().expect("the backend");
    assert!(
        addrs::BACKENDS
            .iter()
            .any(|ip| backend == format!("[{ip}]:{HTTP_PORT}")),
        "a backend pod: {backend}"
    );
    let answer = rows
        .iter()
        .find(|row| row.direction == "reply" && row.source == backend)
        .unwrap_or_else(|| panic!("the reply entry from {backend}: {json}"));
    assert_eq!(answer.map, "tcp6");
    assert_eq!(answer.vip.as_deref(), Some(frontend.as_str()));
    assert_eq!(answer.client.as_deref(), Some(service.source.as_str()));
    assert!(
        answer.flags.contains(&"seen-reply".to_owned()),
        "{answer:?}"
    );

    let text = cluster
        .agent
        .lbctl(&["bpf", "ct", "list"])
        .expect("run lbctl")
        .into_stdout()
        .unwrap_or_else(|err| panic!("{err}"));
    assert!(
        text.contains(&format!(
            "TCP SERVICE {} -> {frontend} expires=",
            service.source
        )),
        "{text}"
    );
    cluster.assert_agent_running();
}
