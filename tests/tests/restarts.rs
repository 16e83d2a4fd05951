//! The agent's lifecycle on one node, in namespaces: restarts that drop no connection,
//! `lb-agent --uninstall` leaving the node as it was, one agent per bpf root (a second agent
//! and an uninstall are refused while one runs, and change nothing), and failed starts that
//! leave nothing behind.
//!
//! Each test builds its own small node (a guard named after the test, removed on drop) with its
//! own namespace prefix, bpffs root and run directory, so the tests run beside each other and
//! beside the lab (whose `down` removes only `lblab-*`):
//!
//! ```text
//!   <p>outside: eth0 192.168.99.2/24, forwards nothing
//!      │
//!   <p>node: eth0 192.168.99.1/24 (lb-agent's --devices), default route via <p>outside
//!     ├ lxcclient → <p>client 10.200.0.10   (the test's client threads enter this namespace)
//!     ├ lxcbe1    → <p>be1    10.200.0.21:80 (keep-alive HTTP server)
//!     ├ lxcbe2    → <p>be2    10.200.0.22:80
//!     └ lxcbe3    → <p>be3    10.200.0.23:80 (a backend only once the EndpointSlice lists it)
//! ```
//!
//! Pods are wired by `lb_testkit::pod`, as in the lab (a /32, proxy ARP for 169.254.1.1), and
//! the backends run `lb_testkit::servers::http`. The agent runs as a process
//! (`nsenter --net`, file source), because restarts are SIGTERM and a new process. Its binaries
//! come from `LB_BIN_DIR`, or a `cargo build -p lb-agent -p lbctl` of this workspace.
//! Traffic never leaves these namespaces: the node's only way out leads to `<p>outside`.
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use lb_lab::Binaries;
use lb_testkit::{Netns, Process, ok, pod, servers, veth, wait_until};
use lb_tests::agent::{READY_TIMEOUT, pinned_datapath_config};
use lb_tests::manifests::{Manifest, Port, endpoint};
use lb_tests::traffic::{self, Client};

/// The ClusterIP of the test's Service.
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 100, 10);
/// Port of the Service and of the backends.
const PORT: u16 = 80;
/// The client pod.
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 10);
/// The backend pods, by name.
const BACKENDS: [(&str, Ipv4Addr); 3] = [
    ("be1", Ipv4Addr::new(10, 200, 0, 21)),
    ("be2", Ipv4Addr::new(10, 200, 0, 22)),
    ("be3", Ipv4Addr::new(10, 200, 0, 23)),
];
/// Restarts in a row.
const RESTARTS: usize = 10;
/// The restart during which the EndpointSlice gains be3.
const CHANGE_AT: usize = 5;
/// Long-lived connections the client keeps open across every restart.
const KEPT_CONNECTIONS: usize = 4;
/// Deadline for a process to exit, for traffic to progress (readiness: `READY_TIMEOUT`).
const DEADLINE: Duration = lb_testkit::patience::SETTLE_WITHIN;

/// One node with a client pod and three backend pods, named with a prefix; everything it made
/// (agent, servers, namespaces, pins, run directory) is removed on drop.
struct OneNode {
    prefix: &'static str,
    bins: Binaries,
    run_dir: PathBuf,
    bpf_root: PathBuf,
    agent: Option<Process>,
    /// Appended to the agent's arguments.
    extra_args: Vec<String>,
    servers: Vec<Process>,
    pods: BTreeMap<&'static str, Netns>,
    node: Netns,
    _outside: Netns,
}

impl OneNode {
    /// Builds the node and its pods, starts the backends' servers and writes the Service with
    /// `listed` backends (by name) into the manifests directory.
    fn up(prefix: &'static str, listed: &[&str]) -> Self {
        let run_dir = PathBuf::from(format!("/run/{prefix}lab"));
        let _ = std::fs::remove_dir_all(&run_dir);
        std::fs::create_dir_all(run_dir.join("manifests")).expect("create run dir");
        ok(lb_testkit::ensure_bpffs(), "mount bpffs");
        let bpf_root = PathBuf::from(format!("/sys/fs/bpf/{prefix}lab"));
        let _ = std::fs::remove_dir_all(&bpf_root);

        let node = ok(Netns::create(&format!("{prefix}node")), "node ns");
        // The node's external interface leads to a namespace that forwards nothing: whatever
        // the node routes out of it ends there.
        let outside = ok(Netns::create(&format!("{prefix}outside")), "outside ns");
        ok(veth(&node, "eth0", &outside, "eth0"), "node eth0");
        ok(node.addr("eth0", "192.168.99.1/24"), "eth0 address");
        ok(outside.addr("eth0", "192.168.99.2/24"), "outside address");
        // The pods' gateway (169.254.1.1) is answered by proxy ARP, which needs a route to it
        // through another interface: the default route out of eth0.
        ok(
            node.route(&["default", "via", "192.168.99.2", "dev", "eth0"]),
            "default route",
        );
        ok(pod::prepare_node(&node), "node forwarding");
        let mut topo = Self {
            prefix,
            bins: lb_tests::agent::binaries(),
            run_dir,
            bpf_root,
            agent: None,
            extra_args: Vec::new(),
            servers: Vec::new(),
            pods: BTreeMap::new(),
            node,
            _outside: outside,
        };
        let pods = std::iter::once(("client", CLIENT_IP)).chain(BACKENDS);
        for (name, ip) in pods {
            let ns = ok(Netns::create(&format!("{prefix}{name}")), "pod ns");
            let host_dev = format!("lxc{name}");
            ok(pod::wire(&topo.node, &host_dev, &ns, ip), "pod wiring");
            topo.pods.insert(name, ns);
        }
        topo.start_servers();
        topo.write_manifests(listed);
        topo
    }

    fn start_servers(&mut self) {
        for (name, ip) in BACKENDS {
            let server = servers::http(&self.pods[name], ip, PORT, &self.run_dir);
            self.servers.push(ok(server, "start HTTP server"));
        }
        // Ready when the client reaches each server at its pod address (routing included).
        for (name, ip) in BACKENDS {
            let client = &self.pods["client"];
            ok(
                wait_until(&format!("the HTTP server of {name}"), DEADLINE, || {
                    in_netns(client, move || get_once(ip))
                        .map(|pod| (pod == ip).then_some(()))
                        .map_err(|err| err.to_string())
                }),
                "backends ready",
            );
        }
    }

    /// Writes the Service and its EndpointSlice listing the backends `listed`. Files are
    /// replaced by rename, so the agent never reads half a file.
    fn write_manifests(&self, listed: &[&str]) {
        let node = format!("{}node", self.prefix);
        let endpoints = BACKENDS
            .iter()
            .filter(|(name, _)| listed.contains(name))
            .map(|(_, ip)| endpoint(*ip, &node, true));
        let yaml = Manifest::new("web", VIP)
            .port(Port::tcp("", PORT, PORT))
            .endpoints(endpoints)
            .to_yaml();
        let dir = self.run_dir.join("manifests");
        let tmp = self.run_dir.join("web.yaml.tmp");
        std::fs::write(&tmp, yaml).expect("write manifests");
        std::fs::rename(&tmp, dir.join("web.yaml")).expect("replace manifests");
    }

    fn socket(&self) -> PathBuf {
        self.run_dir.join("agent.sock")
    }

    fn agent_args(&self) -> Vec<String> {
        [
            "--source".into(),
            format!("file:{}", self.run_dir.join("manifests").display()),
            "--devices".into(),
            "eth0".into(),
            "--pod-devices".into(),
            "lxc*".into(),
            "--node-name".into(),
            format!("{}node", self.prefix),
            "--bpf-root".into(),
            self.bpf_root.display().to_string(),
            "--socket".into(),
            self.socket().display().to_string(),
        ]
        .into_iter()
        .chain(self.extra_args.iter().cloned())
        .collect()
    }

    /// Starts lb-agent (its log appended to `agent.log`) and waits for `lbctl status` to pass.
    fn start_agent(&mut self) {
        assert!(self.agent.is_none(), "an agent already runs");
        let args = self.agent_args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut agent = ok(
            self.node.spawn(
                &self.bins.agent.to_string_lossy(),
                &args,
                &self.run_dir.join("agent.log"),
            ),
            "start lb-agent",
        );
        let (lbctl, socket) = (self.bins.lbctl.clone(), self.socket());
        ok(
            agent.wait_until("lbctl status to pass", READY_TIMEOUT, || {
                let out = Command::new(&lbctl)
                    .arg("--socket")
                    .arg(&socket)
                    .arg("status")
                    .output()
                    .map_err(|err| err.to_string())?;
                if out.status.success() {
                    Ok(Some(()))
                } else {
                    Err(String::from_utf8_lossy(&out.stderr).into_owned())
                }
            }),
            "lb-agent ready",
        );
        self.agent = Some(agent);
    }

    /// SIGTERM, and the agent exits cleanly within the deadline.
    fn stop_agent(&mut self) {
        let mut agent = self.agent.take().expect("an agent runs");
        let status = ok(agent.terminate(DEADLINE), "lb-agent exits on SIGTERM");
        assert!(
            status.success(),
            "lb-agent exited with {status} on SIGTERM:\n{}",
            agent.log_tail(20)
        );
    }

    /// `lbctl service list -o json` as frontend → (service id, backend address → backend id).
    fn ids(&self) -> BTreeMap<String, (u64, BTreeMap<String, u64>)> {
        let out = Command::new(&self.bins.lbctl)
            .arg("--socket")
            .arg(self.socket())
            .args(["service", "list", "-o", "json"])
            .output()
            .expect("run lbctl service list");
        assert!(out.status.success(), "lbctl service list: {out:?}");
        let rows: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("service list is JSON");
        let rows = rows.as_array().expect("service list is an array");
        rows.iter()
            .map(|row| {
                let backends = row["backends"]
                    .as_array()
                    .expect("backends array")
                    .iter()
                    .map(|b| {
                        let address = b["address"].as_str().expect("backend address");
                        (address.to_owned(), b["id"].as_u64().expect("backend id"))
                    })
                    .collect();
                let frontend = row["frontend"].as_str().expect("frontend").to_owned();
                (frontend, (row["id"].as_u64().expect("id"), backends))
            })
            .collect()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.run_dir.join("agent.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for OneNode {
    fn drop(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            agent.stop();
        }
        self.servers.clear();
        // Unpinning the links detaches the programs; the maps go with their last reference.
        if let Err(err) = std::fs::remove_dir_all(&self.bpf_root)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("cannot remove {}: {err}", self.bpf_root.display());
        }
        let _ = std::fs::remove_dir_all(&self.run_dir);
        // The namespaces (pods, then the node) are removed as the fields drop.
    }
}

/// Runs `f` on a thread inside `ns`; sockets it creates belong to that namespace wherever they
/// are used later.
fn in_netns<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> T {
    ok(ns.within(f), &format!("enter {}", ns.name()))
}

/// A new connection to `to`:PORT, one request, closed: the pod that answered.
fn get_once(to: Ipv4Addr) -> std::io::Result<Ipv4Addr> {
    traffic::get_once(SocketAddrV4::new(to, PORT))
}

#[test]
fn ten_agent_restarts_break_no_connection_and_keep_ids() {
    let mut node = OneNode::up("lbr-", &["be1", "be2"]);
    node.start_agent();
    let ids = node.ids();
    let frontend = format!("{VIP}:{PORT}/TCP");
    let (service_id, backends) = ids
        .get(&frontend)
        .cloned()
        .unwrap_or_else(|| panic!("{frontend} programmed: {ids:?}\n{}", node.log_tail()));
    assert_eq!(backends.len(), 2, "two backends: {ids:?}");

    let client = Client::start(
        &node.pods["client"],
        SocketAddrV4::new(VIP, PORT),
        KEPT_CONNECTIONS,
    );
    client.wait_progress(
        "traffic through the ClusterIP",
        20,
        2 * KEPT_CONNECTIONS as u64,
        DEADLINE,
    );
    client.assert_no_failures("before any restart");

    let mut expected = ids;
    for restart in 1..=RESTARTS {
        node.stop_agent();
        // The datapath forwards on its own while no agent runs.
        client.wait_progress(
            &format!("traffic while the agent is down ({restart})"),
            5,
            KEPT_CONNECTIONS as u64,
            DEADLINE,
        );
        if restart == CHANGE_AT {
            node.write_manifests(&["be1", "be2", "be3"]);
        }
        node.start_agent();
        let now = node.ids();
        if restart == CHANGE_AT {
            let (id, backends) = now.get(&frontend).cloned().expect("frontend still there");
            assert_eq!(id, service_id, "service id after the change");
            let old = &expected[&frontend].1;
            for (address, backend_id) in old {
                assert_eq!(
                    backends.get(address),
                    Some(backend_id),
                    "backend {address} keeps its id: {now:?}"
                );
            }
            assert_eq!(
                backends.len(),
                3,
                "be3 added while the agent was down: {now:?}"
            );
            expected = now;
        } else {
            assert_eq!(now, expected, "ids after restart {restart}");
        }
        client.wait_progress(
            &format!("traffic after restart {restart}"),
            5,
            KEPT_CONNECTIONS as u64,
            DEADLINE,
        );
        client.assert_no_failures(&format!("restart {restart}"));
    }

    // be3, added while the agent was down, takes new connections.
    let be3 = BACKENDS[2].1;
    let be3_count = || client.seen().by_pod.get(&be3).copied().unwrap_or(0);
    let before = be3_count();
    ok(
        wait_until("new connections to be3", DEADLINE, || {
            let now = be3_count();
            if now >= before + 3 {
                Ok(Some(()))
            } else {
                Err(format!("{now} so far"))
            }
        }),
        "be3 gets traffic",
    );
    let seen = client.stop();
    assert!(seen.no_failures(), "failures: {seen:?}");
    for (name, ip) in BACKENDS {
        assert!(
            seen.by_pod.get(&ip).is_some_and(|n| *n > 0),
            "{name} answered: {seen:?}"
        );
    }
    eprintln!(
        "{RESTARTS} restarts: {} new connections and {} exchanges on {KEPT_CONNECTIONS} kept \
         connections, none failed; by pod: {:?}",
        seen.new_ok, seen.kept_ok, seen.by_pod
    );
}

/// The interfaces of the node: its external one and the pods' host sides.
const NODE_INTERFACES: [&str; 5] = ["eth0", "lxcclient", "lxcbe1", "lxcbe2", "lxcbe3"];

/// Every TCX program on the node's interfaces, as `iface ingress|egress name#id`, sorted.
fn tcx_programs(node: &OneNode) -> Vec<String> {
    use aya::programs::{SchedClassifier, TcAttachType};
    in_netns(&node.node, || {
        let mut out = Vec::new();
        for iface in NODE_INTERFACES {
            for (direction, kind) in [
                ("ingress", TcAttachType::Ingress),
                ("egress", TcAttachType::Egress),
            ] {
                let (_, programs) = SchedClassifier::query_tcx(iface, kind)
                    .unwrap_or_else(|err| panic!("query TCX on {iface}: {err}"));
                for program in programs {
                    let name = program.name_as_str().unwrap_or("?").to_owned();
                    out.push(format!("{iface} {direction} {name}#{}", program.id()));
                }
            }
        }
        out.sort();
        out
    })
}

/// `tc qdisc show` on the node.
fn qdiscs(node: &OneNode) -> String {
    ok(node.node.run("tc", &["qdisc", "show"]), "tc qdisc show")
}

#[test]
fn uninstall_removes_every_link_program_and_pin_and_leaves_the_node_as_it_was() {
    let mut node = OneNode::up("lbu-", &["be1", "be2"]);
    // What was there before lb: a qdisc someone else created, which lb must leave alone, and
    // the pin directory of an older lb whose map layout differed.
    ok(
        node.node
            .run("tc", &["qdisc", "add", "dev", "eth0", "clsact"]),
        "foreign clsact qdisc",
    );
    let old_version = node.bpf_root.join("v0");
    std::fs::create_dir_all(old_version.join("links")).expect("old version dir");
    let programs_before = tcx_programs(&node);
    let qdiscs_before = qdiscs(&node);

    node.start_agent();
    assert!(
        std::fs::read_to_string(node.run_dir.join("agent.log"))
            .unwrap_or_default()
            .lines()
            .any(|line| line.contains("WARN") && line.contains(&*old_version.to_string_lossy())),
        "the agent warns about {}:\n{}",
        old_version.display(),
        node.log_tail()
    );
    let answered =
        in_netns(&node.pods["client"], || get_once(VIP)).expect("ClusterIP answers with lb");
    assert!(BACKENDS[..2].iter().any(|(_, ip)| *ip == answered));
    let attached = tcx_programs(&node);
    let ours: Vec<&String> = attached
        .iter()
        .filter(|line| !programs_before.contains(line))
        .collect();
    // An ingress program on each interface, and from_host on its egress.
    assert_eq!(
        ours.len(),
        2 * NODE_INTERFACES.len(),
        "two lb programs per interface: {attached:?}"
    );
    for expected in ["eth0 ingress from_netdev#", "eth0 egress from_host#"] {
        assert!(
            ours.iter().any(|l| l.starts_with(expected)),
            "{expected}: {ours:?}"
        );
    }

    // Refused while the agent runs: it would re-create what is removed.
    let uninstall = |node: &OneNode| {
        let args = node.agent_args();
        let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
        args.push("--uninstall");
        ok(
            node.node.exec(&node.bins.agent.to_string_lossy(), &args),
            "run lb-agent --uninstall",
        )
    };
    let refused = uninstall(&node);
    assert!(
        !refused.success && refused.stderr.contains("holds --bpf-root"),
        "uninstall refused while the agent runs: {refused:?}"
    );

    node.stop_agent();
    assert_eq!(
        tcx_programs(&node),
        attached,
        "programs stay attached after SIGTERM"
    );
    let done = uninstall(&node);
    assert!(done.success, "lb-agent --uninstall: {done:?}");

    assert_eq!(
        tcx_programs(&node),
        programs_before,
        "TCX programs as before lb"
    );
    assert_eq!(qdiscs(&node), qdiscs_before, "qdiscs as before lb");
    assert!(
        !node.bpf_root.exists(),
        "{} is gone (old versions included)",
        node.bpf_root.display()
    );
    // The programs themselves are freed, not merely detached. The kernel releases a link whose
    // pin was removed from a workqueue (`bpf_link_put`), and the link's program with it: soon
    // after the uninstall returns, not necessarily before.
    let ids: Vec<(u32, &String)> = ours
        .iter()
        .map(|line| {
            let id = line
                .rsplit('#')
                .next()
                .and_then(|id| id.parse().ok())
                .expect("program id");
            (id, *line)
        })
        .collect();
    ok(
        wait_until("lb's programs to be unloaded", DEADLINE, || {
            let loaded: Vec<u32> = aya::programs::loaded_programs()
                .filter_map(Result::ok)
                .map(|program| program.id())
                .collect();
            let left: Vec<&String> = ids
                .iter()
                .filter(|(id, _)| loaded.contains(id))
                .map(|(_, line)| *line)
                .collect();
            if left.is_empty() {
                Ok(Some(()))
            } else {
                Err(format!("still loaded: {left:?}"))
            }
        }),
        "every program of lb is unloaded",
    );
    // Pod addresses still work; the ClusterIP is no longer translated.
    for (_, ip) in &BACKENDS[..2] {
        let ip = *ip;
        assert_eq!(
            in_netns(&node.pods["client"], move || get_once(ip)).expect("pod address answers"),
            ip
        );
    }
    let untranslated = in_netns(&node.pods["client"], || get_once(VIP));
    assert!(
        untranslated.is_err(),
        "the ClusterIP no longer answers once lb is uninstalled: {untranslated:?}"
    );
}

/// `lb-agent ARGS` run to its exit in the node namespace (killed, and the test failed, if it
/// outlives the deadline): its exit status and its output.
fn run_agent_to_exit(node: &OneNode, name: &str, args: &[String]) -> (ExitStatus, String) {
    run_to_exit(node, name, &node.bins.agent.to_string_lossy(), args)
}

/// Runs `program args` in the node's namespace until it exits: its status and output.
fn run_to_exit(node: &OneNode, name: &str, program: &str, args: &[String]) -> (ExitStatus, String) {
    let log = node.run_dir.join(format!("{name}.log"));
    let out = std::fs::File::create(&log).expect("create log");
    let mut child = node
        .node
        .command(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("clone log"))
        .stderr(out)
        .spawn()
        .expect("spawn lb-agent");
    let exited = wait_until(&format!("{name} to exit"), DEADLINE, || {
        child.try_wait().map_err(|err| err.to_string())
    });
    let status = exited.unwrap_or_else(|err| {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "{err}; it runs instead of failing:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    (status, std::fs::read_to_string(&log).unwrap_or_default())
}

/// Every entry under the bpf root, as `path` (directories end with `/`), sorted; empty when it
/// does not exist.
fn bpf_tree(node: &OneNode) -> Vec<String> {
    fn walk(dir: &std::path::Path, root: &std::path::Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let rel = path.strip_prefix(root).expect("under root").display();
            if path.is_dir() {
                out.push(format!("{rel}/"));
                walk(&path, root, out);
            } else {
                out.push(rel.to_string());
            }
        }
    }
    let mut out = Vec::new();
    if node.bpf_root.exists() {
        out.push("./".to_owned());
    }
    walk(&node.bpf_root, &node.bpf_root, &mut out);
    out.sort();
    out
}

/// `lbctl --socket SOCKET ARGS` against the running agent; fails the test unless it succeeds.
fn lbctl(node: &OneNode, args: &[&str]) -> String {
    let out = Command::new(&node.bins.lbctl)
        .arg("--socket")
        .arg(node.socket())
        .args(args)
        .output()
        .expect("run lbctl");
    assert!(out.status.success(), "lbctl {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `agent_args` with `--socket` pointed elsewhere and `extra` appended.
fn args_with_socket(node: &OneNode, socket: &std::path::Path, extra: &[&str]) -> Vec<String> {
    let mut args = node.agent_args();
    let at = args
        .iter()
        .position(|arg| arg == "--socket")
        .expect("--socket");
    args[at + 1] = socket.display().to_string();
    args.extend(extra.iter().map(|arg| (*arg).to_owned()));
    args
}

#[test]
fn second_agent_and_uninstall_on_a_held_bpf_root_are_refused_and_change_nothing() {
    let mut node = OneNode::up("lbl-", &["be1", "be2"]);
    node.start_agent();
    let first_pid = node.agent.as_ref().expect("agent").pid();
    // A value the second agent's start would reset: its default is false.
    let config_before = pinned_datapath_config(&node.bpf_root);
    lbctl(
        &node,
        &["config", "set", "bpf-lb-external-clusterip", "true"],
    );
    let config_set = ok(
        wait_until("config set to reach the datapath", DEADLINE, || {
            let now = pinned_datapath_config(&node.bpf_root);
            Ok((now != config_before).then_some(now))
        }),
        "config set reached the datapath config",
    );
    let programs = tcx_programs(&node);
    let tree = bpf_tree(&node);
    let answered = in_netns(&node.pods["client"], || get_once(VIP)).expect("ClusterIP answers");
    assert!(BACKENDS[..2].iter().any(|(_, ip)| *ip == answered));

    // Another socket, so only the bpf root is shared.
    let other_socket = node.run_dir.join("second.sock");
    let expected = format!(
        "another lb-agent (pid {first_pid}) holds --bpf-root `{}`",
        node.bpf_root.display()
    );
    let (status, output) = run_agent_to_exit(
        &node,
        "second-agent",
        &args_with_socket(&node, &other_socket, &[]),
    );
    assert!(
        !status.success() && output.contains(&expected),
        "the second agent fails at once with {expected:?}: {status}\n{output}"
    );
    assert!(!other_socket.exists(), "the second agent bound no socket");

    let (status, output) = run_agent_to_exit(
        &node,
        "uninstall",
        &args_with_socket(&node, &other_socket, &["--uninstall"]),
    );
    assert!(
        !status.success() && output.contains(&expected),
        "uninstall (on another socket) refused with {expected:?}: {status}\n{output}"
    );

    assert_eq!(
        tcx_programs(&node),
        programs,
        "the same programs, by id, on every interface"
    );
    assert_eq!(bpf_tree(&node), tree, "the same pins");
    assert_eq!(
        pinned_datapath_config(&node.bpf_root),
        config_set,
        "the datapath config as set"
    );
    let status = lbctl(&node, &["status"]);
    let answered = in_netns(&node.pods["client"], || get_once(VIP))
        .unwrap_or_else(|err| panic!("ClusterIP still answers: {err}\n{status}"));
    assert!(BACKENDS[..2].iter().any(|(_, ip)| *ip == answered));
    node.agent
        .as_mut()
        .expect("agent")
        .check_running()
        .expect("the first agent still runs");
}

#[test]
fn failed_starts_name_the_missing_source_or_device_and_leave_nothing_behind() {
    let mut node = OneNode::up("lbf-", &["be1"]);
    let missing_dir = node.run_dir.join("no-such-dir");
    // A port in use fails the start after the lock and the API socket: what they created
    // (the bpf root, the socket) must go again.
    let taken = in_netns(&node.node, || std::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind a port in the node namespace");
    let taken_addr = taken.local_addr().expect("local address").to_string();
    let with = |source: &str, device: &str| {
        let mut args = node.agent_args();
        for (flag, value) in [("--source", source), ("--devices", device)] {
            let at = args.iter().position(|arg| arg == flag).expect("flag");
            args[at + 1] = value.to_owned();
        }
        args
    };
    let manifests = format!("file:{}", node.run_dir.join("manifests").display());
    let mut port_in_use = with(&manifests, "eth0");
    port_in_use.extend(["--metrics-address".to_owned(), taken_addr.clone()]);
    let cases = [
        (
            "missing-source",
            with(&format!("file:{}", missing_dir.display()), "eth0"),
            format!(
                "source directory `{}` does not exist",
                missing_dir.display()
            ),
        ),
        (
            "missing-device",
            with(&manifests, "eth9"),
            "interface `eth9` does not exist".to_owned(),
        ),
        (
            "port-in-use",
            port_in_use,
            format!("cannot listen on metrics address {taken_addr}"),
        ),
    ];
    // On a fresh node, then on one where an agent ran and left its datapath pinned.
    for installed in [false, true] {
        if installed {
            node.start_agent();
            node.stop_agent();
            assert!(
                !node.socket().exists(),
                "the stopped agent removed its socket"
            );
        }
        let programs = tcx_programs(&node);
        let tree = bpf_tree(&node);
        assert_eq!(tree.is_empty(), !installed, "{tree:?}");
        for (name, args, expected) in &cases {
            let (status, output) = run_agent_to_exit(&node, name, args);
            assert!(
                !status.success() && output.contains(expected.as_str()),
                "{name} (installed: {installed}) fails with {expected:?}: {status}\n{output}"
            );
            assert_eq!(
                bpf_tree(&node),
                tree,
                "{name}: no pin or directory left or changed"
            );
            assert_eq!(
                tcx_programs(&node),
                programs,
                "{name}: no program attached or swapped"
            );
            assert!(!node.socket().exists(), "{name}: no socket left");
        }
    }
}

/// `max_entries` of the map `name` pinned under the node's bpf root.
fn pinned_max_entries(node: &OneNode, name: &str) -> u32 {
    let pin = node.bpf_root.join(lb_common::maps::PIN_VERSION).join(name);
    aya::maps::MapInfo::from_pin(&pin)
        .unwrap_or_else(|err| panic!("open {}: {err}", pin.display()))
        .max_entries()
}

#[test]
fn a_map_size_change_at_restart_resizes_the_pinned_maps_and_keeps_every_connection() {
    use lb_common::maps::{LB4_BACKENDS, LB4_CT_ANY, LB4_CT_TCP, LB4_SERVICES};
    let sizes = |lb: u32, ct: u32| -> Vec<String> {
        [
            "--bpf-lb-map-max",
            &lb.to_string(),
            "--bpf-ct-max-entries",
            &ct.to_string(),
            "--bpf-ct-global-any-max",
            &ct.to_string(),
        ]
        .map(str::to_owned)
        .into()
    };
    let mut node = OneNode::up("lbz-", &["be1", "be2"]);
    node.extra_args = sizes(2048, 4096);
    node.start_agent();
    let ids = node.ids();
    let maps = [LB4_SERVICES, LB4_BACKENDS, LB4_CT_TCP, LB4_CT_ANY];
    let max_entries = |node: &OneNode| maps.map(|map| pinned_max_entries(node, map));
    assert_eq!(max_entries(&node), [2048, 2048, 4096, 4096]);

    let client = Client::start(
        &node.pods["client"],
        SocketAddrV4::new(VIP, PORT),
        KEPT_CONNECTIONS,
    );
    client.wait_progress(
        "traffic through the ClusterIP",
        20,
        2 * KEPT_CONNECTIONS as u64,
        DEADLINE,
    );
    node.stop_agent();
    node.extra_args = sizes(8192, 16_384);
    node.start_agent();
    assert_eq!(max_entries(&node), [8192, 8192, 16_384, 16_384], "resized");
    assert_eq!(node.ids(), ids, "the same ids: the entries were copied");
    let tree = bpf_tree(&node);
    assert!(
        !tree.iter().any(|pin| pin.contains("resizing")),
        "the old maps are unpinned: {tree:?}"
    );
    // The kept connections' conntrack entries moved with them: each still reaches its pod.
    client.wait_progress(
        "traffic after the resize",
        20,
        2 * KEPT_CONNECTIONS as u64,
        DEADLINE,
    );
    client.assert_no_failures("resize");
    let seen = client.stop();
    eprintln!(
        "resize: {} new connections and {} exchanges on {KEPT_CONNECTIONS} kept connections, \
         none failed",
        seen.new_ok, seen.kept_ok
    );
}

#[test]
fn an_agent_without_its_capabilities_names_them_and_changes_nothing() {
    let node = OneNode::up("lbc-", &["be1"]);
    let tree = bpf_tree(&node);
    // Root, but with CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN out of the bounding set: what a
    // container whose securityContext forgot them gets.
    let mut args: Vec<String> = ["--bounding-set=-bpf,-perfmon,-sys_admin", "--"]
        .map(str::to_owned)
        .into();
    args.push(node.bins.agent.display().to_string());
    args.extend(node.agent_args());
    let (status, output) = run_to_exit(&node, "no-caps", "setpriv", &args);
    assert!(
        !status.success() && output.contains("lb-agent lacks CAP_BPF, CAP_PERFMON; run it as root"),
        "fails naming the capabilities: {status}\n{output}"
    );
    assert_eq!(output.matches("lacks").count(), 1, "said once: {output}");
    assert_eq!(bpf_tree(&node), tree, "nothing pinned or created");
    assert!(!node.socket().exists(), "no socket left");
}

#[test]
fn a_deleted_pod_interface_takes_its_link_pin_with_it() {
    let mut node = OneNode::up("lbp-", &["be1", "be2"]);
    node.start_agent();
    let pin = node
        .bpf_root
        .join(lb_common::maps::PIN_VERSION)
        .join("links")
        .join("from-pod-lxcbe3");
    let host_pin = pin.with_file_name("from-host-lxcbe3");
    assert!(
        pin.exists() && host_pin.exists(),
        "from-pod and from-host pinned on lxcbe3: {:?}",
        bpf_tree(&node)
    );
    ok(
        node.node.run("ip", &["link", "del", "lxcbe3"]),
        "delete lxcbe3",
    );
    ok(
        wait_until("the pin of lxcbe3 to go", DEADLINE, || {
            Ok((!pin.exists()).then_some(()))
        }),
        "pin pruned",
    );
    assert!(!host_pin.exists(), "its from-host pin goes with it");
    let status = lbctl(&node, &["status"]);
    assert!(
        status.contains("lxcbe1") && !status.contains("lxcbe3"),
        "status lists the pod devices left: {status}"
    );
    // The other pods' links stay, and traffic still flows through them.
    let answered = in_netns(&node.pods["client"], || get_once(VIP)).expect("ClusterIP answers");
    assert!(BACKENDS[..2].iter().any(|(_, ip)| *ip == answered));
    node.agent
        .as_mut()
        .expect("agent")
        .check_running()
        .expect("the agent still runs");
}

#[test]
fn status_reports_the_source_the_last_sync_malformed_objects_map_fill_and_programs() {
    let mut node = OneNode::up("lbs-", &["be1", "be2"]);
    node.start_agent();
    let status_json = |node: &OneNode| -> serde_json::Value {
        serde_json::from_str(&lbctl(node, &["status", "-o", "json"])).expect("status -o json")
    };
    let status = status_json(&node);
    assert_eq!(status["source_state"], "readable", "{status}");
    assert!(
        status["last_sync_age_seconds"]
            .as_f64()
            .is_some_and(|age| age < 60.0),
        "{status}"
    );
    // The Service: its wildcard, master and two slots; two backends; one rev-NAT entry.
    let fill = |status: &serde_json::Value, map: &str| {
        status["maps"]
            .as_array()
            .expect("maps")
            .iter()
            .find(|fill| fill["name"] == map)
            .map(|fill| {
                (
                    fill["entries"].as_u64().expect("n"),
                    fill["max_entries"].as_u64().expect("n"),
                )
            })
    };
    assert_eq!(
        fill(&status, "LB4_SERVICES"),
        Some((4, 131_072)),
        "{status}"
    );
    assert_eq!(
        fill(&status, "LB4_BACKENDS"),
        Some((2, 131_072)),
        "{status}"
    );
    assert_eq!(fill(&status, "LB4_REVNAT"), Some((1, 131_072)), "{status}");
    let programs: Vec<String> = status["programs"]
        .as_array()
        .expect("programs")
        .iter()
        .map(|p| {
            format!(
                "{} {}",
                p["iface"].as_str().expect("iface"),
                p["hook"].as_str().expect("hook")
            )
        })
        .collect();
    assert_eq!(
        programs,
        [
            "eth0 from-host",
            "eth0 from-netdev",
            "lxcbe1 from-host",
            "lxcbe1 from-pod",
            "lxcbe2 from-host",
            "lxcbe2 from-pod",
            "lxcbe3 from-host",
            "lxcbe3 from-pod",
            "lxcclient from-host",
            "lxcclient from-pod"
        ]
    );
    assert_eq!(status["malformed_objects"], 0);

    std::fs::write(
        node.run_dir.join("manifests").join("broken.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: [not, a, map]\n",
    )
    .expect("write a malformed file");
    let status = ok(
        wait_until("the malformed file to be counted", DEADLINE, || {
            let status = status_json(&node);
            Ok((status["malformed_objects"].as_u64() >= Some(1)).then_some(status))
        }),
        "malformed object counted",
    );
    assert_eq!(
        status["synced"], true,
        "the rest stays programmed: {status}"
    );
    let text = lbctl(&node, &["status"]);
    for line in [
        "Source:              file:",
        "(readable)",
        "Last sync:",
        " ago\n",
        "Maps:                LB4_SERVICES 4/131072 (0.0%)",
        "Programs:            eth0 from-host\n                     eth0 from-netdev\n",
    ] {
        assert!(text.contains(line), "{line:?} in:\n{text}");
    }
    assert!(
        !text.lines().any(|line| line.ends_with(' ')),
        "no trailing spaces:\n{text}"
    );

    // `bpf lb list`: the wildcard entry, the master and a slot per backend, from the kernel map.
    let entries: serde_json::Value =
        serde_json::from_str(&lbctl(&node, &["bpf", "lb", "list", "-o", "json"])).expect("JSON");
    let rows: Vec<String> = entries
        .as_array()
        .expect("array")
        .iter()
        .map(|row| {
            format!(
                "{} slot={} rev_nat={} {}",
                row["frontend"].as_str().expect("frontend"),
                row["slot"],
                row["rev_nat"],
                row["backend"].as_str().expect("backend")
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            "10.96.100.10 slot=0 rev_nat=0 0.0.0.0:0",
            "10.96.100.10:80/TCP slot=0 rev_nat=1 0.0.0.0:0",
            "10.96.100.10:80/TCP slot=1 rev_nat=1 10.200.0.21:80/TCP",
            "10.96.100.10:80/TCP slot=2 rev_nat=1 10.200.0.22:80/TCP",
        ]
    );
    let text = lbctl(&node, &["bpf", "lb", "list"]);
    assert!(
        text.starts_with("SERVICE ADDRESS       BACKEND ADDRESS (REVNAT_ID) (SLOT)\n")
            && text.contains("10.96.100.10:80/TCP   0.0.0.0:0 (1) (0) [ClusterIP]\n"),
        "{text}"
    );
}
